"""Scenario files (TOML): a model structure, its parameters, a vessel, initial state and a recipe.

A scenario is parsed into a typed `Scenario`; every key is checked (unknown keys and missing
required keys are errors naming the file and the key), every value with a unit is converted to
internal units, every parameter is checked against its physical range. Values are numbers in the
internal unit stated in the parameter table (`twin params`) or strings with a unit,
for example `volume = "58 m3"` or `mu_max = "0.0015 1/min"`.

Layout::

    [scenario]   name, title, duration_h, output_every_h
    [model]      growth = "monod" | "contois"; oxygen = "quasi_steady" | "dynamic";
                 carbon = "pirt" (growth drives uptake) | "uptake_limited" (uptake drives growth);
                 oil = bool; precursor = bool; co2 = bool (dissolved-CO2 inhibition); impellers = int
    [kinetics]   culture parameters (flat: mu_max, K_X, beta_max, ...)
    [vessel]     geometry and transfer constants
    [feeds]      feed compositions
    [initial]    biomass, substrate, product, precursor, oil (g/L), volume (L), dissolved_oxygen (%)
    [controls]   constant value of every manipulated variable the recipe does not set
    [recipe]     file = "relative/path.csv" and/or phases = {variable = [[start_h, end_h, value(, value_end)], ...]};
                 optional ph_loop_history = "strain.toml": `twin simulate` (without a posterior) adds
                 the median acid + base inflow that strain's history recorded (the twin has no pH model)
    [solver]     method = "adaptive" | "fixed"; rtol, atol, dt, max_steps
    [sources]    free text per parameter or topic: where each value comes from
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from . import kinetics as kin
from .errors import ParameterError, RecipeError, ScenarioError, TwinError, UnitError
from .reactor import DynamicOxygen, Feeds, FermentationModel, QuasiSteadyOxygen, Vessel, check_parameters
from .recipe import Recipe, read_recipe_csv, recipe_from_phases
from .simulate import Adaptive, FixedGrid
from .state import CONTROL_VARIABLES, ReactorState
from .units import dimension_of, to_internal

__all__ = ["Scenario", "load_scenario", "parse_overrides", "build_model"]

_GROWTH = {"monod": kin.MonodGrowth, "contois": kin.ContoisGrowth}
_OXYGEN = {"quasi_steady": QuasiSteadyOxygen, "dynamic": DynamicOxygen}
_CARBON = {"pirt": kin.PirtCarbon, "uptake_limited": kin.UptakeLimitedCarbon}
# production's temperature factor: the growth curve ("shared"), a cardinal curve of its own, or none
_PRODUCTION_TEMPERATURE = {"shared": None, "cardinal": kin.ProductionTemperature, "none": kin.TemperatureIndependent}

_SCHEMA: dict[str, set[str]] = {
    "scenario": {"name", "title", "description", "duration_h", "output_every_h"},
    "model": {"growth", "oxygen", "oil", "precursor", "co2", "impellers", "carbon", "production_temperature"},
    "kinetics": set(),  # checked against the model structure
    "vessel": set(),
    "feeds": set(),
    "initial": {"biomass", "substrate", "product", "precursor", "oil", "volume", "dissolved_oxygen"},
    "controls": set(CONTROL_VARIABLES),
    "recipe": {"file", "phases", "ph_loop_history"},
    "solver": {"method", "rtol", "atol", "dt", "max_steps"},
    "sources": None,  # free
    "optimize": None,  # checked by twin.optimize.load_optimize_spec
}
_REQUIRED = {"scenario": {"name", "duration_h"}, "model": {"growth"}, "kinetics": set(),
             "vessel": set(), "feeds": set(), "initial": {"biomass", "substrate", "volume"},
             "controls": set()}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A parsed scenario: everything `simulate` needs, in internal units."""

    name: str
    title: str
    path: Path | None
    duration_h: float
    output_every_h: float
    model: FermentationModel
    recipe: Recipe
    y0: ReactorState
    control_defaults: dict[str, float]
    options: Adaptive | FixedGrid
    sources: dict[str, str]
    raw: dict[str, Any]  # the TOML after overrides (for provenance)
    ph_loop_history: Path | None = None  # [recipe] ph_loop_history: a strain file (see `twin simulate`)

    @property
    def ts(self):
        n = int(round(self.duration_h / self.output_every_h))
        ts = [i * self.output_every_h for i in range(n + 1)]
        if ts[-1] < self.duration_h - 1e-9:
            ts.append(self.duration_h)
        return jnp.asarray(ts)


