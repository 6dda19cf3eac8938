r"""Batch-to-batch learning: test the posterior's prediction of newly finished batches, then refit.

`twin calibrate STRAIN --out DIR --update-with NEW [--posterior OLD]` runs :func:`run_update`:

1. **Read** the new batches as the strain's own data are read (`twin.data` validation; each batch's
   recipe from `recipes/<batch>.csv` beside the data, else the scenario's; the flows the
   historian recorded replace the plan, as in calibration). A batch id the old posterior already
   saw, a batch of another strain, or an old posterior of another strain, prior or model
   structure is refused before anything is computed or written.
2. **Predict** each new batch from the *old* posterior as a batch it has not seen: strain-level
   parameters from the posterior draws, batch effects and initial-amount deviations drawn afresh
   from the fitted population, the assay noise of each draw added,
   $$\theta_{p,\text{new}} = \theta_p\,e^{\tau_p\epsilon},\quad \epsilon\sim N(0,1),\qquad
     y = \hat y(t) + \sqrt{a^2 + (c\,\hat y(t))^2}\;\xi,\quad \xi\sim N(0,1),$$
   so that a 90 % interval should hold a realised assay nine times in ten.
3. **Compare** with what happened: the final titer (the last titer assay) and the total product
   (titer x volume + product drawn off, read from the record as `twin.forecast.observed_totals`
   does, predicted the same way from the model) at the time of that assay: predicted median and
   90 % interval, realised value, error of the median in % of the realised value, hit or miss;
   and the fraction of every observed variable's points inside their 90 % predictive interval.
4. **Refit** on the old posterior's batches plus the new ones, by the strain file's method (or
   `method`), its mode search started at the old posterior's mean (:func:`start_values`; new
   batches' effects at the population's). This saves little time, but keeps the refit in the
   old fit's mode: where the posterior is weakly identified, fits started from the prior medians
   with different seeds land in different modes, and the shift old -> new would then measure the
   optimiser, not what the new batches taught.
5. **Write** `DIR/posterior.nc` (an existing one is kept as `DIR/posterior.prev.nc`; the posterior
   updated from is never written to), the usual summary.csv, fit.png, parameters.png and
   diagnostics.json, and `update.json` (per new batch predicted vs realised; per parameter the
   shift of the posterior mean and SD) and `update.png`. A refit whose SD of some parameter
   shrank more than `COLLAPSED_SD_RATIO`-fold is a failed fit, not learning: it is written, but
   reported as a failed diagnostic (the command exits 3).

The new posterior records the data it saw beyond the strain file (`extra_data`: the paths of
every batch source added by updates, which must stay in place for the next update) and the
posterior it was updated from (`updated_from`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from twin.data import BatchSet
from twin.errors import DataError
from twin.io import atomic_path
from twin.report import write_json
from twin.simulate import grid_slope

from .diagnostics import assay_readings, batch_draws, flat_draws
from .infer import (
    CalibrationResult,
    PosteriorError,
    _history_hash,
    calibrate,
    check_noise_sites,
    load_batch_source,
    load_history,
    load_posterior,
)
from .model import CalibrationData, _scale_y0, build_data, observe, simulate_batches
from .run import synthetic_truth, write_outputs
from .spec import HYPER_PREFIXES, StrainSpec, load_strain

__all__ = ["QUANTILES", "COLLAPSED_SD_RATIO", "compare", "Prediction", "predict_new_batches", "check_batches",
           "parameter_shift", "start_values", "UpdateResult", "check_old_posterior", "run_update",
           "plot_update"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# a posterior SD that shrinks more than this with a few more batches is a failed fit, not learning
# (for n batches the SD of a strain-level parameter goes roughly as 1/sqrt(n))
COLLAPSED_SD_RATIO = 0.05


def compare(samples, realised: float | None) -> dict:
    r"""A predicted quantity against what happened.

    Args:
        samples: predictive draws of the quantity, shape `(D,)` (non-finite draws are dropped).
        realised: the measured value, or `None` when the record cannot give it.

    Returns:
        `{"median", "q05", "q95", "realised", "error_pct", "hit"}`: `error_pct` =
        $100\,(\text{median} - \text{realised}) / \text{realised}$ (positive: over-predicted),
        `hit` = realised inside the 90 % interval `[q05, q95]` (`None` without a realised value).

    Example:
        >>> compare(np.arange(101.0), 50.0)["hit"]
        True
    """
    x = np.asarray(samples, dtype=float)
    x = x[np.isfinite(x)]
    q05, med, q95 = (float(v) for v in np.quantile(x, [0.05, 0.5, 0.95]))
    out = {"median": med, "q05": q05, "q95": q95, "realised": None, "error_pct": None, "hit": None}
    if realised is not None and np.isfinite(realised):
        out["realised"] = float(realised)
        out["error_pct"] = 100.0 * (med - realised) / realised if realised != 0 else None
        out["hit"] = bool(q05 <= realised <= q95)
    return out


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Posterior-predictive draws for new batches on the calibration grid.

    Attributes:
        data: the new batches packed as calibration packs them (recipes as run, initial state).
        mean: `{variable: (D, B, G)}` noise-free predictions of each observed variable and
            `"total_product"` (g), `"volume_L"`.
        noise: `{variable: (sd (D,), cv (D,), timing (D,))}` each draw's assay noise.
        n_failed: draws whose simulation was not finite (dropped from the quantiles).
    """

    data: CalibrationData
    mean: dict[str, np.ndarray]
    noise: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    n_failed: int
    floors: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def grid(self) -> np.ndarray:
        return np.asarray(self.data.grid)

    def at(self, variable: str, b: int, t, rng: np.random.Generator) -> np.ndarray:
        """Predictive draws `(D, len(t))` of an assay of `variable` in batch `b` at times `t`,
        with each draw's noise (raised to the variable's floor, as the lab reports it)."""
        rows = self.mean[variable][:, b]
        m = np.stack([np.interp(t, self.grid, row) for row in rows])
        zero = np.zeros(len(m))
        sd, cv, timing = self.noise.get(variable, (zero, zero, zero))
        slope = 0.0
        if np.any(timing > 0):
            slope = np.stack([np.interp(t, self.grid, row) for row in grid_slope(rows, self.grid)])
        return assay_readings(m, sd[:, None], cv[:, None], self.floors.get(variable), rng,
                              timing=timing[:, None], slope=slope)


