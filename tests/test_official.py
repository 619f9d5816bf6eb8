"""Numerical equivalence with the official code, on the tiny fixtures in tests/fixtures/official."""

import json

import numpy as np
import pytest
import torch

from percept_cli.autoencoder import VAE
from percept_cli.checkpoints import load_official, official_model_config, read_official_state_dict
from percept_cli.errors import ModelError
from percept_cli.sampler import ddim_sample, initial_noise
from percept_cli.schedules import make_scheduler

CASES = ["task1000", "task1001", "task1002", "task1003", "mixed", "null1004"]
TASK_RUNS = ["depth", "amodal", "flowx", "flowy"]


@pytest.fixture(scope="module")
def fixtures(official_fixtures):
    return official_fixtures


@pytest.mark.parametrize("fname", ["tiny_official_layout.pt", "tiny_official_layout_ema.pt"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_official(fixtures, fname, case):
    ref = np.load(fixtures / "tiny_official_forward.npz")
    model = load_official(fixtures / fname, {"num_heads": 4})
    with torch.no_grad():
        out = model(*(torch.from_numpy(ref[f"{case}_{k}"]) for k in "xty"))
    np.testing.assert_allclose(out.numpy(), ref[f"{case}_out"], atol=1e-4, rtol=0)


def test_forward_intermediates_and_routing(fixtures):
    ref = np.load(fixtures / "tiny_official_forward.npz")
    model = load_official(fixtures / "tiny_official_layout.pt", {"num_heads": 4})
    x, t, y = (torch.from_numpy(ref[f"mixed_{k}"]) for k in "xty")
    with torch.no_grad():
        tokens = model.x_embedder(x, y)
        np.testing.assert_allclose(tokens.numpy(), ref["mixed_patch_tokens"], atol=1e-5)
        np.testing.assert_allclose(model.t_embedder(t).numpy(), ref["mixed_t_emb"], atol=1e-5)
        np.testing.assert_allclose(model.y_embedder(y).numpy(), ref["mixed_y_emb"], atol=1e-5)
        seen = {}
        model.blocks[0].moe.register_forward_hook(lambda mod, inp, out: seen.update(logits=out[1]))
        out = model(x, t, y, return_dict=True)
    logits = seen["logits"]
    assert len(out.router_logits) == 2 and torch.equal(out.router_logits[0], logits)
    probs = logits.softmax(-1)
    ranked = probs.sort(-1, descending=True).values
    # Every token's 2nd choice beats its 3rd by far more than float noise, so the chosen experts are well defined.
    assert (ranked[:, 1] - ranked[:, 2]).min() > 1e-4
    w, idx = probs.topk(2, dim=-1)

    def by_expert(idx, w):  # the reference used topk(sorted=False): compare each token's pairs ordered by expert
        order = np.argsort(idx, axis=1)
        return np.take_along_axis(idx, order, 1), np.take_along_axis(w, order, 1)

    got_idx, got_w = by_expert(idx.numpy(), w.numpy())
    want_idx, want_w = by_expert(ref["mixed_block0_topk_idx"], ref["mixed_block0_topk_w"])
    np.testing.assert_array_equal(got_idx, want_idx)  # the same two experts for every token, token by token
    # The same non-renormalised weights; 1e-5 absorbs CPU-to-CPU rounding (AVX-512 vs AVX2 differ by ~1e-6).
    np.testing.assert_allclose(got_w, want_w, atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.pos_embed.numpy(), ref["pos_embed"], atol=1e-6)


@pytest.mark.parametrize("run", TASK_RUNS)
def test_sampler_matches_official_pipeline(fixtures, run):
    ref = np.load(fixtures / "tiny_official_pipeline.npz")
    g = lambda k: torch.from_numpy(ref[f"{run}_{k}"])  # noqa: E731
    model = load_official(fixtures / "tiny_official_layout.pt", {"num_heads": 4})
    vae = VAE.from_folder(fixtures / "tiny_vae")
    sched = make_scheduler(json.loads((fixtures / "tiny_scheduler" / "scheduler_config.json").read_text()))
    rgb_lat, prompt_lat = vae.encode(g("rgb")), vae.encode(g("prompt"))
    np.testing.assert_allclose(rgb_lat.numpy(), ref[f"{run}_rgb_latent"], atol=1e-5)
    np.testing.assert_allclose(prompt_lat.numpy(), ref[f"{run}_prompt_latent"], atol=1e-5)
    noise = initial_noise((4, 8, 8), 1, int(ref[f"{run}_seed"]))
    np.testing.assert_array_equal(noise.numpy(), ref[f"{run}_init_noise"])  # the README's noise convention
    outs = []
    z = ddim_sample(model, torch.cat([rgb_lat, prompt_lat], 1), noise, g("label"), sched, int(ref[f"{run}_num_steps"]),
                    on_step=lambda i, o: outs.append(o))
    assert sched.timesteps.tolist() == ref[f"{run}_timesteps"].tolist()
    np.testing.assert_allclose(torch.stack(outs).numpy(), ref[f"{run}_model_outputs"][:, :, :4], atol=1e-3)
    np.testing.assert_allclose(z.numpy(), ref[f"{run}_final_latent"], atol=1e-3)
    np.testing.assert_allclose(vae.decode(z).numpy(), ref[f"{run}_decoded"], atol=1e-3)


def test_strict_load_lists_missing_and_unexpected(fixtures, tmp_path):
    state = read_official_state_dict(fixtures / "tiny_official_layout.pt")
    state.pop("blocks.1.attn.proj.bias")
    state["blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelError, match=r"missing keys: blocks\.1\.attn\.proj\.bias.*unexpected keys: blocks\.0\.extra\.weight"):
        load_official(tmp_path / "broken.pt", {"num_heads": 4})


def test_wrong_shape_and_missing_heads(fixtures, tmp_path):
    state = read_official_state_dict(fixtures / "tiny_official_layout.pt")
    state["blocks.0.attn.proj.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=r"wrong shapes: blocks\.0\.attn\.proj\.bias \(7,\)"):
        load_official(tmp_path / "bad.pt", {"num_heads": 4})
    with pytest.raises(ModelError, match="num_heads"):
        load_official(fixtures / "tiny_official_layout.pt", {})


class Evil:
    """Any non-tensor object: weights_only loading must refuse it."""


def test_refuses_pickled_objects(tmp_path):
    torch.save({"ema": {"w": torch.zeros(1)}, "obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="weights_only=True"):
        load_official(tmp_path / "evil.pt", {"num_heads": 4})


def test_generalist_layout_matches_official_keys(fixtures):
    """Our model, configured from the real generalist's keys and shapes, has exactly those keys and shapes."""
    from percept_cli.models.dit import PerceptDiT

    lines = (fixtures / "full_keys_generalist.txt").read_text().splitlines()
    shapes = {k: tuple(json.loads(shape)) for k, shape, _ in (line.split("\t") for line in lines if line.strip())}
    assert len(shapes) == 1110
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    config = official_model_config(state, {"num_heads": 16})
    assert (config["hidden_size"], config["depth"], config["num_experts"], config["sample_size"]) == (1152, 28, 8, 32)
    with torch.device("meta"):
        model = PerceptDiT(**config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


def test_cast_to_dtype(fixtures):
    model = load_official(fixtures / "tiny_official_layout_ema.pt", {"num_heads": 4}, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
