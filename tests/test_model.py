"""Physics of the reactor model: balances, analytic limits, quasi-steady oxygen, cardinal factors.

Every test states its tolerance. The state holds amounts (g) and the volume (L) together with a
ledger of cumulative flows, so the material balances are linear invariants of the vector field,
which every Runge-Kutta method preserves to round-off; they are checked far tighter than the
solver tolerance.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin.kinetics import CardinalPH, CardinalTemperature
from twin.reactor import set_parameters
from twin.recipe import constant_profile
from twin.state import Controls, ReactorState

from conftest import run, set_profile, solve_ivp_reference

# ----------------------------------------------------------------------------- mass balances

BALANCE_RTOL = 1e-11  # linear invariants: round-off (observed 3e-14), relative to the largest term
LEDGER_RTOL = 1e-9  # feeds depend on t only; Tsit5 integrates each polynomial phase exactly


def _with_all_flows(pen):
    """The penicillin-like recipe (sugar, oil, precursor feeds, two harvest draws) plus water."""
    return pen.recipe.with_profile("water_feed", constant_profile(40.0, 0.0, pen.duration_h))


@pytest.fixture(scope="module")
def all_flows_traj(pen):
    return run(pen, recipe=_with_all_flows(pen))


@pytest.fixture(params=["erythromycin_like", "penicillin_like", "penicillin_all_flows"])
def balance_case(request, ery, pen, ery_traj, pen_traj):
    if request.param == "erythromycin_like":
        return ery, ery.recipe, ery_traj
    if request.param == "penicillin_like":
        return pen, pen.recipe, pen_traj
    return pen, _with_all_flows(pen), request.getfixturevalue("all_flows_traj")


def test_substrate_balance(balance_case):
    sc, _, traj = balance_case
    s, L = traj.states, traj.states.ledger
    rhs = sc.y0.substrate + L.substrate_fed - L.substrate_consumed - L.substrate_drawn
    scale = float(L.substrate_fed[-1])
    assert scale > 0
    np.testing.assert_allclose(s.substrate, rhs, rtol=0, atol=BALANCE_RTOL * scale)


def test_product_balance(balance_case):
    sc, _, traj = balance_case
    s, L = traj.states, traj.states.ledger
    rhs = sc.y0.product + L.product_formed - L.product_hydrolysed - L.product_drawn
    scale = float(L.product_formed[-1])
    assert scale > 0
    np.testing.assert_allclose(s.product, rhs, rtol=0, atol=BALANCE_RTOL * scale)


def test_volume_balance(balance_case):
    sc, _, traj = balance_case
    s, L = traj.states, traj.states.ledger
    rhs = sc.y0.volume + L.volume_fed - L.volume_drawn - L.volume_evaporated
    scale = max(float(sc.y0.volume), float(L.volume_fed[-1]))
    np.testing.assert_allclose(s.volume, rhs, rtol=0, atol=BALANCE_RTOL * scale)


def test_ledger_fed_totals_equal_recipe_integrals(balance_case):
    sc, recipe, traj = balance_case
    L = jax.tree_util.tree_map(lambda a: float(a[-1]), traj.states.ledger)
    f = sc.model.feeds
    total = lambda v: float(recipe.total(v))  # noqa: E731
    feeds = ("substrate_feed", "oil_feed", "precursor_feed", "water_feed")
    pairs = [
        (L.substrate_fed, total("substrate_feed") * float(f.substrate_conc)),
        (L.oil_fed, total("oil_feed") * float(f.oil_conc)),
        (L.precursor_fed, total("precursor_feed") * float(f.precursor_conc)),
        (L.volume_fed, sum(total(v) * (float(f.oil_volume_fraction) if v == "oil_feed" else 1.0)
                           for v in feeds)),
        (L.volume_drawn, total("draw")),
    ]
    for got, want in pairs:
        np.testing.assert_allclose(got, want, rtol=LEDGER_RTOL, atol=1e-9)


def test_all_flows_case_exercises_every_flow(all_flows_traj):
    """The balance case with harvest draws really draws, feeds and evaporates (no vacuous pass)."""
    L = jax.tree_util.tree_map(lambda a: float(a[-1]), all_flows_traj.states.ledger)
    for name in ("substrate_fed", "oil_fed", "precursor_fed", "volume_fed", "volume_drawn",
                 "volume_evaporated", "substrate_drawn", "product_drawn", "product_hydrolysed"):
        assert getattr(L, name) > 0, name


# ----------------------------------------------------------------------------- precursor loop


def _held(pen, setpoint, *, hold_time=5.0, max_flow=1e9):
    """The penicillin-like batch with its precursor held at `setpoint` g/L by the loop."""
    model = set_parameters(pen.model, {"feeds.precursor_hold_time": hold_time,
                                       "feeds.precursor_max_flow": max_flow})
    recipe = set_profile(pen.recipe, "precursor_setpoint", setpoint)
    return run(pen, model=model, recipe=recipe), recipe


def test_precursor_loop_follows_its_first_order_law(pen):
    """While its flow is positive and below the pump limit, the loop makes dc/dt = (c_sp - c)/tau
    exactly, whatever the growth, uptake, feeds, draws and evaporation: from 0.5 g/L towards
    1.5 g/L with tau = 5 h, c(t) = 1.5 - exp(-t/5) (to the reference solver's tolerance). Near
    the set-point, before the sugar feed starts, evaporation alone concentrates the broth faster
    than the law asks: the loop then feeds nothing (it cannot remove precursor) and the
    concentration runs ahead of the law, up to the set-point."""
    traj, _ = _held(pen, 1.5)
    t = np.asarray(traj.ts)
    c = np.asarray(traj.concentration("precursor"))
    flow = np.asarray(traj.controls.precursor_feed)
    assert float(pen.y0.precursor / pen.y0.volume) == pytest.approx(0.5)
    first_idle = int(np.argmax(flow <= 0.0))
    assert t[first_idle] >= 20.0  # four time constants of the law before the loop idles
    law = slice(0, first_idle - 1)  # the saved point before the first idle one may straddle it
    np.testing.assert_allclose(c[law], 1.5 - np.exp(-t[law] / 5.0), rtol=0, atol=1e-7)
    assert (flow[: first_idle - 1] > 0).all()
    assert c.max() < 1.5 + 1e-9 and c[t >= 60].min() > 1.5 - 1e-4  # held once the feeds run


def test_precursor_loop_is_limited_by_its_pump(pen):
    """With a pump of a fifth of the largest flow the loop wants, the flow never exceeds the
    limit, sits at it only while the concentration is short of the set-point, and late in the
    batch cannot keep up with the uptake."""
    free, _ = _held(pen, 1.5)
    limit = 0.2 * float(np.max(np.asarray(free.controls.precursor_feed)))
    traj, _ = _held(pen, 1.5, max_flow=limit)
    flow = np.asarray(traj.controls.precursor_feed)
    c = np.asarray(traj.concentration("precursor"))
    assert flow.max() <= limit * (1 + 1e-12)
    at_limit = flow >= limit * (1 - 1e-9)
    assert at_limit.sum() > 10
    assert (c[at_limit] < 1.5).all()  # at the limit only while short of the set-point
    assert c[-1] < 0.1  # late, the culture takes up more than the pump can give


def test_precursor_loop_keeps_the_balances(pen):
    """The loop's flow enters the precursor and the volume ledgers alike: the volume fed minus
    the recipe's other feeds is exactly the precursor fed over the feed concentration."""
    traj, recipe = _held(pen, 1.5)
    L = traj.states.ledger
    f = pen.model.feeds
    others = sum(float(recipe.total(v)) for v in ("substrate_feed", "water_feed"))
    others += float(f.oil_volume_fraction) * float(recipe.total("oil_feed"))
    prec_L = float(L.precursor_fed[-1]) / float(f.precursor_conc)
    # the loop, not the recipe's 6 L/h, decided the flow
    assert abs(prec_L / float(recipe.total("precursor_feed")) - 1.0) > 0.1
    np.testing.assert_allclose(float(L.volume_fed[-1]) - others, prec_L, rtol=1e-9)
    rhs = pen.y0.volume + L.volume_fed - L.volume_drawn - L.volume_evaporated
    np.testing.assert_allclose(traj.states.volume, rhs, rtol=0, atol=BALANCE_RTOL * float(L.volume_fed[-1]))


# ----------------------------------------------------------------------------- analytic limits


def _ideal_batch(ery, **params):
    """The erythromycin-like structure turned into an ideal batch: no feed, no draw, no
    evaporation, T and pH at their optimum, no maintenance, no production, oxygen unlimiting.

    K_O = 1e-9 % (below its physical range, hence `check=False`) makes f_O = 1 - O(1e-9);
    Y_XO = 1 and m_O = 0 keep the oxygen demand far below the transfer capacity.
    """
    k = ery.model.kinetics
    base = {"K_IS": 1e12, "m_S": 0.0, "beta_max": 0.0, "alpha": 0.0, "k_h": 0.0, "m_prec": 0.0,
            "Y_XO": 1.0, "m_O": 0.0, "evaporation_saturation": 0.0}
    model = set_parameters(ery.model, {**base, **params})
    model = set_parameters(model, {"K_O": 1e-9}, check=False)
    recipe = ery.recipe
    for v in ("substrate_feed", "precursor_feed", "oil_feed", "water_feed", "draw"):
        recipe = set_profile(recipe, v, 0.0)
    recipe = set_profile(recipe, "temperature", k.temperature.T_opt)
    recipe = set_profile(recipe, "pH", k.ph.pH_opt)
    return model, recipe


def test_growth_associated_precursor_uptake_is_exact(ery):
    """With production off and no precursor maintenance, precursor is taken up only with growth
    (Y_prec_X): in a closed batch C_prec + Y_prec_X X stays constant (to 1e-10), and with
    Y_prec_X = 0 the precursor does not move at all."""
    for y_px in (0.0, 0.05):
        model, recipe = _ideal_batch(ery, Y_prec_X=y_px)
        V0 = float(ery.y0.volume)
        y0 = eqx.tree_at(lambda y: y.precursor, ery.y0, 5.0 * V0)
        traj = run(ery, model=model, recipe=recipe, y0=y0)
        X = np.asarray(traj.concentration("biomass"))
        C = np.asarray(traj.concentration("precursor"))
        assert X[-1] > 3.0 * X[0]  # it grew
        np.testing.assert_allclose(C + y_px * X, 5.0 + y_px * X[0], rtol=1e-10)


def test_batch_monod_matches_closed_form(ery):
    """Batch Monod growth: X + Y_XS S is constant and t(X) follows the implicit solution.

    With C = X0 + Y S0 (Bailey & Ollis, Biochemical Engineering Fundamentals, 2nd ed., sec. 7.2):
    mu_max t = (1 + Y K_S / C) ln(X / X0) - (Y K_S / C) ln(S / S0).
    """
    model, recipe = _ideal_batch(ery)
    traj = run(ery, model=model, recipe=recipe)
    g, u = model.kinetics.growth, model.kinetics.sugar
    mu_max, K_S, Y = float(g.mu_max), float(g.K_S), float(u.Y_XS)
    X = np.asarray(traj.concentration("biomass"))
    S = np.asarray(traj.concentration("substrate"))
    X0, S0 = X[0], S[0]
    C = X0 + Y * S0
    np.testing.assert_allclose(X + Y * S, C, rtol=1e-12)
    assert np.all(np.asarray(traj.outputs.dissolved_oxygen) > 1.0)  # oxygen never limits
    np.testing.assert_allclose(traj.states.volume, ery.y0.volume, rtol=1e-14)  # closed vessel
    t = np.asarray(traj.ts)
    use = (t > 0) & (S > 1e-2)  # ln(S) loses digits once sugar is exhausted
    assert use.sum() >= 15 and S[-1] < 1e-3  # covers the whole growth curve to exhaustion
    a = Y * K_S / C
    t_closed = ((1 + a) * np.log(X[use] / X0) - a * np.log(S[use] / S0)) / mu_max
    np.testing.assert_allclose(t_closed, t[use], rtol=1e-6)


def test_exponential_growth_at_saturating_sugar(ery):
    """K_S << S: mu = mu_max (to 1e-9), so X = X0 exp(mu_max t) over 170 h."""
    model, recipe = _ideal_batch(ery, mu_max=0.02, K_S=1e-6)
    y0 = ReactorState.initial(biomass=ery.y0.volume * 1.0, substrate=ery.y0.volume * 1000.0,
                              product=0.0, volume=ery.y0.volume)
    traj = run(ery, model=model, recipe=recipe, y0=y0)
    X = np.asarray(traj.concentration("biomass"))
    assert np.asarray(traj.concentration("substrate"))[-1] > 800.0  # still saturating
    np.testing.assert_allclose(X, 1.0 * np.exp(0.02 * np.asarray(traj.ts)), rtol=1e-6)


def _random_states(key, n):
    ks = jax.random.split(key, 10)
    u = lambda k, lo, hi: jax.random.uniform(k, (n,), minval=lo, maxval=hi)  # noqa: E731
    V = u(ks[0], 1e3, 1e5)
    y = ReactorState.initial(biomass=u(ks[1], 0.1, 80.0) * V, substrate=u(ks[2], 0.0, 40.0) * V,
                             product=u(ks[3], 0.0, 10.0) * V, volume=V,
                             precursor=u(ks[4], 0.0, 3.0) * V, oil=u(ks[5], 0.0, 5.0) * V)
    y = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n,)), y)
    c = Controls(substrate_feed=u(ks[6], 0, 100), oil_feed=jnp.zeros(n), precursor_feed=jnp.zeros(n),
                 water_feed=jnp.zeros(n), draw=jnp.zeros(n), temperature=u(ks[7], 20.0, 36.0),
                 pH=u(ks[8], 5.5, 7.5), aeration=u(ks[9], 1e4, 4e6), agitation=u(ks[6], 30.0, 250.0),
                 back_pressure=u(ks[7], 0.0, 1.0), precursor_setpoint=jnp.zeros(n))
    return y, c