def _value(raw, unit: str, where, field: str) -> float:
    """A number in `unit`, or a string 'value unit' converted to `unit`'s dimension."""
    if isinstance(raw, bool):
        raise ScenarioError("must be a number", where=where, field=field, value=raw)
    if isinstance(raw, (int, float)):
        v = float(raw)
    elif isinstance(raw, str):
        parts = raw.strip().split(None, 1)
        try:
            num = float(parts[0])
        except (ValueError, IndexError):
            raise ScenarioError("must be a number or a string 'value unit'", where=where, field=field,
                                value=raw) from None
        if len(parts) == 1:
            v = num
        else:
            dim = dimension_of(unit)
            v = float(to_internal(num, parts[1], dim, where=where, field=field))
    else:
        raise ScenarioError("must be a number or a string 'value unit'", where=where, field=field, value=raw)
    if not math.isfinite(v):
        raise ScenarioError("must be finite (no NaN or inf)", where=where, field=field, value=raw)
    return v


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if "unit" in f.metadata}


def _build(cls, table: dict, section: str, where, used: set, extra: dict | None = None):
    kwargs = dict(extra or {})
    for name, f in _fields(cls).items():
        key = f"{section}.{name}"
        if name in table:
            kwargs[name] = _value(table[name], f.metadata["unit"], where, key)
            used.add(name)
        elif f.default is dataclasses.MISSING:
            raise ScenarioError("missing required key", where=where, field=key,
                                hint=f"{f.metadata['doc']}, in {f.metadata['unit']}")
    return cls(**kwargs)


def build_model(raw: dict, where=None) -> FermentationModel:
    """Build a `FermentationModel` from the `[model]`, `[kinetics]`, `[vessel]`, `[feeds]` tables."""
    m = raw.get("model", {})
    growth_name = m.get("growth")
    if growth_name not in _GROWTH:
        raise ScenarioError(f"must be one of {sorted(_GROWTH)}", where=where, field="model.growth",
                            value=growth_name)
    oxy_name = m.get("oxygen", "quasi_steady")
    if oxy_name not in _OXYGEN:
        raise ScenarioError(f"must be one of {sorted(_OXYGEN)}", where=where, field="model.oxygen",
                            value=oxy_name)
    carbon_name = m.get("carbon", "pirt")
    if carbon_name not in _CARBON:
        raise ScenarioError(f"must be one of {sorted(_CARBON)}", where=where, field="model.carbon",
                            value=carbon_name)
    for flag in ("oil", "precursor", "co2"):
        if not isinstance(m.get(flag, False), bool):
            raise ScenarioError("must be true or false", where=where, field=f"model.{flag}", value=m.get(flag))
    p_temp = m.get("production_temperature", "shared")
    if isinstance(p_temp, bool):  # the switch's older spelling
        p_temp = "cardinal" if p_temp else "shared"
    if not isinstance(p_temp, str) or p_temp not in _PRODUCTION_TEMPERATURE:
        raise ScenarioError(f"must be one of {sorted(_PRODUCTION_TEMPERATURE)} (or true / false for "
                            "cardinal / shared)", where=where, field="model.production_temperature",
                            value=m.get("production_temperature"))
    impellers = m.get("impellers", 1)
    if not isinstance(impellers, int) or isinstance(impellers, bool) or not 1 <= impellers <= 10:
        raise ScenarioError("must be a whole number from 1 to 10", where=where, field="model.impellers",
                            value=impellers)
    kt = raw.get("kinetics", {})
    used: set[str] = set()
    families = dict(
        growth=_GROWTH[growth_name], production=kin.LuedekingPiret, hydrolysis=kin.ProductHydrolysis,
        temperature=kin.CardinalTemperature, ph=kin.CardinalPH, oxygen=kin.OxygenLimitation,
        respiration=kin.OxygenDemand, sugar=kin.SugarUptake)
    if m.get("oil", False):
        families["oil"] = kin.OilUptake
    if m.get("precursor", False):
        families["precursor"] = kin.PrecursorUptake
    if m.get("co2", False):
        families["co2"] = kin.CarbonDioxide
    if _PRODUCTION_TEMPERATURE[p_temp] is not None:
        families["production_temperature"] = _PRODUCTION_TEMPERATURE[p_temp]
    parts = {k: _build(cls, kt, "kinetics", where, used) for k, cls in families.items()}
    unknown = sorted(set(kt) - used)
    if unknown:
        known = sorted({n for cls in families.values() for n in _fields(cls)})
        hint = f"known for this model structure: {', '.join(known)}"
        others = {n for cls in (kin.OilUptake, kin.PrecursorUptake, kin.CarbonDioxide, kin.MonodGrowth,
                                kin.ContoisGrowth, kin.ProductionTemperature) for n in _fields(cls)}
        if set(unknown) & others:
            hint += (" (oil, precursor, CO2 and production-temperature parameters need model.oil / "
                     "model.precursor / model.co2 / model.production_temperature = \"cardinal\")")
        raise ScenarioError("unknown key", where=where, field=f"kinetics.{unknown[0]}", hint=hint)
    kinetics = kin.CultureKinetics(**parts, carbon=_CARBON[carbon_name]())
    vused: set[str] = set()
    vessel = _build(Vessel, raw.get("vessel", {}), "vessel", where, vused, {"impellers": impellers})
    _unknown(raw.get("vessel", {}), vused, "vessel", where, _fields(Vessel))
    fused: set[str] = set()
    feeds = _build(Feeds, raw.get("feeds", {}), "feeds", where, fused)
    _unknown(raw.get("feeds", {}), fused, "feeds", where, _fields(Feeds))
    model = FermentationModel(kinetics, vessel, feeds, _OXYGEN[oxy_name]())
    check_parameters(model, where=where)
    return model


