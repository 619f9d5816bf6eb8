"""Shared test helpers: tiny seeded models (built in the test, never downloaded), CLI runs and inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from typer.testing import CliRunner

from percept_cli.checkpoints import save_percept
from percept_cli.cli import main
from percept_cli.data.scenes import Scene
from percept_cli.models.dit import PerceptDiT, dit_config
from percept_cli.schedules import SD2_SCHEDULER


def tiny_dit(num_experts: int = 0, seed: int = 0, norm_topk_prob: bool = True, **kw) -> PerceptDiT:
    """A 2-block pixel-space DiT with random (non-zero) weights, so outputs depend on inputs."""
    torch.manual_seed(seed)
    cfg = dict(dit_config("XXS", patch_size=4, num_experts=num_experts), depth=2, sample_size=8, in_channels=3,
               cond_channels=6, norm_topk_prob=norm_topk_prob)
    cfg.update(kw)
    model = PerceptDiT(**cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.05)
    return model.eval()


def tiny_model_folder(folder: Path, num_experts: int = 2, resolution: int = 32, **config) -> Path:
    """Save a tiny model in our layout, ready for --model FOLDER."""
    pipeline = dict(resolution=resolution, steps=3, ensemble=1, tasks=["depth", "flow", "amodal"], flow_scale=[8.0, 8.0],
                    batch_size=8)
    pipeline.update(config)
    return save_percept(folder, tiny_dit(num_experts), SD2_SCHEDULER, pipeline)


ROOT = Path(__file__).resolve().parents[1]  # the repository


def fast(model: Path) -> list[str]:
    return ["--model", str(model), "--resolution", "32", "--steps", "2", "-q"]


def percept(*args, input: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `percept ARGS` run through main()."""
    with CliRunner().isolation(input=input) as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        sys.stdout.flush(), sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def image(path: Path, hw=(20, 28), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    return path


def video(path: Path, frames=5, hw=(24, 32)) -> Path:
    import imageio.v2 as imageio

    rng = np.random.default_rng(1)
    w = imageio.get_writer(path, format="FFMPEG", fps=5, codec="libx264", pixelformat="yuv420p",
                           macro_block_size=1, ffmpeg_log_level="error")
    for _ in range(frames):
        w.append_data(rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    w.close()
    return path


def no_model_load(monkeypatch):
    from percept_cli.pipeline import Predictor

    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Predictor, "from_source", classmethod(refuse))


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def warp_error(scene: Scene, aux: dict, flow: np.ndarray) -> float:
    """Mean |rgb - rgb2 sampled at (x + u, y + v)| over pixels that land on the same surface, unoccluded."""
    h, w = scene.depth.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = xs + scene.flow[..., 0], ys + scene.flow[..., 1]  # (H, W) landing points of the exact flow
    ok = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    x0 = np.clip(np.floor(mx).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(my).astype(int), 0, h - 2)
    # All four bilinear taps on the same surface, so no silhouette edge blends in.
    for dy in (0, 1):
        for dx in (0, 1):
            ok &= aux["ids2"][y0 + dy, x0 + dx] == aux["ids1"]
    depth2 = cv2.remap(aux["depth2"].astype(np.float32), mx, my, cv2.INTER_LINEAR)
    ok &= np.abs(depth2 - aux["proj_z2"]) < 0.02 * aux["proj_z2"]  # the point is the one frame 2 sees
    assert ok.mean() > 0.5
    warped = cv2.remap(scene.rgb2, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return float(np.abs(warped.astype(float) - scene.rgb)[ok].mean())
