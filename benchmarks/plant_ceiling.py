"""How much can the plant itself give at equal material? A reference for the recipe's gain.

`twin optimize` reshapes the IndPenSim default's sugar and oil feeds at equal totals, each phase
within +-25 % of the default (scenarios/penicillin_indpensim.toml, [optimize]); issue 5 asks for
+5 % more penicillin on unseen plant seeds. This benchmark asks what such a reshape can give when
the plant itself is the model: a derivative-free search (Nelder-Mead, scipy) *on the plant*,
over a small family of reshapes, on tuning seeds, then the best reshape run on the test seeds,
paired against the default recipe on each seed, as `benchmarks/closed_loop.py` runs the twin's
recipe.

The family: the default's sugar and oil feeds, resampled on a half-hour grid (the value at each
step's middle: the twin's recipes change on it), times one factor per window of `--edges`
(default 24-60-96-140-180-230 h). By default (`--carbon`) sugar and oil share the factors; with
`--separate` each feed has its own; with `--aeration` the gas flow gets its own too. The last
window's factor keeps each variable's total from the first edge to the end equal to the recipe's,
so the search has (windows - 1) free factors per group, each in [1 - R, 1 + R] (R =
`--trust-region`, 0.25 as the scenario); a last factor outside that range, or a plant peak
volume above 100 m3, is penalised. Temperature, pressure and the PAA loop stay as the recipe
has them, unless `--temperature-shift H:DELTA` moves the temperature set-point by DELTA degC from
hour H to the end (before any reshape; no material is involved). With `--base RECIPE` (e.g. the
`recipe.csv` of `twin optimize`) the factors reshape that recipe instead of the default, and the
gain is still against the default recipe on each seed: how much the plant could add near the
twin's recipe. Without `--base` the family is a subset of what `twin optimize` may do (it
reshapes in 11.5 h phases), so the gain found is a lower bound on what an equal-material reshape
can give this plant.

The plant is used as the model here, on purpose: this is a reference for the target, not a
recipe method (a plant cannot be run hundreds of times per recipe). Test seeds are never in the
search.

    python benchmarks/plant_ceiling.py                       # about 17 min on 2 cores
    python benchmarks/plant_ceiling.py --base out/optimize/recipe.csv --max-evals 1   # the recipe itself
    python benchmarks/plant_ceiling.py --max-evals 8 --search-seeds 200 --test-seeds 100-101
    python benchmarks/plant_ceiling.py --temperature-shift 150:-3 --max-evals 1   # cooling late, no reshape

Ends with `name: value` headline lines.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FEEDS = ("substrate_feed", "oil_feed")
END_H = 230.0
STEP_H = 0.5  # the resampling grid: the twin's recipes change on it (11.5 h phases from 24 h)
MAX_VOLUME_L = 100_000.0
PENALTY = 100.0  # % of gain per unit of constraint violation (factor or relative volume)


def _grid() -> np.ndarray:
    return np.arange(0.0, END_H, STEP_H)


def window_masses(base, edges, variables=FEEDS) -> dict[str, np.ndarray]:
    """Per variable, the integral of `base`'s profile (resampled on the half-hour grid, the value
    at each step's middle) over each window `[edges[i], edges[i+1])`."""
    from twin.recipe import sample

    t = _grid()
    out = {}
    for var in variables:
        v = np.asarray(sample(base, var, t + 0.5 * STEP_H), dtype=float)
        out[var] = np.array([STEP_H * v[(t >= a) & (t < b)].sum() for a, b in zip(edges[:-1], edges[1:])])
    return out


