"""Temporal alignment of video depth and the flicker metric (percept_cli.temporal)."""

import numpy as np
import pytest

from percept_cli.data.scenes import render_sequence
from percept_cli.temporal import DepthAligner, fit_affine, flicker_error


def test_fit_affine_weighted():
    rng = np.random.default_rng(0)
    src = rng.uniform(size=(8, 8))
    ref = 2.0 * src + 0.5
    ref[0, 0] = 100.0  # a bad pixel, weighted out
    w = np.ones_like(src)
    w[0, 0] = 0.0
    assert fit_affine(src, ref, w) == pytest.approx((2.0, 0.5))
    assert fit_affine(np.ones((4, 4)), ref[:4, :4]) == (1.0, 0.0)  # flat source: identity, no division by zero


def test_aligner_removes_per_frame_rescaling_and_flicker_sees_it():
    seq = render_sequence(1, 6, 40)
    gt = seq.depth  # (6, H, W) metres
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.5, 2.0, len(gt))  # each frame normalised its own way: the flicker of independent frames
    shifts = rng.uniform(-0.3, 0.3, len(gt))
    raw = np.stack([s * d + t for s, d, t in zip(scales, gt, shifts)]).astype(np.float32)
    aligner = DepthAligner()
    aligned = np.stack([aligner(d)[0] for d in raw])
    np.testing.assert_array_equal(aligned[0], raw[0])  # the first frame sets the clip's units
    assert flicker_error(gt, gt) == pytest.approx(0.0, abs=1e-12)
    before, after = flicker_error(raw, gt), flicker_error(aligned, gt)
    assert before > 0.1 and after < 0.25 * before


def test_aligner_restarts_on_a_cut_and_scales_uncertainty():
    aligner = DepthAligner()
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    aligner(a)
    out, unc = aligner(a * 0.5, np.full((8, 8), 0.1, np.float32))
    np.testing.assert_allclose(out, a, atol=1e-5)  # mapped back onto the previous frame's units
    np.testing.assert_allclose(unc, 0.2, atol=1e-5)  # uncertainty in the same units
    out, _ = aligner(-a)  # depth order reversed: no positive scale maps it, so it is taken as a cut
    np.testing.assert_array_equal(out, -a)


def test_flicker_error_shape_contract():
    with pytest.raises(ValueError, match="N >= 2"):
        flicker_error(np.zeros((1, 4, 4)), np.ones((1, 4, 4)))
