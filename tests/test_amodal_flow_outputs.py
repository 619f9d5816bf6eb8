"""Outputs of issue 14 section 4: amodal --format rgba (and mask >= visible), flow --backward and occlusion."""

import cv2
import numpy as np
import pytest
import torch

from percept_cli import pipeline, run
from percept_cli.autoencoder import PixelSpace
from percept_cli.errors import UsageError
from percept_cli.pipeline import Predictor, TaskInput
from percept_cli.schedules import SD2_SCHEDULER
from percept_cli.tasks.amodal import TASK as AMODAL, amodal_rgba, write_amodal
from percept_cli.tasks.flow import TASK as FLOW, occlusion_mask, write_flow
from percept_cli.writers import read_flo

from tests.helpers import fast, files, image, percept, records, tiny_dit, video

RES = 64
SCALE = 8.0
CONFIG = dict(resolution=RES, steps=2, tasks=["depth", "flow", "amodal"], flow_scale=[SCALE, SCALE])
Y0, Y1, X0, X1, D = 24, 40, 20, 36, 5  # a 16 px square moving D px right between the frames


def square_frames(h=RES, w=RES) -> tuple[np.ndarray, np.ndarray]:
    a = np.full((h, w, 3), 30, np.uint8)
    b = a.copy()
    a[Y0:Y1, X0:X1] = 220
    b[Y0:Y1, X0 + D : X1 + D] = 220
    return a, b


def exact_flows(h=RES, w=RES) -> tuple[np.ndarray, np.ndarray]:
    """Forward (A -> B) and backward (B -> A) flow of the translating square over a static background."""
    fw, bw = np.zeros((h, w, 2), np.float32), np.zeros((h, w, 2), np.float32)
    fw[Y0:Y1, X0:X1, 0] = D
    bw[Y0:Y1, X0 + D : X1 + D, 0] = -D
    return fw, bw


def expected_occlusion(h=RES, w=RES) -> np.ndarray:
    occ = np.zeros((h, w), bool)
    occ[Y0:Y1, X1 : X1 + D] = True  # background of A that the square covers in B
    return occ


# ----------------------------------------------------------------------------------------- occlusion


def test_occlusion_marks_what_the_square_covers():
    fw, bw = exact_flows()
    np.testing.assert_array_equal(occlusion_mask(fw, bw), expected_occlusion())
    # the other direction: the background the square uncovers in B
    occ_b = occlusion_mask(bw, fw)
    want = np.zeros_like(occ_b)
    want[Y0:Y1, X0 : X0 + D] = True
    np.testing.assert_array_equal(occ_b, want)


def test_occlusion_bounds_and_frame_edges():
    h, w = 20, 30
    fw = np.zeros((h, w, 2), np.float32)
    assert not occlusion_mask(fw, fw).any()  # no motion: consistent everywhere
    small = np.zeros_like(fw)
    small[..., 0] = 0.6  # |w_f + w_b|^2 = 0.36 < beta = 0.5: within the tolerance
    assert not occlusion_mask(fw, small).any()
    fw[..., 0] = 3.0  # everything moves 3 px right; the backward flow agrees
    bw = -fw
    occ = occlusion_mask(fw, bw)
    assert occ[:, w - 3 :].all() and not occ[:, : w - 3].any()  # leaving the frame: no counterpart in B
    with pytest.raises(ValueError, match="must both be"):
        occlusion_mask(fw, bw[:, :5])


# ----------------------------------------------------------------------------------------- flow --backward


def exact_flow_model(model, cond, noise, labels, *a, **k):
    """An exact flow 'model' for the square scenes: the centroid shift between rgb (A) and prompt (B), on A's square."""
    out = torch.zeros_like(noise)
    for b in range(cond.shape[0]):
        ma, mb = cond[b, 0] > 0, cond[b, 3] > 0  # (H, W) the square in A and in B
        ya, xa = torch.nonzero(ma, as_tuple=True)
        yb, xb = torch.nonzero(mb, as_tuple=True)
        d = (xb.float().mean() - xa.float().mean()) if int(labels[b]) == 1002 else (yb.float().mean() - ya.float().mean())
        out[b, :, ma] = d / SCALE
    return out


@pytest.fixture
def predictor(monkeypatch):
    monkeypatch.setattr(pipeline, "ddim_sample", exact_flow_model)
    return Predictor(tiny_dit(), PixelSpace(), SD2_SCHEDULER, CONFIG, device="cpu", dtype="fp32")