def predict_new_batches(spec: StrainSpec, batch_set: BatchSet, recipes: dict, draws: dict, *,
                        seed: int = 0) -> Prediction:
    """Simulate each posterior draw for every new batch with fresh batch effects (vmap over batches,
    `lax.map` over draws) on the posterior's fixed grid.

    Args:
        spec: the strain (its priors must be the posterior's: see :func:`check_old_posterior`).
        batch_set, recipes: the new batches and their recipes.
        draws: `flat_draws` of the old posterior, `{site: (D, ...)}`.
        seed: draws the fresh batch effects.
    """
    data = build_data(spec, batch_set, recipes)
    dt = float(spec.inference["dt"])
    params, factors = batch_draws(spec, draws, data.n_batches, new_batches=True,
                                  key=jax.random.PRNGKey(seed))
    model = spec.scenario.model

    @jax.jit
    def one(p, f):
        traj = simulate_batches(model, data, p, _scale_y0(data.y0, f), dt)
        out = {v: observe(traj, v) for v in data.variables}
        out["total_product"] = traj.total_product
        out["volume_L"] = traj.states.volume
        return out

    mean = {k: np.asarray(v) for k, v in jax.lax.map(lambda pf: one(*pf), (params, factors)).items()}
    D = mean["total_product"].shape[0]
    ok = np.all(np.isfinite(mean["total_product"]), axis=(1, 2))
    ok &= np.all(np.isfinite(mean["volume_L"]), axis=(1, 2))
    for v in data.variables:
        ok &= np.all(np.isfinite(mean[v]), axis=(1, 2))
    if not ok.any():
        raise DataError("every posterior draw failed to simulate the new batches", where=batch_set.source,
                        hint="check the new batches' recipes and initial assays")
    noise = {}
    for o in spec.observations:
        sd = np.asarray(draws.get(f"sd_{o.variable}", np.zeros(D)), dtype=float)
        cv = np.asarray(draws.get(f"cv_{o.variable}", np.zeros(D)), dtype=float)
        timing = np.asarray(draws.get(f"timing_{o.variable}", np.zeros(D)), dtype=float)
        noise[o.variable] = (sd[ok], cv[ok], timing[ok])
    mean = {k: v[ok] for k, v in mean.items()}
    return Prediction(data, mean, noise, int(D - ok.sum()), spec.floors)


