"""A model folder that cannot be loaded ends in one line on stderr and exit 1, never a traceback;
loading says nothing on stderr but percept's own lines.

Each case breaks one part of a tiny model folder with an SD-style VAE: the VAE's weights
(truncated, pickled) or config, the scheduler config, or config.json against the weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from percept_cli.checkpoints import save_percept
from percept_cli.schedules import SD2_SCHEDULER
from tests.helpers import ROOT, image, percept, tiny_dit

TINY_VAE = Path(__file__).resolve().parent / "fixtures" / "official" / "tiny_vae"
# diffusers' AutoencoderKL config of the tiny VAE fixture (4 levels: 8x smaller latents, 4 channels)
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8, 16, 16], layers_per_block=1,
    norm_num_groups=4, sample_size=64, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
)


def save_vae(folder: Path) -> Path:
    """The tiny VAE fixture, or (without it) a seeded AutoencoderKL of the same config."""
    if TINY_VAE.is_dir():
        shutil.copytree(TINY_VAE, folder)
        return folder
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def vae_model(tmp_path_factory) -> Path:
    """A tiny latent-space model folder: DiT (4 latent channels + 8 conditioning) + vae/ + scheduler/."""
    root = tmp_path_factory.mktemp("load") / "good"
    pipeline = dict(resolution=64, steps=2, ensemble=1, tasks=["depth"], batch_size=8)
    save_percept(root, tiny_dit(0, in_channels=4, cond_channels=8), SD2_SCHEDULER, pipeline)
    save_vae(root / "vae")
    return root


def broken_copy(vae_model: Path, tmp_path: Path, case: str) -> tuple[Path, str]:
    """A copy of the good folder with one part broken, and the file the error must name."""
    folder = tmp_path / case
    shutil.copytree(vae_model, folder)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"

    def edit(path: Path, **changes) -> str:
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return str(path)

    if case == "truncated-vae":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) * 6 // 10])
        return folder, str(weights)
    if case == "bad-vae-config":
        (folder / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL", ')
        return folder, str(folder / "vae" / "config.json")
    if case == "nonsense-beta-schedule":
        return folder, edit(folder / "scheduler" / "scheduler_config.json", beta_schedule="nonsense")
    if case == "unknown-prediction-type":
        return folder, edit(folder / "scheduler" / "scheduler_config.json", prediction_type="x0")
    if case == "pickled-vae":
        import torch
        from safetensors.torch import load_file

        state = load_file(str(weights))
        weights.unlink()
        torch.save(state, folder / "vae" / "diffusion_pytorch_model.bin")
        return folder, str(folder / "vae" / "diffusion_pytorch_model.bin")
    if case == "vae-config-mismatch":
        return folder, edit(folder / "vae" / "config.json", block_out_channels=[8, 8, 16, 32])
    if case == "model-config-mismatch":
        return folder, edit(folder / "config.json", hidden_size=96)
    if case == "model-missing-weights":
        return folder, edit(folder / "config.json", depth=3)
    raise AssertionError(case)


CASES = ["truncated-vae", "bad-vae-config", "nonsense-beta-schedule", "unknown-prediction-type", "pickled-vae",
         "vae-config-mismatch", "model-config-mismatch", "model-missing-weights"]


@pytest.mark.parametrize("case", CASES)
def test_a_broken_model_folder_is_one_error_line(vae_model, tmp_path, case):
    folder, culprit = broken_copy(vae_model, tmp_path, case)
    img = image(tmp_path / "a.png")
    code, stdout, stderr = percept("depth", img, "--model", folder, "-o", tmp_path / "out", "--steps", "1", "-q")
    assert code == 1 and stdout == "", stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert culprit in lines[0] or str(Path(culprit).parent) in lines[0], lines[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_messages_name_what_is_wrong(vae_model, tmp_path):
    img = image(tmp_path / "a.png")

    def error(case):
        folder, _ = broken_copy(vae_model, tmp_path, case)
        return percept("depth", img, "--model", folder, "-o", tmp_path / "out", "-q")[2].strip()

    assert "beta_schedule 'nonsense' is not one of linear, scaled_linear, squaredcos_cap_v2" in error("nonsense-beta-schedule")
    assert "pickled weights, which percept never loads" in error("pickled-vae")
    # a config/weights mismatch: counts and the first key, not a cut "Error(s) in loading state_dict"
    mismatch = error("model-config-mismatch")
    assert "does not match the weights" in mismatch and "of another shape (first " in mismatch
    assert "in the weights" in mismatch and "Error(s)" not in mismatch
    missing = error("model-missing-weights")  # diffusers would initialise these at random, with a warning
    assert "10 missing (first blocks.2." in missing


def test_a_pickled_vae_is_never_unpickled(vae_model, tmp_path, monkeypatch):
    import torch

    folder, _ = broken_copy(vae_model, tmp_path, "pickled-vae")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on a pickle")

    monkeypatch.setattr(torch, "load", refuse)
    code, _, stderr = percept("depth", image(tmp_path / "a.png"), "--model", folder, "-o", tmp_path / "out", "-q")
    assert code == 1 and "pickled" in stderr


def test_vae_latents_must_fit_the_model(vae_model, tmp_path):
    folder = tmp_path / "pixel"
    shutil.copytree(vae_model, folder)
    save_percept(folder, tiny_dit(0), SD2_SCHEDULER, json.loads((folder / "percept.json").read_text()))
    code, _, stderr = percept("depth", image(tmp_path / "a.png"), "--model", folder, "-o", tmp_path / "out", "-q")
    assert code == 1 and "makes 4-channel inputs, but the model expects 3" in stderr


# ----------------------------------------------------------------------------------------- stderr: percept's only


def run_percept(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The real command in a fresh process: library log handlers write to the process's own stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "percept_cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_loading_a_model_says_nothing_of_its_own_on_stderr(vae_model, tmp_path):
    """No diffusers notes (e.g. the multi-line one about `accelerate`, printed even under -q)."""
    img = image(tmp_path / "a.png")
    res = run_percept("depth", img, "--model", vae_model, "-o", tmp_path / "out", "--steps", "2",
                      "--schedule", "default+trailing", "-q", cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert (tmp_path / "out" / "a.depth.npy").is_file()


@pytest.mark.parametrize("case", [None, "pickled-vae", "model-missing-weights"])
def test_no_library_log_record_or_warning_while_loading(vae_model, tmp_path, case):
    """In-process: diffusers' handler writes to the process's stderr, so listen on its logger instead."""
    import logging
    import warnings

    folder = vae_model if case is None else broken_copy(vae_model, tmp_path, case)[0]
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, _, stderr = percept("depth", image(tmp_path / "a.png"), "--model", folder, "-o", tmp_path / "out",
                                      "--steps", "2", "--schedule", "default+trailing", "-q")
    finally:
        logger.removeHandler(handler)
    assert code == (0 if case is None else 1), stderr
    assert [r.getMessage() for r in records] == [] and [str(w.message) for w in caught] == []


# ----------------------------------------------------------------------------------------- usage messages


@pytest.mark.parametrize("args, line", [
    (["bogus"], "error: No such command 'bogus'; see 'percept --help'"),
    (["models", "bogus"], "error: No such command 'bogus'; see 'percept models --help'"),
    (["deth", "a.png"], "error: No such command 'deth'. Did you mean 'depth'? See 'percept --help'"),
])
def test_unknown_commands_read_as_one_sentence(args, line):
    code, _, stderr = percept(*args)
    assert code == 2 and stderr.strip() == line
