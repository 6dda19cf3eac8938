"""Benchmark scripts run with tiny arguments (STYLE.md rule 13) and report what they promise."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simulate_benchmark_with_tiny_arguments(capsys):
    """Every headline figure is printed as `name: value`; Tsit5 and LSODA, both at 1e-7, agree
    on the final titer to 1e-5 relative."""
    figures = _load("simulate").main(["--quick", "--n", "4", "--repeats", "2", "--scipy-members", "2"])
    out = capsys.readouterr().out
    for name in ("compile_s", "single_sim_ms", "single_sim_core_ms", "ensemble_sims_per_s",
                 "scipy_sims_per_s", "ensemble_vs_scipy_ratio", "ensemble_vs_scipy_max_rel_diff"):
        assert f"\n{name}: " in out, name
        assert figures[name] > 0 or name == "ensemble_vs_scipy_max_rel_diff"
    assert figures["ensemble_size"] == 4
    assert figures["ensemble_vs_scipy_max_rel_diff"] < 1e-5


def test_control_benchmark_quick_reports_both_solvers(capsys):
    """The recipe optimiser's literature benchmark: both problems solved by twin.control and by
    CasADi + IPOPT in one run, re-scored by the reference integrator, ratios printed."""
    figures = _load("control").main(["--quick"])
    out = capsys.readouterr().out
    for key in ("park_ramirez", "lee_ramirez"):
        for name in ("objective", "pct_of_best", "twin_s", "casadi_objective", "time_ratio_vs_casadi"):
            assert f"\n{key}_{name}: " in out, f"{key}_{name}"
        # even a smoke run at N = 10 gets within 5 % of the continuous-time best
        assert figures[f"{key}_pct_of_best"] > 95.0


def test_forecast_floor_benchmark_with_tiny_arguments(capsys, tmp_path):
    """One seed, one re-drawn future from 6 h of a 12 h batch, in this process: headline figures
    printed as `name: value`, the re-draw departs from the truth, CSV and figure written."""
    pytest.importorskip("pensimpy")
    bench = _load("forecast_floor")
    figures = bench.main(["--seeds", "100", "--horizons", "6", "--redraws", "1", "--duration-h",
                          "12", "--workers", "1", "--no-history", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for name in ("floor_mape_6h_pct", "future_sd_6h_pct", "in_range_6h", "hist_mean_mape_pct"):
        assert f"\n{name}: " in out, name
    assert 0.0 < figures["floor_mape_6h_pct"] < 5.0
    assert (tmp_path / "forecast_floor.csv").is_file()
    assert (tmp_path / "forecast_floor.png").stat().st_size > 1000
    alt = [bench.alt_seed(100, 6.0, j) for j in (0, 1)]
    assert min(alt) >= 2**31 and alt[0] != alt[1]


def test_smoothness_benchmark_with_tiny_arguments(capsys):
    """The smoothness sweep: headline lines printed; the adaptive reference is smooth along the
    sweep (no slope sign changes), and every figure is finite."""
    import math

    figures = _load("smoothness").main(["--n", "5", "--dts", "0.2", "--times", "24,60",
                                        "--span", "0.05", "--reference", "explicit"])
    out = capsys.readouterr().out
    for name in ("sign_changes_reference", "sign_changes_dt0.2", "rough_max_dt0.2", "err_max_pct_dt0.2"):
        assert f"\n{name}: " in out, name
        assert math.isfinite(figures[name])
    assert figures["sign_changes_reference"] == 0


@pytest.mark.slow
def test_posterior_geometry_benchmark_with_tiny_arguments(capsys):
    """The Gaussian-fit check of both parameterisations on the synthetic strain: headline lines
    printed, and every figure finite."""
    import math

    figures = _load("posterior_geometry").main([
        "--strain", str(ROOT / "calibration/strains/synthetic_erythromycin.toml"),
        "--draws", "4", "--iterations", "20"])
    out = capsys.readouterr().out
    for par in ("non_centred", "centred"):
        for name in (f"laplace_excess_mean_{par}", f"laplace_excess_sd_{par}"):
            assert f"\n{name}: " in out, name
            assert math.isfinite(figures[name])


def test_smoothness_reference_until_must_precede_the_saved_times(capsys):
    """`--reference-until H` with a saved time before H is an argparse error naming both."""
    with pytest.raises(SystemExit):
        _load("smoothness").main(["--reference-until", "26", "--times", "24,230", "--n", "3"])
    err = capsys.readouterr().err
    assert "--reference-until 26: every saved time must come after it (--times 24,230)" in err


def test_closed_loop_sugar_stall_counts_hours_of_piled_up_sugar():
    """A plant run whose sugar piles up above 0.05 g/L for 4 h after 30 h stalls 4 h; sugar
    before 30 h (the batch phase) does not count."""
    import numpy as np
    import pandas as pd

    t = np.round(np.arange(0.0, 100.0 + 1e-9, 0.2), 1)
    sugar = np.full_like(t, 0.002)
    sugar[t < 20] = 5.0
    sugar[(t > 80) & (t <= 84)] = 3.0
    stall = _load("closed_loop").sugar_stall_h(pd.DataFrame({"time_h": t, "substrate": sugar}))
    assert stall == pytest.approx(4.0, abs=1e-9)


def test_calibration_benchmark_reads_widths_and_residuals_at_the_readings():
    """benchmarks/calibration.py's width diagnostics: the predictive's relative SD at each masked
    reading (interpolated between grid points) and the readings' relative residuals from the
    predictive median, on draws whose relative SD is 10 % by construction."""
    cb = _load("calibration")
    rng = np.random.default_rng(3)
    grid = np.linspace(0.0, 10.0, 11)
    level = 2.0 + grid  # the predictive median, per grid point
    z = rng.standard_normal((4000, 1, 1))
    pred = np.broadcast_to(level * (1.0 + 0.1 * z), (4000, 2, 11))
    t = np.array([[2.5, 7.0, 9.9], [1.0, 4.0, 0.0]])
    mask = np.array([[True, True, True], [True, True, False]])
    true_level = 2.0 + t
    y = true_level * np.array([[1.05, 0.9, 1.0], [1.2, 1.0, 123.0]])
    sd = cb._relative_sd(pred, grid, t, y, mask)
    assert len(sd) == 5
    np.testing.assert_allclose(sd, 0.1, rtol=0.05)
    res = cb._relative_residuals(pred, grid, t, y, mask)
    np.testing.assert_allclose(res, [0.05, -0.1, 0.0, 0.2, 0.0], atol=0.01)


def test_calibration_benchmark_coverage_intervals_resample_whole_batches():
    """The coverage's bootstrap interval resamples batches, not readings: 10 batches of 20
    readings, 9 wholly inside the 90 % interval and 1 wholly outside, give pooled coverage 0.9
    with an interval as wide as 10 Bernoulli trials (about 0.8-1.0), not 200 (about 0.87-0.93).
    The final titer is each batch's last product reading; all inside gives exactly (1, 1)."""
    cb = _load("calibration")
    rng = np.random.default_rng(0)
    inside, outside = np.full(20, 0.5), np.full(20, 0.99)
    pits = {"product": [inside] * 9 + [outside], "biomass": [inside] * 10}
    ci = cb.coverage_intervals(pits, rng)
    lo, hi = ci["product"]
    assert lo <= 0.9 <= hi
    assert lo <= 0.81 and hi == 1.0
    assert ci["final_titer"] == ci["product"]
    assert ci["biomass"] == (1.0, 1.0)


