"""The photo scene style: exact ground truth with photo textures, variety, determinism; the classic style untouched."""

import cv2
import numpy as np
import pytest

from percept_cli.data.photos import PhotoBank
from percept_cli.data.scenes import (
    COMPOUND, PLANE, _hit_object, _photo_albedo, _render_scene, _Texture, render_scene,
)
from percept_cli.errors import UsageError
from tests.helpers import warp_error

# Four tiny "photos", each of one dominant hue with texture of several scales.
HUES = np.array([[0.85, 0.2, 0.15], [0.15, 0.75, 0.2], [0.2, 0.3, 0.9], [0.9, 0.8, 0.15]])


def _photo(i: int, h: int = 72, w: int = 96) -> np.ndarray:
    rng = np.random.default_rng(100 + i)
    noise = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), 1.5 + i)
    ys, xs = np.mgrid[0:h, 0:w]
    pattern = 0.5 + 0.25 * noise / noise.std() + 0.2 * np.sin(xs * (0.2 + 0.1 * i) + ys * 0.13)
    img = np.clip(HUES[i] * np.clip(pattern, 0.15, 1.0)[..., None] * 1.1, 0, 1)
    return (255 * img).astype(np.uint8)  # (h, w, 3) RGB


@pytest.fixture(scope="module")
def bank() -> PhotoBank:
    return PhotoBank([_photo(i) for i in range(4)], size=64)


