"""Temporal consistency for videos: per-frame affine alignment of depth, and the flicker metric.

Each frame's affine-invariant depth comes out normalised on its own (its nearest pixel 0, its farthest 1),
so a far object entering the view rescales the whole frame: that is most of the flicker users see.
`DepthAligner` maps each new frame onto the previous output with a least-squares scale and shift, so a
clip keeps the first frame's units; `flicker_error` measures what is left against exact ground truth.
"""

from __future__ import annotations

import numpy as np

from percept_cli.metrics import fit_scale_shift


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
