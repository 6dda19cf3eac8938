"""IndPenSim as an independent plant: run one batch of a project recipe, return a batch record.

IndPenSim (Goldrick et al. 2015, 2019; Python port `pensimpy` 1.2.5, MIT licence) simulates a
100 m3 industrial *Penicillium chrysogenum* fed-batch: 230 h in 1150 steps of 0.2 h, with its own
PID loops for pH (acid/base), temperature (cooling/heating water) and, from 9.8 h, the precursor
PAA. It shares no code or equations with `twin`, so it is the plant the twin learns from and is
proved against.

How the plant is driven
-----------------------
`pensimpy.get_batches()` and its recipe class apply each set-point *from* its breakpoint instead
of *until* it (the MATLAB original's `if t <= t_i` semantics), which turns the 2 h harvest pulses
into day-long discharges; they are not used. `run_batch` calls `PenSimEnv.step` itself for
k = 1..1150 with the recipe evaluated at the middle of step k, `[0.2 (k-1), 0.2 k)`. The Raman
spectra simulation is replaced by a no-op on the instance (its flag also switches off the PAA
controller, so the flag is left alone); `fastodeint` (a compiled solver the package imports but
which does not build on Python 3.11) is replaced by an empty stand-in and `fast=False` selects
scipy's LSODA on the package's Python right-hand side (about 12 s per 230 h batch).

Recipe variables (`twin.state.CONTROL_VARIABLES`, internal units) -> plant inputs
---------------------------------------------------------------------------------
=================  ==========================================================================
substrate_feed      Fs, L/h of sugar solution at c_s = 600 g/L (+ the plant's slow feed
                    concentration disturbance, SD about 75 g/L; recorded per step as
                    `sugar_feed_g_L` in the trajectory)
oil_feed            Foil, L/h of soybean oil, 1000 g/L sugar equivalent. The plant's volume
                    balance omits Foil: oil adds substrate and weight, not volume.
aeration            Fg. The ODE divides it by 60 and by the vessel cross-section (r = 2.1 m) to
                    get a superficial velocity in m/s, so Fg is in m3/min (normal), not "L/h" as
                    labelled; 1 m3/min = 60,000 L/h.
back_pressure       pressure, bar gauge (the ODE adds 1 bar).
draw                discharge. The plant's discharge is a *mass* flow in kg/h (labelled L/h): the
                    volume balance divides it by the broth density rho_b = 1100 + P + X g/L
                    (1.10-1.14 kg/L). The recipe's L/h are converted with the density at the
                    start of each step; the recorded draw is the volume flow that left.
water_feed          Fw, L/h.
precursor_feed      Fpaa, L/h of PAA at about 530 g/L. Honoured only before 9.8 h (steps ending
                    at or before 9.8 h); from step 50 (9.8-10 h) the plant's own PID holds PAA
                    near 1.2 g/L, and a recipe with precursor_feed > 0 there is refused.
temperature         temperature set-point, degC (the plant works in K: T_K = T + 273.15). The
                    plant's default 298 K is 24.85 degC.
pH                  pH set-point.
agitation           fixed at 100 rpm in the plant; a recipe asking for anything else is refused.
=================  ==========================================================================

Other plant facts checked against the model equations (labels in the package are wrong):
the PAA and NH3 states are mg/L (labelled g/L; 1400 mg/L initial PAA, 530,000 mg/L feed);
dissolved O2 is mg/L; the off-gas O2 state is a mole *fraction* (labelled %) while off-gas CO2
is in %; the package's OUR channel is kg O2/min (labelled g/min) and uses 20.4 % inlet O2 where
the ODE uses 21 %; weight is kg; temperature is K; the pH state is [H+] (mol/L). The package's
per-step yield counts discharged broth in L at the kg/h value, over-counting discharged
penicillin by rho_b (about 13 %); this module computes penicillin totals itself. A failed LSODA
step is silent in the package (NaN volume becomes 0); here it raises `SolverError`. The plant
has no vessel-volume limit and no cost on base. Its randomness is all drawn from the plant seed
at reset (pensimpy's global `np.random` serves only its PRBS feed excitation, off here, and the
Raman spectra, replaced): the static draws (initial state, mu_p, mu_x, kLa factor, PAA and
nitrogen feed concentrations) and eight slow AR(1) disturbances (growth and production rates,
feed concentrations, coolant and inlet O2), which `run_batch(future_disturbances=...)` can
re-draw from a time on. The package integrates 381 of its 1150 steps
over 0.205 h instead of 0.2 h (a floating-point `np.arange` end point), so a batch is 231.9 h of
process time on its 230 h clock; the trajectory records each step's length (`step_h`) and every
total here uses it. A default batch ends at about 21-22 g/L
penicillin and 100 m3, with about 0.7 t of penicillin in the harvest draws.

Derived signals
---------------
- dissolved_oxygen, % = 100 DO / 15.06 mg/L: saturation with air at the probe's calibration
  (0.6 bar gauge head pressure, 58 m3 broth, log-mean pressure over the liquid height), so a
  batch starts near 100 %.
- oxygen_uptake_rate and carbon_evolution_rate, mmol/L/h: the plant's own quasi-steady off-gas
  balances solved for the uptake (OUR = 1428.6 Fg (0.21 - yO2 0.79/(1 - yO2 - yCO2)) /
  (0.06 V_m3) mg/L/h; CER = 1964.3 Fg (CO2% - 0.033) / V g/h/L). The CER so computed equals the
  model's kinetic CO2 production within 1 %. The plant's respiratory quotient is about 4-5: it
  is the plant's, not a unit slip here.

Measurement model (what `measurements` holds; `truth` holds the same variables noise-free)
--------------------------------------------------------------------------------------
Online (historian) every 1 h from 0 h; flows at time t are the values applied from t on.
Noise is Gaussian, SD = sqrt(sd**2 + (cv * true)**2), clipped at the variable's lower bound:

======================  ===========  ===========  =========================================
variable                unit         sd           cv
======================  ===========  ===========  =========================================
dissolved_oxygen        %            1.0          -
pH                      -            0.02         -
temperature             degC         0.05         -
volume                  L            150          -
weight                  kg           100          -
offgas_o2, offgas_co2   mol%         0.02         -
oxygen_uptake_rate,     mmol/L/h     0.2          3 %
carbon_evolution_rate
feeds, draw, acid/base  L/h          -            1 % (a zero flow reads zero)
aeration                m3/min       -            1 %
back_pressure           bar          0.01         -
agitation               rpm          0.5          -
acid_total, base_total  L            -            1 %
======================  ===========  ===========  =========================================

Offline (lab) every 12 h from 0 h and at the end of the batch:
biomass cv 5 %, substrate cv 5 % with sd 0.002 g/L, product cv 3 % with sd 0.005 g/L,
precursor cv 5 %, nitrogen cv 5 %, viscosity cv 10 %.

Noise draws come from `numpy.random.default_rng(SeedSequence([seed, fault, 1]))`, so two recipes
run on one seed see the same noise draws (paired comparisons), and reruns are bit-identical.

Reference:
    Goldrick S., Stefan A., Lovett D., Montague G., Lennox B. (2015) The development of an
    industrial-scale fed-batch fermentation simulation. J. Biotechnol. 193:70-82.
    Goldrick S. et al. (2019) Modern day monitoring and control challenges outlined on an
    industrial-scale benchmark fermentation process. Comput. Chem. Eng. 130:106471.
"""

