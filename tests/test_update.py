"""`twin calibrate --update-with`: the old posterior predicts newly finished batches, the comparison
is booked correctly, the refit sees old + new batches and tightens, and bad input (a batch the
posterior already saw, a file that fails validation, a posterior of another model or prior) is
one clear line with exit 2 and nothing written.

The refusal and bookkeeping tests use a posterior built without inference (`_fake_posterior`:
right attributes, draws from the prior) and run in seconds; the end-to-end test calibrates the
synthetic strain on three batches (SVI) and updates it with two new ones from the same truth."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from calibration.infer import _to_idata, load_history, load_posterior, save_posterior
from calibration.model import build_data
from calibration.spec import load_strain
from calibration.synthetic import make_synthetic
from calibration.update import Prediction, check_batches, compare, start_values
from twin.cli import app
from twin.data import batch_set_from_frames, write_batches
from twin.forecast import observed_totals
from twin.recipe import write_recipe_csv

ROOT = Path(__file__).resolve().parents[1]
SYN = ROOT / "calibration/strains/synthetic_erythromycin.toml"


@pytest.fixture(scope="module")
def spec():
    return load_strain(SYN)


def write_synthetic(spec, d: Path, *, seed: int, n: int, prefix: str = "NEW") -> list[str]:
    """`n` synthetic batches of the strain (same truth, another seed) as a batch directory with
    recipes/<batch>.csv, renamed `<prefix>01...` (make_synthetic always names them SYN01...)."""
    hist = make_synthetic(spec, seed=seed, n_batches=n)
    ren = {b: f"{prefix}{i + 1:02d}" for i, b in enumerate(hist.batch_set.batch_ids)}
    long, table = hist.batch_set.long_table(), hist.batch_set.batches_table()
    long["batch"], table["batch"] = long["batch"].map(ren), table["batch"].map(ren)
    write_batches(batch_set_from_frames(long, table), d)
    for b, r in hist.recipes.items():
        write_recipe_csv(r, d / "recipes" / f"{ren[b]}.csv")
    return list(ren.values())


def _fake_idata(spec, data, *, n: int = 20, scale: float = 1.0, seed: int = 0):
    """A posterior of the strain's format made without inference: prior draws, the strain-level
    parameters' standardised values scaled by `scale` (a posterior that narrow)."""
    rng = np.random.default_rng(seed)
    post = {}
    for p in spec.priors:
        z = scale * rng.standard_normal((1, n))
        post[f"z_{p.key}"] = z
        post[p.key] = np.exp(np.log(p.median) + p.log_sd * z)
    for k in spec.batch_effects:
        post[f"tau_{k}"] = np.abs(rng.normal(0, spec.batch_sd_prior, (1, n)))
        post[f"eps_{k}"] = rng.standard_normal((1, n, data.n_batches))
    for o in spec.observations:
        for prefix, sd in (("sd_", o.sd), ("cv_", o.cv)):
            if sd > 0:
                post[prefix + o.variable] = np.abs(rng.normal(0, sd, (1, n)))
    return _to_idata(spec, data, post, {"diverging": np.zeros((1, n), bool)}, method="svi")


def _fake_posterior(spec, path: Path, batches=("SYN01", "SYN02"), **attrs) -> Path:
    bs, recipes = load_history(spec)
    idata = _fake_idata(spec, build_data(spec, bs.select(list(batches)), recipes))
    idata.attrs.update(attrs)
    return save_posterior(idata, path)


# ---------------------------------------------------------------------------------------------
# Bookkeeping on constructed cases


def test_compare_books_hit_miss_and_error():
    x = np.linspace(1.5, 2.5, 101)  # quantiles 5/50/95 %: 1.55, 2.0, 2.45
    hit = compare(x, 2.0)
    assert hit["hit"] is True and hit["error_pct"] == pytest.approx(0.0, abs=1e-12)
    assert (hit["q05"], hit["median"], hit["q95"]) == pytest.approx((1.55, 2.0, 2.45), rel=1e-12)
    miss = compare(x, 3.0)
    assert miss["hit"] is False and miss["error_pct"] == pytest.approx(-100 / 3, rel=1e-12)
    assert compare(x, 2.45)["hit"] is True and compare(x, 1.5)["hit"] is False  # closed interval
    none = compare(np.append(x, np.nan), None)  # non-finite draws dropped, nothing to compare
    assert none["hit"] is None and none["realised"] is None and none["median"] == pytest.approx(2.0)


