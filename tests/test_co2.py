"""Dissolved CO2: the quasi-steady gas balance, the head pressure, the inhibition and where it acts."""

from __future__ import annotations

import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin.errors import ScenarioError
from twin.reactor import MOLAR_VOLUME_NORMAL, co2_solubility, set_parameters
from twin.report import trajectory_frame
from twin.recipe import Profile
from twin.scenario import load_scenario
from twin.simulate import Adaptive, simulate

from test_model import _random_states

ROOT = Path(__file__).resolve().parents[1]
IPS = ROOT / "scenarios" / "penicillin_indpensim.toml"


@pytest.fixture(scope="module")
def ips():
    return load_scenario(IPS)


def test_head_pressure_is_the_log_mean_over_the_liquid_height(ips):
    """Top at back pressure + 1 atm, bottom plus rho g h; the log mean lies between them; an
    empty vessel has the top pressure."""
    model = ips.model
    y, u = _random_states(jax.random.key(1), 200)
    p = np.asarray(jax.vmap(model.head_pressure)(y, u))
    top = np.asarray(u.back_pressure) + 1.01325
    area = math.pi * float(model.vessel.tank_diameter) ** 2 / 4
    bottom = top + float(model.vessel.broth_density) * 9.81 * np.asarray(y.volume) / 1000 / area / 1e5
    np.testing.assert_allclose(p, (bottom - top) / np.log(bottom / top), rtol=1e-12)
    assert np.all((p > top) & (p < bottom))
    empty = eqx.tree_at(lambda s: s.volume, y, jnp.zeros(200))
    np.testing.assert_allclose(jax.vmap(model.head_pressure)(empty, u), top, rtol=1e-15)


def test_offgas_carries_the_co2_evolved_and_the_broth_is_in_equilibrium_with_it(ips):
    """CER V = n_gas (y - y_in) (mmol/h) exactly, CER = q_CO2 X, and c = H(T) p_lm y."""
    model = ips.model
    y, u = _random_states(jax.random.key(2), 500)
    _, _, out, _ = jax.jit(jax.vmap(model.algebraic))(y, u)
    X = np.asarray(y.biomass / y.volume)
    cer = np.asarray(out.carbon_evolution_rate)
    np.testing.assert_allclose(cer, float(model.kinetics.co2.q_CO2) * X, rtol=1e-13)
    n_gas = np.asarray(u.aeration) / MOLAR_VOLUME_NORMAL
    frac = np.asarray(out.offgas_co2)
    unsaturated = frac < 1.0
    assert unsaturated.sum() > 400
    np.testing.assert_allclose((cer * np.asarray(y.volume))[unsaturated],
                               (1000 * n_gas * (frac - float(model.vessel.inlet_co2)))[unsaturated],
                               rtol=1e-10)
    p = np.asarray(jax.vmap(model.head_pressure)(y, u))
    np.testing.assert_allclose(out.dissolved_co2, np.asarray(co2_solubility(u.temperature)) * p * frac,
                               rtol=1e-12)
    # Henry's law: CO2 is less soluble when warm, 33 mmol/L/bar at 25 degC
    assert float(co2_solubility(25.0)) == pytest.approx(33.0, rel=1e-12)
    assert float(co2_solubility(35.0)) < float(co2_solubility(25.0)) < float(co2_solubility(15.0))


def test_co2_inhibits_growth_and_uptake_but_not_production_directly(ips):
    """At the critical CO2 sugar and oil uptake halve; production is not inhibited itself (the
    plant's stall comes from the sugar that then piles up): with the production law's carbon-flux
    window out of reach it is unchanged at the same broth. Far below the critical value, no effect."""
    k = set_parameters(ips.model, {"kinetics.K_qC": 100.0}).kinetics
    y, u = _random_states(jax.random.key(3), 1)
    broth = ips.model.broth(jax.tree_util.tree_map(lambda a: a[0], y),
                            jax.tree_util.tree_map(lambda a: a[0], u), jnp.asarray(80.0))
    at = lambda c: k.rates(eqx.tree_at(lambda b: b.dissolved_co2, broth, jnp.asarray(c)))  # noqa: E731
    free, crit, low = at(0.0), at(float(k.co2.CO2_crit)), at(float(k.co2.CO2_crit) - 0.5)
    assert float(free.substrate_uptake) > 0 and float(free.oil_uptake) > 0
    np.testing.assert_allclose(crit.substrate_uptake, 0.5 * free.substrate_uptake, rtol=1e-12)
    np.testing.assert_allclose(crit.oil_uptake, 0.5 * free.oil_uptake, rtol=1e-12)
    np.testing.assert_allclose(crit.production, free.production, rtol=1e-12)
    np.testing.assert_allclose(low.substrate_uptake, free.substrate_uptake, rtol=1e-7)


