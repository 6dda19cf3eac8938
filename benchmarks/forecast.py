"""Forecast benchmark: the final penicillin of held-out IndPenSim batches, forecast early.

Held-out batches: the IndPenSim plant (pensimpy) on plant seeds that the demo history did not
use (default 100-123; the history used 0-11), each with operator variation drawn as the demo
history's (`twin.plants.history.operator_recipe`) from `default_rng(SeedSequence([seed, 7]))`.
They are generated once and cached in `benchmarks/.cache/forecast/` (gitignored); about 15 s a
batch on one core.

At 25 %, 50 % and 75 % of the batch (57, 115 and 172 h of 230 h) each held-out batch is
forecast from its own data so far (its measurements up to then, its recipe for the rest) with
`twin.forecast`, and compared with the plant's true total penicillin (vessel + harvest draws,
`PlantRun.totals["penicillin_total_kg"]`, noise-free). Reported per horizon: mean absolute
percentage error (MAPE) of the median forecast, coverage of the 90 % interval, the mean width of
that interval, and two baselines computed from the same training history the posterior saw (the
12 demo batches):
  historical mean  the mean total penicillin of the history;
  regression       ridge regression (leave-one-out-chosen penalty) of the final total on the
                   offline assays seen so far (biomass, sugar, penicillin, PAA at each 12 h
                   sample up to the horizon) and the batch's planned sugar and oil (kg).
The forecast is widened and de-biased by the twin's structural error measured on the 12 history
batches, leave-batches-out by default (`--error-folds 4`: each history batch forecast by a posterior
calibrated without its fold, as a new batch is; `--error-folds 0`: by the posterior that saw it,
in-sample and too narrow late in the batch). The held-out seeds are never used to choose anything
(no tuning); development was done on seeds 300-311.

Without `--posterior` the script calibrates the strain itself (SVI, 1-3 min on 2 cores, and
as much again per fold) and caches the posterior under a key of what it depends on
(`posterior_key`: the strain file's contents, the scenario's model constants, initial state and
recipe, the model structure hash, the calibration code's source), so that a changed kinetics,
grid `dt` or calibration method is recalibrated, never served stale. The posterior used (path,
key, method, creation time, dt) is printed first and among the figures. Ends with `name: value`
lines. Targets (issue 6): at 25 % MAPE <= 5 % and 90 % coverage in [0.85, 0.95]; the twin beats
both baselines at every horizon.

    python benchmarks/forecast.py --n-batches 24
    python benchmarks/forecast.py --n-batches 24 --posterior /tmp/fc_post/posterior.nc
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import twin

CACHE = ROOT / "benchmarks" / ".cache" / "forecast"
STRAIN = ROOT / "calibration" / "strains" / "penicillin_indpensim.toml"
HORIZONS_H = (57.0, 115.0, 172.0)
VARIATION_STREAM = 7  # SeedSequence([seed, 7]); the history uses [history seed, i, 2]


def heldout_batch(seed: int, *, fault: int = 0, cache: Path = CACHE) -> Path:
    """The folder of one held-out plant batch (generated on first use): `measurements.parquet`,
    `batches.csv` (twin.data format), `recipe.csv` and `totals.json` (plant totals, variation)."""
    from twin.data import batch_set_from_frames, write_batches
    from twin.plants.history import _describe, operator_recipe
    from twin.plants.indpensim import run_batch
    from twin.recipe import write_recipe_csv

    name = f"IPS-HO-{seed}" + (f"-F{fault}" if fault else "")
    d = cache / name
    if (d / "totals.json").is_file():
        return d
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), VARIATION_STREAM]))
    recipe, var = operator_recipe(rng)
    run = run_batch(recipe, int(seed), fault=int(fault), batch=name)
    bs = batch_set_from_frames(run.measurements, __import__("pandas").DataFrame(
        [run.batches_row(_describe(var))]), source=name)
    write_batches(bs, d, fmt="parquet")
    write_recipe_csv(recipe, d / "recipe.csv", units={"aeration": "m3/min"})
    info = {"seed": int(seed), "fault": int(fault), "variation": var, "totals": run.totals,
            "variation_seed_sequence": [int(seed), VARIATION_STREAM]}
    (d / "totals.json").write_text(json.dumps(info, indent=1, sort_keys=True))
    return d


def generate(seeds, *, fault: int = 0, cache: Path = CACHE, log=print) -> list[Path]:
    out = []
    for s in seeds:
        t = time.perf_counter()
        existed = (cache / (f"IPS-HO-{s}" + (f"-F{fault}" if fault else "")) / "totals.json").is_file()
        out.append(heldout_batch(s, fault=fault, cache=cache))
        if not existed:
            log(f"generated plant seed {s} (fault {fault}) in {time.perf_counter() - t:.1f} s")
    return out


CALIBRATION_CODE = ("calibration/infer.py", "calibration/vi.py", "calibration/model.py",
                    "calibration/spec.py")
"""The calibration code a cached posterior depends on (its source text enters the cache key)."""


def _scenario_hash(scenario) -> str:
    """A fingerprint of what calibration takes from the scenario: the model's structure and
    every constant in it, the initial state, the recipe and the batch length (not its comments
    or the sections other commands read, such as [optimize])."""
    import hashlib

    import jax

    h = hashlib.sha256(str(jax.tree_util.tree_structure((scenario.model, scenario.y0,
                                                         scenario.recipe))).encode())
    for leaf in jax.tree_util.tree_leaves((scenario.model, scenario.y0, scenario.recipe)):
        h.update(np.asarray(leaf, dtype=float).tobytes())
    h.update(repr(float(scenario.duration_h)).encode())
    return h.hexdigest()[:16]


def posterior_key(strain_file: Path = STRAIN, *, svi_steps: int | None = None) -> dict:
    """What a posterior calibrated by this script depends on, and its key (16 hex digits): the
    strain file's contents (priors, dt, observations), the scenario's model constants, initial
    state and recipe (`_scenario_hash`), the model structure hash
    (`calibration.model.structure_hash`: an edited kinetics class changes it), the calibration
    code's source (`CALIBRATION_CODE`) and `svi_steps` (None: the strain file's)."""
    import hashlib

    from calibration.model import structure_hash
    from calibration.spec import load_strain

    strain_file = Path(strain_file)
    spec = load_strain(strain_file)
    parts = {
        "strain_file": hashlib.sha256(strain_file.read_bytes()).hexdigest()[:16],
        "scenario": _scenario_hash(spec.scenario),
        "model_structure": structure_hash(spec.scenario.model),
        "calibration_code": hashlib.sha256(b"".join((ROOT / f).read_bytes()
                                                    for f in CALIBRATION_CODE)).hexdigest()[:16],
    }
    if svi_steps is not None:
        parts["svi_steps"] = int(svi_steps)
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return {"key": key, **parts}


def calibrated_posterior(path: Path | None, cache: Path, log=print, *, strain_file: Path = STRAIN,
                         svi_steps: int | None = None) -> tuple[Path, dict]:
    """`path` if given; else the posterior this script calibrated before for the same inputs
    (`cache/posterior/<key>/posterior.nc`, `posterior_key`), else calibrate now (SVI, as `twin
    calibrate --method svi`) and cache it under the key. Returns the path and its provenance
    (`posterior_key`'s parts, or `{"key": "given"}`; plus the file's own attributes)."""
    from calibration.infer import calibrate, load_posterior, save_posterior
    from calibration.spec import load_strain

    if path is not None:
        ident = {"key": "given"}
        out = Path(path)
    else:
        ident = posterior_key(strain_file, svi_steps=svi_steps)
        out = cache / "posterior" / ident["key"] / "posterior.nc"
        if not out.is_file():
            spec = load_strain(strain_file)
            t = time.perf_counter()
            log(f"calibrating the strain (SVI) on the demo history for key {ident['key']} "
                f"({', '.join(f'{k} {v}' for k, v in ident.items() if k != 'key')}) ...")
            res = calibrate(spec, method="svi", svi_steps=svi_steps)
            save_posterior(res.idata, out)
            (out.parent / "key.json").write_text(json.dumps(ident, indent=1))
            log(f"calibrated in {time.perf_counter() - t:.0f} s -> {out}")
    attrs = dict(load_posterior(out).attrs)
    ident.update({k: str(attrs.get(k)) for k in ("method", "created", "model_structure", "dt",
                                                  "data_hash", "svi_final_loss")})
    return out, ident


def crossfit_posteriors(post_path: Path, ident: dict, history, folds: int, cache: Path,
                        log=print, *, svi_steps: int | None = None,
                        strain_file: Path = STRAIN) -> dict:
    """Posteriors for leave-batches-out structural errors (`twin.forecast.leave_out_posteriors`:
    k folds, each forecast by a posterior calibrated on the others, on the main posterior's grid
    `dt`), kept beside the main posterior's key (`cache/posterior/<key>/fold<i>of<k>`; a given
    posterior that this script calibrated keeps its key). `{}` for `folds` < 2 (in-sample)."""
    import hashlib

    from calibration.spec import load_strain
    from twin.errors import TwinError
    from twin.forecast import leave_out_posteriors

    if folds < 2:
        return {}
    if ident["key"] != "given":
        tag = ident["key"]
    elif (post_path.parent / "key.json").is_file():  # a posterior this script calibrated
        tag = post_path.parent.name
    else:
        tag = "given-" + hashlib.sha256(f"{post_path.resolve()}|{ident.get('created')}".encode()
                                        ).hexdigest()[:12]
    spec = load_strain(strain_file)
    if ident.get("dt") not in (None, "None"):  # the folds on the main posterior's grid
        spec = dataclasses.replace(spec, inference={**spec.inference, "dt": float(ident["dt"])})
    try:
        return leave_out_posteriors(spec, history, folds,
                                    directory=cache / "posterior" / tag, svi_steps=svi_steps, log=log)
    except TwinError as exc:
        raise SystemExit(f"--error-folds: {exc}") from None


def _features(record, plan, horizon: float) -> np.ndarray:
    """Baseline regression features: offline assays at each 12 h sample up to the horizon
    (linear interpolation of the record's assays), planned sugar and oil (kg)."""
    times = np.arange(12.0, horizon + 1e-9, 12.0)
    f = []
    for var in ("product", "biomass", "substrate", "precursor"):
        t, v = record.series(var)
        sel = t <= horizon + 1e-9
        f.extend(np.interp(times, t[sel], v[sel]))
    f.append(float(plan.total("substrate_feed")) * 0.6)  # L x 600 g/L -> kg
    f.append(float(plan.total("oil_feed")))
    return np.asarray(f, dtype=float)


def ridge_baseline(X: np.ndarray, y: np.ndarray, alphas=tuple(np.logspace(-3, 3, 25))):
    """Ridge regression on standardised features, penalty chosen by leave-one-out error
    (closed form); returns a predict function."""
    mu, sd = X.mean(0), X.std(0) + 1e-12
    Z = (X - mu) / sd
    ym = y.mean()
    best = None
    for a in alphas:
        H = Z @ np.linalg.solve(Z.T @ Z + a * np.eye(Z.shape[1]), Z.T)
        r = (y - ym - H @ (y - ym)) / (1 - np.diag(H) - 1.0 / len(y))
        loo = float(np.mean(r**2))
        if best is None or loo < best[0]:
            best = (loo, a)
    a = best[1]
    w = np.linalg.solve(Z.T @ Z + a * np.eye(Z.shape[1]), Z.T @ (y - ym))
    return lambda x: float(ym + ((x - mu) / sd) @ w), a


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-batches", type=int, default=24, help="held-out plant batches (>= 20 for the "
                   "issue's proof)")
    p.add_argument("--first-seed", type=int, default=100, help="first plant seed (the demo history "
                   "used 0-11)")
    p.add_argument("--posterior", type=Path, default=None, help="posterior.nc (default: calibrate)")
    p.add_argument("--horizons", type=str, default=",".join(f"{h:g}" for h in HORIZONS_H))
    p.add_argument("--faults", type=str, default="3,1", help="plant faults to forecast on the first "
                   "seed (3 sugar feed, 1 aeration); empty: none")
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--out", type=Path, default=None, help="folder for the figures (default: "
                   "<cache>/out)")
    p.add_argument("--n-draws", type=int, default=200, help="posterior draws per forecast")
    p.add_argument("--online-our", action="store_true", help="also condition each forecast on the "
                   "recorded oxygen uptake rate (twin.forecast.OnlineSignal, cv 0.15, every 6 h)")
    p.add_argument("--strain", type=Path, default=STRAIN, help="strain file to calibrate when no "
                   "--posterior is given (default: the shipped IndPenSim strain); part of the cache key")
    p.add_argument("--svi-steps", type=int, default=None, help="SVI steps of the calibrations "
                   "(default: the strain file's); part of the cache key")
    p.add_argument("--error-folds", type=int, default=4, help="structural error measured "
                   "leave-batches-out: each history batch forecast by a posterior calibrated "
                   "without its fold (k-fold, SVI); 0: in-sample (the posterior saw the batches)")
    args = p.parse_args(argv)
    seeds = list(range(args.first_seed, args.first_seed + args.n_batches))
    horizons = [float(h) for h in args.horizons.split(",")]
    faults = [int(f) for f in args.faults.split(",") if f.strip()]
    out_dir = args.out or args.cache / "out"
    t_all = time.perf_counter()
    dirs = generate(seeds, cache=args.cache)
    fault_dirs = {f: heldout_batch(seeds[0], fault=f, cache=args.cache) for f in faults}
    if args.generate_only:
        return {}

    import jax

    from calibration.infer import load_history
    from twin.forecast import (
        forecast,
        historical_flows,
        load_strain_posterior,
        measure_errors,
        observed_totals,
        read_running_batch,
    )
    from twin.forecast_plots import plot_forecast
    from twin.recipe import read_recipe_csv

    post_path, post_ident = calibrated_posterior(args.posterior, args.cache, svi_steps=args.svi_steps,
                                                  strain_file=args.strain)
    print(f"posterior: {post_path} (" + ", ".join(f"{k} {v}" for k, v in post_ident.items()) + ")")
    post = load_strain_posterior(post_path)
    spec = post.spec
    sc = spec.scenario
    t_end = float(sc.duration_h)
    dt = float(spec.inference["dt"])
    history, plans = load_history(spec)
    flows = historical_flows(history, dt=dt, t_end=t_end)
    from twin.forecast import OnlineSignal

    online = (OnlineSignal("oxygen_uptake_rate"),) if args.online_our else ()
    opts = dict(future_flows=flows, n_draws=args.n_draws, online=online)

    # the twin's structural error, measured on the history (observed ends), each batch forecast
    # by a posterior calibrated without it (--error-folds), as a new batch is
    fractions = tuple(h / t_end for h in horizons)
    t = time.perf_counter()
    folds = crossfit_posteriors(post_path, post_ident, history, args.error_folds, args.cache,
                                svi_steps=args.svi_steps, strain_file=args.strain)
    errors = measure_errors(post, history, plans, fractions=fractions, posteriors=folds, **opts)
    t_errors = time.perf_counter() - t
    worst = float(np.max(np.abs(np.nanmean(errors.errors["total_product"], axis=1))))  # twin alone
    if worst > 0.2:
        raise SystemExit(f"the posterior {post_path} does not forecast its own history (bias of the "
                         f"total product up to {100 * worst:.0f} %): it is not a usable fit; "
                         "recalibrate (twin calibrate ... --method svi) and pass it with --posterior")
    print(f"structural error on {errors.source} ({t_errors:.0f} s): "
          + "; ".join(f"{h:g} h bias {100 * b:+.1f} % sd {100 * s:.1f} % twin weight {w:.2f}"
                      for h, b, s, w in zip(horizons, errors.bias["total_product"],
                                            errors.sd_structural["total_product"],
                                            errors.weight["total_product"] if errors.weight
                                            else np.ones(len(horizons)))))

    # baselines from the same history (observed ends, as a plant would know them)
    hist_total = np.asarray([observed_totals(r)["total_product"] for r in history]) / 1000.0
    hist_mean = float(hist_total.mean())
    regs = {}
    for h in horizons:
        X = np.stack([_features(r, plans[r.batch], h) for r in history])
        regs[h] = ridge_baseline(X, hist_total)

    rows = []
    for d in dirs:
        info = json.loads((d / "totals.json").read_text())
        truth = info["totals"]["penicillin_total_kg"]
        rec = read_running_batch(d / "measurements.parquet")
        plan = read_recipe_csv(d / "recipe.csv", defaults=sc.control_defaults, span=(0.0, t_end))
        for h in horizons:
            fc = forecast(post, rec, plan, at=h, key=jax.random.PRNGKey(info["seed"]), errors=errors,
                          **opts)
            q, m = fc.total_product_kg, fc.model_only["total_product_kg"]
            rows.append(dict(seed=info["seed"], horizon=h, truth=truth, median=q["median"],
                             q05=q["q05"], q95=q["q95"], model_median=m["median"],
                             model_q05=m["q05"], model_q95=m["q95"], wall_s=fc.wall_s,
                             method=fc.method, ess=fc.ess, hist_mean=hist_mean,
                             msr=fc.data_fit["mean_sq_std_residual"],
                             effects_sd=fc.data_fit["batch_effects_sd"],
                             warned=fc.data_fit["warning"] is not None,
                             regression=regs[h][0](_features(rec, plan, h))))
            r = rows[-1]
            print(f"seed {r['seed']} at {h:g} h: truth {truth:.0f} kg, twin {r['median']:.0f} "
                  f"[{r['q05']:.0f}, {r['q95']:.0f}] ({fc.wall_s:.1f} s, {fc.method}, ESS "
                  f"{fc.ess:.0f}); regression {r['regression']:.0f}; history mean {hist_mean:.0f}",
                  flush=True)
            if info["seed"] == seeds[0]:
                plot_forecast(fc, rec, path=out_dir / f"forecast_{info['seed']}_{h:g}h.png",
                              history=history, truth={"total_product_kg": truth,
                                                      "final_titer_g_L": info["totals"]["final_titer_g_L"]})

    # planted faults: the same seed and operator recipe, with the plant's fault
    fault_rows = []
    base = {r["horizon"]: r for r in rows if r["seed"] == seeds[0]}
    for f, d in fault_dirs.items():
        info = json.loads((d / "totals.json").read_text())
        rec = read_running_batch(d / "measurements.parquet")
        plan = read_recipe_csv(d / "recipe.csv", defaults=sc.control_defaults, span=(0.0, t_end))
        h = horizons[len(horizons) // 2]
        fc = forecast(post, rec, plan, at=h, key=jax.random.PRNGKey(info["seed"]), errors=errors, **opts)
        q = fc.total_product_kg
        b = base[h]
        fault_rows.append(dict(fault=f, horizon=h, truth=info["totals"]["penicillin_total_kg"],
                               median=q["median"], q05=q["q05"], q95=q["q95"],
                               base_median=b["median"], base_truth=b["truth"],
                               msr=fc.data_fit["mean_sq_std_residual"],
                               effects_sd=fc.data_fit["batch_effects_sd"],
                               warned=fc.data_fit["warning"] is not None))
        plot_forecast(fc, rec, path=out_dir / f"forecast_{info['seed']}_fault{f}_{h:g}h.png",
                      history=history, truth={"total_product_kg": fault_rows[-1]["truth"],
                                              "final_titer_g_L": info["totals"]["final_titer_g_L"]})

    import pandas as pd

    df = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "forecast_benchmark.csv", index=False)
    (out_dir / "structural_errors.json").write_text(json.dumps(
        {"posterior": str(post_path), "posterior_identity": post_ident, "horizons_h": horizons,
         "history_batches": sorted(history.batch_ids), "errors": errors.to_dict()}, indent=1))
    _plot_summary(df, horizons, out_dir / "forecast_benchmark.png")
    figures: dict = {"posterior": str(post_path), "posterior_key": post_ident["key"],
                     "posterior_created": post_ident["created"], "n_heldout": len(dirs),
                     "n_history": len(history), "posterior_method": post.method,
                     "posterior_dt_h": dt}
    print()
    print(f"{'horizon':>8} {'MAPE twin':>10} {'cov90':>6} {'width90':>8} {'MAPE model':>11} "
          f"{'cov90 model':>12} {'MAPE hist':>10} {'MAPE regr':>10}")
    beats = True
    for h in horizons:
        s = df[df.horizon == h]
        pct = round(100 * h / t_end)

        def ape(col, s=s):
            return float(np.mean(np.abs(s[col] / s["truth"] - 1)) * 100)

        cov = float(np.mean((s.q05 <= s.truth) & (s.truth <= s.q95)))
        cov_m = float(np.mean((s.model_q05 <= s.truth) & (s.truth <= s.model_q95)))
        width = float(np.mean((s.q95 - s.q05) / s["median"]) * 100)
        vals = {f"mape_{pct}pct": ape("median"), f"coverage90_{pct}pct": cov,
                f"width90_{pct}pct": width, f"mape_model_only_{pct}pct": ape("model_median"),
                f"coverage90_model_only_{pct}pct": cov_m,
                f"mape_hist_mean_{pct}pct": ape("hist_mean"),
                f"mape_regression_{pct}pct": ape("regression")}
        figures.update(vals)
        beats &= vals[f"mape_{pct}pct"] < min(vals[f"mape_hist_mean_{pct}pct"],
                                               vals[f"mape_regression_{pct}pct"])
        print(f"{h:>7g}h {vals[f'mape_{pct}pct']:>9.2f}% {cov:>6.2f} {width:>7.1f}% "
              f"{vals[f'mape_model_only_{pct}pct']:>10.2f}% {cov_m:>12.2f} "
              f"{vals[f'mape_hist_mean_{pct}pct']:>9.2f}% {vals[f'mape_regression_{pct}pct']:>9.2f}%")
    for fr in fault_rows:
        print(f"fault {fr['fault']} at {fr['horizon']:g} h: twin {fr['median']:.0f} "
              f"[{fr['q05']:.0f}, {fr['q95']:.0f}] kg (truth {fr['truth']:.0f}); same seed without "
              f"the fault {fr['base_median']:.0f} kg (truth {fr['base_truth']:.0f}); data fit: "
              f"mean sq. std. residual {fr['msr']:.1f}, batch effects {fr['effects_sd']:.1f} SD, "
              f"{'WARNED' if fr['warned'] else 'no warning'}")
        figures[f"fault{fr['fault']}_msr"] = fr["msr"]
        figures[f"fault{fr['fault']}_warned"] = float(fr["warned"])
        figures[f"fault{fr['fault']}_shift_pct"] = 100 * (fr["median"] / fr["base_median"] - 1)
        figures[f"fault{fr['fault']}_true_shift_pct"] = 100 * (fr["truth"] / fr["base_truth"] - 1)
    figures["msr_median_heldout"] = float(df.msr.median())
    figures["msr_max_heldout"] = float(df.msr.max())
    figures["warned_fraction_heldout"] = float(df.warned.mean())
    figures["forecast_s_median"] = float(df.wall_s.median())
    figures["forecast_s_max"] = float(df.wall_s.max())
    figures["error_model_s"] = t_errors
    figures["structural_error_folds"] = float(args.error_folds)
    figures["online_our"] = float(args.online_our)
    for h, b, sd in zip(horizons, errors.bias["total_product"], errors.sd_structural["total_product"]):
        pct = round(100 * h / t_end)
        figures[f"structural_bias_{pct}pct"] = 100 * float(b)
        figures[f"structural_sd_{pct}pct"] = 100 * float(sd)
        figures[f"twin_weight_{pct}pct"] = errors.combination(h / t_end, "total_product")[0]
    if errors.loo_coverage90 is not None:  # the structural error's own check, on the history
        for h, c in zip(horizons, errors.loo_coverage90["total_product"]):
            figures[f"history_loo_coverage90_{round(100 * h / t_end)}pct"] = float(c)
    figures["twin_beats_both_baselines_every_horizon"] = float(beats)
    p25 = round(100 * horizons[0] / t_end)
    figures[f"target_mape_{p25}pct_met"] = float(figures[f"mape_{p25}pct"] <= 5.0)
    figures[f"target_coverage90_{p25}pct_met"] = float(0.85 <= figures[f"coverage90_{p25}pct"] <= 0.95)
    figures["total_s"] = time.perf_counter() - t_all
    print(f"wrote {out_dir / 'forecast_benchmark.csv'}, structural_errors.json and figures in {out_dir}")
    print()
    for k, v in figures.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    return figures


def _plot_summary(df, horizons, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twin.plots import save

    fig, axes = plt.subplots(1, len(horizons), figsize=(4.6 * len(horizons), 4.4), squeeze=False,
                             constrained_layout=True)
    for ax, h in zip(axes[0], horizons):
        s = df[df.horizon == h].sort_values("truth")
        x = np.arange(len(s))
        inside = (s.q05 <= s.truth) & (s.truth <= s.q95)
        ax.errorbar(x, s["median"], yerr=[s["median"] - s.q05, s.q95 - s["median"]], fmt="o",
                    color="C0", ms=4, capsize=2, label="twin: median, 90 % interval")
        ax.plot(x, s.truth, "r*", ms=8, label="true total (plant)")
        ax.plot(x, s.regression, "s", mfc="none", mec="C2", ms=5, label="regression baseline")
        ax.axhline(float(s.hist_mean.iloc[0]), color="0.5", ls="--", lw=1, label="historical mean")
        mape = float(np.mean(np.abs(s["median"] / s.truth - 1)) * 100)
        ax.set(title=f"at {h:g} h: MAPE {mape:.1f} %, coverage {inside.mean():.2f}",
               xlabel="held-out batch (sorted by true total)", ylabel="total penicillin (kg)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7.5)
    fig.suptitle(f"Forecast of {df.seed.nunique()} held-out IndPenSim batches (seeds "
                 f"{df.seed.min()}-{df.seed.max()})", fontsize=11)
    return save(fig, path)


if __name__ == "__main__":
    main()
