"""DDIM sampling steps (Song et al. 2021), numerically the same as diffusers' DDIMScheduler.

Prediction needs only `set_timesteps` and `step`; importing diffusers for them costs more start-up
than torch itself (it pulls in torch._dynamo), so the predict path uses this ~100-line twin.
tests/test_ddim.py holds it equal to diffusers' DDIMScheduler for every schedule, spacing and
prediction type percept offers. Training keeps using diffusers directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class DDIMConfig:
    """The DDIMScheduler settings percept reads (diffusers' names and defaults)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Any = None
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "DDIMConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})


def _betas(c: DDIMConfig) -> torch.Tensor:
    """(T,) float32 betas, built as diffusers builds them."""
    t = c.num_train_timesteps
    if c.trained_betas is not None:
        return torch.tensor(c.trained_betas, dtype=torch.float32)
    if c.beta_schedule == "linear":
        return torch.linspace(c.beta_start, c.beta_end, t, dtype=torch.float32)
    if c.beta_schedule == "scaled_linear":
        return torch.linspace(c.beta_start**0.5, c.beta_end**0.5, t, dtype=torch.float32) ** 2
    if c.beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine, betas capped at 0.999
        def alpha_bar(x: float) -> float:
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - alpha_bar((i + 1) / t) / alpha_bar(i / t), 0.999) for i in range(t)],
                            dtype=torch.float32)
    raise ValueError(f"beta_schedule {c.beta_schedule!r} is not linear, scaled_linear or squaredcos_cap_v2")


def _zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so the last timestep is pure noise (Lin et al. 2024, algorithm 1)."""
    sqrt_ab = (1.0 - betas).cumprod(dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))  # diffusers' order of operations
    ab = sqrt_ab**2
    alphas = torch.cat([ab[0:1], ab[1:] / ab[:-1]])
    return 1 - alphas


class DDIM:
    """Deterministic (eta = 0) DDIM over a trained noise schedule: set_timesteps, then step per timestep."""

    def __init__(self, **config: Any) -> None:
        c = DDIMConfig.from_dict(config)
        if c.thresholding:
            raise ValueError("thresholding (dynamic thresholding of x0) is not supported by percept's DDIM")
        if c.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"prediction_type {c.prediction_type!r} is not epsilon, sample or v_prediction")
        if c.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ValueError(f"timestep_spacing {c.timestep_spacing!r} is not leading, trailing or linspace")
        self.config = SimpleNamespace(**{f.name: getattr(c, f.name) for f in fields(c)})
        betas = _betas(c)
        if c.rescale_betas_zero_snr:
            betas = _zero_terminal_snr(betas)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # (T,)
        self.final_alpha_cumprod = torch.tensor(1.0) if c.set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(0, c.num_train_timesteps)[::-1].copy().astype(np.int64))

    def set_timesteps(self, steps: int, device: torch.device | str | None = None) -> None:
        """Place `steps` timesteps over the trained schedule, highest first."""
        c, t = self.config, self.config.num_train_timesteps
        if steps > t:
            raise ValueError(f"{steps} steps exceed the {t} trained timesteps")
        self.num_inference_steps = steps
        if c.timestep_spacing == "linspace":
            ts = np.linspace(0, t - 1, steps).round()[::-1].copy().astype(np.int64)
        elif c.timestep_spacing == "leading":
            ts = (np.arange(0, steps) * (t // steps)).round()[::-1].copy().astype(np.int64) + c.steps_offset
        else:  # trailing
            ts = np.round(np.arange(t, 0, -t / steps)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(ts).to(device)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             eta: float = 0.0) -> SimpleNamespace:
        """One DDIM update x_t -> x_{t-1}; returns .prev_sample and .pred_original_sample."""
        if eta != 0.0:
            raise ValueError("percept's DDIM is deterministic: eta must be 0")
        c = self.config
        prev_t = timestep - c.num_train_timesteps // self.num_inference_steps
        a_t = self.alphas_cumprod[timestep]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = 1 - a_t
        if c.prediction_type == "epsilon":
            x0 = (sample - b_t ** (0.5) * model_output) / a_t ** (0.5)
            eps = model_output
        elif c.prediction_type == "sample":
            x0 = model_output
            eps = (sample - a_t ** (0.5) * x0) / b_t ** (0.5)
        else:  # v_prediction
            x0 = (a_t**0.5) * sample - (b_t**0.5) * model_output
            eps = (a_t**0.5) * model_output + (b_t**0.5) * sample
        if c.clip_sample:
            x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        direction = (1 - a_prev) ** (0.5) * eps
        prev = a_prev ** (0.5) * x0 + direction
        return SimpleNamespace(prev_sample=prev, pred_original_sample=x0)
