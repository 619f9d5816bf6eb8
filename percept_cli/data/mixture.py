"""Training examples for every task, as model-ready arrays: (condition, target, label).

A `ScenePool` renders synthetic scenes once (at twice the training resolution, then area-downsampled
so edges are anti-aliased; in worker processes when asked) and keeps them in memory; `sample_batch`
draws a multi-task batch with random horizontal flips, vectorised over the batch (`example` is the
one-sample reference it must match). Each task makes its own rows (Task.train_pair, tasks/).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from percept_cli.errors import UsageError
from percept_cli.tasks import TASKS, Task, to_unit

NULL_LABEL = 1004  # the label of generative pre-training rows ("generate": no condition)


def kinds() -> dict[str, tuple[Task, int]]:
    """{batch kind: (task, label)} of every registered task (flow: flow_u and flow_v; others: the name)."""
    return {kind: (task, label) for task in TASKS.values() for kind, label in task.train_kinds().items()}


def check_kinds(weights: dict[str, float]) -> None:
    """UsageError naming a task weight that is no registered batch kind."""
    known = [*kinds(), "generate"]
    for kind in weights:
        if kind not in known:
            raise UsageError(f"task_weights: {kind!r} is not a task; use {', '.join(known)}")


def _down(arr: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    out = cv2.resize(arr, (size, size), interpolation=interp)
    return out.reshape((size, size) + arr.shape[2:])


@dataclass
class ScenePool:
    """Rendered scenes at `size`: arrays stacked along the first axis."""

    rgb: np.ndarray  # (N, H, W, 3) uint8
    rgb2: np.ndarray  # (N, H, W, 3) uint8
    depth: np.ndarray  # (N, H, W) float32
    flow: np.ndarray  # (N, H, W, 2) float32, pixels at this size
    visible: np.ndarray  # (N, H, W) bool
    whole_rgb: np.ndarray  # (N, H, W, 3) uint8
    whole: np.ndarray  # (N, H, W) bool

    def __len__(self) -> int:
        return len(self.rgb)

    @classmethod
    def render(cls, seeds: range, size: int, supersample: int = 2, workers: int = 0,
               textures: str | None = None) -> "ScenePool":
        """Render scenes for `seeds`; each at size*supersample, then downsampled; `workers` > 1 forks processes.
        `textures`: a folder of photos, for the photo scene style (photo textures and backdrops)."""
        bank = None
        if textures:  # loaded before forking, so the workers share the parent's copy
            from percept_cli.data.photos import PhotoBank

            bank = PhotoBank.from_folder(textures)
        if workers > 1 and len(seeds) > 1:
            step = max(1, min(500, -(-len(seeds) // workers)))
            chunks = [seeds[i:i + step] for i in range(0, len(seeds), step)]
            # fork: the workers need nothing from the parent but the code; results come back in order
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:
                parts = list(ex.map(cls.render, chunks, [size] * len(chunks), [supersample] * len(chunks),
                                    [0] * len(chunks), [textures] * len(chunks)))
            return cls(**{k: np.concatenate([getattr(q, k) for q in parts]) for k in cls.__dataclass_fields__})
        from percept_cli.data.scenes import render_scene

        cols: dict[str, list] = {k: [] for k in cls.__dataclass_fields__}
        big = size * supersample
        for seed in seeds:
            s = render_scene(seed, big, photos=bank)
            cols["rgb"].append(_down(s.rgb, size))
            cols["rgb2"].append(_down(s.rgb2, size))
            cols["depth"].append(_down(s.depth, size))
            cols["flow"].append(_down(s.flow, size) / supersample)
            cols["visible"].append(_down(s.visible_mask.astype(np.float32), size) > 0.5)
            cols["whole_rgb"].append(_down(s.whole_rgb, size))
            cols["whole"].append(_down(s.whole_mask.astype(np.float32), size) > 0.5)
        return cls(**{k: np.stack(v) for k, v in cols.items()})

    @classmethod
    def cached(cls, path: Path, seeds: range, size: int, workers: int = 0, textures: str | None = None) -> "ScenePool":
        """Render once and keep an .npz beside the run, so restarts and resumes skip rendering."""
        path = Path(path)
        if path.exists():
            data = np.load(path)
            same_textures = str(data["textures"]) if "textures" in data else ""
            if (int(data["size"]) == size and int(data["start"]) == seeds.start and int(data["stop"]) == seeds.stop
                    and same_textures == str(textures or "")):
                return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        pool = cls.render(seeds, size, workers=workers, textures=textures)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, size=size, start=seeds.start, stop=seeds.stop, textures=str(textures or ""),
                 **{k: getattr(pool, k) for k in cls.__dataclass_fields__})
        tmp.replace(path)
        return pool


def example(pool: ScenePool, i: int, kind: str, flip: bool, flow_scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, int]:
    """One (cond (6, H, W), target (3, H, W), label) in [-1, 1] units, optionally mirrored left-right."""
    sl = (slice(None), slice(None, None, -1)) if flip else (slice(None), slice(None))
    rgb = np.ascontiguousarray(pool.rgb[i][sl])
    if kind == "generate":  # unconditional image generation (pre-training): no condition
        return np.zeros((6,) + rgb.shape[:2], np.float32), to_unit(rgb), NULL_LABEL
    task, label = kinds()[kind]
    scene = lambda field: np.array(getattr(pool, field)[i][sl])[None]  # noqa: E731  (1, H, W, ...) copy
    prompt, target = task.train_pair(kind, scene, np.array([flip]), flow_scale)
    cond = np.concatenate([to_unit(rgb), prompt[0]])  # (6, H, W)
    return cond.astype(np.float32), target[0], label


def sample_batch(
    pool: ScenePool, rng: np.random.Generator, batch: int, weights: dict[str, float], flow_scale: tuple[float, float],
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A multi-task batch: cond (B, 6, H, W), target (B, 3, H, W), labels (B,), kinds; equal to `example` per row.

    `out`: float32 (cond, target) arrays to fill, e.g. views of shared memory that a worker process sends.
    """
    check_kinds(weights)
    table = kinds()
    names_w = list(weights)
    p = np.array([weights[k] for k in names_w], np.float64)
    chosen = rng.choice(len(names_w), size=batch, p=p / p.sum())
    idx = rng.integers(0, len(pool), size=batch)
    flips = rng.random(batch) < 0.5
    names = [names_w[c] for c in chosen]
    name_arr = np.array(names)
    h, w = pool.rgb.shape[1:3]
    cond, target = out if out is not None else (np.empty((batch, 6, h, w), np.float32), np.empty((batch, 3, h, w), np.float32))
    labels = np.array([table[k][1] if k in table else NULL_LABEL for k in names], np.int64)
    for kind in dict.fromkeys(names):  # each kind once, in order of first appearance
        rows = np.flatnonzero(name_arr == kind)
        fill_rows(pool, kind, idx[rows], flips[rows], rows, cond, target, flow_scale)
    return cond, target, labels, names


