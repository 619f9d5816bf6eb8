"""Speed: how close batched sampling gets to this machine's limit, against the official procedure.

    python benchmarks/speed.py --quick            # under 2 minutes on a 2-core CPU
    python benchmarks/speed.py --json             # the full run, one JSON object on stdout
    python benchmarks/speed.py --config generalist  # the released model's shape: analytic figures only
    python benchmarks/speed.py --only pipeline --tasks flow   # one section (sections are self-contained)

Sections, each measured side by side in one process (best of interleaved rounds, so a burst of
load from other processes hits every contender alike):
  forward   matmul peak (large square matmuls) and the DiT forward at batch >= 8 -> GFLOP/s, mfu
  pipeline  Predictor (members and flow's u, v in the batch; fp32 and bf16 autocast) against the
            official procedure (fp32, one member at a time, u and v as separate passes, plain PyTorch
            kernels as the official code runs them), same sampler pieces, with max abs differences
  moe       MoE MLP (top-k of E) time over a dense MLP of k times the hidden width (equal FLOPs)
  startup   `python -m percept_cli --help` and `python -c "import torch"`, best of 3; and the time to
            first output of `percept depth examples/scene.png --model tiny --steps 1 --ensemble 1`
            over `import torch`, interleaved, median of 3 (target: at most 1.5x)
  memory    peak RSS of predicting one 4000x3000 photo with ensemble 8 (in a child process)
Every section measures fp32 and bf16 side by side; `auto_dtype` is what `--dtype auto` picks on this CPU
(bf16 with AVX512_BF16 or AMX, else fp32; `machine.isa` says what was found), and `targets` holds
each goal in the auto dtype and in fp32. Close other heavy jobs first: `cpu_share` says how much of
the cores the timed runs got.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from percept_cli import tasks as T
from percept_cli.autoencoder import VAE, PixelSpace
from percept_cli.dtypes import cpu_isa, resolve_dtype, torch_dtype
from percept_cli.models import fastpath
from percept_cli.models.dit import GENERALIST_CONFIG, PerceptDiT, dit_config, forward_flops
from percept_cli.models.moe import MoE, Mlp
from percept_cli.pipeline import Predictor, TaskInput, cast_matmul_weights, maybe_compile
from percept_cli.sampler import ddim_sample, initial_noise
from percept_cli.schedules import SD2_SCHEDULER, make_scheduler

# Model shapes to measure. sample_size is the token grid side; latents are sample_size * patch_size.
CONFIGS: dict[str, dict[str, Any]] = {
    "s-moe": dict(dit_config("S", patch_size=2, num_experts=8, top_k=2), sample_size=16, in_channels=4, cond_channels=8),
    "s-dense": dict(dit_config("S", patch_size=2), sample_size=16, in_channels=4, cond_channels=8),
    "b-moe": dict(dit_config("B", patch_size=2, num_experts=8, top_k=2), sample_size=16, in_channels=4, cond_channels=8),
    "generalist": dict(GENERALIST_CONFIG),
}
SECTIONS = ("forward", "pipeline", "moe", "startup", "memory")
# Equal outputs where the dtype is the same: fp32 batched vs the fp32 reference (depth in [0, 1], flow in px).
TOLERANCE = {"depth": 1e-4, "flow": 1e-3}
PIPELINE_CONFIG = dict(tasks=["depth", "flow", "amodal"], flow_scale=[75.0, 100.0])


# -- measuring ----------------------------------------------------------------------------------

class Timer:
    """Best wall time per named contender over interleaved rounds, and the share of the cores they got."""

    cpu_clock = False  # --cpu-time: keep process CPU time instead of wall time (with --threads 1 on a busy machine)

    def __init__(self):
        self.best: dict[str, float] = {}
        self.cpu: list[float] = []

    def run(self, name: str, fn: Callable[[], Any]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.best[name] = min(self.best.get(name, float("inf")), cpu if self.cpu_clock else wall)
        self.cpu.append(cpu / (wall * torch.get_num_threads()))

    def cpu_share(self) -> float:
        return round(float(np.median(self.cpu)), 2) if self.cpu else float("nan")


def rss_mb() -> float:
    """Peak RSS of this process (resource.getrusage; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb(field: str) -> float | None:
    """VmRSS / VmHWM from /proc/self/status (Linux), in MB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Restart the VmHWM high-water mark at the current RSS (Linux >= 4.0); ru_maxrss cannot be reset
    and even carries the parent's peak into a child started by fork + exec."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def random_dit(cfg: dict[str, Any], seed: int = 0, std: float = 0.02) -> PerceptDiT:
    """The model with random weights (a fresh DiT is zero-initialised: its output would not depend on inputs)."""
    torch.manual_seed(seed)
    model = PerceptDiT(**cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0.0, std)
    return model


def autocast(dtype: torch.dtype):
    return torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)


# Both are measured side by side on every CPU; `auto` (the default dtype, dtypes.resolve_dtype) picks one of
# them and the headline figures are that one's. fp32 figures show what a CPU without fast bf16 gets.
DTYPES = {name: torch_dtype(name) for name in ("fp32", "bf16")}
AUTO = resolve_dtype("auto", "cpu")
TARGETS = dict(mfu=0.75, speedup=2.0, moe_overhead=1.25)


# -- sections -----------------------------------------------------------------------------------

def bench_forward(cfg: dict[str, Any], quick: bool, materialize: bool, compile: bool = False) -> dict[str, Any]:
    """Matmul peak and the forward's GFLOP/s at batch 8 (and 16), interleaved round by round.

    With compile, also the torch.compile'd fp32 forward at batch 8 (Predictor(compile=True)'s path).
    """
    p = cfg["patch_size"]
    side = cfg["sample_size"] * p  # latent side
    flops = forward_flops(cfg, side, side)
    sizes, batches, rounds = ((2048,), (8,), 4) if quick else ((1024, 2048, 3072), (8, 16), 6)
    timer = Timer()
    contenders: dict[str, tuple[Callable[[], Any], float]] = {}
    for dname, dtype in DTYPES.items():
        for n in sizes:
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            contenders[f"mm{n}_{dname}"] = (lambda a=a, b=b: a @ b, 2.0 * n**3)
            if dname == "fp32" and fastpath.ONEDNN_LINEAR is not None:  # fp32 a @ b runs MKL; the model, oneDNN
                contenders[f"mm{n}_fp32_onednn"] = (lambda a=a, b=b: fastpath.ONEDNN_LINEAR(a, b, None, "none", [], ""),
                                                    2.0 * n**3)
    model = random_dit(cfg) if materialize else None
    if model is not None:
        # as the Predictor runs them: bf16 with its matmul weights stored in bf16
        models = {d: model if dtype == torch.float32 else cast_matmul_weights(copy.deepcopy(model), dtype)
                  for d, dtype in DTYPES.items()}
        for batch in batches:
            x = torch.randn(batch, cfg["in_channels"] + cfg["cond_channels"], side, side)  # (B, cond+in, h, w)
            t, y = torch.full((batch,), 500), torch.full((batch,), 1000)  # DDPM step 500, the depth label
            for dname, dtype in DTYPES.items():
                def fwd(x=x, t=t, y=y, dtype=dtype, m=models[dname]):
                    with autocast(dtype):
                        return m(x, t, y)
                contenders[f"fwd{batch}_{dname}"] = (fwd, flops * batch)
            if batch == batches[0]:  # fp32 with plain PyTorch kernels (MKL, no fused GELU): what fastpath buys
                def fwd_plain(x=x, t=t, y=y, m=models["fp32"]):
                    with fastpath.plain():
                        return m(x, t, y)
                contenders[f"fwd{batch}_fp32_plain"] = (fwd_plain, flops * batch)
    compiled: dict[str, Any] = {}
    if model is not None and compile:
        x8 = torch.randn(8, cfg["in_channels"] + cfg["cond_channels"], side, side)
        t8, y8 = torch.full((8,), 500), torch.full((8,), 1000)
        fast = maybe_compile(model, True)
        with torch.no_grad():
            t0 = time.perf_counter()
            got = fast(x8, t8, y8)  # compiles
            compiled["compile_seconds"] = round(time.perf_counter() - t0, 1)
            compiled["max_abs_diff_vs_eager"] = float(f"{(got - model(x8, t8, y8)).abs().max().item():.3g}")
        contenders["fwd8_fp32_compiled"] = (lambda: fast(x8, t8, y8), flops * 8)
    with torch.inference_mode():
        for fn, _ in contenders.values():  # warm up (allocator, oneDNN kernels)
            fn()
        for _ in range(rounds):
            for name, (fn, _) in contenders.items():
                timer.run(name, fn)
    rate = {name: contenders[name][1] / s / 1e9 for name, s in timer.best.items()}  # GFLOP/s
    by_kernel = {k: round(max(rate[f"mm{n}_{k}"] for n in sizes), 1) for k in list(DTYPES) + ["fp32_onednn"]
                 if f"mm{sizes[0]}_{k}" in rate}
    # the best kernel torch offers per dtype is the peak (fp32: MKL's `a @ b` or oneDNN, which the model uses)
    peak = {d: max(v for k, v in by_kernel.items() if k.split("_")[0] == d) for d in DTYPES}
    out: dict[str, Any] = dict(
        matmul_peak_gflops=peak,
        matmul_peak_by_kernel=by_kernel,
        forward_gflop_per_sample=round(flops / 1e9, 3),
        tokens=(side // p) ** 2,
        cpu_share=timer.cpu_share(),
    )
    if model is None:
        out["note"] = "model not materialised (meta device): analytic FLOPs and the ideal step time at the peak only"
        out["ideal_seconds_per_step_batch8"] = {d: round(flops * 8 / (peak[d] * 1e9), 3) for d in DTYPES}
        return out
    per_batch = {
        str(b): {d: dict(gflops=round(rate[f"fwd{b}_{d}"], 1), mfu=round(rate[f"fwd{b}_{d}"] / peak[d], 3),
                         seconds=round(timer.best[f"fwd{b}_{d}"], 4)) for d in DTYPES}
        for b in batches
    }
    if compiled:
        compiled.update(gflops=round(rate["fwd8_fp32_compiled"], 1), mfu=round(rate["fwd8_fp32_compiled"] / peak["fp32"], 3),
                        seconds=round(timer.best["fwd8_fp32_compiled"], 4))
        out["compiled_fp32_batch8"] = compiled
    b0 = batches[0]
    out[f"fp32_plain_kernels_batch{b0}"] = dict(
        gflops=round(rate[f"fwd{b0}_fp32_plain"], 1), mfu=round(rate[f"fwd{b0}_fp32_plain"] / peak["fp32"], 3),
        seconds=round(timer.best[f"fwd{b0}_fp32_plain"], 4),
        fastpath_speedup=round(timer.best[f"fwd{b0}_fp32_plain"] / timer.best[f"fwd{b0}_fp32"], 2))
    best_b = {d: max(batches, key=lambda b: rate[f"fwd{b}_{d}"]) for d in DTYPES}
    out.update(
        forward_batch=best_b,
        forward_gflops={d: per_batch[str(best_b[d])][d]["gflops"] for d in DTYPES},
        mfu={d: per_batch[str(best_b[d])][d]["mfu"] for d in DTYPES},
        per_batch=per_batch,
    )
    return out


def tiny_vae() -> VAE:
    """A small SD-layout VAE (factor 8, 4 latent channels), random weights: the DiT dominates the cost."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4, norm_num_groups=4,
    )
    return VAE(vae)


