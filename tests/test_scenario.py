"""Scenario TOML: units converted at the edge, and bad input refused with messages that teach.

Every error test asserts the file, the key (section.field), the rule and the value received.
"""

from __future__ import annotations

import shutil

import pytest

from twin.errors import ParameterError, RecipeError, ScenarioError, UnitError
from twin.reactor import get_parameter, set_parameters
from twin.scenario import load_scenario, parse_overrides

from conftest import ERYTHROMYCIN, PENICILLIN

RTOL = 1e-14  # unit conversions are one multiplication


def _variant(tmp_path, old: str | None = None, new: str = "", *, source=ERYTHROMYCIN):
    """A copy of a shipped scenario (and its recipe CSV) with `old` replaced by `new`."""
    text = source.read_text()
    if old is not None:
        assert old in text, old
        text = text.replace(old, new, 1)
    shutil.copy(source.parent / f"{source.stem}_recipe.csv", tmp_path)
    path = tmp_path / source.name
    path.write_text(text)
    return path


def test_shipped_scenarios_convert_units_at_the_edge(ery, pen):
    """Values given with units arrive in internal units (1/h, g/L, L, L/h, bar, degC)."""
    k = ery.model.kinetics
    assert float(k.growth.mu_max) == pytest.approx(0.12, rel=RTOL)
    assert float(k.precursor.Y_prec_P) == pytest.approx(0.573, rel=RTOL)
    assert float(ery.model.vessel.working_volume) == pytest.approx(50_000.0, rel=RTOL)  # 50 m3
    assert float(ery.y0.volume) == pytest.approx(30_000.0, rel=RTOL)
    assert float(ery.y0.substrate) == pytest.approx(30.0 * 30_000.0, rel=RTOL)  # amounts in g
    assert ery.control_defaults["aeration"] == pytest.approx(30 * 60_000.0, rel=RTOL)  # m3/min
    assert ery.control_defaults["back_pressure"] == pytest.approx(0.5, rel=RTOL)
    assert float(pen.y0.precursor) == pytest.approx(0.5 * 58_000.0, rel=RTOL)
    assert float(pen.model.feeds.substrate_conc) == pytest.approx(600.0, rel=RTOL)
    assert ery.ts.shape == (171,) and pen.ts.shape == (231,)


def test_material_totals_read_in_m3_for_gas_and_L_for_liquids():
    """A gas total (aeration: internal L/h integrated over hours) is shown in m3, a feed's in L:
    one hour at 30 m3/min is 1800 m3."""
    from twin.units import material_amount, to_internal

    litres_per_hour = float(to_internal(30.0, "m3/min"))
    assert material_amount("aeration", litres_per_hour * 1.0) == pytest.approx((1800.0, "m3"))
    assert material_amount("oil_feed", 250.0) == (250.0, "L")


def test_override_with_units(tmp_path):
    """`--set kinetics.mu_max="0.0015 1/min"` is 0.09 1/h; other values are untouched."""
    sc = load_scenario(ERYTHROMYCIN, overrides=parse_overrides(['kinetics.mu_max="0.0015 1/min"',
                                                                "kinetics.k_h=0.003"]))
    assert float(get_parameter(sc.model, "kinetics.mu_max")) == pytest.approx(0.09, rel=RTOL)
    assert float(get_parameter(sc.model, "k_h")) == pytest.approx(0.003, rel=RTOL)
    assert float(get_parameter(sc.model, "K_S")) == pytest.approx(0.5, rel=RTOL)


# ----------------------------------------------------------------------------- bad input


def test_unknown_key_is_refused(tmp_path):
    path = _variant(tmp_path, "duration_h = 170.0", "duration_h = 170.0\ndurration_h = 10")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert str(path) in msg and "field 'scenario.durration_h'" in msg
    assert "unknown key" in msg and "duration_h" in msg.split("unknown key")[1]  # the hint


def test_unknown_kinetic_parameter_is_refused(tmp_path):
    path = _variant(tmp_path, 'mu_max = "0.12 1/h"', 'mu_maxx = "0.12 1/h"\nmu_max = "0.12 1/h"')
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert str(path) in msg and "field 'kinetics.mu_maxx'" in msg and "unknown key" in msg
    assert "known for this model structure" in msg and "mu_max" in msg


