r"""Two published fed-batch optimal-control problems, for testing the recipe optimiser.

Both maximise a terminal objective over controls that are piecewise constant on N equal
intervals of $[0, t_f]$ (see `shared/benchmarks/ocp_problems.md` for the sources):

* `ParkRamirez` (1988), secreted heterologous protein: 5 states, one feed $F \in [0, 2]$ L/h,
  $t_f = 15$ h, $J = P_m(t_f)\,V(t_f)$; best known 32.69 (continuous control).
* `LeeRamirez` (1994), induced foreign protein, original constants, $Q = 5$: 8 states, nutrient
  and inducer feeds $u_1, u_2 \in [0, 1]$ L/h, $t_f = 10$ h,
  $J = P(t_f)V(t_f) - Q\int_0^{t_f} u_2\,dt$; best known 0.8165.

Two integrators, written independently:

* `simulate` / `objective`: pure JAX on diffrax (float64), one fixed-step Tsit5 solve per
  control interval inside `lax.scan`, so the control never jumps within a step, the map
  controls -> objective is smooth (no adaptive step selection), jit-able, vmap-able and
  differentiable by reverse mode. Each interval takes the fewest equal steps of at most
  `max_step` h (0.075 h for Park-Ramirez, 0.07 h for Lee-Ramirez: 4 and 3 steps per interval at
  N = 50), which keeps J within about 2e-7 relative of the reference near the optima (4e-4 at
  random controls of Park-Ramirez, whose glucose balance is stiff: explicit steps of 0.375 h
  diverge there).
* `reference_objective`: scipy `solve_ivp` (LSODA or Radau, rtol = atol = 1e-10) on a NumPy
  right-hand side, interval by interval. Score every solution with it, never with the optimiser's
  own objective.

Example:
    >>> import jax.numpy as jnp
    >>> from twin.ocp_literature import ParkRamirez, objective, reference_objective
    >>> pr = ParkRamirez()
    >>> u = jnp.full((20, 1), 1.0)                    # N = 20 intervals, F = 1 L/h
    >>> J = objective(pr, u)                          # jit/grad/vmap-able
    >>> J_ref = reference_objective(pr, u)            # scipy LSODA, 1e-10

Reference: S. Park, W. F. Ramirez (1988) AIChE J 34:1550; J. Lee, W. F. Ramirez (1994)
AIChE J 40:899; R. Luus (1993) Biotechnol Bioeng 41:599; E. Balsa-Canto, J. R. Banga,
A. A. Alonso, V. S. Vassiliadis (2001) Ind Eng Chem Res 40:2714 (Lee-Ramirez Q = 5, 0.8165).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

from ._custom_types import Array, ArrayLike, Float, Scalar

jax.config.update("jax_enable_x64", True)

__all__ = [
    "AbstractOCP",
    "ParkRamirez",
    "ParkRamirezState",
    "LeeRamirez",
    "LeeRamirezState",
    "simulate",
    "substeps",
    "objective",
    "reference_objective",
]


class ParkRamirezState(eqx.Module):
    """Park-Ramirez state: secreted protein `Pm` and total protein `Pt` (protein units/L),
    cells `X` (g/L), glucose `S` (g/L), volume `V` (L)."""

    Pm: Scalar
    Pt: Scalar
    X: Scalar
    S: Scalar
    V: Scalar


class LeeRamirezState(eqx.Module):
    """Lee-Ramirez state: volume `V` (L), cells `X`, nutrient `S`, foreign protein `P`,
    inducer `I` (g/L), shock factor `fs` and recovery factor `fr` (-), and the bookkeeping
    integral `C` of the inducer feed (L)."""

    V: Scalar
    X: Scalar
    S: Scalar
    P: Scalar
    I: Scalar
    fs: Scalar
    fr: Scalar
    C: Scalar


class AbstractOCP(eqx.Module):
    """A terminal-objective fed-batch problem with piecewise-constant controls.

    Concrete problems define the JAX vector field, the initial state, the objective of the final
    state, and an independent NumPy right-hand side on the flat state (for the reference scorer).
    """

    tf: eqx.AbstractVar[float]
    control_names: eqx.AbstractClassVar[tuple[str, ...]]
    lower: eqx.AbstractClassVar[tuple[float, ...]]
    upper: eqx.AbstractClassVar[tuple[float, ...]]
    best_known: eqx.AbstractClassVar[float]
    max_step: eqx.AbstractVar[float]

    @abc.abstractmethod
    def initial_state(self) -> eqx.Module:
        """The state at t = 0."""

    @abc.abstractmethod
    def vector_field(self, t: Scalar, y: eqx.Module, u: Float[Array, " controls"]) -> eqx.Module:
        """dy/dt (per h) under the constant control `u` (L/h)."""

    @abc.abstractmethod
    def terminal(self, y: eqx.Module) -> Scalar:
        """The objective J of the state at t_f."""

    @abc.abstractmethod
    def rhs_numpy(self, y: np.ndarray, u: np.ndarray) -> np.ndarray:
        """dy/dt on the flat state (field order), NumPy only: the reference scorer's model."""


