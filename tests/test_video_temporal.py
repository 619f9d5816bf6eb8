"""Temporally consistent video (issue 14 section 1): per-video task states, one colour range per clip,
--no-temporal, `percept eval --temporal`, and bounded memory on a long clip."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from percept_cli.tasks import DepthResult, FlowResult, TaskInput, get_task
from percept_cli.temporal import ClipRange, DepthVideo, FlowVideo
from tests.helpers import percept, tiny_model_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("video") / "tiny", num_experts=0)


def write_clip(path: Path, frames: int, hw=(32, 32)) -> Path:
    """A smooth clip: a gradient with a bright square drifting right, one pixel a frame."""
    import imageio.v2 as imageio

    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w]
    w_ = imageio.get_writer(path, format="FFMPEG", fps=10, codec="libx264", pixelformat="yuv420p",
                            macro_block_size=1, ffmpeg_log_level="error")
    for k in range(frames):
        img = np.stack([xs * 255 // w, ys * 255 // h, np.full_like(xs, 90)], -1).astype(np.uint8)
        x0 = k % (w - 8)
        img[8:16, x0 : x0 + 8] = 240
        w_.append_data(img)
    w_.close()
    return path


ITEM = TaskInput(np.zeros((16, 16, 3), np.uint8))


# ----------------------------------------------------------------------------------------- the states, pure


def test_flow_mp4_one_range_an_outlier_pixel_changes_no_other_colour():
    """Frame k = frame k-1 plus one 17 px outlier: every other pixel keeps its colour (per-frame scaling washed
    the frame out: the old behaviour, shown first)."""
    from percept_cli.writers import flow_to_color

    rng = np.random.default_rng(0)
    base = np.stack([np.full((32, 32), 1.5), np.full((32, 32), -0.8)], -1) + rng.normal(0, 0.3, (32, 32, 2))
    frames = [base.astype(np.float32) for _ in range(3)]
    frames[2] = frames[2].copy()
    frames[2][5, 7] = (17.0, 0.0)  # one outlier
    others = np.ones((32, 32), bool)
    others[5, 7] = False
    assert not np.array_equal(flow_to_color(frames[2])[others], flow_to_color(frames[1])[others])  # the bug
    state = get_task("flow").video_state()
    assert isinstance(state, FlowVideo)
    drawn = [state.visualise(FlowResult(f, None), ITEM) for f in frames]
    np.testing.assert_array_equal(drawn[2][others], drawn[1][others])
    assert not np.array_equal(drawn[2][5, 7], drawn[1][5, 7])  # the outlier itself shows (saturated)


def test_flow_range_widens_only_when_the_motion_grows():
    state = FlowVideo(get_task("flow"))
    slow = np.full((16, 16, 2), 1.0, np.float32)
    first = state.visualise(FlowResult(slow, None), ITEM)
    top = state.range.hi
    assert top == pytest.approx(np.sqrt(2))
    state.visualise(FlowResult(slow * 1.1, None), ITEM)  # within the slack: the same range, the same colours
    assert state.range.hi == top
    np.testing.assert_array_equal(state.visualise(FlowResult(slow, None), ITEM), first)
    state.visualise(FlowResult(slow * 5, None), ITEM)  # the clip speeds up: the range widens
    assert state.range.hi > 5 * np.sqrt(2)
    still = FlowVideo(get_task("flow"))
    out = still.visualise(FlowResult(np.zeros((8, 8, 2), np.float32), None), ITEM)
    assert (out == 255).all() and still.range.hi == 1.0  # a still clip: white, no division by zero


def test_clip_range_first_frame_sets_it_and_only_widens():
    r = ClipRange(low=1.0, high=99.0, slack=0.1)
    ramp = np.linspace(0.0, 1.0, 1000)
    lo, hi = r.update(ramp)
    assert lo == pytest.approx(0.01) and hi == pytest.approx(0.99)
    assert r.update(ramp * 0.5) == (lo, hi)  # narrower: kept
    spike = ramp.copy()
    spike[0] = 100.0  # one outlier does not move a percentile
    assert r.update(spike) == (lo, hi)
    lo2, hi2 = r.update(ramp * 2.0)
    assert lo2 == lo and hi2 > 1.9


def test_depth_state_aligns_each_frame_and_no_temporal_keeps_them():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.0, 1.0, (16, 16)).astype(np.float32)
    frames = [truth, 0.5 * truth + 0.2, 2.0 * truth - 0.3]  # one scene normalised three ways
    unc = np.full((16, 16), 0.01, np.float32)
    on, off = get_task("depth").video_state(True), get_task("depth").video_state(False)
    assert isinstance(on, DepthVideo) and on.aligner is not None and off.aligner is None
    aligned = [on.result(DepthResult(f, unc)) for f in frames]
    for a in aligned:
        np.testing.assert_allclose(a.depth, truth, atol=1e-5)
    np.testing.assert_allclose(aligned[1].uncertainty, 0.02, atol=1e-5)  # in the clip's units
    kept = [off.result(DepthResult(f, unc)) for f in frames]
    for k, f in zip(kept, frames):
        assert k.depth is f
    # the .mp4: one range for the clip, so equal aligned depth is drawn in equal colours
    a, b = (on.visualise(x, ITEM) for x in aligned[:2])
    np.testing.assert_array_equal(a, b)


def test_amodal_keeps_the_default_state():
    state = get_task("amodal").video_state(True)
    assert type(state).__name__ == "VideoState" and state.result("r") == "r"


# ----------------------------------------------------------------------------------------- the CLI


def test_video_depth_temporal_default_no_temporal_resume_and_json(model, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 6)
    fast = ["--model", model, "--resolution", "32", "--steps", "2", "--ensemble", "2", "-q"]
    outs = {}
    for name, flag in (("on", []), ("off", ["--no-temporal"])):
        code, stdout, stderr = percept("depth", clip, "-o", tmp_path / name, "--json", *flag, *fast)
        assert code == 0, stderr
        recs = [json.loads(line) for line in stdout.splitlines()]
        assert [r["frame"] for r in recs] == [0, 1, 2, 3, 4, 5, None]
        assert recs[-1]["outputs"] == [str(tmp_path / name / "clip.depth.mp4")] and recs[-1]["frames"] == 6
        assert all(Path(p).is_file() for r in recs for p in r["outputs"])
        outs[name] = [np.load(tmp_path / name / "clip" / f"frame_{i:06d}.depth.npy") for i in range(6)]
    np.testing.assert_array_equal(outs["on"][0], outs["off"][0])  # the first frame sets the clip's units
    for on, off in zip(outs["on"][1:], outs["off"][1:]):  # later frames: the same prediction, scale and shift
        a = np.stack([off.ravel(), np.ones(off.size)], 1)
        coef, *_ = np.linalg.lstsq(a, on.ravel(), rcond=None)
        np.testing.assert_allclose(a @ coef, on.ravel(), atol=1e-4)
    assert all(d.min() >= 0 and d.max() <= 1 for d in outs["off"])
    # resume: frames written by an earlier run carry the alignment on, so the result equals one run
    part = tmp_path / "part"
    assert percept("depth", clip, "-o", part, "--max-frames", "3", *fast)[0] == 0
    (part / "clip.depth.mp4").unlink()
    code, stdout, stderr = percept("depth", clip, "-o", part, "--json", *fast)
    assert code == 0, stderr
    assert [r["status"] for r in map(json.loads, stdout.splitlines())][:6] == ["skipped"] * 3 + ["ok"] * 3
    for i in range(6):
        np.testing.assert_array_equal(np.load(part / "clip" / f"frame_{i:06d}.depth.npy"), outs["on"][i])


def test_video_flow_mp4_and_no_temporal_flag(model, tmp_path):
    import imageio.v3 as iio

    clip = write_clip(tmp_path / "clip.mp4", 4)
    code, _, stderr = percept("flow", clip, "-o", tmp_path / "o", "--no-temporal", "--model", model,
                          "--resolution", "32", "--steps", "1", "-q")
    assert code == 0, stderr
    assert iio.imread(tmp_path / "o" / "clip.flow.mp4").shape[0] == 3


def test_eval_temporal_reports_both_modes(model):
    code, stdout, stderr = percept("eval", "--model", model, "--temporal", "--count", "1", "--frames", "3",
                               "--size", "32", "--resolution", "32", "--steps", "1", "--ensemble", "1", "--json")
    assert code == 0, stderr
    res = json.loads(stdout)
    assert res["count"] == 1 and res["frames"] == 3 and res["settings"]["steps"] == 1
    for row in (res["scores"], res["baselines"]["--no-temporal"]):
        assert set(row) == {"abs_rel", "delta1", "flicker"} and all(np.isfinite(list(row.values())))
    # per-frame AbsRel fits each frame by itself: alignment cannot change it
    assert res["scores"]["abs_rel"] == pytest.approx(res["baselines"]["--no-temporal"]["abs_rel"], rel=1e-3)
    code, _, stderr = percept("eval", "--model", model, "--temporal", "--frames", "1")
    assert code == 2 and "--frames" in stderr


# ----------------------------------------------------------------------------------------- memory on long clips

PEAK_RSS = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from percept_cli.cli import main
    from percept_cli.pipeline import Predictor
    from percept_cli.tasks import DepthResult

    def predict_iter(self, task, inputs, settings=None, on_step=None):  # trivial and fast: the run loop is tested
        for i, item in enumerate(inputs):
            yield i, DepthResult(item.image[..., 0].astype(np.float32) / 255.0, None)

    Predictor.predict_iter = predict_iter
    try:
        main(sys.argv[1:])
    except SystemExit as e:
        assert not e.code, e.code
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
""")


@pytest.mark.slow  # about 10 s of CPU: 2,200 frames decoded, written and encoded
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_long_video_memory_is_bounded(model, tmp_path):
    """Peak RSS of a 2,000-frame depth video (32x32, the temporal path: aligned, one colour range) against a
    200-frame one: frames stream through decoding, the task's video state, writing and the .mp4; none are held."""
    peaks = {}
    for n in (200, 2000):
        clip = write_clip(tmp_path / f"clip{n}.mp4", n)
        args = ["depth", clip, "-o", tmp_path / f"o{n}", "--model", model, "--format", "npy", "-q"]
        res = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, args)], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        peaks[n] = int(res.stdout.split()[-1]) / 1024  # MiB
        assert len(list((tmp_path / f"o{n}" / f"clip{n}").glob("*.depth.npy"))) == n
    print(f"peak RSS, MiB: {peaks}")
    assert peaks[2000] - peaks[200] < 50, peaks
