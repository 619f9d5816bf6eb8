"""Depth in 3-D: camera intrinsics, back-projection to point clouds, PLY files, metric alignment.

Camera convention (OpenCV): x right, y down, z forward along the optical axis, in the units of the
depth given (affine-invariant depth units, or metres after `--align`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from percept_cli.errors import InputError

DEFAULT_FOV = 60.0  # degrees, horizontal: a typical phone or webcam when nothing better is known
_FILM_WIDTH_MM = 36.0  # the 35 mm-equivalent focal length refers to a 36 mm wide frame


@dataclass(frozen=True)
class Intrinsics:
    fx: float  # focal length in pixels (square pixels: fy = fx)
    cx: float
    cy: float
    source: str  # how the focal length was found, for the message the user sees

    @property
    def hfov(self) -> float:
        return float(np.degrees(2 * np.arctan(self.cx / self.fx)))


def intrinsics(width: int, height: int, fov: float | None = None, exif_focal_px: float | None = None) -> Intrinsics:
    """Pinhole intrinsics from --fov, else the EXIF focal length, else DEFAULT_FOV (principal point at the centre)."""
    if fov is not None:
        if not 1.0 <= fov <= 179.0:
            raise InputError(f"--fov {fov:g}: the horizontal field of view must be between 1 and 179 degrees")
        fx, source = width / (2 * np.tan(np.radians(fov) / 2)), f"--fov {fov:g}"
    elif exif_focal_px:
        fx = exif_focal_px
        source = f"EXIF focal length ({np.degrees(2 * np.arctan(width / 2 / fx)):.1f} degrees horizontal)"
    else:
        fx, source = width / (2 * np.tan(np.radians(DEFAULT_FOV) / 2)), f"default {DEFAULT_FOV:g} degrees (no --fov, no EXIF)"
    return Intrinsics(float(fx), width / 2.0, height / 2.0, source)


def exif_focal_px(path: str | os.PathLike[str], width: int) -> float | None:
    """Focal length in pixels of an image `width` pixels wide, from EXIF (35 mm equivalent), or None."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            exif = im.getexif().get_ifd(0x8769)  # the Exif sub-IFD holds the focal lengths
    except Exception:  # no EXIF, or not an image Pillow reads: fall back to the default
        return None
    f35 = exif.get(0xA405)  # FocalLengthIn35mmFilm
    try:
        f35 = float(f35) if f35 else 0.0
    except (TypeError, ValueError):
        return None
    return width * f35 / _FILM_WIDTH_MM if f35 > 0 else None


def backproject(depth: np.ndarray, k: Intrinsics) -> np.ndarray:
    """(H, W) z-depth -> (H, W, 3) float32 camera-space points (x right, y down, z forward)."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float32) + 0.5, np.arange(h, dtype=np.float32) + 0.5)
    z = depth.astype(np.float32)
    return np.stack([(u - k.cx) / k.fx * z, (v - k.cy) / k.fx * z, z], axis=-1)


def point_cloud(
    depth: np.ndarray, rgb: np.ndarray, k: Intrinsics, uncertainty: np.ndarray | None = None,
    max_uncertainty: float | None = None, near_offset: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Points (N, 3), colours (N, 3) uint8 and uncertainty (N,) of the pixels kept.

    Affine-invariant depth starts at 0 (the nearest point), which would put it on the camera centre:
    `near_offset` is added to z so the cloud lies in front of the camera. Pixels whose uncertainty exceeds
    `max_uncertainty` are dropped.
    """
    if rgb.shape[:2] != depth.shape:
        raise ValueError(f"rgb {rgb.shape[:2]} and depth {depth.shape} differ in size")
    pts = backproject(depth + near_offset, k).reshape(-1, 3)  # (H*W, 3)
    keep = np.isfinite(pts).all(axis=1) & (pts[:, 2] > 0)
    unc = None if uncertainty is None else uncertainty.reshape(-1).astype(np.float32)
    if max_uncertainty is not None and unc is not None:
        keep &= unc <= max_uncertainty
    return pts[keep], rgb.reshape(-1, 3)[keep], None if unc is None else unc[keep]


