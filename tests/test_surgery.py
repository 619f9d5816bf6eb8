"""Model surgery: upcycling, conv widening, label tables, generative -> perception, foreign DiT layouts.

All models are tiny (2 blocks, width 32-128) with random non-zero weights, so every equality below
exercises attention, adaLN, the MLP / experts and the output layer. Tolerances: 1e-6 where the two
sides differ only in summation order, 1e-5 / 1e-4 across implementations.
"""

import copy

import pytest
import torch

from percept_cli.errors import ModelError, OutputError
from percept_cli.models.dit import PerceptDiT
from percept_cli.models.surgery import (
    build,
    convert_diffusers_dit,
    convert_meta_dit,
    labels_from_table,
    load_pretrained_dit,
    model_config,
    perception_from_generative,
    save_surgery,
    upcycle,
    widen_conv_in,
)
from tests.helpers import tiny_dit

TIGHT = dict(atol=1e-6, rtol=1e-5)
E, K = 4, 2


def inputs(model: PerceptDiT, n: int = 4, seed: int = 0, labels=(1000, 1001, 1002, 1003)):
    """x (n, cond+in, 32, 32), t (n,), y (n,) mixed labels."""
    g = torch.Generator().manual_seed(seed)
    c = model.config.in_channels + model.config.cond_channels
    x = torch.randn(n, c, 32, 32, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.tensor([labels[i % len(labels)] for i in range(n)])
    return x, t, y


def generator_dit(**kw) -> PerceptDiT:
    """A tiny 'ImageNet' generator: 10 classes + null row (offset 0), no condition channels."""
    return tiny_dit(cond_channels=0, num_labels=11, label_offset=0, **kw)


# -- 1. upcycling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("router_std", [0.0, 0.02])
def test_upcycle_renormalised_equals_dense_E4_K2(router_std):
    dense = tiny_dit()
    moe = upcycle(dense, E, K, norm_topk_prob=True, router_std=router_std)
    assert moe.config.num_experts == E and moe.config.top_k == K and moe.config.norm_topk_prob
    state = moe.state_dict()
    assert state["blocks.1.moe.gate.weight"].shape == (E, 128)
    assert (state["blocks.1.moe.gate.weight"] == 0).all() == (router_std == 0)
    for e in range(E):
        torch.testing.assert_close(state[f"blocks.1.moe.experts.{e}.fc2.weight"], dense.blocks[1].mlp.fc2.weight, atol=0, rtol=0)
    x, t, y = inputs(dense)
    with torch.no_grad():
        torch.testing.assert_close(moe(x, t, y), dense(x, t, y), **TIGHT)


def test_upcycle_official_zero_router_scales_each_mlp_by_k_over_E():
    dense = tiny_dit()
    moe = upcycle(dense, E, K, norm_topk_prob=False, router_std=0.0)
    ref = copy.deepcopy(dense)  # softmax of zero logits = 1/E each, top-k sum = k/E exactly
    with torch.no_grad():
        for block in ref.blocks:
            block.mlp.fc2.weight.mul_(K / E), block.mlp.fc2.bias.mul_(K / E)
        x, t, y = inputs(dense)
        torch.testing.assert_close(moe(x, t, y), ref(x, t, y), **TIGHT)
        assert (moe(x, t, y) - dense(x, t, y)).abs().max() > 1e-3  # and it is not the dense model


def test_upcycle_official_random_router_scales_by_topk_probability_sum():
    dense = tiny_dit()
    moe = upcycle(dense, E, K, norm_topk_prob=False, router_std=0.5, seed=3)
    ref = copy.deepcopy(dense)
    for block, mblock in zip(ref.blocks, moe.blocks):
        gate = mblock.moe.gate.weight.detach()

        def scale(mod, args, out, gate=gate):  # out * s(h), s = sum of the top-k softmax probabilities
            s = (args[0] @ gate.T).softmax(-1).topk(K, dim=-1).values.sum(-1, keepdim=True)
            return out * s

        block.mlp.register_forward_hook(scale)
    x, t, y = inputs(dense)
    with torch.no_grad():
        torch.testing.assert_close(moe(x, t, y), ref(x, t, y), **TIGHT)


def test_upcycle_official_rescaled_experts_equal_dense():
    dense = tiny_dit()
    moe = upcycle(dense, E, K, norm_topk_prob=False, router_std=0.0, rescale_experts=True)
    x, t, y = inputs(dense)
    with torch.no_grad():
        torch.testing.assert_close(moe(x, t, y), dense(x, t, y), **TIGHT)


def test_upcycle_refuses_moe_and_bad_k_and_leaves_input_alone():
    dense = tiny_dit()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    moe = upcycle(dense, E, K)
    with torch.no_grad():
        moe.blocks[0].moe.experts[0].fc1.weight.add_(1.0)  # no storage shared with the input
    for k, v in dense.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ModelError, match="already has 4 experts"):
        upcycle(moe, E, K)
    with pytest.raises(ModelError, match="top-k must be in 1..4"):
        upcycle(dense, E, 5)


