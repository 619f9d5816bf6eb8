"""Readers for images, masks, videos, and the expansion of CLI inputs into named items."""

from __future__ import annotations

import glob
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from .errors import InputError, UsageError

# cv2 and imageio are imported inside functions: `percept --help` imports this module and must stay light.

IMAGE_EXTS = frozenset(
    ".png .jpg .jpeg .jpe .jfif .bmp .dib .tif .tiff .ppm .pgm .pbm .pnm .pfm .webp .jp2 .avif .gif".split()
)
VIDEO_EXTS = frozenset(".mp4 .mov .avi .mkv .webm .m4v .mpg .mpeg .wmv .flv .ts".split())

_MAGIC = re.compile(r"[*?\[]")
_DIGITS = re.compile(r"(\d+)")

MAX_PIXELS_ENV = "PERCEPT_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000: a uint8 copy is 192 MB, a float32 map 256 MB
_ROWS = 1024  # rows converted at a time, so no full-size wide (uint32/float) copy is ever made


# ----------------------------------------------------------------------------- size limit


def env_limit(var: str, default: int) -> int:
    """A size limit from the environment variable `var` (a positive whole number), else `default`."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    value = int(raw) if raw.isdigit() else 0
    if value < 1:
        raise UsageError(f"{var}={raw!r} is not a positive whole number of pixels; set e.g. {var}={default} or unset it")
    return value


def max_pixels() -> int:
    """The largest image or video frame (width x height) decoded: $PERCEPT_MAX_PIXELS, else 64 MP."""
    return env_limit(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


def _check_pixels(path: Path, what: str, width: int | None, height: int | None, pixels: int | None = None) -> None:
    """InputError naming the file, its size, the limit and how to raise it, when it is too large."""
    pixels = pixels if pixels is not None else int(width) * int(height)
    limit = max_pixels()
    if pixels <= limit:
        return
    size = f"{width}x{height}, " if width is not None else ""
    raise InputError(
        f"{what} '{path}' is too large to process ({size}{pixels / 1e6:.1f} MP; the limit is "
        f"{limit / 1e6:g} MP); downscale it, or raise the limit with {MAX_PIXELS_ENV}={pixels}"
    )


# ----------------------------------------------------------------------------- images


def _decode(path: Path, what: str) -> np.ndarray:
    """Decode a file to (H, W, 3) RGB at its own bit depth, EXIF orientation applied."""
    import cv2

    if not path.exists():
        raise InputError(f"cannot read {what} '{path}': file is missing; check the path")
    if path.is_dir():
        raise InputError(f"cannot read {what} '{path}': it is a folder; give an image file")
    try:
        data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode also handles non-ASCII paths
    except OSError as e:
        raise InputError(f"cannot read {what} '{path}': {e.strerror or e}; check its permissions") from e
    if data.size == 0:
        raise InputError(f"cannot read {what} '{path}': file is empty; re-export it")
    _check_header(path, what)  # before decoding: a 425 KB PNG can hold 20000x20000 pixels
    # COLOR (not UNCHANGED) makes cv2 apply EXIF orientation for every format, drop alpha and
    # expand gray to 3 channels; ANYDEPTH keeps 16-bit samples instead of truncating them.
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    img = cv2.imdecode(data, (rgb_flag if rgb_flag is not None else cv2.IMREAD_COLOR) | cv2.IMREAD_ANYDEPTH)
    del data  # the encoded bytes are not needed beside the pixels
    if img is not None and rgb_flag is None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place: no second full-size copy
    if img is None:
        img = _decode_pillow(path)
    if img is None:
        raise InputError(
            f"cannot read {what} '{path}': not a supported image or the file is corrupt; "
            "re-export it as PNG or JPEG"
        )
    _check_pixels(path, what, img.shape[1], img.shape[0])  # formats whose header Pillow cannot read
    return img


def _check_header(path: Path, what: str) -> None:
    """Refuse an image over max_pixels() from its header (Pillow reads only the size); unknown formats pass."""
    import warnings

    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError as e:  # Pillow's own limit (about 179 MP): it says how many pixels
        m = re.search(r"\((\d+) pixels\)", str(e))
        if m:
            _check_pixels(path, what, None, None, int(m.group(1)))
        return
    except Exception:  # not a format Pillow knows, or corrupt: cv2 decides, the size is checked after
        return
    _check_pixels(path, what, width, height)


def _decode_pillow(path: Path) -> np.ndarray | None:
    """Fallback decoder for formats cv2 lacks (ICO, TGA, PSD...); None when Pillow fails too."""
    try:
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or im.mode == "I":
                arr = np.asarray(im).astype(np.uint16)
                return np.repeat(arr[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"))
    except Exception:  # any decoder failure means "not an image we can read"
        return None


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Scale 16-bit (round(x / 257)) or float [0, 1] samples to uint8, a band of rows at a time."""
    if img.dtype == np.uint8:
        return img
    out = np.empty(img.shape, np.uint8)
    for r in range(0, img.shape[0], _ROWS):  # wide temporaries of one band only, never of the whole image
        out[r : r + _ROWS] = _band_to_uint8(img[r : r + _ROWS])
    return out


