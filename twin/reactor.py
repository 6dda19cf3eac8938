r"""The fed-batch reactor: mass and volume balances, oxygen transfer, evaporation, draws.

The state integrates *amounts* (g) and the volume (L), so every material balance is a linear
invariant of the vector field, which every Runge-Kutta solver preserves to round-off:

$$\frac{dV}{dt} = F_S + \phi_{oil} F_{oil} + F_{prec} + F_W - F_{draw} - E$$
$$\frac{d(XV)}{dt} = \mu X V - F_{draw} X$$
$$\frac{d(SV)}{dt} = F_S S_F - q_S X V - F_{draw} S$$
$$\frac{d(PV)}{dt} = q_P X V - k_h P V - F_{draw} P$$
(and the same for oil and precursor). Concentrations are amount / volume, clipped at zero inside
the rates (never in the state).

Dissolved oxygen is, by default, quasi-steady (its time constant is seconds): the oxygen transfer
rate equals the uptake rate, $k_La\,C^*(1 - d) = OUR_{max}\, d/(K + d)$, a quadratic in the
saturation fraction $d$ solved in closed form. `DynamicOxygen` integrates
$\dot d = (k_La C^*(1-d) - OUR)/C^*$ instead, which is stiff and wants an implicit solver.

Dissolved CO2, where the kinetics carry it (`kinetics.co2`), is quasi-steady too: the exhaust
carries the CO2 the culture evolves, and the broth is in Henry equilibrium with the exhaust at the
log-mean pressure over the liquid height (`FermentationModel.carbon_dioxide`).

Oxygen transfer: $k_La = c\,(P_g/V)^{a}\,u_s^{b}$ (van 't Riet 1979), with gassed power
$P_g = \phi\, n\, N_p \rho N^3 D^5$ from agitation and superficial gas velocity $u_s$ from aeration.
Oxygen solubility in water under air at 1 atm (APHA polynomial, 0-50 degC) scales with absolute
head pressure. Evaporation has two terms: the exhaust gas leaves a fraction
`evaporation_saturation` saturated with water at broth temperature (Antoine equation for the
vapour pressure), $E_{gas} = \dot n_{gas}\, s\, p_w/(p - p_w)\, M_w/\rho_w$; and a term in the
broth volume, $E_V = e_V\, V\, p_w(T)/p_w(25\,^\circ C)$ (`evaporation_per_volume`), for plants
whose recorded volume follows a law like IndPenSim's $V \alpha (e^{2.5 (T - T_0)/(T_v - T_0)} - 1)$
(Goldrick et al. 2015), which moves with temperature as $p_w$ does (+6 %/K near 25 degC) and not
with gas flow or pressure. $\phi_{oil}$ (`feeds.oil_volume_fraction`) is the broth volume an oil
feed adds per volume fed: 1 physically; 0 for a plant whose volume record leaves the oil out.
"""

from __future__ import annotations

import abc
import dataclasses

import equinox as eqx
import jax.numpy as jnp

from ._custom_types import Array, Float
from .errors import ParameterError
from .kinetics import AbstractKinetics, Broth, ProductionTemperature, Rates, parameter
from .recipe import Recipe
from .state import Controls, Ledger, ReactorState

__all__ = [
    "Vessel", "Feeds", "AbstractOxygenBalance", "QuasiSteadyOxygen", "DynamicOxygen",
    "FermentationModel", "Outputs", "ParameterInfo", "parameter_table", "get_parameter",
    "set_parameters", "check_parameters",
]

ATM = 1.01325  # bar
MOLAR_VOLUME_NORMAL = 22.414  # L/mol at 0 degC, 1 atm
WATER_MOLAR_MASS = 18.015  # g/mol
O2_MOLAR_MASS = 31.998  # g/mol
CO2_HENRY_25C = 33.0  # mmol/L/bar, CO2 solubility in water at 25 degC (Sander 2015, H^cp 3.3e-4 mol/m3/Pa)
CO2_HENRY_DT = 2400.0  # K, d ln H / d (1/T) for CO2 (Sander 2015)
GRAVITY = 9.81  # m/s2


