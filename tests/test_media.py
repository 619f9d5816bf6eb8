"""Media: image and mask decoding, videos, and the expansion of CLI inputs."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from percept_cli import media as M
from percept_cli.errors import InputError, UsageError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)


def _touch_png(path: Path, value: int = 0, shape=(4, 4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(shape, value, np.uint8))
    return path


# ----------------------------------------------------------------------------- images


def test_read_8bit_png_is_rgb(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), RGB[..., ::-1])
    out = M.read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 10, 3)
    np.testing.assert_array_equal(out, RGB)


def test_read_16bit_png_rgb_and_gray_scaled_by_257(tmp_path):
    u16 = RNG.integers(0, 65536, (6, 10, 3)).astype(np.uint16)
    u16[0, 0] = (65535, 0, 257 * 100 + 128)  # extremes, and a value just below a rounding boundary
    cv2.imwrite(str(tmp_path / "c16.png"), u16[..., ::-1])
    expected = np.round(u16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(M.read_image(tmp_path / "c16.png"), expected)
    gray = u16[..., 0]
    cv2.imwrite(str(tmp_path / "g16.png"), gray)
    out = M.read_image(tmp_path / "g16.png")
    assert out.shape == (6, 10, 3)
    np.testing.assert_array_equal(out, np.repeat(np.round(gray / 257.0).astype(np.uint8)[..., None], 3, axis=2))


def test_read_gray_rgba_la_and_other_formats(tmp_path):
    gray = RGB[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(M.read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.dstack([RGB, np.full((6, 10), 7, np.uint8)])  # nearly transparent: alpha must be dropped
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(M.read_image(tmp_path / "a.png"), RGB)
    Image.fromarray(np.dstack([gray, gray]), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(M.read_image(tmp_path / "la.png")[..., 1], gray)
    for ext in ("bmp", "tiff", "ppm", "webp"):
        kw = {"lossless": True} if ext == "webp" else {}
        Image.fromarray(RGB).save(tmp_path / f"x.{ext}", **kw)
        np.testing.assert_array_equal(M.read_image(tmp_path / f"x.{ext}"), RGB, err_msg=ext)


def test_jpeg_exif_orientation_6_is_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(img).save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = M.read_image(tmp_path / "o.jpg")
    assert out.shape == (40, 20, 3)  # height and width swapped
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # left half is now on top
    with Image.open(tmp_path / "o.jpg") as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.abs(out.astype(int) - ref).max() <= 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(RGB).save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(M.read_image(tmp_path / "o.png"), ref)


def test_corrupt_missing_empty_and_folder_inputs(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not a png" * 10)
    ok, buf = cv2.imencode(".jpg", RGB)
    (tmp_path / "trunc.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {
        "bad.png": "corrupt",
        "trunc.jpg": "corrupt",
        "empty.png": "empty",
        "missing.png": "missing",
        ".": "folder",
    }
    for name, word in cases.items():
        with pytest.raises(InputError, match=word) as err:
            M.read_image(tmp_path / name)
        msg = str(err.value)
        assert msg.startswith("cannot read image '") and ";" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- masks


def test_read_mask_thresholds_and_layouts(tmp_path):
    m8 = np.array([[0, 127, 128, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "m8.png"), m8)
    np.testing.assert_array_equal(M.read_mask(tmp_path / "m8.png"), [[False, False, True, True]])
    m16 = np.array([[0, 32767, 32768, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "m16.png"), m16)
    np.testing.assert_array_equal(M.read_mask(tmp_path / "m16.png"), [[False, False, True, True]])
    blue = np.zeros((1, 2, 3), np.uint8)
    blue[0, 1] = (0, 0, 255)  # RGB pure blue: dark in luminance, still "on"
    Image.fromarray(blue).save(tmp_path / "blue.png")
    np.testing.assert_array_equal(M.read_mask(tmp_path / "blue.png"), [[False, True]])


def test_mask_size_mismatch_names_both_sizes_and_fix(tmp_path):
    _touch_png(tmp_path / "m.png", 255, (30, 40))
    assert M.read_mask(tmp_path / "m.png", like_shape=(30, 40, 3)).all()
    with pytest.raises(InputError) as err:
        M.read_mask(tmp_path / "m.png", like_shape=(60, 80, 3), image="photo.jpg")
    msg = str(err.value)
    assert "'" + str(tmp_path / "m.png") + "' is 40x30" in msg
    assert "'photo.jpg' is 80x60" in msg and "resize the mask to 80x60" in msg


# ----------------------------------------------------------------------------- videos


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory) -> Path:
    from percept_cli.writers import VideoWriter

    path = tmp_path_factory.mktemp("vid") / "clip.mp4"
    with VideoWriter(path, fps=8) as vw:
        for i in range(10):
            vw.append(np.full((16, 24, 3), i * 25, np.uint8))
    return path


def test_video_round_trip_every_and_max_frames(tiny_video):
    assert M.is_video(tiny_video) and M.is_video("x.MOV") and not M.is_video("x.png")
    info = M.video_info(tiny_video)
    assert info.fps == pytest.approx(8.0) and (info.width, info.height) == (24, 16)
    assert info.frames == 10
    frames = list(M.iter_video_frames(tiny_video))
    assert [i for i, _ in frames] == list(range(10))
    assert frames[0][1].shape == (16, 24, 3) and frames[0][1].dtype == np.uint8
    assert abs(int(frames[4][1].mean()) - 100) <= 3
    picked = list(M.iter_video_frames(tiny_video, every=3, max_frames=3))
    assert [i for i, _ in picked] == [0, 3, 6]
    assert abs(int(picked[2][1].mean()) - 150) <= 3
    picked[0][1][0, 0] = 1  # frames are writable


def test_corrupt_and_missing_video(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 200)
    with pytest.raises(InputError, match="cannot read video '.*bad.mp4'.*re-encode"):
        list(M.iter_video_frames(tmp_path / "bad.mp4"))
    with pytest.raises(InputError, match="missing"):
        M.video_info(tmp_path / "nope.mp4")
    with pytest.raises(UsageError, match="--every"):
        next(M.iter_video_frames(tmp_path / "bad.mp4", every=0))


def test_multi_frame_gif_is_a_video(tmp_path):
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "still.gif")
    assert M.is_video(tmp_path / "anim.gif") and not M.is_video(tmp_path / "still.gif")


# ----------------------------------------------------------------------------- inputs


def test_natural_key():
    names = ["frame10.png", "frame2.png", "Frame1.png", "a/frame3.png"]
    assert sorted(names, key=M.natural_key) == ["a/frame3.png", "Frame1.png", "frame2.png", "frame10.png"]


@pytest.fixture()
def tree(tmp_path) -> Path:
    root = tmp_path / "photos"
    for rel in ("b10.jpg", "b2.png", "a/x.jpg", "a/deep/y.png", ".hidden.png", ".git/z.png"):
        _touch_png(root / rel)
    (root / "notes.txt").write_text("skip me")
    (root / "clip.mp4").write_bytes(b"")
    return root


def test_folder_flat_and_recursive_mirrors_subfolders(tree):
    flat = M.collect_images([str(tree)])
    assert [i.rel for i in flat] == [Path("b2"), Path("b10")]
    deep = M.collect_images([str(tree)], recursive=True)
    assert [i.rel.as_posix() for i in deep] == ["a/deep/y", "a/x", "b2", "b10"]
    assert deep[0].path == tree / "a/deep/y.png" and deep[0].frame is None


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="'nope.jpg'.*does not exist"):
        M.collect_images(["nope.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="contains no images.*--recursive"):
        M.collect_images([str(tmp_path / "empty")])
    with pytest.raises(UsageError):
        M.collect_images([])


def test_glob_with_and_without_recursion(tree):
    got = M.collect_images([str(tree / "*.jpg")])
    assert [i.rel for i in got] == [Path("b10")]
    got = M.collect_images([str(tree / "**" / "*.png")], recursive=True)
    assert [i.rel.as_posix() for i in got] == ["a/deep/y", "b2"]
    with pytest.raises(InputError, match="matched no images"):
        M.collect_images([str(tree / "*.heic")])


def test_recursive_glob_dedupes_and_exclude_skips_output_folder(tree):
    got = M.collect_images([str(tree / "**")], recursive=True)  # globs match videos, folders do not
    assert [i.rel.as_posix() for i in got] == ["a/deep/y", "a/x", "b2", "b10", "clip"]
    _touch_png(tree / "percept-out" / "b2.depth.png")
    got = M.collect_images([str(tree)], recursive=True, exclude=tree / "percept-out")
    assert [i.rel.as_posix() for i in got] == ["a/deep/y", "a/x", "b2", "b10"]


def test_stdin_list_skips_blanks_and_comments(tree):
    stdin = io.StringIO(f"# my picks\n\n{tree / 'b2.png'}\n  {tree / 'a'}  \n")
    got = M.collect_images(["-"], stdin=stdin)
    assert [i.path for i in got] == [tree / "b2.png", tree / "a/x.jpg"]
    with pytest.raises(InputError, match="stdin line 2"):
        M.collect_images(["-"], stdin=io.StringIO("\nmissing.png\n"))


def test_collisions_are_disambiguated_deterministically(tmp_path):
    a = _touch_png(tmp_path / "left" / "x.png")
    b = _touch_png(tmp_path / "right" / "x.png")
    c = _touch_png(tmp_path / "left" / "x.jpg")
    got = M.collect_images([str(a), str(b), str(c), str(a)])  # a twice: kept once
    assert [i.rel.as_posix() for i in got] == ["left/x.png", "right/x", "left/x.jpg"]
    run1, run2 = _touch_png(tmp_path / "run1/s/f.png"), _touch_png(tmp_path / "run2/s/f.png")
    got = M.collect_images([str(run1.parents[1]), str(run2.parents[1])], recursive=True)
    assert [i.rel.as_posix() for i in got] == ["run1/s/f", "run2/s/f"]
    assert len({i.rel for i in M.collect_images([str(a), str(b), str(c)])}) == 3


def test_frame_item():
    item = M.InputItem(Path("v/clip.mp4"), Path("clip"))
    assert M.frame_item(item, 123) == M.InputItem(Path("v/clip.mp4"), Path("clip/frame_000123"), 123)


# ----------------------------------------------------------------------------- pairs


def test_pairs_from_two_images_folder_and_video(tmp_path):
    a, b = _touch_png(tmp_path / "a.png"), _touch_png(tmp_path / "b.png")
    ((first, second),) = M.collect_pairs([str(a), str(b)])
    assert (first.path, first.rel, second.path) == (a, Path("a"), b)
    frames = tmp_path / "frames"
    for n in (1, 2, 10):
        _touch_png(frames / f"f{n}.png")
    _touch_png(frames / "other" / "g1.png")
    _touch_png(frames / "other" / "g2.png")
    pairs = M.collect_pairs([str(frames)], recursive=True)
    assert [(x.path.name, y.path.name) for x, y in pairs] == [("f1.png", "f2.png"), ("f2.png", "f10.png"), ("g1.png", "g2.png")]
    assert pairs[2][0].rel == Path("other/g1")
    (tmp_path / "v.mp4").write_bytes(b"")
    ((va, vb),) = M.collect_pairs([str(tmp_path / "v.mp4")])
    assert va == vb and va.path.name == "v.mp4"
    with pytest.raises(UsageError, match="two images"):  # one frame alone: a usage error (exit 2)
        M.collect_pairs([str(a)])


def test_pair_list_relative_quoted_and_bad_line(tmp_path):
    _touch_png(tmp_path / "my frames" / "0.png")
    _touch_png(tmp_path / "my frames" / "1.png")
    good = tmp_path / "pairs.txt"
    good.write_text('# pairs\n"my frames/0.png" "my frames/1.png"\n\n')
    ((a, b),) = M.collect_pairs([], list_file=good)
    assert a.path == tmp_path / "my frames" / "0.png" and b.path.name == "1.png" and a.rel == Path("0")
    bad = tmp_path / "bad.txt"
    bad.write_text('"my frames/0.png" "my frames/1.png"\nonly_one.png\n')
    with pytest.raises(InputError, match=r"line 2: expected 2 paths 'A B', got 1"):
        M.collect_pairs([], list_file=bad)
    bad.write_text('"my frames/0.png" missing.png\n')
    with pytest.raises(InputError, match=r"line 1: file '.*missing.png' does not exist"):
        M.collect_pairs([], list_file=bad)
    bad.write_text('"unclosed quote.png b.png\n')
    with pytest.raises(InputError, match="line 1"):
        M.collect_pairs([], list_file=bad)
    with pytest.raises(UsageError):
        M.collect_pairs(["x.png"], list_file=good)


def test_image_mask_pairs(tmp_path):
    img, other = _touch_png(tmp_path / "img.jpg"), _touch_png(tmp_path / "other.png")
    m1, m2 = _touch_png(tmp_path / "m" / "img.png"), _touch_png(tmp_path / "m" / "m2.png")
    ((item, mask),) = M.collect_image_mask_pairs([str(img)], mask=str(m1))
    assert item.rel == Path("img") and mask == m1
    ((item, mask),) = M.collect_image_mask_pairs([str(img)], mask=str(tmp_path / "m"))  # mask folder, by name
    assert mask == m1
    with pytest.raises(InputError, match="no mask for image"):
        M.collect_image_mask_pairs([str(other)], mask=str(tmp_path / "m"))
    lst = tmp_path / "list.txt"
    lst.write_text("img.jpg m/img.png\nimg.jpg m/m2.png\n")
    pairs = M.collect_image_mask_pairs([], list_file=lst)
    assert [i.rel.as_posix() for i, _ in pairs] == ["img.img", "img.m2"]  # one image, two objects
    with pytest.raises(UsageError, match="--mask"):
        M.collect_image_mask_pairs([str(img)])
    with pytest.raises(InputError, match="mask 'nope.png' does not exist"):
        M.collect_image_mask_pairs([str(img)], mask="nope.png")