def _band_to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):  # PFM/HDR/float TIFF: assume linear [0, 1]
        return np.round(np.clip(np.nan_to_num(img), 0.0, 1.0) * 255.0).astype(np.uint8)
    info = np.iinfo(img.dtype)
    return np.round((img.astype(np.float64) - info.min) / (info.max - info.min) * 255.0).astype(np.uint8)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any common image as (H, W, 3) uint8 RGB: EXIF-oriented, alpha dropped, 16-bit scaled."""
    img = _to_uint8(_decode(Path(path), "image"))
    return np.ascontiguousarray(img)


def read_mask(
    path: str | os.PathLike[str],
    like_shape: tuple[int, ...] | None = None,
    image: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Read a mask as (H, W) bool: a pixel is on when any channel is above half its range."""
    path = Path(path)
    img = _decode(path, "mask")
    if img.dtype == np.uint8:
        on = img > 127
    elif img.dtype == np.uint16:
        on = img > 32767
    elif np.issubdtype(img.dtype, np.floating):
        on = np.nan_to_num(img) > 0.5
    else:
        on = _to_uint8(img) > 127
    # Any channel (not luminance): a pure blue mask on black has luminance 29 and would vanish.
    mask = on.any(axis=2)
    if like_shape is not None and tuple(like_shape[:2]) != mask.shape:
        h, w = like_shape[:2]
        mh, mw = mask.shape
        of_image = f" '{image}'" if image is not None else ""
        raise InputError(
            f"mask '{path}' is {mw}x{mh} but the image{of_image} is {w}x{h} (width x height); "
            f"resize the mask to {w}x{h} with nearest-neighbour interpolation"
        )
    return mask


# ----------------------------------------------------------------------------- videos


def is_video(path: str | os.PathLike[str]) -> bool:
    """True for video extensions, and for a GIF with more than one frame."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in VIDEO_EXTS:
        return True
    if ext == ".gif" and path.is_file():
        try:
            from PIL import Image

            with Image.open(path) as im:
                return getattr(im, "n_frames", 1) > 1
        except Exception:  # unreadable GIF: let read_image report it
            return False
    return False


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video."""

    fps: float | None
    frames: int | None  # estimated as round(duration * fps); None when the container does not say
    width: int
    height: int


class VideoShortError(InputError):
    """Fewer frames decoded than the container declares (a truncated file); raised after the last frame."""

    def __init__(self, path: Path, decoded: int, declared: int) -> None:
        self.path, self.decoded, self.declared = path, decoded, declared
        super().__init__(
            f"video '{path}': decoded {decoded} of {declared} frames declared; the file looks truncated: "
            "re-download or re-encode it; the frames that decoded are used"
        )


