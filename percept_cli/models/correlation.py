"""Motion features for flow: a local cost volume between the two frames (as in PWC-Net and RAFT).

A pixel-space DiT with patch 4 sees each 4x4 block of both frames through one linear projection, so
a displacement of a pixel or two is hard to read from its tokens. This module gives the patch
embedding, per pixel, how well frame 1 matches frame 2 at every offset within `radius` on a pyramid
of `levels` (offsets up to radius * 2**(levels-1) pixels), compressed to a few channels. It is an
option of percept's own models (off in the official layout) and is zeroed for labels other than flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from percept_cli.models.fastpath import ReuseForEqualInput


def local_correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """a, b (N, C, H, W) -> (N, (2r+1)^2, H, W): mean over C of a(x) * b(x + d), offsets d row-major.

    Per row offset, one matmul scores every pixel of a row against the whole shifted row of b and
    the band |dx| <= r is read off its diagonals: ~W/(2r+1) times the FLOPs of the band alone, but
    matmuls run far faster than per-offset elementwise products on a CPU.
    """
    n, c, h, w = a.shape
    k = 2 * radius + 1
    rows_a = a.permute(0, 2, 3, 1)  # (N, H, W, C)
    bp = F.pad(b, (radius,) * 4).permute(0, 2, 1, 3)  # (N, H+2r, C, W+2r)
    costs = []
    for dy in range(k):
        scores = rows_a @ bp[:, dy : dy + h]  # (N, H, W, W+2r): pixel x against shifted pixel x'
        sn, sh, sx, _ = scores.stride()
        costs.append(scores.as_strided((n, h, w, k), (sn, sh, sx + 1, 1)))  # (N, H, W, k): [x, dx] = x' - x
    return torch.cat(costs, -1).permute(0, 3, 1, 2) / c  # (N, k*k, H, W)


def patch_descriptors(frames: torch.Tensor, size: int = 3) -> torch.Tensor:
    """(N, C, H, W) -> (N, C*size^2, H, W): each pixel's size x size neighbourhood, zero-mean, unit norm.

    Dot products of these are normalised cross-correlations of image patches: invariant to the
    brightness and contrast of a patch, in [-1, 1].
    """
    n, c, h, w = frames.shape
    padded = F.pad(frames, (size // 2,) * 4, mode="replicate")
    # stacked shifted views (F.unfold's im2col is ~10x slower here on a CPU)
    patches = torch.cat([padded[..., dy : dy + h, dx : dx + w] for dy in range(size) for dx in range(size)], 1)
    patches = patches - patches.mean(1, keepdim=True)
    return F.normalize(patches, dim=1, eps=1e-3)  # flat patches -> ~0 vectors, so their scores ~0


class MotionEncoder(nn.Module):
    """[frame 1, frame 2] (N, 2C, H, W) -> motion features (N, out_ch, H, W).

    The cost volume is fixed (normalised cross-correlation of 3x3 patches over a pyramid), so it
    costs no backward pass; a learned 1x1 conv compresses it for the patch embedding. Sampling calls
    the model once per denoising step with the same frames, so outside autograd the last cost volume
    is kept and reused while the frames are exactly equal (fastpath.ReuseForEqualInput; the volume
    costs ~15% of a tiny forward on a CPU).
    """

    def __init__(self, out_ch: int, radius: int = 2, levels: int = 3):
        super().__init__()
        self.radius, self.levels = radius, levels
        self.head = nn.Conv2d(levels * (2 * radius + 1) ** 2, out_ch, 1)  # cost volume -> out_ch
        self.reuse = ReuseForEqualInput()  # sampling passes the same frames every step

    @torch.no_grad()
    def cost_volume(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 2C, H, W) -> (N, levels*(2r+1)^2, H, W): frame 1 against frame 2 at every offset, per level."""
        c = frames.shape[1] // 2
        h, w = frames.shape[-2:]
        # luma only: 9-dim descriptors, a third of the cost of colour ones
        a, b = frames[:, :c].float().mean(1, keepdim=True), frames[:, c:].float().mean(1, keepdim=True)
        costs = []
        with torch.autocast(frames.device.type, enabled=False):  # fp32 whatever the caller's autocast
            for level in range(self.levels):
                da, db = patch_descriptors(a), patch_descriptors(b)  # (N, 9, h_l, w_l) unit vectors
                cost = local_correlation(da, db, self.radius) * da.shape[1]  # mean -> dot product: NCC
                costs.append(cost if level == 0 else F.interpolate(cost, size=(h, w), mode="bilinear", align_corners=False))
                if level + 1 < self.levels:
                    a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        return torch.cat(costs, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        cost = self.reuse(self.cost_volume, frames)  # (N, levels*(2r+1)^2, H, W), kept while frames are equal
        return self.head(cost.to(self.head.weight.dtype))  # (N, out_ch, H, W)
