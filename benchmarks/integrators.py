"""Benchmark the fixed-step integrators of `twin.integrators` against the adaptive reference.

Measured in one run, on the erythromycin-like (170 h) and penicillin-like (230 h) scenarios,
for ROS2 (the default: Rosenbrock-W, order 2), ROS34PW2 (Rosenbrock-W, order 3) and explicit
RK4 on the same `lax.scan` grid:

* accuracy at dt = 1, 0.5, 0.25 h against `Adaptive(rtol=atol=1e-10)`: final total product
  (in the vessel plus drawn), the largest product error along the hourly grid relative to the
  final product, the largest relative biomass error, the lowest sugar concentration and the
  closure of the sugar, product and volume balances;
* robustness: the largest final-product error over `--draws` random parameter sets per
  scenario (mu_max, Y_XS, beta_max times lognormal factors with sigma 0.25, 0.15, 0.2, and the
  sugar feed scaled by a lognormal factor with sigma 0.3);
* gradient fidelity: d(final product)/d(mu_max) of the discrete scheme at `--grad-points`
  values across +-5 % of mu_max, against central differences of the adaptive reference (step
  0.5 %), as the largest deviation relative to the largest reference slope. Near 0 means the
  discrete map has the model's slope; above 1 means its slope changes sign (kinks);
* cost: `jax.jit` of the log-density-like loss sum((titer - 3 g/L)^2) over an hourly grid for
  `--batches` batches vmapped (the recipe's sugar feed from 40 to 60 L/h), forward and
  value + gradient with respect to kinetics.mu_max (set via `twin.reactor.set_parameters`):
  compile time (first call) and the median and minimum of `--repeats` calls afterwards.

It ends with the headline figures, one per line, as `name: value`.

Usage::

    python benchmarks/integrators.py           # full run (a few minutes on 2 cores)
    python benchmarks/integrators.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import twin  # noqa: E402,F401  (float64)
from twin.integrators import ROS2, ROS34PW2, RK4, integrate_fixed, interpolate  # noqa: E402
from twin.reactor import get_parameter, set_parameters  # noqa: E402
from twin.recipe import Profile  # noqa: E402
from twin.scenario import load_scenario  # noqa: E402
from twin.simulate import Adaptive, simulate  # noqa: E402

SCENARIOS = {"ery": ROOT / "scenarios" / "erythromycin_like.toml",
             "pen": ROOT / "scenarios" / "penicillin_like.toml"}
METHODS = {"ROS2": ROS2, "ROS34PW2": ROS34PW2, "RK4": RK4}
REFERENCE = Adaptive(rtol=1e-10, atol=1e-10)
DRAWN = ("kinetics.mu_max", "kinetics.Y_XS", "kinetics.beta_max")
SIGMA = np.asarray([0.25, 0.15, 0.2, 0.3])  # the three parameters, then the feed scale


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=6, help="batches vmapped in the cost test (6)")
    p.add_argument("--repeats", type=int, default=40, help="timed calls after compilation (40)")
    p.add_argument("--draws", type=int, default=24, help="random parameter sets per scenario (24)")
    p.add_argument("--grad-points", type=int, default=101,
                   help="mu_max values in the gradient-fidelity scan (101)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: --repeats 5 --draws 3 --grad-points 11")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.draws, args.grad_points = min(args.repeats, 5), min(args.draws, 3), min(
            args.grad_points, 11)
    if min(args.batches, args.repeats, args.draws, args.grad_points) < 1:
        p.error("--batches, --repeats, --draws and --grad-points must be at least 1")
    return args


def _steps(sc, dt: float) -> int:
    return int(round(sc.duration_h / dt))


def _total_product(states):
    return states.product + states.ledger.product_drawn


def _with_feed_scale(sc, scale):
    p = sc.recipe.profiles["substrate_feed"]
    return sc.recipe.with_profile("substrate_feed", Profile(p.start, p.end, p.value * scale,
                                                            p.value_end * scale))


def _timed(fn, *args, repeats: int):
    """(compile + first call s, median ms, min ms) of `fn(*args)`."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return first, 1e3 * float(np.median(times)), 1e3 * float(np.min(times))