def test_calibration_benchmark_lists_every_failing_site_with_chain_means(capsys):
    """NUTS diagnostics in the benchmark: every site over the r-hat limit or under the ESS floor is
    listed (not only the worst), with each chain's mean, so that two chains in two modes show."""
    import arviz as az

    from calibration.diagnostics import check

    cb = _load("calibration")
    rng = np.random.default_rng(0)
    good = rng.standard_normal((2, 500))
    split = np.stack([rng.normal(0.0, 0.1, 500), rng.normal(1.0, 0.1, 500)])  # one mode per chain
    batch = rng.standard_normal((2, 500, 3))
    batch[1, :, 2] += 5.0  # only element 2 disagrees across chains
    idata = az.from_dict(posterior={"tau_mu_max": np.abs(good), "sd_product": np.exp(split), "cv_product": batch})
    idata.attrs["method"] = "nuts"
    d = check(idata)
    cb.print_failing_sites(idata, d)
    out = capsys.readouterr().out
    assert "failing sd_product" in out and "failing cv_product" in out and "tau_mu_max" not in out
    line = next(s for s in out.splitlines() if "sd_product" in s)
    means = [float(m) for m in line.split("chain means ")[1].split(", ")]
    assert means[0] == pytest.approx(1.0, abs=0.05) and means[1] == pytest.approx(np.e, rel=0.05)
    assert "(element 2)" in next(s for s in out.splitlines() if "cv_product" in s)


