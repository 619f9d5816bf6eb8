"""The paper's generalist at full size: build a random-weight copy, load it like `--model FOLDER`, time it.

    python benchmarks/generalist.py --dtype bf16 --json      # ~5.5 GB of weights; a few minutes on 2 cores
    python benchmarks/generalist.py --dtype fp32 --json      # ~11 GB of weights
    python benchmarks/generalist.py --keep /data/gen --dtype fp16   # build once into a folder, reuse it after

1. Build (once, in a temporary folder unless --keep): a `.pt` with exactly the generalist's keys,
   shapes and order in the official layout (1110 tensors, 2,758,511,264 fp32 values; the list in
   `official_layout` is checked against the official model's key dump by
   tests/test_generalist_bench.py), random normal values (std 0.02), written tensor by tensor
   (`torch.save` under `skip_data` lays out the file, then each tensor's bytes are written into
   its record), so the builder never holds more than one tensor; plus an SD-2-shaped VAE with
   random weights (diffusers AutoencoderKL, block_out_channels 128,256,512,512, 4 latent
   channels, scaling 0.18215), SD2's scheduler config and percept.json {"layout": "official"}.
2. Measure, in a fresh child process (so the build's memory does not count): load the folder the
   way `percept depth --model FOLDER` does (hub.source_from_folder -> Predictor.from_source), then
   one batch-1 forward at 512x512 (64x64 latents, 1024 tokens) in the run dtype (autocast, as the
   sampler calls it), one VAE decode of a 64x64 latent, one VAE encode of the rgb+prompt pair.
3. Print human-readable lines on stderr, and with --json one JSON object last on stdout:
   params, weights_gb (the parameters as loaded, in their dtypes), dtype, load_seconds
   (checkpoint_cached_before_load: the fraction of the .pt in the page cache then, from fincore),
   peak_rss_gb (ru_maxrss of the child right after loading; an fp32 file is used in place,
   file-backed, so its pages only count once read), peak_rss_after_forward_gb (every weight
   resident), peak_rss_run_gb (after the VAE runs too), forward_cpu_share (below ~0.9: other
   processes shared the cores), forward_seconds, vae_decode_seconds, vae_encode_seconds,
   projected_seconds_per_image {"50x3", "10x1"} (steps x members, depth: steps*members*forward +
   members*decode + encode; the pipeline decodes every member), device, cpu (ISA flags and what
   --dtype auto picks), and on CUDA a gpu object (batch-8 forward, mfu against the card's dense
   peak from PEAK_TFLOPS, seconds per image at 50 steps x 8 members).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

# The released model (official-checkpoint.md 1): DiT-XL/2, 8 experts top-2, 64x64x4 SD latents,
# 12 input channels (rgb latent, prompt latent, noisy target), 1005 label rows, learn_sigma.
GENERALIST = dict(depth=28, hidden=1152, heads=16, experts=8, mlp_ratio=4, patch=2, grid=32, in_channels=4,
                  cond_channels=8, labels=1005, tasks=4)
SD2_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32, latent_channels=4,
               sample_size=768, scaling_factor=0.18215)
STD = 0.02
# Dense bf16/fp16 tensor-core peak, TFLOP/s (vendor datasheets, without sparsity), matched by substring
# of torch.cuda.get_device_name(); longest match wins. Unknown cards report mfu null.
PEAK_TFLOPS = {
    "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
    "GH200": 989.4, "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.1, "L40": 181.0, "L4": 121.0,
    "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2, "RTX 3090": 71.0, "A6000": 154.8, "V100": 125.0, "T4": 65.0,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ 1. build


def official_layout(depth: int = 28, hidden: int = 1152, experts: int = 8, mlp_ratio: int = 4, patch: int = 2,
                    grid: int = 32, in_channels: int = 4, cond_channels: int = 8, labels: int = 1005, tasks: int = 4,
                    **_: Any) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of the official state dict, in its order, written from official-checkpoint.md 1 (not from
    percept's model, so that a mismatch in either shows)."""
    d, f, c_in, out = hidden, hidden * mlp_ratio, in_channels + cond_channels, 2 * in_channels * patch * patch
    keys: list[tuple[str, tuple[int, ...]]] = [("pos_embed", (1, grid * grid, d))]
    for i in range(1, tasks + 1):
        keys += [(f"x_embedder.proj.conv_in_{i}.weight", (d, c_in, patch, patch)), (f"x_embedder.proj.conv_in_{i}.bias", (d,))]
    keys += [("t_embedder.mlp.0.weight", (d, 256)), ("t_embedder.mlp.0.bias", (d,)),
             ("t_embedder.mlp.2.weight", (d, d)), ("t_embedder.mlp.2.bias", (d,)),
             ("y_embedder.embedding_table.weight", (labels, d))]
    for b in range(depth):
        p = f"blocks.{b}."
        keys += [(p + "attn.qkv.weight", (3 * d, d)), (p + "attn.qkv.bias", (3 * d,)),
                 (p + "attn.proj.weight", (d, d)), (p + "attn.proj.bias", (d,))]
        for e in range(experts):
            q = f"{p}moe.experts.{e}."
            keys += [(q + "fc1.weight", (f, d)), (q + "fc1.bias", (f,)), (q + "fc2.weight", (d, f)), (q + "fc2.bias", (d,))]
        keys += [(p + "moe.gate.weight", (experts, d)),
                 (p + "adaLN_modulation.1.weight", (6 * d, d)), (p + "adaLN_modulation.1.bias", (6 * d,))]
    keys += [("final_layer.linear.weight", (out, d)), ("final_layer.linear.bias", (out,)),
             ("final_layer.adaLN_modulation.1.weight", (2 * d, d)), ("final_layer.adaLN_modulation.1.bias", (2 * d,))]
    return keys