# -- PLY -----------------------------------------------------------------------------------------


def _plyfile():
    """(PlyData, PlyElement) from the optional plyfile package; UsageError naming the extra when missing."""
    try:
        from plyfile import PlyData, PlyElement
    except ImportError:
        from percept_cli.errors import UsageError

        raise UsageError("--format ply needs the plyfile package: pip install 'percept-cli[ply]'") from None
    return PlyData, PlyElement


def ply_bytes(points: np.ndarray, colors: np.ndarray, uncertainty: np.ndarray | None = None) -> bytes:
    """A binary little-endian PLY: x y z float32, red green blue uchar, [uncertainty float32]."""
    import io

    PlyData, PlyElement = _plyfile()

    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if uncertainty is not None:
        fields.append(("uncertainty", "<f4"))
    vertex = np.empty(len(points), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = points[:, 0], points[:, 1], points[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    if uncertainty is not None:
        vertex["uncertainty"] = uncertainty
    buf = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<", text=False).write(buf)
    return buf.getvalue()


def read_ply(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The vertex properties of a PLY file, by name."""
    PlyData, _ = _plyfile()
    data = PlyData.read(str(path))
    v = data["vertex"].data
    return {name: np.asarray(v[name]) for name in v.dtype.names}


# -- metric alignment (--align) ----------------------------------------------------------------


def parse_align_points(path: str | os.PathLike[str]) -> np.ndarray:
    """(N, 3) float64 rows (x, y, depth metres) from a text file of `x y depth` lines ('#' comments), N >= 2."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--align {p}: cannot read it ({e.__class__.__name__}): pass a text file of 'x y depth' lines")
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        try:
            x, y, d = (float(t) for t in parts)
        except ValueError:
            raise InputError(f"--align {p}, line {n}: expected 'x y depth' (pixel column, row, metres), got {line!r}")
        if not (np.isfinite(d) and d > 0):
            raise InputError(f"--align {p}, line {n}: depth {d:g} must be a positive number of metres")
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(f"--align {p}, line {n}: the pixel position must be finite, got {line!r}")
        rows.append((x, y, d))
    if len(rows) < 2:
        raise InputError(f"--align {p}: {len(rows)} point(s); at least 2 known depths are needed to fit scale and shift")
    return np.array(rows, np.float64)


def check_points_inside(points: np.ndarray, width: int, height: int, name: str = "--align") -> None:
    """InputError naming the first (x, y) point outside a width x height image."""
    for x, y, _ in points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"{name}: point ({x:g}, {y:g}) is outside the {width}x{height} image; "
                             "x is the pixel column (0..width-1), y the row")


def read_align_points(path: str | os.PathLike[str], width: int, height: int) -> np.ndarray:
    """parse_align_points, then every point checked to lie inside a width x height image."""
    points = parse_align_points(path)
    check_points_inside(points, width, height, f"--align {Path(path)}")
    return points


def fit_scale_shift(pred: np.ndarray, target: np.ndarray, name: str = "--align") -> tuple[float, float, np.ndarray]:
    """Robust (scale, shift, inlier mask) with target ~ scale * pred + shift, scale > 0.

    Every pair of points proposes a line (RANSAC, exhaustive up to 2,000 pairs), scored by MSAC with a
    tolerance of 10% of each known depth; least squares on the winner's inliers gives the result. With 2
    points that is the line through them. A few wrong points cannot pull the fit.
    """
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    n = len(pred)
    if n < 2:
        raise InputError(f"{name}: {n} point(s); at least 2 are needed to fit scale and shift")
    if np.ptp(pred) < 1e-6:
        raise InputError(f"{name}: the predicted depth is the same at every known point, so no scale can be fitted: "
                         "add points at different distances")
    tol = 0.1 * np.abs(target) + 1e-6
    pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)])
    if len(pairs) > 2000:
        pairs = pairs[np.random.default_rng(0).choice(len(pairs), 2000, replace=False)]
    best, best_cost = None, np.inf
    for i, j in pairs:
        if abs(pred[i] - pred[j]) < 1e-6:
            continue
        s = (target[i] - target[j]) / (pred[i] - pred[j])
        if s <= 0:
            continue
        res = np.abs(s * (pred - pred[i]) + target[i] - target)
        cost = float((np.minimum(res / tol, 1.0) ** 2).sum())
        if cost < best_cost:
            best, best_cost = res <= tol, cost
    if best is None:
        raise InputError(f"{name}: the known depths do not increase with the predicted depth at any two points, "
                         "so no positive scale fits them: check the points' pixel positions")
    a = np.stack([pred[best], np.ones(int(best.sum()))], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, target[best], rcond=None)
    if not s > 0:
        raise InputError(f"{name}: the fit is degenerate (scale {s:.3g}): add points at different distances")
    return float(s), float(t), best


