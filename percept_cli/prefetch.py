"""Decode inputs ahead of the model on worker threads, in order, with a bounded queue.

    for batch in prefetch(lambda p=p: load(p) for p in paths):   # workers=2, depth=4
        predict(batch)

Image decoding (cv2, imageio) releases the GIL, so a couple of threads keep the model fed while it
runs. At most `depth` jobs are decoded or waiting at any time, so a long list of big photos never
sits in memory at once. With pin=True, torch tensors in each result (also inside tuples, lists and
dicts) are copied to pinned memory when CUDA is present, so `.to("cuda", non_blocking=True)` can
overlap the copy with compute; elsewhere pin is a no-op. torch is imported only then, so importing
this module costs nothing at CLI startup.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def prefetch(jobs: Iterable[Callable[[], T]], workers: int = 2, depth: int = 4, pin: bool = False) -> Iterator[T]:
    """Yield job() for each job, in input order, running up to `depth` jobs ahead on `workers` threads.

    An exception raised by a job is raised here when its turn comes (earlier results are yielded
    first). Closing the iterator early cancels the jobs not yet started and waits for running ones.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    pin_fn = _pinner() if pin else None
    jobs = iter(jobs)
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="percept-prefetch")
    try:
        for job in jobs:  # 1. fill the window
            pending.append(pool.submit(job))
            if len(pending) >= depth:
                break
        while pending:  # 2. take the oldest, top the window up, hand the result out
            result = pending.popleft().result()
            job = next(jobs, None)
            if job is not None:
                pending.append(pool.submit(job))
            yield pin_fn(result) if pin_fn else result
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)


def _pinner() -> Callable[[Any], Any] | None:
    """A function that pins every tensor in a result, or None where pinning buys nothing (no CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None

    def pin(obj):
        if isinstance(obj, torch.Tensor):
            return obj.pin_memory()
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
            return type(obj)(*(pin(o) for o in obj))
        if isinstance(obj, (tuple, list)):
            return type(obj)(pin(o) for o in obj)
        if isinstance(obj, dict):
            return {k: pin(v) for k, v in obj.items()}
        return obj

    return pin
