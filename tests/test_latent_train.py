"""Latent-space training: the latent cache, fine-tuning the official layout, freezing, exact resume."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from percept_cli.errors import UsageError
from percept_cli.train import TrainConfig, Trainer, load_config, run

OFFICIAL = Path(__file__).parent / "fixtures" / "official"
QUIET = dict(log=lambda m: None)
# the fixture's model: 16 tokens of patch 2 = 8x8 latents = 64x64 pixels through the tiny VAE (factor 8)
FT = dict(resolution=64, train_scenes=4, batch_size=4, log_every=2, ckpt_every=100, eval_every=0, warmup=1,
          autocast="fp32", threads=1, lr=1e-3, multires_noise=0.0)


@pytest.fixture(scope="module")
def official_folder(tmp_path_factory) -> Path:
    """The tiny official-layout checkpoint as a model folder: one .pt + vae/ + scheduler/ + percept.json."""
    root = tmp_path_factory.mktemp("official")
    shutil.copy(OFFICIAL / "tiny_official_layout.pt", root / "tiny_official_layout.pt")
    shutil.copytree(OFFICIAL / "tiny_vae", root / "vae")
    shutil.copytree(OFFICIAL / "tiny_scheduler", root / "scheduler")
    (root / "percept.json").write_text(json.dumps({"layout": "official", "num_heads": 4}))
    return root


def fixed_loss(trainer: Trainer, batch) -> float:
    """The model's loss on one batch with fixed timesteps and noise (its own generator untouched)."""
    cond, x0, labels, _ = batch
    gen = trainer.gen
    trainer.gen = torch.Generator().manual_seed(123)
    try:
        with torch.no_grad():
            per_sample, _, _ = trainer.loss(cond, x0, labels)
    finally:
        trainer.gen = gen
    return float(per_sample.mean())


def test_latent_cache_round_trip_and_invalidation(tmp_path, monkeypatch):
    from percept_cli.autoencoder import VAE
    from percept_cli.data.latents import encode_source, vae_hash
    from percept_cli.data.mixture import ArrayPool, Source, fill_rows

    rng = np.random.default_rng(0)
    pool = ArrayPool(rgb=rng.integers(0, 255, (3, 16, 16, 3), np.uint8), rgb2=rng.integers(0, 255, (3, 16, 16, 3), np.uint8),
                     flow=rng.normal(0, 3, (3, 16, 16, 2)).astype(np.float32))
    src = Source("toy", pool, {"flow_u": 1.0}, 1.0, 16, {"kind": "toy", "n": 3})
    vae = VAE.from_folder(OFFICIAL / "tiny_vae")
    load = lambda r, p=pool: ArrayPool(**{k: v[r.start:r.stop] for k, v in p.fields.items()})  # noqa: E731
    h = vae_hash(OFFICIAL / "tiny_vae")
    lat = encode_source(src, 3, load, vae, tmp_path, h, 16, (8.0, 8.0), dtype="float32")
    arr = lat.arrays["flow_u"]
    assert arr.shape == (3, 2, 12, 2, 2) and arr.dtype == np.float32 and len(lat) == 3
    # item 1, mirrored: [rgb, prompt, target] latents of exactly the pixel rows the pixel loop would use
    cond, target = np.empty((1, 6, 16, 16), np.float32), np.empty((1, 3, 16, 16), np.float32)
    fill_rows(pool, "flow_u", np.array([1]), np.array([True]), np.array([0]), cond, target, (8.0, 8.0))
    want = vae.encode(torch.from_numpy(np.concatenate([cond[:, :3], cond[:, 3:], target]))).numpy()
    np.testing.assert_allclose(arr[1, 1], want.reshape(12, 2, 2), atol=1e-5)
    # a second run reads the cache: nothing is encoded
    monkeypatch.setattr(vae, "encode", lambda x: (_ for _ in ()).throw(AssertionError("encoded again")))
    again = encode_source(src, 3, load, vae, tmp_path, h, 16, (8.0, 8.0), dtype="float32")
    assert again.folder == lat.folder and np.array_equal(again.arrays["flow_u"], arr)
    # another VAE, resolution or flow scale is another cache (it would encode: here it raises)
    small = replace(src, stored=8, pool=ArrayPool(**{k: v[:, :8, :8] for k, v in pool.fields.items()}))
    for source, args, dtype in ((src, (h[::-1], 16, (8.0, 8.0)), "float32"), (small, (h, 8, (8.0, 8.0)), "float32"),
                                (src, (h, 16, (4.0, 8.0)), "float32"), (src, (h, 16, (8.0, 8.0)), "float16")):
        with pytest.raises(AssertionError, match="encoded again"):
            encode_source(source, 3, lambda r: load(r, source.pool), vae, tmp_path, *args, dtype=dtype)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [lat.folder.name]
    meta = json.loads((lat.folder / "meta.json").read_text())
    assert meta["key"]["vae"] == h and meta["key"]["resolution"] == 16 and meta["key"]["version"] == 1


