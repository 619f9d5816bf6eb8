"""The task registry: everything task-specific, in one place.

For each task: its model labels, how the conditioning (`prompt`) image is built, how a training
target is encoded into the model's 3 image channels, how decoded members become task values, and
which reducer ensembles them. The sampler and the model never see a task name.

Conventions follow the official generalist (official-checkpoint.md section 3):
  depth   label 1000; prompt = all-ones valid mask in {0, 1}; target = depth normalised per image
          (2%/98% quantiles -> -1/+1, near = -1), repeated to 3 channels
  amodal  label 1001; prompt = visible mask in {-1, +1}; target = the whole object on white, RGB
  flow    labels 1002 (u) and 1003 (v); prompt = frame 2; target = one component / flow_scale,
          repeated to 3 channels. The generalist's flow_scale is (75, 100): its training data
          divided u by 75 and, through a dataset bug, left v in 384-row units, so v pixels on the
          512 grid are output * 75 * 512/384 = output * 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from percept_cli import ensemble

DEPTH, FLOW, AMODAL = "depth", "flow", "amodal"


@dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[int, ...]  # one sampling run per label (flow: u and v)
    extra: str | None  # what the second input is: None, "frame" or "mask"


TASKS: dict[str, Task] = {
    DEPTH: Task(DEPTH, (1000,), None),
    AMODAL: Task(AMODAL, (1001,), "mask"),
    FLOW: Task(FLOW, (1002, 1003), "frame"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}: one of {', '.join(TASKS)}")
    return TASKS[name]


# The encoders below also take a leading batch axis: (B, H, W, ...) in, (B, 3, H, W) out.


def to_unit(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [-1, 1]."""
    return (np.moveaxis(rgb.astype(np.float32), -1, -3) / 127.5) - 1.0


def prompt_image(task: str, image: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
    """The conditioning image (3, H, W) for `task`, in the official value conventions."""
    if task == DEPTH:
        return np.ones(image.shape[:-3] + (3,) + image.shape[-3:-1], np.float32)  # valid mask {0, 1}: all valid
    if task == AMODAL:
        mask = extra.astype(np.float32) * 2.0 - 1.0  # {-1, +1}
        return np.repeat(mask[..., None, :, :], 3, axis=-3)
    return to_unit(extra)  # flow: frame 2


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
    return np.repeat(norm[..., None, :, :], 3, axis=-3)


def flow_targets(flow: np.ndarray, flow_scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(..., H, W, 2) pixels -> the u and v targets (..., 3, H, W) each, divided by flow_scale, clipped to [-1, 1]."""
    u = np.clip(flow[..., 0] / flow_scale[0], -1, 1).astype(np.float32)
    v = np.clip(flow[..., 1] / flow_scale[1], -1, 1).astype(np.float32)
    return np.repeat(u[..., None, :, :], 3, axis=-3), np.repeat(v[..., None, :, :], 3, axis=-3)


def amodal_target(whole_rgb: np.ndarray) -> np.ndarray:
    return to_unit(whole_rgb)


def members_to_values(task: str, decoded: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Decoded members at the processing grid -> task values there.

    decoded: (L, E, 3, h, w) float32, L = len(task.labels).
    depth -> (E, h, w) in [0, 1]-ish (near = 0); flow -> (E, h, w, 2) pixels of the grid;
    amodal -> (E, h, w, 3) image in [-1, 1].
    """
    if task == DEPTH:
        return (decoded[0].mean(axis=1) + 1.0) / 2.0
    if task == FLOW:
        su, sv = config.get("flow_scale", (75.0, 100.0))
        u = decoded[0].mean(axis=1) * su
        v = decoded[1].mean(axis=1) * sv
        return np.stack([u, v], axis=-1)
    return decoded[0].transpose(0, 2, 3, 1)


REDUCERS: dict[str, Callable] = {
    DEPTH: ensemble.ensemble_depth,
    FLOW: ensemble.ensemble_flow,
    AMODAL: ensemble.ensemble_amodal,
}
