"""Recipes: piecewise-constant and ramp profiles of every manipulated variable.

A recipe is, per manipulated variable (see `twin.state.CONTROL_VARIABLES`), a sequence of phases
`[start_h, end_h)` that tile the batch without gaps or overlaps; within a phase the value is
constant or ramps linearly from `value` to `value_end`. The breakpoints are handed to the ODE
solver as jump times, so no step straddles a switch.

CSV format (one row per phase; units are converted to internal units on reading)::

    variable,start_h,end_h,value,unit,value_end
    substrate_feed,0,40,0,L/h,
    substrate_feed,40,230,60,L/h,
    temperature,0,230,25,degC,

`value_end` is optional (empty or absent: constant phase). Time columns are in hours.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float
from .errors import RecipeError, TwinError
from .io import atomic_path
from .state import CONTROL_VARIABLES, Controls
from .units import from_internal, to_internal

__all__ = ["Profile", "Recipe", "read_recipe_csv", "write_recipe_csv", "constant_profile"]

_REQUIRED = ("variable", "start_h", "end_h", "value", "unit")
_OPTIONAL = ("value_end",)


class Profile(eqx.Module):
    """A piecewise-linear-in-phase profile of one variable (internal units).

    Phase `i` covers `[start[i], start[i+1])`; the last phase ends at `end`. Within phase `i`
    the value is `value[i] + (t - start[i]) / (start[i+1] - start[i]) * (value_end[i] - value[i])`.
    Before the first phase the first value holds; after the end, the last phase's end value.

    Args:
        start: phase start times, h, strictly increasing, shape `(phases,)`.
        end: end of the last phase, h.
        value: value at each phase start.
        value_end: value at each phase end (equal to `value` for a constant phase).
    """

    start: Float[Array, " phases"]
    end: Float[Array, ""]
    value: Float[Array, " phases"]
    value_end: Float[Array, " phases"]

    @property
    def n_phases(self) -> int:
        return self.start.shape[0]

    @property
    def stops(self) -> Float[Array, " phases"]:
        """End time of every phase."""
        return jnp.concatenate([self.start[1:], jnp.reshape(self.end, (1,))])

    def __call__(self, t: Float[Array, ""]) -> Float[Array, ""]:
        n = self.start.shape[0]
        i = jnp.clip(jnp.searchsorted(self.start, t, side="right") - 1, 0, n - 1)
        t0 = self.start[i]
        t1 = self.stops[i]
        frac = jnp.clip((t - t0) / (t1 - t0), 0.0, 1.0)
        return self.value[i] + frac * (self.value_end[i] - self.value[i])

    def integral(self, t0: float | None = None, t1: float | None = None) -> Float[Array, ""]:
        """Exact integral of the profile over `[t0, t1]` (default: its whole span)."""
        a = self.start if t0 is None else jnp.clip(self.start, t0, None)
        b = self.stops if t1 is None else jnp.clip(self.stops, None, t1)
        if t0 is not None:
            b = jnp.maximum(b, t0)
        if t1 is not None:
            a = jnp.minimum(a, t1)
        width = jnp.maximum(b - a, 0.0)
        mid = 0.5 * (a + b)
        span = self.stops - self.start
        slope = (self.value_end - self.value) / span
        return jnp.sum(width * (self.value + slope * (mid - self.start)))

    @property
    def is_constant(self) -> np.ndarray:
        return np.asarray(self.value) == np.asarray(self.value_end)


def constant_profile(value: float, start: float, end: float) -> Profile:
    """A single constant phase `value` on `[start, end]`."""
    v = jnp.asarray([value], dtype=float)
    return Profile(jnp.asarray([start], dtype=float), jnp.asarray(end, dtype=float), v, v)


class Recipe(eqx.Module):
    """Profiles of every manipulated variable of a batch (a pytree: vmap over recipes works).

    Args:
        profiles: `{variable: Profile}` with one entry for every name in `CONTROL_VARIABLES`.
    """

    profiles: dict[str, Profile]

    def __check_init__(self):
        missing = [k for k in CONTROL_VARIABLES if k not in self.profiles]
        unknown = [k for k in self.profiles if k not in CONTROL_VARIABLES]
        if missing or unknown:
            raise RecipeError(
                f"a Recipe needs exactly the variables {list(CONTROL_VARIABLES)}",
                field="profiles", value={"missing": missing, "unknown": unknown})

    def controls(self, t: Float[Array, ""]) -> Controls:
        """Every manipulated variable at time `t` (h)."""
        return Controls(**{k: self.profiles[k](t) for k in CONTROL_VARIABLES})

    def jump_times(self, t0: float, t1: float) -> np.ndarray:
        """Sorted breakpoints strictly inside `(t0, t1)` where a control may jump (NumPy)."""
        ts = np.unique(np.concatenate([np.asarray(p.start) for p in self.profiles.values()]))
        return ts[(ts > t0) & (ts < t1)]

    def total(self, variable: str, t0: float | None = None, t1: float | None = None):
        """Integral of a flow over time, for example total sugar-feed volume in L."""
        return self.profiles[variable].integral(t0, t1)

    def with_profile(self, variable: str, profile: Profile) -> "Recipe":
        if variable not in CONTROL_VARIABLES:
            raise RecipeError("unknown variable", field="variable", value=variable,
                              hint=f"known: {', '.join(CONTROL_VARIABLES)}")
        return Recipe({**self.profiles, variable: profile})

    def span(self) -> tuple[float, float]:
        """(earliest phase start, latest phase end) over all variables, h."""
        starts = [float(p.start[0]) for p in self.profiles.values()]
        ends = [float(p.end) for p in self.profiles.values()]
        return min(starts), max(ends)

    def check_covers(self, t0: float, t1: float, *, where: object = None) -> None:
        """Raise `RecipeError` unless every variable's phases cover `[t0, t1]`."""
        for name, p in self.profiles.items():
            if float(p.start[0]) > t0 + 1e-9 or float(p.end) < t1 - 1e-9:
                raise RecipeError(
                    f"phases must cover the batch from {t0:g} h to {t1:g} h",
                    where=where, field=name, value=f"{float(p.start[0]):g}-{float(p.end):g} h")


