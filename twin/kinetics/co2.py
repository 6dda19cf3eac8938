"""Carbon dioxide: evolution by the culture and inhibition of growth and uptake when dissolved."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float
from .base import parameter

__all__ = ["CarbonDioxide"]


class CarbonDioxide(eqx.Module):
    r"""CO2 evolved in proportion to biomass, and a threshold inhibition by dissolved CO2.

    $$CER = q_{CO_2} X, \qquad f_{CO_2}(c) = \tfrac12\left[1 + \tanh\frac{c_{crit} - c}{w}\right]$$

    with $c$ the dissolved CO2 (mmol/L) the reactor computes from the off-gas (see
    `twin.reactor.FermentationModel.carbon_dioxide`). The factor multiplies the culture's growth and
    uptake capacity (sugar and oil), not production directly: when uptake stops, sugar piles up and
    the production law's own substrate inhibition stops production, as in IndPenSim (Goldrick et
    al. 2015, whose `CO2_inhib` multiplies growth and uptake). The width `w` makes the switch smooth
    enough for gradients; the plant's own switch is a step.
    """

    q_CO2: Float[Array, ""] = parameter(unit="mmol/g/h", lower=0.0, upper=50.0,
                                        doc="specific CO2 evolution rate (CER per g of biomass)")
    CO2_crit: Float[Array, ""] = parameter(unit="mmol/L", lower=0.01, upper=100.0,
                                           doc="dissolved CO2 at which growth and uptake halve")
    CO2_width: Float[Array, ""] = parameter(unit="mmol/L", lower=1e-4, upper=10.0, default=0.05,
                                            doc="width of the CO2 inhibition switch")

    def evolution(self, biomass: Float[Array, ""]) -> Float[Array, ""]:
        """CER in mmol/L/h at `biomass` g/L."""
        return self.q_CO2 * biomass

    def __call__(self, dissolved_co2: Float[Array, ""]) -> Float[Array, ""]:
        """Inhibition factor in [0, 1] at `dissolved_co2` mmol/L."""
        return 0.5 * (1.0 + jnp.tanh((self.CO2_crit - dissolved_co2) / self.CO2_width))
