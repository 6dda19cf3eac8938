"""Calibration benchmark: speed and honesty of the posterior on 2 cores.

Measured in one run (each part optional):
  svi      SVI (full-rank Gaussian VI from the Laplace approximation, calibration.vi) on the
           12 demo IndPenSim batches: wall time, compilation included, twice: with an empty
           compilation cache (a first run on a machine: `svi_wall_s`) and again, in a new
           process, with the cache the first run filled (any later run: `svi_wall_warm_s`; see
           twin/__init__.py).
  nuts     NUTS, 2 chains in parallel processes, on the same batches: wall time, r-hat,
           divergences, bulk ESS per second; SVI means vs NUTS (in NUTS posterior SDs).
  holdout  leave-batches-out on the demo history (folds of 4 held-out batches, SVI fit on the
           rest): coverage of the 90 % (and 50 %) posterior-predictive intervals for the final
           titer and for every offline assay of the held-out batches (new batch effects drawn
           from the population), read through the randomised PIT (`randomised_pit`) so that a
           reading at a floor (residual sugar reported as 0) is not inside by a tie. Also, per
           variable, what makes the intervals as wide as they are: the predictive's median
           relative SD at the readings in full, without the new batch effects (each draw's
           population median batch), and without the measurement noise, against the robust
           relative spread of the readings around the predictive median (1.4826 x the median
           absolute relative residual); and the coverage without the new batch effects. And how
           far the batch effects move the final titer: across the training batches, the SD of
           log(final titer with each batch's fitted effects / at the population median), against
           the SD over draws of the same log-ratio for new batch effects (both without noise).
  newbatches  the posterior calibrated on all 12 demo batches (the svi part's, if run) predicts
           new IndPenSim batches, plant seeds 100-123 that the history never used, with operator
           variation (benchmarks/forecast.py's held-out batches): coverage of the 90 % and 50 %
           intervals for the final titer and every offline assay, new batch effects drawn. 24
           batches, not the 12 that leave-batches-out can hold out: one more or one fewer
           final titer inside moves the coverage by 0.04, not 0.08.
           Coverages come with a 90 % interval from a bootstrap over batches (readings of one
           batch share its batch effects and are resampled together).
  recovery synthetic strain, parameters held at its [synthetic] truth: fraction of true values
           inside their 90 % interval over repeated datasets drawn from the calibration model
           (fresh batch effects, initial states, noise each time; SVI).
  sbc      simulation-based calibration (Talts et al. 2018) on the synthetic strain: ranks of
           prior-drawn true parameters among posterior draws, chi-square test of uniformity.

`--laplace-starts N` sets SVI's mode searches and `--nuts-posterior PATH` compares SVI with a
saved NUTS run (`--out`'s nuts_posterior.nc) instead of running NUTS. Where SVI's time goes
(2026-12-01, 2 cores, warm cache, 55 s): the four Laplace mode searches 33 s (each about 550
evaluations of the potential's value and gradient, 14-15 ms each, two at a time in threads,
1.6 x), the VI 18 s (1000 steps of 2 draws). `--parts svi --laplace-starts 2 --svi-steps 600
--nuts-posterior ...` took 30.2 s warm (59.4 s cold), max |SVI - NUTS| 0.80 NUTS SD, against
55.0 s (81.4 s) and 0.83 with the strain file's 4 starts and 1000 steps; not adopted, because on
leave-4-out folds of the history a third start found a better mode (fold 2: Laplace
evidence -40.0 against -41.2 for the first two starts).

Ends with `name: value` headline lines. Targets (issue 4): NUTS < 300 s with r-hat <= 1.01 and
no divergences; SVI < 30 s with means within 1 NUTS SD; held-out 90 % coverage in [0.85, 0.95];
recovery >= 0.85.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import twin  # noqa: E402,F401
from calibration.diagnostics import (ESS_MIN, RHAT_MAX, check, draws_at_readings, flat_draws,  # noqa: E402
                                    predictive, reading_pits)
from calibration.infer import calibrate, load_history, save_posterior  # noqa: E402
from calibration.model import build_data  # noqa: E402
from calibration.spec import load_strain  # noqa: E402

IPS = ROOT / "calibration/strains/penicillin_indpensim.toml"
SYN = ROOT / "calibration/strains/synthetic_erythromycin.toml"


def _means_sds(idata, keys):
    return {k: (float(idata.posterior[k].mean()), float(idata.posterior[k].std())) for k in keys}


def ips_spec(laplace_starts: int | None = None):
    """The IndPenSim strain, with `laplace_starts` mode searches for SVI if given."""
    spec = load_strain(IPS)
    if laplace_starts is not None:
        spec = dataclasses.replace(spec, inference={**spec.inference, "laplace_starts": laplace_starts})
    return spec


def run_svi(steps: int, samples: int, laplace_starts: int | None = None):
    spec = ips_spec(laplace_starts)
    t = time.perf_counter()
    res = calibrate(spec, method="svi", svi_steps=steps, samples=samples)
    return res, time.perf_counter() - t


def run_svi_elsewhere(steps: int | None, samples: int, cache: str, laplace_starts: int | None = None) -> float:
    """`run_svi`'s wall time in a new Python process whose compilation cache is `cache`: what a
    later run on the machine takes (it loads the compiled programs, but traces the model anew and
    has none of this process's in-memory caches)."""
    cmd = [sys.executable, __file__, "--svi-once", "--samples", str(samples)]
    if steps is not None:
        cmd += ["--svi-steps", str(steps)]
    if laplace_starts is not None:
        cmd += ["--laplace-starts", str(laplace_starts)]
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1].split(":")[1])