def fill_rows(pool: Any, kind: str, idx: np.ndarray, flips: np.ndarray, rows: np.ndarray, cond: np.ndarray,
              target: np.ndarray, flow_scale: tuple[float, float], crops: np.ndarray | None = None,
              size: int | None = None) -> None:
    """Write cond[rows], target[rows] for pool items `idx` of one batch kind, mirrored where `flips`.

    crops: (n, 2) top-left corners of a size x size window of each item (None: the whole item). A crop
    keeps flow in pixels (a window moves no vector); a flip mirrors the window and negates u (the task).
    """
    table = kinds()

    def take(name: str) -> np.ndarray:  # (n, H, W, ...) rows of this group, cropped, mirrored where flips
        got = getattr(pool, name)[idx]
        if crops is not None:
            got = np.stack([g[y:y + size, x:x + size] for g, (y, x) in zip(got, crops)])
        got[flips] = got[flips][:, :, ::-1]
        return got

    rgb = take("rgb")
    if kind == "generate":
        cond[rows], target[rows] = 0.0, to_unit(rgb)
        return
    cond[rows, :3] = to_unit(rgb)
    cond[rows, 3:], target[rows] = table[kind][0].train_pair(kind, take, flips, flow_scale)


class ArrayPool:
    """A dataset's training items as arrays stacked along the first axis, holding only its task's fields
    (a depth set: rgb, depth, valid; flow: rgb, rgb2, flow; amodal: rgb, visible, whole_rgb)."""

    def __init__(self, **fields: np.ndarray):
        self.fields = fields

    def __getattr__(self, name: str) -> np.ndarray:
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(f"this dataset has no {name!r} field (it has {', '.join(fields)})")

    def __len__(self) -> int:
        return len(self.fields["rgb"])


