"""Named state and named controls: pytrees with physical fields, never magic indices.

Internal units (see `twin.units`): g, L, h, degC, mmol, bar.

`ReactorState` holds what the ODE integrates: broth concentrations and volume, dissolved oxygen
(integrated only by the dynamic-DO option; the quasi-steady option keeps it constant and reports
the algebraic value instead), and a `Ledger` of cumulative material flows, so that every mass and
volume balance can be checked exactly and the product that left with harvest draws is counted.

`Controls` holds the value of every manipulated variable at one instant; a `twin.recipe.Recipe`
maps time to `Controls`. `precursor_setpoint` is a set-point, not a flow: where it is positive,
the precursor feed is the one a concentration loop needs to hold it (see
`twin.reactor.FermentationModel`), as a plant's PAA controller does.
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax.numpy as jnp

from ._custom_types import Array, Float

__all__ = [
    "Ledger",
    "ReactorState",
    "Controls",
    "VariableInfo",
    "STATE_VARIABLES",
    "LEDGER_VARIABLES",
    "CONTROL_VARIABLES",
]


@dataclass(frozen=True)
class VariableInfo:
    """What a named variable is: internal unit, dimension, physical bounds and meaning."""

    name: str
    unit: str
    dimension: str
    description: str
    lower: float = -float("inf")
    upper: float = float("inf")
    column: str = ""  # column name in trajectories.csv (name + unit)
    default: float | None = None  # value a recipe that leaves the variable out gets (None: required)

    def __post_init__(self):
        if not self.column:
            suffix = {"%": "pct", "-": ""}.get(self.unit, self.unit.replace("/", "_"))
            object.__setattr__(self, "column", f"{self.name}_{suffix}" if suffix else self.name)


class Ledger(eqx.Module):
    """Cumulative material flows since the start of the batch (integrated alongside the state).

    Each field is monotone non-decreasing; balances hold exactly for any Runge-Kutta solver
    because they are linear invariants of the vector field, for example
    `S(t) V(t) = S0 V0 + substrate_fed - substrate_consumed - substrate_drawn`.
    """

    substrate_fed: Float[Array, ""]  # g
    substrate_consumed: Float[Array, ""]  # g
    substrate_drawn: Float[Array, ""]  # g
    product_formed: Float[Array, ""]  # g
    product_hydrolysed: Float[Array, ""]  # g
    product_drawn: Float[Array, ""]  # g
    oil_fed: Float[Array, ""]  # g
    precursor_fed: Float[Array, ""]  # g
    volume_fed: Float[Array, ""]  # L (all feeds including water; oil times feeds.oil_volume_fraction)
    volume_drawn: Float[Array, ""]  # L
    volume_evaporated: Float[Array, ""]  # L
    oxygen_transferred: Float[Array, ""]  # mmol

    @classmethod
    def zeros(cls) -> "Ledger":
        z = jnp.zeros(())
        return cls(*(z for _ in range(12)))


class ReactorState(eqx.Module):
    """State of one fed-batch at one instant (broth concentrations, volume, ledger)."""

    biomass: Float[Array, ""]  # X, g/L dry cell weight
    substrate: Float[Array, ""]  # S, g/L limiting sugar (glucose equivalent)
    product: Float[Array, ""]  # P, g/L titer
    volume: Float[Array, ""]  # V, L broth
    dissolved_oxygen: Float[Array, ""]  # DO, % of air saturation (dynamic-DO option only)
    precursor: Float[Array, ""]  # g/L (PAA, n-propanol); 0 when the strain has none
    oil: Float[Array, ""]  # g/L second carbon source; 0 when the strain has none
    ledger: Ledger

    @classmethod
    def initial(cls, *, biomass, substrate, product, volume, dissolved_oxygen=100.0,
                precursor=0.0, oil=0.0) -> "ReactorState":
        """A batch's initial state with an empty ledger (arguments in internal units)."""
        f = lambda v: jnp.asarray(v, dtype=float)
        return cls(f(biomass), f(substrate), f(product), f(volume), f(dissolved_oxygen),
                   f(precursor), f(oil), Ledger.zeros())


class Controls(eqx.Module):
    """Every manipulated variable at one instant (internal units)."""

    substrate_feed: Float[Array, ""]  # L/h of sugar feed at the vessel's feed concentration
    oil_feed: Float[Array, ""]  # L/h
    precursor_feed: Float[Array, ""]  # L/h
    water_feed: Float[Array, ""]  # L/h
    draw: Float[Array, ""]  # L/h broth withdrawn (harvest draws, discharge)
    temperature: Float[Array, ""]  # degC
    pH: Float[Array, ""]  # -
    aeration: Float[Array, ""]  # L/h of gas at normal conditions (0 degC, 1.01325 bar)
    agitation: Float[Array, ""]  # rpm
    back_pressure: Float[Array, ""]  # bar (gauge)
    precursor_setpoint: Float[Array, ""]  # g/L held by the precursor loop; 0: loop off, feed as recipe


_S = VariableInfo
STATE_VARIABLES: dict[str, VariableInfo] = {
    v.name: v
    for v in (
        _S("biomass", "g/L", "concentration", "biomass (dry cell weight)", 0.0),
        _S("substrate", "g/L", "concentration", "limiting sugar", 0.0),
        _S("product", "g/L", "concentration", "product titer", 0.0),
        _S("volume", "L", "volume", "broth volume", 0.0),
        _S("dissolved_oxygen", "%", "oxygen_saturation", "dissolved oxygen, % of air saturation", 0.0),
        _S("precursor", "g/L", "concentration", "precursor (PAA, n-propanol)", 0.0),
        _S("oil", "g/L", "concentration", "second carbon source (oil)", 0.0),
    )
}

def _ledger_info(name: str) -> VariableInfo:
    unit, dim = {"volume": ("L", "volume"), "oxygen": ("mmol", "amount")}.get(
        name.split("_")[0], ("g", "mass"))
    return _S(name, unit, dim, f"cumulative {name.replace('_', ' ')}", 0.0)


LEDGER_VARIABLES: dict[str, VariableInfo] = {n: _ledger_info(n) for n in Ledger.__dataclass_fields__}

CONTROL_VARIABLES: dict[str, VariableInfo] = {
    v.name: v
    for v in (
        _S("substrate_feed", "L/h", "volume_flow", "sugar feed rate", 0.0),
        _S("oil_feed", "L/h", "volume_flow", "oil feed rate", 0.0),
        _S("precursor_feed", "L/h", "volume_flow", "precursor feed rate", 0.0),
        _S("water_feed", "L/h", "volume_flow", "water feed rate", 0.0),
        _S("draw", "L/h", "volume_flow", "broth withdrawal (harvest draws)", 0.0),
        _S("temperature", "degC", "temperature", "broth temperature setpoint", 0.0, 80.0),
        _S("pH", "-", "dimensionless", "pH setpoint", 2.0, 12.0),
        _S("aeration", "L/h", "volume_flow", "aeration (normal gas volume flow)", 0.0),
        _S("agitation", "rpm", "agitation", "agitator speed", 0.0, 3000.0),
        _S("back_pressure", "bar", "pressure", "head-space back pressure (gauge)", 0.0, 5.0),
        _S("precursor_setpoint", "g/L", "concentration",
           "precursor concentration held by the feed loop (0: off, the precursor feed follows the recipe)",
           0.0, 1000.0, default=0.0),
    )
}
assert tuple(CONTROL_VARIABLES) == tuple(Controls.__dataclass_fields__)
