"""The flow task's encoding: pixels -> training targets -> decoded pixels, with the generalist's (75, 100) scale."""

import numpy as np
import pytest

from percept_cli.tasks import flow_targets, get_task

GENERALIST = (75.0, 100.0)  # u / 75; v / 100 (the official data's 384-row units on the 512 grid)


def known_flow(h=4, w=6):
    """(H, W, 2) flow in pixels inside the encodable range: u in [-75, 75], v in [-100, 100]."""
    u = np.linspace(-75, 75, h * w, dtype=np.float32).reshape(h, w)
    v = np.linspace(100, -100, h * w, dtype=np.float32).reshape(h, w)
    return np.stack([u, v], axis=-1)


def test_flow_targets_scale_u_by_75_and_v_by_100():
    flow = np.zeros((2, 3, 2), np.float32)
    flow[..., 0], flow[..., 1] = 30.0, 30.0  # the same motion in pixels ...
    u, v = flow_targets(flow, GENERALIST)
    assert u.shape == v.shape == (3, 2, 3) and u.dtype == v.dtype == np.float32
    np.testing.assert_array_equal(u, np.full((3, 2, 3), 0.4, np.float32))  # ... is 30 / 75 for u
    np.testing.assert_array_equal(v, np.full((3, 2, 3), 0.3, np.float32))  # ... and 30 / 100 for v
    u, v = flow_targets(np.array([[[150.0, -250.0]]], np.float32), GENERALIST)
    assert u.ravel().tolist() == [1.0] * 3 and v.ravel().tolist() == [-1.0] * 3  # clipped to [-1, 1]


@pytest.mark.parametrize("config", [{"flow_scale": [75.0, 100.0]}, {}])  # {}: the generalist's scale by default
def test_targets_decode_back_to_the_flow_in_pixels(config):
    flow = known_flow()
    u, v = flow_targets(flow, GENERALIST)
    decoded = np.stack([np.stack([u, u]), np.stack([v, v])])  # (L=2 labels u, v; E=2 members; 3, H, W)
    values = get_task("flow").decode(decoded, config)
    assert values.shape == (2, 4, 6, 2)
    np.testing.assert_allclose(values[0], flow, atol=1e-4)
    np.testing.assert_allclose(values[1], flow, atol=1e-4)


def test_decode_uses_the_models_own_scale():
    decoded = np.full((2, 1, 3, 2, 2), 0.5, np.float32)  # output 0.5 for both components
    values = get_task("flow").decode(decoded, {"flow_scale": [8.0, 8.0]})
    np.testing.assert_array_equal(values[0, ..., 0], 4.0)
    np.testing.assert_array_equal(values[0, ..., 1], 4.0)
    values = get_task("flow").decode(decoded, {})
    assert values[0, 0, 0].tolist() == [37.5, 50.0]  # u * 75, v * 100


def test_train_pair_mirrors_u_only_and_prompts_with_frame_2():
    flow = np.stack([known_flow(), known_flow()])  # (n=2, H, W, 2)
    rng = np.random.default_rng(0)
    fields = {"flow": flow, "rgb": rng.integers(0, 256, (2, 4, 6, 3), dtype=np.uint8),
              "rgb2": rng.integers(0, 256, (2, 4, 6, 3), dtype=np.uint8)}
    scene = lambda name: fields[name].copy()  # noqa: E731
    flipped = np.array([False, True])
    task = get_task("flow")
    prompt, u = task.train_pair("flow_u", scene, flipped, GENERALIST)
    _, v = task.train_pair("flow_v", scene, flipped, GENERALIST)
    np.testing.assert_allclose(prompt, np.moveaxis(fields["rgb2"], -1, 1) / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(u[0, 0], flow[0, ..., 0] / 75, atol=1e-7)
    np.testing.assert_allclose(u[1, 0], -flow[1, ..., 0] / 75, atol=1e-7)  # a mirrored scene moves the other way
    np.testing.assert_allclose(v[:, 0], flow[..., 1] / 100, atol=1e-7)  # v is not mirrored
