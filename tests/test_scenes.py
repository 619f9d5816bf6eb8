import cv2
import numpy as np
import pytest

from percept_cli.data.scenes import _hit_object, _render_scene, _rot_y, render_scene
from percept_cli.errors import UsageError
from tests.helpers import warp_error


def test_same_seed_same_scene_other_seed_differs():
    a, b, c = render_scene(7, 64), render_scene(7, 64), render_scene(8, 64)
    for field in ("rgb", "rgb2", "depth", "flow", "visible_mask", "whole_mask", "whole_rgb"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.rgb, c.rgb)
    assert not np.array_equal(a.depth, c.depth)


@pytest.mark.parametrize("size,hw", [(64, (64, 64)), ((48, 80), (48, 80)), ((80, 48), (80, 48))])
def test_shapes_and_dtypes(size, hw):
    s = render_scene(3, size)
    h, w = hw
    assert s.rgb.shape == s.rgb2.shape == s.whole_rgb.shape == (h, w, 3)
    assert s.rgb.dtype == s.rgb2.dtype == s.whole_rgb.dtype == np.uint8
    assert s.depth.shape == (h, w) and s.depth.dtype == np.float32
    assert s.flow.shape == (h, w, 2) and s.flow.dtype == np.float32
    assert s.visible_mask.shape == s.whole_mask.shape == (h, w)
    assert s.visible_mask.dtype == s.whole_mask.dtype == bool
    assert s.seed == 3


def test_flow_is_exact_photometrically():
    # Without shadows the residual is bilinear blur and the shading change of yawing faces, so the
    # exact flow must beat zero flow by far and a half-pixel shift of itself.
    for seed in range(4):
        scene, aux = _render_scene(seed, 128, shadows=False)
        exact = warp_error(scene, aux, scene.flow)
        zero = warp_error(scene, aux, np.zeros_like(scene.flow))
        shifted = warp_error(scene, aux, scene.flow + np.float32(0.5))
        assert exact < 2.0, seed
        assert exact < 0.25 * zero, seed
        assert exact < shifted, seed
    # Shadows that move across surfaces add residual, but the flow still explains the frames.
    scene, aux = _render_scene(0, 128)
    assert warp_error(scene, aux, scene.flow) < 0.3 * warp_error(scene, aux, np.zeros_like(scene.flow))


def test_flow_is_exact_geometrically():
    # Cast a frame-2 ray through each object pixel's landing point: it must hit the same material point.
    scene, aux = _render_scene(5, 96)
    h, w = scene.depth.shape
    ys, xs = np.mgrid[0:h, 0:w]
    cam, cam2 = aux["cam"], aux["cam2"]
    checked = 0
    for k, (o1, o2) in enumerate(zip(aux["objs"], aux["objs2"])):
        sel = aux["ids1"] == k
        if not sel.any():
            continue
        x2, y2 = xs[sel] + scene.flow[sel][:, 0], ys[sel] + scene.flow[sel][:, 1]
        d1 = cam.rot @ np.stack([(xs[sel] - cam.cx) / cam.f, (ys[sel] - cam.cy) / cam.f, np.ones(sel.sum())])
        d2 = cam2.rot @ np.stack([(x2 - cam2.cx) / cam2.f, (y2 - cam2.cy) / cam2.f, np.ones(sel.sum())])
        t2 = _hit_object(o2, cam2.pos, d2)  # (M,) equals camera-2 z, as d2 has camera-z 1
        # Points that turn away (self-occluded in frame 2) are not seen there; skip them.
        seen = np.abs(t2 - aux["proj_z2"][sel]) < 1e-3 * aux["proj_z2"][sel]
        p1 = cam.pos[:, None] + scene.depth[sel] * d1  # (3, M) frame-1 hits, from the depth map
        p2 = cam2.pos[:, None] + t2 * d2  # (3, M)
        local1 = _rot_y(o1.yaw).T @ (p1 - o1.centre[:, None])
        local2 = _rot_y(o2.yaw).T @ (p2 - o2.centre[:, None])
        np.testing.assert_allclose(local2[:, seen], local1[:, seen], atol=1e-3)  # float32 depth and flow
        checked += seen.sum()
    assert checked > 0.05 * h * w


