"""Re-planning a running batch (twin.advise, `twin advise`).

The science is checked on a batch the twin itself generates from known parameters (the
synthetic erythromycin-like strain, the truth as the posterior, as in test_forecast.py), advised
at 80 h of 170 h with the sugar feed (budget) and the temperature (rate limit) free: the advised
remainder keeps its bounds, resolution and rate limits (between phases and from the running
value), feeds exactly the material the plan had left, leaves the recorded past as it was, and
does not predict less than continuing as planned; the "continue as planned" simulation of the
check is the conditioned forecast's own. One advice is computed for the module (the optimiser's
compilation takes about a minute); the command's bad-input paths stop before any solve.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import typer
from conftest import ROOT
from test_forecast import N_DRAWS, make_batch, post, posterior_file  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from twin.advise import AdviseError, advise, replan_start
from twin.advise_cli import OUTPUTS, register
from twin.optimize import load_optimize_spec
from twin.recipe import read_recipe_csv, sample, write_recipe_csv
from twin.scenario import load_scenario

AT = 80.0
OPTS = {"n_draws": N_DRAWS, "per_draw": 10, "min_ess": 60.0, "allow_nuts": False}
OPT = """
[optimize]
objective = "mean"
draws = 4
check_draws = 40
starts = 0
iterations = 15
start_h = 30.0
phase_h = 30.0
min_dissolved_oxygen = "10 %"
max_volume = "50 m3"
seed = 0

[optimize.variables]
substrate_feed = { lower = "20 L/h", upper = "90 L/h", budget = "baseline", resolution = "0.5 L/h" }
temperature = { lower = "30 degC", upper = "34 degC", resolution = "0.1 degC", max_change = "0.5 degC" }
"""


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    """The strain's scenario (erythromycin-like) with an [optimize] table."""
    text = (ROOT / "scenarios/erythromycin_like.toml").read_text().replace(
        'file = "erythromycin_like_recipe.csv"',
        f'file = "{ROOT / "scenarios/erythromycin_like_recipe.csv"}"')
    path = tmp_path_factory.mktemp("scenario") / "ery_opt.toml"
    path.write_text(text + OPT)
    return path


@pytest.fixture(scope="module")
def batch(post):  # noqa: F811
    return make_batch(post, 3)


@pytest.fixture(scope="module")
def advice(post, batch, scenario_file):  # noqa: F811
    rec, plan, _ = batch
    return advise(post, rec, plan, load_scenario(scenario_file), at=AT, **OPTS)


def _phases(recipe, var, a, b):
    p = recipe.profiles[var]
    start, stop, v = np.asarray(p.start), np.asarray(p.stops), np.asarray(p.value)
    sel = (start >= a - 1e-9) & (stop <= b + 1e-9)
    return start[sel], stop[sel], v[sel]


# ---------------------------------------------------------------------------------------------
# science


def test_advised_remainder_keeps_bounds_rate_limits_and_the_material_left(advice, batch):
    """Phases from 80 h of 30 h each; sugar feed in [20, 90] L/h on the 0.5 L/h grid, its total
    over 80-170 h equal to what the plan had left (50 L/h x 90 h = 4500 L) within the rounding
    (atol 0.5 x 0.5 L/h x 30 h); temperature in [30, 34] degC, neighbouring phases and the step
    from the running 32 degC at most 0.5 degC apart (atol 1e-9)."""
    assert advice.start_h == AT
    np.testing.assert_allclose(advice.phases_h, [80.0, 110.0, 140.0, 170.0], atol=1e-12)
    a, b, u = _phases(advice.recipe, "substrate_feed", AT, 170.0)
    np.testing.assert_allclose(a, [80.0, 110.0, 140.0], atol=1e-12)
    assert np.all(u >= 20.0 - 1e-9) and np.all(u <= 90.0 + 1e-9), u
    np.testing.assert_allclose(u / 0.5, np.round(u / 0.5), atol=1e-9)
    left = float(sample(batch[1], "substrate_feed", np.arange(AT, 170.0) + 0.5).sum())
    assert left == pytest.approx(4500.0, abs=1e-9)
    assert abs(float(np.sum(u * (b - a))) - left) <= 0.5 * 0.5 * 30.0 + 1e-9
    assert advice.material_L["substrate_feed"]["remaining_budget"] == pytest.approx(left, abs=1e-9)
    assert advice.material_L["substrate_feed"]["advised_remaining"] == pytest.approx(
        float(np.sum(u * (b - a))), abs=1e-9)
    _, _, T = _phases(advice.recipe, "temperature", AT, 170.0)
    assert np.all(T >= 30.0 - 1e-9) and np.all(T <= 34.0 + 1e-9), T
    assert np.all(np.abs(np.diff(T)) <= 0.5 + 1e-9), T
    assert abs(T[0] - 32.0) <= 0.5 + 1e-9, T
    assert not np.allclose(u, 50.0), "the advice should reshape the feed (else the test proves nothing)"


