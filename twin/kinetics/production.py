"""Product formation (growth- and non-growth-associated) and product hydrolysis."""

from __future__ import annotations

import equinox as eqx

from .._custom_types import Array, Float
from .base import AbstractProduction, Broth, parameter

__all__ = ["LuedekingPiret", "ProductHydrolysis"]


class LuedekingPiret(AbstractProduction):
    r"""Luedeking-Piret production with sugar-regulated non-growth term.

    $$q_P = \alpha \mu + \beta_{max} \frac{S}{K_P + S + S^2/K_{IP}}$$

    The non-growth term falls at high sugar (catabolite repression of secondary metabolism,
    as in the penicillin model of Bajpai & Reuss 1980) and at zero sugar.

    Reference: Luedeking & Piret (1959) J Biochem Microbiol Technol Eng 1:393; Bajpai & Reuss (1980).
    """

    beta_max: Float[Array, ""] = parameter(unit="g/g/h", lower=0.0, upper=1.0,
                                           doc="maximum non-growth-associated production rate")
    K_P: Float[Array, ""] = parameter(unit="g/L", lower=1e-8, upper=100.0,
                                      doc="sugar half-saturation constant of production")
    K_IP: Float[Array, ""] = parameter(unit="g/L", lower=1e-4, upper=1e12, default=1e9,
                                       doc="sugar inhibition (repression) constant of production")
    alpha: Float[Array, ""] = parameter(unit="g/g", lower=0.0, upper=10.0, default=0.0,
                                        doc="growth-associated product yield")

    def __call__(self, broth: Broth, growth: Float[Array, ""]) -> Float[Array, ""]:
        s = broth.substrate
        return self.alpha * growth + self.beta_max * s / (self.K_P + s + s * s / self.K_IP)


class ProductHydrolysis(eqx.Module):
    r"""First-order product degradation (for example penicillin hydrolysis to penicilloic acid).

    $$r_h = k_h P$$  (g/L/h)

    Reference: Bajpai & Reuss (1980); Birol, Undey & Cinar (2002) Comput Chem Eng 26:1553.
    """

    k_h: Float[Array, ""] = parameter(unit="1/h", lower=0.0, upper=1.0,
                                      doc="first-order product hydrolysis rate")

    def __call__(self, product: Float[Array, ""]) -> Float[Array, ""]:
        """Hydrolysis rate in g/L/h."""
        return self.k_h * product
