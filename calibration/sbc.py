r"""Simulation-based calibration (Talts et al. 2018) and parameter recovery for a strain.

One replication: draw every latent of the calibration model from its prior (strain parameters,
batch effects and their SDs, initial-state deviations, noise levels), draw observations from the
model's likelihood at the strain's own observation times, calibrate on them, and record the rank
of each true strain parameter among `L` posterior draws. If the inference is calibrated, each
rank is uniform on {0, ..., L}; a chi-square test over replications checks it. Because the data
come from the calibration model itself (its prior predictive), a failure points at the
inference (e.g. SVI's Gaussian approximation being too narrow), not at model mismatch.

Reference: S. Talts, M. Betancourt, D. Simpson, A. Vehtari, A. Gelman (2018) Validating Bayesian
inference algorithms with simulation-based calibration, arXiv:1804.06788.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import Predictive
from scipy import stats

from twin.errors import TwinError

from .infer import load_history
from .model import build_data, calibration_model
from .spec import StrainSpec
from .vi import gaussian_vi, laplace, potential

__all__ = ["SBCResult", "simulation_based_calibration"]


@dataclasses.dataclass(frozen=True)
class SBCResult:
    """Ranks of the true strain parameters among posterior draws, per replication.

    Attributes:
        ranks: `{parameter key: (reps,) ints in [0, L]}`.
        n_draws: L.
        inside90: `{parameter key: (reps,) bool}` true value inside the central 90 % interval.
        truths: `{parameter key: (reps,) true values}`.
        failed: `(replication, why)` of replications whose inference failed; they are left out
            of the other fields and reported, not hidden (a failure rate is a result too).
    """

    ranks: dict[str, np.ndarray]
    n_draws: int
    inside90: dict[str, np.ndarray]
    truths: dict[str, np.ndarray]
    failed: tuple[tuple[int, str], ...] = ()

    def chi2(self, bins: int = 10) -> dict[str, tuple[float, float]]:
        """`{key: (chi-square statistic, p-value)}` of the rank histogram against uniform."""
        out = {}
        for k, r in self.ranks.items():
            edges = np.linspace(-0.5, self.n_draws + 0.5, bins + 1)
            counts, _ = np.histogram(r, edges)
            out[k] = tuple(float(x) for x in stats.chisquare(counts))
        return out

    def coverage90(self) -> float:
        """Fraction of (replication, parameter) pairs whose truth lies in the 90 % interval."""
        return float(np.mean(np.concatenate([v for v in self.inside90.values()])))


def simulation_based_calibration(spec: StrainSpec, reps: int, *, svi_steps: int, n_draws: int = 99,
                                 seed: int = 0, truth: dict[str, float] | None = None,
                                 progress: Callable[[int, int], None] | None = None) -> SBCResult:
    """Run `reps` SBC replications with SVI on the strain's history layout (see module doc).

    With `truth` (`{parameter key: value}`), the strain parameters are held at those values in
    every replication (batch effects, initial states and noise still drawn from their priors):
    a parameter-recovery study over repeated datasets instead of SBC.
    """
    bs, recipes = load_history(spec)
    data = build_data(spec, bs, recipes)
    dt = float(spec.inference["dt"])

    def model_fn():
        calibration_model(spec, spec.scenario.model, data, dt=dt, observed=False)

    if truth:
        fixed = {f"z_{p.key}": (np.log(truth[p.key]) - np.log(p.median)) / p.log_sd
                 for p in spec.priors if p.key in truth}
        model_fn = numpyro.handlers.condition(model_fn, data=fixed)
    prior = Predictive(model_fn, num_samples=reps)
    sims = prior(jax.random.PRNGKey(seed + 12345))
    keys = [p.key for p in spec.priors]
    ranks = {k: np.zeros(reps, dtype=int) for k in keys}
    inside = {k: np.zeros(reps, dtype=bool) for k in keys}
    truths = {k: np.zeros(reps) for k in keys}
    done = []
    # compiled once for every replication: the observations are an argument, not a constant.
    # As in `calibrate(method="svi")`: the Laplace approximation, then full-rank Gaussian VI
    # started there (calibration.vi).
    def fn(obs_y):
        calibration_model(spec, spec.scenario.model, eqx.tree_at(lambda x: x.obs_y, data, obs_y), dt=dt)

    pot = potential(fn, seed=seed, model_args=(dict(data.obs_y),))
    failed = []
    for r in range(reps):
        obs = {v: jnp.where(data.obs_mask[v], sims[f"obs_{v}"][r], 0.0) for v in data.variables}
        if not all(bool(jnp.all(jnp.isfinite(o))) for o in obs.values()):
            failed.append((r, "the prior draw gave non-finite observations"))
            continue
        mode, cov, ok = laplace(pot, obs)
        if not ok:
            failed.append((r, "the posterior mode search failed"))
            continue
        try:
            fit = gaussian_vi(pot, mode, cov, obs, steps=svi_steps, seed=seed + 31 * r)
        except TwinError:
            failed.append((r, "variational inference diverged"))
            continue
        post = fit.sample(jax.random.PRNGKey(seed + 7 * r + 1), n_draws)
        for p in spec.priors:
            z_true = float(np.asarray(sims[f"z_{p.key}"])[r]) if f"z_{p.key}" in sims else float(fixed[f"z_{p.key}"])
            z = np.asarray(post[f"z_{p.key}"])
            ranks[p.key][r] = int(np.sum(z < z_true))
            lo, hi = np.quantile(z, [0.05, 0.95])
            inside[p.key][r] = lo <= z_true <= hi
            truths[p.key][r] = float(np.exp(np.log(p.median) + p.log_sd * z_true))
        done.append(r)
        if progress:
            progress(r + 1, reps)
    keep = np.asarray(done, dtype=int)
    return SBCResult({k: v[keep] for k, v in ranks.items()}, n_draws,
                     {k: v[keep] for k, v in inside.items()}, {k: v[keep] for k, v in truths.items()},
                     failed=tuple(failed))
