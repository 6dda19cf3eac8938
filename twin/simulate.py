"""One pure entry point: `simulate(model, recipe, y0, t0, t1, ts=...)` on diffrax, float64.

It is jit-compiled once per model *structure* (the classes and static fields of the model, the
number of recipe phases and saved times); changing parameter or recipe values does not recompile.
It is pure, so `jax.vmap` runs ensembles over parameter sets, recipes or initial states, and
`jax.grad` differentiates through the solver (`RecursiveCheckpointAdjoint`).

Solver choices are objects: `Adaptive()` (Tsit5 with a PID controller that stops at every recipe
breakpoint) is the reference; `FixedGrid(dt)` is a fixed-step linearly implicit Rosenbrock method
(`twin.integrators`) whose cost and gradients are predictable (for inference and optimisation;
breakpoints must lie on the grid); `Adaptive.stiff()` is Kvaerno5 with a Newton root finder for
the dynamic-DO model.

Cost of one call after compilation (benchmarks/simulate.py: erythromycin-like batch, 170 h, 171
saved times, 2 CPU cores): 0.8 ms with `FixedGrid(0.5)`, 0.65 ms of it in the jitted solve with
its argument passing, and 2 ms with `Adaptive()`. Importing this module lets XLA compile the
solver loops whole on CPU (`twin.integrators._compile_loops_whole`); without it the same calls
take about 4 ms and 25-30 ms.
"""

from __future__ import annotations

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from .integrators import ROS2, _solve_at  # (the import also sets the XLA CPU loop option)
from ._custom_types import Array, Float
from .errors import SolverError
from .reactor import FermentationModel, Outputs
from .recipe import Recipe
from .state import Controls, ReactorState

__all__ = ["Adaptive", "FixedGrid", "Trajectory", "simulate", "ensure_success", "grid_slope"]


class Adaptive(eqx.Module):
    """Adaptive step size; stops exactly at every recipe breakpoint.

    Args:
        rtol, atol: tolerances (atol in the state's units: g, L, %).
        solver: a diffrax solver (default Tsit5).
        max_steps: step budget before the solve is declared failed.
        dt0: first step, h.
    """

    rtol: float = 1e-7
    atol: float = 1e-7
    solver: dfx.AbstractSolver = dfx.Tsit5()
    max_steps: int = eqx.field(static=True, default=20_000)
    dt0: float = 0.01

    @classmethod
    def stiff(cls, rtol: float = 1e-6, atol: float = 1e-6, max_steps: int = 50_000) -> "Adaptive":
        """Kvaerno5 with a Newton root finder (for `DynamicOxygen`)."""
        root = optx.Newton(rtol=1e-8, atol=1e-8)
        return cls(rtol=rtol, atol=atol, solver=dfx.Kvaerno5(root_finder=root), max_steps=max_steps,
                   dt0=1e-4)


class FixedGrid(eqx.Module):
    """Fixed step `dt` (h) with a linearly implicit Rosenbrock method (`twin.integrators`).

    Stable on the stiff sugar-limited phase at 0.5-1 h steps, fixed cost, and reverse-mode
    gradients that are exact for the discrete scheme (through `lax.scan`): the choice for
    inference and optimisation. Every recipe breakpoint must lie on the grid; states at `ts`
    between grid points are interpolated linearly (exact at grid times).

    Args:
        dt: step, h (for example 0.5).
        method: a fixed-step method of `twin.integrators` (default ROS2, order 2, L-stable).
        max_horizon_h: longest span supported when `t1` is traced (sets the static step count;
            with concrete `t0`, `t1` the step count is `ceil((t1 - t0) / dt)`).
    """

    dt: float = eqx.field(static=True, default=0.5)
    method: "object" = None
    max_horizon_h: float = eqx.field(static=True, default=2000.0)

    def fixed_method(self):
        return ROS2 if self.method is None else self.method


class Trajectory(eqx.Module):
    """A simulated batch at the saved times (leading axis `times` on every leaf).

    Attributes:
        ts: saved times, h.
        states: `ReactorState` with amounts (g), volume (L) and the ledger.
        outputs: algebraic outputs (DO, OUR, kLa, specific rates, evaporation).
        controls: every manipulated variable at the saved times.
        result: diffrax result code (0 = success).
        num_steps: accepted solver steps.
    """

    ts: Float[Array, " times"]
    states: ReactorState
    outputs: Outputs
    controls: Controls
    result: dfx.RESULTS
    num_steps: Array

    def concentration(self, name: str) -> Float[Array, " times"]:
        """Broth concentration (g/L) of `biomass`, `substrate`, `product`, `precursor` or `oil`."""
        return getattr(self.states, name) / self.states.volume

    @property
    def total_product(self) -> Float[Array, " times"]:
        """Product in the vessel plus product that left with draws, g."""
        return self.states.product + self.states.ledger.product_drawn