def official_reference(pred: Predictor, task: str, item: TaskInput, settings) -> Any:
    """The official procedure with our sampler pieces: fp32, one member at a time, flow's u and v apart,
    on plain PyTorch kernels as the official code runs (fastpath.plain: MKL matmuls, unfused GELU)."""
    with fastpath.plain():
        return _official_reference(pred, task, item, settings)


def _official_reference(pred: Predictor, task: str, item: TaskInput, settings) -> Any:
    spec = T.get_task(task)
    res, ae = settings.resolution, pred.autoencoder
    cond = pred._encode(task, item, (res, res))  # (1, 2C, h, w)
    lat_shape = (ae.channels, res // ae.factor, res // ae.factor)
    per_label = []
    for label in spec.labels:
        members = []
        for k in range(settings.ensemble):
            noise = initial_noise(lat_shape, 1, settings.seed + k)  # (1, C, h, w), member k's noise
            sched = make_scheduler(pred.scheduler_config, settings.schedule)
            z = ddim_sample(pred.model, cond, noise, torch.tensor([label]), sched, settings.steps)
            members.append(ae.decode(z)[0].numpy())  # (3, H, W)
        per_label.append(np.stack(members))
    return pred._finish(task, np.stack(per_label), item, settings)  # (L, E, 3, H, W) -> result


def max_abs_diff(a, b) -> float:
    diffs = [np.abs(np.asarray(getattr(a, k), np.float64) - np.asarray(v, np.float64)).max()
             for k, v in vars(b).items() if v is not None]
    return float(max(diffs))


def bench_pipeline(cfg: dict[str, Any], quick: bool, tasks: list[str], batch_size: int) -> dict[str, Any]:
    """End-to-end Predictor throughput, batched (fp32, bf16) against the official procedure (fp32)."""
    steps, ensemble = (4, 8) if quick else (20, 8)
    vae = tiny_vae()
    res = cfg["sample_size"] * cfg["patch_size"] * vae.factor
    # A low-precision Predictor casts its model's matmul weights in place, so each gets its own copy
    # (random_dit is seeded: the same weights).
    preds = {d: Predictor(random_dit(cfg), vae, SD2_SCHEDULER, dict(PIPELINE_CONFIG, resolution=res), device="cpu", dtype=d)
             for d in DTYPES}
    rng = np.random.default_rng(0)
    out: dict[str, Any] = dict(autoencoder="tiny SD-layout VAE (factor 8, 4 latent channels, random weights)",
                               resolution=res, steps=steps, ensemble=ensemble, batch_size=batch_size,
                               input_hw=[288, 384], tolerance_fp32=TOLERANCE)
    speedup: dict[str, dict[str, float]] = {}
    for task in tasks:
        image = rng.integers(0, 256, (288, 384, 3), dtype=np.uint8)
        extra = rng.integers(0, 256, (288, 384, 3), dtype=np.uint8) if task == "flow" else None
        item = TaskInput(image, extra, name=f"{task}.png")
        settings = preds["fp32"].settings(task, steps=steps, ensemble=ensemble, batch_size=batch_size, seed=0,
                                          resolution=res)
        warm = preds["fp32"].settings(task, steps=1, ensemble=ensemble, batch_size=batch_size, resolution=res)
        for pred in preds.values():  # warm up kernels for every batch shape
            pred.predict(task, [item], warm)
        official_reference(preds["fp32"], task, item, preds["fp32"].settings(task, steps=1, ensemble=1, resolution=res))
        results, timer = {}, Timer()
        timer.run("reference", lambda: results.setdefault("reference", official_reference(preds["fp32"], task, item, settings)))
        for d, pred in preds.items():
            timer.run(d, lambda pred=pred, d=d: results.setdefault(d, pred.predict(task, [item], settings)[0]))
        times = timer.best
        speedup[task] = {d: round(times["reference"] / times[d], 2) for d in DTYPES}
        out[task] = dict(
            seconds={k: round(v, 2) for k, v in times.items()},
            inputs_per_second={k: round(1.0 / v, 4) for k, v in times.items()},
            rows=len(T.get_task(task).labels) * ensemble,
            max_abs_diff_vs_reference={d: float(f"{max_abs_diff(results[d], results['reference']):.3g}") for d in DTYPES},
            cpu_share=timer.cpu_share(),
        )
        out[task]["fp32_within_tolerance"] = out[task]["max_abs_diff_vs_reference"]["fp32"] <= TOLERANCE[task]
    out["speedup_vs_reference"] = speedup
    return out


def bench_moe(cfg: dict[str, Any], quick: bool, tokens: int = 2048) -> dict[str, Any] | None:
    """MoE MLP (top-k of E) over a dense MLP k times as wide: the same active FLOPs."""
    if not cfg.get("num_experts"):
        return None
    d, e, k = cfg["hidden_size"], cfg["num_experts"], cfg["top_k"]
    hidden = int(d * cfg.get("mlp_ratio", 4.0))
    torch.manual_seed(0)
    moe = MoE(d, hidden, e, k, cfg.get("norm_topk_prob", True)).eval().requires_grad_(False)
    dense = Mlp(d, k * hidden).eval().requires_grad_(False)
    with torch.no_grad():
        for p in list(moe.parameters()) + list(dense.parameters()):
            p.normal_(0.0, 0.02)
    x = torch.randn(tokens, d)  # (M, D)
    timer = Timer()
    contenders = {}
    for dname, dtype in DTYPES.items():
        # as the Predictor runs them: matmul weights stored in the compute dtype
        m = moe if dtype == torch.float32 else cast_matmul_weights(copy.deepcopy(moe), dtype)
        dn = dense if dtype == torch.float32 else cast_matmul_weights(copy.deepcopy(dense), dtype)

        def run_moe(dtype=dtype, m=m):
            with autocast(dtype):
                return m(x)

        def run_dense(dtype=dtype, dn=dn):
            with autocast(dtype):
                return dn(x)
        contenders[f"moe_{dname}"], contenders[f"dense_{dname}"] = run_moe, run_dense
    with torch.inference_mode():
        counts = torch.bincount(moe.gate(x).topk(k, dim=-1).indices.reshape(-1), minlength=e)
        for fn in contenders.values():
            fn()
        for _ in range(5 if quick else 15):
            for name, fn in contenders.items():
                timer.run(name, fn)
    ratio = {dn: round(timer.best[f"moe_{dn}"] / timer.best[f"dense_{dn}"], 3) for dn in DTYPES}
    return dict(
        tokens=tokens, experts=e, top_k=k, hidden=hidden, dense_hidden=k * hidden,
        seconds={n: round(s, 5) for n, s in timer.best.items()},
        moe_overhead=ratio,
        load_max_over_mean=round(float(counts.max() / counts.float().mean()), 2),
        cpu_share=timer.cpu_share(),
    )


def best_of(cmd: list[str], n: int = 3) -> float | None:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        times.append(time.perf_counter() - t0)
    return round(min(times), 3)


# Time to first output of the smallest real command, against the bare `import torch` it cannot beat.
FIRST_OUTPUT_COMMAND = ["depth", "examples/scene.png", "--model", "tiny", "--steps", "1", "--ensemble", "1"]
FIRST_OUTPUT_TARGET = 1.5  # at most 1.5x `import torch`


def seconds_to_first_line(cmd: list[str], cwd: Path) -> float | None:
    """Wall seconds from starting `cmd` to its first line on stdout (None if it printed none or failed)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    seconds = time.perf_counter() - t0
    proc.stdout.read()
    return seconds if proc.wait() == 0 and line.strip() else None


def bench_first_output(rounds: int = 3) -> dict[str, Any]:
    """`import torch` and percept's first --json line, in interleaved subprocess rounds; medians and ratio."""
    root = Path(__file__).resolve().parents[1]
    torch_s: list[float] = []
    first_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], check=True, capture_output=True)
            torch_s.append(time.perf_counter() - t0)
            out = Path(tmp) / f"round{i}"  # a fresh folder: an existing output would be skipped
            cmd = [sys.executable, "-m", "percept_cli", *FIRST_OUTPUT_COMMAND, "-o", str(out), "--json", "-q"]
            first = seconds_to_first_line(cmd, root)
            if first is None:
                return dict(startup_first_output_note=f"`percept {' '.join(FIRST_OUTPUT_COMMAND)}` printed no output")
            first_s.append(first)
    torch_med, first_med = statistics.median(torch_s), statistics.median(first_s)
    return dict(
        startup_first_output_command="percept " + " ".join(FIRST_OUTPUT_COMMAND),
        startup_import_torch_median_s=round(torch_med, 3),
        startup_first_output_median_s=round(first_med, 3),
        startup_first_output_ratio=round(first_med / torch_med, 2),
        startup_first_output_target=FIRST_OUTPUT_TARGET,
        startup_rounds=dict(import_torch=[round(t, 3) for t in torch_s], first_output=[round(t, 3) for t in first_s]),
    )