from __future__ import annotations

import math
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ParameterError, RecipeError, SolverError, TwinError
from ..recipe import Recipe, read_recipe_csv, sample

__all__ = [
    "STRAIN",
    "STEP_H",
    "BATCH_H",
    "AGITATION_RPM",
    "PAA_CONTROL_FROM_H",
    "PAA_SETPOINT_G_L",
    "SUGAR_FEED_G_L",
    "Noise",
    "ONLINE_NOISE",
    "OFFLINE_NOISE",
    "NOISE_DESCRIPTION",
    "batch_totals",
    "plant_step_lengths",
    "pensimpy_version",
    "PlantRun",
    "default_recipe",
    "default_recipe_path",
    "check_recipe",
    "run_batch",
]

STRAIN = "penicillin_indpensim"
STEP_H = 0.2
BATCH_H = 230.0
N_STEPS = 1150
AGITATION_RPM = 100.0
PAA_CONTROL_FROM_H = 9.8  # the plant's PAA PID runs on steps k >= 50, i.e. from 9.8 h
PAA_SETPOINT_G_L = 1.2  # its set-point (1200 mg/L)
PAA_LOOP_RECIPE_FROM_H = 10.0  # in recipes: 9.8 h moved onto the twin's 0.5-h grid
SUGAR_FEED_G_L = 600.0
OIL_FEED_G_L = 1000.0
M3_MIN_TO_L_H = 60_000.0
ONLINE_EVERY_H = 1.0
OFFLINE_EVERY_H = 12.0
_HENRY = 0.0251  # bar L/mg, the plant's Henry constant for O2
_CAL_PRESSURE_BAR = None  # set below


def _log_mean_pressure(back_pressure_bar: float, volume_L: float, rho_g_L: float) -> float:
    h = volume_L / 1000 / (math.pi * 2.1**2) * 0.9
    top = 1 + back_pressure_bar
    bottom = top + rho_g_L * h * 9.81e-5
    return (bottom - top) / math.log(bottom / top)


DO_CALIBRATION_MG_L = _log_mean_pressure(0.6, 58_000.0, 1100.0) * 0.21 / _HENRY
"""Dissolved O2 (mg/L) that reads 100 %: air saturation at 0.6 bar gauge, 58 m3 of broth."""


# ---------------------------------------------------------------------------------------------
# Noise model


@dataclass(frozen=True)
class Noise:
    """Gaussian measurement noise: SD = sqrt(sd**2 + (cv * true)**2), clipped at `lower`.

    Args:
        sd: absolute standard deviation, in the unit the variable is recorded in.
        cv: coefficient of variation (relative SD), dimensionless.
        lower: readings below it are clipped to it (`None`: no clipping).
    """

    sd: float = 0.0
    cv: float = 0.0
    lower: float | None = 0.0

    def __post_init__(self):
        if not (self.sd >= 0 and self.cv >= 0):
            raise ParameterError(f"noise sd and cv must be >= 0, got sd={self.sd}, cv={self.cv}")

    def sample(self, true, rng: np.random.Generator) -> np.ndarray:
        """Noisy readings of `true` (array) using `rng`."""
        true = np.asarray(true, dtype=float)
        scale = np.sqrt(self.sd**2 + (self.cv * true) ** 2)
        out = true + scale * rng.standard_normal(true.shape)
        return out if self.lower is None else np.maximum(out, self.lower)


