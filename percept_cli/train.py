"""One readable training loop: multi-task conditional denoising (or image generation for pre-training).

Single process on a CPU, or DDP under torchrun / accelerate launch (RANK, WORLD_SIZE set; gloo on
CPU, nccl on GPUs). Checkpoints are our safetensors layout plus `train_state.pt` (optimizer, EMA,
step, RNG states), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from percept_cli.checkpoints import save_percept
from percept_cli.dtypes import torch_dtype
from percept_cli.data import mixture
from percept_cli.data.mixture import ScenePool, sample_batch
from percept_cli.models.dit import PerceptDiT, dit_config
from percept_cli.models.moe import load_balancing_loss


@dataclass
class TrainConfig:
    out: str = "runs/tiny"
    # model
    size: str = "S"
    patch_size: int = 4
    hidden_size: int | None = None  # override the preset's width / depth / heads
    depth: int | None = None
    num_heads: int | None = None
    num_experts: int = 0
    top_k: int = 2
    norm_topk_prob: bool = True
    motion_channels: int = 0  # > 0: flow labels also see a correlation of their two frames (models/correlation.py)
    motion_radius: int = 2
    motion_levels: int = 3
    init: str | None = None  # start from a checkpoint folder in our layout (fine-tuning, upcycled models)
    # data
    stage: str = "perception"  # "perception" (tasks) or "generate" (image generation pre-training)
    resolution: int = 64
    train_scenes: int = 20000  # synthetic seeds 0 .. train_scenes-1
    textures: str | None = None  # folder of photos: render the photo scene style (scripts/get-photos.sh)
    task_weights: dict[str, float] = field(default_factory=lambda: {"depth": 1.0, "amodal": 1.0, "flow_u": 1.0, "flow_v": 1.0})
    flow_scale: tuple[float, float] = (8.0, 8.0)  # pixels of the processing grid per target unit
    # diffusion
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"
    multires_noise: float = 0.9  # strength of multi-resolution noise, annealed with t; 0 = off
    # optimisation
    batch_size: int = 32
    max_steps: int = 20000
    lr: float = 1.2e-4
    lr_final: float = 1.2e-6  # exponential decay from lr to lr_final over max_steps (the paper's)
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    balance_weight: float = 0.01
    autocast: str = "bf16"  # "bf16", "fp16" or "fp32"
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    render_workers: int = 0  # processes that render the scene pool; 0 = in this process
    loader_workers: int | None = None  # processes that build batches; None = 0 on a CPU, up to 6 on a GPU
    # bookkeeping
    log_every: int = 20
    ckpt_every: int = 250
    eval_every: int = 1000
    eval_scenes: int = 24
    eval_steps: int = 10
    # what the saved model's percept.json says
    default_steps: int = 20
    default_ensemble: int = 4

    def model_config(self) -> dict[str, Any]:
        cfg = dit_config(self.size, patch_size=self.patch_size, num_experts=self.num_experts)
        for key in ("hidden_size", "depth", "num_heads"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key)
        grid = self.resolution // self.patch_size
        motion = dict(motion_channels=self.motion_channels, motion_radius=self.motion_radius,
                      motion_levels=self.motion_levels) if self.motion_channels else {}
        return dict(cfg, sample_size=grid, in_channels=3, cond_channels=6, top_k=self.top_k,
                    norm_topk_prob=self.norm_topk_prob, num_labels=self.num_labels(), label_offset=1000,
                    learn_sigma=False, **motion)

    def num_labels(self) -> int:
        """Rows of the label table: 1000 + n covers every trained task's labels and the null row (5 for the three)."""
        labels = [label for kind, (_, label) in mixture.kinds().items() if kind in self.task_weights]
        return max([mixture.NULL_LABEL, *labels]) - 1000 + 1

    def tasks(self) -> list[str]:
        """The registered tasks this run trains (a kind of theirs has a weight), in registry order."""
        if self.stage != "perception":
            return []
        return list(dict.fromkeys(task.name for kind, (task, _) in mixture.kinds().items() if kind in self.task_weights))

    def scheduler_config(self) -> dict[str, Any]:
        return dict(num_train_timesteps=1000, beta_schedule=self.beta_schedule, prediction_type=self.prediction_type,
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing",
                    beta_start=0.00085, beta_end=0.012)

    def pipeline_config(self) -> dict[str, Any]:
        return dict(tasks=self.tasks(), resolution=self.resolution, steps=self.default_steps, ensemble=self.default_ensemble,
                    schedule="default", flow_scale=list(self.flow_scale), batch_size=32, trained_by="percept train",
                    train=asdict(self))