def _float(text: str, where: str, field: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise RecipeError("must be a number", where=where, field=field, value=text) from None


def read_recipe_csv(path: str | os.PathLike, *, defaults: Mapping[str, float] | None = None,
                    span: tuple[float, float] | None = None) -> Recipe:
    """Read a recipe CSV (see the module docstring) and return a `Recipe` in internal units.

    Args:
        path: the CSV file.
        defaults: constant values (internal units) for variables the file does not mention;
            without them every variable of `CONTROL_VARIABLES` must be in the file, except those
            with a built-in default (`precursor_setpoint`: 0, no loop).
        span: `(t0, t1)` in h that every variable must cover (and that defaults span).

    Raises:
        RecipeError: missing columns, unknown variables, non-numeric or NaN values, values out of
            the variable's physical range (for example a negative feed), end not after start,
            overlapping phases or gaps, or a profile that does not cover `span`.
        UnitError: a unit that cannot be converted to the variable's internal unit.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError("recipe file not found", where=path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in _REQUIRED if c not in header]
        if missing:
            raise RecipeError(f"missing required column(s) {missing}; a recipe CSV has columns "
                              f"{', '.join(_REQUIRED)}[, value_end]", where=path, value=header)
        unknown = [c for c in header if c not in _REQUIRED + _OPTIONAL]
        if unknown:
            raise RecipeError("unknown column(s)", where=path, value=unknown,
                              hint=f"allowed: {', '.join(_REQUIRED + _OPTIONAL)}")
        phases: dict[str, list[tuple[float, float, float, float, int]]] = {}
        for rowno, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path} row {rowno}"
            var = row["variable"]
            if var not in CONTROL_VARIABLES:
                raise RecipeError("unknown variable", where=where, field="variable", value=var,
                                  hint=f"known: {', '.join(CONTROL_VARIABLES)}")
            info = CONTROL_VARIABLES[var]
            t_a = _float(row["start_h"], where, "start_h")
            t_b = _float(row["end_h"], where, "end_h")
            vals = []
            for col in ("value", "value_end"):
                text = row.get(col, "")
                if col == "value_end" and text == "":
                    vals.append(vals[0])
                    continue
                v = _float(text, where, col)
                if not math.isfinite(v):
                    raise RecipeError("must be a finite number (no NaN or inf)", where=where,
                                      field=col, value=text)
                vals.append(to_internal(v, row["unit"], info.dimension, where=where, field="unit"))
            for t, col in ((t_a, "start_h"), (t_b, "end_h")):
                if not math.isfinite(t):
                    raise RecipeError("must be a finite number", where=where, field=col, value=t)
            if not t_b > t_a:
                raise RecipeError("end_h must be greater than start_h", where=where,
                                  field="end_h", value=f"start_h={t_a:g}, end_h={t_b:g}")
            for v, col in zip(vals, ("value", "value_end")):
                if not (info.lower <= v <= info.upper):
                    raise RecipeError(
                        f"{var} must lie in [{info.lower:g}, {info.upper:g}] {info.unit}",
                        where=where, field=col, value=v)
            phases.setdefault(var, []).append((t_a, t_b, vals[0], vals[1], rowno))
    if not phases and not defaults:
        raise RecipeError("recipe has no phases", where=path)
    profiles = {var: _profile_from_phases(ph, f"{path}", var) for var, ph in phases.items()}
    return _complete(profiles, defaults, span, where=path)


def _profile_from_phases(ph, where: str, var: str) -> Profile:
    ph = sorted(ph)
    for (a0, b0, _, _, r0), (a1, b1, _, _, r1) in zip(ph, ph[1:]):
        if a1 < b0 - 1e-9:
            raise RecipeError("phases overlap", where=f"{where} rows {r0} and {r1}", field=var,
                              value=f"[{a0:g}, {b0:g}) and [{a1:g}, {b1:g})")
        if a1 > b0 + 1e-9:
            raise RecipeError("phases leave a gap", where=f"{where} rows {r0} and {r1}", field=var,
                              value=f"nothing between {b0:g} h and {a1:g} h")
    arr = np.asarray([p[:4] for p in ph], dtype=float)
    return Profile(jnp.asarray(arr[:, 0]), jnp.asarray(arr[-1, 1]), jnp.asarray(arr[:, 2]),
                   jnp.asarray(arr[:, 3]))


def _complete(profiles: dict[str, Profile], defaults, span, *, where) -> Recipe:
    out = dict(profiles)
    # a default spans `span`, or else what the given profiles span
    span_v = span if span is not None or not out else (
        min(float(p.start[0]) for p in out.values()), max(float(p.end) for p in out.values()))
    for var in CONTROL_VARIABLES:
        if var not in out:
            info = CONTROL_VARIABLES[var]
            given = defaults is not None and var in defaults
            if (not given and info.default is None) or span_v is None:
                raise RecipeError("variable missing from the recipe and no default given",
                                  where=where, field=var)
            v = float(defaults[var]) if given else float(info.default)
            if not (info.lower <= v <= info.upper):
                raise RecipeError(f"{var} must lie in [{info.lower:g}, {info.upper:g}] {info.unit}",
                                  where=where, field=f"default {var}", value=v)
            out[var] = constant_profile(v, span_v[0], span_v[1])
    recipe = Recipe(out)
    if span is not None:
        recipe.check_covers(*span, where=where)
    return recipe


def recipe_from_phases(phases: Mapping[str, list[tuple]], *, defaults=None, span=None,
                       where: object = "recipe") -> Recipe:
    """Build a recipe from `{variable: [(start_h, end_h, value[, value_end]), ...]}` (internal units)."""
    profiles = {}
    for var, rows in phases.items():
        if var not in CONTROL_VARIABLES:
            raise RecipeError("unknown variable", where=where, field=var,
                              hint=f"known: {', '.join(CONTROL_VARIABLES)}")
        info = CONTROL_VARIABLES[var]
        ph = []
        for k, r in enumerate(rows):
            if len(r) not in (3, 4):
                raise RecipeError("a phase is (start_h, end_h, value[, value_end])",
                                  where=where, field=f"{var}[{k}]", value=r)
            a, b, v = (float(x) for x in r[:3])
            ve = float(r[3]) if len(r) == 4 else v
            for x in (a, b, v, ve):
                if not math.isfinite(x):
                    raise RecipeError("must be finite (no NaN or inf)", where=where,
                                      field=f"{var}[{k}]", value=r)
            if not b > a:
                raise RecipeError("end_h must be greater than start_h", where=where,
                                  field=f"{var}[{k}]", value=r)
            for x in (v, ve):
                if not (info.lower <= x <= info.upper):
                    raise RecipeError(f"{var} must lie in [{info.lower:g}, {info.upper:g}] {info.unit}",
                                      where=where, field=f"{var}[{k}]", value=x)
            ph.append((a, b, v, ve, k))
        profiles[var] = _profile_from_phases(ph, str(where), var)
    return _complete(profiles, defaults, span, where=where)


def write_recipe_csv(recipe: Recipe, path: str | os.PathLike, *, units: Mapping[str, str] | None = None,
                     digits: int = 10) -> Path:
    """Write `recipe` as CSV atomically (internal units unless `units` says otherwise)."""
    units = dict(units or {})
    lines = [",".join(_REQUIRED + _OPTIONAL)]
    for var, p in recipe.profiles.items():
        info = CONTROL_VARIABLES[var]
        unit = units.get(var, info.unit)
        stops = np.asarray(p.stops)
        for a, b, v, ve in zip(np.asarray(p.start), stops, np.asarray(p.value), np.asarray(p.value_end)):
            vv = from_internal(float(v), unit, info.dimension)
            ve_text = "" if v == ve else f"{from_internal(float(ve), unit, info.dimension):.{digits}g}"
            lines.append(f"{var},{a:.{digits}g},{b:.{digits}g},{vv:.{digits}g},{unit},{ve_text}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def sample(recipe: Recipe, variable: str, times) -> np.ndarray:
    """Evaluate one variable of `recipe` at NumPy `times` (h), in internal units."""
    import jax

    return np.asarray(jax.vmap(recipe.profiles[variable])(jnp.asarray(times, dtype=float)))


__all__ += ["recipe_from_phases", "sample", "snap_to_grid", "TwinError"]


def snap_to_grid(recipe: Recipe, dt: float) -> tuple[Recipe, list[tuple[str, float, float]]]:
    """Move every phase start and end to the nearest multiple of `dt` (for `FixedGrid(dt)`).

    A phase that shrinks to nothing is dropped (the phase after it starts at the snapped time).
    Returns the snapped recipe and the moves made as `(variable, from_h, to_h)`, so callers can
    say what changed (a fixed-step solve would otherwise act on a jump only at the next step).
    """
    profiles, moves = {}, []
    for name, p in recipe.profiles.items():
        start = np.asarray(p.start, dtype=float)
        snapped = np.round(start / dt) * dt
        for a, b in zip(start, snapped):
            if abs(a - b) > 1e-9:
                moves.append((name, float(a), float(b)))
        keep = np.append(snapped[1:] > snapped[:-1], True)  # the last phase starting at a time wins
        end = max(float(np.round(float(p.end) / dt) * dt), float(snapped[keep][-1]) + dt)
        profiles[name] = Profile(jnp.asarray(snapped[keep]), jnp.asarray(end),
                                 jnp.asarray(np.asarray(p.value)[keep]),
                                 jnp.asarray(np.asarray(p.value_end)[keep]))
    return Recipe(profiles), moves


def pad_profile(profile: Profile, n_phases: int) -> Profile:
    """The same profile with `n_phases` phases: extra phases of 1 h each are added *after* its end,
    holding the last value, so they never act inside the profile's span."""
    n = profile.n_phases
    if n_phases < n:
        raise RecipeError("cannot pad a profile to fewer phases than it has", value=(n, n_phases))
    if n_phases == n:
        return profile
    k = n_phases - n
    extra_t = profile.end + jnp.arange(k, dtype=float)
    last = profile.value_end[-1] * jnp.ones(k)
    return Profile(jnp.concatenate([profile.start, extra_t]), profile.end + k,
                   jnp.concatenate([profile.value, last]), jnp.concatenate([profile.value_end, last]))


def stack_recipes(recipes: list[Recipe]) -> Recipe:
    """Stack recipes into one batched `Recipe` (leading axis = recipe) for `jax.vmap`.

    Profiles with fewer phases are padded after their end (`pad_profile`), which changes nothing
    within each recipe's span.
    """
    import jax

    if not recipes:
        raise RecipeError("no recipes to stack")
    padded = []
    n = {v: max(r.profiles[v].n_phases for r in recipes) for v in CONTROL_VARIABLES}
    for r in recipes:
        padded.append(Recipe({v: pad_profile(r.profiles[v], n[v]) for v in CONTROL_VARIABLES}))
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *padded)


__all__ += ["pad_profile", "stack_recipes"]
