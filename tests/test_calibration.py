"""Calibration: strain-file validation, data packing, posterior provenance (fast checks)."""

from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest

import twin  # noqa: F401
from calibration.infer import FORMAT_VERSION, PosteriorError, load_posterior, save_posterior
from calibration.model import build_data, structure_hash
from calibration.spec import load_strain
from twin.data import batch_set_from_frames
from twin.errors import DataError, ScenarioError
from twin.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SYN = ROOT / "calibration/strains/synthetic_erythromycin.toml"


def _strain(tmp_path, text: str) -> Path:
    base = SYN.read_text()
    p = tmp_path / "strain.toml"
    p.write_text(base.replace('scenario = "../../scenarios/erythromycin_like.toml"',
                              f'scenario = "{ROOT / "scenarios/erythromycin_like.toml"}"') + text)
    return p


def test_strain_loads():
    spec = load_strain(SYN)
    assert spec.parameter_names == ["kinetics.mu_max", "kinetics.beta_max", "kinetics.Y_XS", "kinetics.m_S"]
    assert spec.batch_effects == ("mu_max", "beta_max")


def test_unknown_parameter(tmp_path):
    p = _strain(tmp_path, "")
    p.write_text(p.read_text().replace("m_S = { median", "m_Z = { median"))
    with pytest.raises(ScenarioError, match=r"strain.toml: field 'parameters.m_Z': unknown parameter"):
        load_strain(p)


def test_prior_outside_physical_range(tmp_path):
    p = _strain(tmp_path, "")
    p.write_text(p.read_text().replace("Y_XS = { median = 0.4", "Y_XS = { median = 4.0"))
    with pytest.raises(ScenarioError, match=r"parameters.Y_XS.median': prior median outside the physical range .*got 4.0"):
        load_strain(p)


def test_unobserved_variable(tmp_path):
    p = _strain(tmp_path, "")
    p.write_text(p.read_text().replace("volume = { sd = 300.0", "viscosity = { sd = 300.0"))
    with pytest.raises(ScenarioError, match=r"observations.viscosity': the model does not observe this variable"):
        load_strain(p)


def test_unknown_key(tmp_path):
    p = _strain(tmp_path, "")
    p.write_text(p.read_text().replace("chains = 2", "chains = 2\nchain_method = 'x'"))
    with pytest.raises(ScenarioError, match=r"field 'inference.chain_method': unknown key"):
        load_strain(p)


def _tiny_set(with_product: bool, t_max: float = 170.0):
    rows = [("B1", 0.0, "biomass", 1.0, "g/L"), ("B1", t_max, "biomass", 20.0, "g/L")]
    if with_product:
        rows.append(("B1", 100.0, "product", 1.0, "g/L"))
    long = pd.DataFrame(rows, columns=["batch", "time_h", "variable", "value", "unit"])
    return batch_set_from_frames(long, pd.DataFrame({"batch": ["B1"], "strain": ["s"]}))


def test_no_product_measured_is_an_error():
    spec = load_strain(SYN)
    with pytest.raises(DataError, match=r"field 'product': no batch has the product measured"):
        build_data(spec, _tiny_set(False), {"B1": spec.scenario.recipe})


def test_posterior_roundtrip_and_structure_check(tmp_path):
    spec = load_strain(SYN)
    idata = az.from_dict(posterior={"mu_max": np.ones((1, 5))})
    idata.attrs.update({"format_version": FORMAT_VERSION, "model_structure": structure_hash(spec.scenario.model),
                        "strain": spec.name, "scenario": spec.scenario.name})
    path = save_posterior(idata, tmp_path / "posterior.nc")
    again = load_posterior(path, model=spec.scenario.model)
    assert np.allclose(np.asarray(again.posterior["mu_max"]), 1.0, rtol=0, atol=0)
    other = load_scenario(ROOT / "scenarios/penicillin_like.toml").model
    with pytest.raises(PosteriorError, match=r"posterior.nc: field 'model_structure': posterior was made for another model structure"):
        load_posterior(path, model=other)
    assert not list(tmp_path.glob(".posterior.nc.*")), "no temporary file left behind"