@contextlib.contextmanager
def empty_compilation_cache():
    """JAX's persistent compilation cache in a fresh temporary folder (so that a timing is that
    of a first run), the previous setting restored after; yields the folder."""
    before = jax.config.jax_compilation_cache_dir
    with tempfile.TemporaryDirectory(prefix="twin-jax-cache-") as tmp:
        jax.config.update("jax_compilation_cache_dir", tmp)
        compilation_cache.reset_cache()
        try:
            yield tmp
        finally:
            jax.config.update("jax_compilation_cache_dir", before)
            compilation_cache.reset_cache()


def print_failing_sites(idata, d: dict) -> None:
    """Every site that fails r-hat or bulk ESS (not only the worst, which `check` names), with each
    chain's mean: chains that sit in different modes show as means far apart."""
    bad = [v for v in d.get("rhat", {}) if d["rhat"][v] > RHAT_MAX or d["ess_bulk"][v] < ESS_MIN]
    for v in sorted(bad, key=lambda v: -d["rhat"][v]):
        x = np.asarray(idata.posterior[v])
        means = x.reshape(x.shape[0], x.shape[1], -1).mean(axis=1)  # (chain, element)
        worst = int(np.argmax(np.ptp(means, axis=0) / (x.reshape(-1, means.shape[1]).std(axis=0) + 1e-300)))
        print(f"  failing {v}: r-hat {d['rhat'][v]:.3f}, bulk ESS {d['ess_bulk'][v]:.0f}; chain means "
              f"{', '.join(f'{m:.4g}' for m in means[:, worst])}" + (f" (element {worst})" if means.shape[1] > 1 else ""))


def run_nuts(warmup: int, samples: int, chains: int):
    spec = load_strain(IPS)
    t = time.perf_counter()
    res = calibrate(spec, method="nuts", warmup=warmup, samples=samples, chains=chains)
    return res, time.perf_counter() - t