def _realised(record, run_draws: bool) -> dict:
    """The batch's end as its data show it: final titer, total product (None where the record
    cannot give it, with the reason), and the time of the last titer assay."""
    from twin.forecast import observed_totals

    t, p = record.series("product")
    out = {"end_h": float(t[-1]), "final_titer": float(p[-1]), "total_product": None, "total_note": None}
    if "volume" not in record.variables():
        out["total_note"] = "no volume record"
    elif run_draws and "draw" not in record.variables():
        out["total_note"] = "broth was drawn off but the record has no draw flow"
    else:
        out["total_product"] = observed_totals(record)["total_product"]
    return out


def check_batches(pred: Prediction, batch_set: BatchSet, *, recipe_sources: dict[str, str],
                  seed: int = 0) -> list[dict]:
    """Per new batch: final titer and total product predicted vs realised, and the fraction of each
    observed variable's points inside their 90 % predictive interval (see the module docstring)."""
    rng = np.random.default_rng(seed)
    data = pred.data
    draw = np.asarray(data.recipes.profiles["draw"].value)
    out = []
    for b, bid in enumerate(data.batches):
        record = batch_set[bid]
        if "product" not in record.variables():
            raise DataError("a new batch has no titer assay: nothing to compare the prediction with",
                            where=batch_set.source, field=f"{bid}:product")
        real = _realised(record, bool(np.any(draw[b] > 0)))
        t_end = real["end_h"]
        titer = pred.at("product", b, [t_end], rng)[:, 0]
        m_titer = np.array([np.interp(t_end, pred.grid, row) for row in pred.mean["product"][:, b]])
        vol = np.array([np.interp(t_end, pred.grid, row) for row in pred.mean["volume_L"][:, b]])
        total = np.array([np.interp(t_end, pred.grid, row) for row in pred.mean["total_product"][:, b]])
        total = total + (titer - m_titer) * vol  # the assay's noise enters the total as titer x volume
        tot = compare(total / 1000.0, None if real["total_product"] is None else real["total_product"] / 1000.0)
        if real["total_note"]:
            tot["note"] = real["total_note"]
        assays = {}
        for v in data.variables:
            m = np.asarray(data.obs_mask[v][b])
            if not m.any():
                continue
            t_obs = np.asarray(data.obs_t[v][b])[m]
            y_obs = np.asarray(data.obs_y[v][b])[m]
            q05, q95 = np.quantile(pred.at(v, b, t_obs, rng), [0.05, 0.95], axis=0)
            inside = (y_obs >= q05) & (y_obs <= q95)
            assays[v] = {"inside": int(inside.sum()), "n": int(inside.size),
                         "fraction": float(inside.mean())}
        out.append({"batch": bid, "end_h": t_end, "recipe": recipe_sources.get(bid, ""),
                    "final_titer_g_L": compare(titer, real["final_titer"]),
                    "total_product_kg": tot, "assays_in_90pct_interval": assays})
    return out


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=float).ravel()
    return {"mean": float(x.mean()), "sd": float(x.std(ddof=1)), "q05": float(np.quantile(x, 0.05)),
            "q95": float(np.quantile(x, 0.95))}


