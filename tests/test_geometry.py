"""Point clouds, intrinsics, PLY files and metric alignment (percept_cli.geometry)."""

import numpy as np
import pytest

from percept_cli import geometry as G
from percept_cli.errors import InputError


def test_intrinsics_priority_and_fov():
    k = G.intrinsics(640, 480, fov=90.0, exif_focal_px=1000.0)
    assert k.fx == pytest.approx(320.0) and k.source.startswith("--fov")  # --fov wins over EXIF
    assert k.hfov == pytest.approx(90.0)
    k = G.intrinsics(640, 480, exif_focal_px=1000.0)
    assert k.fx == 1000.0 and "EXIF" in k.source
    k = G.intrinsics(640, 480)
    assert k.hfov == pytest.approx(G.DEFAULT_FOV) and "default" in k.source
    with pytest.raises(InputError, match="--fov 0"):
        G.intrinsics(640, 480, fov=0.0)


def test_exif_focal_length_35mm_equivalent(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (360, 240))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 36  # 36 mm-equivalent on a 36 mm frame -> focal = image width
    img.save(tmp_path / "a.jpg", exif=exif)
    assert G.exif_focal_px(tmp_path / "a.jpg", 360) == pytest.approx(360.0)
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    assert G.exif_focal_px(tmp_path / "b.png", 8) is None


def test_backproject_recovers_a_plane():
    # a fronto-parallel wall at z = 2 back-projects to points with z = 2 and x spanning the field of view
    k = G.intrinsics(64, 48, fov=90.0)
    pts = G.backproject(np.full((48, 64), 2.0, np.float32), k)
    assert pts.shape == (48, 64, 3)
    np.testing.assert_allclose(pts[..., 2], 2.0)
    assert pts[0, 0, 0] < 0 and pts[0, -1, 0] > 0 and pts[0, 0, 1] < 0 < pts[-1, 0, 1]  # x right, y down
    np.testing.assert_allclose(pts[24, -1, 0], 2.0 * (63.5 - 32) / 32, rtol=1e-6)  # tan(45 deg) at the edge


def test_ply_round_trip_with_uncertainty_filter(tmp_path):
    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 3, (6, 8)).astype(np.float32)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    unc = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    pts, col, u = G.point_cloud(depth, rgb, G.intrinsics(8, 6), unc, max_uncertainty=0.5)
    assert len(pts) == int((unc <= 0.5).sum()) == 24
    path = tmp_path / "c.ply"
    path.write_bytes(G.ply_bytes(pts, col, u))
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    back = G.read_ply(path)
    assert set(back) == {"x", "y", "z", "red", "green", "blue", "uncertainty"}
    np.testing.assert_array_equal(np.stack([back["x"], back["y"], back["z"]], 1), pts)
    np.testing.assert_array_equal(np.stack([back["red"], back["green"], back["blue"]], 1), col)
    assert back["x"].dtype == np.float32 and back["red"].dtype == np.uint8
    path.write_bytes(G.ply_bytes(pts, col))  # one member: no uncertainty property
    assert "uncertainty" not in G.read_ply(path)


def test_fit_is_exact_and_robust_to_outliers():
    rng = np.random.default_rng(1)
    pred = rng.uniform(0, 1, 20)
    target = 4.0 * pred + 1.5
    s, t, inl = G.fit_scale_shift(pred, target)
    assert (s, t) == pytest.approx((4.0, 1.5)) and inl.all()
    target[[3, 11]] = [50.0, 0.1]  # two wrong points among 20
    s, t, inl = G.fit_scale_shift(pred, target)
    assert (s, t) == pytest.approx((4.0, 1.5), rel=1e-9)
    assert not inl[3] and not inl[11] and inl.sum() == 18
    s, t, _ = G.fit_scale_shift(np.array([0.2, 0.7]), np.array([2.0, 4.5]))  # two points: the line through them
    assert (s, t) == pytest.approx((5.0, 1.0))


def test_fit_errors():
    with pytest.raises(InputError, match="at least 2"):
        G.fit_scale_shift(np.array([0.5]), np.array([1.0]))
    with pytest.raises(InputError, match="same at every known point"):
        G.fit_scale_shift(np.array([0.5, 0.5, 0.5]), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(InputError, match="positive scale"):
        G.fit_scale_shift(np.array([0.1, 0.9]), np.array([5.0, 1.0]))  # farther in the prediction, nearer in metres


def test_align_file_parsing_and_errors(tmp_path):
    f = tmp_path / "pts.txt"
    f.write_text("# x y depth\n10 5 2.5\n20,30,4.0\n\n")
    np.testing.assert_array_equal(G.read_align_points(f, 64, 48), [[10, 5, 2.5], [20, 30, 4.0]])
    f.write_text("10 5 2.5\n100 5 3\n")
    with pytest.raises(InputError, match=r"point \(100, 5\) is outside the 64x48 image"):
        G.read_align_points(f, 64, 48)
    f.write_text("10 5 2.5\n")
    with pytest.raises(InputError, match="1 point"):
        G.read_align_points(f, 64, 48)
    f.write_text("10 5 two\n")
    with pytest.raises(InputError, match="line 1: expected 'x y depth'"):
        G.read_align_points(f, 64, 48)
    with pytest.raises(InputError, match="cannot read"):
        G.read_align_points(tmp_path / "missing.txt", 64, 48)


def test_align_depth_recovers_metres():
    yy, xx = np.mgrid[0:48, 0:64]
    rel = (xx / 63.0).astype(np.float32)  # affine-invariant depth in [0, 1]
    metres = 3.0 * rel + 2.0
    pts = np.array([[x, y, metres[y, x]] for x, y in [(0, 0), (20, 10), (40, 30), (63, 47), (10, 40)]], float)
    pts[4, 2] = 100.0  # one wrong point
    metric, info = G.align_depth(rel, pts)
    np.testing.assert_allclose(metric, metres, rtol=1e-5)
    assert info["inliers"] == 4 and info["points"] == 5


def test_render_cloud_draws_the_points():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3)).astype(np.float32) + [0, 0, 5]
    img = G.render_cloud(pts, np.full((500, 3), (200, 0, 0), np.uint8), size=(120, 160))
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    red = (img[..., 0] == 200) & (img[..., 1] == 0)
    assert red.sum() > 200  # the cloud is in view and fills a good part of the picture