def _video_error(path: Path, reason: object) -> InputError:
    """One message for every way a video can fail to decode."""
    first = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return InputError(
        f"cannot read video '{path}': {first}; check that it plays, or re-encode it with "
        f"'ffmpeg -i {path.name} -c:v libx264 fixed.mp4'"
    )


def _is_gif(path: Path) -> bool:
    return path.suffix.lower() == ".gif"


def _open_video(path: Path) -> tuple[Iterator[bytes], dict]:
    """Start an ffmpeg decoder yielding rgb24 frames; returns (generator, meta)."""
    import imageio_ffmpeg

    if not path.is_file():
        raise InputError(f"cannot read video '{path}': file is missing; check the path")
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration) as e:
        gen.close()
        raise _video_error(path, e) from e
    width, height = meta["size"]
    try:
        _check_pixels(path, "video", width, height)
    except InputError:
        gen.close()
        raise
    return gen, meta


# GIF frames are decoded by Pillow, one real frame each with its own duration: ffmpeg would resample
# them to a constant rate and repeat each frame as many times as its duration spans.
_GIF_MIN_MS = 20  # browsers show frames of 0-10 ms for 100 ms; so does this reader


def _gif_durations(path: Path) -> tuple[list[int], int, int]:
    """(duration in ms of each frame, width, height) of a GIF."""
    from PIL import Image

    if not path.is_file():
        raise InputError(f"cannot read video '{path}': file is missing; check the path")
    try:
        with Image.open(path) as im:
            _check_pixels(path, "video", *im.size)
            durations = []
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                ms = im.info.get("duration") or 0
                durations.append(int(ms) if ms >= _GIF_MIN_MS else 100)
            return durations, *im.size
    except InputError:
        raise
    except Exception as e:  # Pillow's many decoder errors: one message
        raise _video_error(path, e) from e


def _gif_frames(path: Path) -> Iterator[np.ndarray]:
    """Each real frame of a GIF as (H, W, 3) uint8 RGB, disposal and transparency composed by Pillow."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                yield np.array(im.convert("RGB"))
    except Exception as e:
        if isinstance(e, InputError):
            raise
        raise _video_error(path, e) from e


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame rate, estimated frame count and size of a video, without decoding it (GIF: its real frames)."""
    path = Path(path)
    if _is_gif(path):
        durations, width, height = _gif_durations(path)
        # one rate for the .mp4: the GIF's mean, so that the clip lasts as long as the GIF
        return VideoInfo(fps=1000.0 * len(durations) / sum(durations), frames=len(durations), width=width,
                         height=height)
    gen, meta = _open_video(path)
    gen.close()
    fps = meta.get("fps")
    fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
    duration = meta.get("duration")
    frames = int(round(duration * fps)) if fps and duration and np.isfinite(duration) else None
    width, height = meta["size"]
    return VideoInfo(fps=fps, frames=frames, width=int(width), height=int(height))


def _declared_frames(path: Path, meta: dict) -> int | None:
    """Frames the container declares: its video stream's count where it has one, else duration x fps."""
    fps, duration = meta.get("fps"), meta.get("duration")
    estimate = int(round(duration * fps)) if fps and duration and np.isfinite(duration * fps) else None
    try:  # mp4/mov keep an exact count of the stream's frames (the container's duration may be the audio's)
        import cv2

        cap = cv2.VideoCapture(str(path))
        try:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        finally:
            cap.release()
    except Exception:  # no cv2 video backend: the estimate stands
        count = 0
    return count if count > 0 else estimate


def _frames_of(path: Path) -> tuple[Iterator[np.ndarray], Callable[[], None], Callable[[int], int | None]]:
    """(frames, close, declared(decoded)) for a video: ffmpeg for videos, Pillow for GIFs."""
    if _is_gif(path):
        gen = _gif_frames(path)
        return gen, gen.close, lambda decoded: None  # Pillow counts the frames it decodes
    raw, meta = _open_video(path)
    width, height = meta["size"]
    frames = (np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in raw)

    def declared(decoded: int) -> int | None:
        estimate = meta.get("fps") and meta.get("duration") and int(round(meta["duration"] * meta["fps"]))
        if not estimate or decoded >= estimate - 1:  # off by one: the duration is rounded to 10 ms
            return None
        return _declared_frames(path, meta)

    return frames, raw.close, declared


