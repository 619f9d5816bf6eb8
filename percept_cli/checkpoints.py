"""Load a model from any supported format: our own safetensors folder, or the official `.pt` layout."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from percept_cli.lock import read_json as _read_json  # a JSON object, or a ModelError naming the file

if TYPE_CHECKING:  # torch loads lazily: `percept --help` must not import it
    import torch


@dataclass
class ModelSource:
    """Where a model's files are on disk, once resolved (by hub.resolve_model) and verified."""

    name: str  # what the user asked for: a lock name, a folder, or hf://REPO@COMMIT/PATH
    layout: str  # "percept" (our ModelMixin folder) or "official" (the paper's .pt)
    root: Path | None = None  # our layout: folder with config.json + diffusion_pytorch_model.safetensors
    weights: Path | None = None  # official layout: the .pt state dict
    vae: Path | None = None  # diffusers AutoencoderKL folder; None = pixel space
    scheduler: Path | None = None  # folder holding scheduler_config.json
    config: dict[str, Any] = field(default_factory=dict)  # percept.json: what the weights cannot say


def source_from_folder(folder: str | Path, name: str, *, extra_config: dict[str, Any] | None = None) -> ModelSource:
    """A ModelSource for a folder in our layout or the official one; ModelError lists what is missing."""
    from percept_cli.errors import ModelError

    folder, missing = Path(folder).expanduser(), []
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist: check the path")
    has = lambda rel: (folder / rel).is_file()  # noqa: E731
    config = {**(extra_config or {}), **(_read_json(folder / "percept.json") if has("percept.json") else {})}
    vae = [] if has("vae/config.json") else ["vae/config.json"]
    vae += [] if any(folder.glob("vae/diffusion_pytorch_model.*")) else ["vae/diffusion_pytorch_model.safetensors"]
    sched = [] if has("scheduler/scheduler_config.json") else ["scheduler/scheduler_config.json"]
    pts = sorted(folder.glob("*.pt"))
    if config.get("layout") == "official" or (pts and not has("config.json")):
        if len(pts) != 1:
            missing.append("exactly one .pt state dict" + (f" (found {', '.join(p.name for p in pts)})" if pts else ""))
        missing += (vae if (folder / "vae").is_dir() else ["vae/ (config.json + diffusion_pytorch_model.safetensors)"])
        if config.get("layout") != "official" or not isinstance(config.get("num_heads"), int):
            missing.append('percept.json with {"layout": "official", "num_heads": N}')
        if missing + sched:
            raise ModelError(f"model folder {folder} (official layout) lacks {'; '.join(missing + sched)}: add them, "
                             "e.g. vae/ and scheduler/ from stabilityai/stable-diffusion-2")
        return ModelSource(name=name, layout="official", weights=pts[0], vae=folder / "vae",
                           scheduler=folder / "scheduler", config=config)
    missing = [x for x, ok in (("config.json", has("config.json")), ("percept.json", has("percept.json")),
                               ("*.safetensors weights", any(folder.glob("*.safetensors")))) if not ok]
    missing += sched + (vae if (folder / "vae").is_dir() else [])
    if missing:
        hint = "" if has("config.json") else " (or, for the official layout: one .pt + vae/ + scheduler/ + percept.json)"
        raise ModelError(f"model folder {folder} lacks {', '.join(missing)}: save it with percept's trainer{hint}")
    return ModelSource(name=name, layout="percept", root=folder, vae=folder / "vae" if (folder / "vae").is_dir()
                       else None, scheduler=folder / "scheduler", config=config)


OFFICIAL_DEFAULTS = dict(in_channels=4, learn_sigma=True, top_k=2, norm_topk_prob=False, mlp_ratio=4.0)
OFFICIAL_TASK_LABELS = (1000, 1001, 1002, 1003)  # conv_in_1..4 serve depth, amodal, flow-u, flow-v


