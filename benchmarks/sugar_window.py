"""Residual sugar in the sugar-limited phase: what the demo history's assays show, what the
calibrated twin reproduces, and what it costs the plant's production.

IndPenSim makes penicillin inside a window of residual sugar (pensimpy 1.2.5, Goldrick et al. 2015
J Biotechnol 193:70): P_inhib(S) = 2.5 sigma N(S; 2 mg/L, sigma = 1.5 mg/L), 1.0 at 2 mg/L,
0.80 at 1 mg/L, 0.53 at 0.3 mg/L. Where the broth sits on that window's low flank, a few tenths of
a mg/L more sugar raise production by percents, which is what a recipe that moves sugar in time
can gain. The twin's production law has S / (K_P + S + S^2/K_IP) with K_P = 0.2 mg/L instead: flat
above about 1 mg/L.

For each window of the sugar-limited phase (30-80, 96-140, 140-180, 180-230 h; 80-96 h is left out:
there the sugar of some batches rises above 10 mg/L for a few hours) this prints:
  - the history's residual-sugar level: the assays of all batches read as left-censored at 0 (the
    lab reports a negative reading as 0; 17-58 % of these assays are 0), their mean level and
    spread fitted by maximum likelihood (a Tobit model), with the level's standard error. The
    plain mean of the assays would read the zeros as exact and lie high;
  - the twin's posterior-predictive residual sugar at the same assay times (each batch with its
    own fitted batch effects, the median over draws), averaged over the assays;
  - the plant's true residual sugar at the same assay times, without the lab's noise and floor,
    where the history carries it (the demo's `truth.parquet`, which calibration never reads): a
    check on the censored level above, and where the plant's window really sits;
  - IndPenSim's window P_inhib and its log-slope (% per mg/L) at the true level (at the history's
    censored level where there is no truth), and the twin's own sugar factor
    S / (K_P + S + S^2/K_IP) and its log-slope at the twin's level.
The posterior's substrate noise CV (cv_substrate; the assays' own is 5 % plus 2 mg/L) shows how
much of the residual-sugar record the twin leaves to noise.

    python benchmarks/sugar_window.py --posterior out/demo/calibration/posterior.nc

Without --posterior the strain is calibrated first (SVI, as `twin calibrate --method svi`).
Ends with `name: value` headline lines.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRAIN = ROOT / "calibration" / "strains" / "penicillin_indpensim.toml"
WINDOWS = ((30.0, 80.0), (96.0, 140.0), (140.0, 180.0), (180.0, 230.0))
PLANT_MEAN_G_L, PLANT_SD_G_L = 0.002, 0.0015


def plant_window(s_g_L: float) -> tuple[float, float]:
    """IndPenSim's production window at residual sugar `s` (g/L) and its log-slope, % per mg/L."""
    z = (s_g_L - PLANT_MEAN_G_L) / PLANT_SD_G_L
    value = 2.5 * PLANT_SD_G_L / (PLANT_SD_G_L * math.sqrt(2.0 * math.pi)) * math.exp(-0.5 * z * z)
    slope = -(s_g_L - PLANT_MEAN_G_L) / PLANT_SD_G_L**2 * 1e-3 * 100.0
    return value, slope


def twin_factor(s_g_L: float, K_P: float, K_IP: float) -> tuple[float, float]:
    """The twin's sugar factor S / (K_P + S + S^2/K_IP) and its log-slope, % per mg/L."""
    value = s_g_L / (K_P + s_g_L + s_g_L**2 / K_IP)
    dlog = 1.0 / s_g_L - (1.0 + 2.0 * s_g_L / K_IP) / (K_P + s_g_L + s_g_L**2 / K_IP)
    return value, dlog * 1e-3 * 100.0


