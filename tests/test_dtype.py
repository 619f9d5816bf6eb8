"""--dtype auto: bf16 where the hardware runs it fast, fp32 elsewhere; one table of dtype names."""

from __future__ import annotations

import pytest
import torch

from percept_cli import dtypes
from percept_cli.errors import UsageError
from percept_cli.pipeline import Predictor, pick_dtype
from percept_cli.autoencoder import PixelSpace
from percept_cli.schedules import SD2_SCHEDULER
from tests.helpers import tiny_dit

XEON_NO_BF16 = "fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni"  # Cascade Lake


def flags(monkeypatch, line: str | None) -> None:
    """Pretend /proc/cpuinfo lists `line` (None: no /proc/cpuinfo, and torch's probe says no bf16)."""
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: None if line is None else frozenset(line.split()))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)


@pytest.mark.parametrize("line, want", [
    (XEON_NO_BF16, "fp32"),  # AVX-512 without bf16: oneDNN would emulate bf16, ~4.6x slower than fp32
    ("fpu sse2 avx2 fma", "fp32"),
    (XEON_NO_BF16 + " avx512_bf16", "bf16"),  # Zen 4, Cooper Lake
    (XEON_NO_BF16 + " amx_bf16 amx_tile amx_int8", "bf16"),  # Sapphire Rapids
    (None, "fp32"),  # no flags to read, and torch's probe says no
])
def test_auto_on_a_cpu_follows_its_bf16_flags(monkeypatch, line, want):
    flags(monkeypatch, line)
    assert dtypes.resolve_dtype("auto", "cpu") == want
    assert dtypes.resolve_dtype("auto", torch.device("cpu")) == want
    assert pick_dtype("auto", "cpu") == dtypes.torch_dtype(want)
    assert dtypes.cpu_isa()["fast_bf16"] is (want == "bf16")


def test_auto_on_cuda_asks_for_bf16_in_hardware(monkeypatch):
    asked = {}

    def supported(including_emulation=True):
        asked["emulation"] = including_emulation
        return False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert dtypes.resolve_dtype("auto", "cuda:0") == "fp32" and asked == {"emulation": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert dtypes.resolve_dtype("auto", torch.device("cuda", 1)) == "bf16"
    assert dtypes.resolve_dtype("auto", "mps") == "fp32"


def test_named_dtypes_pass_through_and_round_trip():
    for name in ("fp32", "bf16", "fp16"):
        assert dtypes.resolve_dtype(name, "cpu") == name
        assert dtypes.dtype_name(dtypes.torch_dtype(name)) == name
    assert dtypes.CHOICES == ("auto", "fp32", "bf16", "fp16")


def test_cpu_flags_reads_proc_cpuinfo():
    found = dtypes.cpu_flags()
    assert found is None or isinstance(found, frozenset)
    if found:  # a Linux x86 machine lists at least SSE2
        assert "sse2" in found or "fp" in found or "asimd" in found


def test_invalid_dtype_names_the_value_and_the_choices():
    for call in (lambda: dtypes.resolve_dtype("fp64", "cpu"), lambda: pick_dtype("fp64"),
                 lambda: Predictor(tiny_dit(), PixelSpace(), SD2_SCHEDULER, {}, device="cpu", dtype="fp64")):
        with pytest.raises(UsageError, match="--dtype must be one of auto, fp32, bf16, fp16, got 'fp64'"):
            call()
    with pytest.raises(UsageError, match="got 'auto'"):
        dtypes.torch_dtype("auto")  # a compute dtype, not a choice to resolve


@pytest.mark.parametrize("line, want", [(XEON_NO_BF16, torch.float32), (XEON_NO_BF16 + " avx512_bf16", torch.bfloat16)])
def test_predictor_defaults_to_auto(monkeypatch, line, want):
    flags(monkeypatch, line)
    pred = Predictor(tiny_dit(), PixelSpace(), SD2_SCHEDULER, dict(resolution=32), device="cpu")
    assert pred.dtype == want and pred.dtype_name == dtypes.dtype_name(want)
    assert pred.model.blocks[0].attn.qkv.weight.dtype == want  # bf16: matmul weights stored in bf16


def test_cli_accepts_auto_and_it_is_the_default(monkeypatch, tmp_path):
    import inspect
    import json

    from percept_cli import cli, run
    from tests.helpers import fast, image, percept, tiny_model_folder

    for command in (cli.depth, cli.flow, cli.amodal, cli.eval_):
        assert inspect.signature(command).parameters["dtype"].default == "auto", command
    assert run.Options().dtype == "auto"
    flags(monkeypatch, XEON_NO_BF16)
    model = tiny_model_folder(tmp_path / "m")
    img = image(tmp_path / "a.png")
    for args, want in (([], "fp32"), (["--dtype", "auto"], "fp32"), (["--dtype", "bf16"], "bf16")):
        out = tmp_path / f"out{len(args)}{want}"
        code, stdout, stderr = percept("depth", img, "-o", out, *fast(model), "--json", *args)
        assert code == 0, stderr
        (rec,) = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        assert rec["settings"]["dtype"] == want  # the record says what auto picked
