"""`twin plant ...`: run the IndPenSim plant (operator history, paired recipe comparisons).

Mounted by `twin.cli` as `app.add_typer(plant_app, name="plant")`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import TwinError

plant_app = typer.Typer(
    help="The IndPenSim industrial penicillin plant (pensimpy): operator histories and paired "
         "recipe trials on plant seeds.",
    no_args_is_help=True,
)

_console = Console()
if _console.width < 124:  # the paired table has 11 columns; let it be read whole in logs and pipes
    _console.width = 124
_err = Console(stderr=True)


def _fail(exc: TwinError) -> None:
    _err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=_err, transient=False)


def _command() -> str:
    args = sys.argv[1:]
    if args and args[0] == "plant":  # run as `twin plant ...` rather than the sub-app alone
        args = args[1:]
    return "twin plant " + " ".join(shlex.quote(a) for a in args)


@plant_app.command("history")
def history(
    n: int = typer.Option(12, "--n", help="number of historical batches"),
    seed: int = typer.Option(0, "--seed", help="history seed; batch i runs on plant seed 1000*seed+i"),
    out: Path = typer.Option(..., "--out", help="output directory (twin.data format)"),
    fmt: str = typer.Option("csv", "--format", help="measurements file format: csv or parquet"),
    duration_h: float = typer.Option(230.0, "--duration-h", hidden=True,
                                     help="batch length (tests only)"),
) -> None:
    """Run N historical batches with operator variation around the default recipe."""
    from .history import generate_history, write_history

    try:
        if fmt not in ("csv", "parquet"):
            raise TwinError("must be csv or parquet", field="--format", value=fmt)
        with _progress() as prog:
            task = prog.add_task("IndPenSim batches", total=n)
            hist = generate_history(n, seed, duration_h=duration_h,
                                    progress=lambda i, b: prog.update(task, advance=1,
                                                                      description=f"batch {b}"))
        write_history(hist, out, seed=seed, command=_command(), fmt=fmt,
                      truth_name="truth.csv" if fmt == "csv" else "truth.parquet")
    except TwinError as exc:
        _fail(exc)
    table = Table(title=f"{n} IndPenSim batches -> {out}")
    for c in ("batch", "plant seed", "penicillin (kg)", "final titer (g/L)", "sugar (kg)",
              "final volume (L)"):
        table.add_column(c, justify="right" if c != "batch" else "left")
    for h in hist:
        t = h.run.totals
        table.add_row(h.run.batch, str(h.run.seed), f"{t['penicillin_total_kg']:.0f}",
                      f"{t['final_titer_g_L']:.2f}", f"{t['sugar_kg']:.0f}",
                      f"{t['final_volume_L']:.0f}")
    _console.print(table)


_SHORT = {"penicillin_total_kg": "d pen %", "sugar_kg": "d sugar %", "oil_L": "d oil %",
          "paa_kg": "d PAA %", "acid_L": "d acid %", "base_L": "d base %",
          "final_volume_L": "d V end %", "peak_volume_L": "d V peak %"}


@plant_app.command("run")
def run(
    recipe: Path = typer.Option(..., "--recipe", help="recipe CSV (variable,start_h,end_h,value,unit[,value_end])"),
    seeds: str = typer.Option("100-109", "--seeds", help="plant seeds: 100-109 or 1,5,7"),
    out: Optional[Path] = typer.Option(None, "--out", help="directory for the CSV and PNG"),
    duration_h: float = typer.Option(230.0, "--duration-h", hidden=True,
                                     help="batch length (tests only)"),
) -> None:
    """Run a recipe on plant seeds, paired against the default recipe on the same seeds."""
    from ..recipe import read_recipe_csv
    from .history import (REPORT_COLUMNS, compare_recipes, parse_seeds, plot_comparison,
                          write_comparison_csv)
    from .indpensim import BATCH_H, check_recipe

    try:
        seed_list = parse_seeds(seeds)
        rec = read_recipe_csv(recipe, span=(0.0, BATCH_H))
        check_recipe(rec, duration_h=duration_h, where=recipe)
        with _progress() as prog:
            task = prog.add_task("seeds (recipe + default)", total=len(seed_list))
            cmp = compare_recipes(rec, seed_list, duration_h=duration_h,
                                  progress=lambda j, s: prog.update(task, advance=1,
                                                                    description=f"seed {s}"))
        if out is not None:
            csv_path = write_comparison_csv(cmp, Path(out) / "plant_run.csv")
            png_path = plot_comparison(cmp, Path(out) / "plant_run.png", recipe_label=recipe.stem)
    except TwinError as exc:
        _fail(exc)
    t = cmp.table
    table = Table(title=f"{recipe.name} vs default recipe, paired on plant seeds {seeds} "
                        "(d: recipe - default, % of default)")
    table.add_column("seed", justify="right")
    table.add_column("pen. kg recipe", justify="right")
    table.add_column("pen. kg default", justify="right")
    for c in REPORT_COLUMNS:
        table.add_column(_SHORT[c], justify="right")
    for _, row in t.iterrows():
        table.add_row(str(int(row["seed"])), f"{row['penicillin_total_kg_recipe']:.1f}",
                      f"{row['penicillin_total_kg_default']:.1f}",
                      *(f"{row[f'{c}_diff_pct']:+.2f}" for c in REPORT_COLUMNS))
    d = cmp.penicillin_diff_pct
    table.add_section()
    table.add_row("mean", f"{t['penicillin_total_kg_recipe'].mean():.1f}",
                  f"{t['penicillin_total_kg_default'].mean():.1f}",
                  *(f"{np.nanmean(t[f'{c}_diff_pct']):+.2f}" for c in REPORT_COLUMNS))
    table.add_row("min", "", "", *(f"{np.nanmin(t[f'{c}_diff_pct']):+.2f}" for c in REPORT_COLUMNS))
    _console.print(table)
    _console.print(f"penicillin total (vessel + harvest draws), paired difference: "
                   f"mean {np.mean(d):+.2f} %, min {np.min(d):+.2f} %, max {np.max(d):+.2f} %")
    if out is not None:
        _console.print(f"wrote {csv_path} and {png_path}")