def holdout(folds: int, per_fold: int, steps: int, draws: int, seed: int = 0, laplace_starts: int | None = None):
    spec = ips_spec(laplace_starts)
    bs, recipes = load_history(spec)
    ids = list(bs.batch_ids)
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(ids))
    hits = {"final_titer": []}
    hits50 = {"final_titer": []}
    spread: dict[str, dict[str, list]] = {}
    hits_centre: dict[str, list] = {}
    titer_moves: dict[str, list] = {"fitted": [], "new": []}
    pits: dict[str, list] = {}
    for f in range(folds):
        test = order[f * per_fold:(f + 1) * per_fold]
        train = [b for b in ids if b not in test]
        res = calibrate(spec, method="svi", batches=train, svi_steps=steps, samples=draws)
        data_test = build_data(spec, bs.select(test), recipes)
        post = flat_draws(res.idata)
        pred = predictive(spec, data_test, post, new_batches=True, noise=True, seed=f)
        centre = predictive(spec, data_test, _population_centre(post), new_batches=True, noise=True, seed=f)
        quiet = predictive(spec, data_test, post, new_batches=True, noise=False, seed=f)
        for k, v in _titer_moves(spec, res.data, post, f).items():
            titer_moves[k].append(v)
        for v, p in pred.items():
            obs = (data_test.obs_t[v], data_test.obs_y[v], data_test.obs_mask[v])
            s = spread.setdefault(v, {"full": [], "centre": [], "no_noise": [], "readings": []})
            for name, q in (("full", p), ("centre", centre[v]), ("no_noise", quiet[v])):
                s[name].extend(_relative_sd(q, data_test.grid, *obs))
            s["readings"].extend(_relative_residuals(p, data_test.grid, *obs))
            for u in reading_pits(centre[v], data_test.grid, *obs, rng):
                hits_centre.setdefault(v, []).extend((np.abs(u - 0.5) <= 0.45).tolist())
            for u in reading_pits(p, data_test.grid, *obs, rng):
                pits.setdefault(v, []).append(u)
                for level, store in ((90, hits), (50, hits50)):
                    inside = np.abs(u - 0.5) <= level / 200.0
                    store.setdefault(v, []).extend(inside.tolist())
                    if v == "product":
                        store["final_titer"].append(bool(inside[-1]))
        print(f"fold {f + 1}/{folds}: held out {test}", flush=True)
    widths = {v: {**{k: float(np.median(x)) for k, x in s.items() if k != "readings"},
                  "readings": 1.4826 * float(np.median(np.abs(s["readings"]))),
                  "coverage_centre": float(np.mean(hits_centre[v]))} for v, s in spread.items()}
    widths["final_titer_moves"] = {k: float(np.mean(v)) for k, v in titer_moves.items()}
    return ({k: (float(np.mean(v)), len(v)) for k, v in hits.items()},
            {k: float(np.mean(v)) for k, v in hits50.items()}, widths, coverage_intervals(pits, rng))


def _inside_by_batch(pits: dict[str, list], level: float) -> dict[str, list[np.ndarray]]:
    """`{variable: [per batch, whether each reading is inside the central `level` interval]}`
    from `{variable: [one PIT array per batch]}`; `final_titer` is the product's last reading."""
    per = {v: [np.abs(u - 0.5) <= level / 2 for u in arrays] for v, arrays in pits.items()}
    if "product" in per:
        per["final_titer"] = [x[-1:] for x in per["product"] if len(x)]
    return per


def coverage_intervals(pits: dict[str, list], rng: np.random.Generator, *, level: float = 0.9,
                       reps: int = 2000) -> dict[str, tuple[float, float]]:
    """90 % intervals of the coverage of the `level` predictive intervals by a bootstrap over
    batches (`pits`: `{variable: [one PIT array per batch]}`; the product's last reading gives
    `final_titer`). Readings of one batch share its batch effects, so they are resampled together:
    252 readings of 12 batches are not 252 independent trials."""
    out = {}
    for v, xs in _inside_by_batch(pits, level).items():
        k = np.array([x.sum() for x in xs], dtype=float)
        n = np.array([x.size for x in xs], dtype=float)
        idx = rng.integers(0, len(xs), size=(reps, len(xs)))
        boot = k[idx].sum(axis=1) / np.maximum(n[idx].sum(axis=1), 1.0)
        out[v] = (float(np.quantile(boot, 0.05)), float(np.quantile(boot, 0.95)))
    return out


def new_batches(seeds, steps: int | None, draws: int, seed: int = 0, res=None, laplace_starts: int | None = None):
    """Coverage on new plant batches: the posterior calibrated on all 12 demo batches (`res`, or
    SVI here) predicts IndPenSim batches on plant seeds the history never used, with operator
    variation (benchmarks/forecast.py's held-out batches, generated on first use), from nothing
    but their recipe, recorded PAA and water feeds and initial state: new batch effects drawn from
    the population, measurement noise included. Returns `({variable: (coverage90, n)},
    {variable: coverage50}, {variable: bootstrap interval of coverage90})`."""
    from twin.data import BatchSet, load_batch_dir
    from twin.recipe import read_recipe_csv

    spec = ips_spec(laplace_starts)
    if res is None:
        res = calibrate(spec, method="svi", svi_steps=steps, samples=draws)
    sc = spec.scenario
    records, recipes = {}, {}
    import benchmarks.forecast  # benchmarks/ as a namespace package: ROOT is on the path

    for d in benchmarks.forecast.generate(seeds):
        bs = load_batch_dir(d)
        records.update(bs.records)
        for b in bs.batch_ids:
            recipes[b] = read_recipe_csv(d / "recipe.csv", defaults=sc.control_defaults, span=(0.0, sc.duration_h))
    data = build_data(spec, BatchSet(records, "IndPenSim held-out seeds"), recipes)
    post = flat_draws(res.idata)
    pred = predictive(spec, data, post, new_batches=True, noise=True, seed=seed)
    rng = np.random.default_rng(seed)
    pits = {v: reading_pits(p, data.grid, data.obs_t[v], data.obs_y[v], data.obs_mask[v], rng)
            for v, p in pred.items()}
    pooled = {level: {v: np.concatenate(xs) for v, xs in _inside_by_batch(pits, level).items()}
              for level in (0.9, 0.5)}
    cov = {v: (float(np.mean(x)), int(x.size)) for v, x in pooled[0.9].items()}
    cov50 = {v: float(np.mean(x)) for v, x in pooled[0.5].items()}
    return cov, cov50, coverage_intervals(pits, rng)