def test_flow_magnitude_and_depth():
    mags = []
    for seed in range(8):
        s = render_scene(seed, 128)
        assert np.isfinite(s.flow).all()
        assert np.isfinite(s.depth).all() and (s.depth > 0).all()
        mags.append(np.percentile(np.linalg.norm(s.flow, axis=-1), 95))
    assert 1.0 < np.median(mags) < 0.15 * 128
    assert max(mags) < 0.3 * 128


def test_amodal_targets():
    counts = set()
    for seed in range(20):
        s, aux = _render_scene(seed, 96)
        counts.add(aux["n_objects"])
        assert not (s.visible_mask & ~s.whole_mask).any()
        frac = s.visible_mask.sum() / s.whole_mask.sum()
        assert 0.25 <= frac <= 0.85, seed
        border = np.concatenate([s.whole_mask[0], s.whole_mask[-1], s.whole_mask[:, 0], s.whole_mask[:, -1]])
        assert border.mean() <= 0.01, seed
        assert (s.whole_rgb[~s.whole_mask] == 255).all()
        np.testing.assert_array_equal(s.whole_rgb[s.visible_mask], s.rgb[s.visible_mask])
    assert len(counts) >= 4 and counts <= set(range(3, 8))


def test_scenes_vary():
    means = np.array([render_scene(seed, 32).rgb.reshape(-1, 3).mean(axis=0) for seed in range(6)])  # (6, 3)
    assert means.std(axis=0).min() > 5


@pytest.mark.parametrize("size", [0, 4, (64,), (64, 64, 3), "64", 64.0])
def test_bad_size_is_a_usage_error(size):
    with pytest.raises(UsageError, match="size"):
        render_scene(0, size)


def test_bad_seed_is_a_usage_error():
    with pytest.raises(UsageError, match="seed"):
        render_scene(-1, 32)


def test_sample_batch_equals_the_one_sample_reference_and_parallel_render_equals_serial():
    from percept_cli.data.mixture import ScenePool, example, sample_batch

    pool = ScenePool.render(range(12), 32)
    forked = ScenePool.render(range(12), 32, workers=2)
    for key in ScenePool.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(pool, key), getattr(forked, key), err_msg=key)
    weights = {"depth": 1.5, "amodal": 1.0, "flow_u": 1.0, "flow_v": 1.0, "generate": 0.5}
    cond, target, labels, kinds = sample_batch(pool, np.random.default_rng(3), 48, weights, (8.0, 6.0))
    # replay the same draws, one sample at a time
    rng = np.random.default_rng(3)
    p = np.array(list(weights.values()))
    chosen = rng.choice(len(p), size=48, p=p / p.sum())
    idx, flips = rng.integers(0, len(pool), size=48), rng.random(48) < 0.5
    assert set(kinds) == set(weights) and flips.any() and not flips.all()
    for j in range(48):
        c, t, label = example(pool, int(idx[j]), list(weights)[chosen[j]], bool(flips[j]), (8.0, 6.0))
        np.testing.assert_array_equal(cond[j], c)
        np.testing.assert_array_equal(target[j], t)
        assert labels[j] == label and kinds[j] == list(weights)[chosen[j]]


def test_sequence_ends_at_the_two_frames_of_its_scene():
    from percept_cli.data.scenes import _render_scene, render_sequence

    seq = render_sequence(3, 5, 48)
    scene, aux = _render_scene(3, 48)
    assert seq.rgb.shape == (5, 48, 48, 3) and seq.depth.shape == (5, 48, 48)
    np.testing.assert_array_equal(seq.rgb[0], scene.rgb)
    np.testing.assert_array_equal(seq.depth[0], scene.depth)
    np.testing.assert_array_equal(seq.rgb[-1], scene.rgb2)
    np.testing.assert_allclose(seq.depth[-1], aux["depth2"], atol=1e-5)  # the rotation goes through a rotvec
    steps = np.abs(np.diff(seq.depth, axis=0)).mean(axis=(1, 2))  # (4,)
    assert steps.min() > 0 and steps.max() < 2.0 * steps.min()  # equal steps: smooth, not one jump
