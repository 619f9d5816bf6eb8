"""One readable training loop: multi-task conditional denoising (or image generation for pre-training).

Single process on a CPU, or DDP / FSDP2 (`strategy`) under torchrun (RANK, WORLD_SIZE set; gloo on
CPU, nccl on GPUs). Checkpoints are our safetensors layout plus `train_state.pt` (optimizer, EMA,
step, RNG states), so a resumed run continues exactly where it stopped.

Pixel space (the model denoises [-1, 1] images) or latent space: with a VAE (`vae`, or the one of
the `init` model) every input and target is encoded once to the VAE's latents and cached on disk
(data/latents.py). Data: rendered scenes, or a weighted mixture of dataset folders and scenes
(`[[data]]` tables, data/sources.py). A batch is a pure function of (seed, rank, step) either way.
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
    init: str | None = None  # start from a model: a weights.lock name (generalist), our folder, an official folder or .pt, a DiT
    vae: str | None = None  # diffusers AutoencoderKL folder: train in its latent space (default: the init model's vae/)
    train_only: list[str] = field(default_factory=list)  # parameter groups to train (TRAIN_GROUPS); [] = all
    # data
    stage: str = "perception"  # "perception" (tasks) or "generate" (image generation pre-training)
    resolution: int = 64
    train_scenes: int = 20000  # synthetic seeds 0 .. train_scenes-1
    textures: str | None = None  # folder of photos: render the photo scene style (scripts/get-photos.sh)
    task_weights: dict[str, float] = field(default_factory=lambda: {"depth": 1.0, "amodal": 1.0, "flow_u": 1.0, "flow_v": 1.0})
    flow_scale: tuple[float, float] = (8.0, 8.0)  # pixels of the processing grid per target unit (an init model's own wins)
    data: list[dict[str, Any]] = field(default_factory=list)  # [[data]] tables: kind, path, weight, task, crop
    latent_cache: str | None = None  # folder of cached latents (default OUT/latents); shareable between runs
    latent_dtype: str = "float16"  # how cached latents are stored: "float16" (half the disk) or "float32"
    # diffusion
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"
    multires_noise: float = 0.9  # strength of multi-resolution noise, annealed with t; 0 = off
    # optimisation
    batch_size: int = 32  # per process and micro-batch: a step sees batch_size * grad_accum * processes samples
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 20000
    lr: float = 1.2e-4
    lr_final: float = 1.2e-6  # exponential decay from lr to lr_final over max_steps (the paper's)
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    balance_weight: float = 0.01
    autocast: str = "bf16"  # "bf16", "fp16" or "fp32": the compute dtype of matmuls (weights stay fp32)
    strategy: str = "ddp"  # "ddp" (every process holds the model) or "fsdp" (parameters, grads, optimizer sharded)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
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

    def model_config(self, channels: int = 3, factor: int = 1) -> dict[str, Any]:
        """A fresh model's config: pixel space, or a VAE's latents (`channels`, `factor` pixels per latent)."""
        cfg = dit_config(self.size, patch_size=self.patch_size, num_experts=self.num_experts)
        for key in ("hidden_size", "depth", "num_heads"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key)
        grid = self.resolution // factor // self.patch_size
        motion = dict(motion_channels=self.motion_channels, motion_radius=self.motion_radius,
                      motion_levels=self.motion_levels) if self.motion_channels else {}
        return dict(cfg, sample_size=grid, in_channels=channels, cond_channels=2 * channels, top_k=self.top_k,
                    norm_topk_prob=self.norm_topk_prob, num_labels=self.num_labels(), label_offset=1000,
                    learn_sigma=False, **motion)

    def num_labels(self) -> int:
        """Rows of the label table: 1000 + n covers every trained task's labels and the null row (5 for the three)."""
        labels = [label for kind, (_, label) in mixture.kinds().items() if kind in self.task_weights]
        return max([mixture.NULL_LABEL, *labels]) - 1000 + 1

    def tasks(self) -> list[str]:
        """The registered tasks this run trains (a kind of theirs has a weight, or a [[data]] table trains it)."""
        if self.stage != "perception":
            return []
        if self.data:
            from percept_cli.data.sources import DATASET_TASKS, parse_data

            named = set()
            for spec in parse_data(self.data):
                named |= set(spec.task or (DATASET_TASKS[spec.kind] if spec.kind in DATASET_TASKS else
                                           [t.name for k, (t, _) in mixture.kinds().items() if k in self.task_weights]))
            return [t.name for t in dict.fromkeys(t for _, (t, _) in mixture.kinds().items()) if t.name in named]
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

    def __init__(self, pool: ScenePool | None, cfg: "TrainConfig", rank: int, sources: list | None = None,
                 latent: bool = False, flow_scale: tuple[float, float] | None = None):
        self.pool, self.rank, self.sources, self.latent = pool, rank, sources, latent
        self.seed, self.batch_size, self.resolution = cfg.seed, cfg.batch_size, cfg.resolution
        self.flow_scale = tuple(flow_scale or cfg.flow_scale)
        self.weights = {"generate": 1.0} if cfg.stage == "generate" else dict(cfg.task_weights)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        rng = np.random.default_rng([self.seed, self.rank, step])
        if self.sources is not None:  # a mixture of sources, in pixels or in cached latents
            from percept_cli.data.latents import sample_latents
            from percept_cli.data.mixture import sample_mixture

            cond, target, labels, kinds = (
                sample_latents(self.sources, rng, self.batch_size, self.resolution) if self.latent else
                sample_mixture(self.sources, rng, self.batch_size, self.resolution, self.flow_scale))
            cond, target = torch.from_numpy(cond), torch.from_numpy(target)
            if torch.utils.data.get_worker_info() is not None:
                cond, target = cond.share_memory_(), target.share_memory_()
            return cond, target, torch.from_numpy(labels), kinds
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