_FLOW = Noise(cv=0.01)
# variable -> (recorded unit, noise in that unit)
ONLINE_NOISE: dict[str, tuple[str, Noise]] = {
    "dissolved_oxygen": ("%", Noise(sd=1.0)),
    "pH": ("-", Noise(sd=0.02)),
    "temperature": ("degC", Noise(sd=0.05, lower=None)),
    "volume": ("L", Noise(sd=150.0)),
    "weight": ("kg", Noise(sd=100.0)),
    "offgas_o2": ("mol%", Noise(sd=0.02)),
    "offgas_co2": ("mol%", Noise(sd=0.02)),
    "oxygen_uptake_rate": ("mmol/L/h", Noise(sd=0.2, cv=0.03, lower=None)),
    "carbon_evolution_rate": ("mmol/L/h", Noise(sd=0.2, cv=0.03, lower=None)),
    "substrate_feed": ("L/h", _FLOW),
    "oil_feed": ("L/h", _FLOW),
    "precursor_feed": ("L/h", _FLOW),
    "water_feed": ("L/h", _FLOW),
    "draw": ("L/h", _FLOW),
    "acid_flow": ("L/h", _FLOW),
    "base_flow": ("L/h", _FLOW),
    "aeration": ("m3/min", _FLOW),
    "back_pressure": ("bar", Noise(sd=0.01)),
    "agitation": ("rpm", Noise(sd=0.5)),
    "acid_total": ("L", _FLOW),
    "base_total": ("L", _FLOW),
}
"""Online signals: recorded unit and sensor noise (see the module docstring)."""

OFFLINE_NOISE: dict[str, tuple[str, Noise]] = {
    "biomass": ("g/L", Noise(cv=0.05)),
    "substrate": ("g/L", Noise(sd=0.002, cv=0.05)),
    "product": ("g/L", Noise(sd=0.005, cv=0.03)),
    "precursor": ("g/L", Noise(cv=0.05)),
    "nitrogen": ("g/L", Noise(cv=0.05)),
    "viscosity": ("cP", Noise(cv=0.10)),
}
"""Offline assays: recorded unit and lab noise (see the module docstring)."""

NOISE_DESCRIPTION: dict = {
    "model": "Gaussian, SD = sqrt(sd**2 + (cv*true)**2), clipped at the lower bound (0 unless "
             "stated); a zero flow reads zero",
    "online_every_h": ONLINE_EVERY_H,
    "offline_every_h": OFFLINE_EVERY_H,
    "online": {v: {"unit": u, "sd": n.sd, "cv": n.cv} for v, (u, n) in ONLINE_NOISE.items()},
    "offline": {v: {"unit": u, "sd": n.sd, "cv": n.cv} for v, (u, n) in OFFLINE_NOISE.items()},
}
"""The measurement model as plain data (written into provenance.json)."""

_STATE_COLUMNS = ("biomass", "substrate", "product", "volume", "weight", "dissolved_oxygen",
                  "precursor", "nitrogen", "viscosity", "temperature", "pH", "offgas_o2",
                  "offgas_co2", "oxygen_uptake_rate", "carbon_evolution_rate", "density_g_L")
_INPUT_COLUMNS = ("substrate_feed", "oil_feed", "precursor_feed", "water_feed", "draw",
                  "aeration", "back_pressure", "agitation", "acid_flow", "base_flow",
                  "temperature_setpoint", "pH_setpoint", "draw_kg_h", "sugar_feed_g_L",
                  "oil_feed_g_L", "precursor_feed_g_L")


# ---------------------------------------------------------------------------------------------
# The default recipe


def default_recipe_path() -> Path:
    """Path of the shipped default recipe CSV (`indpensim_default_recipe.csv`)."""
    return Path(__file__).with_name("indpensim_default_recipe.csv")


def default_recipe() -> Recipe:
    """The plant's default recipe in the project's format (every control on [0, 230] h).

    It is pensimpy's default schedule with each value applied *until* its time (as in the MATLAB
    original), the discharge pulses as 3500 L/h (about pensimpy's 4000 kg/h at 1.13 kg/L),
    aeration in m3/min, precursor feed 5 L/h for 5 h then 0 and the plant's PAA controller
    written as `precursor_setpoint` 1.2 g/L from 10 h (it runs from 9.8 h; 10 h is on the twin's
    0.5-h grid), temperature 24.85 degC (298 K), pH 6.5, agitation 100 rpm.
    """
    return read_recipe_csv(default_recipe_path(), span=(0.0, BATCH_H))


# ---------------------------------------------------------------------------------------------
# Checks: what the plant can do