def test_recorded_past_is_unchanged(advice, batch):
    """Before 80 h the advised recipe is what the historian recorded (the hourly sugar feed) and
    the plan where nothing was recorded (temperature), to atol 1e-9; the simulated advice and the
    simulated plan agree before the re-plan start for every variable."""
    rec, plan, _ = batch
    t_rec, v_rec = rec.series("substrate_feed")
    mids = np.arange(0.0, AT) + 0.5
    got = sample(advice.recipe, "substrate_feed", mids)
    np.testing.assert_allclose(got, v_rec[t_rec < AT], atol=1e-9)
    np.testing.assert_allclose(sample(advice.recipe, "temperature", mids),
                               sample(plan, "temperature", mids), atol=1e-9)
    for var in advice.simulated["plan"].profiles:
        np.testing.assert_allclose(sample(advice.simulated["advised"], var, mids),
                                   sample(advice.simulated["plan"], var, mids), atol=1e-9, err_msg=var)


def test_gain_is_not_negative_and_paired(advice):
    """The optimiser starts at the plan, so the advice may not predict less: mean paired gain
    >= 0 kg, more often better than not; the reported summaries are those of the paired
    samples (rtol 1e-12); constraints hold on every check particle from 80 h on."""
    new, old = advice.samples["advised_kg"], advice.samples["plan_kg"]
    gain = new - old
    assert advice.gain_kg["mean"] == pytest.approx(float(np.mean(gain)), rel=1e-12)
    assert advice.gain_kg["mean"] >= 0.0, advice.gain_kg
    assert advice.prob_better == pytest.approx(float(np.mean(gain > 0)), rel=1e-12)
    assert advice.prob_better >= 0.5
    assert advice.gain_pct["mean"] == pytest.approx(float(np.mean(100 * gain / old)), rel=1e-12)
    for name, c in advice.constraints.items():
        assert c["advised"]["fraction_violating"] == 0.0, (name, c)


def test_recommendation_needs_a_gain_above_zero_and_above_the_response_error():
    """Run the advice only if its expected gain is above 0 and above optimize.replan_min_gain_pct;
    at or below either: continue as planned, and the reason names the threshold."""
    from twin.advise import AdviseError, recommendation

    assert recommendation(0.8, 0.0)[0] and recommendation(0.8, 0.5)[0]
    held, why = recommendation(0.5, 0.5)
    assert not held and "replan_min_gain_pct (0.5 %)" in why and "continue as planned" in why
    held, why = recommendation(-0.1, 0.0)
    assert not held and "does not beat continuing as planned" in why
    assert not recommendation(0.0, 0.0)[0]
    with pytest.raises(AdviseError, match="not a number"):
        recommendation(float("nan"), 0.0)


def test_the_advice_is_recommended_as_its_gain_says(advice):
    """The advice of the module's batch: recommended exactly when its mean gain (%) is above 0 and
    the scenario's replan_min_gain_pct, and advice.json says so."""
    want = advice.gain_pct["mean"] > max(0.0, advice.spec.replan_min_gain_pct)
    assert advice.recommended == want
    assert advice.to_dict()["recommendation"] == {"apply_advice": want, "why": advice.recommendation,
                                                  "replan_min_gain_pct": advice.spec.replan_min_gain_pct}
    assert (advice.recommendation in advice.notes) == (not want)


