"""Evaluation: each task's own metrics (tasks/: depth AbsRel / delta1, flow EPE, amodal IoU), with baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