def test_plant_ceiling_reshape_keeps_each_feed_total_and_the_default_at_unit_factors():
    """The plant-ceiling family: the last window's factor restores the total, the reshaped recipe
    holds each feed's default total from the first edge on (and before it, the default itself),
    and unit factors give back the default's hourly feeds exactly."""
    from twin.plants import default_recipe
    from twin.recipe import sample

    bench = _load("plant_ceiling")
    base, edges = default_recipe(), [24.0, 60.0, 140.0, 230.0]
    masses = bench.window_masses(base, edges)
    f = {v: bench.full_factors(np.array([1.2, 0.8 if v == "oil_feed" else 0.9]), masses[v])
         for v in bench.FEEDS}
    for v, ff in f.items():
        assert np.dot(ff, masses[v]) == pytest.approx(masses[v].sum(), rel=1e-12)
    t = np.arange(0.0, 230.0, 0.5) + 0.25
    new = bench.reshape(base, f, edges)
    for v in bench.FEEDS:
        before, after = sample(base, v, t), sample(new, v, t)
        assert after.sum() == pytest.approx(before.sum(), rel=1e-12)
        np.testing.assert_allclose(after[t < 24], before[t < 24], rtol=0, atol=0)
        first = (t >= 24) & (t < 60)
        np.testing.assert_allclose(after[first], 1.2 * before[first], rtol=1e-12)
        assert float(new.total(v, 0.0, 230.0)) == pytest.approx(float(base.total(v, 0.0, 230.0)), rel=1e-9)
    same = bench.reshape(base, {v: np.ones(3) for v in bench.FEEDS}, edges)
    for v in bench.FEEDS:
        np.testing.assert_array_equal(sample(same, v, t), sample(base, v, t))


def test_plant_ceiling_temperature_shift_moves_only_the_set_point_after_its_hour():
    """--temperature-shift H:DELTA: the set-point is the default's + DELTA from H on, the default's
    before H, and no other variable changes."""
    from twin.plants import default_recipe
    from twin.recipe import sample
    from twin.state import CONTROL_VARIABLES

    bench = _load("plant_ceiling")
    base = default_recipe()
    new = bench.shift_temperature(base, 150.0, -3.0)
    t = np.arange(0.0, 230.0, 0.5) + 0.25
    before, after = sample(base, "temperature", t), sample(new, "temperature", t)
    np.testing.assert_allclose(after[t < 150], before[t < 150], rtol=0, atol=1e-12)
    np.testing.assert_allclose(after[t > 150], before[t > 150] - 3.0, rtol=0, atol=1e-12)
    for v in CONTROL_VARIABLES:
        if v != "temperature":
            np.testing.assert_array_equal(sample(new, v, t), sample(base, v, t), err_msg=v)


def test_pilot_temperature_designs_and_strain(tmp_path):
    """The pilot benchmark's batches: the default recipe with only the temperature set-point moved
    from the stated hour; its strain file is the shipped one plus a T_opt prior (and loads)."""
    from calibration.spec import load_strain
    from twin import kinetics as kin
    from twin.plants import default_recipe
    from twin.recipe import sample
    from twin.state import CONTROL_VARIABLES

    bench = _load("pilot_temperature")
    base = default_recipe()
    t = np.arange(0.0, 230.0, 0.5) + 0.25
    for _, from_h, delta in bench.PILOTS:
        r = bench.pilot_recipe(from_h, delta)
        T, T0 = sample(r, "temperature", t), sample(base, "temperature", t)
        np.testing.assert_allclose(T[t < from_h], T0[t < from_h], rtol=0, atol=1e-12)
        np.testing.assert_allclose(T[t > from_h], T0[t > from_h] + delta, rtol=0, atol=1e-12)
        for v in CONTROL_VARIABLES:
            if v != "temperature":
                np.testing.assert_array_equal(sample(r, v, t), sample(base, v, t), err_msg=v)
    from twin.plants.history import _describe

    assert _describe({"description": "pilot trial: x"}) == "pilot trial: x"  # what batches.csv notes say
    shipped = load_strain(bench.STRAIN)
    none = bench.scenario_with_law(tmp_path, "none")  # as shipped: production has no temperature factor
    spec = load_strain(bench.strain_with_t_opt(tmp_path, none))
    assert [p.key for p in spec.priors] == [p.key for p in shipped.priors][:7] + ["T_opt"] + [
        p.key for p in shipped.priors][7:]
    assert isinstance(spec.scenario.model.kinetics.production_temperature, kin.TemperatureIndependent)
    assert spec.scenario.recipe == shipped.scenario.recipe
    shared = load_strain(bench.strain_with_t_opt(tmp_path, bench.scenario_with_law(tmp_path, "shared")))
    assert shared.scenario.model.kinetics.production_temperature is None
    # --law production: production's own curve (equal to the growth curve to start), and T_opt_P
    # calibrated beside T_opt
    scenario = bench.scenario_with_law(tmp_path, "cardinal")
    spec = load_strain(bench.strain_with_t_opt(tmp_path, scenario, own_curve=True))
    assert [p.key for p in spec.priors] == [p.key for p in shipped.priors][:7] + ["T_opt", "T_opt_P"] + [
        p.key for p in shipped.priors][7:]
    pt = spec.scenario.model.kinetics.production_temperature
    assert (float(pt.T_min_P), float(pt.T_opt_P), float(pt.T_max_P)) == (5.0, 25.0, 35.0)
    assert spec.scenario.recipe == shipped.scenario.recipe
    spec = load_strain(bench.strain_with_t_opt(tmp_path, scenario, own_curve=True, free_limits=True))
    assert [p.key for p in spec.priors][7:11] == ["T_opt", "T_opt_P", "T_min_P", "T_max_P"]


