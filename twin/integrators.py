r"""Fixed-step, differentiable, linearly implicit integrators on `jax.lax.scan`.

Why: once the sugar feed limits growth, the sugar balance is quasi-steady and stiff: its Jacobian
eigenvalue $-(X/Y_{XS})\,\mu_{max}K_S/(K_S+S)^2 - m_S X K_m/(K_m+S)^2$ is -5 to -45 1/h in the
shipped scenarios, so explicit RK4 or Tsit5 at 0.5-1 h steps are unstable there (RK4 at 1 h loses
45 % of the erythromycin-like product). Here each stage divides by one scalar instead: the cost
per step is fixed, the method is L-stable, and reverse mode through `lax.scan` gives the exact
gradient of the discrete scheme.

Method: a Rosenbrock-W method, `ROS2` (Verwer et al. 1999: 2 stages, order 2, L-stable, stability
function positive on the whole negative axis; default) or `ROS34PW2` (Rang & Angermann 2005:
4 stages, order 3, L-stable, stiffly accurate). In the transformed form of Hairer & Wanner
(1996, IV.7) with $W = I - h\gamma J_W$,

$$W U_i = h\gamma\, f\Big(t_n + \alpha_i h,\; y_n + \sum_{j<i} a_{ij} U_j\Big)
          + \gamma \sum_{j<i} c_{ij} U_j, \qquad y_{n+1} = y_n + \sum_i m_i U_i .$$

A W-method keeps its order for *any* matrix $J_W$, so $J_W$ is chosen for stability, smoothness
and cost. It holds only the self-coupling of the stiff fields (by default the substrate; plus
dissolved oxygen when it is integrated): the column $\partial f/\partial S$ restricted to the
rows of $S$ and of its ledger balance (`substrate_fed`, `substrate_consumed`, `substrate_drawn`).
That is one forward-mode Jacobian-vector product per step and a scalar division
(Sherman-Morrison) per stage; the full $6\times6$ core Jacobian was 4 times slower to
differentiate and no more accurate, because linearising product formation around $S \approx 0$
($\partial q_P/\partial S$ is huge when $K_P$ is tiny) is poor.

Where the sugar runs out. The rates clip concentrations at zero, so the vector field has a kink
at $S = 0$, and where the sugar runs out *within* a step (zero-order uptake until
$S \approx K_S$) no linearly implicit step sees the switch: $S$ overshoots below zero. That costs
little in value (the debt is repaid from the feed, the balances stay exact) but it makes the
discrete map kinked in every parameter that moves the time the sugar runs out (`mu_max`,
`Y_XS`, ...): with ROS34PW2 at 1 h, d(final product)/d(mu_max) reached 15-90 times its true
size, with either sign, within a 5 % band of mu_max. Three measures keep the map smooth:

- `ROS2`'s stability function is positive on the negative axis (every order-3, L-stable
  method's dips to -0.13), so a strongly damped sugar does not change sign;
- where an explicit step would remove more than half of the sugar present, $W$'s sugar
  self-coupling blends (smoothly, C1) towards the secant $-D/S$ ($D$ = consumption + draw, read
  from the ledger rates), the Patankar idea: for saturating uptake $D/S \ge dD/dS$, and it keeps
  $S$ positive through the step where the sugar runs out;
- for $S < 0$ (a debt), $\partial f/\partial S = 0$ would make the step explicit in $S$ and
  start a period-2 oscillation (40-80 % of the product lost in some parameter draws), so $J_W$
  is evaluated at $|S|$.

Elsewhere, in particular in the fed, sugar-limited phase where feed and uptake balance, $J_W$ is
the exact self-coupling.

Mass balances close exactly: a linear invariant $c^\top y$ (for example
$S - S_{fed} + S_{consumed} + S_{drawn}$) has $c^\top f \equiv 0$, hence $c^\top J = 0$ at any
point. $J_W$ keeps, for every invariant, either all or none of the rows in its support, and the
secant blend moves its change of the $S$ entry onto the `substrate_consumed` entry, so
$c^\top J_W = 0$, $c^\top W^{-1} = c^\top$, and by induction over the stages $c^\top U_i = 0$:
$c^\top y_{n+1} = c^\top y_n$ to round-off. The ledger goes through the same stages as the state;
its rows of $J_W$ come from the same Jacobian-vector product.

Controls: recipe breakpoints must lie on the grid; within a step every control is then linear in
time, so the recipe is evaluated once per step (just inside both ends, vectorised, before the
loop) and no stage ever sees a neighbouring phase.

Accuracy and cost (benchmarks/integrators.py; 24 random draws of mu_max, Y_XS, beta_max and feed
rate per scenario): ROS2 at 0.5 h is within 0.5 % of the adaptive reference in final product
(1.6 % at 1 h) and its d(product)/d(mu_max) stays within 0.4 of the true slope's size; ROS34PW2
is within 0.4 % at 0.5-1 h but with the kinked gradients above. Value and gradient of 6 vmapped
170 h batches take 1.5 ms (ROS2, 1 h) and 3.1-3.3 ms (ROS2, 0.5 h) on 2 CPU cores, with the
loops compiled whole (`_compile_loops_whole`; 11-15 and 21-29 ms without).

Cost per step: one vector-field evaluation with its forward-mode derivative in the stiff fields
(the derivative of each stiff field taken as a scalar, so no tangent flows through the parts of
the vector field that do not depend on it), one more evaluation for the second stage, and a
third only where a stiff field is negative (elsewhere the vector field at $|y|$, where $J_W$ is
taken, is the vector field at $y$).

Reference: J. G. Verwer, E. J. Spee, J. G. Blom, W. Hundsdorfer (1999) SIAM J Sci Comput
20:1456 (ROS2); J. Rang, L. Angermann (2005) BIT 45:761 (ROS34PW2); E. Hairer, G. Wanner (1996)
Solving Ordinary Differential Equations II, 2nd ed., Springer, IV.7 (transformed form,
W-methods); S. V. Patankar (1980) Numerical Heat Transfer and Fluid Flow (source linearisation);
A. Sandu et al. (1997) Atmos Environ 31:3459 (linear invariants of Rosenbrock methods).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float
from .errors import SolverError
from .reactor import FermentationModel, QuasiSteadyOxygen
from .recipe import Recipe
from .state import Controls, Ledger, ReactorState

__all__ = [
    "AbstractFixedStepMethod", "RosenbrockW", "ExplicitRungeKutta", "ROS2", "ROS34PW2", "RK4",
    "integrate_fixed", "interpolate", "CORE_FIELDS", "BALANCES",
]

# Controls are sampled this far (h) inside each step, so a step never sees a neighbouring phase.
_INSIDE = 1e-9

CORE_FIELDS = ("biomass", "substrate", "product", "volume", "precursor", "oil")
"""State fields that feed back into the vector field (plus dissolved oxygen when integrated)."""

BALANCES: dict[str, tuple[str, ...]] = {
    "substrate": ("substrate_fed", "substrate_consumed", "substrate_drawn"),
    "product": ("product_formed", "product_hydrolysed", "product_drawn"),
    "volume": ("volume_fed", "volume_drawn", "volume_evaporated"),
    "precursor": ("precursor_fed",),
    "oil": ("oil_fed",),
}
"""Ledger entries in the balance of each state field (kept together in the W matrix)."""

# ----------------------------------------------------------------------------- XLA on CPU

_LOOP_BYTES_KEY = "xla_cpu_small_while_loop_byte_threshold"
_LOOP_BYTES = 100_000_000
"""While loops that touch fewer bytes per iteration than this are compiled whole on CPU."""


def _compile_loops_whole(threshold: int = _LOOP_BYTES) -> None:
    """Ask XLA's CPU backend to compile each while loop touching fewer than `threshold` bytes per
    iteration into one function, unless `XLA_FLAGS` already sets the option.

    Why: XLA's CPU runtime otherwise runs every fused kernel of a loop body as a task of its own
    (XLA's default threshold is 1 kB), and the fixed-grid scan is about 120 scalar kernels per
    step. Compiled whole (measured on 2 CPU cores, erythromycin-like batch, 170 h), the solve of
    `simulate(..., options=FixedGrid(0.5))` takes 0.7 ms instead of 3.4 ms, its value and
    gradient 1 ms instead of 17 ms, a vmapped ensemble of 1000 a third less CPU time, and the
    adaptive (diffrax) solve 1.8 ms instead of 25-30 ms. The scan touches a few kB per step
    alone and a few MB vmapped over 1000 members; loops above the threshold keep the task
    runtime, which can spread large kernels over cores.

    This sets a process-wide option, read once when JAX first starts its CPU backend: importing
    `twin` before running any JAX computation applies it; afterwards it has no effect. Set
    `--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=1024` in `XLA_FLAGS`
    to keep XLA's default.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _LOOP_BYTES_KEY in flags:
        return
    prefix = "--xla_backend_extra_options="
    parts = flags.split()
    for i, part in enumerate(parts):  # the backend's options are one comma-separated flag
        if part.startswith(prefix):
            parts[i] = part + ("," if part != prefix else "") + f"{_LOOP_BYTES_KEY}={threshold}"
            break
    else:
        parts.append(f"{prefix}{_LOOP_BYTES_KEY}={threshold}")
    os.environ["XLA_FLAGS"] = " ".join(parts)


_compile_loops_whole()

_LEDGER_FIELDS = tuple(Ledger.__dataclass_fields__)
_CONTROL_FIELDS = tuple(Controls.__dataclass_fields__)
_STATE_FIELDS = tuple(n for n in ReactorState.__dataclass_fields__ if n != "ledger")


# ----------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How a `ReactorState` is split into the core vector (feeds back) and the passive vector
    (ledger, quasi-steady DO: never enters the vector field), and which fields are stiff."""

    core: tuple[str, ...]
    passive: tuple[str, ...]
    stiff: tuple[str, ...]

    @classmethod
    def of(cls, model: FermentationModel, stiff: tuple[str, ...] | None) -> "_Layout":
        dynamic_do = not isinstance(model.oxygen_balance, QuasiSteadyOxygen)
        core = CORE_FIELDS + (("dissolved_oxygen",) if dynamic_do else ())
        passive = (() if dynamic_do else ("dissolved_oxygen",)) + tuple(f"ledger.{n}" for n in _LEDGER_FIELDS)
        if stiff is None:
            stiff = ("substrate",) + (("dissolved_oxygen",) if dynamic_do else ())
        unknown = [n for n in stiff if n not in core]
        if unknown or not stiff or len(set(stiff)) != len(stiff):
            raise SolverError(f"stiff fields must be distinct names from {list(core)}",
                              field="stiff", value=stiff)
        return cls(core, passive, tuple(stiff))

    def split(self, y: ReactorState):
        get = lambda n: getattr(y.ledger, n[7:]) if n.startswith("ledger.") else getattr(y, n)  # noqa: E731
        return jnp.stack([get(n) for n in self.core]), jnp.stack([get(n) for n in self.passive])

    def merge(self, yc, yp) -> ReactorState:
        vals = dict(zip(self.core, yc)) | dict(zip(self.passive, yp))
        ledger = Ledger(**{n: vals[f"ledger.{n}"] for n in _LEDGER_FIELDS})
        return ReactorState(**{n: vals[n] for n in _STATE_FIELDS}, ledger=ledger)

    def w_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the Jacobian columns kept in W: each stiff field and its ledger balance."""
        mc = np.zeros((len(self.stiff), len(self.core)))
        mp = np.zeros((len(self.stiff), len(self.passive)))
        for b, name in enumerate(self.stiff):
            mc[b, self.core.index(name)] = 1.0
            for entry in BALANCES.get(name, ()):
                mp[b, self.passive.index(f"ledger.{entry}")] = 1.0
        return mc, mp


class _StepControls(eqx.Module):
    """The recipe within one grid step, where every control is linear in time.

    `FermentationModel.vector_field` reads its recipe only through `recipe.controls(t)`; inside
    the loop this stands in for the `Recipe`, so that the phase search runs once per step,
    vectorised, before the loop rather than at every stage.
    """

    t: Float[Array, ""]
    value: Float[Array, " controls"]  # controls at t
    slope: Float[Array, " controls"]  # d(controls)/dt within the step

    def controls(self, t) -> Controls:
        u = self.value + (t - self.t) * self.slope
        return Controls(*(u[i] for i in range(len(_CONTROL_FIELDS))))


def _stack_controls(u: Controls) -> Float[Array, "... controls"]:
    return jnp.stack([getattr(u, n) for n in _CONTROL_FIELDS], axis=-1)


# ----------------------------------------------------------------------------- methods


class AbstractFixedStepMethod(eqx.Module):
    """One step of a fixed-step method for `f(t, y_core) -> (f_core, f_passive)`.

    `f` takes the core state as a vector or as a sequence of scalars (fields in `layout.core`
    order); the second form lets a forward-mode derivative with respect to one field skip the
    parts of the vector field that do not depend on it.
    """

    @abc.abstractmethod
    def step(self, f, t, h, yc, yp, layout: _Layout):
        """Advance `(yc, yp)` from `t` by `h >= 0`; `h = 0` leaves the state exactly unchanged."""


def _lower(rows, n: int) -> np.ndarray:
    """A strictly lower-triangular `n x n` matrix from its rows below the diagonal."""
    out = np.zeros((n, n))
    for i, r in enumerate(rows, start=1):
        out[i, : len(r)] = r
    return out


def _inverse(M):
    """Inverse of a small matrix by Gauss-Jordan without pivoting (M = I - h gamma J_W, whose
    diagonal is >= 1 for the dissipative self-couplings it holds)."""
    n = M.shape[-1]
    A = M
    for k in range(n):
        p = 1.0 / A[k, k]
        col, row = A[:, k], A[k, :] * p
        is_row = (np.arange(n) == k)[:, None]
        is_col = (np.arange(n) == k)[None, :]
        rest = jnp.where(is_col, -col[:, None] * p, A - col[:, None] * row[None, :])
        A = jnp.where(is_row, row[None, :], rest)
        A = jnp.where(is_row & is_col, p, A)
    return A


class RosenbrockW(AbstractFixedStepMethod):
    r"""A Rosenbrock-W method with $J_W$ = self-coupling of the stiff fields (module docstring).

    Coefficients in the transformed form: `a`, `c` strictly lower triangular (rows 2..s), weights
    `m`, abscissae `alpha`, diagonal `gamma`. Build from the $(\alpha, \Gamma, b)$ form of the
    literature with `RosenbrockW.from_gamma_form`. Use `ROS2` (default) or `ROS34PW2`.

    Args:
        stiff: state fields whose self-coupling enters W (default: substrate, plus dissolved
            oxygen when it is integrated). Add `"precursor"` or `"oil"` for a strain that runs
            them down to zero under a limiting feed.
    """

    name: str = eqx.field(static=True)
    order: int = eqx.field(static=True)
    gamma: float = eqx.field(static=True)
    a: tuple = eqx.field(static=True)
    c: tuple = eqx.field(static=True)
    m: tuple = eqx.field(static=True)
    alpha: tuple = eqx.field(static=True)
    stiff: tuple[str, ...] | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        s = len(self.m)
        if len(self.alpha) != s or len(self.a) != s - 1 or len(self.c) != s - 1:
            raise SolverError("tableau sizes disagree: need len(m) == len(alpha) == len(a) + 1 "
                              "== len(c) + 1", field="RosenbrockW", value=self.name)

    @classmethod
    def from_gamma_form(cls, name: str, order: int, alpha, Gamma, gamma: float, b, **kw) -> "RosenbrockW":
        r"""From the form $(I - h\gamma J)k_i = h f(y + \sum_j \alpha_{ij}k_j) + hJ\sum_{j<i}\Gamma_{ij}k_j$,
        $y_1 = y + \sum_i b_i k_i$ (strictly lower `alpha`, `Gamma`)."""
        s = len(b)
        G = np.asarray(Gamma, float) + gamma * np.eye(s)
        Gi = np.linalg.inv(G)
        A = np.asarray(alpha, float) @ Gi
        C = np.diag(np.full(s, 1.0 / gamma)) - Gi
        m = np.asarray(b, float) @ Gi
        rows = lambda X: tuple(tuple(float(x) for x in X[i, :i]) for i in range(1, s))  # noqa: E731
        return cls(name=name, order=order, gamma=gamma, a=rows(A), c=rows(C),
                   m=tuple(float(x) for x in m), alpha=tuple(float(x) for x in np.sum(alpha, axis=1)), **kw)

    def step(self, f, t, h, yc, yp, layout: _Layout):
        s, g = len(self.m), self.gamma
        A, C = _lower(self.a, s), _lower(self.c, s)
        idx = [layout.core.index(n) for n in layout.stiff]
        k = len(idx)
        y = [yc[i] for i in range(yc.shape[0])]
        # W's columns d f / d(stiff fields), taken at |y| in the stiff fields (module docstring):
        # one forward-mode product per stiff field, of the field as a scalar, so that no tangent
        # flows through the parts of the vector field that do not depend on it
        yJ = list(y)
        for i in idx:
            yJ[i] = jnp.abs(y[i])

        def column(b):
            def f_b(v):
                yb = list(yJ)
                yb[idx[b]] = v
                return f(t, yb)
            return jax.jvp(f_b, (yJ[idx[b]],), (jnp.ones_like(yJ[idx[b]]),))

        cols = [column(b) for b in range(k)]
        fJc, fJp = cols[0][0]
        Jc = jnp.stack([c[1][0] for c in cols])
        Jp = jnp.stack([c[1][1] for c in cols])
        # where every stiff field is >= 0, |y| = y and the vector field there is already known
        nonneg = functools.reduce(jnp.logical_and, [y[i] >= 0 for i in idx])
        f0 = jax.lax.cond(nonneg, lambda: (fJc, fJp), lambda: f(t, y))
        mc, mp = layout.w_masks()
        Jc, Jp = Jc * mc, Jp * mp  # (stiff, core), (stiff, passive): only the rows kept in W
        if "substrate" in layout.stiff:
            Jc, Jp = _limit_substrate(Jc, Jp, fJp, f0[1], yc, h, layout)
        hg = h * g
        if k == 1:
            minv = 1.0 / (1.0 - hg * Jc[0, idx[0]])

            def solve(rc, rp):  # W^{-1} r by Sherman-Morrison
                z = (hg * minv) * rc[idx[0]]
                return rc + z * Jc[0], rp + z * Jp[0]
        else:
            Minv = _inverse(jnp.eye(k) - hg * Jc[:, np.asarray(idx)].T)

            def solve(rc, rp):  # W^{-1} r by Sherman-Morrison-Woodbury
                z = Minv @ rc[np.asarray(idx)]
                return rc + hg * (z @ Jc), rp + hg * (z @ Jp)

        Uc, Up = [], []
        for i in range(s):
            if i == 0:
                fc, fp = f0
            else:
                Y = yc + sum(A[i, j] * Uc[j] for j in range(i) if A[i, j] != 0.0)
                fc, fp = f(t + self.alpha[i] * h, Y)
            rc, rp = hg * fc, hg * fp
            for j in range(i):
                if C[i, j] != 0.0:
                    rc = rc + (g * C[i, j]) * Uc[j]
                    rp = rp + (g * C[i, j]) * Up[j]
            uc, up = solve(rc, rp)
            Uc.append(uc)
            Up.append(up)
        yc1 = yc + sum(mi * u for mi, u in zip(self.m, Uc) if mi != 0.0)
        yp1 = yp + sum(mi * u for mi, u in zip(self.m, Up) if mi != 0.0)
        return yc1, yp1


# The limiter blends towards the secant slope as an explicit step would remove between
# _LIMIT_FROM and _LIMIT_TO of the sugar present (smoothstep, so the scheme stays C1).
_LIMIT_FROM, _LIMIT_TO = 0.5, 1.0


def _limit_substrate(Jc, Jp, fJp, fp0, yc, h, layout: _Layout):
    r"""Stiffen W's sugar self-coupling towards the secant $-D/S$ where the sugar would run out.

    $D$ = consumption + draw (from the ledger rates). For saturating uptake $D/S \ge dD/dS$;
    using it where the sugar is exhausted within the step is the Patankar idea: it keeps $S$
    (and the rates' clipping) away from negative values, which otherwise makes the discrete map
    kinked in every parameter that moves the time the sugar runs out. Elsewhere (the fed,
    sugar-limited phase, where feed and uptake balance) W keeps the exact self-coupling. The
    change is moved onto `substrate_consumed`'s row, so the sugar balance stays exact.
    """
    b = layout.stiff.index("substrate")
    iS = layout.core.index("substrate")
    ic, idr, ifed = (layout.passive.index(f"ledger.substrate_{n}") for n in ("consumed", "drawn", "fed"))
    S = yc[iS]
    Sa = jnp.abs(S)
    pos_a = Sa > 0
    # secant at |S|, from the same evaluation as W's column
    secant = jnp.where(pos_a, -(fJp[ic] + fJp[idr]) / jnp.where(pos_a, Sa, 1.0), Jc[b, iS])
    extra = jnp.minimum(secant - Jc[b, iS], 0.0)
    # fraction of the sugar an explicit Euler step would remove (a debt counts as exhausted)
    pos = S > 0
    removed = jnp.where(pos, h * (fp0[ic] + fp0[idr] - fp0[ifed]) / jnp.where(pos, S, 1.0), 2.0)
    x = jnp.clip((removed - _LIMIT_FROM) / (_LIMIT_TO - _LIMIT_FROM), 0.0, 1.0)
    extra = extra * (x * x * (3.0 - 2.0 * x))
    # added through constant one-hot matrices (elementwise, fused with its neighbours) rather
    # than scatters
    ec, ep = np.zeros(Jc.shape), np.zeros(Jp.shape)
    ec[b, iS], ep[b, ic] = 1.0, -1.0
    return Jc + extra * ec, Jp + extra * ep


class ExplicitRungeKutta(AbstractFixedStepMethod):
    """An explicit Runge-Kutta method (for comparison: unstable once the sugar feed limits)."""

    name: str = eqx.field(static=True)
    order: int = eqx.field(static=True)
    a: tuple = eqx.field(static=True)
    b: tuple = eqx.field(static=True)
    alpha: tuple = eqx.field(static=True)

    def step(self, f, t, h, yc, yp, layout: _Layout):
        A = _lower(self.a, len(self.b))
        kc, kp = [], []
        for i in range(len(self.b)):
            Y = yc + sum((h * A[i, j]) * kc[j] for j in range(i) if A[i, j] != 0.0)
            fc, fp = f(t + self.alpha[i] * h, Y)
            kc.append(fc)
            kp.append(fp)
        yc1 = yc + sum((h * bi) * k for bi, k in zip(self.b, kc) if bi != 0.0)
        yp1 = yp + sum((h * bi) * k for bi, k in zip(self.b, kp) if bi != 0.0)
        return yc1, yp1


def _ros34pw2() -> RosenbrockW:
    alpha = np.zeros((4, 4))
    alpha[1, 0] = 8.7173304301691801e-01
    alpha[2, :2] = (8.4457060015369423e-01, -1.1299064236484185e-01)
    alpha[3, 2] = 1.0
    Gamma = np.zeros((4, 4))
    Gamma[1, 0] = -8.7173304301691801e-01
    Gamma[2, :2] = (-9.0338057013044082e-01, 5.4180672388095326e-02)
    Gamma[3, :3] = (2.4212380706095346e-01, -1.2232505839045147e00, 5.4526025533510214e-01)
    b = (2.4212380706095346e-01, -1.2232505839045147e00, 1.5452602553351020e00, 4.3586652150845900e-01)
    return RosenbrockW.from_gamma_form("ROS34PW2", 3, alpha, Gamma, 4.3586652150845900e-01, b)


ROS34PW2 = _ros34pw2()
"""Rang & Angermann (2005): 4 stages, order 3 for any W, L-stable, stiffly accurate. More accurate
values than `ROS2` at 1 h, but its gradients with respect to parameters that move the time the
sugar runs out are kinked (module docstring); fine for gradients with respect to feed rates."""

_G2 = 1.0 + 1.0 / math.sqrt(2.0)
ROS2 = RosenbrockW(name="ROS2", order=2, gamma=_G2, a=((1.0 / _G2,),), c=((-2.0 / _G2,),),
                   m=(1.5 / _G2, 0.5 / _G2), alpha=(0.0, 1.0))
"""Verwer et al. (1999): 2 stages, order 2 for any W, L-stable, stability function positive on the
negative axis (default; smooth gradients; about 60 % of ROS34PW2's cost; use dt = 0.5 h)."""

RK4 = ExplicitRungeKutta(name="RK4", order=4, a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                         b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), alpha=(0.0, 0.5, 0.5, 1.0))
"""The classical explicit Runge-Kutta method (for comparison only: not for stiff phases)."""