# ----------------------------------------------------------------------------- accuracy


def accuracy(scenarios) -> dict:
    """Errors against the adaptive reference for every method and dt, per scenario."""
    out = {}
    for key, sc in scenarios.items():
        ref = simulate(sc.model, sc.recipe, sc.y0, 0.0, sc.duration_h, ts=sc.ts, options=REFERENCE)
        p_ref = np.asarray(ref.total_product)
        print(f"\n{sc.title}: reference final product {p_ref[-1]:.1f} g "
              f"(Adaptive Tsit5, rtol = atol = 1e-10, {int(ref.num_steps)} steps)")
        print(f"  {'method':9s} {'dt h':>5s} {'final P err':>12s} {'max|P-Pref|/Pend':>17s} "
              f"{'max|X/Xref-1|':>14s} {'min S g/L':>10s} {'balances':>9s}")
        for name, method in METHODS.items():
            for dt in (1.0, 0.5, 0.25):
                grid, ys = integrate_fixed(sc.model, sc.recipe, sc.y0, 0.0, sc.duration_h, dt=dt,
                                           n_steps=_steps(sc, dt), method=method)
                at = interpolate(grid, ys, sc.ts)
                final = float(_total_product(ys)[-1]) / p_ref[-1] - 1.0
                traj = float(np.max(np.abs(np.asarray(_total_product(at)) - p_ref))) / p_ref[-1]
                bio = float(np.max(np.abs(np.asarray(at.biomass / ref.states.biomass) - 1)))
                L, y0 = ys.ledger, sc.y0
                sugar = y0.substrate + L.substrate_fed - L.substrate_consumed - L.substrate_drawn
                volume = y0.volume + L.volume_fed - L.volume_drawn - L.volume_evaporated
                product = y0.product + L.product_formed - L.product_hydrolysed - L.product_drawn
                closure = max(
                    float(jnp.max(jnp.abs(ys.substrate - sugar)) / (y0.substrate + L.substrate_fed[-1])),
                    float(jnp.max(jnp.abs(ys.volume - volume)) / jnp.max(ys.volume)),
                    float(jnp.max(jnp.abs(ys.product - product)) / L.product_formed[-1]))
                s_min = float(jnp.min(ys.substrate / ys.volume))
                print(f"  {name:9s} {dt:5.2f} {final:+12.2e} {traj:17.2e} {bio:14.2e} {s_min:10.2e} "
                      f"{closure:9.1e}")
                out[key, name, dt] = {"final": final, "traj": traj, "biomass": bio,
                                      "closure": closure, "s_min": s_min}
    return out


# ----------------------------------------------------------------------------- robustness


def robustness(scenarios, draws: int, seed: int) -> dict:
    """Largest final-product error over random parameter draws, per scenario, method and dt."""
    rng = np.random.default_rng(seed)
    out = {}
    print(f"\nrandom draws ({draws} per scenario; sigma {SIGMA.tolist()} for "
          f"{', '.join(DRAWN)}, feed scale):")
    for key, sc in scenarios.items():
        nominal = np.asarray([float(get_parameter(sc.model, n)) for n in DRAWN] + [1.0])
        xs = jnp.asarray(nominal * np.exp(SIGMA * rng.standard_normal((draws, nominal.size))))

        def build(x):
            return set_parameters(sc.model, dict(zip(DRAWN, x[:3])), check=False), _with_feed_scale(sc, x[3])

        def ref_one(x):
            model, recipe = build(x)
            traj = simulate(model, recipe, sc.y0, 0.0, sc.duration_h, ts=sc.ts[-1:], options=REFERENCE)
            return traj.total_product[-1]

        ref = np.asarray(jax.jit(jax.vmap(ref_one))(xs))
        for name, method in (("ROS2", ROS2), ("ROS34PW2", ROS34PW2)):
            for dt in (1.0, 0.5):
                def one(x, dt=dt, method=method):
                    model, recipe = build(x)
                    _, ys = integrate_fixed(model, recipe, sc.y0, 0.0, sc.duration_h, dt=dt,
                                            n_steps=_steps(sc, dt), method=method)
                    return _total_product(ys)[-1]

                err = np.abs(np.asarray(jax.jit(jax.vmap(one))(xs)) / ref - 1.0)
                print(f"  {key} {name:9s} dt {dt:4.2f}: max |final P err| {err.max():.2e}, "
                      f"median {np.median(err):.1e}")
                out[key, name, dt] = float(err.max())
    return out


