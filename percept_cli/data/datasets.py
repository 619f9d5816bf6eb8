"""Readers for the real evaluation datasets (Hypersim, FlyingChairs, pix2gestalt) and synthetic samples.

Every reader returns a list of samples holding numpy arrays: uint8 RGB images, float32 targets and
bool validity masks, so that metrics and evaluation never see a dataset's on-disk conventions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from percept_cli.data.scenes import render_scene
from percept_cli.errors import InputError, UsageError
from percept_cli.writers import read_flo  # one .flo reader for inputs and outputs

_HYPERSIM_RGB = re.compile(r"^(.*)rgb_(cam_\d+_fr\d+)\.png$")
_CHAIRS_IMG1 = re.compile(r"^(\d+)_img1\.ppm$")
_P2G_OCCLUSION = re.compile(r"^(.+)_occlusion\.png$")


@dataclass
class DepthSample:
    """One RGB image with metric depth; valid marks pixels with ground truth."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32, metres
    valid: np.ndarray  # (H, W) bool
    name: str


@dataclass
class FlowSample:
    """Two frames with forward flow frame 1 -> frame 2 in pixels (u right, v down)."""

    rgb1: np.ndarray  # (H, W, 3) uint8
    rgb2: np.ndarray  # (H, W, 3) uint8
    flow: np.ndarray  # (H, W, 2) float32
    valid: np.ndarray  # (H, W) bool
    name: str


@dataclass
class AmodalSample:
    """An image with an occluded object: its visible part, its whole silhouette and (optionally) appearance."""

    rgb: np.ndarray  # (H, W, 3) uint8
    visible_mask: np.ndarray  # (H, W) bool
    whole_mask: np.ndarray  # (H, W) bool
    whole_rgb: np.ndarray | None  # (H, W, 3) uint8
    name: str


# ---------------------------------------------------------------- file readers


def _read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, whatever its channels or bit depth."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{path}: cannot read this image (missing, corrupt or unsupported): check the file")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InputError(f"{path}: unsupported image dtype {img.dtype}: save it as 8- or 16-bit")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)  # (H, W, 3)
    code = cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(img, code)  # (H, W, 3)


def _read_mask(path: Path) -> np.ndarray:
    """An 8-bit mask image as (H, W) bool, inside where the value is above 127."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise InputError(f"{path}: cannot read this mask (missing or corrupt): check the file")
    return img > 127  # (H, W)


def _same_size(path: Path, a: np.ndarray, b: np.ndarray) -> None:
    """Refuse ground truth whose size differs from its image."""
    if a.shape[:2] != b.shape[:2]:
        raise InputError(f"{path}: size {b.shape[1]}x{b.shape[0]} differs from its image's "
                         f"{a.shape[1]}x{a.shape[0]}: the pair does not belong together")


def _is_dir(root: Path, what: str) -> Path:
    """root as a Path, or an InputError when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder: pass the root folder of the {what} data")
    return root


# ---------------------------------------------------------------- datasets


def _hypersim_pairs(root: Path, split_file: Path | None) -> list[tuple[Path, Path]]:
    """(rgb, depth) paths from a Marigold filename list, or found by name under root."""
    if split_file is not None:
        split_file = Path(split_file)
        try:
            lines = split_file.read_text().splitlines()
        except OSError as e:
            raise InputError(f"{split_file}: cannot read the split file ({e.strerror}): check the path") from e
        pairs = []
        for i, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise InputError(f"{split_file}:{i}: expected 'RGB_PATH DEPTH_PATH', got {line!r}: fix the line")
            pairs.append((root / parts[0], root / parts[1]))
        return pairs
    pairs = []
    for rgb in sorted(root.rglob("*rgb_cam_*_fr*.png")):
        m = _HYPERSIM_RGB.match(rgb.name)
        if m is None:
            continue
        depth = rgb.with_name(f"{m.group(1)}depth_plane_{m.group(2)}.png")
        if not depth.is_file():
            raise InputError(f"{rgb}: no depth beside it (expected {depth.name}): add it or remove the image")
        pairs.append((rgb, depth))
    return pairs


