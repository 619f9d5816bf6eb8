"""Power-law fits and the paper's claims, over the plain dicts of results.json (numpy only, no torch).

A fit is y = a * x^b by least squares on (log x, log y): exponent b, prefactor a, R^2 in log space,
and a percentile bootstrap interval (resample the points with replacement, refit; seeded).
Quantities are errors, lower is better: metrics where higher is better enter as 1 - value
(`depth_delta1_err` = 1 - delta1, `amodal_iou_err` = 1 - IoU), so an improving law has b < 0.

`claims(results)` turns the numbers into one verdict per claim of the paper (agrees, partly,
disagrees, inconclusive, not tested) with the evidence; the report prints them and nothing else
decides them. The rules are the constants below: R2_MIN for a power law, TIE for comparisons.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# name -> (metric key in a point's "metrics", enters as 1 - value)
QUANTITIES: dict[str, tuple[str, bool]] = {
    "val_loss": ("val_loss", False),
    "depth_abs_rel": ("depth_abs_rel", False),
    "depth_delta1_err": ("depth_delta1", True),
    "flow_epe": ("flow_epe", False),
    "amodal_iou_err": ("amodal_iou", True),
}
TASK_QUANTITIES = tuple(q for q in QUANTITIES if q != "val_loss")
TRAIN_AXES = ("train_flops", "params")
SWEEP_AXES = ("steps", "ensemble", "resolution")  # fitted against test_flops; "schedule" is categorical

R2_MIN = 0.8  # a fit counts as a power law when R^2 >= this and the exponent's interval excludes 0
TIE = 0.01  # relative differences under 1% count as ties in comparisons (a set threshold, not measured noise)
RESAMPLES = 1000
LEVEL = 0.95
VERDICTS = ("agrees", "partly", "disagrees", "inconclusive", "not tested")

# What the paper reports, for the evidence lines (third-party summaries; see shared/paper.md).
PAPER = {
    "pretrain_loss_exponent": -0.0098,  # L(C) = 0.23 * C^-0.0098
    "upcycle_abs_rel_gain": 0.05,  # upcycling improved depth AbsRel by about 5% on average
}


# -- 1. the fit ----------------------------------------------------------------------------------


def power_law(x, y, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict[str, Any]:
    """Fit y = a * x^b in log-log space; bootstrap interval of b and a over resampled points.

    Returns exponent, prefactor, r2, exponent_ci [lo, hi], prefactor_ci, ci_level, resamples (the
    resamples used: those with two distinct x), n. ValueError on fewer than 3 points, non-positive
    values or a single distinct x.
    """
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"power_law: x has {x.size} values but y has {y.size}; pass one y per x")
    if x.size < 3:
        raise ValueError(f"power_law: {x.size} point(s); a fit with an interval needs at least 3")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise ValueError("power_law: x and y must be finite and positive (log-log fit); drop the other points")
    lx, ly = np.log(x), np.log(y)
    if np.ptp(lx) == 0:
        raise ValueError("power_law: every x is the same; vary x to fit an exponent")
    b, log_a = _line(lx[None], ly[None])
    b, log_a = float(b[0]), float(log_a[0])
    resid = ly - (log_a + b * lx)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    ss_res = float((resid**2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0  # a constant y: nothing for x to explain
    # Bootstrap: resample points with replacement, refit; drop resamples with one distinct x.
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))  # (R, n)
    keep = np.ptp(lx[idx], axis=1) > 0
    bs, las = _line(lx[idx[keep]], ly[idx[keep]])
    q = [50 * (1 - level), 50 * (1 + level)]
    blo, bhi = np.percentile(bs, q) if bs.size else (b, b)
    alo, ahi = np.exp(np.percentile(las, q)) if las.size else (math.exp(log_a), math.exp(log_a))
    return dict(exponent=b, prefactor=math.exp(log_a), r2=r2, exponent_ci=[float(blo), float(bhi)],
                prefactor_ci=[float(alo), float(ahi)], ci_level=level, resamples=int(keep.sum()), n=int(x.size))


def _line(lx: np.ndarray, ly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of each row: lx, ly (R, n) -> (R,), (R,)."""
    mx, my = lx.mean(axis=1, keepdims=True), ly.mean(axis=1, keepdims=True)
    slope = ((lx - mx) * (ly - my)).sum(axis=1) / ((lx - mx) ** 2).sum(axis=1)
    return slope, my[:, 0] - slope * mx[:, 0]


def predict(fit: dict[str, Any], x: float) -> float:
    return fit["prefactor"] * x ** fit["exponent"]


def is_power_law(fit: dict[str, Any] | None) -> bool:
    """An improving power law: b < 0 with its interval below 0, and R^2 >= R2_MIN."""
    return bool(fit and "exponent" in fit and fit["exponent_ci"][1] < 0 and fit["r2"] >= R2_MIN)