def test_continue_as_planned_is_the_conditioned_forecast(advice):
    """The paired check's plan simulation on each resampled particle reproduces the total product
    `twin.forecast.condition` computed for that particle (same parameters, initial state and
    recorded recipe: rtol 1e-9), so the advice starts from the state the batch's data give."""
    want = advice.cond.outputs["total"][advice.check_index, -1] / 1000.0
    np.testing.assert_allclose(advice.samples["plan_kg"], want, rtol=1e-9)
    assert advice.conditioning["effective_sample_size"] >= 50


def test_a_limit_the_plan_already_breaks_holds_the_advice_to_the_plan():
    """`_no_worse_than_plan`: a path constraint the plan breaks (g(plan) > 0) becomes
    g - g(plan), so the plan is feasible and anything worse is not (exact); one the plan holds
    and every step from the running value stay as they were; nothing broken: the same objective."""
    import jax.numpy as jnp

    from twin.advise import _no_worse_than_plan

    names = ("volume <= 50 m3 (smooth worst case)", "dissolved CO2 <= 1.5 mmol/L (smooth worst case)",
             "step up of temperature at the re-plan start")

    def objective(u, args):
        x = u["x"]
        return -jnp.sum(x), jnp.stack([x[0] - 1.0, x[1] - 5.0, x[2] - 0.5])

    plan = {"x": jnp.asarray([3.0, 2.0, 0.9])}  # breaks the first (by 2) and the step (by 0.4)
    relaxed, which = _no_worse_than_plan(objective, names, objective(plan, None)[1])
    assert which == (names[0],)
    np.testing.assert_allclose(np.asarray(relaxed(plan, None)[1]), [0.0, -3.0, 0.4], rtol=0, atol=1e-12)
    worse = {"x": jnp.asarray([3.5, 2.0, 0.0])}
    np.testing.assert_allclose(np.asarray(relaxed(worse, None)[1]), [0.5, -3.0, -0.5], rtol=0, atol=1e-12)
    assert float(relaxed(worse, None)[0]) == float(objective(worse, None)[0])
    ok = {"x": jnp.asarray([0.5, 2.0, 0.0])}
    same, none = _no_worse_than_plan(objective, names, objective(ok, None)[1])
    assert same is objective and none == ()


def test_path_limits_hold_point_by_point_against_the_plan():
    """`_path_constraints`: without a reference, the smooth worst case of `RecipeOptimizer`
    (closed forms, 1e-12); with the plan as reference, the plan's own excess over the limit is
    allowed where it has it, but moving the plan's worst sugar to a particle and time where the
    plan held the limit breaks the relaxed constraint, although the worst case over all points is
    unchanged (which the worst-case relaxation let through)."""
    from types import SimpleNamespace

    import jax
    import jax.numpy as jnp

    from twin.advise import _no_worse_than_plan, _path_constraints
    from twin.optimize import co2_excess

    spec = SimpleNamespace(min_dissolved_oxygen=40.0, max_volume=100_000.0, max_substrate=1.0,
                           max_dissolved_co2=1.55)
    plan = {"do": jnp.asarray([[55.0, 38.0], [60.0, 45.0]]),
            "volume": jnp.asarray([[90_000.0, 99_000.0], [91_000.0, 98_000.0]]),
            "sugar": jnp.asarray([[0.2, 3.0], [0.1, 0.3]]),  # particle 0 breaks 1 g/L at its last time
            "co2": jnp.asarray([[1.2, 1.4], [1.3, 1.5]])}
    g = [float(x) for x in _path_constraints(plan, spec)]
    do_min = -0.5 * jax.nn.logsumexp(-plan["do"] / 0.5)
    vmax = 200.0 * jax.nn.logsumexp(plan["volume"] / 200.0)
    smax = 0.02 * jax.nn.logsumexp(plan["sugar"] / 0.02)
    want = [(40.0 - do_min) / 40.0, (vmax - 1e5) / 1e5, smax - 1.0, co2_excess(plan["co2"], 1.55)]
    np.testing.assert_allclose(g, [float(w) for w in want], rtol=0, atol=1e-12)

    names = ("dissolved oxygen >= 40 %", "volume <= 100 m3", "sugar <= 1 g/L", "dissolved CO2 <= 1.55 mmol/L")

    def objective_for(reference):
        def objective(u, args):
            return jnp.asarray(0.0), jnp.stack(_path_constraints(u, spec, reference))
        return objective

    g_plan = [float(x) for x in _path_constraints(plan, spec, plan)]
    held, which = _no_worse_than_plan(objective_for(plan), names, g_plan)
    assert which == (names[0], names[2])  # DO 38 < 40 and sugar 3 > 1 on particle 0
    np.testing.assert_allclose(np.asarray(held(plan, None)[1])[[0, 2]], 0.0, atol=1e-12)
    moved = dict(plan, sugar=jnp.asarray([[0.2, 3.0], [0.1, 3.0]]))  # the same worst, on particle 1 too
    assert float(held(moved, None)[1][2]) > 0.5  # 2 g/L above what is allowed there, relative to 1 g/L
    loose, _ = _no_worse_than_plan(objective_for(None), names, objective_for(None)(plan, None)[1])
    assert float(loose(moved, None)[1][2]) < 0.02  # the worst case over all points barely moves
    better = dict(plan, sugar=jnp.asarray([[0.2, 2.0], [0.1, 0.3]]))
    assert float(held(better, None)[1][2]) < 0.0