def bench_startup() -> dict[str, Any]:
    out: dict[str, Any] = dict(startup_seconds_import_torch=best_of([sys.executable, "-c", "import torch"]))
    if importlib.util.find_spec("percept_cli.cli") is None:
        out["startup_seconds_help"] = None
        out["startup_note"] = "percept_cli/cli.py does not exist yet (the CLI is being written): no figure"
    else:
        out["startup_seconds_help"] = best_of([sys.executable, "-m", "percept_cli", "--help"])
        if out["startup_seconds_help"] is None:
            out["startup_note"] = "`python -m percept_cli --help` exited non-zero"
        out.update(bench_first_output())
    return out


def memory_child() -> None:
    """Child process: peak RSS before and after predicting a 4000x3000 photo with ensemble 8."""
    cfg = dict(dit_config("XXS", patch_size=4), depth=2, sample_size=16, in_channels=3, cond_channels=6)
    model = random_dit(cfg)
    res = cfg["sample_size"] * cfg["patch_size"]  # 64 px: pixel space, 16x16 tokens
    pred = Predictor(model, PixelSpace(), SD2_SCHEDULER, dict(PIPELINE_CONFIG, resolution=res), device="cpu")
    photo = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)  # (H, W, 3)
    exact = reset_peak_rss()
    before = proc_status_mb("VmRSS") if exact else rss_mb()
    (result,) = pred.predict("depth", [TaskInput(photo, name="photo.jpg")], pred.settings("depth", ensemble=8, steps=2))
    after = proc_status_mb("VmHWM") if exact else rss_mb()
    full_res_members = 8 * 3 * photo.shape[0] * photo.shape[1] * 4 / 2**20  # one fp32 copy of 8 full-size members
    print(json.dumps(dict(
        photo_hw=list(photo.shape[:2]), ensemble=8, processing_resolution=res, output_hw=list(result.depth.shape),
        rss_before_mb=round(before, 1), peak_rss_mb=round(after, 1), rss_increase_mb=round(after - before, 1),
        peak_from="VmHWM reset before predicting" if exact else "getrusage ru_maxrss (may include the parent's peak)",
        full_res_members_mb=round(full_res_members, 1), ok=bool(after - before < full_res_members / 2),
    )))


