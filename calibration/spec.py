"""Strain files (TOML): which model, which data, which parameters are fitted with which priors.

Layout::

    [strain]        name, description, scenario (path to the scenario TOML giving model structure,
                    vessel, feeds and the fixed parameter values)
    [data]          directory = batch folder in the twin.data format with recipes/<batch>.csv
                    (or "demo" for the embedded IndPenSim history); holdout = [batch ids];
                    recorded_feeds = flows whose historian record replaces the recipe's plan
                    (default: every recorded flow; name only controller-driven ones to keep
                    the operators' noise-free plan for the rest)
    [synthetic]     instead of [data]: batches simulated from known parameters (see synthetic.py)
    [parameters]    NAME = { median = m, log_sd = s }  -- lognormal prior, physical units of NAME
    [batch_effects] parameters = [names]; sd_prior = half-normal scale of the log-scale batch SD;
                    parameterisation = "non-centred" (default) | "centred" (see calibration.model)
    [initial]       NAME = { log_sd = s }  -- per-batch uncertain initial amount (log scale)
    [observations]  VARIABLE = { sd = a, cv = b, every_h = k, floor = f }; noise SD =
                    sqrt(a^2 + (b pred)^2), a and b are half-normal priors' scales (0 fixes that
                    part to zero); floor (optional, the variable's internal unit): the lab reports
                    any reading below it as `f`, so a reading at or below it says only "at most
                    f" (a left-censored observation, see calibration.model)
    [inference]     method = "nuts" | "svi"; chains, warmup, samples, dt, seed, svi_steps,
                    max_tree_depth, target_accept, warm_start (NUTS starts from an SVI fit: true),
                    laplace_starts (mode searches of the SVI start, best Laplace evidence wins: 4),
                    laplace_iterations (L-BFGS iterations per mode search: 500),
                    svi_draws (draws averaged per SVI step, evaluated in threads: 2)
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

from twin.errors import ScenarioError
from twin.reactor import parameter_table
from twin.scenario import Scenario, load_scenario

__all__ = ["Prior", "ObservationSpec", "StrainSpec", "load_strain", "OBSERVABLE"]

# variables the calibration model can predict, with their unit (internal)
OBSERVABLE = {
    "biomass": "g/L", "substrate": "g/L", "product": "g/L", "precursor": "g/L", "oil": "g/L",
    "volume": "L", "dissolved_oxygen": "%", "oxygen_uptake_rate": "mmol/L/h",
}
BATCH_PARAMETERISATIONS = ("non-centred", "centred")
_INITIAL = ("biomass", "substrate", "product", "precursor", "oil", "volume")

_SECTIONS = {
    "strain": {"name", "description", "scenario"},
    "data": {"directory", "holdout", "recorded_feeds"},
    "synthetic": {"n_batches", "seed", "truth", "batch_sd", "assay_every_h", "online_every_h",
                  "noise_cv", "noise_sd", "feed_jitter"},
    "parameters": None,
    "batch_effects": {"parameters", "sd_prior", "parameterisation"},
    "initial": None,
    "observations": None,
    "inference": {"method", "chains", "warmup", "samples", "dt", "seed", "svi_steps", "max_tree_depth",
                  "target_accept", "warm_start", "laplace_starts", "laplace_iterations", "svi_draws"},
}


@dataclasses.dataclass(frozen=True)
class Prior:
    """Lognormal prior of a positive parameter: log(value) ~ Normal(log(median), log_sd)."""

    name: str  # public parameter name, e.g. "kinetics.mu_max"
    median: float
    log_sd: float
    unit: str
    lower: float
    upper: float

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1]


# the noise scales of an observed variable: posterior site prefix (`<kind>_<variable>`) -> strain key
NOISE_SCALES = {"sd": "sd", "cv": "cv", "timing": "timing_h"}
NOISE_PREFIXES = tuple(f"{k}_" for k in NOISE_SCALES)  # sites of noise scales
HYPER_PREFIXES = ("tau_",) + NOISE_PREFIXES  # sites of SDs and noise scales


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
    variable: str
    sd: float  # half-normal scale of the additive noise SD (internal unit), 0 = none
    cv: float  # half-normal scale of the relative noise SD, 0 = none
    every_h: float  # thin to one observation per this many hours (0: keep all)
    floor: float | None = None  # readings at or below it are left-censored ("at most floor")
    # half-normal scale (h) of the timing error: the model's trajectory may run early or late by
    # about this much, which reads as noise of SD |slope| x timing where the variable changes
    # fast (effective variance); 0 = none
    timing_h: float = 0.0

    @property
    def noise_scales(self) -> dict[str, float]:
        """`{kind: half-normal prior scale}` (0: the term is off), kinds as `NOISE_SCALES`."""
        return {kind: getattr(self, key) for kind, key in NOISE_SCALES.items()}


@dataclasses.dataclass(frozen=True)
class StrainSpec:
    name: str
    description: str
    path: Path
    scenario: Scenario
    data_dir: Path | None
    holdout: tuple[str, ...]
    recorded_feeds: tuple[str, ...]
    synthetic: dict[str, Any] | None
    priors: tuple[Prior, ...]
    batch_effects: tuple[str, ...]
    batch_sd_prior: float
    initial: dict[str, float]
    observations: tuple[ObservationSpec, ...]
    inference: dict[str, Any]
    raw: dict[str, Any]
    # "non-centred" (sample the standardised effects eps) or "centred" (sample each batch's
    # log-value; eps is then a deterministic site): see calibration.model
    batch_parameterisation: str = "non-centred"
    # batch directories or measurements files added to the strain's data (`twin calibrate
    # --update-with`); not part of the TOML
    extra_data: tuple[Path, ...] = ()

    @property
    def floors(self) -> dict[str, float]:
        """`{variable: floor}` of the observed variables whose readings are floored by the lab."""
        return {o.variable: o.floor for o in self.observations if o.floor is not None}

    @property
    def noise_sites(self) -> tuple[str, ...]:
        """The posterior's noise sites (`<kind>_<variable>`) this observation model has."""
        return tuple(f"{kind}_{o.variable}" for o in self.observations
                     for kind, scale in o.noise_scales.items() if scale > 0)

    @property
    def parameter_names(self) -> list[str]:
        return [p.name for p in self.priors]