def check_recipe(recipe: Recipe, *, duration_h: float = BATCH_H, where: object = "recipe") -> None:
    """Raise `RecipeError` unless the plant can run `recipe` for `duration_h` hours.

    Raises:
        RecipeError: a variable does not cover `[0, duration_h]`; agitation other than the
            plant's fixed 100 rpm; precursor_feed > 0 from 9.8 h (the plant's PAA controller holds
            PAA from then on); a positive precursor_setpoint other than the plant's 1.2 g/L, or
            before 9.8 h (its controller's fixed set-point and start; a setpoint of 0 leaves the
            plant's loop running as always); aeration <= 0 (the plant's gassed-power correlation
            divides by it).
    """
    recipe.check_covers(0.0, duration_h, where=where)
    for name, rule in (("agitation", "agitation"), ("precursor_feed", "precursor"),
                       ("precursor_setpoint", "setpoint"), ("aeration", "aeration")):
        p = recipe.profiles[name]
        starts, stops = np.asarray(p.start), np.asarray(p.stops)
        v0, v1 = np.asarray(p.value), np.asarray(p.value_end)
        for a, b, x0, x1 in zip(starts, stops, v0, v1):
            if a >= duration_h:
                continue
            if rule == "agitation" and (abs(x0 - AGITATION_RPM) > 1e-9 or abs(x1 - AGITATION_RPM) > 1e-9):
                raise RecipeError(
                    f"the IndPenSim plant runs its agitator at a fixed {AGITATION_RPM:g} rpm and "
                    "cannot follow another speed", where=where, field="agitation",
                    value=f"{x0:g} rpm on [{a:g}, {b:g}) h",
                    hint=f"set agitation to {AGITATION_RPM:g} rpm for the whole batch")
            if rule == "precursor" and b > PAA_CONTROL_FROM_H + 1e-9:
                # value at the later of (phase start, 9.8 h), and at the phase end
                frac = (max(a, PAA_CONTROL_FROM_H) - a) / (b - a)
                v_from = x0 + frac * (x1 - x0)
                if max(v_from, x1) > 0:
                    raise RecipeError(
                        f"precursor_feed must be 0 from {PAA_CONTROL_FROM_H:g} h: from then on the "
                        "plant's own PAA controller holds PAA near 1.2 g/L and overrides any "
                        "recipe feed", where=where, field="precursor_feed",
                        value=f"{max(v_from, x1):g} L/h on [{a:g}, {b:g}) h",
                        hint=f"end the precursor feed by {PAA_CONTROL_FROM_H:g} h and set it to 0 "
                             "after")
            if rule == "setpoint" and max(x0, x1) > 0 and (
                    a < PAA_CONTROL_FROM_H - 1e-9 or abs(x0 - PAA_SETPOINT_G_L) > 1e-9
                    or abs(x1 - PAA_SETPOINT_G_L) > 1e-9):
                raise RecipeError(
                    f"the plant's PAA controller holds {PAA_SETPOINT_G_L:g} g/L from "
                    f"{PAA_CONTROL_FROM_H:g} h and cannot hold another set-point or start earlier",
                    where=where, field="precursor_setpoint",
                    value=f"{x0:g} to {x1:g} g/L on [{a:g}, {b:g}) h",
                    hint=f"set precursor_setpoint to 0 before {PAA_LOOP_RECIPE_FROM_H:g} h and "
                         f"{PAA_SETPOINT_G_L:g} g/L (or 0) after")
            if rule == "aeration" and min(x0, x1) <= 0:
                raise RecipeError("aeration must be > 0 throughout: the plant's gassed-power "
                                  "correlation divides by the gas flow", where=where,
                                  field="aeration", value=f"{min(x0, x1):g} L/h on [{a:g}, {b:g}) h")


def _check_options(seed, fault, duration_h) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError("the plant seed must be an integer >= 0", field="seed", value=seed)
    if isinstance(fault, bool) or not isinstance(fault, (int, np.integer)) or not 0 <= fault <= 8:
        raise ParameterError("fault must be an integer 0-8 (0: none; 1 aeration, 2 pressure, "
                             "3 sugar feed, 4 base, 5 coolant, 6 all of 1-5, 7 temperature "
                             "sensor, 8 pH sensor)", field="fault", value=fault)
    steps = duration_h / STEP_H
    if not (STEP_H <= duration_h <= BATCH_H) or abs(steps - round(steps)) > 1e-6:
        raise ParameterError(f"duration_h must be a multiple of {STEP_H:g} h in "
                             f"[{STEP_H:g}, {BATCH_H:g}]", field="duration_h", value=duration_h)
    return int(round(steps))


def _check_future(future_disturbances) -> tuple[int, int] | None:
    """`(first step index, alt_seed)` from `(after_h, alt_seed)`, or `None`."""
    if future_disturbances is None:
        return None
    rule = (f"future_disturbances must be (after_h, alt_seed): after_h a multiple of {STEP_H:g} h "
            f"in [0, {BATCH_H:g}], alt_seed an integer in [0, 2**32)")
    if not isinstance(future_disturbances, (tuple, list)) or len(future_disturbances) != 2:
        raise ParameterError(rule, field="future_disturbances", value=future_disturbances)
    after_h, alt_seed = future_disturbances
    numeric = (int, float, np.integer, np.floating)
    if (isinstance(after_h, bool) or not isinstance(after_h, numeric) or not 0 <= after_h <= BATCH_H
            or abs(after_h / STEP_H - round(after_h / STEP_H)) > 1e-6):
        raise ParameterError(rule, field="future_disturbances", value=future_disturbances)
    if (isinstance(alt_seed, bool) or not isinstance(alt_seed, (int, np.integer))
            or not 0 <= alt_seed < 2**32):
        raise ParameterError(rule, field="future_disturbances", value=future_disturbances)
    return int(round(after_h / STEP_H)), int(alt_seed)