def sample_at(depth: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of (H, W) `depth` at (N, 2) pixel positions (column, row)."""
    import cv2

    mx = xy[:, 0].astype(np.float32).reshape(-1, 1)
    my = xy[:, 1].astype(np.float32).reshape(-1, 1)
    return cv2.remap(depth.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(-1)


def align_depth(depth: np.ndarray, points: np.ndarray, name: str = "--align") -> tuple[np.ndarray, dict]:
    """Metric depth (H, W) float32 metres from affine-invariant `depth` and known (x, y, metres) points."""
    pred = sample_at(depth, points[:, :2])
    s, t, inliers = fit_scale_shift(pred, points[:, 2], name)
    metric = (s * depth + t).astype(np.float32)
    if (metric <= 0).any():  # a shift below zero can push the nearest pixels behind the camera
        metric = np.maximum(metric, np.float32(1e-3))
    residual = np.abs(s * pred + t - points[:, 2])
    info = {"scale": s, "shift": t, "points": int(len(points)), "inliers": int(inliers.sum()),
            "median_abs_error_m": float(np.median(residual[inliers]))}
    return metric, info


# -- a picture of a cloud --------------------------------------------------------------------


def render_cloud(points: np.ndarray, colors: np.ndarray, size: tuple[int, int] = (480, 640),
                 yaw: float = 35.0, pitch: float = 20.0, splat: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 view of a point cloud from an oblique virtual camera on white (splat x splat px, far to near).

    The cloud is turned by `yaw` (about the vertical axis) and `pitch` (about the horizontal one) around its
    median, seen from a camera stepped back along the new optical axis, and framed so that its 1st-99th
    percentile box fills about 90% of the picture.
    """
    h, w = size
    p = np.asarray(points, np.float64) - np.median(points, axis=0)
    ya, pa = np.radians(yaw), np.radians(pitch)
    ry = np.array([[np.cos(ya), 0, np.sin(ya)], [0, 1, 0], [-np.sin(ya), 0, np.cos(ya)]])
    rx = np.array([[1, 0, 0], [0, np.cos(pa), -np.sin(pa)], [0, np.sin(pa), np.cos(pa)]])
    p = p @ (rx @ ry).T
    lo, hi = np.percentile(p, 1, axis=0), np.percentile(p, 99, axis=0)
    p[:, :2] -= (lo[:2] + hi[:2]) / 2  # the box's centre on the optical axis
    extent = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-6))
    p[:, 2] += 2.5 * extent - lo[2]  # stand back: the near side of the box 2.5 extents away
    keep = p[:, 2] > 1e-6
    p, c = p[keep], np.asarray(colors)[keep]
    zc = float(np.median(p[:, 2]))
    f = 0.9 * zc / max((hi[0] - lo[0]) / w, (hi[1] - lo[1]) / h, 1e-9)  # the box fills 90% of the tighter side
    u = np.round(p[:, 0] / p[:, 2] * f + w / 2).astype(np.int64)
    v = np.round(p[:, 1] / p[:, 2] * f + h / 2).astype(np.int64)
    img = np.full((h, w, 3), 255, np.uint8)
    order = np.argsort(-p[:, 2])  # far first, so near points overwrite them
    u, v, c = u[order], v[order], c[order]
    for du in range(splat):
        for dv in range(splat):
            uu, vv = u + du, v + dv
            ok = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            img[vv[ok], uu[ok]] = c[ok]  # painter's order: later (nearer) splats win
    return img
