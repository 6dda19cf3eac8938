"""The recipe optimiser's engine (`twin.control`): exact bounds and budgets, gradients,
augmented-Lagrangian constraints, rate limits, errors, and a published optimal-control problem.

Compiling a problem's solver loop takes seconds, so the toy tests share one problem (three
separable blocks with known optima, `toy` below), solved once per session.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy.optimize import minimize

from twin.control import (Adam, Block, Budget, ControlError, ControlProblem, LBFGS, Logistic,
                          Sine, evaluate, sensitivity, solve)
from twin.errors import TwinError
from twin.ocp_literature import (LeeRamirez, ParkRamirez, objective, reference_objective,
                                 simulate)

# ----------------------------------------------------------------------------- reparametrisation

EXTREME = jnp.array([-1e300, -1e6, -745.0, -40.0, -1.0, 0.0, 1.0, 40.0, 745.0, 1e6, 1e300])


@pytest.mark.parametrize("transform", [Sine(), Logistic()])
def test_bounds_hold_exactly_for_extreme_z(transform):
    """u stays within [lower, upper] with no tolerance (atol = rtol = 0), even for |z| = 1e300,
    with bounds that are not representable sums (0.1 + 0.2)."""
    n = EXTREME.size
    lo = jnp.linspace(0.1, 0.3, n)
    hi = lo + 0.2
    block = Block("f", lo, hi, transform=transform)
    u = block.controls(EXTREME)
    assert bool(jnp.all(jnp.isfinite(u)))
    assert bool(jnp.all(u >= lo)) and bool(jnp.all(u <= hi))
    # logistic saturates at both ends: the extreme values sit exactly on the bounds
    if isinstance(transform, Logistic):
        assert u[0] == lo[0] and u[-1] == hi[-1]


def test_budget_exact_with_bounds_for_extreme_z():
    """sum(w * u) == total to 1e-10 (absolute, total = 7.3) while every bound holds exactly, for
    z spread over +-40 and with saturated entries, and with a zero weight and a fixed phase."""
    lo = jnp.array([0.0, 0.5, 0.0, 1.0, 0.2, 0.0, 0.3, 0.0])
    hi = jnp.array([2.0, 1.5, 3.0, 1.0, 2.2, 1.0, 0.9, 4.0])  # phase 3 fixed at 1.0
    w = jnp.array([1.0, 2.0, 0.5, 1.0, 1.0, 0.0, 3.0, 1.0])
    block = Block("f", lo, hi, budget=Budget(7.3, weights=w))
    for seed in range(20):
        z = 40.0 * jr.normal(jr.key(seed), (8,))
        u = eqx.filter_jit(Block.controls)(block, z)
        assert abs(float(jnp.sum(w * u)) - 7.3) <= 1e-10
        assert bool(jnp.all(u >= lo)) and bool(jnp.all(u <= hi))
    u = block.controls(jnp.array([1e300, -1e300, 0.0, 5.0, 745.0, -3.0, 1e6, -1e6]))
    assert abs(float(jnp.sum(w * u)) - 7.3) <= 1e-10


def test_start_on_the_budget_is_reproduced():
    """controls(unconstrained(u)) == u (to 1e-12) for u strictly inside the bounds and on the
    budget: the budget shift of a start already on it is zero."""
    block = Block("f", 0.0, 2.0, n=4, budget=Budget(3.0))
    u = jnp.array([0.3, 1.2, 0.5, 1.0])
    np.testing.assert_allclose(block.controls(block.unconstrained(u)), u, rtol=0, atol=1e-12)


def test_gradient_of_reparametrised_objective_matches_central_differences():
    """d/dz of J(u(z)) through the budget shift's implicit-function gradient (and Sine blocks)
    against central differences in float64 (h = 1e-6): rtol 1e-7, atol 1e-9."""
    budget = Block("w", jnp.zeros(5), jnp.array([1.0, 2.0, 1.0, 3.0, 1.0]),
                   budget=Budget(3.5, weights=jnp.array([1.0, 0.5, 2.0, 1.0, 1.0])))
    plain = Block("v", -1.0, 2.0, n=3)
    problem = ControlProblem((budget, plain), lambda c, a: jnp.sum(jnp.sin(c["w"]) * a)
                             + jnp.prod(c["v"]) + c["w"][1] * c["v"][0])
    a = jnp.array([1.0, -2.0, 0.5, 3.0, 1.5])

    @jax.jit
    def J(z):
        return evaluate(problem, problem.controls(z), a)[0]

    z = {"w": jnp.array([0.3, -1.2, 0.8, 2.0, -0.5]), "v": jnp.array([0.4, 1.1, -0.7])}
    grad = jax.grad(J)(z)
    h = 1e-6
    for name in z:
        for i in range(z[name].size):
            up = {k: v.at[i].add(h) if k == name else v for k, v in z.items()}
            dn = {k: v.at[i].add(-h) if k == name else v for k, v in z.items()}
            fd = (J(up) - J(dn)) / (2 * h)
            np.testing.assert_allclose(grad[name][i], fd, rtol=1e-7, atol=1e-9,
                                       err_msg=f"{name}[{i}]")


# ----------------------------------------------------------------------------- errors


def test_infeasible_budget_is_refused_before_any_solve():
    """The message names the block, the total and the attainable range."""
    with pytest.raises(ControlError) as err:
        Block("glucose_feed", 0.0, 2.0, n=5, budget=Budget(12.5))
    assert isinstance(err.value, TwinError)
    assert str(err.value) == (
        "block 'glucose_feed': budget total=12.5 is not attainable within the bounds: sum(w*u) "
        "can only lie strictly between 0 (all phases at lower) and 10 (all at upper). Change the "
        "total or the bounds; to pin every phase to a bound, set lower == upper instead")
    # a block edited after construction is checked again by solve, before anything compiles
    ok = Block("glucose_feed", 0.0, 2.0, n=5, budget=Budget(5.0))
    bad = eqx.tree_at(lambda b: b.budget.total, ok, jnp.asarray(-1.0))
    problem = ControlProblem((bad,), lambda c, a: jnp.sum(c["glucose_feed"]))
    with pytest.raises(ControlError, match=r"total=-1 is not attainable.*between 0 .* and 10"):
        solve(problem, starts=[{"glucose_feed": 1.0}])


def test_other_bad_problems_say_what_is_wrong():
    with pytest.raises(ControlError, match=r"block 'f': lower must be <= upper in every phase; "
                                           r"phase 1 has lower=3.0 > upper=2.0"):
        Block("f", [0.0, 3.0], [1.0, 2.0])
    with pytest.raises(ControlError, match=r"phases 0 and 1 are 2 apart, more than max_change=0.5"):
        Block("f", [0.0, 3.0], [1.0, 4.0], max_change=0.5)
    problem = ControlProblem((Block("f", 0.0, 1.0, n=3),), lambda c, a: jnp.sum(c["f"]))
    with pytest.raises(ControlError, match=r"block 'f': start 0 lies outside the bounds"):
        solve(problem, starts=[{"f": [0.5, 1.5, 0.5]}])
    with pytest.raises(ControlError, match="random starts need a key"):
        solve(problem, n_random=2)


# ----------------------------------------------------------------------------- toy problems

N_TOY = 6
TARGET_V = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # a step, smoothed by the rate limit
RATE = 0.25
TARGET_W = np.array([0.2, 1.5, 0.9, -0.3, 0.7, 1.2])
W = np.array([1.0, 1.0, 2.0, 2.0, 1.0, 1.0])
TOTAL = 3.0
TRACES = {"n": 0}
TIGHT = LBFGS(ftol=1e-11)  # the analytic optima are checked to 1e-5: stop on 1e-11 progress


def _constrained_objective(c, tv):
    """-(x0-3)^2 - (x1-2)^2 - |v - tv|^2 (maximised)."""
    TRACES["n"] += 1  # Python side effect: runs once per trace
    x = c["x"]
    return -((x[0] - 3.0) ** 2 + (x[1] - 2.0) ** 2) - jnp.sum((c["v"] - tv) ** 2)


def _constraints(c, tv):
    return jnp.array([c["x"][0] + c["x"][1] - 3.0])  # x0 + x1 <= 3


def _constrained_problem(upper=2.0) -> ControlProblem:
    return ControlProblem((Block("x", -10.0, 10.0, n=2),
                           Block("v", -1.0, upper, n=N_TOY, max_change=RATE)),
                          _constrained_objective, _constraints,
                          constraint_names=("x0 + x1 <= 3",))


def _budget_problem() -> ControlProblem:
    block = Block("w", 0.0, 1.0, n=N_TOY, budget=Budget(TOTAL, weights=W))
    return ControlProblem((block,), lambda c, tw: -jnp.sum((c["w"] - tw) ** 2))


def _budget_projection(t, w, lo, hi, total):
    """argmin |u - t|^2 s.t. sum(w u) = total, lo <= u <= hi: u = clip(t - nu w), by bisection."""
    a, b = -100.0, 100.0
    for _ in range(200):
        nu = 0.5 * (a + b)
        s = np.sum(w * np.clip(t - nu * w, lo, hi))
        a, b = (nu, b) if s > total else (a, nu)
    return np.clip(t - nu * w, lo, hi)


@pytest.fixture(scope="module")
def constrained():
    """max -(x0-3)^2 - (x1-2)^2 - |v - step|^2 s.t. x0 + x1 <= 3, |v[i+1] - v[i]| <= 0.25."""
    calls = []
    res = solve(_constrained_problem(), args=jnp.asarray(TARGET_V),
                starts=[{"x": 0.0, "v": 0.5}], n_random=2, key=jr.key(0), solver=TIGHT,
                progress=lambda done, total: calls.append((done, total)))
    return res, calls


def test_augmented_lagrangian_reaches_the_analytic_constrained_optimum(constrained):
    """max -(x0-3)^2 - (x1-2)^2 s.t. x0 + x1 <= 3 has x = (2, 1) (active constraint, multiplier
    2): reached to 1e-5 from every start, the constraint held to the 1e-6 tolerance."""
    res, _ = constrained
    assert res.feasible and res.max_violation <= 1e-6
    assert res.constraint_names == ("x0 + x1 <= 3", "rate of change of v")
    assert res.constraints[0] <= 1e-6
    for u in res.start_controls:
        np.testing.assert_allclose(u["x"], [2.0, 1.0], atol=1e-5)
    assert np.all(res.start_violations <= 1e-6)
    assert res.rounds.max() >= 2  # the multiplier update was needed


def test_rate_limit_is_honoured_and_matches_slsqp(constrained):
    """|v[i+1] - v[i]| <= 0.25 to the relative tolerance 1e-6, and v equals the scipy SLSQP
    solution of the same rate-limited least squares to 1e-5."""
    res, _ = constrained
    cons = [{"type": "ineq", "fun": lambda u, i=i, s=s: RATE - s * (u[i + 1] - u[i])}
            for i in range(N_TOY - 1) for s in (1.0, -1.0)]
    ref = minimize(lambda u: np.sum((u - TARGET_V) ** 2), np.full(N_TOY, 0.5), method="SLSQP",
                   bounds=[(-1.0, 2.0)] * N_TOY, constraints=cons, options={"ftol": 1e-14})
    assert ref.success
    for u in res.start_controls:
        assert np.max(np.abs(np.diff(u["v"]))) <= RATE * (1 + 1e-6)
        np.testing.assert_allclose(u["v"], ref.x, atol=1e-5)


def test_result_progress_and_sensitivity(constrained):
    """The report is complete; progress ends at (total, total) and never goes back; dJ/dx at the
    optimum is the multiplier times grad g = (2, 2) (to 1e-4), dJ/dv = -2 (v - step)."""
    res, calls = constrained
    assert res.start_objectives.shape == (3,) and res.iterations.shape == (3,)
    assert len(res.history) == 3
    assert res.history[res.best_start][-1] == pytest.approx(res.objective, abs=1e-12)
    assert res.objective == np.max(res.start_objectives[res.start_violations <= 1e-6])
    assert res.objective == pytest.approx(-2.0 - 0.3125, abs=2e-6)  # x part -2, v part -5/16
    assert res.wall_s > 0
    assert calls and calls[-1][0] == calls[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    sens = sensitivity(_constrained_problem(), res.controls, args=jnp.asarray(TARGET_V))
    np.testing.assert_allclose(sens["x"], [2.0, 2.0], atol=1e-4)
    np.testing.assert_allclose(sens["v"], -2 * (res.controls["v"] - TARGET_V), rtol=1e-12)


def test_new_values_do_not_recompile(constrained):
    """A second solve with other bound values, starts and args reuses the compiled code (the
    objective is not traced again)."""
    before = TRACES["n"]
    res = solve(_constrained_problem(upper=1.5), args=jnp.asarray(TARGET_V) * 0.5,
                starts=[{"x": 1.0, "v": 0.2}], solver=TIGHT)
    assert TRACES["n"] == before
    assert res.feasible and np.all(res.controls["v"] <= 1.5)


@pytest.mark.parametrize("solver", [TIGHT, Adam(max_steps=1500, learning_rate=0.1)],
                         ids=["lbfgs", "adam"])
def test_budget_block_reaches_the_analytic_projection(solver):
    """max -|w - t|^2 with sum(w_i u_i) = 3 and 0 <= u <= 1: the optimum is the weighted
    projection clip(t - nu w, 0, 1) (two phases on a bound). L-BFGS reaches it to 1e-6, Adam to
    1e-3; the budget is exact to 1e-10 throughout."""
    res = solve(_budget_problem(), args=jnp.asarray(TARGET_W), starts=[{"w": 0.5}],
                solver=solver)
    exact = _budget_projection(TARGET_W, W, 0.0, 1.0, TOTAL)
    np.testing.assert_allclose(res.controls["w"], exact,
                               atol=1e-6 if isinstance(solver, LBFGS) else 1e-3)
    assert abs(float(np.sum(W * res.controls["w"])) - TOTAL) <= 1e-10


# ----------------------------------------------------------------------------- literature


@pytest.mark.parametrize("problem", [ParkRamirez(), LeeRamirez()], ids=lambda p: type(p).__name__)
def test_literature_models_agree_with_the_scipy_reference(problem):
    """The diffrax fixed-step objective against scipy LSODA at 1e-10 (independent NumPy model)
    for a smooth non-trivial control at N = 20: rtol 1e-5."""
    t = (np.arange(20) + 0.5) / 20
    lo, hi = np.asarray(problem.lower), np.asarray(problem.upper)
    u = lo + (hi - lo) * np.stack([0.1 + 0.3 * t, 0.05 + 0.1 * t * t], axis=1)[:, :lo.size]
    J = float(jax.jit(lambda u: objective(problem, u))(u))
    assert J == pytest.approx(reference_objective(problem, u), rel=1e-5)
    yT = simulate(problem, u)
    assert float(yT.V) == pytest.approx(1.0 + np.sum(u) * problem.tf / 20, rel=1e-12)  # dV/dt = sum u


@pytest.mark.slow
def test_park_ramirez_n20_reaches_99_percent_of_best_known():
    """Park-Ramirez with N = 20 piecewise-constant feeds (its discretised optimum is about 0.7 %
    below 32.69): two constant starts reach >= 99 % of 32.69, verified by re-simulating with scipy
    LSODA (1e-10), which agrees with the optimiser's own integrator to 1e-5 relative."""
    pr = ParkRamirez()
    problem = ControlProblem((Block("F", 0.0, 2.0, n=20),), lambda c, a: objective(pr, c["F"]))
    res = solve(problem, starts=[{"F": 0.1}, {"F": 0.3}], solver=LBFGS(max_steps=200))
    ref = reference_objective(pr, res.controls["F"])
    assert ref >= 0.99 * ParkRamirez.best_known
    assert res.objective == pytest.approx(ref, rel=1e-5)
    assert math.isfinite(res.objective) and res.feasible