class Vessel(eqx.Module):
    """Vessel geometry, agitation power and gas-liquid transfer constants."""

    working_volume: Float[Array, ""] = parameter(unit="L", lower=1e-3, upper=1e7,
                                                 doc="maximum broth volume")
    tank_diameter: Float[Array, ""] = parameter(unit="m", lower=0.01, upper=20.0, doc="tank inner diameter")
    impeller_diameter: Float[Array, ""] = parameter(unit="m", lower=0.005, upper=10.0, doc="impeller diameter")
    impellers: int = eqx.field(static=True, default=1)
    power_number: Float[Array, ""] = parameter(unit="-", lower=0.1, upper=20.0, default=5.0,
                                               doc="ungassed impeller power number (Rushton about 5)")
    gassed_power_factor: Float[Array, ""] = parameter(unit="-", lower=0.1, upper=1.0, default=0.5,
                                                      doc="gassed / ungassed power")
    kla_coefficient: Float[Array, ""] = parameter(unit="-", lower=1e-5, upper=1.0, default=0.026,
                                                  doc="van 't Riet coefficient c in kLa[1/s] = c (P/V)^a u_s^b")
    kla_power_exponent: Float[Array, ""] = parameter(unit="-", lower=0.1, upper=1.0, default=0.4,
                                                     doc="exponent a of P/V (W/m3)")
    kla_gas_exponent: Float[Array, ""] = parameter(unit="-", lower=0.1, upper=1.0, default=0.5,
                                                   doc="exponent b of superficial gas velocity (m/s)")
    oxygen_solubility_factor: Float[Array, ""] = parameter(unit="-", lower=0.3, upper=1.2, default=0.9,
                                                           doc="O2 solubility in broth / in water")
    evaporation_saturation: Float[Array, ""] = parameter(unit="-", lower=0.0, upper=1.0, default=1.0,
                                                         doc="water saturation of the exhaust gas")
    evaporation_per_volume: Float[Array, ""] = parameter(
        unit="1/h", lower=0.0, upper=0.01, default=0.0,
        doc="evaporation per broth volume at 25 degC, scaled by the water vapour pressure (default: none)")
    broth_density: Float[Array, ""] = parameter(unit="kg/m3", lower=500.0, upper=2000.0, default=1000.0,
                                                doc="broth density (hydrostatic head of the liquid)")
    inlet_co2: Float[Array, ""] = parameter(unit="mol/mol", lower=0.0, upper=0.2, default=4.2e-4,
                                            doc="CO2 mole fraction of the inlet gas (air: about 4.2e-4)")


class Feeds(eqx.Module):
    """Composition of the feeds."""

    substrate_conc: Float[Array, ""] = parameter(unit="g/L", lower=0.0, upper=1500.0,
                                                 doc="sugar concentration of the sugar feed")
    oil_conc: Float[Array, ""] = parameter(unit="g/L", lower=0.0, upper=1000.0, default=920.0,
                                           doc="oil per litre of oil feed (density of soybean oil)")
    precursor_conc: Float[Array, ""] = parameter(unit="g/L", lower=0.0, upper=1100.0, default=0.0,
                                                 doc="precursor concentration of the precursor feed")
    precursor_hold_time: Float[Array, ""] = parameter(
        unit="h", lower=0.01, upper=100.0, default=1.0,
        doc="time constant with which the precursor loop returns to its set-point")
    precursor_max_flow: Float[Array, ""] = parameter(
        unit="L/h", lower=0.0, upper=1e9, default=1e9,
        doc="largest precursor flow the loop can command (its pump; default: unlimited)")
    oil_volume_fraction: Float[Array, ""] = parameter(
        unit="-", lower=0.0, upper=1.0, default=1.0,
        doc="broth volume added per volume of oil fed (1: its own volume; 0: a volume record that "
            "leaves the oil out, as IndPenSim's)")