_DISTURBANCE_CHANNELS = {"distMuP": 0.03, "distMuX": 0.25, "distcs": 1500.0, "distcoil": 300.0,
                         "distabc": 0.2, "distPAA": 300000.0, "distTcin": 100.0, "distO_2in": 0.02}
"""pensimpy's slow disturbance channels (`Xinterp`) and the scale of their innovations."""
_DIST_B, _DIST_A = [0.005], [1.0, -0.995]  # pensimpy's AR(1) filter of every channel


def _redraw_disturbances(xinterp, first: int, alt_seed: int) -> None:
    """Replace each disturbance channel's values from index `first` on (step `first + 1`, the step
    from `first * 0.2` h) by the AR(1) filter continued from the value at `first - 1`, driven by
    `RandomState(alt_seed).randn` (pensimpy's draw: one (N+1, 1) series shared by all channels)."""
    from scipy.signal import lfilter

    n_values = len(xinterp.distMuP.y)
    if first >= n_values:
        return
    e = np.random.RandomState(alt_seed).randn(n_values, 1)[first:, 0]
    for name, scale in _DISTURBANCE_CHANNELS.items():
        ch = getattr(xinterp, name)
        if len(ch.y) != n_values:  # pragma: no cover - pensimpy 1.2.5 has one length
            raise TwinError("pensimpy's disturbance channels differ in length; this pensimpy "
                            "version is not supported", field=name, value=len(ch.y))
        zi = [-_DIST_A[1] * ch.y[first - 1]] if first > 0 else [0.0]
        tail, _ = lfilter(_DIST_B, _DIST_A, scale * e, zi=zi)
        ch.y = list(ch.y[:first]) + tail.tolist()


# ---------------------------------------------------------------------------------------------
# pensimpy


def _pensimpy():
    """Import pensimpy's environment, supplying the `fastodeint` stand-in it imports."""
    if "fastodeint" not in sys.modules:
        try:
            import fastodeint  # noqa: F401
        except ImportError:
            sys.modules["fastodeint"] = types.ModuleType("fastodeint")
    try:
        from pensimpy import peni_env_setup
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TwinError("the IndPenSim plant needs pensimpy: pip install --no-deps "
                        "pensimpy==1.2.5", value=str(exc)) from None
    return peni_env_setup


def pensimpy_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pensimpy")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _ph(h_plus: float) -> float:
    return -math.log10(h_plus) if h_plus > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# One batch


@dataclass
class PlantRun:
    """One IndPenSim batch.

    Attributes:
        batch: the batch id.
        seed: the plant seed (initial state, kinetic parameters, slow disturbances).
        fault: the pensimpy fault code (0: none).
        recipe: the recipe asked for (internal units).
        trajectory: one row every 0.2 h from 0 h: noise-free states at `time_h` (project units:
            g/L, L, kg weight, %, degC, mol% off-gas, mmol/L/h OUR/CER, cP) and the inputs applied
            from `time_h` to the next row (L/h, aeration in m3/min, bar, rpm, degC, -, plant
            feed concentrations in g/L, draw also in kg/h as the plant received it). The inputs
            of the last row repeat the last step's.
        measurements: long table `batch, time_h, variable, value, unit, source` (noisy).
        truth: the same variables at the same times, noise-free (`source` as in measurements).
        totals: material totals (see `batch_totals`).
        raw: pensimpy's batch data object (only with `keep_raw=True`), else `None`.
    """

    batch: str
    seed: int
    fault: int
    recipe: Recipe
    trajectory: pd.DataFrame
    measurements: pd.DataFrame
    truth: pd.DataFrame
    totals: dict[str, float]
    raw: object | None = field(default=None, repr=False)

    def batches_row(self, notes: str = "") -> dict:
        """This batch's row of the batches table (`batch, strain, start, scale_L, notes`)."""
        base = (f"IndPenSim (pensimpy {pensimpy_version()}) plant seed {self.seed}"
                + (f", fault {self.fault}" if self.fault else "")
                + f"; sugar feed {SUGAR_FEED_G_L:g} g/L nominal")
        return {"batch": self.batch, "strain": STRAIN, "start": "",
                "scale_L": float(self.trajectory["volume"].iloc[0]),
                "notes": f"{base}; {notes}" if notes else base}


def plant_step_lengths(n: int = N_STEPS) -> np.ndarray:
    """How long (h) the plant really integrates each of its first `n` steps.

    pensimpy integrates step k over `np.arange(t[k-1], t[k] + h, h)` with h = 0.005 h; floating
    point makes that range one point longer on 381 of the 1150 steps, which then last 0.205 h.
    A full batch is 231.9 h of process time on a 230 h clock. Totals use these lengths.
    """
    h = STEP_H / 40
    t = np.arange(0, BATCH_H + STEP_H, STEP_H)
    out = np.empty(n)
    for k in range(1, n + 1):
        span = np.arange(t[k - 1], t[k] + h, h)
        out[k - 1] = span[-1] - span[0]
    return out


