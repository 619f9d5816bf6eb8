"""--fit stretch|pad: how a non-square input meets a square processing grid (issue 13 section 5)."""

import cv2
import numpy as np
import pytest
import torch

from percept_cli import pipeline
from percept_cli.autoencoder import PixelSpace
from percept_cli.errors import UsageError
from percept_cli.pipeline import Predictor, TaskInput
from percept_cli.schedules import SD2_SCHEDULER

from tests.helpers import tiny_dit

RES = 64  # processing grid (pixel space: the model sees 64x64)
CONFIG = dict(resolution=RES, steps=2, tasks=["depth", "flow", "amodal"], flow_scale=[8.0, 8.0])
DILATE = 4  # grid pixels


def isotropic_model(model, cond, noise, labels, scheduler, steps, **kw):
    """Stands in for sampling: the 'prediction' is the input image dilated by the same radius in x and y.

    It works in the grid the model sees, like any convolutional model: if that grid squashed the
    image, the dilation is anisotropic back in the input's pixels.
    """
    rgb = cond[:, :3]  # pixel space: cond = [rgb, prompt]
    return torch.nn.functional.max_pool2d(rgb, 2 * DILATE + 1, stride=1, padding=DILATE)


@pytest.fixture
def predictor(monkeypatch):
    monkeypatch.setattr(pipeline, "ddim_sample", isotropic_model)
    return Predictor(tiny_dit(), PixelSpace(), SD2_SCHEDULER, CONFIG, device="cpu", dtype="fp32")


def circle_image(h: int, w: int, radius: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (w // 2, h // 2), radius, (255, 255, 255), -1)
    return img


def blob_aspect(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    return (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)


@pytest.mark.parametrize("hw", [(200, 400), (400, 200)])
def test_pad_keeps_a_circle_round_and_stretch_does_not(predictor, hw):
    img = circle_image(*hw, radius=50)
    assert abs(blob_aspect(img[..., 0] > 127) - 1.0) < 0.03
    out = {}
    for fit in ("stretch", "pad"):
        (res,) = predictor.predict("depth", [TaskInput(img)], predictor.settings("depth", ensemble=1, fit=fit))
        assert res.depth.shape == img.shape[:2]  # cropped back to exactly the input's size
        out[fit] = blob_aspect(res.depth > 0.5)
    # pad: the dilation stays isotropic; stretch: the grid squashed the long side 2x, so the dilated
    # circle (50 px + 4 grid px) is 75 px wide along the long side and 62.5 px along the short one.
    assert abs(out["pad"] - 1.0) < 0.05, out
    long_over_short = out["stretch"] if hw[1] > hw[0] else 1 / out["stretch"]
    assert long_over_short > 1.12, out


def test_pad_round_trip_puts_the_circle_back_in_place(predictor, monkeypatch):
    monkeypatch.setattr(pipeline, "ddim_sample", lambda model, cond, *a, **k: cond[:, :3])  # identity 'model'
    img = circle_image(150, 420, radius=40)
    (res,) = predictor.predict("depth", [TaskInput(img)], predictor.settings("depth", ensemble=1, fit="pad"))
    want = img[..., 0] > 127
    got = res.depth > 0.5
    assert got.shape == want.shape
    assert (got != want).mean() < 0.01  # the letterbox is cropped off where it was added


def test_pad_seen_by_the_model_is_square_letterbox(predictor):
    img = circle_image(100, 300, radius=30)
    img[:, 0] = (10, 20, 30)  # a coloured left edge: replicated into the letterbox, not black
    lat = predictor._encode("depth", TaskInput(img), (RES, RES), "pad")
    rgb = ((lat[0, :3].permute(1, 2, 0).numpy() + 1) * 127.5).round()
    # 300 wide -> 64 px; 100 rows sit in the middle 64 * 100/300 = 21.3 rows, the rest replicates the edges
    assert np.allclose(rgb[0, 32], rgb[20, 32], atol=1) and np.allclose(rgb[63, 32], rgb[44, 32], atol=1)
    mask = rgb[..., 0] > 127
    assert abs(blob_aspect(mask) - 1.0) < 0.15  # the circle is round in the grid too


@pytest.mark.parametrize("task", ["depth", "flow", "amodal"])
@pytest.mark.parametrize("hw", [(37, 91), (90, 31), (64, 64)])
def test_pad_output_shapes_equal_input_shapes(predictor, task, hw):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    extra = {"depth": None, "flow": rng.integers(0, 256, (*hw, 3), dtype=np.uint8),
             "amodal": rng.random(hw) > 0.5}[task]
    (res,) = predictor.predict(task, [TaskInput(img, extra)], predictor.settings(task, ensemble=2, fit="pad"))
    main = {"depth": "depth", "flow": "flow", "amodal": "mask"}[task]
    assert getattr(res, main).shape[:2] == hw
    assert res.uncertainty.shape == hw


def test_pad_scales_flow_vectors_uniformly(predictor, monkeypatch):
    # a constant flow of (1, 1) grid pixels; with pad one grid pixel is max(h, w) / RES input pixels both ways
    monkeypatch.setattr(pipeline, "ddim_sample", lambda model, cond, noise, *a, **k: torch.full_like(noise, 1 / 8.0))
    img = np.zeros((50, 200, 3), np.uint8)
    got = {}
    for fit in ("stretch", "pad"):
        (res,) = predictor.predict("flow", [TaskInput(img, img)], predictor.settings("flow", ensemble=1, fit=fit))
        assert res.flow.shape == (50, 200, 2)
        got[fit] = res.flow[25, 100]
    np.testing.assert_allclose(got["pad"], [200 / RES, 200 / RES], rtol=1e-5)
    np.testing.assert_allclose(got["stretch"], [200 / RES, 50 / RES], rtol=1e-5)


def test_fit_default_and_validation():
    pred = Predictor(tiny_dit(), PixelSpace(), SD2_SCHEDULER, CONFIG, device="cpu", dtype="fp32")
    assert pred.settings("depth").fit == "stretch"  # built-in default: the official script's squash
    assert pred.settings("depth", fit="pad").as_dict()["fit"] == "pad"
    with pytest.raises(UsageError, match="--fit must be stretch, pad or tile"):
        pred.settings("depth", fit="crop")
    padded = Predictor(tiny_dit(), PixelSpace(), SD2_SCHEDULER, {**CONFIG, "fit": "pad"}, device="cpu", dtype="fp32")
    assert padded.settings("depth").fit == "pad"  # a checkpoint's percept.json may choose
    assert padded.settings("depth", fit="stretch").fit == "stretch"  # the flag beats it


def test_cli_fit_option(tmp_path):
    from typer.testing import CliRunner

    from percept_cli import run
    from percept_cli.cli import app

    for task in ("depth", "flow", "amodal"):
        help_text = CliRunner().invoke(app, [task, "--help"], env={"COLUMNS": "200"}).output
        assert "--fit" in help_text
    with pytest.raises(UsageError, match="--fit must be stretch, pad or tile"):  # checked before any model is loaded
        run.check_options("depth", run.Options(fit="crop"))
    run.check_options("depth", run.Options(fit="pad"))