def test_not_a_posterior(tmp_path):
    bad = tmp_path / "x.nc"
    bad.write_text("not netcdf")
    with pytest.raises(PosteriorError, match="not a readable NetCDF posterior"):
        load_posterior(bad)


def test_unknown_batch_parameterisation(tmp_path):
    p = _strain(tmp_path, "")
    p.write_text(p.read_text().replace("sd_prior = ", 'parameterisation = "centered"\nsd_prior = '))
    with pytest.raises(ScenarioError, match=r"field 'batch_effects.parameterisation': unknown parameterisation "
                                            r"of the batch effects.*centered.*non-centred, centred"):
        load_strain(p)


def test_centred_batch_effects_are_the_same_model_in_other_coordinates():
    """The centred model samples each batch's log-value b = lg + tau eps instead of eps: at
    corresponding points the potentials differ by exactly the Jacobian, sum over batch effects of
    B log tau, and the centred model's deterministic eps is the non-centred one's."""
    import dataclasses

    import jax
    from numpyro.handlers import condition, seed, trace

    from calibration.infer import _complete_start, _deterministic, _model_fn, _start, load_history
    from calibration.vi import potential

    spec = load_strain(SYN)
    bs, recipes = load_history(spec)
    data = build_data(spec, bs.select(list(bs.batch_ids)[:2]), recipes)
    cen = dataclasses.replace(spec, batch_parameterisation="centred")
    pot_n, pot_c = potential(_model_fn(spec, data), seed=0), potential(_model_fn(cen, data), seed=0)
    rng = np.random.default_rng(3)
    x_n = pot_n.x0 + 0.3 * rng.standard_normal(pot_n.dim)
    point = {k: np.asarray(v)[0] for k, v in pot_n.constrain(x_n[None]).items()}
    full = _complete_start(cen, point)
    assert all(f"log_{k}" in full for k in spec.batch_effects)
    x_c = _start(pot_c, full)
    jac = sum(data.n_batches * np.log(point[f"tau_{k}"]) for k in spec.batch_effects)
    assert pot_c(x_c)[0] == pytest.approx(pot_n(x_n)[0] + jac, rel=0, abs=1e-8)
    # the deterministic eps of the centred model, in the model and from SVI-style draws
    site_values = {k: v for k, v in full.items() if not k.startswith("eps_")}
    tr = trace(seed(condition(_model_fn(cen, data), site_values), jax.random.PRNGKey(0))).get_trace()
    draws = {k: np.asarray(v)[None] for k, v in site_values.items()}
    det = _deterministic(cen, data, draws)
    for k in spec.batch_effects:
        np.testing.assert_allclose(np.asarray(tr[f"eps_{k}"]["value"]), point[f"eps_{k}"], rtol=1e-10)
        np.testing.assert_allclose(det[f"eps_{k}"][0, 0], point[f"eps_{k}"], rtol=1e-10)


def _potential(U, dim: int):
    """`calibration.vi.Potential` of `U` on R^dim (one site, `x`), starting at 0."""
    import jax
    import numpy as np

    from calibration.vi import Potential

    return Potential(np.zeros(dim), jax.jit(jax.value_and_grad(U)), lambda x: {"x": x}, {})


def _toy_potential(hole):
    """A standard normal potential in 2-D, infinite where `hole(x)` holds."""
    import jax.numpy as jnp

    return _potential(lambda x: jnp.where(hole(x), jnp.inf, 0.5 * jnp.sum(x**2)), 2)


def test_gaussian_vi_skips_rare_failing_draws_and_refuses_a_failing_region():
    """VI on a standard normal whose potential is infinite beyond x0 > 2.9 (0.2 % of the mass):
    the few draws there are skipped and counted, and the fit still finds N(0, I) (means within
    0.15, SDs within 15 %). Infinite on the half-space x0 > 0 it is an error that names the count."""
    import numpy as np

    from calibration.vi import gaussian_vi
    from twin.errors import TwinError

    fit = gaussian_vi(_toy_potential(lambda x: x[0] > 2.9), np.zeros(2), np.eye(2), steps=1500, seed=0)
    assert 0 < fit.rejected <= 0.02 * 1500
    assert np.isnan(fit.losses).sum() == fit.rejected
    np.testing.assert_allclose(fit.loc, 0.0, atol=0.15)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.covariance)), 1.0, rtol=0.15)
    with pytest.raises(TwinError, match="not finite at .* draws"):
        gaussian_vi(_toy_potential(lambda x: x[0] > 0.0), np.zeros(2), np.eye(2), steps=300, seed=0)