def hypersim_items(root: Path, split_file: Path | None = None) -> list[tuple[Path, Path]]:
    """(rgb, depth) paths of Hypersim in Marigold's layout; InputError naming the folder when it holds none."""
    root = _is_dir(root, "Hypersim")
    pairs = _hypersim_pairs(root, split_file)
    if not pairs:
        raise InputError(f"{root}: no Hypersim *rgb_cam_XX_frNNNN.png files under it (with *depth_plane_cam_XX_frNNNN.png "
                         "beside each): pass the dataset's root folder")
    return pairs


def load_hypersim(root: Path, item: tuple[Path, Path]) -> DepthSample:
    """One Hypersim sample from its (rgb, depth) paths."""
    rgb_path, depth_path = item
    rgb = _read_rgb(rgb_path)
    raw = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
        raise InputError(f"{depth_path}: not a single-channel 16-bit depth PNG: use Marigold's preprocessed files")
    _same_size(depth_path, rgb, raw)
    depth = raw.astype(np.float32) / 1000.0  # (H, W) millimetres -> metres
    return DepthSample(rgb, depth, raw > 0, rgb_path.relative_to(root).with_suffix("").as_posix())


def read_hypersim(root: Path, split_file: Path | None = None) -> list[DepthSample]:
    """Hypersim in Marigold's layout: *rgb_cam_XX_frNNNN.png beside *depth_plane_cam_XX_frNNNN.png (uint16 mm)."""
    return [load_hypersim(Path(root), item) for item in hypersim_items(root, split_file)]


def flyingchairs_items(root: Path, split: str | None = None, split_file: Path | None = None) -> list[Path]:
    """The NNNNN_img1.ppm paths of FlyingChairs (of one split); InputError naming the folder when it holds none."""
    root = _is_dir(root, "FlyingChairs")
    if split is not None and split not in ("train", "val"):
        raise UsageError(f"split={split!r} is not a FlyingChairs split: use 'train' or 'val'")
    found = sorted((int(m.group(1)), p) for p in root.rglob("*_img1.ppm") if (m := _CHAIRS_IMG1.match(p.name)))
    if not found:
        raise InputError(f"{root}: no FlyingChairs NNNNN_img1.ppm files under it (with _img2.ppm and _flow.flo "
                         "beside each): pass the dataset's root folder")
    if split is not None:
        if split_file is None:
            cands = [root / "FlyingChairs_train_val.txt", root.parent / "FlyingChairs_train_val.txt"]
            split_file = next((c for c in cands if c.is_file()), None)
            if split_file is None:
                raise InputError(f"{root}: no FlyingChairs_train_val.txt beside the data: pass split_file")
        try:
            tags = [int(t) for t in Path(split_file).read_text().split()]
        except (OSError, ValueError) as e:
            raise InputError(f"{split_file}: not a list of 1/2 split tags: use FlyingChairs_train_val.txt") from e
        want = 1 if split == "train" else 2
        # Line i of the split file tags sample number i (numbering starts at 1).
        found = [(n, p) for n, p in found if 1 <= n <= len(tags) and tags[n - 1] == want]
    for _, img1 in found:  # an incomplete folder fails here, naming the first missing file
        stem = img1.name[: -len("_img1.ppm")]
        for other in (img1.with_name(f"{stem}_img2.ppm"), img1.with_name(f"{stem}_flow.flo")):
            if not other.is_file():
                raise InputError(f"{other}: missing beside {img1.name} in {img1.parent}: add it or remove the image")
    return [p for _, p in found]


def load_flyingchairs(root: Path, img1: Path) -> FlowSample:
    """One FlyingChairs sample from its NNNNN_img1.ppm path."""
    stem = img1.name[: -len("_img1.ppm")]
    img2, flo = img1.with_name(f"{stem}_img2.ppm"), img1.with_name(f"{stem}_flow.flo")
    rgb1, rgb2, flow = _read_rgb(img1), _read_rgb(img2), read_flo(flo)
    _same_size(img2, rgb1, rgb2)
    _same_size(flo, rgb1, flow)
    # FlyingChairs has flow everywhere; the check only guards against corrupt values.
    valid = np.isfinite(flow).all(axis=2) & (np.abs(flow) < 1e9).all(axis=2)  # (H, W)
    return FlowSample(rgb1, rgb2, flow, valid, img1.relative_to(root).parent.joinpath(stem).as_posix())