def bench_memory() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child"], capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(error=proc.stderr.strip().splitlines()[-1:] or ["child failed"])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- driver -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes, rounds and steps (under 2 minutes)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    ap.add_argument("--config", default="s-moe", help=f"one of {', '.join(CONFIGS)} or a JSON file of model config")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    ap.add_argument("--tasks", default="depth,flow", help="pipeline tasks, comma-separated")
    ap.add_argument("--batch-size", type=int, default=16, help="pipeline rows per model call (flow: 8 members x u, v)")
    ap.add_argument("--materialize", action="store_true",
                    help="build a large config for real when there is memory for it (3x its fp32 size free)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the torch.compile'd fp32 forward at batch 8 (compiling takes about a minute)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by process CPU time, not wall time: with --threads 1, figures that hold on a busy machine")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def load_config(name: str) -> dict[str, Any]:
    if name in CONFIGS:
        return dict(CONFIGS[name])
    if os.path.isfile(name):
        with open(name) as f:
            return json.load(f)
    raise SystemExit(f"--config must be one of {', '.join(CONFIGS)} or a JSON file, got {name!r}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.memory_child:
        memory_child()
        return {}
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    Timer.cpu_clock = args.cpu_time
    cfg = load_config(args.config)
    with torch.device("meta"):
        meta = PerceptDiT(**cfg)
    params = sum(p.numel() for p in meta.parameters())
    cfg = {k: v for k, v in meta.config.items() if not k.startswith("_")}  # defaults filled in
    # Never allocate a model that does not fit: the generalist is 11 GB in fp32.
    fits = params * 4 * 3 / 2**30 < mem_available_gb()
    materialize = fits and (args.materialize or params * 4 < 2**30)
    report: dict[str, Any] = dict(
        benchmark="percept speed", date=datetime.date.today().isoformat(), quick=args.quick,
        machine=dict(cpu=cpu_name(), cores=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                     python=platform.python_version(), isa=cpu_isa()),
        auto_dtype=AUTO,
        clock="process CPU time" if args.cpu_time else "wall time",
        config=args.config, params_millions=round(params / 1e6, 1), fp32_gb=round(params * 4 / 2**30, 2),
        materialized=materialize,
    )
    t_start = time.perf_counter()
    if "forward" in sections:
        report["forward"] = bench_forward(cfg, args.quick, materialize, args.compile)
        for key in ("matmul_peak_gflops", "forward_gflops", "mfu"):
            report[key] = report["forward"].get(key)
    if "pipeline" in sections:
        if materialize:
            report["pipeline"] = bench_pipeline(cfg, args.quick, args.tasks.split(","), args.batch_size)
            report["speedup_vs_reference"] = report["pipeline"]["speedup_vs_reference"]
        else:
            report["pipeline"] = dict(note="skipped: the model is not materialised (too large for this machine)")
    if "moe" in sections:
        report["moe"] = bench_moe(cfg, args.quick)
        report["moe_overhead"] = report["moe"]["moe_overhead"] if report["moe"] else None
    if "startup" in sections:
        report.update(bench_startup())
    if "memory" in sections:
        report["memory_check"] = bench_memory()
    report["targets"] = check_targets(report)
    report["peak_rss_mb"] = round(rss_mb(), 1)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    if args.json:
        print(json.dumps(report))
    else:
        print_summary(report)
    return report


def check_targets(r: dict[str, Any]) -> dict[str, Any]:
    """Each target in the auto dtype (the one a user gets) and in fp32 (what a CPU without fast bf16 gets)."""
    out: dict[str, Any] = {}
    for d in dict.fromkeys((AUTO, "fp32")):
        figures: dict[str, Any] = {}
        if r.get("mfu"):
            figures["mfu"] = r["mfu"][d]
        for task, s in (r.get("speedup_vs_reference") or {}).items():
            figures[f"speedup_{task}"] = s[d]
        if r.get("moe_overhead"):
            figures["moe_overhead"] = r["moe_overhead"][d]
        met = {k: (v <= TARGETS["moe_overhead"]) if k == "moe_overhead" else v >= TARGETS[k.split("_")[0]]
               for k, v in figures.items()}
        out["auto" if d == AUTO else d] = dict(dtype=d, figures=figures, met=met, all_met=all(met.values()))
    out["goals"] = dict(TARGETS)
    return out


def print_summary(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"percept speed  {r['date']}  {m['cpu']} ({m['cores']} cores, {m['torch_threads']} threads, torch {m['torch']})")
    isa = m["isa"]
    print(f"ISA {isa['capability']}, bf16 flags {isa['bf16_flags']}: --dtype auto -> {r['auto_dtype']}")
    print(f"config {r['config']}: {r['params_millions']} M params ({r['fp32_gb']} GB fp32)")
    if "forward" in r:
        f = r["forward"]
        print(f"matmul peak GFLOP/s        {f['matmul_peak_gflops']}  (by kernel {f.get('matmul_peak_by_kernel')})")
        print(f"forward GFLOP per sample   {f['forward_gflop_per_sample']} ({f['tokens']} tokens)")
        if "mfu" in f:
            for d in DTYPES:
                print(f"forward {d}  batch {f['forward_batch'][d]:>3}   {f['forward_gflops'][d]:7.1f} GFLOP/s   mfu {f['mfu'][d]:.2f}")
        else:
            print(f"  {f['note']}; ideal s/step at batch 8: {f['ideal_seconds_per_step_batch8']}")
        for key, v in f.items():
            if key.startswith("fp32_plain_kernels"):
                print(f"forward fp32 plain kernels {v['gflops']:7.1f} GFLOP/s   mfu {v['mfu']:.2f}"
                      f"   (fastpath: {v['fastpath_speedup']}x faster)")
        if "compiled_fp32_batch8" in f:
            c = f["compiled_fp32_batch8"]
            print(f"forward fp32  batch   8 torch.compile  {c['gflops']:7.1f} GFLOP/s   mfu {c['mfu']:.2f}"
                  f"  (compiling {c['compile_seconds']} s, max|diff| vs eager {c['max_abs_diff_vs_eager']})")
        print(f"  cpu_share {f['cpu_share']}")
    p = r.get("pipeline", {})
    for task in ("depth", "flow"):
        if task in p:
            t = p[task]
            print(f"{task:5} E={p['ensemble']} steps={p['steps']}: seconds {t['seconds']}  speedup {p['speedup_vs_reference'][task]}"
                  f"  max|diff| {t['max_abs_diff_vs_reference']}  (fp32 tol {p['tolerance_fp32'][task]})")
    if "note" in p:
        print(f"pipeline: {p['note']}")
    if r.get("moe"):
        print(f"moe_overhead (MoE / dense, {r['moe']['tokens']} tokens)  {r['moe']['moe_overhead']}")
    if "startup_seconds_import_torch" in r:
        print(f"startup: --help {r['startup_seconds_help']} s, import torch {r['startup_seconds_import_torch']} s"
              + (f"  ({r['startup_note']})" if r.get("startup_note") else ""))
    if "startup_first_output_ratio" in r:
        print(f"startup: {r['startup_first_output_command']}: first output {r['startup_first_output_median_s']} s, "
              f"import torch {r['startup_import_torch_median_s']} s (medians of 3, interleaved): "
              f"ratio {r['startup_first_output_ratio']} (target <= {r['startup_first_output_target']})")
    elif "startup_first_output_note" in r:
        print(f"startup: {r['startup_first_output_note']}")
    if "memory_check" in r:
        print(f"memory check: {r['memory_check']}")
    for name, t in r["targets"].items():
        if name != "goals" and t["figures"]:
            marks = ", ".join(f"{k} {v} {'ok' if t['met'][k] else 'MISSED'}" for k, v in t["figures"].items())
            print(f"targets {name:4} ({t['dtype']}): {marks}")
    print(f"peak RSS {r['peak_rss_mb']} MB; {r['seconds']} s")


if __name__ == "__main__":
    main()
