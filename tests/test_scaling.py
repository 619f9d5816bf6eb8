"""Scaling study: a micro study end to end (train, resume, sweep, results, report), FLOP counting, config errors."""

import json
import sys

import pytest
import torch

from percept_cli import scaling
from percept_cli.errors import UsageError

# 3 dense sizes, a scratch MoE and an upcycled MoE of d1; 32 px, 3 steps of batch 4, tiny evals.
MICRO = """
dense = [
  { name = "d0", hidden = 16, depth = 1, heads = 2 },
  { name = "d1", hidden = 32, depth = 1, heads = 2 },
  { name = "d2", hidden = 32, depth = 2, heads = 2 },
]
moe = [
  { name = "d1-e2", base = "d1", experts = 2, top_k = 1 },
  { name = "d1-e2-up", base = "d1", experts = 2, top_k = 1, from = "upcycle", samples = 8 },
  { name = "d1-e4a2", base = "d1", experts = 4, top_k = 2, norm_topk_prob = true, mlp_ratio = 2.0 },
]

[study]
seed = 0
val_scenes = 2
val_timesteps = 2

[train]
patch_size = 4
resolution = 32
train_scenes = 6
batch_size = 4
warmup = 1
autocast = "fp32"
threads = 1
log_every = 1
ckpt_every = 100
eval_scenes = 2
eval_steps = 1

[budget]
samples = 12

[sweep]
model = "d2"
scenes = 2
sample_size = 32
steps = [1, 2, 3]
ensemble = [1, 2, 3]
fixed_steps = 1
schedules = ["linear", "cosine"]
spacings = ["trailing"]
zero_snr = [false, true]
resolutions = [24, 32]
"""


def quiet(msg):
    pass


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """Run the micro study: d0 cut short by its time limit (one step), then everything to the end."""
    root = tmp_path_factory.mktemp("scaling")
    config = root / "micro.toml"
    config.write_text(MICRO)
    out, docs = root / "out", root / "docs"
    study = scaling.load_study(config, out=out)
    first = [dict(name="d0", status=scaling.train_run(study, study.run("d0"), max_time=0, log=quiet)[0])]
    first += scaling.run_study(config, out, max_time=0, log=quiet)  # no time left: starts nothing
    second = scaling.run_study(config, out, log=quiet)
    readme = scaling.run_all(config, out, docs, log=quiet)
    return dict(config=config, out=out, docs=docs, first=first, second=second, readme=readme,
                results=json.loads((docs / "results.json").read_text()))


def test_micro_study_resumes_and_finishes(micro):
    first = micro["first"]
    assert first[0]["status"] == "partial" and {r["status"] for r in first[1:]} == {"not started"}
    assert json.loads((micro["out"] / "runs" / "d0" / "log.jsonl").read_text().splitlines()[0])["step"] == 1
    second = {r["name"]: r["status"] for r in micro["second"]}
    assert second == {"d0": "resumed", "d1": "trained", "d2": "trained", "d1-e2": "trained", "d1-e2-up": "trained",
                      "d1-e4a2": "trained"}
    for name in second:
        run = micro["out"] / "runs" / name
        assert (run / "checkpoint-last" / "train_state.pt").is_file() and (run / "result.json").is_file()
        assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == (2 if name == "d1-e2-up" else 3)


def test_rerun_does_no_training_or_sweep_work(micro, monkeypatch):
    import percept_cli.evaluate
    import percept_cli.train

    def boom(*a, **k):
        raise AssertionError("no work expected on a finished study")

    monkeypatch.setattr(percept_cli.train, "run", boom)
    monkeypatch.setattr(percept_cli.evaluate, "evaluate", boom)
    logs = {p: p.read_text() for p in (micro["out"] / "runs").glob("*/log.jsonl")}
    summary = scaling.run_study(micro["config"], micro["out"], log=quiet)
    assert {r["status"] for r in summary} == {"done"}
    points = scaling.run_sweeps(micro["config"], micro["out"], log=quiet)
    assert len(points) == len(micro["results"]["sweeps"]["points"])
    assert logs == {p: p.read_text() for p in logs}


