"""Real dataset folders as training sources: the `[[data]]` tables of a training config.

Each table names a dataset (kind = hypersim | flyingchairs | pix2gestalt | vkitti2 | flyingthings3d |
scenes), its folder (path),
its share of the batches (weight) and the task it trains (task; a dataset's own task by default).
Items are resized (stretched, as the official code does) to a square of side `stored`: the training
resolution, or resolution / crop when random crops are asked for (crop < 1). Resizing scales flow
vectors with the image; crops and flips happen per batch (mixture.fill_rows): a crop keeps flow in
pixels, a flip negates u.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from percept_cli.data import datasets as D
from percept_cli.data.mixture import ArrayPool, Source
from percept_cli.errors import UsageError

DATASET_TASKS = {"hypersim": ("depth",), "flyingchairs": ("flow",), "pix2gestalt": ("amodal",),
                 "vkitti2": ("depth", "flow"), "flyingthings3d": ("flow",)}  # the ground truth each has
DATASET_TASK = {kind: tasks[0] for kind, tasks in DATASET_TASKS.items()}  # its task by default
KINDS = (*DATASET_TASKS, "scenes")
KEYS = ("kind", "path", "weight", "task", "crop")


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: str | None = None
    weight: float = 1.0
    task: tuple[str, ...] = ()  # tasks trained from it; () = all it has ground truth for (scenes: task_weights')
    crop: float = 1.0  # side of the random crop as a fraction of the stored item; 1 = no crop


def parse_data(tables: list[dict[str, Any]]) -> list[DataSpec]:
    """`[[data]]` tables -> DataSpecs; UsageError naming the table and the fix for anything wrong."""
    from percept_cli.tasks import TASKS

    specs = []
    for n, table in enumerate(tables, 1):
        where = f"[[data]] table {n}"
        if not isinstance(table, dict):
            raise UsageError(f"{where}: expected a table (kind, path, weight, task), got {table!r}")
        unknown = sorted(set(table) - set(KEYS))
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; use {', '.join(KEYS)}")
        kind = table.get("kind")
        if kind not in KINDS:
            raise UsageError(f"{where}: kind = {kind!r} is not a dataset; use {', '.join(KINDS)}")
        path = table.get("path")
        if kind != "scenes" and not path:
            raise UsageError(f"{where}: kind = {kind!r} needs path = the dataset's root folder")
        weight = table.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or weight <= 0:
            raise UsageError(f"{where}: weight must be a positive number, got {weight!r}")
        task = table.get("task", ())
        task = (task,) if isinstance(task, str) else tuple(task)
        for t in task:
            if t not in TASKS:
                raise UsageError(f"{where}: task {t!r} is not a task; use {', '.join(TASKS)}")
            if kind != "scenes" and t not in DATASET_TASKS[kind]:
                raise UsageError(f"{where}: {kind} has ground truth for {' and '.join(DATASET_TASKS[kind])} only, "
                                 f"not {t}; set task = {DATASET_TASK[kind]!r} or drop it")
        crop = table.get("crop", 1.0)
        if not isinstance(crop, (int, float)) or not 0 < crop <= 1:
            raise UsageError(f"{where}: crop must be in (0, 1], got {crop!r}")
        specs.append(DataSpec(kind, str(path) if path else None, float(weight), task, float(crop)))
    return specs


def task_kinds(tasks: tuple[str, ...], task_weights: dict[str, float]) -> dict[str, float]:
    """{batch kind: weight} of these tasks: their task_weights entries (flow: flow_u and flow_v)."""
    from percept_cli.data.mixture import kinds

    out = {k: task_weights.get(k, 1.0) for k, (task, _) in kinds().items() if task.name in tasks}
    return {k: w for k, w in out.items() if w > 0}


# -- one dataset folder ---------------------------------------------------------------------------


def _resize(img: np.ndarray, side: int, nearest: bool = False) -> np.ndarray:
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if img.shape[0] > side else cv2.INTER_LINEAR)
    out = cv2.resize(img, (side, side), interpolation=interp)
    return out.reshape((side, side) + img.shape[2:])


def resize_flow(flow: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 2) pixels -> (side, side, 2) pixels of the resized grid: u scaled by side/W, v by side/H."""
    h, w = flow.shape[:2]
    out = cv2.resize(flow, (side, side), interpolation=cv2.INTER_LINEAR)
    return (out * np.array([side / w, side / h], np.float32)).astype(np.float32)


