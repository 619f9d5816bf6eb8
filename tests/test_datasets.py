from pathlib import Path

import cv2
import numpy as np
import pytest

from percept_cli.data.datasets import (
    AmodalSample,
    DepthSample,
    FlowSample,
    detect_dataset,
    read_flyingchairs,
    read_hypersim,
    read_pix2gestalt,
    synthetic_samples,
)
from percept_cli.errors import InputError, UsageError
from percept_cli.writers import write_flo


def _fake_chairs(root: Path, n: int) -> None:
    """n tiny FlyingChairs samples numbered from 1, with flow u = number, v = -1."""
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        for k in (1, 2):
            cv2.imwrite(str(root / f"{i:05d}_img{k}.ppm"), rng.integers(0, 255, (6, 8, 3), np.uint8))
        write_flo(root / f"{i:05d}_flow.flo", np.stack([np.full((6, 8), i), np.full((6, 8), -1)], -1))


def test_hypersim_real(shared):
    samples = read_hypersim(shared / "realdata" / "hypersim")
    assert len(samples) == 1
    s = samples[0]
    assert isinstance(s, DepthSample)
    assert s.rgb.shape == (768, 1024, 3) and s.rgb.dtype == np.uint8
    assert s.depth.shape == (768, 1024) and s.depth.dtype == np.float32
    np.testing.assert_array_equal(s.valid, s.depth > 0)
    assert 0.1 < s.depth[s.valid].min() < s.depth[s.valid].max() < 100  # metres, an indoor scene
    assert s.name == "ai_015_004_rgb_cam_00_fr0002"


def test_hypersim_nested_layout_split_file_and_missing_depth(tmp_path):
    scene = tmp_path / "val" / "ai_001_001"
    scene.mkdir(parents=True)
    cv2.imwrite(str(scene / "rgb_cam_00_fr0000.png"), np.zeros((4, 5, 3), np.uint8))
    depth = np.array([[0, 1000, 2500, 65535, 7]] * 4, np.uint16)
    cv2.imwrite(str(scene / "depth_plane_cam_00_fr0000.png"), depth)
    (s,) = read_hypersim(tmp_path)
    np.testing.assert_allclose(s.depth[0], [0, 1.0, 2.5, 65.535, 0.007], rtol=1e-6)
    np.testing.assert_array_equal(s.valid[0], [False, True, True, True, True])
    assert s.name == "val/ai_001_001/rgb_cam_00_fr0000"
    split = tmp_path / "filename_list_val.txt"
    split.write_text("val/ai_001_001/rgb_cam_00_fr0000.png val/ai_001_001/depth_plane_cam_00_fr0000.png\n")
    assert len(read_hypersim(tmp_path, split_file=split)) == 1
    cv2.imwrite(str(scene / "rgb_cam_00_fr0001.png"), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(InputError, match="rgb_cam_00_fr0001.png"):
        read_hypersim(tmp_path)


def test_flyingchairs_real(shared):
    samples = read_flyingchairs(shared / "realdata" / "flyingchairs")
    assert [s.name for s in samples] == ["00006", "00018"]
    for s in samples:
        assert isinstance(s, FlowSample)
        assert s.rgb1.shape == s.rgb2.shape == (384, 512, 3) and s.rgb1.dtype == np.uint8
        assert s.flow.shape == (384, 512, 2) and s.flow.dtype == np.float32
        assert s.valid.all() and 1 < np.abs(s.flow).max() < 200
        # Forward flow: frame 2 sampled at x + flow looks like frame 1, much more than frame 2 itself.
        ys, xs = np.mgrid[0:384, 0:512].astype(np.float32)
        warped = cv2.remap(s.rgb2, xs + s.flow[..., 0], ys + s.flow[..., 1], cv2.INTER_LINEAR)
        err = np.abs(warped.astype(float) - s.rgb1).mean()
        assert err < 0.6 * np.abs(s.rgb2.astype(float) - s.rgb1).mean()


def test_flyingchairs_split(tmp_path):
    _fake_chairs(tmp_path, 4)
    (tmp_path / "FlyingChairs_train_val.txt").write_text("1\n2\n1\n2\n")
    assert [s.name for s in read_flyingchairs(tmp_path, "train")] == ["00001", "00003"]
    val = read_flyingchairs(tmp_path, "val", split_file=tmp_path / "FlyingChairs_train_val.txt")
    assert [s.name for s in val] == ["00002", "00004"]
    assert (val[0].flow[..., 0] == 2).all() and (val[0].flow[..., 1] == -1).all()
    assert len(read_flyingchairs(tmp_path)) == 4
    with pytest.raises(UsageError, match="split"):
        read_flyingchairs(tmp_path, "test")


def test_pix2gestalt_real(shared):
    samples = read_pix2gestalt(shared / "realdata" / "pix2gestalt")
    assert len(samples) == 5
    for s in samples:
        assert isinstance(s, AmodalSample)
        assert s.rgb.shape == s.whole_rgb.shape == (256, 256, 3)
        assert s.visible_mask.dtype == s.whole_mask.dtype == bool
        assert 0 < s.visible_mask.sum() < s.whole_mask.sum()
        assert (s.visible_mask & ~s.whole_mask).sum() <= 0.01 * s.visible_mask.sum()


def test_pix2gestalt_missing_mask(tmp_path):
    (tmp_path / "occlusion").mkdir()
    cv2.imwrite(str(tmp_path / "occlusion" / "7_occlusion.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="7_visible_mask.png"):
        read_pix2gestalt(tmp_path)


def test_detect_dataset(shared, tmp_path):
    real = shared / "realdata"
    assert detect_dataset(real / "hypersim") == "hypersim"
    assert detect_dataset(real / "flyingchairs") == "flyingchairs"
    assert detect_dataset(real / "pix2gestalt") == "pix2gestalt"
    with pytest.raises(InputError, match=str(tmp_path)):
        detect_dataset(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        detect_dataset(tmp_path / "nothing")
    with pytest.raises(InputError, match="no Hypersim"):
        read_hypersim(tmp_path)


def test_synthetic_samples():
    (d,) = synthetic_samples("depth", range(2, 3), 32)
    assert d.valid.all() and d.depth.shape == (32, 32) and d.name == "synthetic_000002"
    f = synthetic_samples("flow", range(2), (24, 40))
    assert len(f) == 2 and f[0].flow.shape == (24, 40, 2) and f[0].valid.all()
    (a,) = synthetic_samples("amodal", range(1), 32)
    assert a.whole_rgb.shape == (32, 32, 3) and (a.visible_mask <= a.whole_mask).all()
    with pytest.raises(UsageError, match="task"):
        synthetic_samples("segmentation", range(1), 32)
