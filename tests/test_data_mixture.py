"""Real dataset folders in the training mixture: [[data]] tables, augmentation exactness, clear errors."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from percept_cli.data.mixture import ArrayPool, Source, draw, sample_mixture
from percept_cli.data.sources import DataSpec, FolderData, parse_data, resize_flow
from percept_cli.errors import InputError, UsageError
from percept_cli.train import StepBatches, TrainConfig, Trainer, load_config, run
from percept_cli.writers import write_flo

TINY = dict(hidden_size=32, depth=2, num_heads=2, patch_size=4, resolution=16, train_scenes=3, batch_size=8,
            log_every=1, ckpt_every=100, eval_every=0, warmup=1, autocast="fp32", threads=1)


def write_hypersim(root: Path, n: int = 3) -> Path:
    """n Hypersim items in Marigold's layout: scene/rgb_cam_00_frNNNN.png + depth_plane (uint16 mm, 0 = no depth)."""
    rng = np.random.default_rng(1)
    scene = root / "train" / "ai_001_001"
    scene.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(scene / f"rgb_cam_00_fr{i:04d}.png"), rng.integers(0, 255, (24, 32, 3), np.uint8))
        depth = rng.integers(500, 9000, (24, 32)).astype(np.uint16)
        depth[:4] = 0  # the top rows have no ground truth
        cv2.imwrite(str(scene / f"depth_plane_cam_00_fr{i:04d}.png"), depth)
    return root


