"""One internal unit system; conversions happen at the edges only.

Internal units: mass g, volume L, time h, temperature degC, amount mmol, pressure bar (gauge for
back pressure), dissolved oxygen in % of air saturation, agitation rpm, gas flows (aeration) as
normal volume per hour, L/h. Every table, CSV column or TOML value that carries a unit is
converted with :func:`to_internal` when it is read and with :func:`from_internal` when written.

A unit string is looked up in `_UNITS`, which maps it to a *dimension* and an affine map
`internal = scale * value + offset`. Two units convert into one another only when their
dimensions agree; otherwise a :class:`~twin.errors.UnitError` says which dimension was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UnitError

__all__ = ["Unit", "lookup", "to_internal", "from_internal", "internal_unit", "dimension_of", "material_amount"]


@dataclass(frozen=True)
class Unit:
    """A unit: its dimension and the affine map to the internal unit of that dimension."""

    name: str
    dimension: str
    scale: float
    offset: float = 0.0


# dimension -> internal unit
_INTERNAL = {
    "concentration": "g/L",
    "mass": "g",
    "volume": "L",
    "time": "h",
    "rate": "1/h",
    "volume_flow": "L/h",
    "mass_flow": "g/h",
    "temperature": "degC",
    "pressure": "bar",
    "oxygen_saturation": "%",
    "oxygen_concentration": "mmol/L",
    "agitation": "rpm",
    "dimensionless": "-",
    "specific_rate": "g/g/h",
    "molar_rate": "mmol/L/h",
    "yield": "g/g",
    "power_density": "W/m3",
    "length": "m",
    "area": "m2",
    "molar_fraction": "mol/mol",
    "viscosity": "cP",
    "molar_energy": "kJ/mol",
}

_UNITS: dict[str, Unit] = {}


def _add(dimension: str, names: tuple[str, ...], scale: float, offset: float = 0.0) -> None:
    for n in names:
        _UNITS[n] = Unit(n, dimension, scale, offset)


_add("concentration", ("g/L", "g_L", "kg/m3", "kg_m3", "mg/mL"), 1.0)
_add("concentration", ("mg/L", "mg_L", "g/m3"), 1e-3)
_add("mass", ("g",), 1.0)
_add("mass", ("kg",), 1e3)
_add("mass", ("mg",), 1e-3)
_add("mass", ("t", "tonne"), 1e6)
_add("volume", ("L", "l"), 1.0)
_add("volume", ("mL", "ml"), 1e-3)
_add("volume", ("m3", "m^3"), 1e3)
_add("time", ("h", "hr", "hour"), 1.0)
_add("time", ("min",), 1 / 60)
_add("time", ("s",), 1 / 3600)
_add("time", ("d", "day"), 24.0)
_add("rate", ("1/h", "h-1", "per_h"), 1.0)
_add("rate", ("1/min", "min-1"), 60.0)
_add("rate", ("1/d", "d-1"), 1 / 24)
_add("rate", ("1/s", "s-1"), 3600.0)
_add("volume_flow", ("L/h", "L_h"), 1.0)
_add("volume_flow", ("L/min", "L_min"), 60.0)
_add("volume_flow", ("mL/h", "mL_h"), 1e-3)
_add("volume_flow", ("m3/h", "m3_h"), 1e3)
_add("volume_flow", ("m3/min", "m3_min", "Nm3/min"), 6e4)
_add("volume_flow", ("NL/min", "NL_min"), 60.0)
_add("volume_flow", ("Nm3/h", "Nm3_h"), 1e3)
_add("mass_flow", ("g/h", "g_h"), 1.0)
_add("mass_flow", ("kg/h", "kg_h"), 1e3)
_add("temperature", ("degC", "C", "celsius"), 1.0)
_add("temperature", ("K", "kelvin"), 1.0, -273.15)
_add("pressure", ("bar", "barg"), 1.0)
_add("pressure", ("kPa",), 1e-2)
_add("pressure", ("Pa",), 1e-5)
_add("pressure", ("atm",), 1.01325)
_add("oxygen_saturation", ("%", "pct", "%sat"), 1.0)
_add("oxygen_saturation", ("fraction",), 100.0)
_add("oxygen_concentration", ("mmol/L", "mM"), 1.0)
_add("oxygen_concentration", ("mg/L O2",), 1 / 31.998)
_add("agitation", ("rpm", "1/min rotation"), 1.0)
_add("dimensionless", ("-", "", "pH", "1"), 1.0)
_add("specific_rate", ("g/g/h",), 1.0)
_add("molar_rate", ("mmol/L/h",), 1.0)
_add("yield", ("g/g",), 1.0)
_add("power_density", ("W/m3",), 1.0)
_add("power_density", ("kW/m3",), 1e3)
_add("length", ("m",), 1.0)
_add("length", ("cm",), 1e-2)
_add("length", ("mm",), 1e-3)
_add("area", ("m2", "m^2"), 1.0)
_add("molar_fraction", ("mol/mol",), 1.0)
_add("molar_fraction", ("mol%",), 1e-2)
_add("viscosity", ("cP", "mPa.s", "mPa_s"), 1.0)
_add("viscosity", ("Pa.s", "Pa_s"), 1e3)
_add("molar_energy", ("kJ/mol",), 1.0)
_add("molar_energy", ("J/mol",), 1e-3)
_add("molar_energy", ("kcal/mol",), 4.184)


def lookup(unit: str, *, where: object = None, field: str | None = None) -> Unit:
    """Return the :class:`Unit` called `unit`, or raise `UnitError` naming it."""
    key = str(unit).strip()
    if key not in _UNITS:
        raise UnitError(
            "unknown unit", where=where, field=field, value=unit,
            hint=f"known units: {', '.join(sorted(k for k in _UNITS if k))}",
        )
    return _UNITS[key]


def dimension_of(unit: str, *, where: object = None, field: str | None = None) -> str:
    """The dimension (for example `"concentration"`) of `unit`."""
    return lookup(unit, where=where, field=field).dimension


def internal_unit(dimension: str) -> str:
    """The internal unit of `dimension` (for example `"g/L"` for concentration)."""
    return _INTERNAL[dimension]


def _check_dimension(u: Unit, dimension: str | None, where, field) -> None:
    if dimension is not None and u.dimension != dimension:
        raise UnitError(
            f"unit '{u.name}' is a {u.dimension}, cannot be converted to {dimension} "
            f"(internal unit {_INTERNAL[dimension]})",
            where=where, field=field, value=u.name,
        )


def to_internal(value, unit: str, dimension: str | None = None, *, where: object = None,
                field: str | None = None):
    """Convert `value` in `unit` to the internal unit of its dimension.

    Args:
        value: a number or NumPy array in `unit`.
        unit: the unit's name, for example `"m3"` or `"kg/m3"`.
        dimension: if given, `unit` must be of this dimension (for example `"volume"`).
        where, field: where the value came from, for the error message.

    Returns:
        The value in the internal unit (same shape).

    Raises:
        UnitError: unknown unit, or one of another dimension than `dimension`.

    Example:
        >>> to_internal(2.0, "m3", "volume")
        2000.0
    """
    u = lookup(unit, where=where, field=field)
    _check_dimension(u, dimension, where, field)
    return np.asarray(value, dtype=float) * u.scale + u.offset if np.ndim(value) else float(value) * u.scale + u.offset


def from_internal(value, unit: str, dimension: str | None = None, *, where: object = None,
                  field: str | None = None):
    """Convert `value` from the internal unit of its dimension to `unit` (inverse of `to_internal`)."""
    u = lookup(unit, where=where, field=field)
    _check_dimension(u, dimension, where, field)
    if np.ndim(value):
        return (np.asarray(value, dtype=float) - u.offset) / u.scale
    return (float(value) - u.offset) / u.scale


# Units of kinetic and transfer parameters (added for the model's parameter tables).
_INTERNAL.update({"oxygen_yield": "g/mmol", "specific_oxygen_rate": "mmol/g/h",
                  "specific_mass": "g/mmol", "amount": "mmol", "specific_volume_rate": "L/g"})
_add("oxygen_yield", ("g/mmol",), 1.0)
_add("oxygen_yield", ("g/mol",), 1e-3)
_add("specific_oxygen_rate", ("mmol/g/h",), 1.0)
_add("amount", ("mmol",), 1.0)
_add("amount", ("mol",), 1e3)
_add("specific_rate", ("g/g/min",), 60.0)


def material_amount(variable: str, litres: float) -> tuple[float, str]:
    """A material total (the integral of a flow, internal litres) as a person reads it:
    gas (`aeration`) in m3, liquids in L. Returns `(value, unit)`."""
    if variable == "aeration":
        return float(litres) / 1000.0, "m3"
    return float(litres), "L"
