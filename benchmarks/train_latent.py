"""Latent-space training: measured speed and memory of a small latent model here, and the computed
parameter/optimizer memory of a generalist-shaped model per GPU under DDP and FSDP.

    python benchmarks/train_latent.py [--steps 20] [--batch 8] [--resolution 64] [--threads 1] [--gpus 1,2,4,8] [--json]

Measured (this machine, CPU): the fine-tune of the tiny official-layout fixture (DiT, 2 blocks,
8 experts, width 64) on latents of the tiny fixture VAE (64 px -> 8x8x4): the one-off latent
encoding of the rendered scenes (items/s), training samples/s after the first step, and the process's
peak resident memory. Computed (not measured): a latent DiT-XL/2 MoE of the generalist's shape
(models/dit.GENERALIST_CONFIG, counted on the meta device) with AdamW and an EMA, in fp32 master
weights: parameters 4 B, gradients 4 B, Adam moments 8 B, EMA 4 B per parameter. DDP holds all of it on
every GPU; FSDP2 (fully_shard per block) holds 1/N of it plus the largest block unsharded during its
forward/backward (counted twice: the block in use and the next one prefetched). Activations, the VAE
(not needed after the latents are cached) and allocator overheads are left out; they depend on the
batch and on activation checkpointing.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "official"


def generalist_memory(gpus: list[int]) -> dict:
    """Computed GiB per GPU for model state (params + grads + AdamW + EMA, fp32) of the generalist's shape."""
    from percept_cli.models.dit import GENERALIST_CONFIG, PerceptDiT

    with torch.device("meta"):
        model = PerceptDiT(**GENERALIST_CONFIG)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for n, p in model.named_parameters() if n != "pos_embed")
    block = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
    gib = 1024**3
    state = 4 * total + 4 * trainable + 8 * trainable + 4 * total  # params, grads, Adam m and v, EMA
    rows = []
    for n in gpus:
        rows.append(dict(gpus=n, ddp_gib=state / gib, fsdp_gib=(state / n + 2 * 4 * block) / gib))
    return dict(parameters=total, trainable=trainable, largest_block=block, bytes_per_parameter=state / total,
                per_gpu=rows, kind="computed")


def measure(steps: int, batch: int, resolution: int, threads: int = 1) -> dict:
    """Measured on this machine: latent encoding and training speed, peak resident memory."""
    from percept_cli.train import TrainConfig, Trainer

    tmp = Path(tempfile.mkdtemp(prefix="percept-train-latent-"))
    try:
        model = tmp / "official"
        model.mkdir()
        shutil.copy(FIXTURES / "tiny_official_layout.pt", model / "tiny_official_layout.pt")
        shutil.copytree(FIXTURES / "tiny_vae", model / "vae")
        shutil.copytree(FIXTURES / "tiny_scheduler", model / "scheduler")
        (model / "percept.json").write_text(json.dumps({"layout": "official", "num_heads": 4}))
        scenes = 16
        cfg = TrainConfig(out=str(tmp / "run"), init=str(model), resolution=resolution, train_scenes=scenes,
                          batch_size=batch, max_steps=steps + 1, eval_every=0, ckpt_every=10**9, log_every=10**9,
                          autocast="fp32", warmup=1, threads=threads)
        trainer = Trainer(cfg, log=lambda m: None)
        trainer.scene_pool()  # rendering is not part of the latent figures
        t0 = time.perf_counter()
        trainer.sources()  # encode every scene for every kind, unmirrored and mirrored
        encode_s = time.perf_counter() - t0
        kinds = len(trainer.sources()[0].kinds)
        trainer.train_step(record=False)  # first step: start-up
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(record=False)
        train_s = time.perf_counter() - t0
        trainer.close_batches()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
        return dict(kind="measured", device="cpu", threads=torch.get_num_threads(), resolution=resolution,
                    latent=resolution // 8, batch=batch, steps=steps,
                    encode_items_per_s=scenes * kinds * 2 / encode_s,
                    train_samples_per_s=steps * batch / train_s, step_ms=1000 * train_s / steps,
                    peak_rss_mib=peak, parameters=sum(p.numel() for p in trainer.model.parameters()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=64, help="pixels (the tiny fixture model: 64 = its 8x8 latents)")
    ap.add_argument("--gpus", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: figures that hold on a shared machine)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = dict(measured=measure(args.steps, args.batch, args.resolution, args.threads),
               computed=generalist_memory([int(x) for x in args.gpus.split(",")]))
    if args.json:
        print(json.dumps(res, indent=2))
        return
    m, c = res["measured"], res["computed"]
    print(f"MEASURED (CPU, {m['threads']} threads; tiny official-layout MoE, {m['parameters']:,} parameters, "
          f"{m['resolution']} px -> {m['latent']}x{m['latent']} latents, batch {m['batch']}):")
    print(f"  latent encoding  {m['encode_items_per_s']:8.1f} item-kind-flips/s (once; then cached)")
    print(f"  training         {m['train_samples_per_s']:8.1f} samples/s   ({m['step_ms']:.1f} ms/step)")
    print(f"  peak RSS         {m['peak_rss_mib']:8.0f} MiB (whole process)")
    print(f"COMPUTED, not measured: generalist shape (DiT-XL/2, 8 experts), {c['parameters']:,} parameters, "
          f"{c['bytes_per_parameter']:.0f} B/parameter of model state (fp32 weights, grads, AdamW, EMA); "
          "activations excluded:")
    print("  GPUs   DDP GiB/GPU   FSDP GiB/GPU")
    for r in c["per_gpu"]:
        print(f"  {r['gpus']:>4}   {r['ddp_gib']:11.1f}   {r['fsdp_gib']:12.1f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