# ----------------------------------------------------------------------------- gradients


def gradient_fidelity(scenarios, points: int) -> dict:
    """Largest deviation of d(final P)/d(mu_max) from the reference slope over +-5 % of mu_max,
    relative to the largest reference slope."""
    out = {}
    print(f"\ngradient fidelity: d(final product)/d(mu_max) at {points} points over +-5 % of "
          f"mu_max vs the adaptive reference (central differences, step 0.5 %):")
    for key, sc in scenarios.items():
        mu0 = float(get_parameter(sc.model, "kinetics.mu_max"))

        def model_at(mu):
            return set_parameters(sc.model, {"kinetics.mu_max": mu}, check=False)

        def ref_one(mu):
            return simulate(model_at(mu), sc.recipe, sc.y0, 0.0, sc.duration_h, ts=sc.ts[-1:],
                            options=REFERENCE).total_product[-1]

        knots = mu0 * (1.0 + jnp.linspace(-0.05, 0.05, 11))
        eps = 0.005 * mu0
        ref_fn = jax.jit(jax.vmap(ref_one))
        slope_ref = (np.asarray(ref_fn(knots + eps)) - np.asarray(ref_fn(knots - eps))) / (2 * eps)
        mus = mu0 * (1.0 + jnp.linspace(-0.05, 0.05, points))
        slope_at = np.interp(np.asarray(mus), np.asarray(knots), slope_ref)
        scale = float(np.max(np.abs(slope_ref)))
        for name, method in (("ROS2", ROS2), ("ROS34PW2", ROS34PW2)):
            for dt in (1.0, 0.5):
                def one(mu, dt=dt, method=method):
                    _, ys = integrate_fixed(model_at(mu), sc.recipe, sc.y0, 0.0, sc.duration_h,
                                            dt=dt, n_steps=_steps(sc, dt), method=method)
                    return _total_product(ys)[-1]

                g = np.asarray(jax.jit(jax.vmap(jax.grad(one)))(mus))
                dev = np.abs(g - slope_at) / scale
                print(f"  {key} {name:9s} dt {dt:4.2f}: reference slope {slope_ref.min():.3g} to "
                      f"{slope_ref.max():.3g} g per 1/h; discrete {g.min():.3g} to {g.max():.3g}; "
                      f"max deviation {dev.max():.2f}, median {np.median(dev):.2f} of the largest slope")
                out[key, name, dt] = float(dev.max())
    return out


# ----------------------------------------------------------------------------- cost


