r"""Forecast a running batch: condition the strain posterior on the batch's data so far, predict the end.

A strain posterior (from `twin calibrate`) holds draws of the strain-level parameters
$\theta$ (log-scale $z$, batch-effect SDs $\tau$, noise scales $a_v, c_v$). A *new* batch $b$ has
its own random effects, which are what its early data inform: the log batch effects
$\epsilon_b$ (for the parameters the strain file lists under `[batch_effects]`) and the
initial-state deviations $\eta_b$ (`[initial]`), both $N(0, I)$ a priori. The forecast is the
posterior predictive of the end of the batch given its data $y_{\le t}$ up to the forecast time $t$:

$$p(q \mid y_{\le t}) = \int p(q \mid \theta, \epsilon, \eta)\,
   p(\epsilon, \eta, \theta \mid y_{\le t})\,d\theta\,d\epsilon\,d\eta,\qquad
   p(\epsilon, \eta, \theta \mid y_{\le t}) \propto p(y_{\le t}\mid\theta,\epsilon,\eta)\,
   N(\epsilon, \eta; 0, I)\,p(\theta \mid \text{history}),$$

with the calibration's error scale $s = \sqrt{a_v^2 + (c_v \hat y)^2}$ for each assay the strain
file observes (thinned to `every_h` as in calibration), but Student-t errors with `ROBUST_DF` = 4
degrees of freedom instead of normal ones: plant assays have isolated wild values (a sugar
reading of 1.4 g/L where the twin and the neighbouring assays say 0), and under a normal
likelihood one of them, at 24 SDs, outweighs everything else the batch shows. $q$ is the final titer, the
total product (in the vessel plus drawn off with harvest draws, the `Ledger`), and the time of
peak productivity (the hour in which the total product grows fastest).

The batch's own effects are conditioned on its data for each posterior draw of the strain
parameters, which keep the distribution the history gave them (a "cut" posterior: one running
batch's partial data do not move the strain, and a misfit of this batch cannot distort it):

1. `"laplace-importance"`: for each of `n_draws` draws, the mode of the batch's own effects by
   Levenberg-Marquardt (Jacobians by central differences: every evaluation is a forward
   simulation, no gradient compilation), a Student-t proposal with the Gauss-Newton covariance,
   `per_draw` particles importance-weighted against the exact conditional. The effective sample
   size (ESS) of the weights is reported.
2. `"laplace-importance, refitted"`: if the ESS is below `min_ess`, each draw's proposal is
   refitted to its weighted particles and sampled again.
3. `"nuts"`: if the ESS stays below `min_ess`, NUTS on the full conditional (the strain
   parameters from a Gaussian fit to their draws, reweighted by this batch too), slower (a
   gradient compilation and hundreds of gradient evaluations). `Forecast.notes` says so.

The model's own uncertainty leaves out its structural error (the twin is not the plant).
`measure_errors` measures that error on batches with known ends (the strain's history: each
forecast at a fraction of the batch from its own data against its observed end) and
`forecast(..., errors=...)` widens and de-biases the forecast by it (see `ForecastErrors`).
Measured with the posterior those batches were calibrated on it is in-sample, and too small for
a new batch; `leave_out_posteriors` gives each historical batch a posterior calibrated without
it (k folds), and `measure_errors(..., posteriors=...)` measures the error a new batch meets.

Every particle is one simulation of the whole batch on the calibration's fixed grid
(`FixedGrid(dt)`), all particles at once with `jax.vmap`. The recipe of the running batch is its
historian record up to $t$ (sugar, oil, precursor, water with acid and base, draws, aeration;
held over each sampling interval) and the plan after $t$; flows that the plant's own controllers
decide (the precursor feed and the acid and base added for pH) continue at their mean over the
last `recent_h` hours, or as `future_flows` gives them (`historical_flows`: the history's median).

The total product counts the broth the plant's volume record counts: each particle's vessel
volume is scaled to the record over the last `VOLUME_ANCHOR_H` hours (`volume_anchor`; no fitted
parameter moves the twin's volume, and IndPenSim's volume balance leaves out the oil feed, about
5 % of the broth: without the anchor the twin over-forecast the plant's total by about 5 %).

The posterior is read with `calibration.infer.load_posterior`, which is the one place this module
reaches into `calibration` (imported inside the functions that need it, so `import twin` never
imports `calibration`).

Reference: A. Gelman et al. (2013) Bayesian Data Analysis, 3rd ed., ch. 10 (importance
sampling, effective sample size), ch. 13 (Laplace approximation) and 17.2 (Student-t errors);
K. L. Lange, R. J. A. Little, J. M. G. Taylor (1989) Robust statistical modeling using the t
distribution, JASA 84:881; M. Plummer (2015) Cuts in
Bayesian graphical models, Stat Comput 25:37 (cut posteriors); M. C. Kennedy, A. O'Hagan (2001)
Bayesian calibration of computer models, JRSS B 63:425 (model discrepancy).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import NamedTuple
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import special

from ._custom_types import Array, Float
from .data import BatchRecord, load_batches, read_wide_csv
from .errors import DataError, ParameterError, TwinError
from .reactor import FermentationModel, set_parameters
from .recipe import Profile, Recipe
from .simulate import FixedGrid, grid_slope, simulate
from .state import CONTROL_VARIABLES, ReactorState

__all__ = [
    "ForecastError", "StrainPosterior", "load_strain_posterior", "read_running_batch",
    "check_running_batch", "running_recipe", "Threshold", "parse_threshold", "Conditioned",
    "condition", "Forecast", "forecast", "MIN_PRODUCT_ASSAYS", "OnlineSignal", "ONLINE_VARIABLES",
    "ForecastErrors", "measure_errors", "leave_out_posteriors", "historical_flows", "observed_totals",
]

MIN_PRODUCT_ASSAYS = 2
"""A running batch needs at least this many product assays up to the forecast time."""

ROBUST_DF = 4.0
"""Degrees of freedom of the Student-t errors the forecast conditions on (see the module
docstring): an isolated wild assay, or a moment the twin cannot follow, weighs like a few SDs,
not like its square."""
_T_CONST = float(math.lgamma((ROBUST_DF + 1) / 2) - math.lgamma(ROBUST_DF / 2)
                 - 0.5 * math.log(ROBUST_DF * math.pi))

MISFIT_MSR = 4.0
MISFIT_EFFECT_SD = 4.0
LATEST_ALARM_SD = 3.0
"""`Forecast.data_fit` warns above these (mean squared standardised residual; batch effects in
prior SDs; both of the latest two titer assays beyond this many SDs on one side): the
conditioned twin does not reproduce the batch's data."""

VOLUME_ANCHOR_H = 12.0
"""`forecast(volume_anchor=True)` compares the twin's volume with the record over this many hours
up to the forecast time (one noisy reading would move the whole forecast)."""

_FLOWS = ("substrate_feed", "oil_feed", "precursor_feed", "water_feed", "draw")
_RECORDED_SETPOINTS = ("aeration",)


class ForecastError(TwinError):
    """A running batch or request that cannot be forecast (too few data, wrong strain, ...)."""


# ---------------------------------------------------------------------------------------------
# The strain posterior


@dataclasses.dataclass(frozen=True)
class StrainPosterior:
    """Posterior draws of a strain, with the strain file they belong to.

    Attributes:
        spec: the strain (`calibration.spec.StrainSpec`): model, priors, observations, dt.
        draws: `{site: (draws, ...)}` as `calibration.diagnostics.flat_draws` returns them; the
            sites used are `z_<p>`, `tau_<p>`, `sd_<v>`, `cv_<v>`, `timing_<v>`.
        strain: strain name the posterior was made for.
        method: `"nuts"` or `"svi"`.
        source: where it came from (a path, or a description).
    """

    spec: object
    draws: dict
    strain: str
    method: str = "nuts"
    source: str = ""

    @property
    def n_draws(self) -> int:
        return int(next(iter(self.draws.values())).shape[0])


def load_strain_posterior(path, *, strain_file=None, max_draws: int | None = None,
                          seed: int = 0) -> StrainPosterior:
    """Read a posterior written by `twin calibrate` and the strain file it was made from.

    Args:
        path: `posterior.nc`.
        strain_file: the strain TOML (default: the one the posterior records, looked up as
            written and relative to the repository). Its inference `dt` is replaced by the one
            the posterior records (the grid its draws were fitted on), if they differ.
        max_draws: keep at most this many draws (a random subset, `seed`).

    Raises:
        ForecastError: the strain file cannot be found or names another strain.
        calibration.infer.PosteriorError: not a posterior, or one made for another model
            structure (checked against the strain's scenario model).
    """
    from calibration.diagnostics import flat_draws
    from calibration.infer import check_noise_sites, load_posterior
    from calibration.spec import load_strain

    path = Path(path)
    idata = load_posterior(path)
    attrs = dict(idata.attrs)
    recorded = attrs.get("strain_file")
    if strain_file is None:
        cands = [Path(recorded)] if recorded else []
        if recorded and not Path(recorded).is_absolute():
            cands.append(Path(__file__).resolve().parents[1] / recorded)
        found = [c for c in cands if c.is_file()]
        if not found:
            raise ForecastError("the strain file this posterior was made from is not found",
                                where=path, field="strain_file", value=recorded,
                                hint="give it with --strain-file")
        strain_file = found[0]
    spec = load_strain(strain_file)
    if spec.name != attrs.get("strain"):
        raise ForecastError(f"the posterior is for strain '{attrs.get('strain')}' but the strain "
                            f"file is for '{spec.name}'", where=path, field="strain",
                            value=str(strain_file))
    load_posterior(path, model=spec.scenario.model)  # refuse another model structure
    check_noise_sites(spec, idata, path)  # and another observation model
    if "dt" in attrs and float(attrs["dt"]) != float(spec.inference["dt"]):
        # simulate on the grid the posterior was calibrated on, not the strain file's current one
        spec = dataclasses.replace(spec, inference={**spec.inference, "dt": float(attrs["dt"])})
    draws = flat_draws(idata, max_draws, seed=seed)
    return StrainPosterior(spec=spec, draws=draws, strain=spec.name,
                           method=str(attrs.get("method", "nuts")), source=str(path))