def parameter_shift(spec: StrainSpec, old, new) -> dict:
    """Per fitted parameter (and batch-effect SD `tau_*`, log scale): old and new posterior mean,
    SD and 90 % interval, `sd_ratio` = new SD / old SD, `shift_in_old_sd` = (new mean - old mean) /
    old SD."""
    out = {}
    keys = [(p.key, p.name, p.unit) for p in spec.priors]
    keys += [(f"tau_{k}", f"batch-effect SD of {k}", "log") for k in spec.batch_effects]
    for key, name, unit in keys:
        o, n = _stats(old.posterior[key]), _stats(new.posterior[key])
        out[key] = {"name": name, "unit": unit, "old": o, "new": n,
                    "sd_ratio": n["sd"] / o["sd"] if o["sd"] > 0 else None,
                    "shift_in_old_sd": (n["mean"] - o["mean"]) / o["sd"] if o["sd"] > 0 else None}
    return out


def check_old_posterior(spec: StrainSpec, path: Path):
    """Read the old posterior and refuse one made for another model structure, strain, set of
    priors, batch effects or uncertain initial amounts (its draws are stored on the prior's
    standardised scale, so they mean something else under other priors).

    Raises:
        PosteriorError: naming the file, the attribute and both values.
    """
    idata = load_posterior(path, model=spec.scenario.model)
    attrs = dict(idata.attrs)
    if attrs.get("strain") != spec.name:
        raise PosteriorError(f"posterior is for strain '{attrs.get('strain')}', the strain file is "
                             f"'{spec.name}' ({spec.path})", where=path, field="strain",
                             hint="give the posterior of this strain with --posterior")
    info = json.loads(attrs.get("parameters", "{}"))
    want = {p.key: (p.median, p.log_sd) for p in spec.priors}
    for key in sorted(set(info) | set(want)):
        have = (info[key]["prior_median"], info[key]["prior_log_sd"]) if key in info else None
        if have is None or key not in want or not np.allclose(have, want[key], rtol=1e-12, atol=0):
            raise PosteriorError(
                f"the strain file's prior of '{key}' differs from the posterior's (posterior: "
                f"{'not fitted' if have is None else f'median {have[0]:g}, log_sd {have[1]:g}'}; strain file: "
                f"{'not fitted' if key not in want else f'median {want[key][0]:g}, log_sd {want[key][1]:g}'})",
                where=path, field="parameters", hint="recalibrate from scratch (without --update-with)")
    for attr, mine in (("batch_effects", list(spec.batch_effects)),
                       ("initial", {k: float(v) for k, v in spec.initial.items()})):
        theirs = json.loads(attrs.get(attr, "null"))
        if theirs != mine:
            raise PosteriorError(f"the strain file's {attr} differ from the posterior's (posterior: {theirs}; "
                                 f"strain file: {mine})", where=path, field=attr,
                                 hint="recalibrate from scratch (without --update-with)")
    if float(attrs.get("dt", np.nan)) != float(spec.inference["dt"]):
        raise PosteriorError(f"the posterior was fitted on a {attrs.get('dt')} h grid, the strain file "
                             f"says {spec.inference['dt']} h", where=path, field="dt",
                             hint="recalibrate from scratch (without --update-with)")
    check_noise_sites(spec, idata, path)
    return idata


def start_values(idata, batches: list[str]) -> dict[str, np.ndarray]:
    """Where the refit's mode search starts: the old posterior's mean of every latent site
    (geometric mean of the positive ones: `tau_*`, `sd_*`, `cv_*`), per-batch sites (`eps_*`,
    `eta0_*`) laid out for `batches`, a batch the old posterior has not seen at 0 (the population)."""
    post = idata.posterior
    seen = [str(b) for b in post.coords["batch"].values] if "batch" in post.coords else []
    out = {}
    for k in post.data_vars:
        a = np.asarray(post[k], dtype=float)
        a = a.reshape((-1,) + a.shape[2:])
        if k.startswith(HYPER_PREFIXES):
            out[k] = np.exp(np.mean(np.log(np.maximum(a, 1e-300)), axis=0))
        elif k.startswith("z_"):
            out[k] = a.mean(axis=0)
        elif k.startswith(("eps_", "eta0_")) and a.ndim == 2 and a.shape[1] == len(seen):
            m = a.mean(axis=0)
            out[k] = np.array([m[seen.index(b)] if b in seen else 0.0 for b in batches])
    return out