def test_laplace_recovers_a_gaussian_and_caps_a_flat_direction():
    """On a Gaussian potential with variances 0.25, 0.01 and 1e4 (a direction the data leave
    flat), the Laplace approximation finds the mode and the first two variances; the flat one is
    capped at `max_variance` (a wide start sank VI on a real history: calibration.vi.laplace)."""
    import jax.numpy as jnp
    import numpy as np

    from calibration.vi import laplace

    m = jnp.array([0.3, -0.2, 0.1])
    prec = jnp.array([4.0, 100.0, 1e-4])
    pot = _potential(lambda x: 0.5 * jnp.sum(prec * (x - m) ** 2), 3)
    mode, cov, ok = laplace(pot)
    assert ok
    np.testing.assert_allclose(mode[:2], m[:2], atol=1e-3)
    np.testing.assert_allclose(np.diag(cov), [0.25, 0.01, 1.0], rtol=1e-6)
    _, cov2, _ = laplace(pot, max_variance=4.0)
    np.testing.assert_allclose(np.diag(cov2), [0.25, 0.01, 4.0], rtol=1e-6)


def test_gaussian_vi_with_two_draws_per_step_recovers_a_correlated_gaussian():
    """Two draws per step (evaluated in threads): VI from a rough start (unit covariance, mean
    off by 0.3) finds N(m, S) with correlation 0.8 (means within 0.08, covariance within 0.1,
    three seeds; with one draw per step the mean is off by 0.07-0.13)."""
    import jax.numpy as jnp
    import numpy as np

    from calibration.vi import gaussian_vi

    m = jnp.array([0.5, -1.0])
    S = jnp.array([[1.0, 0.8], [0.8, 1.0]])
    P = jnp.linalg.inv(S)
    pot = _potential(lambda x: 0.5 * (x - m) @ P @ (x - m), 2)
    for seed in range(3):
        fit = gaussian_vi(pot, np.array([0.8, -0.7]), np.eye(2), steps=1500, seed=seed, draws_per_step=2)
        assert fit.rejected == 0
        np.testing.assert_allclose(fit.loc, m, atol=0.08)
        np.testing.assert_allclose(fit.covariance, S, atol=0.1)


def test_censored_loglik_is_the_normal_cdf_below_the_floor_and_stays_finite_in_the_tail():
    import jax
    import jax.numpy as jnp
    import scipy.stats

    from calibration.model import censored_loglik

    pred = jnp.asarray([0.0, 0.5, 2.0, 300.0, 1.0])
    sd = jnp.asarray([1.0, 0.2, 0.5, 1.0, 1.0])
    cens = jnp.asarray([True, True, True, True, False])
    want = scipy.stats.norm.logcdf((0.1 - np.asarray(pred)) / np.asarray(sd))[:4].sum()
    assert float(censored_loglik(pred, sd, 0.1, cens)) == pytest.approx(want, rel=1e-10)
    g = jax.grad(lambda p: censored_loglik(p, sd, 0.1, cens))(pred)
    assert np.all(np.isfinite(np.asarray(g))) and float(g[4]) == 0.0  # 300 SDs into the tail: finite