def _record_offsets(path: Path) -> dict[str, int]:
    """Byte offset of each stored (uncompressed) record's data in a torch zip file, by record name ('data/0')."""
    offsets = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED, info.filename
            f.seek(info.header_offset)
            head = f.read(30)
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            offsets[info.filename.split("/", 1)[1]] = info.header_offset + 30 + name_len + extra_len
    return offsets


def write_checkpoint(path: Path, layout: list[tuple[str, tuple[int, ...]]], seed: int = 0) -> dict[str, tuple[float, float]]:
    """An official-layout `.pt` (flat state dict, fp32, one storage per tensor as `model.state_dict()` saves it)
    with N(0, STD) values, one tensor in memory at a time. Returns each tensor's (first, last) value."""
    import torch

    # torch.empty reserves address space only: under skip_data torch.save writes the layout, not the bytes
    with torch.serialization.skip_data():
        torch.save({k: torch.empty(shape) for k, shape in layout}, path)
    offsets = _record_offsets(path)
    gen = torch.Generator().manual_seed(seed)
    probes = {}
    fd = os.open(path, os.O_WRONLY)
    try:
        for i, (key, shape) in enumerate(layout):  # torch.save numbers storages in the order it pickles them
            t = torch.randn(shape, generator=gen).mul_(STD)
            view = memoryview(t.numpy()).cast("B")
            written = os.pwrite(fd, view, offsets[f"data/{i}"])
            assert written == len(view), (key, written)
            probes[key] = (t.view(-1)[0].item(), t.view(-1)[-1].item())
    finally:
        os.close(fd)
    return probes


