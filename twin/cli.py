"""`twin ...`: the command line of the digital twin (typer + rich).

Every command turns a `TwinError` into one red line naming the file, field, rule and value, and
exits with status 2 without a traceback. Outputs are written atomically.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import TwinError
from .units import material_amount

app = typer.Typer(help="An open, differentiable digital twin of fed-batch fermentation.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"


@contextlib.contextmanager
def _user_errors():
    try:
        yield
    except TwinError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err)


def run_scenario(path: Path, out: Path, *, overrides=None, recipe: Path | None = None,
                 quiet: bool = False, posterior: Path | None = None, draws: int = 200) -> dict:
    """Simulate one scenario; write trajectories.csv, simulation.png and summary.json into `out`.

    With `posterior`, simulate `draws` posterior draws for a new batch (fresh batch effects from
    the fitted population) on the posterior's own fixed grid: trajectories.csv holds the per-time
    median, bands.csv the 5/25/50/75/95 % quantiles, and the summary gives intervals.
    """
    from .plots import plot_simulation
    from .report import summarize, write_json, write_trajectories
    from .scenario import load_scenario, parse_overrides
    from .simulate import simulate

    sc = load_scenario(path, overrides=parse_overrides(overrides), recipe_path=recipe)
    wv = float(sc.model.vessel.working_volume)
    what_if = ", ".join(overrides or []) + (f" recipe={recipe}" if recipe else "")
    title = f"{sc.title}" + (f"\nwhat-if: {what_if}" if what_if.strip() else "")
    record = {"scenario": str(path), "name": sc.name, "overrides": list(overrides or []),
              "recipe": str(recipe) if recipe else None, "sources": sc.sources}
    if posterior is not None:
        return _run_posterior(sc, path, out, posterior, draws, title, record, quiet)
    run_recipe = sc.recipe
    if sc.ph_loop_history is not None:
        run_recipe, note = _with_median_ph_loop_inflow(sc)
        record["ph_loop_inflow"] = note
        title += "\nwater includes the median acid + base (pH loop) inflow of the strain's history"
    traj = simulate(sc.model, run_recipe, sc.y0, 0.0, sc.duration_h, ts=sc.ts, options=sc.options,
                    label=f"scenario '{sc.name}' ({path})")
    summary = summarize(traj, working_volume_L=wv)
    out.mkdir(parents=True, exist_ok=True)
    write_trajectories(traj, out / "trajectories.csv")
    plot_simulation(traj, title=title, path=out / "simulation.png", working_volume_L=wv)
    write_json({**record, "summary": summary}, out / "summary.json")
    if not quiet:
        _print_summary(sc.title, summary, out)
    return summary


def _with_median_ph_loop_inflow(sc, dt: float = 0.5):
    """The scenario's recipe with the median (over the history's batches, step by step) of the
    acid + base inflow recorded in the strain history `[recipe] ph_loop_history` names, added to
    the water feed on `dt` steps; and a note saying so. The twin has no pH model: without this the
    broth of a plant whose pH loop adds base (IndPenSim: about 30 m3 a batch) ends far too low."""
    import numpy as np

    from calibration.posterior import ph_loop_inflows, recipe_water

    from .recipe import Profile

    inflows = ph_loop_inflows({"strain_file": str(sc.ph_loop_history)}, sc.duration_h, dt)
    if inflows is None:
        raise TwinError("the strain's history records no acid or base flow", where=sc.path,
                        field="recipe.ph_loop_history", value=str(sc.ph_loop_history))
    median = np.median(inflows, axis=0)
    water = recipe_water(sc.recipe, sc.duration_h, dt) + median
    grid = np.arange(0.0, sc.duration_h, dt)
    recipe = sc.recipe.with_profile("water_feed", Profile(grid, np.asarray(sc.duration_h), water, water))
    note = (f"water feed plus the median over {len(inflows)} history batches of their recorded acid + base "
            f"inflow ({sc.ph_loop_history}; {float(np.sum(median) * dt) / 1000.0:.1f} m3 in all)")
    return recipe, note


def _run_posterior(sc, path: Path, out: Path, posterior: Path, n: int, title: str, record: dict,
                   quiet: bool) -> dict:
    import jax
    import numpy as np

    from calibration.posterior import load_draws, ph_loop_inflows, ph_loop_water, recipe_water, simulate_draws

    from .io import atomic_path
    from .plots import plot_simulation
    from .recipe import snap_to_grid
    from .report import band_frame, median_trajectory, summarize_ensemble, write_json, write_trajectories
    from .simulate import ensure_success

    if n < 2:
        raise TwinError("need at least 2 posterior draws for bands", field="--draws", value=n)
    draws = load_draws(posterior, sc.model, n)
    recipe, moves = snap_to_grid(sc.recipe, draws.dt)
    # the twin has no pH model: each draw carries one calibration batch's recorded acid + base
    # inflow, as in `twin optimize` (the calibration fed these flows as water)
    inflows = ph_loop_inflows(draws.attrs, sc.duration_h, draws.dt)
    ens = simulate_draws(sc.model, recipe, sc.y0, draws, 0.0, sc.duration_h, ts=sc.ts,
                         per_draw=ph_loop_water(recipe_water(recipe, sc.duration_h, draws.dt), inflows, draws.n,
                                                sc.duration_h, draws.dt))
    ensure_success(ens, label=f"scenario '{sc.name}' ({path}) with posterior {posterior}")
    ens = jax.tree_util.tree_map(np.asarray, ens)
    wv = float(sc.model.vessel.working_volume)
    summary = summarize_ensemble(ens, working_volume_L=wv)
    central = median_trajectory(ens)
    out.mkdir(parents=True, exist_ok=True)
    write_trajectories(central, out / "trajectories.csv")
    with atomic_path(out / "bands.csv", suffix=".csv") as tmp:
        band_frame(ens).to_csv(tmp, index=False, float_format="%.8g")
    attrs = draws.attrs
    if inflows is not None:
        ph_note = (f"draw i carries the recorded acid + base inflow of calibration batch i mod {len(inflows)} "
                   f"({attrs.get('strain_file')})")
    elif not attrs.get("strain_file"):
        ph_note = "none: the posterior names no strain file"
    elif Path(attrs["strain_file"]).is_file():
        ph_note = "none: the posterior's strain history records no acid/base flow"
    else:
        ph_note = f"none: the posterior's strain file {attrs['strain_file']} is not on this machine"
    title += f"\nposterior: {posterior} (strain {attrs.get('strain')}, {attrs.get('method', '').upper()}, " \
             f"{draws.n} draws, new-batch effects, fixed grid {draws.dt:g} h)" + \
             ("\neach draw with one history batch's recorded acid + base (pH loop) inflow" if inflows is not None else "")
    plot_simulation(central, title=title, path=out / "simulation.png", ensemble=ens, working_volume_L=wv)
    record.update(posterior={"file": str(posterior), "strain": attrs.get("strain"), "method": attrs.get("method"),
                             "created": attrs.get("created"), "data_hash": attrs.get("data_hash"),
                             "draws": draws.n, "solver_dt_h": draws.dt, "ph_loop_inflow": ph_note,
                             "recipe_breakpoints_moved_to_grid": [list(m) for m in moves]})
    write_json({**record, "summary": summary}, out / "summary.json")
    if not quiet:
        _print_ensemble_summary(sc.title, summary, out, moves, draws.dt)
        console.print(f"acid/base (pH loop) inflow: {escape(ph_note)}")
    return summary


def _print_ensemble_summary(title: str, s: dict, out: Path, moves, dt: float) -> None:
    t = Table(title=f"{title}: posterior median [90 % interval], {s['draws']} draws", header_style="bold")
    t.add_column("figure")
    t.add_column("value", justify="right")

    def f(key, scale=1.0, fmt=".3f", unit=""):
        q = s[key]
        return f"{q['median'] * scale:{fmt}} [{q['q05'] * scale:{fmt}}, {q['q95'] * scale:{fmt}}] {unit}"

    t.add_row("final titer", f("final_titer_g_L", unit="g/L"))
    t.add_row("total product (vessel + drawn)", f("total_product_kg", fmt=".1f", unit="kg"))
    t.add_row("total sugar fed", f("substrate_fed_kg", fmt=".1f", unit="kg"))
    t.add_row("final volume", f("final_volume_m3", fmt=".2f", unit="m3"))
    t.add_row("peak volume", f("peak_volume_m3", fmt=".2f", unit="m3"))
    t.add_row("minimum DO", f("min_dissolved_oxygen_pct", fmt=".1f", unit="%"))
    if s.get("prob_peak_volume_above_working", 0) > 0:
        t.add_row("[red]P(peak volume > working volume)[/red]", f"[red]{s['prob_peak_volume_above_working']:.2f}[/red]")
    console.print(t)
    if moves:
        console.print(f"note: {len(moves)} recipe breakpoint(s) moved to the posterior's solver grid "
                      f"({dt:g} h), e.g. {moves[0][0]} {moves[0][1]:g} h -> {moves[0][2]:g} h")
    console.print(f"wrote {out / 'trajectories.csv'} (median), {out / 'bands.csv'}, {out / 'simulation.png'}, "
                  f"{out / 'summary.json'}")


def _print_summary(title: str, s: dict, out: Path) -> None:
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows = [
        ("final titer", f"{s['final_titer_g_L']:.3f} g/L"),
        ("total product (vessel + drawn)", f"{s['total_product_kg']:.2f} kg"),
        ("total sugar fed", f"{s['substrate_fed_kg']:.1f} kg"),
        ("oil / precursor fed", f"{s['oil_fed_kg']:.1f} / {s['precursor_fed_kg']:.1f} kg"),
        ("final volume (peak)", f"{s['final_volume_m3']:.2f} m3 ({s['peak_volume_m3']:.2f} m3)"),
        ("minimum DO", f"{s['min_dissolved_oxygen_pct']:.1f} %"),
        ("product yield on sugar", f"{s['product_yield_on_sugar_g_g']:.4f} g/g"),
    ]
    if s.get("working_volume_m3") and s["peak_volume_m3"] > s["working_volume_m3"]:
        rows.append(("[red]WARNING[/red]", f"[red]peak volume above {s['working_volume_m3']:.1f} m3[/red]"))
    for r in rows:
        t.add_row(*r)
    console.print(t)
    console.print(f"wrote {out / 'trajectories.csv'}, {out / 'simulation.png'}, {out / 'summary.json'}")


@app.command()
def simulate(
    scenario: Path = typer.Argument(..., help="scenario TOML, e.g. scenarios/penicillin_like.toml"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="what-if override section.key=value, "
                                             "e.g. kinetics.mu_max=0.09 or controls.temperature=24 (repeatable)"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="recipe CSV replacing the scenario's recipe"),
    posterior: Optional[Path] = typer.Option(None, "--posterior", help="posterior.nc from `twin calibrate`: "
                                             "simulate posterior draws and draw 50 %/90 % bands"),
    draws: int = typer.Option(200, "--draws", help="posterior draws to simulate (with --posterior)"),
) -> None:
    """Simulate a scenario: trajectories.csv, simulation.png and a summary (with --posterior: bands)."""
    with _user_errors():
        run_scenario(scenario, out, overrides=set_, recipe=recipe, posterior=posterior, draws=draws)


@app.command()
def params(scenario: Path = typer.Argument(..., help="scenario TOML")) -> None:
    """List every model parameter of a scenario with its value, unit, physical range and meaning."""
    from .reactor import parameter_table
    from .scenario import load_scenario

    with _user_errors():
        sc = load_scenario(scenario)
        t = Table(title=f"{sc.title}: parameters", header_style="bold")
        for c in ("name", "value", "unit", "range", "meaning"):
            t.add_column(c)
        for p in parameter_table(sc.model).values():
            t.add_row(p.name, f"{p.value:.6g}", p.unit, f"[{p.lower:g}, {p.upper:g}]", p.doc)
        console.print(t)


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", help="where results go"),
    figures: Path = typer.Option(REPO / "figures", "--figures", help="where the PNGs are copied"),
    calibrate_history: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                           help="calibrate the IndPenSim strain on the demo history (SVI)"),
    svi_steps: int = typer.Option(600, "--svi-steps", help="SVI steps of the demo calibration (after its Laplace start)"),
) -> None:
    """The main job on the embedded data: simulate every shipped scenario, plot the demo plant
    history, calibrate the IndPenSim strain on it (SVI) and draw the plant scenario with the
    posterior's bands."""
    with _user_errors():
        scenarios = sorted(SCENARIOS.glob("*.toml"))
        if not scenarios:
            raise TwinError("no scenario files found", where=SCENARIOS)
        figures.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with _progress() as prog:
            task = prog.add_task("simulating scenarios", total=len(scenarios))
            results = {}
            for path in scenarios:
                prog.update(task, description=f"simulating {path.stem}")
                results[path.stem] = run_scenario(path, out / path.stem, quiet=True)
                shutil.copyfile(out / path.stem / "simulation.png", figures / f"{path.stem}_simulation.png")
                prog.advance(task)
        t = Table(title="Shipped scenarios", header_style="bold")
        for c in ("scenario", "final titer g/L", "total product kg", "sugar fed kg", "final volume m3", "min DO %"):
            t.add_column(c, justify="right")
        for name, s in results.items():
            t.add_row(name, f"{s['final_titer_g_L']:.3f}", f"{s['total_product_kg']:.1f}",
                      f"{s['substrate_fed_kg']:.0f}", f"{s['final_volume_m3']:.2f}",
                      f"{s['min_dissolved_oxygen_pct']:.1f}")
        console.print(t)
        _demo_history(out, figures)
        if calibrate_history:
            _demo_calibration(out, figures, svi_steps)
        console.print(f"demo finished in {time.perf_counter() - t0:.1f} s; figures in {figures}")


