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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import TwinError

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
        err.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err)


def run_scenario(path: Path, out: Path, *, overrides=None, recipe: Path | None = None,
                 quiet: bool = False) -> dict:
    """Simulate one scenario; write trajectories.csv, simulation.png and summary.json into `out`."""
    from .plots import plot_simulation
    from .report import summarize, write_json, write_trajectories
    from .scenario import load_scenario, parse_overrides
    from .simulate import simulate

    sc = load_scenario(path, overrides=parse_overrides(overrides), recipe_path=recipe)
    traj = simulate(sc.model, sc.recipe, sc.y0, 0.0, sc.duration_h, ts=sc.ts, options=sc.options,
                    label=f"scenario '{sc.name}' ({path})")
    wv = float(sc.model.vessel.working_volume)
    summary = summarize(traj, working_volume_L=wv)
    out.mkdir(parents=True, exist_ok=True)
    write_trajectories(traj, out / "trajectories.csv")
    what_if = ", ".join(overrides or []) + (f" recipe={recipe}" if recipe else "")
    plot_simulation(traj, title=f"{sc.title}" + (f"\nwhat-if: {what_if}" if what_if.strip() else ""),
                    path=out / "simulation.png", working_volume_L=wv)
    write_json({"scenario": str(path), "name": sc.name, "overrides": list(overrides or []),
                "recipe": str(recipe) if recipe else None, "summary": summary,
                "sources": sc.sources}, out / "summary.json")
    if not quiet:
        _print_summary(sc.title, summary, out)
    return summary


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
) -> None:
    """Simulate a scenario: trajectories.csv, simulation.png and a summary."""
    with _user_errors():
        run_scenario(scenario, out, overrides=set_, recipe=recipe)


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
) -> None:
    """The main job on the embedded data: simulate every shipped scenario and plot the demo plant history."""
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
) -> None:
    """Calibrate a strain: posterior.nc, summary.csv, fit.png, parameters.png, diagnostics.json."""
    # The CLI is the application shell: it may use `calibration`; twin's library modules never do.
    from calibration.run import run_calibration

    with _user_errors():
        if method is not None and method not in ("nuts", "svi"):
            raise TwinError("must be nuts or svi", field="--method", value=method)
        with _progress() as prog:
            task = prog.add_task("calibrating", total=None)

            def cb(stage, done, total):
                prog.update(task, description=stage, completed=done, total=total)

            result, diag = run_calibration(strain, out, method=method, progress=cb, chains=chains,
                                           warmup=warmup, samples=samples, svi_steps=svi_steps, seed=seed)
        from calibration.diagnostics import summary_table

        table = summary_table(result.idata, diag)
        t = Table(title=f"{result.spec.name}: {result.method.upper()} on {result.data.n_batches} batches "
                        f"in {result.wall_s:.0f} s", header_style="bold")
        for c in ("parameter", "unit", "mean", "5%", "50%", "95%", "r-hat", "ESS"):
            t.add_column(c, justify="right")
        for _, r in table.iterrows():
            t.add_row(r["parameter"], r["unit"], f"{r['mean']:.4g}", f"{r['q05']:.4g}", f"{r['q50']:.4g}",
                      f"{r['q95']:.4g}", f"{r['r_hat']:.3f}", f"{r['ess_bulk']:.0f}")
        console.print(t)
        console.print(f"wrote {out}/posterior.nc, summary.csv, fit.png, parameters.png, diagnostics.json")
        if not diag["ok"]:
            err.print("[red]calibration FAILED its diagnostics:[/red] " + "; ".join(diag["problems"]))
            for a in diag["advice"]:
                err.print(f"  - {a}")
            raise typer.Exit(3)


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


def _mount_plant() -> None:
    try:
        from .plants.cli import plant_app
    except ImportError:  # pragma: no cover - the plant group needs pensimpy only when run
        return
    app.add_typer(plant_app, name="plant")


_mount_plant()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