class Outputs(eqx.Module):
    """Algebraic quantities at one instant: what sensors see beyond the state."""

    dissolved_oxygen: Float[Array, ""]  # % air saturation
    oxygen_uptake_rate: Float[Array, ""]  # mmol/L/h
    kla: Float[Array, ""]  # 1/h
    oxygen_saturation: Float[Array, ""]  # mmol/L at current T and pressure
    oxygen_factor: Float[Array, ""]  # -
    growth_rate: Float[Array, ""]  # 1/h
    production_rate: Float[Array, ""]  # g/g/h
    substrate_uptake: Float[Array, ""]  # g/g/h
    evaporation: Float[Array, ""]  # L/h
    power_per_volume: Float[Array, ""]  # W/m3
    # where the kinetics carry a CO2 balance (`kinetics.co2`), else None:
    carbon_evolution_rate: Float[Array, ""] | None = None  # mmol/L/h
    offgas_co2: Float[Array, ""] | None = None  # mol/mol, exhaust gas
    dissolved_co2: Float[Array, ""] | None = None  # mmol/L
    co2_factor: Float[Array, ""] | None = None  # -, inhibition of growth and uptake


class AbstractOxygenBalance(eqx.Module):
    """How dissolved oxygen is obtained: algebraically (quasi-steady) or integrated."""

    @abc.abstractmethod
    def saturation_fraction(self, state: ReactorState, a: Float[Array, ""], our_max: Float[Array, ""],
                            K: Float[Array, ""]) -> Float[Array, ""]:
        """DO as a fraction of saturation."""

    @abc.abstractmethod
    def derivative(self, otr, our, csat) -> Float[Array, ""]:
        """d(DO %)/dt."""


class QuasiSteadyOxygen(AbstractOxygenBalance):
    """DO at the root of OTR = OUR (closed form); the DO state is not integrated."""

    def saturation_fraction(self, state, a, our_max, K):
        a = jnp.maximum(a, 1e-12)
        b = our_max - a + a * K
        disc = jnp.sqrt(b * b + 4.0 * a * a * K)
        # two algebraically equal forms; pick the one without cancellation
        pos = 2.0 * a * K / jnp.where(b >= 0, b + disc, 1.0)
        neg = (disc - b) / (2.0 * a)
        return jnp.where(b >= 0, pos, neg)

    def derivative(self, otr, our, csat):
        return jnp.zeros_like(otr)


class DynamicOxygen(AbstractOxygenBalance):
    """DO integrated as a state: stiff (time constant ~ seconds); use an implicit solver."""

    def saturation_fraction(self, state, a, our_max, K):
        return jnp.maximum(state.dissolved_oxygen, 0.0) / 100.0

    def derivative(self, otr, our, csat):
        return 100.0 * (otr - our) / csat


def vapour_pressure_water(T):
    """Saturation vapour pressure of water, bar (Antoine, 1-100 degC)."""
    return 10.0 ** (8.07131 - 1730.63 / (233.426 + T)) / 750.0616


PSAT_25C = float(vapour_pressure_water(25.0))  # bar


def co2_solubility(T):
    """CO2 solubility in water, mmol/L/bar (Henry's law, van 't Hoff temperature dependence)."""
    return CO2_HENRY_25C * jnp.exp(CO2_HENRY_DT * (1.0 / (T + 273.15) - 1.0 / 298.15))


def oxygen_solubility_air(T):
    """O2 solubility in water under air at 1 atm, mmol/L (APHA polynomial, 0-50 degC)."""
    T = jnp.clip(T, 0.0, 50.0)
    mg_per_L = 14.652 - 0.41022 * T + 0.0079910 * T**2 - 0.000077774 * T**3
    return mg_per_L / O2_MOLAR_MASS