# -- 2. widening the input conv -------------------------------------------------------------------


@pytest.mark.parametrize("routed", [(), (1000, 1001, 1002, 1003)], ids=["shared", "routed"])
def test_widen_conv_in_same_image_in_every_slot_gives_same_tokens(routed):
    gen = generator_dit()
    wide = widen_conv_in(gen, 3, routed_labels=routed)
    assert wide.config.cond_channels == 6 and wide.config.in_channels == 3
    convs = list(wide.x_embedder.proj.values()) if routed else [wide.x_embedder.proj]
    assert len(convs) == max(1, len(routed)) and all(c.weight.shape == (128, 9, 4, 4) for c in convs)
    x, _, y = inputs(gen)
    with torch.no_grad():
        torch.testing.assert_close(wide.x_embedder(x.repeat(1, 3, 1, 1), y), gen.x_embedder(x, y), **TIGHT)


def test_widen_conv_in_refuses_conditional_models():
    with pytest.raises(ModelError, match="already takes 6 condition channels"):
        widen_conv_in(tiny_dit(), 3)


# -- 3. label table -------------------------------------------------------------------------------


def test_labels_from_table_copies_null_row_by_default():
    gen = generator_dit()
    old = gen.y_embedder.embedding_table.weight.detach()  # (11, D): 10 classes + null (last row)
    new = labels_from_table(gen)
    assert (new.config.num_labels, new.config.label_offset) == (5, 1000)
    table = new.y_embedder.embedding_table.weight.detach()
    for row in range(5):
        torch.testing.assert_close(table[row], old[10], atol=0, rtol=0)


def test_labels_from_table_source_rows_and_big_table():
    gen = generator_dit()
    old = gen.y_embedder.embedding_table.weight.detach()
    new = labels_from_table(gen, source_rows=(3, 1, 4, 1), null_row=10)
    table = new.y_embedder.embedding_table.weight.detach()
    torch.testing.assert_close(table, old[[3, 1, 4, 1, 10]], atol=0, rtol=0)
    big = labels_from_table(gen, source_rows=(3, 1, 4, 1), keep_table=True)  # the official [1005, D] shape
    table = big.y_embedder.embedding_table.weight.detach()
    assert (big.config.num_labels, big.config.label_offset) == (1005, 0)
    torch.testing.assert_close(table[:10], old[:10], atol=0, rtol=0)  # classes kept
    torch.testing.assert_close(table[1000:], old[[3, 1, 4, 1, 10]], atol=0, rtol=0)
    with pytest.raises(ModelError, match="consecutive"):
        labels_from_table(gen, task_labels=(1000, 1002))
    with pytest.raises(ModelError, match="outside the pretrained table"):
        labels_from_table(gen, source_rows=(0, 1, 2, 11))