def _titer_moves(spec, data, post, seed) -> dict[str, float]:
    """How far batch effects move the final product (no noise), as SDs of log-ratios to the
    population median's: `fitted`, across `data`'s batches of the posterior-median ratio with
    each batch's own fitted effects; `new`, the median over batches of the SD over draws with
    new effects. The initial-state deviations are each batch's own (fitted) in both."""
    last = lambda d: np.asarray(d["product"])[:, :, -1]  # noqa: E731
    own = last(predictive(spec, data, post, new_batches=False, noise=False, seed=seed))
    centre = last(predictive(spec, data, _population_centre(post), new_batches=False, noise=False, seed=seed))
    new = {k: d for k, d in post.items() if not k.startswith("eps_")}
    rng = np.random.default_rng(seed)
    for k in spec.batch_effects:
        new[f"eps_{k}"] = rng.standard_normal(np.shape(post[f"eps_{k}"]))
    fresh = last(predictive(spec, data, new, new_batches=False, noise=False, seed=seed))
    fitted = np.std(np.median(np.log(own / centre), axis=0))
    drawn = float(np.median(np.std(np.log(fresh / centre), axis=0)))
    return {"fitted": float(fitted), "new": drawn}


def _population_centre(post: dict) -> dict:
    """`post` with every batch-effect SD `tau_*` at 0: each draw's population median batch."""
    return {k: (np.zeros_like(d) if k.startswith("tau_") else d) for k, d in post.items()}


def _at_readings(pred, grid, t, y, mask):
    """(draws at each masked reading (D, n), the readings (n,)) over all batches."""
    pairs = list(draws_at_readings(pred, grid, t, y, mask))
    return np.concatenate([d for d, _ in pairs], axis=1), np.concatenate([yi for _, yi in pairs])


def _relative_sd(pred, grid, t, y, mask) -> list[float]:
    """The predictive's SD over its median at each reading whose median is positive."""
    d, _ = _at_readings(pred, grid, t, y, mask)
    med = np.median(d, axis=0)
    ok = med > 0
    return (np.std(d[:, ok], axis=0) / med[ok]).tolist()


def _relative_residuals(pred, grid, t, y, mask) -> list[float]:
    """(reading - predictive median) / predictive median at each reading whose median is positive."""
    d, ys = _at_readings(pred, grid, t, y, mask)
    med = np.median(d, axis=0)
    ok = med > 0
    return ((ys[ok] - med[ok]) / med[ok]).tolist()


def recovery(reps: int, steps: int, draws: int):
    from calibration.sbc import simulation_based_calibration

    spec = load_strain(SYN)
    truth = {k: float(v) for k, v in spec.synthetic["truth"].items()}
    res = simulation_based_calibration(spec, reps, svi_steps=steps, n_draws=draws, seed=1, truth=truth,
                                       progress=lambda i, n: print(f"recovery {i}/{n}", flush=True))
    per = {k: float(np.mean(v)) for k, v in res.inside90.items()}
    return res.coverage90(), per, reps


