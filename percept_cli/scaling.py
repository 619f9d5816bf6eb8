"""The scaling study: train a DiT family, sweep test-time compute, fit power laws, write the report.

Driven by one TOML file (configs/scaling-cpu.toml documents every key). Four stages, each resumable
(re-running skips finished work and resumes unfinished runs from their checkpoint-last):
  1. run_study      dense sizes, MoE from scratch and MoE upcycled from a dense member, at a fixed
                    budget (samples = steps x batch, or training FLOPs); each run writes
                    OUT/runs/NAME/{checkpoint-last, log.jsonl, result.json}
  2. run_sweeps     one trained model on held-out scenes: steps, ensemble size, schedules, processing
                    resolution; each point is appended to OUT/sweeps/points.jsonl
  3. write_results  every point and fit_all(...) -> DOCS/results.json
  4. write_report   DOCS/README.md (the paper's claims against the numbers) and log-log plots

Training FLOPs, counted analytically per run:
    C = 3 * F(config, R, R) * S          S = steps * batch_size (samples seen)
F is models.dit.forward_flops: 2 FLOPs per multiply-add of the matmuls of one forward pass of one
sample at resolution R (for MoE the active ones: top_k experts per token plus the router). The
backward pass costs 2F (gradients of activations and of weights), hence the 3. It overcounts
slightly, since the patch embedding needs no input gradient (about 2% at width 64, vanishing with
width); tests/test_scaling.py checks it against torch's FlopCounterMode. Evaluation forwards are not
counted. An upcycled run's total_train_flops adds its dense parent's.
Test-time FLOPs per image: F(config, r, r) * steps * members * labels (flow samples u and v: 2 labels).

Validation loss: the EMA model's denoising MSE (the training target, v or epsilon) on held-out scenes,
every task label, fixed timesteps (stratified) and fixed plain Gaussian noise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from percept_cli.errors import UsageError
from percept_cli.fits import QUANTITIES, claims, fit_all
from percept_cli.lock import read_json

Log = Callable[[str], None]
STAGES = ("train", "sweep", "report")
VAL_KINDS = ("depth", "amodal", "flow_u", "flow_v")
VAL_SEED_OFFSET = 500_000  # validation scenes: EVAL_SEED_START + this, apart from the eval scenes
STUDY_DEFAULTS: dict[str, Any] = dict(out="runs/scaling", docs="docs/scaling", seed=0, val_scenes=16, val_timesteps=4)
# Set per run by the study, so not allowed in [train].
PER_RUN = ("out", "size", "hidden_size", "depth", "num_heads", "num_experts", "top_k", "norm_topk_prob", "init",
           "max_steps", "seed")
DENSE_KEYS = {"name", "hidden", "depth", "heads", "samples", "steps", "flops"}
MOE_KEYS = DENSE_KEYS | {"base", "experts", "top_k", "norm_topk_prob", "mlp_ratio", "from", "router_std"}
SWEEP_DEFAULTS: dict[str, Any] = dict(
    model=None, scenes=8, sample_size=None, tasks=["depth", "flow", "amodal"], steps=[1, 2, 5, 10, 20, 50],
    ensemble=[1, 2, 5, 10], fixed_steps=10, schedules=["linear", "scaled_linear", "cosine"],
    spacings=["leading", "trailing"], zero_snr=[False, True], base_schedule="cosine+trailing", resolutions=None,
    batch_size=32, seed=0, device="cpu", dtype="fp32",
)


# -- 1. the config -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study."""

    name: str
    kind: str  # "dense", "moe" (from scratch) or "upcycled" (from the dense run `base`)
    hidden: int
    depth: int
    heads: int
    steps: int
    experts: int = 0
    top_k: int = 1
    norm_topk_prob: bool = False
    mlp_ratio: float = 4.0
    base: str | None = None
    router_std: float = 0.0


@dataclass
class Study:
    path: Path
    out: Path
    docs: Path
    seed: int
    val_scenes: int
    val_timesteps: int
    train: dict[str, Any]  # TrainConfig fields shared by every run
    budget: dict[str, float]
    runs: list[RunSpec]
    sweep: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def run(self, name: str) -> RunSpec:
        return next(r for r in self.runs if r.name == name)


def _unknown(where: str, got: Iterable[str], allowed: Iterable[str]) -> None:
    bad = sorted(set(got) - set(allowed))
    if bad:
        raise UsageError(f"scaling config [{where}]: unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}")