# ---------------------------------------------------------------------------------------------
# The running batch


def _check_order_long(df: pd.DataFrame, where) -> None:
    """Times must increase within each (batch, variable) in the order the file lists them."""
    t = pd.to_numeric(df["time_h"], errors="coerce")
    key = df["batch"].astype(str) + "\0" + df["variable"].astype(str)
    prev = t.groupby(key, sort=False).shift(1)
    bad = np.flatnonzero((t < prev).to_numpy())
    if bad.size:
        i = int(bad[0])
        row = i + 2 if str(where).endswith(".csv") else i + 1
        raise DataError(f"times out of order: {df['variable'].iloc[i]} at {float(t.iloc[i]):g} h "
                        f"comes after {float(prev.iloc[i]):g} h", where=f"{where} row {row}",
                        field="time_h", value=float(t.iloc[i]),
                        hint="a running batch's records must be in time order; sort the export "
                             "by time or check the historian's clock")


def read_running_batch(path, *, batch: str | None = None, strain: str | None = None) -> BatchRecord:
    """Read a running batch's records: a long table (`batch,time_h,variable,value[,unit,source]`,
    CSV or Parquet, with `batches.csv` beside it if there is one) or a wide CSV (`time_h` and one
    column per variable with its unit, e.g. `product_g_L`).

    Args:
        path: the file.
        batch: which batch, when a long table holds several.
        strain: the strain, when the file does not say (wide CSV, no batches table).

    Raises:
        DataError: anything `twin.data` rejects; times out of order (within a variable, in the
            order the file lists them); several batches and no `batch`; `strain` contradicting
            the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("running batch file not found", where=path)
    if path.suffix.lower() == ".parquet":
        head = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        try:
            head = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (ValueError, OSError) as exc:
            raise DataError(f"unreadable csv file: {exc}", where=path) from None
        head.columns = [str(c).strip() for c in head.columns]
    else:
        raise DataError("a running batch is a .csv or .parquet file", where=path, value=path.suffix)
    if {"variable", "value"} <= set(head.columns):
        if {"batch", "time_h"} <= set(head.columns):
            _check_order_long(head, path)
        bs = load_batches(path)
        ids = bs.batch_ids
        if batch is None:
            if len(ids) != 1:
                raise DataError("the file holds several batches; say which one is running",
                                where=path, field="batch", value=ids, hint="give --batch-id")
            batch = ids[0]
        rec = bs[batch]
    else:
        rec = read_wide_csv(path, batch=batch or path.stem, strain=strain or "unknown")
    if strain is not None and rec.strain not in ("unknown", strain):
        raise DataError(f"the file says the batch is strain '{rec.strain}'", where=path,
                        field="strain", value=strain)
    if strain is not None and rec.strain == "unknown":
        rec = dataclasses.replace(rec, strain=strain)
    return rec


def _product_assays(record: BatchRecord, at: float) -> np.ndarray:
    if "product" not in record.variables():
        return np.zeros(0)
    t, v = record.series("product")
    return t[(t <= at + 1e-9) & np.isfinite(v)]


def check_running_batch(record: BatchRecord, posterior: StrainPosterior, at: float | None,
                        *, t_end: float) -> float:
    """Check that `record` can be forecast at `at` (default: its last measurement); return `at`.

    Raises:
        ForecastError: another strain than the posterior's; `at` or a measurement after the
            batch's end; `at` not a number >= 0; fewer than `MIN_PRODUCT_ASSAYS` product assays
            up to `at`.
    """
    where = f"batch '{record.batch}'"
    if record.strain not in ("unknown", posterior.strain):
        raise ForecastError(f"the batch is strain '{record.strain}' but the posterior is for "
                            f"strain '{posterior.strain}'", where=where, field="strain",
                            value=record.strain,
                            hint="forecast with the posterior of this batch's strain")
    last = record.end_h
    if last > t_end + 1e-9:
        raise ForecastError(f"the batch has measurements after its end ({t_end:g} h)", where=where,
                            field="time_h", value=last,
                            hint="the plan (recipe) ends there; give the recipe the batch runs")
    if at is None:
        at = last
    try:
        at = float(at)
    except (TypeError, ValueError):
        raise ForecastError("must be a number of hours", where=where, field="at", value=at) from None
    if not math.isfinite(at) or at < 0:
        raise ForecastError("must be a time >= 0 h", where=where, field="at", value=at)
    if at > t_end + 1e-9:
        raise ForecastError(f"the forecast time is beyond the end of the batch ({t_end:g} h)",
                            where=where, field="at", value=at)
    n = _product_assays(record, at).size
    if n < MIN_PRODUCT_ASSAYS:
        raise ForecastError(f"too few data to forecast: {n} product assay(s) up to {at:g} h, the "
                            f"model needs at least {MIN_PRODUCT_ASSAYS}", where=where,
                            field="product", value=n,
                            hint="forecast later, or check that the titer assays are in the file")
    return at


def _hold(t: np.ndarray, v: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Zero-order hold of samples (t, v) at `grid` (the last sample at or before each time;
    before the first sample, the first value)."""
    i = np.clip(np.searchsorted(t, grid + 1e-9, side="right") - 1, 0, len(t) - 1)
    return v[i]


def _step_means(profile: Profile, edges: np.ndarray) -> np.ndarray:
    """Mean of a profile over each interval `[edges[i], edges[i+1]]` (exact; NumPy, as
    `Profile.integral`). After the profile's end its last end value holds."""
    start, stop = np.asarray(profile.start, float), np.asarray(profile.stops, float)
    v0, v1 = np.asarray(profile.value, float), np.asarray(profile.value_end, float)
    a = np.maximum(start[None, :], edges[:-1, None])
    b = np.minimum(stop[None, :], edges[1:, None])
    width = np.maximum(b - a, 0.0)
    mid = 0.5 * (a + b)
    slope = (v1 - v0) / np.maximum(stop - start, 1e-12)
    total = np.sum(width * (v0 + slope * (mid - start)), axis=1)
    after = np.maximum(edges[1:] - np.maximum(edges[:-1], stop[-1]), 0.0)
    before = np.maximum(np.minimum(edges[1:], start[0]) - edges[:-1], 0.0)
    total = total + after * v1[-1] + before * v0[0]
    return total / (edges[1:] - edges[:-1])


def running_recipe(record: BatchRecord, plan: Recipe, at: float, *, dt: float, t_end: float,
                   recent_h: float = 24.0,
                   future_flows: Mapping[str, np.ndarray] | None = None) -> Recipe:
    """The recipe of a running batch on the grid `0, dt, ..., t_end`: what the historian recorded
    before `at`, the plan after it.

    Every variable becomes one constant phase per grid step (so the recipe has the same shape for
    every batch and forecast time, and one compiled simulation serves them all). Before `at`:
    recorded flows (`substrate_feed`, `oil_feed`, `precursor_feed`, `water_feed` plus
    `acid_flow` and `base_flow`, `draw`) and `aeration`, held from each sample to the next; after
    `at`, or where a variable was not recorded: the plan's mean over the step (material totals
    are kept). The flows the plant's controllers decide (precursor feed; acid and base, which
    count as water) continue after `at` at their mean over the last `recent_h` hours, unless
    `future_flows` gives `{"precursor_feed": (steps,), "pH_flows": (steps,)}` in L/h. Where the
    precursor feed is recorded, the plan's precursor loop is off (`precursor_setpoint` 0) over
    the whole batch, past and future alike.

    Args:
        record: the running batch (internal units).
        plan: its recipe (covering `[0, t_end]`).
        at: forecast time, h.
        dt: grid step, h (the strain's inference `dt`).
        t_end: end of the batch, h.
    """
    edges = np.arange(0.0, t_end + dt / 2, dt)
    if edges[-1] < t_end - 1e-9:
        edges = np.append(edges, t_end)
    starts = edges[:-1]
    past = starts < at - 1e-9
    have = set(record.variables())
    profiles = {}
    recent = (starts >= at - recent_h) & past

    def recorded(var):
        t, v = record.series(var)
        sel = t <= at + 1e-9
        return (t[sel], np.maximum(v[sel], 0.0)) if sel.any() else None

    ph_past = np.zeros_like(starts)
    for extra in ("acid_flow", "base_flow"):
        if extra in have and (r := recorded(extra)) is not None:
            ph_past = ph_past + _hold(*r, starts)
    for var in CONTROL_VARIABLES:
        vals = _step_means(plan.profiles[var], edges)
        if var in _FLOWS or var in _RECORDED_SETPOINTS:
            r = recorded(var) if var in have else None
            if r is not None:
                rec = _hold(*r, starts)
                if var == "water_feed":
                    rec = rec + ph_past
                vals = np.where(past, rec, vals)
            future = ~past
            if var == "precursor_feed" and r is not None:
                fut = (future_flows or {}).get("precursor_feed")
                level = float(np.mean(rec[recent])) if recent.any() else float(rec[past][-1]) if past.any() else 0.0
                vals = np.where(future, level if fut is None else np.asarray(fut), vals)
            if var == "water_feed":
                fut = (future_flows or {}).get("pH_flows")
                level = float(np.mean(ph_past[recent])) if recent.any() else 0.0
                vals = np.where(future, vals + (level if fut is None else np.asarray(fut)), vals)
        if var == "precursor_setpoint" and "precursor_feed" in have:
            vals = np.zeros_like(vals)  # the precursor flows above are the loop's: no loop on top
        v = jnp.asarray(vals, dtype=float)
        profiles[var] = Profile(jnp.asarray(starts), jnp.asarray(float(edges[-1])), v, v)
    return Recipe(profiles)


def historical_flows(history, *, dt: float, t_end: float) -> dict[str, np.ndarray]:
    """The median over `history` (a `BatchSet`) of the flows the plant's controllers decide, per
    grid step: `{"precursor_feed": (steps,), "pH_flows": (steps,)}` in L/h (acid + base), for
    `running_recipe(future_flows=...)`. A batch that did not record a flow counts as zero."""
    starts = np.arange(0.0, t_end - 1e-9, dt)
    rows = {"precursor_feed": [], "pH_flows": []}
    for rec in history:
        have = set(rec.variables())
        rows["precursor_feed"].append(_hold(*rec.series("precursor_feed"), starts)
                                      if "precursor_feed" in have else np.zeros_like(starts))
        ph = np.zeros_like(starts)
        for v in ("acid_flow", "base_flow"):
            if v in have:
                ph = ph + _hold(*rec.series(v), starts)
        rows["pH_flows"].append(ph)
    return {k: np.median(np.stack(v), axis=0) for k, v in rows.items()}


