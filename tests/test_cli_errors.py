"""Every way a predicting command can fail: the exit code, the one-line message, no partial files.

Exit codes: 0 all done, 1 a user-facing error, 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from percept_cli import run, writers
from tests.helpers import ROOT, fast, files, image, no_model_load, percept, records, video


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert lines, stderr
    return lines[-1]


def no_temps(folder) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp-" in p.name]


# ----------------------------------------------------------------------------------------- usage errors (2)


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--ensemble", "0"], "--ensemble must be at least 1"),
    (["--every", "0"], "--every must be at least 1"),
    (["--max-frames", "-1"], "--max-frames must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--format", "npy,jpeg"], "'jpeg' is not a depth format; choose from npy,png16,color"),
    (["--dtype", "fp64"], "--dtype must be one of auto, fp32, bf16, fp16, got 'fp64'"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda, cuda:N or mps"),
    (["--reduction", "max"], "--reduction must be mean or median"),
    (["--schedule", "wobbly"], "--schedule: unknown part 'wobbly'"),
    (["--seed", "-3"], "--seed must be zero or positive"),
])
def test_bad_values_are_usage_errors_before_the_model_loads(tmp_path, monkeypatch, args, message):
    no_model_load(monkeypatch)
    img = image(tmp_path / "a.png")
    code, stdout, stderr = percept("depth", img, "-o", tmp_path / "out", "--model", "nowhere", *args)
    assert code == 2 and stdout == ""
    assert one_error_line(stderr).startswith("error: ") and message in stderr
    assert not (tmp_path / "out").exists()


def test_settings_the_model_refuses_are_usage_errors(model, tmp_path):
    img = image(tmp_path / "a.png")
    code, _, stderr = percept("depth", img, "-o", tmp_path / "out", *fast(model), "--resolution", "30")
    assert code == 2 and "--resolution must be a positive multiple of 4" in stderr
    assert files(tmp_path / "out") == []


@pytest.mark.parametrize("args, message", [
    (["depth", "a.png", "--bogus"], "No such option: --bogus"),
    (["depth", "a.png", "--steps", "many"], "Invalid value for '--steps'"),
    (["nonsense"], "No such command 'nonsense'"),
])
def test_typer_usage_errors_exit_2(args, message):
    code, _, stderr = percept(*args)
    assert code == 2 and message in one_error_line(stderr)


def test_amodal_needs_a_mask_and_flow_two_frames(model, tmp_path):
    img = image(tmp_path / "a.png")
    code, _, stderr = percept("amodal", img, *fast(model))
    assert code == 2 and "amodal needs exactly one of --mask MASK or --list FILE" in stderr
    code, _, stderr = percept("flow", img, *fast(model))
    assert code == 2 and f"flow needs two images but only '{img}' was given" in stderr  # a usage error


# ----------------------------------------------------------------------------------------- user errors (1)


def test_missing_input_fails_before_the_model_loads(tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    code, _, stderr = percept("depth", tmp_path / "gone.png", "-o", tmp_path / "out")
    assert code == 1
    assert one_error_line(stderr) == f"error: input '{tmp_path / 'gone.png'}' (argument) does not exist; check the path"


def test_unknown_model(tmp_path):
    img = image(tmp_path / "a.png")
    code, _, stderr = percept("depth", img, "-o", tmp_path / "out", "--model", "no-such-model")
    assert code == 1 and "unknown model 'no-such-model'" in one_error_line(stderr)


def test_output_folder_not_writable(model, tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    img = image(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    code, _, stderr = percept("depth", img, "-o", tmp_path / "file", *fast(model))
    assert code == 1 and "cannot create output folder" in stderr and "-o" in one_error_line(stderr)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        code, _, stderr = percept("depth", img, "-o", ro, *fast(model))
        assert code == 1 and f"output folder '{ro}' is not writable" in stderr


def test_batch_goes_on_past_a_corrupt_file_and_exits_1(model, tmp_path):
    image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    image(tmp_path / "in" / "c.png", seed=2)
    out = tmp_path / "out"
    code, stdout, stderr = percept("depth", tmp_path / "in", "-o", out, "--json", "--format", "npy", *fast(model))
    assert code == 1
    assert [r["status"] for r in records(stdout)] == ["ok", "failed", "ok"]
    assert "corrupt" in records(stdout)[1]["error"]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and f"'{tmp_path / 'in' / 'b.png'}'" in errors[0]
    assert errors[1].startswith(f"error: 1 of 3 inputs failed: {tmp_path / 'in' / 'b.png'};")
    assert files(out) == ["a.depth.npy", "c.depth.npy"]


def test_flow_pair_of_different_sizes_is_refused(model, tmp_path, monkeypatch):
    no_model_load(monkeypatch)  # nothing decodable: the model is never loaded
    a, b = image(tmp_path / "a.png", hw=(20, 28)), image(tmp_path / "b.png", hw=(30, 32))
    code, _, stderr = percept("flow", a, b, "-o", tmp_path / "out", *fast(model))
    assert code == 1
    assert (f"flow frames '{a}' (28x20) and '{b}' (32x30) differ in size (width x height); "
            f"flow needs two frames of one size: resize or crop '{b}' to 28x20") in stderr
    assert files(tmp_path / "out") == []


def test_mask_of_another_size_is_refused(model, tmp_path):
    img = image(tmp_path / "a.png", hw=(20, 28))
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((24, 32), np.uint8))
    code, _, stderr = percept("amodal", img, "--mask", tmp_path / "m.png", "-o", tmp_path / "out", *fast(model))
    assert code == 1
    assert f"mask '{tmp_path / 'm.png'}' is 32x24 but the image '{img}' is 28x20" in stderr


def test_corrupt_video_fails_alone(model, tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 64)
    img = image(tmp_path / "a.png")
    code, stdout, stderr = percept("depth", tmp_path / "bad.mp4", img, "-o", tmp_path / "out", "--json",
                                   "--format", "npy", *fast(model))
    assert code == 1 and "cannot read video" in stderr
    assert [r["status"] for r in records(stdout)] == ["failed", "ok"]
    assert files(tmp_path / "out") == ["a.depth.npy"]


# ----------------------------------------------------------------------------------------- interrupted (130)


def test_interrupt_mid_write_leaves_no_partial_file(model, tmp_path, monkeypatch):
    for i in range(3):
        image(tmp_path / "in" / f"f{i}.png", seed=i)
    real = writers.write_bytes
    calls = []

    def interrupted(path, data):
        calls.append(path)
        if len(calls) == 4:  # the second input's first file: half written, then Ctrl-C
            with writers.atomic_path(path) as tmp:
                tmp.write_bytes(data[: len(data) // 2])
                raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(writers, "write_bytes", interrupted)
    out = tmp_path / "out"
    code, _, stderr = percept("depth", tmp_path / "in", "-o", out, *fast(model))
    assert code == 130 and "interrupted" in stderr
    assert files(out) == ["f0.depth.color.png", "f0.depth.npy", "f0.depth.png"]  # complete files only
    assert no_temps(out)


def test_interrupt_mid_video_leaves_no_mp4(model, tmp_path, monkeypatch):
    clip = video(tmp_path / "clip.mp4", frames=3)
    real = run._Run.emit
    seen = []

    def emit(self, job):
        seen.append(job)
        if len(seen) == 2:  # after the first frame went into the .mp4
            raise KeyboardInterrupt
        return real(self, job)

    monkeypatch.setattr(run._Run, "emit", emit)
    out = tmp_path / "out"
    code, _, _ = percept("depth", clip, "-o", out, "--format", "npy", *fast(model))
    assert code == 130
    assert not (out / "clip.depth.mp4").exists() and no_temps(out)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


# ----------------------------------------------------------------------------------------- real processes


def test_exit_codes_of_the_installed_entry_point(tmp_path):
    def percept_process(*args):
        res = subprocess.run([sys.executable, "-m", "percept_cli", *map(str, args)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        return res.returncode, res.stdout, res.stderr

    code, stdout, stderr = percept_process("depth", "gone.png")
    assert (code, stdout) == (1, "") and stderr == "error: input 'gone.png' (argument) does not exist; check the path\n"
    code, _, stderr = percept_process("depth", "gone.png", "--steps", "0")
    assert code == 2 and stderr == "error: --steps must be at least 1, got 0\n"
    code, _, stderr = percept_process("flow", "--frobnicate")
    assert code == 2 and stderr.startswith("error: No such option: --frobnicate")