def load_study(path: str | Path, out: str | Path | None = None, docs: str | Path | None = None) -> Study:
    """Read and validate a study TOML; every error names the key and the fix."""
    from percept_cli.tomlcompat import tomllib  # tomli on Python 3.10

    from percept_cli.train import TrainConfig

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"scaling config '{path}': {exc}; fix the TOML file") from None
    _unknown("top level", raw, ("study", "train", "budget", "dense", "moe", "sweep"))
    study = {**STUDY_DEFAULTS, **raw.get("study", {})}
    _unknown("study", study, STUDY_DEFAULTS)
    train = dict(raw.get("train", {}))
    _unknown("train", train, TrainConfig.__dataclass_fields__)
    fixed = sorted(set(train) & set(PER_RUN))
    if fixed:
        raise UsageError(f"scaling config [train]: {', '.join(fixed)} are set per run by the study; remove them "
                         "(sizes go in [[dense]] / [[moe]], the seed in [study])")
    base = TrainConfig(**{k: tuple(v) if k == "flow_scale" else v for k, v in train.items()})
    budget = dict(raw.get("budget", {}))
    _unknown("budget", budget, ("samples", "flops"))
    if len(budget) != 1 or float(next(iter(budget.values()))) <= 0:
        raise UsageError("scaling config [budget]: set exactly one of samples = N (steps x batch) or flops = F, positive")

    def steps_for(entry: dict, hidden: int, depth: int, heads: int, experts: int, top_k: int, mlp_ratio: float) -> int:
        if "steps" in entry:
            return int(entry["steps"])
        own = {k: entry[k] for k in ("samples", "flops") if k in entry} or budget
        if "samples" in own:
            return max(1, math.ceil(float(own["samples"]) / base.batch_size))
        cfg = dict(base.model_config(), hidden_size=hidden, depth=depth, num_heads=heads, num_experts=experts,
                   top_k=top_k, mlp_ratio=mlp_ratio)
        return max(1, round(float(own["flops"]) / train_step_flops(cfg, base.resolution, base.batch_size)))

    runs: list[RunSpec] = []
    dense = {}
    for entry in raw.get("dense", []):
        _unknown("dense", entry, DENSE_KEYS)
        try:
            h, d, nh = int(entry["hidden"]), int(entry["depth"]), int(entry["heads"])
            name = str(entry["name"])
        except KeyError as exc:
            raise UsageError(f"scaling config [[dense]]: every size needs name, hidden, depth, heads; "
                             f"{exc} is missing") from None
        if h % nh or h % 4:
            raise UsageError(f"scaling config [[dense]] {name}: hidden {h} must be divisible by heads {nh} and by 4")
        dense[name] = entry
        runs.append(RunSpec(name, "dense", h, d, nh, steps_for(entry, h, d, nh, 0, 1, 4.0)))
    for entry in raw.get("moe", []):
        _unknown("moe", entry, MOE_KEYS)
        name, parent = str(entry.get("name", "")), entry.get("base")
        if not name or parent not in dense:
            raise UsageError(f"scaling config [[moe]] {name or '?'}: needs a name and base = one of the dense names "
                             f"({', '.join(dense) or 'none defined'})")
        kind = {"scratch": "moe", "upcycle": "upcycled"}.get(entry.get("from", "scratch"))
        if kind is None:
            raise UsageError(f"scaling config [[moe]] {name}: from must be 'scratch' or 'upcycle', got {entry['from']!r}")
        src = dense[parent]
        h, d, nh = (int(entry.get(k, src[k])) for k in ("hidden", "depth", "heads"))
        experts, top_k = int(entry.get("experts", 4)), int(entry.get("top_k", 1))
        ratio = float(entry.get("mlp_ratio", 4.0))
        if not 1 <= top_k <= experts:
            raise UsageError(f"scaling config [[moe]] {name}: top_k must be in 1..experts ({experts}), got {top_k}")
        if kind == "upcycled" and ((h, d, nh) != (src["hidden"], src["depth"], src["heads"]) or ratio != 4.0):
            raise UsageError(f"scaling config [[moe]] {name}: an upcycled model copies {parent}'s shape; "
                             "drop hidden / depth / heads / mlp_ratio")
        runs.append(RunSpec(name, kind, h, d, nh, steps_for(entry, h, d, nh, experts, top_k, ratio), experts, top_k,
                            bool(entry.get("norm_topk_prob", False)), ratio, parent, float(entry.get("router_std", 0.0))))
    names = [r.name for r in runs]
    if len(set(names)) != len(names) or not runs:
        raise UsageError(f"scaling config: run names must be unique and at least one given, got {names}")
    sweep = {**SWEEP_DEFAULTS, **raw.get("sweep", {})}
    _unknown("sweep", sweep, SWEEP_DEFAULTS)
    if sweep["model"] is not None and sweep["model"] not in names:
        raise UsageError(f"scaling config [sweep]: model {sweep['model']!r} is not a run; use one of {', '.join(names)}")
    sweep["resolutions"] = list(sweep["resolutions"] or [base.resolution])
    sweep["sample_size"] = int(sweep["sample_size"] or 2 * base.resolution)
    return Study(path, Path(out or study["out"]), Path(docs or study["docs"]), int(study["seed"]),
                 int(study["val_scenes"]), int(study["val_timesteps"]), train, budget, runs, sweep, raw)


