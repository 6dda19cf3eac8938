"""`twin forecast`: forecast a running batch's end from its data so far (see `twin.forecast`).

Mounted by `twin.cli` with `register(app)`. Like every command, a `TwinError` becomes one red line
naming the file, field, rule and value, and exit status 2.

The twin's structural error (`twin.forecast.measure_errors`: its forecasts of the strain's own
historical batches against their observed ends) widens and de-biases the forecast. It is measured
once per posterior (a few minutes) and cached beside the posterior file as
`<posterior>.forecast_errors.json`; `--model-only` skips it. Measured with the posterior itself it
is in-sample (the posterior saw those batches' ends) and too small for a new batch late in the
batch; `--error-folds K` measures it leave-batches-out instead (each historical batch forecast by
a posterior calibrated without its fold: K SVI calibrations, kept in `<posterior>.folds/`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .errors import TwinError

__all__ = ["register", "forecast_command", "structural_errors"]

_console = Console()
_err = Console(stderr=True)
ERROR_FRACTIONS = (0.25, 0.5, 0.75)


@contextlib.contextmanager
def _user_errors():
    try:
        yield
    except TwinError as e:
        _err.print(f"[red]error:[/red] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=_err)


def _identity(posterior_path: Path) -> dict:
    """What a cached error measurement must match: the posterior file's provenance."""
    import arviz as az

    attrs = dict(az.from_netcdf(str(posterior_path)).attrs)
    return {k: str(attrs.get(k)) for k in ("strain", "model_structure", "data_hash", "created", "method")}


def structural_errors(post, history, plans, *, posterior_path: Path, progress=None,
                      future_flows=None, n_draws: int = 200, folds: int = 0, log=None):
    """The twin's structural forecast error for this posterior: read from the cache beside the
    posterior file when it matches, else measured on `history` and cached (if writable); with
    `folds` >= 2 leave-batches-out (`twin.forecast.leave_out_posteriors`)."""
    import hashlib

    from .forecast import ForecastErrors, leave_out_posteriors, measure_errors

    cache = posterior_path.with_name(posterior_path.name + ".forecast_errors.json")
    base = _identity(posterior_path)
    ident = {**base, "fractions": list(ERROR_FRACTIONS),
             "batches": sorted(history.batch_ids), "n_draws": n_draws, "combined_with_history": True,
             "structural_estimator": "heteroscedastic posterior (2)"}
    if folds:
        ident["folds"] = int(folds)
    if cache.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            saved = json.loads(cache.read_text())
            if saved.get("identity") == ident:
                return ForecastErrors.from_dict(saved["errors"])
    held_out = {}
    if folds:
        tag = hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()[:12]
        folder = posterior_path.with_name(posterior_path.name + ".folds") / tag
        held_out = leave_out_posteriors(post.spec, history, folds, directory=folder, log=log)
    errors = measure_errors(post, history, plans, fractions=ERROR_FRACTIONS, progress=progress,
                            future_flows=future_flows, n_draws=n_draws, posteriors=held_out)
    with contextlib.suppress(OSError):
        from .io import atomic_write_text

        atomic_write_text(cache, json.dumps({"identity": ident, "errors": errors.to_dict()}))
    return errors


