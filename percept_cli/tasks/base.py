"""The Task interface: every question the pipeline, run loop, trainer and evaluator ask a task.

A task module subclasses `Task`, fills in its class attributes (name, labels, formats...) and
answers the methods below; `percept_cli.tasks.register` makes it known to every command. The
defaults here are those of a task on one image (depth); numpy only, so planning stays torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from percept_cli.errors import InputError, UsageError


@dataclass
class TaskInput:
    image: np.ndarray  # (H, W, 3) uint8
    extra: np.ndarray | None = None  # flow: frame 2 (H, W, 3) uint8; amodal: visible mask (H, W) bool
    name: str = "input"  # for messages


@dataclass(frozen=True)
class Source:
    """One planned input before decoding."""

    rel: Path  # output stem under OUT; for a video, the folder of its per-frame outputs
    paths: tuple[Path, ...]  # (image,) | (frame1, frame2) | (image, mask) | (video,) | (video, mask)
    video: bool = False


@dataclass(frozen=True)
class ToInput:
    """From the processing grid back to the input: resize (letterbox cropped) and input px per grid px."""

    resize: Callable[[np.ndarray], np.ndarray]  # (h, w[, C]) -> (H, W[, C])
    scale: tuple[float, float]  # (x, y)
    extra: np.ndarray | None = None  # the input's second input at its size (amodal: the visible mask)


def to_unit(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [-1, 1]."""
    return (np.moveaxis(rgb.astype(np.float32), -1, -3) / 127.5) - 1.0


def gray3(values: np.ndarray) -> np.ndarray:
    """(..., H, W) -> (..., 3, H, W): one channel repeated to the model's three."""
    return np.repeat(values[..., None, :, :], 3, axis=-3)


def check_map(arr: np.ndarray | None, shape: tuple[int, ...], name: str) -> None:
    """ValueError unless `arr` is None or has `shape`."""
    if arr is not None and np.shape(arr) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {np.shape(arr)}")


def uncertainty_writers(uncertainty: np.ndarray | None) -> dict[str, Callable[[Path], object]]:
    """The two uncertainty files every task writes beside its outputs."""
    from percept_cli import writers as W

    return {
        "uncertainty.npy": lambda p: W.write_npy(p, np.asarray(uncertainty, np.float32)),
        "uncertainty.png": lambda p: W.write_png8(p, W.colorize_uncertainty(uncertainty)),
    }


def read_first(outputs: list[Path], readers: tuple[tuple[str, Callable[[Path], np.ndarray]], ...]) -> np.ndarray | None:
    """The first output whose name ends with a reader's suffix, read; None when none is there or readable."""
    for suffix, read in readers:
        path = next((p for p in outputs if p.name.endswith(suffix)), None)
        if path is not None:
            try:
                return read(path)
            except (InputError, OSError, ValueError):
                return None
    return None


def write_plan(plan: dict[str, Path], writers: dict[str, Callable[[Path], object]], overwrite: bool) -> list[Path]:
    """Run each writer whose file is missing (or all with overwrite); return every planned path."""
    for key, path in plan.items():
        if overwrite or not path.exists():
            writers[key](path)
    return list(plan.values())


class VideoState:
    """What a task keeps while one video streams (Task.video_state): each frame's result passes through
    `result` in frame order before it is written, `visualise` draws its .mp4 frame, and `skipped` draws a
    frame whose outputs exist already (taking its files into the state). This default keeps nothing."""

    def __init__(self, task: "Task", temporal: bool = True) -> None:
        self.task, self.temporal = task, temporal

    def result(self, result: Any) -> Any:
        return result

    def visualise(self, result: Any, item: TaskInput) -> np.ndarray:
        return self.task.visualise(result, item)

    def skipped(self, outputs: list[Path], item: TaskInput) -> np.ndarray | None:
        return self.task.viz_from_outputs(outputs, item)


