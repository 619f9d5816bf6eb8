"""Procedural 3-D scenes with exact depth, forward flow and amodal ground truth (numpy; cv2 for photos).

The classic style (the default): a ground plane and a back wall with 3-7 textured primitives (spheres,
yaw-rotated boxes, vertical cylinders) standing on the ground, seen by a pinhole camera. Every pixel is
ray-cast analytically (nearest hit wins), shaded by a directional light plus ambient with cast
shadows, and hazed with distance. Frame 2 moves the camera and each object rigidly (translation
plus yaw); flow comes from moving each frame-1 hit point with its surface and re-projecting it.

The photo style (`render_scene(seed, size, photos=PhotoBank(...))`, or style="photo"): domain
randomisation for transfer to real images, with the same exact ground truth. Rooms (floor, four walls,
ceiling) or outdoor ground before a far photo backdrop; photo textures mapped by each surface's own
(u, v) (mip-mapped, so they move exactly with it); spheres, boxes, cylinders, thin poles and planks,
non-convex unions (L-shapes, tables, arches, snowmen) and flat photo cut-outs (rectangle, ellipse,
star polygon) standing or floating in any orientation; random field of view (30-90 degrees), height,
pitch and pixel aspect; random light; blur, noise, JPEG and colour jitter on the RGB only.

World frame: x right, y up, z forward (away from the camera). Camera frame: x right, y down,
z forward; pixel centres sit at integer coordinates (x = column, y = row), as in cv2.remap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from percept_cli.errors import UsageError

try:  # cv2 samples photo textures; the classic renderer needs only numpy
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None

# Surface kinds; the ground and the wall follow the objects in every hit stack. PLANE (a flat cut-out in its
# local z = 0 plane, silhouette `cut`) and COMPOUND (a union of primitives, `parts`) belong to the photo style.
SPHERE, BOX, CYLINDER, PLANE, COMPOUND = 0, 1, 2, 3, 4
_EPS = 1e-6
_CUBE = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)  # (8, 3) cube corners


@dataclass
class Scene:
    """Two frames of one procedural scene and their exact ground truth."""

    rgb: np.ndarray  # (H, W, 3) uint8, frame 1 (also the amodal input image)
    rgb2: np.ndarray  # (H, W, 3) uint8, frame 2 after camera + per-object rigid motion
    depth: np.ndarray  # (H, W) float32, z-depth in metres of frame 1, every pixel valid
    flow: np.ndarray  # (H, W, 2) float32, forward flow frame1->frame2 in pixels (u right, v down)
    visible_mask: np.ndarray  # (H, W) bool, visible part of the target object in frame 1
    whole_mask: np.ndarray  # (H, W) bool, the target's full silhouette
    whole_rgb: np.ndarray  # (H, W, 3) uint8, the target alone as shaded in frame 1, on white
    seed: int


@dataclass
class _Texture:
    """A procedural albedo pattern in a surface's own coordinates."""

    kind: str  # "checker" | "stripes" | "noise"
    c1: np.ndarray  # (3,) albedo where the pattern is 0
    c2: np.ndarray  # (3,) albedo where the pattern is 1
    freq: np.ndarray  # (J,) angular frequencies in rad/m
    dirs: np.ndarray  # (J, 3) unit directions (stripes/noise) in the surface's own frame
    phase: np.ndarray  # (J,) or (3,) phases
    axes: tuple[int, ...] = (0, 1, 2)  # checker axes; planes use their two in-plane axes
    # kind "photo": a photo crop mapped by the surface's own 2-D coordinates (u, v) in metres, so the
    # texture moves exactly with the surface: texel (x, y) = offset + scale * (u, -v), mirrored-tiled.
    img: tuple[np.ndarray, ...] = ()  # mip levels, (h, w, 3) float32 RGB albedo each, halving in size
    scale: float = 1.0  # texels of level 0 per metre
    offset: np.ndarray | None = None  # (2,) texel position of (u, v) = (0, 0)


@dataclass
class _Object:
    """A primitive standing on the ground, its pose in frame 1 and its rigid motion to frame 2."""

    kind: int
    half: np.ndarray  # (3,) half extents; sphere: (r, r, r); cylinder: (r, h, r)
    centre: np.ndarray  # (3,) world centre (resting on y = 0)
    yaw: float
    tex: _Texture
    d_centre: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) motion to frame 2
    d_yaw: float = 0.0
    # photo style: any orientation (local -> world rotation, replaces yaw) and rotation to frame 2
    # (world frame, about the centre); compound parts [(kind, half, offset)]; cut-out silhouette.
    rot: np.ndarray | None = None  # (3, 3)
    d_rot: np.ndarray | None = None  # (3, 3)
    parts: list | None = None
    cut: dict | None = None  # {"shape": "rect"|"ellipse"|"polygon", "theta": (K,), "r": (K,)} in units of half
    floating: bool = False

    def R(self) -> np.ndarray:
        """Local -> world rotation."""
        return _rot_y(self.yaw) if self.rot is None else self.rot

    @property
    def radius_xz(self) -> float:
        """Footprint radius on the ground, for placing objects without interpenetration."""
        if self.kind == BOX:
            return float(np.hypot(self.half[0], self.half[2]))
        return float(self.half[0])

    def moved(self) -> _Object:
        """The object's frame-2 pose."""
        if self.rot is None:
            return _Object(self.kind, self.half, self.centre + self.d_centre, self.yaw + self.d_yaw, self.tex)
        return self.at(1.0)

    def at(self, a: float) -> _Object:
        """A photo-style object moved by the fraction `a` of its motion (rotation by a fraction of its angle)."""
        d_rot = np.eye(3) if self.d_rot is None else self.d_rot
        if a == 1.0:
            turn = d_rot
        else:
            from scipy.spatial.transform import Rotation

            turn = Rotation.from_rotvec(a * Rotation.from_matrix(d_rot).as_rotvec()).as_matrix()
        return _Object(self.kind, self.half, self.centre + a * self.d_centre, 0.0, self.tex, rot=turn @ self.rot,
                       parts=self.parts, cut=self.cut, floating=self.floating)


@dataclass
class _Camera:
    """A pinhole camera with square pixels."""

    pos: np.ndarray  # (3,) world position
    rot: np.ndarray  # (3, 3) columns: camera right, down, forward in world coordinates
    f: float  # focal length in pixels (square pixels)
    cx: float
    cy: float
    fy: float | None = None  # photo style: a vertical focal length of its own (pixels stretched as by a
    # non-square crop squeezed onto the square grid); None: square pixels

    @property
    def f_y(self) -> float:
        return self.f if self.fy is None else self.fy

    @property
    def f_mean(self) -> float:
        return self.f if self.fy is None else float(np.sqrt(self.f * self.fy))


@dataclass
class _World:
    """The static background, the light and the haze."""

    ground: _Texture
    wall: _Texture
    wall_z: float
    light: np.ndarray  # (3,) unit vector towards the light
    light_rgb: np.ndarray  # (3,)
    ambient: float
    haze_rgb: np.ndarray  # (3,)
    haze: float  # extinction per metre
    # photo style: the background is a list of planes (ground, back wall, side walls, ceiling...) in place
    # of ground + wall; an emissive plane (a photo backdrop or sky) is drawn unshaded and unhazed.
    planes: list | None = None  # [_Plane]


@dataclass
class _Plane:
    """An infinite background plane {p[axis] = value} whose normal sign * e_axis faces the scene."""

    axis: int
    value: float
    sign: float
    tex: _Texture
    emissive: float = 0.0  # > 0: unshaded, this gain; its depth is still its own (exact flow and depth)

    @property
    def uv_axes(self) -> tuple[int, int]:
        """World axes of the plane's texture coordinates (u, v); v points up on walls."""
        return {0: (2, 1), 1: (0, 2), 2: (0, 1)}[self.axis]


def _rot_y(a: float) -> np.ndarray:
    """Rotation about the world's vertical axis, local -> world."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _camera_rot(yaw: float, pitch: float) -> np.ndarray:
    """Camera axes (right, down, forward) as world columns; positive pitch looks down."""
    fwd = np.array([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
    down = np.cross(right, fwd)
    return np.stack([right, down, fwd], axis=1)


def _ray_dirs(cam: _Camera, h: int, w: int) -> np.ndarray:
    """World ray directions scaled so their camera-z is 1, hence hit distance t = z-depth."""
    xn = (np.arange(w) - cam.cx) / cam.f  # (W,)
    yn = (np.arange(h) - cam.cy) / cam.f_y  # (H,)
    r = cam.rot
    right, down, fwd = (r[:, i, None, None] for i in range(3))  # (3, 1, 1) each
    return right * xn[None, None, :] + down * yn[None, :, None] + fwd  # (3, H, W)


def _col(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A (3,) vector shaped to broadcast against a (3, ...) array."""
    return v.reshape((3,) + (1,) * (like.ndim - 1))


# ---------------------------------------------------------------- intersections