# -- 4. generative -> perception, then `percept train --init` -------------------------------------


@pytest.mark.parametrize("routed", [False, True], ids=["shared", "routed"])
def test_perception_model_starts_as_the_unconditional_generator(routed):
    gen = generator_dit()
    per = perception_from_generative(gen, slots=3, routed=routed)
    assert per.config.routed_labels == ((1000, 1001, 1002, 1003) if routed else ())
    x, t, y = inputs(gen)
    with torch.no_grad():  # same image in all 3 slots, any task label == the generator with its null label
        torch.testing.assert_close(per(x.repeat(1, 3, 1, 1), t, y), gen(x, t, torch.full_like(y, 10)), atol=1e-5, rtol=1e-5)


def test_perception_from_generative_folder_round_trip_and_train_init(tmp_path):
    from percept_cli.train import TrainConfig, Trainer

    gen = generator_dit()
    gen.save_pretrained(str(tmp_path / "gen"))
    per = perception_from_generative(tmp_path / "gen")
    folder = save_surgery(per, tmp_path / "per", source=tmp_path / "gen")
    with pytest.raises(OutputError, match="not empty"):
        save_surgery(per, folder)
    back = PerceptDiT.from_pretrained(str(folder))
    assert model_config(back) == model_config(per)
    for k, v in per.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    trainer = Trainer(TrainConfig(init=str(folder), out=str(tmp_path / "run"), autocast="fp32"), log=lambda m: None)
    g = torch.Generator().manual_seed(0)
    cond, x0 = torch.randn(2, 6, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    per_sample, _, balance = trainer.loss(cond, x0, torch.tensor([1000, 1003]))
    assert per_sample.shape == (2,) and torch.isfinite(per_sample).all()
    per_sample.mean().backward()
    assert trainer.model.x_embedder.proj.weight.grad is not None


# -- 5. Meta's original layout --------------------------------------------------------------------


def meta_state() -> tuple[PerceptDiT, dict]:
    model = generator_dit(in_channels=4, learn_sigma=True)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_convert_meta_dit_is_identity_plus_config():
    model, state = meta_state()
    cfg, out = convert_meta_dit(state)  # heads inferred from width 128 (2)
    assert list(out) == list(state) and all(out[k] is state[k] for k in state)
    converted = build(cfg, out, "test")
    assert model_config(converted) == model_config(model)  # every constructor argument, defaults included
    assert (cfg["cond_channels"], cfg["in_channels"], cfg["learn_sigma"], cfg["num_labels"]) == (0, 4, True, 11)
    x, t, y = inputs(model, labels=(0, 5, 10))
    with torch.no_grad():
        torch.testing.assert_close(converted(x, t, y), model(x, t, y), atol=0, rtol=0)


def test_convert_meta_dit_strict_checks_list_the_keys():
    _, state = meta_state()
    bad = dict(state)
    bad["blocks.1.attn.qkv.weight"] = bad["blocks.1.attn.qkv.weight"][:-1]
    del bad["blocks.0.attn.proj.bias"]
    bad["blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelError) as err:
        convert_meta_dit(bad)
    msg = str(err.value)
    assert "missing keys: blocks.0.attn.proj.bias" in msg
    assert "unexpected keys: blocks.0.extra.weight" in msg
    assert "blocks.1.attn.qkv.weight (383, 128) != (384, 128)" in msg
    with pytest.raises(ModelError, match="does not divide"):
        convert_meta_dit(state, num_heads=3)
    with pytest.raises(ModelError, match="not a Meta DiT"):
        convert_meta_dit(tiny_dit(num_experts=2).state_dict())


# -- 5. diffusers' DiTTransformer2DModel ----------------------------------------------------------


def diffusers_dit(norm_eps: float = 1e-5):
    """Tiny DiTTransformer2DModel, random weights (adaLN included), embedder copies equal as in real files."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    dm = DiTTransformer2DModel(num_layers=2, attention_head_dim=16, num_attention_heads=2, in_channels=4,
                               out_channels=8, sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_eps=norm_eps)
    with torch.no_grad():
        for p in dm.parameters():
            p.normal_(0.0, 0.1)
        dm.transformer_blocks[1].norm1.emb.load_state_dict(dm.transformer_blocks[0].norm1.emb.state_dict())
    return dm.eval()


def meta_time_embedding(dm) -> None:
    """Make diffusers' timestep sinusoid DiT's: exp(-ln(1e4) k / half), not k / (half - 1)."""
    for block in dm.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0


def dit_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 4, 8, 8, generator=g), torch.tensor([0, 417, 999]), torch.tensor([7, 1000, 999])


def test_convert_diffusers_dit_matches_diffusers_forward():
    dm = diffusers_dit(norm_eps=1e-6)
    meta_time_embedding(dm)
    cfg, state = convert_diffusers_dit(dm.state_dict(), dict(dm.config))
    assert (cfg["hidden_size"], cfg["num_heads"], cfg["sample_size"], cfg["num_labels"], cfg["learn_sigma"]) == (32, 2, 4, 1001, True)
    model = build(cfg, state, "test")
    torch.testing.assert_close(model.pos_embed, dm.pos_embed.pos_embed, atol=1e-6, rtol=0)  # same sin-cos layout
    x, t, y = dit_inputs()
    with torch.no_grad():
        want = dm(x, t, class_labels=y).sample
        assert want.abs().mean() > 0.1  # non-trivial output
        torch.testing.assert_close(model(x, t, y), want, atol=1e-5, rtol=1e-5)


def test_diffusers_runtime_differs_only_in_time_frequencies_and_eps():
    """Stock diffusers (shift 1, eps 1e-5) equals the converted model at t=0 (within eps effects)."""
    dm = diffusers_dit()
    model = build(*convert_diffusers_dit(dm.state_dict(), dict(dm.config)), "test")
    x, _, y = dit_inputs()
    t0 = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t0, y), dm(x, t0, class_labels=y).sample, atol=1e-4, rtol=1e-4)
    t = torch.tensor([1, 500, 999])
    half = 128
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / (half - 1))
    args = t[:, None].float() * freqs[None]
    torch.testing.assert_close(dm.transformer_blocks[0].norm1.emb.time_proj(t), torch.cat([args.cos(), args.sin()], -1))


def test_convert_diffusers_dit_refuses_unequal_embedder_copies():
    dm = diffusers_dit()
    state = dict(dm.state_dict())
    key = "transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight"
    state[key] = state[key] + 1
    with pytest.raises(ModelError, match="block 1's class_embedder"):
        convert_diffusers_dit(state, dict(dm.config))


def test_load_pretrained_dit_detects_each_layout(tmp_path):
    dm = diffusers_dit(norm_eps=1e-6)
    dm.save_pretrained(str(tmp_path / "pipe" / "transformer"))  # a diffusers pipeline folder
    meta_time_embedding(dm)
    model, state = meta_state()
    torch.save({"ema": state}, tmp_path / "DiT-tiny.pt")
    model.save_pretrained(str(tmp_path / "ours"))
    x, t, y = dit_inputs()
    xm, tm, ym = inputs(model, labels=(0, 10))
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained_dit(tmp_path / "pipe")(x, t, y), dm(x, t, class_labels=y).sample,
                                   atol=1e-5, rtol=1e-5)
        for src in (tmp_path / "DiT-tiny.pt", tmp_path / "ours"):
            torch.testing.assert_close(load_pretrained_dit(src)(xm, tm, ym), model(xm, tm, ym), atol=0, rtol=0)
    with pytest.raises(ModelError, match="does not exist"):
        load_pretrained_dit(tmp_path / "nope")
