"""Every output primitive, each file written atomically (temp name in the same folder, then rename).

Task-free: atomic files and stale temps, .npy, 16-bit and 8-bit PNG, OpenEXR, Middlebury .flo, colour maps
(depth with --colormap, uncertainty, the flow wheel, mask overlays) and the .mp4 VideoWriter. Which files a task
writes, and their names (NAME.TASK.FORMAT beside the input's stem), live in its module (tasks/).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import InputError, OutputError, UsageError

# cv2 and imageio are imported inside functions: planning imports this module without them.

FLO_MAGIC = 202021.25  # "PIEH" read as a little-endian float32
_UNKNOWN_FLOW = 1e9  # Middlebury: components above this mark unknown flow


# ----------------------------------------------------------------------------- atomic files


def ensure_folder(folder: str | os.PathLike[str]) -> Path:
    """Create `folder` (and parents); OutputError naming it when that is impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise OutputError(
            f"cannot create output folder '{folder}': a file of that name exists; "
            "choose another output folder with -o"
        ) from e
    except OSError as e:
        why = "part of the path is a file" if isinstance(e, NotADirectoryError) else (e.strerror or str(e))
        raise OutputError(
            f"cannot create output folder '{folder}': {why}; choose a writable output folder with -o"
        ) from e
    return folder


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` on success, delete it on any failure.

    The temp name `.NAME.tmp-PID.EXT` keeps the real extension last because some writers
    (ffmpeg) pick the format from it, and starts with a dot so input scans skip it. The temp is
    locked while it exists, and temps that a killed process left in the folder are removed first
    (see remove_stale_temps).
    """
    path = Path(path)
    tmp = _temp_beside(path)
    lock = None
    try:
        lock = _claim(tmp)
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:  # KeyboardInterrupt too: never leave a temp file behind
        _discard(tmp)
        if isinstance(e, OSError):
            raise _write_error(path, e) from e
        raise
    finally:
        _release(lock)


def _temp_name(path: Path) -> Path:
    """`.NAME.tmp-PID.EXT` beside `path`."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _temp_beside(path: Path) -> Path:
    """The temp name for `path`, in its folder (created, and swept of stale temps once per process)."""
    folder = ensure_folder(path.parent)
    key = os.path.abspath(folder)
    if key not in _SWEPT:
        _SWEPT.add(key)
        remove_stale_temps(folder)
    return _temp_name(path)


# ----------------------------------------------------------------------------- stale temps
# A process killed between writing a temp and renaming it (SIGKILL, power loss) cannot clean up.
# Its temp is stale when its process is gone: no process of that PID runs on this machine, and no
# process anywhere holds the lock that every writer keeps on its temp (flock; on a folder shared
# over NFS that also covers writers on other machines, whose PIDs mean nothing here).

try:
    import fcntl
except ImportError:  # Windows: no flock, and os.kill(pid, 0) would kill; temps are left alone there
    fcntl = None

_TEMP_RE = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)(?P<ext>\.[^.]*)?")  # what _temp_name makes
_SWEPT: set[str] = set()  # folders this process has swept


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the stale temps in `folder` (not its sub-folders); return what was deleted.

    Only regular files named exactly like _temp_name's are candidates; one is kept while its PID
    is a running process or its lock is held, and anything else in the folder is never touched.
    """
    if fcntl is None:
        return []
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _TEMP_RE.fullmatch(entry.name)
        try:
            if not match or not entry.is_file(follow_symlinks=False) or _pid_alive(int(match["pid"])):
                continue
        except OSError:
            continue
        if _unlink_unless_locked(Path(entry.path)):
            removed.append(Path(entry.path))
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether a process of this PID runs on this machine (unsure counts as alive)."""
    try:
        os.kill(pid, 0)  # signal 0: the check only, nothing is sent
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: another user's process; or a PID out of range
        return True
    return True


def _unlink_unless_locked(path: Path) -> bool:
    """Delete `path` if no process holds its lock (taking the lock first, so no writer starts meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink()
        return True
    except OSError:  # held (BlockingIOError), or not ours to delete
        return False
    finally:
        os.close(fd)


def _claim(tmp: Path) -> int | None:
    """Create `tmp` and lock it until _release, so that no sweep takes it for stale; None without flock."""
    if fcntl is None:
        return None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: the PID check still protects this machine's writers
        pass
    return fd


def _release(lock: int | None) -> None:
    if lock is not None:
        try:
            os.close(lock)
        except OSError:
            pass


def _discard(tmp: Path) -> None:
    """Delete a temp file if it is there; a failure here must not hide the original error."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def _write_error(path: Path, e: BaseException) -> OutputError:
    """OutputError naming the file, its folder and the fix."""
    why = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
    return OutputError(
        f"cannot write '{path.name}' in folder '{path.parent}': {why}; "
        "choose a writable output folder with -o, or free some disk space"
    )


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


# ----------------------------------------------------------------------------- primitives


def write_npy(path: str | os.PathLike[str], arr: np.ndarray) -> Path:
    """Save an array as .npy, atomically."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return write_bytes(path, buf.getvalue())


def _encode_png(img: np.ndarray, path: Path) -> bytes:
    """PNG bytes of a uint8/uint16 array already in cv2's channel order."""
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:  # only on shapes cv2 cannot store; callers validate those first
        raise OutputError(f"cannot encode '{path}' as PNG; report this as a bug")
    return buf.tobytes()


def _rgb_to_cv2(img: np.ndarray) -> np.ndarray:
    """RGB(A) -> BGR(A) for cv2; gray unchanged."""
    if img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(img[..., ::-1])
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[..., [2, 1, 0, 3]])
    return np.ascontiguousarray(img)


def _check_image_shape(img: np.ndarray, name: str) -> None:
    """ValueError unless (H, W), (H, W, 3) or (H, W, 4)."""
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        raise ValueError(f"{name} must be (H, W), (H, W, 3) or (H, W, 4), got shape {img.shape}")


def write_png16(path: str | os.PathLike[str], arr01: np.ndarray) -> Path:
    """Write floats in [0, 1] as a 16-bit PNG: round(x * 65535), clipped, NaN -> 0; RGB order in."""
    arr01 = np.asarray(arr01)
    _check_image_shape(arr01, "write_png16 input")
    u16 = np.round(np.clip(np.nan_to_num(arr01.astype(np.float64), nan=0.0), 0.0, 1.0) * 65535.0).astype(np.uint16)
    path = Path(path)
    return write_bytes(path, _encode_png(_rgb_to_cv2(u16), path))


def read_png16(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 16-bit PNG written by write_png16 back to float32 in [0, 1]."""
    import cv2

    path = Path(path)
    data = np.fromfile(path, np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None or img.dtype != np.uint16:
        raise InputError(f"cannot read '{path}' as a 16-bit PNG: missing, corrupt or not 16-bit; re-export it")
    return (_rgb_to_cv2(img).astype(np.float32) / np.float32(65535.0)).astype(np.float32)


def write_png8(path: str | os.PathLike[str], img: np.ndarray) -> Path:
    """Write a uint8 gray (H, W), RGB (H, W, 3) or RGBA (H, W, 4) image as PNG."""
    img = np.asarray(img)
    _check_image_shape(img, "write_png8 input")
    if img.dtype != np.uint8:
        raise ValueError(f"write_png8 needs uint8, got {img.dtype}; scale and cast first")
    path = Path(path)
    return write_bytes(path, _encode_png(_rgb_to_cv2(img), path))


def _colormap(values01: np.ndarray, cmap: int) -> np.ndarray:
    """(H, W) floats in [0, 1] through a cv2 colormap -> (H, W, 3) uint8 RGB."""
    import cv2

    u8 = np.round(np.clip(np.nan_to_num(values01.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(cv2.applyColorMap(u8, cmap)[..., ::-1])


DEPTH_COLORMAPS = ("inferno", "spectral", "turbo", "gray")  # --colormap names; near is the bright/warm end


def check_colormap(name: str) -> str:
    """The canonical --colormap name (case-insensitive); UsageError naming the choices."""
    key = str(name).strip().lower()
    if key not in DEPTH_COLORMAPS:
        raise UsageError(f"--colormap {name!r} is not a depth colour map; choose from {', '.join(DEPTH_COLORMAPS)}")
    return key


def colorize_depth(depth01: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """Depth in [0, 1] (0 = near) -> (H, W, 3) uint8 RGB; near is the bright or warm end of every map.

    inferno (default; perceptually uniform, prints in gray): near pale yellow, far black. turbo: near red,
    far dark blue. spectral (Marigold's): near red, far violet, through diffusers' MarigoldImageProcessor
    (its import is slow, so only for this map). gray: near white, far black.
    """
    import cv2

    depth01 = np.asarray(depth01)
    if depth01.ndim != 2:
        raise ValueError(f"colorize_depth needs depth (H, W), got shape {depth01.shape}")
    name = check_colormap(colormap)
    if name == "spectral":
        from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor

        values = np.clip(np.nan_to_num(depth01.astype(np.float32)), 0.0, 1.0)
        return np.ascontiguousarray(MarigoldImageProcessor.colormap(values, "Spectral", bytes=True), dtype=np.uint8)
    if name == "gray":
        u8 = np.round(np.clip(np.nan_to_num(1.0 - depth01.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(u8[..., None], 3, axis=2)
    cmap = {"inferno": cv2.COLORMAP_INFERNO, "turbo": cv2.COLORMAP_TURBO}[name]
    return _colormap(1.0 - depth01, cmap)


def colorize_uncertainty(uncertainty: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Uncertainty (H, W) >= 0 -> (H, W, 3) uint8 RGB with viridis, scaled by vmax.

    vmax defaults to the 95th percentile (the largest value when that is 0), so that a few outliers do not
    wash the map out: the top 5% saturate.
    """
    import cv2

    u = np.nan_to_num(np.asarray(uncertainty, dtype=np.float32))
    if u.ndim != 2:
        raise ValueError(f"colorize_uncertainty needs (H, W), got shape {u.shape}")
    if vmax is None:
        top = float(np.percentile(u, 95)) if u.size else 0.0
        top = top if top > 0 else float(u.max(initial=0.0))
    else:
        top = float(vmax)
    return _colormap(u / top if top > 0 else np.zeros_like(u), cv2.COLORMAP_VIRIDIS)


# ----------------------------------------------------------------------------- OpenEXR (float depth)


def exr_available() -> bool:
    """Whether write_exr can run: the OpenEXR bindings, or an OpenCV built with OpenEXR."""
    try:
        import OpenEXR  # noqa: F401
        return True
    except ImportError:
        import cv2

        return bool(cv2.haveImageWriter(".exr"))


def write_exr(path: str | os.PathLike[str], channels: dict[str, np.ndarray]) -> Path:
    """Write (H, W) float32 channels ({"Z": depth, ...}) as one scanline OpenEXR file (ZIP), atomically.

    OpenCV writes EXR only where it was built with OpenEXR (cv2.haveImageWriter('.exr'); the PyPI wheels are
    not), so this uses the OpenEXR bindings (pip install 'percept-cli[exr]'), else OpenCV for a single channel.
    """
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in channels.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"write_exr needs (H, W) channels of one shape, got {sorted(shapes)}")
    path = Path(path)
    try:
        import OpenEXR
    except ImportError:
        OpenEXR = None
    if OpenEXR is None:
        import cv2

        if len(arrays) != 1 or not cv2.haveImageWriter(".exr"):
            raise OutputError(f"cannot write '{path.name}': EXR needs the OpenEXR package; "
                              "pip install 'percept-cli[exr]' (or drop exr from --format)")
        ok, buf = cv2.imencode(".exr", next(iter(arrays.values())))
        if not ok:
            raise OutputError(f"cannot encode '{path}' as EXR; report this as a bug")
        return write_bytes(path, buf.tobytes())
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with atomic_path(path) as tmp:
        with OpenEXR.File(header, arrays) as f:
            f.write(str(tmp))
    return path


def read_exr(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The float channels of an EXR file written by write_exr, by name."""
    path = Path(path)
    try:
        import OpenEXR
    except ImportError:
        raise InputError(f"cannot read '{path}': EXR needs the OpenEXR package; pip install 'percept-cli[exr]'") from None
    try:
        with OpenEXR.File(str(path)) as f:
            return {name: np.array(ch.pixels, dtype=np.float32) for name, ch in f.channels().items()}
    except Exception as e:  # the bindings raise RuntimeError or their own errors on corrupt files
        raise InputError(f"cannot read '{path}' as EXR ({e}); re-export it") from None


def check_flow(flow: np.ndarray) -> np.ndarray:
    """ValueError unless (H, W, 2)."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2) with (dx, dy) in pixels, got shape {flow.shape}")
    return flow


def write_flo(path: str | os.PathLike[str], flow: np.ndarray) -> Path:
    """Write (H, W, 2) flow as Middlebury .flo: float32 magic, int32 width, int32 height, float32 u,v."""
    flow = check_flow(flow)
    h, w = flow.shape[:2]
    data = (
        np.array([FLO_MAGIC], "<f4").tobytes()
        + np.array([w, h], "<i4").tobytes()
        + np.ascontiguousarray(flow, dtype="<f4").tobytes()  # row-major, u and v interleaved
    )
    return write_bytes(path, data)


def read_flo(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a Middlebury .flo file to (H, W, 2) float32, validating magic, size and length."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read flow '{path}': {e.strerror or e}; check the path") from e
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != np.float32(FLO_MAGIC):
        raise InputError(f"cannot read flow '{path}': not a .flo file (bad magic number); give a Middlebury .flo")
    w, h = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    if w <= 0 or h <= 0 or len(data) != 12 + 8 * w * h:
        raise InputError(
            f"cannot read flow '{path}': header says {w}x{h} but the file holds {len(data) - 12} data bytes; "
            "the file is truncated or corrupt, re-export it"
        )
    return np.frombuffer(data, "<f4", offset=12).reshape(h, w, 2).astype(np.float32)


def _make_colorwheel() -> np.ndarray:
    """Baker et al.'s Middlebury colour wheel: 55 RGB colours, (55, 3) float in [0, 255]."""
    RY, YG, GC, CB, BM, MR = 15, 6, 4, 11, 13, 6
    ramps = []
    for n, start, channel in (
        (RY, (255, 0, 0), 1),  # red -> yellow: green rises
        (YG, (255, 255, 0), 0),  # yellow -> green: red falls
        (GC, (0, 255, 0), 2),  # green -> cyan: blue rises
        (CB, (0, 255, 255), 1),  # cyan -> blue: green falls
        (BM, (0, 0, 255), 0),  # blue -> magenta: red rises
        (MR, (255, 0, 255), 2),  # magenta -> red: blue falls
    ):
        seg = np.tile(np.array(start, np.float64), (n, 1))
        step = np.floor(255.0 * np.arange(n) / n)
        seg[:, channel] = step if start[channel] == 0 else 255.0 - step
        ramps.append(seg)
    return np.concatenate(ramps)


_COLORWHEEL = _make_colorwheel()


def flow_to_color(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """(H, W, 2) flow -> (H, W, 3) uint8 RGB on the Middlebury wheel: hue = direction, saturation = speed.

    Speeds are divided by max_flow (default: the largest finite speed in the map); speeds above
    1 after that are dimmed to 75 %, zero flow is white and unknown (non-finite or > 1e9) is black.
    """
    flow = check_flow(flow).astype(np.float64)
    unknown = ~np.isfinite(flow).all(axis=2) | (np.abs(np.nan_to_num(flow)) > _UNKNOWN_FLOW).any(axis=2)
    u = np.where(unknown, 0.0, flow[..., 0])
    v = np.where(unknown, 0.0, flow[..., 1])
    rad = np.sqrt(u * u + v * v)
    top = float(rad.max()) if max_flow is None else float(max_flow)
    scale = 1.0 / (top + 1e-5) if max_flow is None else (1.0 / top if top > 0 else 0.0)
    u, v, rad = u * scale, v * scale, rad * scale

    ncols = len(_COLORWHEEL)
    a = np.arctan2(-v, -u) / np.pi  # in [-1, 1]; +x flow sits at the wheel's start (red)
    a = np.where(a == 1.0, -1.0, a)  # -0.0 vs +0.0 in v must not flip +x flow to the wheel's end
    fk = (a + 1.0) / 2.0 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % ncols
    f = (fk - k0)[..., None]
    col = (1.0 - f) * _COLORWHEEL[k0] / 255.0 + f * _COLORWHEEL[k1] / 255.0  # (H, W, 3)
    inside = (rad <= 1.0)[..., None]
    col = np.where(inside, 1.0 - rad[..., None] * (1.0 - col), col * 0.75)
    out = np.floor(255.0 * col).astype(np.uint8)
    out[unknown] = 0
    return out


def overlay_mask(
    rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.5
) -> np.ndarray:
    """Blend `color` over `rgb` (H, W, 3) uint8 where `mask` (H, W) is true."""
    rgb = np.asarray(rgb)
    mask = np.asarray(mask, dtype=bool)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or mask.shape != rgb.shape[:2]:
        raise ValueError(f"overlay_mask needs rgb (H, W, 3) and mask (H, W), got {rgb.shape} and {mask.shape}")
    out = rgb.copy()
    blend = (1.0 - alpha) * rgb[mask].astype(np.float32) + alpha * np.asarray(color, np.float32)
    out[mask] = np.round(blend).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- video


class VideoWriter:
    """Context manager writing RGB frames to an H.264 .mp4; the file appears only on a clean exit.

    Frames are padded (edge pixels repeated) to even width and height, which yuv420p needs,
    instead of letting imageio resize them. Nothing is written if no frame was appended, and an
    existing file is kept (self.skipped) unless overwrite.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 10.0, overwrite: bool = False) -> None:
        if not fps > 0:
            raise UsageError(f"--fps must be positive, got {fps}; pass e.g. --fps 10")
        self.path = Path(path)
        self.fps = float(fps)
        self.skipped = self.path.exists() and not overwrite
        self.frames = 0
        self._size: tuple[int, int] | None = None
        self._writer = None
        self._tmp: Path | None = None
        self._lock: int | None = None

    def __enter__(self) -> VideoWriter:
        if not self.skipped:
            self._tmp = _temp_beside(self.path)
            try:
                self._lock = _claim(self._tmp)
            except OSError as e:
                self._tmp = None
                raise _write_error(self.path, e) from e
        return self

    def append(self, frame: np.ndarray) -> None:
        """Add one (H, W, 3) RGB or (H, W) gray uint8 frame; every frame must have the first one's size."""
        if self.skipped:
            return
        if self._tmp is None:
            raise RuntimeError("VideoWriter.append called outside its with block")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
            raise ValueError(f"video frames must be uint8 (H, W, 3) or (H, W), got {frame.dtype} {frame.shape}")
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        if self._size is None:
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            raise ValueError(f"video frame {self.frames} is {frame.shape[:2]}, the first was {self._size}")
        h, w = self._size
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        try:
            if self._writer is None:
                self._writer = self._open()
            self._writer.append_data(frame)
        except (OSError, RuntimeError) as e:
            raise _write_error(self.path, e) from e
        self.frames += 1

    def _open(self):
        """Start ffmpeg on the temp file."""
        import imageio.v2 as imageio

        return imageio.get_writer(
            self._tmp, format="FFMPEG", mode="I", fps=self.fps, codec="libx264",
            pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
        )

    def close(self, keep: bool = True) -> None:
        """Finish the file: renamed into place when `keep` and a frame was written, else deleted; idempotent."""
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        try:
            if self._writer is not None:
                self._writer.close()  # flushes ffmpeg; raises if encoding failed
            if keep and self.frames:
                os.replace(tmp, self.path)
        except (OSError, RuntimeError) as e:
            if keep:  # otherwise the caller's own error is the one to report
                raise _write_error(self.path, e) from e
        finally:
            _discard(tmp)  # no-op after a successful rename
            _release(self._lock)
            self._lock = None

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(keep=exc is None)
