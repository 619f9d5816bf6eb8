"""Predictor: numpy images in, typed results out, for any input size.

The data path, as numbered steps in `Predictor.predict_iter`:
  1. check inputs once       2. resize to the processing grid, normalise
  3. encode (VAE or pixels)  4. repeat members (and flow's u, v) in the batch dimension
  5. DDIM sampling           6. decode
  7. task values, ensemble at the processing grid (bounded memory for huge photos)
  8. resize back to the input's size (flow vectors rescaled by the resize factors)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import torch

from percept_cli import tasks as T
from percept_cli.tasks import AmodalResult, DepthResult, FlowResult, TaskInput, ToInput  # noqa: F401 (importable here)
from percept_cli.autoencoder import VAE, PixelSpace
from percept_cli.checkpoints import ModelSource
from percept_cli.dtypes import dtype_name, resolve_dtype, torch_dtype
from percept_cli.errors import InputError, UsageError
from percept_cli.sampler import ddim_sample, initial_noise
from percept_cli.schedules import check_steps, make_scheduler, parse_schedule, schedule_warning

# Built-in defaults; a checkpoint's percept.json overrides them, CLI flags override both.
DEFAULTS: dict[str, Any] = dict(steps=50, ensemble=1, schedule="default", resolution=512, batch_size=16, fit="stretch",
                                tiles=3)
# How a non-square input meets the square processing grid: stretch = squash it (the official script),
# pad = letterbox it to a square with its edges replicated, predict, crop back (keeps the aspect ratio),
# tile = the whole image (letterboxed) for the layout plus overlapping square crops for detail, each crop
# fitted to its neighbours by scale and shift and blended (tiling.py; tasks with a blend rule: depth).
FITS = ("stretch", "pad", "tile")


@dataclass(frozen=True)
class Settings:
    steps: int
    ensemble: int
    schedule: str
    seed: int
    resolution: int
    batch_size: int
    reduction: str | None = None
    fit: str = "stretch"  # see FITS
    tiles: int = 3  # fit=tile: crops across the short side (benchmarks/tiling.py chose the default)
    backward: bool = False  # flow: also predict B -> A and check forward-backward consistency (occlusion)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_device(device: str = "auto") -> torch.device:
    """auto -> cuda, then mps, then cpu; a named device that is not there is a usage error."""
    device = (device or "auto").lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is visible; use --device cpu (or auto)")
    if device == "mps" and not has_mps:
        raise UsageError("--device mps: Apple's MPS backend is not available here; use --device cpu (or auto)")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise UsageError(f"--device must be auto, cpu, cuda[:N] or mps, got {device!r}")
    return torch.device(device)


def pick_dtype(dtype: str = "auto", device: str | torch.device = "auto") -> torch.dtype:
    """--dtype -> torch dtype; auto: bf16 where `device` runs it fast, else fp32 (dtypes.resolve_dtype)."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    return torch_dtype(resolve_dtype(dtype, device))


