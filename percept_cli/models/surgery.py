"""Model surgery: pretrained generators -> perception models, dense -> MoE, foreign DiT layouts -> ours.

Every step is a key-level map from one state dict to another, checked against the target model's own
state dict (same keys, same shapes) before anything is loaded; a mismatch is a ModelError listing the
keys. The input model is never modified: every output tensor is a fresh copy.

  upcycle                     dense MLP -> E identical experts + a new router (exact at step 0)
  widen_conv_in               C-channel patch conv -> slots*C channels, weights / slots (Marigold)
  labels_from_table           pretrained label table -> task rows (+ a null row)
  perception_from_generative  the last two together: a generator ready for `percept train --init`
  convert_meta_dit            facebookresearch/DiT `.pt` -> PerceptDiT
  convert_diffusers_dit       diffusers DiTTransformer2DModel -> PerceptDiT
  load_pretrained_dit         any of the above layouts from disk, detected
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from percept_cli.errors import ModelError, OutputError
from percept_cli.models.correlation import MotionEncoder
from percept_cli.models.dit import DIT_SIZES, PerceptDiT, sincos_pos_embed

TASK_LABELS = (1000, 1001, 1002, 1003)  # depth, amodal, flow-u, flow-v (the official ids)

# facebookresearch/DiT trains with a linear beta schedule and epsilon prediction (plus learned sigma).
META_DIT_SCHEDULER = dict(
    num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=0,
    timestep_spacing="leading",
)


# -- shared helpers ------------------------------------------------------------------------------


def model_config(model: PerceptDiT) -> dict[str, Any]:
    """The constructor arguments of `model` (diffusers' private `_` keys dropped)."""
    cfg = {k: v for k, v in model.config.items() if not k.startswith("_")}
    cfg["routed_labels"] = tuple(cfg.get("routed_labels", ()))
    return cfg


def _show(items: list[str], limit: int = 8) -> str:
    if not items:
        return "none"
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def check_state(config: dict[str, Any], state: dict[str, torch.Tensor], what: str) -> None:
    """ModelError unless `state` has exactly the keys and shapes of PerceptDiT(**config)."""
    with torch.device("meta"):
        expected = PerceptDiT(**config).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise ModelError(
            f"{what} does not fit a PerceptDiT (hidden {config.get('hidden_size')}, depth {config.get('depth')}): "
            f"missing keys: {_show(missing)}; unexpected keys: {_show(unexpected)}; wrong shapes: {_show(wrong)}"
        )


def build(config: dict[str, Any], state: dict[str, torch.Tensor], what: str) -> PerceptDiT:
    """PerceptDiT(**config) holding exactly `state` (strict keys and shapes), in eval mode."""
    check_state(config, state, what)
    with torch.device("meta"):
        model = PerceptDiT(**config)
    model.load_state_dict(state, strict=True, assign=True)
    model.pos_embed.requires_grad_(False)
    return model.eval()


def _fresh_state(model: PerceptDiT) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _depth(keys, prefix: str = "blocks.") -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)}
    if ids != set(range(len(ids))):
        raise ModelError(f"block indices under '{prefix}' are not 0..n-1: {sorted(ids)}")
    return len(ids)


# -- 1. dense -> mixture of experts --------------------------------------------------------------


