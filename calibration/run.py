"""`twin calibrate`: fit a strain and write the posterior, summary, figures and diagnostics."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from twin.io import atomic_path
from twin.plots import plot_fit, plot_parameters
from twin.report import write_json

from .diagnostics import check, flat_draws, predictive, reading_pits, summary_table
from .infer import CalibrationResult, calibrate, save_posterior
from .spec import OBSERVABLE, load_strain

__all__ = ["run_calibration", "write_outputs", "synthetic_truth"]


def write_outputs(result: CalibrationResult, out: Path, *, n_predictive: int = 100,
                  truth: dict | None = None) -> dict:
    """posterior.nc, summary.csv, diagnostics.json, fit.png, parameters.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    idata = result.idata
    diag = check(idata)
    diag["wall_s"] = result.wall_s
    diag["batches"] = list(result.data.batches)
    table = summary_table(idata, diag)
    save_posterior(idata, out / "posterior.nc")
    with atomic_path(out / "summary.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    spec = result.spec
    draws = flat_draws(idata, n_predictive)
    pred = predictive(spec, result.data, draws)
    obs = {v: (result.data.obs_t[v], result.data.obs_y[v], result.data.obs_mask[v]) for v in result.data.variables}
    coverage = {}
    rng = np.random.default_rng(0)
    for v, p in pred.items():
        u = np.concatenate(reading_pits(p, result.data.grid, *obs[v], rng))
        coverage[v] = float(np.mean(np.abs(u - 0.5) <= 0.45))
    diag["in_sample_90pct_coverage"] = coverage
    plot_fit(result.data.grid, pred, obs, result.data.batches,
             title=f"{spec.name}: {result.method.upper()} fit to {result.data.n_batches} batches",
             path=out / "fit.png", units=OBSERVABLE,
             floors=spec.floors)
    post = {p.key: idata.posterior[p.key] for p in spec.priors}
    plot_parameters([p.key for p in spec.priors], [p.unit for p in spec.priors],
                    [p.median for p in spec.priors], [p.log_sd for p in spec.priors], post,
                    title=f"{spec.name}: prior (grey) vs posterior (blue)", path=out / "parameters.png",
                    truth=truth)
    write_json(diag, out / "diagnostics.json")
    return diag


def run_calibration(strain: Path, out: Path, *, method: str | None = None,
                    progress: Callable | None = None, **overrides) -> tuple[CalibrationResult, dict]:
    spec = load_strain(strain)
    result = calibrate(spec, method=method, progress=progress, **overrides)
    diag = write_outputs(result, out, truth=synthetic_truth(spec))
    return result, diag


def synthetic_truth(spec) -> dict | None:
    """The true parameter values of a synthetic strain (`[synthetic].truth`), else None."""
    if spec.data_dir is None and spec.synthetic:
        return {p.key: float(spec.synthetic.get("truth", {}).get(p.key, np.nan)) for p in spec.priors}
    return None
