"""Forecast floor: how well could anyone forecast a batch's final penicillin at a given time?

IndPenSim's batches differ by static per-seed draws (initial state, mu_p, mu_x, kLa factor,
PAA and nitrogen feed concentrations), by the operator's recipe, and by eight slow AR(1)
disturbances (growth and production rates, feed concentrations, coolant and inlet O2) that keep
moving until the end of the batch. What happens to the disturbances after the forecast time is
unknowable from any data up to it, so it sets a floor under every forecaster's error.

The oracle: for each plant seed (default 100-111, the first 12 held-out seeds of
`benchmarks/forecast.py`, each with the operator recipe that benchmark gives it,
`heldout_recipe`) and each horizon (default 57 h, 25 % of the 230 h batch), run
the true batch and M re-draws of its future (`run_batch(..., future_disturbances=(horizon,
alt_seed))`: identical up to the horizon, the disturbances continued from their values there
with fresh innovations). The oracle knows everything up to the horizon, hidden static
parameters and exact state included, and the recipe for the rest; its forecast is the median of
the M re-drawn totals. Reported per horizon:

  floor_mape      mean over seeds of |truth - ensemble median| / truth, truth the real batch's
                  `totals["penicillin_total_kg"]` (vessel + harvest draws, noise-free);
  future_sd       mean over seeds of the ensemble's SD / its mean (the conditional spread);
  in_range        fraction of seeds whose truth lies within [min, max] of the ensemble. If the
                  truth is exchangeable with the re-draws (it should be: the same process), the
                  expectation is (M - 1) / (M + 1), 0.71 for M = 6.
  floor_mape_pooled  the same oracle with each of the M + 1 exchangeable outcomes (truth and
                  re-draws) taken in turn as the truth, forecast by the median of the other M:
                  (M + 1) times the pairs, less noisy;
  floor_from_sd   sqrt(2/pi) x the pooled relative SD: the exact conditional median's MAPE if
                  the spread were normal (no small-M bias).

Small-M bias: the median of M draws is a noisy estimate of the conditional median, so the
measured floor is above the oracle's true floor (the conditional median minimises the expected
absolute error). For normal spread sigma: E|truth - median_M| ~ sigma sqrt(2/pi)
sqrt(1 + pi / (2 M)), that is 12 % too high for M = 6, 3 % for M = 24; `floor_mape_*_corr`
divides by sqrt(1 + pi / (2 M)) (the pooled figure carries the same factor). With 12 seeds the
sampling error of the mean is itself about 30 % of the figure (a few seeds land in the tails).

Reference: the historical-mean forecaster of `benchmarks/forecast.py` (the mean observed total of
the 12-batch demo history the twin is calibrated on) on the same seeds. The truths are checked
against `benchmarks/forecast.py`'s cached held-out batches where present (same seed, same recipe:
they must agree to the last bit).

Alternative seeds: `alt_seed(seed, horizon, j)` from `SeedSequence([seed, 10 * horizon, j,
0xF100])` with bit 31 set, so in [2**31, 2**32): never a plant seed of this project (< 2**20).

    python benchmarks/forecast_floor.py
    python benchmarks/forecast_floor.py --horizons 57,115,172 --seeds 100-105

Ends with `name: value` lines (floor_mape_57h_pct, ...). About 15 s per 230 h batch per core;
the default run is 12 x 7 = 84 batches.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import twin  # noqa: F401
from twin.errors import ParameterError
from twin.plants.history import parse_seeds
from twin.plants.indpensim import BATCH_H, run_batch

FLOOR_STREAM = 0xF100


def _forecast_module():
    """`benchmarks/forecast.py` as a module (its held-out recipes, cache and strain file)."""
    name = "benchmarks_forecast"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "forecast.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def heldout_recipe(seed: int):
    """The operator recipe of held-out plant seed `seed` in `benchmarks/forecast.py`:
    `operator_recipe` drawn from `default_rng(SeedSequence([seed, VARIATION_STREAM]))`."""
    from twin.plants.history import operator_recipe

    fc = _forecast_module()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), fc.VARIATION_STREAM]))
    return operator_recipe(rng)


def alt_seed(seed: int, horizon_h: float, j: int) -> int:
    """The plant's alternative disturbance seed for re-draw `j` of `seed` at `horizon_h`, in
    [2**31, 2**32) (every plant seed the project uses is < 2**20)."""
    ss = np.random.SeedSequence([int(seed), round(10 * horizon_h), int(j), FLOOR_STREAM])
    return int(ss.generate_state(1, dtype=np.uint32)[0]) | (1 << 31)


def historical_mean_kg() -> float:
    """The historical-mean forecast of `benchmarks/forecast.py`: the mean observed total
    penicillin (kg) of the strain's demo history (`observed_totals`)."""
    from calibration.infer import load_history
    from calibration.spec import load_strain
    from twin.forecast import observed_totals

    history, _ = load_history(load_strain(_forecast_module().STRAIN))
    return float(np.mean([observed_totals(r)["total_product"] for r in history]) / 1000.0)


