"""Inference: NUTS (default, one chain per process) or SVI; the posterior as an ArviZ NetCDF file.

The posterior file records the model structure hash, the parameter names and units, the strain,
hashes of the data it saw and the package version; `load_posterior` refuses a file whose model
structure differs from the model it is loaded against.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Callable

import arviz as az
import jax
import numpy as np
from numpyro.infer import MCMC, NUTS, init_to_median, init_to_value

import twin
from twin.data import BatchSet, load_batch_dir, load_batches
from twin.errors import DataError, TwinError
from twin.io import atomic_path
from twin.recipe import Recipe, read_recipe_csv

from .model import CalibrationData, build_data, calibration_model, structure_hash
from .spec import NOISE_PREFIXES, StrainSpec, load_strain
from .vi import GaussianFit, best_laplace, gaussian_vi, potential

__all__ = ["CalibrationResult", "load_history", "load_batch_source", "calibrate", "save_posterior",
           "load_posterior", "check_noise_sites", "PosteriorError", "FORMAT_VERSION"]

FORMAT_VERSION = 2  # 2: attributes dt and initial (what posterior draws need to simulate)


class PosteriorError(TwinError):
    """A posterior file that cannot be used with this model."""


@dataclasses.dataclass
class CalibrationResult:
    spec: StrainSpec
    data: CalibrationData
    idata: az.InferenceData
    method: str
    wall_s: float


def load_batch_source(path: str | os.PathLike, spec: StrainSpec) -> tuple[BatchSet, dict[str, Recipe]]:
    """Batches from a batch directory (`measurements.csv|parquet` + `batches.csv`) or a long
    measurements file (with `batches.csv` beside it, if any), validated by `twin.data`, and each
    batch's recipe: `recipes/<batch>.csv` beside the data, else the scenario's recipe.

    Raises:
        DataError, UnitError: anything `twin.data` rejects.
        RecipeError: a recipe file that does not parse or does not span the scenario.
    """
    path = Path(path)
    if path.is_dir():
        bs, folder = load_batch_dir(path), path
    elif path.is_file():
        bs, folder = load_batches(path), path.parent
    else:
        raise DataError("batch data not found (give a batch directory or a measurements file)", where=path)
    sc = spec.scenario
    recipes = {}
    for b in bs.batch_ids:
        f = folder / "recipes" / f"{b}.csv"
        recipes[b] = read_recipe_csv(f, defaults=sc.control_defaults, span=(0.0, sc.duration_h)) \
            if f.is_file() else sc.recipe
    return bs, recipes


def load_history(spec: StrainSpec) -> tuple[BatchSet, dict[str, Recipe]]:
    """The strain's batches (minus hold-outs) and each batch's recipe, then the batches of
    `spec.extra_data` (refused if a batch id is already taken)."""
    if spec.data_dir is None:
        from .synthetic import make_synthetic

        hist = make_synthetic(spec)
        bs, recipes = hist.batch_set, dict(hist.recipes)
    else:
        bs, recipes = load_batch_source(spec.data_dir, spec)
        bs = bs.select([b for b in bs.batch_ids if b not in spec.holdout])
    for extra in spec.extra_data:
        more, more_recipes = load_batch_source(extra, spec)
        for b in more.batch_ids:
            if b in bs:
                raise DataError("batch id already in the calibration data", where=extra, field="batch",
                                value=b, hint=f"already from {bs.source}")
        bs = BatchSet({**bs.records, **more.records}, f"{bs.source}; {more.source}")
        recipes.update(more_recipes)
    return bs, recipes


def _model_fn(spec: StrainSpec, data: CalibrationData):
    dt = float(spec.inference["dt"])
    model = spec.scenario.model

    def fn():
        calibration_model(spec, model, data, dt=dt)

    return fn


def _start(pot, start: dict) -> np.ndarray:
    """The flat unconstrained point of `start` (`{site: constrained value}`); sites it lacks, or
    gives in another shape, keep the potential's own initial value."""
    from jax.flatten_util import ravel_pytree
    from numpyro.distributions import biject_to

    sites = pot.unravel(jax.numpy.asarray(pot.x0))
    for k, v in sites.items():
        if k in start and np.shape(start[k]) == np.shape(v):
            sites[k] = biject_to(pot.supports[k]).inv(jax.numpy.asarray(start[k], dtype=float))
    return np.asarray(ravel_pytree(sites)[0])