def _schedule(recipe: Recipe, n: int) -> dict[str, np.ndarray]:
    mid = (np.arange(n) + 0.5) * STEP_H
    return {name: sample(recipe, name, mid) for name in recipe.profiles}


def run_batch(recipe: Recipe, seed: int, *, fault: int = 0, duration_h: float = BATCH_H,
              batch: str | None = None, keep_raw: bool = False,
              future_disturbances: tuple[float, int] | None = None) -> PlantRun:
    """Run one IndPenSim batch of `recipe` on plant seed `seed`.

    Args:
        recipe: a project recipe (internal units) covering `[0, duration_h]`.
        seed: plant seed, integer >= 0. It fixes the initial state, kinetic parameters and slow
            disturbances; reruns are bit-identical. It also seeds the measurement noise.
        fault: pensimpy fault code, 0 (none) to 8 (for example 1 aeration, 3 sugar feed).
        duration_h: stop early (multiple of 0.2 h), for example 30 h in tests.
        batch: the batch id (default `"IPS-<seed>"`).
        keep_raw: keep pensimpy's batch data object in `PlantRun.raw` (about 20 MB).
        future_disturbances: `(after_h, alt_seed)` re-draws the plant's slow disturbances from
            `after_h` on (h, a multiple of 0.2 in [0, 230]; alt_seed an integer in [0, 2**32)),
            keeping everything else of plant seed `seed` (initial state, kinetic parameters, PAA
            and nitrogen feed concentrations, kLa factor). The plant's eight disturbance
            channels (specific growth and production rates, sugar, oil, acid/base, PAA feed
            concentrations, coolant inlet temperature, inlet O2) are each
            d[i] = 0.995 d[i-1] + 0.005 s_c e[i] with its own scale s_c and one shared series e
            from `RandomState(seed).randn`; here e[i] for the steps from `after_h` on comes from
            `RandomState(alt_seed).randn` instead (the same index i, so a given alt_seed gives
            the same innovations whatever `after_h`), and each channel continues its filter
            from its value before `after_h`. Steps before `after_h` are bit-identical to the
            plain run, and so is the whole run when `after_h >= duration_h`. `None` (default):
            the plant's own disturbances. For ensembles of the plant's possible futures.

    Returns:
        A `PlantRun`: trajectory, noisy measurements, noise-free truth and totals.

    Raises:
        RecipeError: a recipe the plant cannot run (see `check_recipe`).
        ParameterError: bad seed, fault, duration or future_disturbances.
        SolverError: the plant's ODE solver failed (NaN or vanished volume), naming seed and step.

    Example:
        >>> run = run_batch(default_recipe(), seed=100, duration_h=30.0)   # doctest: +SKIP
        >>> run.totals["penicillin_total_kg"]                              # doctest: +SKIP
    """
    n = _check_options(seed, fault, duration_h)
    future = _check_future(future_disturbances)
    check_recipe(recipe, duration_h=duration_h)
    batch = f"IPS-{seed}" if batch is None else str(batch)
    sched = _schedule(recipe, n)
    mod = _pensimpy()
    from scipy.integrate import ODEintWarning

    env = mod.PenSimEnv(None, fast=False)
    env.raman_sim = lambda k, x: x  # skip the spectra, keep the PAA controller (Raman_spec == 2)
    env.ctrl_flags.Faults = int(fault)
    env.random_seed_ref = int(seed)
    _, x = env.reset()
    if future is not None:
        _redraw_disturbances(env.xinterp, *future)
    x0 = env.x0

    states = np.full((n + 1, len(_STATE_COLUMNS)), np.nan)
    inputs = np.full((n + 1, len(_INPUT_COLUMNS)), np.nan)
    rho0 = 1100.0 + x0.P + x0.a0 + x0.a1 + x0.a3 + x0.a4
    x0_biomass = x0.a0 + x0.a1 + x0.a3 + x0.a4  # the ODE's biomass (X0.X itself is unused)
    states[0] = _state_row(x0_biomass, x0.S, x0.P, x0.V, x0.Wt, x0.DO2, x0.PAA, x0.NH3, 4.0, x0.T,
                           _ph(x0.pH), x0.O2, x0.CO2outgas, np.nan, rho0)
    rho_prev = rho0
    dist_cs, dist_coil, dist_paa = (env.xinterp.distcs.y, env.xinterp.distcoil.y,
                                    env.xinterp.distPAA.y)
    paa_c = env.param_list[4]
    for k in range(1, n + 1):
        i = k - 1
        env.ctrl_flags.T_sp = float(sched["temperature"][i]) + 273.15
        env.ctrl_flags.pH_sp = float(sched["pH"][i])
        draw_kg_h = float(sched["draw"][i]) * rho_prev / 1000.0
        fg = float(sched["aeration"][i]) / M3_MIN_TO_L_H
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", ODEintWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                _, x, _, done = env.step(k, x, float(sched["substrate_feed"][i]),
                                         float(sched["oil_feed"][i]), fg,
                                         float(sched["back_pressure"][i]), draw_kg_h,
                                         float(sched["water_feed"][i]),
                                         float(sched["precursor_feed"][i]))
        except (ValueError, ZeroDivisionError, OverflowError, FloatingPointError,
                ODEintWarning) as exc:
            raise _solver_error(seed, k, f"{type(exc).__name__}: {exc}") from None
        h_plus = x.pH.y[i]
        ph = h_plus if done else _ph(h_plus)  # pensimpy converts [H+] to pH after the last step
        a_sum = x.a0.y[i] + x.a1.y[i] + x.a3.y[i] + x.a4.y[i]
        rho = 1100.0 + x.P.y[i] + a_sum
        row = _state_row(x.X.y[i], x.S.y[i], x.P.y[i], x.V.y[i], x.Wt.y[i], x.DO2.y[i],
                         x.PAA.y[i], x.NH3.y[i], x.Viscosity.y[i], x.T.y[i], ph, x.O2.y[i],
                         x.CO2outgas.y[i], x.Fg.y[i], rho)
        if not np.all(np.isfinite(row)) or x.V.y[i] <= 1.0:
            raise _solver_error(seed, k, f"non-finite or vanished state (volume {float(x.V.y[i]):g} L)")
        states[k] = row
        vol_rate = -x.discharge.y[i] * 1000.0 / rho_prev
        inputs[i] = (x.Fs.y[i], x.Foil.y[i], x.Fpaa.y[i], x.Fw.y[i], vol_rate, x.Fg.y[i],
                     x.pressure.y[i], x.RPM.y[i], x.Fa.y[i], x.Fb.y[i], env.ctrl_flags.T_sp - 273.15,
                     env.ctrl_flags.pH_sp, -x.discharge.y[i], SUGAR_FEED_G_L + dist_cs[i],
                     OIL_FEED_G_L + dist_coil[i], (paa_c + dist_paa[i]) / 1000.0)
        rho_prev = rho
    inputs[n] = inputs[n - 1]
    # OUR/CER at t=0 use the first step's gas flow
    states[0, _STATE_COLUMNS.index("oxygen_uptake_rate"):_STATE_COLUMNS.index("carbon_evolution_rate") + 1] = \
        _gas_rates(x0.O2, x0.CO2outgas, inputs[0, _INPUT_COLUMNS.index("aeration")], x0.V)
    traj = pd.DataFrame(np.hstack([states, inputs]), columns=[*_STATE_COLUMNS, *_INPUT_COLUMNS])
    traj.insert(0, "time_h", np.round(np.arange(n + 1) * STEP_H, 10))
    traj["step_h"] = np.append(plant_step_lengths(n), np.nan)
    run_rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(fault), 1]))
    truth, meas = _observe(traj, batch, run_rng)
    return PlantRun(batch=batch, seed=int(seed), fault=int(fault), recipe=recipe,
                    trajectory=traj, measurements=meas, truth=truth,
                    totals=batch_totals(traj), raw=x if keep_raw else None)