@dataclass
class Source:
    """One entry of the training mixture: items (a pool), the batch kinds drawn from it, and its weight."""

    name: str
    pool: Any  # ScenePool | ArrayPool, items stored at `stored` x `stored`
    kinds: dict[str, float]  # {batch kind: weight within this source}
    weight: float
    stored: int  # item side; > the training size: random size x size crops
    identity: dict = field(default_factory=dict)  # what the latent cache keys on


@dataclass
class Draw:
    """The random choices of one batch: per row its source, kind, item, flip and crop corner."""

    source: np.ndarray  # (B,) int
    kinds: list[str]
    idx: np.ndarray  # (B,) int
    flips: np.ndarray  # (B,) bool
    crops: np.ndarray  # (B, 2) int: top-left (y, x)


def draw(sources: list[Source], rng: np.random.Generator, batch: int, size: int) -> Draw:
    """The choices of one batch, a pure function of rng's state: source by weight, then kind by its
    weight within the source, item, flip (p = 1/2) and crop corner uniformly."""
    w = np.array([s.weight for s in sources], np.float64)
    src = rng.choice(len(sources), size=batch, p=w / w.sum())
    u_kind, u_idx, flips, u_crop = rng.random(batch), rng.random(batch), rng.random(batch) < 0.5, rng.random((batch, 2))
    names, idx, crops = [], np.empty(batch, np.int64), np.zeros((batch, 2), np.int64)
    for r, s in enumerate(src):
        source = sources[s]
        kw = np.array(list(source.kinds.values()), np.float64)
        k = min(int(np.searchsorted(np.cumsum(kw / kw.sum()), u_kind[r], side="right")), len(kw) - 1)
        names.append(list(source.kinds)[k])
        idx[r] = min(int(u_idx[r] * len(source.pool)), len(source.pool) - 1)
        crops[r] = np.floor(u_crop[r] * (source.stored - size + 1)).astype(np.int64)
    return Draw(src, names, idx, flips, crops)


def sample_mixture(sources: list[Source], rng: np.random.Generator, batch: int, size: int,
                   flow_scale: tuple[float, float], out: tuple[np.ndarray, np.ndarray] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A batch from a weighted mixture of sources: cond (B, 6, size, size), target (B, 3, size, size), labels, kinds."""
    d = draw(sources, rng, batch, size)
    table = kinds()
    cond, target = out if out is not None else (np.empty((batch, 6, size, size), np.float32),
                                                np.empty((batch, 3, size, size), np.float32))
    labels = np.array([table[k][1] if k in table else NULL_LABEL for k in d.kinds], np.int64)
    groups = np.array([f"{s}/{k}" for s, k in zip(d.source, d.kinds)])
    for group in dict.fromkeys(groups):
        rows = np.flatnonzero(groups == group)
        source = sources[d.source[rows[0]]]
        crop = source.stored > size
        fill_rows(source.pool, d.kinds[rows[0]], d.idx[rows], d.flips[rows], rows, cond, target, flow_scale,
                  d.crops[rows] if crop else None, size)
    return cond, target, labels, d.kinds