def _svi(spec, data, *, steps: int, seed: int, progress: Callable | None = None,
         start: dict | None = None) -> GaussianFit:
    """Full-rank Gaussian VI started at the Laplace approximation (L-BFGS mode, inverse Hessian):
    from there the ELBO needs hundreds, not many thousands, of Adam steps, and a poor local optimum
    of the noise levels is avoided. See `calibration.vi`. With `start` (`{site: constrained
    value}`) the mode search starts there instead of at the prior medians."""
    if progress:
        progress(0, steps)
    pot = potential(_model_fn(spec, data), seed=seed)
    x0 = None if start is None else _start(pot, start)
    mode, cov, ok, record = best_laplace(pot, x0=x0, starts=int(spec.inference["laplace_starts"]), seed=seed,
                                         iterations=int(spec.inference["laplace_iterations"]))
    if not ok:  # start from the prior medians with unit scales instead
        mode, cov = pot.x0, np.eye(pot.dim)
    fit = gaussian_vi(pot, mode, cov, steps=steps, seed=seed, draws_per_step=int(spec.inference["svi_draws"]),
                      progress=progress, where=spec.path)
    return dataclasses.replace(fit, laplace=tuple(record))


def _warm_start(spec, data, *, steps: int, seed: int, n_chains: int, progress: Callable | None = None,
                start: dict | None = None):
    """A Gaussian VI fit to start NUTS from: one draw per chain as its initial point, and the
    variational covariance (unconstrained space, sorted-site order as dense-mass NUTS ravels it)
    as the initial inverse mass matrix, so that warm-up only refines step size and metric instead
    of discovering the posterior's scales."""
    fit = _svi(spec, data, steps=steps, seed=seed, progress=progress, start=start)
    draws = fit.sample(jax.random.PRNGKey(seed + 7919), n_chains)
    inits = [{k: v[c] for k, v in draws.items()} for c in range(n_chains)]
    return inits, fit.covariance


def _chain(spec_path: str, overrides: dict, chain: int, seed: int, init: dict | None,
           inverse_mass_matrix: np.ndarray | None = None, q: Any = None) -> dict:
    """One NUTS chain (runs in its own process)."""
    jax.config.update("jax_enable_x64", True)
    spec = load_strain(spec_path)
    spec = dataclasses.replace(spec, inference={**spec.inference, **overrides.get("inference", {})},
                               extra_data=tuple(Path(p) for p in overrides.get("extra_data", ())))
    bs, recipes = load_history(spec)
    if overrides.get("batches"):
        bs = bs.select(overrides["batches"])
    data = build_data(spec, bs, recipes)
    inf = spec.inference
    # with `dense_mass=True` NUTS ravels the unconstrained latent sites in sorted-name order, the
    # order of `calibration.vi` (and so of the warm start's covariance)
    kernel = NUTS(_model_fn(spec, data), dense_mass=True, max_tree_depth=int(inf["max_tree_depth"]),
                  target_accept_prob=float(inf["target_accept"]), inverse_mass_matrix=inverse_mass_matrix,
                  init_strategy=init_to_value(values=init) if init else init_to_median(num_samples=15))
    mcmc = MCMC(kernel, num_warmup=int(inf["warmup"]), num_samples=int(inf["samples"]), num_chains=1,
                progress_bar=False)
    fields = ("diverging", "num_steps", "accept_prob")
    mcmc.warmup(jax.random.PRNGKey(seed + 1000 * chain), collect_warmup=False, extra_fields=fields)
    if q is not None:
        q.put(("warmup_done", chain))
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=fields)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    extra = mcmc.get_extra_fields()
    return {"samples": samples, "diverging": np.asarray(extra["diverging"]),
            "num_steps": np.asarray(extra.get("num_steps", np.zeros(1)))}


