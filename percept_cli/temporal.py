"""Temporal consistency for videos: per-frame affine alignment of depth, and the flicker metric.

Each frame's affine-invariant depth comes out normalised on its own (its nearest pixel 0, its farthest 1),
so a far object entering the view rescales the whole frame: that is most of the flicker users see.
`DepthAligner` maps each new frame onto the previous output with a least-squares scale and shift, so a
clip keeps the first frame's units; `flicker_error` measures what is left against exact ground truth.
`ClipRange` gives a clip one colour range, streaming; `DepthVideo` and `FlowVideo` are the depth and flow
tasks' per-video states (Task.video_state), the hook through which the run loop and `percept eval
--temporal` treat a video's frames, in order, without holding them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from percept_cli.metrics import fit_scale_shift
from percept_cli.tasks.base import VideoState, read_first


def fit_affine(src: np.ndarray, ref: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, float]:
    """Weighted least-squares (scale, shift) with scale * src + shift ~ ref over (H, W) maps."""
    s = src.reshape(-1).astype(np.float64)
    r = ref.reshape(-1).astype(np.float64)
    w = np.ones_like(s) if weight is None else weight.reshape(-1).astype(np.float64)
    ok = np.isfinite(s) & np.isfinite(r) & (w > 0)
    s, r, w = s[ok], r[ok], w[ok]
    if s.size < 2 or np.ptp(s) < 1e-9:
        return 1.0, 0.0
    sw = np.sqrt(w)
    a = np.stack([s * sw, sw], axis=1)  # (M, 2)
    (scale, shift), *_ = np.linalg.lstsq(a, r * sw, rcond=None)
    return float(scale), float(shift)


class DepthAligner:
    """Streaming alignment of per-frame depth (H, W) to the previous aligned frame.

    Weights favour confident pixels (1 / (uncertainty + eps)) when the ensemble gives an uncertainty.
    A non-positive or wild scale (a scene cut) restarts from the frame as predicted.
    """

    def __init__(self, max_ratio: float = 4.0) -> None:
        self.prev: np.ndarray | None = None
        self.max_ratio = max_ratio

    def __call__(self, depth: np.ndarray, uncertainty: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(aligned depth, uncertainty in the same units); the first frame passes through unchanged."""
        if self.prev is None or self.prev.shape != depth.shape:
            self.prev = depth.astype(np.float32)
            return self.prev, uncertainty
        weight = None if uncertainty is None else 1.0 / (uncertainty.astype(np.float64) + 1e-3)
        scale, shift = fit_affine(depth, self.prev, weight)
        if not (1.0 / self.max_ratio < scale < self.max_ratio):
            scale, shift = 1.0, 0.0  # no sensible mapping to the last frame: a cut, start again here
        self.prev = (scale * depth + shift).astype(np.float32)
        return self.prev, None if uncertainty is None else (uncertainty * scale).astype(np.float32)