TRAIN_GROUPS: dict[str, str] = {  # --train-only NAME: the parameters it names (a regex on their names)
    "experts": r"^blocks\.\d+\.moe\.experts\.",
    "router": r"^blocks\.\d+\.moe\.gate\.",
    "mlp": r"^blocks\.\d+\.mlp\.",
    "attention": r"^blocks\.\d+\.attn\.",
    "adaln": r"adaLN_modulation\.",
    "final": r"^final_layer\.",
    "patch": r"^x_embedder\.",
    "timestep": r"^t_embedder\.",
    "labels": r"^y_embedder\.",
    "motion": r"^motion\.",
}
TRAIN_ALIASES = {"embeddings": ("patch", "timestep", "labels"),
                 "blocks": ("experts", "router", "mlp", "attention", "adaln")}


def check_train_only(names: list[str]) -> list[str]:
    """The group names, validated: UsageError naming an unknown one and the choices."""
    from percept_cli.errors import UsageError

    for name in names:
        if name not in TRAIN_GROUPS and name not in TRAIN_ALIASES:
            raise UsageError(f"--train-only: {name!r} is not a parameter group; use "
                             f"{', '.join([*TRAIN_GROUPS, *TRAIN_ALIASES])} (comma-separated)")
    return list(names)


def set_trainable(model: torch.nn.Module, groups: list[str]) -> list[str]:
    """Freeze every parameter outside `groups` (all train when empty; pos_embed never); the trained names."""
    import re

    if groups:
        check_train_only(groups)
        wanted = [g for name in groups for g in TRAIN_ALIASES.get(name, (name,))]
        pattern = re.compile("|".join(f"(?:{TRAIN_GROUPS[g]})" for g in wanted))
        for name, p in model.named_parameters():
            p.requires_grad_(bool(pattern.search(name)) and name != "pos_embed")
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        if not trained:
            from percept_cli.errors import UsageError

            raise UsageError(f"--train-only {','.join(groups)}: this model has no such parameters "
                             "(experts and router need a mixture-of-experts model)")
        return trained
    return [n for n, p in model.named_parameters() if p.requires_grad]