class FermentationModel(eqx.Module):
    """A fed-batch fermentation: culture kinetics in a vessel with feeds.

    Args:
        kinetics: culture kinetics (`twin.kinetics.CultureKinetics`).
        vessel: geometry and transfer constants.
        feeds: feed compositions.
        oxygen_balance: `QuasiSteadyOxygen()` (default) or `DynamicOxygen()`.

    Example:
        >>> dy = model.vector_field(0.0, y0, recipe)   # doctest: +SKIP
    """

    kinetics: AbstractKinetics
    vessel: Vessel
    feeds: Feeds
    oxygen_balance: AbstractOxygenBalance = QuasiSteadyOxygen()

    def broth(self, y: ReactorState, u: Controls, dissolved_oxygen, dissolved_co2=0.0) -> Broth:
        v = jnp.maximum(y.volume, 1e-9)
        c = lambda m: jnp.maximum(m, 0.0) / v
        return Broth(biomass=c(y.biomass), substrate=c(y.substrate), product=c(y.product),
                     precursor=c(y.precursor), oil=c(y.oil), dissolved_oxygen=dissolved_oxygen,
                     temperature=u.temperature, pH=u.pH, dissolved_co2=dissolved_co2)

    def head_pressure(self, y: ReactorState, u: Controls) -> Float[Array, ""]:
        """Log-mean absolute pressure over the liquid height, bar (top: back pressure + 1 atm;
        bottom: plus the hydrostatic head of the broth, height = volume / cross-section)."""
        ves = self.vessel
        top = u.back_pressure + ATM
        height = jnp.maximum(y.volume, 0.0) / 1000.0 / (jnp.pi * ves.tank_diameter**2 / 4.0)
        head = ves.broth_density * GRAVITY * height / 1e5
        small = head < 1e-6 * top
        ratio = jnp.log1p(jnp.where(small, 1.0, head) / top)
        return jnp.where(small, top + head / 2.0, head / jnp.where(small, 1.0, ratio))

    def carbon_dioxide(self, y: ReactorState, u: Controls, biomass):
        r"""(CER mmol/L/h, off-gas CO2 mol/mol, dissolved CO2 mmol/L) where `kinetics.co2` is set.

        Quasi-steady (the gas passes in seconds to minutes): the exhaust carries the CO2 evolved,
        $y = y_{in} + CER\,V / (1000\,\dot n_{gas})$ with $\dot n_{gas}$ the aeration in mol/h
        (normal litres / 22.414), and the broth is in equilibrium with it at the log-mean head
        pressure (`head_pressure`), $c = H(T)\, \bar p\, y$ (`co2_solubility`).
        """
        co2 = self.kinetics.co2
        cer = co2.evolution(biomass)
        gas = jnp.maximum(u.aeration, 1e-9) / MOLAR_VOLUME_NORMAL
        frac = jnp.minimum(self.vessel.inlet_co2 + cer * jnp.maximum(y.volume, 0.0) / (1000.0 * gas), 1.0)
        return cer, frac, co2_solubility(u.temperature) * self.head_pressure(y, u) * frac

    def transfer(self, y: ReactorState, u: Controls):
        """(kLa 1/h, C* mmol/L, P/V W/m3, evaporation L/h) at the current state and controls."""
        ves = self.vessel
        p_abs = u.back_pressure + ATM
        v_m3 = jnp.maximum(y.volume, 1e-9) / 1000.0
        n = u.agitation / 60.0
        power = ves.gassed_power_factor * ves.impellers * ves.power_number * 1000.0 * n**3 * ves.impeller_diameter**5
        pv = power / v_m3
        area = jnp.pi * ves.tank_diameter**2 / 4.0
        q_actual = u.aeration / 1000.0 / 3600.0 * (u.temperature + 273.15) / 273.15 * ATM / p_abs
        us = q_actual / area
        kla = 3600.0 * ves.kla_coefficient * (pv + 1e-9) ** ves.kla_power_exponent * (us + 1e-12) ** ves.kla_gas_exponent
        kla = jnp.where(u.aeration > 0, kla, 0.0)
        csat = oxygen_solubility_air(u.temperature) * p_abs / ATM * ves.oxygen_solubility_factor
        psat = vapour_pressure_water(u.temperature)
        evap = (u.aeration / MOLAR_VOLUME_NORMAL * psat / jnp.maximum(p_abs - psat, 1e-3)
                * WATER_MOLAR_MASS / 1000.0 * ves.evaporation_saturation
                + ves.evaporation_per_volume * jnp.maximum(y.volume, 0.0) * psat / PSAT_25C)
        return kla, csat, pv, evap

    def algebraic(self, y: ReactorState, u: Controls) -> tuple[Broth, Rates, Outputs, Float[Array, ""]]:
        """Broth, rates, outputs and oxygen transfer rate (mmol/L/h) at one instant."""
        kla, csat, pv, evap = self.transfer(y, u)
        with_co2 = getattr(self.kinetics, "co2", None) is not None
        broth0 = self.broth(y, u, jnp.asarray(100.0))
        if with_co2:  # CER follows biomass alone, so the CO2 needs no iteration with the rates
            cer, offgas, dco2 = self.carbon_dioxide(y, u, broth0.biomass)
            broth0 = eqx.tree_at(lambda b: b.dissolved_co2, broth0, dco2)
        our_max = self.kinetics.unlimited_rates(broth0).oxygen_uptake * broth0.biomass
        K = self.kinetics.oxygen.K_O / 100.0
        d = self.oxygen_balance.saturation_fraction(y, kla * csat, our_max, K)
        broth = eqx.tree_at(lambda b: b.dissolved_oxygen, broth0, 100.0 * d)
        rates = self.kinetics.rates(broth)
        our = rates.oxygen_uptake * broth.biomass
        otr = kla * csat * (1.0 - d)
        co2 = {} if not with_co2 else dict(carbon_evolution_rate=cer, offgas_co2=offgas,
                                           dissolved_co2=dco2, co2_factor=self.kinetics.co2(dco2))
        out = Outputs(dissolved_oxygen=100.0 * d, oxygen_uptake_rate=our, kla=kla,
                      oxygen_saturation=csat, oxygen_factor=self.kinetics.oxygen_factor(100.0 * d),
                      growth_rate=rates.growth, production_rate=rates.production,
                      substrate_uptake=rates.substrate_uptake, evaporation=evap, power_per_volume=pv,
                      **co2)
        return broth, rates, out, otr

    def hold_precursor(self, y: ReactorState, u: Controls, broth: Broth, r: Rates,
                       evaporation: Float[Array, ""]) -> Controls:
        r"""`u` with the precursor feed the loop commands where `u.precursor_setpoint` > 0.

        The loop is ideal within its pump: the flow $F$ that makes the concentration return to
        the set-point $c_{sp}$ with time constant $\tau$ (`feeds.precursor_hold_time`),
        $\dot c = (c_{sp} - c)/\tau$, clipped to $[0, F_{max}]$ (`feeds.precursor_max_flow`):

        $$F = \frac{V (c_{sp} - c)/\tau + q_{prec} X V + c\,(F_S + \phi_{oil} F_{oil} + F_W - E)}{c_F - c}$$

        (draws remove broth at its own concentration and cancel). The flow enters the precursor
        and volume balances and the ledger like any recipe flow, so the balances stay exact; the
        simulated `controls.precursor_feed` is this flow.
        """
        f = self.feeds
        V = jnp.maximum(y.volume, 1e-9)
        c = broth.precursor
        other = u.substrate_feed + f.oil_volume_fraction * u.oil_feed + u.water_feed - evaporation
        need = (V * (u.precursor_setpoint - c) / f.precursor_hold_time
                + r.precursor_uptake * broth.biomass * V + c * other)
        flow = jnp.clip(need / jnp.maximum(f.precursor_conc - c, 1e-9), 0.0, f.precursor_max_flow)
        on = u.precursor_setpoint > 0
        return eqx.tree_at(lambda v: v.precursor_feed, u, jnp.where(on, flow, u.precursor_feed))

    def acting(self, y: ReactorState, u: Controls) -> tuple[Controls, Outputs]:
        """The controls that act on the broth in state `y` (the recipe's `u`, with the precursor
        loop's flow where it runs: see `hold_precursor`) and the algebraic outputs there."""
        broth, r, out, _ = self.algebraic(y, u)
        return self.hold_precursor(y, u, broth, r, out.evaporation), out

    def vector_field(self, t, y: ReactorState, recipe: Recipe) -> ReactorState:
        """d(state)/dt at time `t` (h) under `recipe`."""
        u = recipe.controls(t)
        broth, r, out, otr = self.algebraic(y, u)
        u = self.hold_precursor(y, u, broth, r, out.evaporation)
        f = self.feeds
        X = broth.biomass
        V = jnp.maximum(y.volume, 1e-9)
        draw = u.draw
        f_in = u.substrate_feed + f.oil_volume_fraction * u.oil_feed + u.precursor_feed + u.water_feed
        evap = out.evaporation
        XV = X * V
        s_cons = r.substrate_uptake * XV
        p_form = r.production * XV
        p_hyd = r.hydrolysis * broth.product * V
        s_fed = u.substrate_feed * f.substrate_conc
        oil_fed = u.oil_feed * f.oil_conc
        prec_fed = u.precursor_feed * f.precursor_conc
        drawn = lambda m: draw * jnp.maximum(m, 0.0) / V
        ledger = Ledger(
            substrate_fed=s_fed, substrate_consumed=s_cons, substrate_drawn=drawn(y.substrate),
            product_formed=p_form, product_hydrolysed=p_hyd, product_drawn=drawn(y.product),
            oil_fed=oil_fed, precursor_fed=prec_fed, volume_fed=f_in, volume_drawn=draw,
            volume_evaporated=evap, oxygen_transferred=otr * V)
        return ReactorState(
            biomass=r.growth * XV - drawn(y.biomass),
            substrate=s_fed - s_cons - drawn(y.substrate),
            product=p_form - p_hyd - drawn(y.product),
            volume=f_in - draw - evap,
            dissolved_oxygen=self.oxygen_balance.derivative(otr, out.oxygen_uptake_rate, out.oxygen_saturation),
            precursor=prec_fed - r.precursor_uptake * XV - drawn(y.precursor),
            oil=oil_fed - r.oil_uptake * XV - drawn(y.oil),
            ledger=ledger,
        )

    def outputs(self, t, y: ReactorState, recipe: Recipe) -> Outputs:
        """Algebraic outputs (DO, OUR, kLa, specific rates, evaporation) at time `t`."""
        return self.algebraic(y, recipe.controls(t))[2]


