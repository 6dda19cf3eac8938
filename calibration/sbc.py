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
import optax
from jax.flatten_util import ravel_pytree
from numpyro.distributions import biject_to, constraints
from numpyro.infer import SVI, Predictive, Trace_ELBO, init_to_median
from numpyro.infer.autoguide import AutoMultivariateNormal
from numpyro.infer.svi import SVIState
from numpyro.infer.util import initialize_model
from scipy import stats

from .infer import _guide_permutation, load_history
from .model import build_data, calibration_model
from .spec import StrainSpec

__all__ = ["SBCResult", "simulation_based_calibration"]


@dataclasses.dataclass(frozen=True)
class SBCResult:
    """Ranks of the true strain parameters among posterior draws, per replication.

    Attributes:
        ranks: `{parameter key: (reps,) ints in [0, L]}`.
        n_draws: L.
        inside90: `{parameter key: (reps,) bool}` true value inside the central 90 % interval.
        truths: `{parameter key: (reps,) true values}`.
    """

    ranks: dict[str, np.ndarray]
    n_draws: int
    inside90: dict[str, np.ndarray]
    truths: dict[str, np.ndarray]

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
    # compiled once for every replication: the observations are an argument, not a constant.
    # As in `calibrate(method="svi")`: Laplace approximation (L-BFGS mode, inverse Hessian), then
    # AutoMultivariateNormal SVI started there.
    def fn(obs_y):
        calibration_model(spec, spec.scenario.model, eqx.tree_at(lambda x: x.obs_y, data, obs_y), dt=dt)

    obs0 = dict(data.obs_y)
    info = initialize_model(jax.random.PRNGKey(seed), fn, init_strategy=init_to_median(num_samples=15),
                            model_args=(obs0,), dynamic_args=True)
    x0, unravel = ravel_pytree(info.param_info.z)
    lbfgs = optax.lbfgs()

    # jitted steps in Python loops, not scanned loops: XLA compiles a whole while loop as one
    # function in this process (see twin.integrators), which is slow for loops this large
    def potential(x, obs_y):
        return info.potential_fn(obs_y)(unravel(x))

    @jax.jit
    def lbfgs_step(x, st, obs_y):
        f = lambda y: potential(y, obs_y)  # noqa: E731
        v, g = optax.value_and_grad_from_state(f)(x, state=st)
        u, st = lbfgs.update(g, st, x, value=v, grad=g, value_fn=f)
        return optax.apply_updates(x, u), st, v

    hessian = jax.jit(jax.hessian(potential))

    def laplace(obs_y):
        x, st, v = x0, lbfgs.init(x0), None
        for _ in range(200):  # as in `calibrate`
            x, st, v = lbfgs_step(x, st, obs_y)
        return x, hessian(x, obs_y), v

    guide = AutoMultivariateNormal(fn, init_loc_fn=init_to_median(num_samples=15))
    svi = SVI(fn, guide, optax.adam(optax.exponential_decay(0.005, svi_steps, 0.1)), Trace_ELBO())
    state0 = svi.init(jax.random.PRNGKey(seed), obs0)
    perm = _guide_permutation(guide, unravel, x0.shape[0])
    to_unconstrained = biject_to(constraints.softplus_lower_cholesky).inv

    update = jax.jit(svi.update)

    def refine(optim_state, rng, obs_y):
        st = SVIState(optim_state, state0.mutable_state, rng)
        losses = []
        for _ in range(svi_steps):
            st, loss = update(st, obs_y)
            losses.append(loss)
        return svi.get_params(st), jnp.stack(losses)

    for r in range(reps):
        obs = {v: jnp.where(data.obs_mask[v], sims[f"obs_{v}"][r], 0.0) for v in data.variables}
        if not all(bool(jnp.all(jnp.isfinite(o))) for o in obs.values()):
            raise FloatingPointError(f"replication {r}: prior draw gave non-finite observations")
        mode, H, final = (np.asarray(a) for a in laplace(obs))
        if not (np.all(np.isfinite(mode)) and np.isfinite(final)):
            raise FloatingPointError(f"replication {r}: the posterior mode search failed")
        w, V = np.linalg.eigh(0.5 * (H + H.T))
        w = np.maximum(w, 1e-6 * max(float(w.max()), 1.0))
        cov = (V / w) @ V.T
        chol = np.linalg.cholesky(0.5 * (cov + cov.T)[np.ix_(perm, perm)])
        start = {"auto_loc": jnp.asarray(mode[perm]), "auto_scale_tril": to_unconstrained(jnp.asarray(chol))}
        params, losses = refine(svi.optim.init(start), jax.random.PRNGKey(seed + 31 * r), obs)
        if not np.isfinite(np.asarray(losses[-1])):
            raise FloatingPointError(f"replication {r}: SVI diverged (loss not finite)")
        post = guide.sample_posterior(jax.random.PRNGKey(seed + 7 * r + 1), params, sample_shape=(n_draws,))
        for p in spec.priors:
            z_true = float(np.asarray(sims[f"z_{p.key}"])[r]) if f"z_{p.key}" in sims else float(fixed[f"z_{p.key}"])
            z = np.asarray(post[f"z_{p.key}"])
            ranks[p.key][r] = int(np.sum(z < z_true))
            lo, hi = np.quantile(z, [0.05, 0.95])
            inside[p.key][r] = lo <= z_true <= hi
            truths[p.key][r] = float(np.exp(np.log(p.median) + p.log_sd * z_true))
        if progress:
            progress(r + 1, reps)
    return SBCResult(ranks, n_draws, inside, truths)