def _unknown(table, used, section, where, known):
    extra = sorted(set(table) - used)
    if extra:
        raise ScenarioError("unknown key", where=where, field=f"{section}.{extra[0]}",
                            hint=f"known: {', '.join(sorted(known))}")


def _check_schema(raw: dict, where) -> None:
    for section, value in raw.items():
        if section not in _SCHEMA:
            raise ScenarioError("unknown section", where=where, field=f"[{section}]",
                                hint=f"known sections: {', '.join(_SCHEMA)}")
        if not isinstance(value, dict):
            raise ScenarioError("must be a table", where=where, field=section, value=value)
        allowed = _SCHEMA[section]
        if allowed:
            extra = sorted(set(value) - allowed)
            if extra:
                raise ScenarioError("unknown key", where=where, field=f"{section}.{extra[0]}",
                                    hint=f"known: {', '.join(sorted(allowed))}")
    for section, keys in _REQUIRED.items():
        if section not in raw:
            raise ScenarioError("missing required section", where=where, field=f"[{section}]")
        for k in sorted(keys):
            if k not in raw[section]:
                raise ScenarioError("missing required key", where=where, field=f"{section}.{k}")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse `--set section.key=value` items (value: TOML scalar, or a plain string)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ScenarioError("an override is section.key=value", where="--set", value=item)
        key, text = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key.strip()] = value
    return out


def _apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        if section not in _SCHEMA or section == "sources":
            raise ScenarioError("unknown section", where="--set", field=key,
                                hint=f"known sections: {', '.join(s for s in _SCHEMA if s != 'sources')}")
        if section in ("kinetics", "vessel", "feeds"):
            if name not in raw.get(section, {}) and name not in _all_parameter_names(section):
                raise ScenarioError("unknown key", where="--set", field=key,
                                    hint=f"known: {', '.join(sorted(_all_parameter_names(section)))}")
        raw.setdefault(section, {})[name] = value
    return raw


def _all_parameter_names(section: str) -> set[str]:
    if section == "vessel":
        return set(_fields(Vessel))
    if section == "feeds":
        return set(_fields(Feeds))
    classes = [kin.MonodGrowth, kin.ContoisGrowth, kin.LuedekingPiret, kin.ProductHydrolysis,
               kin.CardinalTemperature, kin.CardinalPH, kin.OxygenLimitation, kin.OxygenDemand,
               kin.SugarUptake, kin.OilUptake, kin.PrecursorUptake, kin.CarbonDioxide,
               kin.ProductionTemperature]
    return {n for c in classes for n in _fields(c)}


