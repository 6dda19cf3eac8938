r"""Gradient-based optimisation of piecewise-constant (per-phase) controls over a whole horizon.

The recipe optimiser's engine. It knows nothing about fermentation: a `ControlProblem` is a set
of decision `Block`\ s (one named vector of phase values each, e.g. the feed rate in each of n
phases) and an objective closure `objective(controls, args)` that is **maximised** (return, say,
the posterior-mean titer; `args` carries data such as posterior draws, so changing it does not
recompile).

Constraints, and how each holds:

* **Bounds** ``lower <= u <= upper`` hold *exactly*, for any unconstrained $z$, by the map
  $u = \ell + (h-\ell)\,f(z)$ with $f(z) = (1 + \sin z)/2$ (`Sine`, default: a bound is
  reached at finite z with nonzero curvature, so L-BFGS lands on active bounds quickly) or the
  logistic $\sigma(z)$ (`Logistic`).
* **Material budget** ``sum_i w_i u_i == total`` (optional, per block, $w \ge 0$) holds exactly
  together with the bounds: the fractions are shifted in logit space,
  $f_i \to \sigma(\mathrm{logit} f_i + c)$ (monotone in $c$, and for `Sine` still smooth in z
  at the bounds), with the scalar $c$ the root of
  $\sum_i w_i(h_i-\ell_i)\sigma(\mathrm{logit} f_i + c) = \text{total} - \sum_i w_i\ell_i$,
  found by safeguarded Newton (bisection fallback) with an implicit-function gradient
  $\partial c/\partial z = -(\partial F/\partial z)/(\partial F/\partial c)$. An unattainable
  total (outside $(\sum w\ell, \sum wh)$) is refused before any solve.
* **Rate of change** $|u_{i+1} - u_i| \le r$ (optional, per block) and **general inequalities**
  $g(u) \le 0$ (a closure, e.g. a DO minimum or a volume maximum over a simulated trajectory)
  hold to a tolerance, through an augmented Lagrangian (Powell-Hestenes-Rockafellar) outer loop:

  $$\min_z\; -s\,J(u(z)) + \frac{1}{2\rho}\sum_k\big(\max(0, \lambda_k + \rho g_k)^2 - \lambda_k^2\big),
    \qquad \lambda \leftarrow \max(0, \lambda + \rho g),$$

  with the penalty $\rho$ multiplied by `growth` whenever the worst violation has not fallen to
  a quarter of the previous round's. The rounds stop once the solution is feasible (to `tol`)
  and the inner solver converged (rather than ran out of iterations). $s$ scales J to order
  one (`objective_scale`). Rate limits enter as $(\pm(u_{i+1}-u_i) - r)/r \le 0$. Scale your
  own $g$ to order one too (e.g. ``(20 - DO_min) / 20``), since the tolerance applies to it.

The inner solver is `LBFGS` (optax L-BFGS with its zoom line search; default) or `Adam` (with a
decaying learning rate; for noisy or non-smooth objectives). The inner loop is a
`lax.while_loop`, run in chunks so that a `progress(done, total)` callback can follow it, for
each of several starts (user-given and/or random from a key) in turn; every function is jitted
once per problem structure (block sizes, closures, options), so new bounds, budgets, starts or
`args` values reuse the compiled code. The best *feasible* start wins; all are reported.

Conditioning: L-BFGS has one scalar initial curvature for all variables, so blocks whose
objective sensitivities per unit z differ by orders of magnitude (say a 0-2000 L/h feed next to
a 0-1 fraction) cost more iterations; so do the penalties of active constraints. Expect tens of
iterations per start for a well-scaled problem and a few hundred with active constraints.

Example:
    >>> import jax.numpy as jnp, jax.random as jr
    >>> from twin.control import Block, Budget, ControlProblem, solve, sensitivity
    >>> feed = Block("feed", lower=0.0, upper=2.0, n=5, budget=Budget(total=6.0))
    >>> def titer(c, args):                      # maximised
    ...     return -jnp.sum((c["feed"] - args) ** 2)
    >>> problem = ControlProblem((feed,), titer)
    >>> res = solve(problem, args=jnp.array([0.0, 1.0, 2.0, 2.0, 3.0]),
    ...             n_random=4, key=jr.key(0))
    >>> res.controls["feed"]           # numpy, in [0, 2], sums to 6.0 to round-off
    >>> res.objective, res.feasible, res.start_objectives, res.wall_s
    >>> sensitivity(problem, res.controls, args=jnp.array([0.0, 1.0, 2.0, 2.0, 3.0]))["feed"]

Reference: J. Nocedal, S. J. Wright (2006) Numerical Optimization, 2nd ed., Springer,
ch. 7 (L-BFGS) and 17.4 (augmented Lagrangian for inequalities); E. G. Birgin, J. M. Martinez
(2014) Practical Augmented Lagrangian Methods for Constrained Optimization, SIAM (penalty update).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import optax.tree_utils as otu

from ._custom_types import Array, ArrayLike, Float, PyTree, Scalar
from .errors import TwinError

jax.config.update("jax_enable_x64", True)

__all__ = [
    "ControlError",
    "Budget",
    "Block",
    "AbstractTransform",
    "Sine",
    "Logistic",
    "ControlProblem",
    "LBFGS",
    "Adam",
    "AugmentedLagrangian",
    "ControlResult",
    "solve",
    "sensitivity",
    "evaluate",
]

Controls = dict[str, Float[Array, " phases"]]

# Starts on a bound are moved this fraction of the range inside (there Sine's slope is zero and
# Logistic's z is infinite).
_START_MARGIN = 1e-3
_NEWTON_ITERATIONS = 80
_Z_CLIP = 40.0  # Logistic clips z here: sigma(+-40) is 1 or 0 to round-off


class ControlError(TwinError):
    """A control problem that cannot be posed: bad bounds, an unattainable budget, bad starts."""


class Budget(eqx.Module):
    r"""A material budget for one block: $\sum_i w_i u_i = \text{total}$, held exactly.

    Args:
        total: the budget, in the block's units times the weights' units (for a feed rate in L/h
            and weights equal to the phase durations in h, the total feed volume in L).
        weights: $w_i \ge 0$, shape (phases,); `None` means all ones.
    """

    total: Float[Array, ""]
    weights: Float[Array, " phases"] | None = None

    def __init__(self, total: float, weights: ArrayLike | None = None):
        self.total = jnp.asarray(total, dtype=float)
        self.weights = None if weights is None else jnp.asarray(weights, dtype=float)


class AbstractTransform(eqx.Module):
    r"""A smooth map from an unconstrained z to a fraction of the range f in [0, 1] (exactly),
    and its budget-shifted form $f_c = \sigma(\mathrm{logit}\,f + c)$, monotone in $c$."""

    @abc.abstractmethod
    def fraction(self, z: Float[Array, " phases"]) -> Float[Array, " phases"]:
        """The fraction of the range at z."""

    @abc.abstractmethod
    def shifted(self, z: Float[Array, " phases"], c: Scalar) -> Float[Array, " phases"]:
        """sigma(logit(fraction(z)) + c), written so that it is smooth in z (c = 0: fraction)."""

    @abc.abstractmethod
    def logit(self, z: Float[Array, " phases"]) -> Float[Array, " phases"]:
        """logit(fraction(z)) (+-inf where the fraction is exactly 1 or 0: pinned)."""

    @abc.abstractmethod
    def inverse(self, fraction: Float[Array, " phases"]) -> Float[Array, " phases"]:
        """A z with `fraction(z) == fraction`, for a fraction strictly inside (0, 1)."""


class Sine(AbstractTransform):
    r"""$f = (1 + \sin z)/2$ (the default).

    A bound is reached at a finite z, where J(z) has zero slope and nonzero curvature, so
    L-BFGS converges onto an active bound in a few iterations, and the slope comes back if the
    optimum moves off it (no saturation). With a budget, $f_c = (1+s)/((1+s) + (1-s)e^{-c})$,
    $s = \sin z$, which equals $\sigma(\mathrm{logit}\,f + c)$ and keeps these properties.
    """

    def fraction(self, z):
        return 0.5 * (1.0 + jnp.sin(z))

    def shifted(self, z, c):
        s = jnp.sin(z)
        return (1.0 + s) / ((1.0 + s) + (1.0 - s) * jnp.exp(-c))

    def logit(self, z):
        s = jnp.sin(z)
        return jnp.log1p(s) - jnp.log1p(-s)

    def inverse(self, fraction):
        return jnp.arcsin(2.0 * fraction - 1.0)


class Logistic(AbstractTransform):
    r"""$f = \sigma(z) = 1/(1 + e^{-z})$, with z clipped to +-40 (where $\sigma$ is 0 or 1 to
    round-off). A bound is approached only as z -> +-inf, with a slope that vanishes like
    $e^{-|z|}$: convergence onto an active bound is slower than with `Sine`, and a phase
    pushed deep into saturation hardly moves again."""

    def fraction(self, z):
        return jax.nn.sigmoid(jnp.clip(z, -_Z_CLIP, _Z_CLIP))

    def shifted(self, z, c):
        return jax.nn.sigmoid(jnp.clip(z, -_Z_CLIP, _Z_CLIP) + c)

    def logit(self, z):
        return jnp.clip(z, -_Z_CLIP, _Z_CLIP)

    def inverse(self, fraction):
        return jnp.log(fraction) - jnp.log1p(-fraction)


class Block(eqx.Module):
    r"""One named vector of n phase values with per-phase bounds, an optional budget and rate limit.

    $u = \ell + (h-\ell)\,\sigma(\mathrm{logit} f(z) + c)$ with $f$ the block's `transform`:
    bounds exact for every $z$; the shift $c$ enforces the budget (zero without one, when
    $u = \ell + (h-\ell) f(z)$).

    Args:
        name: the key of this block in the controls dict.
        lower, upper: per-phase bounds, shape (phases,) or scalars broadcast to `n`
            (the control's units, e.g. L/h). `lower == upper` fixes a phase.
        n: the number of phases, needed only if both bounds are scalars.
        budget: an optional `Budget`.
        max_change: an optional rate limit $r > 0$: $|u_{i+1} - u_i| \le r$ (control units),
            held to the augmented-Lagrangian tolerance.
        transform: `Sine()` (default) or `Logistic()`.

    Raises:
        ControlError: bounds of different shapes, not finite, or `lower > upper`; a budget whose
            weights are negative or of the wrong length, or whose total lies outside the
            attainable range; `max_change <= 0`; bounds of neighbouring phases further apart
            than `max_change`.
    """

    name: str = eqx.field(static=True)
    lower: Float[Array, " phases"]
    upper: Float[Array, " phases"]
    budget: Budget | None
    max_change: Float[Array, ""] | None
    transform: AbstractTransform

    def __init__(self, name: str, lower: ArrayLike, upper: ArrayLike, *, n: int | None = None,
                 budget: Budget | None = None, max_change: float | None = None,
                 transform: AbstractTransform | None = None):
        lo, hi = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
        shape = np.broadcast_shapes(lo.shape, hi.shape) if n is None else (n,)
        if len(shape) != 1:
            raise ControlError("bounds must be scalars or vectors of one value per phase "
                               "(give n= when both are scalars)", where=f"block '{name}'",
                               value=shape)
        try:
            lo, hi = np.broadcast_to(lo, shape).copy(), np.broadcast_to(hi, shape).copy()
        except ValueError:
            raise ControlError(f"lower and upper must have {shape[0]} phase values",
                               where=f"block '{name}'", value=(lo.shape, hi.shape)) from None
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ControlError("bounds must be finite", where=f"block '{name}'")
        if np.any(lo > hi):
            i = int(np.argmax(lo > hi))
            raise ControlError(f"lower must be <= upper in every phase; phase {i} has "
                               f"lower={lo[i]} > upper={hi[i]}", where=f"block '{name}'")
        self.name = name
        self.lower, self.upper = jnp.asarray(lo), jnp.asarray(hi)
        self.budget = budget
        self.max_change = None if max_change is None else jnp.asarray(max_change, dtype=float)
        self.transform = Sine() if transform is None else transform
        _check_budget(self)
        _check_rate(self)

    @property
    def n(self) -> int:
        """The number of phases."""
        return self.lower.shape[-1]

    def controls(self, z: Float[Array, " phases"]) -> Float[Array, " phases"]:
        """The phase values u (within the bounds, on the budget) of the unconstrained `z`."""
        lo, hi = self.lower, self.upper
        if self.budget is None:
            frac = self.transform.fraction(z)
        else:
            c = _budget_shift(self.transform, z, *self._budget_terms())
            frac = self.transform.shifted(z, c)
        u = lo + (hi - lo) * frac
        return jnp.clip(u, lo, hi)  # round-off only: the bounds hold to the last bit

    def unconstrained(self, u: Float[ArrayLike, " phases"]) -> Float[Array, " phases"]:
        """A `z` with `controls(z) == u` (for `u` strictly inside the bounds and on the budget).

        Values on a bound are moved 0.1 % of the range inside, where the gradient is not zero.
        """
        lo, hi = self.lower, self.upper
        span = jnp.where(hi > lo, hi - lo, 1.0)
        frac = jnp.clip((jnp.asarray(u, dtype=float) - lo) / span, _START_MARGIN,
                        1.0 - _START_MARGIN)
        return jnp.where(hi > lo, self.transform.inverse(frac), 0.0)

    def _budget_terms(self):
        w = jnp.ones_like(self.lower) if self.budget.weights is None else self.budget.weights
        return w * (self.upper - self.lower), self.budget.total - jnp.sum(w * self.lower)

    def attainable(self) -> tuple[float, float]:
        """The range (sum w*lower, sum w*upper) of budgets the bounds allow (needs a budget)."""
        w = np.ones(self.n) if self.budget.weights is None else np.asarray(self.budget.weights)
        return float(np.sum(w * self.lower)), float(np.sum(w * self.upper))


def _check_budget(block: Block) -> None:
    b = block.budget
    if b is None:
        return
    where = f"block '{block.name}'"
    if b.weights is not None:
        w = np.asarray(b.weights)
        if w.shape != (block.n,):
            raise ControlError(f"budget weights must have one value per phase ({block.n})",
                               where=where, value=w.shape)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ControlError("budget weights must be finite and >= 0", where=where,
                               value=w.tolist())
    total = float(b.total)
    lo, hi = block.attainable()
    if not (lo < total < hi):
        raise ControlError(
            f"budget total={total:g} is not attainable within the bounds: sum(w*u) can only "
            f"lie strictly between {lo:g} (all phases at lower) and {hi:g} (all at upper)",
            where=where,
            hint="Change the total or the bounds; to pin every phase to a bound, set "
                 "lower == upper instead")


def _check_rate(block: Block) -> None:
    if block.max_change is None:
        return
    r = float(block.max_change)
    where = f"block '{block.name}'"
    if not (r > 0 and math.isfinite(r)):
        raise ControlError("max_change must be > 0 and finite", where=where, value=r)
    lo, hi = np.asarray(block.lower), np.asarray(block.upper)
    gap = np.maximum(lo[1:] - hi[:-1], lo[:-1] - hi[1:])
    if gap.size and np.any(gap > r):
        i = int(np.argmax(gap))
        raise ControlError(f"the bounds of phases {i} and {i + 1} are {gap[i]:g} apart, more "
                           f"than max_change={r:g}", where=where)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _budget_shift(transform: AbstractTransform, z: Float[Array, " n"], a: Float[Array, " n"],
                  b: Scalar) -> Scalar:
    r"""The root c of $F(c) = \sum_i a_i \sigma(L_i + c) - b$, $L = $ `transform.logit(z)`.

    For a >= 0 and 0 < b < sum(a), F is increasing. Phases pinned on a bound (L = +-inf: a Sine
    fraction exactly 0 or 1) are constants; over the free ones the root lies in
    [logit(r) - max L, logit(r) - min L], r = (b - pinned at 1) / (sum of free a). Safeguarded
    Newton (a step leaving the bracket becomes bisection), a fixed number of iterations: the
    bracket is at most ~150 wide (|L| <= 40 for Logistic, <= 38 for Sine) and bisection alone
    reaches round-off within `_NEWTON_ITERATIONS`.
    """
    L = transform.logit(z)
    free = (a > 0) & jnp.isfinite(L)
    a_free = jnp.sum(jnp.where(free, a, 0.0))
    b_free = b - jnp.sum(jnp.where((a > 0) & (L == jnp.inf), a, 0.0))
    r = jnp.clip(b_free / jnp.where(a_free > 0, a_free, 1.0), 1e-300, 1.0 - 1e-16)
    lr = jnp.log(r) - jnp.log1p(-r)
    lo = lr - jnp.max(jnp.where(free, L, -jnp.inf))
    hi = lr - jnp.min(jnp.where(free, L, jnp.inf))
    lo, hi = jnp.where(a_free > 0, lo, 0.0), jnp.where(a_free > 0, hi, 0.0)

    def body(_, carry):
        c, lo, hi = carry
        f = transform.shifted(z, c)
        F = jnp.sum(a * f) - b
        dF = jnp.sum(a * f * (1.0 - f))
        lo = jnp.where(F < 0, c, lo)
        hi = jnp.where(F > 0, c, hi)
        newton = c - F / dF
        ok = (newton > lo) & (newton < hi) & jnp.isfinite(newton)
        return jnp.where(ok, newton, 0.5 * (lo + hi)), lo, hi

    c, _, _ = jax.lax.fori_loop(0, _NEWTON_ITERATIONS, body, (0.5 * (lo + hi), lo, hi))
    return c


@_budget_shift.defjvp
def _budget_shift_jvp(transform, primals, tangents):
    """Implicit function theorem: dc = -(dF/dz dz + dF/da da + dF/db db) / (dF/dc)."""
    z, a, b = primals
    dz, da, db = tangents
    c = _budget_shift(transform, z, a, b)
    f, df_dz = jax.jvp(lambda z: transform.shifted(z, c), (z,), (dz,))
    slope = jnp.sum(a * f * (1.0 - f))  # dF/dc: d sigma(L + c)/dc = f (1 - f)
    dF = jnp.sum(a * df_dz) + jnp.sum(f * da) - db
    return c, jnp.where(slope > 0, -dF / jnp.where(slope > 0, slope, 1.0), 0.0)


class ControlProblem(eqx.Module):
    r"""Blocks, an objective to maximise, and optional inequality constraints $g(u) \le 0$.

    Args:
        blocks: the decision blocks (distinct names).
        objective: ``objective(controls, args) -> J`` (scalar, **maximised**), with `controls`
            a dict ``{block.name: Float[Array, " phases"]}``. When the constraints come from the
            same simulation, it may return ``(J, g)`` instead (and `constraints` stays `None`),
            so the simulation runs once.
        constraints: ``constraints(controls, args) -> g`` (shape (m,), feasible where g <= 0),
            or `None`.
        constraint_names: m names for the report (default ``g[0]``, ``g[1]``, ...).
    """

    blocks: tuple[Block, ...]
    objective: Callable[[Controls, Any], Any] = eqx.field(static=True)
    constraints: Callable[[Controls, Any], Float[Array, " m"]] | None = eqx.field(
        static=True, default=None)
    constraint_names: tuple[str, ...] | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        names = [b.name for b in self.blocks]
        if not names or len(set(names)) != len(names):
            raise ControlError("blocks must be at least one, with distinct names", value=names)

    def controls(self, z: dict[str, Float[Array, " phases"]]) -> Controls:
        """The controls of every block from the unconstrained `z` (same keys)."""
        return {b.name: b.controls(z[b.name]) for b in self.blocks}

    def unconstrained(self, controls: dict[str, ArrayLike]) -> dict[str, Float[Array, " phases"]]:
        """The unconstrained `z` of `controls` (see `Block.unconstrained`)."""
        return {b.name: b.unconstrained(controls[b.name]) for b in self.blocks}


def evaluate(problem: ControlProblem, controls: Controls, args: PyTree = None
             ) -> tuple[Scalar, Float[Array, " m"], Float[Array, " k"]]:
    """J, the user constraints g (m,) and the scaled rate constraints (k,) of `controls`.

    Rate constraints are ``(+-(u[i+1] - u[i]) - r) / r`` for every block with `max_change`.
    """
    out = problem.objective(controls, args)
    if isinstance(out, tuple):
        J, g = out
    else:
        J = out
        g = (jnp.zeros(0) if problem.constraints is None
             else problem.constraints(controls, args))
    J = jnp.asarray(J, dtype=float)
    if J.shape != ():
        raise ControlError("the objective must return a scalar", value=J.shape)
    g = jnp.atleast_1d(jnp.asarray(g, dtype=float))
    rates = []
    for b in problem.blocks:
        if b.max_change is not None:
            du = jnp.diff(controls[b.name])
            rates += [(du - b.max_change) / b.max_change, (-du - b.max_change) / b.max_change]
    rate = jnp.concatenate(rates) if rates else jnp.zeros(0)
    return J, g, rate


class LBFGS(eqx.Module):
    """Inner solver: optax L-BFGS with the zoom (strong Wolfe) line search.

    Stops at `max_steps` iterations, when the largest gradient entry (of the scaled Lagrangian,
    per unit z) is below `gtol`, or when `patience` iterations together improve the value by
    less than `ftol` relative (checked every `patience` iterations: the slow tail along flat
    directions, e.g. a singular arc, is cut off).

    Args:
        max_steps: iterations per start and augmented-Lagrangian round.
        memory: L-BFGS memory (pairs).
        gtol: gradient tolerance (the objective is scaled to order one).
        ftol: relative value-change tolerance over `patience` iterations.
        patience: the window of the value-change test, iterations.
        max_linesearch_steps: zoom line-search evaluations per iteration.
    """

    max_steps: int = eqx.field(static=True, default=300)
    memory: int = eqx.field(static=True, default=10)
    gtol: float = eqx.field(static=True, default=1e-9)
    ftol: float = eqx.field(static=True, default=1e-7)
    patience: int = eqx.field(static=True, default=10)
    max_linesearch_steps: int = eqx.field(static=True, default=20)

    def transformation(self) -> optax.GradientTransformationExtraArgs:
        ls = optax.scale_by_zoom_linesearch(max_linesearch_steps=self.max_linesearch_steps,
                                            initial_guess_strategy="one")
        return optax.lbfgs(memory_size=self.memory, linesearch=ls)

    def init(self, fun, z):
        """The optax state, holding the value and gradient at z (the line search keeps them)."""
        value, grad = jax.value_and_grad(fun)(z)
        state = self.transformation().init(z)
        return otu.tree_set(state, value=value, grad=grad)

    def step(self, fun, z, state):
        """One iteration: (z, state, value before, value after, largest |gradient| after)."""
        value, grad = otu.tree_get(state, "value"), otu.tree_get(state, "grad")
        updates, state = self.transformation().update(grad, state, z, value=value, grad=grad,
                                                      value_fn=fun)
        z = optax.apply_updates(z, updates)
        new_value, new_grad = otu.tree_get(state, "value"), otu.tree_get(state, "grad")
        return z, state, value, new_value, otu.tree_max(jax.tree.map(jnp.abs, new_grad))


class Adam(eqx.Module):
    """Inner solver: Adam with a learning rate decaying exponentially over `max_steps`.

    Runs all `max_steps` iterations (no convergence test); for noisy or non-smooth objectives.

    Args:
        max_steps: iterations per start and augmented-Lagrangian round.
        learning_rate: initial step (in z).
        final_learning_rate: step at `max_steps`.
    """

    max_steps: int = eqx.field(static=True, default=2000)
    learning_rate: float = eqx.field(static=True, default=0.05)
    final_learning_rate: float = eqx.field(static=True, default=1e-3)
    gtol: float = eqx.field(static=True, default=0.0)
    ftol: float = eqx.field(static=True, default=-math.inf)
    patience: int = eqx.field(static=True, default=1)

    def transformation(self) -> optax.GradientTransformation:
        schedule = optax.exponential_decay(
            self.learning_rate, transition_steps=self.max_steps,
            decay_rate=self.final_learning_rate / self.learning_rate)
        return optax.adam(schedule)

    def init(self, fun, z):
        return self.transformation().init(z)

    def step(self, fun, z, state):
        value, grad = jax.value_and_grad(fun)(z)
        updates, state = self.transformation().update(grad, state, z)
        return (optax.apply_updates(z, updates), state, value, value,
                otu.tree_max(jax.tree.map(jnp.abs, grad)))


class AugmentedLagrangian(eqx.Module):
    """Outer loop for rate limits and inequality constraints (unused without them).

    Args:
        max_rounds: the most multiplier updates.
        penalty: initial penalty rho (on the objective scaled to order one).
        growth: factor on rho when the worst violation has not fallen to a quarter.
        max_penalty: cap on rho.
        tol: feasibility tolerance on g (and on the relative excess of a rate limit).
    """

    max_rounds: int = eqx.field(static=True, default=10)
    penalty: float = eqx.field(static=True, default=10.0)
    growth: float = eqx.field(static=True, default=10.0)
    max_penalty: float = eqx.field(static=True, default=1e8)
    tol: float = eqx.field(static=True, default=1e-6)


class _Stats(eqx.Module):
    steps: Array  # int, iterations this round
    done: Array  # bool, converged this round
    checkpoint: Array  # float, the value `patience` iterations ago (at the last check)


@dataclasses.dataclass(frozen=True)
class ControlResult:
    """The outcome of `solve`.

    Attributes:
        controls: the best start's phase values per block (numpy, control units).
        objective: J at `controls`.
        constraint_names: names of `constraints`: the user's, then ``rate of change of <block>``.
        constraints: g at `controls` (user units; <= 0 is feasible); for a rate limit, the
            relative excess max|u[i+1] - u[i]| / r - 1.
        max_violation: max(0, max(constraints)).
        feasible: `max_violation <= tol`.
        best_start: index of the best start (user starts first, then random ones).
        start_objectives, start_violations: J and worst violation of every start's solution.
        start_controls: every start's solution.
        iterations: inner iterations of every start, all rounds together.
        rounds: augmented-Lagrangian rounds of every start.
        wall_s: wall time of `solve`, s (including compilation on a first call).
        history: J after every chunk of iterations, a list per start (its first entry at the start).
    """

    controls: dict[str, np.ndarray]
    objective: float
    constraint_names: tuple[str, ...]
    constraints: np.ndarray
    max_violation: float
    feasible: bool
    best_start: int
    start_objectives: np.ndarray
    start_violations: np.ndarray
    start_controls: tuple[dict[str, np.ndarray], ...]
    iterations: np.ndarray
    rounds: np.ndarray
    wall_s: float
    history: tuple[np.ndarray, ...]


def _lagrangian(problem, z, lam, rho, scale, args):
    J, g, rate = evaluate(problem, problem.controls(z), args)
    g = jnp.concatenate([g, rate])
    pen = jnp.sum(jnp.maximum(0.0, lam + rho * g) ** 2 - lam**2) / (2.0 * rho)
    return -scale * J + pen


@eqx.filter_jit
def _evaluate_z(problem, z, args):
    u = problem.controls(z)
    J, g, rate = evaluate(problem, u, args)
    return u, J, g, rate


@eqx.filter_jit
def _init(problem, solver, z, lam, rho, scale, args):
    state = solver.init(lambda z: _lagrangian(problem, z, lam, rho, scale, args), z)
    # Strong types: the loop's output state must match its input, or the next chunk recompiles.
    state = jax.tree.map(lambda x: jnp.array(x, dtype=jnp.result_type(x)), state)
    return state, _Stats(jnp.array(0), jnp.array(False), jnp.array(jnp.inf))


@eqx.filter_jit
def _run(problem, solver, z, state, stats, lam, rho, scale, args, stop_at):
    """Iterate the inner solver on one start until it converges or `stats.steps == stop_at`."""

    def fun(z):
        return _lagrangian(problem, z, lam, rho, scale, args)

    def cond(carry):
        _, _, st = carry
        return (st.steps < stop_at) & ~st.done

    def body(carry):
        z, state, st = carry
        z, state, old, new, gmax = solver.step(fun, z, state)
        steps = st.steps + 1
        check = steps % solver.patience == 0
        stalled = check & (st.checkpoint - new <= solver.ftol * jnp.maximum(1.0, jnp.abs(new)))
        done = (gmax <= solver.gtol) | stalled | ~jnp.isfinite(new)
        return z, state, _Stats(steps, done, jnp.where(check, new, st.checkpoint))

    return jax.lax.while_loop(cond, body, (z, state, stats))


def _starts(problem, starts, n_random, key) -> list[dict[str, Array]]:
    """Unconstrained starts: user starts, then random ones."""
    zs = []
    for k, s in enumerate(starts or ()):
        missing = [b.name for b in problem.blocks if b.name not in s]
        if missing:
            raise ControlError(f"start {k} has no values for block(s) {missing}")
        z = {}
        for b in problem.blocks:
            u = np.asarray(s[b.name], dtype=float)
            u = np.broadcast_to(u, (b.n,)) if u.ndim == 0 else u
            if u.shape != (b.n,):
                raise ControlError(f"start {k} must give {b.n} phase values",
                                   where=f"block '{b.name}'", value=u.shape)
            if np.any(u < np.asarray(b.lower) - 1e-12) or np.any(u > np.asarray(b.upper) + 1e-12):
                raise ControlError(f"start {k} lies outside the bounds", where=f"block '{b.name}'",
                                   value=u.tolist())
            z[b.name] = b.unconstrained(u)
        zs.append(z)
    if n_random:
        if key is None:
            raise ControlError("random starts need a key", field="key",
                               hint="Pass key=jax.random.key(seed)")
        random = [{} for _ in range(n_random)]
        for b, k in zip(problem.blocks, jr.split(key, len(problem.blocks))):
            level_key, noise_key = jr.split(k)
            level = jr.uniform(level_key, (n_random, 1), minval=0.05, maxval=0.95)
            frac = jnp.clip(level + 0.25 * jr.normal(noise_key, (n_random, b.n)), 0.01, 0.99)
            for i in range(n_random):
                random[i][b.name] = b.unconstrained(b.lower + (b.upper - b.lower) * frac[i])
        zs += random
    if not zs:
        raise ControlError("no starts: give starts=[...] and/or n_random >= 1 with a key")
    return zs


def solve(problem: ControlProblem, *, args: PyTree = None,
          starts: Sequence[dict[str, ArrayLike]] | None = None, n_random: int = 0,
          key: Array | None = None, solver: LBFGS | Adam = LBFGS(),
          outer: AugmentedLagrangian = AugmentedLagrangian(), objective_scale: float | None = None,
          chunk: int = 100, progress: Callable[[int, int], None] | None = None) -> ControlResult:
    r"""Maximise `problem.objective` over its blocks from several starts; return the best feasible.

    The starts run one after another through the same compiled loop (vmapping them was tried:
    on CPU a batched simulation costs about as much as the separate ones, and a batched
    line search evaluates every branch of its `lax.cond`\ s).

    Args:
        problem: the `ControlProblem`.
        args: passed to the objective and constraints (e.g. posterior draws); a pytree of arrays,
            whose values can change without recompiling.
        starts: user starts, each a dict ``{block name: phase values}`` within the bounds (a
            scalar is broadcast); values on a bound are moved 0.1 % of the range inside. A start
            off its block's budget is moved onto it by the budget shift.
        n_random: random starts in addition (need `key`): per block, a fraction of the range
            U(0.05, 0.95) common to all phases plus N(0, 0.25) per phase, clipped to
            [0.01, 0.99] (diverse profiles find more of the local optima of bang-bang problems).
        key: a `jax.random` key for the random starts.
        solver: `LBFGS()` (default) or `Adam()`.
        outer: the augmented-Lagrangian options (used only with constraints or rate limits).
        objective_scale: J is multiplied by this inside the solver; default 1 / the median |J|
            over the starts (1 if that is 0 or not finite).
        chunk: inner iterations between progress reports.
        progress: called as ``progress(done, total)``, in iterations, after every chunk; `total`
            is starts x rounds x `solver.max_steps` (an upper bound: converged starts and rounds
            skip ahead).

    Returns:
        A `ControlResult`.

    Raises:
        ControlError: bad starts, no starts, a random start without a key, or a wrong number of
            `constraint_names`.
    """
    t_start = time.perf_counter()
    for b in problem.blocks:  # blocks changed with eqx.tree_at skip __init__: check again
        _check_budget(b)
        _check_rate(b)
    zs = _starts(problem, starts, n_random, key)
    first = [_evaluate_z(problem, z, args) for z in zs]
    m = first[0][2].shape[0] + first[0][3].shape[0]
    names = list(problem.constraint_names or [f"g[{i}]" for i in range(first[0][2].shape[0])])
    if len(names) != first[0][2].shape[0]:
        raise ControlError(f"constraint_names has {len(names)} names for "
                           f"{first[0][2].shape[0]} constraints")
    if objective_scale is None:
        med = float(np.median([abs(float(f[1])) for f in first]))
        objective_scale = 1.0 / med if med > 0 and math.isfinite(med) else 1.0
    scale = jnp.asarray(objective_scale, dtype=float)
    max_rounds = outer.max_rounds if m else 1
    total = len(zs) * max_rounds * solver.max_steps
    done_its = 0

    finals, iterations, rounds, history = [], [], [], []
    for s, z in enumerate(zs):
        lam, rho = jnp.zeros(m), jnp.asarray(float(outer.penalty))
        prev_viol = math.inf
        its = 0
        hist = [float(first[s][1])]
        for r in range(max_rounds):
            state, stats = _init(problem, solver, z, lam, rho, scale, args)
            steps = 0
            while steps < solver.max_steps:
                stop = min(steps + chunk, solver.max_steps)
                z, state, stats = _run(problem, solver, z, state, stats, lam, rho, scale, args,
                                       jnp.asarray(stop))
                _, J, g, rate = _evaluate_z(problem, z, args)
                hist.append(float(J))
                converged = bool(stats.done)
                steps = stop
                done_its = (s * max_rounds + r) * solver.max_steps + (
                    solver.max_steps if converged else steps)
                if progress is not None:
                    progress(min(done_its, total), total)
                if converged:
                    break
            its += int(stats.steps)
            if not m:
                break
            gall = jnp.concatenate([g, rate])
            viol = float(jnp.max(jnp.maximum(gall, 0.0)))
            lam = jnp.maximum(0.0, lam + rho * gall)
            if viol > outer.tol and viol > 0.25 * prev_viol:
                rho = jnp.minimum(rho * outer.growth, outer.max_penalty)
            prev_viol = viol
            if viol <= outer.tol and converged:  # feasible, and the inner solve converged
                break
        finals.append(z)
        iterations.append(its)
        rounds.append(r + 1)
        history.append(np.asarray(hist))
        if progress is not None:
            progress((s + 1) * max_rounds * solver.max_steps, total)

    results = [_evaluate_z(problem, z, args) for z in finals]
    per_start = tuple({b.name: np.asarray(res[0][b.name]) for b in problem.blocks}
                      for res in results)
    J = np.array([float(res[1]) for res in results])
    gall = []
    for res, u in zip(results, per_start):
        cols = list(np.asarray(res[2]))
        for b in problem.blocks:
            if b.max_change is not None:
                d = np.abs(np.diff(u[b.name]))
                cols.append(d.max(initial=0.0) / float(b.max_change) - 1.0)
        gall.append(np.asarray(cols, dtype=float))
    names += [f"rate of change of {b.name}" for b in problem.blocks if b.max_change is not None]
    viol = np.array([np.maximum(g, 0.0).max(initial=0.0) for g in gall])
    feasible = viol <= outer.tol
    score = np.where(np.isfinite(J), J, -np.inf)
    best = (int(np.argmax(np.where(feasible, score, -np.inf))) if feasible.any()
            else int(np.argmin(viol)))
    return ControlResult(
        controls=per_start[best], objective=float(J[best]), constraint_names=tuple(names),
        constraints=gall[best], max_violation=float(viol[best]), feasible=bool(feasible[best]),
        best_start=best, start_objectives=J, start_violations=viol, start_controls=per_start,
        iterations=np.asarray(iterations), rounds=np.asarray(rounds),
        wall_s=time.perf_counter() - t_start, history=tuple(history))


@eqx.filter_jit
def _grad_objective(problem, controls, args):
    def J(c):
        return evaluate(problem, c, args)[0]

    return jax.grad(J)(controls)


def sensitivity(problem: ControlProblem, controls: dict[str, ArrayLike], args: PyTree = None
                ) -> dict[str, np.ndarray]:
    r"""$\partial J/\partial u_i$ for every block and phase at `controls` (the "why" table).

    In objective units per control unit (e.g. g of product per L/h of feed in phase i). At an
    optimum, a phase strictly inside its bounds (and off an active constraint) has a derivative
    near zero, or equal to the budget's common multiplier times its weight; a phase held at its
    upper bound has a positive derivative (more would help), at its lower bound a negative one.

    Args:
        problem: the problem.
        controls: phase values per block (e.g. `ControlResult.controls`).
        args: as for `solve`.

    Returns:
        dict block name -> numpy array (phases,).
    """
    c = {b.name: jnp.asarray(controls[b.name], dtype=float) for b in problem.blocks}
    g = _grad_objective(problem, c, args)
    return {k: np.asarray(v) for k, v in g.items()}
