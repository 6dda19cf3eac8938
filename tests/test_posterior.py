"""Posterior draws outside inference: new-batch draws widen exactly by the batch-effect SD, an
ensemble of identical draws reproduces the deterministic simulation, breakpoints snap to the
solver grid, and a posterior from an older format or another model is refused."""

import json
from pathlib import Path

import arviz as az
import jax.numpy as jnp
import numpy as np
import pytest

from calibration.infer import FORMAT_VERSION, PosteriorError, save_posterior
from calibration.model import structure_hash
from calibration.posterior import load_draws, posterior_draws, simulate_draws
from twin.errors import TwinError
from twin.reactor import get_parameter, set_parameters
from twin.recipe import recipe_from_phases, snap_to_grid
from twin.scenario import load_scenario
from twin.simulate import FixedGrid, simulate

ROOT = Path(__file__).resolve().parents[1]
ERY = ROOT / "scenarios/erythromycin_like.toml"


def _idata(model, *, n=4000, tau=0.2, seed=0, mu=0.1, dt=0.5):
    rng = np.random.default_rng(seed)
    log_mu = np.log(mu) + 0.05 * rng.standard_normal((2, n // 2))
    post = {"mu_max": np.exp(log_mu), "z_mu_max": (log_mu - np.log(mu)) / 0.5,
            "tau_mu_max": np.full((2, n // 2), tau), "sd_product": np.full((2, n // 2), 0.1)}
    idata = az.from_dict(posterior=post)
    idata.attrs.update({
        "format_version": FORMAT_VERSION, "model_structure": structure_hash(model), "strain": "test",
        "parameters": json.dumps({"mu_max": {"name": "kinetics.mu_max", "unit": "1/h", "prior_median": mu,
                                             "prior_log_sd": 0.5}}),
        "batch_effects": json.dumps(["mu_max"]), "initial": json.dumps({"biomass": 0.1}), "dt": dt})
    return idata


def test_new_batch_draws_add_the_batch_effect_variance():
    sc = load_scenario(ERY)
    idata = _idata(sc.model, tau=0.2)
    typical = posterior_draws(idata, new_batch=False)
    new = posterior_draws(idata, new_batch=True, seed=1)
    v_typ = np.var(np.log(typical.params["kinetics.mu_max"]))
    v_new = np.var(np.log(new.params["kinetics.mu_max"]))
    assert v_typ == pytest.approx(0.05**2, rel=0.1)
    assert v_new == pytest.approx(0.05**2 + 0.2**2, rel=0.1)
    assert np.all(typical.init_factors["biomass"] == 1.0)
    assert np.std(np.log(new.init_factors["biomass"])) == pytest.approx(0.1, rel=0.1)
    assert set(new.noise) == {"product"} and np.all(new.noise["product"][0] == 0.1)
    assert posterior_draws(idata, 100).n == 100


def test_identical_draws_reproduce_the_deterministic_simulation():
    sc = load_scenario(ERY)
    idata = _idata(sc.model, n=8, tau=0.0, mu=float(get_parameter(sc.model, "kinetics.mu_max")))
    draws = posterior_draws(idata, new_batch=False)
    mu = 0.9 * draws.params["kinetics.mu_max"][0]
    draws.params["kinetics.mu_max"][:] = mu
    ens = simulate_draws(sc.model, sc.recipe, sc.y0, draws, 0.0, sc.duration_h, ts=sc.ts)
    ref = simulate(set_parameters(sc.model, {"kinetics.mu_max": mu}), sc.recipe, sc.y0, 0.0, sc.duration_h,
                   ts=sc.ts, options=FixedGrid(dt=0.5))
    p = np.asarray(ens.states.product)
    assert p.shape == (8, sc.ts.shape[0])
    np.testing.assert_allclose(p, np.broadcast_to(np.asarray(ref.states.product), p.shape), rtol=1e-10, atol=1e-9)


def test_per_draw_profiles_replace_the_recipe_draw_by_draw():
    """`simulate_draws(per_draw={"water_feed": ...})` gives draw i the water profile i: equal to
    simulating each draw alone with that profile, and the volume gap between two draws is the
    water they were given apart (a water feed adds volume and nothing else)."""
    from twin.recipe import Profile

    sc = load_scenario(ERY)
    idata = _idata(sc.model, n=6, tau=0.0, mu=float(get_parameter(sc.model, "kinetics.mu_max")))
    draws = posterior_draws(idata, new_batch=False)
    grid = np.arange(0.0, sc.duration_h, 10.0)
    water = np.outer([0.0, 5.0, 20.0] * (draws.n // 3), np.ones_like(grid))
    water[2, 3:6] = 0.0
    prof = Profile(jnp.asarray(grid), jnp.asarray(sc.duration_h), jnp.asarray(water), jnp.asarray(water))
    ens = simulate_draws(sc.model, sc.recipe, sc.y0, draws, 0.0, sc.duration_h, ts=sc.ts, per_draw={"water_feed": prof})
    vol = np.asarray(ens.states.volume)
    for i in range(3):
        m = set_parameters(sc.model, {"kinetics.mu_max": float(draws.params["kinetics.mu_max"][i])})
        one = Profile(prof.start, prof.end, prof.value[i], prof.value_end[i])
        ref = simulate(m, sc.recipe.with_profile("water_feed", one), sc.y0, 0.0, sc.duration_h,
                       ts=sc.ts, options=FixedGrid(dt=0.5))
        np.testing.assert_allclose(vol[i], np.asarray(ref.states.volume), rtol=1e-10)
    gap = float(ens.states.ledger.volume_fed[1, -1] - ens.states.ledger.volume_fed[0, -1])
    assert gap == pytest.approx(5.0 * float(sc.duration_h), rel=1e-9)
    with pytest.raises(ValueError, match="shape"):
        simulate_draws(sc.model, sc.recipe, sc.y0, draws, 0.0, sc.duration_h, ts=sc.ts,
                       per_draw={"water_feed": Profile(prof.start, prof.end, prof.value[:2], prof.value_end[:2])})
    assert draws.n == 6


def test_snap_to_grid_moves_and_drops_phases():
    r = recipe_from_phases({"substrate_feed": [(0.0, 12.4, 0.0), (12.4, 12.6, 5.0), (12.6, 50.0, 8.0)],
                            "temperature": [(0.0, 50.0, 25.0)]},
                           defaults={"pH": 6.5, "aeration": 1.0, "agitation": 100.0, "back_pressure": 0.0,
                                     "oil_feed": 0.0, "precursor_feed": 0.0, "water_feed": 0.0, "draw": 0.0},
                           span=(0.0, 50.0))
    snapped, moves = snap_to_grid(r, 1.0)
    p = snapped.profiles["substrate_feed"]
    np.testing.assert_array_equal(np.asarray(p.start), [0.0, 12.0, 13.0])
    np.testing.assert_array_equal(np.asarray(p.value), [0.0, 5.0, 8.0])
    assert ("substrate_feed", 12.4, 12.0) in moves and ("substrate_feed", 12.6, 13.0) in moves
    snapped2, _ = snap_to_grid(r, 2.0)  # 12.4 and 12.6 both go to 12: the 5 L/h phase vanishes
    p2 = snapped2.profiles["substrate_feed"]
    np.testing.assert_array_equal(np.asarray(p2.start), [0.0, 12.0])
    np.testing.assert_array_equal(np.asarray(p2.value), [0.0, 8.0])
    assert snap_to_grid(snapped, 1.0)[1] == []


def test_posterior_without_simulation_attributes_is_refused(tmp_path):
    sc = load_scenario(ERY)
    idata = _idata(sc.model)
    del idata.attrs["dt"]
    path = save_posterior(idata, tmp_path / "posterior.nc")
    with pytest.raises(TwinError, match=r"posterior.nc: field 'dt': posterior lacks attribute 'dt'"):
        load_draws(path, sc.model)
    idata.attrs["format_version"] = FORMAT_VERSION - 1
    path = save_posterior(idata, tmp_path / "old.nc")
    with pytest.raises(PosteriorError, match="format version differs"):
        load_draws(path, sc.model)


IPS_STRAIN = ROOT / "calibration/strains/penicillin_indpensim.toml"


def test_ph_loop_inflows_are_the_histories_recorded_acid_and_base_and_each_draw_gets_one():
    """`ph_loop_inflows` reads the recorded acid + base flow of every batch of the posterior's strain
    history onto the grid's midpoints; `ph_loop_water` gives draw i the recipe's water plus batch
    i mod batches' inflow; no strain file here (or none named) means no inflow."""
    from calibration.infer import load_history
    from calibration.posterior import ph_loop_inflows, ph_loop_water, recipe_water
    from calibration.spec import load_strain
    from twin.recipe import sample

    inflows = ph_loop_inflows({"strain_file": str(IPS_STRAIN)}, 230.0, 0.5)
    bs, _ = load_history(load_strain(IPS_STRAIN))
    assert inflows.shape == (len(bs.batch_ids), 460)
    rec = bs[bs.batch_ids[3]]
    (ta, va), (tb, vb) = rec.series("acid_flow"), rec.series("base_flow")
    mids = np.arange(0.0, 230.0, 0.5) + 0.25
    np.testing.assert_allclose(inflows[3], np.interp(mids, ta, va) + np.interp(mids, tb, vb), rtol=1e-12)
    # the history's base use: litres per batch, different from batch to batch
    totals = inflows.sum(axis=1) * 0.5
    assert totals.min() > 1000.0 and totals.max() - totals.min() > 1000.0

    sc = load_scenario(ROOT / "scenarios/penicillin_indpensim.toml")
    recipe, _ = snap_to_grid(sc.recipe, 0.5)
    n = len(bs.batch_ids) + 2
    water = sample(recipe, "water_feed", mids)
    np.testing.assert_array_equal(recipe_water(recipe, 230.0, 0.5), water)
    w = ph_loop_water(water, inflows, n, 230.0, 0.5)["water_feed"]
    assert np.asarray(w.value).shape == (n, 460)
    for i in (0, 5, n - 1):
        np.testing.assert_allclose(np.asarray(w.value)[i], water + inflows[i % len(inflows)], rtol=1e-12)
    assert ph_loop_inflows({"strain_file": "/nowhere/strain.toml"}, 230.0, 0.5) is None
    assert ph_loop_inflows({}, 230.0, 0.5) is None
    assert ph_loop_water(water, None, n, 230.0, 0.5) == {}
    with pytest.raises(ValueError, match="steps"):
        ph_loop_water(water, inflows, n, 100.0, 0.5)


def test_simulate_with_posterior_adds_each_draws_ph_loop_inflow(tmp_path):
    """`twin simulate S --posterior P`: identical parameter draws end at different volumes when the
    posterior's strain history records acid and base (each draw carries one batch's inflow; the
    spread is that of the inflows), and at one volume when it does not; summary.json says which."""
    from typer.testing import CliRunner

    from calibration.posterior import ph_loop_inflows
    from twin.cli import app

    sc = load_scenario(ERY)
    mu = float(get_parameter(sc.model, "kinetics.mu_max"))
    finals = {}
    for label, attrs in (("with", {"strain_file": str(IPS_STRAIN)}), ("without", {})):
        idata = _idata(sc.model, n=8, tau=0.0, mu=mu)
        idata.attrs.update(attrs)
        post = save_posterior(idata, tmp_path / f"{label}.nc")
        out = tmp_path / label
        res = CliRunner().invoke(app, ["simulate", str(ERY), "--posterior", str(post), "--draws", "8",
                                       "--out", str(out)])
        assert res.exit_code == 0, res.output
        s = json.loads((out / "summary.json").read_text())
        finals[label] = s["summary"]["final_volume_m3"]
        note = s["posterior"]["ph_loop_inflow"]
        assert ("calibration batch i mod 12" in note) == (label == "with"), note
    assert finals["without"]["q95"] == pytest.approx(finals["without"]["q05"], rel=1e-9)
    inflows = ph_loop_inflows({"strain_file": str(IPS_STRAIN)}, float(sc.duration_h), 0.5)
    fed_m3 = inflows.sum(axis=1)[:8] * 0.5 / 1000.0  # draws 0-7 carry batches 0-7
    spread = finals["with"]["q95"] - finals["with"]["q05"]
    assert 0.5 * np.ptp(fed_m3) < spread <= np.ptp(fed_m3) + 1e-9


def test_plain_simulate_adds_the_median_ph_loop_inflow_of_the_named_history(tmp_path):
    """`[recipe] ph_loop_history`: `twin simulate` without a posterior adds, step by step, the median
    over the history's batches of their recorded acid + base inflow to the water feed: the volume
    fed rises by exactly its integral, and summary.json says so. A missing strain file is refused
    by field at load."""
    import pandas as pd

    from calibration.posterior import ph_loop_inflows
    from twin.cli import run_scenario
    from twin.scenario import ScenarioError

    text = ERY.read_text().replace('file = "erythromycin_like_recipe.csv"',
                                   f'file = "{ROOT / "scenarios/erythromycin_like_recipe.csv"}"')
    plain = tmp_path / "plain.toml"
    plain.write_text(text)
    with_ph = tmp_path / "with_ph.toml"
    with_ph.write_text(text.replace("[sources]", f'ph_loop_history = "{IPS_STRAIN}"\n\n[sources]', 1))
    summary = {}
    for label, path in (("plain", plain), ("with", with_ph)):
        run_scenario(path, tmp_path / label, quiet=True)
        summary[label] = json.loads((tmp_path / label / "summary.json").read_text())
    v = {k: pd.read_csv(tmp_path / k / "trajectories.csv") for k in ("plain", "with")}
    col = [c for c in v["plain"].columns if c.startswith("volume_fed")][0]
    sc = load_scenario(with_ph)
    med = np.median(ph_loop_inflows({"strain_file": str(IPS_STRAIN)}, float(sc.duration_h), 0.5), axis=0)
    extra = float(v["with"][col].iloc[-1] - v["plain"][col].iloc[-1])
    assert extra == pytest.approx(float(med.sum()) * 0.5, rel=1e-6)
    assert "median over 12 history batches" in summary["with"]["ph_loop_inflow"]
    assert "ph_loop_inflow" not in summary["plain"]
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("[sources]", 'ph_loop_history = "nowhere.toml"\n\n[sources]', 1))
    with pytest.raises(ScenarioError, match=r"field 'recipe.ph_loop_history': strain file not found"):
        load_scenario(bad)
