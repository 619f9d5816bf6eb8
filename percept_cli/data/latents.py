"""VAE latents of training items, encoded once and cached on disk.

A latent model trains on the VAE's latents of its inputs and targets. Encoding is the slow part and
its result never changes for a given (dataset, VAE, resolution, flow scale), so each source is
encoded once, both unmirrored and mirrored (a flip in latent space is not a flip of the image), into
a cache folder named by the hash of everything it depends on:

    CACHE/<key>/meta.json        what the key was made of (version, dataset identity, VAE hash, sizes)
    CACHE/<key>/<kind>.npy       (N, 2, 3*C, h, w) float16 (or float32): [rgb latent, prompt latent,
                                 target latent] per item and flip (0 = as stored, 1 = mirrored)

float16 halves the disk (at 512 px: 197 KB per item, kind and both flips; SD latents are within
+-~6, so the rounding is below 4e-3, far under the noise the model is trained to remove).

Another VAE, resolution, flow scale or dataset gives another key, so a stale cache is never read. A
folder is written under a temporary name and renamed, so a cache is complete or absent. Batches are
then gathered from memory-mapped arrays by the same (seed, rank, step) draws as the pixel loop
(mixture.draw), so a resumed run sees exactly the batches of a straight one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from percept_cli.data.mixture import NULL_LABEL, Source, draw, fill_rows, kinds

VERSION = 1


def file_hash(paths: list[Path]) -> str:
    """sha256 over these files' names and contents (a VAE folder's config.json and weights).

    Each file's digest comes from hub.file_sha256, which remembers it by path, size, mtime and inode:
    a multi-GB VAE is read once, not at every training start."""
    from percept_cli.hub import file_sha256

    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{p.name}:{file_sha256(p)}\n".encode())
    return h.hexdigest()


def vae_hash(folder: str | Path) -> str:
    """The identity of a VAE folder: its config and weights' bytes."""
    folder = Path(folder)
    return file_hash([p for p in folder.iterdir() if p.is_file() and (p.suffix in (".json", ".safetensors"))])


def cache_key(identity: dict[str, Any], vae: str, resolution: int, flow_scale: tuple[float, float],
              kinds_: list[str], dtype: str = "float16") -> dict[str, Any]:
    """Everything a source's latents depend on (the folder is named by its hash)."""
    return dict(version=VERSION, dataset=identity, vae=vae, resolution=int(resolution),
                flow_scale=[float(x) for x in flow_scale], kinds=sorted(kinds_), dtype=dtype)


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class LatentPool:
    """A source's cached latents: {kind: (N, 2, 3C, h, w)} memory-mapped; len = items."""

    def __init__(self, folder: Path, kinds_: list[str]):
        self.folder = Path(folder)
        self.arrays = {k: np.load(self.folder / f"{k}.npy", mmap_mode="r") for k in kinds_}
        self.n = len(next(iter(self.arrays.values())))

    def __len__(self) -> int:
        return self.n


def encode_source(source: Source, n: int, load, autoencoder, cache: Path, vae: str, resolution: int,
                  flow_scale: tuple[float, float], device: str = "cpu", chunk: int = 16,
                  log=lambda m: None, dtype: str = "float16") -> LatentPool:
    """The source's LatentPool (n items), encoded now unless the cache holds it; `load(range)` gives those items."""
    import torch

    key = cache_key(source.identity, vae, resolution, flow_scale, list(source.kinds), dtype)
    folder = Path(cache) / key_hash(key)
    if (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") == key:
            return LatentPool(folder, list(source.kinds))
    if source.stored != resolution:
        from percept_cli.errors import UsageError

        raise UsageError(f"{source.name}: latent training encodes each item once, so random crops cannot be "
                         f"used (items stored at {source.stored}, training at {resolution}): set crop = 1.0")
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"encoding {n} {source.name} item(s) to VAE latents in {folder}")
    outs = {}
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        pool = load(range(int(idx[0]), int(idx[-1]) + 1))
        local = np.arange(len(idx))
        for kind in source.kinds:
            rows = np.arange(len(idx))
            parts = []
            for flip in (False, True):
                cond = np.empty((len(idx), 6, resolution, resolution), np.float32)
                target = np.empty((len(idx), 3, resolution, resolution), np.float32)
                fill_rows(pool, kind, local, np.full(len(idx), flip), rows, cond, target, flow_scale)
                images = torch.from_numpy(np.concatenate([cond[:, :3], cond[:, 3:], target]))  # (3n, 3, H, W)
                with torch.no_grad():
                    lat = autoencoder.encode(images.to(device)).float().cpu().numpy()  # (3n, C, h, w)
                c = lat.shape[1]
                lat = lat.reshape(3, len(idx), c, *lat.shape[2:]).transpose(1, 0, 2, 3, 4)  # (n, 3, C, h, w)
                parts.append(lat.reshape(len(idx), 3 * c, *lat.shape[3:]))
            both = np.stack(parts, 1)  # (n, 2, 3C, h, w)
            if kind not in outs:
                outs[kind] = np.lib.format.open_memmap(tmp / f"{kind}.npy", mode="w+", dtype=np.dtype(dtype),
                                                       shape=(n,) + both.shape[1:])
            outs[kind][start:start + len(idx)] = both
    for arr in outs.values():
        arr.flush()
    del outs
    (tmp / "meta.json").write_text(json.dumps(dict(key=key, items=n), indent=2, sort_keys=True) + "\n")
    if folder.exists():  # another process finished first: theirs is equal; keep it
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        try:
            tmp.rename(folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return LatentPool(folder, list(source.kinds))


def sample_latents(sources: list[Source], rng: np.random.Generator, batch: int, size: int,
                   out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A latent batch from sources whose pools are LatentPools: cond (B, 2C, h, w), target (B, C, h, w), labels, kinds.

    The draws are mixture.draw's, the same as the pixel mixture's for the same rng state."""
    d = draw(sources, rng, batch, size)
    table = kinds()
    first = next(iter(sources[0].pool.arrays.values()))
    c3, h, w = first.shape[2:]
    c = c3 // 3
    cond, target = out if out is not None else (np.empty((batch, 2 * c, h, w), np.float32),
                                                np.empty((batch, c, h, w), np.float32))
    for r in range(batch):
        lat = sources[d.source[r]].pool.arrays[d.kinds[r]][d.idx[r], int(d.flips[r])]  # (3C, h, w)
        cond[r], target[r] = lat[: 2 * c], lat[2 * c:]
    labels = np.array([table[k][1] if k in table else NULL_LABEL for k in d.kinds], np.int64)
    return cond, target, labels, d.kinds