def flicker_error(preds: np.ndarray, gts: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Frame-to-frame change of the predictions against that of the ground truth, relative to the mean depth.

    preds, gts: (N, H, W). The predictions are aligned to the ground truth with ONE scale and shift for the
    whole clip (a per-frame fit would hide exactly the rescaling that flickers); then
    mean_t mean_px |(p[t+1] - p[t]) - (g[t+1] - g[t])| / mean(g).
    """
    if preds.shape != gts.shape or preds.ndim != 3 or len(preds) < 2:
        raise ValueError(f"flicker_error: preds {preds.shape} and gts {gts.shape} must both be (N >= 2, H, W)")
    valid = np.ones(gts.shape, bool) if valid is None else valid
    scale, shift = fit_scale_shift(preds, gts, valid)
    p = scale * preds.astype(np.float64) + shift  # (N, H, W) in metres
    g = gts.astype(np.float64)
    both = valid[1:] & valid[:-1]  # (N-1, H, W)
    change = np.abs(np.diff(p, axis=0) - np.diff(g, axis=0))  # (N-1, H, W)
    return float(change[both].mean() / g[valid].mean())


# ------------------------------------------------------------------------------------------------ one colour range per clip


class ClipRange:
    """A clip-wide colour range (lo, hi) that only widens, from robust percentiles of each frame, streaming.

    The first frame sets it; a later frame widens it only when its own percentile passes the range by more
    than `slack` of the span (then with that much margin), so small jitter, and a few outlier pixels (they
    do not move a percentile), never change the colours of the other pixels.
    """

    def __init__(self, low: float | None = 1.0, high: float = 99.0, slack: float = 0.1, floor: float = 1e-6) -> None:
        self.low, self.high, self.slack, self.floor = low, high, slack, floor
        self.lo: float | None = None
        self.hi: float | None = None

    def update(self, values: np.ndarray) -> tuple[float, float]:
        """Take one frame's values (any shape; non-finite ignored); returns the range to draw it with."""
        v = np.asarray(values, np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            hi = float(np.percentile(v, self.high))
            lo = float(np.percentile(v, self.low)) if self.low is not None else 0.0
            if self.lo is None:
                self.lo, self.hi = lo, max(hi, lo + self.floor)
            else:
                margin = self.slack * (self.hi - self.lo)
                if hi > self.hi + margin:
                    self.hi = hi + margin
                if self.low is not None and lo < self.lo - margin:
                    self.lo = lo - margin
        if self.lo is None:
            return 0.0, 1.0
        return self.lo, self.hi

    def scale(self, values: np.ndarray) -> np.ndarray:
        """`values` mapped to [0, 1] by the current range (clipped where colours are drawn)."""
        lo, hi = (0.0, 1.0) if self.lo is None else (self.lo, self.hi)
        return (np.asarray(values, np.float32) - lo) / max(hi - lo, self.floor)


# ------------------------------------------------------------------------------------------------ per-video states of tasks


class DepthVideo(VideoState):
    """Depth in a video: each frame aligned (scale and shift) to the previous aligned frame unless --no-temporal,
    and its .mp4 frame coloured with one widen-only range for the clip."""

    def __init__(self, task, temporal: bool = True) -> None:
        super().__init__(task, temporal)
        self.aligner = DepthAligner() if temporal else None
        self.range = ClipRange(low=1.0, high=99.0, slack=0.1)

    def result(self, result):
        if self.aligner is None:
            return result
        depth, unc = self.aligner(result.depth, result.uncertainty)
        return replace(result, depth=depth, uncertainty=unc)

    def visualise(self, result, item):
        return self.draw(result.depth)

    def draw(self, depth: np.ndarray) -> np.ndarray:
        from percept_cli.writers import colorize_depth

        self.range.update(depth)
        colormap = getattr(getattr(self.task, "options", None), "colormap", "inferno")  # depth's --colormap
        return colorize_depth(np.clip(self.range.scale(depth), 0.0, 1.0), colormap)

    def skipped(self, outputs, item):
        """A frame written by an earlier run: its depth (the .npy, else the 16-bit PNG) continues the clip."""
        from percept_cli import writers as W

        depth = read_first(outputs, ((".depth.npy", lambda p: np.load(p).astype(np.float32)),
                                      (".depth.png", W.read_png16)))
        if depth is None or depth.ndim != 2:
            return super().skipped(outputs, item)
        if self.aligner is not None:
            self.aligner.prev = depth
        return self.draw(depth)


class FlowVideo(VideoState):
    """Flow in a video: the .mp4 colours use one maximum speed for the clip, the 99th percentile of the speeds
    (widened only when the motion grows by more than 20 %), so an outlier pixel cannot wash out a frame."""

    def __init__(self, task, temporal: bool = True) -> None:
        super().__init__(task, temporal)
        self.range = ClipRange(low=None, high=99.0, slack=0.2, floor=1.0)  # at least 1 px: a still clip stays pale

    def visualise(self, result, item):
        return self.draw(result.flow)

    def draw(self, flow: np.ndarray) -> np.ndarray:
        from percept_cli.writers import flow_to_color

        speed = np.hypot(flow[..., 0], flow[..., 1])
        _, top = self.range.update(speed[speed < 1e9])  # Middlebury's unknown flow does not count
        return flow_to_color(flow, max_flow=top)

    def skipped(self, outputs, item):
        from percept_cli import writers as W

        flow = read_first(outputs, ((".flow.npy", np.load), (".flow.flo", W.read_flo)))
        if flow is None or flow.ndim != 3 or flow.shape[-1] != 2:
            return super().skipped(outputs, item)
        return self.draw(flow.astype(np.float32))
