"""Reference predictors for evaluation tables: what a model must beat to be worth running."""

from __future__ import annotations

import cv2
import numpy as np


def ramp_depth(h: int, w: int) -> np.ndarray:
    """Affine-invariant depth that grows from the bottom row (near, 0) to the top row (far, 1)."""
    ramp = np.linspace(1.0, 0.0, h, dtype=np.float32) if h > 1 else np.zeros(1, np.float32)  # (H,) top = 1
    return np.repeat(ramp[:, None], w, axis=1)  # (H, W)


def zero_flow(h: int, w: int) -> np.ndarray:
    """No motion anywhere."""
    return np.zeros((h, w, 2), np.float32)  # (H, W, 2)


def dis_flow(rgb1: np.ndarray, rgb2: np.ndarray) -> np.ndarray:
    """OpenCV's DIS optical flow (medium preset) on grayscale frames, forward 1 -> 2 in pixels."""
    if rgb1.shape != rgb2.shape or rgb1.ndim != 3 or rgb1.shape[2] != 3:
        raise ValueError(f"dis_flow: frames must be two (H, W, 3) arrays of one shape, "
                         f"got {rgb1.shape} and {rgb2.shape}")
    g1 = cv2.cvtColor(np.ascontiguousarray(rgb1, np.uint8), cv2.COLOR_RGB2GRAY)  # (H, W)
    g2 = cv2.cvtColor(np.ascontiguousarray(rgb2, np.uint8), cv2.COLOR_RGB2GRAY)  # (H, W)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(g1, g2, None).astype(np.float32)  # (H, W, 2)


def visible_as_amodal(visible_mask: np.ndarray) -> np.ndarray:
    """The visible part taken as the whole object: the amodal baseline that ignores occlusion."""
    return visible_mask.astype(bool).copy()  # (H, W)
