"""Benchmark `twin.control` on two published optimal-control problems, against CasADi + IPOPT.

Problems (`twin.ocp_literature`; `shared/benchmarks/ocp_problems.md`): Park-Ramirez (1988,
best known 32.69) and Lee-Ramirez (1994, original constants, Q = 5, best known 0.8165), both with
N piecewise-constant controls (default N = 50).

Both solvers get the same starts: constant controls at a few fractions of the range, then
random profiles (a fraction of the range U(0.05, 0.6) common to all intervals plus N(0, 0.3)
noise per interval, clipped to [0.01, 0.99], from `--seed`). Measured in one run
and printed per problem:

* twin: `twin.control.solve` (L-BFGS, multi-start, one compiled loop for all starts). Wall time
  of a cold call (trace + XLA compile + solve) and of a warm call (compiled: the solve alone);
  the best objective by its own integrator and re-scored by scipy LSODA (rtol = atol = 1e-10,
  interval by interval), and that as % of the best known.
* CasADi: direct collocation (Radau, degree 3, one finite element per control interval, states
  bounded below by 0, state guess simulated from each start's control), IPOPT (MUMPS, exact
  Hessian), from every start. NLP construction time, and the time of the IPOPT calls alone
  (the state guesses are simulated outside the clock), per start and in all; the best objective
  re-scored by the same scipy integrator.
* The ratio twin warm time / CasADi total solve time (same starts; target <= 1), and the same
  ratio with compilation and NLP construction included.

It ends with the headline figures, one per line, as `name: value`.

Usage::

    python benchmarks/control.py            # N = 50, 4 constant + 4 random starts
    python benchmarks/control.py --quick    # N = 10, 2 + 1 starts (a smoke run)

The script reports what it measures; it does not tune anything to meet the targets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import twin  # noqa: E402,F401  (float64)
from twin.control import LBFGS, Block, ControlProblem, solve  # noqa: E402
from twin.ocp_literature import (AbstractOCP, LeeRamirez, ParkRamirez, objective,  # noqa: E402
                                 reference_objective)

LEVELS = (0.05, 0.15, 0.3, 0.5)  # constant starts, as fractions of the control range


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="control intervals N (default 50)")
    p.add_argument("--constant-starts", type=int, default=len(LEVELS),
                   help=f"constant starts, at the first of the fractions {LEVELS} (default 4)")
    p.add_argument("--random-starts", type=int, default=4, help="random starts (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    p.add_argument("--max-steps", type=int, default=300, help="L-BFGS iterations per start")
    p.add_argument("--no-casadi", action="store_true", help="skip the CasADi comparison")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: --n 10 --constant-starts 2 --random-starts 1")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.constant_starts = min(args.n, 10), min(args.constant_starts, 2)
        args.random_starts = min(args.random_starts, 1)
    if args.n < 2 or not 1 <= args.constant_starts <= len(LEVELS) or args.random_starts < 0:
        p.error(f"--n must be >= 2, --constant-starts in 1..{len(LEVELS)}, --random-starts >= 0")
    return args


def starts_for(problem: AbstractOCP, n: int, constant: int, random: int, seed: int
               ) -> list[np.ndarray]:
    """Start controls, shape (N, controls): constant levels, then random profiles."""
    lo, hi = np.asarray(problem.lower), np.asarray(problem.upper)
    out = [np.broadcast_to(lo + f * (hi - lo), (n, lo.size)).copy() for f in LEVELS[:constant]]
    rng = np.random.default_rng(seed)
    for _ in range(random):
        frac = np.clip(rng.uniform(0.05, 0.6, lo.size) + 0.3 * rng.standard_normal((n, lo.size)),
                       0.01, 0.99)
        out.append(lo + frac * (hi - lo))
    return out


# --------------------------------------------------------------------------------------------
# twin


def twin_problem(problem: AbstractOCP, n: int) -> ControlProblem:
    """One block per control, bounds from the problem; J by `twin.ocp_literature.objective`."""
    blocks = tuple(Block(name, lo, hi, n=n) for name, lo, hi in
                   zip(problem.control_names, problem.lower, problem.upper))
    names = problem.control_names

    def J(controls, args):
        return objective(problem, jnp.stack([controls[k] for k in names], axis=1))

    return ControlProblem(blocks, J)


def run_twin(problem: AbstractOCP, starts: list[np.ndarray], max_steps: int) -> dict:
    cp = twin_problem(problem, starts[0].shape[0])
    user = [{k: s[:, j] for j, k in enumerate(problem.control_names)} for s in starts]
    solver = LBFGS(max_steps=max_steps)
    cold = solve(cp, starts=user, solver=solver)
    warm = solve(cp, starts=user, solver=solver)
    u = np.stack([warm.controls[k] for k in problem.control_names], axis=1)
    return dict(cold_s=cold.wall_s, warm_s=warm.wall_s, objective=warm.objective,
                reference=reference_objective(problem, u), u=u,
                start_objectives=warm.start_objectives, iterations=warm.iterations)


# --------------------------------------------------------------------------------------------
# CasADi + IPOPT, direct collocation


def casadi_rhs(problem: AbstractOCP):
    """The problem's right-hand side in CasADi symbols (flat state in field order)."""
    import casadi as ca

    if isinstance(problem, ParkRamirez):
        def rhs(x, u):
            pm, pt, X, S, V = (x[i] for i in range(5))
            F = u[0]
            D = F / V
            mu = 21.87 * S / ((S + 0.4) * (S + 62.5))
            fP = S * ca.exp(-5.0 * S) / (0.1 + S)
            phi = 4.75 * mu / (0.12 + mu)
            return ca.vertcat(phi * (pt - pm) - D * pm, fP * X - D * pt, (mu - D) * X,
                              -7.3 * mu * X + D * (problem.feed_glucose - S), F)

        return rhs, (lambda x: x[0] * x[4])
    if isinstance(problem, LeeRamirez):
        def rhs(x, u):
            V, X, S, P, I, fs, fr, _ = (x[i] for i in range(8))
            u1, u2 = u[0], u[1]
            D = (u1 + u2) / V
            sat = S / (problem.K_N + S + S**2 / problem.K_S)
            mu = problem.mu_max * sat * (fs + fr * 0.22 / (0.22 + I))
            k = 0.09 * I / (0.034 + I)
            return ca.vertcat(u1 + u2, (mu - D) * X, 100.0 * u1 / V - D * S - mu * X / 0.51,
                              problem.f_max * sat * (0.0005 + I) / (0.022 + I) * X - D * P,
                              4.0 * u2 / V - D * I, -k * fs, k * (1.0 - fr), u2)

        return rhs, (lambda x: x[3] * x[0] - problem.Q * x[7])
    raise TypeError(f"no CasADi model for {type(problem).__name__}")


