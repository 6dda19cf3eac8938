"""The culture: growth, production, uptake and respiration combined from interpretable factors."""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp

from .base import AbstractGrowth, AbstractKinetics, Broth, Rates
from .cardinal import CardinalPH, CardinalTemperature, ProductionTemperature, TemperatureIndependent
from .co2 import CarbonDioxide
from .oxygen import OxygenDemand, OxygenLimitation
from .production import LuedekingPiret, ProductHydrolysis
from .uptake import OilUptake, PrecursorUptake, SugarUptake

__all__ = ["CultureKinetics", "AbstractCarbonBalance", "PirtCarbon", "UptakeLimitedCarbon"]


class AbstractCarbonBalance(eqx.Module):
    """How growth, sugar and oil uptake and production share the carbon the cells take up."""

    @abc.abstractmethod
    def split(self, k: "CultureKinetics", broth: Broth, activity, f_oxygen, tox, lim, p_activity):
        """(mu, q_s, q_oil, q_p) in 1/h, g/g/h, g/g/h, g/g/h.

        `activity` is the product of the temperature, pH and oxygen factors, `f_oxygen` the oxygen
        factor alone, `tox` the precursor toxicity, `lim` the precursor limitation of production
        and `p_activity` the activity of production (equal to `activity` unless production has a
        temperature law of its own).
        """


class PirtCarbon(AbstractCarbonBalance):
    r"""Growth follows the growth law; uptake follows growth, production and maintenance (Pirt).

    $$\mu = \mu_S(S, X) f + \mu_{oil}(O) f, \qquad q_S = \mu_S f / Y_{XS} + q_P / Y_{PS} + m_S \frac{S}{K_m + S}$$
    """

    def split(self, k, broth, activity, f_oxygen, tox, lim, p_activity):
        mu_s = k.growth(broth) * activity * tox
        mu_oil = 0.0 if k.oil is None else k.oil.growth(broth.oil) * activity * tox
        mu = mu_s + mu_oil
        rep = k.production.carbon_factor(mu / k.sugar.Y_XS)  # growth-law carbon uptake, sugar-eq
        q_p = k.production(broth, mu) * p_activity * lim * rep
        q_s = k.sugar(mu_s, q_p, broth.substrate)
        q_oil = 0.0 if k.oil is None else k.oil.uptake(mu_oil)
        return mu, q_s, q_oil, q_p


class UptakeLimitedCarbon(AbstractCarbonBalance):
    r"""Uptake follows the growth law's capacity; growth is the carbon left after maintenance and
    production (negative when starving: endogenous decay).

    $$q_S = \frac{\mu_S(S, X)}{Y_{XS}} f, \qquad q_{oil} = \frac{\mu_{oil}(O)}{Y_{X,oil}} f, \qquad
      \mu = Y_{XS}\left(q_S + \frac{Y_{X,oil}}{Y_{XS}} q_{oil} - m_S f_O - \frac{q_P}{Y_{PS}}\right)$$
    with $q_P = [\alpha\,\max(\mu, 0) + \beta(S) f\,f_{prec}]\, r(q_C)\, s(q_C)$, where
    $q_C = q_S + (Y_{X,oil}/Y_{XS})\, q_{oil}$ is the carbon taken up (sugar equivalents) and $r\,s$ the
    production law's carbon-flux window (`LuedekingPiret.carbon_factor`: repression at high, starvation
    at low uptake). Oil is worth $Y_{X,oil}/Y_{XS}$ g
    of sugar per g, so it can carry maintenance and production as well as growth. Maintenance is
    aerobic (scaled by the oxygen factor), which keeps the quasi-steady oxygen balance exact.
    """

    def split(self, k, broth, activity, f_oxygen, tox, lim, p_activity):
        q_s = k.growth(broth) / k.sugar.Y_XS * activity * tox
        q_oil = 0.0 if k.oil is None else k.oil.growth(broth.oil) / k.oil.Y_X_oil * activity * tox
        carbon = q_s + (0.0 if k.oil is None else k.oil.Y_X_oil / k.sugar.Y_XS * q_oil)
        rep = k.production.carbon_factor(carbon)
        beta = k.production(broth, 0.0) * p_activity * lim * rep
        alpha = k.production.alpha * p_activity * lim * rep
        Y, Yp = k.sugar.Y_XS, k.sugar.Y_PS
        spare = carbon - k.sugar.m_S * f_oxygen - beta / Yp
        mu_pos = Y * spare / (1.0 + Y * alpha / Yp)
        mu = jnp.where(spare > 0, mu_pos, Y * spare)
        q_p = alpha * jnp.maximum(mu, 0.0) + beta
        return mu, q_s, q_oil, q_p