def _cached_truth(seed: int) -> float | None:
    path = _forecast_module().CACHE / f"IPS-HO-{seed}" / "totals.json"
    if not path.is_file():
        return None
    return float(json.loads(path.read_text())["totals"]["penicillin_total_kg"])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="100-111", help="plant seeds (held-out seeds of "
                   "benchmarks/forecast.py are 100-123)")
    p.add_argument("--horizons", default="57", help="forecast times, h (e.g. 57,115,172)")
    p.add_argument("--redraws", type=int, default=6, help="re-draws of the future per seed and "
                   "horizon (M)")
    p.add_argument("--duration-h", type=float, default=BATCH_H, help="batch length (shorter only "
                   "for smoke tests: the truth is then not the held-out batch's)")
    p.add_argument("--workers", type=int, default=2, help="processes (1: in this process)")
    p.add_argument("--no-history", action="store_true", help="skip the historical-mean reference "
                   "(it loads the demo history)")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "forecast_floor")
    a = p.parse_args(argv)
    seeds = parse_seeds(a.seeds)
    horizons = [float(h) for h in a.horizons.split(",") if h.strip()]
    if not horizons or any(not 0 <= h < a.duration_h for h in horizons):
        raise ParameterError(f"horizons must be in [0, duration_h = {a.duration_h:g}) h",
                             field="horizons", value=a.horizons)
    if a.redraws < 1 or a.workers < 1:
        raise ParameterError("redraws and workers must be >= 1", field="redraws/workers",
                             value=(a.redraws, a.workers))
    t0 = time.perf_counter()
    full = abs(a.duration_h - BATCH_H) < 1e-9

    recipes = {s: heldout_recipe(s)[0] for s in seeds}
    # (seed, horizon or None for the truth, j) -> run_batch keyword arguments
    tasks = {(s, None, -1): {} for s in seeds}
    for s in seeds:
        for h in horizons:
            for j in range(a.redraws):
                tasks[(s, h, j)] = {"future_disturbances": (h, alt_seed(s, h, j))}
    print(f"forecast floor: {len(seeds)} seeds x {len(horizons)} horizons x {a.redraws} re-draws "
          f"+ truths = {len(tasks)} plant batches of {a.duration_h:g} h on {a.workers} worker(s)",
          flush=True)
    totals: dict = {}
    curves: dict = {}

    def done(key, run, i, t_start):
        totals[key] = run.totals["penicillin_total_kg"]
        tr = run.trajectory
        curves[key] = (tr["time_h"].to_numpy()[::5], tr["product"].to_numpy()[::5])
        s, h, j = key
        what = "truth" if h is None else f"{h:g} h re-draw {j}"
        print(f"  [{i}/{len(tasks)}] seed {s} {what}: {totals[key]:.0f} kg "
              f"({time.perf_counter() - t_start:.0f} s elapsed)", flush=True)

    if a.workers == 1:
        for i, (key, kw) in enumerate(tasks.items(), 1):
            done(key, run_batch(recipes[key[0]], key[0], duration_h=a.duration_h, **kw), i, t0)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(a.workers) as pool:
            pending = {key: pool.apply_async(run_batch, (recipes[key[0]], key[0]),
                                             {"duration_h": a.duration_h, **kw})
                       for key, kw in tasks.items()}
            for i, (key, res) in enumerate(pending.items(), 1):
                done(key, res.get(), i, t0)
    t_plant = time.perf_counter() - t0

    hist_mean = float("nan") if a.no_history else historical_mean_kg()
    rows = []
    for s in seeds:
        truth = totals[(s, None, -1)]
        cached = _cached_truth(s) if full else None
        for h in horizons:
            ens = np.asarray([totals[(s, h, j)] for j in range(a.redraws)])
            med = float(np.median(ens))
            sd = float(ens.std(ddof=1)) if len(ens) > 1 else 0.0
            rows.append(dict(seed=s, horizon_h=h, truth_kg=truth, median_kg=med,
                             mean_kg=float(ens.mean()), sd_kg=sd,
                             min_kg=float(ens.min()), max_kg=float(ens.max()),
                             ape_pct=100 * abs(truth - med) / truth,
                             in_range=bool(ens.min() <= truth <= ens.max()),
                             hist_mean_kg=hist_mean,
                             hist_ape_pct=100 * abs(truth - hist_mean) / truth,
                             cached_truth_kg=np.nan if cached is None else cached,
                             **{f"redraw_{j}_kg": float(v) for j, v in enumerate(ens)}))

    import pandas as pd

    df = pd.DataFrame(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out / "forecast_floor.csv", index=False)
    _plot(df, curves, horizons, a.redraws, a.out / "forecast_floor.png")

    print(f"\n{'seed':>5} {'horizon':>8} {'truth kg':>9} {'median kg':>10} {'APE %':>6} "
          f"{'SD %':>5} {'range kg':>13} {'in':>3} {'hist APE %':>10}")
    for r in rows:
        print(f"{r['seed']:>5} {r['horizon_h']:>7g}h {r['truth_kg']:>9.0f} {r['median_kg']:>10.0f} "
              f"{r['ape_pct']:>6.2f} {100 * r['sd_kg'] / r['mean_kg']:>5.2f} "
              f"{r['min_kg']:>6.0f}-{r['max_kg']:<6.0f} {'y' if r['in_range'] else 'n':>3} "
              f"{r['hist_ape_pct']:>10.2f}")

    figures: dict = {"n_seeds": len(seeds), "redraws": a.redraws, "duration_h": a.duration_h,
                     **summarize(df)}
    figures["plant_s"] = t_plant
    figures["total_s"] = time.perf_counter() - t0
    print(f"wrote {a.out / 'forecast_floor.csv'} and {a.out / 'forecast_floor.png'}\n")
    for k, v in figures.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    return figures