# ----------------------------------------------------------------------------- integrate


def integrate_fixed(model: FermentationModel, recipe: Recipe, y0: ReactorState, t0, t1, *,
                    dt: float, n_steps: int, method: AbstractFixedStepMethod = ROS2):
    r"""Integrate one fed-batch on the fixed grid $t_k = t_0 + k\,dt$, $k = 0..n$.

    Step $k$ has length $h_k = \mathrm{clip}(t_1 - t_k, 0, dt)$, so `t1` may be traced and
    steps beyond it leave the state exactly unchanged. Pure: `jax.jit`, `jax.vmap` and
    `jax.grad` apply; reverse mode recomputes each step (`jax.checkpoint`) instead of storing
    its intermediates, which is faster for these small states.

    Args:
        model: the reactor and culture.
        recipe: every manipulated variable; its breakpoints must lie on the grid.
        y0: initial state (amounts in g, volume in L, ledger).
        t0, t1: start and end, h (may be traced).
        dt: step, h (static). 0.5 h keeps `ROS2` within 0.5 % of the adaptive reference.
        n_steps: number of steps (static), `n_steps * dt >= t1 - t0`.
        method: `ROS2` (default), `ROS34PW2`, or `RK4` (explicit, for comparison only).

    Returns:
        `(grid_ts, states)`: grid times $\min(t_0 + k\,dt,\, t_1)$ in h, shape `(n_steps + 1,)`,
        and `ReactorState` at them with the same leading axis.

    Raises:
        SolverError: `dt` not positive, `n_steps` not a positive integer, an unknown stiff
            field, or (with concrete arguments) a grid shorter than `t1 - t0` or a recipe
            breakpoint off the grid. Under `jit` a short grid gives NaN states.

    Example:
        >>> ts, ys = integrate_fixed(model, recipe, y0, 0.0, 170.0, dt=0.5, n_steps=340)  # doctest: +SKIP
        >>> titer = ys.product[-1] / ys.volume[-1]  # doctest: +SKIP
        >>> at_samples = interpolate(ts, ys, sample_times)  # doctest: +SKIP
    """
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not dt > 0 or not math.isfinite(dt):
        raise SolverError("dt must be a positive finite number of hours (a static Python float)",
                          field="dt", value=dt)
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise SolverError("n_steps must be a positive whole number (static)", field="n_steps", value=n_steps)
    dt, n_steps = float(dt), int(n_steps)
    grid_ts, ycs, yps, _, layout = _integrate(model, recipe, y0, t0, t1, dt, n_steps, method)
    return grid_ts, jax.vmap(layout.merge)(ycs, yps)


