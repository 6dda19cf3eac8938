"""Cardinal temperature and pH models: a factor in [0, 1] equal to 1 at the optimum."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float
from .base import parameter

__all__ = ["CardinalTemperature", "ProductionTemperature", "TemperatureIndependent", "CardinalPH"]


class CardinalTemperature(eqx.Module):
    r"""Cardinal temperature model with inflection (CTMI).

    $$f(T) = \frac{(T - T_{max})(T - T_{min})^2}{(T_{opt} - T_{min})\,[(T_{opt} - T_{min})(T - T_{opt})
        - (T_{opt} - T_{max})(T_{opt} + T_{min} - 2T)]}$$
    for $T_{min} < T < T_{max}$, zero outside; $f(T_{opt}) = 1$.

    Reference: Rosso, Lobry & Flandrois (1993) J Theor Biol 162:447.
    """

    T_min: Float[Array, ""] = parameter(unit="degC", lower=-10.0, upper=60.0, doc="minimum growth temperature")
    T_opt: Float[Array, ""] = parameter(unit="degC", lower=0.0, upper=80.0, doc="optimum temperature")
    T_max: Float[Array, ""] = parameter(unit="degC", lower=5.0, upper=100.0, doc="maximum growth temperature")

    def __call__(self, T: Float[Array, ""]) -> Float[Array, ""]:
        return _ctmi(T, self.T_min, self.T_opt, self.T_max)


class ProductionTemperature(eqx.Module):
    r"""A temperature factor of its own for product formation: the CTMI of `CardinalTemperature`
    with cardinal temperatures $T_{min,P}$, $T_{opt,P}$, $T_{max,P}$.

    Without it (`CultureKinetics.production_temperature` None) production shares the growth curve.
    Growth and secondary metabolism need not share one: in 200 L penicillin batches, incubation at
    20-29 degC did not change the yield, 32 degC lowered it (J Bacteriol (1946) 52:119), and
    Constantinides, Spencer & Gaden (1970, Biotechnol Bioeng 12) optimised batch penicillin
    temperature profiles with separate temperature laws for growth and production. The field
    names differ from the growth curve's so that each parameter has one public name
    (`kinetics.T_opt_P`).
    """

    T_min_P: Float[Array, ""] = parameter(unit="degC", lower=-10.0, upper=60.0,
                                          doc="minimum temperature for product formation")
    T_opt_P: Float[Array, ""] = parameter(unit="degC", lower=0.0, upper=80.0,
                                          doc="optimum temperature for product formation")
    T_max_P: Float[Array, ""] = parameter(unit="degC", lower=5.0, upper=100.0,
                                          doc="maximum temperature for product formation")

    def __call__(self, T: Float[Array, ""]) -> Float[Array, ""]:
        return _ctmi(T, self.T_min_P, self.T_opt_P, self.T_max_P)


class TemperatureIndependent(eqx.Module):
    r"""No temperature factor for product formation: $f_{T,P}(T) = 1$.

    The limit of `ProductionTemperature` with its cardinal limits far apart: the specific
    production rate does not depend on temperature, while growth keeps its cardinal curve and
    hydrolysis its Arrhenius law (`ProductHydrolysis.E_h`). The classic penicillin models write it
    so: Bajpai & Reuss (1980, J Chem Technol Biotechnol 30:332) and Birol, Undey & Cinar (2002,
    Comput Chem Eng 26:1553) put temperature in growth (and death) only; in 200 L penicillin
    batches incubation at 20-29 degC did not change the yield (J Bacteriol (1946) 52:119). A
    structural assumption with no parameter to calibrate: choose it in the scenario
    (`[model] production_temperature = "none"`) and judge it by what its recipes do.
    """

    def __call__(self, T: Float[Array, ""]) -> Float[Array, ""]:
        return jnp.ones_like(T)


def _ctmi(T, T_min, T_opt, T_max):
    inside = (T > T_min) & (T < T_max)
    Ts = jnp.where(inside, T, T_opt)  # safe value outside, keeps gradients finite
    num = (Ts - T_max) * (Ts - T_min) ** 2
    den = (T_opt - T_min) * ((T_opt - T_min) * (Ts - T_opt) - (T_opt - T_max) * (T_opt + T_min - 2 * Ts))
    return jnp.where(inside, jnp.clip(num / den, 0.0, 1.0), 0.0)


class CardinalPH(eqx.Module):
    r"""Cardinal pH model (CPM).

    $$f(pH) = \frac{(pH - pH_{min})(pH - pH_{max})}{(pH - pH_{min})(pH - pH_{max}) - (pH - pH_{opt})^2}$$
    for $pH_{min} < pH < pH_{max}$, zero outside; $f(pH_{opt}) = 1$.

    Reference: Rosso, Lobry, Bajard & Flandrois (1995) Appl Environ Microbiol 61:610.
    """

    pH_min: Float[Array, ""] = parameter(unit="-", lower=0.0, upper=14.0, doc="minimum pH for activity")
    pH_opt: Float[Array, ""] = parameter(unit="-", lower=0.0, upper=14.0, doc="optimum pH")
    pH_max: Float[Array, ""] = parameter(unit="-", lower=0.0, upper=14.0, doc="maximum pH for activity")

    def __call__(self, pH: Float[Array, ""]) -> Float[Array, ""]:
        inside = (pH > self.pH_min) & (pH < self.pH_max)
        p = jnp.where(inside, pH, self.pH_opt)
        a = (p - self.pH_min) * (p - self.pH_max)
        return jnp.where(inside, jnp.clip(a / (a - (p - self.pH_opt) ** 2), 0.0, 1.0), 0.0)