def upcycle(model: PerceptDiT, num_experts: int, top_k: int = 2, norm_topk_prob: bool = True,
            router_std: float = 0.0, seed: int = 0, rescale_experts: bool = False) -> PerceptDiT:
    """Sparse upcycling: every expert starts as a copy of its block's dense MLP.

    With identical experts a block's MoE output is (sum of the k routed weights) * MLP(h):
      norm_topk_prob=True   the weights sum to 1, so the model equals the dense one exactly at step 0
                            for any router init (router_std 0 = zeros, else normal(0, router_std));
      norm_topk_prob=False  (the official layout) the sum is s(h) = sum of the top-k softmax probs,
                            so each MLP branch is scaled by s(h); with router_std=0 that is exactly k/E.
    rescale_experts=True multiplies each expert's fc2 by E/k, which makes the non-renormalised layout
    with router_std=0 equal the dense model at step 0 (a no-op for norm_topk_prob=True).
    """
    cfg = model_config(model)
    if cfg["num_experts"]:
        raise ModelError(f"model already has {cfg['num_experts']} experts per block: upcycle needs a dense model")
    if num_experts < 1:
        raise ModelError(f"--experts must be >= 1, got {num_experts}")
    if not 1 <= top_k <= num_experts:
        raise ModelError(f"--top-k must be in 1..{num_experts} (the number of experts), got {top_k}")
    if router_std < 0:
        raise ModelError(f"router_std must be >= 0, got {router_std}")
    new_cfg = dict(cfg, num_experts=num_experts, top_k=top_k, norm_topk_prob=norm_topk_prob)
    dense = _fresh_state(model)
    scale = num_experts / top_k if rescale_experts and not norm_topk_prob else 1.0
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    used = set()
    mlp_key = re.compile(r"^(blocks\.\d+)\.mlp\.(fc[12])\.(weight|bias)$")
    for key, value in dense.items():
        m = mlp_key.match(key)
        if not m:
            out[key] = value
            used.add(key)
            continue
        block, fc, kind = m.groups()
        for e in range(num_experts):
            out[f"{block}.moe.experts.{e}.{fc}.{kind}"] = value.clone() * (scale if fc == "fc2" else 1.0)
        used.add(key)
        if fc == "fc1" and kind == "weight":  # one router per block: (E, D), no bias
            gate = torch.zeros(num_experts, value.shape[1], dtype=torch.float32)
            if router_std > 0:
                gate.normal_(0.0, router_std, generator=gen)
            out[f"{block}.moe.gate.weight"] = gate.to(device=value.device, dtype=value.dtype)
    assert used == set(dense), f"keys not carried over: {sorted(set(dense) - used)}"
    return build(new_cfg, out, "upcycled state dict")


# -- 2. widen the patch conv for condition slots -------------------------------------------------


def widen_conv_in(model: PerceptDiT, slots: int, routed_labels: tuple[int, ...] = (),
                  scale: float | None = None) -> PerceptDiT:
    """Input conv over C channels -> over slots*C channels ([cond slots..., noisy target]).

    Each slot gets the pretrained kernel times `scale` (default 1/slots, Marigold's trick; the
    official code used 0.33 for 3 slots), so a stack of identical slots gives the original tokens.
    With routed_labels, one such conv per label (the official conv_in_1..n, in label order).
    """
    cfg = model_config(model)
    if cfg["cond_channels"]:
        raise ModelError(
            f"model already takes {cfg['cond_channels']} condition channels: widen_conv_in needs a generative "
            "model (cond_channels=0)")
    if cfg["routed_labels"]:
        raise ModelError("model's input conv is already routed per label: widen a model with one shared conv")
    if slots < 1:
        raise ModelError(f"slots must be >= 1 (condition images + the noisy target), got {slots}")
    routed = tuple(int(v) for v in routed_labels)
    if len(set(routed)) != len(routed):
        raise ModelError(f"routed_labels must be distinct, got {routed}")
    scale = 1.0 / slots if scale is None else float(scale)
    state = _fresh_state(model)
    weight, bias = state.pop("x_embedder.proj.weight"), state.pop("x_embedder.proj.bias")  # (D, C, p, p), (D,)
    d, c, p, _ = weight.shape
    assert c == cfg["in_channels"], f"conv takes {c} channels, config says in_channels={cfg['in_channels']}"
    wide = torch.cat([weight] * slots, dim=1) * scale  # (D, slots*C, p, p)
    assert wide.shape == (d, slots * c, p, p)
    if routed:
        for i in range(len(routed)):
            state[f"x_embedder.proj.conv_in_{i + 1}.weight"] = wide.clone()
            state[f"x_embedder.proj.conv_in_{i + 1}.bias"] = bias.clone()
    else:
        state["x_embedder.proj.weight"], state["x_embedder.proj.bias"] = wide, bias
    new_cfg = dict(cfg, cond_channels=(slots - 1) * c, routed_labels=routed)
    return build(new_cfg, state, "widened state dict")


