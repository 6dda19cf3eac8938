"""Structural forecast error: the estimator `twin.forecast` uses, against the one it replaced.

The twin's forecast is widened by its structural error, measured on the strain's history: batch
i forecast at a fraction of the batch has log error e_i and the forecast's own predictive
log-variance v_i. Two estimators of the error a new batch meets:

  moments    (before 2026-11-29) s^2 = max(var(e) - mean(v), 0), b = mean(e), and a new
             error b + s sqrt(1 + 1/n) t_{n-1} on top of the model's own spread;
  posterior  (`twin.forecast._StructuralPosterior`) e_i ~ N(b, v_i + s^2) with each batch's own
             v_i, flat priors on b and s >= 0, b integrated out; the new error's posterior
             predictive.

Part 1, synthetic (always): n = 12 batches whose v_i differ by orders of magnitude
(SD 0.01 exp(1.5 z), log-normal) or are all equal, with and without a structural error; the
fraction of 2000 repeated histories in which a 13th batch's error lies in the 90 % predictive
interval (its own v plus the structural error). Nominal: 0.90.

Part 2, the plant (with `--run DIR`, the output folder of `benchmarks/forecast.py`, default
`benchmarks/.cache/forecast/out`): the same twin forecasts of the held-out IndPenSim seeds,
widened by each estimator fitted on the history's leave-out errors saved there
(`structural_errors.json`), and the coverage of the held-out truths; and each estimator's
leave-one-out coverage on the history itself. The model-only forecast of a held-out batch is
taken as log-normal from its saved median and 90 % interval (the particles are not saved), so
these coverages approximate the benchmark's own.

    python benchmarks/structural_error.py
    python benchmarks/structural_error.py --run benchmarks/.cache/forecast/out

Ends with `name: value` headline lines.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scipy import stats  # noqa: E402

from twin.forecast import ForecastErrors, _combine, _StructuralPosterior  # noqa: E402

Z90 = stats.norm.ppf(0.95)


def moments(e: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """(b, s) of the moment estimator."""
    return float(np.mean(e)), math.sqrt(max(float(np.var(e, ddof=1) - np.mean(v)), 0.0))


def moments_covers(e: np.ndarray, v: np.ndarray, e_new: float, v_new: float) -> bool:
    b, s = moments(e, v)
    n = e.size
    half = math.hypot(stats.t.ppf(0.95, n - 1) * s * math.sqrt(1 + 1 / n), Z90 * math.sqrt(v_new))
    return abs(e_new - b) <= half


def posterior_covers(e: np.ndarray, v: np.ndarray, e_new: float, v_new: float) -> bool:
    u = float(_StructuralPosterior.fit(e, v).cdf(e_new, extra_var=v_new)[0])
    return 0.05 <= u <= 0.95


def synthetic(reps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    n = 12
    for label, s_true, spread in (("uneven_v_s0", 0.0, "uneven"), ("uneven_v_s5pct", 0.05, "uneven"),
                                  ("equal_v_s2pct", 0.02, "equal"), ("no_v_s5pct", 0.05, "none")):
        hits = {"moments": 0, "posterior": 0}
        for _ in range(reps):
            if spread == "uneven":
                v = (0.01 * np.exp(1.5 * rng.standard_normal(n + 1))) ** 2
            elif spread == "equal":
                v = np.full(n + 1, 0.03**2)
            else:
                v = np.zeros(n + 1)
            e = 0.02 + np.sqrt(v + s_true**2) * rng.standard_normal(n + 1)
            hits["moments"] += moments_covers(e[:n], v[:n], e[n], v[n])
            hits["posterior"] += posterior_covers(e[:n], v[:n], e[n], v[n])
        for k, h in hits.items():
            out[f"synthetic_{label}_coverage90_{k}"] = h / reps
        print(f"synthetic {label:>16}: 90 % coverage moments {hits['moments'] / reps:.3f}, "
              f"posterior {hits['posterior'] / reps:.3f} ({reps} histories of {n} batches)")
    return out


def plant(run: Path, seed: int) -> dict:
    import pandas as pd

    saved = json.loads((run / "structural_errors.json").read_text())
    fe = ForecastErrors.from_dict(saved["errors"])
    if fe.variances is None or fe.log_ends is None:
        raise SystemExit(f"{run / 'structural_errors.json'}: saved before the errors kept their "
                         "variances; rerun benchmarks/forecast.py")
    df = pd.read_csv(run / "forecast_benchmark.csv")
    horizons = [float(h) for h in saved["horizons_h"]]
    t_end = horizons[0] / fe.fractions[0]
    rng = np.random.default_rng(seed)
    q = "total_product"
    err, var, ends = (np.asarray(fe.errors[q]), np.asarray(fe.variances[q]), np.asarray(fe.log_ends[q]))
    n = err.shape[1]
    out = {}
    for i, h in enumerate(horizons):
        pct = round(100 * h / t_end)
        w = float(fe.weight[q][i]) if fe.weight is not None else 1.0
        fit_weight = fe.weight is not None
        e_hist = ends - (ends.sum() - ends) / (n - 1)
        e_c = w * err[i] + (1 - w) * e_hist if fit_weight else err[i]
        b_m, s_m = moments(e_c, w**2 * var[i])
        # leave one out on the history, each estimator with the weight refitted on the others
        loo = {"moments": [], "posterior": []}
        for j in range(n):
            rest = np.delete(np.arange(n), j)
            c = _combine(err[i:i + 1, rest], var[i:i + 1, rest], ends[rest], fit_weight=fit_weight)
            wj = float(c.weight[0])
            r_ends = ends[rest]
            e_r = err[i, rest]
            e_j = err[i, j]
            if fit_weight:
                e_r = wj * e_r + (1 - wj) * (r_ends - (r_ends.sum() - r_ends) / (n - 2))
                e_j = wj * e_j + (1 - wj) * (ends[j] - r_ends.mean())
            loo["moments"].append(moments_covers(e_r, wj**2 * var[i, rest], e_j, wj**2 * var[i, j]))
            loo["posterior"].append(posterior_covers(e_r, wj**2 * var[i, rest], e_j, wj**2 * var[i, j]))
        rows = df[df.horizon == h]
        held = {"moments": [], "posterior": []}
        m = 20000
        for _, row in rows.iterrows():
            mu = math.log(row.model_median * 1000.0)
            sd = (math.log(row.model_q95) - math.log(row.model_q05)) / (2 * Z90)
            x = mu + sd * rng.standard_normal(m)
            if fit_weight:
                x = x + (1 - w) * (fe.reference[q] - x)
            deltas = {"moments": b_m + s_m * math.sqrt(1 + 1 / n) * rng.standard_t(n - 1, m),
                      "posterior": fe.draw(h / t_end, q, rng, m)}
            for k, d in deltas.items():
                lo, hi = np.quantile(np.exp(x + d) / 1000.0, [0.05, 0.95])
                held[k].append(lo <= row.truth <= hi)
        post = _StructuralPosterior.fit(e_c, w**2 * var[i])
        print(f"{h:g} h (twin weight {w:.2f}): structural SD moments {100 * s_m:.1f} %, posterior "
              f"{100 * post.rms_s:.1f} % (rms); history leave-one-out 90 % coverage moments "
              f"{np.mean(loo['moments']):.2f}, posterior {np.mean(loo['posterior']):.2f}; held-out "
              f"seeds ({len(rows)}) moments {np.mean(held['moments']):.3f}, posterior "
              f"{np.mean(held['posterior']):.3f}")
        out[f"structural_sd_{pct}pct_moments"] = 100 * s_m
        out[f"structural_sd_{pct}pct_posterior"] = 100 * post.rms_s
        for k in ("moments", "posterior"):
            out[f"history_loo_coverage90_{pct}pct_{k}"] = float(np.mean(loo[k]))
            out[f"heldout_coverage90_{pct}pct_{k}"] = float(np.mean(held[k]))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2000, help="synthetic histories per case")
    ap.add_argument("--run", type=Path, default=ROOT / "benchmarks/.cache/forecast/out",
                    help="output folder of benchmarks/forecast.py (skipped if absent)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    figures = synthetic(a.reps, a.seed)
    if (a.run / "structural_errors.json").is_file():
        figures.update(plant(a.run, a.seed))
    else:
        print(f"no {a.run / 'structural_errors.json'}: run benchmarks/forecast.py first for part 2")
    print()
    for k, v in figures.items():
        print(f"{k}: {v:.4g}")
    return figures


if __name__ == "__main__":
    main()
