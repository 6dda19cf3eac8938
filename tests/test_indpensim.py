"""The IndPenSim plant adapter: real pensimpy runs (short), units, totals, recipe round trip,
solver failure, refusals, determinism; and fast tests of the noise model and seed parser."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from twin.errors import ParameterError, RecipeError, SolverError
from twin.plants import demo_history_dir
from twin.plants.cli import plant_app
from twin.plants.history import operator_recipe, parse_seeds
from twin.plants.indpensim import (AGITATION_RPM, OFFLINE_NOISE, ONLINE_NOISE, STEP_H, Noise,
                                   _pensimpy_default_phases, check_recipe, default_recipe,
                                   plant_step_lengths, run_batch)
from twin.recipe import Profile, constant_profile, recipe_from_phases, sample
from twin.state import CONTROL_VARIABLES

DURATION = 30.0  # h: a short batch keeps the plant tests at a few seconds each


def _profile(rows) -> Profile:
    """A piecewise-constant profile from `[(start_h, end_h, value), ...]` (internal units)."""
    import jax.numpy as jnp

    a = np.asarray(rows, dtype=float)
    return Profile(jnp.asarray(a[:, 0]), jnp.asarray(a[-1, 1]), jnp.asarray(a[:, 2]),
                   jnp.asarray(a[:, 2]))


@pytest.fixture(scope="module")
def short_run():
    return run_batch(default_recipe(), seed=7, duration_h=DURATION, keep_raw=True)


# ---------------------------------------------------------------------------------------------
# Fast: noise model, seed syntax, default recipe, refusals


def test_noise_statistics():
    rng = np.random.default_rng(0)
    n = 200_000
    true = np.full(n, 20.0)
    y = Noise(cv=0.05).sample(true, rng)
    np.testing.assert_allclose(y.mean(), 20.0, rtol=2e-3)
    np.testing.assert_allclose(y.std(), 1.0, rtol=1e-2)  # 5 % of 20
    y = Noise(sd=0.3, cv=0.04).sample(np.full(n, 10.0), rng)
    np.testing.assert_allclose(y.std(), math.hypot(0.3, 0.4), rtol=1e-2)
    # clipped at the lower bound; a zero flow reads zero
    assert Noise(sd=1.0).sample(np.zeros(1000), rng).min() == 0.0
    assert np.all(Noise(cv=0.01).sample(np.zeros(100), rng) == 0.0)
    assert Noise(sd=1.0, lower=None).sample(np.zeros(1000), rng).min() < 0
    # the documented lab CVs
    assert OFFLINE_NOISE["biomass"][1].cv == 0.05 and OFFLINE_NOISE["substrate"][1].cv == 0.05
    assert OFFLINE_NOISE["product"][1].cv == 0.03
    with pytest.raises(ParameterError):
        Noise(sd=-1.0)


@pytest.mark.parametrize("text, seeds", [("100-109", list(range(100, 110))), ("1,5,7", [1, 5, 7]),
                                         ("3", [3]), (" 1, 3-5 ", [1, 3, 4, 5]), ("0-0", [0])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text, rule", [("", "must not be empty"), ("5-3", "must go up"),
                                        ("a-b", "integers"), ("1,,2", "integers"),
                                        ("-3", "integers"), ("1,1", "twice"),
                                        ("0-5000", "at most 1000")])
def test_parse_seeds_errors(text, rule):
    with pytest.raises(ParameterError, match=rule):
        parse_seeds(text)


def test_default_recipe_is_pensimpys_schedule():
    rec = default_recipe()
    assert set(rec.profiles) == set(CONTROL_VARIABLES)
    rec.check_covers(0.0, 230.0)
    check_recipe(rec)
    ref = recipe_from_phases(_pensimpy_default_phases(), span=(0.0, 230.0))
    t = np.arange(0.1, 230.0, 0.2)
    for name in CONTROL_VARIABLES:
        np.testing.assert_allclose(sample(rec, name, t), sample(ref, name, t), rtol=1e-12,
                                   atol=1e-9, err_msg=name)
    # values apply *until* their time: 8 L/h up to 3 h, the first harvest 100-102 h
    assert sample(rec, "substrate_feed", [2.9, 3.1]).tolist() == [8.0, 15.0]
    assert sample(rec, "draw", [99.9, 100.1, 101.9, 102.1]).tolist() == [0, 3500, 3500, 0]
    np.testing.assert_allclose(sample(rec, "aeration", [1.0]), [30 * 60_000.0])  # 30 m3/min


def test_refuses_agitation_and_late_precursor():
    rec = default_recipe()
    with pytest.raises(RecipeError, match=r"field 'agitation'.*fixed 100 rpm"):
        check_recipe(rec.with_profile("agitation", constant_profile(150.0, 0.0, 230.0)))
    late = rec.with_profile("precursor_feed", _profile([(0.0, 5.0, 5.0), (5.0, 50.0, 0.0),
                                                         (50.0, 230.0, 2.0)]))
    with pytest.raises(RecipeError, match="plant's own PAA controller"):
        check_recipe(late)
    with pytest.raises(RecipeError, match="aeration must be > 0"):
        check_recipe(rec.with_profile("aeration", constant_profile(0.0, 0.0, 230.0)))
    # the plant's PAA loop: 1.2 g/L from 9.8 h, nothing else (0 leaves it running as always)
    check_recipe(rec.with_profile("precursor_setpoint", constant_profile(0.0, 0.0, 230.0)))
    for bad in ([(0.0, 10.0, 0.0), (10.0, 230.0, 1.5)], [(0.0, 5.0, 0.0), (5.0, 230.0, 1.2)]):
        with pytest.raises(RecipeError, match="field 'precursor_setpoint'.*holds 1.2 g/L from 9.8 h"):
            check_recipe(rec.with_profile("precursor_setpoint", _profile(bad)))
    with pytest.raises(ParameterError, match="fault"):
        run_batch(rec, seed=1, fault=9)
    with pytest.raises(ParameterError, match="duration_h"):
        run_batch(rec, seed=1, duration_h=0.3)


def test_operator_variation_is_recorded_and_runnable():
    rng = np.random.default_rng(3)
    rec, var = operator_recipe(rng)
    check_recipe(rec)
    base = default_recipe()
    np.testing.assert_allclose(sample(rec, "temperature", [1.0]), [var["temperature_degC"]])
    np.testing.assert_allclose(float(rec.total("oil_feed")),
                               var["oil_feed_factor"] * float(base.total("oil_feed")), rtol=1e-12)
    # the ramp shift lengthens the 15 L/h phase before 12 h and shortens the last (80 L/h) one
    shift = var["sugar_ramp_shift_h"]
    assert shift != 0.0
    np.testing.assert_allclose(float(rec.total("substrate_feed")), var["sugar_feed_factor"]
                               * (float(base.total("substrate_feed")) + shift * (15.0 - 80.0)),
                               rtol=1e-9)


def test_demo_history_is_shipped_and_loads():
    from twin.data import load_batch_dir

    d = demo_history_dir()
    if not (d / "batches.csv").is_file():
        pytest.skip("demo history not generated yet")
    data = load_batch_dir(d)
    assert len(data) == 12
    sizes = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    assert sizes < 3_000_000
    assert (d / "README.md").is_file() and len(list((d / "recipes").glob("*.csv"))) == 12


# ---------------------------------------------------------------------------------------------
# The real plant (short batches)


@pytest.mark.slow
def test_units_against_plant_state(short_run):
    x, tr = short_run.raw, short_run.trajectory
    n = int(round(DURATION / STEP_H))
    assert len(tr) == n + 1 and tr["time_h"].iloc[-1] == pytest.approx(DURATION)
    s = tr.iloc[1:]  # row k holds the state at the end of plant step k
    k = np.arange(n)
    np.testing.assert_allclose(s["volume"], np.asarray(x.V.y)[k], rtol=1e-12)
    np.testing.assert_allclose(s["product"], np.asarray(x.P.y)[k], rtol=1e-12)
    np.testing.assert_allclose(s["precursor"], np.asarray(x.PAA.y)[k] / 1000, rtol=1e-12)  # mg/L
    np.testing.assert_allclose(s["nitrogen"], np.asarray(x.NH3.y)[k] / 1000, rtol=1e-12)
    np.testing.assert_allclose(s["temperature"], np.asarray(x.T.y)[k] - 273.15, rtol=1e-12)
    np.testing.assert_allclose(s["pH"], -np.log10(np.asarray(x.pH.y)[k]), rtol=1e-12)
    np.testing.assert_allclose(s["offgas_o2"], 100 * np.asarray(x.O2.y)[k], rtol=1e-12)
    # aeration as the plant received it, m3/min
    np.testing.assert_allclose(tr["aeration"].iloc[:-1], np.asarray(x.Fg.y)[k], rtol=1e-12)
    # physical ranges of a young batch
    assert 55_000 < s["volume"].min() and s["volume"].max() < 70_000
    assert 20 < tr["temperature"].min() and tr["temperature"].max() < 30
    assert 6.0 < tr["pH"].min() and tr["pH"].max() < 7.0
    assert tr["dissolved_oxygen"].iloc[0] == pytest.approx(100.0, abs=5.0)
    # the measurement table: hourly online, 12-hourly offline, documented units
    m = short_run.measurements
    on = m[m.variable == "volume"]
    assert on.time_h.tolist() == list(np.arange(0.0, DURATION + 0.5, 1.0))
    assert m[m.variable == "product"].time_h.tolist() == [0.0, 12.0, 24.0, 30.0]
    for var, (unit, _) in {**ONLINE_NOISE, **OFFLINE_NOISE}.items():
        assert set(m.loc[m.variable == var, "unit"]) == {unit}, var


@pytest.mark.slow
def test_totals_against_plant_arrays():
    """Drawn penicillin, with a harvest pulse inside a short batch, against the raw arrays."""
    base = default_recipe()
    draw = _profile([(0.0, 20.0, 0.0), (20.0, 22.0, 3000.0), (22.0, 230.0, 0.0)])
    run = run_batch(base.with_profile("draw", draw), seed=3, duration_h=24.0, keep_raw=True)
    x, t = run.raw, run.totals
    n = 120
    P = np.concatenate([[0.0], np.asarray(x.P.y)[:n]])
    a = sum(np.asarray(getattr(x, c).y)[:n] for c in ("a0", "a1", "a3", "a4"))
    rho = np.concatenate([[1100.0 + run.trajectory["biomass"].iloc[0]], 1100.0 + P[1:] + a])
    kg_h = -np.asarray(x.discharge.y)[:n]  # the plant's discharge is kg/h
    L_h = kg_h / (rho[:-1] / 1000)
    assert L_h.max() == pytest.approx(3000.0, rel=1e-12)
    dt = plant_step_lengths(n)  # 0.2 h, or 0.205 h on a third of the steps (pensimpy's arange)
    assert set(np.round(dt, 9)) == {0.2, 0.205}
    drawn = np.sum(L_h * dt * 0.5 * (P[:-1] + P[1:])) / 1000
    vessel = x.P.y[n - 1] * x.V.y[n - 1] / 1000
    assert t["penicillin_drawn_kg"] == pytest.approx(drawn, rel=1e-12)
    assert t["penicillin_total_kg"] == pytest.approx(vessel + drawn, rel=1e-12)
    assert t["drawn_L"] == pytest.approx(3000.0 * dt[100:110].sum(), rel=1e-9)
    # pensimpy's own count treats kg/h as L/h: it over-counts by the broth density
    naive = np.sum(kg_h * np.asarray(x.P.y)[:n] * dt) / 1000
    assert naive / drawn == pytest.approx(rho[100:110].mean() / 1000, rel=2e-3)
    # the volume balance: the draw left the vessel at the recorded volume rate
    V = run.trajectory["volume"].to_numpy()
    i = np.arange(100, 110)  # steps of the pulse
    dV = V[i + 1] - V[i]
    feeds = run.trajectory[["substrate_feed", "water_feed", "precursor_feed", "acid_flow",
                            "base_flow"]].to_numpy()[i].sum(axis=1)
    T_K = run.trajectory["temperature"].to_numpy()[i] + 273.15
    evaporation = V[i] * 5.24e-4 * (np.exp(2.5 * (T_K - 273) / 100) - 1)  # the plant's F_evp, L/h
    np.testing.assert_allclose(dV / dt[i], feeds - 3000.0 - evaporation, atol=1.0)
    # totals of feeds equal the recipe's flows times the plant's step lengths
    tm = np.arange(n) * STEP_H + 0.1
    for name, key in (("substrate_feed", "sugar_feed_L"), ("oil_feed", "oil_L")):
        assert t[key] == pytest.approx(np.sum(sample(base, name, tm) * dt), rel=1e-12)
    assert t["process_time_h"] == pytest.approx(dt.sum(), rel=1e-15)


@pytest.mark.slow
def test_recipe_round_trip(short_run):
    """The plant applied what the recipe asked, at the same times (step starts)."""
    rec = short_run.recipe
    tr = short_run.trajectory.iloc[:-1]
    t = tr["time_h"].to_numpy() + 0.5 * STEP_H
    for name, col, scale in (("substrate_feed", "substrate_feed", 1.0),
                             ("oil_feed", "oil_feed", 1.0), ("water_feed", "water_feed", 1.0),
                             ("aeration", "aeration", 1 / 60_000), ("back_pressure", "back_pressure", 1.0),
                             ("temperature", "temperature_setpoint", 1.0), ("pH", "pH_setpoint", 1.0),
                             ("agitation", "agitation", 1.0), ("draw", "draw", 1.0)):
        np.testing.assert_allclose(tr[col], sample(rec, name, t) * scale, rtol=1e-9, atol=1e-9,
                                   err_msg=name)
    early = tr["time_h"] < 9.8 - 1e-9
    np.testing.assert_allclose(tr.loc[early, "precursor_feed"],
                               sample(rec, "precursor_feed", t[early]), rtol=1e-12)
    assert (tr.loc[~early, "precursor_feed"] > 0).any()  # the plant's controller takes over
    assert (tr["agitation"] == AGITATION_RPM).all()
    # measured flows at hour t are the values applied from t on (1 % flowmeter noise)
    m = short_run.measurements
    sf = m[m.variable == "substrate_feed"].set_index("time_h")["value"]
    np.testing.assert_allclose(sf.loc[[2.0, 3.0, 12.0, 20.0]], [8.0, 15.0, 30.0, 150.0], rtol=0.05)


@pytest.mark.slow
def test_solver_failure_raises(monkeypatch):
    import pensimpy.peni_env_setup as env_mod

    real = env_mod.indpensim_ode_py
    calls = {"n": 0}

    def broken(t, y, par):
        calls["n"] += 1
        if t > 1.0:  # the solver blows up after 1 h
            return [float("nan")] * 33
        return real(t, y, par)

    monkeypatch.setattr(env_mod, "indpensim_ode_py", broken)
    with pytest.raises(SolverError, match=r"plant seed 11 at step \d+ \(t = \d+\.\d-\d+\.\d h\): non-finite"):
        run_batch(default_recipe(), seed=11, duration_h=4.0)


@pytest.mark.slow
def test_deterministic_and_seed_dependent(short_run):
    again = run_batch(default_recipe(), seed=7, duration_h=DURATION)
    pd.testing.assert_frame_equal(again.trajectory, short_run.trajectory, check_exact=True)
    pd.testing.assert_frame_equal(again.measurements, short_run.measurements, check_exact=True)
    other = run_batch(default_recipe(), seed=8, duration_h=6.0)
    assert other.trajectory["volume"].iloc[0] != short_run.trajectory["volume"].iloc[0]


@pytest.mark.slow
def test_truth_and_noise_sizes(short_run):
    m = short_run.measurements.set_index(["variable", "time_h"])["value"]
    t = short_run.truth.set_index(["variable", "time_h"])["value"]
    assert m.index.equals(t.index)
    r = (m / t)[["biomass", "product"]].loc["biomass"]
    assert np.all(np.abs(r - 1) < 0.25)  # 5 sigma of a 5 % CV
    dv = (m - t).loc["volume"]
    assert 50 < dv.std() < 300  # 150 L documented


@pytest.mark.slow
def test_cli_history_and_run(tmp_path):
    from twin.data import load_batch_dir

    runner = CliRunner()
    res = runner.invoke(plant_app, ["history", "--n", "2", "--seed", "1", "--out",
                                    str(tmp_path / "h"), "--duration-h", "6"])
    assert res.exit_code == 0, res.output
    data = load_batch_dir(tmp_path / "h")
    assert len(data) == 2
    assert (tmp_path / "h" / "truth.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "h" / "recipes").iterdir()) == [
        "IPS-H1-01.csv", "IPS-H1-02.csv"]
    res = runner.invoke(plant_app, ["run", "--recipe", str(tmp_path / "h" / "recipes" / "IPS-H1-01.csv"),
                                    "--seeds", "100,101", "--out", str(tmp_path / "r"),
                                    "--duration-h", "6"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "r" / "plant_run.csv")
    assert table.seed.tolist() == [100, 101]
    assert (tmp_path / "r" / "plant_run.png").stat().st_size > 1000
    bad = runner.invoke(plant_app, ["run", "--recipe", str(tmp_path / "none.csv"), "--seeds", "1"])
    assert bad.exit_code == 2 and "recipe file not found" in bad.output
    assert "Traceback" not in bad.output
    bad = runner.invoke(plant_app, ["run", "--recipe", str(tmp_path / "h" / "recipes" / "IPS-H1-01.csv"),
                                    "--seeds", "9-2"])
    assert bad.exit_code == 2 and "must go up" in bad.output


# ---------------------------------------------------------------------------------------------
# Re-drawn future disturbances (ensembles of the plant's possible futures)


@pytest.mark.parametrize("bad", [(20.1, 5), (-0.2, 5), (230.2, 5), (20.0, -1), (20.0, 2**32), (20.0, 1.5),
                                 (20.0, True), (20.0,), "20,5", (float("nan"), 5)])
def test_future_disturbances_refused(bad):
    with pytest.raises(ParameterError, match=r"field 'future_disturbances': future_disturbances "
                                             r"must be \(after_h, alt_seed\)"):
        run_batch(default_recipe(), seed=7, duration_h=DURATION, future_disturbances=bad)


def test_redrawn_disturbances_continue_each_filter():
    """Each channel keeps its values before the cut and then follows pensimpy's AR(1) filter
    d[i] = 0.995 d[i-1] + 0.005 s e[i] with the alternative seed's innovations (atol 1e-9 x the
    channel's innovation scale); the plant's own seed as alt_seed reproduces the channels bit for bit."""
    from twin.plants.indpensim import (
        _DISTURBANCE_CHANNELS,
        _pensimpy,
        _redraw_disturbances,
    )

    def channels(alt=None):
        env = _pensimpy().PenSimEnv(None, fast=False)
        env.random_seed_ref = 7
        env.reset()
        if alt is not None:
            _redraw_disturbances(env.xinterp, 285, alt)
        return {c: np.asarray(getattr(env.xinterp, c).y) for c in _DISTURBANCE_CHANNELS}

    plain, same, alt = channels(), channels(7), channels(5000)
    e = np.random.RandomState(5000).randn(len(plain["distcs"]), 1)[:, 0]
    for c, scale in _DISTURBANCE_CHANNELS.items():
        np.testing.assert_array_equal(same[c], plain[c])
        np.testing.assert_array_equal(alt[c][:285], plain[c][:285])
        np.testing.assert_allclose(alt[c][285:] - 0.995 * alt[c][284:-1], 0.005 * scale * e[285:],
                                   rtol=0, atol=1e-9 * scale)
        assert not np.allclose(alt[c][285:], plain[c][285:])


@pytest.mark.slow
def test_future_disturbances_change_only_the_future(short_run):
    """Before after_h the batch is bit-identical to the plain run (states up to and including
    after_h; inputs before it); after it the trajectory differs."""
    after = 20.0
    alt = run_batch(default_recipe(), seed=7, duration_h=DURATION, future_disturbances=(after, 5000))
    a, b = short_run.trajectory, alt.trajectory
    before = a["time_h"] < after - 1e-9
    pd.testing.assert_frame_equal(b[before], a[before], check_exact=True)
    at = int(np.flatnonzero(np.isclose(a["time_h"], after))[0])
    states = ["biomass", "substrate", "product", "volume", "weight", "dissolved_oxygen"]
    np.testing.assert_array_equal(b.loc[at, states].to_numpy(float), a.loc[at, states].to_numpy(float))
    assert b.loc[at, "sugar_feed_g_L"] != a.loc[at, "sugar_feed_g_L"]  # applied from after_h on
    assert np.all(b["product"].iloc[at + 1:].to_numpy() != a["product"].iloc[at + 1:].to_numpy())
    assert alt.totals["penicillin_total_kg"] != short_run.totals["penicillin_total_kg"]


@pytest.mark.slow
def test_future_disturbances_after_the_end_change_nothing(short_run):
    alt = run_batch(default_recipe(), seed=7, duration_h=DURATION, future_disturbances=(DURATION, 5000))
    pd.testing.assert_frame_equal(alt.trajectory, short_run.trajectory, check_exact=True)
    pd.testing.assert_frame_equal(alt.measurements, short_run.measurements, check_exact=True)
    assert alt.totals == short_run.totals
