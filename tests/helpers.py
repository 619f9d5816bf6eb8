"""Tiny seeded models for tests: built in the test, never downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from percept_cli.checkpoints import save_percept
from percept_cli.models.dit import PerceptDiT, dit_config
from percept_cli.schedules import SD2_SCHEDULER


def tiny_dit(num_experts: int = 0, seed: int = 0, norm_topk_prob: bool = True, **kw) -> PerceptDiT:
    """A 2-block pixel-space DiT with random (non-zero) weights, so outputs depend on inputs."""
    torch.manual_seed(seed)
    cfg = dict(dit_config("XXS", patch_size=4, num_experts=num_experts), depth=2, sample_size=8, in_channels=3,
               cond_channels=6, norm_topk_prob=norm_topk_prob)
    cfg.update(kw)
    model = PerceptDiT(**cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.05)
    return model.eval()


def tiny_model_folder(folder: Path, num_experts: int = 2, resolution: int = 32, **config) -> Path:
    """Save a tiny model in our layout, ready for --model FOLDER."""
    pipeline = dict(resolution=resolution, steps=3, ensemble=1, tasks=["depth", "flow", "amodal"], flow_scale=[8.0, 8.0],
                    batch_size=8)
    pipeline.update(config)
    return save_percept(folder, tiny_dit(num_experts), SD2_SCHEDULER, pipeline)
