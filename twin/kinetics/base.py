"""Interfaces of the culture kinetics and the `parameter` field that carries units and ranges.

Every fitted constant is a field declared with :func:`parameter`, which records its unit, its
physical range and its meaning; `twin.reactor.parameter_table` reads them back, the scenario loader
checks ranges at the edge, and calibration puts priors on them by name.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float

__all__ = ["parameter", "Broth", "Rates", "AbstractGrowth", "AbstractProduction", "AbstractKinetics"]


def _as_float(x):
    return jnp.asarray(x, dtype=float)


def parameter(*, unit: str, lower: float, upper: float, doc: str, default=None):
    """A model parameter field: a float64 array leaf with a unit, a physical range and a meaning.

    Args:
        unit: internal unit, for example `"1/h"` or `"g/L"` (see `twin.units`).
        lower, upper: the physically meaningful range (inclusive); values outside are refused at
            the edge with a `ParameterError`.
        doc: one line of meaning, shown in tables and CLI help.
        default: optional default value.
    """
    kw = {} if default is None else {"default": default}
    return eqx.field(converter=_as_float,
                     metadata={"unit": unit, "lower": lower, "upper": upper, "doc": doc}, **kw)


class Broth(eqx.Module):
    """Conditions the cells see (concentrations clipped at zero, internal units)."""

    biomass: Float[Array, ""]  # g/L
    substrate: Float[Array, ""]  # g/L
    product: Float[Array, ""]  # g/L
    precursor: Float[Array, ""]  # g/L
    oil: Float[Array, ""]  # g/L
    dissolved_oxygen: Float[Array, ""]  # % air saturation
    temperature: Float[Array, ""]  # degC
    pH: Float[Array, ""]  # -
    dissolved_co2: Float[Array, ""] = 0.0  # mmol/L (0 where the model has no CO2 balance)


class Rates(eqx.Module):
    """Specific rates per gram of biomass (all >= 0 except where stated)."""

    growth: Float[Array, ""]  # mu, 1/h
    substrate_uptake: Float[Array, ""]  # q_s, g/g/h
    oil_uptake: Float[Array, ""]  # q_oil, g/g/h
    production: Float[Array, ""]  # q_p, g/g/h
    hydrolysis: Float[Array, ""]  # k_h, 1/h (first order in product, not per biomass)
    precursor_uptake: Float[Array, ""]  # q_prec, g/g/h
    oxygen_uptake: Float[Array, ""]  # q_O2, mmol/g/h


class AbstractGrowth(eqx.Module):
    """Specific growth rate on the limiting sugar, before temperature, pH and oxygen factors."""

    @abc.abstractmethod
    def __call__(self, broth: Broth) -> Float[Array, ""]:
        """mu in 1/h."""


class AbstractProduction(eqx.Module):
    """Specific product formation rate, before temperature, pH, oxygen and precursor factors."""

    @abc.abstractmethod
    def __call__(self, broth: Broth, growth: Float[Array, ""]) -> Float[Array, ""]:
        """q_p in g product / g biomass / h."""


class AbstractKinetics(eqx.Module):
    """Culture kinetics: specific rates given broth conditions and a dissolved-oxygen factor."""

    @abc.abstractmethod
    def unlimited_rates(self, broth: Broth) -> Rates:
        """Rates with no oxygen limitation (used for the quasi-steady oxygen balance)."""

    @abc.abstractmethod
    def oxygen_factor(self, dissolved_oxygen: Float[Array, ""]) -> Float[Array, ""]:
        """Factor in [0, 1] by which oxygen limits growth, production and respiration."""

    @abc.abstractmethod
    def rates(self, broth: Broth) -> Rates:
        """Rates at the broth's dissolved oxygen."""