def summarize(df) -> dict:
    """The headline figures of a results table (`forecast_floor.csv`'s rows), per horizon
    `<h>h`: floor_mape (the oracle's MAPE, %), floor_mape_corr (divided by sqrt(1 + pi/(2M))),
    floor_mape_pooled (every one of the M + 1 exchangeable outcomes, truth and re-draws, taken
    in turn as the truth and forecast by the median of the other M: the same estimator on
    (M + 1) times the pairs, so less noisy), floor_from_sd (sqrt(2/pi) x the pooled relative
    SD: the conditional median's MAPE if the spread were normal), future_sd (mean relative SD
    of the re-draws, %), in_range (fraction of truths within the re-draws' range; expected
    (M - 1)/(M + 1)); then the spread of the truths and the historical mean's MAPE."""
    m = sum(c.startswith("redraw_") for c in df.columns)
    out: dict = {}
    for h in sorted(df.horizon_h.unique()):
        s = df[df.horizon_h == h]
        tag = f"{h:g}h"
        ens = s[[f"redraw_{j}_kg" for j in range(m)]].to_numpy()
        every = np.column_stack([s.truth_kg.to_numpy(), ens])
        pooled = [abs(row[k] - np.median(np.delete(row, k))) / row[k]
                  for row in every for k in range(m + 1)] if m > 1 else [np.nan]
        rel_var = np.var(every, axis=1, ddof=1) / np.mean(every, axis=1) ** 2
        out[f"floor_mape_{tag}_pct"] = float(s.ape_pct.mean())
        out[f"floor_mape_{tag}_corr_pct"] = float(s.ape_pct.mean() / np.sqrt(1 + np.pi / (2 * m)))
        out[f"floor_mape_{tag}_pooled_pct"] = float(100 * np.mean(pooled))
        out[f"floor_from_sd_{tag}_pct"] = float(100 * np.sqrt(2 / np.pi * rel_var.mean()))
        out[f"floor_ape_max_{tag}_pct"] = float(s.ape_pct.max())
        out[f"future_sd_{tag}_pct"] = float(np.mean(s.sd_kg / s.mean_kg) * 100)
        out[f"in_range_{tag}"] = float(s.in_range.mean())
    out["in_range_expected"] = (m - 1) / (m + 1)
    first = df.drop_duplicates("seed")
    truths = first.truth_kg.to_numpy()
    out["truth_cv_pct"] = (float(np.std(truths, ddof=1) / np.mean(truths) * 100)
                           if len(truths) > 1 else 0.0)
    out["hist_mean_kg"] = float(first.hist_mean_kg.iloc[0])
    out["hist_mean_mape_pct"] = float(first.hist_ape_pct.mean())
    checked = first.dropna(subset=["cached_truth_kg"])
    out["truths_checked_against_forecast_cache"] = len(checked)
    gap = np.abs(checked.truth_kg - checked.cached_truth_kg)
    out["truth_vs_cache_max_abs_kg"] = float(gap.max()) if len(checked) else float("nan")
    return out