@pytest.mark.parametrize("which", ["ery", "pen"])
def test_quasi_steady_oxygen_transfer_equals_uptake(which, request):
    """kLa C* (1 - DO/100) = OUR at the returned DO, to 1e-10, at 2000 random states."""
    model = request.getfixturevalue(which).model
    y, c = _random_states(jax.random.key(7), 2000)
    _, _, out, otr = jax.jit(jax.vmap(model.algebraic))(y, c)
    do = np.asarray(out.dissolved_oxygen)
    assert np.all((do >= 0) & (do <= 100))
    transfer = np.asarray(out.kla * out.oxygen_saturation * (1 - out.dissolved_oxygen / 100))
    our = np.asarray(out.oxygen_uptake_rate)
    np.testing.assert_allclose(transfer, our, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(otr, our, rtol=1e-10, atol=1e-12)
    # both branches of the closed-form root are exercised: strongly and weakly limited broths
    assert (do < 10).sum() > 20 and (do > 90).sum() > 20


def test_cardinal_temperature_factor():
    """CTMI: 1 at T_opt, 0 at and beyond T_min and T_max, inside (0, 1), Rosso et al. (1993)."""
    f = CardinalTemperature(T_min=5.0, T_opt=25.0, T_max=35.0)
    assert float(f(25.0)) == pytest.approx(1.0, rel=0, abs=1e-15)
    for T in (-20.0, 0.0, 5.0, 35.0, 40.0, 80.0):
        assert float(f(T)) == 0.0
    T = np.linspace(5.01, 34.99, 301)
    val = np.asarray(jax.vmap(f)(jnp.asarray(T)))
    assert np.all((val > 0) & (val <= 1))
    tmin, topt, tmax = 5.0, 25.0, 35.0
    ref = ((T - tmax) * (T - tmin) ** 2 / ((topt - tmin) * ((topt - tmin) * (T - topt)
           - (topt - tmax) * (topt + tmin - 2 * T))))
    np.testing.assert_allclose(val, ref, rtol=1e-13)
    # finite gradients everywhere, including outside the growth range
    g = jax.vmap(jax.grad(f))(jnp.asarray([0.0, 5.0, 20.0, 25.0, 35.0, 50.0]))
    assert np.all(np.isfinite(g))


def test_cardinal_ph_factor():
    """CPM: 1 at pH_opt, 0 at and beyond pH_min and pH_max, inside (0, 1), Rosso et al. (1995)."""
    f = CardinalPH(pH_min=3.0, pH_opt=6.5, pH_max=9.0)
    assert float(f(6.5)) == pytest.approx(1.0, rel=0, abs=1e-15)
    for p in (1.0, 3.0, 9.0, 11.0):
        assert float(f(p)) == 0.0
    p = np.linspace(3.01, 8.99, 301)
    val = np.asarray(jax.vmap(f)(jnp.asarray(p)))
    assert np.all((val > 0) & (val <= 1))
    ref = (p - 3.0) * (p - 9.0) / ((p - 3.0) * (p - 9.0) - (p - 6.5) ** 2)
    np.testing.assert_allclose(val, ref, rtol=1e-13)


def test_no_evaporation_without_aeration(pen):
    """Evaporation is carried by the exhaust gas: zero gas flow, zero evaporation (exactly)."""
    y, c = _random_states(jax.random.key(3), 50)
    for aeration, positive in ((jnp.zeros(50), False), (c.aeration, True)):
        u = eqx.tree_at(lambda c: c.aeration, c, aeration)
        _, _, _, evap = jax.vmap(pen.model.transfer)(y, u)
        if positive:
            assert np.all(np.asarray(evap) > 0)
        else:
            np.testing.assert_array_equal(evap, 0.0)


def test_draw_only_keeps_concentrations_and_lowers_volume(ery):
    """A draw removes broth at its own composition: with no feed, no gas and inactive cells
    (T above T_max, no maintenance, no hydrolysis) every concentration stays constant
    (to 1e-12) while V = V0 - F t and nothing evaporates."""
    model = set_parameters(ery.model, {"m_S": 0.0, "m_prec": 0.0, "k_h": 0.0})
    recipe = ery.recipe
    for v in ("substrate_feed", "precursor_feed", "oil_feed", "water_feed", "aeration"):
        recipe = set_profile(recipe, v, 0.0)
    recipe = set_profile(recipe, "temperature", 50.0)
    recipe = set_profile(recipe, "draw", 100.0)
    V0 = float(ery.y0.volume)
    conc = {"biomass": 5.0, "substrate": 20.0, "product": 2.0, "precursor": 0.3, "oil": 0.5}
    y0 = ReactorState.initial(volume=V0, **{k: c * V0 for k, c in conc.items()})
    traj = run(ery, model=model, recipe=recipe, y0=y0)
    t = np.asarray(traj.ts)
    np.testing.assert_allclose(traj.states.volume, V0 - 100.0 * t, rtol=1e-12)
    np.testing.assert_array_equal(traj.states.ledger.volume_evaporated, 0.0)
    for name, c in conc.items():
        np.testing.assert_allclose(traj.concentration(name), c, rtol=1e-12, err_msg=name)


# ----------------------------------------------------------------------------- reference solver


@pytest.mark.parametrize("which", ["ery", "pen"])
def test_agrees_with_scipy_lsoda(which, request):
    """diffrax Tsit5 (rtol = atol = 1e-10) vs scipy LSODA (rtol = atol = 1e-10) on the same RHS,
    integrated piecewise between recipe breakpoints: X, S, P, V agree to 1e-6 relative at every
    saved hour."""
    sc = request.getfixturevalue(which)
    traj = request.getfixturevalue(f"{which}_traj")
    ref, _ = solve_ivp_reference(sc.model, sc.recipe, sc.y0, 0.0, sc.duration_h, traj.ts)
    for name in ("biomass", "substrate", "product"):
        got = np.asarray(traj.concentration(name))
        want = np.asarray(getattr(ref, name) / ref.volume)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(traj.states.volume, ref.volume, rtol=1e-6, err_msg="volume")


@pytest.mark.parametrize("T", [45.0, 60.0])
def test_hydrolysis_is_first_order_and_arrhenius(ery, T):
    """With inactive cells (T above T_max), no feed, no gas and no draw, the product only
    hydrolyses: P(t) = P0 exp(-k_h(T) t) with k_h(T) = k_h exp(E_h/R (1/T_ref - 1/T)), to 1e-7
    relative; at T_ref the rate constant is k_h itself."""
    k_h, E_h, T_ref = 0.004, 60.0, 25.0
    model = set_parameters(ery.model, {"m_S": 0.0, "m_prec": 0.0, "k_h": k_h, "E_h": E_h, "T_ref_h": T_ref})
    hyd = model.kinetics.hydrolysis
    assert float(hyd.rate_constant(jnp.asarray(T_ref))) == pytest.approx(k_h, rel=1e-14)
    recipe = ery.recipe
    for v in ("substrate_feed", "precursor_feed", "oil_feed", "water_feed", "aeration", "draw"):
        recipe = set_profile(recipe, v, 0.0)
    recipe = set_profile(recipe, "temperature", T)
    V0 = float(ery.y0.volume)
    y0 = ReactorState.initial(volume=V0, biomass=5.0 * V0, substrate=0.0, product=2.0 * V0)
    traj = run(ery, model=model, recipe=recipe, y0=y0)
    k = k_h * np.exp(E_h * 1e3 / 8.314462618 * (1 / (T_ref + 273.15) - 1 / (T + 273.15)))
    assert k > 2.5 * k_h  # the test would not see a missing temperature term
    np.testing.assert_allclose(traj.concentration("product"), 2.0 * np.exp(-k * np.asarray(traj.ts)), rtol=1e-7)


def test_hydrolysis_without_activation_energy_ignores_temperature(ery):
    """E_h = 0 (the default): the same rate constant at any temperature."""
    hyd = set_parameters(ery.model, {"k_h": 0.003}).kinetics.hydrolysis
    assert float(hyd.E_h) == 0.0
    np.testing.assert_array_equal(hyd.rate_constant(jnp.asarray([5.0, 25.0, 70.0])), 0.003)