def test_a_reading_at_or_below_the_floor_says_only_at_most_the_floor(tmp_path):
    """With `floor`, the potential does not depend on a censored reading's value (only that it is
    at or below the floor), still depends on the exact ones, and equals the plain model's when no
    reading is at or below the floor; predictive readings are raised to the floor."""
    import dataclasses

    from calibration.diagnostics import predictive
    from calibration.infer import _model_fn, load_history
    from calibration.vi import potential

    p = _strain(tmp_path, "")
    p.write_text(p.read_text().replace("substrate = { sd = 0.05, cv = 0.1 }",
                                       "substrate = { sd = 0.05, cv = 0.1, floor = 0.2 }"))
    spec = load_strain(p)
    assert [o.floor for o in spec.observations if o.variable == "substrate"] == [0.2]
    plain = dataclasses.replace(spec, observations=tuple(dataclasses.replace(o, floor=None)
                                                         for o in spec.observations))
    bs, recipes = load_history(spec)
    data = build_data(spec, bs.select(list(bs.batch_ids)[:2]), recipes)
    y, m = np.asarray(data.obs_y["substrate"]), np.asarray(data.obs_mask["substrate"])
    cens = m & (y <= 0.2)
    assert 3 <= cens.sum() < m.sum() - 3  # some readings of each kind

    def U(s, values):
        d = dataclasses.replace(data, obs_y={**data.obs_y, "substrate": values})
        pot = potential(_model_fn(s, d), seed=0)
        return pot, pot(pot.x0 + 0.1)[0]

    pot, base = U(spec, data.obs_y["substrate"])
    moved = np.where(cens, y * 0.5 - 0.01, y)  # censored readings moved, still <= floor
    assert U(spec, moved)[1] == pytest.approx(base, rel=0, abs=1e-9)
    exact = np.where(m & ~cens, y * 1.05, y)
    assert abs(U(spec, exact)[1] - base) > 1e-3
    # no reading at or below the floor: the plain model's potential
    lifted = np.where(cens, 0.25, y)
    assert U(spec, lifted)[1] == pytest.approx(U(plain, lifted)[1], rel=0, abs=1e-9)
    # the predictive reads as the lab does: never below the floor, and at it where censored
    draws = {k: np.asarray(v) for k, v in pot.constrain(pot.x0[None] + 0.1).items()}
    pred = predictive(spec, data, draws, noise=True)["substrate"]
    assert pred.min() == 0.2


@pytest.mark.parametrize("line, bad, message", [
    ("substrate = { sd = 0.05, cv = 0.1 }", "floor = 'zero'", r"'observations.substrate.floor': must be a finite number"),
    ("product = { sd = 0.02, cv = 0.05 }", "timing_h = -1.0", r"'observations.product.timing_h': must be >= 0"),
])
def test_bad_observation_setting_is_named(tmp_path, line, bad, message):
    p = _strain(tmp_path, "")
    p.write_text(p.read_text().replace(line, line[:-2] + ", " + bad + " }"))
    with pytest.raises(ScenarioError, match=r"field " + message):
        load_strain(p)


def test_grid_slope_is_exact_for_a_quadratic_inside_and_first_order_at_the_ends():
    import jax
    import jax.numpy as jnp

    from twin.simulate import grid_slope

    grid = np.arange(0.0, 10.01, 0.5)
    y = 3.0 + 2.0 * grid - 0.25 * grid**2
    want = 2.0 - 0.5 * grid
    for values in (y, jnp.asarray(y)):
        got = np.asarray(grid_slope(values, grid))
        np.testing.assert_allclose(got[1:-1], want[1:-1], rtol=0, atol=1e-12)
        # one-sided at the ends: off by half a step times the curvature
        np.testing.assert_allclose(got[[0, -1]], want[[0, -1]] + np.array([-0.125, 0.125]), atol=1e-12)
    assert isinstance(grid_slope(jnp.asarray(y), grid), jax.Array)


