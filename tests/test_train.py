"""Training loop: exact resume, learning-rate schedule, noise, checkpoints that the predictor loads."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from percept_cli.train import (
    TrainConfig,
    Trainer,
    load_config,
    lr_at,
    multires_noise,
    run,
)

TINY = dict(hidden_size=64, depth=2, num_heads=2, patch_size=4, resolution=32, train_scenes=6, batch_size=4,
            log_every=2, ckpt_every=100, eval_every=0, warmup=2, autocast="fp32", threads=1)


def weights(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_exact_resume(tmp_path):
    straight = run(TrainConfig(out=str(tmp_path / "a"), max_steps=6, **TINY), log=lambda m: None)
    first = run(TrainConfig(out=str(tmp_path / "b"), max_steps=3, **TINY), log=lambda m: None)
    assert first.step == 3 and (tmp_path / "b" / "checkpoint-last" / "train_state.pt").exists()
    resumed = run(TrainConfig(out=str(tmp_path / "b"), max_steps=6, **TINY), log=lambda m: None)
    assert resumed.step == 6
    a, b = weights(straight), weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    for pa, pb in zip(straight.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(pa, pb, atol=0, rtol=0)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 3, 4, 6]  # the resumed run appends to the same log


def test_batch_workers_train_the_same_batches_and_resume_exactly(tmp_path):
    # GPU runs build batches in worker processes; batch k is a function of (seed, rank, k), so two
    # workers, and a resume in the middle, must give exactly the plain loop's weights.
    plain = run(TrainConfig(out=str(tmp_path / "a"), max_steps=6, **TINY), log=lambda m: None)
    run(TrainConfig(out=str(tmp_path / "b"), max_steps=3, loader_workers=2, **TINY), log=lambda m: None)
    resumed = run(TrainConfig(out=str(tmp_path / "b"), max_steps=6, loader_workers=2, **TINY), log=lambda m: None)
    assert resumed._batches is None  # workers stopped at the end of the run
    a, b = weights(plain), weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_batch_worker_errors_reach_the_loop(tmp_path, monkeypatch):
    import percept_cli.train as train_module

    def broken(*args, **kwargs):
        raise ValueError("renderer broke")

    monkeypatch.setattr(train_module, "sample_batch", broken)  # the forked worker inherits it
    trainer = Trainer(TrainConfig(out=str(tmp_path), max_steps=2, loader_workers=1, **TINY), log=lambda m: None)
    with pytest.raises(ValueError, match="renderer broke"):
        trainer.train()


def test_checkpoint_loads_in_predictor(tmp_path):
    from percept_cli.checkpoints import ModelSource
    from percept_cli.pipeline import Predictor, TaskInput

    trainer = run(TrainConfig(out=str(tmp_path), max_steps=2, **TINY), log=lambda m: None)
    src = ModelSource("run", "percept", root=tmp_path / "checkpoint-last")
    pred = Predictor.from_source(src, device="cpu", dtype="fp32")  # fp32: its weights equal the EMA's
    assert pred.config["resolution"] == 32 and pred.settings("depth").ensemble == TrainConfig().default_ensemble
    (res,) = pred.predict("depth", [TaskInput(np.zeros((20, 30, 3), np.uint8))], pred.settings("depth", steps=2, ensemble=1))
    assert res.depth.shape == (20, 30)
    for pe, pm in zip(pred.model.parameters(), trainer.ema.parameters()):
        torch.testing.assert_close(pe, pm)


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), max_steps=40, lr=2e-3, lr_final=2e-3, **{**TINY, "warmup": 1})
    trainer = Trainer(cfg, log=lambda m: None)
    cond, x0, labels, _ = trainer.batch()
    losses = []
    for _ in range(40):
        gen_state = trainer.gen.get_state()
        per, _, _ = trainer.loss(cond, x0, labels)
        trainer.gen.set_state(gen_state)  # same noise and timesteps every step: a pure fitting test
        trainer.opt.zero_grad()
        per.mean().backward()
        trainer.opt.step()
        losses.append(float(per.mean().detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::8]


def test_lr_schedule_is_exponential_after_warmup():
    cfg = TrainConfig(lr=1.2e-4, lr_final=1.2e-6, warmup=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(1.2e-5)
    assert lr_at(10, cfg) == pytest.approx(1.2e-4)
    assert lr_at(60, cfg) == pytest.approx(1.2e-5)  # halfway in log space
    assert lr_at(110, cfg) == pytest.approx(1.2e-6)


def test_multires_noise_unit_variance_and_off_switch():
    gen = torch.Generator().manual_seed(0)
    n = multires_noise((4, 3, 32, 32), 0.9, torch.ones(4), gen)
    assert n.std(dim=(1, 2, 3)).sub(1).abs().max() < 1e-3
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(multires_noise((2, 3, 8, 8), 0.0, torch.ones(2), g1), torch.randn((2, 3, 8, 8), generator=g2))


def test_moe_run_logs_balance(tmp_path):
    trainer = run(TrainConfig(out=str(tmp_path), max_steps=2, num_experts=4, **TINY), log=lambda m: None)
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["balance"] >= 1.0 - 1e-3 and trainer.model.config.num_experts == 4


def test_config_file_and_unknown_keys(tmp_path):
    from percept_cli.errors import UsageError

    path = tmp_path / "c.toml"
    path.write_text('hidden_size = 96\nflow_scale = [4.0, 4.0]\n')
    cfg = load_config(path, out="x")
    assert cfg.hidden_size == 96 and cfg.flow_scale == (4.0, 4.0) and cfg.out == "x"
    path.write_text("hiden_size = 96\n")
    with pytest.raises(UsageError, match="hiden_size"):
        load_config(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # torchrun with 2 processes: ~10 s on 2 cores; CI runs it (PERCEPT_SLOW=1)
def test_ddp_two_cpu_processes(tmp_path):
    """torchrun with 2 gloo processes: both ranks step together and rank 0 checkpoints once."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in {**TINY, "max_steps": 3, "ckpt_every": 3}.items()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "percept_cli.train", str(cfg), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = torch.load(tmp_path / "out" / "checkpoint-last" / "train_state.pt", weights_only=False)
    assert state["step"] == 3
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 3]  # one writer (rank 0)
    # each rank rendered its own disjoint shard of the scenes
    shards = sorted(p.name for p in (tmp_path / "out").glob("scenes-*.npz"))
    assert shards == ["scenes-32-0-3.npz", "scenes-32-3-6.npz"]