class ParkRamirez(AbstractOCP):
    r"""Secreted heterologous protein, Park & Ramirez (1988).

    $$\dot P_m = \phi(P_t-P_m) - DP_m,\quad \dot P_t = f_P X - DP_t,\quad \dot X = (\mu-D)X,$$
    $$\dot S = -7.3\mu X + D(20-S),\quad \dot V = F,\quad D = F/V,$$
    $$\mu = \frac{21.87 S}{(S+0.4)(S+62.5)},\quad f_P = \frac{S e^{-5S}}{0.1+S},\quad
      \phi = \frac{4.75\mu}{0.12+\mu}.$$

    x(0) = [0, 0, 1, 5, 1], t_f = 15 h, 0 <= F <= 2 L/h, maximise J = Pm(t_f) V(t_f).

    Args:
        tf: final time, h.
        feed_glucose: glucose in the feed, g/L.
        max_step: the longest Tsit5 step of `simulate`, h.
    """

    tf: float = 15.0
    feed_glucose: float = 20.0
    max_step: float = eqx.field(static=True, default=0.075)
    control_names: ClassVar[tuple[str, ...]] = ("F",)
    lower: ClassVar[tuple[float, ...]] = (0.0,)
    upper: ClassVar[tuple[float, ...]] = (2.0,)
    best_known: ClassVar[float] = 32.69

    def initial_state(self) -> ParkRamirezState:
        f = jnp.asarray
        return ParkRamirezState(Pm=f(0.0), Pt=f(0.0), X=f(1.0), S=f(5.0), V=f(1.0))

    def vector_field(self, t, y: ParkRamirezState, u) -> ParkRamirezState:
        F = u[0]
        D = F / y.V
        mu = 21.87 * y.S / ((y.S + 0.4) * (y.S + 62.5))
        fP = y.S * jnp.exp(-5.0 * y.S) / (0.1 + y.S)
        phi = 4.75 * mu / (0.12 + mu)
        return ParkRamirezState(
            Pm=phi * (y.Pt - y.Pm) - D * y.Pm,
            Pt=fP * y.X - D * y.Pt,
            X=(mu - D) * y.X,
            S=-7.3 * mu * y.X + D * (self.feed_glucose - y.S),
            V=F,
        )

    def terminal(self, y: ParkRamirezState) -> Scalar:
        return y.Pm * y.V

    def rhs_numpy(self, y, u):
        pm, pt, x, s, v = y
        f = u[0]
        d = f / v
        g = 21.87 * s / ((s + 0.4) * (s + 62.5))
        return np.array([
            4.75 * g / (0.12 + g) * (pt - pm) - d * pm,
            s * np.exp(-5.0 * s) / (0.1 + s) * x - d * pt,
            (g - d) * x,
            -7.3 * g * x + d * (self.feed_glucose - s),
            f,
        ])