def test_check_batches_on_a_known_prediction(spec):
    """Two hand-made batches against a prediction whose draws are constant in time: titer
    1.5..2.5 g/L, volume 1000 L. A: assays 2.0, 1.0, 2.0 (final hit, 2 of 3 inside); B: assays
    2.0, 2.2, 3.0 (final miss by -33.3 %, 2 of 3 inside). Total = titer x 1000 L."""
    rows = []
    for b, titers in (("A", (2.0, 1.0, 2.0)), ("B", (2.0, 2.2, 3.0))):
        for t, p in zip((0.0, 50.0, 100.0), titers):
            rows += [(b, t, "product", p, "g/L"), (b, t, "biomass", 1.0, "g/L"),
                     (b, t, "substrate", 1.0, "g/L"), (b, t, "volume", 1000.0, "L")]
    bs = batch_set_from_frames(pd.DataFrame(rows, columns=["batch", "time_h", "variable", "value", "unit"]))
    data = build_data(spec, bs, {b: spec.scenario.recipe for b in bs.batch_ids})
    D, G = 101, len(data.grid)
    titer = np.linspace(1.5, 2.5, D)[:, None, None] * np.ones((D, 2, G))
    mean = {"product": titer, "biomass": np.ones((D, 2, G)), "substrate": np.ones((D, 2, G)),
            "volume": 1000.0 * np.ones((D, 2, G)), "volume_L": 1000.0 * np.ones((D, 2, G)),
            "total_product": 1000.0 * titer}
    zero = (np.zeros(D), np.zeros(D), np.zeros(D))
    pred = Prediction(data, mean, {v: zero for v in ("product", "biomass", "substrate", "volume")}, 0)
    a, b = check_batches(pred, bs, recipe_sources={})
    assert a["final_titer_g_L"]["hit"] is True and a["final_titer_g_L"]["realised"] == 2.0
    assert b["final_titer_g_L"]["hit"] is False
    assert b["final_titer_g_L"]["error_pct"] == pytest.approx(-100 / 3, rel=1e-9)
    assert a["total_product_kg"]["realised"] == pytest.approx(2.0, rel=1e-12)
    assert a["total_product_kg"]["hit"] is True and b["total_product_kg"]["hit"] is False
    assert a["total_product_kg"]["median"] == pytest.approx(2.0, rel=1e-9)
    for c in (a, b):
        assert c["assays_in_90pct_interval"]["product"] == {"inside": 2, "n": 3, "fraction": pytest.approx(2 / 3)}
        assert c["assays_in_90pct_interval"]["volume"]["fraction"] == 1.0
        assert c["end_h"] == 100.0


def test_start_values_lay_out_old_batches_and_put_new_ones_at_the_population(spec):
    bs, recipes = load_history(spec)
    idata = _fake_idata(spec, build_data(spec, bs.select(["SYN01", "SYN02"]), recipes), n=50)
    start = start_values(idata, ["SYN02", "NEW01", "SYN01"])
    eps = np.asarray(idata.posterior["eps_mu_max"])[0]  # (draws, batch) in the order SYN01, SYN02
    np.testing.assert_allclose(start["eps_mu_max"], [eps[:, 1].mean(), 0.0, eps[:, 0].mean()], rtol=1e-12)
    tau = np.asarray(idata.posterior["tau_mu_max"]).ravel()
    assert start["tau_mu_max"] == pytest.approx(np.exp(np.log(tau).mean()), rel=1e-12)
    assert start["z_Y_XS"] == pytest.approx(np.asarray(idata.posterior["z_Y_XS"]).mean(), rel=1e-12)
    assert "Y_XS" not in start  # deterministic sites are not latent


