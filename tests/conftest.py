"""Shared fixtures: shipped scenarios, compiled reference simulations and a scipy reference solver.

Compiling a simulation takes seconds, so every test that can reuses one of the session-scoped
trajectories below. `simulate` is compiled once per model *structure* (classes, static fields,
number of recipe phases and saved times, solver options), so tests change parameter and recipe
*values* on the shipped structures rather than building new ones.

JAX's persistent compilation cache (`.jax_cache/` in the repository, gitignored) is on, but it
only keeps computations without host callbacks: the fixed-grid solves (calibration, forecast,
optimisation) are kept; the diffrax solves are not, because diffrax checks traced `t0`, `t1`
and `SaveAt(ts)` with `eqx.error_if`, which compiles to a callback (with `EQX_ON_ERROR=nan`
they would be kept, at the price of NaN instead of errors).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Most of the suite's time is XLA compiling small programs once; LLVM's optimisation passes make
# that about twice as slow and buy little for programs that run a few times (the advise fixture:
# 85 s at the default level, 50 s at 0). The user's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package need not be installed to run its tests
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

import twin  # noqa: E402,F401  (enables float64)

jax.config.update("jax_compilation_cache_dir", str(ROOT / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

from twin.recipe import Profile, Recipe  # noqa: E402
from twin.scenario import Scenario, load_scenario  # noqa: E402
from twin.simulate import Adaptive, Trajectory, simulate  # noqa: E402

# Files whose tests take a minute or more on 2 cores (mostly XLA compiling, cold), longest first.
# The two xdist workers take whole files (`--dist loadfile`) in collection order, so these go
# first and the short files fill in behind them (longest-first scheduling), rather than a
# minute-long file such as test_update starting last in alphabetical order.
HEAVY_FIRST = ("test_benchmark_forecast.py", "test_sbc.py", "test_advise.py", "test_forecast.py",
               "test_update.py", "test_benchmarks.py", "test_optimize.py", "test_calibrate_cli.py",
               "test_calibration.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept within


SCENARIOS = ROOT / "scenarios"
ERYTHROMYCIN = SCENARIOS / "erythromycin_like.toml"
PENICILLIN = SCENARIOS / "penicillin_like.toml"

# The reference tolerance of the adaptive solver (absolute tolerance in g and L: the state holds
# amounts of the order of 1e3-1e6 g, so the relative tolerance governs).
REFERENCE = Adaptive(rtol=1e-10, atol=1e-10)


def run(sc: Scenario, *, model=None, recipe=None, y0=None, options=REFERENCE, label=None) -> Trajectory:
    """Simulate `sc` over its whole span at its saved times, optionally with replaced parts.

    Replacing values but not structure (same classes, same number of recipe phases) reuses the
    compiled solve of the shipped scenario.
    """
    return simulate(model if model is not None else sc.model,
                    recipe if recipe is not None else sc.recipe,
                    y0 if y0 is not None else sc.y0, 0.0, sc.duration_h, ts=sc.ts,
                    options=options, label=label or sc.name)


def set_profile(recipe: Recipe, variable: str, values, value_end=None) -> Recipe:
    """`recipe` with the phase values of `variable` replaced, keeping its phase times (and shape).

    `value_end` defaults to `values`, so every phase becomes constant.
    """
    p = recipe.profiles[variable]
    v = jnp.broadcast_to(jnp.asarray(values, dtype=float), p.value.shape)
    ve = v if value_end is None else jnp.broadcast_to(jnp.asarray(value_end, dtype=float), p.value.shape)
    return recipe.with_profile(variable, Profile(p.start, p.end, v, ve))


def solve_ivp_reference(model, recipe: Recipe, y0, t0: float, t1: float, ts, *, method="LSODA",
                        rtol=1e-10, atol=1e-10):
    """Integrate `model.vector_field` with `scipy.integrate.solve_ivp`, piecewise between jumps.

    The state is flattened with `ravel_pytree`; the right-hand side is one jitted function of
    `(t, y, lo, hi)` that clamps `t` into the current piece `[lo, hi]`, where `hi` is the last
    float before the next recipe breakpoint. So the integrator never sees a control jump, and
    (like diffrax with `jump_ts`) the value at a breakpoint belongs to the phase that ends there.

    Returns:
        `ReactorState` with a leading `times` axis, and the number of right-hand-side calls.
    """
    flat0, unravel = ravel_pytree(y0)

    @jax.jit
    def rhs(t, y, lo, hi):
        tc = jnp.clip(t, lo, hi)
        return ravel_pytree(model.vector_field(tc, unravel(y), recipe))[0]

    ts = np.asarray(ts, dtype=float)
    edges = [float(t0), *map(float, recipe.jump_times(t0, t1)), float(t1)]
    out = np.full((ts.size, flat0.size), np.nan)
    y = np.asarray(flat0)
    nfev = 0
    for a, b in zip(edges[:-1], edges[1:]):
        hi = np.nextafter(b, -np.inf)
        inside = (ts >= a) & (ts <= b)
        t_eval = np.union1d(ts[inside], [b])
        sol = solve_ivp(lambda t, yy: np.asarray(rhs(t, yy, a, hi)), (a, b), y, method=method,
                        t_eval=t_eval, rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed on [{a}, {b}]: {sol.message}")
        nfev += sol.nfev
        out[inside] = sol.y.T[np.searchsorted(t_eval, ts[inside])]
        y = sol.y[:, -1]
    states = jax.vmap(unravel)(jnp.asarray(out))
    return states, nfev


@pytest.fixture(scope="session")
def ery() -> Scenario:
    return load_scenario(ERYTHROMYCIN)


@pytest.fixture(scope="session")
def pen() -> Scenario:
    return load_scenario(PENICILLIN)


@pytest.fixture(scope="session")
def ery_traj(ery) -> Trajectory:
    """The erythromycin-like scenario at the reference tolerance (compiles the ery structure)."""
    return run(ery)


@pytest.fixture(scope="session")
def pen_traj(pen) -> Trajectory:
    """The penicillin-like scenario at the reference tolerance (compiles the pen structure)."""
    return run(pen)
