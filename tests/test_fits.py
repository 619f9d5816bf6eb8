"""Power-law fits on synthetic data with a known exponent, and claims that follow the numbers."""

import numpy as np
import pytest

from percept_cli.fits import claims, fit_all, is_power_law, power_law

X = np.geomspace(1e9, 1e13, 8)


def test_exact_power_law_is_recovered_with_r2_one():
    fit = power_law(X, 3.0 * X**-0.25)
    assert fit["exponent"] == pytest.approx(-0.25, abs=1e-12)
    assert fit["prefactor"] == pytest.approx(3.0, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    assert fit["exponent_ci"] == pytest.approx([-0.25, -0.25], abs=1e-12)  # every resample is exact
    assert fit["n"] == 8 and fit["resamples"] > 990 and is_power_law(fit)


def test_noisy_power_law_interval_contains_truth_and_is_seeded():
    rng = np.random.default_rng(0)
    y = 0.5 * X**-0.1 * np.exp(rng.normal(0, 0.05, X.size))
    fit = power_law(X, y, seed=3)
    lo, hi = fit["exponent_ci"]
    assert lo < -0.1 < hi and hi - lo < 0.05
    assert fit["exponent"] == pytest.approx(-0.1, abs=0.02) and 0.8 < fit["r2"] < 1.0
    assert power_law(X, y, seed=3) == fit  # same seed, same interval


def test_interval_coverage_over_many_noisy_datasets():
    """A 95% interval should contain the true exponent in most repetitions (percentile bootstrap on 12 points)."""
    rng = np.random.default_rng(1)
    x = np.geomspace(1, 1e4, 12)
    hits = 0
    for i in range(40):
        y = 2.0 * x**-0.3 * np.exp(rng.normal(0, 0.1, x.size))
        lo, hi = power_law(x, y, resamples=400, seed=i)["exponent_ci"]
        hits += lo <= -0.3 <= hi
    assert hits >= 32, hits


@pytest.mark.parametrize("x,y,match", [
    ([1, 2], [1, 2], "at least 3"),
    ([1, 2, 3], [1, 0, 2], "positive"),
    ([2, 2, 2], [1, 2, 3], "same"),
    ([1, 2, 3], [1, 2], "one y per x"),
])
def test_bad_inputs_name_the_problem(x, y, match):
    with pytest.raises(ValueError, match=match):
        power_law(x, y)


# -- claims follow the numbers -------------------------------------------------------------------


def _point(name, kind, params, loss, base=None, experts=0, flops=None):
    flops = flops or 6.0 * params * 1e4
    metrics = dict(val_loss=loss, depth_abs_rel=loss / 2, depth_delta1=1 - loss, flow_epe=10 * loss, amodal_iou=1 - loss / 3)
    return dict(name=name, kind=kind, base=base, params=params, active_params=params, experts=experts,
                top_k=1 if experts else 0, forward_flops=flops / 3e4, train_flops=flops, total_train_flops=flops,
                metrics=metrics)


def _results(moe_loss, up_loss, cosine_err):
    dense = [_point(f"d{i}", "dense", p, 0.4 * (p / 1e5) ** -0.2) for i, p in enumerate([1e5, 3e5, 1e6, 3e6])]
    d1 = dense[1]
    moe = _point("m", "moe", 4 * d1["params"], moe_loss, base="d1", experts=4, flops=d1["train_flops"])
    up = _point("u", "upcycled", 4 * d1["params"], up_loss, base="d1", experts=4, flops=d1["train_flops"])
    up["total_train_flops"] = 2 * up["train_flops"]
    sweeps = []
    for s in (1, 2, 5, 10, 20):  # error ~ s^-0.3: a power law with diminishing returns
        sweeps.append(dict(task="depth", axes=["steps"], schedule="cosine+trailing", steps=s, test_flops=1e6 * s,
                           metrics=dict(depth_abs_rel=0.2 * s**-0.3)))
    for fam, err in (("linear", 0.2), ("scaled_linear", 0.15), ("cosine", cosine_err)):
        sweeps.append(dict(task="depth", axes=["schedule"], schedule=f"{fam}+trailing", steps=10, test_flops=1e7,
                           metrics=dict(depth_abs_rel=err)))
    return dict(study=dict(train=dict(beta_schedule="squaredcos_cap_v2")), train=dense + [moe, up],
                sweeps=dict(points=sweeps))


def _verdicts(results):
    return {c["key"]: c["verdict"] for c in claims(results)}


def test_claims_follow_the_numbers():
    base_loss = 0.4 * 3 ** -0.2
    good = _verdicts(_results(moe_loss=0.8 * base_loss, up_loss=0.7 * base_loss, cosine_err=0.1))
    assert good == dict(train_power_law="agrees", moe="agrees", upcycling="agrees", test_time="partly", cosine="agrees")
    # test_time is "partly": the steps sweep follows a law, the ensemble sweep was not run (not fitted).
    bad = _verdicts(_results(moe_loss=1.2 * base_loss, up_loss=1.5 * base_loss, cosine_err=0.3))
    assert bad["moe"] == "disagrees" and bad["upcycling"] == "disagrees" and bad["cosine"] == "disagrees"
    tie = _verdicts(_results(moe_loss=1.005 * base_loss, up_loss=1.001 * base_loss, cosine_err=0.1))
    assert tie["moe"] == "inconclusive" and tie["upcycling"] == "inconclusive"  # within TIE (1%)


def test_fit_all_keys_and_skips():
    res = _results(0.1, 0.1, 0.1)
    fits = fit_all(res)
    f = fits["train"]["val_loss_vs_train_flops"]
    assert {"exponent", "prefactor", "r2", "exponent_ci", "prefactor_ci"} <= set(f)
    assert f["exponent"] == pytest.approx(-0.2)
    assert "skipped" in fits["sweeps"]["ensemble"]["depth_abs_rel_vs_test_flops"]
    assert fits["comparisons"]["returns"]["steps"]["depth_abs_rel"]["diminishing"] is True
    res["train"] = []
    assert _verdicts(res)["train_power_law"] == "not tested"