@app.command()
def calibrate(
    strain: Path = typer.Argument(..., help="strain TOML, e.g. calibration/strains/penicillin_indpensim.toml"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    method: Optional[str] = typer.Option(None, "--method", help="nuts (default in the strain file) or svi"),
    chains: Optional[int] = typer.Option(None, "--chains", help="NUTS chains (one process each)"),
    warmup: Optional[int] = typer.Option(None, "--warmup"),
    samples: Optional[int] = typer.Option(None, "--samples"),
    svi_steps: Optional[int] = typer.Option(None, "--svi-steps"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    update_with: Optional[Path] = typer.Option(
        None, "--update-with", help="newly finished batches (batch directory or measurements file, with "
        "recipes/<batch>.csv beside it): predict them from the old posterior, compare with what happened, "
        "then refit on old + new batches (update.json, update.png)"),
    posterior: Optional[Path] = typer.Option(
        None, "--posterior", help="with --update-with: the old posterior (default OUT/posterior.nc, kept "
        "as posterior.prev.nc); a file given here is never overwritten"),
) -> None:
    """Calibrate a strain: posterior.nc, summary.csv, fit.png, parameters.png, diagnostics.json
    (with --update-with: first check the old posterior's prediction of the new batches)."""
    # The CLI is the application shell: it may use `calibration`; twin's library modules never do.
    from calibration.run import run_calibration

    with _user_errors():
        if method is not None and method not in ("nuts", "svi"):
            raise TwinError("must be nuts or svi", field="--method", value=method)
        if posterior is not None and update_with is None:
            raise TwinError("--posterior names the posterior to update: give --update-with too",
                            field="--posterior", value=str(posterior))
        update = None
        with _progress() as prog:
            task = prog.add_task("calibrating", total=None)

            def cb(stage, done, total):
                prog.update(task, description=stage, completed=done, total=total)

            kw = dict(method=method, progress=cb, chains=chains, warmup=warmup, samples=samples,
                      svi_steps=svi_steps, seed=seed)
            if update_with is not None:
                from calibration.update import run_update

                update = run_update(strain, out, update_with, posterior=posterior, **kw)
                result, diag = update.result, update.diagnostics
            else:
                result, diag = run_calibration(strain, out, **kw)
        from calibration.diagnostics import summary_table

        table = summary_table(result.idata, diag)
        t = Table(title=f"{result.spec.name}: {result.method.upper()} on {result.data.n_batches} batches "
                        f"in {result.wall_s:.0f} s", header_style="bold")
        # the name is what a reader needs: never cut it; 3 digits; r-hat and ESS only where there
        # are chains (SVI has none)
        chains = result.method != "svi"
        t.add_column("parameter", justify="left", no_wrap=True, min_width=max(map(len, table["parameter"])))
        for c in ("unit", "mean", "5%", "50%", "95%") + (("r-hat", "ESS") if chains else ()):
            t.add_column(c, justify="right", no_wrap=True)
        for _, r in table.iterrows():
            cells = [r["parameter"], r["unit"]] + [f"{r[k]:.3g}" for k in ("mean", "q05", "q50", "q95")]
            if chains:
                cells += [f"{r['r_hat']:.3f}", f"{r['ess_bulk']:.0f}"]
            t.add_row(*cells)
        console.print(t)
        if update is not None:
            rep = update.report
            old = rep["old_posterior"]
            t = Table(title=f"New batches predicted by the old posterior ({len(old['batches'])} batches, "
                            f"{str(old['method']).upper()}; {rep['prediction']['draws']} draws, new-batch "
                            "effects, assay noise): median [90 % interval]", header_style="bold")
            for c in ("batch", "figure", "predicted [90 %]", "realised", "error %", "hit", "assays in 90 %"):
                t.add_column(c, justify="right")
            for c in rep["batches"]:
                a = c["assays_in_90pct_interval"]
                assays = ", ".join(f"{v} {x['inside']}/{x['n']}" for v, x in a.items())
                for key, label, fmt in (("final_titer_g_L", "final titer g/L", ".3g"),
                                        ("total_product_kg", "total product kg", ".4g")):
                    q = c[key]
                    hit = "-" if q["hit"] is None else ("[green]hit[/green]" if q["hit"] else "[red]MISS[/red]")
                    t.add_row(c["batch"] if key == "final_titer_g_L" else "", label,
                              f"{q['median']:{fmt}} [{q['q05']:{fmt}}, {q['q95']:{fmt}}]",
                              "-" if q["realised"] is None else f"{q['realised']:{fmt}}",
                              "-" if q["error_pct"] is None else f"{q['error_pct']:+.1f}", hit,
                              assays if key == "final_titer_g_L" else "")
            console.print(t)
            sm = rep["summary"]
            frac = "-" if sm["assay_fraction_inside"] is None else f"{sm['assay_fraction_inside']:.0%}"
            console.print(f"finals inside their 90 % interval: {sm['finals_hit']}/{sm['finals_compared']}; "
                          f"assay points inside: {sm['assay_points_inside']}/{sm['assay_points']} ({frac}, "
                          "90 % expected)")
            t = Table(title="Posterior before -> after the update", header_style="bold")
            for c in ("parameter", "unit", "old mean (sd)", "new mean (sd)", "sd new/old", "shift, old sds"):
                t.add_column(c, justify="right")
            for key, p in rep["parameters"].items():
                t.add_row(key, p["unit"], f"{p['old']['mean']:.4g} ({p['old']['sd']:.2g})",
                          f"{p['new']['mean']:.4g} ({p['new']['sd']:.2g})", f"{p['sd_ratio']:.2f}",
                          f"{p['shift_in_old_sd']:+.2f}")
            console.print(t)
            for note in rep["notes"]:
                console.print(f"[yellow]note: {escape(note)}[/yellow]")
            if not old["data_unchanged_since"]:
                console.print("[yellow]note: the old posterior's batches read differently now than when it was "
                              "fitted (data hash differs): the strain's data changed since[/yellow]")
            for c in rep["batches"]:
                if not c["recipe"].endswith(".csv"):
                    console.print(f"note: {c['batch']}: set-points from the {escape(c['recipe'])}")
            kept = rep["new_posterior"]["kept_previous_as"]
            console.print(f"wrote {out}/update.json, update.png" + (f"; previous posterior kept as {kept}" if kept else ""))
        console.print(f"wrote {out}/posterior.nc, summary.csv, fit.png, parameters.png, diagnostics.json")
        if not diag["ok"]:
            err.print("[red]calibration FAILED its diagnostics:[/red] " + "; ".join(diag["problems"]))
            for a in diag["advice"]:
                err.print(f"  - {a}")
            raise typer.Exit(3)


@app.command()
def optimize(
    scenario: Path = typer.Argument(..., help="scenario TOML with an [optimize] table"),
    posterior: Path = typer.Option(..., "--posterior", help="posterior.nc from `twin calibrate` for this model"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="recipe CSV to beat (default: the scenario's)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override section.key=value (repeatable)"),
) -> None:
    """Optimise the recipe over posterior draws: recipe.csv, summary.json, recipe_vs_history.png,
    outcome.png and why.png. Writes nothing if the recipe fails a constraint on the check draws."""
    from .optimize import run_optimize

    with _user_errors():
        with _progress() as prog:
            task = prog.add_task("optimising (L-BFGS iterations, all starts and rounds)", total=None)

            def cb(done, total):
                prog.update(task, completed=done, total=total)

            s = run_optimize(scenario, posterior, out, baseline_path=baseline, progress=cb, overrides=set_)
        t = Table(title=f"Recipe optimisation ({s['check_draws']} posterior draws, new batches)", header_style="bold")
        t.add_column("figure")
        t.add_column("value", justify="right")
        p = s["predicted_total_product_kg"]
        t.add_row("total product, new vs baseline (median)", f"{p['new_median']:.0f} vs {p['baseline_median']:.0f} kg")
        t.add_row("expected gain [90 % interval]",
                  f"{s['expected_gain_pct']:+.2f} % [{s['gain_pct_90ci'][0]:+.2f}, {s['gain_pct_90ci'][1]:+.2f}]")
        t.add_row("P(new beats baseline)", f"{s['prob_new_beats_baseline']:.2f}")
        for k, m in s["material_L"].items():
            if m["baseline"]:
                (new, unit), (base, _) = material_amount(k, m["new"]), material_amount(k, m["baseline"])
                t.add_row(f"{k} used vs baseline", f"{new:.0f} / {base:.0f} {unit} ({100 * m['relative_difference']:+.3f} %)")
        for k, c in s["constraints_new_recipe"].items():
            t.add_row(f"{k}: worst over draws (limit)", f"{c['worst']:.3g} ({c['limit']:.3g})")
        console.print(t)
        console.print(f"wrote {out}/recipe.csv, summary.json, recipe_vs_history.png, outcome.png, why.png")


def _demo_history(out: Path, figures: Path) -> None:
    from .plants import demo_history_dir

    d = demo_history_dir()
    if not (d / "batches.csv").is_file():
        console.print(f"[yellow]no embedded plant history found in {d}; skipped[/yellow]")
        return
    from .data import load_batch_dir
    from .plots import plot_history

    hist = load_batch_dir(d)
    path = plot_history(hist, title=f"Embedded demo history: {len(hist)} IndPenSim batches (offline assays "
                                    "as markers, online signals as lines)", path=out / "history.png")
    shutil.copyfile(path, figures / "demo_history.png")
    console.print(f"plant history: {len(hist)} batches from {d} -> {figures / 'demo_history.png'}")


def _demo_calibration(out: Path, figures: Path, svi_steps: int) -> None:
    from calibration.run import run_calibration

    strain = REPO / "calibration/strains/penicillin_indpensim.toml"
    cal = out / "calibration"
    with _progress() as prog:
        task = prog.add_task("calibrating on the demo history", total=None)

        def cb(stage, done, total):
            prog.update(task, description=f"calibrating ({stage})", completed=done, total=total)

        result, diag = run_calibration(strain, cal, method="svi", progress=cb, svi_steps=svi_steps)
    for name in ("fit.png", "parameters.png"):
        shutil.copyfile(cal / name, figures / f"calibration_{name}")
    cov = ", ".join(f"{k} {v:.0%}" for k, v in diag["in_sample_90pct_coverage"].items())
    console.print(f"calibrated {result.spec.name} on {result.data.n_batches} batches (SVI, {result.wall_s:.0f} s); "
                  f"in-sample 90 % band coverage: {cov}; {cal}/summary.csv")
    scenario = SCENARIOS / "penicillin_indpensim.toml"
    s = run_scenario(scenario, out / "penicillin_indpensim_posterior", posterior=cal / "posterior.nc", quiet=True)
    shutil.copyfile(out / "penicillin_indpensim_posterior" / "simulation.png",
                    figures / "penicillin_indpensim_posterior.png")
    q = s["total_product_kg"]
    console.print(f"default IndPenSim recipe, new batch, posterior: total penicillin {q['median']:.0f} kg "
                  f"[90 % {q['q05']:.0f}-{q['q95']:.0f}] -> {figures / 'penicillin_indpensim_posterior.png'}")


def _mount_plant() -> None:
    try:
        from .plants.cli import plant_app
    except ImportError:  # pragma: no cover - the plant group needs pensimpy only when run
        return
    app.add_typer(plant_app, name="plant")


_mount_plant()


def _mount_forecast() -> None:
    from .forecast_cli import register

    register(app)
    from .advise_cli import register as register_advise
    register_advise(app)


_mount_forecast()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