def _err(msg, where, field, value=None, hint=None):
    return ScenarioError(msg, where=where, field=field, value=value, hint=hint)


def _num(v, where, field, *, positive=False, nonneg=False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise _err("must be a finite number", where, field, v)
    v = float(v)
    if positive and v <= 0:
        raise _err("must be > 0", where, field, v)
    if nonneg and v < 0:
        raise _err("must be >= 0", where, field, v)
    return v


def load_strain(path: str | Path) -> StrainSpec:
    """Read and validate a strain TOML (errors name the file, key, rule and value)."""
    path = Path(path)
    if not path.is_file():
        raise _err("strain file not found", path, None)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise _err(f"not valid TOML: {e}", path, None) from None
    for sec, val in raw.items():
        if sec not in _SECTIONS:
            raise _err("unknown section", path, f"[{sec}]", hint=f"known: {', '.join(_SECTIONS)}")
        if not isinstance(val, dict):
            raise _err("must be a table", path, sec, val)
        allowed = _SECTIONS[sec]
        if allowed is not None:
            extra = sorted(set(val) - allowed)
            if extra:
                raise _err("unknown key", path, f"{sec}.{extra[0]}", hint=f"known: {', '.join(sorted(allowed))}")
    for sec in ("strain", "parameters", "observations"):
        if sec not in raw:
            raise _err("missing required section", path, f"[{sec}]")
    st = raw["strain"]
    for k in ("name", "scenario"):
        if k not in st:
            raise _err("missing required key", path, f"strain.{k}")
    scenario = load_scenario(path.parent / st["scenario"])
    table = parameter_table(scenario.model)
    short = {k.split(".", 1)[1]: k for k in table}

    priors = []
    for key, spec in raw["parameters"].items():
        full = short.get(key, key if key in table else None)
        if full is None:
            raise _err("unknown parameter (not in the scenario's model)", path, f"parameters.{key}",
                       hint=f"known: {', '.join(sorted(short))}")
        if not isinstance(spec, dict) or set(spec) - {"median", "log_sd"} or "median" not in spec or "log_sd" not in spec:
            raise _err("a prior is { median = value, log_sd = value }", path, f"parameters.{key}", spec)
        info = table[full]
        med = _num(spec["median"], path, f"parameters.{key}.median", positive=True)
        sd = _num(spec["log_sd"], path, f"parameters.{key}.log_sd", positive=True)
        if not info.lower <= med <= info.upper:
            raise _err(f"prior median outside the physical range [{info.lower:g}, {info.upper:g}] {info.unit}",
                       path, f"parameters.{key}.median", med)
        priors.append(Prior(full, med, sd, info.unit, info.lower, info.upper))
    if not priors:
        raise _err("no parameters to fit", path, "[parameters]")
    fitted = {p.key for p in priors}

    be = raw.get("batch_effects", {})
    be_params = tuple(be.get("parameters", []))
    for p in be_params:
        if p not in fitted:
            raise _err("batch effects need a fitted parameter", path, "batch_effects.parameters", p,
                       hint=f"fitted: {', '.join(sorted(fitted))}")
    be_sd = _num(be.get("sd_prior", 0.1), path, "batch_effects.sd_prior", positive=True)
    be_param = be.get("parameterisation", "non-centred")
    if be_param not in BATCH_PARAMETERISATIONS:
        raise _err("unknown parameterisation of the batch effects", path, "batch_effects.parameterisation",
                   be_param, hint=f"one of {', '.join(BATCH_PARAMETERISATIONS)}")

    initial = {}
    for k, spec in raw.get("initial", {}).items():
        if k not in _INITIAL:
            raise _err("unknown initial state", path, f"initial.{k}", hint=f"known: {', '.join(_INITIAL)}")
        if not isinstance(spec, dict) or set(spec) != {"log_sd"}:
            raise _err("an uncertain initial state is { log_sd = value }", path, f"initial.{k}", spec)
        initial[k] = _num(spec["log_sd"], path, f"initial.{k}.log_sd", positive=True)

    obs = []
    for var, spec in raw["observations"].items():
        if var not in OBSERVABLE:
            raise _err("the model does not observe this variable", path, f"observations.{var}",
                       hint=f"observable: {', '.join(OBSERVABLE)}")
        if not isinstance(spec, dict) or set(spec) - {"sd", "cv", "every_h", "floor", "timing_h"}:
            raise _err("an observation is { sd = ..., cv = ..., timing_h = ..., every_h = ..., floor = ... }", path,
                       f"observations.{var}", spec)
        sd = _num(spec.get("sd", 0.0), path, f"observations.{var}.sd", nonneg=True)
        cv = _num(spec.get("cv", 0.0), path, f"observations.{var}.cv", nonneg=True)
        if sd == 0 and cv == 0:
            raise _err("needs sd > 0 or cv > 0", path, f"observations.{var}")
        every = _num(spec.get("every_h", 0.0), path, f"observations.{var}.every_h", nonneg=True)
        floor = _num(spec["floor"], path, f"observations.{var}.floor") if "floor" in spec else None
        timing = _num(spec.get("timing_h", 0.0), path, f"observations.{var}.timing_h", nonneg=True)
        obs.append(ObservationSpec(var, sd, cv, every, floor, timing))
    if not any(o.variable == "product" for o in obs):
        raise _err("the product must be observed to calibrate a strain", path, "observations.product")

    inf = {"method": "nuts", "chains": 2, "warmup": 300, "samples": 500, "dt": 0.5, "seed": 0,
           "svi_steps": 2000, "max_tree_depth": 8, "target_accept": 0.85,
           "laplace_starts": 4, "laplace_iterations": 500, "svi_draws": 2,
           "warm_start": True}
    inf.update(raw.get("inference", {}))
    if inf["method"] not in ("nuts", "svi"):
        raise _err("must be 'nuts' or 'svi'", path, "inference.method", inf["method"])
    for k in ("chains", "warmup", "samples", "svi_steps", "max_tree_depth", "laplace_starts", "laplace_iterations",
              "svi_draws"):
        if not isinstance(inf[k], int) or inf[k] < 1:
            raise _err("must be a whole number >= 1", path, f"inference.{k}", inf[k])
    _num(inf["dt"], path, "inference.dt", positive=True)
    if not isinstance(inf["warm_start"], bool):
        raise _err("must be true or false", path, "inference.warm_start", inf["warm_start"])

    data_dir = None
    holdout: tuple[str, ...] = ()
    synthetic = raw.get("synthetic")
    if "data" in raw:
        d = raw["data"].get("directory")
        if d is None:
            raise _err("missing required key", path, "data.directory")
        if d == "demo":
            from twin.plants import demo_history_dir

            data_dir = demo_history_dir()
        else:
            data_dir = (path.parent / d).resolve()
        if not data_dir.is_dir():
            raise _err("data directory not found", path, "data.directory", str(data_dir))
        holdout = tuple(str(b) for b in raw["data"].get("holdout", []))
    elif synthetic is None:
        raise _err("give [data] or [synthetic]", path, "[data]")
    flows = ("substrate_feed", "oil_feed", "precursor_feed", "water_feed", "draw")
    recorded = tuple(raw.get("data", {}).get("recorded_feeds", flows))
    for f in recorded:
        if f not in flows:
            raise _err("not a flow the historian can record", path, "data.recorded_feeds", f,
                       hint=f"flows: {', '.join(flows)}")
    return StrainSpec(name=str(st["name"]), description=str(st.get("description", "")), path=path,
                      scenario=scenario, data_dir=data_dir, holdout=holdout,
                      recorded_feeds=recorded, synthetic=synthetic,
                      priors=tuple(priors), batch_effects=be_params, batch_sd_prior=be_sd,
                      batch_parameterisation=be_param,
                      initial=initial, observations=tuple(obs), inference=inf, raw=raw)