def forecast_command(
    posterior: Path = typer.Option(..., "--posterior", help="posterior.nc from `twin calibrate`"),
    batch: Path = typer.Option(..., "--batch", help="the running batch's records: a long table "
                               "(batch,time_h,variable,value,unit; CSV or Parquet) or a wide CSV "
                               "(time_h,product_g_L,...)"),
    out: Path = typer.Option(..., "--out", help="output directory (forecast.json, forecast.png)"),
    at: Optional[float] = typer.Option(None, "--at", help="forecast from the data up to this time, h "
                                       "(default: all the data in the file)"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="the batch's recipe CSV, what will "
                                          "be done for the rest of the batch (default: the strain "
                                          "scenario's recipe)"),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="report the probability of "
                                            "ending below this: a final titer ('25 g/L') or a "
                                            "total product ('3000 kg')"),
    batch_id: Optional[str] = typer.Option(None, "--batch-id", help="which batch, when the file "
                                           "holds several"),
    strain: Optional[str] = typer.Option(None, "--strain", help="the batch's strain, when the file "
                                         "does not say (checked against the posterior's)"),
    strain_file: Optional[Path] = typer.Option(None, "--strain-file", help="the strain TOML (default: "
                                               "the one the posterior records)"),
    structural: bool = typer.Option(True, "--structural/--model-only", help="widen and de-bias with "
                                    "the twin's error measured on the strain's history (default), "
                                    "or the model's own uncertainty only"),
    seed: int = typer.Option(0, "--seed", help="random seed (reruns with one seed are identical)"),
    draws: int = typer.Option(200, "--draws", help="posterior draws the forecast uses (x 10 "
                              "particles each)"),
    error_folds: int = typer.Option(0, "--error-folds", help="measure the structural error "
                                    "leave-batches-out with this many folds (K SVI calibrations, "
                                    "once per posterior); 0: in-sample"),
) -> None:
    """Forecast a running batch's final titer and total product from its data so far."""
    import jax

    from .forecast import (
        forecast,
        historical_flows,
        load_strain_posterior,
        parse_threshold,
        read_running_batch,
    )
    from .forecast_plots import plot_forecast
    from .recipe import read_recipe_csv
    from .report import write_json

    with _user_errors():
        thr = parse_threshold(threshold) if threshold is not None else None
        if draws < 1:
            raise TwinError("must be a whole number >= 1", field="--draws", value=draws)
        if error_folds == 1 or error_folds < 0:
            raise TwinError("must be 0 (in-sample) or >= 2", field="--error-folds", value=error_folds)
        with _progress() as prog:
            task = prog.add_task("loading the posterior", total=None)
            post = load_strain_posterior(posterior, strain_file=strain_file)
            rec = read_running_batch(batch, batch=batch_id, strain=strain)
            sc = post.spec.scenario
            span = (0.0, float(sc.duration_h))
            plan = (read_recipe_csv(recipe, defaults=sc.control_defaults, span=span)
                    if recipe is not None else sc.recipe)
            from .forecast import check_running_batch

            at_h = check_running_batch(rec, post, at, t_end=span[1])  # before the slow parts
            history, plans, flows, errors, notes = None, None, None, None, []
            try:
                from calibration.infer import load_history

                history, plans = load_history(post.spec)
                flows = historical_flows(history, dt=float(post.spec.inference["dt"]), t_end=span[1])
            except TwinError as exc:
                notes.append(f"strain history not available ({exc}): controller flows continue at "
                             "their recent level; no structural error")
            if recipe is None:
                notes.append(f"no --recipe: the rest of the batch follows the scenario's recipe "
                             f"({sc.name})")
            if structural and history is not None:
                prog.update(task, description="measuring the twin's forecast error on "
                                              f"{len(history)} historical batches (once per posterior)")

                def cb(done, total):
                    prog.update(task, completed=done, total=total)

                if error_folds:
                    prog.update(task, description=f"calibrating {error_folds} leave-batches-out "
                                                  "posteriors (once per posterior)")
                errors = structural_errors(post, history, plans, posterior_path=Path(posterior),
                                           progress=cb, future_flows=flows, n_draws=draws,
                                           folds=error_folds)
            prog.update(task, description=f"forecasting at {at_h:g} h", completed=0, total=None)
            fc = forecast(post, rec, plan, at=at_h, key=jax.random.PRNGKey(seed), threshold=thr,
                          errors=errors, future_flows=flows, n_draws=draws)
        out.mkdir(parents=True, exist_ok=True)
        doc = fc.to_dict()
        doc["notes"] = doc["notes"] + notes
        doc["inputs"] = {"posterior": str(posterior), "batch_file": str(batch),
                         "recipe": str(recipe) if recipe else f"scenario {sc.name}",
                         "seed": seed, "structural_error": bool(errors is not None),
                         "structural_error_source": errors.source if errors is not None else None}
        if errors is not None and errors.loo_coverage90 is not None:
            doc["structural_error_check"] = {
                "what": "leave-one-out coverage of the 90 % interval on the batches the structural "
                        "error was measured on (each batch against the error fitted on the others)",
                "fractions": list(errors.fractions),
                **{q: [float(c) for c in v] for q, v in errors.loo_coverage90.items()}}
        write_json(doc, out / "forecast.json")
        plot_forecast(fc, rec, path=out / "forecast.png", history=history)
    _print(fc, out, doc["notes"])


def _print(fc, out: Path, notes) -> None:
    t = Table(title=f"Batch {fc.batch}: forecast at {fc.at_h:g} h of {fc.end_h:g} h "
                    f"({fc.method}, ESS {fc.ess:.0f}, {fc.wall_s:.1f} s)", header_style="bold")
    for c in ("figure", "median", "50 % interval", "90 % interval"):
        t.add_column(c, justify="right")
    for name, q, fmt in (("final titer (g/L)", fc.final_titer_g_L, "{:.2f}"),
                         ("total product, vessel + drawn (kg)", fc.total_product_kg, "{:.0f}"),
                         ("time of peak productivity (h)", fc.peak_productivity_h, "{:.0f}")):
        f = fmt.format
        t.add_row(name, f(q["median"]), f"{f(q['q25'])}-{f(q['q75'])}", f"{f(q['q05'])}-{f(q['q95'])}")
    _console.print(t)
    if fc.threshold is not None:
        _console.print(f"probability of ending below {fc.threshold.text}: {fc.prob_below:.2f}")
    if fc.data_fit["warning"]:
        _err.print(f"[yellow]warning:[/yellow] {fc.data_fit['warning']}", markup=True,
                   highlight=False, soft_wrap=True)
        notes = [n for n in notes if n != fc.data_fit["warning"]]
    for n in notes:
        _console.print(f"note: {n}")
    _console.print(f"wrote {out / 'forecast.json'} and {out / 'forecast.png'}")


def register(app: typer.Typer) -> None:
    """Add the `forecast` command to a typer app (`twin.cli` calls this)."""
    app.command("forecast")(forecast_command)