def test_missing_required_key_is_refused(tmp_path):
    path = _variant(tmp_path, "duration_h = 170.0\n", "")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert str(path) in msg and "field 'scenario.duration_h'" in msg and "missing required key" in msg


def test_missing_kinetic_parameter_is_refused(tmp_path):
    path = _variant(tmp_path, 'Y_XS = "0.35 g/g"\n', "")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert str(path) in msg and "field 'kinetics.Y_XS'" in msg and "missing required key" in msg
    assert "biomass yield on sugar, in g/g" in msg  # the hint says what the key means


def test_parameter_out_of_physical_range_is_refused(tmp_path):
    path = _variant(tmp_path, 'mu_max = "0.12 1/h"', "mu_max = 50")
    with pytest.raises(ParameterError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert str(path) in msg and "field 'kinetics.mu_max'" in msg
    assert "out of its physical range [0.0001, 2] 1/h" in msg and "(got 50.0)" in msg


def test_set_parameters_checks_range_and_name(ery):
    with pytest.raises(ParameterError) as info:
        set_parameters(ery.model, {"kinetics.mu_max": 50.0})
    assert "field 'kinetics.mu_max'" in str(info.value) and "(got 50.0)" in str(info.value)
    with pytest.raises(ParameterError) as info:
        set_parameters(ery.model, {"kinetics.mu_maxx": 0.1})
    msg = str(info.value)
    assert "unknown parameter" in msg and "field 'kinetics.mu_maxx'" in msg and "kinetics.mu_max" in msg


def test_unit_of_the_wrong_dimension_is_refused(tmp_path):
    path = _variant(tmp_path, 'mu_max = "0.12 1/h"', 'mu_max = "0.12 g/L"')
    with pytest.raises(UnitError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert str(path) in msg and "field 'kinetics.mu_max'" in msg
    assert "unit 'g/L' is a concentration, cannot be converted to rate" in msg


def test_override_of_unknown_parameter_is_refused():
    with pytest.raises(ScenarioError) as info:
        load_scenario(ERYTHROMYCIN, overrides=parse_overrides(["kinetics.mu_maxx=0.1"]))
    msg = str(info.value)
    assert msg.startswith("--set") and "field 'kinetics.mu_maxx'" in msg and "unknown key" in msg
    assert "mu_max" in msg.split("unknown key")[1]  # the hint lists the known names


def test_malformed_override_is_refused():
    with pytest.raises(ScenarioError) as info:
        parse_overrides(["mu_max=0.1"])
    msg = str(info.value)
    assert msg.startswith("--set") and "section.key=value" in msg and "'mu_max=0.1'" in msg


def test_override_out_of_range_is_refused():
    with pytest.raises(ParameterError) as info:
        load_scenario(PENICILLIN, overrides=parse_overrides(["kinetics.mu_max=50"]))
    msg = str(info.value)
    assert str(PENICILLIN) in msg and "field 'kinetics.mu_max'" in msg and "(got 50.0)" in msg


def test_bad_recipe_file_names_the_csv_and_row(tmp_path):
    path = _variant(tmp_path)
    csv = tmp_path / "erythromycin_like_recipe.csv"
    csv.write_text(csv.read_text().replace("substrate_feed,30,170,50,L/h,", "substrate_feed,30,170,-50,L/h,"))
    with pytest.raises(RecipeError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert f"{csv} row 3" in msg and "substrate_feed must lie in [0, inf] L/h" in msg and "-50" in msg


def test_precursor_setpoint_needs_a_concentrated_feed():
    """A loop holding 1.2 g/L with a feed of 1 g/L could never reach it (and would flood the
    vessel trying): refused, naming the feed concentration."""
    indpensim = PENICILLIN.parent / "penicillin_indpensim.toml"
    assert float(load_scenario(indpensim).recipe.profiles["precursor_setpoint"].value.max()) == 1.2
    with pytest.raises(ScenarioError, match=r"field 'feeds.precursor_conc'.*set-point \(1.2 g/L\)"):
        load_scenario(indpensim, overrides=parse_overrides(["feeds.precursor_conc=1"]))
