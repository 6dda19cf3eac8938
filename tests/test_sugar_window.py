"""benchmarks/sugar_window.py: the censored (Tobit) level recovers a planted residual-sugar level
from readings clipped at 0, where the plain mean lies high; the plant's window and the twin's
sugar factor are the documented laws, with slopes that agree with finite differences; and the
randomised PIT (calibration.diagnostics) through which coverage is read stays uniform when
readings are clipped at 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from test_benchmarks import _load


def test_censored_level_recovers_a_planted_level_from_readings_clipped_at_zero():
    sw = _load("sugar_window")
    rng = np.random.default_rng(11)
    true_mu, noise = 0.0006, 0.002  # 0.6 mg/L under 2 mg/L of assay noise: about 38 % read as 0
    levels, errors, sds = [], [], []
    for _ in range(40):
        y = np.maximum(true_mu + noise * rng.standard_normal(48), 0.0)
        mu, sd, se = sw.censored_level(y)
        levels.append(mu)
        errors.append((mu - true_mu) / se)
        sds.append(sd)
    assert abs(np.mean(levels) - true_mu) < 0.15e-3
    assert np.median(sds) == pytest.approx(noise, rel=0.1)
    assert 0.6 < np.std(errors) < 1.5  # the standard error is about right
    assert np.mean(np.maximum(true_mu + noise * rng.standard_normal(10000), 0.0)) > 1.5 * true_mu  # the plain mean lies high
    with pytest.raises(ValueError, match="at least 3 values and 2 above 0"):
        sw.censored_level(np.array([0.0, 0.0, 0.001]))


def test_plant_window_and_twin_factor_are_the_documented_laws():
    sw = _load("sugar_window")
    assert sw.plant_window(0.002)[0] == pytest.approx(2.5 / math.sqrt(2 * math.pi), rel=1e-12)
    assert sw.plant_window(0.001)[0] == pytest.approx(0.80, abs=0.01)
    assert sw.plant_window(0.0003)[0] == pytest.approx(0.53, abs=0.01)
    h = 1e-8
    for f, s in ((sw.plant_window, 0.0007), (lambda x: sw.twin_factor(x, 2e-4, 0.1), 0.0015)):
        v, slope = f(s)
        fd = (math.log(f(s + h)[0]) - math.log(f(s - h)[0])) / (2 * h) * 1e-3 * 100.0
        assert slope == pytest.approx(fd, rel=1e-5)


def test_randomised_pit_is_uniform_with_a_point_mass_at_the_floor():
    """Coverage is read through the randomised PIT (benchmarks/calibration.py, diagnostics.json):
    readings drawn from the predictive itself, clipped at 0 (a third of them at 0), fall inside
    the central 90 % and 50 % intervals at the nominal rates; counting a reading at 0 as inside any interval that
    reaches down to 0 (the percentile check) would put far more inside the 50 % one."""
    from calibration.diagnostics import randomised_pit

    rng = np.random.default_rng(5)
    n, D = 4000, 400
    mu = rng.uniform(-0.001, 0.003, n)
    draws = np.maximum(mu + 0.002 * rng.standard_normal((D, n)), 0.0)
    y = np.maximum(mu + 0.002 * rng.standard_normal(n), 0.0)
    assert 0.25 < np.mean(y == 0) < 0.45
    u = randomised_pit(draws, y, rng)
    assert np.mean(np.abs(u - 0.5) <= 0.45) == pytest.approx(0.90, abs=0.02)
    assert np.mean(np.abs(u - 0.5) <= 0.25) == pytest.approx(0.50, abs=0.03)
    lo, hi = np.percentile(draws, [25, 75], axis=0)
    assert np.mean((y >= lo) & (y <= hi)) > 0.6


def test_true_sugar_is_the_plants_noise_free_record_at_the_assays():
    """The benchmark's 'true' column: the demo's truth.parquet at each substrate assay of the
    calibration data, in the order the assays are collected; readings are that plus noise, floored
    at 0 (so no reading is negative and the truth is never below 0)."""
    import pandas as pd

    from calibration.infer import load_history
    from calibration.model import build_data
    from calibration.spec import load_strain

    sw = _load("sugar_window")
    spec = load_strain(sw.STRAIN)
    bs, recipes = load_history(spec)
    data = build_data(spec, bs, recipes)
    true = sw._true_sugar(spec, data, bs)
    t = pd.read_parquet(spec.data_dir / "truth.parquet")
    t = t[t["variable"] == "substrate"]
    rows = []
    for b, batch in enumerate(data.batches):
        m = np.asarray(data.obs_mask["substrate"][b])
        for tt in np.asarray(data.obs_t["substrate"][b])[m]:
            g = t[(t["batch"] == batch) & (np.abs(t["time_h"] - tt) < 1e-9)]
            assert len(g) == 1, (batch, tt)
            rows.append(float(g["value"].iloc[0]))
    np.testing.assert_array_equal(true, np.array(rows))
    assert np.all(true >= 0) and 0.0005 < np.median(true) < 0.005  # a few mg/L in the fed phase
