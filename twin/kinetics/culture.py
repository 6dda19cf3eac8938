"""The culture: growth, production, uptake and respiration combined from interpretable factors."""

from __future__ import annotations

import jax.numpy as jnp

from .._custom_types import Array, Float
from .base import AbstractGrowth, AbstractKinetics, AbstractProduction, Broth, Rates
from .cardinal import CardinalPH, CardinalTemperature
from .oxygen import OxygenDemand, OxygenLimitation
from .production import LuedekingPiret, ProductHydrolysis
from .uptake import OilUptake, PrecursorUptake, SugarUptake

__all__ = ["CultureKinetics"]


class CultureKinetics(AbstractKinetics):
    r"""Rates as products of factors, each with its own parameters.

    $$\mu = [\mu_S(S, X) + \mu_{oil}(O)]\, f_T(T)\, f_{pH}(pH)\, f_O(DO)\, g_{tox}(C_{prec})$$
    $$q_P = q_P^{*}(S, \mu)\, f_T\, f_{pH}\, f_O\, f_{prec}(C_{prec})$$
    $$q_S = \mu_S f / Y_{XS} + q_P / Y_{PS} + m_S S/(K_m + S)$$
    $$q_{O_2} = \mu / Y_{XO} + q_P / Y_{PO} + m_O f_O$$
    where $f = f_T f_{pH} f_O g_{tox}$. Hydrolysis is first order in product.

    Args:
        growth: growth law on sugar (Monod or Contois).
        production: product formation law.
        hydrolysis: product degradation.
        temperature, ph: cardinal factors.
        oxygen: Monod limitation by dissolved oxygen.
        respiration: oxygen demand.
        sugar: sugar uptake (yields, maintenance).
        oil: growth on oil, or `None` when the strain gets no oil.
        precursor: precursor limitation, toxicity and uptake, or `None`.
    """

    growth: AbstractGrowth
    production: LuedekingPiret
    hydrolysis: ProductHydrolysis
    temperature: CardinalTemperature
    ph: CardinalPH
    oxygen: OxygenLimitation
    respiration: OxygenDemand
    sugar: SugarUptake
    oil: OilUptake | None = None
    precursor: PrecursorUptake | None = None

    def oxygen_factor(self, dissolved_oxygen):
        return self.oxygen(jnp.maximum(dissolved_oxygen, 0.0))

    def _rates(self, broth: Broth, f_o) -> Rates:
        env = self.temperature(broth.temperature) * self.ph(broth.pH)
        tox = 1.0 if self.precursor is None else self.precursor.toxicity(broth.precursor)
        lim = 1.0 if self.precursor is None else self.precursor.limitation(broth.precursor)
        activity = env * f_o
        mu_s = self.growth(broth) * activity * tox
        mu_oil = 0.0 if self.oil is None else self.oil.growth(broth.oil) * activity * tox
        mu = mu_s + mu_oil
        q_p = self.production(broth, mu) * activity * lim
        q_s = self.sugar(mu_s, q_p, broth.substrate)
        q_oil = 0.0 if self.oil is None else self.oil.uptake(mu_oil)
        q_prec = 0.0 if self.precursor is None else self.precursor.uptake(q_p, broth.precursor)
        q_o2 = mu / self.respiration.Y_XO + q_p / self.respiration.Y_PO + self.respiration.m_O * f_o
        z = jnp.zeros_like(mu)
        return Rates(growth=mu, substrate_uptake=q_s, oil_uptake=q_oil + z, production=q_p,
                     hydrolysis=self.hydrolysis.k_h + z, precursor_uptake=q_prec + z,
                     oxygen_uptake=q_o2)

    def unlimited_rates(self, broth: Broth) -> Rates:
        return self._rates(broth, 1.0)

    def rates(self, broth: Broth) -> Rates:
        return self._rates(broth, self.oxygen_factor(broth.dissolved_oxygen))
