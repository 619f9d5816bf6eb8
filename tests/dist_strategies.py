"""Run under torchrun (2 gloo processes) by tests/test_train.py::test_fsdp_matches_ddp_and_resumes_exactly.

Trains the same small MoE model three ways in one process group: DDP for 4 steps, FSDP2 for 4 steps,
and FSDP2 for 2 steps then resumed to 4 (each process accumulating 2 micro-batches: 4 data shards).
Rank 0 saves the loss curves and final weights to OUT/result.pt.
"""

import json
import sys
from pathlib import Path

import torch

BASE = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, num_experts=2, resolution=16, train_scenes=8,
            batch_size=4, log_every=1, ckpt_every=100, eval_every=0, warmup=1, autocast="fp32", threads=1, lr=1e-3)
PROCESSES, ACCUM = 2, 2  # 4 data shards: the same data as 1 process accumulating 4 micro-batches


def main(out: Path) -> None:
    from percept_cli.train import TrainConfig, run

    quiet = dict(log=lambda m: None)
    base = dict(BASE, grad_accum=ACCUM)
    ddp = run(TrainConfig(out=str(out / "ddp"), max_steps=4, strategy="ddp", **base), **quiet)
    fsdp = run(TrainConfig(out=str(out / "fsdp"), max_steps=4, strategy="fsdp", **base), **quiet)
    run(TrainConfig(out=str(out / "resumed"), max_steps=2, strategy="fsdp", **base), **quiet)
    resumed = run(TrainConfig(out=str(out / "resumed"), max_steps=4, strategy="fsdp", **base), **quiet)
    # held-out evaluation under FSDP: every process gathers the EMA, rank 0 evaluates it
    run(TrainConfig(out=str(out / "eval"), max_steps=1, strategy="fsdp",
                    **{**base, "eval_every": 1, "eval_scenes": 1, "eval_steps": 1}), **quiet)
    assert type(fsdp.model).__name__.startswith("FSDP") and fsdp.fsdp and not ddp.fsdp  # really sharded
    full = [t._full_states()[0] for t in (ddp, fsdp, resumed)]  # a collective: every rank gathers
    if torch.distributed.get_rank() == 0:
        curves = {name: [json.loads(line)["loss"] for line in (out / name / "log.jsonl").read_text().splitlines()]
                  for name in ("ddp", "fsdp", "resumed")}
        evaluated = json.loads((out / "eval" / "log.jsonl").read_text().splitlines()[-1])
        torch.save(dict(curves=curves, ddp=full[0], fsdp=full[1], resumed=full[2], evaluated=evaluated),
                   out / "result.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