def test_results_points_flops_and_fits(micro):
    res = micro["results"]
    runs = {p["name"]: p for p in res["train"]}
    assert set(runs) == {"d0", "d1", "d2", "d1-e2", "d1-e2-up", "d1-e4a2"}
    for p in runs.values():
        assert p["train_flops"] == 3 * p["forward_flops"] * p["samples"]
        assert set(p["metrics"]) == {"val_loss", "depth_abs_rel", "depth_delta1", "flow_epe", "amodal_iou"}
        assert p["metrics"]["val_loss"] > 0
    up, moe, d1 = runs["d1-e2-up"], runs["d1-e2"], runs["d1"]
    assert up["total_train_flops"] == up["train_flops"] + d1["train_flops"] and up["samples"] == 8
    assert moe["forward_flops"] == pytest.approx(d1["forward_flops"], rel=0.01)  # top-1: matched active compute
    assert moe["params"] > d1["params"] and moe["active_params"] < moe["params"]
    half = runs["d1-e4a2"]  # two half-width experts per token: the same active compute again
    assert half["mlp_ratio"] == 2.0 and half["forward_flops"] == pytest.approx(d1["forward_flops"], rel=0.02)
    assert half["active_params"] == pytest.approx(d1["active_params"], rel=0.02)
    fit = res["fits"]["train"]["val_loss_vs_train_flops"]
    assert {"exponent", "prefactor", "r2", "exponent_ci", "prefactor_ci"} <= set(fit) and fit["n"] == 3
    # sweeps: 3 tasks x settings; flow counts 2 labels in its test FLOPs
    pts = res["sweeps"]["points"]
    assert {p["task"] for p in pts} == {"depth", "flow", "amodal"}
    assert {a for p in pts for a in p["axes"]} == {"steps", "ensemble", "schedule", "resolution"}
    d = next(p for p in pts if p["task"] == "depth" and p["steps"] == 2)
    f = next(p for p in pts if p["task"] == "flow" and p["steps"] == 2)
    assert f["test_flops"] == 2 * d["test_flops"] == 2 * 2 * runs["d2"]["forward_flops"]
    assert "exponent" in res["fits"]["sweeps"]["steps"]["depth_abs_rel_vs_test_flops"]
    assert {"moe_vs_dense", "upcycled", "schedules", "returns"} <= set(res["fits"]["comparisons"])


def test_upcycled_run_starts_from_the_dense_parent(micro):
    from safetensors.torch import load_file

    init = load_file(micro["out"] / "runs" / "d1-e2-up" / "init" / "diffusion_pytorch_model.safetensors")
    parent = load_file(micro["out"] / "runs" / "d1" / "checkpoint-last" / "diffusion_pytorch_model.safetensors")
    for e in range(2):
        torch.testing.assert_close(init[f"blocks.0.moe.experts.{e}.fc1.weight"], parent["blocks.0.mlp.fc1.weight"])
        # top-1 without renormalisation: fc2 scaled by E/k so the model equals its parent at step 0
        torch.testing.assert_close(init[f"blocks.0.moe.experts.{e}.fc2.weight"], 2 * parent["blocks.0.mlp.fc2.weight"])
    torch.testing.assert_close(init["blocks.0.attn.qkv.weight"], parent["blocks.0.attn.qkv.weight"])


def test_report_states_verdicts_from_the_numbers(micro):
    from percept_cli.fits import claims

    text = micro["readme"].read_text()
    for c in claims(micro["results"]):
        assert f"### {c['claim']}: {c['verdict']}" in text
    fit = micro["results"]["fits"]["train"]["val_loss_vs_train_flops"]
    assert f"^{fit['exponent']:.4f}" in text
    has_mpl = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        has_mpl = False
    assert ((micro["docs"] / "train_vs_train_flops.png").is_file()) == has_mpl