def _term(model: FermentationModel):
    return dfx.ODETerm(lambda t, y, args: model.vector_field(t, y, args))


def _solve_impl(model, recipe, y0, t0, t1, ts, options, n_steps):
    if isinstance(options, FixedGrid):
        states, controls = _solve_at(model, recipe, y0, t0, t1, ts, dt=options.dt, n_steps=n_steps,
                                     method=options.fixed_method())
        result = dfx.RESULTS.successful
        num_steps = jnp.asarray(n_steps)
    else:
        jumps = jnp.sort(jnp.concatenate([p.start for p in recipe.profiles.values()]))
        controller = dfx.ClipStepSizeController(
            dfx.PIDController(rtol=options.rtol, atol=options.atol), jump_ts=jumps)
        sol = dfx.diffeqsolve(
            _term(model), options.solver, t0=t0, t1=t1, dt0=options.dt0, y0=y0, args=recipe,
            saveat=dfx.SaveAt(ts=ts), stepsize_controller=controller, max_steps=options.max_steps,
            throw=False)
        states = sol.ys
        result = sol.result
        num_steps = sol.stats["num_accepted_steps"]
        controls = jax.vmap(recipe.controls)(ts)
    # `model.outputs(t, y, recipe)` with the controls at ts evaluated once; the controls saved
    # are those that acted (the precursor loop's flow where it runs)
    controls, outputs = jax.vmap(model.acting)(states, controls)
    traj = Trajectory(ts=ts, states=states, outputs=outputs, controls=controls,
                      result=result, num_steps=num_steps)
    return traj, _failed(traj)


def _failed(traj: Trajectory):
    """Whether `ensure_success` would raise, as one boolean computed with the solve (so that a
    concrete `simulate` reads one scalar back instead of every saved state)."""
    finite = jnp.all(jnp.isfinite(jnp.stack(jax.tree_util.tree_leaves(traj.states))))
    return (traj.result._value != 0) | ~finite | jnp.any(traj.states.volume <= 0)


# `jax.jit` with the options static rather than `eqx.filter_jit`: with about 100 array leaves in
# and 40 out, its dispatch is 0.2-0.3 ms cheaper per call. Every leaf of the model, recipe and
# state is an array (parameters are converted on construction); options that cannot be hashed
# (arrays in them) take the `filter_jit` path.
_solve_static = jax.jit(_solve_impl, static_argnums=(6, 7))
_solve_filtered = eqx.filter_jit(_solve_impl)


def _solve(model, recipe, y0, t0, t1, ts, options, n_steps):
    """The compiled solve: `(Trajectory, failed)` (see `_failed`)."""
    try:
        hash(options)
    except TypeError:
        return _solve_filtered(model, recipe, y0, t0, t1, ts, options, n_steps)
    return _solve_static(model, recipe, y0, t0, t1, ts, options, n_steps)


def simulate(model: FermentationModel, recipe: Recipe, y0: ReactorState, t0, t1, *,
             ts: Float[Array, " times"], options: Adaptive | FixedGrid = Adaptive(),
             label: str = "batch") -> Trajectory:
    r"""Integrate one fed-batch from `t0` to `t1` under `recipe` and save at `ts`.

    Args:
        model: the reactor and culture (`FermentationModel`).
        recipe: every manipulated variable over time (`Recipe`).
        y0: initial state (`ReactorState.initial(...)`, amounts in g).
        t0, t1: start and end, h.
        ts: times to save at, h, within `[t0, t1]`, shape `(times,)`.
        options: `Adaptive()` (default) or `FixedGrid(dt)`.
        label: name of the batch for error messages.

    Returns:
        A `Trajectory`.

    Raises:
        SolverError: (outside `jit`/`vmap` only) the solver failed or produced non-finite
            values; the message names the batch and what to change. Inside a transformation
            check `Trajectory.result` with `ensure_success`.

    Example:
        >>> traj = simulate(model, recipe, y0, 0.0, 230.0, ts=jnp.linspace(0, 230, 231))  # doctest: +SKIP
        >>> ens = jax.vmap(lambda m: simulate(m, recipe, y0, 0.0, 230.0, ts=ts))(models)  # doctest: +SKIP
    """
    # Decide concreteness on the arguments as given: inside `jit`, even `jnp.asarray(0.0)` is
    # staged as a tracer, which would size the fixed grid by `max_horizon_h` instead of the span.
    concrete = not (isinstance(t0, jax.core.Tracer) or isinstance(t1, jax.core.Tracer))
    n_steps = 0
    if isinstance(options, FixedGrid):
        if concrete:
            _check_grid(recipe, float(t0), float(t1), options)
            n_steps = max(int(math.ceil((float(t1) - float(t0)) / options.dt - 1e-9)), 1)
        else:
            n_steps = int(math.ceil(options.max_horizon_h / options.dt - 1e-9))
    traj, failed = _solve(model, recipe, y0, _time(t0), _time(t1), jnp.asarray(ts, dtype=float),
                          options, n_steps)
    if not isinstance(failed, jax.core.Tracer) and failed:  # one scalar read back
        ensure_success(traj, label=label)
    return traj


