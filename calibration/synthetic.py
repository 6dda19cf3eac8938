"""Synthetic plant history from the twin itself, with known true parameters.

Used to prove that calibration recovers what it should (parameter recovery, simulation-based
calibration) before it is trusted on a real plant. Each batch gets its own parameters (lognormal
batch effects around the truth), its own operator variation of the feed levels, and noisy
observations with the same noise model as the likelihood.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pandas as pd

from twin.data import BatchSet, batch_set_from_frames
from twin.reactor import set_parameters
from twin.recipe import Profile, Recipe
from twin.simulate import FixedGrid, simulate

from .model import observe
from .spec import OBSERVABLE, StrainSpec

__all__ = ["SyntheticHistory", "make_synthetic"]


@dataclasses.dataclass(frozen=True)
class SyntheticHistory:
    batch_set: BatchSet
    recipes: dict[str, Recipe]
    truth_global: dict[str, float]  # public name -> value
    truth_batch: dict[str, dict[str, float]]  # batch -> {public name -> value}


def _jitter(recipe: Recipe, rng: np.random.Generator, rel: float) -> Recipe:
    profiles = dict(recipe.profiles)
    for var in ("substrate_feed", "precursor_feed", "oil_feed"):
        p = profiles[var]
        f = float(np.exp(rng.normal(0.0, rel)))
        profiles[var] = Profile(p.start, p.end, p.value * f, p.value_end * f)
    return Recipe(profiles)


def make_synthetic(spec: StrainSpec, *, seed: int | None = None, n_batches: int | None = None,
                   truth: dict[str, float] | None = None, dt: float | None = None) -> SyntheticHistory:
    """Simulate `n_batches` noisy batches of the strain's scenario with known parameters.

    Args:
        spec: the strain (its `[synthetic]` table gives defaults for everything below).
        seed: random seed (batch effects, operator variation, noise).
        n_batches: number of batches.
        truth: global true values by short name (`mu_max`); default `[synthetic].truth`,
            else the prior medians.
        dt: fixed solver step, h (default the strain's inference dt).
    """
    syn = dict(spec.synthetic or {})
    seed = int(syn.get("seed", 0) if seed is None else seed)
    n = int(syn.get("n_batches", 6) if n_batches is None else n_batches)
    dt = float(dt or spec.inference["dt"])
    rng = np.random.default_rng(seed)
    sc = spec.scenario
    truth = dict(truth if truth is not None else syn.get("truth", {}))
    tg = {p.name: float(truth.get(p.key, p.median)) for p in spec.priors}
    batch_sd = syn.get("batch_sd", {})
    assay_every = float(syn.get("assay_every_h", 12.0))
    online_every = float(syn.get("online_every_h", 4.0))
    cv = {"biomass": 0.05, "substrate": 0.05, "product": 0.03, "precursor": 0.05, "oil": 0.05}
    cv.update(syn.get("noise_cv", {}))
    sd = {"biomass": 0.05, "substrate": 0.02, "product": 0.01, "precursor": 0.01, "oil": 0.05,
          "volume": 100.0, "dissolved_oxygen": 1.0, "oxygen_uptake_rate": 0.3}
    sd.update(syn.get("noise_sd", {}))
    jitter = float(syn.get("feed_jitter", 0.05))
    T = sc.duration_h
    options = FixedGrid(dt=dt, max_horizon_h=T + dt)
    grid = jnp.arange(0.0, T + dt / 2, dt)
    rows, batches, recipes, tb = [], [], {}, {}
    observed = [o.variable for o in spec.observations]
    for b in range(n):
        bid = f"SYN{b + 1:02d}"
        vals = {}
        for p in spec.priors:
            s = float(batch_sd.get(p.key, 0.0))
            vals[p.name] = tg[p.name] * float(np.exp(rng.normal(0.0, s))) if s > 0 else tg[p.name]
        model = set_parameters(sc.model, vals)
        rec = _jitter(sc.recipe, rng, jitter)
        traj = simulate(model, rec, sc.y0, 0.0, T, ts=grid, options=options, label=bid)
        t_assay = np.arange(0.0, T + 1e-9, assay_every)
        t_online = np.arange(0.0, T + 1e-9, online_every)
        for var in observed:
            online = var in ("volume", "dissolved_oxygen", "oxygen_uptake_rate")
            t_obs = t_online if online else t_assay
            true = np.interp(t_obs, np.asarray(grid), np.asarray(observe(traj, var)))
            noise_sd = np.sqrt(sd.get(var, 0.0) ** 2 + (cv.get(var, 0.0) * true) ** 2) if not online \
                else np.full_like(true, sd.get(var, 0.0))
            y = np.maximum(true + rng.normal(0.0, 1.0, true.shape) * noise_sd, 0.0)
            for t, v in zip(t_obs, y):
                rows.append((bid, float(t), var, float(v), OBSERVABLE[var], "online" if online else "offline"))
        batches.append((bid, spec.name, "", float(sc.y0.volume), "synthetic (twin-generated)"))
        recipes[bid] = rec
        tb[bid] = vals
    long = pd.DataFrame(rows, columns=["batch", "time_h", "variable", "value", "unit", "source"])
    bt = pd.DataFrame(batches, columns=["batch", "strain", "start", "scale_L", "notes"])
    bs = batch_set_from_frames(long, bt, source=f"synthetic:{spec.name}:seed{seed}")
    return SyntheticHistory(bs, recipes, tg, tb)