def load_scenario(path: str | Path, *, overrides: dict[str, Any] | None = None,
                  recipe_path: str | Path | None = None) -> Scenario:
    """Read and validate a scenario TOML.

    Args:
        path: the scenario file.
        overrides: `{"kinetics.mu_max": 0.09, ...}` applied before validation (what-if).
        recipe_path: a recipe CSV replacing the scenario's own recipe.

    Raises:
        ScenarioError, ParameterError, RecipeError, UnitError: naming the file, key and value.
    """
    path = Path(path)
    if not path.is_file():
        raise ScenarioError("scenario file not found", where=path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"not valid TOML: {e}", where=path) from None
    _check_schema(raw, path)
    if overrides:
        raw = _apply_overrides(raw, overrides)
        _check_schema(raw, f"{path} (after --set)")
    where = path
    sc = raw["scenario"]
    duration = _value(sc["duration_h"], "h", where, "scenario.duration_h")
    every = _value(sc.get("output_every_h", 1.0), "h", where, "scenario.output_every_h")
    if duration <= 0:
        raise ScenarioError("must be positive", where=where, field="scenario.duration_h", value=duration)
    if not 0 < every <= duration:
        raise ScenarioError("must be positive and at most duration_h", where=where,
                            field="scenario.output_every_h", value=every)
    model = build_model(raw, where)

    defaults = {}
    for var, info in CONTROL_VARIABLES.items():
        if var in raw["controls"]:
            defaults[var] = _value(raw["controls"][var], info.unit, where, f"controls.{var}")
    span = (0.0, duration)
    rec = raw.get("recipe", {})
    phases = rec.get("phases", {})
    if not isinstance(phases, dict):
        raise ScenarioError("must be a table of variable = [[start_h, end_h, value], ...]",
                            where=where, field="recipe.phases", value=phases)
    inline_where = f"{path} [recipe.phases]"
    if recipe_path is not None or "file" in rec:
        file = Path(recipe_path) if recipe_path is not None else path.parent / rec["file"]
        # variables given inline need no default; their placeholder is replaced below
        placeholder = {v: max(CONTROL_VARIABLES[v].lower, 0.0) for v in phases}
        recipe = read_recipe_csv(file, defaults={**placeholder, **defaults}, span=span)
        if phases and recipe_path is None:
            inline = recipe_from_phases(phases, defaults={v: _first(recipe, v) for v in CONTROL_VARIABLES},
                                        span=span, where=inline_where)
            recipe = Recipe({**recipe.profiles, **{v: inline.profiles[v] for v in phases}})
    else:
        missing = [v for v, info in CONTROL_VARIABLES.items()
                   if v not in defaults and v not in phases and info.default is None]
        if missing:
            raise ScenarioError("no value for some manipulated variables: give them in [controls] or "
                                "[recipe] phases, or a [recipe] file", where=where, field="controls",
                                value=missing)
        recipe = recipe_from_phases(phases, defaults=defaults, span=span, where=inline_where)
    recipe.check_covers(*span, where=where)
    ph_history = None
    if "ph_loop_history" in rec:
        ph_history = (path.parent / str(rec["ph_loop_history"])).resolve()
        if not ph_history.is_file():
            raise ScenarioError("strain file not found", where=where, field="recipe.ph_loop_history",
                                value=str(ph_history))
    sp = recipe.profiles["precursor_setpoint"]
    top = float(max(np.max(np.asarray(sp.value)), np.max(np.asarray(sp.value_end))))
    if top > 0 and not float(model.feeds.precursor_conc) > top:
        raise ScenarioError("a precursor set-point needs a precursor feed more concentrated than "
                            f"the set-point ({top:g} g/L)", where=where, field="feeds.precursor_conc",
                            value=float(model.feeds.precursor_conc),
                            hint="give feeds.precursor_conc, or set precursor_setpoint to 0")

    init = raw["initial"]
    vol = _value(init["volume"], "L", where, "initial.volume")
    if vol <= 0:
        raise ScenarioError("must be positive", where=where, field="initial.volume", value=vol)
    conc = {}
    for k in ("biomass", "substrate", "product", "precursor", "oil"):
        c = _value(init.get(k, 0.0), "g/L", where, f"initial.{k}")
        if c < 0:
            raise ScenarioError("must be >= 0", where=where, field=f"initial.{k}", value=c)
        conc[k] = c
    do = _value(init.get("dissolved_oxygen", 100.0), "%", where, "initial.dissolved_oxygen")
    y0 = ReactorState.initial(volume=vol, dissolved_oxygen=do, **{k: c * vol for k, c in conc.items()})

    solver = raw.get("solver", {})
    method = solver.get("method", "adaptive")
    if method == "adaptive":
        options = Adaptive(rtol=float(solver.get("rtol", 1e-7)), atol=float(solver.get("atol", 1e-7)),
                           max_steps=int(solver.get("max_steps", 20_000)))
        if isinstance(model.oxygen_balance, DynamicOxygen):
            options = Adaptive.stiff(rtol=float(solver.get("rtol", 1e-6)), atol=float(solver.get("atol", 1e-6)))
    elif method == "fixed":
        options = FixedGrid(dt=float(solver.get("dt", 0.25)))
    else:
        raise ScenarioError("must be 'adaptive' or 'fixed'", where=where, field="solver.method", value=method)
    return Scenario(name=str(sc["name"]), title=str(sc.get("title", sc["name"])), path=path,
                    duration_h=duration, output_every_h=every, model=model, recipe=recipe, y0=y0,
                    control_defaults=defaults, options=options,
                    sources={str(k): str(v) for k, v in raw.get("sources", {}).items()}, raw=raw,
                    ph_loop_history=ph_history)


def _first(recipe: Recipe, var: str) -> float:
    return float(recipe.profiles[var].value[0])


__all__ += ["TwinError", "ParameterError", "RecipeError", "UnitError"]