def multires_noise(shape: tuple[int, ...], strength: float, t_frac: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Pyramid noise (Marigold's multi-resolution noise), strength annealed by t/T, unit variance, on gen's device."""
    noise = torch.randn(shape, generator=gen, device=gen.device)
    if strength <= 0:
        return noise
    b, c, h, w = shape
    scale = strength * t_frac.view(b, 1, 1, 1)
    level, hh, ww = 1, h, w
    while hh > 1 and ww > 1 and level < 6:
        hh, ww = max(1, hh // 2), max(1, ww // 2)
        coarse = torch.randn((b, c, hh, ww), generator=gen, device=gen.device)
        noise = noise + F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * scale**level
        level += 1
    return noise / noise.std(dim=(1, 2, 3), keepdim=True)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then exponential decay from lr to lr_final at max_steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    return cfg.lr * math.exp(frac * math.log(cfg.lr_final / cfg.lr))


class StepBatches(torch.utils.data.Dataset):
    """Training batch number `step` of one rank: a pure function of (seed, rank, step), so any process can
    build any batch, and a resumed or multi-worker run sees exactly the batches of a plain one."""

    def __init__(self, pool: ScenePool, cfg: "TrainConfig", rank: int):
        self.pool, self.rank = pool, rank
        self.seed, self.batch_size, self.flow_scale = cfg.seed, cfg.batch_size, tuple(cfg.flow_scale)
        self.weights = {"generate": 1.0} if cfg.stage == "generate" else dict(cfg.task_weights)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        rng = np.random.default_rng([self.seed, self.rank, step])
        h, w = self.pool.rgb.shape[1:3]
        cond, target = torch.empty(self.batch_size, 6, h, w), torch.empty(self.batch_size, 3, h, w)  # (B, 6|3, H, W)
        if torch.utils.data.get_worker_info() is not None:  # written in shared memory: sent without a copy
            cond, target = cond.share_memory_(), target.share_memory_()
        _, _, labels, kinds = sample_batch(self.pool, rng, self.batch_size, self.weights, self.flow_scale,
                                           out=(cond.numpy(), target.numpy()))
        return cond, target, torch.from_numpy(labels), kinds


def batch_loader(batches: StepBatches, steps: Iterable[int], workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """The batches for `steps`, in order, built ahead by `workers` forked processes (0: on demand, here)."""
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=steps, num_workers=workers, pin_memory=pin,
                                       prefetch_factor=4 if workers else None)


class Trainer:
    """Holds the run: model, EMA, optimizer, data, RNG; `train()` is the loop."""

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.out)
        from percept_cli.run import shard  # the one RANK / WORLD_SIZE / LOCAL_RANK parser

        self.rank, self.world, local_rank = shard()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(cfg.seed)
        if cfg.init:
            from percept_cli.models.surgery import load_pretrained_dit, perception_from_generative

            self.model = load_pretrained_dit(cfg.init)
            if cfg.stage == "perception" and self.model.config.cond_channels == 0:
                # a generative pre-trained model: widen conv_in for [rgb, prompt] and add task rows
                self.model = perception_from_generative(self.model)
            if cfg.motion_channels and not self.model.config.get("motion_channels", 0):
                from percept_cli.models.surgery import add_motion

                self.model = add_motion(self.model, cfg.motion_channels, cfg.motion_radius, cfg.motion_levels, cfg.seed)
        else:
            self.model = PerceptDiT(**cfg.model_config())
        self.model.to(self.device).train()
        self.ema = PerceptDiT.from_config(self.model.config).to(self.device).eval().requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                                     fused=self.device.type == "cuda")
        self.ddp = self.model
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        from diffusers import DDIMScheduler

        self.alphas = DDIMScheduler.from_config(cfg.scheduler_config()).alphas_cumprod.float().to(self.device)  # (1000,)
        self.step = 0
        # Batches are built on the CPU from (seed, rank, step) (StepBatches); timesteps and noise are drawn
        # on the training device, so a GPU run never waits for them; that generator is checkpointed.
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.rank)
        self.pool: ScenePool | None = None
        workers = cfg.loader_workers
        if workers is None:  # on a GPU, worker processes build batches while it trains
            workers = min(6, max(1, (os.cpu_count() or 2) - 2)) if self.device.type == "cuda" else 0
        self.loader_workers = workers
        self._batches: Iterator | None = None

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self, name: str = "last") -> Path:
        """Rank 0 writes ckpt/<name>/: the EMA model in our layout, and train_state.pt."""
        if self.rank != 0:
            return self.out
        folder = self.out / f"checkpoint-{name}"
        tmp = self.out / f".checkpoint-{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_percept(tmp, self.ema, self.cfg.scheduler_config(), self.cfg.pipeline_config())
        state = dict(
            step=self.step, model=self.model.state_dict(), opt=self.opt.state_dict(),
            gen=self.gen.get_state(), torch_rng=torch.get_rng_state(),
            config=asdict(self.cfg),
        )
        torch.save(state, tmp / "train_state.pt")
        if folder.exists():
            old = self.out / f".checkpoint-{name}.old"
            if old.exists():
                shutil.rmtree(old)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
        return folder

    def resume(self, folder: Path) -> None:
        """Restore model, EMA, optimizer, step and RNG states from a checkpoint folder."""
        state = torch.load(Path(folder) / "train_state.pt", map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        ema = PerceptDiT.from_pretrained(str(folder))
        self.ema.load_state_dict(ema.state_dict())
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])

    # -- one step ---------------------------------------------------------------------------------

    def scene_pool(self) -> ScenePool:
        """This rank's shard of rendered scenes, rendered once and cached beside the run."""
        if self.pool is None:
            cfg = self.cfg
            start = self.rank * cfg.train_scenes // self.world
            stop = (self.rank + 1) * cfg.train_scenes // self.world
            style = "-photo" if cfg.textures else ""
            self.pool = ScenePool.cached(self.out / f"scenes-{cfg.resolution}-{start}-{stop}{style}.npz",
                                         range(start, stop), cfg.resolution, workers=cfg.render_workers,
                                         textures=cfg.textures)
        return self.pool

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """The batch for the current step: (cond, x0, labels, kinds)."""
        if self._batches is None:  # from this step on, built ahead by `loader_workers` processes (forked)
            data = StepBatches(self.scene_pool(), self.cfg, self.rank)
            self._batches = iter(batch_loader(data, itertools.count(self.step), self.loader_workers,
                                              pin=self.device.type == "cuda"))
        return next(self._batches)

    def close_batches(self) -> None:
        """Stop the batch workers (a later `batch()` starts again from the current step)."""
        self._batches = None

    def loss(self, cond, x0, labels) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Per-sample denoising MSE (B,), the balance loss, and logs."""
        cfg = self.cfg
        dev = self.device
        cond, x0, labels = (a.to(dev, non_blocking=True) for a in (cond, x0, labels))
        b = x0.shape[0]
        t = torch.randint(0, 1000, (b,), generator=self.gen, device=dev)
        a = self.alphas[t].view(b, 1, 1, 1)
        noise = multires_noise(tuple(x0.shape), cfg.multires_noise, t.float() / 999, self.gen)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        want = a.sqrt() * noise - (1 - a).sqrt() * x0 if cfg.prediction_type == "v_prediction" else noise
        amp = None if cfg.autocast == "fp32" else torch_dtype(cfg.autocast)
        with torch.autocast(dev.type, dtype=amp) if amp else nullcontext():
            out = self.ddp(torch.cat([cond, xt], 1), t, labels, return_dict=True)
        pred = out.sample[:, : x0.shape[1]].float()
        per_sample = ((pred - want) ** 2).mean(dim=(1, 2, 3))  # (B,)
        balance = (load_balancing_loss(out.router_logits, self.model.config.num_experts, self.model.config.top_k)
                   if out.router_logits else torch.zeros((), device=dev))
        return per_sample, {}, balance

    def train_step(self, record: bool = True) -> dict[str, Any]:
        """One optimizer step; the log record (which waits for the GPU) only when `record`."""
        cfg = self.cfg
        cond, x0, labels, kinds = self.batch()
        lr = lr_at(self.step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        per_sample, _, balance = self.loss(cond, x0, labels)
        loss = per_sample.mean() + cfg.balance_weight * balance
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))  # warm EMA early on
            torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.model.parameters()], 1 - decay)
        self.step += 1
        if not record:
            return {}
        rec: dict[str, Any] = dict(step=self.step, loss=float(loss.detach()), lr=lr, grad_norm=float(grad_norm))
        if self.model.config.num_experts:
            rec["balance"] = float(balance.detach())
        losses = per_sample.detach().cpu().numpy()
        for kind in set(kinds):
            rec[f"loss_{kind}"] = float(np.mean([l for l, k in zip(losses, kinds) if k == kind]))
        return rec

    # -- evaluation -------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """EMA model on held-out scenes (seeds never trained on), default steps, 1 member."""
        from percept_cli.autoencoder import PixelSpace
        from percept_cli.evaluate import evaluate, synthetic_set
        from percept_cli.pipeline import Predictor

        cfg = self.cfg
        if cfg.stage != "perception":
            return {}
        import copy

        model = copy.deepcopy(self.ema).float().cpu()
        pred = Predictor(model, PixelSpace(), cfg.scheduler_config(), cfg.pipeline_config(), device="cpu",
                         dtype="bf16" if cfg.autocast == "bf16" else "fp32")
        out: dict[str, Any] = {}
        for task in cfg.tasks():
            samples = synthetic_set(task, cfg.eval_scenes, size=cfg.resolution * 2)
            res = evaluate(pred, task, samples, with_baselines=False, steps=cfg.eval_steps, ensemble=1, batch_size=32)
            out.update({f"eval_{task}_{k}": v for k, v in res["model"].items()})
        return out

    # -- the loop ---------------------------------------------------------------------------------

    def train(self, max_time: float | None = None) -> None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        log_path = self.out / "log.jsonl"
        started, window, samples = time.time(), time.time(), 0
        while self.step < cfg.max_steps:
            logging = (self.step + 1) % cfg.log_every == 0 or self.step + 1 == cfg.max_steps
            rec = self.train_step(record=logging)
            samples += cfg.batch_size * self.world
            if logging:
                rec["samples_per_s"] = samples / max(1e-9, time.time() - window)
                rec["elapsed_s"] = time.time() - started
                window, samples = time.time(), 0
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps) and self.rank == 0:
                    rec.update(self.evaluate())
                if self.rank == 0:
                    with log_path.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items())
                    self.log(shown)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                self.save("last")
            if max_time is not None and time.time() - started > max_time:
                self.save("last")
                break
        self.close_batches()
        if self.world > 1:
            torch.distributed.barrier()


def run(cfg: TrainConfig, resume: bool = True, max_time: float | None = None, log: Callable[[str], None] = print) -> Trainer:
    """Train (resuming from OUT/checkpoint-last when present) and return the trainer."""
    trainer = Trainer(cfg, log=log)
    last = Path(cfg.out) / "checkpoint-last"
    if resume and (last / "train_state.pt").exists():
        trainer.resume(last)
        log(f"resumed from {last} at step {trainer.step}")
    trainer.train(max_time=max_time)
    return trainer


def load_config(path: Path | None, **overrides: Any) -> TrainConfig:
    """TrainConfig from a TOML file (keys = TrainConfig fields), then explicit overrides."""
    from percept_cli.tomlcompat import tomllib  # tomli on Python 3.10

    from percept_cli.errors import UsageError

    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"--config '{path}': {exc}; fix the TOML file") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise UsageError(f"unknown training option(s) {', '.join(unknown)}; see `percept train --help`")
    if "flow_scale" in values:
        values["flow_scale"] = tuple(values["flow_scale"])
    mixture.check_kinds(values.get("task_weights", {}))
    return TrainConfig(**values)


if __name__ == "__main__":  # python -m percept_cli.train CONFIG.toml [OUT]
    import sys

    cfg = load_config(Path(sys.argv[1]), out=sys.argv[2] if len(sys.argv) > 2 else None)
    run(cfg, log=lambda m: print(m, flush=True))
