"""`percept depth|flow|amodal` end to end on a tiny seeded model (resolution 32, 2 steps, CPU).

Commands run in-process through main() inside CliRunner's isolation (stdin, stdout, stderr
captured), so the exit-code mapping is what is tested. The --help check runs in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from percept_cli import writers
from percept_cli.cli import app
from tests.helpers import ROOT, fast, files, image, no_model_load, percept, records, video  # noqa: F401

# ----------------------------------------------------------------------------------------- packaging


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\n"
        "from percept_cli.cli import main\n"
        "for argv in (['--help'], ['-h'], ['depth', '--help'], ['flow', '-h'], ['amodal', '--help'],"
        " ['models', '--help'], ['--version']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'cv2', 'huggingface_hub') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "percept 0.1.0" in res.stdout
    for name in ("depth", "flow", "amodal", "models", "--steps", "--ensemble", "--overwrite", "--json"):
        assert name in res.stdout


def test_app_runs_under_clirunner(model, tmp_path):
    img = image(tmp_path / "a.png")
    res = CliRunner().invoke(app, ["depth", str(img), "-o", str(tmp_path / "out"), *fast(model)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "a.depth.npy").is_file()


# ----------------------------------------------------------------------------------------- depth


def test_depth_folder_recursive_mirrors_subfolders_json(model, tmp_path):
    image(tmp_path / "in" / "x.png")
    image(tmp_path / "in" / "sub" / "y.jpg", hw=(24, 24), seed=1)
    image(tmp_path / "in" / "sub" / "deeper" / "x.png", hw=(16, 40), seed=2)
    out = tmp_path / "out"
    code, stdout, stderr = percept("depth", tmp_path / "in", "-r", "-o", out, "--json", *fast(model))
    assert code == 0, stderr
    recs = records(stdout)
    assert [r["status"] for r in recs] == ["ok"] * 3
    assert set(recs[0]) >= {"task", "inputs", "outputs", "settings", "seconds", "status", "frame", "model"}
    assert recs[0]["settings"]["steps"] == 2 and recs[0]["settings"]["resolution"] == 32
    assert recs[0]["settings"]["ensemble"] == 1  # unset -> the checkpoint's default
    assert files(out) == sorted(f"{stem}.depth.{ext}" for stem in ("x", "sub/y", "sub/deeper/x")
                                for ext in ("npy", "png", "color.png"))
    depth = np.load(out / "sub" / "deeper" / "x.depth.npy")
    assert depth.shape == (16, 40) and depth.dtype == np.float32 and 0 <= depth.min() <= depth.max() <= 1
    # format round trip: the 16-bit PNG holds round(depth * 65535)
    png = cv2.imread(str(out / "sub" / "deeper" / "x.depth.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16
    np.testing.assert_array_equal(png, np.round(depth.astype(np.float64) * 65535).astype(np.uint16))


def test_depth_without_recursive_takes_only_the_top_folder(model, tmp_path):
    image(tmp_path / "in" / "x.png")
    image(tmp_path / "in" / "sub" / "y.png")
    code, _, stderr = percept("depth", tmp_path / "in", "-o", tmp_path / "out", "--format", "npy", *fast(model))
    assert code == 0, stderr
    assert files(tmp_path / "out") == ["x.depth.npy"]


def test_stdin_and_glob(model, tmp_path):
    a, b = image(tmp_path / "a.png"), image(tmp_path / "b.png", seed=3)
    image(tmp_path / "c.jpg")
    code, stdout, _ = percept("depth", "-", "-o", tmp_path / "o1", "--format", "npy", "--json", *fast(model),
                              input=f"{a}\n# a comment\n\n{b}\n")
    assert code == 0 and [r["inputs"] for r in records(stdout)] == [[str(a)], [str(b)]]
    code, _, _ = percept("depth", str(tmp_path / "*.png"), "-o", tmp_path / "o2", "--format", "npy", *fast(model))
    assert code == 0 and files(tmp_path / "o2") == ["a.depth.npy", "b.depth.npy"]


def test_rerun_skips_done_inputs_without_loading_the_model(model, tmp_path, monkeypatch):
    for i in range(3):
        image(tmp_path / "in" / f"f{i}.png", seed=i)
    out = tmp_path / "out"
    args = ["depth", tmp_path / "in", "-o", out, "--json", *fast(model)]
    assert percept(*args)[0] == 0
    first = np.load(out / "f1.depth.npy")
    # everything exists: nothing to do, no model load
    with monkeypatch.context() as m:
        no_model_load(m)
        code, stdout, _ = percept(*args)
    assert code == 0 and [r["status"] for r in records(stdout)] == ["skipped"] * 3
    # a missing output resumes that input only
    (out / "f1.depth.color.png").unlink()
    code, stdout, _ = percept(*args)
    assert code == 0 and [r["status"] for r in records(stdout)] == ["skipped", "ok", "skipped"]
    assert (out / "f1.depth.color.png").is_file()
    np.testing.assert_array_equal(np.load(out / "f1.depth.npy"), first)
    # --overwrite predicts everything again (same seed: same numbers)
    np.save(out / "f0.depth.npy", np.zeros((20, 28), np.float32))
    code, stdout, _ = percept(*args, "--overwrite")
    assert code == 0 and [r["status"] for r in records(stdout)] == ["ok"] * 3
    assert np.load(out / "f0.depth.npy").std() > 0


def test_ensemble_writes_uncertainty_and_format_selects_files(model, tmp_path):
    img = image(tmp_path / "a.png")
    code, _, stderr = percept("depth", img, "-o", tmp_path / "out", "--ensemble", "2", "--format", "npy",
                              "--reduction", "mean", *fast(model))
    assert code == 0, stderr
    assert files(tmp_path / "out") == ["a.depth.npy", "a.depth.uncertainty.npy"]


# ----------------------------------------------------------------------------------------- flow


def test_flow_pair_flo_equals_the_pipeline(model, tmp_path):
    from percept_cli.hub import resolve_model
    from percept_cli.media import read_image
    from percept_cli.pipeline import Predictor, TaskInput

    a, b = image(tmp_path / "f1.png", seed=1), image(tmp_path / "f2.png", seed=2)
    code, stdout, stderr = percept("flow", a, b, "-o", tmp_path / "out", "--json", *fast(model))
    assert code == 0, stderr
    (rec,) = records(stdout)
    assert rec["inputs"] == [str(a), str(b)] and rec["status"] == "ok"
    assert files(tmp_path / "out") == ["f1.flow.flo", "f1.flow.npy", "f1.flow.png"]
    flo = writers.read_flo(tmp_path / "out" / "f1.flow.flo")
    np.testing.assert_array_equal(flo, np.load(tmp_path / "out" / "f1.flow.npy"))
    pred = Predictor.from_source(resolve_model(str(model)), device="cpu")
    (want,) = pred.predict("flow", [TaskInput(read_image(a), read_image(b))],
                           pred.settings("flow", steps=2, resolution=32, seed=0))
    np.testing.assert_allclose(flo, want.flow, atol=1e-5)


def test_flow_folder_of_frames_and_list_file(model, tmp_path):
    for i in range(3):
        image(tmp_path / "frames" / f"{i:03d}.png", seed=i)
    code, stdout, stderr = percept("flow", tmp_path / "frames", "-o", tmp_path / "o1", "--format", "flo", "--json",
                                   *fast(model))
    assert code == 0, stderr
    assert [r["inputs"] for r in records(stdout)] == [
        [str(tmp_path / "frames" / "000.png"), str(tmp_path / "frames" / "001.png")],
        [str(tmp_path / "frames" / "001.png"), str(tmp_path / "frames" / "002.png")]]
    listing = tmp_path / "pairs.txt"
    listing.write_text("# A B\nframes/000.png frames/002.png\n")
    code, _, stderr = percept("flow", "--list", listing, "-o", tmp_path / "o2", "--format", "flo", *fast(model))
    assert code == 0, stderr
    assert files(tmp_path / "o2") == ["000.flow.flo"]


# ----------------------------------------------------------------------------------------- videos


def test_video_depth_every_and_mp4(model, tmp_path):
    import imageio.v3 as iio

    clip = video(tmp_path / "clip.mp4", frames=5)
    out = tmp_path / "out"
    code, stdout, stderr = percept("depth", clip, "-o", out, "--every", "2", "--format", "npy", "--json",
                                   *fast(model))
    assert code == 0, stderr
    recs = records(stdout)
    assert [r["frame"] for r in recs] == [0, 2, 4, None]
    assert recs[-1]["outputs"] == [str(out / "clip.depth.mp4")] and recs[-1]["frames"] == 3
    assert files(out) == ["clip.depth.mp4"] + [f"clip/frame_{i:06d}.depth.npy" for i in (0, 2, 4)]
    assert iio.imread(out / "clip.depth.mp4").shape == (3, 24, 32, 3)
    # resume inside a video: one frame's outputs and the .mp4 gone -> only that frame runs again
    (out / "clip.depth.mp4").unlink()
    (out / "clip" / "frame_000002.depth.npy").unlink()
    code, stdout, _ = percept("depth", clip, "-o", out, "--every", "2", "--format", "npy", "--json", *fast(model))
    assert code == 0 and [r["status"] for r in records(stdout)] == ["skipped", "ok", "skipped", "ok"]
    assert iio.imread(out / "clip.depth.mp4").shape[0] == 3


def test_video_flow_consecutive_pairs_max_frames(model, tmp_path):
    clip = video(tmp_path / "clip.mp4", frames=5)
    out = tmp_path / "out"
    code, stdout, stderr = percept("flow", clip, "-o", out, "--max-frames", "3", "--format", "flo", "--json",
                                   *fast(model))
    assert code == 0, stderr
    assert [r["frame"] for r in records(stdout)] == [0, 1, None]
    assert files(out) == ["clip.flow.mp4", "clip/frame_000000.flow.flo", "clip/frame_000001.flow.flo"]
    assert writers.read_flo(out / "clip" / "frame_000000.flow.flo").shape == (24, 32, 2)


# ----------------------------------------------------------------------------------------- amodal


def test_amodal_mask_list_and_video(model, tmp_path):
    img = image(tmp_path / "scene.png", hw=(24, 32))
    mask = tmp_path / "visible.png"
    m = np.zeros((24, 32), np.uint8)
    m[5:15, 8:20] = 255
    cv2.imwrite(str(mask), m)
    code, stdout, stderr = percept("amodal", img, "--mask", mask, "-o", tmp_path / "o1", "--json", *fast(model))
    assert code == 0, stderr
    assert records(stdout)[0]["inputs"] == [str(img), str(mask)]
    assert files(tmp_path / "o1") == ["scene.amodal.npy", "scene.amodal.overlay.png", "scene.amodal.png",
                                      "scene.amodal.rgba.png"]
    png = cv2.imread(str(tmp_path / "o1" / "scene.amodal.png"), cv2.IMREAD_UNCHANGED)
    soft = np.load(tmp_path / "o1" / "scene.amodal.npy")
    assert set(np.unique(png)) <= {0, 255} and soft.shape == (24, 32)
    np.testing.assert_array_equal(png == 255, soft >= 0.5)

    (tmp_path / "l.txt").write_text("scene.png visible.png\n")
    code, _, stderr = percept("amodal", "--list", tmp_path / "l.txt", "-o", tmp_path / "o2", "--format", "png",
                              *fast(model))
    assert code == 0, stderr
    assert files(tmp_path / "o2") == ["scene.amodal.png"]

    clip = video(tmp_path / "clip.mp4", frames=2)
    code, _, stderr = percept("amodal", clip, "--mask", mask, "-o", tmp_path / "o3", "--format", "png",
                              *fast(model))
    assert code == 0, stderr
    assert files(tmp_path / "o3") == ["clip.amodal.mp4", "clip/frame_000000.amodal.png",
                                      "clip/frame_000001.amodal.png"]
