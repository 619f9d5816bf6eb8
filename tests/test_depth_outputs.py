"""Depth outputs beyond the maps: point clouds (--format ply), metric alignment (--align), OpenEXR, --colormap.

CLI runs use the tiny seeded model of conftest (resolution 32); where the expectation must be exact, the
prediction is replaced by a known depth (an exactly rendered scene's, normalised) by patching
Predictor.predict_iter, so that the files can be checked against numbers known in advance.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from percept_cli import geometry as G, media, writers as W
from percept_cli.data.scenes import render_scene
from percept_cli.errors import UsageError
from percept_cli.tasks.depth import DepthResult, write_depth
from tests.helpers import fast, files, image, percept, records, video


def _cloud(path):
    v = G.read_ply(path)
    return np.stack([v["x"], v["y"], v["z"]], 1), np.stack([v["red"], v["green"], v["blue"]], 1), v


def _predict_exactly(monkeypatch, depth_of, uncertainty_of=None):
    """Make every depth prediction `depth_of(item)` (H, W) in [0, 1], with `uncertainty_of(item)` or none."""
    from percept_cli.pipeline import Predictor

    def predict_iter(self, task, inputs, settings=None, on_step=None):
        for i, item in enumerate(inputs):
            unc = None if uncertainty_of is None else np.asarray(uncertainty_of(item), np.float32)
            yield i, DepthResult(np.asarray(depth_of(item), np.float32), unc)

    monkeypatch.setattr(Predictor, "predict_iter", predict_iter)


# ----------------------------------------------------------------------------------------- PLY


def test_ply_reads_back_equal_to_the_prediction(tmp_path, model):
    src = image(tmp_path / "in" / "a.png", hw=(20, 28))
    out = tmp_path / "out"
    code, stdout, err = percept("depth", src, *fast(model), "--ensemble", "2", "-o", out, "--format", "npy,ply",
                                "--fov", "90", "--json")
    assert code == 0, err
    (rec,) = records(stdout)
    ply = out / "a.depth.ply"
    assert str(ply) in rec["outputs"] and str(out / "a.depth.uncertainty.npy") in rec["outputs"]
    assert rec["intrinsics"]["source"] == "--fov 90" and rec["intrinsics"]["hfov"] == pytest.approx(90.0)
    assert rec["intrinsics"]["fx"] == pytest.approx(14.0)  # 28 px wide, tan(45 deg) = 1
    assert ply.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")

    depth, unc = np.load(out / "a.depth.npy"), np.load(out / "a.depth.uncertainty.npy")
    pts, col, v = _cloud(ply)
    assert v["x"].dtype == np.float32 and v["red"].dtype == np.uint8 and v["uncertainty"].dtype == np.float32
    expected = G.backproject(depth + 1.0, G.intrinsics(28, 20, fov=90.0)).reshape(-1, 3)  # z = depth + 1
    np.testing.assert_array_equal(pts, expected)
    np.testing.assert_array_equal(col, media.read_image(src).reshape(-1, 3))  # the input's own colours
    np.testing.assert_array_equal(v["uncertainty"], unc.reshape(-1))


def test_max_uncertainty_drops_exactly_the_points_above_it(tmp_path, monkeypatch, model):
    src = image(tmp_path / "a.png", hw=(20, 28))
    unc = np.linspace(0, 1, 20 * 28, dtype=np.float32).reshape(20, 28)
    _predict_exactly(monkeypatch, lambda item: np.full((20, 28), 0.25, np.float32), lambda item: unc)
    code, _, err = percept("depth", src, *fast(model), "--ensemble", "2", "-o", tmp_path / "f", "--format", "ply",
                           "--max-uncertainty", "0.25")
    assert code == 0, err
    pts, _, v = _cloud(tmp_path / "f" / "a.depth.ply")
    assert len(pts) == int((unc <= 0.25).sum()) == 140  # 140 of the 560 values are at most 0.25
    assert (v["uncertainty"] <= 0.25).all()
    np.testing.assert_array_equal(np.sort(v["uncertainty"]), unc[unc <= 0.25])
    assert files(tmp_path / "f") == ["a.depth.ply"]  # ply carries its uncertainty inside


def test_one_member_ply_has_no_uncertainty_and_a_default_fov_note(tmp_path, model):
    src = image(tmp_path / "a.png")
    code, _, err = percept("depth", src, "--model", model, "--resolution", "32", "--steps", "1", "-o",
                           tmp_path / "o", "--format", "ply", "--ensemble", "1")
    assert code == 0, err
    assert err.count("horizontal field of view") == 1 and "default 60 degrees" in err
    _, _, v = _cloud(tmp_path / "o" / "a.depth.ply")
    assert "uncertainty" not in v and len(v["x"]) == 20 * 28


def test_fronto_parallel_wall_back_projects_to_a_plane(tmp_path):
    # a wall at constant relative depth 0.5 with a 90-degree field of view: z = 1.5 and x = +-z at the edges
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = np.arange(6, dtype=np.uint8)[None] * 40
    k = G.intrinsics(6, 4, fov=90.0)
    (ply,) = write_depth(tmp_path / "w", np.full((4, 6), 0.5, np.float32), None, "ply", rgb=rgb, intrinsics=k)
    pts, col, _ = _cloud(ply)
    np.testing.assert_allclose(pts[:, 2], 1.5)
    np.testing.assert_allclose(pts[0], [1.5 * (0.5 - 3) / 3, 1.5 * (0.5 - 2) / 3, 1.5], rtol=1e-6)
    np.testing.assert_allclose(pts[:6, 0], 1.5 * (np.arange(6) + 0.5 - 3) / 3, rtol=1e-6)
    np.testing.assert_array_equal(col[:6, 0], np.arange(6) * 40)
    with pytest.raises(ValueError, match="rgb"):
        write_depth(tmp_path / "x", np.zeros((4, 6), np.float32), None, "ply")


def test_exif_focal_length_is_used_and_said(tmp_path, model):
    from PIL import Image

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 18  # 18 mm equivalent: focal = half the width, 90 degrees
    Image.fromarray(np.full((20, 28, 3), 90, np.uint8)).save(tmp_path / "e.jpg", exif=exif)
    code, stdout, err = percept("depth", tmp_path / "e.jpg", *fast(model)[:-1], "-o", tmp_path / "o", "--format",
                                "ply", "--json")
    assert code == 0, err
    k = records(stdout)[0]["intrinsics"]
    assert "EXIF" in k["source"] and k["fx"] == pytest.approx(14.0) and k["hfov"] == pytest.approx(90.0)
    assert "EXIF focal length" in err


def test_ply_for_every_video_frame(tmp_path, model):
    clip = video(tmp_path / "clip.mp4", frames=3)
    code, stdout, err = percept("depth", clip, *fast(model), "-o", tmp_path / "o", "--format", "ply,npy", "--json",
                                "--colormap", "gray")
    assert code == 0, err
    import imageio.v2 as imageio

    first = imageio.get_reader(tmp_path / "o" / "clip.depth.mp4").get_data(0).astype(int)
    assert np.abs(first[..., 0] - first[..., 2]).max() < 12 and first.std() > 1  # the .mp4 in --colormap gray
    plys = sorted((tmp_path / "o" / "clip").glob("*.depth.ply"))
    assert len(plys) == 3
    outs = [o for r in records(stdout) for o in r["outputs"]]
    assert all(str(p) in outs for p in plys)
    assert len(G.read_ply(plys[0])["x"]) == 24 * 32


def test_missing_plyfile_names_the_extra(tmp_path, monkeypatch, model):
    monkeypatch.setitem(sys.modules, "plyfile", None)  # import plyfile -> ImportError
    code, _, err = percept("depth", image(tmp_path / "a.png"), *fast(model), "-o", tmp_path / "o", "--format", "ply")
    assert code == 2 and "pip install 'percept-cli[ply]'" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------- --align


def _scene(tmp_path, seed=3, size=48):
    scene = render_scene(seed, size)
    path = tmp_path / f"scene{seed}.png"
    cv2.imwrite(str(path), scene.rgb[..., ::-1])
    gt = scene.depth.astype(np.float64)
    lo, hi = gt.min(), gt.max()
    return scene, path, ((gt - lo) / (hi - lo)).astype(np.float32), lo, hi


def test_align_recovers_metres_despite_wrong_points(tmp_path, monkeypatch, model):
    scene, path, rel, lo, hi = _scene(tmp_path)
    _predict_exactly(monkeypatch, lambda item: rel)
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, 48, 8), rng.integers(0, 48, 8)
    known = scene.depth[ys, xs].astype(np.float64)
    known[:2] *= 3.0  # two wrong points
    pts = tmp_path / "known.txt"
    pts.write_text("# x y metres\n" + "".join(f"{x} {y} {d:.6f}\n" for x, y, d in zip(xs, ys, known)))
    out = tmp_path / "o"
    code, stdout, err = percept("depth", path, *fast(model), "-o", out, "--align", pts, "--format", "npy,ply,exr",
                                "--json")
    assert code == 0, err
    (rec,) = records(stdout)
    metric_path = out / f"{path.stem}.depth.metric.npy"
    assert str(metric_path) in rec["outputs"] and str(out / f"{path.stem}.depth.metric.exr") in rec["outputs"]
    a = rec["align"]
    assert a["points"] == 8 and a["inliers"] == 6
    assert a["scale"] == pytest.approx(hi - lo, rel=1e-4) and a["shift"] == pytest.approx(lo, rel=1e-4, abs=1e-4)
    assert a["median_abs_error_m"] < 1e-3
    metric = np.load(metric_path)
    assert metric.dtype == np.float32
    np.testing.assert_allclose(metric, scene.depth, rtol=1e-4)  # metres, larger = farther
    assert rec["intrinsics"]["units"] == "metres"
    pts3, _, _ = _cloud(out / f"{path.stem}.depth.ply")
    np.testing.assert_allclose(pts3[:, 2], metric.reshape(-1))  # the cloud is in metres: z = metric depth
    np.testing.assert_array_equal(W.read_exr(out / f"{path.stem}.depth.metric.exr")["Z"], metric)

    # resume: every file (the metric ones too) counts; a missing metric file means work
    code, stdout, _ = percept("depth", path, *fast(model), "-o", out, "--align", pts, "--format", "npy,ply,exr",
                              "--json")
    assert code == 0 and records(stdout)[0]["status"] == "skipped"
    assert str(metric_path) in records(stdout)[0]["outputs"]
    metric_path.unlink()
    code, stdout, _ = percept("depth", path, *fast(model), "-o", out, "--align", pts, "--format", "npy,ply,exr",
                              "--json")
    assert code == 0 and records(stdout)[0]["status"] == "ok" and metric_path.is_file()


def test_align_folder_of_name_txt(tmp_path, monkeypatch, model):
    scene, path, rel, lo, hi = _scene(tmp_path)
    _predict_exactly(monkeypatch, lambda item: rel)
    other = image(tmp_path / "other.png", hw=(48, 48))
    folder = tmp_path / "known"
    folder.mkdir()
    (folder / f"{path.stem}.txt").write_text("".join(f"{x} {y} {scene.depth[y, x]}\n" for x, y in [(1, 2), (40, 45), (20, 5)]))
    code, stdout, err = percept("depth", path, other, *fast(model), "-o", tmp_path / "o", "--align", folder, "--json")
    assert code == 1
    ok, bad = records(stdout)
    assert ok["status"] == "ok" and ok["align"]["inliers"] == 3
    assert bad["status"] == "failed" and "other.txt is missing" in bad["error"]
    np.testing.assert_allclose(np.load(tmp_path / "o" / f"{path.stem}.depth.metric.npy"), scene.depth, rtol=1e-4)


def test_align_errors_per_input_and_as_usage(tmp_path, monkeypatch, model):
    small, wide = image(tmp_path / "small.png", hw=(20, 28)), image(tmp_path / "wide.png", hw=(20, 60))
    pts = tmp_path / "p.txt"
    pts.write_text("2 3 1.5\n50 10 4.0\n")  # x = 50 is inside wide (60 px), outside small (28 px)
    _predict_exactly(monkeypatch, lambda item: np.tile(np.linspace(0, 1, item.image.shape[1], dtype=np.float32),
                                                      (item.image.shape[0], 1)))
    code, stdout, err = percept("depth", small, wide, *fast(model), "-o", tmp_path / "o", "--align", pts, "--json")
    assert code == 1  # the batch went on past the bad input
    bad, ok = records(stdout)
    assert bad["status"] == "failed" and "point (50, 10) is outside the 28x20 image" in bad["error"]
    assert ok["status"] == "ok" and (tmp_path / "o" / "wide.depth.metric.npy").is_file()
    assert not (tmp_path / "o" / "small.depth.npy").exists()

    # a degenerate fit: the same predicted depth at every known point -> that input fails, nothing written
    _predict_exactly(monkeypatch, lambda item: np.full(item.image.shape[:2], 0.5, np.float32))
    code, _, err = percept("depth", wide, *fast(model), "-o", tmp_path / "d", "--align", pts)
    assert code == 1 and "the predicted depth is the same at every known point" in err
    assert not (tmp_path / "d").exists() or files(tmp_path / "d") == []

    # option problems: exit 2 before any model loads
    one = tmp_path / "one.txt"
    one.write_text("2 3 1.5\n")
    for path, needle in ((one, "at least 2 known depths"), (tmp_path / "nope.txt", "no such file")):
        code, _, err = percept("depth", small, *fast(model), "-o", tmp_path / "u", "--align", path)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    for args, needle in ((["--fov", "0"], "--fov 0"), (["--max-uncertainty", "-1"], "--max-uncertainty")):
        code, _, err = percept("depth", small, *fast(model), "-o", tmp_path / "u", *args)
        assert code == 2 and needle in err


# ----------------------------------------------------------------------------------------- OpenEXR


def test_exr_round_trip_with_uncertainty(tmp_path):
    rng = np.random.default_rng(1)
    depth = rng.random((7, 9), dtype=np.float32)
    unc = rng.random((7, 9), dtype=np.float32) / 10
    paths = write_depth(tmp_path / "x", depth, unc, "exr")
    assert [p.name for p in paths] == ["x.depth.exr"]  # uncertainty rides in the file, as a channel
    back = W.read_exr(paths[0])
    assert set(back) == {"Z", "uncertainty"}
    np.testing.assert_array_equal(back["Z"], depth)  # float32, lossless
    np.testing.assert_array_equal(back["uncertainty"], unc)
    assert not list(tmp_path.glob(".*"))  # written through a temp name and renamed


def test_exr_from_the_cli(tmp_path, model):
    src = image(tmp_path / "a.png")
    code, stdout, err = percept("depth", src, *fast(model), "-o", tmp_path / "o", "--format", "exr,npy", "--json")
    assert code == 0, err
    assert records(stdout)[0]["outputs"] == [str(tmp_path / "o" / "a.depth.npy"), str(tmp_path / "o" / "a.depth.exr")]
    np.testing.assert_array_equal(W.read_exr(tmp_path / "o" / "a.depth.exr")["Z"], np.load(tmp_path / "o" / "a.depth.npy"))


def test_all_means_the_three_maps(tmp_path):
    from percept_cli.tasks import get_task

    assert get_task("depth").parse_formats("all") == ("npy", "png16", "color")
    assert get_task("depth").parse_formats("all,ply") == ("npy", "png16", "color", "ply")


# ----------------------------------------------------------------------------------------- colour maps


def test_colormaps_near_is_the_bright_or_warm_end():
    ramp = np.linspace(0, 1, 32, dtype=np.float32).reshape(1, 32)
    maps = {name: W.colorize_depth(ramp, name) for name in W.DEPTH_COLORMAPS}
    assert all(m.shape == (1, 32, 3) and m.dtype == np.uint8 for m in maps.values())
    assert len({m.tobytes() for m in maps.values()}) == len(maps)  # four different maps
    np.testing.assert_array_equal(maps["gray"][0, :, 0], np.round((1 - ramp[0]) * 255).astype(np.uint8))
    assert (maps["gray"][..., 0] == maps["gray"][..., 2]).all()
    near, far = maps["turbo"][0, 0].astype(int), maps["turbo"][0, -1].astype(int)
    assert near[0] > near[2] and far[2] > far[0]  # near red, far blue
    near, far = maps["spectral"][0, 0].astype(int), maps["spectral"][0, -1].astype(int)
    assert near[0] > near[2] and far[2] > far[0]  # Marigold's: near red, far violet
    np.testing.assert_array_equal(W.colorize_depth(ramp), maps["inferno"])  # the default
    assert W.colorize_depth(ramp, "Turbo").tobytes() == maps["turbo"].tobytes()  # names are case-insensitive
    with pytest.raises(UsageError, match="--colormap 'jet'.*inferno, spectral, turbo, gray"):
        W.colorize_depth(ramp, "jet")


def test_colormap_from_the_cli(tmp_path, model):
    src = image(tmp_path / "a.png")
    code, _, err = percept("depth", src, *fast(model), "-o", tmp_path / "o", "--format", "npy,color",
                           "--colormap", "gray")
    assert code == 0, err
    color, depth = media.read_image(tmp_path / "o" / "a.depth.color.png"), np.load(tmp_path / "o" / "a.depth.npy")
    np.testing.assert_array_equal(color, W.colorize_depth(depth, "gray"))
    code, _, err = percept("depth", src, *fast(model), "-o", tmp_path / "b", "--colormap", "jet")
    assert code == 2 and "--colormap 'jet'" in err and not (tmp_path / "b").exists()


def test_uncertainty_png_saturates_at_the_95th_percentile():
    u = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    u[0, 0] = 50.0  # one outlier must not wash the map out
    rgb = W.colorize_uncertainty(u)
    p95 = np.percentile(u, 95)
    top = rgb[u >= p95]
    assert (top == top[0]).all()  # everything at or above the 95th percentile has the top colour
    assert len({tuple(c) for c in rgb[u < p95 * 0.9]}) > 20  # the rest keeps its range


def test_python_api_predictor_result_through_the_configured_task(tmp_path, monkeypatch):
    from percept_cli.hub import resolve_model
    from percept_cli.pipeline import Predictor
    from percept_cli.tasks import get_task
    from percept_cli.tasks.depth import DepthInput

    predictor = Predictor.from_source(resolve_model("tiny"), device="cpu", dtype="fp32")
    scene, path, rel, lo, hi = _scene(tmp_path)
    item = DepthInput(scene.rgb, name=str(path), path=path)
    (result,) = predictor.predict("depth", [item], predictor.settings("depth", steps=1, ensemble=2, resolution=32))
    d = result.depth
    picks = [np.unravel_index(np.argmin(d), d.shape), np.unravel_index(np.argmax(d), d.shape), (20, 30)]
    known = tmp_path / "k.txt"  # metres = 2 * depth + 1.5 at three pixels
    known.write_text("".join(f"{x} {y} {2.0 * float(d[y, x]) + 1.5!r}\n" for y, x in picks))
    task = get_task("depth").configure(fov=60.0, align=known, colormap="turbo")
    stem = tmp_path / "o" / "scene"
    paths = task.write(stem, result, item, "npy,ply,color", False)
    rec = task.record(stem)
    assert [p.name for p in paths] == ["scene.depth.npy", "scene.depth.color.png", "scene.depth.ply",
                                       "scene.depth.metric.npy", "scene.depth.uncertainty.npy",
                                       "scene.depth.uncertainty.png"]
    assert rec["intrinsics"]["source"] == "--fov 60" and rec["align"]["points"] == rec["align"]["inliers"] == 3
    assert rec["align"]["scale"] == pytest.approx(2.0, rel=1e-5) and rec["align"]["shift"] == pytest.approx(1.5, rel=1e-5)
    metric = np.load(stem.with_name("scene.depth.metric.npy"))
    np.testing.assert_allclose(metric, 2.0 * d + 1.5, rtol=1e-5)
    pts, _, _ = _cloud(stem.with_name("scene.depth.ply"))
    np.testing.assert_allclose(pts[:, 2], metric.reshape(-1))
    np.testing.assert_array_equal(media.read_image(stem.with_name("scene.depth.color.png")), W.colorize_depth(d, "turbo"))