def _solve_at(model: FermentationModel, recipe: Recipe, y0: ReactorState, t0, t1,
             ts: Float[Array, " times"], *, dt: float, n_steps: int,
             method: AbstractFixedStepMethod = ROS2) -> tuple[ReactorState, Controls]:
    """`integrate_fixed`, then the states interpolated at `ts` (as `interpolate`) and the
    controls at `ts`: what `twin.simulate.simulate(..., options=FixedGrid(dt))` returns.

    The recipe is evaluated at the grid and at `ts` in one vectorised pass, and the states are
    interpolated as two stacked arrays rather than field by field.

    Returns:
        `(states, controls)` with leading axis `times`.
    """
    ts = jnp.asarray(ts, dtype=float)
    grid_ts, ycs, yps, u_ts, layout = _integrate(model, recipe, y0, t0, t1, dt, n_steps, method, ts)
    i, j, w = _weights(grid_ts, ts)
    w = w[:, None]
    at = lambda y: (1.0 - w) * y[i] + w * y[j]  # noqa: E731
    states = jax.vmap(layout.merge)(at(ycs), at(yps))
    return states, Controls(*(u_ts[:, n] for n in range(len(_CONTROL_FIELDS))))


def _integrate(model, recipe, y0, t0, t1, dt: float, n_steps: int, method, ts=None):
    """The scan of `integrate_fixed`: `(grid_ts, core states, passive states, controls at ts,
    layout)`, the states stacked as `(n_steps + 1, fields)` arrays."""
    t0 = jnp.asarray(t0, dtype=float)
    t1 = jnp.asarray(t1, dtype=float)
    _check_grid(recipe, t0, t1, dt, n_steps)
    # traced, a short grid makes every state NaN (an `eqx.error_if` here would put a host
    # callback in the program, and such a program never enters JAX's persistent compilation cache)
    t1 = jnp.where(t1 - t0 > n_steps * dt * (1.0 + 1e-12) + 1e-9, jnp.nan, t1)
    layout = _Layout.of(model, method.stiff if isinstance(method, RosenbrockW) else None)
    yc0, yp0 = layout.split(y0)

    t_k = t0 + dt * jnp.arange(n_steps, dtype=float)
    h_k = jnp.clip(t1 - t_k, 0.0, dt)
    lo = t_k + _INSIDE
    hi = jnp.maximum(lo, t_k + h_k - _INSIDE)
    # the recipe at both ends of every step (and at ts) in one vectorised evaluation
    times = jnp.concatenate([lo, hi] + ([] if ts is None else [ts]))
    u = _stack_controls(jax.vmap(recipe.controls)(times))
    u_lo, u_hi, u_ts = u[:n_steps], u[n_steps:2 * n_steps], u[2 * n_steps:]
    slope = (u_hi - u_lo) / jnp.where(hi > lo, hi - lo, 1.0)[:, None]
    u_start = u_lo - _INSIDE * slope

    def body(carry, xs):
        yc, yp = carry
        t, h, u, du = xs
        local = _StepControls(t, u, du)

        def f(tt, y):
            # the passive fields never enter the vector field, so the step's start values do
            return layout.split(model.vector_field(tt, layout.merge(y, yp), local))

        new = method.step(f, t, h, yc, yp, layout)
        return new, new

    body = jax.checkpoint(body, prevent_cse=False)
    _, (ycs, yps) = jax.lax.scan(body, (yc0, yp0), (t_k, h_k, u_start, slope))
    ycs = jnp.concatenate([yc0[None], ycs])
    yps = jnp.concatenate([yp0[None], yps])
    grid_ts = jnp.minimum(t0 + dt * jnp.arange(n_steps + 1, dtype=float), t1)
    return grid_ts, ycs, yps, u_ts, layout