class LeeRamirez(AbstractOCP):
    r"""Induced foreign protein, Lee & Ramirez (1994), original constants.

    $$\dot V = u_1+u_2,\quad \dot X = (\mu-D)X,\quad \dot S = 100u_1/V - DS - \mu X/0.51,$$
    $$\dot P = R_{fp}X - DP,\quad \dot I = 4u_2/V - DI,\quad \dot f_s = -k_1 f_s,\quad
      \dot f_r = k_2(1-f_r),\quad \dot C = u_2,$$
    $$\mu = \frac{\mu_{max}S}{K_N+S+S^2/K_S}\Big(f_s + f_r\frac{0.22}{0.22+I}\Big),\quad
      R_{fp} = \frac{f_{max}S}{K_N+S+S^2/K_S}\,\frac{0.0005+I}{0.022+I},\quad
      k_1 = k_2 = \frac{0.09 I}{0.034+I}.$$

    x(0) = [1, 0.1, 40, 0, 0, 1, 0, 0], t_f = 10 h, 0 <= u1, u2 <= 1 L/h,
    maximise J = P(t_f) V(t_f) - Q C(t_f).

    Args:
        tf: final time, h.
        Q: price of the inducer feed (per L).
        mu_max: 1/h; K_N, K_S: g/L; f_max: protein per cell per h.
        max_step: the longest Tsit5 step of `simulate`, h.
    """

    tf: float = 10.0
    Q: float = 5.0
    mu_max: float = 0.407
    K_N: float = 0.108
    K_S: float = 14814.8
    f_max: float = 0.095
    max_step: float = eqx.field(static=True, default=0.07)
    control_names: ClassVar[tuple[str, ...]] = ("u1", "u2")
    lower: ClassVar[tuple[float, ...]] = (0.0, 0.0)
    upper: ClassVar[tuple[float, ...]] = (1.0, 1.0)
    best_known: ClassVar[float] = 0.8165

    def initial_state(self) -> LeeRamirezState:
        f = jnp.asarray
        return LeeRamirezState(V=f(1.0), X=f(0.1), S=f(40.0), P=f(0.0), I=f(0.0), fs=f(1.0),
                               fr=f(0.0), C=f(0.0))

    def vector_field(self, t, y: LeeRamirezState, u) -> LeeRamirezState:
        u1, u2 = u[0], u[1]
        D = (u1 + u2) / y.V
        monod = y.S / (self.K_N + y.S + y.S**2 / self.K_S)
        mu = self.mu_max * monod * (y.fs + y.fr * 0.22 / (0.22 + y.I))
        Rfp = self.f_max * monod * (0.0005 + y.I) / (0.022 + y.I)
        k = 0.09 * y.I / (0.034 + y.I)
        return LeeRamirezState(
            V=u1 + u2,
            X=(mu - D) * y.X,
            S=100.0 * u1 / y.V - D * y.S - mu * y.X / 0.51,
            P=Rfp * y.X - D * y.P,
            I=4.0 * u2 / y.V - D * y.I,
            fs=-k * y.fs,
            fr=k * (1.0 - y.fr),
            C=u2,
        )

    def terminal(self, y: LeeRamirezState) -> Scalar:
        return y.P * y.V - self.Q * y.C

    def rhs_numpy(self, y, u):
        v, x, s, p, i, fs, fr, _ = y
        u1, u2 = u
        d = (u1 + u2) / v
        sat = s / (self.K_N + s + s * s / self.K_S)
        g = self.mu_max * sat * (fs + fr * 0.22 / (0.22 + i))
        k = 0.09 * i / (0.034 + i)
        return np.array([
            u1 + u2,
            g * x - d * x,
            100.0 * u1 / v - d * s - g * x / 0.51,
            self.f_max * sat * (0.0005 + i) / (0.022 + i) * x - d * p,
            4.0 * u2 / v - d * i,
            -k * fs,
            k * (1.0 - fr),
            u2,
        ])


def _as_controls(problem: AbstractOCP, u) -> Float[Array, "intervals controls"]:
    u = jnp.asarray(u, dtype=float)
    if u.ndim == 1 and len(problem.control_names) == 1:
        u = u[:, None]
    return u


