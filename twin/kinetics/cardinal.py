"""Cardinal temperature and pH models: a factor in [0, 1] equal to 1 at the optimum."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float
from .base import parameter

__all__ = ["CardinalTemperature", "CardinalPH"]


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
        inside = (T > self.T_min) & (T < self.T_max)
        Ts = jnp.where(inside, T, self.T_opt)  # safe value outside, keeps gradients finite
        num = (Ts - self.T_max) * (Ts - self.T_min) ** 2
        den = (self.T_opt - self.T_min) * (
            (self.T_opt - self.T_min) * (Ts - self.T_opt)
            - (self.T_opt - self.T_max) * (self.T_opt + self.T_min - 2 * Ts))
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
