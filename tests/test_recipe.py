"""Recipes: CSV round trips, ramp evaluation, exact integrals, jump times and bad-input messages.

Every error test asserts what the message tells the user: the file (and row), the field or
variable, the rule and the offending value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from twin.errors import RecipeError, UnitError
from twin.recipe import Profile, Recipe, read_recipe_csv, write_recipe_csv
from twin.state import CONTROL_VARIABLES

from conftest import SCENARIOS

HEADER = "variable,start_h,end_h,value,unit,value_end\n"


def _shipped(sc) -> Recipe:
    return read_recipe_csv(SCENARIOS / f"{sc.name}_recipe.csv", defaults=sc.control_defaults,
                           span=(0.0, sc.duration_h))


def _assert_same_recipe(a: Recipe, b: Recipe, rtol: float) -> None:
    assert set(a.profiles) == set(b.profiles) == set(CONTROL_VARIABLES)
    for v in CONTROL_VARIABLES:
        for field in ("start", "end", "value", "value_end"):
            np.testing.assert_allclose(getattr(b.profiles[v], field), getattr(a.profiles[v], field),
                                       rtol=rtol, atol=0, err_msg=f"{v}.{field}")


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("which", ["ery", "pen"])
def test_csv_round_trip_in_internal_units(which, request, tmp_path):
    """write_recipe_csv -> read_recipe_csv returns the same recipe exactly (every variable is
    written, so no defaults are needed on the way back)."""
    sc = request.getfixturevalue(which)
    recipe = _shipped(sc)
    _assert_same_recipe(recipe, sc.recipe, rtol=0)  # the scenario loader read the same file
    back = read_recipe_csv(write_recipe_csv(recipe, tmp_path / "r.csv"))
    _assert_same_recipe(recipe, back, rtol=0)


def test_csv_round_trip_in_plant_units(pen, tmp_path):
    """Written in plant units (m3/min, kPa, K, mL/h) and read back: equal to 1e-12 relative."""
    recipe = _shipped(pen)
    units = {"aeration": "m3/min", "back_pressure": "kPa", "temperature": "K", "oil_feed": "mL/h"}
    path = write_recipe_csv(recipe, tmp_path / "r.csv", units=units)
    text = path.read_text()
    assert "aeration,0,40,30,m3/min,60" in text  # 1.8e6 L/h is written as 30 m3/min
    _assert_same_recipe(recipe, read_recipe_csv(path), rtol=1e-12)


def test_csv_round_trip_of_arbitrary_values(tmp_path):
    """Random phase values with 17 significant digits round-trip bit for bit."""
    rng = np.random.default_rng(0)
    profiles = {}
    for v, info in CONTROL_VARIABLES.items():
        n = int(rng.integers(1, 5))
        start = np.concatenate([[0.0], np.sort(rng.uniform(1, 99, n - 1))])
        hi = min(info.upper, 1e4)
        value = rng.uniform(max(info.lower, 0.0), hi, n)
        value_end = np.where(rng.random(n) < 0.5, value, rng.uniform(max(info.lower, 0.0), hi, n))
        profiles[v] = Profile(jnp.asarray(start), jnp.asarray(100.0), jnp.asarray(value),
                              jnp.asarray(value_end))
    recipe = Recipe(profiles)
    back = read_recipe_csv(write_recipe_csv(recipe, tmp_path / "r.csv", digits=17))
    _assert_same_recipe(recipe, back, rtol=0)


# ----------------------------------------------------------------------------- evaluation


def test_ramp_and_constant_phase_evaluation(pen):
    """Piecewise-linear evaluation of the penicillin-like sugar feed (0 | 20 -> 60 | 60 L/h) and
    aeration (30 -> 60 m3/min over 0-40 h, then 60), to 1e-13 relative."""
    feed = pen.recipe.profiles["substrate_feed"]
    t = jnp.asarray([-5.0, 0.0, 29.999, 30.0, 37.5, 45.0, 59.999, 60.0, 100.0, 230.0, 300.0])
    want = [0.0, 0.0, 0.0, 20.0, 30.0, 40.0, 20.0 + 40.0 * 29.999 / 30.0, 60.0, 60.0, 60.0, 60.0]
    np.testing.assert_allclose(jax.vmap(feed)(t), want, rtol=1e-13, atol=0)
    air = pen.recipe.profiles["aeration"]
    np.testing.assert_allclose(jax.vmap(air)(jnp.asarray([0.0, 10.0, 20.0, 40.0, 41.0])),
                               6e4 * np.asarray([30.0, 37.5, 45.0, 60.0, 60.0]), rtol=1e-13)
    # Recipe.controls evaluates every variable at once, in internal units
    u = pen.recipe.controls(jnp.asarray(45.0))
    assert float(u.substrate_feed) == pytest.approx(40.0, rel=1e-13)
    assert float(u.back_pressure) == pytest.approx(0.9, rel=1e-13)
    assert float(u.draw) == 0.0 and float(pen.recipe.controls(jnp.asarray(151.0)).draw) == 3000.0


@jax.jit
def _evaluate(profile: Profile, t):
    return profile(t)


def _quad(profile: Profile, a: float, b: float) -> float:
    f = lambda t: float(_evaluate(profile, t))  # noqa: E731
    points = [float(x) for x in np.asarray(profile.start) if a < x < b]
    return quad(f, a, b, points=points or None, limit=200, epsabs=0, epsrel=1e-12)[0]


def test_profile_integral_is_exact(pen):
    """Profile.integral (closed form) equals adaptive quadrature of the evaluated profile to
    1e-10, over the whole span and over 20 random windows that cut phases and ramps."""
    rng = np.random.default_rng(1)
    for v in ("substrate_feed", "aeration", "draw", "back_pressure", "oil_feed"):
        p = pen.recipe.profiles[v]
        np.testing.assert_allclose(p.integral(), _quad(p, 0.0, 230.0), rtol=1e-10, err_msg=v)
        for a, b in np.sort(rng.uniform(0.0, 230.0, (20, 2)), axis=1):
            np.testing.assert_allclose(p.integral(a, b), _quad(p, a, b), rtol=1e-10, atol=1e-9,
                                       err_msg=f"{v} on [{a}, {b}]")
    # hand-computed totals: sugar 20*30/2 + 20*30 + 60*170 ... and two 2 h draws of 3000 L/h
    assert float(pen.recipe.total("substrate_feed")) == pytest.approx(0.5 * (20 + 60) * 30 + 60 * 170,
                                                                      rel=1e-14)
    assert float(pen.recipe.total("draw")) == pytest.approx(2 * 2 * 3000.0, rel=1e-14)
    assert float(pen.recipe.total("substrate_feed", 40.0, 50.0)) == pytest.approx(
        10 * (20 + 40 * 15 / 30), rel=1e-14)


def test_jump_times(pen, ery):
    """Sorted, unique breakpoints strictly inside (t0, t1), across all variables."""
    np.testing.assert_array_equal(pen.recipe.jump_times(0.0, 230.0),
                                  [30.0, 40.0, 60.0, 150.0, 152.0, 200.0, 202.0])
    np.testing.assert_array_equal(pen.recipe.jump_times(35.0, 155.0), [40.0, 60.0, 150.0, 152.0])
    np.testing.assert_array_equal(pen.recipe.jump_times(30.0, 60.0), [40.0])
    np.testing.assert_array_equal(ery.recipe.jump_times(0.0, 170.0), [24.0, 30.0, 40.0, 60.0])


# ----------------------------------------------------------------------------- bad input

DEFAULTS = {v: max(info.lower, 0.0) for v, info in CONTROL_VARIABLES.items()}
DEFAULTS.update(temperature=30.0, pH=7.0)


def _read(tmp_path, *rows: str):
    path = tmp_path / "recipe.csv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path, (lambda: read_recipe_csv(path, defaults=DEFAULTS, span=(0.0, 100.0)))


def test_negative_feed_is_refused(tmp_path):
    path, read = _read(tmp_path, "substrate_feed,0,50,10,L/h,", "substrate_feed,50,100,-5,L/h,")
    with pytest.raises(RecipeError) as info:
        read()
    msg = str(info.value)
    assert f"{path} row 3" in msg and "field 'value'" in msg
    assert "substrate_feed must lie in [0, inf] L/h" in msg and "-5.0" in msg


def test_nan_is_refused(tmp_path):
    path, read = _read(tmp_path, "substrate_feed,0,100,10,L/h,", "temperature,0,100,nan,degC,")
    with pytest.raises(RecipeError) as info:
        read()
    msg = str(info.value)
    assert f"{path} row 3" in msg and "field 'value'" in msg
    assert "finite" in msg and "'nan'" in msg


def test_overlapping_phases_are_refused(tmp_path):
    path, read = _read(tmp_path, "substrate_feed,0,40,0,L/h,", "substrate_feed,30,100,10,L/h,")
    with pytest.raises(RecipeError) as info:
        read()
    msg = str(info.value)
    assert f"{path} rows 2 and 3" in msg and "field 'substrate_feed'" in msg
    assert "phases overlap" in msg and "[0, 40) and [30, 100)" in msg


def test_phases_with_a_gap_are_refused(tmp_path):
    path, read = _read(tmp_path, "substrate_feed,0,30,0,L/h,", "substrate_feed,40,100,10,L/h,")
    with pytest.raises(RecipeError) as info:
        read()
    msg = str(info.value)
    assert f"{path} rows 2 and 3" in msg and "field 'substrate_feed'" in msg
    assert "phases leave a gap" in msg and "nothing between 30 h and 40 h" in msg


def test_end_not_after_start_is_refused(tmp_path):
    path, read = _read(tmp_path, "substrate_feed,0,40,0,L/h,", "substrate_feed,40,40,10,L/h,")
    with pytest.raises(RecipeError) as info:
        read()
    msg = str(info.value)
    assert f"{path} row 3" in msg and "field 'end_h'" in msg
    assert "end_h must be greater than start_h" in msg and "start_h=40, end_h=40" in msg


def test_unit_of_the_wrong_dimension_is_refused(tmp_path):
    path, read = _read(tmp_path, "substrate_feed,0,100,10,kg,")
    with pytest.raises(UnitError) as info:
        read()
    msg = str(info.value)
    assert f"{path} row 2" in msg and "field 'unit'" in msg
    assert "unit 'kg' is a mass, cannot be converted to volume_flow (internal unit L/h)" in msg


def test_unknown_variable_is_refused(tmp_path):
    path, read = _read(tmp_path, "sugar_feed,0,100,10,L/h,")
    with pytest.raises(RecipeError) as info:
        read()
    msg = str(info.value)
    assert f"{path} row 2" in msg and "field 'variable'" in msg
    assert "unknown variable" in msg and "'sugar_feed'" in msg and "substrate_feed" in msg  # hint


def test_phases_that_do_not_cover_the_batch_are_refused(tmp_path):
    path, read = _read(tmp_path, "substrate_feed,0,80,10,L/h,")
    with pytest.raises(RecipeError) as info:
        read()
    msg = str(info.value)
    assert str(path) in msg and "field 'substrate_feed'" in msg
    assert "cover the batch from 0 h to 100 h" in msg and "0-80 h" in msg