def cost(sc, batches: int, repeats: int) -> dict:
    """Compile, forward and value+grad times of a vmapped titer loss, per method and dt."""
    feeds = jnp.linspace(40.0, 60.0, batches)
    p = sc.recipe.profiles["substrate_feed"]
    recipes = jax.vmap(lambda F: sc.recipe.with_profile(
        "substrate_feed", Profile(p.start, p.end, p.value.at[1].set(F), p.value_end.at[1].set(F))))(feeds)
    hourly = jnp.arange(0.0, sc.duration_h + 0.5, 1.0)
    mu = jnp.asarray(float(get_parameter(sc.model, "kinetics.mu_max")))
    out = {}
    print(f"\ncost: {batches} erythromycin-like batches vmapped, {sc.duration_h:g} h, loss = "
          f"sum over batches and hours of (titer - 3 g/L)^2; value + grad w.r.t. mu_max; "
          f"median (min) of {repeats} calls; JAX {jax.__version__}, {os.cpu_count()} CPUs")
    for name, method in METHODS.items():
        for dt in (1.0, 0.5):
            def titers(mu, recipe, dt=dt, method=method):
                model = set_parameters(sc.model, {"kinetics.mu_max": mu}, check=False)
                grid, ys = integrate_fixed(model, recipe, sc.y0, 0.0, sc.duration_h, dt=dt,
                                           n_steps=_steps(sc, dt), method=method)
                at = interpolate(grid, ys, hourly)
                return at.product / at.volume

            def loss(mu):
                return jnp.sum((jax.vmap(titers, in_axes=(None, 0))(mu, recipes) - 3.0) ** 2)

            c_fwd, fwd, fwd_min = _timed(jax.jit(loss), mu, repeats=repeats)
            c_vg, vg, vg_min = _timed(jax.jit(jax.value_and_grad(loss)), mu, repeats=repeats)
            print(f"  {name:9s} dt {dt:4.2f} ({_steps(sc, dt)} steps): forward {fwd:6.2f} "
                  f"({fwd_min:5.2f}) ms, value+grad {vg:6.2f} ({vg_min:5.2f}) ms; compile "
                  f"{c_fwd:4.1f} s / {c_vg:4.1f} s")
            out[name, dt] = {"fwd_ms": fwd, "fwd_min_ms": fwd_min, "vg_ms": vg, "vg_min_ms": vg_min,
                             "compile_fwd_s": c_fwd, "compile_vg_s": c_vg}
    return out


def main(argv=None) -> dict[str, float]:
    """Run the benchmark and return the headline figures (also printed)."""
    args = _parse(argv)
    scenarios = {k: load_scenario(path) for k, path in SCENARIOS.items()}
    acc = accuracy(scenarios)
    rob = robustness(scenarios, args.draws, args.seed)
    grads = gradient_fidelity(scenarios, args.grad_points)
    times = cost(scenarios["ery"], args.batches, args.repeats)

    figures: dict[str, float] = {}
    for key in scenarios:
        for name in METHODS:
            for dt in (1.0, 0.5, 0.25):
                figures[f"{key}_{name}_dt{dt:g}_final_product_rel_err"] = acc[key, name, dt]["final"]
    for key in scenarios:
        for name in ("ROS2", "ROS34PW2"):
            for dt in (1.0, 0.5):
                figures[f"{key}_{name}_dt{dt:g}_max_traj_product_err"] = acc[key, name, dt]["traj"]
                figures[f"{key}_{name}_dt{dt:g}_draws_max_final_err"] = rob[key, name, dt]
                figures[f"{key}_{name}_dt{dt:g}_grad_mu_max_deviation"] = grads[key, name, dt]
    figures["max_balance_closure"] = max(v["closure"] for v in acc.values())
    for name in METHODS:
        for dt in (1.0, 0.5):
            t = times[name, dt]
            figures[f"cost_{name}_dt{dt:g}_forward_ms"] = t["fwd_ms"]
            figures[f"cost_{name}_dt{dt:g}_value_grad_ms"] = t["vg_ms"]
            figures[f"cost_{name}_dt{dt:g}_value_grad_min_ms"] = t["vg_min_ms"]
            figures[f"cost_{name}_dt{dt:g}_compile_value_grad_s"] = t["compile_vg_s"]
    print()
    for name, value in figures.items():
        print(f"{name}: {value:.3g}")
    return figures


if __name__ == "__main__":
    main()
