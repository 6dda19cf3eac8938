"""Where the IndPenSim scenario's volume constants come from: the demo history's volume record.

The twin's volume balance is $dV/dt = F_S + \\phi_{oil} F_{oil} + F_{prec} + F_W + F_{acid} +
F_{base} - F_{draw} - E$. Two of its terms are not measured: how much broth volume an oil feed adds
($\\phi_{oil}$, `feeds.oil_volume_fraction`) and the evaporation $E$. This script reads them from
the history. Each batch's hourly volume record is cut into stretches between harvest draws (1 h
clear of each, from 10 h). Within a stretch, the recorded volume minus the integral of the recorded
inflows (sugar, PAA, water, acid, base) is fitted by least squares as a free starting volume plus
$\\phi_{oil}$ times the integral of the oil feed minus the integral of the evaporation, under each
of two evaporation laws (one free coefficient each; volume noise is independent from hour to hour,
so every record counts):

- `exhaust`: the exhaust gas leaves saturated with water, $E = s\\,\\dot n_{gas}\\, p_w/(p - p_w)\\,
  M_w/\\rho_w$ (`vessel.evaporation_saturation` s): moves with the gas flow and the back pressure;
- `volume`: $E = e_V\\, V\\, p_w(T)/p_w(25\\,^\\circ C)$ (`vessel.evaporation_per_volume` e_V): moves
  with the broth volume, not with gas or pressure.

It prints both fits (coefficients with standard errors, residual SD, and the Gaussian
log-likelihood difference), then simulates every history batch in the twin with its recorded
feeds (as calibration does) and compares the twin's volume with the record.

    python benchmarks/volume_history.py [--no-twin]

Ends with `name: value` headline lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import twin  # noqa: E402,F401  (float64)
from twin.reactor import ATM, MOLAR_VOLUME_NORMAL, PSAT_25C, WATER_MOLAR_MASS, vapour_pressure_water  # noqa: E402

STRAIN = ROOT / "calibration" / "strains" / "penicillin_indpensim.toml"
HISTORY = ROOT / "twin" / "demo_data" / "measurements.parquet"
KNOWN = ("substrate_feed", "precursor_feed", "water_feed", "acid_flow", "base_flow")


def stretches(long: pd.DataFrame, margin: float = 1.0, skip_h: float = 10.0) -> pd.DataFrame:
    """Hourly volume records with the cumulative integrals, from the start of their draw-free
    stretch, of the recorded known inflows, the oil feed and each evaporation law (L), and a
    stretch id. Stretches run between harvest draws (`margin` h clear of each), from `skip_h`."""
    rows = []
    for batch, g in long[long["source"] == "online"].groupby("batch"):
        w = g.pivot_table(index="time_h", columns="variable", values="value").sort_index()
        t = w.index.to_numpy()
        psat = np.asarray(vapour_pressure_water(w["temperature"].to_numpy()))
        p_abs = w["back_pressure"].to_numpy() + ATM
        # aeration is in normal L/h internally
        rates = {
            "known": w[list(KNOWN)].to_numpy().sum(axis=1),
            "oil": w["oil_feed"].to_numpy(),
            "exhaust": w["aeration"].to_numpy() / MOLAR_VOLUME_NORMAL * psat / (p_abs - psat)
            * WATER_MOLAR_MASS / 1000.0,
            "volume_law": w["volume"].to_numpy() * psat / PSAT_25C,
        }
        drawing = w["draw"].to_numpy() > 0
        clear = np.array([not drawing[(t >= ti - margin) & (t <= ti + margin)].any() for ti in t]) & (t >= skip_h)
        sid = np.cumsum(np.concatenate([[1], np.diff(clear.astype(int)) == 1]))
        dt = np.diff(t, append=t[-1])
        for s in np.unique(sid[clear]):
            idx = np.flatnonzero(clear & (sid == s))
            if len(idx) < 6:
                continue
            part = {"batch": batch, "stretch": f"{batch}:{int(s)}", "time_h": t[idx],
                    "volume": w["volume"].to_numpy()[idx]}
            for k, r in rates.items():  # left-rectangle integral of the hourly means
                part[k] = np.concatenate([[0.0], np.cumsum((r[idx] * dt[idx])[:-1])])
            rows.append(pd.DataFrame(part))
    return pd.concat(rows, ignore_index=True)


def fit(d: pd.DataFrame, law: str) -> dict:
    """Least squares of `volume - known = offset_stretch + phi * oil - coef * law` (cumulative,
    L) with one free offset per stretch: coefficients, their SEs, residual SD and the Gaussian
    log-likelihood at the ML variance."""
    g = d.groupby("stretch")
    dm = lambda c: (d[c] - g[c].transform("mean")).to_numpy()  # noqa: E731  (the offsets out)
    y = dm("volume") - dm("known")
    A = np.column_stack([-dm(law), dm("oil")])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    res = y - A @ coef
    n, k = len(y), 2 + d["stretch"].nunique()
    s2 = float(res @ res) / (n - k)
    se = np.sqrt(np.diag(s2 * np.linalg.inv(A.T @ A)))
    sig2 = float(res @ res) / n
    return {"coef": float(coef[0]), "coef_se": float(se[0]), "phi": float(coef[1]), "phi_se": float(se[1]),
            "sd": float(np.sqrt(s2)), "loglik": -0.5 * n * (np.log(2 * np.pi * sig2) + 1.0), "n": n,
            "stretches": d["stretch"].nunique()}


def twin_vs_record() -> pd.DataFrame:
    """Each history batch simulated in the twin with its recorded feeds, as calibration simulates
    it (`calibration.model.simulate_batches`: the calibration's recipes and grid, the scenario's
    parameters): the twin's volume minus the recorded volume."""
    from calibration.infer import load_history
    from calibration.model import build_data, simulate_batches
    from calibration.spec import load_strain

    spec = load_strain(STRAIN)
    bs, recipes = load_history(spec)
    data = build_data(spec, bs, recipes)
    traj = simulate_batches(spec.scenario.model, data, {}, data.y0, float(spec.inference["dt"]))
    ts, vols = np.asarray(data.grid), np.asarray(traj.states.volume)
    rows = []
    for i, b in enumerate(data.batches):
        t, v = bs[b].series("volume")
        twin_v = np.interp(t, ts, vols[i])
        rows.append({"batch": b, "max_abs_diff_m3": float(np.abs(twin_v - v).max()) / 1000.0,
                     "end_diff_m3": float(twin_v[-1] - v[-1]) / 1000.0,
                     "peak_twin_m3": float(twin_v.max()) / 1000.0, "peak_record_m3": float(v.max()) / 1000.0})
    return pd.DataFrame(rows)


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-twin", action="store_true", help="skip the twin-vs-record simulation")
    args = ap.parse_args(argv)
    d = stretches(pd.read_parquet(HISTORY))
    fits = {law: fit(d, law) for law in ("exhaust", "volume_law")}
    print(f"{fits['exhaust']['n']} hourly volume records in {fits['exhaust']['stretches']} stretches "
          f"between harvest draws, {d['batch'].nunique()} batches")
    for law, f in fits.items():
        unit = "(saturation, -)" if law == "exhaust" else "(e_V, 1/h at 25 degC)"
        print(f"  {law:10s} coef {f['coef']:.4g} +- {f['coef_se']:.2g} {unit}; oil volume fraction "
              f"{f['phi']:.3f} +- {f['phi_se']:.3f}; residual SD {f['sd']:.0f} L; log-lik {f['loglik']:.1f}")
    figures = {
        "records": float(fits["exhaust"]["n"]),
        "oil_volume_fraction_volume_law": fits["volume_law"]["phi"],
        "oil_volume_fraction_se": fits["volume_law"]["phi_se"],
        "evaporation_per_volume_1_h": fits["volume_law"]["coef"],
        "evaporation_per_volume_se": fits["volume_law"]["coef_se"],
        "oil_volume_fraction_exhaust_law": fits["exhaust"]["phi"],
        "exhaust_saturation_fit": fits["exhaust"]["coef"],
        "residual_sd_volume_law_L": fits["volume_law"]["sd"],
        "residual_sd_exhaust_law_L": fits["exhaust"]["sd"],
        "loglik_volume_minus_exhaust": fits["volume_law"]["loglik"] - fits["exhaust"]["loglik"],
    }
    if not args.no_twin:
        tv = twin_vs_record()
        print("\ntwin (scenario parameters, recorded feeds) vs the recorded volume:")
        print(tv.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
        figures["twin_max_abs_volume_diff_m3"] = float(tv["max_abs_diff_m3"].max())
        figures["twin_mean_end_volume_diff_m3"] = float(tv["end_diff_m3"].mean())
        figures["twin_peak_minus_record_max_m3"] = float((tv["peak_twin_m3"] - tv["peak_record_m3"]).abs().max())
    print()
    for k, v in figures.items():
        print(f"{k}: {v:.6g}")
    return figures


if __name__ == "__main__":
    main()