def _solver_error(seed, k, why: str) -> SolverError:
    return SolverError(f"the IndPenSim solver failed on plant seed {seed} at step {k} "
                       f"(t = {(k - 1) * STEP_H:.1f}-{k * STEP_H:.1f} h): {why}",
                       hint="check the recipe for extreme values (feeds, aeration, draw that "
                            "empties the vessel)")


def _gas_rates(o2_frac, co2_pct, fg_m3_min, volume_L):
    """OUR and CER (mmol/L/h) from the plant's quasi-steady off-gas balances."""
    v_m3 = volume_L / 1000.0
    our_mg = 1428.5714285714287 * fg_m3_min * (0.21 - o2_frac * 0.79 / (1 - o2_frac - co2_pct / 100)) \
        / (0.06 * v_m3)
    cer_g = 1964.2857142857142 * fg_m3_min * (co2_pct - 0.033) / volume_L
    return our_mg / 31.998, cer_g / 44.01 * 1000.0


def _state_row(X, S, P, V, Wt, DO2, PAA, NH3, visc, T_K, ph, o2, co2, fg, rho):
    our, cer = (np.nan, np.nan) if not np.isfinite(fg) else _gas_rates(o2, co2, fg, V)
    return (X, S, P, V, Wt, 100.0 * DO2 / DO_CALIBRATION_MG_L, PAA / 1000.0, NH3 / 1000.0, visc,
            T_K - 273.15, ph, 100.0 * o2, co2, our, cer, rho)


