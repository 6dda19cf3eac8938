"""Recipe optimisation (twin/optimize.py): the [optimize] table is validated with named errors,
budgets hold exactly for any decision, infeasible set-ups are refused before a solve, and an
end-to-end `twin optimize` on a small synthetic posterior writes a recipe that keeps the sugar
budget, its bounds and resolution, and does not predict worse than the baseline it started from."""

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from calibration.infer import save_posterior
from calibration.posterior import posterior_draws
from twin.cli import app
from twin.optimize import OptimizeError, RecipeOptimizer, load_optimize_spec
from twin.scenario import load_scenario

from test_posterior import _idata

ROOT = Path(__file__).resolve().parents[1]
ERY = ROOT / "scenarios/erythromycin_like.toml"

OPT = """
[optimize]
objective = "mean"
draws = 4
check_draws = 12
starts = 0
iterations = 15
start_h = 30.0
phase_h = 35.0
min_dissolved_oxygen = "10 %"
max_volume = "50 m3"
seed = 0

[optimize.variables]
substrate_feed = {{ lower = "20 L/h", upper = "90 L/h", budget = "baseline", resolution = "0.5 L/h" }}
{extra}
"""


def _scenario(tmp_path, extra="", opt=OPT):
    text = ERY.read_text().replace('file = "erythromycin_like_recipe.csv"',
                                   f'file = "{ROOT / "scenarios/erythromycin_like_recipe.csv"}"')
    path = tmp_path / "ery_opt.toml"
    path.write_text(text + opt.format(extra=extra))
    return path


def _posterior(tmp_path, sc):
    idata = _idata(sc.model, n=40, tau=0.05, mu=0.1, dt=1.0)
    return save_posterior(idata, tmp_path / "posterior.nc")


def test_unknown_key_and_variable_are_named(tmp_path):
    sc = load_scenario(_scenario(tmp_path, extra="", opt=OPT.replace("seed = 0", "sed = 0")))
    with pytest.raises(OptimizeError, match=r"field 'optimize.sed': unknown key"):
        load_optimize_spec(sc)
    sc = load_scenario(_scenario(tmp_path, extra='sugar = { lower = 0, upper = 1 }'))
    with pytest.raises(OptimizeError, match=r"field 'optimize.variables.sugar': unknown variable"):
        load_optimize_spec(sc)
    sc = load_scenario(_scenario(tmp_path, opt=OPT.replace('"10 %"', '"100 %"')))
    with pytest.raises(OptimizeError, match=r"min_dissolved_oxygen'.*no recipe can hold"):
        load_optimize_spec(sc)


def test_budget_holds_exactly_and_infeasible_budget_is_refused_before_a_solve(tmp_path):
    sc = load_scenario(_scenario(tmp_path))
    draws = posterior_draws(_idata(sc.model, n=8, dt=1.0))
    opt = RecipeOptimizer(sc, sc.recipe, draws)
    block = opt.blocks[0]
    total = float(sc.recipe.total("substrate_feed"))
    for seed in range(3):
        z = jnp.asarray(np.random.default_rng(seed).normal(0, 2, block.n))
        u = block.controls(z)
        assert np.all(np.asarray(u) >= 20.0) and np.all(np.asarray(u) <= 90.0)
        rec = opt.recipe({"substrate_feed": u})
        assert float(rec.total("substrate_feed", 0.0, sc.duration_h)) == pytest.approx(total, rel=1e-10)
    # 50 L/h over 140 h cannot be fed with at least 60 L/h in every phase
    sc = load_scenario(_scenario(tmp_path, opt=OPT.replace('lower = "20 L/h"', 'lower = "60 L/h"')))
    with pytest.raises(OptimizeError, match=r"field 'optimize.variables.substrate_feed': infeasible before any solve"):
        RecipeOptimizer(sc, sc.recipe, draws)


