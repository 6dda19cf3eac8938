"""Carbon-flux repression of production (`LuedekingPiret.repression`): limits, monotonicity,
smoothness (grads vs finite differences, float64), the carbon identity with repression, and
vmap over parameters. Tolerances are stated per assertion."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twin  # noqa: F401
from twin import kinetics as kin
from twin.kinetics.base import Broth
from twin.scenario import load_scenario

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _law(K=0.14, n=8.0):
    return kin.LuedekingPiret(beta_max=0.012, K_P=2e-4, K_IP=0.1, K_qC=K, n_qC=n)


def _kin(carbon, *, K=0.14, n=8.0, alpha=0.0):
    return kin.CultureKinetics(
        growth=kin.ContoisGrowth(mu_max=0.1, K_X=0.01),
        production=kin.LuedekingPiret(beta_max=0.01, K_P=0.001, K_IP=0.5, alpha=alpha, K_qC=K, n_qC=n),
        hydrolysis=kin.ProductHydrolysis(k_h=0.002),
        temperature=kin.CardinalTemperature(T_min=5.0, T_opt=25.0, T_max=35.0),
        ph=kin.CardinalPH(pH_min=3.0, pH_opt=6.5, pH_max=9.0),
        oxygen=kin.OxygenLimitation(K_O=10.0),
        respiration=kin.OxygenDemand(Y_XO=0.04, Y_PO=0.2, m_O=0.467),
        sugar=kin.SugarUptake(Y_XS=0.45, Y_PS=0.9, m_S=0.03),
        oil=kin.OilUptake(mu_max_oil=0.02, K_oil=1.0, Y_X_oil=0.9),
        carbon=carbon,
    )


def _broth(S, oil=2.0, DO=80.0):
    f = lambda v: jnp.asarray(v, dtype=float)
    return Broth(biomass=f(20.0), substrate=f(S), product=f(5.0), precursor=f(0.0), oil=f(oil),
                 dissolved_oxygen=f(DO), temperature=f(25.0), pH=f(6.5))


def test_limits():
    """r -> 1 as q_C -> 0 (no repression of starving cells), r(K_qC) = 1/2, r -> 0 far above K_qC
    (rtol 1e-12 / atol 1e-9)."""
    law = _law()
    np.testing.assert_allclose(float(law.repression(0.0)), 1.0, atol=1e-12)
    np.testing.assert_allclose(float(law.repression(0.14)), 0.5, rtol=1e-12)
    assert float(law.repression(1.4)) < 1e-7  # (10)^-8
    # Hill form: r = 1 / (1 + (q/K)^n)
    q = np.array([0.01, 0.07, 0.1, 0.2, 0.5])
    np.testing.assert_allclose(np.asarray(jax.vmap(law.repression)(jnp.asarray(q))),
                               1.0 / (1.0 + (q / 0.14) ** 8), rtol=1e-12)


def test_default_is_off():
    """The default K_qC = 1e3 g/g/h, n_qC = 4 leaves production unchanged at any realistic uptake:
    r(2 g/g/h) = 1 - 1.6e-11 (rtol 1e-10)."""
    law = kin.LuedekingPiret(beta_max=0.01, K_P=1e-3)
    np.testing.assert_allclose(float(law.repression(2.0)), 1.0, rtol=1e-10)


def test_monotone_and_steepness():
    """r falls strictly with q_C, and faster for larger n_qC above K_qC (exact comparisons)."""
    q = jnp.linspace(0.0, 0.5, 501)
    r = np.asarray(jax.vmap(_law().repression)(q))
    assert np.all(np.diff(r) <= 0) and np.all(np.diff(r[20:]) < 0)  # r == 1.0 in float64 near 0
    assert float(_law(n=12.0).repression(0.2)) < float(_law(n=4.0).repression(0.2))
    assert float(_law(n=12.0).repression(0.1)) > float(_law(n=4.0).repression(0.1))


@pytest.mark.parametrize("q", [0.05, 0.14, 0.3])
def test_smooth_gradients_match_finite_differences(q):
    """d r / d q_C, d r / d K_qC and d r / d n_qC agree with central differences (rtol 1e-6,
    atol 1e-9: d r / d n_qC = 0 at q_C = K_qC)."""
    law = _law()
    g_q = jax.grad(lambda x: law.repression(x))(jnp.asarray(q))
    g_law = jax.grad(lambda m: m.repression(jnp.asarray(q)))(law)
    h = 1e-6
    fd_q = (float(law.repression(q + h)) - float(law.repression(q - h))) / (2 * h)
    np.testing.assert_allclose(float(g_q), fd_q, rtol=1e-6)
    for name in ("K_qC", "n_qC"):
        up = eqx.tree_at(lambda m: getattr(m, name), law, getattr(law, name) + h)
        dn = eqx.tree_at(lambda m: getattr(m, name), law, getattr(law, name) - h)
        fd = (float(up.repression(q)) - float(dn.repression(q))) / (2 * h)
        np.testing.assert_allclose(float(getattr(g_law, name)), fd, rtol=1e-6, atol=1e-9)
    assert np.isfinite(float(jax.grad(lambda x: law.repression(x))(jnp.asarray(0.0))))


@pytest.mark.parametrize("carbon", [kin.UptakeLimitedCarbon(), kin.PirtCarbon()])
def test_production_falls_as_uptake_rises(carbon):
    """At sugar levels where beta(S) barely changes, more sugar means more carbon uptake and less
    product under repression; without repression production does not fall (exact comparisons)."""
    S = jnp.asarray([0.05, 0.1, 0.2, 0.4])
    qp = lambda k: np.asarray(jax.vmap(lambda s: k.rates(_broth(s)).production)(S))
    rep, off = qp(_kin(carbon, K=0.12)), qp(_kin(carbon, K=1e3))
    assert np.all(np.diff(rep) < 0)
    assert np.all(rep < off)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_carbon_identity_with_repression(alpha):
    """Y_XS (q_S + e q_oil - m_S f_O - q_P / Y_PS) = mu still holds exactly (rtol 1e-12), and q_P is
    the unrepressed law times r(q_C) with q_C = q_S + e q_oil (rtol 1e-12)."""
    k = _kin(kin.UptakeLimitedCarbon(), K=0.1, alpha=alpha)
    b = _broth(S=0.5)
    r = k.rates(b)
    f_o = float(k.oxygen_factor(b.dissolved_oxygen))
    e = 0.9 / 0.45
    qc = float(r.substrate_uptake) + e * float(r.oil_uptake)
    lhs = 0.45 * (qc - 0.03 * f_o - float(r.production) / 0.9)
    assert float(r.growth) > 0
    np.testing.assert_allclose(lhs, float(r.growth), rtol=1e-12)
    act = float(k.temperature(b.temperature) * k.ph(b.pH)) * f_o
    rep = float(k.production.repression(qc))
    mu = float(r.growth)
    expected = (alpha * mu + float(k.production(b, 0.0))) * act * rep
    np.testing.assert_allclose(float(r.production), expected, rtol=1e-12)


def test_vmap_over_repression_parameters():
    """One compiled rate evaluation vmapped over K_qC gives the per-value results (rtol 1e-12)."""
    k = _kin(kin.UptakeLimitedCarbon())
    Ks = jnp.asarray([0.05, 0.1, 0.2])
    ks = jax.vmap(lambda K: eqx.tree_at(lambda m: m.production.K_qC, k, K))(Ks)
    batched = np.asarray(jax.vmap(lambda kk: kk.rates(_broth(0.3)).production)(ks))
    single = [float(eqx.tree_at(lambda m: m.production.K_qC, k, K).rates(_broth(0.3)).production) for K in Ks]
    np.testing.assert_allclose(batched, single, rtol=1e-12)


def test_indpensim_scenario_reads_repression():
    """The IndPenSim scenario carries K_qC = 0.14 g/g/h and n_qC = 8 (rtol 1e-12)."""
    sc = load_scenario(ROOT / "scenarios/penicillin_indpensim.toml")
    np.testing.assert_allclose(float(sc.model.kinetics.production.K_qC), 0.14, rtol=1e-12)
    np.testing.assert_allclose(float(sc.model.kinetics.production.n_qC), 8.0, rtol=1e-12)