def calibrate(spec: StrainSpec, *, method: str | None = None, batches: list[str] | None = None,
              chains: int | None = None, warmup: int | None = None, samples: int | None = None,
              svi_steps: int | None = None, seed: int | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              start: dict | None = None) -> CalibrationResult:
    """Calibrate the strain: NUTS (one process per chain) or SVI; returns the posterior.

    Args:
        spec: the strain.
        method: "nuts" or "svi" (default from the strain file).
        batches: calibrate on these batch ids only.
        chains, warmup, samples, svi_steps, seed: override the strain file's [inference].
        progress: callback `(stage, done, total)`.
        start: `{latent site: constrained value}` where the Laplace mode search (SVI, and SVI's
            warm start of NUTS) begins, e.g. an earlier posterior's mean (`twin calibrate
            --update-with`); default the prior medians.
    """
    inf = dict(spec.inference)
    for k, v in dict(method=method, chains=chains, warmup=warmup, samples=samples,
                     svi_steps=svi_steps, seed=seed).items():
        if v is not None:
            inf[k] = v
    spec = dataclasses.replace(spec, inference=inf)
    start = _complete_start(spec, start)
    t0 = time.perf_counter()
    bs, recipes = load_history(spec)
    if batches:
        bs = bs.select(batches)
    data = build_data(spec, bs, recipes)
    cb = progress or (lambda *a: None)
    seed = int(inf["seed"])
    if inf["method"] == "svi":
        fit = _svi(spec, data, steps=int(inf["svi_steps"]), seed=seed, progress=lambda i, n: cb("SVI", i, n),
                   start=start)
        draws = fit.sample(jax.random.PRNGKey(seed + 1), int(inf["samples"]))
        losses = fit.losses
        posterior = {k: np.asarray(v)[None] for k, v in draws.items()}
        posterior.update(_deterministic(spec, data, draws))
        stats = {"diverging": np.zeros((1, int(inf["samples"])), dtype=bool)}
        idata = _to_idata(spec, data, posterior, stats, method="svi")
        idata.attrs["svi_final_loss"] = float(np.nanmean(losses[-50:]))
        idata.attrs["svi_rejected_draws"] = int(fit.rejected)
        idata.attrs["laplace_starts"] = json.dumps(list(fit.laplace))
    else:
        n_chains = int(inf["chains"])
        overrides = {"inference": inf, "batches": list(bs.batch_ids),
                     "extra_data": [str(p) for p in spec.extra_data]}
        inits, imm = [None] * n_chains, None
        if inf.get("warm_start", True):
            inits, imm = _warm_start(spec, data, steps=int(inf["svi_steps"]), seed=seed, n_chains=n_chains,
                                     progress=lambda i, n: cb("SVI warm start", i, n), start=start)
        results = []
        if n_chains == 1:
            cb("NUTS chains", 0, 1)
            results.append(_chain(str(spec.path), overrides, 0, seed, inits[0], imm))
            cb("NUTS chains", 1, 1)
        else:
            ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=min(n_chains, os.cpu_count() or 1), mp_context=ctx) as ex:
                futs = [ex.submit(_chain, str(spec.path), overrides, c, seed, inits[c], imm)
                        for c in range(n_chains)]
                done = 0
                cb("NUTS chains", 0, n_chains)
                for f in cf.as_completed(futs):
                    f.result()
                    done += 1
                    cb("NUTS chains", done, n_chains)
                results = [f.result() for f in futs]
        posterior = {k: np.stack([r["samples"][k] for r in results]) for k in results[0]["samples"]}
        stats = {"diverging": np.stack([r["diverging"] for r in results]),
                 "n_steps": np.stack([r["num_steps"] for r in results])}
        idata = _to_idata(spec, data, posterior, stats, method="nuts")
    wall = time.perf_counter() - t0
    idata.attrs["wall_s"] = wall
    return CalibrationResult(spec, data, idata, inf["method"], wall)


def _complete_start(spec: StrainSpec, start: dict | None) -> dict | None:
    """With centred batch effects, each batch's log-value `log_*` from a start that gives the
    standardised effects instead (`z_*`, `tau_*`, `eps_*`, e.g. a non-centred posterior's means)."""
    if not start or spec.batch_parameterisation != "centred":
        return start
    start = dict(start)
    for p in spec.priors:
        k = p.key
        if k in spec.batch_effects and f"log_{k}" not in start and all(
                f"{s}_{k}" in start for s in ("z", "tau", "eps")):
            lg = np.log(p.median) + p.log_sd * np.asarray(start[f"z_{k}"], dtype=float)
            start[f"log_{k}"] = lg + np.asarray(start[f"tau_{k}"], dtype=float) * np.asarray(start[f"eps_{k}"], dtype=float)
    return start


def _deterministic(spec, data, draws) -> dict:
    """The model's deterministic sites from draws of its latent ones (an SVI fit's draws): every
    fitted parameter and, with centred batch effects, the standardised effects `eps_*`."""
    out = {}
    for p in spec.priors:
        lg = np.log(p.median) + p.log_sd * np.asarray(draws[f"z_{p.key}"])
        out[p.key] = np.exp(lg)[None]
        if spec.batch_parameterisation == "centred" and p.key in spec.batch_effects:
            tau = np.asarray(draws[f"tau_{p.key}"])
            out[f"eps_{p.key}"] = ((np.asarray(draws[f"log_{p.key}"]) - lg[:, None]) / tau[:, None])[None]
    return out