# ---------------------------------------------------------------------------------------------
# Refusals: exit 2, one line naming file, field, rule and value; nothing written


def _snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_duplicate_batch_is_refused_and_old_posterior_untouched(spec, tmp_path):
    out = tmp_path / "cal"
    _fake_posterior(spec, out / "posterior.nc", batches=("SYN01", "SYN02"))
    new = tmp_path / "new"
    write_synthetic(spec, new, seed=5, n=2, prefix="SYN")  # SYN01, SYN02: both already seen
    before = _snapshot(out)
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(out), "--update-with", str(new),
                                   "--method", "svi"])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert f"{new}: field 'batch': batch is already in the old posterior's data (got 'SYN01')" in line
    assert "Traceback" not in res.output
    assert _snapshot(out) == before  # nothing written, nothing renamed


def test_posterior_of_another_model_is_refused(spec, tmp_path):
    old = _fake_posterior(spec, tmp_path / "old.nc", model_structure="0123456789abcdef")
    new = tmp_path / "new"
    write_synthetic(spec, new, seed=5, n=1)
    out = tmp_path / "cal"
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(out), "--update-with", str(new),
                                   "--posterior", str(old)])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert "field 'model_structure': posterior was made for another model structure (0123456789abcdef" in line
    assert not out.exists()


def test_posterior_with_other_priors_is_refused(spec, tmp_path):
    info = json.loads(load_posterior(_fake_posterior(spec, tmp_path / "p.nc")).attrs["parameters"])
    info["mu_max"]["prior_median"] = 0.2
    old = _fake_posterior(spec, tmp_path / "old.nc", parameters=json.dumps(info))
    new = tmp_path / "new"
    write_synthetic(spec, new, seed=5, n=1)
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(tmp_path / "cal"), "--update-with",
                                   str(new), "--posterior", str(old)])
    assert res.exit_code == 2, res.output
    assert "the strain file's prior of 'mu_max' differs from the posterior's (posterior: median 0.2, " \
           "log_sd 0.3; strain file: median 0.1, log_sd 0.3)" in " ".join(res.output.split())


def test_new_batch_file_failing_validation_is_refused(spec, tmp_path):
    old = _fake_posterior(spec, tmp_path / "old.nc")
    new = tmp_path / "new"
    write_synthetic(spec, new, seed=5, n=1)
    m = pd.read_csv(new / "measurements.csv")
    i = int(np.flatnonzero(m["variable"] == "biomass")[2])
    m.loc[i, "value"] = -1.0  # a negative biomass assay
    m.to_csv(new / "measurements.csv", index=False)
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(tmp_path / "cal"), "--update-with",
                                   str(new), "--posterior", str(old)])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert f"{new / 'measurements.csv'} row {i + 2}" in line and "(got -1.0)" in line
    assert not (tmp_path / "cal").exists()


def test_no_old_posterior_and_posterior_without_update(tmp_path):
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(tmp_path / "cal"), "--update-with",
                                   str(tmp_path)])
    assert res.exit_code == 2
    assert f"{tmp_path / 'cal' / 'posterior.nc'}: field '--posterior': no posterior to update" in \
        " ".join(res.output.split())
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(tmp_path / "cal"), "--posterior",
                                   str(tmp_path / "p.nc")])
    assert res.exit_code == 2
    assert "field '--posterior': --posterior names the posterior to update: give --update-with too" in \
        " ".join(res.output.split())