def checkpoint_blocks(model: PerceptDiT) -> None:
    """Activation checkpointing: each block's activations are recomputed in the backward pass, not kept."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        block.forward = (lambda f: lambda x, c: checkpoint(f, x, c, use_reentrant=False))(block.forward)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of an FSDP parameter (a DTensor), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
        from percept_cli.autoencoder import PixelSpace

        self.autoencoder: Any = PixelSpace()
        self.vae_dir: Path | None = None
        self.sched_config = cfg.scheduler_config()
        self.init_pipeline: dict[str, Any] = {}  # percept.json of the init model (its flow scale, thresholds...)
        self.flow_scale = tuple(cfg.flow_scale)
        if cfg.init:
            self.model = self._init_model(cfg.init)
        else:
            self._use_vae(cfg.vae)
            self.model = PerceptDiT(**cfg.model_config(self.autoencoder.channels, self.autoencoder.factor))
        self.latent = self.vae_dir is not None
        if cfg.activation_checkpointing:
            checkpoint_blocks(self.model)
        self.model.to(self.device).train()
        set_trainable(self.model, cfg.train_only)
        self.ema = PerceptDiT.from_config(self.model.config).to(self.device).eval().requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.ddp = self.model
        if cfg.strategy not in ("ddp", "fsdp"):
            from percept_cli.errors import UsageError

            raise UsageError(f"strategy = {cfg.strategy!r}: use 'ddp' or 'fsdp'")
        self.fsdp = cfg.strategy == "fsdp" and self.world > 1
        if self.fsdp:  # FSDP2: each block, then the root, sharded over the processes; the EMA alike
            from torch.distributed.fsdp import fully_shard

            for model in (self.model, self.ema):
                for block in model.blocks:
                    fully_shard(block)
                fully_shard(model)
        elif self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                                     fused=self.device.type == "cuda")
        from diffusers import DDIMScheduler

        self.alphas = DDIMScheduler.from_config(self.sched_config).alphas_cumprod.float().to(self.device)  # (1000,)
        self.prediction_type = self.sched_config.get("prediction_type", cfg.prediction_type)
        self.step = 0
        # Batches are built on the CPU from (seed, rank, step) (StepBatches); timesteps and noise are drawn
        # on the training device, so a GPU run never waits for them; that generator is checkpointed.
        # Data shards: micro-batch j of process r is shard r * grad_accum + j of world * grad_accum, each with
        # its own items, batches and noise; so 1 process accumulating 2 micro-batches trains on exactly the
        # data (and noise) of 2 processes accumulating 1 (with grad_accum = 1: shard = rank).
        self.num_shards = self.world * cfg.grad_accum
        self.shards = [self.rank * cfg.grad_accum + j for j in range(cfg.grad_accum)]
        self.gens = [torch.Generator(self.device).manual_seed(cfg.seed * 1000 + k) for k in self.shards]
        self.gen = self.gens[0]  # the one loss() draws from (train_step points it at each micro-batch's)
        self.pools: dict[int, ScenePool] = {}
        workers = cfg.loader_workers
        if workers is None:  # on a GPU, worker processes build batches while it trains
            workers = min(6, max(1, (os.cpu_count() or 2) - 2)) if self.device.type == "cuda" else 0
        self.loader_workers = workers
        self._batches: list[Iterator] | None = None
        self._sources: dict[int, list] = {}

    # -- the model to start from -----------------------------------------------------------------

    def _use_vae(self, folder: str | Path | None) -> None:
        """Train in this VAE's latent space (None: pixel space)."""
        if folder is None:
            return
        from percept_cli.autoencoder import VAE

        self.vae_dir = Path(folder).expanduser()
        self.autoencoder = VAE.from_folder(self.vae_dir).to(self.device)

    def _init_model(self, spec: str) -> PerceptDiT:
        """The model `init` names: a Meta/diffusers DiT or our pixel folder (as before), else a weights.lock
        name or a folder with a VAE (ours with vae/, or the official layout): its VAE, scheduler, flow scale."""
        cfg = self.cfg
        from percept_cli.models.surgery import detect_layout, load_pretrained_dit, perception_from_generative

        path = Path(spec).expanduser()
        plain = path.is_file() or (path.is_dir() and not (path / "vae").is_dir() and (path / "config.json").is_file()
                                   and detect_layout(path)[0] in ("percept", "diffusers"))
        if plain:
            model = load_pretrained_dit(path)
            self._use_vae(cfg.vae)
        else:
            from percept_cli.checkpoints import load_source
            from percept_cli.hub import resolve_model

            source = resolve_model(spec)
            model, self.autoencoder, self.sched_config, pipeline = load_source(source)
            self.vae_dir = source.vae or (source.root / "vae" if source.root and (source.root / "vae").is_dir() else None)
            if cfg.vae:
                self._use_vae(cfg.vae)
            self.autoencoder.to(self.device)
            model_keys = {"layout", "num_heads", "train", "patch_size", "in_channels", "learn_sigma", "top_k",
                          "norm_topk_prob", "mlp_ratio", "routed_labels"}  # the model's config.json says these
            self.init_pipeline = {k: v for k, v in pipeline.items() if k not in model_keys}
            if "flow_scale" in pipeline:
                self.flow_scale = tuple(float(x) for x in pipeline["flow_scale"])
            model.train().requires_grad_(True)
            model.pos_embed.requires_grad_(False)
        if self.vae_dir is not None and int(model.config.in_channels) != self.autoencoder.channels:
            from percept_cli.errors import UsageError

            raise UsageError(f"init {spec!r} takes {model.config.in_channels}-channel inputs but the VAE in "
                             f"'{self.vae_dir}' makes {self.autoencoder.channels}: use the model's own VAE")
        if self.vae_dir is None and int(model.config.in_channels) != 3 and cfg.stage == "perception":
            from percept_cli.errors import UsageError

            raise UsageError(f"init {spec!r} is a latent model ({model.config.in_channels} input channels): "
                             "set vae = its VAE folder (e.g. stabilityai/stable-diffusion-2's vae/)")
        if cfg.stage == "perception" and model.config.cond_channels == 0:
            # a generative pre-trained model: widen conv_in for [rgb, prompt] and add task rows
            model = perception_from_generative(model)
        if cfg.motion_channels and not model.config.get("motion_channels", 0):
            from percept_cli.models.surgery import add_motion

            model = add_motion(model, cfg.motion_channels, cfg.motion_radius, cfg.motion_levels, cfg.seed)
        return model

    def pipeline_config(self) -> dict[str, Any]:
        """What the saved model's percept.json says: the init model's entries, then this run's."""
        return {**self.init_pipeline, **self.cfg.pipeline_config(), "flow_scale": list(self.flow_scale)}

    # -- checkpoints ------------------------------------------------------------------------------

    def _full_states(self) -> tuple[dict, dict, dict]:
        """(model, EMA, optimizer) state dicts with whole tensors: gathered from the shards under FSDP
        (a collective: every process calls it), else the modules' own."""
        if not self.fsdp:
            return self.model.state_dict(), self.ema.state_dict(), self.opt.state_dict()
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(self.model, options=opts), get_model_state_dict(self.ema, options=opts),
                get_optimizer_state_dict(self.model, self.opt, options=opts))

    def _full_ema(self) -> dict:
        """The EMA's whole weights, gathered from the FSDP shards (a collective; rank 0 gets them)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.ema, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self, name: str = "last") -> Path:
        """Rank 0 writes OUT/checkpoint-<name>/: the EMA model in our layout (with the VAE: vae/), and
        train_state.pt (model, optimizer, step, every process's RNG states). Every process calls it."""
        model_sd, ema_sd, opt_sd = self._full_states()
        gens = [g.get_state().cpu() for g in self.gens]  # one per data shard, in shard order
        if self.world > 1:
            every = [None] * self.world
            torch.distributed.all_gather_object(every, gens)
            gens = [g for part in every for g in part]
        folder = self.out / f"checkpoint-{name}"
        if self.rank == 0:
            self._write(folder, name, model_sd, ema_sd, opt_sd, gens)
        if self.world > 1:
            torch.distributed.barrier()
        return folder

    def _write(self, folder: Path, name: str, model_sd: dict, ema_sd: dict, opt_sd: dict, gens: list) -> None:
        tmp = self.out / f".checkpoint-{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        ema = self.ema
        if self.fsdp:  # a plain copy of the gathered EMA weights to save
            ema = PerceptDiT.from_config(self.model.config)
            ema.load_state_dict(ema_sd)
        save_percept(tmp, ema, self.sched_config, self.pipeline_config())
        if self.vae_dir is not None:  # the model folder is complete: --model FOLDER encodes with it
            shutil.copytree(self.vae_dir, tmp / "vae", copy_function=_link_or_copy)
        state = dict(
            step=self.step, model=model_sd, opt=opt_sd, gen=gens[0], gens=gens,
            torch_rng=torch.get_rng_state(), config=asdict(self.cfg),
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

    def resume(self, folder: Path) -> None:
        """Restore model, EMA, optimizer, step and RNG states from a checkpoint folder."""
        # FSDP: every process reads the whole state, memory-mapped (the page cache is shared, not 8 copies)
        state = torch.load(Path(folder) / "train_state.pt", map_location="cpu" if self.fsdp else self.device,
                           weights_only=False, mmap=self.fsdp)
        ema = PerceptDiT.from_pretrained(str(folder)).state_dict()
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, state["model"], options=opts)
            set_model_state_dict(self.ema, ema, options=opts)
            set_optimizer_state_dict(self.model, self.opt, state["opt"], options=opts)
        else:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(ema)
            self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        gens = state.get("gens") or [state["gen"]]
        for k, gen in zip(self.shards, self.gens):  # another shard count: rank 0's state (not exact)
            gen.set_state(gens[k] if len(gens) == self.num_shards else state["gen"])
        torch.set_rng_state(state["torch_rng"])

    # -- one step ---------------------------------------------------------------------------------

    def _seeds(self, shard: int) -> range:
        n = self.cfg.train_scenes
        return range(shard * n // self.num_shards, (shard + 1) * n // self.num_shards)

    def scene_pool(self, j: int = 0) -> ScenePool:
        """The rendered scenes of this process's data shard j, rendered once and cached beside the run."""
        if j not in self.pools:
            cfg = self.cfg
            seeds = self._seeds(self.shards[j])
            style = "-photo" if cfg.textures else ""
            self.pools[j] = ScenePool.cached(self.out / f"scenes-{cfg.resolution}-{seeds.start}-{seeds.stop}{style}.npz",
                                             seeds, cfg.resolution, workers=cfg.render_workers, textures=cfg.textures)
        return self.pools[j]

    def sources(self, j: int = 0) -> list | None:
        """The mixture's sources of data shard j ([[data]] tables; latent training: at least the scenes),
        pools loaded (latents: encoded once, cached); None for the plain scene loop."""
        cfg = self.cfg
        if not cfg.data and not self.latent:
            return None
        shard = self.shards[j]
        if j not in self._sources:
            from percept_cli.data.mixture import ArrayPool, Source
            from percept_cli.data.sources import DataSpec, folder_source, parse_data, task_kinds

            specs = parse_data(cfg.data) or [DataSpec("scenes")]
            sources, loaders = [], []
            for spec in specs:
                if spec.kind == "scenes":
                    pool = self.scene_pool(j)
                    names = spec.task or tuple(self.cfg.tasks())
                    weights = task_kinds(names, cfg.task_weights) if cfg.stage == "perception" else {"generate": 1.0}
                    seeds = self._seeds(shard)
                    ident = dict(kind="scenes", seeds=[seeds.start, seeds.stop], textures=str(cfg.textures or ""),
                                 stored=cfg.resolution)
                    sources.append(Source("scenes", pool, weights, spec.weight, cfg.resolution, ident))
                    loaders.append((len(pool), lambda r, pool=pool: ArrayPool(
                        **{k: getattr(pool, k)[r.start:r.stop] for k in ScenePool.__dataclass_fields__})))
                else:
                    source, data = folder_source(spec, cfg.resolution, cfg.task_weights, shard, self.num_shards,
                                                 pool=not self.latent)
                    sources.append(source)
                    loaders.append((len(data), data.load))
            if self.latent:
                from dataclasses import replace

                from percept_cli.data.latents import encode_source, vae_hash

                cache = Path(cfg.latent_cache) if cfg.latent_cache else self.out / "latents"
                vh = vae_hash(self.vae_dir)
                sources = [replace(src, pool=encode_source(src, n, load, self.autoencoder, cache, vh, cfg.resolution,
                                                           self.flow_scale, device=str(self.device), log=self.log,
                                                           dtype=cfg.latent_dtype))
                           for src, (n, load) in zip(sources, loaders)]
            self._sources[j] = sources
        return self._sources[j]

    def batch(self, j: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """Data shard j's batch for the current step, (cond, x0, labels, kinds): a function of (seed, shard, step)."""
        if self._batches is None:  # from this step on, built ahead by `loader_workers` processes (forked)
            self._batches = []
            for i in range(len(self.shards)):
                sources = self.sources(i)
                data = StepBatches(None if sources is not None else self.scene_pool(i), self.cfg, self.shards[i],
                                   sources=sources, latent=self.latent, flow_scale=self.flow_scale)
                self._batches.append(iter(batch_loader(data, itertools.count(self.step), self.loader_workers,
                                                       pin=self.device.type == "cuda")))
        return next(self._batches[j])

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
        want = a.sqrt() * noise - (1 - a).sqrt() * x0 if self.prediction_type == "v_prediction" else noise
        amp = None if cfg.autocast == "fp32" else torch_dtype(cfg.autocast)
        with torch.autocast(dev.type, dtype=amp) if amp else nullcontext():
            out = self.ddp(torch.cat([cond, xt], 1), t, labels, return_dict=True)
        pred = out.sample[:, : x0.shape[1]].float()
        per_sample = ((pred - want) ** 2).mean(dim=(1, 2, 3))  # (B,)
        balance = (load_balancing_loss(out.router_logits, self.model.config.num_experts, self.model.config.top_k)
                   if out.router_logits else torch.zeros((), device=dev))
        return per_sample, {}, balance

    def train_step(self, record: bool = True) -> dict[str, Any]:
        """One optimizer step over grad_accum micro-batches; the log record (which waits for the GPU) only when `record`."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        losses, kinds, total, balances = [], [], 0.0, []
        for j in range(cfg.grad_accum):
            last = j == cfg.grad_accum - 1
            cond, x0, labels, micro_kinds = self.batch(j)
            self.gen = self.gens[j]  # this shard's timesteps and noise
            with self._no_sync(not last):
                per_sample, _, balance = self.loss(cond, x0, labels)
                loss = (per_sample.mean() + cfg.balance_weight * balance) / cfg.grad_accum
                loss.backward()
            total += loss.detach()
            losses.append(per_sample.detach())
            balances.append(balance.detach())
            kinds += micro_kinds
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))  # warm EMA early on
            pairs = [(e, p) for e, p in zip(self.ema.parameters(), self.model.parameters()) if p.requires_grad]
            if pairs:
                torch._foreach_lerp_([_local(e) for e, _ in pairs], [_local(p.detach()) for _, p in pairs], 1 - decay)
        self.step += 1
        if not record:
            return {}
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        if self.world > 1:  # the logged loss is the step's over every process, as the gradient is
            total = total.reshape(1).clone()
            torch.distributed.all_reduce(total)
            total = total / self.world
        rec: dict[str, Any] = dict(step=self.step, loss=float(total), lr=lr, grad_norm=float(grad_norm))
        if self.model.config.num_experts:
            rec["balance"] = float(torch.stack(balances).mean())
        per = torch.cat(losses).cpu().numpy()
        for kind in set(kinds):
            rec[f"loss_{kind}"] = float(np.mean([l for l, k in zip(per, kinds) if k == kind]))
        return rec

    def _agree(self, flag: bool) -> bool:
        return _agree_any(flag, self.device) if self.world > 1 else flag

    def _no_sync(self, skip: bool):
        """While accumulating (skip): no gradient all-reduce (DDP) or reduce-scatter (FSDP) yet."""
        if not skip or self.world == 1:
            return nullcontext()
        if self.fsdp:
            model = self.model

            class _Off:
                def __enter__(self):
                    model.set_requires_gradient_sync(False)

                def __exit__(self, *exc):
                    model.set_requires_gradient_sync(True)
            return _Off()
        return self.ddp.no_sync()

    # -- evaluation -------------------------------------------------------------------------------

    def evaluate(self, ema_state: dict | None = None) -> dict[str, Any]:
        """EMA model on held-out scenes (seeds never trained on), default steps, 1 member.
        ema_state: the EMA's whole weights (FSDP: gathered by every process beforehand)."""
        from percept_cli.evaluate import evaluate, synthetic_set
        from percept_cli.pipeline import Predictor

        cfg = self.cfg
        if cfg.stage != "perception":
            return {}
        import copy

        if ema_state is not None:
            model = PerceptDiT.from_config(self.model.config)
            model.load_state_dict(ema_state)
        else:
            model = copy.deepcopy(self.ema).float().cpu()
        pred = Predictor(model, self.autoencoder.to("cpu"), self.sched_config, self.pipeline_config(), device="cpu",
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
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                    ema_state = self._full_ema() if self.fsdp else None  # a collective: every process
                    if self.rank == 0:
                        rec.update(self.evaluate(ema_state))
                if self.rank == 0:
                    with log_path.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items())
                    self.log(shown)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                self.save("last")
            if max_time is not None and self._agree(time.time() - started > max_time):
                self.save("last")
                break
        self.close_batches()
        if self.world > 1:
            torch.distributed.barrier()


def _agree_any(flag: bool, device: torch.device) -> bool:
    """True on every process when any process says so (all stop at the same step: saving is collective)."""
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


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
    if "train_only" in values:
        only = values["train_only"]
        values["train_only"] = check_train_only([x.strip() for x in only.split(",") if x.strip()]
                                                if isinstance(only, str) else list(only))
    if values.get("data"):
        from percept_cli.data.sources import parse_data

        parse_data(values["data"])  # a wrong table is a usage error now, not after the model loads
    for key, ok, what in (("grad_accum", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                          ("strategy", lambda v: v in ("ddp", "fsdp"), "'ddp' or 'fsdp'"),
                          ("latent_dtype", lambda v: v in ("float16", "float32"), "'float16' or 'float32'")):
        if key in values and not ok(values[key]):
            raise UsageError(f"{key} = {values[key]!r}: use {what}")
    mixture.check_kinds(values.get("task_weights", {}))
    return TrainConfig(**values)


if __name__ == "__main__":  # python -m percept_cli.train CONFIG.toml [OUT]
    import sys

    cfg = load_config(Path(sys.argv[1]), out=sys.argv[2] if len(sys.argv) > 2 else None)
    run(cfg, log=lambda m: print(m, flush=True))
