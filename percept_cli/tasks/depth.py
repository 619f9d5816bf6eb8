"""Depth: affine-invariant depth in [0, 1] (0 = near) from one image, and what is made of it.

Formats: npy, png16, color (--colormap) by default ('all'); ply (a coloured point cloud, geometry.py) and
exr (OpenEXR float) when named. --align fits scale and shift to known metric points and adds
NAME.depth.metric.npy (and .metric.exr with exr); the cloud is then in metres.

Official conventions (official-checkpoint.md section 3): label 1000; prompt = an all-ones valid
mask in {0, 1}; target = depth normalised per image (2%/98% quantiles -> -1/+1, near = -1),
repeated to 3 channels. Members are reduced with the median (ensemble.ensemble_depth).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from percept_cli.errors import InputError, UsageError
from percept_cli.tasks.base import Task, TaskInput, check_map, gray3, uncertainty_writers, write_plan

DEFAULT_FORMATS = ("npy", "png16", "color")  # no --format, or 'all'; ply and exr are written when named
NEAR_OFFSET = 1.0  # relative clouds: z = depth + 1, so the nearest pixel is 1 unit and the farthest ~2 in front


@dataclass(frozen=True)
class DepthOptions:
    """Depth's output options: --colormap, --fov, --max-uncertainty, --align (see Depth.configure)."""

    colormap: str = "inferno"
    fov: float | None = None  # horizontal degrees for the cloud; None: EXIF, else geometry.DEFAULT_FOV
    max_uncertainty: float | None = None  # cloud points above it are dropped
    align: Path | None = None  # one 'x y depth' file for every input, or a folder of NAME.txt (NAME = input stem)
    near: float = NEAR_OFFSET


@dataclass
class DepthInput(TaskInput):
    path: Path | None = None  # the input file (a video for its frames): its EXIF, its --align folder file


@dataclass
class DepthResult:
    depth: np.ndarray  # (H, W) float32 in [0, 1], affine-invariant, 0 = near
    uncertainty: np.ndarray | None  # (H, W) float32, same units as depth; None for one member