def read_official_state_dict(path: Path) -> dict[str, "torch.Tensor"]:
    """Tensors of an official `.pt` (flat or {"ema": ...}); never a full unpickle."""
    import pickle

    import torch

    from percept_cli.errors import ModelError

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load checkpoint '{path}' safely (weights_only=True): {first}; "
            "re-download it or convert it to a plain state dict of tensors"
        ) from None
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        obj = obj["ema"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"checkpoint '{path}' is not a state dict of tensors (flat or under 'ema')")
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DDP wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def official_model_config(state: dict, extra: dict[str, Any]) -> dict[str, Any]:
    """PerceptDiT config for an official state dict; heads (and the rest) come from percept.json."""
    from percept_cli.errors import ModelError

    if "num_heads" not in extra:
        raise ModelError("official checkpoint config lacks 'num_heads': add it to percept.json (the weights cannot say it)")
    opts = {**OFFICIAL_DEFAULTS, **{k: v for k, v in extra.items() if k in OFFICIAL_DEFAULTS}}
    try:
        conv = state["x_embedder.proj.conv_in_1.weight"]  # (D, cond+in, p, p)
        tokens = state["pos_embed"].shape[1]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        experts = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("blocks.0.moe.experts."))
        labels = state["y_embedder.embedding_table.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelError(f"not an official-layout state dict (missing {exc}); check the file or its layout") from None
    patch = conv.shape[-1]
    if "patch_size" in extra and int(extra["patch_size"]) != patch:
        raise ModelError(f"percept.json says patch_size {extra['patch_size']} but the weights have {patch}")
    side = int(round(tokens**0.5))
    routed = tuple(extra.get("routed_labels", OFFICIAL_TASK_LABELS))
    return dict(
        sample_size=side, patch_size=patch, in_channels=opts["in_channels"],
        cond_channels=conv.shape[1] - opts["in_channels"], hidden_size=conv.shape[0], depth=depth,
        num_heads=int(extra["num_heads"]), mlp_ratio=opts["mlp_ratio"], num_experts=experts,
        top_k=opts["top_k"], norm_topk_prob=opts["norm_topk_prob"], num_labels=labels, label_offset=0,
        routed_labels=routed, learn_sigma=opts["learn_sigma"],
    )


def memory_available() -> int | None:
    """Bytes this machine can still give a new process without swapping (psutil, else /proc/meminfo); None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # not installed, or no answer on this platform
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(needed: int, what: str, dtype: "torch.dtype") -> None:
    """ModelError, before anything is read, when `needed` bytes of weights cannot fit in the available memory."""
    import torch

    from percept_cli.errors import ModelError

    available = memory_available()
    if available is None or needed <= available:
        return
    gb = lambda n: f"{n / 1e9:.1f} GB"  # noqa: E731
    hint = ("use --dtype bf16 (half the memory)" if dtype == torch.float32 else
            "it does not fit even with --dtype bf16: close other programs or use a machine with more memory")
    raise ModelError(f"{what} needs {gb(needed)} of memory for its weights in {str(dtype).replace('torch.', '')}, "
                     f"but only {gb(available)} is available: {hint}")


def _madvise_dontneed():
    """libc madvise(MADV_DONTNEED) where available (Linux), else None."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    page = os.sysconf("SC_PAGE_SIZE")

    def release(t: "torch.Tensor") -> None:
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        lo, hi = -(-start // page) * page, end // page * page  # whole pages inside the tensor only
        if hi > lo:
            fn(lo, hi - lo, 4)  # MADV_DONTNEED: the clean file pages leave this process; they stay on disk

    return release


def load_official(path: Path, extra: dict[str, Any], dtype: "torch.dtype | None" = None,
                  matmul_dtype: "torch.dtype | None" = None):
    """Build a PerceptDiT from an official `.pt`, with a strict key and shape check.

    dtype: every parameter's dtype (default fp32). matmul_dtype: the weights and biases of the Linear
    and Conv2d layers only (as `pipeline.cast_matmul_weights` stores them for autocast); overrides
    dtype there. Memory-lean: the file is memory-mapped (nothing is read up front), the model is
    built on the meta device, and each tensor is cast on its own and its file pages released at
    once, so two copies of the weights never coexist; a tensor already in its target dtype is used
    in place (file-backed). The memory needed is checked against what is available before any
    weight is read.
    """
    import torch

    from percept_cli.errors import ModelError
    from percept_cli.models.dit import PerceptDiT

    state = read_official_state_dict(Path(path))  # mmap'd: shapes and dtypes only, no weight read yet
    config = official_model_config(state, extra)
    with torch.device("meta"):
        model = PerceptDiT(**config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        def show(items):
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "") if items else "none"
        raise ModelError(
            f"checkpoint '{path}' does not match the official layout: missing keys: {show(missing)}; "
            f"unexpected keys: {show(unexpected)}; wrong shapes: {show(wrong)}"
        )
    dtype = dtype or torch.float32
    matmul = {f"{name}.{p}" for name, mod in model.named_modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))
              for p, _ in mod.named_parameters(recurse=False)} if matmul_dtype is not None else set()
    target = {k: matmul_dtype if k in matmul else dtype for k in expected}
    needed = sum(state[k].numel() * target[k].itemsize for k in expected)
    check_memory(needed, f"model '{path}'", matmul_dtype or dtype)
    release = _madvise_dontneed()
    loaded = {}
    for k in list(state):
        src = state.pop(k)
        loaded[k] = out = src.to(target[k])
        if release is not None and out.data_ptr() != src.data_ptr():
            release(src)  # a cast copy was made: drop the source's pages now, not at the end
        del src
    model.load_state_dict(loaded, strict=True, assign=True)
    model.pos_embed.requires_grad_(False)
    return model.eval()


