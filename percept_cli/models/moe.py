"""Mixture-of-experts MLP: top-k router, experts, switch-style load-balancing loss.

Key names follow the official layout (`moe.gate.weight`, `moe.experts.{e}.fc1/fc2`) so the paper's
checkpoint loads without renaming. Every token is processed (no capacity, no dropped tokens), so an
output never depends on what else is in the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from percept_cli.models.fastpath import Linear, linear_gelu


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU (timm's Mlp as DiT uses it)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(linear_gelu(self.fc1, x))  # fc2(gelu(fc1(x))), tanh GELU; fastpath fuses where it can


class MoE(nn.Module):
    """Top-k routed experts; returns (output, router_logits) so the balance loss stays visible."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, norm_topk_prob: bool):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..{num_experts}, got {top_k}")
        self.num_experts, self.top_k, self.norm_topk_prob = num_experts, top_k, norm_topk_prob
        self.gate = Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(Mlp(dim, hidden) for _ in range(num_experts))

    # fastpath.compile_model keeps this forward eager under torch.compile (see there).
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (M, D) tokens
        logits = self.gate(x)  # (M, E)
        probs = logits.float().softmax(dim=-1)
        weights, idx = probs.topk(self.top_k, dim=-1)  # (M, k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)

        # Dispatch: sort the (token, slot) pairs by expert so each expert runs once on a contiguous
        # slice; no capacity limit, so no token is dropped.
        flat_idx = idx.reshape(-1)  # (M*k,)
        order = flat_idx.argsort(stable=True)
        token_of = order // self.top_k  # (M*k,) source token of each sorted pair
        counts = torch.bincount(flat_idx, minlength=self.num_experts).tolist()
        # Gather in the dtype the experts compute in (the gate's output dtype: bf16 under autocast),
        # so the copy moves half the bytes and no expert re-casts its slice; same values either way.
        routed = x.to(logits.dtype).index_select(0, token_of)  # (M*k, D)
        expert_out = x.new_empty(routed.shape)  # (M*k, D) in x's dtype; each expert writes its slice
        start = 0
        for e, n in enumerate(counts):
            if n:
                expert_out[start : start + n] = self.experts[e](routed[start : start + n])
            start += n
        # Combine: back to (token, slot) order by one gather, then the weighted sum over the k slots.
        # (index_add_ into zeros gives the same sums for k <= 2 but runs ~10x slower on a CPU.)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        per_slot = expert_out.index_select(0, inverse).view(-1, self.top_k, shape[-1])  # (M, k, D)
        out = (per_slot * weights.unsqueeze(-1)).sum(dim=1)  # (M, D)
        return out.reshape(shape), logits


def load_balancing_loss(router_logits: list[torch.Tensor], num_experts: int, top_k: int) -> torch.Tensor:
    """Switch-transformer balance loss E * sum_e f_e * P_e, averaged over layers.

    f_e is the fraction of routed (token, slot) pairs sent to expert e and P_e the mean router
    probability of e; it equals 1 for perfectly uniform routing.
    """
    losses = []
    for logits in router_logits:
        probs = logits.float().softmax(dim=-1)  # (M, E)
        idx = probs.topk(top_k, dim=-1).indices  # (M, k)
        frac = F.one_hot(idx, num_experts).float().mean(dim=(0, 1))  # (E,)
        losses.append(num_experts * (frac * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()
