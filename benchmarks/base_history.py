"""Does the demo history say how the plant's pH loop answers a change of feed?

The twin has no pH model: each posterior draw carries one history batch's recorded acid and base
inflow (`twin optimize`, `RecipeOptimizer.water_per_draw`), whatever recipe it simulates. On the
plant, a recipe that feeds more sugar or oil in some hours also draws more base then (seed 201's
rerun in the stop-16 note: +0.9 m3 of base by 130 h). If the history showed how much, the twin could
add that response to each draw's recorded inflow. This script asks the history.

The net pH-loop inflow (base minus acid, L/h) is averaged over `bin` hours per batch and regressed
on the sugar and oil feeds (L/h) of the same hours, with a fixed effect per time bin (each hour of
the batch has its own mean) and, in the main fit, per batch as well (two-way: a batch that uses more
base all along is not read as a feed response). The coefficients are litres of base per extra
litre of feed in the same hours, with their standard errors, and the fraction of the within
variance the feeds explain. Windows: the fed phase (30-230 h) and its two halves.

    python benchmarks/base_history.py

Ends with `name: value` headline lines (the two-way fit on 30-230 h in 4 h bins).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HISTORY = ROOT / "twin" / "demo_data" / "measurements.parquet"
FEEDS = ("substrate_feed", "oil_feed")


def binned(long: pd.DataFrame, lo: float, hi: float, bin_h: float) -> pd.DataFrame:
    """Per batch and `bin_h` bin of (lo, hi] h: mean net pH-loop inflow `net` (base - acid) and
    mean feeds, L/h."""
    on = long[long["source"] == "online"]
    w = on.pivot_table(index=["batch", "time_h"], columns="variable", values="value").reset_index()
    w = w[(w["time_h"] > lo) & (w["time_h"] <= hi)].copy()
    w["net"] = w["base_flow"] - w["acid_flow"]
    w["bin"] = (w["time_h"] // bin_h).astype(int)
    return w.groupby(["batch", "bin"])[["net", *FEEDS]].mean().reset_index()


def within_fit(g: pd.DataFrame, *, two_way: bool = True, sweeps: int = 200) -> dict:
    """Least squares of `net` on the feeds after removing the bin means (and the batch means, by
    alternating projections, when `two_way`): coefficients, SEs (residual degrees of freedom net
    of the fixed effects), and the within R^2."""
    cols = ["net", *FEEDS]
    x = g[cols].astype(float)
    for _ in range(sweeps if two_way else 1):
        x = x - x.groupby(g["bin"]).transform("mean")
        if two_way:
            x = x - x.groupby(g["batch"]).transform("mean")
    A, y = x[list(FEEDS)].to_numpy(), x["net"].to_numpy()
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    res = y - A @ coef
    dof = len(y) - len(FEEDS) - g["bin"].nunique() - (g["batch"].nunique() - 1 if two_way else 0)
    se = np.sqrt(np.diag(float(res @ res) / dof * np.linalg.inv(A.T @ A)))
    return {"sugar": float(coef[0]), "sugar_se": float(se[0]), "oil": float(coef[1]), "oil_se": float(se[1]),
            "r2": float(1.0 - res.var() / y.var()), "n": len(y)}


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args(argv)
    long = pd.read_parquet(HISTORY)
    print("L of net base (base - acid) per extra L/h of feed in the same hours; fixed effects per "
          "time bin (and per batch: two-way)")
    print("window h   bin h  effects   n     sugar L/L        oil L/L          within R2")
    fits = {}
    for lo, hi in ((30.0, 230.0), (30.0, 100.0), (100.0, 230.0)):
        for bin_h in (4.0, 12.0):
            g = binned(long, lo, hi, bin_h)
            for two_way in (True, False):
                f = within_fit(g, two_way=two_way)
                fits[(lo, hi, bin_h, two_way)] = f
                print(f"{lo:3.0f}-{hi:3.0f}  {bin_h:5.0f}  {'two-way' if two_way else 'time   '}  {f['n']:4d}  "
                      f"{f['sugar']:+6.2f} +- {f['sugar_se']:4.2f}   {f['oil']:+6.2f} +- {f['oil_se']:5.2f}   "
                      f"{f['r2']:.3f}")
    main_fit = fits[(30.0, 230.0, 4.0, True)]
    signs = {np.sign(f["sugar"]) for f in fits.values()} | {np.sign(f["oil"]) for f in fits.values()}
    figures = {
        "base_per_sugar_L_L": round(main_fit["sugar"], 3),
        "base_per_sugar_se": round(main_fit["sugar_se"], 3),
        "base_per_oil_L_L": round(main_fit["oil"], 3),
        "base_per_oil_se": round(main_fit["oil_se"], 3),
        "within_r2": round(main_fit["r2"], 4),
        "max_within_r2_any_fit": round(max(f["r2"] for f in fits.values()), 4),
        "coefficient_signs_agree_across_fits": int(len(signs) == 1),
    }
    for k, v in figures.items():
        print(f"{k}: {v}")
    return figures


if __name__ == "__main__":
    main()