# ----------------------------------------------------------------------------- parameters


@dataclasses.dataclass(frozen=True)
class ParameterInfo:
    """One named model parameter: where it lives, its value, unit, range and meaning."""

    name: str  # "kinetics.mu_max"
    path: tuple[str, ...]  # attribute path from the model
    value: float
    unit: str
    lower: float
    upper: float
    doc: str
    module: str


_SECTIONS = ("kinetics", "vessel", "feeds")


def _walk(obj, path):
    for f in dataclasses.fields(obj):
        val = getattr(obj, f.name)
        if "unit" in f.metadata:
            yield path + (f.name,), f, val, type(obj).__name__
        elif isinstance(val, eqx.Module):
            yield from _walk(val, path + (f.name,))


def parameter_table(model: FermentationModel) -> dict[str, ParameterInfo]:
    """Every parameter of `model` by its public name, `section.field` (for example `kinetics.mu_max`).

    Raises:
        ParameterError: two parameters of one section share a field name (a model structure bug).
    """
    table: dict[str, ParameterInfo] = {}
    for section in _SECTIONS:
        for path, f, val, mod in _walk(getattr(model, section), (section,)):
            name = f"{section}.{path[-1]}"
            if name in table:
                raise ParameterError("two parameters share one name", field=name,
                                     value=[table[name].path, path])
            md = f.metadata
            try:
                value = float(val)
            except Exception:  # traced or batched values
                value = float("nan")
            table[name] = ParameterInfo(name, path, value, md["unit"], md["lower"], md["upper"], md["doc"], mod)
    return table