# ---------------------------------------------------------------------------------------------
# Thresholds


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A level to report the probability of ending below: final titer (g/L) or total product (g)."""

    quantity: str  # "final_titer" or "total_product"
    value: float  # internal unit: g/L or g
    text: str  # as the user gave it


def parse_threshold(text: str) -> Threshold:
    """Parse `"25 g/L"` (final titer) or `"3000 kg"` (total product) into a `Threshold`.

    Raises:
        ParameterError: not `VALUE UNIT`, or a unit that is neither a concentration nor a mass.
    """
    from .units import lookup, to_internal

    parts = str(text).replace("_", " ").split()
    if len(parts) == 1:  # "25g/L"
        s = parts[0]
        k = 0
        while k < len(s) and (s[k].isdigit() or s[k] in ".eE+-"):
            k += 1
        parts = [s[:k], s[k:]] if 0 < k < len(s) else parts
    try:
        value = float(parts[0])
        unit = lookup(parts[1]) if len(parts) == 2 else None
    except (ValueError, TwinError):
        unit = None
    if unit is None or unit.dimension not in ("concentration", "mass") or not math.isfinite(value):
        raise ParameterError("a threshold is a final titer or a total product with its unit, "
                             "for example '25 g/L' or '3000 kg'", field="threshold", value=text)
    return Threshold("final_titer" if unit.dimension == "concentration" else "total_product",
                     float(to_internal(value, unit.name, unit.dimension)), str(text))


# ---------------------------------------------------------------------------------------------
# The conditional problem


ONLINE_VARIABLES = ("oxygen_uptake_rate", "dissolved_oxygen", "volume")
"""Online records the twin predicts and a forecast can condition on (`OnlineSignal`)."""


@dataclasses.dataclass(frozen=True)
class OnlineSignal:
    r"""An online record the forecast conditions on besides the strain's assays, with an error
    scale of its own (the posterior has none for it): $s = \sqrt{sd^2 + (cv\,\hat y)^2}$,
    Student-t as the assays, thinned to one record every `every_h` hours.

    The oxygen uptake rate (off-gas balance, every hour on a plant) carries the biomass's
    activity before the titer does. Its error scale is mostly the twin's structural mismatch, not
    the analyser's noise: keep `cv` at the twin's typical misfit (about 0.1-0.2), and `every_h`
    coarse, so that a long record does not outweigh the assays. (On 12 IndPenSim development
    batches, seeds 300-311, conditioning on it with cv 0.15 every 6 h did not improve the 57 h or
    115 h forecast: MAPE 6.8 vs 6.5 % and 6.5 vs 6.3 %; the twin's uptake departs from the
    plant's by 10-30 % in ways its batch effects cannot follow. It is not used by default.)

    Raises:
        ParameterError: a variable the twin does not predict, scales < 0 (both 0), `every_h` <= 0.
    """

    variable: str
    sd: float = 0.0
    cv: float = 0.15
    every_h: float = 6.0

    def __post_init__(self):
        if self.variable not in ONLINE_VARIABLES:
            raise ParameterError(f"the twin predicts these online records: "
                                 f"{', '.join(ONLINE_VARIABLES)}", field="variable",
                                 value=self.variable)
        if not (self.sd >= 0 and self.cv >= 0 and self.sd + self.cv > 0):
            raise ParameterError("error scales must be >= 0 and not both 0",
                                 field="sd, cv", value=(self.sd, self.cv))
        if not self.every_h > 0:
            raise ParameterError("must be > 0 h", field="every_h", value=self.every_h)



@dataclasses.dataclass(frozen=True)
class _Sites:
    """Names of the unconstrained coordinates: globals (from the posterior) and the batch's own."""

    z: tuple[str, ...]  # prior keys (z_<key>)
    tau: tuple[str, ...]  # batch-effect keys (log tau_<key>)
    noise: tuple[str, ...]  # "sd_<v>" / "cv_<v>" / "timing_<v>" (log)
    eps: tuple[str, ...]  # batch effects of this batch
    eta: tuple[str, ...]  # initial-state deviations of this batch

    @classmethod
    def of(cls, spec) -> _Sites:
        return cls(tuple(p.key for p in spec.priors), tuple(spec.batch_effects), spec.noise_sites,
                   tuple(spec.batch_effects), tuple(spec.initial))

    @property
    def n_global(self) -> int:
        return len(self.z) + len(self.tau) + len(self.noise)

    @property
    def n_local(self) -> int:
        return len(self.eps) + len(self.eta)

    def globals_from_draws(self, draws: dict) -> np.ndarray:
        cols = [np.asarray(draws[f"z_{k}"]) for k in self.z]
        cols += [np.log(np.asarray(draws[f"tau_{k}"])) for k in self.tau]
        cols += [np.log(np.asarray(draws[n])) for n in self.noise]
        return np.stack(cols, axis=-1).astype(float)


class _Problem(eqx.Module):
    """One running batch: what a particle needs to be simulated and scored (arrays + structure)."""

    model: FermentationModel
    recipe: Recipe
    y0: ReactorState
    grid: Float[Array, " grid"]
    obs_t: dict
    obs_y: dict
    obs_m: dict
    fixed_noise: dict  # {online variable: (sd, cv)} of `OnlineSignal`s (not from the posterior)
    floors: dict  # {variable: floor} where readings at or below it are left-censored (the strain's)
    log_median: Float[Array, " params"]
    log_sd: Float[Array, " params"]
    names: tuple[str, ...] = eqx.field(static=True)
    keys: tuple[str, ...] = eqx.field(static=True)
    be_index: tuple[int, ...] = eqx.field(static=True)
    init_sd: tuple[float, ...] = eqx.field(static=True)
    sites: _Sites = eqx.field(static=True)
    dt: float = eqx.field(static=True)
    t_end: float = eqx.field(static=True)


def _build_problem(posterior: StrainPosterior, record: BatchRecord, recipe: Recipe, at: float,
                   t_end: float, online: tuple[OnlineSignal, ...] = ()) -> _Problem:
    from calibration.model import _initial_state, _thin

    spec = posterior.spec
    dt = float(spec.inference["dt"])
    sites = _Sites.of(spec)
    obs_t, obs_y, obs_m = {}, {}, {}
    have = set(record.variables())
    n_grid = int(math.ceil(t_end / dt - 1e-9)) + 1
    fixed_noise = {}
    for o in (*spec.observations, *online):
        if isinstance(o, OnlineSignal):
            if o.variable in {ob.variable for ob in spec.observations}:
                raise ForecastError("the strain already observes this variable (its noise comes "
                                    "from the posterior)", field="online", value=o.variable)
            fixed_noise[o.variable] = jnp.asarray([o.sd, o.cv], dtype=float)
        t, y = (record.series(o.variable) if o.variable in have else (np.zeros(0), np.zeros(0)))
        sel = (t <= at + 1e-9) & np.isfinite(y)
        t, y = t[sel], y[sel]
        if o.every_h > 0 and t.size:
            keep = _thin(t, o.every_h)
            t, y = t[keep], y[keep]
        n = n_grid  # padded to one size: one compilation serves every forecast time
        while n < t.size:
            n *= 2
        T, Y, M = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
        T[: t.size], Y[: t.size], M[: t.size] = t, y, True
        obs_t[o.variable], obs_y[o.variable], obs_m[o.variable] = (jnp.asarray(T), jnp.asarray(Y),
                                                                   jnp.asarray(M))
    grid = jnp.arange(0.0, t_end + dt / 2, dt)
    floors = {v: jnp.asarray(f, dtype=float) for v, f in spec.floors.items() if v in obs_t}
    return _Problem(model=spec.scenario.model, recipe=recipe, y0=_initial_state(record, spec.scenario),
                    grid=grid, obs_t=obs_t, obs_y=obs_y, obs_m=obs_m, fixed_noise=fixed_noise, floors=floors,
                    log_median=jnp.asarray([math.log(p.median) for p in spec.priors]),
                    log_sd=jnp.asarray([p.log_sd for p in spec.priors]),
                    names=tuple(p.name for p in spec.priors), keys=tuple(p.key for p in spec.priors),
                    be_index=tuple(sites.z.index(k) for k in sites.eps),
                    init_sd=tuple(float(spec.initial[k]) for k in sites.eta),
                    sites=sites, dt=dt, t_end=float(t_end))


def _observe(traj, variable: str):
    if variable == "volume":
        return traj.states.volume
    if variable == "dissolved_oxygen":
        return traj.outputs.dissolved_oxygen
    if variable == "oxygen_uptake_rate":
        return traj.outputs.oxygen_uptake_rate
    return getattr(traj.states, variable) / traj.states.volume


def _run(pb: _Problem, g: Float[Array, " g"], loc: Float[Array, " l"]):
    """Simulate one particle; return the log-likelihood of the data so far, the residuals
    `sign(r) sqrt(2 rho(r))` of the standardised errors `r = (y - pred) / sd` (0 where padded;
    `rho` the Student-t negative log density, so half their squared sum is the robust objective)
    and the outputs on the grid."""
    s = pb.sites
    nz, nt = len(s.z), len(s.tau)
    z, log_tau, log_noise = g[:nz], g[nz:nz + nt], g[nz + nt:]
    eps, eta = loc[:len(s.eps)], loc[len(s.eps):]
    logp = pb.log_median + pb.log_sd * z
    for j, i in enumerate(pb.be_index):
        logp = logp.at[i].add(jnp.exp(log_tau[j]) * eps[j])
    model = set_parameters(pb.model, dict(zip(pb.names, jnp.exp(logp))), check=False)
    y0 = pb.y0
    for j, name in enumerate(s.eta):
        y0 = eqx.tree_at(lambda y, n=name: getattr(y, n), y0, getattr(y0, name) * jnp.exp(pb.init_sd[j] * eta[j]))
    traj = simulate(model, pb.recipe, y0, 0.0, pb.t_end, ts=pb.grid,
                    options=FixedGrid(dt=pb.dt, max_horizon_h=pb.t_end + pb.dt))
    noise = dict(zip(s.noise, jnp.exp(log_noise)))
    ll = 0.0
    resid = []
    for v in pb.obs_t:
        if v in pb.fixed_noise:
            a, c = pb.fixed_noise[v][0], pb.fixed_noise[v][1]
        else:
            a, c = noise.get(f"sd_{v}", 0.0), noise.get(f"cv_{v}", 0.0)
        on_grid = _observe(traj, v)
        pred = jnp.interp(pb.obs_t[v], pb.grid, on_grid)
        var = a**2 + (c * pred) ** 2 + 1e-12
        if f"timing_{v}" in noise:  # (never an online signal's: those are not the strain's)
            # the trajectory running early or late (calibration.model): |slope| x timing
            slope = jnp.interp(pb.obs_t[v], pb.grid, grid_slope(on_grid, pb.grid))
            var = var + (noise[f"timing_{v}"] * slope) ** 2
        sd = jnp.sqrt(var)
        r = jnp.where(pb.obs_m[v], (pb.obs_y[v] - pred) / sd, 0.0)
        rho = 0.5 * (ROBUST_DF + 1.0) * jnp.log1p(r**2 / ROBUST_DF)  # Student-t, -log density
        log_density = -rho - jnp.log(sd) + _T_CONST
        sign = jnp.sign(r)
        if v in pb.floors:
            # a reading at or below the strain's floor says only "at most floor" (as in calibration)
            censored = pb.obs_m[v] & (pb.obs_y[v] <= pb.floors[v])
            log_p = student_t_logcdf(jnp.where(censored, (pb.floors[v] - pred) / sd, 0.0), ROBUST_DF)
            rho = jnp.where(censored, -log_p, rho)
            sign = jnp.where(censored, 1.0, sign)
            log_density = jnp.where(censored, log_p, log_density)
        resid.append(sign * jnp.sqrt(2.0 * jnp.maximum(rho, 0.0)))  # 0.5 |resid|^2 = sum of rho
        ll = ll + jnp.sum(jnp.where(pb.obs_m[v], log_density, 0.0))
    total = traj.total_product  # g
    titer = traj.states.product / traj.states.volume
    ok = jnp.all(jnp.isfinite(total)) & jnp.all(jnp.isfinite(titer)) & jnp.all(traj.states.volume > 0)
    ll = jnp.where(ok & jnp.isfinite(ll), ll, -jnp.inf)
    return ll, jnp.concatenate(resid), {"total": total, "titer": titer, "volume": traj.states.volume}


def student_t_logcdf(x, df: float):
    r"""$\log P(T \le x)$ of a standard Student-t with `df` degrees of freedom, through the
    regularised incomplete beta function: $P(T \le x) = \frac12 I_{\nu/(\nu + x^2)}(\nu/2, 1/2)$
    for $x \le 0$, one minus that for $x > 0$."""
    tail = 0.5 * jax.scipy.special.betainc(0.5 * df, 0.5, df / (df + x * x))
    return jnp.where(x <= 0.0, jnp.log(tail), jnp.log1p(-tail))


@eqx.filter_jit
def _run_many(pb: _Problem, G, L):
    return jax.vmap(_run, in_axes=(None, 0, 0))(pb, G, L)


def _chunked(pb, G, L, chunk: int = 500):
    """`_run_many` over particles in chunks of one size (padded), so one compilation serves every
    particle count. Returns NumPy arrays (log-likelihoods, residuals, outputs)."""
    G, L = np.asarray(G, dtype=float), np.asarray(L, dtype=float)
    lls, res, outs = [], [], []
    for i in range(0, G.shape[0], chunk):
        g, l = G[i:i + chunk], L[i:i + chunk]
        n = g.shape[0]
        if n < chunk:
            g = np.concatenate([g, np.repeat(g[-1:], chunk - n, 0)])
            l = np.concatenate([l, np.repeat(l[-1:], chunk - n, 0)])
        ll, r, out = _run_many(pb, g, l)
        lls.append(np.asarray(ll)[:n])
        res.append(np.asarray(r)[:n])
        outs.append({k: np.asarray(v)[:n] for k, v in out.items()})
    return (np.concatenate(lls), np.concatenate(res),
            {k: np.concatenate([o[k] for o in outs]) for k in outs[0]})


def _numpy_rng(key, stream: int = 0) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (host-side sampling compiles nothing)."""
    data = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                      else key).ravel()
    return np.random.default_rng([int(x) for x in data] + [stream])


def _ess(logw: np.ndarray) -> float:
    w = np.exp(logw - np.max(logw))
    return float(w.sum() ** 2 / (w**2).sum()) if np.isfinite(w).all() and w.sum() > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Conditioned:
    """Weighted particles of the running batch's conditional posterior.

    Attributes:
        g: (N, n_global) unconstrained strain-level coordinates (z, log tau, log noise scales).
        local: (N, n_local) the batch's own effects (epsilon, eta).
        logw: (N,) log importance weights (all zero for NUTS draws).
        loglik: (N,) log-likelihood of the data so far.
        outputs: `{"total": (N, grid) g, "titer": (N, grid) g/L, "msr": (N,) mean squared
            standardised residual of the data so far}`.
        grid: (grid,) times, h.
        method: "importance", "laplace-importance" or "nuts".
        ess: effective sample size of the weights.
        notes: what happened (fallbacks), for the user.
        tried: `{method: ess}` of every stage that ran.
    """

    g: np.ndarray
    local: np.ndarray
    logw: np.ndarray
    loglik: np.ndarray
    outputs: dict
    grid: np.ndarray
    method: str
    ess: float
    notes: tuple[str, ...]
    tried: dict

    @property
    def weights(self) -> np.ndarray:
        w = np.exp(self.logw - np.max(self.logw))
        return w / w.sum()


def _gaussian_of(U: np.ndarray):
    m = U.mean(0)
    C = np.cov(U, rowvar=False) + 1e-8 * np.eye(U.shape[1])
    return m, C


def _nll(r: np.ndarray, loc: np.ndarray) -> np.ndarray:
    return 0.5 * np.sum(r**2, axis=-1) + 0.5 * np.sum(loc**2, axis=-1)


def _local_modes(pb, G, L0, *, iters: int, chunk: int, h: float = 1e-5):
    """Levenberg-Marquardt on the batch's own effects, one problem per row of `G` (vectorised):
    minimise 0.5 |r(l)|^2 + 0.5 |l|^2 with r the robust residuals of `_run` (the error SDs
    held at the current iterate, as in iteratively reweighted least squares); Jacobians by
    central differences (2 n_local extra simulations per row and iteration).

    Returns:
        modes (D, n_local) and the Gauss-Newton covariances (D, n_local, n_local).
    """
    D, k = L0.shape
    eye = np.eye(k)

    def evaluate(Lc):
        # rows: Lc, then Lc +- h e_j
        pts = [Lc] + [Lc + s * h * eye[j] for j in range(k) for s in (1.0, -1.0)]
        Gs = np.concatenate([G] * len(pts))
        _, r, _ = _chunked(pb, Gs, np.concatenate(pts), chunk)
        r = r.reshape(len(pts), D, -1)
        J = np.stack([(r[1 + 2 * j] - r[2 + 2 * j]) / (2 * h) for j in range(k)], axis=-1)
        return r[0], J

    L = L0.copy()
    r, J = evaluate(L)
    f = _nll(r, L)
    lam = np.full(D, 1e-2)
    for _ in range(iters):
        A = np.einsum("dni,dnj->dij", J, J) + eye
        b = -(np.einsum("dni,dn->di", J, r) + L)  # -grad of the objective
        damp = lam[:, None, None] * (A * eye)  # Marquardt: scaled by the curvature
        step = np.linalg.solve(A + damp, b[..., None])[..., 0]
        Ln = L + step
        rn, Jn = evaluate(Ln)
        fn = _nll(rn, Ln)
        ok = np.isfinite(fn) & (fn <= f)
        L = np.where(ok[:, None], Ln, L)
        r = np.where(ok[:, None], rn, r)
        J = np.where(ok[:, None, None], Jn, J)
        f = np.where(ok, fn, f)
        lam = np.where(ok, np.maximum(lam / 10.0, 1e-7), lam * 10.0)
        done = (ok & (np.max(np.abs(step), axis=1) < 1e-4)) | (lam > 1e8)
        if np.all(done):
            break
    A = np.einsum("dni,dnj->dij", J, J) + eye
    return L, np.linalg.inv(A)


def condition(posterior: StrainPosterior, record: BatchRecord, plan: Recipe, *, at: float,
              key, t_end: float | None = None, n_draws: int = 200, per_draw: int = 10,
              lm_iters: int = 15, min_ess: float | None = None, allow_nuts: bool = True,
              nuts_samples: int = 400, chunk: int = 500, future_flows=None,
              online: tuple[OnlineSignal, ...] = ()) -> Conditioned:
    """Condition the batch's own effects on its data up to `at` (see the module docstring).

    For each of `n_draws` posterior draws of the strain parameters: the mode of the batch's own
    effects (Levenberg-Marquardt from zero, at most `lm_iters` iterations), a Student-t proposal (7 degrees of freedom) with the
    Gauss-Newton covariance, `per_draw` particles importance-weighted against the exact
    conditional, weights normalised within each draw (every draw weighs the same).

    Args:
        posterior: the strain posterior.
        record: the running batch (checked with `check_running_batch`).
        plan: the batch's recipe (its plan for the rest of the batch).
        at: forecast time, h.
        key: a `jax.random.PRNGKey`.
        t_end: end of the batch, h (default the strain scenario's duration).
        n_draws: posterior draws used (a random subset when the posterior has more).
        per_draw: particles per draw.
        lm_iters: Levenberg-Marquardt iterations per draw.
        min_ess: below this effective sample size the proposals are refitted to the weighted
            particles once; if it stays below, NUTS (and the notes say so). Default: a tenth
            of the particles.
        allow_nuts: with `False`, never NUTS (the low ESS is reported instead).
        nuts_samples: NUTS draws of the fallback.
        chunk: most simulations per compiled call (smaller with few draws).
        future_flows: see `running_recipe`.

    Returns:
        `Conditioned` particles (`n_draws * per_draw`).
    """
    spec = posterior.spec
    t_end = float(spec.scenario.duration_h if t_end is None else t_end)
    at = check_running_batch(record, posterior, at, t_end=t_end)
    dt = float(spec.inference["dt"])
    recipe = running_recipe(record, plan, at, dt=dt, t_end=t_end, future_flows=future_flows)
    pb = _build_problem(posterior, record, recipe, at, t_end, tuple(online))
    sites = pb.sites
    U = sites.globals_from_draws(posterior.draws)
    rng = _numpy_rng(key)
    if U.shape[0] > n_draws:
        idx = rng.choice(U.shape[0], n_draws, replace=False)
        U = U[np.sort(idx)]
    D, k = U.shape[0], sites.n_local
    min_ess = 0.1 * D * per_draw if min_ess is None else float(min_ess)
    # one simulation batch size for every stage (so one compilation): a Levenberg-Marquardt
    # iteration simulates (1 + 2k) rows per draw
    chunk = int(min(chunk, -(-(1 + 2 * k) * D // 8) * 8))
    modes, covs = _local_modes(pb, U, np.zeros((D, k)), iters=lm_iters, chunk=chunk)
    notes, tried = [], {}
    X, logw, ll, out = _per_draw_is(pb, U, modes, covs, per_draw, rng, chunk)
    ess = _ess(logw)
    tried["laplace-importance"] = ess
    method = "laplace-importance"
    if ess < min_ess:
        w = np.exp(logw - logw.max()).reshape(D, per_draw)
        w = w / np.maximum(w.sum(1, keepdims=True), 1e-300)
        Lx = X.reshape(D, per_draw, k)
        mu = np.einsum("dp,dpk->dk", w, Lx)
        d = Lx - mu[:, None]
        cov = np.einsum("dp,dpi,dpj->dij", w, d, d) + 0.5 * covs
        X, logw, ll, out = _per_draw_is(pb, U, mu, cov, per_draw, rng, chunk)
        ess2 = _ess(logw)
        tried["refitted"] = ess2
        notes.append(f"importance weights were uneven (ESS {ess:.0f} of {D * per_draw}); refitted "
                     f"each draw's proposal to its weighted particles (ESS {ess2:.0f})")
        ess, method = ess2, "laplace-importance, refitted"
    G = np.repeat(U, per_draw, axis=0)
    if ess >= min_ess:
        return Conditioned(G, X, logw - logw.max(), ll, out, np.asarray(pb.grid), method, ess,
                           tuple(notes), tried)
    if not allow_nuts:
        notes.append(f"the effective sample size stays low ({ess:.0f} < {min_ess:.0f}) and NUTS "
                     "was not allowed: the interval rests on few particles")
        return Conditioned(G, X, logw - logw.max(), ll, out, np.asarray(pb.grid), method, ess,
                           tuple(notes), tried)
    notes.append(f"the importance weights stay degenerate (ESS {ess:.0f} < {min_ess:.0f}); fell "
                 f"back to NUTS ({nuts_samples} draws) on the full conditional (strain parameters "
                 "from a Gaussian fit to their draws, reweighted by this batch too): slower")
    ng = sites.n_global
    m, C = _gaussian_of(U)
    Ci_j, m_j = jnp.asarray(np.linalg.inv(C)), jnp.asarray(m)

    def neg_logpost(x):
        g, loc = x[:ng], x[ng:]
        d = g - m_j
        return 0.5 * d @ Ci_j @ d + 0.5 * loc @ loc - _run(pb, g, loc)[0]

    w = np.exp(logw - logw.max())
    best = int(np.argmax(w))
    Xall = np.concatenate([G, X], axis=1)
    cov = np.cov(Xall, rowvar=False, aweights=w + 1e-12) + 1e-8 * np.eye(Xall.shape[1])
    Xn = _nuts(neg_logpost, jnp.asarray(Xall[best]), cov, jax.random.fold_in(key, 7), nuts_samples)
    lln, resn, outn = _chunked(pb, Xn[:, :ng], Xn[:, ng:], chunk)
    outn = {**outn, "msr": _msr(pb, resn)}
    tried["nuts"] = float(len(Xn))
    return Conditioned(Xn[:, :ng], Xn[:, ng:], np.zeros(len(Xn)), lln, outn, np.asarray(pb.grid),
                       "nuts", float(len(Xn)), tuple(notes), tried)


def _nuts(f, x0, cov, key, n: int):
    from numpyro.infer import MCMC, NUTS

    kernel = NUTS(potential_fn=f, inverse_mass_matrix=jnp.asarray(cov), dense_mass=True,
                  adapt_mass_matrix=False, max_tree_depth=6)
    mcmc = MCMC(kernel, num_warmup=max(n // 2, 50), num_samples=n, progress_bar=False)
    mcmc.run(key, init_params=x0)
    return np.asarray(mcmc.get_samples())


def _msr(pb, res) -> np.ndarray:
    """Mean squared standardised error per particle, each error capped at 4 SD (one wild assay
    moves it by at most 16 / n)."""
    r2 = ROBUST_DF * np.expm1(res**2 / (ROBUST_DF + 1.0))  # invert the robust residual
    n = int(sum(np.asarray(m).sum() for m in pb.obs_m.values()))
    return np.sum(np.minimum(r2, 16.0), axis=1) / max(n, 1)


def _per_draw_is(pb, U, modes, covs, per_draw: int, rng, chunk: int, nu: float = 7.0):
    """Student-t particles around each draw's mode, weights normalised within each draw."""
    D, k = modes.shape
    chol = np.linalg.cholesky(covs * 1.2**2 + 1e-12 * np.eye(k))
    z = rng.standard_normal((D, per_draw, k))
    chi = rng.chisquare(nu, (D, per_draw))
    X = modes[:, None, :] + np.einsum("dij,dpj->dpi", chol, z) * np.sqrt(nu / chi)[..., None]
    d = X - modes[:, None, :]
    inv = np.linalg.inv(covs * 1.2**2 + 1e-12 * np.eye(k))
    maha = np.einsum("dpi,dij,dpj->dp", d, inv, d)
    logq = -0.5 * (nu + k) * np.log1p(maha / nu)
    X = X.reshape(D * per_draw, k)
    G = np.repeat(U, per_draw, axis=0)
    ll, res, out = _chunked(pb, G, X, chunk)
    out = {**out, "msr": _msr(pb, res)}
    logw = (ll - 0.5 * np.sum(X**2, axis=1) - logq.reshape(-1)).reshape(D, per_draw)
    logw = np.where(np.isfinite(logw), logw, -np.inf)
    mx = np.max(logw, axis=1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    logw = logw - mx - np.log(np.maximum(np.sum(np.exp(logw - mx), axis=1, keepdims=True), 1e-300))
    return X, logw.reshape(-1), ll, out


# ---------------------------------------------------------------------------------------------
# The structural error of the forecast, measured on the strain's history


def observed_total_curve(record: BatchRecord, until: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The total product (g) a batch's data show at each titer assay: titer x volume then
    (online record, interpolated) + product drawn off so far (the draw flow held over each
    sampling interval x the titer interpolated between assays).

    Returns:
        `(times, total)` at the titer assays up to `until` (default: all).

    Raises:
        DataError: no product assay or no volume record.
    """
    tp, p = record.series("product")
    tv, v = record.series("volume")
    if until is not None:
        keep = tp <= until + 1e-9
        tp, p = tp[keep], p[keep]
    drawn_at = np.zeros_like(tp)
    if "draw" in record.variables() and tp.size:
        td, d = record.series("draw")
        edges = np.minimum(np.append(td, tp[-1]), tp[-1])
        a, b = edges[:-1], edges[1:]
        piece = np.where(b > a, np.maximum(d, 0.0) * (b - a) * np.interp(0.5 * (a + b), tp, p), 0.0)
        cum = np.concatenate([[0.0], np.cumsum(piece)])
        drawn_at = np.interp(tp, np.concatenate([[a[0] if a.size else 0.0], b]), cum)
    return tp, p * np.interp(tp, tv, v) + drawn_at


def observed_totals(record: BatchRecord) -> dict:
    """A finished batch's end as its data show it: `{"final_titer": g/L (the last assay),
    "total_product": g (see `observed_total_curve`), "end_h": time of the last assay}`."""
    t, total = observed_total_curve(record)
    _, p = record.series("product")
    return {"final_titer": float(p[-1]), "total_product": float(total[-1]), "end_h": float(t[-1])}


STRUCTURAL_LEVELS = 400
"""Number of equally spaced quantiles of the structural error's predictive distribution that
`ForecastErrors` keeps per forecast fraction (levels (i + 1/2) / 400)."""


@dataclasses.dataclass(frozen=True)
class _StructuralPosterior:
    r"""The posterior of the structural bias $b$ and SD $s$ from errors $e_i \sim N(b, v_i +
    s^2)$, $v_i$ the model's own predictive variance of batch $i$, on a grid of $s$: flat prior
    on $b$ (integrated out analytically) and on $s \ge 0$ (uniform on the SD, Gelman 2006),
    truncated at 10 times the errors' scale (the posterior falls as $s^{-(n-1)}$ there)."""

    s: np.ndarray  # (g,) grid of s
    p: np.ndarray  # (g,) posterior weights
    b: np.ndarray  # (g,) posterior mean of b given s
    var_b: np.ndarray  # (g,) posterior variance of b given s

    @classmethod
    def fit(cls, e, v, n_grid: int = 1201) -> _StructuralPosterior:
        e = np.asarray(e, float)
        v = np.maximum(np.asarray(v, float), 0.0)
        scale = math.sqrt(float(np.mean((e - e.mean()) ** 2) + np.mean(v))) + 1e-9
        s = np.linspace(0.0, 10.0 * scale, n_grid)
        prec = 1.0 / (v[None, :] + s[:, None] ** 2 + (1e-6 * scale) ** 2)
        big_p = prec.sum(axis=1)
        b = (prec * e).sum(axis=1) / big_p
        logp = (0.5 * np.log(prec).sum(axis=1) - 0.5 * np.log(big_p)
                - 0.5 * (prec * (e[None, :] - b[:, None]) ** 2).sum(axis=1))
        p = np.exp(logp - logp.max())
        return cls(s, p / p.sum(), b, 1.0 / big_p)

    @property
    def mean_b(self) -> float:
        return float(np.sum(self.p * self.b))

    @property
    def rms_s(self) -> float:
        r"""$\sqrt{E[s^2]}$: the structural SD as one figure."""
        return float(np.sqrt(np.sum(self.p * self.s**2)))

    def cdf(self, x, extra_var: float = 0.0) -> np.ndarray:
        """Predictive CDF of a new error $b + s z$ (+ a normal of variance `extra_var`)."""
        x = np.atleast_1d(np.asarray(x, float))
        sd = np.sqrt(self.s**2 + self.var_b + extra_var)
        z = (x[:, None] - self.b[None, :]) / sd[None, :]
        return np.sum(self.p[None, :] * special.ndtr(z), axis=1)

    def quantiles(self, levels) -> np.ndarray:
        """Quantiles of the predictive distribution of $b + s z$ at `levels`."""
        sd = np.sqrt(self.s**2 + self.var_b)
        lo = float(np.min(self.b - 9.0 * sd))
        hi = float(np.max(self.b + 9.0 * sd))
        x = np.linspace(lo, hi, 8001)
        c = self.cdf(x)
        return np.interp(levels, c, x)


@dataclasses.dataclass(frozen=True)
class ForecastErrors:
    r"""The twin's structural forecast error, measured on batches with known ends.

    For batch $i$ forecast at fraction $f$ of the batch, $e_i = \log(\text{observed end} /
    \text{median forecast})$, and $v_i$ the forecast's own predictive log-variance (from its 90 %
    interval). At each fraction the errors are modelled as $e_i \sim N(b, v_i + s^2)$: the model's
    own spread, which differs from batch to batch, plus a structural bias $b$ and SD $s$ the model
    does not know about. $(b, s)$ get a flat prior ($s \ge 0$, uniform on the SD; Gelman 2006) and
    their posterior is computed on a grid of $s$ with $b$ integrated out. A new forecast multiplies
    each particle by $\exp(\delta)$, $\delta$ drawn from the posterior predictive of $b + s z$:
    an estimate that neither collapses to zero when a few batches have wide forecasts (the mean
    of $v_i$ over batches is not what a sharp batch's error is compared with) nor ignores how few
    batches it was measured on. `quantiles` keeps that predictive distribution; between fractions
    its quantile functions are interpolated linearly (outside: the nearest).
    `loo_coverage90` is the honesty check on the history itself: each batch's error against the
    90 % predictive interval (its own model spread plus the structural error) fitted on the
    other batches.

    Combination with the history (`weight`, `reference`): early in a batch the data may say
    little about its end, and the twin's forecast can then be worse than the strain's historical
    mean (its errors carry model noise but no skill). The forecast is therefore the weighted
    combination (Bates & Granger 1969) $\log\hat q = w \log\hat q_\text{twin} + (1 - w)\,r$ of
    the twin's forecast and the history's mean end $r$ (mean log end of the batches measured),
    with $w \in [0, 1]$ at each fraction the weight that minimises the squared leave-one-out error
    of the combination over the batches measured (each batch's history reference is the mean of
    the others'). The structural error above is then that of the combination's errors
    $w e_\text{twin} + (1 - w) e_\text{hist}$, with the model's own variance scaled by $w^2$.
    $w = 1$ is the twin alone; `weight` `None` (errors saved before the combination): the twin
    alone.

    Attributes:
        fractions: (k,) forecast times as fractions of the batch.
        bias, sd_structural: `{"total_product": (k,), "final_titer": (k,)}` on the log scale:
            posterior mean of $b$ and $\sqrt{E[s^2]}$ (summaries for reports).
        n: number of batches measured.
        errors: `{quantity: (k, n)}` the individual log errors of the twin alone.
        source: what they were measured on.
        weight: `{quantity: (k,)}` the twin's weight $w$, or `None`.
        reference: `{quantity: float}` the history's mean log end $r$ (total product in g,
            final titer in g/L), or `None`.
        variances: `{quantity: (k, n)}` the twin's own predictive log-variances $v_i$.
        log_ends: `{quantity: (n,)}` the batches' observed log ends.
        quantiles: `{quantity: (k, STRUCTURAL_LEVELS)}` the predictive quantiles of $\delta$ at
            levels $(j + 1/2) / $`STRUCTURAL_LEVELS`; `None` (errors saved before them): $\delta =
            b + s \sqrt{1 + 1/n}\, t_{n-1}$ from `bias` and `sd_structural`.
        loo_coverage90: `{quantity: (k,)}` the leave-one-out coverage of the 90 % interval on
            the batches measured, or `None`.
    """

    fractions: tuple[float, ...]
    bias: dict
    sd_structural: dict
    n: int
    errors: dict
    source: str = ""
    weight: dict | None = None
    reference: dict | None = None
    variances: dict | None = None
    log_ends: dict | None = None
    quantiles: dict | None = None
    loo_coverage90: dict | None = None

    def at(self, fraction: float, quantity: str) -> tuple[float, float]:
        """(bias, structural SD) of `quantity` at `fraction` of the batch."""
        f = np.asarray(self.fractions)
        return (float(np.interp(fraction, f, np.asarray(self.bias[quantity]))),
                float(np.interp(fraction, f, np.asarray(self.sd_structural[quantity]))))

    def draw(self, fraction: float, quantity: str, rng: np.random.Generator, m: int) -> np.ndarray:
        r"""(m,) draws of the structural log error $\delta$ of `quantity` at `fraction`."""
        if self.quantiles is None or quantity not in self.quantiles:
            b, s = self.at(fraction, quantity)
            infl = math.sqrt(1.0 + 1.0 / max(self.n, 1))
            return b + s * infl * rng.standard_t(max(self.n - 1, 1), m)
        q = np.asarray(self.quantiles[quantity])
        f = np.asarray(self.fractions)
        qf = np.array([np.interp(fraction, f, q[:, j]) for j in range(q.shape[1])])
        levels = (np.arange(q.shape[1]) + 0.5) / q.shape[1]
        return np.interp(rng.uniform(size=m), levels, qf)

    def combination(self, fraction: float, quantity: str) -> tuple[float, float | None]:
        """(the twin's weight w, the history's mean log end r) at `fraction`; (1, None) without
        a combination."""
        if not self.weight or quantity not in self.weight or not self.reference:
            return 1.0, None
        w = float(np.interp(fraction, np.asarray(self.fractions), np.asarray(self.weight[quantity])))
        return w, float(self.reference[quantity])

    def to_dict(self) -> dict:
        def lists(d):
            return {k: np.asarray(v, float).tolist() for k, v in d.items()}

        d = {"fractions": list(self.fractions), "n": self.n, "source": self.source,
             "bias": lists(self.bias), "sd_structural": lists(self.sd_structural),
             "errors": lists(self.errors)}
        if self.weight is not None:
            d["weight"] = lists(self.weight)
            d["reference"] = {k: float(v) for k, v in self.reference.items()}
        for name in ("variances", "log_ends", "quantiles", "loo_coverage90"):
            if getattr(self, name) is not None:
                d[name] = lists(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ForecastErrors:
        def arrays(name):
            return None if d.get(name) is None else {k: np.asarray(v) for k, v in d[name].items()}

        weight = d.get("weight")
        return cls(tuple(d["fractions"]), arrays("bias"), arrays("sd_structural"), int(d["n"]),
                   arrays("errors"), d.get("source", ""), arrays("weight"),
                   None if weight is None else {k: float(v) for k, v in d["reference"].items()},
                   arrays("variances"), arrays("log_ends"), arrays("quantiles"),
                   arrays("loo_coverage90"))


class _Combined(NamedTuple):
    weight: np.ndarray  # (k,)
    bias: np.ndarray  # (k,)
    sd: np.ndarray  # (k,)
    quantiles: np.ndarray  # (k, STRUCTURAL_LEVELS)
    loo_coverage90: np.ndarray  # (k,)


def _weigh(e_twin: np.ndarray, v: np.ndarray, log_end: np.ndarray | None):
    """The twin's weight against the history (`log_end` None: 1) and the
    `_StructuralPosterior` of the combination's errors."""
    w = 1.0
    e_c = e_twin
    if log_end is not None:
        n = log_end.shape[0]
        e_hist = log_end - (log_end.sum() - log_end) / (n - 1)  # reference: the others' mean
        d = e_hist - e_twin
        den = float(np.sum(d * d))
        if den > 0.0:
            w = float(np.clip(np.sum(e_hist * d) / den, 0.0, 1.0))
        e_c = w * e_twin + (1.0 - w) * e_hist
    return w, _StructuralPosterior.fit(e_c, w**2 * v)


def _combine(err: np.ndarray, var: np.ndarray, log_end: np.ndarray, fit_weight: bool = True,
             levels: int = STRUCTURAL_LEVELS) -> _Combined:
    """The twin's weight against the history's mean end and the combination's structural error
    (`ForecastErrors`) at each fraction, with its leave-one-out coverage. `err`, `var`: (k, n)
    the twin's log errors and predictive log-variances; `log_end`: (n,) the batches' observed
    log ends. With `fit_weight=False` the weight stays 1: the twin alone."""
    k = err.shape[0]
    out = _Combined(np.ones(k), np.empty(k), np.empty(k), np.empty((k, levels)), np.full(k, np.nan))
    at_levels = (np.arange(levels) + 0.5) / levels
    for i in range(k):
        ok = np.flatnonzero(np.isfinite(err[i]) & np.isfinite(var[i]))
        ends = log_end[ok] if fit_weight else None
        w, post = _weigh(err[i, ok], var[i, ok], ends)
        out.weight[i], out.bias[i], out.sd[i] = w, post.mean_b, post.rms_s
        out.quantiles[i] = post.quantiles(at_levels)
        if ok.size >= 4:
            hit = []
            for j in range(ok.size):
                rest = np.delete(ok, j)
                w_j, post_j = _weigh(err[i, rest], var[i, rest], log_end[rest] if fit_weight else None)
                e_j = err[i, ok[j]]
                if fit_weight:
                    e_j = w_j * e_j + (1.0 - w_j) * (log_end[ok[j]] - np.mean(log_end[rest]))
                u = float(post_j.cdf(e_j, extra_var=w_j**2 * var[i, ok[j]])[0])
                hit.append(0.05 <= u <= 0.95)
            out.loo_coverage90[i] = float(np.mean(hit))
    return out


def measure_errors(posterior: StrainPosterior, history, plans: Mapping[str, Recipe], *,
                   fractions=(0.25, 0.5, 0.75), truths: Mapping[str, dict] | None = None,
                   key=None, progress=None,
                   posteriors: Mapping[str, StrainPosterior] | None = None,
                   combine: bool = True, **options) -> ForecastErrors:
    """Forecast every batch of `history` at each fraction of the batch from its own data and
    compare with its observed end (`observed_totals`, or `truths[batch]` with keys
    `final_titer` g/L and `total_product` g); see `ForecastErrors`.

    Measured with the posterior the batches were calibrated on, the error is in-sample: that
    posterior has seen each batch's end, and its error is smaller than a new batch's. With
    `posteriors` each batch is forecast with a posterior calibrated without it (leave batches
    out, e.g. k-fold cross-fitting), which is what a new batch meets.

    Args:
        posterior: the strain posterior.
        history: a `BatchSet` of finished batches (typically the ones the posterior saw).
        plans: `{batch: Recipe}`.
        fractions: forecast times as fractions of the batch length.
        progress: called as `progress(done, total)`.
        posteriors: `{batch: StrainPosterior}` to forecast that batch with (calibrated without
            it); batches it does not name use `posterior`.
        combine: weigh the twin against the history's mean end (`ForecastErrors`; needs at
            least 3 batches); `False`: the twin alone.

    Raises:
        ForecastError: a posterior in `posteriors` of another strain than `posterior`'s.
    """
    key = jax.random.PRNGKey(1) if key is None else key
    t_end = float(posterior.spec.scenario.duration_h)
    recs = list(history)
    quantities = ("total_product", "final_titer")
    err = {q: np.full((len(fractions), len(recs)), np.nan) for q in quantities}
    var = {q: np.full((len(fractions), len(recs)), np.nan) for q in quantities}
    log_end = {q: np.full(len(recs), np.nan) for q in quantities}
    posteriors = dict(posteriors or {})
    for b, p in posteriors.items():
        if p.strain != posterior.strain:
            raise ForecastError(f"the posterior for batch '{b}' is for strain '{p.strain}', not "
                                f"'{posterior.strain}'", field="posteriors", value=p.source)
    held_out = sum(rec.batch in posteriors for rec in recs)
    done = 0
    for j, rec in enumerate(recs):
        truth = dict(truths[rec.batch]) if truths and rec.batch in truths else observed_totals(rec)
        post_j = posteriors.get(rec.batch, posterior)
        for q in quantities:
            log_end[q][j] = math.log(truth[q])
        for i, f in enumerate(fractions):
            key, sub = jax.random.split(key)
            fc = forecast(post_j, rec, plans[rec.batch], at=f * t_end, key=sub, errors=None,
                          **options)
            for q, s in (("total_product", fc.total_product_kg), ("final_titer", fc.final_titer_g_L)):
                scale = 1000.0 if q == "total_product" else 1.0
                err[q][i, j] = math.log(truth[q] / (s["median"] * scale))
                var[q][i, j] = ((math.log(s["q95"]) - math.log(s["q05"])) / (2 * 1.645)) ** 2
            done += 1
            if progress is not None:
                progress(done, len(recs) * len(fractions))
    n = len(recs)
    how = ("in-sample" if held_out == 0 else "each forecast by a posterior calibrated without "
           "it" if held_out == n else f"{held_out} of them by posteriors calibrated without them")
    source = f"{n} batches of strain {posterior.strain} ({how})"
    fit = combine and n >= 3
    comb = {q: _combine(err[q], var[q], log_end[q], fit_weight=fit) for q in quantities}
    reference = {q: float(np.mean(log_end[q])) for q in quantities}
    return ForecastErrors(tuple(float(f) for f in fractions), {q: c.bias for q, c in comb.items()},
                          {q: c.sd for q, c in comb.items()}, n, err, source=source,
                          weight={q: c.weight for q, c in comb.items()} if fit else None,
                          reference=reference if fit else None, variances=var, log_ends=log_end,
                          quantiles={q: c.quantiles for q, c in comb.items()},
                          loo_coverage90={q: c.loo_coverage90 for q, c in comb.items()})


def leave_out_posteriors(spec, history, folds: int, *, directory, svi_steps: int | None = None,
                         log=None) -> dict[str, StrainPosterior]:
    """Posteriors for a leave-batches-out `measure_errors`: the history's batches (sorted by id)
    dealt into `folds` folds, each fold's batches to be forecast by a posterior calibrated (SVI,
    `calibration.infer.calibrate`) on the other folds. Each is written to
    `directory/fold<i>of<k>/posterior.nc` and reused from there while it loads against the model
    and was calibrated on the same batches.

    Args:
        spec: the strain (`calibration.spec.StrainSpec`), as `StrainPosterior.spec`.
        history: the `BatchSet` the strain was calibrated on.
        folds: number of folds, 2 to the number of batches.
        directory: where the fold posteriors are kept (one per main posterior).
        svi_steps: SVI steps (default the strain file's).
        log: called with one line per calibration.

    Returns:
        `{batch: StrainPosterior}` for every batch of `history`.

    Raises:
        ForecastError: `folds` outside 2 to the number of batches.
        TwinError: a fold's SVI diverged with three seeds (the strain's and the next two).
    """
    import json as _json

    from calibration.infer import (
        PosteriorError,
        calibrate,
        load_posterior,
        save_posterior,
    )

    ids = sorted(history.batch_ids)
    if not 2 <= int(folds) <= len(ids):
        raise ForecastError(f"must be 2 to the {len(ids)} history batches", field="folds",
                            value=folds)
    out = {}
    for i in range(int(folds)):
        held = ids[i::int(folds)]
        train = [b for b in ids if b not in held]
        path = Path(directory) / f"fold{i}of{int(folds)}" / "posterior.nc"
        ok = False
        if path.is_file():
            try:
                attrs = load_posterior(path, model=spec.scenario.model).attrs
                ok = sorted(_json.loads(attrs["batches"])) == train
            except (PosteriorError, KeyError, ValueError):
                ok = False
        if not ok:
            t = time.perf_counter()
            seed = int(spec.inference["seed"])
            for attempt in range(3):  # SVI can diverge on a subset: retry with the next seeds
                try:
                    res = calibrate(spec, method="svi", batches=train, svi_steps=svi_steps,
                                    seed=seed + attempt)
                    break
                except TwinError as exc:
                    if attempt == 2 or "diverged" not in str(exc):
                        raise
                    if log is not None:
                        log(f"fold {i + 1}/{folds}: SVI diverged with seed {seed + attempt}; "
                            f"retrying with seed {seed + attempt + 1}")
            save_posterior(res.idata, path)
            if log is not None:
                log(f"fold {i + 1}/{folds}: calibrated without {', '.join(held)} in "
                    f"{time.perf_counter() - t:.0f} s -> {path}")
        post = load_strain_posterior(path, strain_file=spec.path)
        out.update({b: post for b in held})
    return out


# ---------------------------------------------------------------------------------------------
# The forecast


def _wquantile(x: np.ndarray, w: np.ndarray, q) -> np.ndarray:
    """Weighted quantiles of `x` along axis 0 (w sums to 1)."""
    q = np.atleast_1d(q)
    order = np.argsort(x, axis=0)
    xs = np.take_along_axis(x, order, axis=0)
    ws = w[order]
    cw = np.cumsum(ws, axis=0) - 0.5 * ws
    if x.ndim == 1:
        return np.interp(q, cw, xs)
    return np.stack([np.stack([np.interp(qq, cw[:, j], xs[:, j]) for j in range(x.shape[1])])
                     for qq in q])


_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclasses.dataclass(frozen=True)
class Forecast:
    """The end of a running batch, forecast at `at_h`.

    Attributes:
        batch, strain: what was forecast with which posterior.
        at_h, end_h: forecast time and end of the batch, h.
        final_titer_g_L, total_product_kg, peak_productivity_h: `{"median", "q05", "q25",
            "q75", "q95", "mean"}` (50 % interval q25-q75, 90 % interval q05-q95).
        prob_below: probability of ending below `threshold` (or None).
        threshold: the `Threshold` asked for (or None).
        method, ess, n_particles, notes: how the conditional was computed (see `condition`).
        structural: `{quantity: (bias, sd, w)}` of the structural error applied, `w` the twin's
            weight against the history's mean end (1: the twin alone; empty: none).
        model_only: `{"total_product_kg": ..., "final_titer_g_L": ...}` summaries before the
            structural error (what the model's own uncertainty says).
        data_fit: how well the conditioned twin reproduces the data so far:
            `mean_sq_std_residual` (about 1 when the data look like the history),
            `batch_effects_sd` (largest of this batch's own effects, in prior SDs),
            `latest_product_residuals_sd` (the last two titer assays against the fit) and `warning`
            (text, or None) when either says the twin cannot explain this batch (a fault, a new
            operating regime, bad data): the forecast then extrapolates a model that does not fit.
        grid: times, h; fan_titer, fan_total_kg: `(5, grid)` quantiles (5, 25, 50, 75, 95 %).
        samples: `{"total_product_kg": (M,), "final_titer_g_L": (M,)}` equally weighted draws.
        wall_s: seconds the forecast took.
    """

    batch: str
    strain: str
    at_h: float
    end_h: float
    final_titer_g_L: dict
    total_product_kg: dict
    peak_productivity_h: dict
    prob_below: float | None
    threshold: Threshold | None
    method: str
    ess: float
    n_particles: int
    notes: tuple[str, ...]
    structural: dict
    model_only: dict
    data_fit: dict
    grid: np.ndarray
    fan_titer: np.ndarray
    fan_total_kg: np.ndarray
    samples: dict
    wall_s: float

    def to_dict(self) -> dict:
        """The JSON content of `forecast.json`."""
        out = {
            "batch": self.batch, "strain": self.strain, "forecast_at_h": self.at_h,
            "batch_end_h": self.end_h,
            "final_titer_g_L": self.final_titer_g_L,
            "total_product_kg": self.total_product_kg,
            "time_of_peak_productivity_h": self.peak_productivity_h,
            "intervals": "median; 50 % interval q25-q75; 90 % interval q05-q95 (of the true "
                         "value, without assay noise)",
            "definitions": {
                "total_product_kg": "product in the vessel at the end plus product drawn off "
                                    "with harvest draws",
                "time_of_peak_productivity_h": "the middle of the grid step in which the total "
                                               "product grows fastest (kg/h)",
            },
            "method": self.method, "effective_sample_size": self.ess,
            "n_particles": self.n_particles,
            "structural_error": {q: {"log_bias": b, "log_sd": s, "twin_weight": w}
                                 for q, (b, s, w) in self.structural.items()},
            "model_only": self.model_only,
            "data_fit": self.data_fit,
            "notes": list(self.notes), "wall_s": self.wall_s,
        }
        if self.threshold is not None:
            t = self.threshold
            out["threshold"] = {"quantity": t.quantity, "given": t.text,
                                "value": t.value / (1000.0 if t.quantity == "total_product" else 1.0),
                                "unit": "kg" if t.quantity == "total_product" else "g/L",
                                "probability_below": self.prob_below}
        return out


def _summary(x) -> dict:
    q = np.quantile(x, _QUANTILES)
    return {"median": float(q[2]), "q05": float(q[0]), "q25": float(q[1]), "q75": float(q[3]),
            "q95": float(q[4]), "mean": float(np.mean(x))}


def _latest_product_residuals(posterior, record, at, grid, titer_median) -> list[float]:
    """Standardised errors (calibration scale) of the last two titer assays up to `at` against
    the conditioned twin's median titer."""
    if "product" not in record.variables():
        return []
    t, y = record.series("product")
    sel = t <= at + 1e-9
    t, y = t[sel][-2:], y[sel][-2:]
    pred = np.interp(t, grid, titer_median)
    slope = np.interp(t, grid, grid_slope(np.asarray(titer_median), np.asarray(grid)))
    a, c, d = (float(np.median(posterior.draws.get(f"{k}_product", np.zeros(1)))) for k in ("sd", "cv", "timing"))
    sd = np.sqrt(a**2 + (c * pred) ** 2 + (d * slope) ** 2) + 1e-12
    return [float(x) for x in (y - pred) / sd]


def _resample(w: np.ndarray, m: int, rng) -> np.ndarray:
    """Systematic resampling: `m` indices with probabilities `w`."""
    u = (rng.uniform() + np.arange(m)) / m
    return np.minimum(np.searchsorted(np.cumsum(w), u), len(w) - 1)


def forecast(posterior: StrainPosterior, record: BatchRecord, plan: Recipe, *, at: float | None = None,
             key=None, threshold: Threshold | None = None, t_end: float | None = None,
             errors: ForecastErrors | None = None, n_samples: int = 4000,
             volume_anchor: bool = True, **options) -> Forecast:
    """Forecast the end of a running batch from its data up to `at` (default: all its data).

    Args:
        posterior: the strain posterior (`load_strain_posterior`).
        record: the running batch (`read_running_batch`).
        plan: its recipe (what will be done for the rest of the batch).
        at: forecast time, h; `None`: the time of its last measurement.
        key: `jax.random.PRNGKey` (default `PRNGKey(0)`: reruns are identical).
        threshold: report the probability of ending below it.
        t_end: end of the batch, h (default the scenario's duration).
        errors: the twin's structural error (`measure_errors`) to widen and de-bias the
            forecast with; `None`: the model's own uncertainty only.
        n_samples: equally weighted draws the summaries are computed from.
        volume_anchor: scale each particle's broth volume by the batch's recorded volume over
            the particle's own (means over the records of the last `VOLUME_ANCHOR_H` hours up to
            `at`), and the product in the vessel with it: no fitted parameter
            moves the twin's volume, and a plant's volume record can differ from the twin's
            balance (IndPenSim's leaves out the oil feed); the recorded volume is what the
            plant's titer x volume counts. No effect without a volume record up to `at`.
        **options: passed to `condition` (per_draw, max_draws, min_ess, ...).

    Returns:
        A `Forecast`.

    Raises:
        ForecastError: see `check_running_batch`.

    Example:
        >>> post = load_strain_posterior("out/cal/posterior.nc")            # doctest: +SKIP
        >>> fc = forecast(post, read_running_batch("running.csv"), plan, at=48.0)  # doctest: +SKIP
        >>> fc.total_product_kg["median"]                                    # doctest: +SKIP
    """
    t0 = time.perf_counter()
    spec = posterior.spec
    t_end = float(spec.scenario.duration_h if t_end is None else t_end)
    at = check_running_batch(record, posterior, at, t_end=t_end)
    key = jax.random.PRNGKey(0) if key is None else key
    cond = condition(posterior, record, plan, at=at, key=key, t_end=t_end, **options)
    rng = _numpy_rng(key, 1)
    idx = _resample(cond.weights, n_samples, rng)
    total_kg = cond.outputs["total"][idx] / 1000.0
    titer = cond.outputs["titer"][idx]
    grid = cond.grid
    if volume_anchor and "volume" in record.variables():
        tv, v = record.series("volume")
        sel = (tv <= at + 1e-9) & np.isfinite(v)
        if sel.any():
            recent = sel & (tv >= at - VOLUME_ANCHOR_H - 1e-9)
            recent = recent if recent.any() else sel & (tv == tv[sel][-1])
            vol = cond.outputs["volume"][idx]
            j = np.clip(np.searchsorted(grid, tv[recent]), 1, len(grid) - 1)  # linear in time
            f = (tv[recent] - grid[j - 1]) / (grid[j] - grid[j - 1])
            twin_vol = vol[:, j - 1] * (1.0 - f) + vol[:, j] * f
            ratio = float(np.mean(v[recent])) / np.mean(twin_vol, axis=1)
            total_kg = total_kg - titer * vol * (1.0 - ratio[:, None]) / 1000.0
    rate = np.diff(total_kg, axis=1) / np.diff(grid)
    peak = (0.5 * (grid[1:] + grid[:-1]))[np.argmax(rate, axis=1)]
    model_only = {"total_product_kg": _summary(total_kg[:, -1]),
                  "final_titer_g_L": _summary(titer[:, -1])}
    structural = {}
    if errors is not None:
        ramp = np.clip((grid - at) / max(t_end - at, 1e-9), 0.0, 1.0)
        for q, arr in (("total_product", total_kg), ("final_titer", titer)):
            b, s = errors.at(at / t_end, q)
            w, ref = errors.combination(at / t_end, q)
            shift = np.zeros(n_samples)
            if ref is not None and w < 1.0:  # towards the history's mean end (ForecastErrors)
                unit = 1000.0 if q == "total_product" else 1.0
                shift = (1.0 - w) * (ref - np.log(np.maximum(arr[:, -1] * unit, 1e-300)))
            delta = shift + errors.draw(at / t_end, q, rng, n_samples)
            arr *= np.exp(delta[:, None] * ramp[None, :])
            structural[q] = (b, s, w)
    prob = None
    if threshold is not None:
        final = titer[:, -1] if threshold.quantity == "final_titer" else total_kg[:, -1] * 1000.0
        prob = float(np.mean(final < threshold.value))
    w = cond.weights
    msr = float(np.sum(w * cond.outputs["msr"]))
    eff = float(np.sum(w * np.max(np.abs(cond.local), axis=1))) if cond.local.size else 0.0
    latest = _latest_product_residuals(posterior, record, at, grid, np.median(titer, axis=0))
    warning = None
    if msr > MISFIT_MSR or eff > MISFIT_EFFECT_SD:
        warning = (f"the twin does not reproduce this batch's data so far (mean squared "
                   f"standardised residual {msr:.1f}, batch effects at {eff:.1f} prior SDs): a "
                   "fault, a new operating regime or bad data? The forecast extrapolates a model "
                   "that does not fit this batch")
    elif len(latest) == 2 and min(abs(x) for x in latest) > LATEST_ALARM_SD and latest[0] * latest[1] > 0:
        warning = (f"the latest two titer assays depart from the twin's fit by "
                   f"{latest[0]:+.1f} and {latest[1]:+.1f} SDs: a fault or a change the twin has "
                   "not seen? The forecast weighs them as outliers")
    data_fit = {"mean_sq_std_residual": msr, "batch_effects_sd": eff,
                "latest_product_residuals_sd": latest, "warning": warning}
    notes = cond.notes + ((warning,) if warning else ())
    if errors is not None:
        notes = notes + (f"widened by the twin's structural error measured on {errors.source}",)
        w = structural["total_product"][2]
        if w < 1.0:
            notes = notes + (f"combined with the history's mean end: the twin's weight at this "
                             f"time is {w:.2f}, earned by its leave-out skill on those batches",)
    return Forecast(
        batch=record.batch, strain=posterior.strain, at_h=float(at), end_h=t_end,
        final_titer_g_L=_summary(titer[:, -1]), total_product_kg=_summary(total_kg[:, -1]),
        peak_productivity_h=_summary(peak), prob_below=prob, threshold=threshold,
        method=cond.method, ess=cond.ess, n_particles=len(cond.logw), notes=notes,
        structural=structural, model_only=model_only, data_fit=data_fit, grid=grid, fan_titer=np.quantile(titer, _QUANTILES, axis=0),
        fan_total_kg=np.quantile(total_kg, _QUANTILES, axis=0),
        samples={"total_product_kg": total_kg[:, -1], "final_titer_g_L": titer[:, -1]},
        wall_s=time.perf_counter() - t0)
