"""Diffusion transformer with adaLN-Zero, task embedding and an optional mixture-of-experts MLP.

Reads top-down: embedders, block, final layer, the model, then presets as data. Parameter names
match the paper's official layout, so `checkpoints.load_official` maps its state dict 1:1.
The model knows nothing of noise schedules or tasks beyond integer labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from percept_cli.models.config import ConfigModule
from percept_cli.models.correlation import MotionEncoder
from percept_cli.models.fastpath import Linear, attention
from percept_cli.models.moe import MoE, Mlp


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """2-D sin-cos table (T, dim), row-major tokens; the first half encodes the column (x) index."""
    assert dim % 4 == 0, "hidden size must be divisible by 4 for 2-D sin-cos embeddings"
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))  # (D/4,)
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
    def enc(pos):
        out = pos.reshape(-1)[:, None] * omega[None]  # (T, D/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (T, D/2)
    return np.concatenate([enc(cols), enc(rows)], axis=1).astype(np.float32)  # (T, D)


class TimestepEmbedder(nn.Module):
    """Scalar DDPM timestep -> vector: cos-first sinusoid, then a two-layer MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, hidden), nn.SiLU(), Linear(hidden, hidden))

    @staticmethod
    def frequency_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]  # (N, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.frequency_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)  # (N, D)


class LabelEmbedder(nn.Module):
    """Task / class label -> vector by table lookup (row = label - offset); no label dropout here."""

    def __init__(self, num_labels: int, hidden: int, offset: int):
        super().__init__()
        self.offset = offset
        # initialised in PerceptDiT.initialize_weights (_weight skips nn.Embedding's own normal_, which
        # on the meta device imports torch._dynamo: ~0.8 s of start-up when a model is loaded)
        self.embedding_table = nn.Embedding(num_labels, hidden, _weight=torch.empty(num_labels, hidden))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y.long() - self.offset)  # (N, D)


class PatchEmbed(nn.Module):
    """Patchify conv, either shared by all labels or one conv per task label (official routing)."""

    def __init__(self, in_ch: int, hidden: int, patch: int, routed_labels: tuple[int, ...]):
        super().__init__()
        self.routed_labels = tuple(routed_labels)
        if self.routed_labels:
            # Official names: conv_in_1 serves routed_labels[0], conv_in_2 the next, ...
            self.proj = nn.ModuleDict(
                {f"conv_in_{i + 1}": nn.Conv2d(in_ch, hidden, patch, stride=patch) for i in range(len(routed_labels))}
            )
        else:
            self.proj = nn.Conv2d(in_ch, hidden, patch, stride=patch)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.routed_labels:
            return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)
        out = None
        for i, label in enumerate(self.routed_labels):
            sel = (y == label).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            tokens = self.proj[f"conv_in_{i + 1}"](x.index_select(0, sel)).flatten(2).transpose(1, 2)  # (n, T, D)
            if out is None:
                out = tokens.new_zeros((x.shape[0],) + tokens.shape[1:])
            out = out.index_copy(0, sel, tokens)
        if out is None:  # no known label at all: zeros, as the official layout does
            conv = self.proj["conv_in_1"]
            h, w = x.shape[-2] // conv.stride[0], x.shape[-1] // conv.stride[1]
            out = x.new_zeros(x.shape[0], h * w, conv.out_channels)
        return out


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv (timm layout), via scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        assert dim % num_heads == 0, f"hidden size {dim} must be divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv = Linear(dim, dim * 3)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (N, H, T, d/H) each
        x = attention(q, k, v)  # scaled_dot_product_attention (fastpath: a CPU bf16 route)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning; the MLP is dense or a mixture of experts."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, num_experts: int, top_k: int, norm_topk_prob: bool):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        if num_experts:
            self.moe = MoE(dim, hidden, num_experts, top_k, norm_topk_prob)
        else:
            self.mlp = Mlp(dim, hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        logits = None
        if hasattr(self, "moe"):
            h, logits = self.moe(h)
        else:
            h = self.mlp(h)
        return x + gate_mlp.unsqueeze(1) * h, logits


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_ch: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(dim, patch * patch * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C)


@dataclass
class DiTOutput:
    sample: torch.Tensor  # (N, out_channels, H, W)
    router_logits: list[torch.Tensor]  # one (N*T, E) per MoE block; empty for dense models


class PerceptDiT(ConfigModule):
    """DiT over channel-concatenated [condition, noisy target]; predicts the target's channels (+ sigma).

    Saved as a diffusers ModelMixin folder (config.json = these arguments, safetensors weights)."""

    def __init__(
        self,
        sample_size: int = 32,  # grid side (in pixels or latents) of the stored position table
        patch_size: int = 2,
        in_channels: int = 4,  # channels of the noisy target
        cond_channels: int = 8,  # channels concatenated before it (rgb + prompt)
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_experts: int = 0,  # 0 = dense MLP
        top_k: int = 2,
        norm_topk_prob: bool = True,
        num_labels: int = 5,
        label_offset: int = 1000,
        routed_labels: tuple[int, ...] = (),  # one input conv per label (official) or () = shared conv
        learn_sigma: bool = True,
        motion_channels: int = 0,  # > 0: flow labels also see a correlation of their two frames (percept's option)
        motion_radius: int = 2,
        motion_levels: int = 3,
        motion_labels: tuple[int, ...] = (1002, 1003),
    ):
        super().__init__()
        self.register_config(locals())
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.motion = MotionEncoder(motion_channels, motion_radius, motion_levels) if motion_channels else None
        in_all = in_channels + cond_channels + motion_channels
        self.x_embedder = PatchEmbed(in_all, hidden_size, patch_size, tuple(routed_labels))
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_labels, hidden_size, label_offset)
        # Saved with the weights (the official file stores its table); rebuilt for other grids.
        table = torch.from_numpy(sincos_pos_embed(hidden_size, sample_size, sample_size))
        self.pos_embed = nn.Parameter(table[None], requires_grad=False)  # (1, T, D)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, num_experts, top_k, norm_topk_prob) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        if self.final_layer.linear.weight.device.type != "meta":  # on the meta device (loading) weights come from a file
            self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears, small embeddings, zeroed adaLN and output (identity blocks)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        convs = self.x_embedder.proj.values() if isinstance(self.x_embedder.proj, nn.ModuleDict) else [self.x_embedder.proj]
        for conv in convs:
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def position_table(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The stored table when the grid matches it, else a sin-cos table for this grid."""
        side = self.config.sample_size
        if (grid_h, grid_w) == (side, side):
            return self.pos_embed
        key = (grid_h, grid_w)
        if key not in self._pos_cache:
            self._pos_cache[key] = torch.from_numpy(sincos_pos_embed(self.config.hidden_size, grid_h, grid_w))[None]
        return self._pos_cache[key].to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    def unpatchify(self, x: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        p, c = self.config.patch_size, self.out_channels
        x = x.reshape(x.shape[0], grid_h, grid_w, p, p, c)  # last dim ordered (p, q, C)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, grid_h * p, grid_w * p)  # (N, C, H, W)

    def motion_features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, motion_channels, H, W): motion features of the two condition frames for flow labels, else 0."""
        is_flow = torch.zeros_like(y, dtype=torch.bool)
        for label in self.config.motion_labels:
            is_flow |= y == label
        if x.is_cuda:  # all rows, masked: a data-dependent index would make the CPU wait for the GPU
            frames = x[:, : self.config.cond_channels]
            return self.motion(frames).to(x.dtype) * is_flow.view(-1, 1, 1, 1)
        sel = is_flow.nonzero().squeeze(1)
        out = x.new_zeros((x.shape[0], self.config.motion_channels) + x.shape[-2:])
        if sel.numel():
            frames = x.index_select(0, sel)[:, : self.config.cond_channels]  # (n, 2C, H, W): frame 1, frame 2
            out = out.index_copy(0, sel, self.motion(frames).to(out.dtype))
        return out

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, return_dict: bool = False):
        """x (N, cond+in, H, W), t (N,) DDPM timesteps, y (N,) labels -> (N, out_channels, H, W).

        With return_dict=True returns a DiTOutput that also carries each MoE block's router logits.
        """
        p = self.config.patch_size
        if self.motion is not None:
            x = torch.cat([x, self.motion_features(x, y)], 1)  # (N, cond+in+motion, H, W)
        grid_h, grid_w = x.shape[-2] // p, x.shape[-1] // p
        h = self.x_embedder(x, y) + self.position_table(grid_h, grid_w)  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D)
        router_logits = []
        for block in self.blocks:
            h, logits = block(h, c)  # (N, T, D)
            if logits is not None:
                router_logits.append(logits)
        h = self.final_layer(h, c)  # (N, T, p*p*C)
        out = self.unpatchify(h, grid_h, grid_w)  # (N, C, H, W)
        return DiTOutput(out, router_logits) if return_dict else out


