"""Ensembling reducers: shape contracts and what each reduction must recover."""

import cv2
import numpy as np
import pytest

from percept_cli.ensemble import AMODAL_THRESHOLD, amodal_soft, ensemble_amodal, ensemble_depth, ensemble_flow, lower_median


def test_lower_median_matches_torch_convention():
    x = np.array([[1.0], [4.0], [2.0], [3.0]])
    assert lower_median(x)[0] == 2.0


def test_depth_alignment_recovers_affine_copies():
    rng = np.random.default_rng(0)
    base = rng.random((40, 60)).astype(np.float32)
    members = np.stack([base * s + t for s, t in [(1, 0), (2.0, 0.5), (0.5, -0.2), (3.0, 1.0)]])  # (E, H, W)
    depth, unc = ensemble_depth(members)
    want = (base - base.min()) / (base.max() - base.min())
    np.testing.assert_allclose(depth, want, atol=2e-2)
    assert depth.min() == 0.0 and depth.max() == pytest.approx(1.0)
    assert unc.shape == (40, 60) and unc.mean() < 0.02
    depth_mean, std = ensemble_depth(members, reduction="mean")
    np.testing.assert_allclose(depth_mean, want, atol=2e-2)


def test_depth_single_member_and_contract():
    d, u = ensemble_depth(np.linspace(2, 4, 12, dtype=np.float32).reshape(1, 3, 4))
    assert u is None and d.min() == 0 and d.max() == pytest.approx(1)
    with pytest.raises(ValueError, match=r"\(E, H, W\)"):
        ensemble_depth(np.zeros((3, 4)))


def test_flow_reducers_and_spread():
    flow = np.zeros((3, 5, 6, 2), np.float32)
    flow[:, ..., 0] = np.array([1.0, 2.0, 6.0])[:, None, None]
    mean, spread = ensemble_flow(flow)
    np.testing.assert_allclose(mean[..., 0], 3.0)
    np.testing.assert_allclose(spread, np.sqrt((4 + 1 + 9) / 3), rtol=1e-6)
    med, _ = ensemble_flow(flow, reduction="median")
    np.testing.assert_allclose(med[..., 0], 2.0)
    with pytest.raises(ValueError, match=r"\(E, H, W, 2\)"):
        ensemble_flow(np.zeros((3, 5, 6, 3)))


def test_amodal_threshold_recovers_whole_mask_on_real_data(shared):
    root = shared / "realdata" / "pix2gestalt"
    ious = []
    for path in sorted((root / "whole").glob("*_whole.png")):
        n = path.name.split("_")[0]
        rgb = cv2.imread(str(path))[..., ::-1].astype(np.float32) / 127.5 - 1  # (H, W, 3) in [-1, 1]
        gt = cv2.imread(str(root / "whole_mask" / f"{n}_whole_mask.png"), cv2.IMREAD_GRAYSCALE) > 127
        red = ensemble_amodal(rgb[None])
        ious.append((red.mask & gt).sum() / (red.mask | gt).sum())
    assert len(ious) == 5 and min(ious) > 0.97, ious


def test_amodal_median_and_uncertainty():
    white = np.ones((4, 4, 3), np.float32)
    black = -white
    members = np.stack([white, black, black])  # 2 of 3 members say foreground everywhere
    red = ensemble_amodal(members)
    assert red.mask.all() and red.soft.min() > 0.99
    np.testing.assert_allclose(red.uncertainty, 1 / 3)
    assert amodal_soft(np.full((1, 3), (AMODAL_THRESHOLD / 127.5) - 1, np.float32))[0] == pytest.approx(0.5, abs=1e-4)