def test_backward_predicts_b_to_a_and_the_occlusion(predictor):
    a, b = square_frames()
    s = predictor.settings("flow", ensemble=1, backward=True)
    (res,) = predictor.predict("flow", [TaskInput(a, b)], s)
    fw, bw = exact_flows()
    np.testing.assert_allclose(res.flow, fw, atol=1e-4)
    np.testing.assert_allclose(res.backward, bw, atol=1e-4)
    np.testing.assert_array_equal(res.occlusion, expected_occlusion())
    (plain,) = predictor.predict("flow", [TaskInput(a, b)], predictor.settings("flow", ensemble=1))
    assert plain.backward is None and plain.occlusion is None
    np.testing.assert_allclose(plain.flow, res.flow)


def test_backward_is_for_flow_only(predictor):
    for task in ("depth", "amodal"):
        with pytest.raises(UsageError, match="--backward is for flow"):
            predictor.settings(task, backward=True)
        with pytest.raises(UsageError, match="--backward is for flow"):
            run.check_options(task, run.Options(backward=True))
    with pytest.raises(UsageError, match="add --backward"):
        run.check_options("flow", run.Options(format="flo,occlusion"))
    assert run.check_options("flow", run.Options()) == ("flo", "png", "npy")
    assert run.check_options("flow", run.Options(backward=True)) == ("flo", "png", "npy", "backward", "occlusion")
    assert run.check_options("flow", run.Options(backward=True, format="png")) == ("png", "backward", "occlusion")