# -- 2. points -> quantities -> fits -------------------------------------------------------------


def quantity(point: dict[str, Any], name: str) -> float | None:
    """The fitted (error) form of a metric of a point; None when the point lacks it."""
    key, flip = QUANTITIES[name]
    value = point.get("metrics", {}).get(key)
    if value is None or not math.isfinite(value):
        return None
    return 1.0 - value if flip else float(value)


def fit_points(points: list[dict[str, Any]], x_key: str, name: str, seed: int = 0) -> dict[str, Any]:
    """Fit `name` against point[x_key] over the points that have a positive value; else a skip note."""
    pairs = [(p[x_key], quantity(p, name)) for p in points if p.get(x_key)]
    pairs = [(x, y) for x, y in pairs if y is not None and y > 0]
    base = dict(x=x_key, y=name)
    if len(pairs) < 3 or len({x for x, _ in pairs}) < 2:
        return dict(base, n=len(pairs), skipped=f"{len(pairs)} usable point(s) with distinct x; a fit needs 3")
    x, y = zip(*pairs)
    return dict(base, **power_law(x, y, seed=seed))


def fit_all(results: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Every fit and comparison of a study, from its points.

    train:   dense family, each quantity against train_flops and params ("{q}_vs_{x}")
    sweeps:  per axis (steps, ensemble, resolution), each task quantity against test_flops
    comparisons: moe_vs_dense, upcycled (vs scratch MoE, vs parent, vs the dense fit at equal
             compute), schedules (best family per spacing/zero-SNR setting), returns (gain per
             decade of test FLOPs, first vs last segment)
    """
    train = results.get("train", [])
    dense = sorted((p for p in train if p["kind"] == "dense"), key=lambda p: p["params"])
    fits_train = {f"{q}_vs_{x}": fit_points(dense, x, q, seed) for x in TRAIN_AXES for q in QUANTITIES}
    sweep_points = results.get("sweeps", {}).get("points", [])
    fits_sweeps: dict[str, Any] = {}
    for axis in SWEEP_AXES:
        pts = [p for p in sweep_points if axis in p["axes"]]
        fits_sweeps[axis] = {f"{q}_vs_test_flops": fit_points(pts, "test_flops", q, seed) for q in TASK_QUANTITIES}
    comparisons = dict(
        moe_vs_dense=_moe_vs_dense(train, fits_train),
        upcycled=_upcycled(train, fits_train),
        schedules=_schedules(sweep_points),
        returns={axis: _returns([p for p in sweep_points if axis in p["axes"]]) for axis in ("steps", "ensemble")},
    )
    return dict(train=fits_train, sweeps=fits_sweeps, comparisons=comparisons)


# -- 3. comparisons ------------------------------------------------------------------------------


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per quantity both values and a's gain over b, 1 - a/b (positive: a has the lower error)."""
    out = {}
    for q in QUANTITIES:
        va, vb = quantity(a, q), quantity(b, q)
        if va is not None and vb is not None and vb > 0:
            out[q] = dict(a=va, b=vb, gain=1.0 - va / vb)
    return out


def _outcome(table: dict[str, dict[str, float]]) -> tuple[str, str]:
    """better / worse / tie for a comparison table (more quantities won than lost beyond TIE), and a summary."""
    wins = sum(v["gain"] > TIE for v in table.values())
    losses = sum(v["gain"] < -TIE for v in table.values())
    outcome = "better" if wins > losses else "worse" if losses > wins else "tie"
    return outcome, f"{outcome}: better on {wins}, worse on {losses}, within {TIE:.0%} on {len(table) - wins - losses}"


def _pair_verdict(outcomes: list[str]) -> str:
    if not outcomes:
        return "not tested"
    if all(o == "better" for o in outcomes):
        return "agrees"
    if all(o == "tie" for o in outcomes):
        return "inconclusive"
    return "partly" if "better" in outcomes else "disagrees"


def _vs_fit(point: dict[str, Any], fits_train: dict[str, Any], x_key: str) -> dict[str, dict[str, float]]:
    """Gain of a point over the dense family's fitted law at the point's own compute."""
    out = {}
    for q in QUANTITIES:
        fit, v = fits_train.get(f"{q}_vs_train_flops"), quantity(point, q)
        if fit and "exponent" in fit and v is not None:
            expect = predict(fit, point[x_key])
            out[q] = dict(a=v, b=expect, gain=1.0 - v / expect)
    return out


def _moe_vs_dense(train: list[dict], fits_train: dict) -> list[dict[str, Any]]:
    by_name = {p["name"]: p for p in train}
    out = []
    for p in train:
        if p["kind"] != "moe" or p.get("base") not in by_name:
            continue
        d = by_name[p["base"]]
        out.append(dict(moe=p["name"], dense=d["name"], forward_flops_ratio=p["forward_flops"] / d["forward_flops"],
                        train_flops_ratio=p["train_flops"] / d["train_flops"], params_ratio=p["params"] / d["params"],
                        metrics=compare(p, d), vs_dense_fit=_vs_fit(p, fits_train, "train_flops")))
    return out


def _upcycled(train: list[dict], fits_train: dict) -> list[dict[str, Any]]:
    by_name = {p["name"]: p for p in train}
    out = []
    for p in train:
        if p["kind"] != "upcycled":
            continue
        scratch = next((s for s in train if s["kind"] == "moe" and s.get("base") == p.get("base")
                        and s["experts"] == p["experts"] and s["top_k"] == p["top_k"]), None)
        parent = by_name.get(p.get("base"))
        row: dict[str, Any] = dict(upcycled=p["name"], parent=p.get("base"), scratch=scratch and scratch["name"],
                                   vs_dense_fit=_vs_fit(p, fits_train, "total_train_flops"))
        if scratch:
            row.update(vs_scratch=compare(p, scratch), compute_ratio=p["total_train_flops"] / scratch["total_train_flops"])
        if parent:
            row.update(vs_parent=compare(p, parent))
        out.append(row)
    return out


def _schedules(points: list[dict]) -> dict[str, Any]:
    """Best schedule per quantity, and which family wins at each matched (spacing, zero-SNR) setting."""
    pts = [p for p in points if "schedule" in p["axes"]]
    out: dict[str, Any] = {}
    for q in TASK_QUANTITIES:
        vals = {p["schedule"]: quantity(p, q) for p in pts if quantity(p, q) is not None}
        if not vals:
            continue
        settings: dict[str, dict[str, float]] = {}
        for sched, v in vals.items():
            family, _, rest = sched.partition("+")
            settings.setdefault(rest or "default", {})[family] = v
        winners = {s: min(fam, key=fam.get) for s, fam in settings.items() if len(fam) > 1}
        out[q] = dict(values=vals, best=min(vals, key=vals.get), winners=winners)
    return out


def _returns(points: list[dict]) -> dict[str, Any]:
    """Error gained per decade of test FLOPs on the first and the last segment of a sweep."""
    out = {}
    for q in TASK_QUANTITIES:
        pairs = sorted((p["test_flops"], quantity(p, q)) for p in points if quantity(p, q) is not None)
        if len(pairs) < 3:
            continue
        gains = [(y0 - y1) / math.log10(x1 / x0) for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]) if x1 > x0]
        if len(gains) < 2:
            continue
        out[q] = dict(first_gain_per_decade=gains[0], last_gain_per_decade=gains[-1],
                      diminishing=bool(gains[0] > 0 and gains[-1] < gains[0]),
                      best_test_flops=min(pairs, key=lambda t: t[1])[0])
    return out