def test_classic_is_the_default_and_unchanged_by_the_new_style(bank):
    a, b = render_scene(4, 48), render_scene(4, 48, style="classic")
    for field in ("rgb", "rgb2", "depth", "flow", "whole_rgb"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = render_scene(4, 48, photos=bank)  # photos select the photo style
    assert not np.array_equal(a.rgb, c.rgb)
    with pytest.raises(UsageError, match="style"):
        render_scene(4, 48, style="fancy")


def test_same_seed_same_scene_other_seed_differs(bank):
    a, b, c = (render_scene(s, 48, photos=bank) for s in (3, 3, 9))
    for field in ("rgb", "rgb2", "depth", "flow", "visible_mask", "whole_mask", "whole_rgb"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert not np.array_equal(a.rgb, c.rgb) and not np.array_equal(a.depth, c.depth)
    # without photos the style still renders, with procedural textures only
    d = render_scene(3, 48, style="photo")
    assert d.rgb.shape == (48, 48, 3) and not np.array_equal(d.rgb, a.rgb)


@pytest.mark.parametrize("size,hw", [(48, (48, 48)), ((48, 80), (48, 80)), ((72, 40), (72, 40))])
def test_shapes_dtypes_and_valid_ground_truth(bank, size, hw):
    s = render_scene(11, size, photos=bank)
    assert s.rgb.shape == s.rgb2.shape == s.whole_rgb.shape == hw + (3,) and s.rgb.dtype == np.uint8
    assert s.depth.shape == hw and s.depth.dtype == np.float32
    assert s.flow.shape == hw + (2,) and s.flow.dtype == np.float32
    assert np.isfinite(s.depth).all() and (s.depth > 0).all() and np.isfinite(s.flow).all()


def test_flow_is_exact_photometrically(bank):
    # Photo textures, no shadows or camera effects: the exact flow explains frame 2 far better than zero
    # flow or itself shifted by half a pixel; the residual is resampling of a textured image.
    ratios = []
    for seed in range(4):
        scene, aux = _render_scene(seed, 80, shadows=False, photos=bank, effects=False)
        exact = warp_error(scene, aux, scene.flow)
        zero = warp_error(scene, aux, np.zeros_like(scene.flow))
        shifted = warp_error(scene, aux, scene.flow + np.float32(0.5))
        assert exact < 4.0 and exact < shifted and exact < 0.6 * zero, (seed, exact, zero, shifted)
        ratios.append(exact / zero)
    assert np.mean(ratios) < 0.35


def test_flow_is_exact_geometrically(bank):
    # A frame-2 ray through each object pixel's landing point hits the same material point of the moved object
    # (cut-outs, unions and freely rotated objects included).
    checked, kinds, scenes = 0, set(), 0
    for seed in range(16):
        if scenes >= 3 and {PLANE, COMPOUND} <= kinds:
            break
        scenes += 1
        scene, aux = _render_scene(seed, 64, photos=bank)
        h, w = scene.depth.shape
        ys, xs = np.mgrid[0:h, 0:w]
        cam, cam2 = aux["cam"], aux["cam2"]
        for k, (o1, o2) in enumerate(zip(aux["objs"], aux["objs2"])):
            sel = aux["ids1"] == k
            if not sel.any():
                continue
            x2, y2 = xs[sel] + scene.flow[sel][:, 0], ys[sel] + scene.flow[sel][:, 1]
            d1 = cam.rot @ np.stack([(xs[sel] - cam.cx) / cam.f, (ys[sel] - cam.cy) / cam.f_y, np.ones(sel.sum())])
            d2 = cam2.rot @ np.stack([(x2 - cam2.cx) / cam2.f, (y2 - cam2.cy) / cam2.f_y, np.ones(sel.sum())])
            t2 = _hit_object(o2, cam2.pos, d2)
            seen = np.abs(t2 - aux["proj_z2"][sel]) < 1e-3 * aux["proj_z2"][sel]
            p1 = cam.pos[:, None] + scene.depth[sel] * d1
            p2 = cam2.pos[:, None] + t2 * d2
            local1 = o1.R().T @ (p1 - o1.centre[:, None])
            local2 = o2.R().T @ (p2 - o2.centre[:, None])
            np.testing.assert_allclose(local2[:, seen], local1[:, seen], atol=2e-3)
            checked += seen.sum()
            kinds.add(o1.kind)
    assert checked > 0.05 * scenes * 64 * 64 and {PLANE, COMPOUND} <= kinds


def _scene_with(bank, kind, size=64, clear_air=False, **kw):
    for seed in range(80):
        scene, aux = _render_scene(seed, size, photos=bank, **kw)
        for k, o in enumerate(aux["objs"]):
            sel = aux["ids1"] == k
            hazy = aux["world"].haze * scene.depth[sel].mean() > 0.02 if sel.any() else True
            if o.kind == kind and sel.sum() > 40 and not (clear_air and hazy):
                return scene, aux, k
    raise AssertionError(f"no scene with a visible object of kind {kind}")


def test_depth_of_a_cut_out_is_its_plane_distance(bank):
    scene, aux, k = _scene_with(bank, PLANE)
    cam, o = aux["cam"], aux["objs"][k]
    h, w = scene.depth.shape
    ys, xs = np.mgrid[0:h, 0:w]
    sel = aux["ids1"] == k
    d = cam.rot @ np.stack([(xs[sel] - cam.cx) / cam.f, (ys[sel] - cam.cy) / cam.f_y, np.ones(sel.sum())])  # camera-z 1
    n = o.R()[:, 2]  # the cut-out's normal
    t = (n @ (o.centre - cam.pos)) / (n @ d)  # ray-plane distance in camera-z units = z-depth
    np.testing.assert_allclose(scene.depth[sel], t, rtol=1e-5)
    # and the hit points lie inside its silhouette's bounding rectangle, in its plane
    local = o.R().T @ (cam.pos[:, None] + t * d - o.centre[:, None])
    assert np.abs(local[2]).max() < 1e-6 and (np.abs(local[:2]) <= o.half[:2, None] + 1e-6).all()


def test_amodal_targets(bank):
    kinds, fracs = set(), []
    for seed in range(16):
        s, aux = _render_scene(seed, 64, photos=bank)
        kinds.add(aux["objs"][0].kind)
        assert not (s.visible_mask & ~s.whole_mask).any(), seed  # the whole contains the visible part
        assert (s.whole_rgb[~s.whole_mask] == 255).all()
        assert s.visible_mask.sum() > 0
        fracs.append(s.visible_mask.sum() / s.whole_mask.sum())
    assert np.median(fracs) < 0.9 and min(fracs) > 0.15  # the target is partly hidden, mostly
    assert kinds - {0, 1, 2}  # targets are not only primitives (cut-outs, unions)


def test_textures_come_from_the_bank(bank):
    # The photo maps exactly onto a cut-out: texel centres of the crop sample to the crop's own pixels...
    scene, aux, k = _scene_with(bank, PLANE, clear_air=True, shadows=False, effects=False)
    tex: _Texture = aux["objs"][k].tex
    assert tex.kind == "photo"
    crop = tex.img[0]
    h, w = crop.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    uv = np.stack([(xs.ravel() - tex.offset[0]) / tex.scale, -(ys.ravel() - tex.offset[1]) / tex.scale])
    np.testing.assert_allclose(_photo_albedo(tex, uv, np.zeros(h * w)).T, crop.reshape(-1, 3), atol=1e-5)
    many = np.random.default_rng(0).uniform(-3, 3, (2, 40000))  # more points than cv2.remap takes rows
    assert _photo_albedo(tex, many, np.full(40000, 0.01)).shape == (3, 40000)
    hx = aux["objs"][k].half[0]  # ... and the crop spans the cut-out's width
    np.testing.assert_allclose(tex.offset[0] + tex.scale * np.array([-hx, hx]), [-0.5, w - 0.5])
    # ...and the rendered pixels show it, up to shading: their hue is the hue of one of the bank's photos.
    sel = aux["ids1"] == k
    col = aux["rgb_clean"][sel].astype(float) / aux["world"].light_rgb  # undo the light's tint
    chroma = col.mean(axis=0) / col.mean(axis=0).sum()
    hues = np.array([p.reshape(-1, 3).mean(axis=0) for p in bank.images], float)
    hues /= hues.sum(axis=1, keepdims=True)
    dist = np.linalg.norm(hues - chroma, axis=1)
    assert dist.min() < 0.06 and np.sort(dist)[1] > 2 * dist.min(), (chroma, hues)
    assert aux["rgb_clean"][sel].std(axis=0).max() > 3  # textured, not flat


def test_variety(bank):
    indoor, fovs, kinds, thin, floating, stretched = set(), [], set(), 0, 0, 0
    for seed in range(24):
        _, aux = _render_scene(seed, 32, photos=bank)
        indoor.add("flying" if aux["flying"] else aux["indoor"])
        cam = aux["cam"]
        fovs.append(np.degrees(2 * np.arctan((cam.cx + 0.5) / cam.f)))
        stretched += cam.fy is not None and abs(np.log(cam.fy / cam.f)) > 0.05  # a non-square crop on the grid
        for o in aux["objs"]:
            kinds.add(o.kind)
            thin += min(o.half[o.half > 0]) < 0.08 if o.kind != COMPOUND else 0
            floating += o.floating
    assert indoor == {True, False, "flying"}  # rooms, outdoors, objects flying before a photo wall
    assert min(fovs) < 45 and max(fovs) > 70
    assert kinds == {0, 1, 2, PLANE, COMPOUND} and thin >= 2 and floating >= 5
    assert 3 <= stretched <= 21


def test_camera_effects_touch_only_the_rgb(bank):
    changed = 0
    for seed in range(4):
        a, _ = _render_scene(seed, 48, photos=bank)
        b, _ = _render_scene(seed, 48, photos=bank, effects=False)
        for field in ("depth", "flow", "visible_mask", "whole_mask"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        changed += not np.array_equal(a.rgb, b.rgb)
    assert changed >= 2


def test_photo_bank_from_folder(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"p{i}.{'png' if i % 2 else 'jpg'}"), _photo(i, 300, 400)[..., ::-1])
    (tmp_path / "notes.txt").write_text("not a photo")
    bank = PhotoBank.from_folder(tmp_path, size=100)
    assert len(bank) == 3 and bank.names == ["p0.jpg", "p1.png", "p2.jpg"]
    assert min(bank.images[0].shape[:2]) == 100  # kept at the working size
    a = bank.crop(np.random.default_rng(5), 24, 40)
    b = bank.crop(np.random.default_rng(5), 24, 40)
    assert a.shape == (24, 40, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, b)  # deterministic given the generator
    assert PhotoBank.from_folder(tmp_path, size=100) is bank  # cached per process
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no readable"):
        PhotoBank.from_folder(empty)
    with pytest.raises(UsageError, match="not a folder"):
        PhotoBank.from_folder(tmp_path / "missing")


def test_scene_pool_and_training_config_take_a_texture_folder(tmp_path):
    from percept_cli.data.mixture import ScenePool
    from percept_cli.train import load_config

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        cv2.imwrite(str(photos / f"p{i}.png"), _photo(i)[..., ::-1])
    pool = ScenePool.render(range(4), 24, textures=str(photos))
    forked = ScenePool.render(range(4), 24, workers=2, textures=str(photos))
    classic = ScenePool.render(range(4), 24)
    for key in ScenePool.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(pool, key), getattr(forked, key), err_msg=key)
    assert not np.array_equal(pool.rgb, classic.rgb)
    cached = ScenePool.cached(tmp_path / "pool.npz", range(4), 24, textures=str(photos))
    np.testing.assert_array_equal(cached.rgb, pool.rgb)
    assert np.array_equal(ScenePool.cached(tmp_path / "pool.npz", range(4), 24).rgb, classic.rgb)  # not reused
    config = tmp_path / "train.toml"
    config.write_text(f'textures = "{photos}"\nresolution = 32\n')
    assert load_config(config).textures == str(photos)
    assert load_config(None).textures is None
    assert load_config(config, textures="other").textures == "other"