class CultureKinetics(AbstractKinetics):
    r"""Rates as products of factors, each with its own parameters.

    $$\mu = [\mu_S(S, X) + \mu_{oil}(O)]\, f_T(T)\, f_{pH}(pH)\, f_O(DO)\, g_{tox}(C_{prec})$$
    $$q_P = q_P^{*}(S, \mu)\, f_{T,P}\, f_{pH}\, f_O\, f_{prec}(C_{prec})\, r(q_C)\, s(q_C)$$
    $$q_S = \mu_S f / Y_{XS} + q_P / Y_{PS} + m_S S/(K_m + S)$$
    $$q_{O_2} = \mu / Y_{XO} + q_P / Y_{PO} + m_O f_O$$
    where $f = f_T f_{pH} f_O g_{tox} f_{CO_2}$, and $f_{T,P}$ is production's own temperature
    factor (`production_temperature`: its own cardinal curve, or 1 with `TemperatureIndependent`)
    or, without one, the growth curve $f_T$. Hydrolysis is
    first order in product, its rate constant Arrhenius in temperature (`ProductHydrolysis`).

    Args:
        growth: growth law on sugar (Monod or Contois).
        production: product formation law.
        hydrolysis: product degradation.
        temperature, ph: cardinal factors.
        production_temperature: a temperature factor of product formation's own
            (`ProductionTemperature`, or `TemperatureIndependent` for none), or `None` when
            production follows `temperature` as growth does.
        oxygen: Monod limitation by dissolved oxygen.
        respiration: oxygen demand.
        sugar: sugar uptake (yields, maintenance).
        oil: growth on oil, or `None` when the strain gets no oil.
        precursor: precursor limitation, toxicity and uptake, or `None`.
        carbon: how growth, uptake and production share the carbon taken up.
        co2: CO2 evolution and inhibition of growth and uptake by dissolved CO2, or `None`.
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
    carbon: AbstractCarbonBalance = PirtCarbon()
    co2: CarbonDioxide | None = None
    production_temperature: ProductionTemperature | TemperatureIndependent | None = None

    def oxygen_factor(self, dissolved_oxygen):
        return self.oxygen(jnp.maximum(dissolved_oxygen, 0.0))

    def _rates(self, broth: Broth, f_o) -> Rates:
        f_ph = self.ph(broth.pH)
        env = self.temperature(broth.temperature) * f_ph
        tox = 1.0 if self.precursor is None else self.precursor.toxicity(broth.precursor)
        if self.co2 is not None:  # dissolved CO2 stops growth and uptake like a toxin
            tox = tox * self.co2(broth.dissolved_co2)
        lim = 1.0 if self.precursor is None else self.precursor.limitation(broth.precursor)
        activity = env * f_o
        if self.production_temperature is None:  # production follows the growth curve
            p_activity = activity
        else:
            p_activity = self.production_temperature(broth.temperature) * f_ph * f_o
        mu, q_s, q_oil, q_p = self.carbon.split(self, broth, activity, f_o, tox, lim, p_activity)
        q_prec = 0.0 if self.precursor is None else self.precursor.uptake(q_p, mu, broth.precursor)
        q_o2 = jnp.maximum(mu, 0.0) / self.respiration.Y_XO + q_p / self.respiration.Y_PO + self.respiration.m_O * f_o
        z = jnp.zeros_like(mu)
        return Rates(growth=mu, substrate_uptake=q_s, oil_uptake=q_oil + z, production=q_p,
                     hydrolysis=self.hydrolysis.rate_constant(broth.temperature) + z, precursor_uptake=q_prec + z,
                     oxygen_uptake=q_o2)

    def unlimited_rates(self, broth: Broth) -> Rates:
        return self._rates(broth, 1.0)

    def rates(self, broth: Broth) -> Rates:
        return self._rates(broth, self.oxygen_factor(broth.dissolved_oxygen))
