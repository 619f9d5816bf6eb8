"""Evaluation: depth AbsRel / delta1 (after a scale-and-shift fit), flow EPE, amodal IoU, with baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any


from percept_cli import baselines, metrics
from percept_cli.pipeline import Predictor, TaskInput

EVAL_SEED_START = 1_000_000  # held-out synthetic scenes: training never uses seeds this high


def synthetic_set(task: str, count: int, size: int = 128, start: int = EVAL_SEED_START) -> list:
    """Held-out rendered scenes as dataset samples."""
    from percept_cli.data.datasets import synthetic_samples

    return synthetic_samples(task, range(start, start + count), size)


def real_set(root: Path) -> tuple[str, list]:
    """(task, samples) for a real dataset folder (Hypersim, FlyingChairs or pix2gestalt layout)."""
    from percept_cli.data import datasets

    kind = datasets.detect_dataset(Path(root))
    reader = {"hypersim": ("depth", datasets.read_hypersim), "flyingchairs": ("flow", datasets.read_flyingchairs),
              "pix2gestalt": ("amodal", datasets.read_pix2gestalt)}[kind]
    return reader[0], reader[1](Path(root))


def _inputs(task: str, samples: list) -> list[TaskInput]:
    if task == "depth":
        return [TaskInput(s.rgb, None, s.name) for s in samples]
    if task == "flow":
        return [TaskInput(s.rgb1, s.rgb2, s.name) for s in samples]
    return [TaskInput(s.rgb, s.visible_mask, s.name) for s in samples]


def score(task: str, sample, pred) -> dict[str, float]:
    """Metrics of one prediction (a result dataclass or a baseline array) against its sample."""
    if task == "depth":
        depth = pred.depth if hasattr(pred, "depth") else pred
        return metrics.depth_metrics(depth, sample.depth, sample.valid)
    if task == "flow":
        flow = pred.flow if hasattr(pred, "flow") else pred
        return {"epe": metrics.flow_epe(flow, sample.flow, sample.valid)}
    mask = pred.mask if hasattr(pred, "mask") else pred
    return {"iou": metrics.mask_iou(mask, sample.whole_mask)}


def baseline_scores(task: str, samples: list) -> dict[str, dict[str, float]]:
    """The reference points each table shows beside the model."""
    out: dict[str, dict[str, float]] = {}
    if task == "depth":
        out["ramp (bottom = near)"] = metrics.aggregate([score(task, s, baselines.ramp_depth(*s.depth.shape)) for s in samples])
    elif task == "flow":
        out["zero flow"] = metrics.aggregate([score(task, s, baselines.zero_flow(*s.flow.shape[:2])) for s in samples])
        out["OpenCV DIS (medium)"] = metrics.aggregate([score(task, s, baselines.dis_flow(s.rgb1, s.rgb2)) for s in samples])
    else:
        out["visible mask"] = metrics.aggregate([score(task, s, baselines.visible_as_amodal(s.visible_mask)) for s in samples])
    return out


def evaluate(predictor: Predictor, task: str, samples: list, with_baselines: bool = True, **settings: Any) -> dict[str, Any]:
    """Mean metrics of the model (and baselines) on samples; settings go to Predictor.settings."""
    s = predictor.settings(task, **settings)
    preds = predictor.predict(task, _inputs(task, samples), s)
    result: dict[str, Any] = {"task": task, "count": len(samples), "settings": s.as_dict(),
                              "model": metrics.aggregate([score(task, x, p) for x, p in zip(samples, preds)])}
    if with_baselines:
        result["baselines"] = baseline_scores(task, samples)
    return result
