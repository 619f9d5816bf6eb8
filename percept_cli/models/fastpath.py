"""Device- and dtype-specific fast paths, in one place, so the model files read like DiT's models.py.

Each function computes what its plain PyTorch counterpart computes; where a device or dtype has a
faster route, it takes it. The routes and their error bounds (tests/test_speed_pieces.py):

- `attention`: `scaled_dot_product_attention`, except bf16 on a CPU with at most 1024 tokens: two
  bf16 matmuls around torch's bf16 softmax, which computes in fp32 inside: bitwise what an fp32
  softmax rounded back to bf16 gives, without the two copies (2.3x faster than SDPA's CPU flash
  kernel in bf16 at (8, 6, 256, 64); 3.5x faster than the same with the copies). Error against
  fp32 within twice that of SDPA in bf16.
- `gelu`: DiT's tanh GELU, except bf16/fp16 on a CPU: the exact (erf) GELU, ~4x faster than torch's
  16-bit tanh kernel there. They differ by at most 4.7e-4, under a tenth of the bf16 rounding of
  the GELU's input wherever |x| > 0.5. fp32 and GPUs keep tanh bit for bit.
- `Linear` / `linear_gelu`: fp32 inference on a CPU runs its matmuls through oneDNN (PyTorch's own
  CPU inference kernels, the ones torch.compile's CPU backend calls) instead of MKL's sgemm, and
  fuses fc1's tanh GELU into the matmul. On the AMD EPYC CPU this was written on, MKL runs its
  AVX2 code (~100 GFLOP/s a core) where oneDNN uses AVX-512 (~220): 2.2x at every DiT shape
  measured. Results differ from MKL's by float rounding (summation order; oneDNN's tanh):
  ~1e-6 relative. Training (autograd), autocast and 16-bit weights take F.linear.
  PERCEPT_ONEDNN=0 in the environment turns this route off.
- `compile_model`: torch.compile with every MoE layer left eager.
- `ReuseForEqualInput`: a function's last result, kept outside autograd and returned again while
  its input is exactly equal (the flow cost volume: sampling passes the same frames every step).

Apart from `Linear`'s float rounding, nothing here changes an fp32 result.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

LOW_PRECISION = (torch.bfloat16, torch.float16)
CPU_BF16_ATTENTION_MAX_TOKENS = 1024  # the (N, H, T, T) scores stay small up to here


def _onednn_op():
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    usable = os.environ.get("PERCEPT_ONEDNN", "1") != "0" and torch.backends.mkldnn.is_available()
    return op if usable else None


ONEDNN_LINEAR = _onednn_op()  # None where oneDNN is missing or turned off
if ONEDNN_LINEAR is not None:  # torch's FlopCounterMode counts these matmuls like aten's
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(ONEDNN_LINEAR)
    def _linear_flops(x_shape, w_shape, *args, **kwargs) -> int:
        return 2 * x_shape[:-1].numel() * w_shape[0] * w_shape[1]


_plain = False  # set by plain(): every op takes its PyTorch default


@contextlib.contextmanager
def plain() -> Iterator[None]:
    """Every op as plain PyTorch runs it (the official code's kernels), e.g. for a reference timing."""
    global _plain
    before, _plain = _plain, True
    try:
        yield
    finally:
        _plain = before


def _onednn_fp32(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where the oneDNN route applies: fp32 inference on a CPU, outside autocast and torch.compile
    (whose CPU backend picks its own oneDNN kernels)."""
    if ONEDNN_LINEAR is None or _plain or torch.compiler.is_compiling():
        return False
    return (x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"))


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose fp32 CPU inference runs on oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _onednn_fp32(x, self.weight):
            return ONEDNN_LINEAR(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def linear_gelu(fc: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """gelu(fc(x)) with DiT's tanh GELU; one fused oneDNN call for fp32 CPU inference."""
    if _onednn_fp32(x, fc.weight):
        return ONEDNN_LINEAR(x, fc.weight, fc.bias, "gelu", [], "tanh")
    return gelu(fc(x))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (N, H, T, d) tensors -> (N, H, T, d)."""
    if not _plain and q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.shape[-2] <= CPU_BF16_ATTENTION_MAX_TOKENS:
        # q is 4x smaller than the scores (T = 256 > d = 64): scale it, exactly for a power-of-two d.
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (N, H, T, T)
        return scores.softmax(dim=-1) @ v  # bf16 in and out, fp32 inside the kernel (as autocast's fp32 softmax)
    return F.scaled_dot_product_attention(q, k, v)


def gelu_approximation(h: torch.Tensor) -> str:
    """"tanh" (DiT's GELU) except "none" (erf) for bf16/fp16 on a CPU; see the module docstring."""
    return "none" if not _plain and h.dtype in LOW_PRECISION and h.device.type == "cpu" else "tanh"


def gelu(h: torch.Tensor) -> torch.Tensor:
    """DiT's tanh-approximated GELU, by the fastest form that keeps its accuracy on this device/dtype."""
    return F.gelu(h, approximate=gelu_approximation(h))


class ReuseForEqualInput:
    """Calls fn(x), but returns the last result again while x is exactly equal (same shape, dtype,
    device and values) and autograd is off. Checking equality reads x once; under autograd nothing
    is kept, so training always recomputes and gradients flow."""

    def __init__(self):
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, its result)

    def __call__(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.last = None
            return fn(x)
        last = self.last
        if (last is not None and last[0].shape == x.shape and last[0].dtype == x.dtype
                and last[0].device == x.device and torch.equal(last[0], x)):
            return last[1]
        out = fn(x)
        self.last = (x.clone(), out)
        return out


def compile_model(model: nn.Module) -> Callable[..., torch.Tensor]:
    """torch.compile(model), every MoE layer left eager.

    Under compile the per-expert token counts are data: tracing would specialise on them and recompile
    on every new routing, so the MoE runs eager and the rest of each block compiles. Applied here, at
    compile time, not as a decorator: torch.compiler.disable imports torch._dynamo, ~0.8 s of start-up
    that an eager run would pay for nothing.
    """
    from percept_cli.models.moe import MoE

    for module in model.modules():
        if isinstance(module, MoE):
            module.forward = torch.compiler.disable(module.forward)
    return torch.compile(model, dynamic=None)