@dataclasses.dataclass
class UpdateResult:
    result: CalibrationResult
    diagnostics: dict
    report: dict  # what update.json holds
    prediction: Prediction


def run_update(strain: Path, out: Path, new_batches: Path, *, posterior: Path | None = None,
               method: str | None = None, n_draws: int = 200, progress: Callable | None = None,
               **overrides) -> UpdateResult:
    """Predict newly finished batches from the old posterior, compare, refit on old + new, write.

    Args:
        strain: the strain TOML.
        out: output directory.
        new_batches: a batch directory or long measurements file (the `twin.data` format).
        posterior: the old posterior (default `out/posterior.nc`).
        method: "nuts" or "svi" for the refit (default: the strain file's).
        n_draws: posterior draws for the prediction.
        progress: callback `(stage, done, total)`.
        **overrides: chains, warmup, samples, svi_steps, seed for the refit (as `calibrate`).

    Raises:
        PosteriorError: no old posterior; one of another strain, model structure or priors.
        DataError, UnitError, RecipeError: new batch data that fail validation; a new batch id the
            old posterior already saw; a batch of another strain; old data no longer on file.
    Nothing is written unless every check passes and the refit succeeds.
    """
    t0 = time.perf_counter()
    cb = progress or (lambda *a: None)
    spec = load_strain(strain)
    out = Path(out)
    old_path = Path(posterior) if posterior is not None else out / "posterior.nc"
    if not old_path.is_file():
        raise PosteriorError("no posterior to update", where=old_path, field="--posterior",
                             hint="give the old posterior with --posterior, or calibrate into --out first")
    old = check_old_posterior(spec, old_path)
    old_batches = json.loads(old.attrs.get("batches", "[]"))
    old_extra = tuple(Path(p) for p in json.loads(old.attrs.get("extra_data", "[]")))
    for p in old_extra:
        if not p.exists():
            raise DataError("batch data an earlier update added to this posterior are no longer on file",
                            where=old_path, field="extra_data", value=str(p),
                            hint="put them back, or recalibrate from scratch")

    new_path = Path(new_batches).resolve()
    new_bs, new_recipes = load_batch_source(new_path, spec)
    if len(new_bs) == 0:
        raise DataError("no batches in the new data", where=new_path)
    for b in new_bs.batch_ids:
        if b in old_batches:
            raise DataError("batch is already in the old posterior's data", where=new_path, field="batch",
                            value=b, hint=f"{old_path} was fitted on {len(old_batches)} batches "
                                          f"({', '.join(old_batches[:6])}{', ...' if len(old_batches) > 6 else ''}); "
                                          "give only batches it has not seen")
        strain_of = new_bs[b].strain
        if strain_of not in ("unknown", spec.name):
            raise DataError(f"batch is of strain '{strain_of}', the strain file is '{spec.name}'",
                            where=new_path, field=f"{b}:strain", value=strain_of)
    spec_all = dataclasses.replace(spec, extra_data=old_extra + (new_path,))
    all_bs, all_recipes = load_history(spec_all)  # refuses a new id that is in the strain's data
    missing = [b for b in old_batches if b not in all_bs]
    if missing:
        raise DataError("a batch the old posterior was fitted on is no longer in the strain's data",
                        where=old_path, field="batches", value=missing[0],
                        hint=f"data now: {all_bs.source}")
    old_data = build_data(spec, all_bs.select(old_batches), all_recipes)
    old_unchanged = _history_hash(spec, old_data) == old.attrs.get("data_hash")
    folder = new_path if new_path.is_dir() else new_path.parent
    recipe_sources = {}
    for b in new_bs.batch_ids:
        f = folder / "recipes" / f"{b}.csv"
        recipe_sources[b] = str(f) if f.is_file() else f"scenario '{spec.scenario.name}' (no {f} found)"

    cb("predicting new batches from the old posterior", 0, 1)
    seed = int(spec.inference["seed"] if overrides.get("seed") is None else overrides["seed"])
    t1 = time.perf_counter()
    pred = predict_new_batches(spec, new_bs, new_recipes, flat_draws(old, n_draws, seed=seed), seed=seed)
    checks = check_batches(pred, new_bs, recipe_sources=recipe_sources, seed=seed)
    t_predict = time.perf_counter() - t1
    cb("predicting new batches from the old posterior", 1, 1)

    batches = old_batches + new_bs.batch_ids
    result = calibrate(spec_all, method=method, batches=batches, progress=cb, start=start_values(old, batches),
                       **overrides)
    result.idata.attrs["extra_data"] = json.dumps([str(p) for p in spec_all.extra_data])
    result.idata.attrs["updated_from"] = json.dumps({
        "file": str(old_path.resolve()), "data_hash": old.attrs.get("data_hash"),
        "created": old.attrs.get("created"), "batches": len(old_batches)})

    finals = [c[k]["hit"] for c in checks for k in ("final_titer_g_L", "total_product_kg")
              if c[k]["hit"] is not None]
    inside = sum(a["inside"] for c in checks for a in c["assays_in_90pct_interval"].values())
    n_pts = sum(a["n"] for c in checks for a in c["assays_in_90pct_interval"].values())
    report = {
        "strain": spec.name, "strain_file": str(spec.path), "new_batches": str(new_path),
        "old_posterior": {"file": str(old_path), "method": old.attrs.get("method"),
                          "created": old.attrs.get("created"), "data_hash": old.attrs.get("data_hash"),
                          "batches": old_batches, "data_unchanged_since": bool(old_unchanged)},
        "new_posterior": {"file": str(out / "posterior.nc"), "method": result.method,
                          "data_hash": result.idata.attrs["data_hash"], "batches": list(result.data.batches),
                          "kept_previous_as": None},
        "prediction": {"draws": int(pred.mean["total_product"].shape[0]), "draws_failed": pred.n_failed,
                       "interval": "90 % (5-95 % quantiles)", "batch_effects": "drawn afresh from the population",
                       "assay_noise": "included (each draw's fitted noise)",
                       "error_pct": "100 (predicted median - realised) / realised",
                       "final": "at the batch's last titer assay; total = titer x volume + product drawn off"},
        "batches": checks,
        "summary": {"finals_hit": int(sum(finals)), "finals_compared": len(finals),
                    "assay_points_inside": int(inside), "assay_points": int(n_pts),
                    "assay_fraction_inside": inside / n_pts if n_pts else None},
        "parameters": parameter_shift(spec, old, result.idata),
    }

    n_old, n_all = len(old_batches), result.data.n_batches
    expected = float(np.sqrt(n_old / n_all)) if n_old else 1.0
    collapsed = {k: p["sd_ratio"] for k, p in report["parameters"].items()
                 if p["sd_ratio"] is not None and p["sd_ratio"] < COLLAPSED_SD_RATIO}
    report["problems"], report["notes"] = [], []
    wider = [k for k, p in report["parameters"].items() if p["sd_ratio"] is not None and p["sd_ratio"] > 2.0]
    moved = [k for k, p in report["parameters"].items()
             if p["shift_in_old_sd"] is not None and abs(p["shift_in_old_sd"]) > 4.0]
    if wider:
        report["notes"].append(
            f"the posterior widened with more batches (SD x{report['parameters'][wider[0]]['sd_ratio']:.1f} for "
            f"{', '.join(wider)}; about x{expected:.2f} expected): the new batches disagree with the old ones, or "
            "one of the two fits is poorer (compare their fit.png and in-sample coverage)")
    if moved:
        report["notes"].append(
            f"{', '.join(moved)} moved by more than 4 old SDs: a process change in the new batches, or an "
            "old posterior too narrow (SVI's often is)")
    if collapsed:
        worst = min(collapsed, key=collapsed.get)
        report["problems"].append(
            f"the updated posterior collapsed: the SD of {worst} shrank x{collapsed[worst]:.1e} with "
            f"{n_all - n_old} more batches on {n_old} (about x{expected:.2f} expected"
            f"{f'; also {len(collapsed) - 1} other(s)' if len(collapsed) > 1 else ''}): the refit did not converge")

    # write: nothing above has touched `out`
    out.mkdir(parents=True, exist_ok=True)
    target, prev = out / "posterior.nc", out / "posterior.prev.nc"
    if target.is_file() and prev.resolve() != old_path.resolve():  # never write the file updated from
        with atomic_path(prev, suffix=".nc") as tmp:
            shutil.copyfile(target, tmp)
        report["new_posterior"]["kept_previous_as"] = str(prev)
    diag = write_outputs(result, out, truth=synthetic_truth(spec))
    if report["problems"]:
        diag["problems"] += report["problems"]
        diag["advice"].append("rerun the update with --method nuts (or another --seed); the posterior "
                              f"updated from is unchanged at {report['new_posterior']['kept_previous_as'] or old_path}")
        diag["ok"] = False
        write_json(diag, out / "diagnostics.json")
    report["wall_s"] = {"predict": t_predict, "refit": result.wall_s, "total": time.perf_counter() - t0}
    plot_update(pred, new_bs, checks, report["parameters"], path=out / "update.png",
                title=f"{spec.name}: {len(checks)} new batch(es) predicted by the old posterior "
                      f"({len(old_batches)} batches, {str(old.attrs.get('method', '')).upper()}), "
                      f"then refitted on {result.data.n_batches}")
    write_json(report, out / "update.json")
    return UpdateResult(result, diag, report, pred)


