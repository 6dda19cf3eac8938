r"""Gaussian approximations of a NumPyro model's posterior in its unconstrained space.

Two steps, both driven by one compiled function, the value and gradient of the model's potential
$U(x) = -\log p(x, y)$ (log-Jacobians of the constraining transforms included):

1. The Laplace approximation: the mode by L-BFGS (scipy) and the inverse Hessian there, by
   central differences of the gradient.
2. Full-rank Gaussian variational inference (ADVI, Kucukelbir et al. 2017) started from it:
   $q(x) = N(m, L L^\top)$, maximising the ELBO $E_q[-U(x)] + \log|\det L|$ with Adam on
   reparameterised gradients ($x = m + L\varepsilon$; one draw per step, the entropy exactly).

This is the family `numpyro.infer.autoguide.AutoMultivariateNormal` fits, computed without
compiling a second program for the ELBO: the simulation inside the model is compiled once, for
the potential's gradient, and everything else is small. On the 12-batch IndPenSim history the
separate compilations of numpyro's L-BFGS line search, Hessian and SVI update took minutes, the
evaluations seconds.

Reference: A. Kucukelbir, D. Tran, R. Ranganath, A. Gelman, D. M. Blei (2017) Automatic
differentiation variational inference, JMLR 18(14).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
from jax.flatten_util import ravel_pytree
from numpyro.distributions import biject_to
from numpyro.infer import init_to_median
from numpyro.infer.util import initialize_model

from twin.errors import TwinError

__all__ = ["Potential", "potential", "laplace", "best_laplace", "GaussianFit", "gaussian_vi"]


MAX_REJECTED_FRACTION = 0.02
"""Largest fraction of VI draws that may have a non-finite potential (`gaussian_vi`)."""
MAX_CONSECUTIVE_REJECTED = 10
"""Most VI draws in a row with a non-finite potential before the fit counts as diverged."""


@dataclasses.dataclass(frozen=True)
class Potential:
    """The potential of a model in its flat unconstrained space (latent sites in sorted-name order,
    the order of `ravel_pytree` and of dense-mass NUTS).

    Attributes:
        x0: the initial point (prior medians), flat.
        value_and_grad: `(x, *args) -> (U, dU/dx)`, compiled.
        unravel: flat vector -> `{site: unconstrained value}`.
        supports: `{site: constraint}` of every latent site.
    """

    x0: np.ndarray
    value_and_grad: Callable
    unravel: Callable
    supports: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.x0.shape[0])

    def __call__(self, x, *args) -> tuple[float, np.ndarray]:
        v, g = self.value_and_grad(jnp.asarray(x), *args)
        return float(v), np.asarray(g)

    def constrain(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Flat unconstrained draws `(n, dim)` -> `{site: (n, ...) constrained values}`."""
        def one(x):
            z = self.unravel(x)
            return {k: biject_to(self.supports[k])(v) for k, v in z.items()}

        return {k: np.asarray(v) for k, v in jax.jit(jax.vmap(one))(jnp.asarray(X)).items()}


def potential(model_fn, *, seed: int = 0, model_args: tuple | None = None) -> Potential:
    """The model's potential; with `model_args` the potential takes them as arguments (for many
    datasets through one compilation, e.g. simulation-based calibration)."""
    dynamic = model_args is not None
    info = initialize_model(jax.random.PRNGKey(seed), model_fn, init_strategy=init_to_median(num_samples=15),
                            model_args=model_args or (), dynamic_args=dynamic, validate_grad=False)
    x0, unravel = ravel_pytree(info.param_info.z)
    if dynamic:
        def U(x, *args):
            return info.potential_fn(*args)(unravel(x))
    else:
        def U(x):
            return info.potential_fn(unravel(x))
    supports = {k: info.model_trace[k]["fn"].support for k in info.param_info.z}
    return Potential(np.asarray(x0), jax.jit(jax.value_and_grad(U)), unravel, supports)


