"""Synthetic scenes with exact ground truth, and readers for the real evaluation datasets."""

from percept_cli.data.datasets import (
    AmodalSample,
    DepthSample,
    FlowSample,
    detect_dataset,
    read_flo,
    read_flyingchairs,
    read_hypersim,
    read_pix2gestalt,
    synthetic_samples,
)
from percept_cli.data.scenes import Scene, render_scene

__all__ = [
    "AmodalSample",
    "DepthSample",
    "FlowSample",
    "Scene",
    "detect_dataset",
    "read_flo",
    "read_flyingchairs",
    "read_hypersim",
    "read_pix2gestalt",
    "render_scene",
    "synthetic_samples",
]