def full_factors(free: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """The free factors of the first windows and the last window's factor that keeps the total:
    `sum_w f_w m_w = sum_w m_w`."""
    free = np.asarray(free, dtype=float)
    last = (masses.sum() - np.dot(free, masses[:-1])) / masses[-1]
    return np.append(free, last)


def reshape(base, factors: dict[str, np.ndarray], edges):
    """`base` with each variable of `factors` resampled on the half-hour grid and multiplied by
    its window factors (1 outside the windows)."""
    import jax.numpy as jnp

    from twin.recipe import Profile, sample

    t = _grid()
    r = base
    for var, f in factors.items():
        v = np.asarray(sample(base, var, t + 0.5 * STEP_H), dtype=float)
        mult = np.ones_like(v)
        for (a, b), fw in zip(zip(edges[:-1], edges[1:]), f):
            mult[(t >= a) & (t < b)] = fw
        w = jnp.asarray(v * mult)
        r = r.with_profile(var, Profile(jnp.asarray(t), jnp.asarray(END_H), w, w))
    return r


def shift_temperature(base, from_h: float, delta_c: float):
    """`base` with its temperature set-point moved by `delta_c` degC from `from_h` to the end
    (resampled on the half-hour grid, as `reshape`)."""
    import jax.numpy as jnp

    from twin.recipe import Profile, sample

    t = _grid()
    v = np.asarray(sample(base, "temperature", t + 0.5 * STEP_H), dtype=float) + np.where(t >= from_h, delta_c, 0.0)
    w = jnp.asarray(v)
    return base.with_profile("temperature", Profile(jnp.asarray(t), jnp.asarray(END_H), w, w))


class Search:
    """The penalised objective (mean % gain over the search seeds against the default recipe,
    negated) and its record. `groups`: tuples of variables that share window factors."""

    def __init__(self, pool, seeds, edges, base, groups, trust_region: float):
        self.pool, self.seeds, self.edges, self.base = pool, list(seeds), list(edges), base
        self.groups, self.R = [tuple(g) for g in groups], trust_region
        self.masses = window_masses(base, edges, [v for g in self.groups for v in g])
        self.default = dict(zip(self.seeds, self.evaluate(None, self.seeds)))
        self.record: list[dict] = []

    @property
    def n_free(self) -> int:
        return (len(self.edges) - 2) * len(self.groups)

    def factors(self, x) -> dict[str, np.ndarray]:
        k = len(self.edges) - 2
        return {v: full_factors(x[i * k:(i + 1) * k], self.masses[v])
                for i, g in enumerate(self.groups) for v in g}

    def evaluate(self, factors, seeds) -> list[dict]:
        """Plant totals on `seeds` of `base` reshaped by `factors` (`None`: the default recipe)."""
        from twin.plants import default_recipe
        from twin.plants.history import plant_totals

        recipe = default_recipe() if factors is None else reshape(self.base, factors, self.edges)
        return list(self.pool.map(plant_totals, [(recipe, s) for s in seeds]))

    def __call__(self, x) -> float:
        f = self.factors(np.asarray(x, dtype=float))
        excess = sum(max(0.0, abs(ff[-1] - 1.0) - self.R) for ff in f.values())
        if excess > 0:  # no plant run for a reshape outside the trust region
            loss = PENALTY * (1.0 + excess)
            self.record.append({"x": np.array(x), "loss": loss, "gain_pct": np.nan, "runs": None})
            return loss
        runs = self.evaluate(f, self.seeds)
        if any("failed" in r for r in runs):
            loss = PENALTY
            gain = np.full(len(runs), np.nan)
        else:
            gain = np.array([100.0 * (r["penicillin_total_kg"] / self.default[s]["penicillin_total_kg"] - 1.0)
                             for r, s in zip(runs, self.seeds)])
            over = max(0.0, max(r["peak_volume_L"] for r in runs) / MAX_VOLUME_L - 1.0)
            loss = -float(gain.mean()) + PENALTY * over
        self.record.append({"x": np.array(x), "loss": loss, "gain_pct": gain, "runs": runs})
        n = len(self.record)
        print(f"  eval {n:3d}: gain {np.nanmean(gain):+6.2f} % (per seed "
              f"{', '.join(f'{g:+.2f}' for g in gain)}); factors "
              + "; ".join(f"{v.split('_')[0]} {' '.join(f'{q:.3f}' for q in ff)}" for v, ff in f.items()),
              flush=True)
        return loss


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", default="24,60,96,140,180,230", help="window edges, h")
    ap.add_argument("--search-seeds", default="200-203", help="tuning seeds the search runs on")
    ap.add_argument("--test-seeds", default="100-109", help="held-out seeds the best reshape is run on")
    ap.add_argument("--trust-region", type=float, default=0.25)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--carbon", dest="separate", action="store_false", default=False,
                       help="sugar and oil share the window factors (default)")
    group.add_argument("--separate", dest="separate", action="store_true",
                       help="each feed has its own window factors")
    ap.add_argument("--aeration", action="store_true",
                    help="the gas flow gets window factors too (its own, at equal total air)")
    ap.add_argument("--base", type=Path, default=None,
                    help="recipe CSV to reshape instead of the default (e.g. twin optimize's recipe.csv); "
                         "gains stay against the default recipe")
    ap.add_argument("--start", default=None,
                    help="comma-separated free factors the search starts from, group by group (the "
                         "rest 1), e.g. an earlier run's best carbon factors for an --aeration run")
    ap.add_argument("--temperature-shift", default=None, metavar="H:DELTA",
                    help="move the temperature set-point by DELTA degC from hour H to the end (e.g. 150:-3) "
                         "before any reshape: the plant's response to cooling late in the batch")
    ap.add_argument("--max-evals", type=int, default=48,
                    help="plant evaluations of the search (1: no search, the recipe itself on both seed sets)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    import scipy.optimize

    import twin  # noqa: F401
    from twin.plants import default_recipe
    from twin.plants.history import parse_seeds

    edges = [float(e) for e in args.edges.split(",")]
    if len(edges) < 3 or np.any(np.diff(edges) <= 0) or edges[-1] > END_H:
        raise SystemExit(f"--edges: need at least 3 increasing times up to {END_H:g} h, got {args.edges}")
    search_seeds, test_seeds = parse_seeds(args.search_seeds), parse_seeds(args.test_seeds)
    if set(search_seeds) & set(test_seeds):
        raise SystemExit("--search-seeds and --test-seeds overlap: the test must be on unseen seeds")
    base = default_recipe()
    if args.base is not None:
        from twin.recipe import read_recipe_csv
        from twin.scenario import load_scenario

        sc = load_scenario(ROOT / "scenarios" / "penicillin_indpensim.toml")
        base = read_recipe_csv(args.base, defaults=sc.control_defaults, span=(0.0, sc.duration_h))
        default = default_recipe()
        print(f"{args.base} against the default recipe, total over the batch: " + ", ".join(
            f"{v} {100 * (float(base.total(v, 0.0, END_H)) / float(default.total(v, 0.0, END_H)) - 1):+.3f} %"
            for v in (*FEEDS, "aeration")), flush=True)
    if args.temperature_shift:
        try:
            from_h, delta = (float(x) for x in args.temperature_shift.split(":"))
        except ValueError:
            raise SystemExit(f"--temperature-shift: expected H:DELTA (e.g. 150:-3), got {args.temperature_shift}") from None
        if not 0.0 <= from_h < END_H or not -10.0 <= delta <= 5.0:
            raise SystemExit(f"--temperature-shift: H in [0, {END_H:g}) h and DELTA in [-10, 5] degC, "
                             f"got {args.temperature_shift}")
        base = shift_temperature(base, from_h, delta)
        print(f"temperature set-point {delta:+g} degC from {from_h:g} h", flush=True)
    groups = [(v,) for v in FEEDS] if args.separate else [FEEDS]
    if args.aeration:
        groups.append(("aeration",))
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")  # the workers start their own JAX
    with cf.ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=ctx) as pool:
        search = Search(pool, search_seeds, edges, base, groups, args.trust_region)
        lo, hi = 1.0 - args.trust_region, 1.0 + args.trust_region
        x0 = np.ones(search.n_free)
        if args.start:
            given = np.array([float(v) for v in args.start.split(",")])
            if given.size > x0.size or np.any(np.abs(given - 1.0) > args.trust_region):
                raise SystemExit(f"--start: at most {x0.size} factors within 1 +- {args.trust_region:g}, "
                                 f"got {args.start}")
            x0[:given.size] = given
        simplex = np.vstack([x0] + [x0 + 0.5 * args.trust_region * e for e in np.eye(search.n_free)])
        print(f"search on seeds {search_seeds}: {search.n_free} free factors ({', '.join('+'.join(g) for g in groups)} "
              f"on {args.base or 'the default recipe'}), windows {edges} h, "
              f"{args.max_evals} plant evaluations", flush=True)
        if args.max_evals <= 1:  # no search: the recipe itself
            search(x0)
        else:
            scipy.optimize.minimize(search, x0, method="Nelder-Mead", bounds=[(lo, hi)] * search.n_free,
                                    options={"maxfev": args.max_evals, "initial_simplex": simplex,
                                             "xatol": 0.01, "fatol": 0.05})
        t_search = time.perf_counter() - t0
        best = min(search.record, key=lambda r: r["loss"])
        f = search.factors(best["x"])
        print(f"\nbest on the search seeds: {np.mean(best['gain_pct']):+.2f} % "
              f"(per seed {', '.join(f'{g:+.2f}' for g in best['gain_pct'])}), {len(search.record)} "
              f"evaluations, {t_search:.0f} s", flush=True)
        for v, ff in f.items():
            print(f"  {v}: " + ", ".join(f"{a:g}-{b:g} h x{q:.3f}" for a, b, q in zip(edges[:-1], edges[1:], ff)))
        t1 = time.perf_counter()
        runs = search.evaluate(f, test_seeds)
        defaults = search.evaluate(None, test_seeds)
        t_test = time.perf_counter() - t1
    if any("failed" in r for r in runs + defaults):
        raise SystemExit(f"a plant run failed on the test seeds: {[r for r in runs + defaults if 'failed' in r]}")
    gain = np.array([100.0 * (r["penicillin_total_kg"] / d["penicillin_total_kg"] - 1.0) for r, d in zip(runs, defaults)])
    print(f"\ntest seeds {args.test_seeds} ({t_test:.0f} s), the best reshape against the default on each seed")
    print("seed  gain %   sugar %   oil %   base %   peak volume m3 (reshape / default)")
    for s, r, d, g in zip(test_seeds, runs, defaults, gain):
        print(f"{s:4d}  {g:+6.2f}  {100 * (r['sugar_kg'] / d['sugar_kg'] - 1):+7.2f}  "
              f"{100 * (r['oil_L'] / d['oil_L'] - 1):+6.2f}  {100 * (r['base_L'] / d['base_L'] - 1):+6.2f}   "
              f"{r['peak_volume_L'] / 1000:6.2f} / {d['peak_volume_L'] / 1000:6.2f}")
    head = {
        "plant_search_evals": len(search.record),
        "plant_search_best_gain_pct": round(float(np.mean(best["gain_pct"])), 2),
        "plant_ceiling_test_mean_gain_pct": round(float(gain.mean()), 2),
        "plant_ceiling_test_min_gain_pct": round(float(gain.min()), 2),
        "plant_ceiling_test_seeds_better": int((gain > 0).sum()),
        "plant_ceiling_test_n_seeds": len(test_seeds),
        "plant_ceiling_peak_volume_max_m3": round(max(r["peak_volume_L"] for r in runs) / 1000, 2),
        "plant_ceiling_base_ratio_max": round(max(r["base_L"] / d["base_L"] for r, d in zip(runs, defaults)), 3),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    for v, ff in f.items():
        for (a, b), q in zip(zip(edges[:-1], edges[1:]), ff):
            head[f"factor_{v}_{a:g}_{b:g}h"] = round(float(q), 3)
    print()
    for k, v in head.items():
        print(f"{k}: {v}")
    return head


if __name__ == "__main__":
    main()