# What the official generalist's percept.json would hold beyond num_heads (official-checkpoint.md 3).
OFFICIAL_PIPELINE = dict(
    layout="official", tasks=["depth", "flow", "amodal"], steps=50, depth_ensemble=3, flow_ensemble=3,
    amodal_ensemble=1, schedule="default", flow_scale=[75.0, 100.0], amodal_threshold=240.0, batch_size=8,
)


WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' ModelMixin weights file
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def load_pretrained(cls, folder: Path, what: str, dtype: "torch.dtype | None" = None):
    """`cls.from_pretrained(folder)` for a diffusers ModelMixin folder (config.json + safetensors), strictly.

    Safetensors only: a folder with pickled weights (`*.bin`) is refused, never unpickled. Every
    weight must match config.json in name and shape (diffusers would initialise missing ones at
    random, with a warning). diffusers' own log lines stay off stderr. Any failure is one
    ModelError naming `what`, the folder or file, and the fix.
    """
    from percept_cli.console import library_chatter_off
    from percept_cli.errors import ModelError, first_line

    folder = Path(folder)
    fix = "re-download the model or save the folder again"
    if not (folder / "config.json").is_file():
        raise ModelError(f"{what}: missing '{folder / 'config.json'}'; {fix}")
    if not (folder / WEIGHTS_NAME).is_file() and not (folder / f"{WEIGHTS_NAME}.index.json").is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ModelError(f"{what}: '{folder / pickled[0]}' holds pickled weights, which percept never loads; "
                             f"convert them to '{WEIGHTS_NAME}' (diffusers save_pretrained) or re-download the model")
        raise ModelError(f"{what}: missing '{folder / WEIGHTS_NAME}'; {fix}")
    try:
        with library_chatter_off():
            model, info = cls.from_pretrained(str(folder), torch_dtype=dtype, use_safetensors=True,
                                              ignore_mismatched_sizes=True, output_loading_info=True)
    except Exception as exc:  # diffusers on a user's files: whatever it raises, the folder is bad
        cause = f" ({first_line(exc.__cause__)})" if exc.__cause__ is not None else ""
        raise ModelError(f"cannot load {what} from '{folder}': {first_line(exc)}{cause}; {fix}") from None
    mismatch = weights_mismatch(info)
    if mismatch:
        raise ModelError(f"{what}: '{folder / 'config.json'}' does not match the weights ({mismatch}); "
                         f"fix config.json, {fix}")
    return model.eval()


def weights_mismatch(info: dict[str, list]) -> str:
    """'2 missing (first ...), 1 unexpected (first ...), 3 of another shape (first ...)' from diffusers'
    loading info; empty when the weights match."""
    missing, unexpected = sorted(info.get("missing_keys", [])), sorted(info.get("unexpected_keys", []))
    shapes = sorted(info.get("mismatched_keys", []))
    parts = [f"{len(missing)} missing (first {missing[0]})"] if missing else []
    parts += [f"{len(unexpected)} unexpected (first {unexpected[0]})"] if unexpected else []
    if shapes:
        key, stored, wanted = shapes[0]
        parts.append(f"{len(shapes)} of another shape (first {key}: {tuple(stored)} in the weights, "
                     f"{tuple(wanted)} by the config)")
    return ", ".join(parts)


