"""Benchmark `twin.simulate` on the erythromycin-like 170 h scenario, against scipy's LSODA.

Measured in one run and printed:

* compile time: the first `simulate` call (trace + XLA compile + one run);
* one simulation after compilation, hourly output: the median of `--repeats` calls of the full
  `simulate` (argument conversion, solve, host-side success check) and of the jitted core alone
  (`twin.simulate._solve` with `block_until_ready`), so Python overhead shows separately;
* ensemble throughput: `jax.jit(jax.vmap(...))` over `--n` parameter sets (mu_max, beta_max,
  Y_XS and K_O times lognormal factors with sigma 0.1), in simulations per second;
* the same model integrated member by member with `scipy.integrate.solve_ivp` (LSODA,
  rtol = atol = 1e-7, the scenario's own tolerances) calling the jitted vector field on a flat
  state vector, piecewise between recipe breakpoints; measured on `--scipy-members` members and
  extrapolated per simulation; and the ratio of the two throughputs;
* agreement: the largest relative difference in final titer between the ensemble and scipy on
  those members.

It ends with the headline figures, one per line, as `name: value`.

Usage::

    python benchmarks/simulate.py            # 1000 members, 50 single runs, 20 scipy members
    python benchmarks/simulate.py --quick    # a smoke run (16 members, 5 runs, 3 scipy members)

The same figures are then measured for `FixedGrid(dt=0.5)` (the linearly implicit Rosenbrock
grid that calibration and optimisation use), with its final-titer error against the adaptive run.

Targets (from the issue): ensemble throughput >= 100 x scipy's; one simulation < 5 ms after
compilation. The script reports what it measures; it does not tune anything to meet them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import twin  # noqa: E402,F401  (float64)
from twin.reactor import get_parameter, set_parameters  # noqa: E402
from twin.scenario import load_scenario  # noqa: E402
from twin.simulate import FixedGrid, _solve, ensure_success, simulate  # noqa: E402

SCENARIO = ROOT / "scenarios" / "erythromycin_like.toml"
PERTURBED = ("kinetics.mu_max", "kinetics.beta_max", "kinetics.Y_XS", "kinetics.K_O")


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="ensemble size (default 1000)")
    p.add_argument("--repeats", type=int, default=50, help="single-simulation repeats (default 50)")
    p.add_argument("--scipy-members", type=int, default=20,
                   help="members integrated with scipy (default 20)")
    p.add_argument("--seed", type=int, default=0, help="key of the parameter perturbations")
    p.add_argument("--dt", type=float, default=0.5, help="FixedGrid step, h (default 0.5)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: --n 16 --repeats 5 --scipy-members 3")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.scipy_members = min(args.n, 16), min(args.repeats, 5), min(
            args.scipy_members, 3)
    if args.n < 1 or args.repeats < 1 or args.scipy_members < 1:
        p.error("--n, --repeats and --scipy-members must be at least 1")
    args.scipy_members = min(args.scipy_members, args.n)
    return args


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _final_titer(states):
    return np.asarray(states.product[..., -1] / states.volume[..., -1])


def _scipy_member(rhs, theta, y0_flat, edges):
    """One member with solve_ivp LSODA (rtol = atol = 1e-7), piecewise between breakpoints."""
    y = y0_flat
    nfev = 0
    for a, b in zip(edges[:-1], edges[1:]):
        hi = np.nextafter(b, -np.inf)
        sol = solve_ivp(lambda t, yy: np.asarray(rhs(t, yy, theta, a, hi)), (a, b), y,
                        method="LSODA", rtol=1e-7, atol=1e-7)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed on [{a}, {b}] h: {sol.message}")
        y = sol.y[:, -1]
        nfev += sol.nfev
    return y, nfev


def main(argv=None) -> dict[str, float]:
    """Run the benchmark and return the headline figures (also printed)."""
    args = _parse(argv)
    sc = load_scenario(SCENARIO)
    model, recipe, y0, ts, options = sc.model, sc.recipe, sc.y0, sc.ts, sc.options
    t1 = sc.duration_h
    print(f"scenario: {sc.title}; {ts.size} saved times; solver {type(options).__name__}"
          f"(rtol={options.rtol:g}, atol={options.atol:g}); JAX {jax.__version__} on "
          f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    # importing twin adds its XLA CPU loop option unless XLA_FLAGS sets it (twin.integrators)
    print(f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')!r}")

    # --- compile and one simulation ------------------------------------------------------
    t = time.perf_counter()
    traj = simulate(model, recipe, y0, 0.0, t1, ts=ts, options=options)
    compile_s = time.perf_counter() - t
    steps = int(traj.num_steps)
    full_s = _median_seconds(lambda: simulate(model, recipe, y0, 0.0, t1, ts=ts, options=options),
                             args.repeats)
    core_args = (model, recipe, y0, jnp.asarray(0.0, dtype=float), jnp.asarray(t1, dtype=float),
                 ts, options, 0)
    jax.block_until_ready(_solve(*core_args))
    core_s = _median_seconds(lambda: jax.block_until_ready(_solve(*core_args)), args.repeats)
    print(f"compile (first simulate call): {compile_s:.2f} s")
    print(f"one simulation: simulate {1e3 * full_s:.2f} ms, jitted core {1e3 * core_s:.2f} ms "
          f"(Python overhead {1e3 * (full_s - core_s):.2f} ms); {steps} accepted steps, "
          f"{1e6 * core_s / steps:.1f} us per step; median of {args.repeats}")

    # --- ensemble --------------------------------------------------------------------------
    nominal = jnp.asarray([float(get_parameter(model, n)) for n in PERTURBED])
    thetas = nominal * jnp.exp(0.1 * jax.random.normal(jax.random.key(args.seed),
                                                        (args.n, nominal.size)))

    def one(theta):
        m = set_parameters(model, dict(zip(PERTURBED, theta)))
        return simulate(m, recipe, y0, 0.0, t1, ts=ts, options=options)

    ensemble = jax.jit(jax.vmap(one))
    t = time.perf_counter()
    ens = jax.block_until_ready(ensemble(thetas))
    ens_compile_s = time.perf_counter() - t
    ensure_success(ens, label="ensemble")
    ens_s = _median_seconds(lambda: jax.block_until_ready(ensemble(thetas)), 3)
    ens_rate = args.n / ens_s
    print(f"ensemble of {args.n}: compile + first run {ens_compile_s:.2f} s; {ens_s:.3f} s per "
          f"ensemble (median of 3) = {ens_rate:.0f} simulations/s; steps per member "
          f"{int(np.min(ens.num_steps))}-{int(np.max(ens.num_steps))}")

    # --- scipy LSODA on the same right-hand side -----------------------------------------
    flat0, unravel = ravel_pytree(y0)

    @jax.jit
    def rhs(t, y, theta, lo, hi):
        m = set_parameters(model, dict(zip(PERTURBED, theta)))
        return ravel_pytree(m.vector_field(jnp.clip(t, lo, hi), unravel(y), recipe))[0]

    edges = [0.0, *map(float, recipe.jump_times(0.0, t1)), float(t1)]
    thetas_np = np.asarray(thetas)
    rhs(0.0, np.asarray(flat0), thetas_np[0], 0.0, 1.0).block_until_ready()  # compile outside timing
    scipy_titers, nfevs = [], []
    t = time.perf_counter()
    for i in range(args.scipy_members):
        y_end, nfev = _scipy_member(rhs, thetas_np[i], np.asarray(flat0), edges)
        end = unravel(jnp.asarray(y_end))
        scipy_titers.append(float(end.product / end.volume))
        nfevs.append(nfev)
    scipy_per_sim = (time.perf_counter() - t) / args.scipy_members
    scipy_rate = 1.0 / scipy_per_sim
    ratio = ens_rate / scipy_rate
    diff = np.abs(_final_titer(ens.states)[: args.scipy_members] - np.asarray(scipy_titers))
    max_rel = float(np.max(diff / np.abs(np.asarray(scipy_titers))))
    print(f"scipy solve_ivp LSODA (rtol=atol=1e-7), {args.scipy_members} members one by one: "
          f"{1e3 * scipy_per_sim:.1f} ms per simulation = {scipy_rate:.1f} simulations/s; "
          f"{int(np.mean(nfevs))} RHS calls per simulation")
    print(f"ensemble vs scipy: {ratio:.0f} x the throughput; final titer max relative "
          f"difference {max_rel:.2e} on {args.scipy_members} members")
    print(f"adaptive Tsit5: target ensemble >= 100 x scipy: {'met' if ratio >= 100 else 'NOT met'}; "
          f"target one simulation < 5 ms: {'met' if full_s < 5e-3 else 'NOT met'}")

    # --- the fixed-step Rosenbrock grid (what calibration and optimisation use) ------------
    fixed = FixedGrid(dt=args.dt)
    n_steps = int(np.ceil(t1 / fixed.dt - 1e-9))
    t = time.perf_counter()
    ftraj = simulate(model, recipe, y0, 0.0, t1, ts=ts, options=fixed)
    f_compile_s = time.perf_counter() - t
    f_full_s = _median_seconds(lambda: simulate(model, recipe, y0, 0.0, t1, ts=ts, options=fixed),
                               args.repeats)
    f_args = (model, recipe, y0, jnp.asarray(0.0, dtype=float), jnp.asarray(t1, dtype=float), ts,
              fixed, n_steps)
    jax.block_until_ready(_solve(*f_args))
    f_core_s = _median_seconds(lambda: jax.block_until_ready(_solve(*f_args)), args.repeats)
    f_err = float(abs(_final_titer(ftraj.states) / _final_titer(traj.states) - 1.0))

    def fone(theta):
        m = set_parameters(model, dict(zip(PERTURBED, theta)))
        return simulate(m, recipe, y0, 0.0, t1, ts=ts, options=fixed)

    fens_fn = jax.jit(jax.vmap(fone))
    fens = jax.block_until_ready(fens_fn(thetas))
    ensure_success(fens, label="fixed-grid ensemble")
    f_ens_s = _median_seconds(lambda: jax.block_until_ready(fens_fn(thetas)), 3)
    f_rate = args.n / f_ens_s
    f_ratio = f_rate / scipy_rate
    f_diff = np.abs(_final_titer(fens.states)[: args.scipy_members] - np.asarray(scipy_titers))
    f_max_rel = float(np.max(f_diff / np.abs(np.asarray(scipy_titers))))
    print(f"FixedGrid(dt={fixed.dt}) ROS2: compile {f_compile_s:.2f} s; one simulation: simulate "
          f"{1e3 * f_full_s:.2f} ms, jitted core {1e3 * f_core_s:.2f} ms; {n_steps} steps; final "
          f"titer {f_err:.2e} relative to adaptive Tsit5")
    print(f"FixedGrid ensemble of {args.n}: {f_rate:.0f} simulations/s = {f_ratio:.0f} x scipy; "
          f"final titer max relative difference to scipy {f_max_rel:.2e}")

    figures = {
        "compile_s": compile_s,
        "single_sim_ms": 1e3 * full_s,
        "single_sim_core_ms": 1e3 * core_s,
        "single_sim_steps": steps,
        "ensemble_size": args.n,
        "ensemble_compile_s": ens_compile_s,
        "ensemble_sims_per_s": ens_rate,
        "scipy_sims_per_s": scipy_rate,
        "ensemble_vs_scipy_ratio": ratio,
        "ensemble_vs_scipy_max_rel_diff": max_rel,
        "fixed_dt_h": fixed.dt,
        "fixed_compile_s": f_compile_s,
        "fixed_single_sim_ms": 1e3 * f_full_s,
        "fixed_single_sim_core_ms": 1e3 * f_core_s,
        "fixed_vs_adaptive_titer_rel_err": f_err,
        "fixed_ensemble_sims_per_s": f_rate,
        "fixed_ensemble_vs_scipy_ratio": f_ratio,
        "fixed_ensemble_vs_scipy_max_rel_diff": f_max_rel,
    }
    print()
    for name, value in figures.items():
        print(f"{name}: {value:.3g}" if isinstance(value, float) else f"{name}: {value}")
    return figures


if __name__ == "__main__":
    main()
