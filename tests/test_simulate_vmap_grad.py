"""simulate under transformations: gradients vs finite differences, vmap, no recompiles, failures.

Gradients are checked on the fixed-step solver (recipe breakpoints on the grid), whose output is
a smooth function of parameters and recipe values, so Richardson-extrapolated central
differences in float64 are accurate to about 1e-9; an adaptive solver's step-size decisions make
its finite differences noisy (see DESIGN.md, "Numerics"). FixedGrid is a linearly implicit
Rosenbrock method (ROS2, L-stable): explicit Tsit5 at 0.25 h was unstable in the sugar-limited
fed phase of these scenarios (6-34 % error in the final titer), ROS2 is stable at 0.5-1 h.
"""

from __future__ import annotations

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

from twin.errors import SolverError
from twin.reactor import get_parameter, set_parameters
from twin.recipe import constant_profile
from twin.simulate import Adaptive, FixedGrid, ensure_success, simulate

from conftest import run, set_profile

GRID = FixedGrid(dt=0.25)
COARSE = FixedGrid(dt=0.5)
KINETIC = ("kinetics.mu_max", "kinetics.beta_max", "kinetics.Y_XS", "kinetics.K_O", "kinetics.K_S")
ENSEMBLE = ("kinetics.mu_max", "kinetics.beta_max", "kinetics.Y_XS", "kinetics.K_O")


def _final_product(ery):
    def f(theta, feed):
        model = set_parameters(ery.model, dict(zip(KINETIC, theta)))
        recipe = set_profile(ery.recipe, "substrate_feed", feed)
        traj = simulate(model, recipe, ery.y0, 0.0, ery.duration_h, ts=ery.ts, options=GRID)
        return traj.total_product[-1], traj

    return f


@pytest.fixture(scope="module")
def final_product(ery):
    """Jitted `(theta, feed) -> ((total product at 170 h in g, trajectory), gradients)` on `GRID`.

    `theta` are the `KINETIC` parameters; `feed` are the sugar-feed rates of the recipe's phases
    (L/h; each phase stays constant: `value_end` follows `value`).
    """
    return jax.jit(jax.value_and_grad(_final_product(ery), argnums=(0, 1), has_aux=True))


@pytest.fixture(scope="module")
def fixed_grid_run(ery):
    """The same function without gradients: `(theta, feed) -> (total product, trajectory)`."""
    return jax.jit(_final_product(ery))


def _nominal(ery):
    theta = jnp.asarray([float(get_parameter(ery.model, name)) for name in KINETIC])
    # The recipe feeds nothing before 30 h; the batch sugar runs out just before, where a
    # negative feed would be clipped at S = 0, so zero is a kink. 5 L/h is a smooth point.
    feed = jnp.asarray([5.0, float(ery.recipe.profiles["substrate_feed"].value[1])])
    return theta, feed


def _richardson_difference(fun, x, i, h):
    """Central difference with step h and h/2, Richardson-extrapolated: error O(h^4).

    Cancelling the h^2 term lets the step stay well above round-off (the map is strongly curved
    where the batch sugar runs out).
    """
    def central(step):
        e = jnp.zeros_like(x).at[i].set(step)
        return (fun(x + e) - fun(x - e)) / (2 * step)

    return (4 * central(h / 2) - central(h)) / 3


@pytest.mark.slow  # compiling the reverse pass through the solver takes 20-40 s
def test_gradient_wrt_kinetic_parameters_matches_finite_differences(ery, final_product,
                                                                    fixed_grid_run):
    """d(total product)/d(mu_max, beta_max, Y_XS, K_O, K_S) vs Richardson-extrapolated central
    differences (steps 1e-5 and 5e-6 relative), rtol 1e-6."""
    theta, feed = _nominal(ery)
    (value, traj), (g_theta, _) = final_product(theta, feed)
    ensure_success(traj)
    assert float(value) > 1e4  # g; a real production run, not a trivial zero
    fun = lambda th: fixed_grid_run(th, feed)[0]  # noqa: E731
    fd = np.asarray([_richardson_difference(fun, theta, i, 1e-5 * float(theta[i]))
                     for i in range(len(KINETIC))])
    np.testing.assert_allclose(g_theta, fd, rtol=1e-6)
    # signs a process scientist expects: faster production, a better sugar yield and less
    # sensitivity to low oxygen (smaller K_O) all raise the titer
    assert g_theta[1] > 0 and g_theta[2] > 0 and g_theta[3] < 0


