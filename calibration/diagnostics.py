"""Diagnostics that fail loudly, posterior summaries and posterior-predictive draws."""

from __future__ import annotations

import json

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from twin.simulate import grid_slope

from .model import CalibrationData, _scale_y0, batch_parameters, observe, simulate_batches
from .spec import HYPER_PREFIXES, NOISE_SCALES, OBSERVABLE, StrainSpec

__all__ = ["check", "summary_table", "flat_draws", "batch_draws", "predictive", "randomised_pit",
           "reading_pits", "draws_at_readings", "assay_readings", "ADVICE"]

RHAT_MAX = 1.01
ESS_MIN = 400

ADVICE = {
    "divergences": "divergent transitions: raise [inference] target_accept (0.9-0.95), tighten "
                   "priors of weakly identified parameters, or reparametrise",
    "rhat": f"r-hat above {RHAT_MAX}: chains disagree; run more warmup and samples, or more chains",
    "ess": f"bulk ESS below {ESS_MIN}: run more samples (or chains)",
}


def _params(idata) -> list[str]:
    return json.loads(idata.attrs["parameters"]) if "parameters" in idata.attrs else {}


def check(idata: az.InferenceData) -> dict:
    """r-hat, ESS and divergences of the fitted parameters; `ok` is False with reasons if any fail.

    SVI posteriors have no chains: only `method == "svi"` and a note are reported.
    """
    names = list(_params(idata))
    post = idata.posterior
    method = idata.attrs.get("method", "nuts")
    out = {"method": method, "parameters": names, "problems": [], "advice": []}
    div = int(np.asarray(idata.sample_stats["diverging"]).sum()) if "sample_stats" in idata.groups() else 0
    out["divergences"] = div
    if method == "svi":
        out["ok"] = True
        out["note"] = "SVI: variational approximation; r-hat/ESS do not apply; uncertainty may be too narrow"
        rejected = int(idata.attrs.get("svi_rejected_draws", 0))
        out["svi_rejected_draws"] = rejected
        if rejected:
            out["note"] += (f"; {rejected} VI draws had a non-finite log posterior (the simulation "
                            "failed far in the tail) and were skipped")
        return out
    vars_ = [n for n in names if n in post] + [v for v in post.data_vars if v.startswith(HYPER_PREFIXES)]
    rhat = az.rhat(post[vars_])
    ess = az.ess(post[vars_], method="bulk")
    rh = {v: float(np.nanmax(np.asarray(rhat[v]))) for v in vars_}
    es = {v: float(np.nanmin(np.asarray(ess[v]))) for v in vars_}
    out["rhat_max"] = max(rh.values())
    out["ess_bulk_min"] = min(es.values())
    out["rhat"] = rh
    out["ess_bulk"] = es
    if div > 0:
        out["problems"].append(f"{div} divergent transitions")
        out["advice"].append(ADVICE["divergences"])
    if post.sizes.get("chain", 1) > 1 and out["rhat_max"] > RHAT_MAX:
        worst = max(rh, key=rh.get)
        out["problems"].append(f"r-hat {out['rhat_max']:.3f} > {RHAT_MAX} ({worst})")
        out["advice"].append(ADVICE["rhat"])
    if out["ess_bulk_min"] < ESS_MIN:
        worst = min(es, key=es.get)
        out["problems"].append(f"bulk ESS {out['ess_bulk_min']:.0f} < {ESS_MIN} ({worst})")
        out["advice"].append(ADVICE["ess"])
    out["ok"] = not out["problems"]
    return out


_HYPER_ROWS = {"tau": ("batch_sd.{}", "log"), "sd": ("noise.{}.sd", None),  # row name, unit (None:
               "cv": ("noise.{}.cv", "1"), "timing": ("noise.{}.timing", "h")}  # the variable's)