def test_report_without_matplotlib(micro, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    readme = scaling.write_report(micro["docs"] / "results.json", tmp_path, log=quiet)
    assert "Plots skipped: matplotlib is not installed" in readme.read_text()
    assert not list(tmp_path.glob("*.png"))


def test_report_keeps_the_hand_written_discussion(micro, tmp_path):
    (tmp_path / "discussion.md").write_text("Our MoE lost to dense at this scale.\n")
    text = scaling.write_report(micro["docs"] / "results.json", tmp_path, log=quiet).read_text()
    assert "## Discussion" in text and "Our MoE lost to dense at this scale." in text
    assert text.index("## Discussion") < text.index("### ")  # right after the verdict table


@pytest.mark.parametrize("experts", [0, 4])
def test_training_step_flops_match_torch_counter(experts):
    """3 x forward per sample against FlopCounterMode over one forward + backward (attention via the math kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from percept_cli.models.dit import PerceptDiT

    cfg = dict(hidden_size=64, depth=2, num_heads=2, patch_size=4, sample_size=32, in_channels=3, cond_channels=6,
               num_experts=experts, top_k=1, norm_topk_prob=False, num_labels=5, label_offset=1000, learn_sigma=False)
    torch.manual_seed(0)
    model = PerceptDiT(**cfg).train()
    x, t, y = torch.randn(4, 9, 32, 32), torch.randint(0, 1000, (4,)), torch.full((4,), 1000)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        model(x, t, y).pow(2).mean().backward()
    analytic = scaling.train_step_flops(dict(model.config), 32, 4)
    # The rule overcounts only the input gradient of the patch embedding (never computed): ~2.5% here.
    assert counter.get_total_flops() == pytest.approx(analytic, rel=0.03)
    assert counter.get_total_flops() <= analytic


@pytest.mark.parametrize("edit,match", [
    (("[budget]\nsamples = 12", "[budget]\nsamples = 12\nflops = 5"), "exactly one"),
    (("threads = 1", "threads = 1\nhidden_size = 64"), "set per run"),
    (("val_scenes = 2", "val_scenes = 2\nvalscenes = 3"), "valscenes"),
    (('base = "d1", experts = 2, top_k = 1 }', 'base = "dx", experts = 2, top_k = 1 }'), "base = one of"),
    (('model = "d2"', 'model = "d9"'), "not a run"),
])
def test_config_errors_name_the_key(tmp_path, edit, match):
    path = tmp_path / "c.toml"
    path.write_text(MICRO.replace(*edit, 1))
    with pytest.raises(UsageError, match=match):
        scaling.load_study(path)


def test_flops_budget_gives_each_size_its_steps(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(MICRO.replace("samples = 12", "flops = 1e9"))
    study = scaling.load_study(path)
    steps = {r.name: r.steps for r in study.runs if r.kind == "dense"}
    assert steps["d0"] > steps["d1"] > steps["d2"] >= 1
    with pytest.raises(UsageError, match="--only must be one of"):
        scaling.run_all(path, tmp_path, stage="plot")


@pytest.mark.parametrize("name", ["scaling-cpu.toml", "scaling-gpu.toml"])
def test_shipped_configs_load_and_span_30x(name):
    from pathlib import Path

    from percept_cli.models.dit import PerceptDiT

    study = scaling.load_study(Path(__file__).resolve().parents[1] / "configs" / name)
    params = {}
    for spec in study.runs:
        with torch.device("meta"):
            params[spec.name] = scaling.count_params(PerceptDiT(**scaling.model_config(study, spec)))
    dense = [params[r.name][0] for r in study.runs if r.kind == "dense"]
    assert len(dense) >= 5 and max(dense) / min(dense) >= 30
    kinds = {r.kind for r in study.runs}
    assert kinds == {"dense", "moe", "upcycled"} and study.sweep["model"] in params
    for r in study.runs:  # every MoE at its base's active parameters (within the router)
        if r.experts:
            assert params[r.name][1] == pytest.approx(params[r.base][0], rel=0.02)
    plan = scaling.sweep_plan(study)
    assert {a for row in plan for a in row["axes"]} == {"steps", "ensemble", "schedule", "resolution"}
    assert len(plan) == len({(r["steps"], r["ensemble"], r["schedule"], r["resolution"]) for r in plan})