def depth_target(depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(..., H, W) metres -> (..., 3, H, W): 2%/98% quantiles of valid depth (per image) map to -1/+1, clipped."""
    if valid is not None or depth.ndim == 2:
        vals = depth[valid] if valid is not None else depth.reshape(-1)
        lo, hi = np.quantile(vals, [0.02, 0.98]) if vals.size else (0.0, 1.0)
        span = max(hi - lo, 1e-6)
    else:  # a batch of fully valid maps: the same quantiles, one per image
        lo, hi = np.quantile(depth.reshape(depth.shape[:-2] + (-1,)), [0.02, 0.98], axis=-1)[..., None, None]
        span = np.maximum(hi - lo, 1e-6)
    norm = np.clip((depth - lo) / span * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)
    return gray3(norm)


class Depth(Task):
    name, labels = "depth", (1000,)
    names = (("npy", ".depth.npy"), ("png16", ".depth.png"), ("color", ".depth.color.png"),
             ("ply", ".depth.ply"), ("exr", ".depth.exr"))
    numeric = frozenset({"npy"})
    reduction = "median"
    dataset = "hypersim"

    def __init__(self, options: DepthOptions | None = None, note=None) -> None:
        self.options = options or DepthOptions()
        self._note = note  # one stderr line (the run's console), or None
        self._said: set[str] = set()
        self._records: dict[str, dict] = {}
        self._points = None  # --align FILE, parsed once
        if self.options.align is not None and not Path(self.options.align).is_dir():
            from percept_cli.geometry import parse_align_points

            try:
                self._points = parse_align_points(self.options.align)
            except InputError as e:
                raise UsageError(str(e)) from None

    def configure(self, opts=None, note=None, **options) -> "Depth":
        """This task with depth's options: from run.Options (colormap, fov, max_uncertainty, align) or keywords.

        Python: `get_task("depth").configure(fov=70, align="known.txt").write(stem, result, item, "npy,ply", False)`,
        then `.record(stem)` for the intrinsics and the fit. UsageError for a bad value.
        """
        from percept_cli.writers import check_colormap

        get = lambda key: options[key] if key in options else getattr(opts, key, None)  # noqa: E731
        fov, maxu, align = get("fov"), get("max_uncertainty"), get("align")
        if fov is not None and not 1.0 <= fov <= 179.0:
            raise UsageError(f"--fov {fov:g}: the horizontal field of view must be between 1 and 179 degrees")
        if maxu is not None and not maxu >= 0:
            raise UsageError(f"--max-uncertainty must be zero or positive, got {maxu:g}")
        if align is not None and not Path(align).exists():
            raise UsageError(f"--align {align}: no such file or folder; give a text file of 'x y depth' lines "
                             "(pixel column, row, metres) or a folder of NAME.txt files")
        options = DepthOptions(check_colormap(get("colormap") or "inferno"), fov, maxu,
                               None if align is None else Path(align))
        fmt = getattr(opts, "format", None)
        if note is not None and (fov is not None or maxu is not None) and "ply" not in self.parse_formats(fmt or "all"):
            note("--fov and --max-uncertainty shape only the point cloud: add ply to --format to write one")
        return Depth(options, note)

    # -- inputs: remember the file, for EXIF and --align folders ------------------------------------

    def load(self, src):
        from percept_cli import media

        item = DepthInput(media.read_image(src.paths[0]), name=str(src.paths[0]), path=Path(src.paths[0]))
        if self.options.align is not None:  # points outside the image fail before predicting
            self.align_points(item)
        return item

    def video_inputs(self, src, frames):
        for index, frame in frames:
            yield index, DepthInput(frame, name=f"{src.paths[0]} frame {index}", path=Path(src.paths[0]))

    def align_points(self, item: TaskInput):
        """(N, 3) known (x, y, metres) for this input; InputError if they cannot be used on it."""
        from percept_cli.geometry import check_points_inside, parse_align_points

        h, w = item.image.shape[:2]
        if self._points is not None:
            points, label = self._points, f"--align {self.options.align}"
        else:
            path = getattr(item, "path", None)
            if path is None:
                raise InputError(f"{item.name}: --align is a folder, so the input's file name is needed to find "
                                 "its NAME.txt; pass the points file itself")
            txt = Path(self.options.align) / f"{Path(path).stem}.txt"
            if not txt.is_file():
                raise InputError(f"{item.name}: no known depths for it: {txt} is missing; add it, or align with one file")
            points, label = parse_align_points(txt), f"--align {txt}"
        check_points_inside(points, w, h, f"{label} on {item.name}")
        return points

    def prompt(self, image, extra):
        return np.ones(image.shape[:-3] + (3,) + image.shape[-3:-1], np.float32)  # valid mask {0, 1}: all valid

    def train_pair(self, kind, scene, flipped, flow_scale):
        depth = scene("depth")
        try:
            valid = scene("valid")  # a real dataset (Hypersim): pixels with ground truth
        except AttributeError:  # rendered scenes: valid everywhere
            return self.prompt(scene("rgb"), None), depth_target(depth)
        # official: the prompt is the valid mask in {0, 1}; quantiles over valid pixels only
        return gray3(valid.astype(np.float32)), np.stack([depth_target(d, v) for d, v in zip(depth, valid)])

    def decode(self, decoded, config):
        return (decoded[0].mean(axis=1) + 1.0) / 2.0  # (E, h, w), near = 0

    def finish(self, values, to_input, reduction, config):
        from percept_cli.ensemble import ensemble_depth

        depth, unc = ensemble_depth(values, reduction=reduction or self.reduction)
        return DepthResult(np.clip(to_input.resize(depth), 0.0, 1.0).astype(np.float32),
                           None if unc is None else to_input.resize(unc).astype(np.float32))

    tileable = True  # --fit tile: crops are fitted to their neighbours by scale and shift (tiling.py)

    def merge_tiles(self, layout, tiles, resolution):
        from percept_cli.tiling import merge_depth_uncertainty

        depth, unc = merge_depth_uncertainty(layout.depth, layout.uncertainty,
                                             [(box, r.depth, r.uncertainty) for box, r in tiles], resolution)
        return DepthResult(depth, unc)

    def plan(self, stem, formats, uncertainty):
        return depth_plan(stem, self.parse_formats(formats if isinstance(formats, str) else ",".join(formats)),
                          uncertainty, metric=self.options.align is not None)

    def parse_formats(self, text):
        """As Task.parse_formats, but 'all' means the default three; ply and exr are named (optional packages)."""
        text = ",".join(",".join(DEFAULT_FORMATS) if v.strip().lower() == "all" else v for v in str(text).split(","))
        chosen = super().parse_formats(text)
        if "ply" in chosen:
            from percept_cli.geometry import _plyfile

            _plyfile()
        if "exr" in chosen:
            from percept_cli.writers import exr_available

            if not exr_available():
                raise UsageError("--format exr needs the OpenEXR package: pip install 'percept-cli[exr]'")
        return chosen

    def write(self, stem, result, item, formats, overwrite):
        """Every file of one result; --align's fit (InputError if it fails) comes first, so a failed fit writes nothing."""
        from percept_cli import geometry

        o, info = self.options, {}
        chosen = self.parse_formats(formats if isinstance(formats, str) else ",".join(formats))
        metric = k = None
        if o.align is not None:
            metric, info["align"] = geometry.align_depth(result.depth, self.align_points(item),
                                                         f"--align on {item.name}")
        if "ply" in chosen and o.max_uncertainty is not None and result.uncertainty is None:
            self._say_once("max-uncertainty", "--max-uncertainty: one ensemble member gives no uncertainty, so every "
                                              "point is kept; use --ensemble 3 or more")
        if "ply" in chosen:
            h, w = result.depth.shape
            path = getattr(item, "path", None)
            k = geometry.intrinsics(w, h, o.fov, None if path is None or o.fov is not None
                                    else geometry.exif_focal_px(path, w))
            info["intrinsics"] = {"fx": k.fx, "fy": k.fx, "cx": k.cx, "cy": k.cy, "hfov": round(k.hfov, 4),
                                  "source": k.source, "units": "metres" if metric is not None else
                                  f"relative (z = depth + {o.near:g})"}
            self._say_once(k.source.split(" ")[0],  # once per kind: --fov, EXIF, default
                           f"depth point clouds: {k.hfov:.1f} degrees horizontal field of view; from {k.source}")
        paths = write_depth(stem, result.depth, result.uncertainty, chosen, overwrite=overwrite, rgb=item.image,
                            intrinsics=k, metric=metric, colormap=o.colormap, max_uncertainty=o.max_uncertainty,
                            near=o.near)
        self._records[str(Path(stem))] = info
        return paths

    def _say_once(self, key: str, message: str) -> None:
        if self._note is not None and key not in self._said:
            self._said.add(key)
            self._note(message)

    def record(self, stem):
        """--json fields of the input written at `stem`: intrinsics (ply) and align (scale, shift, inliers...)."""
        return self._records.pop(str(Path(stem)), {})

    def visualise(self, result, item):
        from percept_cli.writers import colorize_depth

        return colorize_depth(result.depth, self.options.colormap)

    def video_state(self, temporal=True):
        from percept_cli.temporal import DepthVideo

        return DepthVideo(self, temporal)

    def viz_readers(self, item):
        from percept_cli import media, writers as W

        return ((".depth.color.png", media.read_image),
                (".depth.npy", lambda p: W.colorize_depth(np.load(p), self.options.colormap)),
                (".depth.png", lambda p: W.colorize_depth(W.read_png16(p), self.options.colormap)),
                (".depth.exr", lambda p: W.colorize_depth(_exr_depth(p), self.options.colormap)))

    def sample(self, scene, name):
        from percept_cli.data.datasets import DepthSample

        return DepthSample(scene.rgb, scene.depth, np.ones(scene.depth.shape, bool), name)

    def read_dataset(self, root):
        from percept_cli.data.datasets import read_hypersim

        return read_hypersim(Path(root))

    def score(self, sample, pred):
        from percept_cli import metrics

        return metrics.depth_metrics(getattr(pred, "depth", pred), sample.depth, sample.valid)

    def baselines(self, samples):
        from percept_cli.baselines import ramp_depth

        return {"ramp (bottom = near)": lambda s: ramp_depth(*s.depth.shape)}


def _exr_depth(path: Path) -> np.ndarray:
    """The Z channel of a NAME.depth.exr; ValueError when it has none."""
    from percept_cli.writers import read_exr

    channels = read_exr(path)
    if "Z" not in channels:
        raise ValueError(f"{path} has no Z channel")
    return channels["Z"]


TASK = Depth()
FORMATS = DEFAULT_FORMATS  # what 'all' (and no --format) writes, in order; TASK.formats adds ply, exr


def depth_plan(stem: str | os.PathLike[str], chosen: Sequence[str], uncertainty: bool, metric: bool = False) -> dict[str, Path]:
    """{key: path} in write order. Uncertainty: an .npy beside npy, a .png beside png16/color; ply and exr
    carry it inside (a vertex property, a channel). metric (--align): .metric.npy, and .metric.exr with exr."""
    stem = Path(stem)
    named = lambda suffix: stem.with_name(stem.name + suffix)  # noqa: E731 - append, never replace a suffix
    plan = {fmt: named(suffix) for fmt, suffix in TASK.names if fmt in chosen}
    if metric:
        plan["metric.npy"] = named(".depth.metric.npy")
        if "exr" in chosen:
            plan["metric.exr"] = named(".depth.metric.exr")
    if uncertainty:
        if "npy" in chosen:
            plan["uncertainty.npy"] = named(".depth.uncertainty.npy")
        if "png16" in chosen or "color" in chosen:
            plan["uncertainty.png"] = named(".depth.uncertainty.png")
    return plan


def depth_outputs(stem: str | os.PathLike[str], formats: str | Sequence[str], uncertainty: bool) -> list[Path]:
    """Paths write_depth would write for `stem` (OUT/rel)."""
    return TASK.outputs(stem, formats, uncertainty)


def write_depth(stem: str | os.PathLike[str], depth: np.ndarray, uncertainty: np.ndarray | None,
                formats: str | Sequence[str], overwrite: bool = False, *, rgb: np.ndarray | None = None,
                intrinsics=None, metric: np.ndarray | None = None, colormap: str = "inferno",
                max_uncertainty: float | None = None, near: float = NEAR_OFFSET) -> list[Path]:
    """Write depth (H, W) in [0, 1], 0 = near, and its uncertainty; existing files are kept unless overwrite.

    ply needs `rgb` (H, W, 3) uint8 and `intrinsics` (geometry.intrinsics); its z is `metric` (metres) when
    given, else depth + near. `metric` (H, W) metres also writes NAME.depth.metric.npy (.metric.exr with exr).
    """
    from percept_cli import geometry, writers as W

    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    check_map(uncertainty, depth.shape, "uncertainty")
    check_map(metric, depth.shape, "metric")
    chosen = TASK.parse_formats(formats if isinstance(formats, str) else ",".join(formats))
    if "ply" in chosen and (rgb is None or intrinsics is None):
        raise ValueError("format ply needs rgb (H, W, 3) uint8 and intrinsics (geometry.intrinsics)")
    check_map(rgb, depth.shape + (3,), "rgb")
    plan = depth_plan(stem, chosen, uncertainty is not None, metric=metric is not None)

    def ply(path):
        z, offset = (metric, 0.0) if metric is not None else (depth, near)
        pts, col, unc = geometry.point_cloud(z, rgb, intrinsics, uncertainty, max_uncertainty, near_offset=offset)
        return W.write_bytes(path, geometry.ply_bytes(pts, col, unc))

    def exr(path):
        return W.write_exr(path, {"Z": depth} if uncertainty is None else {"Z": depth, "uncertainty": uncertainty})

    return write_plan(plan, {
        "npy": lambda p: W.write_npy(p, depth),
        "png16": lambda p: W.write_png16(p, depth),
        "color": lambda p: W.write_png8(p, W.colorize_depth(depth, colormap)),
        "ply": ply,
        "exr": exr,
        "metric.npy": lambda p: W.write_npy(p, np.asarray(metric, np.float32)),
        "metric.exr": lambda p: W.write_exr(p, {"Z": np.asarray(metric, np.float32)}),
        **uncertainty_writers(uncertainty),
    }, overwrite)