def _hit_object(obj: _Object, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray parameter of the first hit with t > 0, inf on a miss; o and d are (3,) or (3, M), one of them (3, M)."""
    rt = obj.R().T  # world -> local
    ol = rt @ (o - _col(obj.centre, o))  # (3,) or (3, M), origin in the object's frame
    dl = rt @ d  # (3,) or (3, M)
    if obj.kind == COMPOUND:  # a union: the nearest hit of its parts
        t = np.inf
        for kind, half, off in obj.parts:
            t = np.minimum(t, _hit_local(kind, half, ol - _col(off, ol), dl, None))
        return t
    return _hit_local(obj.kind, obj.half, ol, dl, obj.cut)


def _inside_cut(cut: dict | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether points (x, y), in units of the cut-out's half extents, lie inside its silhouette."""
    if cut is None or cut["shape"] == "rect":
        return (np.abs(x) <= 1.0) & (np.abs(y) <= 1.0)
    if cut["shape"] == "ellipse":
        return x * x + y * y <= 1.0
    # A star-shaped polygon: vertices at angles theta (sorted, in [0, 2 pi)) and radii r; a point is inside
    # when it is nearer the centre than the polygon's edge along the same direction.
    th, r = cut["theta"], cut["r"]
    vx, vy = r * np.cos(th), r * np.sin(th)  # (K,)
    phi = np.mod(np.arctan2(y, x), 2 * np.pi)
    i = (np.searchsorted(th, phi, side="right") - 1) % len(th)  # edge from vertex i to i + 1
    j = (i + 1) % len(th)
    ex, ey = vx[j] - vx[i], vy[j] - vy[i]
    # Edge point along direction (c, s): rho = (v_i x e) / ((c, s) x e).
    c, s = np.cos(phi), np.sin(phi)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = (vx[i] * ey - vy[i] * ex) / (c * ey - s * ex)
    return np.hypot(x, y) <= rho


def _hit_local(kind: int, half: np.ndarray, ol: np.ndarray, dl: np.ndarray, cut: dict | None) -> np.ndarray:
    """First hit t > 0 of a primitive in its own frame (ray origin ol, direction dl), inf on a miss."""
    ox, oy, oz = ol
    dx, dy, dz = dl
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if kind == PLANE:
            t = -oz / dz
            ok = (t > _EPS) & _inside_cut(cut, (ox + t * dx) / half[0], (oy + t * dy) / half[1])
        elif kind == SPHERE:
            a = dx * dx + dy * dy + dz * dz
            b = ox * dx + oy * dy + oz * dz
            c = ox * ox + oy * oy + oz * oz - half[0] ** 2
            disc = b * b - a * c
            t = (-b - np.sqrt(disc)) / a
            ok = (disc > 0) & (t > _EPS)
        elif kind == BOX:
            # Slab test; a zero direction component gives +-inf (or nan, a miss) as it should.
            tmin, tmax = -np.inf, np.inf
            for oi, di, ei in zip(ol, dl, half):
                inv = 1.0 / di
                t1, t2 = (-ei - oi) * inv, (ei - oi) * inv
                tmin = np.maximum(tmin, np.minimum(t1, t2))
                tmax = np.minimum(tmax, np.maximum(t1, t2))
            t = tmin
            ok = (tmax >= tmin) & (tmin > _EPS)
        else:
            rad, hh = half[0], half[1]
            a = dx * dx + dz * dz
            b = ox * dx + oz * dz
            c = ox * ox + oz * oz - rad * rad
            disc = b * b - a * c
            ts = (-b - np.sqrt(disc)) / a
            side_ok = (disc > 0) & (ts > _EPS) & (np.abs(oy + ts * dy) <= hh)
            # Only the cap facing the ray can be the first hit of a ray from outside.
            tc = (np.where(dy < 0, hh, -hh) - oy) / dy
            cx, cz = ox + tc * dx, oz + tc * dz
            cap_ok = (tc > _EPS) & (cx * cx + cz * cz <= rad * rad)
            t = np.minimum(np.where(side_ok, ts, np.inf), np.where(cap_ok, tc, np.inf))
            ok = np.isfinite(t)
    return np.where(ok, t, np.inf)  # (M,)


def _hit_planes(o: np.ndarray, d: np.ndarray, wall_z: float) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameters of the ground (y = 0) and the back wall (z = wall_z), inf on a miss."""
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = -o[1] / d[1]  # (...)
        tw = (wall_z - o[2]) / d[2]  # (...)
    tg = np.where((d[1] < 0) & (tg > _EPS), tg, np.inf)
    tw = np.where((d[2] > 0) & (tw > _EPS), tw, np.inf)
    return tg, tw


def _bound_radius(obj: _Object) -> float:
    """Radius of a sphere about the centre that holds the whole object."""
    if obj.kind == PLANE:
        return float(np.hypot(obj.half[0], obj.half[1]))
    if obj.kind == COMPOUND:  # half is the parts' bounding box
        return float(np.linalg.norm(obj.half))
    if obj.kind == SPHERE:
        return float(obj.half[0])
    if obj.kind == BOX:
        return float(np.linalg.norm(obj.half))
    return float(np.hypot(obj.half[0], obj.half[1]))


def _screen_rect(obj: _Object, cam: _Camera, h: int, w: int) -> tuple[slice, slice] | None:
    """Pixel rows/columns that can see the object (from its bounding cube), None when off-screen."""
    r = _bound_radius(obj)
    corners = obj.centre + r * _CUBE  # (8, 3)
    xc = (corners - cam.pos) @ cam.rot  # (8, 3)
    if (xc[:, 2] < 0.05).any():
        return slice(0, h), slice(0, w)
    x = cam.f * xc[:, 0] / xc[:, 2] + cam.cx
    y = cam.f_y * xc[:, 1] / xc[:, 2] + cam.cy
    x0, x1 = max(int(np.floor(x.min())) - 1, 0), min(int(np.ceil(x.max())) + 2, w)
    y0, y1 = max(int(np.floor(y.min())) - 1, 0), min(int(np.ceil(y.max())) + 2, h)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _hit_image(obj: _Object, cam: _Camera, d: np.ndarray) -> np.ndarray:
    """Hit distances of one object for every pixel (H, W), tracing only its screen rectangle."""
    t = np.full(d.shape[1:], np.inf)
    rect = _screen_rect(obj, cam, *d.shape[1:])
    if rect is not None:
        sub = d[:, rect[0], rect[1]]  # (3, h', w')
        t[rect] = _hit_object(obj, cam.pos, sub.reshape(3, -1)).reshape(sub.shape[1:])
    return t


def _hit_background(o: np.ndarray, d: np.ndarray, planes: list[_Plane], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest background plane hit (...) and its surface id k + plane index (...); inf where none is hit."""
    t = np.full(d.shape[1:], np.inf)
    ids = np.full(d.shape[1:], k, np.int8)
    for j, pl in enumerate(planes):
        with np.errstate(divide="ignore", invalid="ignore"):
            tj = (pl.value - o[pl.axis]) / d[pl.axis]
        tj = np.where((d[pl.axis] * pl.sign < 0) & (tj > _EPS), tj, np.inf)
        closer = tj < t
        t = np.where(closer, tj, t)
        ids[closer] = k + j
    return t, ids


def _cast(cam: _Camera, d: np.ndarray, objs: list[_Object], world: _World) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit distance (H, W) and surface id (H, W): objects 0..K-1, then ground K, wall K+1 (classic)
    or the world's planes K, K+1, ... (photo style)."""
    k = len(objs)
    if world.planes is not None:
        t, ids = _hit_background(cam.pos, d, world.planes, k)
    else:
        tg, tw = _hit_planes(cam.pos, d, world.wall_z)
        t = np.minimum(tg, tw)
        ids = np.where(tg < tw, k, k + 1).astype(np.int8)  # (H, W); at most 9 surfaces
    for i, obj in enumerate(objs):
        rect = _screen_rect(obj, cam, *t.shape)
        if rect is None:
            continue
        sub = d[:, rect[0], rect[1]]  # (3, h', w')
        ti = _hit_object(obj, cam.pos, sub.reshape(3, -1)).reshape(sub.shape[1:])
        closer = ti < t[rect]
        np.copyto(t[rect], ti, where=closer)
        np.copyto(ids[rect], i, where=closer)
    return t, ids


# ---------------------------------------------------------------- textures and shading


def _pattern(tex: _Texture, p: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Pattern value in [0, 1] at surface points p (3, M), band-limited by the pixel footprint in metres."""
    # float32 throughout: numpy's float32 sin is SIMD and many times faster than float64.
    p = p.astype(np.float32)
    # A blur a little wider than one pixel's box (std 0.29 px), so that bilinear resampling stays faithful.
    sigma2 = (0.5 * footprint.astype(np.float32)) ** 2  # (M,)
    freq, dirs, phase = (x.astype(np.float32) for x in (tex.freq, tex.dirs, tex.phase))
    # A sinusoid of angular frequency f blurred by the pixel keeps exp(-f^2 sigma^2 / 2) of its contrast.
    if tex.kind == "checker":
        f = float(freq[0])
        s = np.exp(-0.5 * f * f * sigma2)
        for ax in tex.axes:
            s *= np.sin(f * p[ax] + phase[ax])
        return np.clip(0.5 + 1.6 * s, 0.0, 1.0)
    if tex.kind == "stripes":
        f = float(freq[0])
        s = np.sin(f * (dirs[0] @ p) + phase[0]) * np.exp(-0.5 * f * f * sigma2)
        return np.clip(0.5 + 1.2 * s, 0.0, 1.0)
    # Smooth noise: a few random sinusoids of decreasing weight, each band-limited on its own.
    arg = (dirs @ p) * freq[:, None] + phase[:, None]  # (J, M)
    w = (1.0 / np.arange(1, len(freq) + 1)).astype(np.float32)
    amp = np.exp(-0.5 * (freq * freq)[:, None] * sigma2) * (w / w.sum())[:, None]  # (J, M)
    return np.clip(0.5 + 1.4 * (np.sin(arg) * amp).sum(axis=0), 0.0, 1.0)


def _normal_local(kind: int, half: np.ndarray, pl: np.ndarray) -> np.ndarray:
    """Outward unit normals (3, M) of a primitive at its own-frame surface points pl (3, M)."""
    m = pl.shape[1]
    if kind == PLANE:
        return np.broadcast_to(np.array([[0.0], [0.0], [1.0]]), (3, m))
    if kind == SPHERE:
        return pl / half[0]
    if kind == BOX:
        q = np.abs(pl) / half[:, None]  # (3, M)
        ax = q.argmax(axis=0)
        nl = np.zeros_like(pl)
        nl[ax, np.arange(m)] = np.sign(pl[ax, np.arange(m)])
        return nl
    radial = np.maximum(np.hypot(pl[0], pl[2]), 1e-9)
    cap = np.abs(pl[1]) / half[1] > radial / half[0]
    up = np.array([[0.0], [1.0], [0.0]])  # (3, 1)
    return np.where(cap, up * np.sign(pl[1]), (pl - up * pl[1]) / radial)  # (3, M)


def _level(kind: int, half: np.ndarray, pl: np.ndarray) -> np.ndarray:
    """A primitive's implicit size (M,) at own-frame points: 1 on its surface, < 1 inside, > 1 outside."""
    if kind == SPHERE:
        return np.sqrt((pl * pl).sum(axis=0)) / half[0]
    if kind == BOX:
        return (np.abs(pl) / half[:, None]).max(axis=0)
    return np.maximum(np.hypot(pl[0], pl[2]) / half[0], np.abs(pl[1]) / half[1])


# Texture coordinates on an object face: the two local axes across the normal's dominant axis.
_U_AXIS, _V_AXIS = np.array([2, 0, 0]), np.array([1, 2, 1])


def _surface(k: int, objs: list[_Object], world: _World, pw: np.ndarray) -> tuple[np.ndarray, np.ndarray, _Texture]:
    """Texture coordinates (3, M) (or (2, M) (u, v) for photo textures), world normals (3, M) and texture of
    surface k at world points pw (3, M)."""
    m = pw.shape[1]
    if world.planes is not None and k >= len(objs):  # photo style: a background plane
        pln = world.planes[k - len(objs)]
        n = np.zeros((3, 1))
        n[pln.axis] = pln.sign
        return (pw[list(pln.uv_axes)] if pln.tex.kind == "photo" else pw), np.broadcast_to(n, (3, m)), pln.tex
    if k == len(objs):  # ground: texture in world x-z, normal up
        return pw, np.broadcast_to(np.array([[0.0], [1.0], [0.0]]), (3, m)), world.ground
    if k == len(objs) + 1:  # back wall: texture in world x-y, normal towards the camera
        return pw, np.broadcast_to(np.array([[0.0], [0.0], [-1.0]]), (3, m)), world.wall
    obj = objs[k]
    r = obj.R()
    pl = r.T @ (pw - obj.centre[:, None])  # (3, M) object-local, so the texture moves with the object
    if obj.kind == COMPOUND:
        # The union's surface lies on one part and outside the others: the part of smallest level.
        levels = np.stack([_level(kind, half, pl - off[:, None]) for kind, half, off in obj.parts])  # (P, M)
        part = levels.argmin(axis=0)
        nl = np.empty_like(pl)
        for j, (kind, half, off) in enumerate(obj.parts):
            sel = part == j
            nl[:, sel] = _normal_local(kind, half, pl[:, sel] - off[:, None])
    else:
        nl = _normal_local(obj.kind, obj.half, pl)
    if obj.tex.kind == "photo":
        if obj.kind == PLANE:
            return pl[:2], r @ nl, obj.tex
        ax = np.abs(nl).argmax(axis=0)  # (M,)
        cols = np.arange(m)
        return np.stack([pl[_U_AXIS[ax], cols], pl[_V_AXIS[ax], cols]]), r @ nl, obj.tex
    return pl, r @ nl, obj.tex


def _mirror(x: np.ndarray, n: int) -> np.ndarray:
    """Texel coordinates folded into [-0.5, n - 0.5] by mirrored tiling (continuous at every fold)."""
    x = np.mod(x + 0.5, 2 * n)
    return np.where(x > n, 2 * n - x, x) - 0.5


def _remap_points(img: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Bilinear samples (M, 3) of img at points (mx, my), in 2-D blocks (cv2.remap takes under 32767 rows)."""
    m, cols = len(mx), 512
    rows = -(-m // cols)
    maps = np.zeros((2, rows * cols), np.float32)
    maps[0, :m], maps[1, :m] = mx, my
    got = cv2.remap(img, maps[0].reshape(rows, cols), maps[1].reshape(rows, cols), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT)  # (rows, cols, 3)
    return got.reshape(-1, 3)[:m]


def _photo_albedo(tex: _Texture, uv: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Albedo (3, M) of a photo texture at coordinates uv (2, M) metres, trilinear over its mip levels by the
    pixel footprint (metres), so that minified photos do not alias."""
    x = (tex.offset[0] + tex.scale * uv[0]).astype(np.float32)  # (M,) level-0 texels
    y = (tex.offset[1] - tex.scale * uv[1]).astype(np.float32)
    lod = np.clip(np.log2(np.maximum(footprint * tex.scale, 1e-6)), 0, len(tex.img) - 1).astype(np.float32)
    lo = np.floor(lod).astype(int)
    frac = lod - lo
    out = np.zeros((len(x), 3), np.float32)
    for lev in range(min(int(lo.max()) + 2, len(tex.img))):  # only the levels in use
        here, above = lo == lev, (lo == lev - 1) & (frac > 0)
        sel = np.flatnonzero(here | above)
        if not len(sel):
            continue
        w = np.where(here[sel], 1 - frac[sel], frac[sel])
        img = tex.img[lev]
        s = 0.5**lev  # level-0 texel centres -> this level's
        mx = _mirror((x[sel] + 0.5) * s - 0.5, img.shape[1]).astype(np.float32)
        my = _mirror((y[sel] + 0.5) * s - 0.5, img.shape[0]).astype(np.float32)
        out[sel] += w[:, None] * _remap_points(img, mx, my)
    return out.T


def _in_shadow(pw: np.ndarray, ids: np.ndarray, objs: list[_Object], light: np.ndarray) -> np.ndarray:
    """Whether the ray from each point pw (3, M) towards the light is blocked by an object (M,)."""
    # Coordinates across (a, b) and along (s) the light, to cull each object by its bounding sphere.
    e1 = np.cross(light, [0.0, 1.0, 0.0] if abs(light[1]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    basis = np.stack([e1, np.cross(light, e1), light])  # (3, 3)
    a, b, s = basis @ pw  # (M,) each
    blocked = np.zeros(pw.shape[1], bool)
    for k, obj in enumerate(objs):
        ca, cb, cs = basis @ obj.centre
        r = _bound_radius(obj)
        # Convex objects cannot shadow their own lit side, so rays that start on them are skipped.
        cand = np.flatnonzero((np.abs(a - ca) < r) & (np.abs(b - cb) < r) & (s < cs + r) & (ids != k) & ~blocked)
        if len(cand):
            blocked[cand] = np.isfinite(_hit_object(obj, pw[:, cand], light))
    return blocked


def _shade(pw: np.ndarray, ids: np.ndarray, dist: np.ndarray, cam: _Camera, objs: list[_Object],
           world: _World, shadows: bool) -> np.ndarray:
    """Lambertian colour (M, 3) uint8 with shadows and haze at world points pw (3, M) on surfaces ids (M,)."""
    m = pw.shape[1]
    albedo = np.empty((3, m), np.float32)
    lambert = np.empty(m, np.float32)
    n_bg = 2 if world.planes is None else len(world.planes)
    order = np.argsort(ids.astype(np.int8, copy=False), kind="stable")  # int8 sorts several times faster
    bounds = np.searchsorted(ids[order], np.arange(len(objs) + n_bg + 1))
    emit = []  # photo style: (pixels, gain) of emissive planes
    for k in range(len(objs) + n_bg):
        sel = order[bounds[k]:bounds[k + 1]]
        if not len(sel):
            continue
        p_w = pw[:, sel]  # (3, M_k)
        p, n, tex = _surface(k, objs, world, p_w)
        facing = ((cam.pos[:, None] - p_w) * n).sum(axis=0)
        cos = np.abs(facing) / dist[sel]
        # Metres covered by one pixel here, for anti-aliasing: the geometric mean of the footprint
        # across (1) and along (1 / cos) the foreshortening, so rotating faces keep a steady contrast.
        footprint = dist[sel] / (cam.f_mean * np.sqrt(np.maximum(cos, 0.05)))
        if tex.kind == "photo":
            albedo[:, sel] = _photo_albedo(tex, p, footprint)
        else:
            v = _pattern(tex, p, footprint)  # (M_k,)
            albedo[:, sel] = tex.c1[:, None] + (tex.c2 - tex.c1)[:, None] * v
        if k < len(objs) and objs[k].kind == PLANE:  # a cut-out is lit on the side that faces the camera
            n = n * np.where(facing < 0, -1.0, 1.0)
        lambert[sel] = world.light @ n
        if k >= len(objs) and world.planes is not None and world.planes[k - len(objs)].emissive > 0:
            emit.append((sel, world.planes[k - len(objs)].emissive))
    np.maximum(lambert, 0.0, out=lambert)
    if shadows:
        lit = np.flatnonzero(lambert > 0)
        # Start shadow rays a hair towards the light: off the surface, since the surface faces it.
        lambert[lit[_in_shadow(pw[:, lit] + 1e-4 * world.light[:, None], ids[lit], objs, world.light)]] = 0.0
    keep = np.exp(-world.haze * dist.astype(np.float32))  # (M,) fraction of light surviving the haze
    gain = (world.ambient + (1 - world.ambient) * lambert) * keep * 255.0  # (M,)
    col = albedo * gain * world.light_rgb[:, None].astype(np.float32)
    col += (world.haze_rgb * 255.0)[:, None].astype(np.float32) * (1 - keep)
    for sel, g in emit:  # a sky or photo backdrop: its own light, no shading, no haze
        col[:, sel] = albedo[:, sel] * np.float32(255.0 * g)
    col += 0.5  # round, not truncate, in the cast below
    out = np.empty((m, 3), np.uint8)
    np.clip(col.T, 0, 255, out=out, casting="unsafe")
    return out  # (M, 3)


def _render(cam: _Camera, objs: list[_Object], world: _World, h: int, w: int,
            shadows: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Colour (N, 3), z-depth (N,), surface ids (N,), world hits (3, N) and ray dirs (3, N)."""
    d = _ray_dirs(cam, h, w)  # (3, H, W)
    t, ids = _cast(cam, d, objs, world)  # (H, W) each
    assert np.isfinite(t).all(), "every ray must hit the ground or the wall"
    d, t, ids = d.reshape(3, -1), t.ravel(), ids.ravel()
    pw = cam.pos[:, None] + t * d  # (3, N)
    rgb = _shade(pw, ids, t * np.sqrt((d * d).sum(axis=0)), cam, objs, world, shadows)
    return rgb, t, ids, pw, d


# ---------------------------------------------------------------- random scene content


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random albedo, saturated or greyish."""
    base = rng.uniform(0.08, 0.95, 3)
    return base if rng.random() < 0.7 else np.full(3, base.mean()) * 0.5 + base * 0.5


def _texture(rng: np.random.Generator, period: tuple[float, float],
             plane_axes: tuple[int, int] | None = None) -> _Texture:
    """A random texture whose main period (metres) lies in the given range."""
    kind = str(rng.choice(["checker", "stripes", "noise"], p=[0.35, 0.3, 0.35]))
    c1 = _colour(rng)
    c2 = _colour(rng) if rng.random() < 0.6 else np.clip(c1 * rng.uniform(0.3, 0.7), 0, 1)
    f0 = 2 * np.pi / rng.uniform(*period)
    axes = plane_axes if plane_axes is not None else (0, 1, 2)
    # Directions lie in the surface's plane for the ground and the wall.
    dirs = rng.normal(size=(4, 3))
    if plane_axes is not None:
        dirs[:, [a for a in range(3) if a not in plane_axes]] = 0.0
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    if kind == "checker":
        freq, phase = np.array([f0]), rng.uniform(0, 2 * np.pi, 3)
    elif kind == "stripes":
        freq, phase = np.array([f0]), rng.uniform(0, 2 * np.pi, 1)
    else:
        freq, phase = f0 * np.array([0.5, 1.0, 1.9, 3.7]) * rng.uniform(0.8, 1.25, 4), rng.uniform(0, 2 * np.pi, 4)
    return _Texture(kind, c1, c2, freq, dirs, phase, axes)


def _new_object(rng: np.random.Generator, scale: float) -> _Object:
    """A random primitive of roughly the given size (metres), not yet placed."""
    kind = int(rng.choice([SPHERE, BOX, CYLINDER], p=[0.35, 0.4, 0.25]))
    if kind == SPHERE:
        half = np.full(3, scale)
    elif kind == BOX:
        half = scale * rng.uniform(0.6, 1.3, 3)
    else:
        r = scale * rng.uniform(0.5, 0.9)
        half = np.array([r, scale * rng.uniform(0.8, 1.8), r])
    return _Object(kind, half, np.zeros(3), float(rng.uniform(-np.pi, np.pi)), _texture(rng, (0.25, 0.8)))


def _place(obj: _Object, cam_pos: np.ndarray, heading: float, dist: float) -> None:
    """Stand obj on the ground at a distance and heading (radians from +z) from the camera."""
    obj.centre = np.array([cam_pos[0] + dist * np.sin(heading), obj.half[1], cam_pos[2] + dist * np.cos(heading)])


def _clear(obj: _Object, others: list[_Object], wall_z: float, margin: float) -> bool:
    """Whether obj's footprint stays off the others' and in front of the wall."""
    if obj.centre[2] + obj.radius_xz > wall_z - margin:
        return False
    return all(np.hypot(*(obj.centre - o.centre)[[0, 2]]) > obj.radius_xz + o.radius_xz + margin for o in others)


def _layout(rng: np.random.Generator, cam: _Camera, yaw: float, half_fov: float, wall_z: float,
            n_obj: int, margin: float) -> list[_Object]:
    """Target first (objects[0]), an occluder between it and the camera, then distractors."""
    target = _new_object(rng, rng.uniform(0.45, 1.0))
    _place(target, cam.pos, yaw + rng.uniform(-0.4, 0.4) * half_fov, rng.uniform(3.0, min(6.0, wall_z - 2.5)))
    objs = [target]
    dist_t = np.hypot(*(target.centre - cam.pos)[[0, 2]])
    head_t = np.arctan2(target.centre[0] - cam.pos[0], target.centre[2] - cam.pos[2])
    for _ in range(20):
        occ = _new_object(rng, target.half[1] * rng.uniform(0.8, 1.4))
        dist_o = dist_t * rng.uniform(0.45, 0.75)
        # Offset the occluder sideways so that it covers part of the target's angular width.
        spread = target.radius_xz / dist_t + occ.radius_xz / dist_o
        _place(occ, cam.pos, head_t + rng.choice([-1, 1]) * rng.uniform(0.3, 0.95) * spread, dist_o)
        if _clear(occ, objs, wall_z, margin):
            objs.append(occ)
            break
    for _ in range(40 * n_obj):
        if len(objs) >= n_obj:
            break
        obj = _new_object(rng, rng.uniform(0.25, 0.8))
        _place(obj, cam.pos, yaw + rng.uniform(-1.0, 1.0) * half_fov, rng.uniform(2.5, wall_z - 1.0))
        if _clear(obj, objs, wall_z, margin):
            objs.append(obj)
    return objs


def _sizes(size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) from an int or a pair, validated."""
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 8 for v in hw):
        raise UsageError(f"size={size!r} is not a positive image size: pass an int >= 8 or (height, width)")
    return int(hw[0]), int(hw[1])


# ---------------------------------------------------------------- the scene


STYLES = ("classic", "photo")


def _amodal_targets(cam: _Camera, objs: list[_Object], world: _World, d: np.ndarray, d1: np.ndarray,
                    ids1: np.ndarray, rgb1: np.ndarray, shadows: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(whole (N,), visible (N,), whole_rgb (N, 3)): objs[0]'s silhouette, its visible part, and its
    appearance alone on white, shaded as frame 1 would shade it where frame 1 hides it."""
    t_target = _hit_image(objs[0], cam, d).ravel()  # (N,)
    whole = np.isfinite(t_target)
    visible = ids1 == 0
    whole_rgb = np.full((len(visible), 3), 255, np.uint8)
    whole_rgb[visible] = rgb1[visible]
    hid = np.flatnonzero(whole & ~visible)
    if len(hid):
        dh = d1[:, hid]  # (3, M)
        dist = t_target[hid] * np.sqrt((dh * dh).sum(axis=0))
        pts = cam.pos[:, None] + t_target[hid] * dh  # (3, M)
        whole_rgb[hid] = _shade(pts, np.zeros(len(hid), int), dist, cam, objs, world, shadows)
    return whole, visible, whole_rgb


def render_scene(seed: int, size: int | tuple[int, int] = 128, shadows: bool = True, photos=None,
                 style: str | None = None) -> Scene:
    """Render the scene of one seed, with exact depth, flow and amodal targets.

    style "classic" (the default without `photos`): ground, wall and textured primitives. style "photo" (the
    default with a `PhotoBank`): rooms or outdoor scenes with photo textures and backdrops, many more shapes,
    cut-outs, any camera, lighting and post-effects (see `_render_photo_scene`)."""
    return _render_scene(seed, size, shadows, photos=photos, style=style)[0]


def _render_scene(seed: int, size: int | tuple[int, int] = 128, shadows: bool = True, photos=None,
                  style: str | None = None, effects: bool = True) -> tuple[Scene, dict]:
    """render_scene plus internals for tests: surface ids and depth of both frames, cameras, objects."""
    h, w = _sizes(size)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed={seed!r} is not a scene seed: pass an int >= 0")
    style = style or ("photo" if photos is not None else "classic")
    if style not in STYLES:
        raise UsageError(f"style={style!r} is not a scene style: pass one of {', '.join(STYLES)}")
    if style == "photo":
        return _render_photo_scene(int(seed), h, w, shadows, photos, effects)
    rng = np.random.default_rng(seed)

    # 1. Camera: focal from a random horizontal field of view, slight yaw and downward pitch.
    half_fov = np.deg2rad(rng.uniform(25, 35))
    # Tall images keep their vertical half-view under 60 degrees, so every ray still meets the wall.
    f = max((w / 2) / np.tan(half_fov), (h / 2) / np.tan(np.deg2rad(60)))
    yaw, pitch = np.deg2rad(rng.uniform(-8, 8)), np.deg2rad(rng.uniform(3, 15))
    cam = _Camera(np.array([0.0, rng.uniform(1.2, 2.2), 0.0]), _camera_rot(yaw, pitch), f, (w - 1) / 2, (h - 1) / 2)
    half_fov_x = float(np.arctan((w / 2) / f))

    # 2. Lighting, haze and the static background.
    elev, azim = np.deg2rad(rng.uniform(30, 70)), np.deg2rad(rng.uniform(-70, 70))
    light = np.array([np.sin(azim) * np.cos(elev), np.sin(elev), -np.cos(azim) * np.cos(elev)])
    wall_z = rng.uniform(9.0, 14.0)
    world = _World(
        ground=_texture(rng, (0.6, 2.5), plane_axes=(0, 2)),
        wall=_texture(rng, (0.5, 2.5), plane_axes=(0, 1)),
        wall_z=wall_z,
        light=light,
        light_rgb=1.0 + rng.uniform(-0.12, 0.12, 3),
        ambient=rng.uniform(0.2, 0.5),
        haze_rgb=rng.uniform(0.6, 0.95) + rng.uniform(-0.05, 0.05, 3),
        haze=rng.uniform(0.0, 0.06),
    )

    # 3. Motion budget: objects move up to `move` metres, far enough apart not to collide.
    level = rng.uniform(0.25, 1.0)
    move = 0.3 * level
    n_obj = int(rng.integers(3, 8))

    # 4. Place the target, an occluder and distractors until the target is partly hidden
    #    (visible fraction 0.25-0.85) and its silhouette stays off the image border.
    d = _ray_dirs(cam, h, w)  # (3, H, W)
    d_flat = d.reshape(3, -1)  # (3, N)
    border = np.zeros((h, w), bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    best, best_err = None, np.inf
    for _ in range(200):
        objs = _layout(rng, cam, yaw, half_fov_x, wall_z, n_obj, margin=2 * move + 0.05)
        t_target = _hit_image(objs[0], cam, d)  # (H, W)
        whole = np.isfinite(t_target)
        idx = np.flatnonzero(whole)
        area = len(idx) / (h * w)
        nearer = np.zeros(len(idx), bool)
        for o in objs[1:]:
            nearer |= _hit_object(o, cam.pos, d_flat[:, idx]) < t_target.ravel()[idx]
        frac = 1.0 - nearer.mean() if len(idx) else 0.0
        edge = (whole & border).sum() / border.sum()
        err = max(0.25 - frac, frac - 0.85, 0.0) + max(edge - 0.01, 0.0) + max(0.025 - area, 0.0) * 10
        if err < best_err:
            best, best_err = objs, err
        if err == 0.0:
            break
    objs = best

    # 5. Per-object rigid motion (some objects stay still) and camera motion.
    for o in objs:
        if rng.random() < 0.8:
            ang = rng.uniform(0, 2 * np.pi)
            o.d_centre = rng.uniform(0.2, 1.0) * move * np.array([np.cos(ang), 0.0, np.sin(ang)])
            o.d_yaw = float(rng.uniform(-1, 1) * np.deg2rad(6) * level)
    cam2 = _Camera(
        cam.pos + level * np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.08, 0.08), rng.uniform(-0.25, 0.25)]),
        _camera_rot(yaw + level * np.deg2rad(rng.uniform(-1.5, 1.5)), pitch + level * np.deg2rad(rng.uniform(-1, 1))),
        cam.f, cam.cx, cam.cy,
    )
    objs2 = [o.moved() for o in objs]

    # 6. Render both frames.
    rgb1, t1, ids1, pw1, d1 = _render(cam, objs, world, h, w, shadows)
    rgb2, t2, ids2, _, _ = _render(cam2, objs2, world, h, w, shadows)

    # 7. Exact flow: move each frame-1 hit with its surface, project into camera 2.
    pw2 = pw1.copy()  # (3, N); ground and wall points stay put
    for k, o in enumerate(objs):
        sel = np.flatnonzero(ids1 == k)
        local = _rot_y(o.yaw).T @ (pw1[:, sel] - o.centre[:, None])  # (3, M)
        pw2[:, sel] = (o.centre + o.d_centre)[:, None] + _rot_y(o.yaw + o.d_yaw) @ local
    xc = cam2.rot.T @ (pw2 - cam2.pos[:, None])  # (3, N) camera-2 coordinates
    ys, xs = np.mgrid[0:h, 0:w]
    u = cam2.f * xc[0] / xc[2] + cam2.cx - xs.ravel()  # (N,)
    v = cam2.f * xc[1] / xc[2] + cam2.cy - ys.ravel()  # (N,)

    # 8. Amodal targets: the target's own hits, shaded like frame 1 where frame 1 hides them.
    whole, visible, whole_rgb = _amodal_targets(cam, objs, world, d, d1, ids1, rgb1, shadows)

    scene = Scene(
        rgb=rgb1.reshape(h, w, 3),
        rgb2=rgb2.reshape(h, w, 3),
        depth=t1.reshape(h, w).astype(np.float32),
        flow=np.stack([u, v], axis=-1).reshape(h, w, 2).astype(np.float32),
        visible_mask=visible.reshape(h, w),
        whole_mask=whole.reshape(h, w),
        whole_rgb=whole_rgb.reshape(h, w, 3),
        seed=int(seed),
    )
    aux = {"ids1": ids1.reshape(h, w), "ids2": ids2.reshape(h, w), "depth2": t2.reshape(h, w),
           "proj_z2": xc[2].reshape(h, w), "n_objects": len(objs), "cam": cam, "cam2": cam2, "objs": objs,
           "objs2": objs2, "world": world}
    return scene, aux


# ---------------------------------------------------------------- the photo style
#
# Domain randomisation in the manner of FlyingChairs / FlyingThings3D, with exact ground truth kept:
# every surface is still an analytic plane, quadric or slab, textures live in each surface's own
# coordinates (photo crops included), and post-effects touch only the RGB.

_NO = np.zeros(0)


def _mips(img: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mip levels of a (h, w, 3) float32 image, each half the size of the one before, down to ~4 px."""
    levels = [np.ascontiguousarray(img, np.float32)]
    while min(levels[-1].shape[:2]) >= 8:
        hh, ww = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], (ww // 2, hh // 2), interpolation=cv2.INTER_AREA))
    return tuple(levels)


def _photo_texture(rng: np.random.Generator, photos, extent: float, aspect: float = 1.0,
                   px: tuple[int, int] = (48, 160), zoom: tuple[float, float] = (0.25, 1.0)) -> _Texture:
    """A photo crop of `px` texels across that spans `extent` metres in u, centred on (u, v) = (0, 0)."""
    w = int(rng.integers(*px))
    h = int(np.clip(round(w / aspect), 8, 4 * px[1]))
    img = photos.crop(rng, h, w, zoom=zoom) * np.float32(rng.uniform(0.75, 1.0))  # (h, w, 3) albedo
    return _Texture("photo", np.zeros(3), np.ones(3), _NO, _NO.reshape(0, 3), _NO, img=_mips(img),
                    scale=w / extent, offset=np.array([(w - 1) / 2, (h - 1) / 2]))


def _any_texture(rng: np.random.Generator, photos, p_photo: float, extent: float, period: tuple[float, float],
                 plane_axes: tuple[int, int] | None = None) -> _Texture:
    """A photo texture with probability p_photo (when there are photos), else a procedural one."""
    if photos is not None and rng.random() < p_photo:
        return _photo_texture(rng, photos, extent)
    return _texture(rng, period, plane_axes)


def _compound(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list]:
    """Parts re-centred on their bounding box; returns the box's half extents and the parts."""
    lo = np.min([off - (np.full(3, h[0]) if k == SPHERE else h) for k, h, off in parts], axis=0)
    hi = np.max([off + (np.full(3, h[0]) if k == SPHERE else h) for k, h, off in parts], axis=0)
    mid = (lo + hi) / 2
    return (hi - lo) / 2, [(k, np.asarray(h, float), np.asarray(off, float) - mid) for k, h, off in parts]


_SHAPES = ["sphere", "box", "cylinder", "pole", "plank", "lshape", "table", "snowman", "cutout"]
_SHAPE_P = np.array([0.1, 0.12, 0.08, 0.08, 0.09, 0.11, 0.09, 0.07, 0.26])


def _photo_object(rng: np.random.Generator, photos, scale: float, shape: str | None = None) -> _Object:
    """A random object of about `scale` metres in its own frame (bounding box centred on the origin, pose
    still unset): primitives, thin poles and planks, non-convex unions (L-shapes, tables, arches, snowmen)
    and flat cut-outs (rectangle, ellipse or star-shaped polygon) showing a photo."""
    shape = shape or str(rng.choice(_SHAPES, p=_SHAPE_P))
    parts, cut = None, None
    if shape == "sphere":
        kind, half = SPHERE, np.full(3, scale)
    elif shape == "box":
        kind, half = BOX, scale * rng.uniform(0.5, 1.3, 3)
    elif shape == "cylinder":
        r = scale * rng.uniform(0.4, 0.9)
        kind, half = CYLINDER, np.array([r, scale * rng.uniform(0.7, 1.8), r])
    elif shape == "pole":  # thin: a few centimetres across, up to man-high
        r = rng.uniform(0.02, 0.07)
        kind, half = CYLINDER, np.array([r, rng.uniform(0.5, 1.4), r])
    elif shape == "plank":  # thin: upright, lying or on its edge
        dims = np.array([scale * rng.uniform(0.8, 1.6), scale * rng.uniform(0.15, 0.4), rng.uniform(0.015, 0.04)])
        kind, half = BOX, dims[rng.permutation(3)]
    elif shape == "cutout":
        hx, hy = scale * rng.uniform(0.6, 1.4), scale * rng.uniform(0.6, 1.4)
        kind, half = PLANE, np.array([hx, hy, 0.0])
        form = str(rng.choice(["rect", "ellipse", "polygon"], p=[0.3, 0.25, 0.45]))
        cut = {"shape": form}
        if form == "polygon":
            k = int(rng.integers(5, 11))
            theta = np.sort(np.mod((np.arange(k) + rng.uniform(-0.35, 0.35, k)) * 2 * np.pi / k + rng.uniform(0, 7), 2 * np.pi))
            cut.update(theta=theta, r=rng.uniform(0.45, 1.0, k))
    else:
        kind = COMPOUND
        t = scale * rng.uniform(0.12, 0.3)  # slab thickness
        if shape == "lshape":  # two boxes: a foot and an upright
            bx, bz, hh = scale * rng.uniform(0.6, 1.2), scale * rng.uniform(0.3, 0.8), scale * rng.uniform(0.7, 1.4)
            raw = [(BOX, np.array([bx, t, bz]), np.array([0.0, t, 0.0])),
                   (BOX, np.array([t, hh, bz]), np.array([-bx + t, hh, 0.0]))]
        elif shape == "table":  # a top on 4 legs, or an arch on 2
            tx, tz, hh = scale * rng.uniform(0.6, 1.3), scale * rng.uniform(0.4, 1.0), scale * rng.uniform(0.5, 1.1)
            leg = scale * rng.uniform(0.05, 0.15)
            raw = [(BOX, np.array([tx, t / 2, tz]), np.array([0.0, 2 * hh - t / 2, 0.0]))]
            corners = [(-1, -1), (1, -1), (-1, 1), (1, 1)] if rng.random() < 0.6 else [(-1, 0), (1, 0)]
            leg_kind = int(rng.choice([BOX, CYLINDER]))
            for sx, sz in corners:
                raw.append((leg_kind, np.array([leg, hh - t / 2, leg if sz else tz * 0.9]),
                            np.array([sx * (tx - leg), hh - t / 2, sz * (tz - leg)])))
        else:  # snowman: stacked spheres
            r1 = scale * rng.uniform(0.5, 0.8)
            r2 = r1 * rng.uniform(0.5, 0.8)
            raw = [(SPHERE, np.full(3, r1), np.array([0.0, r1, 0.0])),
                   (SPHERE, np.full(3, r2), np.array([0.0, 2 * r1 + 0.75 * r2, 0.0]))]
        half, parts = _compound(raw)
    return _Object(kind, half, np.zeros(3), 0.0, None, rot=np.eye(3), parts=parts, cut=cut)


def _rescale(obj: _Object, f: float) -> None:
    """Scale an unplaced object's size by f (silhouettes are in units of its half extents)."""
    obj.half = obj.half * f
    if obj.parts is not None:
        obj.parts = [(k, h * f, off * f) for k, h, off in obj.parts]


def _dress(rng: np.random.Generator, photos, obj: _Object) -> None:
    """Give a placed object its texture (only objects that made it into the scene: photo crops cost time)."""
    if obj.kind == PLANE:  # the photo spans the cut-out exactly: its silhouette shows one crop
        hx, hy = obj.half[:2]
        obj.tex = (_photo_texture(rng, photos, 2 * hx, aspect=hx / hy, zoom=(0.3, 1.0)) if photos is not None
                   else _texture(rng, (0.2, 0.8), plane_axes=(0, 1)))
    else:
        scale = float(np.median(obj.half))
        obj.tex = _any_texture(rng, photos, 0.8, rng.uniform(1.0, 4.0) * scale, (0.25, 0.8))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by `angle` about the unit `axis` (Rodrigues)."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _pose(rng: np.random.Generator, obj: _Object, cam: _Camera, sx: float, sy: float, depth: float,
          floating: bool, ground: bool = True) -> None:
    """Put obj where the camera sees screen point (sx, sy) (in units of the half image, x right, y down) at
    z-depth `depth`: floating in the air with any orientation, or standing on the ground, turned about the
    vertical. Cut-outs face the camera within about 55 degrees, never edge-on."""
    ray = cam.rot @ np.array([sx * cam.cx / cam.f, sy * cam.cy / cam.f_y, 1.0])  # camera-z 1
    c = cam.pos + depth * ray
    to_cam = cam.pos - c
    obj.floating = floating
    if floating:
        if ground:
            c[1] = max(c[1], _bound_radius(obj) + 0.05)
        if obj.kind == PLANE:  # local z (the normal) towards the camera, tilted, rolled in its plane
            z = to_cam / np.linalg.norm(to_cam)
            x = np.cross([0.0, 1.0, 0.0], z)
            x /= np.linalg.norm(x)
            look = np.stack([x, np.cross(z, x), z], axis=1)
            roll = _axis_angle(np.array([0.0, 0.0, 1.0]), rng.uniform(-np.pi, np.pi))
            tilt = _axis_angle(rng.normal(size=3), rng.uniform(0, np.deg2rad(55)))
            obj.rot = tilt @ look @ roll
        else:
            obj.rot = _random_rotation(rng)
    else:
        c[1] = obj.half[1]  # standing on y = 0
        if obj.kind == PLANE:
            yaw = np.arctan2(to_cam[0], to_cam[2]) + rng.uniform(-1, 1) * np.deg2rad(55)
        else:
            yaw = rng.uniform(-np.pi, np.pi)
        obj.rot = _rot_y(yaw)
    obj.centre = c


def _room_ok(obj: _Object, others: list[_Object], cam: _Camera, box: tuple, margin: float) -> bool:
    """Inside the room (or before the backdrop), clear of the camera and of the other objects' bounds."""
    r = _bound_radius(obj)
    c = obj.centre
    x0, x1, top, z0, z1 = box
    if not (x0 + r + margin < c[0] < x1 - r - margin and z0 + r + margin < c[2] < z1 - r - margin):
        return False
    if c[1] + (r if obj.floating else obj.half[1]) > top - margin:
        return False
    if ((c - cam.pos) @ cam.rot)[2] < r + 0.5 + margin:  # in front of the camera, clear of its motion
        return False
    return all(np.linalg.norm(c - o.centre) > r + _bound_radius(o) + margin for o in others)


def _photo_pair(rng: np.random.Generator, photos, cam: _Camera, box: tuple, margin: float,
                p_float: float, ground: bool = True) -> list[_Object]:
    """Target first (any shape, cut-outs included), then an occluder between it and the camera."""
    z_room = box[4] - cam.pos[2]
    objs: list[_Object] = []
    for _ in range(20):
        target = _photo_object(rng, photos, rng.uniform(0.5, 1.1))
        floating = rng.random() < p_float
        sx, sy = rng.uniform(-0.3, 0.3), rng.uniform(-0.25, 0.35)
        depth_t = rng.uniform(1.8, max(2.2, min(5.5, z_room - 1.5)))
        ray = cam.rot @ np.array([sx * cam.cx / cam.f, sy * cam.cy / cam.f_y, 1.0])
        if ground and ray[1] < 0:  # the line of sight meets the ground: stop above it (objects stand on it or float)
            depth_t = min(depth_t, (cam.pos[1] - 0.5 * _bound_radius(target)) / -ray[1])
        # Far enough that its bounds span at most ~2/3 of the half image (it rarely leaves the frame) and that
        # an occluder fits in front; a target too large for that at this depth is made smaller.
        per_metre = 1.5 * max(cam.f / cam.cx, cam.f_y / cam.cy)
        r_fit = max(min(depth_t / per_metre, (depth_t - 2 * margin - 0.8) / 2.6), 0.15)
        depth_t = max(depth_t, per_metre * r_fit, 2.6 * r_fit + 2 * margin + 0.8)
        if _bound_radius(target) > r_fit:
            _rescale(target, r_fit / _bound_radius(target))
        # Where the line of sight passes high above the ground (a camera looking up), the target floats.
        floating = floating or cam.pos[1] + depth_t * ray[1] > 2.5 * target.half[1] + 0.3
        _pose(rng, target, cam, sx, sy, depth_t, floating=floating, ground=ground)
        if _room_ok(target, [], cam, box, margin):
            objs = [target]
            break
    if not objs:
        objs = [target]
    target = objs[0]
    depth_t = float(((target.centre - cam.pos) @ cam.rot)[2])
    tx, ty = ((target.centre - cam.pos) @ cam.rot)[:2] / depth_t  # (xn, yn) of the target's centre
    for _ in range(20):
        occ = _photo_object(rng, photos, _bound_radius(target) * rng.uniform(0.4, 0.8))
        r_max = (depth_t - _bound_radius(target) - 2 * margin - 0.6) / 2  # fits between camera and target
        if _bound_radius(occ) > r_max > 0.05:
            _rescale(occ, 0.95 * r_max / _bound_radius(occ))
        lo = _bound_radius(occ) + 0.6 + margin  # clear of the camera ...
        hi = depth_t - _bound_radius(target) - _bound_radius(occ) - margin  # ... and of the target
        if hi < lo:
            continue
        depth_o = float(np.clip(depth_t * rng.uniform(0.4, 0.7), lo, hi))
        # Offset the occluder on screen so that it covers part of the target.
        spread = _bound_radius(target) / depth_t + _bound_radius(occ) / depth_o
        ang = rng.uniform(0, 2 * np.pi) if rng.random() < 0.5 else rng.choice([0.0, np.pi])
        off = rng.uniform(0.25, 0.8) * spread
        ox, oy = tx + off * np.cos(ang), ty + off * np.sin(ang)
        high = cam.pos[1] + depth_o * (cam.rot @ np.array([ox, oy, 1.0]))[1] > 2.5 * occ.half[1] + 0.3
        _pose(rng, occ, cam, ox * cam.f / cam.cx, oy * cam.f_y / cam.cy, depth_o,
              floating=high or rng.random() < (0.8 if target.floating else p_float), ground=ground)
        if _room_ok(occ, objs, cam, box, margin):
            objs.append(occ)
            break
    return objs


def _post_effects(rng: np.random.Generator, frames: list[np.ndarray], whole_rgb: np.ndarray,
                  whole: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Camera effects on the RGB only, each drawn per scene: colour jitter (also on the amodal target's
    pixels, so it stays the object as photographed), blur, sensor noise (independent per frame), JPEG."""
    frames = [f.astype(np.float32) for f in frames]
    whole_rgb = whole_rgb.copy()
    if rng.random() < 0.6:  # colour jitter: gains, contrast, saturation, gamma
        gain = rng.uniform(0.85, 1.15, 3).astype(np.float32)
        contrast, sat, gamma = rng.uniform(0.75, 1.25), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.25)

        def jitter(x: np.ndarray) -> np.ndarray:
            x = x * gain
            grey = x.mean(axis=-1, keepdims=True)
            x = grey + sat * (x - grey)
            x = 127.5 + contrast * (x - 127.5)
            return 255.0 * (np.clip(x, 0, 255) / 255.0) ** gamma

        frames = [jitter(f) for f in frames]
        whole_rgb[whole] = np.clip(jitter(whole_rgb[whole].astype(np.float32)) + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:  # defocus / motion-free blur, the same lens for both frames
        sigma = rng.uniform(0.4, 1.3)
        frames = [cv2.GaussianBlur(f, (0, 0), sigma) for f in frames]
    if rng.random() < 0.5:  # sensor noise: shot-like (grows with brightness) plus read noise
        read, shot = rng.uniform(0.5, 4.0), rng.uniform(0.0, 0.25)
        frames = [f + rng.normal(size=f.shape).astype(np.float32) * (read + shot * np.sqrt(np.maximum(f, 0)))
                  for f in frames]
    out = [np.clip(f + 0.5, 0, 255).astype(np.uint8) for f in frames]
    if rng.random() < 0.35:  # JPEG artefacts
        q = int(rng.integers(25, 91))
        out = [cv2.imdecode(cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)[..., ::-1]
               for f in out]
        out = [np.ascontiguousarray(f) for f in out]
    return out, whole_rgb


def _photo_camera(rng: np.random.Generator, h: int, w: int, indoor: bool, ceil: float) -> tuple[_Camera, float, float]:
    """A camera with a random field of view (30-90 degrees across), height and pitch; returns it, yaw, pitch."""
    half_fov = np.deg2rad(rng.uniform(30, 90) / 2)
    f = max((w / 2) / np.tan(half_fov), (h / 2) / np.tan(np.deg2rad(50)))
    height = rng.uniform(0.4, ceil - 0.5) if indoor else float(np.exp(rng.uniform(np.log(0.3), np.log(3.5))))
    yaw = np.deg2rad(rng.uniform(-15, 15))
    # Half the scenes as a non-square crop (aspect 0.65-1.5) squeezed onto this grid: pixels taller or wider
    # than square, as `--fit stretch` shows a photo to the model. Exact: the rays follow the pixels.
    fy = f * float(np.exp(rng.uniform(np.log(0.65), np.log(1.5)))) if rng.random() < 0.5 else None
    if fy is not None:
        fy = max(fy, (h / 2) / np.tan(np.deg2rad(50)))
    pitch = np.deg2rad(rng.uniform(-10, 30) if height > 1.0 else rng.uniform(-12, 15))
    # Keep the horizon near the view (a low camera staring at the ground a metre away sees no scene).
    half_fov_y = np.arctan((h / 2) / (f if fy is None else fy))
    pitch = min(pitch, half_fov_y + np.deg2rad(20 if height > 1.0 else 4))
    return _Camera(np.array([0.0, height, 0.0]), _camera_rot(yaw, pitch), f, (w - 1) / 2, (h - 1) / 2, fy), yaw, pitch


def _render_photo_scene(seed: int, h: int, w: int, shadows: bool, photos, effects: bool) -> tuple[Scene, dict]:
    """The photo style: an indoor room (floor, four walls, ceiling), an outdoor ground plane before a far
    photo backdrop (the sky; its depth is its own plane's), or objects flying before a nearer photo wall with
    larger motions (as in FlyingChairs); objects of many shapes with photo or procedural textures, floating
    or standing, a random camera and light, then camera effects on the RGB."""
    if cv2 is None:  # pragma: no cover
        raise UsageError("the photo scene style needs OpenCV (pip install opencv-python-headless)")
    rng = np.random.default_rng([seed, 15])  # its own stream: the classic scene of this seed is another

    # 1. World: a room, the outdoors, or (FlyingChairs-like) objects flying before a photo wall; the camera.
    world_kind = rng.random()
    indoor, flying = world_kind < 0.4, 0.4 <= world_kind < 0.55
    if flying:
        xl, xr, ceil, wall_z, front = -np.inf, np.inf, np.inf, rng.uniform(6.0, 15.0), -np.inf
    elif indoor:
        xl, xr, ceil = -rng.uniform(1.8, 5.0), rng.uniform(1.8, 5.0), rng.uniform(2.4, 4.0)
        wall_z, front = rng.uniform(6.0, 14.0), -rng.uniform(1.0, 3.0)
    else:
        xl, xr, ceil, wall_z, front = -np.inf, np.inf, np.inf, rng.uniform(25.0, 70.0), -np.inf
    cam, yaw, pitch = _photo_camera(rng, h, w, indoor, ceil if indoor else 10.0)
    if flying:  # nearly facing the wall: every ray meets it
        yaw, pitch = np.deg2rad(rng.uniform(-10, 10)), np.deg2rad(rng.uniform(-10, 10))
        cam = _Camera(cam.pos, _camera_rot(yaw, pitch), cam.f, cam.cx, cam.cy, cam.fy)
    elif not indoor:  # every ray must meet the ground or the backdrop: no ray may point up and backwards
        d = _ray_dirs(cam, h, w)[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # (3, 4) corners
        if ((d[1] >= 0) & (d[2] <= 0.02)).any():
            yaw, pitch = 0.0, abs(pitch)
            cam = _Camera(cam.pos, _camera_rot(yaw, pitch), cam.f, cam.cx, cam.cy, cam.fy)
    half_fov_x = float(np.arctan((w / 2) / cam.f))

    elev, azim = np.deg2rad(rng.uniform(15, 80)), rng.uniform(-np.pi, np.pi)
    light = np.array([np.sin(azim) * np.cos(elev), np.sin(elev), -np.cos(azim) * np.cos(elev)])
    tint = rng.uniform(-0.15, 0.15, 3) * (rng.random() < 0.7)
    floor_tex = _any_texture(rng, photos, 0.75, rng.uniform(2.0, 10.0), (0.5, 2.5), plane_axes=(0, 2))
    planes = [] if flying else [_Plane(1, 0.0, 1.0, floor_tex)]
    if indoor:
        for axis, value, sign, axes in [(2, wall_z, -1.0, (0, 1)), (0, xl, 1.0, (1, 2)), (0, xr, -1.0, (1, 2)),
                                        (1, ceil, -1.0, (0, 2)), (2, front, 1.0, (0, 1))]:
            planes.append(_Plane(axis, value, sign, _any_texture(rng, photos, 0.7, rng.uniform(1.5, 6.0),
                                                                 (0.4, 2.5), plane_axes=axes)))
    elif photos is not None and rng.random() < 0.85:
        # A photo backdrop spanning the view (a little wider), centred where the camera looks; lit by the
        # scene's light or its own (a sky), and nearer when objects fly before it.
        span = 2.6 * (wall_z - cam.pos[2]) * np.tan(half_fov_x)
        tex = _photo_texture(rng, photos, span, aspect=w / h, px=(max(64, w), max(65, 2 * w)), zoom=(0.6, 1.0))
        look = cam.rot[:, 2] * (wall_z - cam.pos[2]) / cam.rot[2, 2] + cam.pos
        tex.offset = tex.offset + np.array([-tex.scale * look[0], tex.scale * look[1]])
        planes.append(_Plane(2, wall_z, -1.0, tex, emissive=rng.uniform(0.8, 1.1) if not flying or rng.random() < 0.5 else 0.0))
    else:
        planes.append(_Plane(2, wall_z, -1.0, _texture(rng, (2.0, 10.0), plane_axes=(0, 1))))
    world = _World(
        ground=floor_tex, wall=planes[-1].tex if flying else planes[1].tex, wall_z=wall_z, light=light,
        light_rgb=rng.uniform(0.75, 1.25) * (1.0 + tint), ambient=rng.uniform(0.15, 0.6),
        haze_rgb=rng.uniform(0.55, 0.95) + rng.uniform(-0.08, 0.08, 3),
        haze=rng.uniform(0.0, 0.04) if not indoor else rng.uniform(0.0, 0.015), planes=planes,
    )

    # 2. Motion budget and objects: target, occluder, distractors, partly hidden target.
    level = rng.uniform(0.25, 1.0)
    move = (0.6 if flying else 0.35) * level
    n_obj = int(rng.integers(3, 9)) + 2 * flying
    box = (xl, xr, ceil, front, wall_z if indoor else min(wall_z, 20.0))
    d = _ray_dirs(cam, h, w)  # (3, H, W)
    d_flat = d.reshape(3, -1)
    border = np.zeros((h, w), bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    # The target and its occluder first, until the target is partly hidden (visible fraction 0.25-0.85),
    # large enough and off the border; then distractors that keep at least a quarter of it visible.
    margin, p_float = 2 * move + 0.05, 1.0 if flying else rng.uniform(0.2, 0.6)
    best, best_err = None, np.inf
    for _ in range(80):
        objs = _photo_pair(rng, photos, cam, box, margin, p_float, ground=not flying)
        t_target = _hit_image(objs[0], cam, d)
        whole = np.isfinite(t_target)
        idx = np.flatnonzero(whole)
        nearer = np.zeros(len(idx), bool)
        for o in objs[1:]:
            nearer |= _hit_object(o, cam.pos, d_flat[:, idx]) < t_target.ravel()[idx]
        frac = 1.0 - nearer.mean() if len(idx) else 0.0
        edge = (whole & border).sum() / border.sum()
        err = max(0.25 - frac, frac - 0.85, 0.0) + max(edge - 0.01, 0.0) + max(0.02 - len(idx) / (h * w), 0.0) * 10
        if err < best_err:
            best, best_err = (objs, t_target.ravel()[idx], idx, nearer), err
        if err == 0.0:
            break
    objs, t_idx, idx, nearer = best
    if len(idx) and nearer.all():  # never a wholly hidden target: keep it alone
        objs, nearer = objs[:1], np.zeros(len(idx), bool)
    z_room = box[4] - cam.pos[2]
    for _ in range(10 * n_obj):
        if len(objs) >= n_obj:
            break
        obj = _photo_object(rng, photos, rng.uniform(0.2, 0.8))
        _pose(rng, obj, cam, rng.uniform(-1.1, 1.1), rng.uniform(-0.8, 1.0), rng.uniform(1.5, z_room - 0.8),
              floating=rng.random() < p_float, ground=not flying)
        if _room_ok(obj, objs, cam, box, margin):
            hides = nearer | (_hit_object(obj, cam.pos, d_flat[:, idx]) < t_idx)
            if len(idx) and hides.mean() > 0.75:
                continue
            objs.append(obj)
            nearer = hides
    for o in objs:
        _dress(rng, photos, o)

    # 3. Rigid motion: standing objects slide and turn about the vertical, floating ones move and turn freely.
    for o in objs:
        if rng.random() < 0.85:
            if o.floating:
                o.d_centre = rng.uniform(0.2, 1.0) * move * _unit(rng.normal(size=3))
                o.d_rot = _axis_angle(rng.normal(size=3), rng.uniform(-1, 1) * np.deg2rad(10) * level)
            else:
                ang = rng.uniform(0, 2 * np.pi)
                o.d_centre = rng.uniform(0.2, 1.0) * move * np.array([np.cos(ang), 0.0, np.sin(ang)])
                o.d_rot = _rot_y(rng.uniform(-1, 1) * np.deg2rad(8) * level)
        else:
            o.d_rot = np.eye(3)
    near = 1.0 if flying else min(1.0, cam.pos[1] / 1.5)  # a camera near the ground moves less
    cam2 = _Camera(
        cam.pos + near * level * np.array([rng.uniform(-0.25, 0.25), rng.uniform(-0.08, 0.08), rng.uniform(-0.3, 0.3)]),
        _camera_rot(yaw + (1 + flying) * level * np.deg2rad(rng.uniform(-2, 2)),
                    pitch + (1 + flying) * level * np.deg2rad(rng.uniform(-1.5, 1.5))),
        cam.f, cam.cx, cam.cy, cam.fy,
    )
    objs2 = [o.moved() for o in objs]

    # 4. Both frames, exact flow, amodal targets: as in the classic scene.
    rgb1, t1, ids1, pw1, d1 = _render(cam, objs, world, h, w, shadows)
    rgb2, t2, ids2, _, _ = _render(cam2, objs2, world, h, w, shadows)
    pw2 = pw1.copy()
    for k, o in enumerate(objs):
        sel = np.flatnonzero(ids1 == k)
        pw2[:, sel] = (o.centre + o.d_centre)[:, None] + o.d_rot @ (pw1[:, sel] - o.centre[:, None])
    xc = cam2.rot.T @ (pw2 - cam2.pos[:, None])
    ys, xs = np.mgrid[0:h, 0:w]
    u = cam2.f * xc[0] / xc[2] + cam2.cx - xs.ravel()
    v = cam2.f_y * xc[1] / xc[2] + cam2.cy - ys.ravel()
    whole, visible, whole_rgb = _amodal_targets(cam, objs, world, d, d1, ids1, rgb1, shadows)
    frames = [rgb1.reshape(h, w, 3), rgb2.reshape(h, w, 3)]
    whole_rgb = whole_rgb.reshape(h, w, 3)
    if effects:
        frames, whole_rgb = _post_effects(rng, frames, whole_rgb, whole.reshape(h, w))

    scene = Scene(
        rgb=frames[0], rgb2=frames[1],
        depth=t1.reshape(h, w).astype(np.float32),
        flow=np.stack([u, v], axis=-1).reshape(h, w, 2).astype(np.float32),
        visible_mask=visible.reshape(h, w), whole_mask=whole.reshape(h, w), whole_rgb=whole_rgb, seed=int(seed),
    )
    aux = {"ids1": ids1.reshape(h, w), "ids2": ids2.reshape(h, w), "depth2": t2.reshape(h, w),
           "proj_z2": xc[2].reshape(h, w), "n_objects": len(objs), "cam": cam, "cam2": cam2, "objs": objs,
           "objs2": objs2, "world": world, "indoor": indoor, "flying": flying, "rgb_clean": rgb1.reshape(h, w, 3)}
    return scene, aux


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass
class Sequence:
    """Consecutive frames of one procedural scene with exact per-frame depth (for temporal metrics)."""

    rgb: np.ndarray  # (N, H, W, 3) uint8
    depth: np.ndarray  # (N, H, W) float32, z-depth in metres
    seed: int


def render_sequence(seed: int, frames: int = 8, size: int | tuple[int, int] = 128, shadows: bool = True) -> Sequence:
    """N frames of the scene of `seed`: camera and objects move smoothly, in total as far as frame 1 -> 2 of
    `render_scene`, split into equal steps (the camera's rotation by the same fraction of its angle)."""
    if frames < 2:
        raise UsageError(f"frames={frames}: a sequence needs at least 2 frames")
    from scipy.spatial.transform import Rotation

    h, w = _sizes(size)
    _, aux = _render_scene(seed, size, shadows)
    cam, cam2, objs, world = aux["cam"], aux["cam2"], aux["objs"], aux["world"]
    turn = Rotation.from_matrix(cam2.rot @ cam.rot.T).as_rotvec()  # (3,) world-frame rotation camera 1 -> 2
    rgbs, depths = [], []
    for k in range(frames):
        a = k / (frames - 1)  # fraction of the frame 1 -> 2 motion done by frame k
        cam_k = _Camera(cam.pos + a * (cam2.pos - cam.pos), Rotation.from_rotvec(a * turn).as_matrix() @ cam.rot,
                        cam.f, cam.cx, cam.cy)
        objs_k = [_Object(o.kind, o.half, o.centre + a * o.d_centre, o.yaw + a * o.d_yaw, o.tex) for o in objs]
        rgb, t, *_ = _render(cam_k, objs_k, world, h, w, shadows)
        rgbs.append(rgb.reshape(h, w, 3))
        depths.append(t.reshape(h, w).astype(np.float32))
    return Sequence(np.stack(rgbs), np.stack(depths), int(seed))
