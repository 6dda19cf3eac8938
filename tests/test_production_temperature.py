"""Production's own temperature law (`ProductionTemperature`, `CultureKinetics.production_temperature`):
off = the growth curve for both, the same curve = no change, the factor acts on production only
(exactly, in both carbon balances), the scenario switch and its errors, and a whole batch."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twin  # noqa: F401
from twin import kinetics as kin
from twin.errors import ParameterError, ScenarioError
from twin.kinetics.base import Broth
from twin.reactor import parameter_table
from twin.recipe import Profile
from twin.scenario import load_scenario
from twin.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
IPS = ROOT / "scenarios/penicillin_indpensim.toml"


def _kin(carbon, production_temperature=None, alpha=0.0, K_qC=0.14):
    return kin.CultureKinetics(
        growth=kin.ContoisGrowth(mu_max=0.1, K_X=0.01),
        production=kin.LuedekingPiret(beta_max=0.01, K_P=0.001, K_IP=0.5, alpha=alpha, K_qC=K_qC, n_qC=8.0),
        hydrolysis=kin.ProductHydrolysis(k_h=0.002),
        temperature=kin.CardinalTemperature(T_min=5.0, T_opt=25.0, T_max=35.0),
        ph=kin.CardinalPH(pH_min=3.0, pH_opt=6.5, pH_max=9.0),
        oxygen=kin.OxygenLimitation(K_O=10.0),
        respiration=kin.OxygenDemand(Y_XO=0.04, Y_PO=0.2, m_O=0.467),
        sugar=kin.SugarUptake(Y_XS=0.45, Y_PS=0.9, m_S=0.03),
        oil=kin.OilUptake(mu_max_oil=0.02, K_oil=1.0, Y_X_oil=0.9),
        carbon=carbon,
        production_temperature=production_temperature,
    )


def _broth(T, S=0.3):
    f = lambda v: jnp.asarray(v, dtype=float)
    return Broth(biomass=f(20.0), substrate=f(S), product=f(5.0), precursor=f(0.0), oil=f(2.0),
                 dissolved_oxygen=f(80.0), temperature=f(T), pH=f(6.5))


CARBON = [kin.PirtCarbon(), kin.UptakeLimitedCarbon()]


def test_ctmi_values():
    """The production curve is the CTMI: 1 at T_opt_P, 0 outside (T_min_P, T_max_P), and the
    closed form at 20 degC for (5, 25, 35) (rtol 1e-12)."""
    f = kin.ProductionTemperature(T_min_P=5.0, T_opt_P=25.0, T_max_P=35.0)
    np.testing.assert_allclose(float(f(25.0)), 1.0, rtol=1e-12)
    assert float(f(4.0)) == 0.0 and float(f(36.0)) == 0.0
    expected = (20 - 35) * 15 ** 2 / (20 * (20 * (20 - 25) - (25 - 35) * (25 + 5 - 40)))
    np.testing.assert_allclose(float(f(20.0)), expected, rtol=1e-12)
    g = kin.CardinalTemperature(T_min=5.0, T_opt=25.0, T_max=35.0)
    T = jnp.linspace(0.0, 40.0, 81)
    np.testing.assert_allclose(np.asarray(jax.vmap(f)(T)), np.asarray(jax.vmap(g)(T)), rtol=0, atol=0)


@pytest.mark.parametrize("carbon", CARBON, ids=["pirt", "uptake_limited"])
@pytest.mark.parametrize("T", [21.0, 25.0, 28.0])
def test_same_curve_changes_nothing(carbon, T):
    """A production curve equal to the growth curve gives exactly the rates of no production curve."""
    same = kin.ProductionTemperature(T_min_P=5.0, T_opt_P=25.0, T_max_P=35.0)
    a, b = _kin(carbon).rates(_broth(T)), _kin(carbon, same).rates(_broth(T))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_factor_acts_on_production_only(alpha):
    """Pirt carbon: growth is unchanged by the production curve, and q_P scales by exactly
    f_TP(T) / f_T(T) (rtol 1e-12): production at 21 degC with T_opt_P = 21 runs at its optimum."""
    T = 21.0
    own = kin.ProductionTemperature(T_min_P=5.0, T_opt_P=21.0, T_max_P=35.0)
    a, b = _kin(kin.PirtCarbon(), alpha=alpha).rates(_broth(T)), _kin(kin.PirtCarbon(), own, alpha).rates(_broth(T))
    np.testing.assert_allclose(float(b.growth), float(a.growth), rtol=1e-12)
    f_T = float(kin.CardinalTemperature(T_min=5.0, T_opt=25.0, T_max=35.0)(T))
    assert f_T < 0.99
    np.testing.assert_allclose(float(b.production), float(a.production) * 1.0 / f_T, rtol=1e-12)
    assert float(b.substrate_uptake) > float(a.substrate_uptake)  # the product costs sugar (Y_PS)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_uptake_limited_carbon_identity(alpha):
    """Uptake-limited carbon with production's own curve: uptake follows the growth curve, q_P
    the production curve, and Y_XS (q_S + e q_oil - m_S f_O - q_P / Y_PS) = mu holds (rtol 1e-12)."""
    T = 22.0
    own = kin.ProductionTemperature(T_min_P=5.0, T_opt_P=22.0, T_max_P=35.0)
    k0, k1 = _kin(kin.UptakeLimitedCarbon(), alpha=alpha), _kin(kin.UptakeLimitedCarbon(), own, alpha)
    b = _broth(T)
    a, r = k0.rates(b), k1.rates(b)
    np.testing.assert_allclose(float(r.substrate_uptake), float(a.substrate_uptake), rtol=1e-12)
    np.testing.assert_allclose(float(r.oil_uptake), float(a.oil_uptake), rtol=1e-12)
    assert float(r.production) > float(a.production) and float(r.growth) < float(a.growth)
    f_o = float(k1.oxygen_factor(b.dissolved_oxygen))
    qc = float(r.substrate_uptake) + 0.9 / 0.45 * float(r.oil_uptake)
    np.testing.assert_allclose(0.45 * (qc - 0.03 * f_o - float(r.production) / 0.9), float(r.growth), rtol=1e-12)
    rep = float(k1.production.carbon_factor(qc))
    mu = float(r.growth)
    expected = (alpha * max(mu, 0.0) + float(k1.production(b, 0.0))) * 1.0 * f_o * rep
    np.testing.assert_allclose(float(r.production), expected, rtol=1e-12)


def test_gradient_in_T_opt_P_matches_finite_difference():
    """d q_P / d T_opt_P through the rates, against a central difference (rtol 1e-6, float64)."""
    T = 22.0

    def qp(t_opt):
        own = kin.ProductionTemperature(T_min_P=5.0, T_opt_P=t_opt, T_max_P=35.0)
        return _kin(kin.UptakeLimitedCarbon(), own).rates(_broth(T)).production

    x, h = 24.0, 1e-5
    g = float(jax.grad(qp)(jnp.asarray(x)))
    fd = (float(qp(jnp.asarray(x + h))) - float(qp(jnp.asarray(x - h)))) / (2 * h)
    assert g < 0  # moving the optimum away from 22 degC slows production there
    np.testing.assert_allclose(g, fd, rtol=1e-6)


def _scenario_text(law="true", keys='T_min_P = "5 degC"\nT_opt_P = "22 degC"\nT_max_P = "35 degC"\n'):
    """The shipped IndPenSim scenario (production law "none") with `[model] production_temperature =
    law` (a TOML value) and `keys` after T_max; paths made absolute."""
    text = IPS.read_text().replace('[recipe]\nfile = "../twin/', '[recipe]\nfile = "' + str(ROOT / "twin") + '/')
    text = text.replace('ph_loop_history = "../calibration/', 'ph_loop_history = "' + str(ROOT / "calibration") + '/')
    shipped = 'production_temperature = "none"\n'
    assert text.count(shipped) == 1
    text = text.replace(shipped, f"production_temperature = {law}\n")
    return text.replace('T_max = "35 degC"\n', 'T_max = "35 degC"\n' + keys, 1)


def test_scenario_switch_and_parameter_names(tmp_path):
    """`[model] production_temperature = true` builds the law from T_min_P / T_opt_P / T_max_P;
    each has one public name; without the switch the keys are unknown and the hint names it."""
    p = tmp_path / "s.toml"
    p.write_text(_scenario_text())
    sc = load_scenario(p)
    pt = sc.model.kinetics.production_temperature
    assert isinstance(pt, kin.ProductionTemperature) and float(pt.T_opt_P) == 22.0
    table = parameter_table(sc.model)
    assert table["kinetics.T_opt_P"].unit == "degC" and table["kinetics.T_opt"].value == 25.0
    assert isinstance(load_scenario(IPS).model.kinetics.production_temperature, kin.TemperatureIndependent)
    p.write_text(_scenario_text(law='"shared"'))
    with pytest.raises(ScenarioError, match="kinetics.T_m.._P|kinetics.T_opt_P") as e:
        load_scenario(p)
    assert "model.production_temperature" in str(e.value)
    p.write_text(_scenario_text(keys='T_min_P = "5 degC"\nT_opt_P = "40 degC"\nT_max_P = "35 degC"\n'))
    with pytest.raises(ParameterError, match="T_min_P < T_opt_P < T_max_P"):
        load_scenario(p)
    p.write_text(_scenario_text(keys='T_min_P = "5 degC"\nT_max_P = "35 degC"\n'))
    with pytest.raises(ScenarioError, match="kinetics.T_opt_P"):
        load_scenario(p)


def test_batch_with_cooler_production_optimum(tmp_path):
    """A whole IndPenSim-scale batch: the same curve for production changes nothing (rtol 1e-9);
    an optimum of 22 degC for production, with the set-point at 24.85 degC, makes less product,
    and the product ledger closes (formed - hydrolysed - drawn, rtol 1e-9 of what was formed)."""
    p = tmp_path / "shared.toml"
    p.write_text(_scenario_text(law='"shared"', keys=""))
    base = load_scenario(p)
    p = tmp_path / "same.toml"
    p.write_text(_scenario_text(keys='T_min_P = "5 degC"\nT_opt_P = "25 degC"\nT_max_P = "35 degC"\n'))
    same = load_scenario(p)
    p.write_text(_scenario_text())
    cool = load_scenario(p)
    ts = jnp.arange(0.0, 231.0, 1.0)
    run = lambda sc: simulate(sc.model, sc.recipe, sc.y0, 0.0, 230.0, ts=ts)
    r0, r1, r2 = run(base), run(same), run(cool)
    np.testing.assert_allclose(np.asarray(r1.total_product), np.asarray(r0.total_product), rtol=1e-9)
    assert float(r2.total_product[-1]) < 0.995 * float(r0.total_product[-1])
    L = r2.states.ledger
    rhs = cool.y0.product + L.product_formed - L.product_hydrolysed - L.product_drawn
    np.testing.assert_allclose(np.asarray(r2.states.product), np.asarray(rhs), rtol=0,
                               atol=1e-9 * float(L.product_formed[-1]))


@pytest.mark.parametrize("carbon", CARBON, ids=["pirt", "uptake_limited"])
def test_temperature_independent_production(carbon):
    """`TemperatureIndependent`: without carbon-flux repression (whose q_C follows growth), q_P is
    the same at 20, 25 and 29 degC (rtol 1e-12) at the same broth (Pirt carbon, alpha 0), while
    growth still follows the cardinal curve (slower at 20 degC); with repression, production at
    20 degC is faster than under the shared curve; at the growth optimum it gives exactly the rates
    of the shared curve."""
    flat = kin.TemperatureIndependent()
    np.testing.assert_array_equal(np.asarray(jax.vmap(flat)(jnp.linspace(0.0, 40.0, 9))), np.ones(9))
    k, shared = _kin(carbon, flat), _kin(carbon)
    if isinstance(carbon, kin.PirtCarbon):  # q_P does not depend on mu unless alpha > 0
        free = _kin(carbon, flat, K_qC=1e6)
        q = [float(free.rates(_broth(T)).production) for T in (20.0, 25.0, 29.0)]
        np.testing.assert_allclose(q, q[0], rtol=1e-12)
    assert float(k.rates(_broth(20.0)).growth) < float(k.rates(_broth(25.0)).growth)
    assert float(k.rates(_broth(20.0)).production) > float(shared.rates(_broth(20.0)).production)
    a, b = shared.rates(_broth(25.0)), k.rates(_broth(25.0))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12)


def test_scenario_production_temperature_none(tmp_path):
    """`[model] production_temperature = "none"` builds `TemperatureIndependent` (no parameters);
    its structure differs from the shared curve's (a posterior of one is refused by the other);
    T_*_P keys are then unknown; anything but shared / cardinal / none / true / false is refused by
    name; a whole batch cooled to 21 degC from 100 h makes more product than under the shared curve."""
    from calibration.model import structure_hash

    p = tmp_path / "s.toml"
    none = _scenario_text(law='"none"', keys="")
    p.write_text(none)
    sc = load_scenario(p)
    assert isinstance(sc.model.kinetics.production_temperature, kin.TemperatureIndependent)
    assert structure_hash(sc.model) == structure_hash(load_scenario(IPS).model)  # the shipped law
    p.write_text(_scenario_text(law="false", keys=""))
    base = load_scenario(p)
    assert base.model.kinetics.production_temperature is None
    assert structure_hash(sc.model) != structure_hash(base.model)
    assert not any(k.endswith("_P") and "T_" in k for k in parameter_table(sc.model))
    p.write_text(_scenario_text(law='"none"'))
    with pytest.raises(ScenarioError, match="kinetics.T_m.._P|kinetics.T_opt_P"):
        load_scenario(p)
    for bad in ('"flat"', "1", '["none"]'):
        p.write_text(_scenario_text(law=bad, keys=""))
        with pytest.raises(ScenarioError, match="model.production_temperature") as e:
            load_scenario(p)
        assert "none" in str(e.value) and "cardinal" in str(e.value)
    p.write_text(_scenario_text(law='"shared"', keys=""))
    assert structure_hash(load_scenario(p).model) == structure_hash(base.model)
    p.write_text(none)
    cool = lambda sc: sc.recipe.with_profile("temperature", Profile(
        jnp.array([0.0, 100.0]), jnp.asarray(230.0), jnp.array([24.85, 21.0]), jnp.array([24.85, 21.0])))
    ts = jnp.arange(0.0, 231.0, 1.0)
    run = lambda s: simulate(s.model, cool(s), s.y0, 0.0, 230.0, ts=ts)
    r_none, r_shared = run(sc), run(base)
    assert float(r_none.total_product[-1]) > 1.02 * float(r_shared.total_product[-1])
