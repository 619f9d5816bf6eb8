"""benchmarks/generalist.py at a scaled-down size, and the memory-lean official loader it measures."""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from percept_cli import checkpoints
from percept_cli.checkpoints import load_official, load_source
from percept_cli.errors import ModelError
from percept_cli.hub import source_from_folder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "generalist.py"
SMALL = dict(depth=2, hidden=64, heads=4, experts=8)
TINY_VAE = dict(block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4,
                sample_size=64, scaling_factor=0.18215)
SMALL_FLAGS = ["--depth", "2", "--hidden", "64", "--heads", "4", "--vae-channels", "8,8,16,16", "--vae-layers", "1",
               "--vae-groups", "4"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("generalist_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_folder(bench, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen") / "generalist"
    bench.build(folder, dict(bench.GENERALIST, **SMALL), TINY_VAE)
    return folder


def test_layout_is_the_official_key_dump(bench, official_fixtures):
    """Full size: exactly the 1110 keys, shapes and order of the official model's state dict."""
    rows = [line.split("\t") for line in (official_fixtures / "full_keys_generalist.txt").read_text().splitlines() if line]
    want = [(k, tuple(json.loads(shape))) for k, shape, _ in rows]
    got = bench.official_layout(**bench.GENERALIST)
    assert got == want
    numel = sum(torch.Size(s).numel() for _, s in got)
    assert numel == 2_758_511_264  # official-checkpoint.md 1


def test_built_checkpoint_has_the_layout_and_loads_as_saved(bench, small_folder):
    layout = bench.official_layout(**dict(bench.GENERALIST, **SMALL))
    saved = torch.load(small_folder / "generalist.pt", weights_only=True)  # a plain (non-mmap) read of the file
    assert [(k, tuple(v.shape)) for k, v in saved.items()] == layout
    assert all(v.dtype == torch.float32 and v.std() > 0.01 for k, v in saved.items())
    # one storage per tensor, as model.state_dict() saves it
    assert len({v.untyped_storage().data_ptr() for v in saved.values()}) == len(saved)
    source = source_from_folder(small_folder, "small")  # what --model FOLDER does
    assert source.layout == "official"
    model, vae, sched, config = load_source(source)
    state = model.state_dict()
    assert set(state) == set(saved)
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    assert vae.channels == 4 and vae.factor == 8 and sched["prediction_type"] == "v_prediction"
    # the run dtype straight from the file: matmul weights cast, tables and the position table kept fp32
    model16, *_ = load_source(source, matmul_dtype=torch.bfloat16)
    for name, p in model16.named_parameters():
        is_matmul = not name.startswith(("pos_embed", "y_embedder"))
        assert p.dtype == (torch.bfloat16 if is_matmul else torch.float32), name
        assert torch.equal(p, saved[name].to(p.dtype)), name


def test_benchmark_json_has_every_key(small_folder):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", "--device", "cpu", "--dtype", "bf16", "--repeats", "1",
                           "--keep", str(small_folder), *SMALL_FLAGS],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("params", "weights_gb", "dtype", "load_seconds", "peak_rss_gb", "forward_seconds", "vae_decode_seconds",
                "projected_seconds_per_image", "device", "cpu"):
        assert key in result, key
    assert set(result["projected_seconds_per_image"]) == {"50x3", "10x1"}
    assert result["dtype"] == "bf16" and result["device"] == "cpu"
    assert {"capability", "bf16_flags", "auto_dtype"} <= set(result["cpu"])
    assert result["params"] == sum(torch.Size(s).numel() for _, s in result_layout(result))
    assert "reusing" in proc.stderr  # --keep: built once, measured again without a rebuild


def result_layout(result):
    spec = importlib.util.spec_from_file_location("generalist_bench2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.official_layout(**result["build"]["arch"])


def test_too_big_for_memory_fails_before_loading(small_folder, monkeypatch):
    monkeypatch.setattr(checkpoints, "memory_available", lambda: 1000)
    read = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: read.append(1) or self)
    with pytest.raises(ModelError) as err:
        load_official(small_folder / "generalist.pt", {"num_heads": 4})
    msg = str(err.value)
    assert "\n" not in msg and "needs 0.0 GB" in msg and "--dtype bf16" in msg and "float32" in msg
    assert not read  # no tensor was cast (read) before the check


LEAN_CHILD = textwrap.dedent("""
    import json, resource, sys
    import torch
    from percept_cli.checkpoints import load_official
    import percept_cli.models.dit  # its imports (diffusers: ~90 MB) are not the load's
    torch.ones(1) + 1  # the allocator and kernels warm, so only the load counts
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dt = {"fp32": None, "bf16": torch.bfloat16}[sys.argv[2]]
    model = load_official(sys.argv[1], {"num_heads": 6}, matmul_dtype=dt)
    with torch.no_grad():
        total = sum(float(p.float().sum()) for p in model.parameters())  # every weight read at least once
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps(dict(increase=after - before, weights=weights)))
""")


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_loading_never_holds_two_copies(bench, tmp_path_factory, dtype):
    """Peak RSS growth of a load <= 1.3x the weights as loaded (the old loader: fp32 file + cast copy = 3x in bf16)."""
    folder = tmp_path_factory.getbasetemp() / "lean"
    if not (folder / "generalist.pt").is_file():
        folder.mkdir(exist_ok=True)
        arch = dict(bench.GENERALIST, depth=6, hidden=384, heads=6)  # 65 M params: 262 MB fp32
        bench.write_checkpoint(folder / "generalist.pt", bench.official_layout(**arch))
    proc = subprocess.run([sys.executable, "-c", LEAN_CHILD, str(folder / "generalist.pt"), dtype],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["increase"] <= 1.3 * got["weights"], got