# -- 2. FLOPs and parameters ---------------------------------------------------------------------


def train_step_flops(config: dict[str, Any], resolution: int, batch_size: int) -> int:
    """Analytic FLOPs of one training step: 3 * forward_flops * batch (forward + 2x for backward)."""
    from percept_cli.models.dit import forward_flops

    return 3 * forward_flops(config, resolution, resolution) * batch_size


def inference_flops(config: dict[str, Any], resolution: int, steps: int, members: int, labels: int) -> int:
    """Analytic FLOPs of predicting one image: forward_flops * steps * members * labels."""
    from percept_cli.models.dit import forward_flops

    return forward_flops(config, resolution, resolution) * steps * members * labels



def count_params(model) -> tuple[int, int]:
    """(trainable parameters, active ones: top_k of each block's experts)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    inactive = 0
    for block in model.blocks:
        moe = getattr(block, "moe", None)
        if moe is not None:
            per_expert = sum(p.numel() for p in moe.experts[0].parameters())
            inactive += (moe.num_experts - moe.top_k) * per_expert
    return total, total - inactive


# -- 3. training ---------------------------------------------------------------------------------


def train_config(study: Study, spec: RunSpec):
    """The TrainConfig of a run: [train], then the run's shape, steps and folder."""
    from percept_cli.train import TrainConfig

    values = {k: tuple(v) if k == "flow_scale" else v for k, v in study.train.items()}
    values.update(out=str(study.out / "runs" / spec.name), hidden_size=spec.hidden, depth=spec.depth,
                  num_heads=spec.heads, num_experts=spec.experts, top_k=max(1, spec.top_k),
                  norm_topk_prob=spec.norm_topk_prob, max_steps=spec.steps, seed=study.seed)
    values.setdefault("eval_every", spec.steps)  # evaluate once, at the end (train.py always evaluates the last step)
    if spec.kind == "upcycled" or spec.mlp_ratio != 4.0:
        values["init"] = str(study.out / "runs" / spec.name / "init")
    return TrainConfig(**values)


def model_config(study: Study, spec: RunSpec) -> dict[str, Any]:
    return dict(train_config(study, spec).model_config(), mlp_ratio=spec.mlp_ratio)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def _shared_pool(study: Study, cfg, log: Log) -> None:
    """Render the training scenes once for the study and hard-link them where train.py looks."""
    from percept_cli.data.mixture import ScenePool

    name = f"scenes-{cfg.resolution}-0-{cfg.train_scenes}.npz"
    shared, local = study.out / "scenes" / name, Path(cfg.out) / name
    if local.exists():
        return
    if not shared.exists():
        log(f"rendering {cfg.train_scenes} training scenes at {cfg.resolution} px (once for the study)")
        ScenePool.cached(shared, range(0, cfg.train_scenes), cfg.resolution)
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(shared, local)
    except OSError:
        shutil.copyfile(shared, local)


