"""Evaluation metrics, pure numpy: AbsRel, delta1 and edge error (gradient error at depth edges) for
affine-invariant depth, EPE for flow, IoU for masks."""

from __future__ import annotations

import numpy as np


def _check_same(name: str, pred: np.ndarray, gt: np.ndarray) -> None:
    """Shape contract shared by every metric."""
    if pred.shape != gt.shape:
        raise ValueError(f"{name}: pred has shape {pred.shape} but gt has {gt.shape}; they must match")


def fit_scale_shift(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Least-squares (scale, shift) with scale * pred + shift ~ gt over the valid pixels."""
    _check_same("fit_scale_shift", pred, gt)
    _check_same("fit_scale_shift valid", valid, gt)
    p = pred[valid].astype(np.float64)  # (M,)
    g = gt[valid].astype(np.float64)  # (M,)
    if p.size < 2:
        raise ValueError(f"fit_scale_shift: {p.size} valid pixels; a scale and shift need at least 2")
    a = np.stack([p, np.ones_like(p)], axis=1)  # (M, 2)
    (scale, shift), *_ = np.linalg.lstsq(a, g, rcond=None)
    return float(scale), float(shift)


def depth_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, min_depth: float = 1e-3) -> dict[str, float]:
    """AbsRel and delta1 of an affine-invariant depth prediction, aligned to gt by scale and shift."""
    _check_same("depth_metrics", pred, gt)
    # Relative errors divide by gt, so pixels without a positive finite gt cannot count.
    valid = valid & np.isfinite(gt) & (gt > 0) & np.isfinite(pred)
    scale, shift = fit_scale_shift(pred, gt, valid)
    p = np.maximum(scale * pred[valid].astype(np.float64) + shift, min_depth)  # (M,) aligned, kept positive
    g = gt[valid].astype(np.float64)  # (M,)
    return {
        "abs_rel": float(np.mean(np.abs(p - g) / g)),
        "delta1": float(np.mean(np.maximum(p / g, g / p) < 1.25)),
    }


# Depth edges for edge_error: pixels where depth changes by more than this fraction of itself per pixel.
EDGE_THRESHOLD = 0.05


def edge_error(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None,
               threshold: float = EDGE_THRESHOLD) -> float:
    """Gradient error at depth edges: how sharp and how right a prediction's depth discontinuities are.

    pred is aligned to gt by least-squares scale and shift over the valid pixels (as for AbsRel), then
    both are differentiated with central differences (np.gradient, per pixel). Edge pixels are those
    where the ground truth's relative gradient |grad gt| / gt exceeds `threshold` (0.05: a 5% depth
    jump per pixel, which smooth surfaces seen at a slant rarely reach and occlusion boundaries always
    do, at any resolution). The error is the mean over edge pixels of |grad pred - grad gt| / gt, a
    relative gradient error: 0 for an exact (or affinely exact) prediction, about the edge's relative
    jump for a prediction blurred flat across it. NaN when the image has no edge pixels.
    """
    _check_same("edge_error", pred, gt)
    if gt.ndim != 2:
        raise ValueError(f"edge_error: depth must be (H, W), got {gt.shape}")
    valid = np.ones(gt.shape, bool) if valid is None else valid
    valid = valid & np.isfinite(gt) & (gt > 0) & np.isfinite(pred)
    scale, shift = fit_scale_shift(pred, gt, valid)
    p = scale * pred.astype(np.float64) + shift
    g = np.where(valid, gt, 0.0).astype(np.float64)
    gy, gx = np.gradient(g)  # (H, W) each, depth units per pixel
    py, px = np.gradient(np.where(valid, p, 0.0))
    # a pixel counts where its neighbours are valid too, so the gradients see no invalid values
    near = valid.copy()
    near[1:] &= valid[:-1]
    near[:-1] &= valid[1:]
    near[:, 1:] &= valid[:, :-1]
    near[:, :-1] &= valid[:, 1:]
    safe = np.where(near, g, 1.0)
    edges = near & (np.hypot(gx, gy) / safe > threshold)  # (H, W)
    if not edges.any():
        return float("nan")
    err = np.hypot(px - gx, py - gy) / safe
    return float(err[edges].mean())


def flow_epe(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean end-point error in pixels over valid pixels (all pixels with finite gt when valid is None)."""
    _check_same("flow_epe", pred, gt)
    if gt.ndim != 3 or gt.shape[2] != 2:
        raise ValueError(f"flow_epe: flow must be (H, W, 2), got {gt.shape}")
    if valid is None:
        valid = np.isfinite(gt).all(axis=2)
    err = np.linalg.norm(pred.astype(np.float64) - gt, axis=2)  # (H, W)
    if not valid.any():
        raise ValueError("flow_epe: no valid pixels to average over")
    return float(err[valid].mean())


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two masks; two empty masks agree perfectly (1.0)."""
    _check_same("mask_iou", pred, gt)
    p, g = pred.astype(bool), gt.astype(bool)
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def aggregate(results: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over a list of per-sample dicts (a key averages over the dicts that have it)."""
    keys = dict.fromkeys(k for r in results for k in r)
    return {k: float(np.mean([r[k] for r in results if k in r])) for k in keys}