def summary_table(idata: az.InferenceData, diag: dict | None = None) -> pd.DataFrame:
    """One row per fitted parameter: unit, prior, posterior mean and 5/50/95 % quantiles, r-hat, ESS;
    then one per batch-to-batch SD (`batch_sd.<p>`, on the log scale) and per noise scale
    (`noise.<variable>.sd` / `.cv` / `.timing`), with their half-normal priors."""
    params = _params(idata)
    rows = []
    for key, info in params.items():
        x = np.asarray(idata.posterior[key]).ravel()
        lo_p = info["prior_median"] * np.exp(-1.645 * info["prior_log_sd"])
        hi_p = info["prior_median"] * np.exp(1.645 * info["prior_log_sd"])
        rows.append({
            "parameter": info["name"], "unit": info["unit"],
            "prior": f"lognormal(median={info['prior_median']:.4g}, log_sd={info['prior_log_sd']:.3g}); 90% [{lo_p:.4g}, {hi_p:.4g}]",
            "mean": x.mean(), "q05": np.quantile(x, 0.05), "q50": np.quantile(x, 0.5), "q95": np.quantile(x, 0.95),
            "r_hat": (diag or {}).get("rhat", {}).get(key, np.nan),
            "ess_bulk": (diag or {}).get("ess_bulk", {}).get(key, np.nan),
        })
    obs = json.loads(idata.attrs.get("observations", "{}"))
    tau_scale = idata.attrs.get("batch_sd_prior")
    for kind, (name, unit) in _HYPER_ROWS.items():
        prefix = f"{kind}_"
        for site in sorted(v for v in idata.posterior.data_vars if v.startswith(prefix)):
            key = site[len(prefix):]
            scale = tau_scale if kind == "tau" else obs.get(key, {}).get(NOISE_SCALES[kind])
            x = np.asarray(idata.posterior[site]).ravel()
            rows.append({
                "parameter": name.format(key), "unit": unit or OBSERVABLE.get(key, ""),
                "prior": "half-normal" + (f"(scale={float(scale):.4g})" if scale is not None else ""),
                "mean": x.mean(), "q05": np.quantile(x, 0.05), "q50": np.quantile(x, 0.5),
                "q95": np.quantile(x, 0.95),
                "r_hat": (diag or {}).get("rhat", {}).get(site, np.nan),
                "ess_bulk": (diag or {}).get("ess_bulk", {}).get(site, np.nan),
            })
    return pd.DataFrame(rows)


