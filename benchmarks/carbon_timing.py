"""Does the calibrated twin know what carbon is worth at each time of the batch? The twin against
the plant on the same recipe variants of the IndPenSim default.

Variants of the default recipe's sugar and oil feeds (both scaled alike, hour by hour):
  late_plus_15   x1.15 from `--split-h` (80 h) to the end: more material, late;
  shift_late_10  10 % of the feeds of [24 h, split) moved to [split, 230 h) at equal totals
                 (early x0.9, late x(1 + 0.1 early/late));
  shift_early_10 the reverse, at equal totals.
Each variant's change in total penicillin (kg, vessel plus harvest draws) against the default:
  - the twin: the posterior mean over `--draws` new-batch draws, each with one calibration
    batch's recorded pH-loop inflow (as `twin simulate --posterior` and `twin optimize` do);
  - the plant: IndPenSim on each `--seeds` seed (default the tuning seeds 200-202), paired with
    the default recipe on the same seed.
The plant is used here to judge the twin, as in benchmarks/closed_loop.py, never to fit it.

    python benchmarks/carbon_timing.py --posterior out/demo/calibration/posterior.nc

Without --posterior the strain is calibrated first (SVI). Ends with `name: value` headline lines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCENARIO = ROOT / "scenarios" / "penicillin_indpensim.toml"
STRAIN = ROOT / "calibration" / "strains" / "penicillin_indpensim.toml"
START_H, END_H = 24.0, 230.0
FEEDS = ("substrate_feed", "oil_feed")


def variant(base, name: str, split_h: float):
    """The default recipe with its sugar and oil feeds, resampled to hourly constant phases (the
    value at each hour's middle), changed as `name` says (module docstring)."""
    import jax.numpy as jnp

    from twin.recipe import Profile, sample

    t = np.arange(0.0, END_H)
    early, late = (t >= START_H) & (t < split_h), t >= split_h
    r = base
    for var in FEEDS:
        v = np.asarray(sample(base, var, t + 0.5), dtype=float)
        f = np.ones_like(v)
        if name == "late_plus_15":
            f[late] = 1.15
        elif name in ("shift_late_10", "shift_early_10"):
            a = 0.1 if name == "shift_late_10" else -0.1
            f[early] = 1.0 - a
            f[late] = 1.0 + a * v[early].sum() / v[late].sum()
        elif name != "default":
            raise ValueError(f"unknown variant {name!r}")
        w = jnp.asarray(v * f)
        r = r.with_profile(var, Profile(jnp.asarray(t), jnp.asarray(END_H), w, w))
    return r


VARIANTS = ("default", "late_plus_15", "shift_late_10", "shift_early_10")


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posterior", type=Path, default=None)
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--seeds", default="200-202")
    ap.add_argument("--split-h", type=float, default=80.0)
    args = ap.parse_args(argv)

    import jax

    from calibration.posterior import load_draws, ph_loop_inflows, ph_loop_water, recipe_water, simulate_draws
    from twin.plants import default_recipe, run_batch
    from twin.plants.history import parse_seeds
    from twin.recipe import snap_to_grid
    from twin.scenario import load_scenario
    from twin.simulate import ensure_success

    seeds = parse_seeds(args.seeds)
    sc = load_scenario(SCENARIO)
    posterior = args.posterior
    if posterior is None:
        from calibration.infer import calibrate, save_posterior
        from calibration.spec import load_strain

        posterior = ROOT / "out" / "carbon_timing" / "posterior.nc"
        posterior.parent.mkdir(parents=True, exist_ok=True)
        save_posterior(calibrate(load_strain(STRAIN), method="svi").idata, posterior)
    draws = load_draws(posterior, sc.model, args.draws)
    inflows = ph_loop_inflows(draws.attrs, sc.duration_h, draws.dt)
    base = default_recipe()
    twin_kg, plant_kg = {}, {}
    t0 = time.perf_counter()
    for name in VARIANTS:
        recipe = variant(base, name, args.split_h)
        snapped, _ = snap_to_grid(recipe, draws.dt)
        water = ph_loop_water(recipe_water(snapped, sc.duration_h, draws.dt), inflows, draws.n,
                              sc.duration_h, draws.dt)
        ens = simulate_draws(sc.model, snapped, sc.y0, draws, 0.0, sc.duration_h, ts=sc.ts, per_draw=water)
        ensure_success(ens, label=f"carbon-timing variant {name}")
        twin_kg[name] = float(np.mean(np.asarray(jax.device_get(ens.total_product))[:, -1])) / 1000.0
        plant_kg[name] = np.array([run_batch(recipe, s).totals["penicillin_total_kg"] for s in seeds])
        print(f"  {name}: twin {twin_kg[name]:.1f} kg, plant {np.round(plant_kg[name], 1).tolist()} kg "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    print(f"\nchange in total penicillin vs the default (twin: mean of {draws.n} posterior draws; "
          f"plant: seeds {args.seeds})")
    print(f"{'variant':>16} {'twin %':>8} {'plant % (mean)':>15}  per seed")
    head: dict[str, float] = {}
    for name in VARIANTS[1:]:
        tw = 100.0 * (twin_kg[name] / twin_kg["default"] - 1.0)
        pl = 100.0 * (plant_kg[name] / plant_kg["default"] - 1.0)
        print(f"{name:>16} {tw:+8.2f} {pl.mean():+15.2f}  {', '.join(f'{x:+.2f}' for x in pl)}")
        head[f"twin_{name}_pct"] = round(tw, 2)
        head[f"plant_{name}_pct"] = round(float(pl.mean()), 2)
    print()
    for k, v in head.items():
        print(f"{k}: {v}")
    return head


if __name__ == "__main__":
    main()