def test_finetune_official_layout_lowers_loss_and_reloads(tmp_path, official_folder):
    from percept_cli.hub import source_from_folder
    from percept_cli.pipeline import Predictor, TaskInput

    cfg = TrainConfig(out=str(tmp_path / "run"), init=str(official_folder), max_steps=12, **FT)
    trainer = Trainer(cfg, **QUIET)
    assert trainer.latent and trainer.flow_scale == (75.0, 100.0)  # the checkpoint's conventions
    assert trainer.prediction_type == "v_prediction" and trainer.model.config.num_experts == 8
    batch = trainer.batch()
    assert batch[0].shape == (4, 8, 8, 8) and batch[1].shape == (4, 4, 8, 8)  # [rgb, prompt] latents; target latent
    trainer.close_batches()
    before = fixed_loss(trainer, batch)
    trainer.train()
    after = fixed_loss(trainer, batch)
    assert after < before * 0.9, (before, after)
    # the checkpoint is a complete model folder in our layout, with the VAE: --model FOLDER loads it
    folder = tmp_path / "run" / "checkpoint-last"
    assert (folder / "vae" / "config.json").is_file()
    pred = Predictor.from_source(source_from_folder(folder, "ft"), device="cpu", dtype="fp32")
    assert pred.config["flow_scale"] == [75.0, 100.0] and set(pred.tasks) == {"depth", "flow", "amodal"}
    for pe, pm in zip(pred.model.parameters(), trainer.ema.parameters()):
        torch.testing.assert_close(pe, pm)
    (res,) = pred.predict("depth", [TaskInput(np.zeros((40, 50, 3), np.uint8))], pred.settings("depth", steps=2, ensemble=1))
    assert res.depth.shape == (40, 50)


def test_latent_training_resumes_exactly(tmp_path, official_folder):
    cfg = dict(init=str(official_folder), latent_cache=str(tmp_path / "cache"), **FT)
    straight = run(TrainConfig(out=str(tmp_path / "a"), max_steps=4, **cfg), **QUIET)
    run(TrainConfig(out=str(tmp_path / "b"), max_steps=2, **cfg), **QUIET)
    resumed = run(TrainConfig(out=str(tmp_path / "b"), max_steps=4, **cfg), **QUIET)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # both runs share one encoding of the scenes
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_train_only_freezes_the_rest(tmp_path, official_folder):
    trainer = Trainer(TrainConfig(out=str(tmp_path), init=str(official_folder), max_steps=2, train_only=["router"], **FT), **QUIET)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".moe.gate." in k for k in changed), changed
    with pytest.raises(UsageError, match="'routers' is not a parameter group; use experts, router"):
        load_config(None, train_only="experts,routers")
    assert load_config(None, train_only="experts, embeddings").train_only == ["experts", "embeddings"]


def test_fresh_latent_model_with_accumulation_and_checkpointing(tmp_path):
    # a new latent model (vae = a VAE folder): 4 input channels, [rgb, prompt] latents as 8 condition channels;
    # activation checkpointing recomputes the same numbers, so the weights equal those of a plain run
    base = dict(vae=str(OFFICIAL / "tiny_vae"), hidden_size=32, depth=2, num_heads=2, patch_size=2, grad_accum=2,
                max_steps=2, latent_cache=str(tmp_path / "cache"), **{**FT, "batch_size": 2})
    plain = run(TrainConfig(out=str(tmp_path / "a"), **base), **QUIET)
    assert plain.model.config.in_channels == 4 and plain.model.config.cond_channels == 8
    ckpt = run(TrainConfig(out=str(tmp_path / "b"), activation_checkpointing=True, **base), **QUIET)
    for (k, a), b in zip(plain.model.state_dict().items(), ckpt.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and sum(v for k, v in log[-1].items() if k.startswith("loss_")) > 0


def test_latent_model_without_vae_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="set vae = its VAE folder"):
        Trainer(TrainConfig(out=str(tmp_path), init=str(OFFICIAL / "tiny_official_layout.pt"), **FT), **QUIET)


