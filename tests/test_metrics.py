import cv2
import numpy as np
import pytest

from percept_cli import baselines
from percept_cli.metrics import aggregate, depth_metrics, fit_scale_shift, flow_epe, mask_iou


def test_fit_scale_shift_recovers_an_affine_map():
    pred = np.random.default_rng(0).uniform(0, 1, (8, 9))
    valid = np.ones(pred.shape, bool)
    valid[0] = False
    gt = np.where(valid, 2.5 * pred + 3.0, 1e6)  # invalid pixels must not pull the fit
    scale, shift = fit_scale_shift(pred, gt, valid)
    assert scale == pytest.approx(2.5) and shift == pytest.approx(3.0)


@pytest.mark.parametrize("scale,shift", [(0.01, 5.0), (-3.0, 40.0), (1000.0, -7.0)])
def test_depth_metrics_affine_prediction_is_perfect(scale, shift):
    gt = np.random.default_rng(1).uniform(1, 10, (16, 16))
    pred = (gt - shift) / scale  # gt = scale * pred + shift
    m = depth_metrics(pred, gt, np.ones(gt.shape, bool))
    assert m["abs_rel"] == pytest.approx(0, abs=1e-9)
    assert m["delta1"] == 1.0


def test_depth_metrics_hand_computed():
    # pred (0, 1, 2) against gt (1, 2, 4): scale 3/2, shift 5/6, aligned (5/6, 7/3, 23/6);
    # relative errors 1/6, 1/6, 1/24 -> AbsRel 1/8; every ratio under 1.25 -> delta1 1.
    m = depth_metrics(np.array([[0.0, 1.0, 2.0]]), np.array([[1.0, 2.0, 4.0]]), np.ones((1, 3), bool))
    assert m["abs_rel"] == pytest.approx(0.125)
    assert m["delta1"] == 1.0
    # pred (0, 1, 0, 1) is uncorrelated with gt (1, 1, 4, 4): aligned to the mean 2.5 everywhere;
    # AbsRel = (1.5 + 1.5 + 0.375 + 0.375) / 4 = 0.9375; ratios 2.5 and 1.6 all fail delta1.
    m = depth_metrics(np.array([[0.0, 1.0, 0.0, 1.0]]), np.array([[1.0, 1.0, 4.0, 4.0]]), np.ones((1, 4), bool))
    assert m["abs_rel"] == pytest.approx(0.9375)
    assert m["delta1"] == 0.0


def test_depth_metrics_ignores_invalid_and_clips_negative_predictions():
    gt = np.array([[1.0, 2.0, 4.0, 0.0]])
    pred = np.array([[0.0, 1.0, 2.0, 99.0]])
    m = depth_metrics(pred, gt, np.ones(gt.shape, bool))  # gt 0 cannot count, even if marked valid
    assert m["abs_rel"] == pytest.approx(0.125)
    # The best affine fit goes negative at the first pixel: it is clipped to the minimum depth.
    gt, pred = np.array([[1.0, 1.0, 1.0, 20.0]]), np.array([[-30.0, 0.0, 0.0, 20.0]])
    scale, shift = fit_scale_shift(pred, gt, np.ones(gt.shape, bool))
    aligned = scale * pred + shift
    assert aligned.min() < 0
    expected = np.mean(np.abs(np.maximum(aligned, 1e-3) - gt) / gt)
    m = depth_metrics(pred, gt, np.ones(gt.shape, bool), min_depth=1e-3)
    assert m["abs_rel"] == pytest.approx(expected)


def test_flow_epe():
    gt = np.zeros((4, 5, 2), np.float32)
    pred = gt + np.array([3.0, 4.0], np.float32)
    assert flow_epe(pred, gt) == pytest.approx(5.0)
    valid = np.zeros((4, 5), bool)
    valid[0, 0] = True
    pred[0, 0] = (0.0, 1.0)
    assert flow_epe(pred, gt, valid) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        flow_epe(pred[:2], gt)


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert mask_iou(a, b) == 1.0
    a[0, :4] = True  # 4 pixels
    assert mask_iou(a, b) == 0.0
    b[0, 2:4] = b[1, 2:4] = True  # 4 pixels, 2 shared -> 2 / 6
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a.astype(np.uint8) * 255, b) == pytest.approx(1 / 3)


def test_aggregate():
    out = aggregate([{"abs_rel": 0.1, "delta1": 0.5}, {"abs_rel": 0.3}])
    assert out == {"abs_rel": pytest.approx(0.2), "delta1": pytest.approx(0.5)}
    assert aggregate([]) == {}


def test_ramp_and_zero_baselines_exact():
    np.testing.assert_array_equal(baselines.ramp_depth(5, 2), np.repeat([[1.0], [0.75], [0.5], [0.25], [0.0]], 2, 1))
    assert baselines.ramp_depth(1, 3).tolist() == [[0.0, 0.0, 0.0]]
    assert baselines.zero_flow(2, 3).shape == (2, 3, 2) and not baselines.zero_flow(2, 3).any()
    visible = np.array([[0, 1], [2, 0]])
    amodal = baselines.visible_as_amodal(visible)
    assert amodal.dtype == bool and amodal.tolist() == [[False, True], [True, False]]
    amodal[0, 0] = True
    assert visible[0, 0] == 0  # a copy, not a view


def test_dis_flow_finds_a_known_shift_forward_in_pixels():
    """Frame 2 is frame 1 moved 3 px right and 2 px up: the flow 1 -> 2 is (+3, -2) (u right, v down)."""
    noise = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)
    tex = cv2.GaussianBlur(noise, (0, 0), 2.0)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX)
    rgb1 = np.repeat(tex[..., None], 3, axis=2)
    rgb2 = np.roll(rgb1, (-2, 3), axis=(0, 1))
    flow = baselines.dis_flow(rgb1, rgb2)
    assert flow.shape == (96, 96, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(np.median(flow[16:-16, 16:-16].reshape(-1, 2), axis=0), [3.0, -2.0], atol=0.25)
    with pytest.raises(ValueError, match="one shape"):
        baselines.dis_flow(rgb1, rgb1[:-1])