class Task:
    """One perception task; class attributes are its presets, methods its answers."""

    name: str = ""
    labels: tuple[int, ...] = ()  # one sampling run per label (flow: u and v)
    kinds: tuple[str, ...] = ()  # training batch kinds, one per label (default: the name)
    extra: str | None = None  # the second input: None, "frame" or "mask"
    names: tuple[tuple[str, str], ...] = ()  # (format, file suffix) in write order
    numeric: frozenset[str] = frozenset()  # formats whose uncertainty map is an .npy (others: a .png)
    reduction: str = "median"  # the ensemble reducer without --reduction
    dataset: str | None = None  # the real dataset `percept eval` reads for it (datasets.detect_dataset)

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(fmt for fmt, _ in self.names)

    def configure(self, opts: Any, note: Callable[[str], None] | None = None) -> "Task":
        """This task with a run's task-specific options (run.Options; depth: --colormap, --fov, --align...);
        `note` says one line on stderr. UsageError for a bad value. The default takes none."""
        return self

    def record(self, stem: Path) -> dict[str, Any]:
        """Extra --json fields for the result just written at `stem` (depth: intrinsics, align)."""
        return {}

    def train_kinds(self) -> dict[str, int]:
        """{batch kind: label}."""
        return dict(zip(self.kinds or (self.name,), self.labels))

    # -- inputs -----------------------------------------------------------------------------------

    def sources(self, inputs: list[str], out: Path, recursive: bool, mask: str | None, list_file: str | None,
                stdin: TextIO | None, problems: list | None) -> list[Source]:
        """Expand files, folders, globs, videos and '-' into sources (media does the reading rules)."""
        from percept_cli import media

        if list_file is not None:
            raise UsageError(f"{self.name} takes images, folders, globs or '-' (paths on stdin), not --list; drop --list")
        if mask is not None:
            raise UsageError(f"{self.name} takes no --mask, only images, folders, globs or '-'; drop --mask")
        items = media.collect_images(inputs, recursive=recursive, stdin=stdin, exclude=out, problems=problems)
        return [Source(it.rel, (it.path,), media.is_video(it.path)) for it in items]

    def load(self, src: Source) -> TaskInput:
        """Decode one non-video source; InputError names the file(s) and the fix."""
        from percept_cli import media

        return TaskInput(media.read_image(src.paths[0]), name=str(src.paths[0]))

    def video_inputs(self, src: Source, frames: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, TaskInput]]:
        """(frame index, input) per job of a video's sampled frames."""
        for index, frame in frames:
            yield index, TaskInput(frame, name=f"{src.paths[0]} frame {index}")

    def jobs_from_frames(self, n: int) -> int:
        """Jobs (and named outputs) from n sampled video frames."""
        return n

    def check_input(self, item: TaskInput) -> None:
        """Validate the second input (the image is checked by the Predictor); InputError names the fix."""

    # -- the model's side -------------------------------------------------------------------------

    def prompt(self, image: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
        """The conditioning image (..., 3, H, W) in [-1, 1] (or the official conventions)."""
        raise NotImplementedError

    def train_pair(self, kind: str, scene: Callable[[str], np.ndarray], flipped: np.ndarray,
                   flow_scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """(prompt (n, 3, H, W), target (n, 3, H, W)) for n rows of a ScenePool.

        scene(field): that ScenePool field's rows, mirrored left-right where `flipped` (n,) is true.
        """
        raise NotImplementedError

    def decode(self, decoded: np.ndarray, config: dict[str, Any]) -> np.ndarray:
        """Decoded members (L, E, 3, h, w) at the processing grid -> task values there."""
        raise NotImplementedError

    def finish(self, values: np.ndarray, to_input: ToInput, reduction: str | None, config: dict[str, Any]) -> Any:
        """Ensemble the values, bring them back to the input's size: the task's result dataclass."""
        raise NotImplementedError

    # fit=tile (pipeline): a task that can blend overlapping crops says so and merges them.
    tileable: bool = False

    def merge_tiles(self, layout: Any, tiles: list[tuple[tuple[int, int, int, int], Any]], resolution: int) -> Any:
        """The whole-image result (the layout), [((y0, y1, x0, x1), crop result)] and the grid -> one result."""
        raise NotImplementedError

    # -- outputs ----------------------------------------------------------------------------------

    def parse_formats(self, text: str) -> tuple[str, ...]:
        """Parse a comma list of --format values ('all' = every format); UsageError if invalid."""
        allowed, out = self.formats, []
        for value in (v.strip().lower() for v in str(text).split(",")):
            if not value:
                continue
            for fmt in allowed if value == "all" else (value,):
                if fmt not in allowed:
                    raise UsageError(f"--format: '{value}' is not a {self.name} format; choose from "
                                     f"{','.join(allowed)} (comma-separated) or all")
                if fmt not in out:
                    out.append(fmt)
        if not out:
            raise UsageError(f"--format is empty; choose from {','.join(allowed)} (comma-separated) or all")
        return tuple(out)

    def plan(self, stem: str | os.PathLike[str], formats: str | Sequence[str], uncertainty: bool) -> dict[str, Path]:
        """{format or 'uncertainty.npy'/'uncertainty.png': path} in a fixed order."""
        stem = Path(stem)
        chosen = self.parse_formats(formats if isinstance(formats, str) else ",".join(formats))
        named = lambda suffix: stem.with_name(stem.name + suffix)  # noqa: E731 - append, never replace a suffix
        plan = {fmt: named(suffix) for fmt, suffix in self.names if fmt in chosen}
        if uncertainty:
            if any(f in self.numeric for f in chosen):
                plan["uncertainty.npy"] = named(f".{self.name}.uncertainty.npy")
            if any(f not in self.numeric for f in chosen):
                plan["uncertainty.png"] = named(f".{self.name}.uncertainty.png")
        return plan

    def outputs(self, stem: str | os.PathLike[str], formats: str | Sequence[str], uncertainty: bool) -> list[Path]:
        """Paths `write` would write for `stem` (OUT/rel)."""
        return list(self.plan(stem, formats, uncertainty).values())

    def write(self, stem: Path, result: Any, item: TaskInput, formats: Sequence[str], overwrite: bool) -> list[Path]:
        """Write one result's files (existing ones kept unless overwrite); every planned path."""
        raise NotImplementedError

    def visualise(self, result: Any, item: TaskInput) -> np.ndarray:
        """The (H, W, 3) uint8 frame a video's .mp4 shows."""
        raise NotImplementedError

    def video_state(self, temporal: bool = True) -> VideoState:
        """A fresh state for one video; temporal=False (--no-temporal) keeps its frames independent."""
        return VideoState(self, temporal)

    def viz_readers(self, item: TaskInput) -> tuple[tuple[str, Callable[[Path], np.ndarray]], ...]:
        """(file suffix, read it as an .mp4 frame): the visualisation file first, then numeric outputs."""
        return ()

    def viz_from_outputs(self, outputs: list[Path], item: TaskInput) -> np.ndarray | None:
        """Rebuild a skipped frame's .mp4 frame from its files on disk; None if none can be read."""
        return read_first(outputs, self.viz_readers(item))

    # -- evaluation -------------------------------------------------------------------------------

    def sample(self, scene: Any, name: str) -> Any:
        """A rendered scene (data.scenes.Scene) as this task's evaluation sample."""
        raise NotImplementedError

    def read_dataset(self, root: Path) -> list:
        """The samples of a real dataset folder of kind `dataset`."""
        raise UsageError(f"{self.name} has no real evaluation dataset; evaluate it on rendered scenes")

    def eval_input(self, sample: Any) -> TaskInput:
        """The prediction input of one sample."""
        return TaskInput(sample.rgb, None, sample.name)

    def score(self, sample: Any, pred: Any) -> dict[str, float]:
        """Metrics of one prediction (a result dataclass or a baseline array) against its sample."""
        raise NotImplementedError

    def baselines(self, samples: list) -> dict[str, Callable[[Any], Any]]:
        """{table row name: sample -> baseline prediction}: what the model must beat."""
        return {}
