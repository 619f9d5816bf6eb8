"""Compute dtypes: the one table of names, and what `auto` picks on a device.

`auto` (the default) is bf16 where the hardware runs bf16 matmuls fast: a CUDA GPU with bf16
support, or a CPU with AVX512_BF16 or AMX-BF16 instructions (Zen 4 and later, Intel Cooper Lake,
Sapphire Rapids and later). Everywhere else it is fp32: on an AVX-512 CPU without those
instructions oneDNN emulates bf16 and its matmuls run ~4.6x slower than fp32.

No torch at import: the CLI validates `--dtype` before it loads torch.
"""

from __future__ import annotations

import functools
from typing import Any

from percept_cli.errors import UsageError

# name -> torch attribute; the only table of dtype names in the package
TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CHOICES = ("auto",) + tuple(TORCH_NAMES)  # what --dtype accepts
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 matmuls


def check_dtype(name: str, choices: tuple[str, ...] = CHOICES, option: str = "--dtype") -> str:
    """`name` if it is one of `choices`, else a UsageError naming the value and the choices."""
    if name not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}, got {name!r}")
    return name


def torch_dtype(name: str) -> Any:
    """fp32 / bf16 / fp16 -> torch.float32 / torch.bfloat16 / torch.float16."""
    import torch

    return getattr(torch, TORCH_NAMES[check_dtype(name, tuple(TORCH_NAMES))])


def dtype_name(dtype: Any) -> str:
    """torch.bfloat16 -> "bf16" (the inverse of torch_dtype)."""
    for name, attr in TORCH_NAMES.items():
        if str(dtype) == f"torch.{attr}":
            return name
    raise ValueError(f"no name for {dtype}: percept runs in {', '.join(TORCH_NAMES)}")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """Native bf16 matmul instructions: from /proc/cpuinfo on Linux, else torch's cpuinfo probe."""
    flags = cpu_flags()
    if flags is not None:
        return any(f in flags for f in BF16_CPU_FLAGS)
    import torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def cpu_isa() -> dict[str, Any]:
    """What the benchmark reports: torch's vector ISA level and the bf16 flags found."""
    import torch

    flags = cpu_flags()
    return dict(
        capability=torch.backends.cpu.get_cpu_capability(),  # e.g. AVX512, AVX2: a hint, says nothing of bf16
        bf16_flags=None if flags is None else [f for f in BF16_CPU_FLAGS if f in flags],
        fast_bf16=cpu_has_fast_bf16(),
    )


def resolve_dtype(name: str, device: Any = "cpu") -> str:
    """fp32 / bf16 / fp16 for `name` on `device` (a torch.device or its name); `auto` picks per device."""
    check_dtype(name)
    if name != "auto":
        return name
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        # bf16 in hardware (Ampere and later); older cards would emulate it, slower than fp32
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    if kind == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"  # mps and others: fp32, the safe choice