def add_motion(model: PerceptDiT, channels: int = 16, radius: int = 2, levels: int = 3, seed: int = 0) -> PerceptDiT:
    """Give a perception model the motion encoder (models/correlation.py) for its flow labels.

    The input conv gets `channels` more input channels with zero weights, so the result predicts
    exactly what `model` did until training moves them; the encoder's 1x1 head starts random.
    """
    cfg = model_config(model)
    if cfg.get("motion_channels", 0):
        raise ModelError(f"model already has a motion encoder ({cfg['motion_channels']} channels)")
    if cfg["cond_channels"] < 2 or cfg["cond_channels"] % 2:
        raise ModelError(f"the motion encoder needs two condition frames; model has {cfg['cond_channels']} condition channels")
    if channels < 1:
        raise ModelError(f"motion channels must be >= 1, got {channels}")
    new_cfg = dict(cfg, motion_channels=channels, motion_radius=radius, motion_levels=levels)
    state = _fresh_state(model)
    for key in [k for k in state if k.startswith("x_embedder.proj") and k.endswith("weight")]:
        weight = state[key]  # (D, C, p, p)
        state[key] = torch.cat([weight, weight.new_zeros((weight.shape[0], channels) + weight.shape[2:])], 1)
    torch.manual_seed(seed)
    head = MotionEncoder(channels, radius, levels).head  # default conv init; no whole model built for it
    state.update({f"motion.head.{k}": v.to(model.dtype) for k, v in head.state_dict().items()})
    return build(new_cfg, state, "state dict with a motion encoder")


# -- 3. task rows of the label table -------------------------------------------------------------


def labels_from_table(model: PerceptDiT, task_labels: tuple[int, ...] = TASK_LABELS,
                      source_rows: tuple[int, ...] | None = None, null_row: int | None = None,
                      keep_table: bool = False) -> PerceptDiT:
    """Task embeddings initialised from the pretrained label table.

    Choice (default): every task row and the new null row start as a copy of the pretrained *null*
    row (the unconditional / CFG embedding, `null_row`, default the table's last row as in DiT), so
    at step 0 each task is the unconditional generator with no ImageNet class bias; tasks separate
    through training (and through per-task input convs when routed). `source_rows` picks another
    pretrained row per task instead (e.g. class rows), one row index per task label.

    Result: labels task_labels[0]..task_labels[-1] (consecutive) plus null = task_labels[-1] + 1.
      keep_table=False  a compact table, label_offset = task_labels[0], num_labels = len(tasks) + 1
                        (1000..1004 -> 5 rows: depth, amodal, flow-u, flow-v, null)
      keep_table=True   the pretrained rows stay (e.g. the 1000 ImageNet classes, offset 0) and the
                        table grows to cover the null label (the official [1005, D] table)
    """
    cfg = model_config(model)
    tasks = tuple(int(v) for v in task_labels)
    if not tasks or tasks != tuple(range(tasks[0], tasks[0] + len(tasks))):
        raise ModelError(f"task_labels must be consecutive integers (row = label - offset), got {tasks}")
    state = _fresh_state(model)
    table = state.pop("y_embedder.embedding_table.weight")  # (rows, D)
    rows, d = table.shape
    null_src = rows - 1 if null_row is None else int(null_row)
    sources = (null_src,) * len(tasks) if source_rows is None else tuple(int(r) for r in source_rows)
    if len(sources) != len(tasks):
        raise ModelError(f"source_rows needs one row per task label ({len(tasks)}), got {len(sources)}")
    bad = [r for r in sources + (null_src,) if not 0 <= r < rows]
    if bad:
        raise ModelError(f"source/null rows {bad} are outside the pretrained table's {rows} rows (0..{rows - 1})")
    null_label = tasks[-1] + 1
    if keep_table:
        offset = cfg["label_offset"]
        if tasks[0] < offset:
            raise ModelError(f"task label {tasks[0]} is below the table's label_offset {offset}")
        new_rows = max(rows, null_label - offset + 1)
        new = torch.zeros(new_rows, d, dtype=table.dtype)
        new[:rows] = table
    else:
        offset, new_rows = tasks[0], len(tasks) + 1
        new = torch.zeros(new_rows, d, dtype=table.dtype)
    for label, src in zip(tasks, sources):
        new[label - offset] = table[src]
    new[null_label - offset] = table[null_src]
    assert new.shape == (new_rows, d)
    state["y_embedder.embedding_table.weight"] = new
    new_cfg = dict(cfg, num_labels=new_rows, label_offset=offset)
    return build(new_cfg, state, "label-table state dict")