def write_chairs(root: Path, n: int = 3) -> Path:
    """n FlyingChairs items: NNNNN_img1.ppm, _img2.ppm, _flow.flo (u = number, v = -2), 32x24."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        for k in (1, 2):
            cv2.imwrite(str(root / f"{i:05d}_img{k}.ppm"), rng.integers(0, 255, (24, 32, 3), np.uint8))
        write_flo(root / f"{i:05d}_flow.flo", np.stack([np.full((24, 32), float(i)), np.full((24, 32), -2.0)], -1))
    return root


def write_pix2gestalt(root: Path, n: int = 2) -> Path:
    """n pix2gestalt items: occlusion/, visible_object_mask/, whole_mask/ and whole/ (the object on white), 24x32."""
    rng = np.random.default_rng(3)
    for sub in ("occlusion", "visible_object_mask", "whole_mask", "whole"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        whole = np.zeros((24, 32), np.uint8)
        whole[6:18, 8:24] = 255
        visible = whole.copy()
        visible[:, 16:] = 0
        cv2.imwrite(str(root / "occlusion" / f"{i}_occlusion.png"), rng.integers(0, 255, (24, 32, 3), np.uint8))
        cv2.imwrite(str(root / "visible_object_mask" / f"{i}_visible_mask.png"), visible)
        cv2.imwrite(str(root / "whole_mask" / f"{i}_whole_mask.png"), whole)
        obj = np.where(whole[..., None] > 0, rng.integers(0, 200, (24, 32, 3)), 255).astype(np.uint8)
        cv2.imwrite(str(root / "whole" / f"{i}_whole.png"), obj)
    return root


def test_mixture_of_dataset_folders_and_scenes_trains(tmp_path):
    hyp, chairs = write_hypersim(tmp_path / "hypersim"), write_chairs(tmp_path / "chairs")
    toml = tmp_path / "mix.toml"
    toml.write_text(f'''max_steps = 2
[[data]]
kind = "hypersim"
path = "{hyp}"
weight = 2
[[data]]
kind = "flyingchairs"
path = "{chairs}"
[[data]]
kind = "scenes"
task = "amodal"
''')
    cfg = load_config(toml, out=str(tmp_path / "run"), **TINY)
    assert cfg.tasks() == ["depth", "flow", "amodal"]
    trainer = Trainer(cfg, log=lambda m: None)
    sources = trainer.sources()
    assert [s.name for s in sources] == ["hypersim", "flyingchairs", "scenes"]
    assert sources[0].kinds == {"depth": 1.0} and sources[1].kinds == {"flow_u": 1.0, "flow_v": 1.0}
    assert sources[2].kinds == {"amodal": 1.0} and len(sources[0].pool) == 3
    # batch k is a pure function of (seed, rank, k)
    data = StepBatches(None, cfg, 0, sources=sources, flow_scale=trainer.flow_scale)
    seen = set()
    for k in range(6):
        cond, target, labels, kinds = data[k]
        again = data[k]
        assert torch.equal(cond, again[0]) and torch.equal(target, again[1]) and kinds == again[3]
        assert cond.shape == (8, 6, 16, 16) and target.shape == (8, 3, 16, 16)
        seen |= set(kinds)
    assert seen == {"depth", "flow_u", "flow_v", "amodal"}
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    assert json.loads((tmp_path / "run" / "checkpoint-last" / "percept.json").read_text())["tasks"] == ["depth", "flow", "amodal"]


def test_hypersim_depth_rows_use_the_valid_mask():
    depth = np.linspace(1, 5, 16 * 16, dtype=np.float32).reshape(1, 16, 16)
    valid = np.ones((1, 16, 16), bool)
    valid[:, :3] = False
    depth[:, :3] = 0.0
    pool = ArrayPool(rgb=np.zeros((1, 16, 16, 3), np.uint8), depth=depth, valid=valid)
    cond, target, _, _ = sample_mixture([Source("h", pool, {"depth": 1.0}, 1.0, 16)], np.random.default_rng(0), 2, 16, (8, 8))
    for c, t in zip(cond, target):
        v = valid[0] if np.array_equal(c[3], valid[0].astype(np.float32)) else valid[0][:, ::-1]
        np.testing.assert_array_equal(c[3:], np.repeat(v[None].astype(np.float32), 3, 0))  # prompt = valid mask {0, 1}
        assert t[0][v].min() == -1.0 and t[0][v].max() == 1.0  # quantiles over valid pixels only


def test_flow_flip_and_crop_are_exact():
    rng = np.random.default_rng(3)
    n, stored, size, scale = 4, 12, 8, (5.0, 7.0)
    flow = rng.normal(0, 2, (n, stored, stored, 2)).astype(np.float32)
    pool = ArrayPool(rgb=rng.integers(0, 255, (n, stored, stored, 3), np.uint8),
                     rgb2=rng.integers(0, 255, (n, stored, stored, 3), np.uint8), flow=flow)
    sources = [Source("f", pool, {"flow_u": 1.0, "flow_v": 1.0}, 1.0, stored)]
    d = draw(sources, np.random.default_rng(9), 16, size)
    cond, target, labels, kinds = sample_mixture(sources, np.random.default_rng(9), 16, size, scale)
    assert kinds == d.kinds and d.flips.any() and not d.flips.all() and len(set(map(tuple, d.crops))) > 1
    for r in range(16):
        y, x = d.crops[r]
        win = flow[d.idx[r], y:y + size, x:x + size]  # a crop keeps flow in pixels
        rgb = pool.rgb[d.idx[r], y:y + size, x:x + size]
        if d.flips[r]:  # a flip mirrors the window and negates u
            win = win[:, ::-1] * np.array([-1.0, 1.0], np.float32)
            rgb = rgb[:, ::-1]
        c = 0 if kinds[r] == "flow_u" else 1
        want = np.clip(win[..., c] / scale[c], -1, 1)
        np.testing.assert_allclose(target[r], np.repeat(want[None], 3, 0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(cond[r, :3], np.moveaxis(rgb, -1, 0) / 127.5 - 1, atol=1e-6)
        assert labels[r] == (1002 if c == 0 else 1003)


def test_resize_scales_flow_vectors(tmp_path):
    flow = np.stack([np.full((24, 32), 4.0), np.full((24, 32), -3.0)], -1).astype(np.float32)
    np.testing.assert_allclose(resize_flow(flow, 16)[5, 5], [4.0 * 16 / 32, -3.0 * 16 / 24])
    # FlyingChairs items at stored = 16 / 0.5 = 32: u = number * 32/32, v = -2 * 32/24; crops leave them so
    data = FolderData(DataSpec("flyingchairs", str(write_chairs(tmp_path / "c")), crop=0.5), 16)
    pool = data.load()
    assert data.stored == 32 and pool.flow.shape == (3, 32, 32, 2)
    np.testing.assert_allclose(pool.flow[1, 3, 3], [2.0, -2.0 * 32 / 24], rtol=1e-6)


def test_wrong_or_incomplete_dataset_folders_are_named(tmp_path):
    chairs = write_chairs(tmp_path / "chairs")
    (chairs / "00002_flow.flo").unlink()
    with pytest.raises(InputError, match=r"00002_flow\.flo: missing beside 00002_img1\.ppm in .*chairs"):
        FolderData(DataSpec("flyingchairs", str(chairs)), 16)
    with pytest.raises(InputError, match=f"{tmp_path / 'nowhere'}: not a folder"):
        FolderData(DataSpec("hypersim", str(tmp_path / "nowhere")), 16)
    with pytest.raises(InputError, match=r"no Hypersim \*rgb_cam_XX_frNNNN\.png files"):
        FolderData(DataSpec("hypersim", str(chairs)), 16)
    (tmp_path / "p2g" / "occlusion").mkdir(parents=True)
    for sub, name in (("occlusion", "7_occlusion"), ("visible_object_mask", "7_visible_mask"), ("whole_mask", "7_whole_mask")):
        (tmp_path / "p2g" / sub).mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "p2g" / sub / f"{name}.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match=r"whole/7_whole\.png: missing"):  # training needs the whole object's RGB
        FolderData(DataSpec("pix2gestalt", str(tmp_path / "p2g")), 16)


def test_bad_data_tables_are_usage_errors():
    for table, message in (
        ({"kind": "kitti", "path": "x"}, "kind = 'kitti' is not a dataset; use hypersim, flyingchairs, pix2gestalt, vkitti2, flyingthings3d, scenes"),
        ({"kind": "hypersim"}, "needs path"),
        ({"kind": "hypersim", "path": "x", "task": "flow"}, "hypersim has ground truth for depth only"),
        ({"kind": "scenes", "weight": 0}, "weight must be a positive number"),
        ({"kind": "scenes", "crop": 1.5}, r"crop must be in \(0, 1\]"),
        ({"kind": "scenes", "paht": "x"}, "unknown key"),
    ):
        with pytest.raises(UsageError, match=message):
            parse_data([table])
    with pytest.raises(UsageError, match=r"\[\[data\]\] table 1"):
        load_config(None, data=[{"kind": "kitti"}])


def test_mixture_resumes_exactly(tmp_path):
    chairs = write_chairs(tmp_path / "chairs")
    cfg = dict(data=[{"kind": "flyingchairs", "path": str(chairs), "crop": 0.75}, {"kind": "scenes"}], **TINY)
    straight = run(TrainConfig(out=str(tmp_path / "a"), max_steps=4, **cfg), log=lambda m: None)
    run(TrainConfig(out=str(tmp_path / "b"), max_steps=2, **cfg), log=lambda m: None)
    resumed = run(TrainConfig(out=str(tmp_path / "b"), max_steps=4, **cfg), log=lambda m: None)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=k)


def write_vkitti2(root: Path, frames: int = 3) -> Path:
    """One Virtual KITTI 2 sequence as its archives unpack (rgb jpg, depth cm uint16, forward flow uint16 BGR),
    16x8, flow u = +3, v = -1.5 px everywhere except an invalid pixel (B = 0), depth 12.34 m and a sky pixel."""
    h, w = 8, 16
    rel = Path("Scene01") / "clone" / "frames"
    rng = np.random.default_rng(4)
    for i in range(frames):
        for kind, name, ext in (("rgb", "rgb", "jpg"), ("depth", "depth", "png"), ("forwardFlow", "flow", "png")):
            (root / f"vkitti_2.0.3_{kind}" / rel / kind / "Camera_0").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "vkitti_2.0.3_rgb" / rel / "rgb" / "Camera_0" / f"rgb_{i:05d}.jpg"),
                    rng.integers(0, 255, (h, w, 3), np.uint8))
        depth = np.full((h, w), 1234, np.uint16)
        depth[0, 0] = 65535
        cv2.imwrite(str(root / "vkitti_2.0.3_depth" / rel / "depth" / "Camera_0" / f"depth_{i:05d}.png"), depth)
        if i < frames - 1:
            bgr = np.ones((h, w, 3), np.uint16)
            bgr[..., 2] = np.round((3.0 / (w - 1) + 1) / 2 * 65535)  # R = u
            bgr[..., 1] = np.round((-1.5 / (h - 1) + 1) / 2 * 65535)  # G = v
            bgr[2, 3, 0] = 0  # invalid
            cv2.imwrite(str(root / "vkitti_2.0.3_forwardFlow" / rel / "forwardFlow" / "Camera_0" / f"flow_{i:05d}.png"), bgr)
    return root


def write_pfm(path: Path, data: np.ndarray) -> None:
    """(H, W, 3) float32 as a little-endian PFM, bottom row first (as FlyingThings3D's files are)."""
    h, w = data.shape[:2]
    with open(path, "wb") as f:
        f.write(f"PF\n{w} {h}\n-1.0\n".encode())
        f.write(np.flipud(data).astype("<f4").tobytes())


def write_flyingthings(root: Path, frames: int = 3) -> Path:
    """TRAIN/A/0000/left with frames 0006.. and into-future flow (u = row index, v = -column index)."""
    rng = np.random.default_rng(5)
    img_dir = root / "frames_cleanpass" / "TRAIN" / "A" / "0000" / "left"
    flow_dir = root / "optical_flow" / "TRAIN" / "A" / "0000" / "into_future" / "left"
    img_dir.mkdir(parents=True)
    flow_dir.mkdir(parents=True)
    yy, xx = np.mgrid[0:6, 0:10].astype(np.float32)
    for i in range(6, 6 + frames):
        cv2.imwrite(str(img_dir / f"{i:04d}.png"), rng.integers(0, 255, (6, 10, 3), np.uint8))
        write_pfm(flow_dir / f"OpticalFlowIntoFuture_{i:04d}_L.pfm", np.stack([yy, -xx, np.zeros_like(xx)], -1))
    return root


def test_vkitti2_reader_and_training_rows(tmp_path):
    from percept_cli.data.datasets import load_vkitti2, vkitti2_items

    root = write_vkitti2(tmp_path / "vk")
    items = vkitti2_items(root)
    assert len(items) == 2  # the last frame has no forward flow
    s = load_vkitti2(root, items[0])
    np.testing.assert_allclose(s.flow[4, 4], [3.0, -1.5], atol=2e-3)
    assert not s.flow_valid[2, 3] and s.flow[2, 3].tolist() == [0.0, 0.0]
    assert s.depth[1, 1] == pytest.approx(12.34) and not s.valid[0, 0] and s.valid[1, 1]
    assert parse_data([{"kind": "vkitti2", "path": str(root)}])[0].task == ()
    from percept_cli.data.sources import folder_source

    source, _ = folder_source(parse_data([{"kind": "vkitti2", "path": str(root)}])[0], 16, {})
    assert set(source.kinds) == {"depth", "flow_u", "flow_v"}  # both of its tasks by default
    np.testing.assert_allclose(source.pool.flow[0, 4, 4], [3.0, -1.5 * 16 / 8], atol=5e-3)  # resized to 16x16
    (root / "vkitti_2.0.3_depth" / "Scene01" / "clone" / "frames" / "depth" / "Camera_0" / "depth_00001.png").unlink()
    with pytest.raises(InputError, match=r"depth_00001\.png: missing for vkitti_2\.0\.3_rgb/Scene01"):
        vkitti2_items(root)
    with pytest.raises(InputError, match="no vkitti_2.x_rgb folder"):
        vkitti2_items(tmp_path)


def test_flyingthings3d_reader(tmp_path):
    from percept_cli.data.datasets import flyingthings_items, load_flyingthings, read_pfm

    root = write_flyingthings(tmp_path / "ft")
    items = flyingthings_items(root)
    assert [i[0].name for i in items] == ["0006.png", "0007.png"]
    s = load_flyingthings(root, items[1])
    assert s.flow.shape == (6, 10, 2)
    assert s.flow[2, 7].tolist() == [2.0, -7.0]  # top row first: u = row, v = -column
    assert read_pfm(items[0][2]).shape == (6, 10, 3)
    (root / "optical_flow" / "TRAIN" / "A" / "0000" / "into_future" / "left" / "OpticalFlowIntoFuture_0007_L.pfm").unlink()
    with pytest.raises(InputError, match="OpticalFlowIntoFuture_0007_L.pfm: missing for frames_cleanpass"):
        flyingthings_items(root)
    with pytest.raises(InputError, match="no optical_flow folder"):
        flyingthings_items(root / "frames_cleanpass")
