"""Product formation (growth- and non-growth-associated) and product hydrolysis."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .base import AbstractProduction, Broth, parameter

__all__ = ["LuedekingPiret", "ProductHydrolysis"]

GAS_CONSTANT = 8.314462618  # J/mol/K
KELVIN = 273.15  # degC -> K


class LuedekingPiret(AbstractProduction):
    r"""Luedeking-Piret production with sugar-regulated non-growth term and a window in carbon flux.

    $$q_P = \left[\alpha \mu + \beta_{max} \frac{S}{K_P + S + S^2/K_{IP}}\right] r(q_C)\, s(q_C), \qquad
      r(q_C) = \frac{1}{1 + (q_C / K_{qC})^{n_{qC}}}, \qquad
      s(q_C) = \frac{q_C^{n_{low}}}{K_{low}^{n_{low}} + q_C^{n_{low}}}$$

    The non-growth term falls at high sugar (catabolite repression of secondary metabolism,
    as in the penicillin model of Bajpai & Reuss 1980) and at zero sugar. The factor $r$ represses
    all production when the specific carbon uptake $q_C$ (sugar equivalents, sugar plus oil at
    $Y_{X,oil}/Y_{XS}$ g sugar per g; computed by the carbon balance, see `twin.kinetics.culture`)
    exceeds $K_{qC}$: cells whose uptake runs near capacity grow and do not make product. In
    IndPenSim (Goldrick et al. 2015) penicillin formation is a narrow window in residual sugar,
    $\exp(-\tfrac12 ((S - 0.002)/0.0015)^2)$ with S in g/L, so production stops as soon as the carbon
    feed per biomass outruns uptake and sugar rises above a few mg/L; at the twin's sugar assay
    precision (0.05 g/L) that window is only visible through $q_C$. $r(0) = 1$, $r(K_{qC}) = 1/2$,
    $r$ falls monotonically and is smooth ($C^\infty$ for $q_C > 0$). The default
    $K_{qC} = 10^3$ g/g/h switches the repression off.

    The factor $s$ is the low side of the same window: carbon-starved cells make less product.
    In IndPenSim the Gaussian window falls below its 2 mg/L peak too (0.8 at 1 mg/L, 0.53 at
    0.3 mg/L), and in the starved, sugar-limited phase residual sugar follows the carbon fed per
    biomass, so production falls with $q_C$ there. $s(0) = 0$, $s(K_{low}) = 1/2$, $s \to 1$ for
    $q_C \gg K_{low}$; it rises monotonically and is smooth for $q_C > 0$. The default
    $K_{low} = 0$ switches it off exactly ($s \equiv 1$, also in gradients).
    `carbon_factor` is $r\,s$, the factor the carbon balance applies (`twin.kinetics.culture`).

    Reference: Luedeking & Piret (1959) J Biochem Microbiol Technol Eng 1:393; Bajpai & Reuss (1980);
    Goldrick et al. (2015) J Biotechnol 193:70 (IndPenSim); Douma et al. (2010) Biotechnol Bioeng
    106:608 (penicillin productivity falls at high growth rate in glucose-limited P. chrysogenum).
    """

    beta_max: Float[Array, ""] = parameter(unit="g/g/h", lower=0.0, upper=1.0,
                                           doc="maximum non-growth-associated production rate")
    K_P: Float[Array, ""] = parameter(unit="g/L", lower=1e-8, upper=100.0,
                                      doc="sugar half-saturation constant of production")
    K_IP: Float[Array, ""] = parameter(unit="g/L", lower=1e-4, upper=1e12, default=1e9,
                                       doc="sugar inhibition (repression) constant of production")
    alpha: Float[Array, ""] = parameter(unit="g/g", lower=0.0, upper=10.0, default=0.0,
                                        doc="growth-associated product yield")
    K_qC: Float[Array, ""] = parameter(unit="g/g/h", lower=1e-4, upper=1e3, default=1e3,
                                       doc="specific carbon uptake (sugar equivalents) halving "
                                           "production (carbon-flux repression)")
    n_qC: Float[Array, ""] = parameter(unit="-", lower=1.0, upper=30.0, default=4.0,
                                       doc="steepness (Hill exponent) of carbon-flux repression")
    K_low: Float[Array, ""] = parameter(unit="g/g/h", lower=0.0, upper=1e3, default=0.0,
                                        doc="specific carbon uptake (sugar equivalents) halving "
                                            "production by carbon starvation (0: off)")
    n_low: Float[Array, ""] = parameter(unit="-", lower=0.5, upper=30.0, default=2.0,
                                        doc="steepness (Hill exponent) of the carbon-starvation factor")

    def __call__(self, broth: Broth, growth: Float[Array, ""]) -> Float[Array, ""]:
        """q_P before the carbon-flux window (multiply by `carbon_factor`), g/g/h."""
        s = broth.substrate
        return self.alpha * growth + self.beta_max * s / (self.K_P + s + s * s / self.K_IP)

    def repression(self, carbon_uptake: Float[Array, ""]) -> Float[Array, ""]:
        """Factor r(q_C) in (0, 1] on production; `carbon_uptake` q_C >= 0 in g sugar-eq/g/h."""
        q = jnp.maximum(carbon_uptake, 0.0) + 1e-30  # q_C >= 0 by construction; guards the log
        return jax.nn.sigmoid(-self.n_qC * (jnp.log(q) - jnp.log(self.K_qC)))

    def starvation(self, carbon_uptake: Float[Array, ""]) -> Float[Array, ""]:
        """Factor s(q_C) in [0, 1] on production; exactly 1 when `K_low` is 0 (off).

        `carbon_uptake` q_C >= 0 in g sugar-eq/g/h. Written as a logistic in log q_C, which is
        the Hill form q_C^n / (K_low^n + q_C^n) without overflow; the off branch is selected
        with a double `where`, so gradients with respect to `K_low` stay finite (zero) at 0.
        """
        on = self.K_low > 0.0
        K = jnp.where(on, self.K_low, 1.0)
        q = jnp.maximum(carbon_uptake, 0.0) + 1e-30
        return jnp.where(on, jax.nn.sigmoid(self.n_low * (jnp.log(q) - jnp.log(K))), 1.0)

    def carbon_factor(self, carbon_uptake: Float[Array, ""]) -> Float[Array, ""]:
        """r(q_C) s(q_C): the carbon-flux window on production (repression times starvation)."""
        return self.repression(carbon_uptake) * self.starvation(carbon_uptake)


class ProductHydrolysis(eqx.Module):
    r"""First-order product degradation (for example penicillin hydrolysis to penicilloic acid),
    faster when warmer (Arrhenius):

    $$r_h = k_h(T)\,P, \qquad k_h(T) = k_h \exp\Big[\frac{E_h}{R}\Big(\frac{1}{T_{ref}} - \frac{1}{T}\Big)\Big]$$
    (g/L/h; temperatures in K inside the exponential). With $E_h = 0$ (the default) the rate
    does not depend on temperature. A beta-lactam ring opens by a chemical reaction in the broth,
    not by the cells, so the law holds whatever the culture does; at 25 degC, $E_h = 60$ kJ/mol
    is about +8 % per degC.

    Reference: Bajpai & Reuss (1980); Birol, Undey & Cinar (2002) Comput Chem Eng 26:1553.
    """

    k_h: Float[Array, ""] = parameter(unit="1/h", lower=0.0, upper=1.0,
                                      doc="first-order product hydrolysis rate at T_ref_h")
    E_h: Float[Array, ""] = parameter(unit="kJ/mol", lower=0.0, upper=300.0, default=0.0,
                                      doc="activation energy of product hydrolysis (0: no temperature effect)")
    T_ref_h: Float[Array, ""] = parameter(unit="degC", lower=-10.0, upper=100.0, default=25.0,
                                          doc="temperature at which the hydrolysis rate is k_h")

    def rate_constant(self, temperature: Float[Array, ""]) -> Float[Array, ""]:
        """$k_h(T)$ in 1/h at broth temperature `temperature` (degC)."""
        inv = 1.0 / (self.T_ref_h + KELVIN) - 1.0 / (temperature + KELVIN)
        return self.k_h * jnp.exp(self.E_h * 1e3 / GAS_CONSTANT * inv)

    def __call__(self, product: Float[Array, ""], temperature: Float[Array, ""]) -> Float[Array, ""]:
        """Hydrolysis rate in g/L/h at product concentration `product` (g/L) and `temperature` (degC)."""
        return self.rate_constant(temperature) * product