@pytest.mark.slow
def test_optimize_end_to_end_writes_a_constrained_recipe(tmp_path):
    path = _scenario(tmp_path)
    sc = load_scenario(path)
    post = _posterior(tmp_path, sc)
    out = tmp_path / "opt"
    res = CliRunner().invoke(app, ["optimize", str(path), "--posterior", str(post), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("recipe.csv", "summary.json", "recipe_vs_history.png", "outcome.png", "why.png"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    sugar = s["material_L"]["substrate_feed"]
    assert abs(sugar["relative_difference"]) < 0.5 * 5 * 0.5 / sugar["baseline"] + 1e-9  # rounding only
    rec = pd.read_csv(out / "recipe.csv")
    feed = rec[(rec.variable == "substrate_feed") & (rec.start_h >= 30)]
    assert (feed.value >= 20 - 1e-9).all() and (feed.value <= 90 + 1e-9).all()
    np.testing.assert_allclose(feed.value / 0.5, np.round(feed.value / 0.5), atol=1e-9)
    assert s["expected_gain_pct"] > -0.5, "the optimiser started at the baseline and may not predict worse"
    for c in s["constraints_new_recipe"].values():
        assert c["fraction_of_draws_violating"] <= 0.05
    assert s["provenance"]["posterior"] == str(post)


def test_rounding_keeps_values_on_the_pump_grid_when_a_trust_region_bound_is_off_it():
    """A phase clipped to a trust-region bound (here 20.18 and 27.3 L/h) is rounded onto the
    0.5 L/h grid inside the bounds, and a budgeted total stays within half a step per phase."""
    from types import SimpleNamespace

    lower, upper = np.array([20.18, 20.18, 10.0]), np.array([27.3, 27.3, 40.0])
    widths = np.array([10.0, 10.0, 10.0])
    u = np.array([20.18, 27.3, 31.07])  # on both trust-region bounds, and free
    block = SimpleNamespace(lower=lower, upper=upper, budget=SimpleNamespace(total=float(widths @ u)))
    var = SimpleNamespace(name="oil_feed", resolution=0.5)
    fake = SimpleNamespace(spec=SimpleNamespace(variables=[var]), blocks=[block], widths=widths)
    r = RecipeOptimizer.round(fake, {"oil_feed": u})["oil_feed"]
    np.testing.assert_allclose(r / 0.5, np.round(r / 0.5), atol=1e-9)
    assert np.all(r >= lower) and np.all(r <= upper), r
    assert abs(widths @ r - block.budget.total) <= 0.5 * 0.5 * widths.max() + 1e-9


def test_co2_limit_needs_a_co2_model_and_is_reported_per_draw(tmp_path):
    """`max_dissolved_co2` is refused for a model without a CO2 balance (naming the key); the
    report gives its worst value and the fraction of draws above it, and the smooth worst case the
    optimiser holds is never below the true maximum and at most tau log(n) above it."""
    from types import SimpleNamespace

    from twin.optimize import co2_excess, constraint_report

    sc = load_scenario(_scenario(tmp_path, opt=OPT.replace("seed = 0", 'seed = 0\nmax_dissolved_co2 = "1.5 mmol/L"')))
    with pytest.raises(OptimizeError, match=r"field 'optimize.max_dissolved_co2': the model has no CO2 balance"):
        load_optimize_spec(sc)
    spec = dataclasses.replace(load_optimize_spec(load_scenario(_scenario(tmp_path))), max_dissolved_co2=1.5)
    dco2 = np.array([[0.2, 1.4, 1.2], [0.3, 1.6, 1.1], [0.1, 1.49, 1.5]])
    traj = SimpleNamespace(outputs=SimpleNamespace(dissolved_oxygen=np.full((3, 3), 50.0), dissolved_co2=dco2),
                           states=SimpleNamespace(volume=np.full((3, 3), 1e4)), ts=np.tile([0.0, 1.0, 2.0], (3, 1)))
    rep = constraint_report(traj, spec)["max_dissolved_co2_mmol_L"]
    assert rep == {"limit": 1.5, "worst": 1.6, "fraction_of_draws_violating": pytest.approx(1 / 3)}
    g = float(co2_excess(jnp.asarray(dco2), 1.5))
    assert (1.6 - 1.5) / 1.5 <= g <= (1.6 + 0.015 * np.log(9) - 1.5) / 1.5


def test_each_draw_carries_a_history_batchs_ph_loop_inflow_inside_the_traced_objective(tmp_path):
    """With a posterior whose strain history records acid and base, the optimiser's simulation
    (traced under jit, as in the solve) gives draw i the recipe's water plus batch i mod B's
    recorded inflow: the volume fed differs from the same draws without it by exactly that."""
    import jax

    from calibration.posterior import ph_loop_inflows

    sc = load_scenario(_scenario(tmp_path))
    with_ph = _idata(sc.model, n=8, dt=1.0)
    with_ph.attrs["strain_file"] = str(ROOT / "calibration/strains/penicillin_indpensim.toml")
    fed = {}
    for label, idata in (("with", with_ph), ("without", _idata(sc.model, n=8, dt=1.0))):
        opt = RecipeOptimizer(sc, sc.recipe, posterior_draws(idata, new_batch=False))
        u = {"substrate_feed": jnp.asarray(opt.baseline_phases["substrate_feed"])}
        traj = jax.jit(lambda c: opt.simulate(opt.recipe(c)))(u)  # noqa: B023
        fed[label] = np.asarray(traj.states.ledger.volume_fed[:, -1])
    inflows = ph_loop_inflows(with_ph.attrs, float(sc.duration_h), 1.0)
    expected = inflows[np.arange(8) % len(inflows)].sum(axis=1) * 1.0
    np.testing.assert_allclose(fed["with"] - fed["without"], expected, rtol=1e-9)
