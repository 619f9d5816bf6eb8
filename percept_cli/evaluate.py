"""Evaluation: each task's own metrics (tasks/: depth AbsRel / delta1, flow EPE, amodal IoU), with baselines;
and video depth (--temporal): per-frame AbsRel and flicker on rendered sequences, temporal vs --no-temporal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from percept_cli import metrics
from percept_cli.pipeline import Predictor
from percept_cli.tasks import TASKS, get_task

EVAL_SEED_START = 1_000_000  # held-out synthetic scenes: training never uses seeds this high


def synthetic_set(task: str, count: int, size: int = 128, start: int = EVAL_SEED_START) -> list:
    """Held-out rendered scenes as dataset samples."""
    from percept_cli.data.datasets import synthetic_samples

    return synthetic_samples(task, range(start, start + count), size)


def real_set(root: Path) -> tuple[str, list]:
    """(task, samples) for a real dataset folder (the task whose `dataset` it holds)."""
    from percept_cli.data import datasets

    kind = datasets.detect_dataset(Path(root))
    task = next(t for t in TASKS.values() if t.dataset == kind)
    return task.name, task.read_dataset(Path(root))


def score(task: str, sample, pred) -> dict[str, float]:
    """Metrics of one prediction (a result dataclass or a baseline array) against its sample."""
    return get_task(task).score(sample, pred)


def baseline_scores(task: str, samples: list) -> dict[str, dict[str, float]]:
    """The reference points each table shows beside the model."""
    spec = get_task(task)
    return {name: metrics.aggregate([spec.score(s, baseline(s)) for s in samples])
            for name, baseline in spec.baselines(samples).items()}


def evaluate(predictor: Predictor, task: str, samples: list, with_baselines: bool = True, **settings: Any) -> dict[str, Any]:
    """Mean metrics of the model (and baselines) on samples; settings go to Predictor.settings."""
    spec = get_task(task)
    s = predictor.settings(task, **settings)
    preds = predictor.predict(task, [spec.eval_input(x) for x in samples], s)
    result: dict[str, Any] = {"task": task, "count": len(samples), "settings": s.as_dict(),
                              "model": metrics.aggregate([spec.score(x, p) for x, p in zip(samples, preds)])}
    if with_baselines:
        result["baselines"] = baseline_scores(task, samples)
    return result


# ------------------------------------------------------------------------------------------------ temporal (videos)


def sequence_set(count: int, frames: int = 10, size: int = 64, start: int = EVAL_SEED_START) -> list:
    """Held-out rendered sequences (data.scenes.render_sequence): camera and objects moving, exact depth per frame."""
    from percept_cli.data.scenes import render_sequence

    return [render_sequence(seed, frames, size) for seed in range(start, start + count)]


def predict_video(predictor: Predictor, task: str, frames, settings, temporal: bool = True) -> Any:
    """Yield each frame's result as `percept TASK VIDEO` makes it: predicted in order, then through the task's
    per-video state (Task.video_state; --no-temporal: temporal=False). frames: an iterable of (H, W, 3) uint8."""
    from percept_cli.tasks import TaskInput

    state = get_task(task).video_state(temporal)
    items = [TaskInput(f, None, f"frame {k}") for k, f in enumerate(frames)]
    for _, result in predictor.predict_iter(task, items, settings):
        yield state.result(result)


def evaluate_temporal(predictor: Predictor, sequences: list, **settings: Any) -> dict[str, Any]:
    """Depth on sequences, as a video is predicted, with and without --no-temporal: per-frame AbsRel / delta1
    (each frame fitted to its ground truth, as usual) and flicker (temporal.flicker_error: one fit per clip).

    Both modes predict with the same noise, so each sequence is predicted once and its results go through
    a fresh video state of each mode (what predict_video does, without predicting twice)."""
    from percept_cli.temporal import flicker_error

    spec, s = get_task("depth"), predictor.settings("depth", **settings)
    modes = {"temporal (default)": True, "--no-temporal": False}
    per_frame: dict[str, list] = {m: [] for m in modes}
    flicker: dict[str, list] = {m: [] for m in modes}
    for seq in sequences:
        valid = np.ones(seq.depth.shape[1:], bool)
        raw = list(predict_video(predictor, "depth", seq.rgb, s, temporal=False))  # frame order
        for name, temporal in modes.items():
            state = spec.video_state(temporal)
            preds = np.stack([state.result(r).depth for r in raw])  # (N, H, W)
            per_frame[name] += [metrics.depth_metrics(p, g, valid) for p, g in zip(preds, seq.depth)]
            flicker[name].append(flicker_error(preds, seq.depth))
    rows = {m: metrics.aggregate(per_frame[m]) | {"flicker": float(np.mean(flicker[m]))} for m in modes}
    on, off = rows["temporal (default)"], rows["--no-temporal"]
    return {"task": "depth", "count": len(sequences), "frames": len(sequences[0].rgb) if sequences else 0,
            "settings": s.as_dict(), "model": on, "baselines": {"--no-temporal": off},
            "change": {k: (on[k] - off[k]) / off[k] if off[k] else 0.0 for k in on}}