def test_replan_start_snaps_up_to_the_grid(scenario_file):
    spec = load_optimize_spec(load_scenario(scenario_file))
    assert replan_start(spec, 57.3, dt=1.0, t_end=170.0) == 58.0
    assert replan_start(spec, 12.0, dt=1.0, t_end=170.0) == 30.0  # not before start_h
    with pytest.raises(AdviseError, match=r"field 'at': nothing left to re-plan: the batch ends at "
                                          r"170 h and the next solver step starts at 170 h"):
        replan_start(spec, 169.5, dt=1.0, t_end=170.0)


# ---------------------------------------------------------------------------------------------
# the command


def _cli():
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root():
        """test app"""

    return app


def _long(tmp_path, rows, strain):
    path = tmp_path / "running.csv"
    pd.DataFrame(rows, columns=["batch", "time_h", "variable", "value", "unit"]).to_csv(path, index=False)
    pd.DataFrame({"batch": [rows[0][0]], "strain": [strain]}).to_csv(tmp_path / "batches.csv", index=False)
    return path


@pytest.mark.parametrize("case, message", [
    ("order", "running.csv row 4: field 'time_h': times out of order: product at 12 h comes after 24 h"),
    ("few", ("running.csv (batch 'B'): field 'product': too few data to forecast: 1 product "
             "assay(s) up to 5 h, the model needs at least 2")),
    ("late", ("running.csv (batch 'B'): field 'at': the forecast time is beyond the end of the "
              "batch (170 h) (got 400.0)")),
    ("strain", ("running.csv (batch 'B'): field 'strain': the batch is strain 'other_strain' but "
                "the posterior is for strain 'synthetic_erythromycin'")),
    ("end", "field 'at': nothing left to re-plan: the batch ends at 170 h"),
    ("set", "--set: field 'kinetics.mu_max': advise re-plans with the posterior's model"),
    ("model", "field '[model]': the scenario's model structure differs"),
    ("min_gain", "field 'optimize.replan_min_gain_pct': must be >= 0 (% of the plan's total product) (got -0.5)"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(posterior_file, scenario_file, tmp_path,  # noqa: F811
                                                          case, message):
    rows = [("B", 0, "product", 0.0, "g/L"), ("B", 12, "product", 0.1, "g/L"),
            ("B", 24, "product", 0.4, "g/L"), ("B", 0, "volume", 50000.0, "L")]
    if case == "order":
        rows[1], rows[2] = rows[2], rows[1]
    path = _long(tmp_path, rows, "other_strain" if case == "strain" else "synthetic_erythromycin")
    at = {"few": "5", "late": "400", "end": "169.5"}.get(case, "24")
    scenario = ROOT / "scenarios/penicillin_like.toml" if case == "model" else scenario_file
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    args = ["advise", "--posterior", str(posterior_file), "--batch", str(path), "--scenario",
            str(scenario), "--at", at, "--out", str(out)]
    if case == "set":
        args += ["--set", "kinetics.mu_max=0.2"]
    if case == "min_gain":
        args += ["--set", "optimize.replan_min_gain_pct=-0.5"]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def doc_rec(out):
    r = json.loads((out / "advice.json").read_text())["recommendation"]
    return {k: r[k] for k in ("apply_advice", "replan_min_gain_pct")}


@pytest.mark.slow
def test_twin_advise_writes_recipe_json_and_png(post, posterior_file, scenario_file, batch, tmp_path):  # noqa: F811
    """`twin advise` on a wide CSV of the running batch (data to 90 h) at 80 h: recipe.csv is the
    whole recipe (recorded sugar feed before 80 h, the advised phases after), advice.json has the
    expected gain with its 90 % interval and P(better), material used and left, constraints for
    advice and plan, the conditioning and the inputs; advice.png is written."""
    rec, plan, _ = batch
    wide = rec.measurements[rec.measurements.time_h <= 90].pivot_table(
        index="time_h", columns="variable", values="value")
    wide.columns = [{"volume": "volume_L", "substrate_feed": "substrate_feed_L_h"}.get(c, f"{c}_g_L")
                    for c in wide.columns]
    wide.reset_index().to_csv(tmp_path / "running.csv", index=False)
    write_recipe_csv(plan, tmp_path / "plan.csv")
    out = tmp_path / "advice"
    res = CliRunner().invoke(_cli(), [
        "advise", "--posterior", str(posterior_file), "--batch", str(tmp_path / "running.csv"),
        "--scenario", str(scenario_file), "--at", "80", "--out", str(out), "--recipe",
        str(tmp_path / "plan.csv"), "--draws", str(N_DRAWS), "--strain", post.spec.name,
        "--set", "optimize.check_draws=20", "--set", "optimize.replan_min_gain_pct=50"])
    assert res.exit_code == 0, res.output
    # no re-plan gains 50 %: the advice is written for reference, and the command says to continue
    assert doc_rec(out) == {"apply_advice": False, "replan_min_gain_pct": 50.0}
    assert "recommendation: continue as planned" in " ".join(res.output.split())
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    doc = json.loads((out / "advice.json").read_text())
    g = doc["expected_gain"]
    assert g["total_product_kg"]["q05"] <= g["total_product_kg"]["mean"] <= g["total_product_kg"]["q95"]
    assert 0.0 <= g["prob_better"] <= 1.0 and g["check_particles"] == 20
    assert "response to the change" in g["leaves_out"] and "leaves out" in res.output
    assert doc["now_h"] == 80.0 and doc["replan_from_h"] == 80.0
    m = doc["material_L"]["substrate_feed"]
    assert abs(m["advised_remaining"] - m["remaining_budget"]) <= 0.5 * 0.5 * 30.0 + 1e-9
    assert m["used_before_replan"] == pytest.approx(50.0 * 50.0, abs=1e-6)  # 30-80 h at 50 L/h
    assert set(doc["constraints_from_replan_h"]["min_dissolved_oxygen_pct"]) == {"limit", "advised", "plan"}
    assert doc["inputs"]["posterior"] == str(posterior_file)
    assert doc["inputs"]["overrides"] == ["optimize.check_draws=20", "optimize.replan_min_gain_pct=50"]
    sc = load_scenario(scenario_file)
    recipe = read_recipe_csv(out / "recipe.csv", defaults=sc.control_defaults, span=(0.0, 170.0))
    mids = np.arange(0.0, AT) + 0.5
    t_rec, v_rec = rec.series("substrate_feed")
    np.testing.assert_allclose(sample(recipe, "substrate_feed", mids), v_rec[t_rec < AT], atol=1e-9)
    assert (out / "advice.png").stat().st_size > 20_000
    assert "expected gain" in res.output