def laplace(pot: Potential, *args, x0: np.ndarray | None = None, iterations: int = 200,
            h: float = 1e-3, restarts: int = 3, gtol: float = 1e-2,
            max_variance: float = 1.0) -> tuple[np.ndarray, np.ndarray, bool]:
    """Mode (L-BFGS) and inverse Hessian (central differences of the gradient, step `h`) of the
    potential. Returns `(mode, covariance, ok)`; `ok` is false when the mode search ended on a
    non-finite value.

    The Hessian's eigenvalues enter by magnitude, and no direction gets a variance above
    `max_variance` (unconstrained units: 1 is the prior variance of the standard-normal
    non-centred sites). Why: the simulation's kinks (a rate switched off at zero, a substrate
    limited to what is there) make the gradient jump on scales below `h`; the differenced Hessian
    of an 8-batch IndPenSim fit (a holdout fold of benchmarks/calibration.py) had an eigenvalue of
    -1057 (step 1e-4) where the curvature along that direction is about +800. Clipped to a tiny
    positive value it gave that direction a standard deviation of 3.2, 83 % of the Gaussian's
    draws were more than 100 nats above the mode, and the VI started from it ran away. A start
    that is too narrow only costs VI a few steps (the entropy term widens it); one that is too
    wide can sink it.

    L-BFGS-B also stops when the potential stops falling (its relative-reduction test) with the
    gradient still large, e.g. after a long narrow valley filled its curvature memory: it is then
    restarted from where it stopped, with fresh memory, up to `restarts` times, until the largest
    gradient component is below `gtol` or `iterations` are spent in all."""
    def fun(x):
        v, g = pot(x, *args)
        if not (np.isfinite(v) and np.all(np.isfinite(g))):
            return np.inf, np.zeros_like(g)
        return v, g

    res = None
    x = pot.x0 if x0 is None else np.asarray(x0)
    left = iterations
    for _ in range(restarts + 1):
        res = scipy.optimize.minimize(fun, x, jac=True, method="L-BFGS-B",
                                      options={"maxiter": left, "maxcor": 20, "ftol": 1e-13, "gtol": gtol})
        x, left = res.x, left - int(res.nit)
        if left <= 0 or not np.isfinite(res.fun) or np.max(np.abs(res.jac)) <= gtol:
            break
    mode = np.asarray(res.x)
    ok = bool(np.isfinite(res.fun)) and bool(np.all(np.isfinite(mode)))
    n = mode.shape[0]
    H = np.empty((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        H[:, i] = (pot(mode + e, *args)[1] - pot(mode - e, *args)[1]) / (2 * h)
    H = 0.5 * (H + H.T)
    if not np.all(np.isfinite(H)):
        return mode, np.eye(n), False
    w, V = np.linalg.eigh(H)
    w = np.maximum(np.abs(w), 1.0 / max_variance)
    cov = (V / w) @ V.T
    return mode, 0.5 * (cov + cov.T), ok


def best_laplace(pot: Potential, *args, starts: int = 4, seed: int = 0, x0: np.ndarray | None = None,
                 spread: float = 0.3, **kw) -> tuple[np.ndarray, np.ndarray, bool, list[dict]]:
    r"""The Laplace approximation from several starts: `x0` (default the prior medians) and
    `starts - 1` points around it (independent normal offsets of `spread` in the unconstrained
    space); the one with the largest Laplace evidence $-U(\hat x) + \frac12\log\det\Sigma$ wins.

    Why: a kinetic model fitted to fed-batch data can have several modes (on the IndPenSim
    history, a slow-growth/low-yield one and a fast-growth/high-yield one; which one L-BFGS finds
    depends on where it starts). The searches run in threads, one per core (the result does not
    depend on it). Returns `(mode, covariance, ok, record)`, `record` holding each
    start's potential, evidence and largest gradient component."""
    base = pot.x0 if x0 is None else np.asarray(x0)
    rng = np.random.default_rng(seed)
    points = [base if k == 0 else base + spread * rng.standard_normal(base.shape) for k in range(max(starts, 1))]
    pot(base, *args)  # compile once, before the threads

    def one(start):
        mode, cov, ok = laplace(pot, *args, x0=start, **kw)
        v, g = pot(mode, *args)
        logdet = float(np.linalg.slogdet(cov)[1])
        ev = -v + 0.5 * logdet if ok and np.isfinite(v) else -np.inf
        return mode, cov, ok, ev, {"potential": float(v), "log_evidence": float(ev),
                                   "max_abs_grad": float(np.max(np.abs(g)))}

    # the compiled potential releases the GIL: one search per core (2 cores: twice as fast)
    with cf.ThreadPoolExecutor(max_workers=max(1, min(len(points), os.cpu_count() or 1))) as ex:
        results = list(ex.map(one, points))
    best, record = None, []
    for k, (mode, cov, ok, ev, rec) in enumerate(results):
        record.append({"start": k, **rec})
        if best is None or ev > best[3]:
            best = (mode, cov, ok, ev)
    return best[0], best[1], best[2], record


@dataclasses.dataclass(frozen=True)
class GaussianFit:
    """A Gaussian `N(loc, scale_tril scale_tril^T)` over the flat unconstrained latent vector.

    Attributes:
        loc, scale_tril: its mean and Cholesky factor.
        losses: the negative ELBO (up to a constant) at each VI step, one draw each.
        potential: what it approximates.
        laplace: the mode searches it started from (see `best_laplace`), if recorded.
        rejected: VI draws with a non-finite potential (skipped; `losses` NaN at steps where
            every draw was).
    """

    loc: np.ndarray
    scale_tril: np.ndarray
    losses: np.ndarray
    potential: Potential
    laplace: tuple[dict, ...] = ()
    rejected: int = 0

    @property
    def covariance(self) -> np.ndarray:
        return self.scale_tril @ self.scale_tril.T

    def sample_flat(self, key, n: int) -> np.ndarray:
        eps = np.asarray(jax.random.normal(key, (n, self.loc.shape[0])))
        return self.loc + eps @ self.scale_tril.T

    def sample(self, key, n: int) -> dict[str, np.ndarray]:
        """`n` draws of every latent site, constrained: `{site: (n, ...)}`."""
        return self.potential.constrain(self.sample_flat(key, n))


def _tril(params):
    return jnp.tril(params["off"], -1) + jnp.diag(jnp.exp(params["log_diag"]))


def _draw(params, L0, start, eps):
    """`x = start + L0 (u + T eps)`: the Gaussian in coordinates whitened by the starting
    Cholesky factor `L0`, so that Adam's step (about the learning rate per coordinate) is a
    fraction of a posterior standard deviation in every direction."""
    return start + L0 @ (params["u"] + _tril(params) @ eps)


@jax.jit
def _surrogate_grad(params, L0, eps, g):
    """Gradient of the negative ELBO with respect to `(u, T)` for one draw `x` whose potential
    gradient is `g`: that of `g . x(u, T) - sum log diag T` with `g` held fixed
    (`log|det L0 T| = log|det L0| + sum log diag T`)."""
    def s(p):
        return jnp.dot(g, L0 @ (p["u"] + _tril(p) @ eps)) - jnp.sum(p["log_diag"])

    return jax.grad(s)(params)


def gaussian_vi(pot: Potential, loc: np.ndarray, cov: np.ndarray, *args, steps: int, seed: int,
                learning_rate: float = 0.01, draws_per_step: int = 1,
                progress: Callable[[int, int], None] | None = None, where=None) -> GaussianFit:
    """Full-rank Gaussian VI from `N(loc, cov)` (usually the Laplace approximation): `steps` Adam
    steps in coordinates whitened by `cov`, learning rate decaying tenfold over the run. Each step
    averages the gradients of `draws_per_step` draws, evaluated in threads (one per core: on 2
    cores, 2 draws cost about what 1 does).

    A draw at which the potential is not finite (the simulation fails for parameters far in the
    tail) is rejected: the step averages the others (no update if none is left), and the count is
    kept (`GaussianFit.rejected`).
    More than `MAX_REJECTED_FRACTION` of the draws, or `MAX_CONSECUTIVE_REJECTED` in a row, means
    the approximation sits where the model cannot be evaluated, and is an error.

    Raises:
        TwinError: too many draws rejected (the fit diverged).
    """
    n = loc.shape[0]
    L0 = jnp.asarray(np.linalg.cholesky(cov))
    start = jnp.asarray(loc)
    params = {"u": jnp.zeros(n), "off": jnp.zeros((n, n)), "log_diag": jnp.zeros(n)}
    opt = optax.adam(optax.exponential_decay(learning_rate, max(steps, 1), 0.1))
    state = opt.init(params)

    @jax.jit
    def apply(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(seed)
    losses = np.empty(steps)
    chunk = max(steps // 50, 1)
    log_det0 = float(np.sum(np.log(np.diag(np.asarray(L0)))))
    k = max(int(draws_per_step), 1)
    total = steps * k
    rejected = in_a_row = 0
    pool = cf.ThreadPoolExecutor(max_workers=max(1, min(k, os.cpu_count() or 1))) if k > 1 else None
    try:
        for i in range(steps):
            eps = [jnp.asarray(rng.standard_normal(n)) for _ in range(k)]
            xs = [_draw(params, L0, start, e) for e in eps]
            evals = list(pool.map(lambda x: pot(x, *args), xs)) if pool else [pot(xs[0], *args)]
            good = [(e, v, g) for e, (v, g) in zip(eps, evals) if np.isfinite(v) and np.all(np.isfinite(g))]
            rejected += k - len(good)
            in_a_row = in_a_row + k - len(good) if len(good) < k else 0
            if in_a_row > MAX_CONSECUTIVE_REJECTED or rejected > MAX_REJECTED_FRACTION * total:
                raise TwinError(f"variational inference diverged (the log posterior is not finite "
                                f"at {rejected} of {(i + 1) * k} draws, {in_a_row} in a row)",
                                where=where, field="inference.svi_steps", value=i,
                                hint="tighten the priors, or use fewer SVI steps")
            if not good:
                losses[i] = np.nan
            else:
                losses[i] = np.mean([v for _, v, _ in good]) - log_det0 - float(np.sum(params["log_diag"]))
                grads = [_surrogate_grad(params, L0, e, jnp.asarray(g)) for e, _, g in good]
                grads = jax.tree_util.tree_map(lambda *a: sum(a) / len(a), *grads)
                params, state = apply(params, state, grads)
            if progress and (i + 1) % chunk == 0:
                progress(i + 1, steps)
    finally:
        if pool:
            pool.shutdown()
    loc = np.asarray(start + L0 @ params["u"])
    return GaussianFit(loc, np.asarray(L0 @ _tril(params)), losses, pot, rejected=rejected)