@pytest.mark.slow  # shares the compiled gradient above
def test_gradient_wrt_feed_rates_matches_finite_differences(ery, final_product, fixed_grid_run):
    """d(total product)/d(sugar-feed rate of each phase) vs Richardson-extrapolated central
    differences, rtol 1e-6."""
    theta, feed = _nominal(ery)
    _, (_, g_feed) = final_product(theta, feed)
    fun = lambda fd_: fixed_grid_run(theta, fd_)[0]  # noqa: E731
    fd = np.asarray([_richardson_difference(fun, feed, i, 1e-5 * float(feed[i])) for i in range(2)])
    np.testing.assert_allclose(g_feed, fd, rtol=1e-6)


def test_fixed_grid_integrates_recipe_jumps_exactly(ery, fixed_grid_run):
    """On FixedGrid the fed totals equal the recipe integrals to 1e-12: no step straddles or
    ends on the wrong side of a breakpoint (Tsit5 weights its end-of-step stage by 2.32, so a
    jump seen one stage early used to add 0.58 h of the next phase's feed: 0.4 % of the sugar)."""
    theta, _ = _nominal(ery)
    _, traj = fixed_grid_run(theta, ery.recipe.profiles["substrate_feed"].value)
    ensure_success(traj)
    L, f = traj.states.ledger, ery.model.feeds
    np.testing.assert_allclose(L.substrate_fed[-1], ery.recipe.total("substrate_feed") * f.substrate_conc,
                               rtol=1e-12)
    np.testing.assert_allclose(L.precursor_fed[-1], ery.recipe.total("precursor_feed") * f.precursor_conc,
                               rtol=1e-12)
    np.testing.assert_allclose(L.volume_fed[-1], ery.recipe.total("substrate_feed")
                               + ery.recipe.total("precursor_feed"), rtol=1e-12)


def _titer(traj):
    return float(traj.states.product[-1] / traj.states.volume[-1])


def test_fixed_grid_converges(ery, ery_traj):
    """Halving dt reduces the final-titer error (measured 3.6e-4 at 0.5 h, 2.0e-4 at 0.25 h: less
    than order 2, as the rates have kinks at S = 0 and in the precursor clip), and at 0.25 h
    the titer is within 1e-3 relative of adaptive Tsit5 at 1e-10 (volume to 1e-8: it depends
    only on the feeds, integrated exactly, and on evaporation, a function of the temperature
    ramp alone)."""
    ref = _titer(ery_traj)
    errs = [abs(_titer(run(ery, options=FixedGrid(dt=dt))) / ref - 1.0) for dt in (1.0, 0.5, 0.25)]
    assert errs[0] > errs[1] > errs[2], errs
    traj = run(ery, options=GRID)
    assert _titer(traj) == pytest.approx(ref, rel=1e-3)
    np.testing.assert_allclose(traj.states.volume, ery_traj.states.volume, rtol=1e-8)


@pytest.mark.parametrize("name", ["ery", "pen"])
def test_coarse_fixed_grid_agrees_with_adaptive_reference(name, request):
    """FixedGrid(0.5), the grid calibration uses, vs the adaptive reference: final titer to
    5e-3 relative on both shipped scenarios (the stiff sugar-limited phase included)."""
    sc = request.getfixturevalue(name)
    ref = run(sc, options=Adaptive(rtol=1e-10, atol=1e-10))
    traj = run(sc, options=COARSE)
    assert _titer(traj) == pytest.approx(_titer(ref), rel=5e-3)


# ----------------------------------------------------------------------------- vmap


def _perturbed(ery, key, n):
    """`n` parameter sets: the nominal ENSEMBLE parameters times lognormal(0, 0.1) factors."""
    nominal = jnp.asarray([float(get_parameter(ery.model, name)) for name in ENSEMBLE])
    return nominal * jnp.exp(0.1 * jax.random.normal(key, (n, nominal.size)))


