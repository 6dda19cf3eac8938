"""The forecast benchmark run with tiny arguments (STYLE.md rule 13): its own file, so that the
test runner can give it to one worker while the other benchmarks run on the other."""

from __future__ import annotations

import pytest

from test_benchmarks import _load


@pytest.mark.slow
def test_forecast_benchmark_with_tiny_arguments(capsys, tmp_path):
    """One held-out plant batch forecast at one horizon with a short calibration: every headline
    figure is printed as `name: value`, with the posterior used; the posterior is cached under a
    key of what it depends on (a second run reuses it, an edited strain file changes the key)."""
    pytest.importorskip("pensimpy")
    bench = _load("forecast")
    # the shipped strain with one mode search instead of four (a smoke run, not a fit to trust)
    strain = tmp_path / "one_start.toml"
    strain.write_text(bench.STRAIN.read_text()
                      .replace('scenario = "../../scenarios/', f'scenario = "{bench.ROOT}/scenarios/')
                      .replace("laplace_starts = 4", "laplace_starts = 1"))
    assert "laplace_starts = 1" in strain.read_text()
    args = ["--n-batches", "1", "--horizons", "115", "--faults", "", "--n-draws", "8",
            "--svi-steps", "30", "--error-folds", "0", "--cache", str(tmp_path),
            "--strain", str(strain)]
    figures = bench.main(args)
    out = capsys.readouterr().out
    assert "calibrating the strain (SVI)" in out
    for name in ("posterior", "posterior_key", "mape_50pct", "coverage90_50pct",
                 "mape_hist_mean_50pct", "mape_regression_50pct", "structural_sd_50pct",
                 "forecast_s_median", "twin_beats_both_baselines_every_horizon"):
        assert f"\n{name}: " in out, name
    key = figures["posterior_key"]
    assert figures["posterior"] == str(tmp_path / "posterior" / key / "posterior.nc")
    assert 0.0 <= figures["mape_50pct"] < 50.0 and figures["n_heldout"] == 1
    said = []
    again, ident = bench.calibrated_posterior(None, tmp_path, log=said.append, svi_steps=30,
                                              strain_file=strain)
    assert again == tmp_path / "posterior" / key / "posterior.nc" and ident["key"] == key
    assert said == []  # reused, not recalibrated
    edited = tmp_path / "edited.toml"
    edited.write_text(strain.read_text().replace("laplace_starts = 1", "laplace_starts = 2"))
    edited, used = bench.posterior_key(edited, svi_steps=30), bench.posterior_key(strain, svi_steps=30)
    assert used["key"] == key and edited["key"] != key
    assert edited["model_structure"] == used["model_structure"]
    assert bench.posterior_key(strain)["key"] != key  # the SVI steps are part of the key
    assert bench.posterior_key(svi_steps=30)["key"] != key  # so is the strain file
    # the structural-error re-analysis reads that run's saved errors and forecasts
    capsys.readouterr()
    re = _load("structural_error").main(["--reps", "20", "--run", str(tmp_path / "out")])
    out = capsys.readouterr().out
    for name in ("synthetic_uneven_v_s5pct_coverage90_posterior", "structural_sd_50pct_moments",
                 "history_loo_coverage90_50pct_posterior", "heldout_coverage90_50pct_posterior"):
        assert f"\n{name}: " in out, name
    assert 0.0 <= re["heldout_coverage90_50pct_posterior"] <= 1.0
