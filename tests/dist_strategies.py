"""Run under torchrun (2 gloo processes) by tests/test_train.py::test_fsdp_matches_ddp_and_resumes_exactly.

Trains the same small MoE model three ways in one process group: DDP for 4 steps, FSDP2 for 4 steps,
and FSDP2 for 2 steps then resumed to 4. Rank 0 saves the loss curves and final weights to OUT/result.pt.
"""

import json
import sys
from pathlib import Path

import torch

from percept_cli.train import TrainConfig, run

out = Path(sys.argv[1])
base = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, num_experts=2, resolution=16, train_scenes=4,
            batch_size=4, log_every=1, ckpt_every=100, eval_every=0, warmup=1, autocast="fp32", threads=1, lr=1e-3,
            grad_accum=2)
quiet = dict(log=lambda m: None)
ddp = run(TrainConfig(out=str(out / "ddp"), max_steps=4, strategy="ddp", **base), **quiet)
fsdp = run(TrainConfig(out=str(out / "fsdp"), max_steps=4, strategy="fsdp", **base), **quiet)
run(TrainConfig(out=str(out / "resumed"), max_steps=2, strategy="fsdp", **base), **quiet)
resumed = run(TrainConfig(out=str(out / "resumed"), max_steps=4, strategy="fsdp", **base), **quiet)
assert type(fsdp.model).__name__.startswith("FSDP") and fsdp.fsdp and not ddp.fsdp  # really sharded
full = [t._full_states()[0] for t in (ddp, fsdp, resumed)]  # a collective: every rank gathers
if torch.distributed.get_rank() == 0:
    curves = {name: [json.loads(line)["loss"] for line in (out / name / "log.jsonl").read_text().splitlines()]
              for name in ("ddp", "fsdp", "resumed")}
    torch.save(dict(curves=curves, ddp=full[0], fsdp=full[1], resumed=full[2]), out / "result.pt")
torch.distributed.barrier()
torch.distributed.destroy_process_group()
