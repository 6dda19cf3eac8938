"""`twin advise`: re-plan the rest of a running batch from its data so far (see `twin.advise`).

Mounted by `twin.cli` with `register(app)`. Like every command, a `TwinError` becomes one red line
naming the file, field, rule and value, and exit status 2. The three outputs (recipe.csv,
advice.json, advice.png) are written into a temporary folder beside `--out` and moved into it
only when all three are complete: a refused or failed advice leaves `--out` as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .errors import TwinError
from .forecast_cli import _console, _progress, _user_errors
from .units import material_amount

__all__ = ["OUTPUTS", "advise_command", "register"]

OUTPUTS = ("recipe.csv", "advice.json", "advice.png")


@contextlib.contextmanager
def _in_file(path: Path):
    """Name the batch file in errors about the running batch (`batch 'B'` -> `file (batch 'B')`)."""
    try:
        yield
    except TwinError as e:
        if e.where is None or not e.where.startswith("batch '"):
            raise
        raise type(e)(e.rule, where=f"{path} ({e.where})", field=e.field, value=e.value, hint=e.hint) from None


def _optimize_overrides(items):
    """`--set optimize.key=value` items (only the [optimize] table: the model is the posterior's)."""
    from .scenario import parse_overrides

    parsed = parse_overrides(items)
    for k in parsed:
        if not k.startswith("optimize."):
            raise TwinError("advise re-plans with the posterior's model conditioned on the batch; "
                            "only the [optimize] table can be overridden", where="--set", field=k,
                            hint="use optimize.<key>=value, e.g. optimize.draws=8")
    return parsed


def _posterior_identity(path: Path) -> dict:
    import arviz as az

    attrs = dict(az.from_netcdf(str(path)).attrs)
    return {k: attrs.get(k) for k in ("strain", "method", "created", "data_hash", "model_structure")}


def advise_command(
    posterior: Path = typer.Option(..., "--posterior", help="posterior.nc from `twin calibrate`"),
    batch: Path = typer.Option(..., "--batch", help="the running batch's records: a long table "
                               "(batch,time_h,variable,value,unit; CSV or Parquet) or a wide CSV"),
    scenario: Path = typer.Option(..., "--scenario", help="scenario TOML with an optimize table "
                                  "(what may change, bounds, budgets, limits); the strain's model"),
    out: Path = typer.Option(..., "--out", help="output directory (recipe.csv, advice.json, advice.png)"),
    at: Optional[float] = typer.Option(None, "--at", help="use the data up to this time, h "
                                       "(default: all the data in the file)"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="the batch's plan, recipe CSV "
                                          "(default: the scenario's recipe)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override optimize.key=value, "
                                             "e.g. optimize.draws=8 (repeatable)"),
    batch_id: Optional[str] = typer.Option(None, "--batch-id", help="which batch, when the file "
                                           "holds several"),
    strain: Optional[str] = typer.Option(None, "--strain", help="the batch's strain, when the file "
                                         "does not say (checked against the posterior's)"),
    strain_file: Optional[Path] = typer.Option(None, "--strain-file", help="the strain TOML "
                                               "(default: the one the posterior records)"),
    seed: int = typer.Option(0, "--seed", help="random seed (reruns with one seed are identical)"),
    draws: int = typer.Option(200, "--draws", help="posterior draws the conditioning uses (x 10 "
                              "particles each)"),
) -> None:
    """Re-optimise the rest of a running batch: recipe.csv, advice.json (expected gain over
    continuing as planned, and whether to run the advice) and advice.png. Writes nothing if the
    advice breaks a limit."""
    import time

    import jax

    from . import __version__
    from .advise import advise, check_scenario, plot_advice, replan_start
    from .forecast import (
        check_running_batch,
        historical_flows,
        load_strain_posterior,
        read_running_batch,
    )
    from .optimize import load_optimize_spec
    from .recipe import read_recipe_csv, write_recipe_csv
    from .report import write_json
    from .scenario import load_scenario

    t0 = time.perf_counter()
    with _user_errors():
        if draws < 1:
            raise TwinError("must be a whole number >= 1", field="--draws", value=draws)
        overrides = _optimize_overrides(set_)
        with _progress() as prog:
            task = prog.add_task("loading the posterior, the batch and the scenario", total=None)
            post = load_strain_posterior(posterior, strain_file=strain_file)
            with _in_file(batch):
                rec = read_running_batch(batch, batch=batch_id, strain=strain)
            sc = load_scenario(scenario, overrides=overrides)
            check_scenario(post, sc)
            spec = load_optimize_spec(sc)
            span = (0.0, float(sc.duration_h))
            plan = (read_recipe_csv(recipe, defaults=sc.control_defaults, span=span)
                    if recipe is not None else sc.recipe)
            with _in_file(batch):
                at_h = check_running_batch(rec, post, at, t_end=span[1])  # before the slow parts
                replan_start(spec, at_h, dt=float(post.spec.inference["dt"]), t_end=span[1],
                             where=f"batch '{rec.batch}'")
            notes, flows = [], None
            try:
                from calibration.infer import load_history

                history, _ = load_history(post.spec)
                flows = historical_flows(history, dt=float(post.spec.inference["dt"]), t_end=span[1])
            except TwinError as exc:
                notes.append(f"strain history not available ({exc}): controller flows continue at "
                             "their recent level")
            if recipe is None:
                notes.append(f"no --recipe: the plan is the scenario's recipe ({sc.name})")

            def cb(stage, done, total):
                if stage:
                    prog.update(task, description=stage)
                prog.update(task, completed=done or 0, total=total)

            with _in_file(batch):
                adv = advise(post, rec, plan, sc, at=at_h, key=jax.random.PRNGKey(seed), spec=spec,
                             future_flows=flows, n_draws=draws, progress=cb)
        doc = adv.to_dict()
        doc["notes"] = doc["notes"] + notes
        doc["inputs"] = {"posterior": str(posterior), "batch_file": str(batch),
                         "batch_id": rec.batch, "scenario": str(scenario),
                         "overrides": list(set_ or []),
                         "plan": str(recipe) if recipe else f"scenario {sc.name}",
                         "strain_file": str(strain_file) if strain_file else None, "seed": seed,
                         "posterior_draws": draws, "twin_version": __version__,
                         "posterior_attrs": _posterior_identity(posterior),
                         "solver_dt_h": float(post.spec.inference["dt"])}
        doc["wall_s"] = time.perf_counter() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            write_recipe_csv(adv.recipe, tmp / "recipe.csv", units={"aeration": "m3/min"})
            write_json(doc, tmp / "advice.json")
            plot_advice(adv, rec, path=tmp / "advice.png")
            out.mkdir(parents=True, exist_ok=True)
            for name in OUTPUTS:
                os.replace(tmp / name, out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _print(adv, doc, out)


def _print(adv, doc: dict, out: Path) -> None:
    gk, gp = adv.gain_kg, adv.gain_pct
    t = Table(title=f"Batch {adv.batch}: advice at {adv.now_h:g} h, re-planned {adv.start_h:g}-"
                    f"{adv.end_h:g} h ({adv.conditioning['method']}, ESS "
                    f"{adv.conditioning['effective_sample_size']:.0f}; {doc['wall_s']:.0f} s)",
              header_style="bold")
    t.add_column("figure")
    t.add_column("value", justify="right")
    tp = adv.total_product_kg
    t.add_row("total product, advised vs as planned (median)",
              f"{tp['advised']['median']:.0f} vs {tp['plan']['median']:.0f} kg")
    t.add_row("expected gain [90 % interval]",
              f"{gk['mean']:+.1f} kg [{gk['q05']:+.1f}, {gk['q95']:+.1f}] = {gp['mean']:+.2f} % "
              f"[{gp['q05']:+.2f}, {gp['q95']:+.2f}]")
    t.add_row("P(advice beats the plan)", f"{adv.prob_better:.2f}")
    for k, m in adv.material_L.items():
        (used, unit), (left, _), (new, _) = (material_amount(k, m[f]) for f in
                                             ("used_before_replan", "remaining_budget", "advised_remaining"))
        t.add_row(f"{k}: used / left / advised ({unit})", f"{used:.0f} / {left:.0f} / {new:.0f}")
    for k, c in adv.constraints.items():
        t.add_row(f"{k}: worst advised / planned (limit)",
                  f"{c['advised']['worst']:.3g} / {c['plan']['worst']:.3g} ({c['limit']:.3g})")
    _console.print(t)
    if adv.recommended:
        _console.print(f"[bold green]recommendation: run the advice[/] ({adv.recommendation})")
    else:
        _console.print("[bold yellow]recommendation: continue as planned[/] (recipe.csv holds the advice "
                       "for reference)")
    for n in doc["notes"]:
        _console.print(f"note: {n}")
    _console.print(f"note: the gain's interval leaves out {doc['expected_gain']['leaves_out']}")
    _console.print(f"wrote {out / 'recipe.csv'}, {out / 'advice.json'} and {out / 'advice.png'}")


def register(app: typer.Typer) -> None:
    """Add the `advise` command to a typer app (`twin.cli` calls this)."""
    app.command("advise")(advise_command)
