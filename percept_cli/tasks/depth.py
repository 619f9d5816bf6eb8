"""Depth: affine-invariant depth in [0, 1] (0 = near) from one image.

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

from percept_cli.tasks.base import Task, check_map, gray3, uncertainty_writers, write_plan



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
    names = (("npy", ".depth.npy"), ("png16", ".depth.png"), ("color", ".depth.color.png"))
    numeric = frozenset({"npy"})
    reduction = "median"
    dataset = "hypersim"

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

    def write(self, stem, result, item, formats, overwrite):
        return write_depth(stem, result.depth, result.uncertainty, formats, overwrite=overwrite)

    def visualise(self, result, item):
        from percept_cli.writers import colorize_depth

        return colorize_depth(result.depth)

    def video_state(self, temporal=True):
        from percept_cli.temporal import DepthVideo

        return DepthVideo(self, temporal)

    def viz_readers(self, item):
        from percept_cli import media, writers as W

        return ((".depth.color.png", media.read_image),
                (".depth.npy", lambda p: W.colorize_depth(np.load(p))),
                (".depth.png", lambda p: W.colorize_depth(W.read_png16(p))))

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


TASK = Depth()
FORMATS = TASK.formats  # --format values, in write order


def depth_outputs(stem: str | os.PathLike[str], formats: str | Sequence[str], uncertainty: bool) -> list[Path]:
    """Paths write_depth would write for `stem` (OUT/rel)."""
    return TASK.outputs(stem, formats, uncertainty)


def write_depth(stem: str | os.PathLike[str], depth: np.ndarray, uncertainty: np.ndarray | None,
                formats: str | Sequence[str], overwrite: bool = False) -> list[Path]:
    """Write depth (H, W) in [0, 1], 0 = near, and its uncertainty; existing files are kept unless overwrite."""
    from percept_cli import writers as W

    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    check_map(uncertainty, depth.shape, "uncertainty")
    plan = TASK.plan(stem, formats, uncertainty is not None)
    return write_plan(plan, {
        "npy": lambda p: W.write_npy(p, depth),
        "png16": lambda p: W.write_png16(p, depth),
        "color": lambda p: W.write_png8(p, W.colorize_depth(depth)),
        **uncertainty_writers(uncertainty),
    }, overwrite)