def _to_idata(spec: StrainSpec, data: CalibrationData, posterior: dict, stats: dict, *, method: str):
    coords = {"batch": list(data.batches)}
    dims = {}
    for k, v in posterior.items():
        if v.ndim == 3 and v.shape[-1] == data.n_batches:
            dims[k] = ["batch"]
    idata = az.from_dict(posterior=posterior, sample_stats=stats, coords=coords, dims=dims)
    hist_hash = _history_hash(spec, data)
    idata.attrs.update({
        "format_version": FORMAT_VERSION,
        "twin_version": twin.__version__,
        "strain": spec.name,
        "strain_file": str(spec.path),
        "scenario": spec.scenario.name,
        "model_structure": structure_hash(spec.scenario.model),
        "parameters": json.dumps({p.key: {"name": p.name, "unit": p.unit, "prior_median": p.median,
                                          "prior_log_sd": p.log_sd} for p in spec.priors}),
        "batch_effects": json.dumps(list(spec.batch_effects)),
        "batch_parameterisation": spec.batch_parameterisation,
        "batch_sd_prior": float(spec.batch_sd_prior),
        "initial": json.dumps({k: float(v) for k, v in spec.initial.items()}),
        "observations": json.dumps({o.variable: {"sd": o.sd, "cv": o.cv, "timing_h": o.timing_h,
                                                 "floor": o.floor} for o in spec.observations}),
        "dt": float(spec.inference["dt"]),
        "batches": json.dumps(list(data.batches)),
        "data_hash": hist_hash,
        "method": method,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    return idata


def _history_hash(spec, data) -> str:
    import hashlib

    h = hashlib.sha256()
    for v in data.variables:
        h.update(np.asarray(data.obs_t[v]).tobytes())
        h.update(np.asarray(data.obs_y[v]).tobytes())
    for leaf in jax.tree_util.tree_leaves(data.recipes):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


def save_posterior(idata: az.InferenceData, path: str | os.PathLike) -> Path:
    """Write the posterior NetCDF atomically (no partial file if interrupted)."""
    with atomic_path(path, suffix=".nc") as tmp:
        idata.to_netcdf(str(tmp))
    return Path(path)


def load_posterior(path: str | os.PathLike, *, model=None) -> az.InferenceData:
    """Read a posterior; with `model`, refuse one made for another model structure.

    Raises:
        PosteriorError: not a posterior of this package, another format version, or another
            model structure.
    """
    path = Path(path)
    if not path.is_file():
        raise PosteriorError("posterior file not found", where=path)
    try:
        idata = az.from_netcdf(str(path))
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise PosteriorError(f"not a readable NetCDF posterior ({type(e).__name__})", where=path) from None
    attrs = idata.posterior.attrs if "posterior" in idata.groups() else {}
    attrs = {**attrs, **getattr(idata, "attrs", {})}
    if "model_structure" not in attrs:
        raise PosteriorError("not a posterior written by `twin calibrate` (no model_structure)", where=path)
    if int(attrs.get("format_version", -1)) != FORMAT_VERSION:
        raise PosteriorError("posterior format version differs", where=path, field="format_version",
                             value=attrs.get("format_version"), hint=f"this package reads version {FORMAT_VERSION}")
    if model is not None:
        want = structure_hash(model)
        if attrs["model_structure"] != want:
            raise PosteriorError(
                f"posterior was made for another model structure ({attrs['model_structure']}, strain "
                f"'{attrs.get('strain')}', scenario '{attrs.get('scenario')}'); this model is {want}",
                where=path, field="model_structure", hint="recalibrate with `twin calibrate` for this model")
    return idata


def check_noise_sites(spec: StrainSpec, idata: az.InferenceData, where) -> None:
    """Refuse a posterior whose noise sites are not those of the strain file's observation model:
    one it lacks (e.g. a `timing_h` added to the strain file after the posterior was made), or one
    the strain file no longer has (e.g. an additive SD dropped from a variable: the posterior's
    draws of the other terms were fitted beside it and would be used without it).

    Raises:
        PosteriorError: naming the file and the site.
    """
    have = {v for v in idata.posterior.data_vars if v.startswith(NOISE_PREFIXES)}
    want = set(spec.noise_sites)
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        site = (missing or extra)[0]
        variable = site.split("_", 1)[1]
        what = (f"has no noise site '{site}' that the strain file's observation model of {variable} needs"
                if missing else
                f"has a noise site '{site}' that the strain file's observation model of {variable} does not")
        raise PosteriorError(f"the posterior {what} (made with another [observations] section)", where=where,
                             field=site, hint="recalibrate with `twin calibrate` for this strain file")