# -- 4. generative pre-training -> perception fine-tuning ----------------------------------------


def perception_from_generative(source: str | Path | PerceptDiT, slots: int = 3,
                               task_labels: tuple[int, ...] = TASK_LABELS, routed: bool = False,
                               conv_scale: float | None = None, source_rows: tuple[int, ...] | None = None,
                               null_row: int | None = None, keep_table: bool = False,
                               num_heads: int | None = None) -> PerceptDiT:
    """A generator (cond_channels=0; a folder, `.pt` or model) -> a perception model to fine-tune.

    1. load (any layout load_pretrained_dit knows), 2. widen_conv_in to `slots` stacked images
    ([rgb, prompt, noisy target] for slots=3), routed per task label if asked, 3. labels_from_table.
    Save the result with save_surgery (or model.save_pretrained) and train with TrainConfig(init=FOLDER).
    The official generalist's recipe: routed=True, conv_scale=0.33, keep_table=True.
    """
    model = source if isinstance(source, PerceptDiT) else load_pretrained_dit(source, num_heads=num_heads)
    model = widen_conv_in(model, slots, routed_labels=tuple(task_labels) if routed else (), scale=conv_scale)
    return labels_from_table(model, task_labels, source_rows=source_rows, null_row=null_row, keep_table=keep_table)


# -- 5. foreign DiT layouts ----------------------------------------------------------------------


def _heads_for(hidden: int, num_heads: int | None) -> int:
    if num_heads is None:
        by_width = {w: h for _, w, h in DIT_SIZES.values()}  # DiT-S/B/L/XL: 384/6, 768/12, 1024/16, 1152/16
        if hidden not in by_width:
            raise ModelError(f"cannot tell the number of heads of a {hidden}-wide DiT: pass num_heads")
        num_heads = by_width[hidden]
    if num_heads < 1 or hidden % num_heads:
        raise ModelError(f"num_heads={num_heads} does not divide the hidden size {hidden}")
    return num_heads


def _out_channels(out_dim: int, patch: int, in_ch: int, what: str) -> bool:
    """learn_sigma from the final linear's width p*p*C_out."""
    if out_dim == patch * patch * in_ch * 2:
        return True
    if out_dim == patch * patch * in_ch:
        return False
    raise ModelError(f"{what}: output width {out_dim} is neither {patch}x{patch}x{in_ch} nor twice that")