@pytest.mark.slow
def test_plant_ceiling_benchmark_with_tiny_arguments(capsys):
    """Two plant evaluations on one search seed, the best run on one other seed: every headline
    printed, and the search's own starting point (the default) scores exactly 0 % on its seed."""
    figures = _load("plant_ceiling").main(["--max-evals", "2", "--search-seeds", "200", "--test-seeds", "100",
                                           "--edges", "24,120,230"])
    out = capsys.readouterr().out
    for name in ("plant_search_evals", "plant_search_best_gain_pct", "plant_ceiling_test_mean_gain_pct",
                 "plant_ceiling_test_min_gain_pct", "plant_ceiling_peak_volume_max_m3", "wall_s"):
        assert f"\n{name}: " in out, name
    assert "eval   1: gain  +0.00 %" in out
    assert figures["plant_search_best_gain_pct"] >= 0.0
    assert figures["plant_ceiling_test_n_seeds"] == 1


def test_advise_plant_splices_the_advice_after_its_start():
    """benchmarks/advise_plant.py: the plant runs the plan before the advice's start (a linear
    phase cut there keeps its slope) and the advice after it; other variables are the plan's."""
    import types

    import jax
    import jax.numpy as jnp

    from twin.plants import default_recipe
    from twin.recipe import Profile, sample

    bench = _load("advise_plant")
    f = lambda *x: jnp.asarray(x, dtype=float)
    plan = Profile(f(0.0, 100.0), jnp.asarray(230.0), f(10.0, 50.0), f(30.0, 50.0))  # ramp 10 -> 30 on 0-100 h
    adv = Profile(f(0.0, 60.0, 120.0), jnp.asarray(230.0), f(0.0, 70.0, 80.0), f(0.0, 70.0, 80.0))
    s = bench.splice(plan, adv, 60.0)
    t = np.arange(0.0, 230.0, 0.5) + 0.25
    got, p, a = (np.asarray(jax.vmap(x)(jnp.asarray(t))) for x in (s, plan, adv))
    np.testing.assert_allclose(got[t < 60], p[t < 60], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[t > 60], a[t > 60], rtol=0, atol=1e-12)
    # an advised phase that begins before the cut (twin advise merges a first phase that keeps
    # the running value into the recorded one) is cut there; a linear one keeps its slope
    ramp = Profile(f(0.0, 50.0), jnp.asarray(230.0), f(0.0, 60.0), f(0.0, 80.0))  # 60 -> 80 on 50-230 h
    for cut, a2 in ((61.0, adv), (61.0, ramp), (140.0, ramp)):
        got = np.asarray(jax.vmap(bench.splice(plan, a2, cut))(jnp.asarray(t)))
        want = np.where(t < cut, p, np.asarray(jax.vmap(a2)(jnp.asarray(t))))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="ends at 230 h, not after 230 h"):
        bench.splice(plan, adv, 230.0)
    base = default_recipe()
    fake = types.SimpleNamespace(start_h=120.0, recipe=base.with_profile("substrate_feed", adv))
    new = bench.advised_plant_recipe(base, fake, ["substrate_feed"])
    for v in base.profiles:
        want = np.where(t > 120, a, sample(base, v, t)) if v == "substrate_feed" else sample(base, v, t)
        np.testing.assert_allclose(sample(new, v, t), want, rtol=0, atol=1e-12, err_msg=v)