def _check_grid(recipe: Recipe, t0, t1, dt: float, n_steps: int) -> None:
    """With concrete arguments: the grid covers [t0, t1] and every breakpoint lies on it."""
    leaves = (t0, t1, *jax.tree_util.tree_leaves(recipe))
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return
    a, b = float(t0), float(t1)
    if b - a > n_steps * dt * (1.0 + 1e-12) + 1e-9:
        raise SolverError(f"the grid (n_steps * dt = {n_steps * dt:g} h) is shorter than "
                          f"t1 - t0 = {b - a:g} h", field="n_steps", value=n_steps,
                          hint=f"use n_steps >= {math.ceil((b - a) / dt - 1e-9)}")
    jumps = recipe.jump_times(a, b)
    off = np.abs((jumps - a) / dt - np.round((jumps - a) / dt)) > 1e-9
    if off.any():
        raise SolverError(f"recipe breakpoints must lie on the grid t0 + k * dt (dt = {dt:g} h)",
                          field="recipe", value=jumps[off][:5].tolist(),
                          hint="choose dt that divides every phase start, or use twin.simulate.Adaptive()")


def interpolate(grid_ts: Float[Array, " grid"], states: ReactorState,
                ts: Float[Array, " times"]) -> ReactorState:
    """Linear interpolation of `states` (on non-decreasing `grid_ts`) at times `ts`.

    Exact (bitwise) at grid times; times outside the grid take the end values. Differentiable
    in the states (and in `ts` between grid points).

    Args:
        grid_ts: grid times from `integrate_fixed`, h, shape `(grid,)`.
        states: `ReactorState` with leading axis `grid`.
        ts: times to evaluate at, h, shape `(times,)`.

    Returns:
        `ReactorState` with leading axis `times`.
    """
    i, j, w = _weights(jnp.asarray(grid_ts, dtype=float), jnp.asarray(ts, dtype=float))
    # (1 - w) * a + w * b is exact at w = 0 and w = 1
    return jax.tree_util.tree_map(lambda y: (1.0 - w) * y[i] + w * y[j], states)


def _weights(grid_ts, ts):
    """Bracketing grid indices `i`, `j` and weight `w` of `ts` (see `interpolate`)."""
    n = grid_ts.shape[0]
    i = jnp.clip(jnp.searchsorted(grid_ts, ts, side="right") - 1, 0, max(n - 2, 0))
    j = jnp.minimum(i + 1, n - 1)
    width = grid_ts[j] - grid_ts[i]
    safe = jnp.where(width > 0, width, 1.0)
    w = jnp.where(width > 0, jnp.clip((ts - grid_ts[i]) / safe, 0.0, 1.0), 0.0)
    w = jnp.where(ts >= grid_ts[-1], 1.0, w)  # at or after the end: the last state
    return i, j, w