def _make_init(study: Study, spec: RunSpec, cfg, log: Log) -> None:
    """The starting weights of runs train.py cannot build itself: upcycled, or a non-default MLP ratio."""
    import torch

    from percept_cli.checkpoints import save_percept
    from percept_cli.models.dit import PerceptDiT

    init = Path(cfg.init)
    if (init / "config.json").is_file():
        return
    if spec.kind == "upcycled":
        from percept_cli.models.surgery import upcycle

        parent = study.out / "runs" / spec.base / "checkpoint-last"
        dense = PerceptDiT.from_pretrained(str(parent))  # the parent's EMA weights
        # Non-renormalised top-k scales each expert by its router probability; rescaling fc2 by E/k
        # keeps the upcycled model equal to the dense one at step 0 (exactly with router_std 0).
        model = upcycle(dense, spec.experts, spec.top_k, spec.norm_topk_prob, router_std=spec.router_std,
                        seed=study.seed, rescale_experts=not spec.norm_topk_prob)
        log(f"[{spec.name}] upcycled {spec.base} ({parent}) to {spec.experts} experts, top-{spec.top_k}")
    else:
        torch.manual_seed(study.seed)
        model = PerceptDiT(**model_config(study, spec))
    tmp = init.with_name(init.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_percept(tmp, model, cfg.scheduler_config(), cfg.pipeline_config())
    tmp.rename(init)


def validation_batch(study: Study, cfg) -> dict[str, Any]:
    """Held-out examples: every val scene x task label x stratified timestep, with fixed noise."""
    import numpy as np
    import torch

    from percept_cli.data.mixture import ScenePool, example
    from percept_cli.evaluate import EVAL_SEED_START

    start = EVAL_SEED_START + VAL_SEED_OFFSET
    seeds = range(start, start + study.val_scenes)
    pool = ScenePool.cached(study.out / "scenes" / f"val-{cfg.resolution}-{seeds.start}-{seeds.stop}.npz", seeds,
                            cfg.resolution)
    rows = [example(pool, i, kind, False, tuple(cfg.flow_scale)) for i in range(len(pool)) for kind in VAL_KINDS]
    k = study.val_timesteps
    t = torch.tensor([int((j + 0.5) * 1000 / k) for j in range(k)] * len(rows))  # (N*K,)
    cond = torch.from_numpy(np.stack([r[0] for r in rows])).repeat_interleave(k, 0)  # (N*K, 6, H, W)
    x0 = torch.from_numpy(np.stack([r[1] for r in rows])).repeat_interleave(k, 0)  # (N*K, 3, H, W)
    labels = torch.tensor([r[2] for r in rows]).repeat_interleave(k, 0)  # (N*K,)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(study.seed))
    return dict(cond=cond, x0=x0, labels=labels, t=t, noise=noise)


def validation_loss(model, cfg, batch: dict[str, Any], chunk: int = 64) -> float:
    """Mean denoising MSE of `model` on a validation batch, in fp32."""
    import torch
    from diffusers import DDIMScheduler

    alphas = DDIMScheduler.from_config(cfg.scheduler_config()).alphas_cumprod.float()  # (1000,)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(batch["t"]), chunk):
            cond, x0, noise = (batch[k][s : s + chunk] for k in ("cond", "x0", "noise"))
            t, labels = batch["t"][s : s + chunk], batch["labels"][s : s + chunk]
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # (B, 3, H, W)
            want = a.sqrt() * noise - (1 - a).sqrt() * x0 if cfg.prediction_type == "v_prediction" else noise
            pred = model(torch.cat([cond, xt], 1).to(dev).float(), t.to(dev), labels.to(dev))[:, : x0.shape[1]]
            total += float(((pred.float().cpu() - want) ** 2).sum())
            count += want.numel()
    model.train(was_training)
    return total / count


def _final_eval(cfg, trainer) -> dict[str, float]:
    """Task metrics at the last step: from log.jsonl when train.py logged them, else evaluated now."""
    records = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines() if line.strip()]
    last = next((r for r in reversed(records) if r.get("step") == cfg.max_steps and "eval_depth_abs_rel" in r), None)
    raw = last if last is not None else trainer.evaluate()
    return {k[len("eval_"):]: float(v) for k, v in raw.items() if k.startswith("eval_")}


def _speed(cfg) -> float | None:
    import statistics

    log = Path(cfg.out) / "log.jsonl"
    speeds = [json.loads(line).get("samples_per_s") for line in log.read_text().splitlines() if line.strip()]
    speeds = [s for s in speeds if s]
    return statistics.median(speeds) if speeds else None


