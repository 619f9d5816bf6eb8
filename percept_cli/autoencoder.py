"""Image <-> model space: Stable Diffusion's VAE (diffusers AutoencoderKL) or identity (pixel space)."""

from __future__ import annotations

from pathlib import Path

import torch


class PixelSpace:
    """Identity autoencoder: the model works on [-1, 1] pixels directly."""

    factor = 1
    channels = 3

    def to(self, device: torch.device | str) -> "PixelSpace":
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images  # (B, 3, H, W)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents  # (B, 3, H, W)


class VAE:
    """SD VAE: encode to the posterior mean times the scaling factor (as the official code), decode back."""

    def __init__(self, vae):
        self.vae = vae.eval().requires_grad_(False)
        self.scale = float(vae.config.scaling_factor)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = int(vae.config.latent_channels)

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype = torch.float32) -> "VAE":
        """A diffusers AutoencoderKL folder: safetensors only, keys and shapes checked; ModelError naming it otherwise."""
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

        from percept_cli.checkpoints import load_pretrained

        return cls(load_pretrained(AutoencoderKL, folder, "VAE", dtype))

    def to(self, device: torch.device | str) -> "VAE":
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8); the posterior mean, not a sample."""
        moments = self.vae.encoder(images.to(self.vae.dtype))
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        return moments[:, : self.channels].float() * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) -> (B, 3, 8h, 8w), not clamped."""
        return self.vae.decode((latents / self.scale).to(self.vae.dtype)).sample.float()
