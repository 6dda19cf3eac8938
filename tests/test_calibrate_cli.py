"""`twin calibrate` end to end (SVI, few steps) on the synthetic strain: every output is written,
the posterior loads against the strain's model, bad input is one clear line."""

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from calibration.infer import load_posterior
from calibration.spec import load_strain
from twin.cli import app

ROOT = Path(__file__).resolve().parents[1]
SYN = ROOT / "calibration/strains/synthetic_erythromycin.toml"


@pytest.mark.slow
def test_calibrate_svi_writes_every_output(tmp_path):
    out = tmp_path / "cal"
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(out), "--method", "svi",
                                   "--svi-steps", "30", "--samples", "50"])
    assert res.exit_code == 0, res.output
    for name in ("posterior.nc", "summary.csv", "fit.png", "parameters.png", "diagnostics.json"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "summary.csv")
    spec = load_strain(SYN)
    n = len(spec.parameter_names)
    assert list(table["parameter"])[:n] == spec.parameter_names
    # then the batch SDs and every noise scale, with their half-normal priors from the strain file
    hyper = table.iloc[n:].set_index("parameter")
    want = [f"batch_sd.{k}" for k in sorted(spec.batch_effects)]
    for prefix, key in (("sd", "sd"), ("cv", "cv")):
        want += [f"noise.{o.variable}.{prefix}" for o in sorted(spec.observations, key=lambda o: o.variable)
                 if getattr(o, key) > 0]
    assert list(hyper.index) == want
    assert hyper.loc["noise.product.cv", "prior"] == "half-normal(scale=0.05)"
    assert hyper.loc["noise.volume.sd", "unit"] == "L"
    assert hyper.loc["batch_sd.mu_max", "prior"] == f"half-normal(scale={spec.batch_sd_prior:g})"
    assert (table["q05"] <= table["q50"]).all() and (table["q50"] <= table["q95"]).all()
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["method"] == "svi" and len(diag["batches"]) == 6
    idata = load_posterior(out / "posterior.nc", model=load_strain(SYN).scenario.model)
    assert idata.posterior.sizes["draw"] == 50


def test_calibrate_bad_method_is_one_line(tmp_path):
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(tmp_path), "--method", "mcmc"])
    assert res.exit_code == 2
    assert "field '--method': must be nuts or svi (got 'mcmc')" in res.output
    assert "Traceback" not in res.output


def test_calibrate_missing_strain_file(tmp_path):
    res = CliRunner().invoke(app, ["calibrate", str(tmp_path / "nope.toml"), "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "nope.toml: strain file not found" in res.output


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """`twin demo --no-calibrate`: every scenario simulated, the history plotted, figures copied.
    (The demo's calibration step is `run_calibration` + `twin simulate --posterior`, tested above
    and in test_posterior.py; on the 12 IndPenSim batches it compiles for minutes, too long for CI.)"""
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "out"), "--figures", str(tmp_path / "fig"),
                                   "--no-calibrate"])
    assert res.exit_code == 0, res.output
    for name in ("demo_history.png", "penicillin_like_simulation.png", "erythromycin_like_simulation.png",
                 "penicillin_indpensim_simulation.png"):
        assert (tmp_path / "fig" / name).is_file(), name
    s = json.loads((tmp_path / "out/penicillin_like/summary.json").read_text())["summary"]
    assert s["final_titer_g_L"] > 0 and s["peak_volume_m3"] >= s["final_volume_m3"]