def train_run(study: Study, spec: RunSpec, max_time: float | None = None, log: Log = print) -> tuple[str, dict | None]:
    """Train (or resume, or skip) one run; returns (status, result point or None).

    status: done (finished before; no work), trained, resumed, partial (time ran out), waiting
    (an upcycled run whose parent is unfinished).
    """
    from percept_cli import train
    from percept_cli.models.dit import forward_flops

    cfg = train_config(study, spec)
    run_dir = Path(cfg.out)
    result = read_json(run_dir / "result.json", None)
    if result is not None and result.get("steps") == spec.steps:
        return "done", result
    parent = None
    if spec.kind == "upcycled":
        parent = read_json(study.out / "runs" / spec.base / "result.json", None)
        if parent is None:
            log(f"[{spec.name}] waiting: its dense parent {spec.base} has not finished")
            return "waiting", None
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.init:
        _make_init(study, spec, cfg, log)
    _shared_pool(study, cfg, log)
    status = "resumed" if (run_dir / "checkpoint-last" / "train_state.pt").is_file() else "trained"
    log(f"[{spec.name}] {'resuming' if status == 'resumed' else 'training'}: {spec.kind}, hidden {spec.hidden}, "
        f"depth {spec.depth}, {spec.experts or 'no'} experts, {spec.steps} steps x {cfg.batch_size}")
    trainer = train.run(cfg, resume=True, max_time=max_time, log=lambda m: log(f"[{spec.name}] {m}"))
    if trainer.step < cfg.max_steps:
        log(f"[{spec.name}] stopped at step {trainer.step} of {cfg.max_steps} (time limit); re-run to resume")
        return "partial", None
    # The point: metrics of the EMA model, FLOPs and parameters.
    metrics = _final_eval(cfg, trainer)
    metrics["val_loss"] = validation_loss(trainer.ema, cfg, validation_batch(study, cfg))
    mcfg = {k: v for k, v in trainer.model.config.items() if not k.startswith("_")}
    fwd = forward_flops(mcfg, cfg.resolution, cfg.resolution)
    params, active = count_params(trainer.model)
    samples = cfg.max_steps * cfg.batch_size
    flops = 3 * fwd * samples
    result = dict(
        name=spec.name, kind=spec.kind, base=spec.base, hidden=spec.hidden, depth=spec.depth, heads=spec.heads,
        experts=spec.experts, top_k=spec.top_k if spec.experts else 0, mlp_ratio=spec.mlp_ratio, params=params,
        active_params=active, resolution=cfg.resolution, batch_size=cfg.batch_size, steps=cfg.max_steps,
        samples=samples, forward_flops=fwd, train_flops=flops,
        total_train_flops=flops + (parent["total_train_flops"] if parent else 0),
        samples_per_s=_speed(cfg), metrics=metrics, run_dir=str(run_dir),
    )
    _write_json(run_dir / "result.json", result)
    log(f"[{spec.name}] done: val_loss {metrics['val_loss']:.4f}, {params / 1e6:.3f}M params, {flops:.3g} FLOPs")
    return status, result


def run_study(config_path: str | Path, out_dir: str | Path | None = None, only: Iterable[str] | None = None,
              max_time: float | None = None, log: Log = print) -> list[dict[str, Any]]:
    """Train every run of the study (or the runs named in `only`): dense, then MoE, then upcycled.

    Finished runs are skipped, unfinished ones resume from checkpoint-last; with max_time (seconds)
    the study stops cleanly when it is spent. Returns [{name, status, result}] in run order.
    """
    study = load_study(config_path, out=out_dir)
    names = [r.name for r in study.runs]
    wanted = set(names if only is None else only)
    if wanted - set(names):
        raise UsageError(f"--only: unknown run(s) {', '.join(sorted(wanted - set(names)))}; runs: {', '.join(names)}")
    deadline = None if max_time is None else time.time() + max_time
    order = {"dense": 0, "moe": 1, "upcycled": 2}
    summary = []
    for spec in sorted((r for r in study.runs if r.name in wanted), key=lambda r: order[r.kind]):
        left = None if deadline is None else deadline - time.time()
        result = read_json(study.out / "runs" / spec.name / "result.json", None)
        if result is not None and result.get("steps") == spec.steps:
            summary.append(dict(name=spec.name, status="done", result=result))
            continue
        if left is not None and left <= 0:
            summary.append(dict(name=spec.name, status="not started", result=None))
            continue
        status, result = train_run(study, spec, max_time=left, log=log)
        summary.append(dict(name=spec.name, status=status, result=result))
    return summary


# -- 4. test-time sweeps -------------------------------------------------------------------------


def sweep_plan(study: Study) -> list[dict[str, Any]]:
    """Settings to evaluate, each with the axes it belongs to (a shared setting is evaluated once)."""
    sw, res = study.sweep, study.train.get("resolution", 64)
    base, fixed = sw["base_schedule"], int(sw["fixed_steps"])
    rows: list[tuple[str, int, int, str, int]] = []
    rows += [("steps", int(s), 1, base, res) for s in sw["steps"]]
    rows += [("ensemble", fixed, int(e), base, res) for e in sw["ensemble"]]
    rows += [("schedule", fixed, 1, "+".join([n, sp] + ["zero-snr"] * bool(z)), res)
             for n in sw["schedules"] for sp in sw["spacings"] for z in sw["zero_snr"]]
    rows += [("resolution", fixed, 1, base, int(r)) for r in sw["resolutions"]]
    plan: dict[tuple, dict[str, Any]] = {}
    for axis, steps, members, schedule, r in rows:
        row = plan.setdefault((steps, members, schedule, r), dict(steps=steps, ensemble=members, schedule=schedule,
                                                                  resolution=r, axes=[]))
        if axis not in row["axes"]:
            row["axes"].append(axis)
    return list(plan.values())