def cast_matmul_weights(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Store every Linear and Conv2d weight in `dtype` (in place) for running under autocast(dtype).

    Autocast casts these weights to `dtype` on every call anyway (its weight cache is off for
    parameters that do not require grad), so outputs stay bitwise the same while each denoising
    step skips a read and a write of every weight: 5-30% of a CPU bf16 forward, most for MoE, whose
    experts each see only a fraction of the tokens. Norms, embeddings and tables stay fp32.
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.to(dtype)
    return model


def maybe_compile(model: torch.nn.Module, enabled: bool = False) -> Callable[..., torch.Tensor]:
    """torch.compile(model) when enabled (a GPU speed-up; the first call compiles, minutes), else the model.

    The compiled wrapper shares the model's weights, so results match the eager model within
    float tolerance. dynamic=None: a different last-batch size recompiles once with dynamic shapes.
    """
    from percept_cli.models.fastpath import compile_model

    return compile_model(model) if enabled else model


def _resize(arr: np.ndarray, size_hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an (H, W[, C]) array; area for shrinking, linear for growing."""
    h, w = size_hw
    if arr.shape[:2] == (h, w):
        return arr
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if h * w < arr.shape[0] * arr.shape[1] else cv2.INTER_LINEAR
    out = cv2.resize(arr, (w, h), interpolation=interp)
    return out.reshape((h, w) + arr.shape[2:])


def _letterbox_box(h: int, w: int) -> tuple[int, int, int]:
    """(side, top, left): the square an (h, w) image is padded to, and where the image sits in it (centred)."""
    side = max(h, w)
    return side, (side - h) // 2, (side - w) // 2


def _to_grid(arr: np.ndarray, grid: tuple[int, int], fit: str, nearest: bool = False) -> np.ndarray:
    """An input-sized (H, W[, C]) array at the processing grid: squashed (stretch) or letterboxed (pad)."""
    if fit == "pad":
        h, w = arr.shape[:2]
        side, top, left = _letterbox_box(h, w)
        if (h, w) != (side, side):
            arr = cv2.copyMakeBorder(arr, top, side - h - top, left, side - w - left, cv2.BORDER_REPLICATE)
            arr = arr.reshape((side, side) + arr.shape[2:])  # cv2 drops a trailing channel axis of size 1
    return _resize(arr, grid, nearest=nearest)


def _from_grid(arr: np.ndarray, size_hw: tuple[int, int], fit: str) -> np.ndarray:
    """A grid-sized (h, w[, C]) result back at the input's (H, W): stretched back, or the letterbox cropped off."""
    h, w = size_hw
    if fit != "pad":
        return _resize(arr, (h, w))
    side, top, left = _letterbox_box(h, w)
    return _resize(arr, (side, side))[top : top + h, left : left + w]


def _grid_scale(size_hw: tuple[int, int], grid_hw: tuple[int, int], fit: str) -> tuple[float, float]:
    """(x, y) input pixels per grid pixel: flow vectors are multiplied by these."""
    h, w = size_hw
    gh, gw = grid_hw
    if fit == "pad":
        side = max(h, w)
        return side / gw, side / gh
    return w / gw, h / gh


class Predictor:
    """Runs one loaded model for depth, flow and amodal; load once, predict many."""

    def __init__(
        self,
        model: torch.nn.Module,
        autoencoder: VAE | PixelSpace,
        scheduler_config: dict[str, Any],
        config: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "auto",
        warn: Callable[[str], None] | None = None,
        compile: bool = False,
    ):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)  # auto: bf16 where the device runs it fast, else fp32
        self.dtype_name = dtype_name(self.dtype)  # what auto picked: fp32, bf16 or fp16
        self.model = model.eval().requires_grad_(False).to(self.device)
        if self.dtype != torch.float32:  # the Predictor owns the model: pass a copy to keep an fp32 one
            cast_matmul_weights(self.model, self.dtype)
        self.compiled = bool(compile)
        self.denoiser = maybe_compile(self.model, self.compiled)  # what the sampler calls
        self.autoencoder = autoencoder.to(self.device)
        self.scheduler_config = dict(scheduler_config)
        self.config = dict(config or {})
        self.warn = warn or (lambda msg: None)
        mc = model.config
        self.unit = mc.patch_size * autoencoder.factor  # input pixels per token side
        # A model whose grid is fixed (the official layout) accepts exactly one resolution.
        self.fixed_resolution = mc.sample_size * self.unit if self.config.get("layout") == "official" else None
        self.tasks = tuple(self.config.get("tasks", tuple(T.TASKS)))

    @classmethod
    def from_source(
        cls, source: ModelSource, device: str = "auto", dtype: str = "auto", warn=None, compile: bool = False
    ) -> "Predictor":
        """Load a resolved model (our folder or the official layout)."""
        from percept_cli.checkpoints import load_source

        low = pick_dtype(dtype, device)  # load the matmul weights straight into it: no fp32 copy of a large model
        model, autoencoder, sched, config = load_source(source, matmul_dtype=None if low == torch.float32 else low)
        return cls(model, autoencoder, sched, config, device=device, dtype=dtype, warn=warn, compile=compile)

    # -- settings ---------------------------------------------------------------------------------

    def settings(
        self,
        task: str,
        steps: int | None = None,
        ensemble: int | None = None,
        schedule: str | None = None,
        seed: int | None = None,
        resolution: int | None = None,
        batch_size: int | None = None,
        reduction: str | None = None,
        fit: str | None = None,
        tiles: int | None = None,
        backward: bool = False,
    ) -> Settings:
        """Resolve CLI value > checkpoint default > built-in default, and validate each once."""
        if task not in self.tasks:
            raise UsageError(f"this model was not trained for {task}: it does {', '.join(self.tasks)}")

        def pick(name, value):
            if value is not None:
                return value
            per_task = self.config.get(f"{task}_{name}")
            return per_task if per_task is not None else self.config.get(name, DEFAULTS.get(name))

        steps = check_steps(pick("steps", steps))
        ensemble = int(pick("ensemble", ensemble))
        if ensemble < 1:
            raise UsageError(f"--ensemble must be at least 1, got {ensemble}")
        schedule = str(pick("schedule", schedule))
        parse_schedule(schedule)
        batch_size = int(pick("batch_size", batch_size))
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        resolution = self._resolution(pick("resolution", resolution) if self.fixed_resolution is None
                                      else resolution or self.fixed_resolution)
        if reduction is not None and reduction not in ("mean", "median"):
            raise UsageError(f"--reduction must be mean or median, got {reduction!r}")
        seed = 0 if seed is None else int(seed)
        fit = str(pick("fit", fit))
        if fit not in FITS:
            raise UsageError(f"--fit must be stretch, pad or tile, got {fit!r}")
        spec = T.get_task(task)
        if fit == "tile" and not spec.tileable:
            raise UsageError(f"--fit tile is for depth: {task} has no rule to blend overlapping crops "
                             "(a crop's flow or mask cannot be fitted to its neighbours); use --fit pad or stretch")
        tiles = int(pick("tiles", tiles))
        if tiles < 1:
            raise UsageError(f"--tiles must be at least 1, got {tiles}")
        if backward and not callable(getattr(spec, "with_backward", None)):
            raise UsageError(f"--backward is for flow (B -> A and occlusion); {task} has no backward direction")
        return Settings(steps, ensemble, schedule, seed, resolution, batch_size, reduction, fit, tiles, bool(backward))

    def _resolution(self, resolution: int) -> int:
        """The processing resolution, checked against this model's patch grid (and its fixed table)."""
        resolution = int(resolution)
        if self.fixed_resolution is not None and resolution != self.fixed_resolution:
            side = self.fixed_resolution // self.unit * self.model.config.patch_size
            raise UsageError(f"--resolution {resolution}: this model's position table fixes it to "
                             f"{self.fixed_resolution} ({side}x{side} latents); drop --resolution")
        if resolution < self.unit or resolution % self.unit:
            raise UsageError(f"--resolution must be a positive multiple of {self.unit} for this model, got {resolution}")
        return resolution

    # -- prediction -------------------------------------------------------------------------------

    def predict(self, task: str, inputs: Sequence[TaskInput], settings: Settings | None = None, **kw) -> list:
        """Results in input order (see predict_iter)."""
        results = [None] * len(inputs)
        for i, res in self.predict_iter(task, inputs, settings, **kw):
            results[i] = res
        return results

    def check_input(self, task: str, item: TaskInput) -> None:
        """Validate one input at the edge; InputError names it and the fix."""
        img = item.image
        if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8):
            raise InputError(f"{item.name}: expected an (H, W, 3) uint8 RGB image, got {getattr(img, 'shape', type(img))}")
        if min(img.shape[:2]) < 1:
            raise InputError(f"{item.name}: the image is empty")
        T.get_task(task).check_input(item)  # the second input: frame 2, the visible mask...

    @torch.no_grad()
    def predict_iter(
        self,
        task: str,
        inputs: Sequence[TaskInput],
        settings: Settings | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Yield (input index, result) as each input finishes; inputs share batches of rows."""
        settings = settings or self.settings(task)
        spec = T.get_task(task)
        for item in inputs:  # 1. check inputs once, before any work
            self.check_input(task, item)
        if settings.fit == "tile" or settings.backward:  # each input is several predictions, combined
            yield from self._predict_parts(task, inputs, settings, on_step)
            return
        sample = self._sampler(settings, on_step)
        grid = (settings.resolution, settings.resolution)
        # Rows: (input, label, member); one input's rows are contiguous, so it finishes early.
        rows = [(i, li, k) for i in range(len(inputs)) for li in range(len(spec.labels)) for k in range(settings.ensemble)]
        per_input = len(spec.labels) * settings.ensemble
        decoded: dict[int, list[np.ndarray]] = {}
        cond_cache: dict[int, torch.Tensor] = {}
        for start in range(0, len(rows), settings.batch_size):
            chunk = rows[start : start + settings.batch_size]
            for i in dict.fromkeys(r[0] for r in chunk):  # 2-3. resize, normalise and encode each input once
                if i not in cond_cache:
                    cond_cache[i] = self._encode(task, inputs[i], grid, settings.fit)
            cond = torch.cat([cond_cache[i] for i, _, _ in chunk])  # (B, 2C, h, w)
            images = sample(cond, [k for _, _, k in chunk], [spec.labels[li] for _, li, _ in chunk])  # (B, 3, H, W)
            for (i, _, _), img in zip(chunk, images):
                decoded.setdefault(i, []).append(img)
                if len(decoded[i]) == per_input:  # 7-8. reduce at the grid, resize back
                    members = np.stack(decoded.pop(i)).reshape(len(spec.labels), settings.ensemble, *img.shape)
                    cond_cache.pop(i, None)
                    yield i, self._finish(task, members, inputs[i], settings)

    @staticmethod
    def parts(item: TaskInput, settings: Settings) -> int:
        """Predictions one input costs: 1, 2 with backward, 1 + its crops with fit=tile (for progress totals)."""
        if settings.fit == "tile":
            from percept_cli.tiling import plan_tiles

            return 1 + len(plan_tiles(*item.image.shape[:2], settings.tiles))
        return 2 if settings.backward else 1

    def _predict_parts(self, task: str, inputs: Sequence[TaskInput], settings: Settings,
                       on_step: Callable[[int], None] | None) -> Iterator[tuple[int, Any]]:
        """fit=tile and flow's --backward: each input becomes several inputs to predict (they share batches like
        any others), combined into one result when its last part is done.

        tile: part 0 is the whole image (letterboxed to the grid, as fit=pad: the layout), then the square
        crops of tiling.plan_tiles (square, so pad only resizes them); Task.merge_tiles blends them.
        backward: parts A -> B and B -> A (with the user's fit); Task.with_backward adds the occlusion.
        """
        from percept_cli.tiling import plan_tiles

        spec = T.get_task(task)
        parts: list[TaskInput] = []
        owner: list[tuple[int, Any]] = []  # per part: (input index, its tile box | None = layout | direction)
        for i, item in enumerate(inputs):
            if settings.fit == "tile":
                parts.append(item)
                owner.append((i, None))
                for box in plan_tiles(*item.image.shape[:2], settings.tiles):
                    y0, y1, x0, x1 = box
                    extra = None if item.extra is None else np.ascontiguousarray(item.extra[y0:y1, x0:x1])
                    parts.append(TaskInput(np.ascontiguousarray(item.image[y0:y1, x0:x1]), extra,
                                           f"{item.name} tile {box}"))
                    owner.append((i, box))
            else:  # backward: the frames swapped
                parts += [item, TaskInput(item.extra, item.image, f"{item.name} (backward)")]
                owner += [(i, "forward"), (i, "backward")]
        left = np.bincount([i for i, _ in owner], minlength=len(inputs))  # parts still to come, per input
        inner = replace(settings, fit="pad" if settings.fit == "tile" else settings.fit, backward=False)
        got: dict[int, dict[int, Any]] = {}
        for j, res in self.predict_iter(task, parts, inner, on_step):
            i = owner[j][0]
            got.setdefault(i, {})[j] = res
            left[i] -= 1
            if left[i]:
                continue
            done = [(owner[k][1], r) for k, r in sorted(got.pop(i).items())]  # in part order
            if settings.fit == "tile":  # the layout, then the crops in raster order
                result = spec.merge_tiles(done[0][1], done[1:], settings.resolution)
            else:
                result = spec.with_backward(done[0][1], done[1][1])
            yield i, result

    def _sampler(self, settings: Settings, on_step: Callable[[int], None] | None) -> Callable[..., np.ndarray]:
        """Steps 4-6 for one batch: sample(cond (B, 2C, h, w), member indices, labels) -> decoded (B, 3, H, W)."""
        scheduler = make_scheduler(self.scheduler_config, settings.schedule)
        if note := schedule_warning(scheduler, settings.steps):
            self.warn(note)
        ae, res = self.autoencoder, settings.resolution
        noise = initial_noise((ae.channels, res // ae.factor, res // ae.factor), settings.ensemble, settings.seed)  # (E, C, h, w) on the CPU
        autocast = None if self.dtype == torch.float32 else self.dtype

        def sample(cond: torch.Tensor, members: list[int], labels: list[int]) -> np.ndarray:
            z0 = noise[members].to(self.device)  # 4. members and labels ride in the batch dimension: (B, C, h, w)
            y = torch.tensor(labels, device=self.device)  # (B,)
            step_cb = (lambda s, out: on_step(len(members))) if on_step else None
            z = ddim_sample(self.denoiser, cond, z0, y, scheduler, settings.steps, autocast_dtype=autocast,
                            on_step=step_cb)  # 5. DDIM
            return ae.decode(z).cpu().numpy()  # 6. decode: (B, 3, H, W)

        return sample

    def _encode(self, task: str, item: TaskInput, grid: tuple[int, int], fit: str = "stretch") -> torch.Tensor:
        """(1, 2C, h, w): [rgb latent, prompt latent] at the processing grid."""
        image = _to_grid(item.image, grid, fit)
        extra = item.extra
        if extra is not None and extra.dtype == bool:  # a mask: nearest, so it stays binary
            extra = _to_grid(extra.astype(np.uint8), grid, fit, nearest=True).astype(bool)
        elif extra is not None:
            extra = _to_grid(extra, grid, fit)
        rgb = T.to_unit(image)
        prompt = T.get_task(task).prompt(image, extra)
        pair = torch.from_numpy(np.stack([rgb, prompt])).to(self.device)  # (2, 3, H, W)
        lat = self.autoencoder.encode(pair)  # (2, C, h, w)
        return lat.reshape(1, -1, *lat.shape[-2:])

    def _finish(self, task: str, members: np.ndarray, item: TaskInput, settings: Settings):
        """Members (L, E, 3, h, w) at the grid -> the task's result at the input's size."""
        spec, size, grid = T.get_task(task), item.image.shape[:2], members.shape[-2:]
        fit = settings.fit
        to_input = ToInput(lambda arr: _from_grid(arr, size, fit), _grid_scale(size, grid, fit), item.extra)
        return spec.finish(spec.decode(members, self.config), to_input, settings.reduction, self.config)