def read_flyingchairs(root: Path, split: str | None = None, split_file: Path | None = None) -> list[FlowSample]:
    """FlyingChairs NNNNN_img1.ppm, _img2.ppm, _flow.flo; split 'train'/'val' per FlyingChairs_train_val.txt."""
    return [load_flyingchairs(Path(root), p) for p in flyingchairs_items(root, split, split_file)]


def pix2gestalt_items(root: Path, need_whole_rgb: bool = False) -> list[str]:
    """The sample numbers N of pix2gestalt (occlusion/N_occlusion.png); InputError naming what is missing."""
    root = _is_dir(root, "pix2gestalt")
    occ_dir = root / "occlusion"
    found = sorted(m.group(1) for p in occ_dir.glob("*_occlusion.png") if (m := _P2G_OCCLUSION.match(p.name)))
    if not found:
        raise InputError(f"{root}: no occlusion/N_occlusion.png files: pass the pix2gestalt root folder")
    for n in found:
        need = [root / "visible_object_mask" / f"{n}_visible_mask.png", root / "whole_mask" / f"{n}_whole_mask.png"]
        need += [root / "whole" / f"{n}_whole.png"] if need_whole_rgb else []
        for p in need:
            if not p.is_file():
                raise InputError(f"{p}: missing for {n}_occlusion.png in {root}: add it or remove the image")
    return found


def load_pix2gestalt(root: Path, n: str) -> AmodalSample:
    """One pix2gestalt sample by its number."""
    occ = root / "occlusion" / f"{n}_occlusion.png"
    rgb = _read_rgb(occ)
    vis_path = root / "visible_object_mask" / f"{n}_visible_mask.png"
    whole_path = root / "whole_mask" / f"{n}_whole_mask.png"
    for p in (vis_path, whole_path):
        if not p.is_file():
            raise InputError(f"{p}: missing mask for {occ.name}: add it or remove the image")
    visible, whole = _read_mask(vis_path), _read_mask(whole_path)
    _same_size(vis_path, rgb, visible)
    _same_size(whole_path, rgb, whole)
    whole_rgb_path = root / "whole" / f"{n}_whole.png"
    whole_rgb = None
    if whole_rgb_path.is_file():
        whole_rgb = _read_rgb(whole_rgb_path)
        _same_size(whole_rgb_path, rgb, whole_rgb)
    return AmodalSample(rgb, visible, whole, whole_rgb, n)


def read_pix2gestalt(root: Path) -> list[AmodalSample]:
    """pix2gestalt: occlusion/N_occlusion.png with visible_object_mask/, whole_mask/ and (optional) whole/."""
    root = Path(root)
    return [load_pix2gestalt(root, n) for n in pix2gestalt_items(root)]


# ---------------------------------------------------------------- training-only datasets
#
# Virtual KITTI 2 (europe.naverlabs.com/research/computer-vision/proxy-virtual-worlds-vkitti-2/) as its
# archives unpack: vkitti_2.0.3_rgb/SceneXX/<variation>/frames/rgb/Camera_K/rgb_NNNNN.jpg, beside
# vkitti_2.0.3_depth/.../frames/depth/Camera_K/depth_NNNNN.png (uint16 centimetres, 65535 = sky/far) and
# vkitti_2.0.3_forwardFlow/.../frames/forwardFlow/Camera_K/flow_NNNNN.png (uint16 BGR: B = 0 where the
# flow is invalid; R, G = u, v mapped from [-(W-1), W-1] and [-(H-1), H-1] to [0, 65535]).
# FlyingThings3D (lmb.informatik.uni-freiburg.de/resources/datasets/SceneFlowDatasets.en.html):
# frames_cleanpass/SPLIT/{A,B,C}/NNNN/{left,right}/FFFF.png (or frames_finalpass) beside
# optical_flow/SPLIT/{A,B,C}/NNNN/into_future/{left,right}/OpticalFlowIntoFuture_FFFF_{L,R}.pfm.

_VKITTI_RGB = re.compile(r"^rgb_(\d+)\.jpg$")
_FT3D_FRAME = re.compile(r"^(\d+)\.png$")


@dataclass
class FrameSample:
    """Two frames with forward flow (pixels) and metric depth of frame 1 (Virtual KITTI 2)."""

    rgb1: np.ndarray  # (H, W, 3) uint8
    rgb2: np.ndarray  # (H, W, 3) uint8
    flow: np.ndarray  # (H, W, 2) float32
    flow_valid: np.ndarray  # (H, W) bool
    depth: np.ndarray  # (H, W) float32 metres
    valid: np.ndarray  # (H, W) bool: depth below the far plane
    name: str


