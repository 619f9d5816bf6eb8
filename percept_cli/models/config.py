"""Saving and loading a model as a diffusers-layout folder (config.json + safetensors) without importing diffusers.

Our folders keep diffusers' ModelMixin layout, so `diffusers` tools read them, but the predict path
loads them with this small mixin: importing diffusers costs more start-up than torch itself (it
imports torch._dynamo), and a one-image `percept depth` should not pay for it. Only what percept
uses of ModelMixin/ConfigMixin is here: a frozen `config` (attribute and item access), from_config,
save_pretrained and a strict from_pretrained that reports mismatched weights as diffusers does.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.30.0"  # written for diffusers' loaders; percept reads no underscore key


class FrozenConfig(dict):
    """A read-only dict whose keys are also attributes (diffusers' FrozenDict)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def _frozen(self, *a, **k):
        raise TypeError("a model's config is read-only: build a new model from a changed copy")

    __setitem__ = __delitem__ = update = pop = setdefault = _frozen  # type: ignore[assignment]

    def __reduce__(self):  # copy, deepcopy and pickle rebuild it whole, not key by key
        return (FrozenConfig, (dict(self),))


class ConfigModule(torch.nn.Module):
    """nn.Module whose constructor arguments are its config; subclasses call `self.register_config(locals())`."""

    config: FrozenConfig

    def register_config(self, args: dict[str, Any]) -> None:
        """Record the constructor's arguments (defaults filled in) as the frozen config."""
        params = inspect.signature(type(self).__init__).parameters
        cfg = {name: args[name] for name in params if name not in ("self", "kwargs") and name in args}
        object.__setattr__(self, "config", FrozenConfig(cfg))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """A new model with random weights from a config (keys starting with '_' are file metadata)."""
        accepted = inspect.signature(cls.__init__).parameters
        return cls(**{k: v for k, v in config.items() if not k.startswith("_") and k in accepted})

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """Write config.json and the safetensors weights (diffusers' layout; tensors made contiguous)."""
        from safetensors.torch import save_file

        assert safe_serialization, "percept writes safetensors only"
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_VERSION}
        (folder / CONFIG_NAME).write_text(json.dumps({**meta, **self.config}, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None, output_loading_info: bool = False,
                        **_: Any):
        """Load a folder strictly: with output_loading_info, (model, info) where info lists missing,
        unexpected and mismatched keys as diffusers reports them, and mismatched weights stay unloaded."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"{folder / CONFIG_NAME} is not a JSON object")
        with torch.device("meta"):  # no random init of the weights loaded next
            model = cls.from_config(config)
        dtype = torch_dtype or torch.float32  # as ModelMixin: fp32 unless asked, whatever the file stores
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(folder / WEIGHTS_NAME)).items()}
        own = model.state_dict()
        mismatched = [(k, v.shape, own[k].shape) for k, v in state.items() if k in own and v.shape != own[k].shape]
        for k, *_ in mismatched:
            state.pop(k)
        result = model.load_state_dict(state, strict=False, assign=True)
        info = {"missing_keys": list(result.missing_keys), "unexpected_keys": list(result.unexpected_keys),
                "mismatched_keys": mismatched}
        if info["missing_keys"] or mismatched:
            model = model.to_empty(device="cpu")  # left-over meta tensors cannot run; the caller reports the mismatch
        model.eval()
        return (model, info) if output_loading_info else model