def build(folder: Path, arch: dict[str, Any], vae: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The model folder `--model FOLDER` loads: generalist.pt + vae/ + scheduler/ + percept.json."""
    import torch
    from diffusers import AutoencoderKL

    from percept_cli.schedules import SD2_SCHEDULER

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    layout = official_layout(**arch)
    probes = write_checkpoint(folder / "generalist.pt", layout, seed)
    # the records landed where torch reads them: the first and last value of every tensor, through torch.load
    loaded = torch.load(folder / "generalist.pt", mmap=True, weights_only=True, map_location="cpu")
    assert list(loaded) == [k for k, _ in layout], "keys or their order differ from the layout"
    for key, (first, last) in probes.items():
        got = loaded[key].view(-1)
        assert (got[0].item(), got[-1].item()) == (first, last), f"{key}: its bytes are not where torch reads them"
    params = sum(v.numel() for v in loaded.values())
    del loaded
    ckpt_seconds = time.perf_counter() - t0
    torch.manual_seed(seed)
    blocks = len(vae["block_out_channels"])
    ae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                       up_block_types=("UpDecoderBlock2D",) * blocks, act_fn="silu", **vae)
    ae.save_pretrained(str(folder / "vae"), safe_serialization=True)
    vae_params = sum(p.numel() for p in ae.parameters())
    del ae
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDIMScheduler", **SD2_SCHEDULER}, indent=2) + "\n")
    (folder / "percept.json").write_text(json.dumps({"layout": "official", "num_heads": arch["heads"]}, indent=2) + "\n")
    info = dict(params=params, vae_params=vae_params, checkpoint_bytes=(folder / "generalist.pt").stat().st_size,
                checkpoint_seconds=round(ckpt_seconds, 2), build_seconds=round(time.perf_counter() - t0, 2))
    (folder / "build.json").write_text(json.dumps({"arch": arch, "vae": vae, **info}, indent=2) + "\n")
    return info


# ------------------------------------------------------------------------------------------------ 2. measure


def _gb(n: float) -> float:
    return round(n / 1e9, 3)


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def _timed(fn, sync) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def measure(folder: Path, dtype: str, device: str, repeats: int = 2) -> dict[str, Any]:
    """Load `folder` as `--model FOLDER` does and time forward, decode and encode (run in a fresh process)."""
    import torch

    from percept_cli.dtypes import cpu_isa, dtype_name, resolve_dtype
    from percept_cli.hub import source_from_folder
    from percept_cli.models.dit import forward_flops
    from percept_cli.pipeline import Predictor, pick_device

    dev = pick_device(device)
    cached = _cached_fraction(next(Path(folder).glob("*.pt")))  # load time depends on it: disk or page cache
    rss0 = _maxrss_bytes()
    t0 = time.perf_counter()
    predictor = Predictor.from_source(source_from_folder(folder, str(folder)), device=dev, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    sync()
    load_seconds = time.perf_counter() - t0
    rss_load = _maxrss_bytes()
    model = predictor.model
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    by_dtype: dict[str, int] = {}
    for p in model.parameters():
        by_dtype[dtype_name(p.dtype)] = by_dtype.get(dtype_name(p.dtype), 0) + p.numel()
    run_dtype = predictor.dtype
    log(f"loaded {params / 1e9:.3f} B params ({_gb(weights)} GB as {by_dtype}) in {load_seconds:.1f} s, "
        f"peak RSS {_gb(rss_load)} GB (before loading: {_gb(rss0)} GB)")
    mc = model.config
    side = mc.sample_size * mc.patch_size  # 64 latents
    ae = predictor.autoencoder
    g = torch.Generator().manual_seed(0)

    def forward_fn(batch: int):
        x = torch.randn((batch, mc.cond_channels + mc.in_channels, side, side), generator=g).to(dev)
        t = torch.full((batch,), 981, device=dev)
        y = torch.full((batch,), 1000, device=dev)
        amp = torch.autocast(dev.type, dtype=run_dtype) if run_dtype != torch.float32 else None

        def run():
            with torch.no_grad():
                if amp is None:
                    predictor.denoiser(x, t, y)
                else:
                    with amp:
                        predictor.denoiser(x, t, y)
        return run

    def best(fn, n):
        times = [_timed(fn, sync) for _ in range(n)]
        return min(times), times

    fwd = forward_fn(1)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    first = _timed(fwd, sync)  # first touch of every weight (page faults on a file-backed fp32 load)
    forward_seconds, times = best(fwd, repeats)
    # below ~0.9: other processes took part of the cores during the forwards (the figures are then slower)
    cpu_share = (time.process_time() - cpu0) / ((time.perf_counter() - wall0) * torch.get_num_threads())
    rss_forward = _maxrss_bytes()  # every weight now resident (a file-backed fp32 load faults them in here)
    flops = forward_flops(dict(mc), side, side)
    log(f"forward batch 1, {(side // mc.patch_size) ** 2} tokens: first {first:.2f} s, then {[round(x, 2) for x in times]} s "
        f"({flops / forward_seconds / 1e9:.0f} GFLOP/s)")
    lat = torch.randn((1, ae.channels, side, side), generator=g).to(dev)
    pair = torch.rand((2, 3, side * ae.factor, side * ae.factor), generator=g).mul(2).sub(1).to(dev)
    ae.decode(lat)  # warm-up: oneDNN picks its kernels on the first call
    decode_seconds, _ = best(lambda: ae.decode(lat), 1)
    encode_seconds, _ = best(lambda: ae.encode(pair), 1)
    log(f"VAE decode 1x{side}x{side} latents: {decode_seconds:.2f} s; encode of the rgb+prompt pair: {encode_seconds:.2f} s")

    def per_image(steps: int, members: int, fwd_s: float, dec_s: float, enc_s: float) -> float:
        return round(steps * members * fwd_s + members * dec_s + enc_s, 2)

    out: dict[str, Any] = dict(
        params=params, weights_gb=_gb(weights), params_by_dtype=by_dtype, dtype=dtype_name(run_dtype),
        dtype_asked=dtype, load_seconds=round(load_seconds, 2), checkpoint_cached_before_load=cached, peak_rss_gb=_gb(rss_load),
        peak_rss_over_weights=round(rss_load / weights, 3), forward_seconds=round(forward_seconds, 3),
        peak_rss_after_forward_gb=_gb(rss_forward), forward_first_seconds=round(first, 3), forward_cpu_share=round(cpu_share, 2), forward_gflops=round(flops / forward_seconds / 1e9, 1),
        vae_decode_seconds=round(decode_seconds, 3), vae_encode_seconds=round(encode_seconds, 3),
        projected_seconds_per_image={"50x3": per_image(50, 3, forward_seconds, decode_seconds, encode_seconds),
                                     "10x1": per_image(10, 1, forward_seconds, decode_seconds, encode_seconds)},
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
        cpu=dict(cpu_isa(), model=_cpu_model(), auto_dtype=resolve_dtype("auto", "cpu"), threads=torch.get_num_threads()),
    )
    if dev.type == "cuda":
        out["gpu"] = _gpu_figures(forward_fn, best, flops, ae, lat, pair, per_image, out["device"], run_dtype, sync)
    out["peak_rss_run_gb"] = _gb(_maxrss_bytes())
    return out


def _gpu_figures(forward_fn, best, flops, ae, lat, pair, per_image, name, run_dtype, sync) -> dict[str, Any]:
    import torch

    peak_key = max((k for k in PEAK_TFLOPS if k.lower() in name.lower()), key=len, default=None)
    peak = PEAK_TFLOPS[peak_key] * 1e12 if peak_key and run_dtype != torch.float32 else None
    res: dict[str, Any] = dict(peak_tflops=peak and peak / 1e12, peak_table_key=peak_key)
    for batch in (1, 8):
        fwd = forward_fn(batch)
        fwd()
        s, _ = best(fwd, 3)
        res[f"forward_seconds_b{batch}"] = round(s, 4)
        res[f"tflops_b{batch}"] = round(flops * batch / s / 1e12, 1)
        res[f"mfu_b{batch}"] = round(flops * batch / s / peak, 3) if peak else None
    lat8 = lat.expand(8, *lat.shape[1:]).contiguous()
    ae.decode(lat8)
    dec8, _ = best(lambda: ae.decode(lat8), 2)
    res["vae_decode_seconds_b8"] = round(dec8, 4)
    enc, _ = best(lambda: ae.encode(pair), 2)
    res["seconds_per_image_50x8"] = round(50 * res["forward_seconds_b8"] + dec8 + enc, 2)
    res["memory_allocated_gb"] = _gb(torch.cuda.max_memory_allocated())
    return res


def _cached_fraction(path: Path) -> float | None:
    """How much of a file is in the page cache (util-linux fincore), or None where fincore is missing."""
    try:
        res = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                             capture_output=True, text=True, timeout=30)
        return round(int(res.stdout.split()[0]) / path.stat().st_size, 3) if res.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------ 3. main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--device", default="auto", help="auto (cuda if visible, else cpu), cpu, cuda or cuda:N")
    ap.add_argument("--json", action="store_true", help="print one JSON object last on stdout")
    ap.add_argument("--keep", type=Path, help="build into (or reuse) this folder instead of a temporary one")
    ap.add_argument("--repeats", type=int, default=2, help="timed forwards after the first (best is reported)")
    # scaled-down shapes, for tests
    ap.add_argument("--depth", type=int, default=GENERALIST["depth"])
    ap.add_argument("--hidden", type=int, default=GENERALIST["hidden"])
    ap.add_argument("--heads", type=int, default=GENERALIST["heads"])
    ap.add_argument("--experts", type=int, default=GENERALIST["experts"])
    ap.add_argument("--vae-channels", default=",".join(map(str, SD2_VAE["block_out_channels"])))
    ap.add_argument("--vae-layers", type=int, default=SD2_VAE["layers_per_block"])
    ap.add_argument("--vae-groups", type=int, default=SD2_VAE["norm_num_groups"])
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # the measuring child
    args = ap.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.dtype, args.device, args.repeats)))
        return 0

    arch = dict(GENERALIST, depth=args.depth, hidden=args.hidden, heads=args.heads, experts=args.experts)
    vae = dict(SD2_VAE, block_out_channels=[int(c) for c in args.vae_channels.split(",")],
               layers_per_block=args.vae_layers, norm_num_groups=args.vae_groups)
    tmp = None
    if args.keep is not None:
        folder = args.keep
    else:
        tmp = Path(tempfile.mkdtemp(prefix="percept-generalist-"))
        folder = tmp / "generalist"
    t0 = time.perf_counter()
    try:
        built = folder / "build.json"
        if built.is_file() and json.loads(built.read_text()).get("arch") == arch:
            info = {k: v for k, v in json.loads(built.read_text()).items() if k not in ("arch", "vae")}
            log(f"reusing the checkpoint in {folder}")
        else:
            log(f"building a random-weight generalist in {folder} ...")
            info = build(folder, arch, vae)
            log(f"built {info['params'] / 1e9:.3f} B params, {info['checkpoint_bytes'] / 1e9:.2f} GB file, "
                f"in {info['build_seconds']:.1f} s")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(folder), "--dtype", args.dtype,
               "--device", args.device, "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            log(f"the measuring process failed (exit {proc.returncode})")
            return proc.returncode
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    result.update(build={**info, "arch": arch, "vae_block_out_channels": vae["block_out_channels"]},
                  total_seconds=round(time.perf_counter() - t0, 1), torch=__import__("torch").__version__,
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    log(f"{result['dtype']} on {result['device']}: weights {result['weights_gb']} GB, load {result['load_seconds']} s, "
        f"peak RSS {result['peak_rss_gb']} GB ({result['peak_rss_over_weights']}x weights; {result['peak_rss_run_gb']} GB "
        f"after the timed runs), forward {result['forward_seconds']} s, decode {result['vae_decode_seconds']} s, "
        f"per image {result['projected_seconds_per_image']}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
