"""Predictor: batched == sequential, flow u/v in one batch == two passes, shapes and checks."""

import numpy as np
import pytest

from percept_cli.autoencoder import PixelSpace
from percept_cli.errors import InputError, UsageError
from percept_cli.pipeline import Predictor, TaskInput
from percept_cli.schedules import SD2_SCHEDULER
from tests.helpers import tiny_dit

CONFIG = dict(resolution=32, steps=4, tasks=["depth", "flow", "amodal"], flow_scale=[8.0, 8.0])


@pytest.fixture(scope="module")
def predictor():
    return Predictor(tiny_dit(num_experts=4), PixelSpace(), SD2_SCHEDULER, CONFIG, device="cpu", dtype="fp32")


def inputs(task, n=2, seed=0, hw=(40, 52)):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        extra = {"depth": None, "flow": rng.integers(0, 256, (*hw, 3), dtype=np.uint8),
                 "amodal": rng.random(hw) > 0.6}[task]
        out.append(TaskInput(img, extra, name=f"in{i}"))
    return out


@pytest.mark.parametrize("task", ["depth", "flow", "amodal"])
def test_batched_equals_sequential(predictor, speed_benchmark, task):
    """The batched Predictor == the official procedure (benchmarks/speed.py: one member at a time, flow's u
    and v as separate passes, plain kernels)."""
    items = inputs(task)
    settings = predictor.settings(task, ensemble=3, batch_size=5, seed=7)
    for item, got in zip(items, predictor.predict(task, items, settings)):
        want = speed_benchmark.official_reference(predictor, task, item, settings)
        for key, value in vars(want).items():
            np.testing.assert_allclose(np.asarray(getattr(got, key), float), np.asarray(value, float), atol=1e-4, err_msg=key)


@pytest.mark.parametrize("batch_size", [1, 2, 7, 64])
def test_same_seed_same_output_whatever_batch_size(predictor, batch_size):
    items = inputs("flow", n=3)
    ref = predictor.predict("flow", items, predictor.settings("flow", ensemble=2, batch_size=4))
    got = predictor.predict("flow", items, predictor.settings("flow", ensemble=2, batch_size=batch_size))
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a.flow, b.flow, atol=1e-5)


def test_result_shapes_and_ranges(predictor):
    (d,) = predictor.predict("depth", inputs("depth", 1), predictor.settings("depth", ensemble=2))
    assert d.depth.shape == (40, 52) and d.depth.dtype == np.float32 and d.uncertainty.shape == (40, 52)
    assert d.depth.min() >= 0 and d.depth.max() <= 1 and d.depth.max() - d.depth.min() > 0.5
    (d1,) = predictor.predict("depth", inputs("depth", 1), predictor.settings("depth", ensemble=1))
    assert d1.uncertainty is None
    (a,) = predictor.predict("amodal", inputs("amodal", 1), predictor.settings("amodal", ensemble=3))
    assert a.mask.dtype == bool and a.image.dtype == np.uint8 and a.image.shape == (40, 52, 3)
    np.testing.assert_array_equal(a.mask, a.soft >= 0.5)


def test_flow_rescaled_to_input_pixels(predictor):
    """A 2x wider input gets 2x larger u for the same grid prediction."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    small2 = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    s = predictor.settings("flow")
    (a,) = predictor.predict("flow", [TaskInput(small, small2)], s)
    wide = np.repeat(small, 2, axis=1)
    (b,) = predictor.predict("flow", [TaskInput(wide, np.repeat(small2, 2, axis=1))], s)
    np.testing.assert_allclose(b.flow[..., 0].mean(), 2 * a.flow[..., 0].mean(), rtol=0.05, atol=1e-3)
    np.testing.assert_allclose(b.flow[..., 1].mean(), a.flow[..., 1].mean(), rtol=0.05, atol=1e-3)


def test_input_checks(predictor):
    img = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(InputError, match="same size as frame 1"):
        predictor.predict("flow", [TaskInput(img, np.zeros((20, 31, 3), np.uint8), name="a.png")])
    with pytest.raises(InputError, match="visible mask must be 30x20"):
        predictor.predict("amodal", [TaskInput(img, np.zeros((21, 30), bool), name="a.png")])
    with pytest.raises(InputError, match="uint8 RGB"):
        predictor.predict("depth", [TaskInput(img.astype(np.float32))])


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "--steps"), (dict(steps=1001), "--steps"), (dict(ensemble=0), "--ensemble"),
    (dict(resolution=30), "--resolution"), (dict(schedule="cosine+bogus"), "--schedule"),
    (dict(batch_size=0), "--batch-size"),
])
def test_settings_validation(predictor, kw, match):
    with pytest.raises(UsageError, match=match):
        predictor.settings("depth", **kw)


def test_settings_precedence():
    cfg = dict(CONFIG, steps=9, depth_ensemble=5)
    pred = Predictor(tiny_dit(), PixelSpace(), SD2_SCHEDULER, cfg, device="cpu")
    s = pred.settings("depth")
    assert (s.steps, s.ensemble, s.resolution) == (9, 5, 32)  # checkpoint defaults, per-task first
    assert pred.settings("flow").ensemble == 1
    assert pred.settings("depth", steps=2, ensemble=1).steps == 2  # a flag beats the checkpoint


def test_official_resolution_is_fixed(official_fixtures):
    from percept_cli.checkpoints import ModelSource, load_source

    fx = official_fixtures
    src = ModelSource("tiny-official", "official", weights=fx / "tiny_official_layout.pt", vae=fx / "tiny_vae",
                      scheduler=fx / "tiny_scheduler", config={"num_heads": 4})
    pred = Predictor(*load_source(src), device="cpu")
    assert pred.settings("depth").resolution == 64  # 8x8 latents x VAE factor 8
    with pytest.raises(UsageError, match="fixes it to 64"):
        pred.settings("depth", resolution=128)
    (r,) = pred.predict("depth", [TaskInput(np.full((50, 70, 3), 128, np.uint8))], pred.settings("depth", steps=2))
    assert r.depth.shape == (50, 70)