def _radau(d: int):
    """Collocation points (0 and Radau), derivative matrix C and end weights D (degree d)."""
    import casadi as ca

    tau = np.append(0.0, ca.collocation_points(d, "radau"))
    C = np.zeros((d + 1, d + 1))
    D = np.zeros(d + 1)
    for j in range(d + 1):
        p = np.poly1d([1.0])
        for r in range(d + 1):
            if r != j:
                p *= np.poly1d([1.0, -tau[r]]) / (tau[j] - tau[r])
        D[j] = p(1.0)
        dp = np.polyder(p)
        for r in range(d + 1):
            C[j, r] = dp(tau[r])
    return tau, C, D


def casadi_build(problem: AbstractOCP, n: int, d: int = 3):
    """The collocation NLP and an IPOPT solver for it; returns (solver, layout)."""
    import casadi as ca

    rhs, terminal = casadi_rhs(problem)
    flat0 = np.asarray(ravel_pytree(problem.initial_state())[0])
    nx, nu = flat0.size, len(problem.control_names)
    tau, C, D = _radau(d)
    h = problem.tf / n
    w, g = [], []
    Xk = ca.MX.sym("X0", nx)
    w.append(Xk)
    for k in range(n):
        Uk = ca.MX.sym(f"U{k}", nu)
        w.append(Uk)
        Xc = [ca.MX.sym(f"X{k}_{j}", nx) for j in range(d)]
        w += Xc
        Xend = D[0] * Xk
        for j in range(1, d + 1):
            xp = C[0, j] * Xk
            for r in range(d):
                xp = xp + C[r + 1, j] * Xc[r]
            g.append(h * rhs(Xc[j - 1], Uk) - xp)
            Xend = Xend + D[j] * Xc[j - 1]
        Xk = ca.MX.sym(f"X{k + 1}", nx)
        w.append(Xk)
        g.append(Xend - Xk)
    nlp = {"f": -terminal(Xk), "x": ca.vertcat(*w), "g": ca.vertcat(*g)}
    opts = {"ipopt.print_level": 0, "print_time": 0, "ipopt.sb": "yes", "expand": True}
    return ca.nlpsol("collocation", "ipopt", nlp, opts), (nx, nu, d, tau, h, flat0)


