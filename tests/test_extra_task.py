"""A new task is one file: grey-level inversion, defined and registered here, runs through the Predictor,
the run loop, `percept train` and `percept eval` without a change to any other module."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from percept_cli import run, tasks
from percept_cli.cli import main
from percept_cli.tasks.base import Task, gray3, write_plan


@dataclass
class InvertResult:
    value: np.ndarray  # (H, W) float32 in [0, 1]: 1 - grey level
    uncertainty: np.ndarray | None  # (H, W) float32 std of the members; None for one member


@dataclass
class InvertSample:
    rgb: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W) float32 in [0, 1]
    name: str


def inverted_grey(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., H, W) float32 in [0, 1]: (255 - grey) / 255."""
    return (255.0 - rgb.astype(np.float32).mean(axis=-1)) / 255.0


class Invert(Task):
    name, labels = "invert", (1005,)  # a label id no built-in task uses
    names = (("npy", ".invert.npy"), ("png", ".invert.png"))
    numeric = frozenset({"npy"})

    def prompt(self, image, extra):
        return np.ones(image.shape[:-3] + (3,) + image.shape[-3:-1], np.float32)  # (..., 3, H, W)

    def train_pair(self, kind, scene, flipped, flow_scale):
        rgb = scene("rgb")  # (n, H, W, 3)
        return self.prompt(rgb, None), gray3(inverted_grey(rgb) * 2.0 - 1.0)

    def decode(self, decoded, config):
        return (decoded[0].mean(axis=1) + 1.0) / 2.0  # (E, h, w)

    def finish(self, values, to_input, reduction, config):
        unc = values.std(axis=0) if len(values) > 1 else None
        return InvertResult(np.clip(to_input.resize(values.mean(axis=0)), 0, 1).astype(np.float32),
                            None if unc is None else to_input.resize(unc).astype(np.float32))

    def write(self, stem, result, item, formats, overwrite):
        from percept_cli import writers as W

        return write_plan(self.plan(stem, formats, False), {
            "npy": lambda p: W.write_npy(p, result.value),
            "png": lambda p: W.write_png8(p, np.round(result.value * 255).astype(np.uint8)),
        }, overwrite)

    def visualise(self, result, item):
        return np.repeat(np.round(result.value * 255).astype(np.uint8)[..., None], 3, axis=2)

    def sample(self, scene, name):
        return InvertSample(scene.rgb, inverted_grey(scene.rgb), name)

    def score(self, sample, pred):
        value = getattr(pred, "value", pred)
        return {"mae": float(np.abs(value - sample.target).mean())}

    def baselines(self, samples):
        return {"mid grey": lambda s: np.full(s.target.shape, 0.5, np.float32)}


@pytest.fixture
def invert():
    task = tasks.register(Invert())
    yield task
    tasks.unregister(task.name)


def image(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size + 8, 3), dtype=np.uint8)


def test_targets_and_metrics_are_the_tasks_own(invert):
    from percept_cli.data.datasets import synthetic_samples
    from percept_cli.data.mixture import ScenePool, sample_batch
    from percept_cli.evaluate import baseline_scores

    pool = ScenePool.render(range(3), 16)
    cond, target, labels, kinds = sample_batch(pool, np.random.default_rng(0), 4, {"invert": 1.0}, (8.0, 8.0))
    assert set(kinds) == {"invert"} and (labels == 1005).all()
    np.testing.assert_allclose(cond[:, 3:], 1.0)  # the task's prompt
    rgb = np.round((cond[:, :3] + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)  # (B, H, W, 3)
    np.testing.assert_allclose((target + 1.0) / 2.0, gray3(inverted_grey(rgb)), atol=1e-5)  # its target
    (s,) = synthetic_samples("invert", range(1), 16)
    assert s.target.shape == (16, 16) and baseline_scores("invert", [s])["mid grey"]["mae"] > 0


def test_train_predict_and_eval(invert, tmp_path, capsys):
    # `percept train`: a few steps on the new task alone (its label widens the label table)
    config = tmp_path / "invert.toml"
    config.write_text('hidden_size = 32\ndepth = 1\nnum_heads = 2\npatch_size = 4\nresolution = 16\n'
                      'train_scenes = 4\nbatch_size = 4\nlog_every = 1\nckpt_every = 100\neval_every = 2\n'
                      'eval_scenes = 2\neval_steps = 1\nwarmup = 1\nautocast = "fp32"\nthreads = 1\n'
                      'task_weights = { invert = 1.0 }\n')
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--max-steps", "2"])
    assert exit_.value.code == 0
    model = tmp_path / "run" / "checkpoint-last"
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "loss_invert" in log[-1] and "eval_invert_mae" in log[-1]  # the trainer's eval used its metric
    assert json.loads((model / "percept.json").read_text())["tasks"] == ["invert"]

    # Predictor: two images, results at their own size
    from percept_cli.hub import resolve_model
    from percept_cli.pipeline import Predictor, TaskInput

    pred = Predictor.from_source(resolve_model(str(model)), device="cpu", dtype="fp32")
    results = pred.predict("invert", [TaskInput(image(0)), TaskInput(image(1), name="b")],
                           pred.settings("invert", steps=2, ensemble=2))
    assert [type(r) for r in results] == [InvertResult] * 2
    assert results[0].value.shape == (24, 32) and results[1].uncertainty.shape == (24, 32)

    # the run loop: its outputs and writers come from the task
    from percept_cli import writers

    inputs = [str(writers.write_png8(tmp_path / "in" / f"p{i}.png", image(i))) for i in range(2)]
    run.predict("invert", inputs, run.Options(model=str(model), steps=1, ensemble=1, output=tmp_path / "out",
                                              quiet=True, device="cpu"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "p0.invert.npy", "p0.invert.png", "p1.invert.npy", "p1.invert.png"]

    # `percept eval` on rendered scenes (all = the tasks the model does): the task's metric and baseline
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(model), "--synthetic", "2", "--size", "16", "--steps", "1", "--json",
              "--device", "cpu"])
    assert exit_.value.code == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert record["task"] == "invert" and set(record["scores"]) == {"mae"} and set(record["baselines"]) == {"mid grey"}


def test_unknown_task_weights_are_a_usage_error():
    from percept_cli.errors import UsageError
    from percept_cli.train import load_config

    with pytest.raises(UsageError, match="'invert' is not a task"):
        load_config(None, task_weights={"invert": 1.0})