def test_generate_then_perception_finetune(tmp_path):
    """The paper's recipe: a generative stage, then perception fine-tuning that starts from it."""
    gen = run(TrainConfig(out=str(tmp_path / "gen"), stage="generate", max_steps=2, **TINY), log=lambda m: None)
    assert gen.model.config.cond_channels == 6  # generation keeps the slots, conditioned on zeros
    ft = run(TrainConfig(out=str(tmp_path / "ft"), init=str(tmp_path / "gen" / "checkpoint-last"), max_steps=2, **TINY),
             log=lambda m: None)
    assert ft.step == 2


def test_cli_train_upcycle_eval(tmp_path):
    from typer.testing import CliRunner

    from percept_cli.cli import app

    cfg = tmp_path / "c.toml"
    cfg.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in {**TINY, "max_steps": 2}.items()))
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    ckpt = tmp_path / "run" / "checkpoint-last"
    res = runner.invoke(app, ["upcycle", str(ckpt), str(tmp_path / "moe"), "--experts", "4", "--top-k", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "moe" / "config.json").read_text())["num_experts"] == 4
    res = runner.invoke(app, ["eval", "--model", str(ckpt), "--task", "depth", "--synthetic", "2", "--size", "32",
                              "--steps", "2", "--ensemble", "1", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    assert rec["task"] == "depth" and set(rec["scores"]) == {"abs_rel", "delta1"} and "ramp (bottom = near)" in rec["baselines"]


def test_export_fp16_round_trip(tmp_path):
    from typer.testing import CliRunner

    from percept_cli.cli import app
    from percept_cli.models.dit import PerceptDiT

    trainer = run(TrainConfig(out=str(tmp_path / "run"), max_steps=1, **TINY), log=lambda m: None)
    res = CliRunner().invoke(app, ["export", str(tmp_path / "run" / "checkpoint-last"), str(tmp_path / "tiny")])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "tiny" / "train_state.pt").exists() and (tmp_path / "tiny" / "percept.json").exists()
    assert "_name_or_path" not in json.loads((tmp_path / "tiny" / "config.json").read_text())  # no local paths
    loaded = PerceptDiT.from_pretrained(tmp_path / "tiny")
    for (name, a), b in zip(trainer.ema.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a.half().float(), b, atol=0, rtol=0, msg=name)
    res = CliRunner().invoke(app, ["export", str(tmp_path), str(tmp_path / "x")])
    assert res.exit_code != 0


def test_motion_encoder_from_scratch_and_added_to_an_init(tmp_path):
    """motion_channels builds the encoder from scratch, or adds it (zero-weighted) to an --init model."""
    plain = run(TrainConfig(out=str(tmp_path / "plain"), max_steps=1, **TINY), log=lambda m: None)
    scratch = run(TrainConfig(out=str(tmp_path / "scratch"), max_steps=1, motion_channels=4, **TINY), log=lambda m: None)
    assert scratch.model.config.motion_channels == 4 and plain.model.config.motion_channels == 0
    grown = Trainer(TrainConfig(out=str(tmp_path / "grown"), init=str(tmp_path / "plain" / "checkpoint-last"),
                                motion_channels=4, **TINY))
    w = grown.model.x_embedder.proj.weight  # (D, 9 + 4, p, p)
    assert w.shape[1] == 13 and w[:, 9:].abs().max() == 0
    grown.train_step()
    assert grown.model.x_embedder.proj.weight[:, 9:].abs().max() > 0  # the new inputs learn


@pytest.mark.slow  # torchrun with 2 processes, three short runs, then one here: ~40 s on 2 cores; CI runs it
def test_fsdp_matches_ddp_and_resumes_exactly(tmp_path):
    """2 gloo processes x 2 accumulated micro-batches, a 2-expert MoE: FSDP2 (fully_shard) gives DDP's loss
    curve and weights (rtol 1e-5; measured: identical), an FSDP run resumed at step 2 equals the straight
    one exactly, and one process accumulating 4 micro-batches (the same 4 data shards) gives the same loss
    curve and weights within rtol 1e-4 (only the order of the gradient sums differs; measured: the same
    losses, weights within 1e-7)."""
    from tests.dist_strategies import BASE, PROCESSES, ACCUM

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = os.path.join(os.path.dirname(__file__), "dist_strategies.py")
    root = os.path.dirname(os.path.dirname(script))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(PROCESSES), "--master_addr",
         "127.0.0.1", "--master_port", str(_free_port()), script, str(tmp_path)],
        capture_output=True, text=True, timeout=400, env={**env, "PYTHONPATH": root}, cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = torch.load(tmp_path / "result.pt", weights_only=False)
    curves = res["curves"]
    assert len(curves["ddp"]) == 4
    np.testing.assert_allclose(curves["fsdp"], curves["ddp"], rtol=1e-5, atol=1e-6)
    assert curves["resumed"] == curves["fsdp"]
    assert any(k.startswith("eval_depth_") for k in res["evaluated"])  # the gathered FSDP EMA evaluates on rank 0
    single = run(TrainConfig(out=str(tmp_path / "single"), max_steps=4, **{**BASE, "grad_accum": PROCESSES * ACCUM}),
                 log=lambda m: None)
    logged = [json.loads(line)["loss"] for line in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(logged, curves["ddp"], rtol=1e-4)
    for k, v in res["ddp"].items():
        torch.testing.assert_close(res["fsdp"][k], v, rtol=1e-5, atol=1e-5, msg=k)
        torch.testing.assert_close(res["resumed"][k], res["fsdp"][k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(single.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
