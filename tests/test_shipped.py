"""The README's first command: the embedded default model predicts on the example, offline."""

import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_default_model_predicts_on_the_example_offline(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PERCEPT_CACHE": str(tmp_path / "pc"),
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "percept_cli", "depth", str(REPO / "examples" / "scene.png"), "-o", str(tmp_path / "out"),
         "--steps", "2", "--ensemble", "2", "--json"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"model": "tiny"' in proc.stdout
    depth = np.load(tmp_path / "out" / "scene.depth.npy")
    # normalised to [0, 1] at the 64x64 grid, then resized back: extremes stay close to 0 and 1
    assert depth.shape == (256, 256) and 0.0 <= depth.min() < 0.05 and 0.95 < depth.max() <= 1.0
    assert (tmp_path / "out" / "scene.depth.uncertainty.npy").exists()