def _until_120h(sc, model, gas_factor):
    p = sc.recipe.profiles["aeration"]
    scale = jnp.where(p.start >= 40.0, gas_factor, 1.0)
    recipe = sc.recipe.with_profile("aeration", Profile(p.start, p.end, p.value * scale, p.value_end * scale))
    return simulate(model, recipe, sc.y0, 0.0, 120.0, ts=jnp.arange(0.0, 121.0, 1.0),
                    options=Adaptive(rtol=1e-8, atol=1e-8))


def test_too_little_gas_lets_co2_stall_sugar_uptake(ips):
    """Half the gas flow from 40 h doubles the off-gas CO2: the dissolved CO2 passes the critical
    value, uptake stalls and sugar piles up. The same batch with the inhibition moved out of reach
    (CO2_crit at its upper bound) keeps its sugar low, and so does the default gas flow."""
    crit = float(ips.model.kinetics.co2.CO2_crit)
    off = set_parameters(ips.model, {"kinetics.CO2_crit": 100.0})
    starved = _until_120h(ips, ips.model, 0.5)
    free = _until_120h(ips, off, 0.5)
    default = _until_120h(ips, ips.model, 1.0)
    sugar = lambda t: np.asarray(t.concentration("substrate"))  # noqa: E731
    dco2 = np.asarray(starved.outputs.dissolved_co2)
    assert dco2.max() > crit and np.asarray(default.outputs.dissolved_co2).max() < crit
    # the off-gas CO2 above the inlet doubles where the biomass is the same (before the stall, at
    # 50 h; the volume differs by the evaporation the gas carries, 1e-4)
    ratio = float(starved.outputs.offgas_co2[50] - 3.3e-4) / float(default.outputs.offgas_co2[50] - 3.3e-4)
    assert ratio == pytest.approx(2.0, rel=1e-3)
    assert np.asarray(starved.outputs.co2_factor).min() < 0.25  # settles near 0.13: X stops growing
    assert sugar(starved)[60:].max() > 1.0
    assert sugar(free)[60:].max() < 0.2 and sugar(default)[60:].max() < 0.2
    # production stops while the sugar is piled up (the production law's substrate inhibition)
    assert float(starved.concentration("product")[-1]) < 0.8 * float(free.concentration("product")[-1])


def test_co2_columns_only_where_the_model_has_co2(ips, ery_traj):
    """trajectories.csv carries CER, off-gas and dissolved CO2 and the inhibition factor where the
    scenario has model.co2 = true, and no such columns otherwise."""
    without = trajectory_frame(ery_traj)
    assert not [c for c in without.columns if "co2" in c or "carbon_evolution" in c]
    assert ery_traj.outputs.dissolved_co2 is None
    short = simulate(ips.model, ips.recipe, ips.y0, 0.0, 5.0, ts=jnp.arange(0.0, 6.0, 1.0))
    cols = trajectory_frame(short).columns
    for c in ("carbon_evolution_rate_mmol_L_h", "offgas_co2_mol_mol", "dissolved_co2_mmol_L", "co2_factor"):
        assert c in cols


def test_co2_parameters_need_the_co2_switch(tmp_path):
    """A CO2 parameter in a scenario without model.co2 is an unknown key whose hint names the switch."""
    text = IPS.read_text().replace("co2 = true", "co2 = false").replace(
        '[recipe]\nfile = "../twin/', '[recipe]\nfile = "' + str(ROOT / "twin") + '/')
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ScenarioError, match="kinetics.CO2_crit|kinetics.CO2_width|kinetics.q_CO2") as e:
        load_scenario(bad)
    assert "model.co2" in str(e.value)