def _time(t):
    """A time as a float64 argument of the compiled solve (a Python number as a NumPy scalar:
    `jnp.asarray` of a Python float costs tens of microseconds)."""
    if isinstance(t, (int, float, np.number)) and not isinstance(t, bool):
        return np.float64(t)
    return jnp.asarray(t, dtype=float)


def _check_grid(recipe: Recipe, t0: float, t1: float, options: FixedGrid) -> None:
    if t1 - t0 > options.max_horizon_h:
        raise SolverError(f"FixedGrid(max_horizon_h={options.max_horizon_h}) is shorter than the "
                          f"simulated span", field="t1", value=t1 - t0,
                          hint="raise FixedGrid.max_horizon_h")
    if not isinstance(recipe.profiles["temperature"].start, jax.core.Tracer):
        # through the class: a method looked up on an equinox Module is bound anew each time,
        # which costs more than the check itself
        jumps = Recipe.jump_times(recipe, t0, t1)
        off = np.abs((jumps - t0) / options.dt - np.round((jumps - t0) / options.dt)) > 1e-9
        if off.any():
            raise SolverError(
                f"recipe breakpoints must lie on the FixedGrid(dt={options.dt}) grid", field="recipe",
                value=jumps[off][:5].tolist(), hint="choose dt that divides every phase start, or use Adaptive()")


def ensure_success(traj: Trajectory, *, label: str = "batch") -> Trajectory:
    """Raise `SolverError` if any member of a (possibly vmapped) trajectory failed, is non-finite
    or ran its vessel empty (volume <= 0 at a saved time)."""
    result = np.atleast_1d(np.asarray(traj.result._value))
    finite = np.isfinite(np.asarray(traj.states.volume)).reshape(result.shape + (-1,)).all(axis=-1)
    for leaf in jax.tree_util.tree_leaves(traj.states):
        finite &= np.isfinite(np.asarray(leaf)).reshape(result.shape + (-1,)).all(axis=-1)
    volume = np.asarray(traj.states.volume).reshape(result.shape + (-1,))
    empty = (volume <= 0).any(axis=-1)  # a fixed-step solve runs on past an empty vessel
    bad = np.flatnonzero((result != 0) | ~finite | empty)
    if bad.size:
        i = int(bad[0])
        which = label if result.size == 1 else f"{label} (ensemble member {i} of {result.size})"
        code = int(result[i])
        if code != 0:
            reason = "the solver hit its step budget (max_steps) or a step size became too small"
        elif not finite[i]:
            reason = "the state became NaN or infinite"
        else:
            t_empty = np.asarray(traj.ts).reshape(volume.shape)[i][np.argmax(volume[i] <= 0)]
            reason = f"the vessel ran empty (broth volume <= 0 at t = {t_empty:g} h)"
        raise SolverError(
            f"the ODE solver failed for {which}: {reason}",
            hint="Check that the recipe does not empty the vessel (draws larger than feeds) and "
                 "that parameters are physical; or raise Adaptive(max_steps=...), loosen "
                 "Adaptive(rtol, atol), or use FixedGrid(dt=0.1)")
    return traj


def grid_slope(values, grid):
    """d values / dt of values saved on a uniform time grid (last axis; `grid` in h): central
    differences inside, one-sided at the ends. NumPy in, NumPy out; JAX in, JAX out."""
    step = grid[1] - grid[0]
    xp = jnp if isinstance(values, jax.Array) else np
    return xp.gradient(values, axis=-1) / step
