"""Numerical equivalence with the official code, on the tiny fixtures in ../shared/fixtures/official."""

import json

import numpy as np
import pytest
import torch

from percept_cli.autoencoder import VAE
from percept_cli.checkpoints import load_official, read_official_state_dict
from percept_cli.errors import ModelError
from percept_cli.sampler import ddim_sample, initial_noise
from percept_cli.schedules import make_scheduler

CASES = ["task1000", "task1001", "task1002", "task1003", "mixed", "null1004"]
TASK_RUNS = ["depth", "amodal", "flowx", "flowy"]


@pytest.fixture(scope="module")
def fixtures(shared):
    return shared / "fixtures" / "official"


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
    w, idx = logits.softmax(-1).topk(2, dim=-1)
    got = {tuple(sorted(zip(i.tolist(), np.round(v.tolist(), 5)))) for i, v in zip(idx, w)}
    want = {tuple(sorted(zip(i.tolist(), np.round(v.tolist(), 5)))) for i, v in zip(ref["mixed_block0_topk_idx"], ref["mixed_block0_topk_w"])}
    assert got == want  # same experts and the same (non-renormalised) weights for every token
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


def test_cast_to_dtype(fixtures):
    model = load_official(fixtures / "tiny_official_layout_ema.pt", {"num_heads": 4}, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