def test_cli_finetunes_the_official_layout_and_the_result_runs_with_model(tmp_path, official_folder):
    from tests.helpers import percept

    cfg = tmp_path / "ft.toml"
    cfg.write_text("resolution = 64\ntrain_scenes = 2\nbatch_size = 2\neval_every = 0\nautocast = \"fp32\"\n"
                   "threads = 1\n[[data]]\nkind = \"scenes\"\ntask = [\"depth\"]\n")
    code, _, err = percept("train", "--config", cfg, "--init", official_folder, "--out", tmp_path / "run",
                           "--max-steps", 1, "--train-only", "experts,routers")
    assert code == 2 and "'routers' is not a parameter group" in err
    code, _, err = percept("train", "--config", cfg, "--init", official_folder, "--out", tmp_path / "run",
                           "--max-steps", 2, "--train-only", "experts,router,labels")
    assert code == 0, err
    img = tmp_path / "in.png"
    import cv2

    cv2.imwrite(str(img), np.zeros((48, 64, 3), np.uint8))
    code, _, err = percept("depth", img, "--model", tmp_path / "run" / "checkpoint-last", "--steps", 1,
                           "--ensemble", 1, "-o", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    assert np.load(tmp_path / "out" / "in.depth.npy").shape == (48, 64)


def test_generalist_finetune_config_at_small_scale(tmp_path, official_folder):
    """configs/generalist-finetune.toml as shipped, with only sizes and paths made small: the official-layout
    fixture for the generalist, Hypersim/FlyingChairs/pix2gestalt folders written here, 64 px, bf16 autocast,
    grad_accum, activation checkpointing; the checkpoint exports (fp16) and loads as a model."""
    from percept_cli.checkpoints import export_percept
    from percept_cli.hub import source_from_folder
    from percept_cli.pipeline import Predictor
    from percept_cli.tomlcompat import tomllib
    from tests.test_data_mixture import write_chairs, write_hypersim, write_pix2gestalt

    shipped = Path(__file__).parent.parent / "configs" / "generalist-finetune.toml"
    values = tomllib.loads(shipped.read_text())
    paths = {"hypersim": write_hypersim(tmp_path / "hyp"), "flyingchairs": write_chairs(tmp_path / "chairs"),
             "pix2gestalt": write_pix2gestalt(tmp_path / "p2g")}
    assert [d["kind"] for d in values["data"]] == list(paths)
    values["data"] = [{**d, "path": str(paths[d["kind"]])} for d in values["data"]]
    small = dict(resolution=64, batch_size=2, grad_accum=2, max_steps=2, warmup=1, threads=1, loader_workers=0,
                 latent_cache=str(tmp_path / "cache"), out=str(tmp_path / "run"), init=str(official_folder))
    cfg = TrainConfig(**{**values, **small, "flow_scale": tuple(values.get("flow_scale", (8.0, 8.0)))})
    assert cfg.strategy == "fsdp" and cfg.activation_checkpointing and cfg.autocast == "bf16"
    trainer = run(cfg, **QUIET)
    assert trainer.latent and [s.name for s in trainer.sources()] == list(paths)
    assert len(list((tmp_path / "cache").iterdir())) == 3 * 2  # one latent cache per dataset and data shard
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and np.isfinite(log[-1]["loss"])
    exported = export_percept(tmp_path / "run" / "checkpoint-last", tmp_path / "export", dtype="fp16")
    pred = Predictor.from_source(source_from_folder(exported, "ft"), device="cpu", dtype="fp32")
    assert set(pred.tasks) == {"depth", "flow", "amodal"} and type(pred.autoencoder).__name__ == "VAE"


def test_benchmark_computes_generalist_memory():
    import importlib.util

    script = Path(__file__).parent.parent / "benchmarks" / "train_latent.py"
    spec = importlib.util.spec_from_file_location("train_latent_bench", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.generalist_memory([1, 8])
    assert res["parameters"] == 2_758_511_264 and res["kind"] == "computed"  # official-checkpoint.md section 1
    one, eight = res["per_gpu"]
    assert one["ddp_gib"] == eight["ddp_gib"] > 50 and eight["fsdp_gib"] < one["ddp_gib"] / 7
