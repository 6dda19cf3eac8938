"""The carbon-flux window on production: repression at high uptake (`LuedekingPiret.repression`)
and starvation at low uptake (`LuedekingPiret.starvation`): limits, off = unchanged, monotonicity,
smoothness (grads vs finite differences, float64), the carbon identity with the window, and vmap
over parameters. Tolerances are stated per assertion."""

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


def _law(K=0.14, n=8.0, K_low=0.0, n_low=2.0):
    return kin.LuedekingPiret(beta_max=0.012, K_P=2e-4, K_IP=0.1, K_qC=K, n_qC=n, K_low=K_low, n_low=n_low)


def _kin(carbon, *, K=0.14, n=8.0, alpha=0.0, K_low=0.0, n_low=3.0, mu_max=0.1, mu_max_oil=0.02):
    return kin.CultureKinetics(
        growth=kin.ContoisGrowth(mu_max=mu_max, K_X=0.01),
        production=kin.LuedekingPiret(beta_max=0.01, K_P=0.001, K_IP=0.5, alpha=alpha, K_qC=K, n_qC=n,
                                      K_low=K_low, n_low=n_low),
        hydrolysis=kin.ProductHydrolysis(k_h=0.002),
        temperature=kin.CardinalTemperature(T_min=5.0, T_opt=25.0, T_max=35.0),
        ph=kin.CardinalPH(pH_min=3.0, pH_opt=6.5, pH_max=9.0),
        oxygen=kin.OxygenLimitation(K_O=10.0),
        respiration=kin.OxygenDemand(Y_XO=0.04, Y_PO=0.2, m_O=0.467),
        sugar=kin.SugarUptake(Y_XS=0.45, Y_PS=0.9, m_S=0.03),
        oil=kin.OilUptake(mu_max_oil=mu_max_oil, K_oil=1.0, Y_X_oil=0.9),
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
    """The IndPenSim scenario carries K_qC = 0.14 g/g/h and n_qC = 8 (rtol 1e-12); its carbon
    starvation is off (K_low = 0 exactly; the plant-derived K_low = 0.03 g/g/h, n_low = 3 of its
    [sources] starvation entry is switched on with an override, rtol 1e-12)."""
    sc = load_scenario(ROOT / "scenarios/penicillin_indpensim.toml")
    np.testing.assert_allclose(float(sc.model.kinetics.production.K_qC), 0.14, rtol=1e-12)
    np.testing.assert_allclose(float(sc.model.kinetics.production.n_qC), 8.0, rtol=1e-12)
    assert float(sc.model.kinetics.production.K_low) == 0.0
    on = load_scenario(ROOT / "scenarios/penicillin_indpensim.toml", overrides={"kinetics.K_low": 0.03})
    np.testing.assert_allclose(float(on.model.kinetics.production.K_low), 0.03, rtol=1e-12)
    np.testing.assert_allclose(float(on.model.kinetics.production.n_low), 3.0, rtol=1e-12)


# --- the low side: carbon starvation s(q_C) = q_C^n / (K_low^n + q_C^n) -----------------------


def test_starvation_off_by_default_is_exact():
    """The default K_low = 0 gives s = 1 exactly at any q_C (also 0), carbon_factor == repression
    exactly, and a finite (zero) gradient in K_low and q_C (exact comparisons)."""
    law = kin.LuedekingPiret(beta_max=0.01, K_P=1e-3)
    assert float(law.K_low) == 0.0
    q = jnp.asarray([0.0, 1e-9, 0.03, 0.14, 2.0, 1e3])
    assert np.all(np.asarray(jax.vmap(law.starvation)(q)) == 1.0)
    law2 = _law()
    assert np.all(np.asarray(jax.vmap(law2.carbon_factor)(q)) == np.asarray(jax.vmap(law2.repression)(q)))
    g = jax.grad(lambda m: m.carbon_factor(jnp.asarray(0.05)))(law2)
    assert float(g.K_low) == 0.0 and float(g.n_low) == 0.0
    assert float(jax.grad(law.starvation)(jnp.asarray(0.05))) == 0.0


@pytest.mark.parametrize("carbon", [kin.UptakeLimitedCarbon(), kin.PirtCarbon()])
def test_starvation_off_leaves_rates_unchanged(carbon):
    """With K_low = 0 every rate equals the pre-starvation law: q_P = unrepressed x r(q_C), and the
    rates do not depend on n_low (exact equality)."""
    S = jnp.asarray([0.0, 1e-4, 0.05, 0.5, 5.0])
    a = jax.vmap(lambda s: _kin(carbon, K_low=0.0, n_low=3.0).rates(_broth(s)))(S)
    b = jax.vmap(lambda s: _kin(carbon, K_low=0.0, n_low=17.0).rates(_broth(s)))(S)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    if isinstance(carbon, kin.UptakeLimitedCarbon):
        k = _kin(carbon)
        for s in [1e-4, 0.05, 0.5]:
            b0 = _broth(s)
            f_o = k.oxygen_factor(b0.dissolved_oxygen)
            qc = k.growth(b0) / 0.45 * f_o + 0.9 / 0.45 * k.oil.growth(b0.oil) / 0.9 * f_o
            want = float(k.production(b0, 0.0) * f_o * k.production.repression(qc))
            assert float(k.rates(b0).production) == pytest.approx(want, rel=1e-14)


def test_starvation_limits():
    """s(0) = 0 (atol 1e-12), s(K_low) = 1/2 (rtol 1e-12), the Hill form (rtol 1e-12), s -> 1 far
    above K_low (atol 1e-9) and s -> 0 for a very large K_low (atol 1e-9)."""
    law = _law(K_low=0.03, n_low=3.0)
    np.testing.assert_allclose(float(law.starvation(0.0)), 0.0, atol=1e-12)
    np.testing.assert_allclose(float(law.starvation(0.03)), 0.5, rtol=1e-12)
    q = np.array([1e-3, 0.01, 0.03, 0.05, 0.1, 0.3])
    np.testing.assert_allclose(np.asarray(jax.vmap(law.starvation)(jnp.asarray(q))),
                               q**3 / (0.03**3 + q**3), rtol=1e-12)
    np.testing.assert_allclose(float(law.starvation(30.0)), 1.0, atol=1e-9)
    np.testing.assert_allclose(float(_law(K_low=1e3, n_low=3.0).starvation(0.1)), 0.0, atol=1e-9)
    # the window: r s with both sides on peaks between K_low and K_qC and falls on both sides
    qq = jnp.linspace(1e-4, 0.4, 4001)
    w = np.asarray(jax.vmap(law.carbon_factor)(qq))
    i = int(np.argmax(w))
    assert 0.03 < float(qq[i]) < 0.14
    assert np.all(np.diff(w[: i + 1]) > 0) and np.all(np.diff(w[i:]) < 0)


def test_starvation_monotone_and_steepness():
    """s rises strictly with q_C, and more steeply for larger n_low around K_low (exact comparisons)."""
    q = jnp.linspace(1e-4, 0.5, 501)
    s = np.asarray(jax.vmap(_law(K_low=0.03, n_low=3.0).starvation)(q))
    assert np.all(np.diff(s) > 0)
    assert float(_law(K_low=0.03, n_low=6.0).starvation(0.02)) < float(_law(K_low=0.03, n_low=2.0).starvation(0.02))
    assert float(_law(K_low=0.03, n_low=6.0).starvation(0.05)) > float(_law(K_low=0.03, n_low=2.0).starvation(0.05))


@pytest.mark.parametrize("q", [0.005, 0.03, 0.05, 0.2])
def test_starvation_gradients_match_finite_differences(q):
    """d s / d q_C, d s / d K_low and d s / d n_low (and the same for r s) agree with central
    differences in float64 (rtol 1e-6, atol 1e-9: d s / d n_low = 0 at q_C = K_low)."""
    law = _law(K_low=0.03, n_low=3.0)
    h = 1e-7
    for fn in ("starvation", "carbon_factor"):
        f = lambda m, x: getattr(m, fn)(x)
        g_q = jax.grad(lambda x: f(law, x))(jnp.asarray(q))
        fd_q = (float(f(law, q + h)) - float(f(law, q - h))) / (2 * h)
        np.testing.assert_allclose(float(g_q), fd_q, rtol=1e-6, atol=1e-9)
        g_law = jax.grad(lambda m: f(m, jnp.asarray(q)))(law)
        for name in ("K_low", "n_low", "K_qC"):
            up = eqx.tree_at(lambda m: getattr(m, name), law, getattr(law, name) + h)
            dn = eqx.tree_at(lambda m: getattr(m, name), law, getattr(law, name) - h)
            fd = (float(f(up, q)) - float(f(dn, q))) / (2 * h)
            np.testing.assert_allclose(float(getattr(g_law, name)), fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("carbon", [kin.UptakeLimitedCarbon(), kin.PirtCarbon()])
def test_starving_cells_make_no_product(carbon):
    """As the carbon uptake q_C goes to 0 (growth laws switched down, sugar still present so the
    non-growth term beta(S) is unchanged), production goes to 0 with starvation on and stays at
    beta(S) f with it off (rtol 1e-6 / atol 1e-12)."""
    b = _broth(0.5, oil=2.0)
    on = _kin(carbon, K_low=0.03, mu_max=1e-9, mu_max_oil=1e-9)
    off = _kin(carbon, K_low=0.0, mu_max=1e-9, mu_max_oil=1e-9)
    np.testing.assert_allclose(float(on.rates(b).production), 0.0, atol=1e-12)
    f_o = float(off.oxygen_factor(b.dissolved_oxygen))
    np.testing.assert_allclose(float(off.rates(b).production), float(off.production(b, 0.0)) * f_o, rtol=1e-6)


@pytest.mark.parametrize("carbon", [kin.UptakeLimitedCarbon(), kin.PirtCarbon()])
def test_production_rises_with_uptake_when_starved(carbon):
    """Below K_low, more sugar (more carbon uptake) means more product with starvation on; the
    starvation factor only lowers production (exact comparisons)."""
    S = jnp.asarray([2e-4, 5e-4, 1e-3, 2e-3])
    qp = lambda k: np.asarray(jax.vmap(lambda s: k.rates(_broth(s, oil=0.0)).production)(S))
    on, off = qp(_kin(carbon, K_low=0.05)), qp(_kin(carbon, K_low=0.0))
    assert np.all(np.diff(on) > 0)
    assert np.all(on < off)
    assert np.all(np.diff(on / off) > 0)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_carbon_identity_with_starvation(alpha):
    """With starvation and repression on, Y_XS (q_S + e q_oil - m_S f_O - q_P / Y_PS) = mu holds
    exactly (rtol 1e-12), and q_P is the unrepressed law times r(q_C) s(q_C) (rtol 1e-12), with
    s(q_C) < 1 at this uptake."""
    k = _kin(kin.UptakeLimitedCarbon(), K=0.1, alpha=alpha, K_low=0.06, n_low=3.0)
    b = _broth(S=0.5)
    r = k.rates(b)
    f_o = float(k.oxygen_factor(b.dissolved_oxygen))
    e = 0.9 / 0.45
    qc = float(r.substrate_uptake) + e * float(r.oil_uptake)
    assert float(k.production.starvation(qc)) < 0.99
    lhs = 0.45 * (qc - 0.03 * f_o - float(r.production) / 0.9)
    assert float(r.growth) > 0
    np.testing.assert_allclose(lhs, float(r.growth), rtol=1e-12)
    act = float(k.temperature(b.temperature) * k.ph(b.pH)) * f_o
    win = float(k.production.repression(qc) * k.production.starvation(qc))
    expected = (alpha * float(r.growth) + float(k.production(b, 0.0))) * act * win
    np.testing.assert_allclose(float(r.production), expected, rtol=1e-12)


def test_vmap_over_starvation_parameters():
    """One compiled rate evaluation vmapped over K_low (including 0: off) gives the per-value
    results (rtol 1e-12)."""
    k = _kin(kin.UptakeLimitedCarbon())
    Ks = jnp.asarray([0.0, 0.01, 0.03, 0.1])
    ks = jax.vmap(lambda K: eqx.tree_at(lambda m: m.production.K_low, k, K))(Ks)
    batched = np.asarray(jax.vmap(lambda kk: kk.rates(_broth(0.002)).production)(ks))
    single = [float(eqx.tree_at(lambda m: m.production.K_low, k, K).rates(_broth(0.002)).production) for K in Ks]
    np.testing.assert_allclose(batched, single, rtol=1e-12)
    assert np.all(np.diff(batched) < 0)
