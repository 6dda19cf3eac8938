"""Substrate, oil and precursor uptake: yields and maintenance."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float
from .base import parameter

__all__ = ["SugarUptake", "OilUptake", "PrecursorUptake"]


class SugarUptake(eqx.Module):
    r"""Sugar consumed for growth, product and maintenance (Pirt).

    $$q_S = \frac{\mu}{Y_{XS}} + \frac{q_P}{Y_{PS}} + m_S \frac{S}{K_m + S}$$

    The maintenance term is saturating in S so that sugar never goes negative when it runs out:
    the cells then live on endogenous reserves, which the model does not track.

    Reference: Pirt (1965) Proc R Soc B 163:224; Bajpai & Reuss (1980) (Y_XS 0.45, Y_PS 0.90,
    m_S 0.014 for Penicillium chrysogenum).
    """

    Y_XS: Float[Array, ""] = parameter(unit="g/g", lower=0.01, upper=1.0, doc="biomass yield on sugar")
    Y_PS: Float[Array, ""] = parameter(unit="g/g", lower=0.01, upper=10.0, doc="product yield on sugar")
    m_S: Float[Array, ""] = parameter(unit="g/g/h", lower=0.0, upper=1.0, doc="maintenance sugar uptake")
    K_m: Float[Array, ""] = parameter(unit="g/L", lower=1e-6, upper=10.0, default=1e-2,
                                      doc="sugar half-saturation of maintenance uptake")

    def __call__(self, growth, production, substrate):
        return growth / self.Y_XS + production / self.Y_PS + self.m_S * substrate / (self.K_m + substrate)


class OilUptake(eqx.Module):
    r"""Growth on a second carbon source (vegetable oil), in parallel with sugar.

    $$\mu_{oil} = \mu_{max,oil} \frac{O}{K_{oil} + O}, \qquad q_{oil} = \mu_{oil} / Y_{X,oil}$$

    Oils carry about 2.5 times the energy of glucose per gram; their biomass yield is
    correspondingly higher (Y about 0.8-1.1 g/g; Hamedi et al. 2004 J Ind Microbiol Biotechnol 31:447).
    """

    mu_max_oil: Float[Array, ""] = parameter(unit="1/h", lower=0.0, upper=1.0,
                                             doc="maximum specific growth rate on oil")
    K_oil: Float[Array, ""] = parameter(unit="g/L", lower=1e-6, upper=100.0, doc="oil half-saturation")
    Y_X_oil: Float[Array, ""] = parameter(unit="g/g", lower=0.05, upper=2.0, doc="biomass yield on oil")

    def growth(self, oil: Float[Array, ""]) -> Float[Array, ""]:
        return self.mu_max_oil * oil / (self.K_oil + oil)

    def uptake(self, growth_on_oil: Float[Array, ""]) -> Float[Array, ""]:
        return growth_on_oil / self.Y_X_oil


class PrecursorUptake(eqx.Module):
    r"""A side-chain precursor (PAA for penicillin G, n-propanol for erythromycin).

    Production needs it and high levels are toxic to growth:
    $$f_{prec} = \frac{C}{K_{prec} + C}, \qquad g_{tox} = \frac{K_{tox}}{K_{tox} + C}$$
    $$q_{prec} = Y_{prec,P}\, q_P + Y_{prec,X} \max(\mu, 0) + m_{prec} \frac{C}{K_{prec} + C}$$
    The growth-associated term is precursor the growing mycelium takes up and metabolises
    besides what goes into product (P. chrysogenum degrades phenylacetic acid through the
    homogentisate pathway; IndPenSim charges 45 mg PAA per g of new biomass); 0 leaves it out.
    """

    K_prec: Float[Array, ""] = parameter(unit="g/L", lower=1e-6, upper=10.0,
                                         doc="precursor half-saturation of production")
    K_tox: Float[Array, ""] = parameter(unit="g/L", lower=1e-3, upper=1e6,
                                        doc="precursor concentration halving growth (toxicity)")
    Y_prec_P: Float[Array, ""] = parameter(unit="g/g", lower=0.0, upper=10.0,
                                           doc="precursor consumed per product formed")
    m_prec: Float[Array, ""] = parameter(unit="g/g/h", lower=0.0, upper=1.0, default=0.0,
                                         doc="precursor catabolised (not into product)")
    Y_prec_X: Float[Array, ""] = parameter(unit="g/g", lower=0.0, upper=10.0, default=0.0,
                                           doc="precursor taken up per biomass grown (not into product)")

    def limitation(self, c):
        return c / (self.K_prec + c)

    def toxicity(self, c):
        return self.K_tox / (self.K_tox + c)

    def uptake(self, production, growth, c):
        return (self.Y_prec_P * production + self.Y_prec_X * jnp.maximum(growth, 0.0)
                + self.m_prec * c / (self.K_prec + c))