# -- 4. claims -----------------------------------------------------------------------------------


def _verdict(hits: int, total: int) -> str:
    if total == 0:
        return "not tested"
    return "agrees" if hits == total else "disagrees" if hits == 0 else "partly"


def _fmt_fit(fit: dict[str, Any], x: str) -> str:
    if "exponent" not in fit:
        return f"{fit['y']}: not fitted ({fit['skipped']})"
    lo, hi = fit["exponent_ci"]
    return (f"{fit['y']} = {fit['prefactor']:.3g} * {x}^{fit['exponent']:.4f} "
            f"({int(fit['ci_level'] * 100)}% CI of the exponent [{lo:.4f}, {hi:.4f}]), R^2 = {fit['r2']:.3f}, "
            f"n = {fit['n']}: {'a power law' if is_power_law(fit) else 'not a clean power law'}")


def _fmt_gains(table: dict[str, dict[str, float]]) -> str:
    parts = [f"{q} {v['a']:.4g} vs {v['b']:.4g} ({100 * v['gain']:+.1f}%)" for q, v in table.items()]
    return "; ".join(parts) or "no metrics"


def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per claim of the paper: claim, verdict, evidence lines, all computed from results."""
    fits = results.get("fits") or fit_all(results)
    out = []

    # 1. power law in training compute (dense family)
    ev, hits, total = [], 0, 0
    for q in QUANTITIES:
        fit = fits["train"][f"{q}_vs_train_flops"]
        ev.append(_fmt_fit(fit, "C"))
        if "exponent" in fit:
            total += 1
            hits += is_power_law(fit)
    for q in QUANTITIES:
        ev.append("against parameters: " + _fmt_fit(fits["train"][f"{q}_vs_params"], "N"))
    vl = fits["train"]["val_loss_vs_train_flops"]
    if "exponent" in vl:
        ev.append(f"the paper's pre-training loss exponent is {PAPER['pretrain_loss_exponent']} (third-party "
                  f"summary); ours for the validation loss is {vl['exponent']:.4f}")
    out.append(dict(key="train_power_law", claim="Performance follows a power law in training compute",
                    verdict=_verdict(hits, total), evidence=ev))

    # 2. MoE better than dense at equal active compute
    ev, outcomes = [], []
    for row in fits["comparisons"]["moe_vs_dense"]:
        if not row["metrics"]:
            continue
        outcome, summary = _outcome(row["metrics"])
        outcomes.append(outcome)
        ev.append(f"{row['moe']} vs {row['dense']} (forward FLOPs x{row['forward_flops_ratio']:.3f}, parameters "
                  f"x{row['params_ratio']:.2f}): MoE {summary}: {_fmt_gains(row['metrics'])}")
    out.append(dict(key="moe", claim="MoE beats dense at equal active compute", verdict=_pair_verdict(outcomes),
                    evidence=ev))

    # 3. upcycling helps
    ev, outcomes = [], []
    for row in fits["comparisons"]["upcycled"]:
        if row.get("vs_scratch"):  # the fair partner: the same MoE from scratch; else the dense parent
            ref, name = row["vs_scratch"], row["scratch"]
        else:
            ref, name = row.get("vs_parent"), row["parent"]
        if ref:
            outcome, summary = _outcome(ref)
            outcomes.append(outcome)
            ev.append(f"{row['upcycled']} vs {name}: upcycled {summary}: {_fmt_gains(ref)}")
        if row.get("compute_ratio"):
            ev.append(f"the upcycled run used x{row['compute_ratio']:.2f} the training FLOPs of the scratch MoE "
                      f"(its dense parent's included)")
        if row.get("vs_parent"):
            ev.append(f"vs its dense parent {row['parent']}: {_fmt_gains(row['vs_parent'])}"
                      f" (paper: about {PAPER['upcycle_abs_rel_gain']:.0%} better depth AbsRel, third-party)")
        if row.get("vs_dense_fit"):
            ev.append(f"vs the dense law at the same total compute: {_fmt_gains(row['vs_dense_fit'])}")
    out.append(dict(key="upcycling", claim="Upcycling a dense model to MoE helps", verdict=_pair_verdict(outcomes),
                    evidence=ev))

    # 4. steps and ensembling: power laws with diminishing returns (both axes, else at most "partly")
    ev, hits, total, axes = [], 0, 0, 0
    for axis in ("steps", "ensemble"):
        fitted = [q for q in TASK_QUANTITIES if "exponent" in fits["sweeps"][axis][f"{q}_vs_test_flops"]]
        axes += bool(fitted)
        if not fitted:
            ev.append(f"{axis}: no fit (sweep not run or too few points)")
            continue
        for q in TASK_QUANTITIES:
            fit = fits["sweeps"][axis][f"{q}_vs_test_flops"]
            ret = fits["comparisons"]["returns"][axis].get(q)
            if "exponent" not in fit:
                ev.append(f"{axis}: " + _fmt_fit(fit, "F"))
                continue
            total += 1
            ok = is_power_law(fit) and bool(ret and ret["diminishing"])
            hits += ok
            dim = (f"; gain per decade of FLOPs {ret['first_gain_per_decade']:.3g} first, "
                   f"{ret['last_gain_per_decade']:.3g} last: {'diminishing' if ret['diminishing'] else 'not diminishing'}"
                   if ret else "")
            ev.append(f"{axis}: " + _fmt_fit(fit, "F") + dim)
    verdict = _verdict(hits, total)
    out.append(dict(key="test_time", claim="More steps and larger ensembles follow power laws with diminishing returns",
                    verdict="partly" if verdict == "agrees" and axes < 2 else verdict, evidence=ev))

    # 5. cosine schedule best
    ev, wins, total = [], 0, 0
    for q, row in fits["comparisons"]["schedules"].items():
        for setting, fam in row["winners"].items():
            total += 1
            wins += fam == "cosine"
        ev.append(f"{q}: best {row['best']} ({row['values'][row['best']]:.4g}); best family per setting: "
                  + ", ".join(f"{s}: {f}" for s, f in row["winners"].items()))
    if total:
        verdict = "agrees" if wins * 2 > total else "disagrees" if wins == 0 else "partly"
        ev.append(f"cosine wins {wins} of {total} matched comparisons")
    else:
        verdict = "not tested"
    trained = results.get("study", {}).get("train", {}).get("beta_schedule")
    if trained:
        ev.append(f"the model was trained with beta_schedule={trained!r}; a test-time schedule matching "
                  f"training has an advantage")
    out.append(dict(key="cosine", claim="The cosine noise schedule is best at test time", verdict=verdict, evidence=ev))
    return out