def _plot(df, curves, horizons, m, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twin.plots import save

    fig, axes = plt.subplots(1, len(horizons) + 1, figsize=(4.8 * (len(horizons) + 1), 4.4),
                             squeeze=False, constrained_layout=True)
    seeds = sorted(df.seed.unique())
    x = np.arange(len(seeds))
    for ax, h in zip(axes[0], horizons):
        s = df[df.horizon_h == h].set_index("seed").loc[seeds]
        for j in range(m):
            ax.plot(x, s[f"redraw_{j}_kg"], "o", color="C0", ms=3.5, alpha=0.6,
                    label="re-drawn futures" if j == 0 else None)
        ax.plot(x, s.median_kg, "_", color="C0", ms=14, mew=2, label=f"oracle: median of {m}")
        ax.plot(x, s.truth_kg, "r*", ms=9, label="true total (plant)")
        if np.isfinite(s.hist_mean_kg.iloc[0]):
            ax.axhline(float(s.hist_mean_kg.iloc[0]), color="0.5", ls="--", lw=1,
                       label="historical mean")
        ax.set_xticks(x, [str(v) for v in seeds], rotation=90, fontsize=7)
        ax.set(title=f"from {h:g} h: floor MAPE {s.ape_pct.mean():.1f} %, in range "
                     f"{s.in_range.mean():.2f}", xlabel="plant seed",
               ylabel="total penicillin (kg)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7.5)
    ax = axes[0][-1]
    s0, h0 = seeds[0], horizons[0]
    for j in range(m):
        t, pr = curves[(s0, h0, j)]
        ax.plot(t, pr, color="C0", lw=0.8, alpha=0.7, label="re-drawn futures" if j == 0 else None)
    t, pr = curves[(s0, None, -1)]
    ax.plot(t, pr, color="r", lw=1.4, label="true batch")
    ax.axvline(h0, color="0.4", ls=":", lw=1)
    ax.set(title=f"seed {s0}: titer, futures re-drawn from {h0:g} h", xlabel="time (h)",
           ylabel="penicillin (g/L)")
    ax.legend(fontsize=7.5)
    ax.grid(alpha=0.3)
    fig.suptitle(f"Forecast floor on IndPenSim: {len(seeds)} seeds, {m} re-drawn futures of the "
                 "slow disturbances each", fontsize=11)
    return save(fig, path)


if __name__ == "__main__":
    main()