def test_timing_error_adds_the_slope_times_the_timing_to_the_assay_variance(tmp_path):
    """`timing_h`: the product readings' SD is sqrt(a^2 + (c y)^2 + (d y')^2) with y' the slope of
    the simulated titer at the reading; with d = 0 the likelihood is the plain model's; a
    posterior without the timing site is refused by name, and so is one with a noise site the strain
    file no longer has."""
    import dataclasses

    import numpyro

    from calibration.infer import check_noise_sites, load_history
    from calibration.model import calibration_model, observe
    from twin.simulate import grid_slope

    p = _strain(tmp_path, "")
    p.write_text(p.read_text().replace("product = { sd = 0.02, cv = 0.05 }",
                                       "product = { sd = 0.02, cv = 0.05, timing_h = 4.0 }"))
    spec = load_strain(p)
    plain = load_strain(SYN)
    assert [o.timing_h for o in spec.observations if o.variable == "product"] == [4.0]
    bs, recipes = load_history(spec)
    data = build_data(spec, bs.select(list(bs.batch_ids)[:2]), recipes)

    def run(s, values):
        """(trace, trajectory) of the model with `values` substituted."""
        def fn():
            return calibration_model(s, s.scenario.model, data, dt=float(s.inference["dt"]))

        fn = numpyro.handlers.substitute(numpyro.handlers.seed(fn, 0), data=values)
        tr = numpyro.handlers.trace(fn).get_trace()
        return tr, fn()

    tr, _ = run(spec, {})
    base = {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}
    values = {**base, "sd_product": 0.02, "cv_product": 0.04, "timing_product": 3.0}
    tr, traj = run(spec, values)
    site = tr["obs_product"]
    t, grid = np.asarray(data.obs_t["product"]), np.asarray(data.grid)
    titer = np.asarray(observe(traj, "product"))
    y = np.stack([np.interp(t[b], grid, titer[b]) for b in range(len(t))])
    dy = np.stack([np.interp(t[b], grid, grid_slope(titer[b], grid)) for b in range(len(t))])
    want = np.sqrt(0.02**2 + (0.04 * y) ** 2 + (3.0 * dy) ** 2)
    m = np.asarray(data.obs_mask["product"])
    np.testing.assert_allclose(np.asarray(site["fn"].base_dist.scale)[m], want[m], rtol=1e-6)
    assert np.max(np.abs(3.0 * dy[m])) > 0.05  # the term matters somewhere
    # d = 0: the plain model's likelihood
    zero = run(spec, {**values, "timing_product": 0.0})[0]["obs_product"]
    flat = run(plain, {k: v for k, v in values.items() if k != "timing_product"})[0]["obs_product"]
    np.testing.assert_allclose(np.asarray(zero["fn"].log_prob(zero["value"])),
                               np.asarray(flat["fn"].log_prob(flat["value"])), rtol=1e-9)
    # a posterior made before timing_h was added lacks the site: refused by name
    sites = [f"{k}_{o.variable}" for o in plain.observations for k in ("sd", "cv") if getattr(o, k) > 0]
    idata = az.from_dict(posterior={k: np.full((1, 2), 0.1) for k in sites})
    with pytest.raises(PosteriorError, match=r"post.nc: field 'timing_product': the posterior has no noise site"):
        check_noise_sites(spec, idata, "post.nc")
    check_noise_sites(dataclasses.replace(spec, observations=plain.observations), idata, "post.nc")
    # a posterior with a noise site the strain file dropped: its other noise terms were fitted
    # beside it, so it is refused too
    extra = az.from_dict(posterior={k: np.full((1, 2), 0.1) for k in sites + ["timing_product", "sd_precursor"]})
    check_noise_sites(spec, az.from_dict(posterior={k: np.full((1, 2), 0.1) for k in sites + ["timing_product"]}),
                      "post.nc")
    with pytest.raises(PosteriorError, match=r"post.nc: field 'sd_precursor': the posterior has a noise site "
                                             r"'sd_precursor' that the strain file's observation model of precursor does not"):
        check_noise_sites(spec, extra, "post.nc")


def test_assay_readings_spread_as_the_likelihood_says_with_a_timing_error():
    """200 000 simulated readings of a true 10 g/L rising 0.5 g/L/h: their SD is
    sqrt(sd^2 + (cv y)^2 + (timing y')^2) within 1 %; where the slope is 0 the timing adds nothing."""
    from calibration.diagnostics import assay_readings

    rng = np.random.default_rng(0)
    true = np.full(200_000, 10.0)
    y = assay_readings(true, 0.1, 0.03, None, rng, timing=2.0, slope=0.5)
    assert np.std(y) == pytest.approx(np.sqrt(0.1**2 + 0.3**2 + 1.0**2), rel=0.01)
    flat = assay_readings(true, 0.1, 0.03, None, rng, timing=2.0, slope=0.0)
    assert np.std(flat) == pytest.approx(np.hypot(0.1, 0.3), rel=0.01)