def convert_meta_dit(state: dict[str, torch.Tensor], num_heads: int | None = None) -> tuple[dict, dict]:
    """facebookresearch/DiT state dict (DiT-XL-2-256x256.pt) -> (PerceptDiT config, state dict).

    The key names are ours already, so the map is the identity; the config is read off the shapes,
    except the heads, which the file cannot say (default by width: XL 1152 -> 16).
    """
    need = ["x_embedder.proj.weight", "pos_embed", "y_embedder.embedding_table.weight",
            "final_layer.linear.weight", "blocks.0.mlp.fc1.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        hint = " (a mixture-of-experts or routed model: this is not a Meta DiT)" if any(".moe." in k or "conv_in_" in k for k in state) else ""
        raise ModelError(f"not a Meta DiT state dict: missing {_show(missing)}{hint}")
    conv = state["x_embedder.proj.weight"]  # (D, C, p, p)
    hidden, in_ch, patch = conv.shape[0], conv.shape[1], conv.shape[-1]
    tokens = state["pos_embed"].shape[1]
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise ModelError(f"pos_embed has {tokens} tokens, not a square grid")
    config = dict(
        sample_size=side, patch_size=patch, in_channels=in_ch, cond_channels=0, hidden_size=hidden,
        depth=_depth(state), num_heads=_heads_for(hidden, num_heads),
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / hidden, num_experts=0, top_k=2, norm_topk_prob=True,
        num_labels=state["y_embedder.embedding_table.weight"].shape[0], label_offset=0, routed_labels=(),
        learn_sigma=_out_channels(state["final_layer.linear.weight"].shape[0], patch, in_ch, "Meta DiT"),
    )
    out = dict(state)  # identity map
    check_state(config, out, "Meta DiT state dict")
    return config, out


DIFFUSERS_DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


def convert_diffusers_dit(state: dict[str, torch.Tensor], config: dict[str, Any]) -> tuple[dict, dict]:
    """diffusers DiTTransformer2DModel (facebook/DiT-XL-2-256 transformer/) -> (config, state dict).

    Every diffusers block holds a copy of the timestep and class embedders; the copies must be equal
    (they are in the converted Meta checkpoints) and block 0's become ours. q, k, v are concatenated
    into qkv (rows [q | k | v], heads contiguous, as DiT's reshape (N, T, 3, H, d) expects);
    proj_out_1 chunks (shift, scale) and proj_out_2's output is ordered (p, q, C), both as in DiT.
    Runtime differences of diffusers' forward (not of the weights), checked in tests/test_surgery.py:
    its timestep sinusoid divides by half-1 instead of half (downscale_freq_shift=1) and its MLP-branch
    LayerNorm uses norm_eps (1e-5 by default) where DiT uses 1e-6; the converted model is Meta's DiT.
    """
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero" or not config.get("num_embeds_ada_norm"):
        raise ModelError("diffusers model is not a class-conditional DiT (norm_type ada_norm_zero + num_embeds_ada_norm)")
    for key, want in (("activation_fn", "gelu-approximate"), ("attention_bias", True), ("norm_elementwise_affine", False)):
        if config.get(key, want) != want:
            raise ModelError(f"diffusers DiT with {key}={config[key]!r} is not supported (needs {want!r})")
    heads, head_dim = int(config.get("num_attention_heads", 16)), int(config.get("attention_head_dim", 72))
    hidden, patch = heads * head_dim, int(config.get("patch_size", 2))
    in_ch = int(config.get("in_channels", 4))
    out_ch = int(config.get("out_channels") or in_ch)
    depth = _depth(state, "transformer_blocks.")
    if depth != int(config.get("num_layers", depth)):
        raise ModelError(f"config says num_layers={config['num_layers']} but the weights have {depth} blocks")
    sample = int(config.get("sample_size", 32))
    grid = sample // patch
    emb = "transformer_blocks.{i}.norm1.emb."
    shared = ["timestep_embedder.linear_1.weight", "timestep_embedder.linear_1.bias",
              "timestep_embedder.linear_2.weight", "timestep_embedder.linear_2.bias",
              "class_embedder.embedding_table.weight"]
    src = dict(state)
    for name in shared:
        first = src.get(emb.format(i=0) + name)
        if first is None:
            raise ModelError(f"diffusers DiT state dict lacks {emb.format(i=0) + name}")
        for i in range(1, depth):
            other = src.pop(emb.format(i=i) + name, None)
            if other is None or other.shape != first.shape or not torch.equal(other, first):
                raise ModelError(f"block {i}'s {name} differs from block 0's: PerceptDiT shares one embedder, "
                                 "so only models whose per-block embedder copies are equal can be converted")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(new: str, old: str) -> None:
        if old not in src:
            raise ModelError(f"diffusers DiT state dict lacks {old}")
        out[new] = src[old]
        used.add(old)

    for kind in ("weight", "bias"):
        take(f"x_embedder.proj.{kind}", f"pos_embed.proj.{kind}")
        take(f"t_embedder.mlp.0.{kind}", emb.format(i=0) + f"timestep_embedder.linear_1.{kind}")
        take(f"t_embedder.mlp.2.{kind}", emb.format(i=0) + f"timestep_embedder.linear_2.{kind}")
        take(f"final_layer.adaLN_modulation.1.{kind}", f"proj_out_1.{kind}")  # (2D, D): [shift | scale]
        take(f"final_layer.linear.{kind}", f"proj_out_2.{kind}")  # (p*p*C, D): (p, q, C) order
    take("y_embedder.embedding_table.weight", emb.format(i=0) + "class_embedder.embedding_table.weight")
    for i in range(depth):
        b, blk = f"blocks.{i}.", f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            parts = [blk + f"attn1.to_{n}.{kind}" for n in "qkv"]
            missing = [k for k in parts if k not in src]
            if missing:
                raise ModelError(f"diffusers DiT state dict lacks {_show(missing)}")
            qkv = torch.cat([src[k] for k in parts], dim=0)  # (3D, D) or (3D,)
            assert qkv.shape[0] == 3 * hidden, f"{b}attn.qkv.{kind}: {tuple(qkv.shape)}"
            out[b + f"attn.qkv.{kind}"] = qkv
            used.update(parts)
            take(b + f"attn.proj.{kind}", blk + f"attn1.to_out.0.{kind}")
            take(b + f"mlp.fc1.{kind}", blk + f"ff.net.0.proj.{kind}")
            take(b + f"mlp.fc2.{kind}", blk + f"ff.net.2.{kind}")
            take(b + f"adaLN_modulation.1.{kind}", blk + f"norm1.linear.{kind}")  # (6D, D): DiT's chunk order
    table = torch.from_numpy(sincos_pos_embed(hidden, grid, grid))[None]  # (1, T, D): diffusers does not save it
    if "pos_embed.pos_embed" in src:
        used.add("pos_embed.pos_embed")
        if src["pos_embed.pos_embed"].shape != table.shape or not torch.allclose(src["pos_embed.pos_embed"].float(), table, atol=1e-5):
            raise ModelError("the stored pos_embed.pos_embed is not DiT's sin-cos table for this grid")
    out["pos_embed"] = table.to(out["x_embedder.proj.weight"].dtype)
    leftover = sorted(set(src) - used)
    if leftover:
        raise ModelError(f"diffusers DiT state dict has keys with no PerceptDiT counterpart: {_show(leftover)}")
    new_cfg = dict(
        sample_size=grid, patch_size=patch, in_channels=in_ch, cond_channels=0, hidden_size=hidden, depth=depth,
        num_heads=heads, mlp_ratio=out["blocks.0.mlp.fc1.weight"].shape[0] / hidden, num_experts=0, top_k=2,
        norm_topk_prob=True, num_labels=out["y_embedder.embedding_table.weight"].shape[0], label_offset=0,
        routed_labels=(), learn_sigma=_out_channels(out["final_layer.linear.weight"].shape[0], patch, in_ch, "diffusers DiT"),
    )
    if new_cfg["learn_sigma"] != (out_ch == 2 * in_ch):
        raise ModelError(f"config's out_channels={out_ch} disagrees with the final layer's width")
    check_state(new_cfg, out, "converted diffusers DiT state dict")
    return new_cfg, out


def _read_diffusers_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = folder / "diffusion_pytorch_model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(folder / shard)))
        return state
    legacy = folder / "diffusion_pytorch_model.bin"
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise ModelError(f"no diffusion_pytorch_model.safetensors (or .bin) in '{folder}'")


def detect_layout(path: str | Path) -> tuple[str, Path]:
    """('meta' | 'official' | 'diffusers' | 'percept', the file or folder to read)."""
    path = Path(path)
    if path.is_file():
        return "meta", path  # refined to 'official' once the keys are read
    if not path.is_dir():
        raise ModelError(f"'{path}' does not exist: pass a DiT .pt file or a model folder")
    if not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        path = path / "transformer"  # a diffusers pipeline folder (facebook/DiT-XL-2-256)
    if not (path / "config.json").is_file():
        raise ModelError(f"'{path}' has no config.json: not a diffusers or percept model folder")
    name = json.loads((path / "config.json").read_text()).get("_class_name")
    if name in DIFFUSERS_DIT_CLASSES:
        return "diffusers", path
    if name == PerceptDiT.__name__:
        return "percept", path
    raise ModelError(f"'{path}/config.json' describes a {name!r}, not a DiT this tool converts")


def load_pretrained_dit(path_or_folder: str | Path, num_heads: int | None = None,
                        dtype: torch.dtype = torch.float32) -> PerceptDiT:
    """A PerceptDiT from a Meta `.pt`, a diffusers DiT folder, or our own folder (layout detected)."""
    from percept_cli.checkpoints import load_official, read_official_state_dict

    layout, path = detect_layout(path_or_folder)
    if layout == "percept":
        return PerceptDiT.from_pretrained(str(path), torch_dtype=dtype).eval()
    if layout == "diffusers":
        config = json.loads((path / "config.json").read_text())
        cfg, state = convert_diffusers_dit(_read_diffusers_weights(path), config)
    else:
        state = read_official_state_dict(path)
        if "x_embedder.proj.conv_in_1.weight" in state:  # the paper's released perception model
            return load_official(path, {"num_heads": num_heads or 16}, dtype)
        cfg, state = convert_meta_dit(state, num_heads)
    return build(cfg, {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, f"'{path}'")


# -- saving --------------------------------------------------------------------------------------


def save_surgery(model: PerceptDiT, out: str | Path, source: str | Path | None = None,
                 pipeline: dict[str, Any] | None = None) -> Path:
    """Write `model` as our layout (config.json + safetensors, scheduler/, percept.json) to a new folder.

    The scheduler and percept.json come from `source` when it is our folder or a diffusers pipeline
    (its scheduler/); a Meta `.pt` gets DiT's linear/epsilon schedule. `pipeline` entries override.
    """
    from percept_cli.checkpoints import save_percept
    from percept_cli.schedules import SD2_SCHEDULER

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"'{out}' already exists and is not empty: choose a new output folder")
    sched, info = dict(SD2_SCHEDULER), {}
    if source is not None:
        layout, path = detect_layout(source)
        if layout == "meta":
            sched = dict(META_DIT_SCHEDULER)
        for folder in (path, path.parent):
            if folder.is_dir() and (folder / "scheduler" / "scheduler_config.json").is_file():
                sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
                break
        if layout == "percept" and (path / "percept.json").is_file():
            info = json.loads((path / "percept.json").read_text())
        info["derived_from"] = str(source)
    info.setdefault("tasks", ["depth", "flow", "amodal"] if model.config.cond_channels else [])
    return save_percept(out, model, sched, {**info, **(pipeline or {})})


__all__ = [
    "TASK_LABELS", "META_DIT_SCHEDULER", "upcycle", "widen_conv_in", "labels_from_table",
    "perception_from_generative", "convert_meta_dit", "convert_diffusers_dit", "load_pretrained_dit",
    "detect_layout", "save_surgery", "check_state", "build", "model_config",
]
