"""Use a calibrated posterior outside inference: parameter draws for a new batch, ensembles.

A posterior file (`twin calibrate ... --out DIR` -> `DIR/posterior.nc`) carries everything needed
here in its attributes (parameter names and priors, which parameters vary batch to batch, the
uncertain initial amounts, the solver grid the likelihood used), so what-ifs, recipe optimisation
and forecasts need only the file and a scenario of the same model structure.

A *new* batch (one the posterior has not seen) draws its batch effects and initial-amount
deviations afresh from the fitted population:
$$\\theta_{p,\\text{new}} = \\theta_p\\,e^{\\tau_p\\epsilon},\\quad \\epsilon\\sim N(0,1).$$
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from twin.errors import TwinError
from twin.reactor import FermentationModel, set_parameters
from twin.recipe import Profile, Recipe, sample
from twin.simulate import FixedGrid, Trajectory, simulate
from twin.state import ReactorState

from .infer import load_posterior
from .spec import NOISE_PREFIXES

__all__ = ["PosteriorDraws", "posterior_draws", "load_draws", "simulate_draws"]


@dataclasses.dataclass(frozen=True)
class PosteriorDraws:
    """`D` joint posterior draws, ready to simulate.

    Attributes:
        params: `{public parameter name: (D,)}`, e.g. `{"kinetics.mu_max": ...}`.
        init_factors: `{state: (D,)}` multiplicative deviations of uncertain initial amounts.
        noise: `{observed variable: (sd (D,), cv (D,), timing (D,))}` measurement noise: additive
            SD, relative SD and timing error (h; see `calibration.model`).
        dt: fixed solver step (h) the posterior's likelihood was computed with.
        attrs: the posterior file's attributes (provenance).
    """

    params: dict[str, np.ndarray]
    init_factors: dict[str, np.ndarray]
    noise: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    dt: float
    attrs: dict

    @property
    def n(self) -> int:
        return len(next(iter(self.params.values())))


def posterior_draws(idata: az.InferenceData, n: int | None = None, *, seed: int = 0,
                    new_batch: bool = True, where: str | os.PathLike | None = None) -> PosteriorDraws:
    """Joint draws of the strain parameters (and, for a new batch, fresh batch effects).

    Args:
        idata: a posterior from `twin calibrate`.
        n: number of draws (all if None or more than available), chosen at random with `seed`.
        new_batch: draw batch effects and initial deviations from the population (a batch the
            posterior has not seen). If False, the strain-level (typical-batch) values are used.
    """
    attrs = {**idata.posterior.attrs, **getattr(idata, "attrs", {})}
    for key in ("parameters", "batch_effects", "dt"):
        if key not in attrs:
            raise TwinError(f"posterior lacks attribute '{key}' (written by an older version)", where=where,
                            field=key, hint="recalibrate with `twin calibrate`")
    info = json.loads(attrs["parameters"])
    effects = json.loads(attrs["batch_effects"])
    initial = json.loads(attrs.get("initial", "{}"))
    post = idata.posterior
    total = post.sizes["chain"] * post.sizes["draw"]
    rng = np.random.default_rng(seed)
    idx = np.arange(total) if n is None or n >= total else np.sort(rng.choice(total, n, replace=False))

    def flat(name):
        a = np.asarray(post[name])
        return a.reshape((total,) + a.shape[2:])[idx]

    D = len(idx)
    params = {}
    for key, meta in info.items():
        value = flat(key)
        if key in effects and new_batch:
            value = value * np.exp(flat(f"tau_{key}") * rng.standard_normal(D))
        params[meta["name"]] = value
    factors = {}
    for name, log_sd in initial.items():
        eta = rng.standard_normal(D) if new_batch else np.zeros(D)
        factors[name] = np.exp(float(log_sd) * eta)
    noise = {}
    for v in post.data_vars:
        for j, prefix in enumerate(NOISE_PREFIXES):  # the order of the tuples in `noise`
            if v.startswith(prefix):
                var = v[len(prefix):]
                terms = list(noise.get(var, (np.zeros(D),) * len(NOISE_PREFIXES)))
                terms[j] = flat(v)
                noise[var] = tuple(terms)
    return PosteriorDraws(params, factors, noise, float(attrs["dt"]), attrs)


def load_draws(path: str | os.PathLike, model: FermentationModel, n: int | None = 200, *, seed: int = 0,
               new_batch: bool = True) -> PosteriorDraws:
    """Read a posterior file made for `model`'s structure (else `PosteriorError`) and draw from it."""
    idata = load_posterior(path, model=model)
    draws = posterior_draws(idata, n, seed=seed, new_batch=new_batch, where=path)
    missing = [k for k in draws.params if not _has_parameter(model, k)]
    if missing:
        raise TwinError("posterior parameter not in this model", where=path, field=missing[0],
                        hint="recalibrate for this model")
    return draws


def _has_parameter(model, name: str) -> bool:
    from twin.reactor import parameter_table

    return name in parameter_table(model)