def plot_update(pred: Prediction, batch_set: BatchSet, checks: list[dict], shift: dict, *, title: str,
                path) -> Path:
    """Per new batch: titer and total product, the old posterior's 50/90 % predictive band against
    the realised data (assays inside the 90 % band as dots, outside as crosses); below, each
    parameter's old and new 90 % interval relative to the old posterior median."""
    from twin.forecast import observed_total_curve
    from twin.plots import plt, save

    rng = np.random.default_rng(0)
    n = len(checks)
    ncol = min(n, 4)
    nrow = int(np.ceil(n / ncol))
    fig = plt.figure(figsize=(3.6 * ncol + 1.0, 4.6 * nrow + 0.35 * len(shift) + 1.2))
    gs = fig.add_gridspec(2 * nrow + 1, ncol, height_ratios=[1.0] * (2 * nrow) + [0.12 * len(shift) + 0.3])
    grid = pred.grid
    for k, c in enumerate(checks):
        b, bid = k, c["batch"]
        r, col = 2 * (k // ncol), k % ncol
        record = batch_set[bid]
        ax = fig.add_subplot(gs[r, col])
        ys = pred.at("product", b, grid, rng)
        q = np.quantile(ys, QUANTILES, axis=0)
        ax.fill_between(grid, q[0], q[4], color="C0", alpha=0.18, lw=0, label="old posterior 90 %")
        ax.fill_between(grid, q[1], q[3], color="C0", alpha=0.3, lw=0, label="50 %")
        ax.plot(grid, q[2], color="C0", lw=1.2)
        t, y = record.series("product")
        lo = np.interp(t, grid, q[0])
        hi = np.interp(t, grid, q[4])
        ok = (y >= lo) & (y <= hi)
        ax.plot(t[ok], y[ok], "o", ms=3.5, color="k", label="assay inside")
        ax.plot(t[~ok], y[~ok], "x", ms=5, color="C3", mew=1.5, label="assay outside")
        ft = c["final_titer_g_L"]
        ax.set_title(f"{bid}: final titer {ft['median']:.3g} [{ft['q05']:.3g}, {ft['q95']:.3g}]\n"
                     f"realised {ft['realised']:.3g} g/L ({ft['error_pct']:+.1f} %) "
                     f"{'HIT' if ft['hit'] else 'MISS'}", fontsize=8.5,
                     color="k" if ft["hit"] else "C3")
        ax.set_ylabel("titer, g/L", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=6.5, loc="upper left")
        ax2 = fig.add_subplot(gs[r + 1, col], sharex=ax)
        tot = pred.mean["total_product"][:, b] / 1000.0
        m_titer = pred.mean["product"][:, b]
        tot = tot + (ys - m_titer) * pred.mean["volume_L"][:, b] / 1000.0
        q = np.quantile(tot, QUANTILES, axis=0)
        ax2.fill_between(grid, q[0], q[4], color="C2", alpha=0.18, lw=0)
        ax2.fill_between(grid, q[1], q[3], color="C2", alpha=0.3, lw=0)
        ax2.plot(grid, q[2], color="C2", lw=1.2, label="old posterior (median, 50/90 %)")
        tp = c["total_product_kg"]
        if tp["realised"] is not None:
            tt, total = observed_total_curve(record)
            ax2.plot(tt, total / 1000.0, "o", ms=3, color="k", label="realised (titer x volume + drawn)")
            ax2.set_title(f"total product {tp['median']:.4g} [{tp['q05']:.4g}, {tp['q95']:.4g}]\n"
                          f"realised {tp['realised']:.4g} kg ({tp['error_pct']:+.1f} %) "
                          f"{'HIT' if tp['hit'] else 'MISS'}", fontsize=8.5, color="k" if tp["hit"] else "C3")
        else:
            ax2.set_title(f"total product {tp['median']:.4g} [{tp['q05']:.4g}, {tp['q95']:.4g}] kg\n"
                          f"realised: not comparable ({tp.get('note')})", fontsize=8.5)
        ax2.set_xlabel("time, h", fontsize=8)
        ax2.set_ylabel("total product, kg", fontsize=8)
        ax2.tick_params(labelsize=7)
        ax2.grid(alpha=0.3)
        if k == 0:
            ax2.legend(fontsize=6.5, loc="upper left")
    params = [k for k in shift if not k.startswith("tau_")]
    taus = [k for k in shift if k.startswith("tau_")]
    sub = gs[-1, :].subgridspec(1, 2, width_ratios=[2, 1] if taus else [1, 1e-6], wspace=0.45)
    for ax, keys, relative in ((fig.add_subplot(sub[0]), params, True),
                               (fig.add_subplot(sub[1]) if taus else None, taus, False)):
        if ax is None:
            continue
        for i, key in enumerate(keys):
            s, y = shift[key], len(keys) - 1 - i
            ref = s["old"]["mean"] if relative else 1.0
            for part, dy, color, label in (("old", 0.17, "0.55", "old 90 %"), ("new", -0.17, "C0", "new 90 %")):
                st = s[part]
                ax.plot([st["q05"] / ref, st["q95"] / ref], [y + dy] * 2, color=color, lw=5,
                        solid_capstyle="butt", label=label if i == 0 else None)
                ax.plot([st["mean"] / ref], [y + dy], "|", color="k", ms=9)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([f"{k} ({shift[k]['unit']})\nSD x{shift[k]['sd_ratio']:.2f}"
                            if shift[k]["sd_ratio"] is not None else k for k in reversed(keys)], fontsize=7.5)
        ax.set_ylim(-0.6, len(keys) - 0.4)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="x")
        if relative:
            ax.axvline(1.0, color="k", lw=0.6, ls=":")
            lo, hi = ax.get_xlim()
            if hi / max(lo, 1e-12) > 3.0:  # a log axis only where the intervals span a wide range
                from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("value / old posterior mean", fontsize=8)
            ax.set_title("parameters before (grey) and after (blue) the update: 90 %, mean", fontsize=9)
            ax.legend(fontsize=7, loc="best")
        else:
            ax.set_xlim(left=0.0)
            ax.set_xlabel("batch-to-batch SD (log scale)", fontsize=8)
            ax.set_title("batch effects", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path, dpi=100)