@pytest.fixture(scope="module")
def ensemble(ery):
    """A jitted, vmapped simulation of the erythromycin-like batch over parameter sets."""

    def one(theta):
        return run(ery, model=set_parameters(ery.model, dict(zip(ENSEMBLE, theta))))

    return jax.jit(jax.vmap(one))


def test_vmap_ensemble_equals_single_simulations(ery, ensemble):
    """8 members simulated together equal 8 separate simulations to 1e-10 (relative): XLA
    compiles the batched and the single program separately, and their last-bit differences grow
    through the substrate's exhaustion to about 1e-12 (3e-11 with the tests' XLA optimisation
    level 0, where the two programs round differently)."""
    thetas = _perturbed(ery, jax.random.key(0), 8)
    ens = ensure_success(ensemble(thetas), label="ensemble")
    for i in range(8):
        one = run(ery, model=set_parameters(ery.model, dict(zip(ENSEMBLE, map(float, thetas[i])))))
        for name in ("biomass", "substrate", "product", "volume", "precursor"):
            np.testing.assert_allclose(getattr(ens.states, name)[i], getattr(one.states, name),
                                       rtol=1e-10, atol=1e-12, err_msg=f"member {i} {name}")
    titers = np.asarray(ens.states.product[:, -1] / ens.states.volume[:, -1])
    assert np.ptp(titers) > 0.05 * titers.mean()  # the members really differ


class _CompileCounter:
    """Counts JAX tracing and XLA compilation events (public `jax.monitoring` API)."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")

    def __enter__(self):
        self.events = []
        self._listener = lambda name, *a, **k: self.events.append(name) if name in self.EVENTS else None
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def test_changing_values_does_not_recompile(ery, ery_traj, ensemble):
    """New parameter and recipe values of the same structure reuse the compiled code (0 traces,
    0 compilations), for single simulations and for the vmapped ensemble."""
    with _CompileCounter() as positive_control:
        jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(3))
    assert positive_control.events  # the counter sees compilations at all
    ensemble(_perturbed(ery, jax.random.key(1), 8))  # warm (shared with the test above)
    model = set_parameters(ery.model, {"kinetics.mu_max": 0.1, "kinetics.k_h": 0.003})
    recipe = set_profile(ery.recipe, "substrate_feed", [0.0, 40.0])
    with _CompileCounter() as counter:
        run(ery, model=model)
        run(ery, recipe=recipe)
        ensemble(_perturbed(ery, jax.random.key(2), 8))
    assert counter.events == []


# ----------------------------------------------------------------------------- failures


def _emptying_recipe(ery):
    # 400 L/h for 170 h: 30 m3 less 400 L/h of draw and about 37 L/h of evaporation, plus
    # 1.2 L/h of precursor from 24 h and 50 L/h of sugar from 30 h: empty at about 75 h
    return ery.recipe.with_profile("draw", constant_profile(400.0, 0.0, ery.duration_h))


def test_draw_that_empties_the_vessel_raises_solver_error(ery):
    """Adaptive: the solver stalls as the vessel empties; SolverError names the batch and what
    to change."""
    with pytest.raises(SolverError) as info:
        run(ery, recipe=_emptying_recipe(ery), label="ery-draw-test")
    msg = str(info.value)
    assert "ery-draw-test" in msg
    assert "max_steps" in msg and "draws larger than feeds" in msg


def test_fixed_grid_draw_that_empties_the_vessel_raises_solver_error(ery):
    """FixedGrid steps on past an empty vessel (negative volume, finite numbers): SolverError
    says the vessel ran empty and when, instead of returning a nonsense trajectory."""
    with pytest.raises(SolverError) as info:
        run(ery, recipe=_emptying_recipe(ery), options=COARSE, label="ery-draw-test")
    msg = str(info.value)
    assert "ery-draw-test" in msg and "the vessel ran empty" in msg
    t_empty = float(msg.split("at t = ")[1].split(" h")[0])
    assert 70.0 <= t_empty <= 80.0
    assert "draws larger than feeds" in msg