def sbc(reps: int, steps: int, draws: int, bins: int):
    from calibration.sbc import simulation_based_calibration

    spec = load_strain(SYN)
    res = simulation_based_calibration(spec, reps, svi_steps=steps, n_draws=draws, seed=2,
                                       progress=lambda i, n: print(f"SBC {i}/{n}", flush=True))
    return res, res.chi2(bins)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="svi,nuts,holdout,newbatches,recovery,sbc")
    ap.add_argument("--svi-steps", type=int, default=None, help="default: the strain file's")
    ap.add_argument("--laplace-starts", type=int, default=None,
                    help="SVI's mode searches (default: the strain file's)")
    ap.add_argument("--nuts-posterior", type=Path, default=None,
                    help="compare SVI with this NUTS posterior (e.g. an earlier run's --out "
                         "nuts_posterior.nc) instead of running NUTS")
    ap.add_argument("--warmup", type=int, default=None, help="default: the strain file's")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--chains", type=int, default=None, help="default: the strain file's")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--per-fold", type=int, default=4)
    ap.add_argument("--new-batches", type=int, default=24, help="new plant batches (part newbatches)")
    ap.add_argument("--new-seed0", type=int, default=100, help="their first plant seed")
    ap.add_argument("--reps", type=int, default=20, help="recovery replications")
    ap.add_argument("--sbc-reps", type=int, default=50)
    ap.add_argument("--sbc-draws", type=int, default=99)
    ap.add_argument("--out", type=Path, default=None,
                    help="keep the SVI and NUTS posteriors here (svi_posterior.nc, nuts_posterior.nc)")
    ap.add_argument("--quick", action="store_true", help="tiny settings (for the test suite)")
    ap.add_argument("--svi-once", action="store_true", help=argparse.SUPPRESS)  # run_svi_elsewhere's child
    a = ap.parse_args(argv)
    if a.svi_once:
        print(f"svi_wall_s: {run_svi(a.svi_steps, a.samples, a.laplace_starts)[1]:.3f}")
        return
    if a.quick:
        a.svi_steps, a.warmup, a.samples, a.chains, a.folds, a.per_fold, a.reps = 20, 10, 10, 1, 1, 2, 1
        a.sbc_reps, a.sbc_draws, a.new_batches = 2, 9, 2
    parts = a.parts.split(",")
    head = {}
    svi = nuts = None
    if "svi" in parts:
        with empty_compilation_cache() as cache:
            svi, wall = run_svi(a.svi_steps, max(a.samples, 200), a.laplace_starts)
            warm = run_svi_elsewhere(a.svi_steps, max(a.samples, 200), cache, a.laplace_starts)
        head["svi_wall_s"] = round(wall, 1)
        head["svi_wall_warm_s"] = round(warm, 1)
        head["svi_final_loss"] = round(float(svi.idata.attrs["svi_final_loss"]), 2)
        head["svi_steps"] = int(svi.spec.inference["svi_steps"])
        head["svi_laplace_starts"] = int(svi.spec.inference["laplace_starts"])
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            save_posterior(svi.idata, a.out / "svi_posterior.nc")
        print(f"SVI: {wall:.1f} s (compilation cache empty), {warm:.1f} s (filled) for "
              f"{svi.spec.inference['svi_steps']} steps after {svi.spec.inference['laplace_starts']} "
              f"Laplace starts (solver step {svi.spec.inference['dt']} h)", flush=True)
    if "nuts" in parts:
        nuts, wall = run_nuts(a.warmup, a.samples, a.chains)
        d = check(nuts.idata)
        head["nuts_wall_s"] = round(wall, 1)
        head["nuts_rhat_max"] = round(d.get("rhat_max", float("nan")), 4)
        head["nuts_divergences"] = d["divergences"]
        head["nuts_ess_bulk_min"] = round(d.get("ess_bulk_min", float("nan")), 1)
        head["nuts_ess_per_s"] = round(d.get("ess_bulk_min", float("nan")) / wall, 3)
        print(f"NUTS: {wall:.1f} s, diagnostics {d['problems'] or 'ok'}", flush=True)
        print_failing_sites(nuts.idata, d)
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            save_posterior(nuts.idata, a.out / "nuts_posterior.nc")
    nuts_idata = nuts.idata if nuts is not None else None
    if nuts_idata is None and a.nuts_posterior is not None:
        from calibration.infer import load_posterior

        nuts_idata = load_posterior(a.nuts_posterior)
        print(f"SVI against the NUTS posterior {a.nuts_posterior} ({nuts_idata.attrs.get('created')})")
    if svi is not None and nuts_idata is not None:
        keys = [p.key for p in svi.spec.priors]
        ms, mn = _means_sds(svi.idata, keys), _means_sds(nuts_idata, keys)
        z = {k: abs(ms[k][0] - mn[k][0]) / mn[k][1] for k in keys}
        for k in keys:
            print(f"  {k}: SVI {ms[k][0]:.4g} (sd {ms[k][1]:.2g})  NUTS {mn[k][0]:.4g} (sd {mn[k][1]:.2g})  |diff|/sd {z[k]:.2f}")
        head["svi_vs_nuts_max_z"] = round(max(z.values()), 2)
        head["svi_sd_over_nuts_sd_median"] = round(float(np.median([ms[k][1] / mn[k][1] for k in keys])), 2)
    if "holdout" in parts:
        cov, cov50, widths, ci = holdout(a.folds, a.per_fold, a.svi_steps, 200, laplace_starts=a.laplace_starts)
        for k, (c, n) in cov.items():
            print(f"held-out coverage, {k}: 90 % interval {c:.3f} (bootstrap over batches {ci[k][0]:.3f}-"
                  f"{ci[k][1]:.3f}), 50 % interval {cov50[k]:.3f} over {n} observations")
            head[f"holdout_coverage_{k}"] = round(c, 3)
        moves = widths.pop("final_titer_moves")
        print(f"batch effects move the final titer (SD of the log-ratio to the population median): "
              f"fitted, across training batches {100 * moves['fitted']:.1f} %; new, over draws {100 * moves['new']:.1f} %")
        head["holdout_titer_moves_fitted_pct"] = round(100 * moves["fitted"], 1)
        head["holdout_titer_moves_new_pct"] = round(100 * moves["new"], 1)
        print("held-out predictive width (median relative SD at the readings) vs the readings' robust relative spread:")
        for k, w in widths.items():
            print(f"  {k}: full {100 * w['full']:.1f} %, without new batch effects {100 * w['centre']:.1f} %, "
                  f"without noise {100 * w['no_noise']:.1f} %; readings {100 * w['readings']:.1f} %; "
                  f"90 % coverage without new batch effects {w['coverage_centre']:.3f}")
            head[f"holdout_relsd_{k}_pct"] = round(100 * w["full"], 1)
            head[f"holdout_relsd_no_batch_effects_{k}_pct"] = round(100 * w["centre"], 1)
            head[f"holdout_relsd_no_noise_{k}_pct"] = round(100 * w["no_noise"], 1)
            head[f"holdout_residual_spread_{k}_pct"] = round(100 * w["readings"], 1)
            head[f"holdout_coverage_no_batch_effects_{k}"] = round(w["coverage_centre"], 3)
        for k, c in cov50.items():
            head[f"holdout_coverage50_{k}"] = round(c, 3)
    if "newbatches" in parts:
        seeds = range(a.new_seed0, a.new_seed0 + a.new_batches)
        cov, cov50, ci = new_batches(seeds, a.svi_steps, 200, res=svi, laplace_starts=a.laplace_starts)
        for k, (c, n) in cov.items():
            print(f"new plant batches (seeds {seeds.start}-{seeds.stop - 1}), {k}: 90 % interval {c:.3f} "
                  f"(bootstrap over batches {ci[k][0]:.3f}-{ci[k][1]:.3f}), 50 % interval {cov50[k]:.3f} "
                  f"over {n} observations")
            head[f"new_batches_coverage_{k}"] = round(c, 3)
        for k, c in cov50.items():
            head[f"new_batches_coverage50_{k}"] = round(c, 3)
    if "recovery" in parts:
        frac, per, n = recovery(a.reps, a.svi_steps or 1500, 400)
        head["recovery_in_90pct_interval"] = round(frac, 3)
        for k, v in per.items():
            head[f"recovery_{k}"] = round(v, 3)
        print(f"recovery: {frac:.3f} of true values inside their 90 % interval over {n} datasets (SVI)")
    if "sbc" in parts:
        res, chi = sbc(a.sbc_reps, a.svi_steps or 1500, a.sbc_draws, bins=10 if a.sbc_reps >= 50 else 2)
        for k, (c, p) in chi.items():
            print(f"SBC {k}: ranks {np.sort(res.ranks[k]).tolist()}; chi2 {c:.1f}, p {p:.3g}")
            head[f"sbc_p_{k}"] = round(p, 4)
        head["sbc_min_p"] = round(min(p for _, p in chi.values()), 4)
        head["sbc_coverage90"] = round(res.coverage90(), 3)
        head["sbc_failed_replications"] = len(res.failed)
        for r, why in res.failed:
            print(f"SBC replication {r} failed: {why}")
    for k, v in head.items():
        print(f"{k}: {v}")
    return head


if __name__ == "__main__":
    main()