def load_source(source: ModelSource, dtype: "torch.dtype | None" = None, matmul_dtype: "torch.dtype | None" = None):
    """(model, autoencoder, scheduler_config, pipeline_config) for a resolved source.

    matmul_dtype: store Linear/Conv2d weights in it while loading the official layout (see load_official),
    so that a bf16 run never holds the fp32 weights."""
    from percept_cli.autoencoder import VAE, PixelSpace
    from percept_cli.errors import ModelError
    from percept_cli.schedules import SD2_SCHEDULER, check_scheduler_config

    # the small parts first (scheduler, VAE): a broken one fails before gigabytes of weights load
    sched_dir = source.scheduler or (source.root / "scheduler" if source.root else None)
    sched_file = sched_dir / "scheduler_config.json" if sched_dir else None
    sched = check_scheduler_config(_read_json(sched_file), str(sched_file)) if sched_file else dict(SD2_SCHEDULER)
    if source.layout == "official":
        if source.weights is None or source.vae is None:
            raise ModelError(f"model '{source.name}': the official layout needs a .pt file and a vae/ folder")
        config = {**OFFICIAL_PIPELINE, **source.config, "layout": "official"}
        autoencoder = VAE.from_folder(source.vae)
        model = load_official(source.weights, config, dtype, matmul_dtype=matmul_dtype)
        return model, _check_latents(model, autoencoder, source.vae), sched, config
    if source.layout != "percept" or source.root is None:
        raise ModelError(f"model '{source.name}': unknown layout {source.layout!r}")
    from percept_cli.models.dit import PerceptDiT

    config = {**_read_json(source.root / "percept.json"), **source.config, "layout": "percept"}
    vae_dir = source.vae or (source.root / "vae" if (source.root / "vae").is_dir() else None)
    autoencoder = VAE.from_folder(vae_dir) if vae_dir else PixelSpace()
    model = load_pretrained(PerceptDiT, source.root, f"model '{source.name}'", dtype)
    return model, _check_latents(model, autoencoder, vae_dir), sched, config


def _check_latents(model, autoencoder, vae_dir: Path | None):
    """The autoencoder, unless its latents do not fit the model's input channels (ModelError)."""
    from percept_cli.errors import ModelError

    wanted = int(model.config.in_channels)
    if autoencoder.channels != wanted:
        made = f"the VAE in '{vae_dir}' makes" if vae_dir else "without a vae/ folder the model sees"
        raise ModelError(f"{made} {autoencoder.channels}-channel inputs, but the model expects {wanted} "
                         "(in_channels in its config.json); use the VAE the model was trained with")
    return autoencoder


def save_percept(folder: Path, model, scheduler_config: dict[str, Any], config: dict[str, Any], dtype=None) -> Path:
    """Write our layout: config.json + safetensors (ModelMixin), scheduler/, percept.json."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        import copy

        import torch

        # nn.Module.to: ModelMixin.to warns about fp32-kept modules, which this model has none of
        model = torch.nn.Module.to(copy.deepcopy(model), dtype)
    model.save_pretrained(str(folder), safe_serialization=True)
    # diffusers records where the model was loaded from (a path on the machine that trained it)
    cfg_path = folder / "config.json"
    cfg_path.write_text(json.dumps({k: v for k, v in json.loads(cfg_path.read_text()).items() if k != "_name_or_path"},
                                   indent=2, sort_keys=True) + "\n")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2) + "\n")
    (folder / "percept.json").write_text(json.dumps({**config, "layout": "percept"}, indent=2) + "\n")
    return folder


def export_percept(src: Path, dst: Path, dtype: str = "fp16") -> Path:
    """Copy a model folder of our layout with its weights cast (fp16 halves the size; loads back as fp32)."""
    import shutil

    from percept_cli.dtypes import check_dtype, torch_dtype
    from percept_cli.errors import OutputError
    from percept_cli.models.dit import PerceptDiT

    check_dtype(dtype, ("fp16", "bf16", "fp32"))  # a storage dtype: no auto
    src, dst = Path(src), Path(dst)
    model = load_pretrained(PerceptDiT, src, f"model '{src}'")
    config = _read_json(src / "percept.json")
    sched = _read_json(src / "scheduler" / "scheduler_config.json")
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_percept(tmp, model, sched, config, dtype=torch_dtype(dtype))
        if (src / "vae").is_dir():
            shutil.copytree(src / "vae", tmp / "vae")
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write '{dst}': {exc.strerror or exc}; choose a writable folder") from None
    return dst
