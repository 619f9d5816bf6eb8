"""What the repository ships beside the package: examples/batch.sh, and no trace of the build machine.

The batch script runs as a user would run it (bash, percept in a subprocess) on a tiny seeded model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import tiny_model_folder

ROOT = Path(__file__).resolve().parents[1]
BATCH = ROOT / "examples" / "batch.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _batch(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PERCEPT": f"{sys.executable} -m percept_cli", "PYTHONPATH": str(ROOT)}
    return subprocess.run(["bash", str(BATCH), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_script_mirrors_logs_resumes_and_reports_failures(tmp_path):
    model = tiny_model_folder(tmp_path / "model")
    rng = np.random.default_rng(0)
    for rel in ("in/a/x/one.png", "in/b/two.png"):
        (tmp_path / rel).parent.mkdir(parents=True)
        cv2.imwrite(str(tmp_path / rel), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    options = ("--", "--model", model, "--steps", "1", "--ensemble", "1", "-q")

    first = _batch("-o", "out", "in/a", "in/b", *options, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["a/x/one.depth.color.png", "a/x/one.depth.npy", "a/x/one.depth.png", "b/two.depth.color.png",
                     "b/two.depth.npy", "b/two.depth.png", "log.jsonl"]
    assert np.load(out / "a/x/one.depth.npy").shape == (24, 32)
    records = _log(out / "log.jsonl")
    assert [(r["inputs"], r["status"]) for r in records] == [(["in/a/x/one.png"], "ok"), (["in/b/two.png"], "ok")]
    assert records[0]["outputs"][0] == "out/a/x/one.depth.npy" and records[0]["task"] == "depth"
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.depth.*")}

    # Resumable: the same command again does no work, and says so in the log.
    second = _batch("-o", "out", "in/a", "in/b", *options, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert [r["status"] for r in _log(out / "log.jsonl")[2:]] == ["skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.depth.*")} == mtimes

    # A bad input fails on its own: the rest is kept, the log names it, the exit status is 1.
    (tmp_path / "in/b/broken.png").write_bytes(b"not an image")
    third = _batch("-o", "out", "-l", "logs/run.jsonl", "in/a", "in/b", *options, cwd=tmp_path)
    assert third.returncode == 1
    assert "some inputs failed" in third.stderr
    by_input = {r["inputs"][0]: r for r in _log(tmp_path / "logs/run.jsonl")}
    assert by_input["in/b/broken.png"]["status"] == "failed" and by_input["in/b/broken.png"]["error"]
    assert by_input["in/a/x/one.png"]["status"] == by_input["in/b/two.png"]["status"] == "skipped"


@pytest.mark.parametrize("args, message", [
    ((), "no FOLDER given"),
    (("-o", "out", "missing"), "'missing' is not a folder"),
    (("-t", "amodal", "in"), "-t must be depth or flow"),
    (("-x", "in"), "unknown option -x"),
    (("-o",), "-o needs a value"),
    (("in", "other/in"), "two folders are named 'in'"),
])
def test_batch_script_usage_errors(tmp_path, args, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "other" / "in").mkdir(parents=True)
    res = _batch(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr and "usage: batch.sh" in res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "percept-out").exists()


def test_depth_command_imports_only_what_it_uses(tmp_path):
    """Start-up: one depth prediction with one member of a pixel-space model imports no scipy and no diffusers."""
    code = (
        "import sys\n"
        "from percept_cli.cli import main\n"
        "try:\n"
        f"    main(['depth', {str(ROOT / 'examples' / 'scene.png')!r}, '--model', 'tiny', '--steps', '1',\n"
        f"          '--ensemble', '1', '--resolution', '32', '-q', '-o', {str(tmp_path / 'out')!r}])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'diffusers'}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "scene.depth.npy").is_file()
    assert res.stdout.strip().splitlines()[-1] == "[]"


# The repository must not carry the build machine's paths or date its models by the work period
# that made them. The patterns are written so that this file does not match them.
BUILD_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home)/|percept-[r]uns")
WORK_PERIOD = re.compile(r"\b[Ss]ession\s+\d|\b[Ss]ession-\d")


def _tracked_text_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = []
    for name in names.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue  # deleted in the working tree, or a submodule
        paths.append(path)
    return paths


def test_no_build_machine_paths_or_work_period_history():
    hits = []
    for path in _tracked_text_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary: weights, images
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if BUILD_PATH.search(line) or WORK_PERIOD.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not hits, "use relative example paths (runs/tiny) and describe models by their recipe:\n" + "\n".join(hits)


# (the bad examples are split in two strings, so that this file's own lines stay clean)
@pytest.mark.parametrize("line, bad", [
    ("percept train --out /wo" "rk/percept-" "runs/tiny2", True),
    ("percept train --out runs/percept-" "runs", True),
    ("cache in /ro" "ot/.cache/percept", True),
    ("see /ho" "me/alice/runs", True),
    ("trained in sess" "ion 2, stage 3", True),
    ("Sess" "ion 1's full run", True),
    ("percept train --out runs/tiny", False),
    ('@pytest.fixture(scope="session")', False),
    ("tmp_path / 'work' / 'x'", False),
    ("https://example.org/home/index.html and ../network/run", False),
    ("stage 3 of the recipe", False),
])
def test_history_patterns_catch_reintroductions_only(line, bad):
    assert bool(BUILD_PATH.search(line) or WORK_PERIOD.search(line)) is bad