def _scale(y0: ReactorState, factors: dict) -> ReactorState:
    for name, f in factors.items():
        y0 = eqx.tree_at(lambda y: getattr(y, name), y0, getattr(y0, name) * f)
    return y0


def simulate_draws(model: FermentationModel, recipe: Recipe, y0: ReactorState, draws: PosteriorDraws,
                   t0: float, t1: float, *, ts=None, options=None,
                   per_draw: dict[str, Profile] | None = None) -> Trajectory:
    """Simulate every draw (vmap): a `Trajectory` whose leaves carry a leading draws axis.

    By default on the posterior's own fixed grid (`FixedGrid(draws.dt)`): the discrete model its
    likelihood was computed with, so predictions are those of the calibrated model.

    `per_draw` replaces recipe profiles draw by draw: `{variable: Profile}` whose `value` and
    `value_end` carry a leading draws axis (shared `start` and `end`); e.g. the water feed with each
    draw's own acid/base inflow from the pH loop.
    """
    options = options or FixedGrid(dt=draws.dt, max_horizon_h=float(t1) - float(t0) + draws.dt)
    params = {k: jnp.asarray(v) for k, v in draws.params.items()}
    factors = {k: jnp.asarray(v) for k, v in draws.init_factors.items()}
    per_draw = per_draw or {}
    values = {k: (jnp.asarray(p.value), jnp.asarray(p.value_end)) for k, p in per_draw.items()}
    for k, (v, _) in values.items():
        if v.ndim != 2 or v.shape[0] != draws.n:
            raise ValueError(f"per_draw[{k!r}] needs values of shape (draws={draws.n}, phases), got {v.shape}")

    @jax.jit
    def run(p, f, vals):
        def one(pi, fi, vi):
            m = set_parameters(model, pi, check=False)
            rec = recipe
            for k, (v, ve) in vi.items():
                rec = rec.with_profile(k, Profile(per_draw[k].start, per_draw[k].end, v, ve))
            return simulate(m, rec, _scale(y0, fi), t0, t1, ts=ts, options=options)

        return jax.vmap(one)(p, f, vals)

    return run(params, factors, values)


def ph_loop_inflows(attrs: dict, t_end: float, dt: float) -> np.ndarray | None:
    """The recorded acid + base flow (L/h) of each calibration batch on each `dt` step of
    `[0, t_end)`, `(batches, steps)`, read from the strain history the posterior names
    (`attrs["strain_file"]`); None when that file is not on this machine or its history records
    neither flow. The twin has no pH model: the calibration fed these flows as water, so a
    prediction for a new batch must add some pH-loop inflow too (see `ph_loop_water`)."""
    strain_file = attrs.get("strain_file")
    if not strain_file or not Path(strain_file).is_file():
        return None
    from .infer import load_history
    from .spec import load_strain

    bs, _ = load_history(load_strain(strain_file))
    mids = np.arange(0.0, t_end, dt) + dt / 2
    rows = []
    for rec in bs:
        flow = np.zeros_like(mids)
        found = False
        for var in ("acid_flow", "base_flow"):
            if var in rec.variables():
                t, v = rec.series(var)
                flow += np.interp(mids, t, v, left=0.0, right=0.0)
                found = True
        if found:
            rows.append(flow)
    return np.stack(rows) if rows else None


def ph_loop_water(water: np.ndarray, inflows: np.ndarray | None, n: int, t_end: float,
                  dt: float) -> dict[str, Profile]:
    """`simulate_draws`'s `per_draw` for `n` draws: the recipe's water feed `water` (L/h on the
    midpoints of the `dt` steps of `[0, t_end)`, e.g. `recipe_water(recipe, t_end, dt)`) plus, for
    draw `i`, the pH loop's acid + base inflow recorded in calibration batch `i mod batches`
    (`inflows` from `ph_loop_inflows`, on the same steps). Each draw carries one real batch's
    inflow, so the volume over the draws spreads as the history's did (the IndPenSim history's base
    use varies by about 4 m3 a batch) rather than all at the median. Empty when `inflows` is None.
    The inflow is not part of any recipe: it is what the plant's controller added. NumPy only, so
    it may be called while a recipe is being traced."""
    if inflows is None:
        return {}
    grid = np.arange(0.0, t_end, dt)
    if inflows.shape[1] != grid.shape[0] or np.shape(water) != grid.shape:
        raise ValueError(f"inflows has {inflows.shape[1]} steps and water {np.shape(water)}, the grid of "
                         f"[0, {t_end:g}) h at {dt:g} h has {grid.shape[0]}")
    rows = np.asarray(water)[None, :] + inflows[np.arange(n) % len(inflows)]
    # times stay concrete (NumPy) under jit, so `simulate` can check them against its grid
    return {"water_feed": Profile(grid, np.asarray(t_end), rows, rows)}


def recipe_water(recipe: Recipe, t_end: float, dt: float) -> np.ndarray:
    """The recipe's water feed (L/h) on the midpoints of the `dt` steps of `[0, t_end)` (concrete:
    call it outside any trace)."""
    return sample(recipe, "water_feed", np.arange(0.0, t_end, dt) + dt / 2)