def _depth_fields(s: D.DepthSample, side: int) -> dict[str, np.ndarray]:
    return dict(rgb=_resize(s.rgb, side), depth=_resize(s.depth, side, nearest=True),
                valid=_resize(s.valid.astype(np.uint8), side, nearest=True) > 0)


def _flow_fields(s: D.FlowSample, side: int) -> dict[str, np.ndarray]:
    return dict(rgb=_resize(s.rgb1, side), rgb2=_resize(s.rgb2, side), flow=resize_flow(s.flow, side))


def _amodal_fields(s: D.AmodalSample, side: int) -> dict[str, np.ndarray]:
    return dict(rgb=_resize(s.rgb, side), visible=_resize(s.visible_mask.astype(np.uint8), side, nearest=True) > 0,
                whole_rgb=_resize(s.whole_rgb, side))


def _frame_fields(s: D.FrameSample, side: int) -> dict[str, np.ndarray]:
    return dict(_flow_fields(s, side), depth=_resize(s.depth, side, nearest=True),
                valid=_resize(s.valid.astype(np.uint8), side, nearest=True) > 0)


READERS: dict[str, tuple[Callable, Callable, Callable]] = {  # kind: (list items, load one, training fields)
    "hypersim": (lambda root: D.hypersim_items(root), D.load_hypersim, _depth_fields),
    "flyingchairs": (lambda root: D.flyingchairs_items(root), D.load_flyingchairs, _flow_fields),
    "pix2gestalt": (lambda root: D.pix2gestalt_items(root, need_whole_rgb=True), D.load_pix2gestalt, _amodal_fields),
    "vkitti2": (D.vkitti2_items, D.load_vkitti2, _frame_fields),
    "flyingthings3d": (D.flyingthings_items, D.load_flyingthings, _flow_fields),
}


class FolderData:
    """This rank's share (items rank::world) of a dataset folder, loaded at `stored` x `stored`."""

    def __init__(self, spec: DataSpec, size: int, rank: int = 0, world: int = 1):
        self.spec, self.root = spec, Path(spec.path).expanduser()
        list_items, self._load, self._fields = READERS[spec.kind]
        every = list_items(self.root)  # InputError naming the folder and what is missing
        self.items = every[rank::world]
        if not self.items:
            raise UsageError(f"{self.root}: {len(every)} item(s) cannot give each of {world} processes one; "
                             "add items or use fewer processes")
        self.stored = max(size, math.ceil(size / spec.crop))
        self.shard = (rank, world)

    def __len__(self) -> int:
        return len(self.items)

    def identity(self) -> dict[str, Any]:
        """What its latents depend on: the folder, its files (names, sizes, times), this rank's share, the side."""
        h = hashlib.sha256()
        for item in self.items:
            for p in item if isinstance(item, tuple) else (item,):
                if isinstance(p, Path):
                    st = p.stat()
                    h.update(f"{p.relative_to(self.root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
                else:
                    h.update(f"{p}\n".encode())
        return dict(kind=self.spec.kind, path=str(self.root.resolve()), files=h.hexdigest(),
                    shard=list(self.shard), stored=self.stored)

    def load(self, indices: range | list[int] | None = None) -> ArrayPool:
        """The items (all by default) as an ArrayPool of stacked fields."""
        indices = range(len(self.items)) if indices is None else indices
        cols: dict[str, list] = {}
        for i in indices:
            for k, v in self._fields(self._load(self.root, self.items[i]), self.stored).items():
                cols.setdefault(k, []).append(v)
        return ArrayPool(**{k: np.stack(v) for k, v in cols.items()})


def folder_source(spec: DataSpec, size: int, task_weights: dict[str, float], rank: int = 0, world: int = 1,
                  pool: bool = True) -> tuple[Source, FolderData]:
    """A mixture Source for a dataset folder (its pool loaded when `pool`), and the folder's reader."""
    data = FolderData(spec, size, rank, world)
    tasks = spec.task or DATASET_TASKS[spec.kind]
    kinds = task_kinds(tasks, task_weights) or task_kinds(tasks, {})
    return Source(spec.kind, data.load() if pool else None, kinds, spec.weight, data.stored, data.identity()), data
