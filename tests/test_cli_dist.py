"""Scale-out: under torchrun each process predicts the disjoint shard items[rank::world_size].

Two CPU processes over a folder of six images: every input is done exactly once, both ranks
work, and the files equal a single-process run's (the noise depends on the seed, not the rank).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from tests.helpers import ROOT, fast, files, image, percept


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # torchrun with 2 processes: ~10 s on 2 cores; CI runs it (PERCEPT_SLOW=1)
def test_torchrun_two_processes_split_the_inputs(model, tmp_path):
    names = [f"img{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        image(tmp_path / "in" / name, hw=(20 + 4 * (i % 2), 28), seed=i)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "percept_cli",
           "depth", str(tmp_path / "in"), "-o", str(out), "--format", "npy", "--json", "--device", "auto",
           *map(str, fast(model))]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    done = Counter(os.path.basename(r["inputs"][0]) for r in recs if r["status"] == "ok")
    assert done == Counter(names)  # each exactly once
    by_rank = {r["rank"]: sorted(os.path.basename(x["inputs"][0]) for x in recs if x["rank"] == r["rank"])
               for r in recs}
    assert by_rank == {0: names[0::2], 1: names[1::2]}
    assert {r["settings"]["device"] for r in recs} == {"cpu"}
    assert files(out) == sorted(n.replace(".png", ".depth.npy") for n in names)

    # one process, same seed: the same numbers
    code, _, stderr = percept("depth", tmp_path / "in", "-o", tmp_path / "single", "--format", "npy", *fast(model))
    assert code == 0, stderr
    for name in names:
        stem = name.replace(".png", ".depth.npy")
        np.testing.assert_allclose(np.load(out / stem), np.load(tmp_path / "single" / stem), atol=1e-6)
