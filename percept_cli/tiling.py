"""Tiling (`--fit tile`) for large frames: the whole image is predicted once at the model's resolution for the
layout (letterboxed: pad), then overlapping square crops are predicted for detail; each crop's
affine-invariant depth is mapped onto the layout by a scale and shift fitted over its box, the crops
are blended with weights that fall to zero at their edges, and the layout's coarse depth is kept
with the crops' fine detail on top (merge_depth_uncertainty). docs/large-images.md has the measurements.
"""

from __future__ import annotations

import numpy as np

from percept_cli.temporal import fit_affine

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) in input pixels, end exclusive


def _starts(length: int, side: int, step: int) -> list[int]:
    """Evenly spaced crop origins from 0 to length - side, at most `step` apart."""
    if length <= side:
        return [0]
    n = int(np.ceil((length - side) / step)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, length - side, n)})


def plan_tiles(h: int, w: int, tiles: int = 2, overlap: float = 0.25) -> list[Box]:
    """Square crops of side min(h, w) / tiles (rounded), overlapping by `overlap`, covering (h, w)."""
    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    side = max(1, int(np.ceil(min(h, w) / (tiles - (tiles - 1) * overlap))))  # `tiles` crops span the short side
    step = max(1, int(np.ceil(side * (1.0 - overlap))))
    return [(y, y + side, x, x + side) for y in _starts(h, side, step) for x in _starts(w, side, step)]


def feather(side_h: int, side_w: int, ramp: float = 0.25) -> np.ndarray:
    """(h, w) blending weight: 1 inside, falling linearly to a small floor over `ramp` of each edge."""
    def ramp1d(n: int) -> np.ndarray:
        r = max(1.0, ramp * n)
        i = np.arange(n, dtype=np.float64) + 0.5
        return np.clip(np.minimum(i, n - i) / r, 1e-3, 1.0)

    return np.outer(ramp1d(side_h), ramp1d(side_w))


def merge_depth_tiles(layout: np.ndarray, tiles: list[tuple[Box, np.ndarray]], resolution: int | None = None,
                      ramp: float = 0.25) -> np.ndarray:
    """Blend crop predictions onto the whole-image `layout` (H, W); returns (H, W) depth in [0, 1], 0 = near.

    See merge_depth_uncertainty (this is it without uncertainty maps).
    """
    return merge_depth_uncertainty(layout, None, [(box, d, None) for box, d in tiles], resolution, ramp)[0]


def lowpass(values: np.ndarray, short: int) -> np.ndarray:
    """(H, W) -> (H, W): `values` through a grid with `short` pixels across the short side (area down, linear up)."""
    import cv2

    h, w = values.shape
    s = min(1.0, short / min(h, w))
    small = cv2.resize(values.astype(np.float32), (max(1, round(w * s)), max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float64)


def merge_depth_uncertainty(layout: np.ndarray, layout_unc: np.ndarray | None,
                            tiles: list[tuple[Box, np.ndarray, np.ndarray | None]], resolution: int | None = None,
                            ramp: float = 0.25) -> tuple[np.ndarray, np.ndarray | None]:
    """Blend crop predictions onto the whole-image `layout` (H, W): (depth (H, W) in [0, 1], uncertainty | None).

    1. Each crop (in its own affine-invariant units) is fitted by least-squares scale and shift to the
       layout over its box; a crop whose depth order disagrees with the layout's (scale <= 0) is dropped.
    2. The fitted crops are averaged with `feather` weights (pixels no crop covers keep the layout).
    3. With `resolution` (the model's grid), the blend keeps only its fine detail: the result is the
       layout's coarse part plus the blend's fine part, split by `lowpass` at half the model's grid
       across the short side. The layout saw the whole image at once, so its coarse depth is
       consistent everywhere; the crops are only trusted for what the layout could not resolve.
       (benchmarks/tiling.py measured this against chaining crops to their neighbours, which drifts,
       and against the plain blend of step 2: docs/large-images.md.)
    4. Normalised to [0, 1].

    A crop's uncertainty (in its depth units) is multiplied by its fitted scale and blended with the
    same weights; pixels no crop covers keep the layout's. It ends in the units of the returned
    depth. None unless the layout and every crop have one.
    """
    h, w = layout.shape
    layout = layout.astype(np.float64)
    with_unc = layout_unc is not None and all(u is not None for _, _, u in tiles)
    acc = np.zeros((h, w), np.float64)
    wsum = np.zeros((h, w), np.float64)
    uacc = np.zeros((h, w), np.float64) if with_unc else None
    for (y0, y1, x0, x1), depth, unc in tiles:
        if depth.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"tile {(y0, y1, x0, x1)} has depth {depth.shape}, expected {(y1 - y0, x1 - x0)}")
        scale, shift = fit_affine(depth, layout[y0:y1, x0:x1])
        if scale <= 0:  # a crop that disagrees with the depth order around it (e.g. a blank wall): skip it
            continue
        wt = feather(*depth.shape, ramp=ramp)
        acc[y0:y1, x0:x1] += wt * (scale * depth + shift)
        wsum[y0:y1, x0:x1] += wt
        if with_unc:
            uacc[y0:y1, x0:x1] += wt * scale * unc
    blend = np.where(wsum > 0, acc / np.maximum(wsum, 1e-12), layout)
    out = blend if resolution is None else lowpass(layout, resolution // 2) + blend - lowpass(blend, resolution // 2)
    lo, hi = out.min(), out.max()
    span = max(hi - lo, 1e-6)
    merged = ((out - lo) / span).astype(np.float32)
    if not with_unc:
        return merged, None
    unc = np.where(wsum > 0, uacc / np.maximum(wsum, 1e-12), layout_unc) / span
    return merged, unc.astype(np.float32)