def flat_draws(idata: az.InferenceData, n: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Posterior draws with chains merged: `{site: (draws, ...)}`, optionally `n` of them at random."""
    post = idata.posterior
    out = {}
    total = post.sizes["chain"] * post.sizes["draw"]
    idx = np.arange(total) if n is None or n >= total else np.sort(
        np.random.default_rng(seed).choice(total, n, replace=False))
    for k in post.data_vars:
        a = np.asarray(post[k])
        out[k] = a.reshape((total,) + a.shape[2:])[idx]
    return out


def batch_draws(spec: StrainSpec, draws: dict, n_batches: int, *, new_batches: bool = False,
                key=None) -> tuple[dict, dict]:
    """Per-draw, per-batch parameters `{name: (D, B)}` and initial-state factors `{state: (D, B)}`.

    With `new_batches=True` the batch effects and initial-state deviations are drawn afresh
    from the population (prediction for batches the posterior has not seen).
    """
    D = next(iter(draws.values())).shape[0]
    key = jax.random.PRNGKey(0) if key is None else key
    log_global = {p.key: jnp.log(p.median) + p.log_sd * jnp.asarray(draws[f"z_{p.key}"]) for p in spec.priors}
    eps, tau = {}, {}
    for k in spec.batch_effects:
        tau[k] = jnp.asarray(draws[f"tau_{k}"])
        if new_batches:
            key, sub = jax.random.split(key)
            eps[k] = jax.random.normal(sub, (D, n_batches))
        else:
            eps[k] = jnp.asarray(draws[f"eps_{k}"])
    params = jax.vmap(lambda lg, e, t: batch_parameters(spec, lg, e, t, n_batches))(log_global, eps, tau)
    factors = {}
    for name, s in spec.initial.items():
        if new_batches:
            key, sub = jax.random.split(key)
            eta = jax.random.normal(sub, (D, n_batches))
        else:
            eta = jnp.asarray(draws[f"eta0_{name}"])
        factors[name] = jnp.exp(s * eta)
    return params, factors


def predictive(spec: StrainSpec, data: CalibrationData, draws: dict, *, new_batches: bool = False,
               noise: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Posterior-predictive observations on the data grid: `{variable: (D, B, G)}`.

    With `noise=True` each draw's measurement noise is added (what a new measurement would read,
    raised to the variable's `floor` where the strain gives one).
    """
    dt = float(spec.inference["dt"])
    params, factors = batch_draws(spec, draws, data.n_batches, new_batches=new_batches,
                                  key=jax.random.PRNGKey(seed))
    model = spec.scenario.model

    @jax.jit
    def one(p, f):
        y0 = _scale_y0(data.y0, f)
        traj = simulate_batches(model, data, p, y0, dt)
        return {v: observe(traj, v) for v in data.variables}

    preds = jax.lax.map(lambda pf: one(*pf), (params, factors))
    out = {}
    rng = np.random.default_rng(seed)
    for o in spec.observations:
        if o.variable not in preds:
            continue
        m = np.asarray(preds[o.variable])
        if noise:
            a = np.asarray(draws.get(f"sd_{o.variable}", np.zeros(m.shape[0])))[:, None, None]
            c = np.asarray(draws.get(f"cv_{o.variable}", np.zeros(m.shape[0])))[:, None, None]
            timing = {}
            if f"timing_{o.variable}" in draws:
                timing = dict(timing=np.asarray(draws[f"timing_{o.variable}"])[:, None, None],
                              slope=grid_slope(m, np.asarray(data.grid)))
            m = assay_readings(m, a, c, o.floor, rng, **timing)
        out[o.variable] = m
    return out


def randomised_pit(draws: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomised probability integral transform of readings `y` (n,) under predictive draws
    (D, n): uniform between the fraction of draws below the reading and the fraction at or below
    it. For a continuous predictive this is the plain PIT; where the predictive has a point mass
    (readings raised to a floor, e.g. residual sugar clipped at 0) it keeps the PIT uniform, so a
    reading at the floor is not counted inside every interval that reaches down to it."""
    below = np.mean(draws < y, axis=0)
    at_or_below = np.mean(draws <= y, axis=0)
    return below + rng.uniform(size=y.shape) * (at_or_below - below)


def assay_readings(true: np.ndarray, sd, cv, floor: float | None, rng: np.random.Generator, *,
                   timing=0.0, slope=0.0) -> np.ndarray:
    """What the lab would read for `true` values: normal noise of SD
    sqrt(sd^2 + (cv true)^2 + (timing slope)^2) (`sd`, `cv`, `timing`, `slope` broadcast with
    `true`; `slope` is d true / dt, `timing` in h: calibration.model), a reading below the
    variable's `floor` reported as the floor (None: no floor)."""
    scale = np.sqrt(sd**2 + (cv * true) ** 2 + (timing * slope) ** 2)
    y = true + rng.standard_normal(np.shape(true)) * scale
    return y if floor is None else np.maximum(y, floor)


def draws_at_readings(pred: np.ndarray, grid, t, y, mask):
    """Per batch, `(draws (D, n), readings (n,))`: predictive draws on the grid, `pred` (D, B, G),
    interpolated to the batch's masked reading times; `t`, `y`, `mask` (B, N)."""
    pred, grid, t, y, mask = (np.asarray(a) for a in (pred, grid, t, y, mask))
    for i in range(len(t)):
        ti = t[i][mask[i]]
        yield np.stack([np.interp(ti, grid, row) for row in pred[:, i]]), y[i][mask[i]]


def reading_pits(pred: np.ndarray, grid, t, y, mask, rng: np.random.Generator) -> list[np.ndarray]:
    """Randomised PIT (`randomised_pit`) of each batch's readings under predictive draws on the
    grid: `pred` (D, B, G); `t`, `y`, `mask` (B, N). One array per batch, its masked readings in
    order."""
    return [randomised_pit(d, yi, rng) for d, yi in draws_at_readings(pred, grid, t, y, mask)]