def _point_key(task: str, row: dict[str, Any]) -> str:
    return f"{task}|{row['steps']}|{row['ensemble']}|{row['schedule']}|{row['resolution']}"


def _read_points(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_sweeps(config_path: str | Path, out_dir: str | Path | None = None, max_time: float | None = None,
               log: Log = print) -> list[dict[str, Any]]:
    """Evaluate the sweep model at every planned setting not yet in OUT/sweeps/points.jsonl.

    Returns every point of the current plan (old and new); none when the model is not trained yet.
    """
    from percept_cli import tasks as T

    study = load_study(config_path, out=out_dir)
    sw = study.sweep
    if sw["model"] is None:
        log("no [sweep] model in the config: skipping test-time sweeps")
        return []
    spec = study.run(sw["model"])
    ckpt = study.out / "runs" / spec.name / "checkpoint-last"
    if read_json(study.out / "runs" / spec.name / "result.json", None) is None:
        log(f"sweeps wait for run {spec.name} to finish training")
        return []
    path = study.out / "sweeps" / "points.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {p["key"]: p for p in _read_points(path)}
    plan = [(task, row) for task in sw["tasks"] for row in sweep_plan(study)]
    todo = [(task, row) for task, row in plan if _point_key(task, row) not in done]
    deadline = None if max_time is None else time.time() + max_time
    if todo:
        from percept_cli.checkpoints import ModelSource
        from percept_cli.evaluate import evaluate, synthetic_set
        from percept_cli.pipeline import Predictor

        pred = Predictor.from_source(ModelSource(spec.name, "percept", root=ckpt), device=sw["device"], dtype=sw["dtype"])
        mcfg = {k: v for k, v in pred.model.config.items() if not k.startswith("_")}
        sets: dict[str, list] = {}
        log(f"sweeps on {spec.name}: {len(todo)} of {len(plan)} settings to evaluate on {sw['scenes']} scenes")
        for task, row in todo:
            if deadline is not None and time.time() > deadline:
                log("sweeps stopped (time limit); re-run to continue")
                break
            if task not in sets:
                sets[task] = synthetic_set(task, int(sw["scenes"]), size=sw["sample_size"])
            started = time.time()
            res = evaluate(pred, task, sets[task], with_baselines=False, steps=row["steps"], ensemble=row["ensemble"],
                           schedule=row["schedule"], resolution=row["resolution"], batch_size=int(sw["batch_size"]),
                           seed=int(sw["seed"]))
            labels = len(T.get_task(task).labels)
            point = dict(key=_point_key(task, row), task=task, model=spec.name, **row, labels=labels,
                         test_flops=inference_flops(mcfg, row["resolution"], row["steps"], row["ensemble"], labels),
                         metrics={f"{task}_{k}": float(v) for k, v in res["model"].items()},
                         seconds=time.time() - started, scenes=int(sw["scenes"]))
            with path.open("a") as f:
                f.write(json.dumps(point) + "\n")
            done[point["key"]] = point
            log(f"[sweep] {task} steps={row['steps']} ensemble={row['ensemble']} schedule={row['schedule']} "
                f"resolution={row['resolution']}: " + ", ".join(f"{k}={v:.4g}" for k, v in point["metrics"].items()))
    # The current plan's points, with this plan's axes (a point may serve a new axis after a config edit).
    out = []
    for task, row in plan:
        p = done.get(_point_key(task, row))
        if p is not None:
            out.append(dict(p, axes=row["axes"]))
    return out


# -- 5. results and report -----------------------------------------------------------------------


def collect(study: Study) -> dict[str, Any]:
    """Every finished point of the study (no fits)."""
    train = [r for spec in study.runs if (r := read_json(study.out / "runs" / spec.name / "result.json", None))]
    sweep_points: list[dict[str, Any]] = []
    if study.sweep["model"] is not None:
        done = {p["key"]: p for p in _read_points(study.out / "sweeps" / "points.jsonl")}
        for task in study.sweep["tasks"]:
            for row in sweep_plan(study):
                p = done.get(_point_key(task, row))
                if p is not None:
                    sweep_points.append(dict(p, axes=row["axes"]))
    from percept_cli.train import TrainConfig

    base = TrainConfig(**{k: tuple(v) if k == "flow_scale" else v for k, v in study.train.items()})
    return dict(
        study=dict(config=str(study.path), out=str(study.out),
                   train={k: v for k, v in vars(base).items() if k not in PER_RUN}, budget=study.budget, val_scenes=study.val_scenes,
                   val_timesteps=study.val_timesteps, runs=[vars(r) for r in study.runs], sweep=study.sweep),
        train=train, sweeps=dict(model=study.sweep["model"], points=sweep_points),
    )


def write_results(config_path: str | Path, out_dir: str | Path | None = None, docs_dir: str | Path | None = None,
                  log: Log = print) -> Path:
    """DOCS/results.json: every point and every fit (fit_all) of the study as it stands."""
    study = load_study(config_path, out=out_dir, docs=docs_dir)
    results = collect(study)
    results["fits"] = fit_all(results, seed=study.seed)
    study.docs.mkdir(parents=True, exist_ok=True)
    path = study.docs / "results.json"
    _write_json(path, results)
    log(f"wrote {path} ({len(results['train'])} runs, {len(results['sweeps']['points'])} sweep points)")
    return path


def _plots(results: dict[str, Any], docs: Path) -> list[str] | None:
    """Log-log plots with fitted lines (file names); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import numpy as np

    from percept_cli.fits import predict, quantity

    def panel(ax, points, x_key, q, fit, style="o", label=None):
        xy = [(p[x_key], quantity(p, q)) for p in points if quantity(p, q) is not None and p.get(x_key)]
        xy = [(x, y) for x, y in xy if y > 0]
        if xy:
            ax.loglog(*zip(*xy), style, label=label)
        if xy and fit and "exponent" in fit:
            xs = np.geomspace(min(x for x, _ in xy), max(x for x, _ in xy), 50)
            ax.loglog(xs, [predict(fit, x) for x in xs], "-", alpha=0.6,
                      label=f"{fit['prefactor']:.3g} x^{fit['exponent']:.3f} (R²={fit['r2']:.2f})")
        ax.set_title(q, fontsize=9)
        ax.legend(fontsize=6)

    files = []
    train, fits = results["train"], results["fits"]
    dense = [p for p in train if p["kind"] == "dense"]
    for x_key in ("train_flops", "params"):
        fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(4 * len(QUANTITIES), 3.4))
        for ax, q in zip(axes, QUANTITIES):
            panel(ax, dense, x_key, q, fits["train"][f"{q}_vs_{x_key}"], label="dense")
            panel(ax, [p for p in train if p["kind"] == "moe"], x_key, q, None, "s", "MoE (scratch)")
            panel(ax, [p for p in train if p["kind"] == "upcycled"],
                  "total_train_flops" if x_key == "train_flops" else x_key, q, None, "^", "MoE (upcycled)")
            ax.set_xlabel("training FLOPs (upcycled: with the parent's)" if x_key == "train_flops" else "parameters")
        fig.tight_layout()
        name = f"train_vs_{x_key}.png"
        fig.savefig(docs / name, dpi=110)
        plt.close(fig)
        files.append(name)
    points = results["sweeps"]["points"]
    for axis in ("steps", "ensemble", "resolution"):
        pts = [p for p in points if axis in p["axes"]]
        if not pts:
            continue
        qs = [q for q in QUANTITIES if q != "val_loss"]
        fig, axes = plt.subplots(1, len(qs), figsize=(4 * len(qs), 3.4))
        for ax, q in zip(axes, qs):
            panel(ax, pts, "test_flops", q, fits["sweeps"][axis][f"{q}_vs_test_flops"], label=axis)
            ax.set_xlabel("test-time FLOPs per image")
        fig.tight_layout()
        name = f"sweep_{axis}.png"
        fig.savefig(docs / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def _g(v: Any) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def render_report(results: dict[str, Any], plots: list[str] | None, discussion: str | None = None) -> str:
    """README.md text: the claims with verdicts and evidence, then the tables; all from results.

    `discussion` (DOCS/discussion.md, written by a person who read the results) follows the verdicts.
    """
    lines = ["# Scaling study: results against the paper's claims", "",
             f"Generated by `percept scaling` from `results.json` (config `{results['study']['config']}`); "
             "do not edit by hand, re-run `percept scaling CONFIG --only report`.", ""]
    train = results["train"]
    dense = [p for p in train if p["kind"] == "dense"]
    if dense:
        lo, hi = min(p["params"] for p in dense), max(p["params"] for p in dense)
        budget = ", ".join(f"{v:.4g} {k}" for k, v in results["study"]["budget"].items())
        lines += [f"{len(dense)} dense sizes from {lo / 1e6:.3g}M to {hi / 1e6:.3g}M parameters (x{hi / lo:.0f}), "
                  f"{len(train) - len(dense)} MoE runs, budget {budget} per run, training resolution "
                  f"{results['study']['train'].get('resolution')} px, synthetic scenes. Quantities are errors "
                  "(lower is better): `_err` = 1 - metric.", ""]
    lines += ["## The paper's claims", "", "| claim | verdict |", "|---|---|"]
    found = claims(results)
    lines += [f"| {c['claim']} | **{c['verdict']}** |" for c in found]
    if discussion:
        lines += ["", "## Discussion", "", "(From `discussion.md` beside this file, written by hand after reading the "
                  "results; everything else here is generated.)", "", discussion.strip()]
    for c in found:
        lines += ["", f"### {c['claim']}: {c['verdict']}", ""]
        lines += [f"- {e}" for e in c["evidence"]] or ["- no points yet"]
    lines += ["", "## Training runs", "",
              "| run | kind | params | active | train FLOPs | total FLOPs | val loss | AbsRel | delta1 | EPE | IoU |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in train:
        m = p["metrics"]
        kind = p["kind"] + (f" of {p['base']}" if p.get("base") else "")
        lines.append(f"| {p['name']} | {kind} | {p['params'] / 1e6:.3g}M "
                     f"| {p['active_params'] / 1e6:.3g}M | {p['train_flops']:.3g} | {p['total_train_flops']:.3g} | "
                     + " | ".join(_g(m.get(k)) for k in ("val_loss", "depth_abs_rel", "depth_delta1", "flow_epe",
                                                           "amodal_iou")) + " |")
    points = results["sweeps"]["points"]
    if points:
        lines += ["", f"## Test-time sweeps on {results['sweeps']['model']}", "",
                  "| task | axes | steps | ensemble | schedule | resolution | test FLOPs | metrics |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in points:
            lines.append(f"| {p['task']} | {', '.join(p['axes'])} | {p['steps']} | {p['ensemble']} | {p['schedule']} | "
                         f"{p['resolution']} | {p['test_flops']:.3g} | "
                         + ", ".join(f"{k} {v:.4g}" for k, v in p["metrics"].items()) + " |")
    lines += ["", "## Plots", ""]
    if plots is None:
        lines.append("Plots skipped: matplotlib is not installed (`pip install matplotlib`, then `--only report`).")
    else:
        lines += [f"![{name}]({name})" for name in plots] or ["No points to plot yet."]
    return "\n".join(lines) + "\n"


def write_report(results_path: str | Path, docs_dir: str | Path | None = None, log: Log = print) -> Path:
    """DOCS/README.md and the plots, from a results.json."""
    results_path = Path(results_path)
    results = json.loads(results_path.read_text())
    docs = Path(docs_dir) if docs_dir is not None else results_path.parent
    docs.mkdir(parents=True, exist_ok=True)
    plots = _plots(results, docs)
    if plots is None:
        log("matplotlib is not installed: plots skipped (pip install matplotlib)")
    notes = docs / "discussion.md"
    path = docs / "README.md"
    path.write_text(render_report(results, plots, notes.read_text() if notes.exists() else None))
    log(f"wrote {path}")
    return path


def run_all(config_path: str | Path, out_dir: str | Path | None = None, docs_dir: str | Path | None = None,
            stage: str | None = None, max_time: float | None = None, log: Log = print) -> Path:
    """`percept scaling`: train, sweep, then results.json and the report (stage: one of them only).

    The report is refreshed after any stage, so a partial study shows what it has. Returns README.md.
    """
    if stage is not None and stage not in STAGES:
        raise UsageError(f"--only must be one of {', '.join(STAGES)}, got {stage!r}")
    deadline = None if max_time is None else time.time() + max_time
    if stage in (None, "train"):
        run_study(config_path, out_dir, max_time=max_time, log=log)
    if stage in (None, "sweep"):
        left = None if deadline is None else max(0.0, deadline - time.time())
        run_sweeps(config_path, out_dir, max_time=left, log=log)
    results = write_results(config_path, out_dir, docs_dir, log=log)
    return write_report(results, results.parent, log=log)
