"""Load a model from any supported format: our own safetensors folder, or the official `.pt` layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelSource:
    """Where a model's files are on disk, once resolved (by hub.resolve_model) and verified."""

    name: str  # what the user asked for: a lock name, a folder, or hf://REPO@COMMIT/PATH
    layout: str  # "percept" (our ModelMixin folder) or "official" (the paper's .pt)
    root: Path | None = None  # our layout: folder with config.json + diffusion_pytorch_model.safetensors
    weights: Path | None = None  # official layout: the .pt state dict
    vae: Path | None = None  # diffusers AutoencoderKL folder; None = pixel space
    scheduler: Path | None = None  # folder holding scheduler_config.json
    config: dict[str, Any] = field(default_factory=dict)  # percept.json: what the weights cannot say
