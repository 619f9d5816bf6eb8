"""Training batches per second: built in the training process vs by forked worker processes.

    python benchmarks/train_data.py [--scenes 400] [--batch 512] [--batches 24] [--workers N] [--json]

On a GPU the batches are built on the CPU while the GPU trains, so this rate caps training
throughput (the shipped tiny's H200 stage ran at 6,300 samples/s, bound by one building thread).
Both contenders build exactly the same batches (StepBatches is a function of the step); the rates are
measured side by side in one run, after each contender's first batch (worker start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from percept_cli.data.mixture import ScenePool
from percept_cli.train import StepBatches, TrainConfig, batch_loader


def rate(data: StepBatches, workers: int, batches: int) -> float:
    """Samples per second over `batches` batches after the first."""
    it = iter(batch_loader(data, range(batches + 1), workers, pin=False))  # the loader training uses
    next(it)  # start-up
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * data.batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=400)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pool = ScenePool.render(range(args.scenes), 64, workers=args.workers)
    data = StepBatches(pool, TrainConfig(batch_size=args.batch, task_weights={"depth": 1.5, "amodal": 1.0,
                                                                               "flow_u": 1.0, "flow_v": 1.0}), 0)
    inline, workers = rate(data, 0, args.batches), rate(data, args.workers, args.batches)
    out = dict(batch=args.batch, cpus=os.cpu_count(), in_process_samples_per_s=round(inline),
               workers=args.workers, workers_samples_per_s=round(workers), speedup=round(workers / inline, 2))
    print(json.dumps(out) if args.json else "\n".join(f"{k:28s} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