def substeps(problem: AbstractOCP, n: int) -> int:
    """Tsit5 steps per interval in `simulate` for N = `n` intervals: ceil(t_f / n / max_step)."""
    return max(1, math.ceil(problem.tf / n / problem.max_step - 1e-9))


def simulate(problem: AbstractOCP, u: Float[ArrayLike, "intervals controls"]) -> eqx.Module:
    """The state at t_f under controls piecewise constant on N equal intervals.

    Fixed-step Tsit5 (diffrax's `Tsit5.step`): `lax.scan` over the N intervals, each taking
    `substeps(problem, N)` equal steps (an inner scan, unrolled up to 4 steps at a time) under
    its constant control. No step straddles a control jump, so the map u -> state is smooth; the
    solver restarts its first-same-as-last stage at every interval. The state is flattened
    (`ravel_pytree`) inside the integrator only: fewer, larger array operations per stage (2.5
    times faster value and gradient than stepping the state Module).

    Args:
        problem: the problem.
        u: control values, shape (N, controls) in L/h (shape (N,) for one control).

    Returns:
        The final state (the problem's state Module).
    """
    u = _as_controls(problem, u)
    n = u.shape[0]
    m = substeps(problem, n)
    h = problem.tf / n
    dt = h / m
    flat0, unravel = ravel_pytree(problem.initial_state())

    def field(t, y, ui):
        return ravel_pytree(problem.vector_field(t, unravel(y), ui))[0]

    term = dfx.ODETerm(field)
    solver = dfx.Tsit5()
    unroll = max(k for k in range(1, 5) if m % k == 0)  # no remainder loop: one copy of the step

    def interval(y, xs):
        t0, ui = xs

        def step(carry, t):
            y, state = carry
            y, _, _, state, _ = solver.step(term, t, t + dt, y, ui, state, made_jump=False)
            return (y, state), None

        state = solver.init(term, t0, t0 + dt, y, ui)
        (y, _), _ = jax.lax.scan(step, (y, state), t0 + dt * jnp.arange(m), unroll=unroll)
        return y, None

    y, _ = jax.lax.scan(interval, flat0, (h * jnp.arange(n, dtype=float), u))
    return unravel(y)


def objective(problem: AbstractOCP, u: Float[ArrayLike, "intervals controls"]) -> Scalar:
    """J of the piecewise-constant controls `u` (shape (N, controls)), by `simulate`."""
    return problem.terminal(simulate(problem, u))


def reference_objective(problem: AbstractOCP, u: Float[ArrayLike, "intervals controls"], *,
                        method: str = "LSODA", rtol: float = 1e-10, atol: float = 1e-10) -> float:
    """J of the piecewise-constant controls `u`, by scipy `solve_ivp` interval by interval.

    The right-hand side is the problem's independent NumPy model (`rhs_numpy`); the solver
    restarts at every interval boundary, so it never steps across a control jump.

    Args:
        problem: the problem.
        u: control values, shape (N, controls) in L/h (shape (N,) for one control).
        method: a `solve_ivp` method ("LSODA" or "Radau").
        rtol, atol: tolerances.

    Returns:
        J as a Python float.

    Raises:
        RuntimeError: if `solve_ivp` fails on an interval.
    """
    u = np.asarray(_as_controls(problem, u), dtype=float)
    flat0, unravel = ravel_pytree(problem.initial_state())
    y = np.asarray(flat0, dtype=float)
    n = u.shape[0]
    edges = np.linspace(0.0, problem.tf, n + 1)
    for i in range(n):
        ui = u[i]
        sol = solve_ivp(lambda t, yy: problem.rhs_numpy(yy, ui), (edges[i], edges[i + 1]), y,
                        method=method, rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed on interval {i} [{edges[i]}, {edges[i + 1]}] h: "
                               f"{sol.message}")
        y = sol.y[:, -1]
    return float(problem.terminal(unravel(jnp.asarray(y))))