def iter_video_frames(
    path: str | os.PathLike[str], every: int = 1, max_frames: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, (H, W, 3) uint8 RGB) for every `every`-th frame, at most `max_frames`.

    When the whole video was read but fewer frames decoded than its container declares, raises
    VideoShortError after the last frame (the frames before it are good).
    """
    if every < 1:
        raise UsageError(f"--every must be at least 1, got {every}; pass --every 1 for all frames")
    if max_frames is not None and max_frames < 1:
        raise UsageError(f"--max-frames must be at least 1, got {max_frames}; omit it for all frames")
    path = Path(path)
    frames, close, declared = _frames_of(path)
    yielded = decoded = 0
    try:
        for index, frame in enumerate(frames):
            decoded = index + 1
            if index % every:
                continue
            # copy(): frombuffer over bytes is read-only and callers may draw on frames
            yield index, frame.copy() if not frame.flags.writeable else frame
            yielded += 1
            if max_frames is not None and yielded >= max_frames:
                return
    except (OSError, RuntimeError, ValueError) as e:
        raise _video_error(path, e) from e
    finally:
        close()  # stops ffmpeg when the caller breaks early
    if yielded == 0:
        raise _video_error(path, "no decodable frames")
    expected = declared(decoded)
    if expected is not None and decoded < expected - 1 - expected // 100:
        raise VideoShortError(path, decoded, expected)


# ----------------------------------------------------------------------------- inputs


def natural_key(path: str | os.PathLike[str]) -> tuple:
    """Sort key ordering numbers by value (frame2 < frame10), part by part, case-insensitively."""
    parts = Path(path).parts
    key = tuple(
        tuple(int(t) if i % 2 else t.casefold() for i, t in enumerate(_DIGITS.split(p))) for p in parts
    )
    return key, str(path)  # the raw string breaks ties (a.PNG vs a.png) deterministically


@dataclass(frozen=True)
class InputItem:
    """One input file and the output stem it maps to."""

    path: Path  # the file
    rel: Path  # output stem relative to the output folder, without extension (folder/a/b.jpg -> a/b)
    frame: int | None = None  # video frame index; rel is then videostem/frame_000123


def frame_item(item: InputItem, index: int) -> InputItem:
    """The item for frame `index` of a video item: rel becomes videostem/frame_000123."""
    return InputItem(path=item.path, rel=item.rel / f"frame_{index:06d}", frame=index)


@dataclass(frozen=True)
class _Found:
    """A file found while expanding inputs, with the folder its rel is relative to."""

    path: Path
    rel: Path
    base: Path  # its name disambiguates colliding rels


def _is_media(path: Path) -> bool:
    """Known image or video extension."""
    ext = path.suffix.lower()
    return ext in IMAGE_EXTS or ext in VIDEO_EXTS


def _rel(path: Path, base: Path) -> Path:
    """Output stem of `path` under `base`: sub-folders kept, extension dropped."""
    rel = path.relative_to(base)
    return rel.with_name(path.stem)


def _own_task(path: str | os.PathLike[str]) -> str | None:
    """The task in a name percept writes, NAME.TASK.EXT (scene.depth.png, clip.flow.mp4), else None."""
    from percept_cli.tasks import TASKS  # numpy only

    parts = Path(path).name.split(".")
    if len(parts) < 3 or not parts[0]:
        return None
    return next((part for part in parts[1:-1] if part in TASKS), None)


def is_own_output(path: str | os.PathLike[str]) -> bool:
    """True for names percept writes (`*.depth.*`, `*.flow.*`, `*.amodal.*`): never taken as inputs."""
    return _own_task(path) is not None


def _own_output_error(path: str | os.PathLike[str], origin: str) -> InputError:
    task = _own_task(path)
    return InputError(
        f"input '{path}' ({origin}) is named like percept's own output (*.{task}.*), which is never taken as "
        f"an input; rename it without '.{task}.' to use it"
    )


def _scan_folder(folder: Path, base: Path, recursive: bool, skip: Path | None = None) -> list[_Found]:
    """Images in `folder` (sub-folders too when recursive); videos, hidden entries, our outputs skipped.

    `skip` is a folder (the output folder) whose files are left out.
    """
    found = []
    for root, dirs, files in os.walk(folder):
        # Hidden folders and files (.git, .DS_Store, our own .NAME.tmp-PID files) are never inputs.
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        if skip is not None and Path(root).resolve().is_relative_to(skip):
            dirs[:] = []
            continue
        for name in files:
            p = Path(root) / name
            # Videos in a folder are skipped: a folder of frames often holds a preview .mp4 too.
            if name.startswith(".") or p.suffix.lower() not in IMAGE_EXTS or is_own_output(name):
                continue
            found.append(_Found(p, _rel(p, base), base))
    return sorted(found, key=lambda f: natural_key(f.rel))


def _glob_base(pattern: str) -> Path:
    """The leading folders of a glob pattern that contain no wildcard."""
    parts = Path(pattern).parts
    lead = []
    for part in parts[:-1]:
        if _MAGIC.search(part):
            break
        lead.append(part)
    return Path(*lead) if lead else Path(".")


def _inner(skip: Path | None, root: Path) -> Path | None:
    """`skip` when it lies strictly inside `root` (an output folder inside the scanned tree), else None.

    An output folder equal to the scanned folder, or above it, excludes nothing: percept's own
    files there are recognised by their names instead.
    """
    if skip is None:
        return None
    root = root.resolve()
    return skip if skip != root and skip.is_relative_to(root) else None


def _expand_arg(arg: str, recursive: bool, origin: str, skip: Path | None = None) -> list[_Found]:
    """Expand one file, folder or glob pattern; `origin` names it in errors; files under `skip` left out."""
    path = Path(arg).expanduser()
    if path.is_dir():
        found = _scan_folder(path, path, recursive, _inner(skip, path))
        if not found:
            hint = "" if recursive else ", or pass --recursive to search sub-folders"
            raise InputError(f"folder '{arg}' ({origin}) contains no images; check the path{hint}")
        return found
    if path.is_file():
        if is_own_output(path):
            raise _own_output_error(arg, origin)
        return [_Found(path, Path(path.stem), path.parent)]
    if _MAGIC.search(arg):
        base = _glob_base(str(path))
        inner = _inner(skip, base)
        found = []
        for match in glob.glob(str(path), recursive=recursive):
            m = Path(match)
            if inner is not None and m.resolve().is_relative_to(inner):
                continue
            if m.is_dir():
                found += _scan_folder(m, base, recursive, inner)
            elif _is_media(m) and not m.name.startswith(".") and not is_own_output(m):
                found.append(_Found(m, _rel(m, base), base))
        if not found:
            raise InputError(
                f"pattern '{arg}' ({origin}) matched no images or videos; check it, and quote it "
                "so that the shell does not expand it"
            )
        # With recursion, `**` also matches folders whose files were already matched one by one.
        return sorted(_dedupe(found), key=lambda f: natural_key(f.rel))
    raise InputError(f"input '{arg}' ({origin}) does not exist; check the path")


def _stdin_paths(stdin: TextIO | None) -> list[tuple[int, str]]:
    """(line number, path) for each non-blank, non-comment line of stdin."""
    stream = stdin if stdin is not None else sys.stdin
    out = []
    for number, line in enumerate(stream, start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            out.append((number, text))
    return out


@dataclass(frozen=True)
class Problem:
    """An input that cannot be used; the batch goes on without it (the caller reports it, exits 1)."""

    inputs: tuple[str, ...]  # as the user gave them: an argument, a stdin path, a list line's paths
    message: str  # one line naming the input and the fix


def _report(problems: list[Problem] | None, inputs: Iterable[str], error: InputError | str) -> None:
    """Raise `error` (problems is None: the whole call fails) or note it and go on."""
    if problems is None:
        raise error if isinstance(error, InputError) else InputError(error)
    problems.append(Problem(tuple(map(str, inputs)), str(error)))


def _expand_args(
    args: Iterable[str],
    recursive: bool,
    stdin: TextIO | None,
    exclude: str | os.PathLike[str] | None = None,
    problems: list[Problem] | None = None,
) -> list[tuple[str, bool, list[_Found] | None]]:
    """Expand each argument ('-' reads paths from stdin) to (name, is a folder, files found).

    An argument that cannot be expanded raises InputError, or, with `problems`, is noted there and
    comes back with None for its files.
    """
    skip = Path(exclude).expanduser().resolve() if exclude is not None else None
    groups, stdin_read = [], False
    for arg in args:
        if arg == "-":  # '-' twice reads stdin once
            entries = [] if stdin_read else [(line, f"stdin line {n}") for n, line in _stdin_paths(stdin)]
            stdin_read = True
        else:
            entries = [(arg, "argument")]
        for name, origin in entries:
            try:
                groups.append((name, Path(name).expanduser().is_dir(), _expand_arg(name, recursive, origin, skip)))
            except InputError as e:
                _report(problems, [name], e)
                groups.append((name, False, None))
    return groups


def _unique_rels(found: list[_Found]) -> list[Path]:
    """Rels with collisions resolved deterministically, in input order.

    Colliding rels (compared case-insensitively, as macOS and Windows file systems do) are
    prefixed with their base folder's name (a/x.jpg, b/x.jpg -> a/x, b/x); if still equal, the
    extension is kept in the name (x.jpg, x.png -> x.jpg, x.png); anything still taken gets
    -2, -3... in input order. Rels that never collide are left untouched.
    """

    def key(rel: Path) -> str:
        return rel.as_posix().casefold()

    def counts(rels: list[Path]) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in rels:
            c[key(r)] = c.get(key(r), 0) + 1
        return c

    rels = [f.rel for f in found]
    c = counts(rels)
    rels = [
        (Path(f.base.resolve().name or "root") / r if c[key(r)] > 1 else r) for f, r in zip(found, rels)
    ]
    c = counts(rels)
    rels = [(r.with_name(f.path.name) if c[key(r)] > 1 else r) for f, r in zip(found, rels)]
    taken: set[str] = set()
    out = []
    for r in rels:
        candidate, n = r, 1
        while key(candidate) in taken:
            n += 1
            candidate = r.with_name(f"{r.name}-{n}")
        taken.add(key(candidate))
        out.append(candidate)
    return out


def _dedupe(found: list[_Found]) -> list[_Found]:
    """Drop repeats of the same file (given twice, or matched by two patterns), keeping the first."""
    seen: set[Path] = set()
    out = []
    for f in found:
        real = f.path.resolve()
        if real not in seen:
            seen.add(real)
            out.append(f)
    return out


def _items(found: list[_Found]) -> list[InputItem]:
    """InputItems with unique rels."""
    return [InputItem(f.path, rel) for f, rel in zip(found, _unique_rels(found))]


def collect_images(
    args: list[str],
    recursive: bool = False,
    stdin: TextIO | None = None,
    exclude: str | os.PathLike[str] | None = None,
    problems: list[Problem] | None = None,
) -> list[InputItem]:
    """Expand files, folders, glob patterns and '-' (paths on stdin) into uniquely named items.

    Folders give the images directly inside (all sub-folders with recursive), natural order,
    rel mirroring sub-folders; videos are returned as items too (the caller checks is_video).
    Scans skip percept's own outputs (is_own_output) and anything under `exclude` (pass the
    output folder) when it lies inside the scanned folder. An argument that cannot be used
    raises InputError, or with `problems` is noted there while the others are returned.
    """
    if not args:
        raise UsageError("no inputs given; pass image files, folders, glob patterns or '-' for stdin")
    found = _dedupe([f for _, _, group in _expand_args(args, recursive, stdin, exclude, problems) if group
                     for f in group])
    if not found and not problems:
        raise InputError("no inputs left: stdin gave no paths; check the inputs")
    return _items(found)


def _list_lines(list_file: str | os.PathLike[str], stdin: TextIO | None, columns: int, usage: str,
                problems: list[Problem] | None = None, frames: int | None = None):
    """Yield (line number, paths) from a list file ('-' = stdin), paths resolved against its folder.

    A bad line raises InputError, or with `problems` is noted there and left out. The first
    `frames` columns (default: all) are inputs and may not be percept's own outputs.
    """
    if str(list_file) == "-":
        lines, folder, name = list(stdin if stdin is not None else sys.stdin), Path("."), "stdin"
    else:
        lf = Path(list_file).expanduser()
        try:
            lines = lf.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read list file '{lf}': {e}; give a UTF-8 text file to --list") from e
        folder, name = lf.parent, f"'{lf}'"
    out, entries = [], 0
    for number, line in enumerate(lines, start=1):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            _report(problems, [line.strip()], f"list {name} line {number}: {e}; quote paths with spaces as \"a b.png\"")
            entries += 1
            continue
        if not tokens:
            continue
        entries += 1
        if len(tokens) != columns:
            _report(problems, tokens, f"list {name} line {number}: expected {columns} paths '{usage}', "
                                      f"got {len(tokens)}; quote paths that contain spaces")
            continue
        paths = []
        for column, t in enumerate(tokens):
            p = Path(t).expanduser()
            p = p if p.is_absolute() else folder / p
            if not p.is_file():
                _report(problems, tokens, f"list {name} line {number}: file '{p}' does not exist; fix the path")
                break
            if column < (frames or columns) and is_own_output(p):
                _report(problems, tokens, _own_output_error(p, f"list {name} line {number}"))
                break
            paths.append(p)
        else:
            out.append((number, paths))
    if not entries:
        raise InputError(f"list {name} has no entries; add one '{usage}' per line")
    return out


def _consecutive(group: list[_Found | None]) -> list[tuple[_Found, _Found]]:
    """(f0, f1), (f1, f2)... over a sequence; None (an input that failed) breaks it."""
    return [(a, b) for a, b in zip(group[:-1], group[1:]) if a is not None and b is not None]


def collect_pairs(
    args: list[str],
    recursive: bool = False,
    list_file: str | os.PathLike[str] | None = None,
    stdin: TextIO | None = None,
    exclude: str | os.PathLike[str] | None = None,
    problems: list[Problem] | None = None,
) -> list[tuple[InputItem, InputItem]]:
    """Frame pairs for optical flow: `A B`, a folder of frames, a video, or `--list` lines `A B`.

    Loose files (and globs, stdin paths) form one sequence in the given order and pair
    consecutively (a missing one pairs with neither neighbour); each folder pairs its own frames in
    natural order, sub-folder by sub-folder; a video comes back as one pair (item, item) whose
    frames the caller pairs. The output name of a pair is its first frame's rel. One frame alone
    is a usage error; inputs that cannot be used raise InputError or, with `problems`, are noted there.
    """
    if list_file is not None:
        if args:
            raise UsageError("give either frame paths or --list FILE, not both; drop one")
        pairs = [(_Found(a, Path(a.stem), a.parent), _Found(b, Path(b.stem), b.parent))
                 for _, (a, b) in _list_lines(list_file, stdin, 2, "A B", problems)]
    else:
        if not args:
            raise UsageError("flow needs inputs: two images A B, a video, a folder of frames, or --list FILE")
        pairs, loose = [], []
        for arg, is_folder, group in _expand_args(args, recursive, stdin, exclude, problems):
            if group is None:
                loose.append(None)
            elif is_folder:
                by_folder: dict[Path, list[_Found]] = {}
                for f in group:  # frames of different sub-folders are different sequences
                    by_folder.setdefault(f.path.parent, []).append(f)
                folder_pairs = [p for g in by_folder.values() for p in _consecutive(g)]
                if not folder_pairs:
                    _report(problems, [arg],
                            f"folder '{arg}' needs at least two frames for flow; add frames or pass A B")
                pairs += folder_pairs
            else:
                for f in group:
                    if is_video(f.path):
                        pairs.append((f, f))
                    else:
                        loose.append(f)
        if len(loose) == 1 and loose[0] is not None:
            raise UsageError(
                f"flow needs two images but only '{loose[0].path}' was given; pass A B, a video or a folder of frames"
            )
        pairs += _consecutive(loose)
    firsts = _unique_rels([a for a, _ in pairs])
    # The second frame names no output, so its rel is left as found.
    return [(InputItem(a.path, rel), InputItem(b.path, b.rel)) for (a, b), rel in zip(pairs, firsts)]


def collect_image_mask_pairs(
    args: list[str],
    mask: str | os.PathLike[str] | None = None,
    list_file: str | os.PathLike[str] | None = None,
    recursive: bool = False,
    stdin: TextIO | None = None,
    exclude: str | os.PathLike[str] | None = None,
    problems: list[Problem] | None = None,
) -> list[tuple[InputItem, Path]]:
    """(image item, visible-mask path) pairs for amodal: `IMAGE... --mask MASK` or `--list` lines `IMAGE MASK`.

    --mask may be a folder: each image then takes the mask with the same rel (any image
    extension); an image without one raises InputError, or with `problems` is noted there. One
    image listed with several masks is named IMAGESTEM.MASKSTEM.
    """
    if (mask is None) == (list_file is None):
        raise UsageError("amodal needs exactly one of --mask MASK or --list FILE; pass one of them")
    if list_file is not None:
        if args:
            raise UsageError("give either IMAGE --mask MASK or --list FILE, not both; drop one")
        pairs = [(_Found(i, Path(i.stem), i.parent), m)
                 for _, (i, m) in _list_lines(list_file, stdin, 2, "IMAGE MASK", problems, frames=1)]
    else:
        images = _dedupe([f for _, _, g in _expand_args(args, recursive, stdin, exclude, problems) if g for f in g])
        if not images and not problems:
            raise UsageError("amodal needs an IMAGE before --mask; pass the image path")
        m = Path(mask).expanduser()
        if m.is_dir():
            pairs = []
            for f in images:
                try:
                    pairs.append((f, _mask_in_folder(m, f)))
                except InputError as e:
                    _report(problems, [str(f.path)], e)
        elif m.is_file():
            pairs = [(f, m) for f in images]
        else:
            raise InputError(f"mask '{mask}' does not exist; pass the visible-mask file to --mask")
    # The same image with several masks would write one output; name each after its mask.
    count: dict[Path, int] = {}
    for f, _ in pairs:
        count[f.path.resolve()] = count.get(f.path.resolve(), 0) + 1
    found = [
        _Found(f.path, f.rel.with_name(f"{f.rel.name}.{m.stem}"), f.base) if count[f.path.resolve()] > 1 else f
        for f, m in pairs
    ]
    return [(InputItem(f.path, rel), m) for f, rel, (_, m) in zip(found, _unique_rels(found), pairs)]


def _mask_in_folder(folder: Path, image: _Found) -> Path:
    """The mask in `folder` whose rel equals the image's rel (PNG preferred)."""
    stem = folder / image.rel
    candidates = [stem.with_name(stem.name + ext) for ext in (".png", *sorted(IMAGE_EXTS - {".png"}))]
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(
        f"no mask for image '{image.path}' in mask folder '{folder}': expected '{stem}.png'; "
        "name each mask like its image"
    )