def _resolve(model, name: str, where=None) -> ParameterInfo:
    table = parameter_table(model)
    if name not in table:
        # allow the bare field name when it is unique
        matches = [k for k in table if k.split(".", 1)[1] == name]
        if len(matches) == 1:
            return table[matches[0]]
        raise ParameterError("unknown parameter", where=where, field=name,
                             hint=f"known: {', '.join(table)}")
    return table[name]


def get_parameter(model: FermentationModel, name: str):
    """The value (array) of parameter `name`."""
    info = _resolve(model, name)
    obj = model
    for p in info.path:
        obj = getattr(obj, p)
    return obj


def set_parameters(model: FermentationModel, values: dict, *, where=None, check: bool = True) -> FermentationModel:
    """A copy of `model` with parameters replaced (`{"kinetics.mu_max": 0.09, ...}`).

    Values may be traced (inside jit or vmap); range checks run only on concrete values.

    Raises:
        ParameterError: unknown name, or a concrete value outside the parameter's physical range.
    """
    for name, value in values.items():
        info = _resolve(model, name, where)
        if check:
            _check_range(info, value, where)

        def get(m, path=info.path):
            for p in path:
                m = getattr(m, p)
            return m

        model = eqx.tree_at(get, model, jnp.asarray(value, dtype=float))
    return model


