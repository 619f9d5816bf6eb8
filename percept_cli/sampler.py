"""The DDIM loop over batched latents; knows the scheduler and the model call, not the task."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch


def initial_noise(shape: tuple[int, int, int], members: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(members, C, h, w): member k is randn((1, C, h, w)) from a CPU generator seeded with seed + k.

    Drawing on the CPU and moving afterwards makes results independent of the device's RNG and of
    the batch size; with one member it equals the official script's noise for that seed.
    """
    noise = [torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(seed + k)) for k in range(members)]
    return torch.cat(noise).to(device)


@torch.no_grad()
def ddim_sample(
    model: Callable[..., torch.Tensor],
    cond: torch.Tensor,
    noise: torch.Tensor,
    labels: torch.Tensor,
    scheduler,
    steps: int,
    *,
    eta: float = 0.0,
    autocast_dtype: torch.dtype | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Denoise `noise` (B, C, h, w) given `cond` (B, Cc, h, w) and labels (B,) -> latents (B, C, h, w).

    The model sees cat[cond, z] along channels (the official order) and the raw DDPM timestep;
    its first C output channels go to scheduler.step (the rest are learned variances).
    Latents and the scheduler math stay fp32; only the model call runs under autocast.
    """
    scheduler.set_timesteps(steps, device=noise.device)
    z = noise.float()
    c = noise.shape[1]
    amp = torch.autocast(noise.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for i, t in enumerate(scheduler.timesteps):
        with amp:
            out = model(torch.cat([cond, z], dim=1), t.expand(z.shape[0]), labels)  # (B, C[*2], h, w)
        out = out[:, :c].float()
        if on_step is not None:
            on_step(i, out)
        z = scheduler.step(out, t, z, eta=eta).prev_sample  # (B, C, h, w)
    return z