def censored_level(y: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood mean and SD of normal values observed left-censored at 0 (a value <= 0
    counts as "at most 0"), and the mean's standard error (from the observed information).

    Raises:
        ValueError: fewer than 3 values, or fewer than 2 above 0.
    """
    import scipy.optimize
    import scipy.stats

    y = np.asarray(y, dtype=float)
    pos = y > 0
    if y.size < 3 or pos.sum() < 2:
        raise ValueError(f"a censored fit needs at least 3 values and 2 above 0 (got {y.size}, {int(pos.sum())})")

    scale = float(np.std(y)) or 1.0  # fit in units of the readings' spread: an O(1) problem
    ys, pos_s = y / scale, pos

    def nll(theta):
        mu, log_sd = theta
        sd = np.exp(log_sd)
        return -(np.sum(scipy.stats.norm.logpdf(ys[pos_s], mu, sd))
                 + (~pos_s).sum() * scipy.stats.norm.logcdf(-mu / sd))

    res = scipy.optimize.minimize(nll, np.array([np.mean(ys), 0.0]), method="Nelder-Mead",
                                  options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 10000})
    mu, log_sd = res.x
    h = 1e-4
    d2 = (nll([mu + h, log_sd]) - 2 * nll([mu, log_sd]) + nll([mu - h, log_sd])) / h**2
    se = 1.0 / np.sqrt(d2) if d2 > 0 else float("nan")
    return float(mu * scale), float(np.exp(log_sd) * scale), float(se * scale)


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posterior", type=Path, default=None,
                    help="posterior.nc of the strain (default: calibrate now, SVI)")
    ap.add_argument("--draws", type=int, default=64)
    args = ap.parse_args(argv)

    from calibration.diagnostics import flat_draws, predictive
    from calibration.infer import calibrate, load_history, load_posterior
    from calibration.model import build_data
    from calibration.spec import load_strain

    spec = load_strain(STRAIN)
    if args.posterior is None:
        idata = calibrate(spec, method="svi").idata
    else:
        idata = load_posterior(args.posterior, model=spec.scenario.model)
    bs, recipes = load_history(spec)
    data = build_data(spec, bs, recipes)
    draws = flat_draws(idata, n=args.draws)
    pred = np.asarray(predictive(spec, data, draws, new_batches=False, noise=False)["substrate"])
    med = np.median(pred, axis=0)  # (B, G), g/L
    grid = np.asarray(data.grid)
    t_obs, y_obs, mask = (np.asarray(a) for a in (data.obs_t["substrate"], data.obs_y["substrate"],
                                                  data.obs_mask["substrate"]))
    ts, ys, twin = [], [], []
    for b in range(data.n_batches):
        tb, yb = t_obs[b][mask[b]], y_obs[b][mask[b]]
        ts.append(tb)
        ys.append(yb)
        twin.append(np.interp(tb, grid, med[b]))
    ts, ys, twin = (np.concatenate(a) for a in (ts, ys, twin))
    truth = _true_sugar(spec, data, bs)
    K_P = _production_constant(spec, draws, "K_P")
    K_IP = _production_constant(spec, draws, "K_IP")

    print(f"residual sugar, mg/L ({data.n_batches} history batches, {args.draws} posterior draws; "
          f"twin's K_P {1e3 * K_P:.2f} mg/L, K_IP {K_IP:.3g} g/L)")
    print(f"{'window h':>10} {'assays':>6} {'zeros':>6} {'history level':>15} {'spread':>7} {'true':>6} "
          f"{'twin':>6} {'plant window':>13} {'slope %/mg/L':>13} {'twin factor':>12} {'slope %/mg/L':>13}")
    head: dict[str, float] = {}
    for lo, hi in WINDOWS:
        sel = (ts >= lo) & (ts < hi)
        hm, hsd, hse = censored_level(ys[sel])
        tm = float(np.mean(twin[sel]))
        true = float(np.mean(truth[sel])) if truth is not None else float("nan")
        pw, ps = plant_window(true if truth is not None else hm)
        tf, tsl = twin_factor(tm, K_P, K_IP)
        print(f"{lo:4.0f}-{hi:<5.0f} {int(sel.sum()):6d} {np.mean(ys[sel] <= 0):6.2f} {1e3 * hm:8.2f} +-{1e3 * hse:4.2f} "
              f"{1e3 * hsd:7.2f} {1e3 * true:6.2f} {1e3 * tm:6.2f} {pw:13.2f} {ps:+13.1f} {tf:12.2f} {tsl:+13.1f}")
        tag = f"{lo:.0f}_{hi:.0f}h"
        head[f"history_sugar_{tag}_mg_L"] = round(1e3 * hm, 2)
        if truth is not None:
            head[f"true_sugar_{tag}_mg_L"] = round(1e3 * true, 2)
        head[f"twin_sugar_{tag}_mg_L"] = round(1e3 * tm, 2)
        head[f"plant_window_slope_{tag}_pct_per_mg_L"] = round(ps, 1)
        head[f"twin_factor_slope_{tag}_pct_per_mg_L"] = round(tsl, 1)
    if "cv_substrate" in draws:
        head["posterior_cv_substrate"] = round(float(np.mean(draws["cv_substrate"])), 3)
    if "sd_substrate" in draws:
        head["posterior_sd_substrate_mg_L"] = round(1e3 * float(np.mean(draws["sd_substrate"])), 2)
    print()
    for k, v in head.items():
        print(f"{k}: {v}")
    return head


def _true_sugar(spec, data, bs) -> np.ndarray | None:
    """The plant's noise-free residual sugar (g/L) at each substrate assay, in the order `main`
    collects the assays (batch by batch), from `truth.parquet` beside the history; None where
    the history has none. The truth is recorded at the assay times, in g/L."""
    import pandas as pd

    path = spec.data_dir / "truth.parquet" if spec.data_dir is not None else None
    if path is None or not path.is_file():
        return None
    t = pd.read_parquet(path)
    t = t[t["variable"] == "substrate"]
    if set(t["unit"]) != {"g/L"}:
        raise ValueError(f"{path}: field 'unit': residual sugar must be in g/L, got {sorted(set(t['unit']))}")
    out = []
    for b, batch in enumerate(data.batches):
        mask = np.asarray(data.obs_mask["substrate"][b])
        tb = np.asarray(data.obs_t["substrate"][b])[mask]
        g = t[t["batch"] == batch].sort_values("time_h")
        if g.empty:
            return None
        out.append(np.interp(tb, g["time_h"].to_numpy(), g["value"].to_numpy()))
    return np.concatenate(out)


def _production_constant(spec, draws: dict, key: str) -> float:
    """A production constant (`K_P`, `K_IP`): its posterior median where the strain fits it, else
    the scenario's value."""
    from twin.reactor import get_parameter

    for p in spec.priors:
        if p.key == key:
            return float(np.median(draws[key]))
    return float(get_parameter(spec.scenario.model, f"kinetics.{key}"))


if __name__ == "__main__":
    main()