def _check_range(info: ParameterInfo, value, where=None) -> None:
    try:
        v = float(value)
    except Exception:
        return  # traced or batched: checked by the caller
    if not (info.lower <= v <= info.upper) or v != v:
        raise ParameterError(
            f"out of its physical range [{info.lower:g}, {info.upper:g}] {info.unit} ({info.doc})",
            where=where, field=info.name, value=v)


def check_parameters(model: FermentationModel, *, where=None) -> None:
    """Raise `ParameterError` for the first parameter outside its physical range."""
    for info in parameter_table(model).values():
        _check_range(info, info.value, where)
    k = model.kinetics
    t = getattr(k, "temperature", None)
    if t is not None and not (float(t.T_min) < float(t.T_opt) < float(t.T_max)):
        raise ParameterError("cardinal temperatures must satisfy T_min < T_opt < T_max", where=where,
                             field="kinetics.T_opt", value=(float(t.T_min), float(t.T_opt), float(t.T_max)))
    tp = getattr(k, "production_temperature", None)
    if isinstance(tp, ProductionTemperature) and not (float(tp.T_min_P) < float(tp.T_opt_P) < float(tp.T_max_P)):
        raise ParameterError("cardinal temperatures of production must satisfy T_min_P < T_opt_P < T_max_P",
                             where=where, field="kinetics.T_opt_P",
                             value=(float(tp.T_min_P), float(tp.T_opt_P), float(tp.T_max_P)))
    p = getattr(k, "ph", None)
    if p is not None and not (float(p.pH_min) < float(p.pH_opt) < float(p.pH_max)):
        raise ParameterError("cardinal pH values must satisfy pH_min < pH_opt < pH_max", where=where,
                             field="kinetics.pH_opt", value=(float(p.pH_min), float(p.pH_opt), float(p.pH_max)))