def casadi_solve(problem: AbstractOCP, solver, layout, u0: np.ndarray):
    """Solve from controls `u0` (N, controls), states guessed by simulating them.

    Returns (controls, objective, IPOPT status, iterations, seconds in the IPOPT call alone).
    """
    nx, nu, d, tau, h, flat0 = layout
    n = u0.shape[0]
    # State guess: simulate the start's control (interval by interval, loose tolerance).
    x_at = []
    y = flat0.copy()
    for k in range(n):
        sol = solve_ivp(lambda t, yy: problem.rhs_numpy(yy, u0[k]), (0.0, h), y, rtol=1e-6,
                        atol=1e-8, dense_output=True)
        x_at.append([sol.sol(h * t) for t in tau])
        y = sol.y[:, -1]
    w0, lbw, ubw = [flat0], [flat0], [flat0]
    inf = np.full(nx, np.inf)
    for k in range(n):
        w0 += [u0[k]] + [x_at[k][j] for j in range(1, d + 1)] + [x_at[k][d]]
        lbw += [np.asarray(problem.lower)] + [np.zeros(nx)] * d + [np.zeros(nx)]
        ubw += [np.asarray(problem.upper)] + [inf] * d + [inf]
    t = time.perf_counter()
    sol = solver(x0=np.concatenate(w0), lbx=np.concatenate(lbw), ubx=np.concatenate(ubw),
                 lbg=0.0, ubg=0.0)
    solve_s = time.perf_counter() - t
    x = np.asarray(sol["x"]).ravel()
    stride = nu + (d + 1) * nx
    u = np.stack([x[nx + k * stride: nx + k * stride + nu] for k in range(n)])
    stats = solver.stats()
    return u, -float(sol["f"]), stats["return_status"], stats["iter_count"], solve_s


def run_casadi(problem: AbstractOCP, starts: list[np.ndarray]) -> dict:
    t = time.perf_counter()
    solver, layout = casadi_build(problem, starts[0].shape[0])
    build_s = time.perf_counter() - t
    rows = []
    for u0 in starts:
        u, J, status, its, solve_s = casadi_solve(problem, solver, layout, np.asarray(u0))
        rows.append(dict(solve_s=solve_s, objective=J, status=status, iterations=its,
                         reference=reference_objective(problem, u), u=u))
    best = max(rows, key=lambda r: r["reference"])
    return dict(build_s=build_s, solve_s=sum(r["solve_s"] for r in rows), rows=rows,
                reference=best["reference"], objective=best["objective"])


# --------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = _parse(argv)
    figures = {}
    print(f"N = {args.n} intervals; starts: {args.constant_starts} constant "
          f"(fractions {LEVELS[:args.constant_starts]}) + {args.random_starts} random "
          f"(seed {args.seed}), the same for both solvers")
    for key, problem in (("park_ramirez", ParkRamirez()), ("lee_ramirez", LeeRamirez())):
        starts = starts_for(problem, args.n, args.constant_starts, args.random_starts, args.seed)
        print(f"\n== {type(problem).__name__} (best known {problem.best_known}) ==")
        tw = run_twin(problem, starts, args.max_steps)
        pct = 100.0 * tw["reference"] / problem.best_known
        print(f"twin    : J = {tw['objective']:.6f} (own integrator), re-scored "
              f"{tw['reference']:.6f} = {pct:.3f} % of best known")
        print(f"          per start (own integrator): "
              f"{' '.join(f'{v:.4f}' for v in tw['start_objectives'])}")
        print(f"          iterations per start: {' '.join(map(str, tw['iterations']))}")
        print(f"          wall: warm {tw['warm_s']:.3f} s, cold (with compilation) "
              f"{tw['cold_s']:.2f} s")
        figures[f"{key}_objective"] = tw["reference"]
        figures[f"{key}_pct_of_best"] = pct
        figures[f"{key}_twin_s"] = tw["warm_s"]
        figures[f"{key}_twin_cold_s"] = tw["cold_s"]
        if args.no_casadi:
            continue
        ca = run_casadi(problem, starts)
        cpct = 100.0 * ca["reference"] / problem.best_known
        print(f"casadi  : best J = {ca['objective']:.6f} (collocation), re-scored "
              f"{ca['reference']:.6f} = {cpct:.3f} % of best known")
        for i, r in enumerate(ca["rows"]):
            print(f"          start {i}: {r['reference']:.5f} re-scored, {r['status']}, "
                  f"{r['iterations']} iterations, {r['solve_s']:.3f} s")
        print(f"          wall: solves {ca['solve_s']:.3f} s in all "
              f"({ca['solve_s'] / len(starts):.3f} s per start), NLP construction "
              f"{ca['build_s']:.3f} s")
        ratio = tw["warm_s"] / ca["solve_s"]
        ratio_cold = tw["cold_s"] / (ca["solve_s"] + ca["build_s"])
        print(f"ratio   : twin / casadi time = {ratio:.3f} (warm vs solves), {ratio_cold:.2f} "
              f"(with compilation vs with construction)")
        figures[f"{key}_casadi_objective"] = ca["reference"]
        figures[f"{key}_casadi_pct_of_best"] = cpct
        figures[f"{key}_casadi_s"] = ca["solve_s"]
        figures[f"{key}_time_ratio_vs_casadi"] = ratio
        figures[f"{key}_time_ratio_vs_casadi_cold"] = ratio_cold
    print()
    for name, value in figures.items():
        print(f"{name}: {value:.6g}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