def test_collapsed_refit_fails_and_the_posterior_updated_from_is_kept(spec, tmp_path, monkeypatch):
    """The refit replaced by a posterior 1e4 times narrower than the old one: written, but a
    failed diagnostic (exit 3). Updating from OUT/posterior.prev.nc while OUT/posterior.nc exists
    must not copy the latter over the former."""
    from calibration import update
    from calibration.infer import CalibrationResult

    def narrow_refit(spec_all, *, method=None, batches=None, progress=None, **kw):
        bs, recipes = load_history(spec_all)
        data = build_data(spec_all, bs.select(batches), recipes)
        return CalibrationResult(spec_all, data, _fake_idata(spec_all, data, scale=1e-4), "svi", 0.0)

    monkeypatch.setattr(update, "calibrate", narrow_refit)
    out = tmp_path / "cal"
    prev = _fake_posterior(spec, out / "posterior.prev.nc")
    _fake_posterior(spec, out / "posterior.nc", batches=("SYN03",))
    prev_bytes = prev.read_bytes()
    new = tmp_path / "new"
    write_synthetic(spec, new, seed=5, n=1)
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(out), "--update-with", str(new),
                                   "--posterior", str(prev)])
    assert res.exit_code == 3, res.output
    line = " ".join(res.output.split())
    assert "calibration FAILED its diagnostics: the updated posterior collapsed: the SD of" in line
    assert "with 1 more batches on 2 (about x0.82 expected" in line
    assert prev.read_bytes() == prev_bytes
    rep = json.loads((out / "update.json").read_text())
    assert rep["new_posterior"]["kept_previous_as"] is None and rep["problems"]
    assert json.loads(load_posterior(out / "posterior.nc").attrs["batches"]) == ["SYN01", "SYN02", "NEW01"]
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["ok"] is False and diag["problems"] == rep["problems"]


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_update_end_to_end(spec, tmp_path):
    """Calibrate on SYN01-03 (SVI), update with two new batches of the same truth: the old
    posterior's intervals hold the realised finals (realised read independently from the files),
    the new posterior saw 5 batches under a new data hash, no parameter's SD grows, the old
    posterior is kept, and the outputs are written."""
    from calibration.run import run_calibration

    out = tmp_path / "cal"
    run_calibration(SYN, out, method="svi", svi_steps=30, samples=200, batches=["SYN01", "SYN02", "SYN03"])
    old_bytes = (out / "posterior.nc").read_bytes()
    old = load_posterior(out / "posterior.nc")
    new = tmp_path / "new"
    ids = write_synthetic(spec, new, seed=1, n=2)
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(out), "--update-with", str(new),
                                   "--method", "svi", "--svi-steps", "30", "--samples", "200"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "update.json").read_text())
    from twin.data import load_batch_dir

    data = load_batch_dir(new)
    for c, b in zip(rep["batches"], ids):
        assert c["batch"] == b
        real = observed_totals(data[b])
        ft, tp = c["final_titer_g_L"], c["total_product_kg"]
        assert ft["realised"] == pytest.approx(real["final_titer"], rel=1e-12)
        assert tp["realised"] == pytest.approx(real["total_product"] / 1000, rel=1e-12)
        for q in (ft, tp):
            assert q["hit"] == (q["q05"] <= q["realised"] <= q["q95"])
            assert q["hit"], (b, q)
            assert abs(q["error_pct"]) < 15.0
    assert rep["summary"]["assay_fraction_inside"] >= 0.75
    assert rep["problems"] == []
    new_post = load_posterior(out / "posterior.nc", model=spec.scenario.model)
    assert json.loads(new_post.attrs["batches"]) == ["SYN01", "SYN02", "SYN03", *ids]
    assert new_post.attrs["data_hash"] != old.attrs["data_hash"]
    assert json.loads(new_post.attrs["extra_data"]) == [str(new.resolve())]
    assert (out / "posterior.prev.nc").read_bytes() == old_bytes
    for key in ("Y_XS", "m_S", "beta_max"):
        p = rep["parameters"][key]
        assert p["new"]["sd"] <= 1.05 * p["old"]["sd"], (key, p)
        assert p["new"]["sd"] == pytest.approx(float(np.asarray(new_post.posterior[key]).std(ddof=1)), rel=1e-9)
    for name in ("update.png", "fit.png", "parameters.png", "summary.csv", "diagnostics.json"):
        assert (out / name).is_file(), name
    assert "finals inside their 90 % interval: 4/4" in res.output
    # a second update with the same batches is refused: they are in the posterior's data now
    res = CliRunner().invoke(app, ["calibrate", str(SYN), "--out", str(out), "--update-with", str(new)])
    assert res.exit_code == 2 and "batch is already in the old posterior's data (got 'NEW01')" in \
        " ".join(res.output.split())
