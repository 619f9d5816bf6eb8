"""Writers: exact round trips, the Middlebury wheel, atomic files, overwrite rules, mp4."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from percept_cli import writers as W
from percept_cli.tasks import get_task
from percept_cli.tasks.amodal import FORMATS as AMODAL_FORMATS, write_amodal
from percept_cli.tasks.depth import FORMATS as DEPTH_FORMATS, depth_outputs, write_depth
from percept_cli.tasks.flow import FORMATS as FLOW_FORMATS, flow_outputs, write_flow
from percept_cli.errors import InputError, OutputError, UsageError


def _no_temps(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp-" in p.name]


# ----------------------------------------------------------------------------- primitives


def test_flo_round_trip_exact(tmp_path):
    flow = np.random.default_rng(0).normal(0, 20, (7, 11, 2)).astype(np.float32)
    path = W.write_flo(tmp_path / "a.flo", flow)
    back = W.read_flo(path)
    assert back.dtype == np.float32 and back.shape == (7, 11, 2)
    np.testing.assert_array_equal(back, flow)
    raw = path.read_bytes()
    assert np.frombuffer(raw[:4], "<f4")[0] == np.float32(202021.25)
    assert tuple(np.frombuffer(raw[4:12], "<i4")) == (11, 7)  # width first, then height
    assert len(raw) == 12 + 7 * 11 * 2 * 4


def test_read_flo_rejects_bad_files(tmp_path):
    good = W.write_flo(tmp_path / "t.flo", np.zeros((4, 4, 2), np.float32)).read_bytes()
    cases = {"magic.flo": (b"XXXX" + good[4:], "bad magic"), "short.flo": (good[:8], "bad magic"),
             "trunc.flo": (good[:-8], "truncated"),
             "size.flo": (good[:4] + np.array([-5, 3], "<i4").tobytes() + good[12:], "says -5x3")}
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=f"{name}.*{needle}"):
            W.read_flo(tmp_path / name)
    with pytest.raises(InputError, match="missing.flo"):
        W.read_flo(tmp_path / "missing.flo")


@pytest.mark.parametrize("channels", [1, 3])
def test_png16_round_trip_exact(tmp_path, channels):
    shape = (8, 9) if channels == 1 else (8, 9, 3)
    spread = np.linspace(2, 65533, 8 * 9 * channels - 4).round().astype(np.int64)
    k = np.concatenate([[0, 1, 65534, 65535], spread]).reshape(shape)
    path = W.write_png16(tmp_path / "d.png", k / 65535.0)
    back = W.read_png16(path)
    assert back.dtype == np.float32 and back.shape == shape
    np.testing.assert_array_equal(np.round(back.astype(np.float64) * 65535).astype(np.int64), k)
    np.testing.assert_array_equal(back, k.astype(np.float32) / np.float32(65535))


def test_png16_rgb_channel_order_and_clipping(tmp_path):
    import cv2

    arr = np.zeros((2, 2, 3))
    arr[..., 0] = 1.0  # red
    arr[0, 0] = (2.0, -1.0, np.nan)  # clipped, clipped, NaN -> 0
    W.write_png16(tmp_path / "c.png", arr)
    bgr = cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_UNCHANGED)
    assert bgr.dtype == np.uint16 and tuple(bgr[1, 1]) == (0, 0, 65535)
    assert tuple(bgr[0, 0]) == (0, 0, 65535)


def test_png8_writes_rgb(tmp_path):
    import cv2

    img = np.zeros((3, 5, 3), np.uint8)
    img[..., 0] = 200
    W.write_png8(tmp_path / "x.png", img)
    bgr = cv2.imread(str(tmp_path / "x.png"))
    assert tuple(bgr[0, 0]) == (0, 0, 200)
    with pytest.raises(ValueError, match="uint8"):
        W.write_png8(tmp_path / "y.png", img.astype(np.float32))


def test_colorize_depth_near_is_bright():
    depth = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 16)
    rgb = W.colorize_depth(depth)
    assert rgb.shape == (1, 16, 3) and rgb.dtype == np.uint8
    lum = rgb.astype(int).sum(axis=2)[0]
    assert lum[0] > 600 and lum[-1] < 20  # near: pale yellow; far: black
    assert np.all(np.diff(lum) <= 0)


def test_colorize_uncertainty_handles_zero_and_scale():
    zero = W.colorize_uncertainty(np.zeros((2, 3)))
    assert zero.shape == (2, 3, 3) and (zero == zero[0, 0]).all()
    ramp = W.colorize_uncertainty(np.array([[0.0, 1.0, 2.0]]))
    assert not (ramp[0, 0] == ramp[0, 2]).all()


# ----------------------------------------------------------------------------- flow colours


def _reference_flow_to_color(u, v):
    """Middlebury/RAFT flow_viz reference, transcribed loop by loop (u, v already normalised)."""
    cw = W._make_colorwheel()
    ncols = cw.shape[0]
    rad = np.sqrt(u**2 + v**2)
    a = np.arctan2(-v, -u) / np.pi
    fk = (a + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int32)
    k1 = k0 + 1
    k1[k1 == ncols] = 0
    f = fk - k0
    out = np.zeros(u.shape + (3,), np.uint8)
    for i in range(3):
        col = (1 - f) * cw[k0, i] / 255.0 + f * cw[k1, i] / 255.0
        idx = rad <= 1
        col[idx] = 1 - rad[idx] * (1 - col[idx])
        col[~idx] = col[~idx] * 0.75
        out[..., i] = np.floor(255 * col)
    return out


def test_colorwheel_has_55_standard_colours():
    cw = W._make_colorwheel()
    assert cw.shape == (55, 3)
    assert tuple(cw[0]) == (255, 0, 0)  # red
    assert tuple(cw[15]) == (255, 255, 0)  # yellow after RY=15
    assert tuple(cw[21]) == (0, 255, 0)  # green after YG=6
    assert tuple(cw[25]) == (0, 255, 255)  # cyan after GC=4
    assert tuple(cw[36]) == (0, 0, 255)  # blue after CB=11
    assert tuple(cw[49]) == (255, 0, 255)  # magenta after BM=13


def test_flow_to_color_pure_x_is_wheel_start_and_zero_is_white():
    flow = np.zeros((3, 4, 2), np.float32)
    flow[0, 0] = (5.0, 0.0)
    flow[0, 1] = (5.0, -0.0)  # the sign of a zero must not matter
    rgb = W.flow_to_color(flow)
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[0, 1]) == (255, 0, 0)
    assert (rgb[1:] == 255).all()  # zero flow: white
    assert (W.flow_to_color(np.zeros((2, 2, 2))) == 255).all()


def test_flow_to_color_matches_reference_and_marks_unknown():
    rng = np.random.default_rng(1)
    flow = rng.normal(0, 3, (16, 16, 2))
    rad_max = np.sqrt((flow**2).sum(-1)).max()
    ref = _reference_flow_to_color(flow[..., 0] / (rad_max + 1e-5), flow[..., 1] / (rad_max + 1e-5))
    np.testing.assert_array_equal(W.flow_to_color(flow), ref)
    flow[0, 0] = (np.nan, 0.0)
    flow[0, 1] = (2e9, 0.0)
    out = W.flow_to_color(flow)
    assert (out[0, :2] == 0).all()
    assert W.flow_to_color(flow, max_flow=1.0)[0, 2].max() <= 191  # beyond max_flow: dimmed to 75 %


def test_overlay_mask():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[True, False], [False, False]])
    out = W.overlay_mask(rgb, mask, color=(200, 0, 0), alpha=0.5)
    assert tuple(out[0, 0]) == (150, 50, 50) and tuple(out[1, 1]) == (100, 100, 100)


# ----------------------------------------------------------------------------- atomic files


def test_failed_write_leaves_no_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out" / "x.depth.npy"

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        with W.atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".x.depth.tmp-")
            assert tmp.suffix == ".npy"
            tmp.write_bytes(b"half")
            boom()
    assert not target.exists() and _no_temps(tmp_path)

    # the same inside a real writer: failure during encoding
    monkeypatch.setattr(W, "colorize_depth", boom)
    with pytest.raises(RuntimeError):
        write_depth(tmp_path / "out" / "y", np.zeros((4, 4), np.float32), None, ("npy", "color"))
    assert (tmp_path / "out" / "y.depth.npy").exists()
    assert not (tmp_path / "out" / "y.depth.color.png").exists() and _no_temps(tmp_path)


def test_atomic_replaces_existing_file_whole(tmp_path):
    target = tmp_path / "a.npy"
    W.write_npy(target, np.zeros(3))
    W.write_npy(target, np.ones(5))
    np.testing.assert_array_equal(np.load(target), np.ones(5))
    assert _no_temps(tmp_path)


def test_unwritable_folder_raises_output_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    with pytest.raises(OutputError, match="file.txt") as err:
        W.write_npy(blocker / "sub" / "x.npy", np.zeros(2))
    assert "-o" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(OutputError, match="file of that name"):
        W.ensure_folder(blocker)


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_processes_are_removed_before_a_write(tmp_path):
    """A SIGKILL between temp write and rename leaves `.NAME.tmp-PID.EXT`; the next write into the folder removes it."""
    import fcntl

    dead = _dead_pid()
    stale = [tmp_path / f".a.depth.tmp-{dead}.npy", tmp_path / f".clip.depth.tmp-{dead}.mp4",
             tmp_path / f".noext.tmp-{dead}"]
    live = tmp_path / f".b.depth.tmp-{os.getpid()}.npy"  # a running process (this one) is writing it
    held = tmp_path / f".c.depth.tmp-{dead}.png"  # locked: a writer on another machine sharing the folder
    not_ours = [tmp_path / f"a.depth.tmp-{dead}.npy", tmp_path / f".a.depth.tmp-{dead}.npy.bak",
                tmp_path / f".a.depth.tmp-x{dead}.npy", tmp_path / f".a.depth.tmp{dead}.npy", tmp_path / "notes.txt"]
    for p in [*stale, live, held, *not_ours]:
        p.write_bytes(b"partial")
    (tmp_path / f".e.tmp-{dead}.npy").mkdir()  # a folder of that name is not a temp file
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / f".f.depth.tmp-{dead}.npy").write_bytes(b"partial")  # another folder: swept when written to
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        W.write_npy(tmp_path / "z.npy", np.zeros(2))
    finally:
        os.close(fd)
    assert not any(p.exists() for p in stale)
    assert live.exists() and held.exists() and all(p.exists() for p in not_ours)
    assert (tmp_path / f".e.tmp-{dead}.npy").is_dir()
    assert (sub / f".f.depth.tmp-{dead}.npy").exists()
    assert (tmp_path / "z.npy").is_file()


def test_writers_lock_their_temps_while_writing(tmp_path):
    """A sweep by another process (here: another open file) must see a temp in use as held."""
    import fcntl

    def locked(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    with W.atomic_path(tmp_path / "x.npy") as tmp:
        tmp.write_bytes(b"1")
        assert locked(tmp)
    assert not locked(tmp_path / "x.npy") and _no_temps(tmp_path)
    with W.VideoWriter(tmp_path / "v.mp4", fps=5) as vw:
        vw.append(np.zeros((8, 8, 3), np.uint8))
        assert locked(vw._tmp)
    assert (tmp_path / "v.mp4").is_file() and _no_temps(tmp_path)


# ----------------------------------------------------------------------------- per task


def test_depth_outputs_names_and_files(tmp_path):
    stem = tmp_path / "sub" / "img"
    depth = np.random.default_rng(0).random((6, 8)).astype(np.float32)
    unc = np.full((6, 8), 0.1, np.float32)
    expected = [
        stem.parent / n
        for n in ("img.depth.npy", "img.depth.png", "img.depth.color.png",
                  "img.depth.uncertainty.npy", "img.depth.uncertainty.png")
    ]
    assert depth_outputs(stem, DEPTH_FORMATS, True) == expected
    assert write_depth(stem, depth, unc, DEPTH_FORMATS) == expected
    assert all(p.is_file() for p in expected)
    np.testing.assert_array_equal(np.load(expected[0]), depth)
    np.testing.assert_allclose(W.read_png16(expected[1]), depth, atol=0.5 / 65535 + 1e-7)
    assert depth_outputs(stem, "color", True) == [expected[2], expected[4]]
    assert depth_outputs(stem, ["npy"], False) == [expected[0]]


def test_stem_with_dots_is_appended_not_replaced(tmp_path):
    assert flow_outputs(tmp_path / "x.jpg", "flo", False) == [tmp_path / "x.jpg.flow.flo"]


def test_overwrite_false_keeps_existing_file(tmp_path):
    stem = tmp_path / "a"
    first = write_depth(stem, np.zeros((4, 4), np.float32), None, "npy")
    before = first[0].read_bytes()
    mtime = first[0].stat().st_mtime_ns
    again = write_depth(stem, np.ones((4, 4), np.float32), None, "npy,color")
    assert again == [tmp_path / "a.depth.npy", tmp_path / "a.depth.color.png"]
    assert first[0].read_bytes() == before and first[0].stat().st_mtime_ns == mtime
    assert again[1].is_file()  # the missing one is still written
    write_depth(stem, np.ones((4, 4), np.float32), None, "npy", overwrite=True)
    np.testing.assert_array_equal(np.load(first[0]), np.ones((4, 4)))


def test_write_flow_all_formats(tmp_path):
    flow = np.random.default_rng(2).normal(0, 4, (5, 6, 2)).astype(np.float32)
    paths = write_flow(tmp_path / "f", flow, np.ones((5, 6), np.float32), "png,npy,flo")
    names = [p.name for p in paths]
    assert names == ["f.flow.flo", "f.flow.png", "f.flow.npy", "f.flow.uncertainty.npy", "f.flow.uncertainty.png"]
    np.testing.assert_array_equal(W.read_flo(paths[0]), flow)
    np.testing.assert_array_equal(np.load(paths[2]), flow)


def test_write_amodal_all_formats(tmp_path):
    import cv2

    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    soft = mask.astype(np.float32) * 0.9
    image = np.full((4, 5, 3), 10, np.uint8)
    paths = write_amodal(tmp_path / "m", mask, soft, image, None, AMODAL_FORMATS, whole=image)
    assert [p.name for p in paths] == ["m.amodal.png", "m.amodal.npy", "m.amodal.overlay.png", "m.amodal.rgba.png"]
    png = cv2.imread(str(paths[0]), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255}
    np.testing.assert_array_equal(png == 255, mask)
    np.testing.assert_array_equal(np.load(paths[1]), soft)
    with pytest.raises(ValueError, match="overlay"):
        write_amodal(tmp_path / "n", mask, soft, None, None, "overlay")


def test_parse_formats():
    assert get_task("depth").parse_formats("npy, PNG16") == ("npy", "png16")
    forward = tuple(f for f in FLOW_FORMATS if f not in ("backward", "occlusion"))
    assert get_task("flow").parse_formats("all") == forward == ("flo", "png", "npy")  # --backward files: named only
    assert get_task("flow").parse_formats("all,occlusion") == (*forward, "occlusion")
    assert get_task("amodal").parse_formats("png,png") == ("png",)
    with pytest.raises(UsageError) as err:
        get_task("depth").parse_formats("npy,jpg")
    msg = str(err.value)
    assert "--format" in msg and "'jpg'" in msg and "npy,png16,color" in msg
    with pytest.raises(UsageError, match="empty"):
        get_task("flow").parse_formats(" , ")
    with pytest.raises(UsageError, match="png16"):
        write_flow(Path("unused"), np.zeros((2, 2, 2)), None, "png16")


# ----------------------------------------------------------------------------- video


def test_video_writer_pads_odd_sizes_and_is_readable(tmp_path):
    import imageio_ffmpeg

    path = tmp_path / "vis" / "out.mp4"
    with W.VideoWriter(path, fps=5) as vw:
        for i in range(6):
            vw.append(np.full((17, 23, 3), i * 40, np.uint8))
        assert not path.exists()  # only the temp file until a clean close
    assert path.is_file() and _no_temps(tmp_path)
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    frames = list(gen)
    assert meta["size"] == (24, 18) and len(frames) == 6


def test_video_writer_removes_temp_on_error(tmp_path):
    path = tmp_path / "bad.mp4"
    with pytest.raises(KeyError):
        with W.VideoWriter(path, fps=5) as vw:
            vw.append(np.zeros((16, 16, 3), np.uint8))
            raise KeyError("stop")
    assert not path.exists() and _no_temps(tmp_path)
    with W.VideoWriter(path) as vw:  # no frames: no file
        pass
    assert not path.exists() and _no_temps(tmp_path)


def test_video_writer_keeps_existing_file(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"keep me")
    with W.VideoWriter(path) as vw:
        vw.append(np.zeros((8, 8, 3), np.uint8))
    assert vw.skipped and path.read_bytes() == b"keep me"


def test_writers_import_no_heavy_modules():
    import subprocess
    import sys

    code = "import sys, percept_cli.writers, percept_cli.media; print(sorted(m for m in ('cv2','imageio','torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.strip() == "[]", out.stderr