def test_write_flow_backward_files(tmp_path):
    fw, bw = exact_flows()
    occ = occlusion_mask(fw, bw)
    unc = np.ones(fw.shape[:2], np.float32)
    paths = write_flow(tmp_path / "f", fw, unc, ("flo", "backward", "occlusion"), backward=bw, occlusion=occ)
    assert [p.name for p in paths] == ["f.flow.flo", "f.flow.uncertainty.npy", "f.flow.backward.flo",
                                       "f.flow.occlusion.png"]  # the occlusion png adds no uncertainty png
    np.testing.assert_array_equal(read_flo(tmp_path / "f.flow.backward.flo"), bw)
    png = cv2.imread(str(tmp_path / "f.flow.occlusion.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(png, occ.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="--backward"):
        write_flow(tmp_path / "g", fw, None, "backward")
    assert FLOW.parse_formats("all") == ("flo", "png", "npy")


def test_cli_flow_backward_pair_video_and_resume(model, tmp_path):
    a, b = image(tmp_path / "a.png", seed=1), image(tmp_path / "b.png", seed=2)
    out = tmp_path / "out"
    code, stdout, stderr = percept("flow", a, b, "-o", out, "--backward", "--json", *fast(model))
    assert code == 0, stderr
    (rec,) = records(stdout)
    assert files(out) == ["a.flow.backward.flo", "a.flow.flo", "a.flow.npy", "a.flow.occlusion.png", "a.flow.png"]
    assert sorted(rec["outputs"]) == [str(out / f) for f in files(out)]
    assert rec["settings"]["backward"] is True
    occ = cv2.imread(str(out / "a.flow.occlusion.png"), cv2.IMREAD_UNCHANGED)
    assert occ.shape == (20, 28) and set(np.unique(occ)) <= {0, 255}
    assert read_flo(out / "a.flow.backward.flo").shape == (20, 28, 2)
    # resume: all files there -> skipped; one --backward file missing -> predicted again
    code, stdout, _ = percept("flow", a, b, "-o", out, "--backward", "--json", *fast(model))
    assert records(stdout)[0]["status"] == "skipped"
    code, stdout, _ = percept("flow", a, b, "-o", out, "--json", *fast(model))  # without --backward: done too
    assert records(stdout)[0]["status"] == "skipped"
    (out / "a.flow.occlusion.png").unlink()
    code, stdout, _ = percept("flow", a, b, "-o", out, "--backward", "--json", *fast(model))
    assert records(stdout)[0]["status"] == "ok" and (out / "a.flow.occlusion.png").is_file()
    # a video: each consecutive pair
    clip = video(tmp_path / "clip.mp4", frames=3)
    code, stdout, stderr = percept("flow", clip, "-o", tmp_path / "v", "--backward", "--format", "flo", "--json",
                                   *fast(model))
    assert code == 0, stderr
    assert files(tmp_path / "v") == ["clip.flow.mp4"] + [f"clip/frame_{i:06d}.flow.{s}" for i in (0, 1)
                                                         for s in ("backward.flo", "flo", "occlusion.png")]
    frames = [r for r in records(stdout) if r["frame"] is not None]
    assert all(any(o.endswith(".flow.occlusion.png") for o in r["outputs"]) for r in frames) and len(frames) == 2


# ----------------------------------------------------------------------------------------- amodal


def test_amodal_mask_contains_the_visible_mask(monkeypatch):
    # a 'model' that sees no object at all (a white image): the amodal mask is still the visible one
    monkeypatch.setattr(pipeline, "ddim_sample", lambda model, cond, noise, *a, **k: torch.ones_like(noise))
    pred = Predictor(tiny_dit(), PixelSpace(), SD2_SCHEDULER, CONFIG, device="cpu", dtype="fp32")
    img = np.full((50, 70, 3), 90, np.uint8)
    visible = np.zeros((50, 70), bool)
    visible[10:30, 20:45] = True
    for fit in ("stretch", "pad"):
        (res,) = pred.predict("amodal", [TaskInput(img, visible)], pred.settings("amodal", ensemble=2, fit=fit))
        np.testing.assert_array_equal(res.mask, visible)
        assert (res.soft[visible] == 1.0).all() and (res.soft[~visible] < 0.5).all()
    # a 'model' that completes the object below the occluder: the mask is its union with the visible one
    def below(model, cond, noise, *a, **k):
        out = torch.ones_like(noise)
        out[..., 40:, :] = -1.0  # dark rows = object
        return out

    monkeypatch.setattr(pipeline, "ddim_sample", below)
    square = np.full((64, 64, 3), 90, np.uint8)
    seen = np.zeros((64, 64), bool)
    seen[10:30, 20:45] = True
    (res,) = pred.predict("amodal", [TaskInput(square, seen)], pred.settings("amodal", ensemble=1))
    want = seen.copy()
    want[40:] = True
    np.testing.assert_array_equal(res.mask, want)


def test_rgba_is_the_completed_object_with_alpha_the_mask(tmp_path):
    mask = np.zeros((6, 8), bool)
    mask[1:5, 2:7] = True
    visible = np.zeros_like(mask)
    visible[1:3, 2:7] = True
    whole = np.full((6, 8, 3), 255, np.uint8)
    whole[mask] = (200, 10, 10)  # the model's completed object on white
    image = np.full((6, 8, 3), 40, np.uint8)
    rgba = amodal_rgba(whole, mask, image, visible)
    assert rgba.shape == (6, 8, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba[..., 3], mask.astype(np.uint8) * 255)
    assert (rgba[visible][:, :3] == 40).all()  # seen pixels: the input's own
    assert (rgba[mask & ~visible][:, :3] == (200, 10, 10)).all()  # hidden pixels: the completion
    paths = write_amodal(tmp_path / "m", mask, mask.astype(np.float32), image, None, "rgba", whole=whole,
                         visible=visible)
    assert [p.name for p in paths] == ["m.amodal.rgba.png"]
    back = cv2.cvtColor(cv2.imread(str(paths[0]), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    np.testing.assert_array_equal(back, rgba)
    with pytest.raises(ValueError, match="whole"):
        write_amodal(tmp_path / "n", mask, mask.astype(np.float32), image, None, "rgba")
    assert "rgba" in AMODAL.parse_formats("all")


def test_cli_amodal_rgba(model, tmp_path):
    img = image(tmp_path / "scene.png")
    mask = np.zeros((20, 28), np.uint8)
    mask[5:15, 8:20] = 255
    cv2.imwrite(str(tmp_path / "vis.png"), mask)
    out = tmp_path / "out"
    code, stdout, stderr = percept("amodal", img, "--mask", tmp_path / "vis.png", "-o", out, "--format", "png,rgba",
                                   "--json", *fast(model))
    assert code == 0, stderr
    (rec,) = records(stdout)
    assert sorted(rec["outputs"]) == [str(out / "scene.amodal.png"), str(out / "scene.amodal.rgba.png")]
    rgba = cv2.imread(str(out / "scene.amodal.rgba.png"), cv2.IMREAD_UNCHANGED)
    png = cv2.imread(str(out / "scene.amodal.png"), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (20, 28, 4)
    np.testing.assert_array_equal(rgba[..., 3], png)  # alpha = the amodal mask
    assert (png[mask > 0] == 255).all()  # which contains the visible mask
    code, stdout, _ = percept("amodal", img, "--mask", tmp_path / "vis.png", "-o", out, "--format", "png,rgba",
                              "--json", *fast(model))
    assert records(stdout)[0]["status"] == "skipped"