def batch_totals(traj: pd.DataFrame) -> dict[str, float]:
    """Material totals of a trajectory (see `PlantRun.trajectory`).

    Penicillin drawn is the sum over steps of draw (L/h) x the step's integration length
    (`step_h`: 0.2 or 0.205 h, see `plant_step_lengths`) x the mean of the titer at the step's
    two ends; the total is that plus the titer times volume at the end. Every fed total is
    likewise the sum of flow x `step_h`.

    Returns:
        `penicillin_total_kg, penicillin_vessel_kg, penicillin_drawn_kg, final_titer_g_L,
        sugar_kg, sugar_feed_L, oil_L, paa_kg, precursor_feed_L, water_L, drawn_L, acid_L,
        base_L, final_volume_L, peak_volume_L, duration_h` (clock) and `process_time_h`.
    """
    t = traj.iloc[:-1]  # inputs of row k act on [t_k, t_k+1)
    P = traj["product"].to_numpy()
    dt = t["step_h"].to_numpy()
    drawn_L = t["draw"].to_numpy() * dt
    pen_drawn = float(np.sum(drawn_L * 0.5 * (P[:-1] + P[1:]))) / 1000.0
    last = traj.iloc[-1]
    pen_vessel = float(last["product"] * last["volume"]) / 1000.0
    return {
        "penicillin_total_kg": pen_vessel + pen_drawn,
        "penicillin_vessel_kg": pen_vessel,
        "penicillin_drawn_kg": pen_drawn,
        "final_titer_g_L": float(last["product"]),
        "sugar_kg": float(np.sum(t["substrate_feed"] * t["sugar_feed_g_L"] * dt) / 1000.0),
        "sugar_feed_L": float(np.sum(t["substrate_feed"] * dt)),
        "oil_L": float(np.sum(t["oil_feed"] * dt)),
        "paa_kg": float(np.sum(t["precursor_feed"] * t["precursor_feed_g_L"] * dt) / 1000.0),
        "precursor_feed_L": float(np.sum(t["precursor_feed"] * dt)),
        "water_L": float(np.sum(t["water_feed"] * dt)),
        "drawn_L": float(drawn_L.sum()),
        "acid_L": float(np.sum(t["acid_flow"] * dt)),
        "base_L": float(np.sum(t["base_flow"] * dt)),
        "final_volume_L": float(last["volume"]),
        "peak_volume_L": float(traj["volume"].max()),
        "duration_h": float(last["time_h"]),
        "process_time_h": float(np.sum(dt)),
    }


# ---------------------------------------------------------------------------------------------
# Measurements


def _observe(traj: pd.DataFrame, batch: str, rng: np.random.Generator):
    """Sample the trajectory as the plant's historian and lab would; returns (truth, measured)."""
    t = traj["time_h"].to_numpy()
    end = t[-1]
    on = np.isclose(np.mod(t + 1e-9, ONLINE_EVERY_H), 0.0, atol=1e-6)
    off = np.isclose(np.mod(t + 1e-9, OFFLINE_EVERY_H), 0.0, atol=1e-6) | np.isclose(t, end)
    dt = traj["step_h"].to_numpy()[:-1]
    cum = {"acid_total": np.concatenate([[0.0], np.cumsum(traj["acid_flow"].to_numpy()[:-1] * dt)]),
           "base_total": np.concatenate([[0.0], np.cumsum(traj["base_flow"].to_numpy()[:-1] * dt)])}
    truth_parts, meas_parts = [], []
    for source, table, mask in (("online", ONLINE_NOISE, on), ("offline", OFFLINE_NOISE, off)):
        times = t[mask]
        for var, (unit, noise) in table.items():
            true = cum[var][mask] if var in cum else traj[var].to_numpy()[mask]
            noisy = noise.sample(true, rng)
            for parts, vals in ((truth_parts, true), (meas_parts, noisy)):
                parts.append(pd.DataFrame({"batch": batch, "time_h": times, "variable": var,
                                           "value": vals, "unit": unit, "source": source}))
    return (pd.concat(truth_parts, ignore_index=True), pd.concat(meas_parts, ignore_index=True))


def _pensimpy_default_phases() -> dict[str, list[tuple[float, float, float]]]:
    """pensimpy's default schedules as project phases (internal units), each value *until* its time.

    Used to write `indpensim_default_recipe.csv` and to test it; see `default_recipe` for the
    deliberate departures (draw in L/h, precursor feed left to the plant's controller, whose
    set-point is written as `precursor_setpoint` from 10 h, set-points and agitation added).
    """
    _pensimpy()
    from pensimpy.data import constants as c

    def until(profile, scale=1.0):
        out, a = [], 0.0
        for sp in profile:
            b = float(sp["time"])
            if b > a:
                out.append((a, b, float(sp["value"]) * scale))
                a = b
        if a < BATCH_H:
            out.append((a, BATCH_H, out[-1][2]))
        return out

    draw = [(a, b, 3500.0 if v > 0 else 0.0) for a, b, v in until(c.DISCHARGE_DEFAULT_PROFILE)]
    paa = [(a, b, v) for a, b, v in until(c.PAA_DEFAULT_PROFILE) if b <= PAA_CONTROL_FROM_H]
    paa.append((paa[-1][1], BATCH_H, 0.0))
    return {
        "substrate_feed": until(c.FS_DEFAULT_PROFILE),
        "oil_feed": until(c.FOIL_DEFAULT_PROFILE),
        "precursor_feed": paa,
        "water_feed": until(c.WATER_DEFAULT_PROFILE),
        "draw": draw,
        "temperature": [(0.0, BATCH_H, round(298.0 - 273.15, 6))],
        "pH": [(0.0, BATCH_H, 6.5)],
        "aeration": until(c.FG_DEFAULT_PROFILE, M3_MIN_TO_L_H),
        "agitation": [(0.0, BATCH_H, AGITATION_RPM)],
        "back_pressure": until(c.PRESS_DEFAULT_PROFILE),
        "precursor_setpoint": [(0.0, PAA_LOOP_RECIPE_FROM_H, 0.0),
                               (PAA_LOOP_RECIPE_FROM_H, BATCH_H, PAA_SETPOINT_G_L)],
    }
