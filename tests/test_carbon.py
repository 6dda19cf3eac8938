"""Uptake-limited carbon balance: limits and the carbon identity (rtol 1e-12)."""

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import twin  # noqa: F401
from twin import kinetics as kin
from twin.kinetics.base import Broth


def _kin(carbon, *, m_S=0.03, beta=0.01, alpha=0.0, oil=True):
    return kin.CultureKinetics(
        growth=kin.ContoisGrowth(mu_max=0.1, K_X=0.01),
        production=kin.LuedekingPiret(beta_max=beta, K_P=0.001, K_IP=0.5, alpha=alpha),
        hydrolysis=kin.ProductHydrolysis(k_h=0.002),
        temperature=kin.CardinalTemperature(T_min=5.0, T_opt=25.0, T_max=35.0),
        ph=kin.CardinalPH(pH_min=3.0, pH_opt=6.5, pH_max=9.0),
        oxygen=kin.OxygenLimitation(K_O=10.0),
        respiration=kin.OxygenDemand(Y_XO=0.04, Y_PO=0.2, m_O=0.467),
        sugar=kin.SugarUptake(Y_XS=0.45, Y_PS=0.9, m_S=m_S),
        oil=kin.OilUptake(mu_max_oil=0.02, K_oil=1.0, Y_X_oil=0.9) if oil else None,
        carbon=carbon,
    )


def _broth(S, oil=0.0, DO=80.0):
    f = lambda v: jnp.asarray(v, dtype=float)
    return Broth(biomass=f(20.0), substrate=f(S), product=f(5.0), precursor=f(0.0), oil=f(oil),
                 dissolved_oxygen=f(DO), temperature=f(25.0), pH=f(6.5))


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_carbon_identity(alpha):
    """Y_XS (q_S + e q_oil - m_S f_O - q_P / Y_PS) = mu exactly when there is carbon to spare."""
    k = _kin(kin.UptakeLimitedCarbon(), alpha=alpha)
    b = _broth(S=0.5, oil=2.0)
    r = k.rates(b)
    f_o = float(k.oxygen_factor(b.dissolved_oxygen))
    e = 0.9 / 0.45
    lhs = 0.45 * (float(r.substrate_uptake) + e * float(r.oil_uptake) - 0.03 * f_o - float(r.production) / 0.9)
    assert float(r.growth) > 0
    np.testing.assert_allclose(lhs, float(r.growth), rtol=1e-12)


def test_starvation_is_endogenous_decay():
    """No sugar, no oil, no production: mu = -Y_XS m_S f_O."""
    k = _kin(kin.UptakeLimitedCarbon(), beta=0.0, oil=False)
    b = _broth(S=0.0)
    r = k.rates(b)
    f_o = float(k.oxygen_factor(b.dissolved_oxygen))
    np.testing.assert_allclose(float(r.growth), -0.45 * 0.03 * f_o, rtol=1e-12)
    assert float(r.substrate_uptake) == 0.0


def test_no_maintenance_no_product_matches_pirt():
    """Without maintenance and production both carbon balances give the same growth on sugar."""
    a = _kin(kin.UptakeLimitedCarbon(), m_S=0.0, beta=0.0, oil=False).rates(_broth(S=0.3))
    b = _kin(kin.PirtCarbon(), m_S=0.0, beta=0.0, oil=False).rates(_broth(S=0.3))
    np.testing.assert_allclose(float(a.growth), float(b.growth), rtol=1e-12)
    np.testing.assert_allclose(float(a.substrate_uptake), float(b.substrate_uptake), rtol=1e-12)
