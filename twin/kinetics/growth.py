"""Growth on the limiting sugar: Monod and Contois, each with Haldane substrate inhibition."""

from __future__ import annotations


from .._custom_types import Array, Float
from .base import AbstractGrowth, Broth, parameter

__all__ = ["MonodGrowth", "ContoisGrowth"]


class MonodGrowth(AbstractGrowth):
    r"""Monod growth with Haldane (Andrews) substrate inhibition.

    $$\mu = \mu_{max} \frac{S}{K_S + S + S^2/K_{IS}}$$

    Set `K_IS` very large (1e9) for plain Monod.

    Reference: Monod (1949) Annu Rev Microbiol 3:371; Andrews (1968) Biotechnol Bioeng 10:707.
    """

    mu_max: Float[Array, ""] = parameter(unit="1/h", lower=1e-4, upper=2.0,
                                         doc="maximum specific growth rate")
    K_S: Float[Array, ""] = parameter(unit="g/L", lower=1e-6, upper=100.0,
                                      doc="Monod half-saturation constant of sugar")
    K_IS: Float[Array, ""] = parameter(unit="g/L", lower=1e-3, upper=1e12, default=1e9,
                                       doc="Haldane substrate-inhibition constant")

    def __call__(self, broth: Broth) -> Float[Array, ""]:
        s = broth.substrate
        return self.mu_max * s / (self.K_S + s + s * s / self.K_IS)


class ContoisGrowth(AbstractGrowth):
    r"""Contois growth (half-saturation proportional to biomass) with substrate inhibition.

    $$\mu = \mu_{max} \frac{S}{K_X X + S + S^2/K_{IS}}$$

    Contois kinetics describe filamentous fungi in dense broth, where transport rather than
    uptake limits growth (Bajpai & Reuss 1980 for Penicillium chrysogenum).

    Reference: Contois (1959) J Gen Microbiol 21:40; Bajpai & Reuss (1980) J Chem Technol
    Biotechnol 30:332.
    """

    mu_max: Float[Array, ""] = parameter(unit="1/h", lower=1e-4, upper=2.0,
                                         doc="maximum specific growth rate")
    K_X: Float[Array, ""] = parameter(unit="g/g", lower=1e-6, upper=100.0,
                                      doc="Contois constant (sugar per biomass)")
    K_IS: Float[Array, ""] = parameter(unit="g/L", lower=1e-3, upper=1e12, default=1e9,
                                       doc="Haldane substrate-inhibition constant")

    def __call__(self, broth: Broth) -> Float[Array, ""]:
        s = broth.substrate
        return self.mu_max * s / (self.K_X * broth.biomass + s + s * s / self.K_IS + 1e-12)