def test_closed_loop_replan_row_counts_refused_advice_as_the_open_loop_batch():
    """benchmarks/closed_loop.py --replan-at: a seed whose advice is refused continues on the
    open-loop recipe, so its row is the open-loop comparison's (gain over open loop exactly 0);
    a re-planned seed's row takes the re-planned run's totals, the open-loop total kept apart."""
    import pandas as pd

    bench = _load("closed_loop")
    c = pd.Series({"penicillin_total_kg_recipe": 3300.0, "penicillin_total_kg_default": 3200.0,
                   "peak_volume_L_recipe": 95_500.0, "base_L_recipe": 1020.0, "base_L_default": 1000.0,
                   "sugar_kg_diff_pct": -0.5, "oil_L_diff_pct": 0.1})
    refused = bench._replan_row(7, c, open_kg=3300.0, plan_kg=3300.0, predicted_pct=0.0, refused=True,
                                applied=False, advise_s=1.0)
    assert refused["replan_kg"] == refused["open_kg"] == 3300.0 and refused["default_kg"] == 3200.0
    assert refused["peak_volume_m3"] == pytest.approx(95.5) and refused["base_ratio"] == pytest.approx(1.02)
    replanned = bench._replan_row(7, c.replace(3300.0, 3330.0), open_kg=3300.0, plan_kg=3300.0, predicted_pct=1.0,
                                  refused=False, advise_s=1.0, advice_kg=3330.0)
    assert replanned["replan_kg"] == 3330.0 and replanned["open_kg"] == 3300.0


def test_closed_loop_replan_figures_count_only_recommended_advice_and_measure_every_advice():
    """Advice `twin advise` does not recommend leaves the batch on its plan (its gain over the
    plan and its predicted gain count as 0 for the batch), but it was run on the plant too: the
    response error (realised - predicted, % of the plan) covers every advice that was not refused."""
    import pandas as pd

    bench = _load("closed_loop")
    row = lambda seed, stage_kg, **kw: bench._replan_row(seed, pd.Series({
        "penicillin_total_kg_recipe": stage_kg, "penicillin_total_kg_default": 3000.0,
        "peak_volume_L_recipe": 95_000.0, "base_L_recipe": 1000.0, "base_L_default": 1000.0,
        "sugar_kg_diff_pct": 0.0, "oil_L_diff_pct": 0.0}), open_kg=3300.0, advise_s=2.0, **kw)
    first = pd.DataFrame([  # seed 1: applied, +1 % on the plant (twin +2 %); seed 2: held, would have lost 1 %
        row(1, 3333.0, plan_kg=3300.0, predicted_pct=2.0, refused=False, applied=True, advice_kg=3333.0),
        row(2, 3300.0, plan_kg=3300.0, predicted_pct=0.5, refused=False, applied=False, advice_kg=3267.0)])
    second = pd.DataFrame([  # seed 1 refused (stays at 3333); seed 2 applied, +2 % (twin +1 %)
        row(1, 3333.0, plan_kg=3333.0, predicted_pct=0.0, refused=True, applied=False),
        row(2, 3366.0, plan_kg=3300.0, predicted_pct=1.0, refused=False, applied=True, advice_kg=3366.0)])
    f = bench.replan_figures([first.assign(at_h=57.0), second.assign(at_h=115.0)], [57.0, 115.0])
    assert f["replan_after_57h_mean_gain_pct"] == pytest.approx(100 * ((3333 + 3300) / 2 / 3000 - 1), abs=0.01)
    assert f["replan_vs_open_loop_mean_pct"] == pytest.approx(100 * ((3333 / 3300 + 3366 / 3300) / 2 - 1), abs=0.01)
    assert f["replan_predicted_vs_open_loop_mean_pct"] == pytest.approx((2.0 + 1.0) / 2, abs=0.01)
    assert (f["replan_applied"], f["replan_refused"], f["replan_advice_count"]) == (2, 1, 3)
    assert f["advice_lost_count"] == 1
    errors = [1.0 - 2.0, -1.0 - 0.5, 2.0 - 1.0]
    assert f["advice_response_error_mean_pct"] == pytest.approx(np.mean(errors), abs=0.01)
    assert f["advice_response_error_sd_pct"] == pytest.approx(np.std(errors, ddof=1), abs=0.01)


def test_closed_loop_replan_hours_are_increasing_and_checked_before_any_work(capsys):
    """benchmarks/closed_loop.py --replan-at 57,115 re-plans twice, in order; hours out of order or
    not numbers are refused by the argument parser, before any calibration or plant run."""
    bench = _load("closed_loop")
    assert bench._hours("57") == [57.0] and bench._hours("57,115") == [57.0, 115.0]
    for bad in ("115,57", "57,57", "57,noon"):
        with pytest.raises(SystemExit):
            bench.main(["--replan-at", bad, "--out", "/nonexistent/never-written"])
        assert "--replan-at" in capsys.readouterr().err