# Presets as data: (depth, hidden, heads). Patch size and MoE are separate knobs.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "XXS": (4, 128, 2),
    "XS": (6, 192, 3),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}

# The paper's released generalist: DiT-XL/2 with 8 experts, top-2 not renormalised, 64x64 SD latents,
# one input conv per task label, ImageNet label table extended by 4 task rows and a null row.
GENERALIST_CONFIG = dict(
    sample_size=32, patch_size=2, in_channels=4, cond_channels=8, hidden_size=1152, depth=28,
    num_heads=16, mlp_ratio=4.0, num_experts=8, top_k=2, norm_topk_prob=False, num_labels=1005,
    label_offset=0, routed_labels=(1000, 1001, 1002, 1003), learn_sigma=True,
)


def dit_config(size: str, patch_size: int = 2, num_experts: int = 0, **overrides) -> dict:
    """Config for a named size, e.g. dit_config("S", patch_size=4, num_experts=8)."""
    if size not in DIT_SIZES:
        raise ValueError(f"unknown DiT size {size!r}: choose one of {', '.join(DIT_SIZES)}")
    depth, hidden, heads = DIT_SIZES[size]
    return dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch_size, num_experts=num_experts, **overrides)


def forward_flops(config: dict, grid_h: int, grid_w: int) -> int:
    """Analytic FLOPs (2 per multiply-add) of one forward for one sample.

    Counts the matmuls: patch embed, per block qkv (6TD^2), attention scores and values (4T^2D),
    output projection (2TD^2), MLP (4 T D F, times top_k for MoE) plus the router (2TDE), adaLN
    (12D^2 per block, 4D^2 final), the timestep MLP and the output linear. Norms, elementwise ops and
    the optional motion encoder's cost volume are ignored (under 1% for these shapes).
    """
    p, d = config["patch_size"], config["hidden_size"]
    t = (grid_h // p) * (grid_w // p)
    cin = config["in_channels"] + config["cond_channels"] + config.get("motion_channels", 0)
    out_ch = config["in_channels"] * (2 if config.get("learn_sigma", True) else 1)
    f = int(d * config.get("mlp_ratio", 4.0))
    e, k = config.get("num_experts", 0), config.get("top_k", 2)
    mlp = 4 * t * d * f * (k if e else 1) + (2 * t * d * e if e else 0)
    block = 8 * t * d * d + 4 * t * t * d + mlp + 12 * d * d
    embed = 2 * t * cin * p * p * d + 2 * 256 * d + 2 * d * d
    final = 4 * d * d + 2 * t * d * p * p * out_ch
    return config["depth"] * block + embed + final
