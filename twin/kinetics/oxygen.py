"""Oxygen: limitation of cellular activity by dissolved oxygen, and oxygen demand."""

from __future__ import annotations

import equinox as eqx

from .._custom_types import Array, Float
from .base import parameter

__all__ = ["OxygenLimitation", "OxygenDemand"]


class OxygenLimitation(eqx.Module):
    r"""Monod limitation by dissolved oxygen.

    $$f_O = \frac{DO}{K_O + DO}$$  with DO in % of air saturation.

    The critical DO of Penicillium chrysogenum is about 10-30 % air saturation
    (Birol et al. 2002 use a Monod term in dissolved oxygen).
    """

    K_O: Float[Array, ""] = parameter(unit="%", lower=1e-3, upper=100.0,
                                      doc="dissolved-oxygen half-saturation (% air saturation)")

    def __call__(self, dissolved_oxygen: Float[Array, ""]) -> Float[Array, ""]:
        return dissolved_oxygen / (self.K_O + dissolved_oxygen)


class OxygenDemand(eqx.Module):
    r"""Specific oxygen uptake from growth, production and maintenance.

    $$q_{O_2} = \frac{\mu}{Y_{XO}} + \frac{q_P}{Y_{PO}} + m_O$$  (mmol O2 / g biomass / h)

    Reference: Birol, Undey & Cinar (2002) Comput Chem Eng 26:1553 (Y_X/O = 0.04, Y_P/O = 0.2,
    m_O = 0.467 in these units).
    """

    Y_XO: Float[Array, ""] = parameter(unit="g/mmol", lower=1e-4, upper=1.0, doc="biomass yield on oxygen")
    Y_PO: Float[Array, ""] = parameter(unit="g/mmol", lower=1e-4, upper=10.0, doc="product yield on oxygen")
    m_O: Float[Array, ""] = parameter(unit="mmol/g/h", lower=0.0, upper=10.0, doc="maintenance oxygen uptake")

    def __call__(self, growth, production):
        return growth / self.Y_XO + production / self.Y_PO + self.m_O
