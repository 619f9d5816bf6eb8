"""--fit tile (issue 14 section 3): the whole image for the layout, overlapping crops for detail, blended."""

import numpy as np
import pytest
import torch

from percept_cli import pipeline, run
from percept_cli.autoencoder import PixelSpace
from percept_cli.errors import UsageError
from percept_cli.pipeline import Predictor, TaskInput
from percept_cli.schedules import SD2_SCHEDULER
from percept_cli.tiling import plan_tiles

from tests.helpers import fast, files, image, percept, records, tiny_dit

RES = 64
CONFIG = dict(resolution=RES, steps=2, tasks=["depth", "flow", "amodal"], flow_scale=[8.0, 8.0])


def normalising_model(model, cond, noise, *a, **k):
    """An exact 'depth model' in its own units: the input's gray value, stretched to [-1, 1] per input.

    Like an affine-invariant model, every crop comes back with its own scale and shift.
    """
    x = cond[:, :3]  # pixel space: [rgb, prompt]; rgb in [-1, 1]
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6) * 2.0 - 1.0


@pytest.fixture
def predictor(monkeypatch):
    monkeypatch.setattr(pipeline, "ddim_sample", normalising_model)
    return Predictor(tiny_dit(), PixelSpace(), SD2_SCHEDULER, CONFIG, device="cpu", dtype="fp32")


def smooth_depth(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return 0.15 + 0.6 * xx / (w - 1) + 0.1 * np.sin(yy / 17.0) + 0.1 * np.cos(xx / 23.0)


def gray(depth: np.ndarray) -> np.ndarray:
    return np.repeat(np.round(depth * 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("hw,tiles", [((150, 400), 2), ((400, 150), 3), ((64, 64), 2), ((40, 300), 1)])
def test_tile_returns_the_input_shape(predictor, hw, tiles):
    img = gray(smooth_depth(*hw))
    (res,) = predictor.predict("depth", [TaskInput(img)], predictor.settings("depth", ensemble=2, fit="tile", tiles=tiles))
    assert res.depth.shape == hw and res.uncertainty.shape == hw
    assert res.depth.dtype == np.float32 and res.depth.min() == 0.0 and res.depth.max() == 1.0


def test_tile_blends_crops_in_their_own_units_without_seams(predictor):
    h, w = 180, 420
    truth = smooth_depth(h, w)
    img = gray(truth)
    want = (img[..., 0] - img[..., 0].min()) / float(np.ptp(img[..., 0]))
    (res,) = predictor.predict("depth", [TaskInput(img)], predictor.settings("depth", ensemble=1, fit="tile", tiles=2))
    err = np.abs(res.depth - want)
    assert err.max() < 0.02, err.max()  # every crop fitted back to one scale and shift
    # no seams: the blended map is as smooth across crop borders as the truth is
    step = np.abs(np.diff(res.depth, axis=1))
    true_step = np.abs(np.diff(want, axis=1))
    borders = sorted({x for _, _, x0, x1 in plan_tiles(h, w, 2) for x in (x0, x1 - 1) if 0 < x < w - 1})
    assert borders
    for x in borders:
        assert step[:, x - 1 : x + 1].max() <= true_step.max() + 0.01


def test_tile_batches_the_crops_with_the_whole_image(predictor, monkeypatch):
    calls = []

    def counting(model, cond, noise, *a, **k):
        calls.append(cond.shape[0])
        return normalising_model(model, cond, noise)

    monkeypatch.setattr(pipeline, "ddim_sample", counting)
    imgs = [TaskInput(gray(smooth_depth(120, 200))), TaskInput(gray(smooth_depth(100, 100)))]
    s = predictor.settings("depth", ensemble=1, fit="tile", tiles=2, batch_size=64)
    out = predictor.predict("depth", imgs, s)
    parts = sum(1 + len(plan_tiles(*it.image.shape[:2], 2)) for it in imgs)
    assert calls == [parts]  # one batch: layouts and crops of both inputs together
    assert [r.depth.shape for r in out] == [(120, 200), (100, 100)]


def test_tile_is_for_depth_only(predictor):
    for task in ("flow", "amodal"):
        with pytest.raises(UsageError, match="--fit tile is for depth"):
            predictor.settings(task, fit="tile")
        with pytest.raises(UsageError, match="--fit tile is for depth"):
            run.check_options(task, run.Options(fit="tile"))
    with pytest.raises(UsageError, match="--tiles must be at least 1"):
        predictor.settings("depth", fit="tile", tiles=0)
    with pytest.raises(UsageError, match="--tiles must be at least 1"):
        run.check_options("depth", run.Options(fit="tile", tiles=0))
    assert predictor.settings("depth", fit="tile").tiles == pipeline.DEFAULTS["tiles"]


def test_cli_fit_tile(model, tmp_path):
    img = image(tmp_path / "wide.png", hw=(30, 90))
    code, stdout, stderr = percept("depth", img, "-o", tmp_path / "out", "--fit", "tile", "--tiles", "2", "--json",
                                   "--ensemble", "2", *fast(model))
    assert code == 0, stderr
    (rec,) = records(stdout)
    assert rec["settings"]["fit"] == "tile" and rec["settings"]["tiles"] == 2
    assert sorted(rec["outputs"]) == sorted(str(tmp_path / "out" / f) for f in files(tmp_path / "out"))
    depth = np.load(tmp_path / "out" / "wide.depth.npy")
    assert depth.shape == (30, 90) and np.isfinite(depth).all()
    code, stdout, stderr = percept("flow", img, img, "-o", tmp_path / "f", "--fit", "tile", *fast(model))
    assert code == 2 and "--fit tile is for depth" in stderr


# ----------------------------------------------------------------------------------------- the edge metric


def test_edge_error_is_zero_for_exact_depth_and_grows_with_blur():
    import cv2

    from percept_cli.metrics import edge_error

    gt = np.full((64, 80), 6.0)
    gt[16:48, 20:50] = 2.0  # a box in front of a wall: depth edges on its outline
    gt += np.linspace(0, 0.5, 80)[None, :]  # a gentle slant: no edge
    assert edge_error(gt, gt) < 1e-12
    assert edge_error(0.25 * gt + 3.0, gt) < 1e-12  # aligned by scale and shift first
    errs = [edge_error(cv2.GaussianBlur(gt, (0, 0), s), gt) for s in (0.7, 1.5, 3.0)]
    assert 0 < errs[0] < errs[1] < errs[2]
    flat = np.full_like(gt, 4.0) + np.linspace(0, 0.1, 80)[None, :]
    assert errs[2] < edge_error(flat, gt)  # no edges at all: the worst
    assert np.isnan(edge_error(flat, flat))  # no depth edges in the truth: undefined
    valid = np.ones_like(gt, bool)
    valid[:, :10] = False
    assert edge_error(gt, gt, valid) < 1e-12
    with pytest.raises(ValueError, match="shape"):
        edge_error(gt[:, :5], gt)