def read_vkitti_flow(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A Virtual KITTI 2 flow PNG -> (flow (H, W, 2) pixels, valid (H, W) bool)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if bgr is None or bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise InputError(f"{path}: not a 16-bit 3-channel Virtual KITTI 2 flow PNG: use the forwardFlow archive's files")
    h, w = bgr.shape[:2]
    valid = bgr[..., 0] != 0
    flow = 2.0 / 65535.0 * bgr[..., 2:0:-1].astype(np.float32) - 1.0  # (H, W, 2): R = u, G = v in [-1, 1]
    flow[..., 0] *= w - 1
    flow[..., 1] *= h - 1
    flow[~valid] = 0.0
    return flow, valid


def vkitti2_items(root: Path) -> list[tuple[Path, Path, Path, Path]]:
    """(rgb, next rgb, depth, forward flow) paths of every Virtual KITTI 2 frame that has a next frame."""
    root = _is_dir(root, "Virtual KITTI 2")
    rgb_roots = sorted(root.glob("vkitti_2*_rgb"))
    if not rgb_roots:
        raise InputError(f"{root}: no vkitti_2.x_rgb folder in it: pass the folder where the Virtual KITTI 2 "
                         "archives (rgb, depth, forwardFlow) were unpacked")
    items = []
    for rgb_root in rgb_roots:
        version = rgb_root.name[: -len("_rgb")]
        for kind in ("depth", "forwardFlow"):
            if not (root / f"{version}_{kind}").is_dir():
                raise InputError(f"{root / f'{version}_{kind}'}: missing beside {rgb_root.name}: unpack the "
                                 f"{version}_{kind} archive there")
        for rgb in sorted(rgb_root.rglob("rgb_*.jpg")):
            m = _VKITTI_RGB.match(rgb.name)
            nxt = rgb.with_name(f"rgb_{int(m.group(1)) + 1:05d}.jpg") if m else None
            if nxt is None or not nxt.is_file():
                continue  # the last frame of a sequence has no forward flow
            rel = rgb.parent.relative_to(rgb_root)  # SceneXX/variation/frames/rgb/Camera_K
            parts = rel.parts
            if len(parts) < 5 or parts[-2] != "rgb":
                raise InputError(f"{rgb}: not under SceneXX/<variation>/frames/rgb/Camera_K: keep the archive's layout")
            base = Path(*parts[:-2])
            depth = root / f"{version}_depth" / base / "depth" / parts[-1] / f"depth_{m.group(1)}.png"
            flow = root / f"{version}_forwardFlow" / base / "forwardFlow" / parts[-1] / f"flow_{m.group(1)}.png"
            for p in (depth, flow):
                if not p.is_file():
                    raise InputError(f"{p}: missing for {rgb.relative_to(root)}: add it or remove the frame")
            items.append((rgb, nxt, depth, flow))
    if not items:
        raise InputError(f"{root}: no Virtual KITTI 2 frame pairs (rgb_NNNNN.jpg and the next one) under it")
    return items


def load_vkitti2(root: Path, item: tuple[Path, Path, Path, Path]) -> FrameSample:
    """One Virtual KITTI 2 frame with its next frame, forward flow and depth."""
    rgb_path, next_path, depth_path, flow_path = item
    rgb1, rgb2 = _read_rgb(rgb_path), _read_rgb(next_path)
    raw = cv2.imread(str(depth_path), cv2.IMREAD_ANYDEPTH)
    if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
        raise InputError(f"{depth_path}: not a 16-bit Virtual KITTI 2 depth PNG: use the depth archive's files")
    flow, flow_valid = read_vkitti_flow(flow_path)
    for path, arr in ((next_path, rgb2), (depth_path, raw), (flow_path, flow)):
        _same_size(path, rgb1, arr)
    depth = raw.astype(np.float32) / 100.0  # centimetres -> metres
    return FrameSample(rgb1, rgb2, flow, flow_valid, depth, raw < 65535,
                       rgb_path.relative_to(root).with_suffix("").as_posix())


def read_pfm(path: Path) -> np.ndarray:
    """A PFM image -> (H, W, C) float32, top row first (PFM stores the bottom row first)."""
    try:
        with open(path, "rb") as f:
            kind = f.readline().strip()
            dims = f.readline().split()
            while not dims:  # tolerate a blank line
                dims = f.readline().split()
            w, h = int(dims[0]), int(dims[1])
            scale = float(f.readline().strip())
            data = np.frombuffer(f.read(), "<f4" if scale < 0 else ">f4")
    except (OSError, ValueError, IndexError) as e:
        raise InputError(f"{path}: not a readable PFM file ({e}): check the file") from None
    channels = {b"PF": 3, b"Pf": 1}.get(kind)
    if channels is None or data.size != w * h * channels:
        raise InputError(f"{path}: not a PFM image (header {kind!r}, {data.size} values for {w}x{h}): check the file")
    return np.flipud(data.reshape(h, w, channels)).astype(np.float32)


def flyingthings_items(root: Path) -> list[tuple[Path, Path, Path]]:
    """(frame, next frame, into-future flow .pfm) of FlyingThings3D's clean (else final) pass, both cameras."""
    root = _is_dir(root, "FlyingThings3D")
    frames = next((root / d for d in ("frames_cleanpass", "frames_finalpass") if (root / d).is_dir()), None)
    if frames is None or not (root / "optical_flow").is_dir():
        missing = [d for d, ok in (("frames_cleanpass (or frames_finalpass)", frames is not None),
                                   ("optical_flow", (root / "optical_flow").is_dir())) if not ok]
        raise InputError(f"{root}: no {' and no '.join(missing)} folder in it: pass the FlyingThings3D root")
    items = []
    for img in sorted(frames.rglob("*.png")):
        m = _FT3D_FRAME.match(img.name)
        camera = img.parent.name
        if m is None or camera not in ("left", "right"):
            continue
        nxt = img.with_name(f"{int(m.group(1)) + 1:04d}.png")
        if not nxt.is_file():
            continue  # the last frame of a sequence
        rel = img.parent.parent.relative_to(frames)  # SPLIT/LETTER/NNNN
        flow = (root / "optical_flow" / rel / "into_future" / camera /
                f"OpticalFlowIntoFuture_{m.group(1)}_{camera[0].upper()}.pfm")
        if not flow.is_file():
            raise InputError(f"{flow}: missing for {img.relative_to(root)}: add it or remove the frame")
        items.append((img, nxt, flow))
    if not items:
        raise InputError(f"{root}: no FlyingThings3D frame pairs (SPLIT/X/NNNN/left/FFFF.png) under {frames.name}")
    return items


def load_flyingthings(root: Path, item: tuple[Path, Path, Path]) -> FlowSample:
    """One FlyingThings3D frame pair with its forward flow (pixels)."""
    img1, img2, flo = item
    rgb1, rgb2 = _read_rgb(img1), _read_rgb(img2)
    flow = read_pfm(flo)[..., :2]  # the third channel is zero
    _same_size(img2, rgb1, rgb2)
    _same_size(flo, rgb1, flow)
    valid = np.isfinite(flow).all(axis=2) & (np.abs(flow) < 1e9).all(axis=2)
    return FlowSample(rgb1, rgb2, np.ascontiguousarray(flow), valid, img1.relative_to(root).with_suffix("").as_posix())


def detect_dataset(root: Path) -> str:
    """Which dataset a folder holds: 'hypersim', 'flyingchairs' or 'pix2gestalt'."""
    root = _is_dir(root, "dataset")
    if (root / "occlusion").is_dir() and (root / "whole_mask").is_dir():
        return "pix2gestalt"
    if next(root.rglob("*_img1.ppm"), None) is not None:
        return "flyingchairs"
    if next(root.rglob("*rgb_cam_*_fr*.png"), None) is not None:
        return "hypersim"
    raise InputError(f"{root}: not a Hypersim, FlyingChairs or pix2gestalt folder: pass one of those datasets' roots")


def synthetic_samples(task: str, seeds: range, size: int | tuple[int, int]) -> list:
    """Rendered scenes as samples of one registered task (tasks.get_task(task).sample), ground truth valid everywhere."""
    from percept_cli.tasks import TASKS

    if task not in TASKS:
        raise UsageError(f"task={task!r} is not a task: use {' or '.join(repr(t) for t in TASKS)}")
    spec = TASKS[task]
    return [spec.sample(render_scene(seed, size), f"synthetic_{seed:06d}") for seed in seeds]
