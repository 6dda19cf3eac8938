"""How Gaussian is the calibration posterior, in the batch effects' non-centred and centred coordinates?

NUTS with a dense mass matrix, the Laplace approximation and full-rank VI all treat the
posterior (in its unconstrained coordinates) as if it were Gaussian. Where it is not, NUTS needs
small steps and deep trees, and the Gaussian fits are off. This script measures the gap for the
strain's calibration model in both parameterisations of the batch effects
(`[batch_effects] parameterisation`, see `calibration.model`):

1. the Laplace mode (L-BFGS) and inverse Hessian, the centred search started from the
   non-centred mode mapped over (the same point of the model);
2. `--draws` draws x from that Gaussian: for a Gaussian posterior U(x) - U(mode) is
   chi-square(d)/2 (mean d/2, SD sqrt(d/2)) and equals the quadratic form exactly. Reported:
   the mean and SD of U(x) - U(mode), and of the excess over the quadratic form
   (`excess_sd` is 0 for a Gaussian; it is what a Gaussian fit misses);
3. with `--nuts-warmup N` (> 0), a short NUTS run from the mode with the Laplace covariance as
   a fixed mass matrix: the adapted step size and mean leapfrog steps per draw (tree depth at
   most `--max-tree-depth`); an ideal Gaussian target with this metric allows steps near 1 and
   a handful of leapfrog steps.

Ends with `name: value` headline lines per parameterisation.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import twin  # noqa: E402,F401  (float64)

STRAIN = ROOT / "calibration" / "strains" / "penicillin_indpensim.toml"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strain", type=Path, default=STRAIN)
    p.add_argument("--draws", type=int, default=150, help="draws from each Laplace Gaussian")
    p.add_argument("--iterations", type=int, default=300, help="L-BFGS iterations of each mode search")
    p.add_argument("--nuts-warmup", type=int, default=0, help="NUTS warm-up iterations (0: no NUTS probe)")
    p.add_argument("--nuts-samples", type=int, default=30)
    p.add_argument("--max-tree-depth", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    import jax

    from calibration.infer import _complete_start, _model_fn, _start, load_history
    from calibration.model import build_data
    from calibration.spec import load_strain
    from calibration.vi import laplace, potential

    spec = load_strain(a.strain)
    if not spec.batch_effects:
        p.error(f"{a.strain}: the strain has no batch effects; both parameterisations are the same")
    bs, recipes = load_history(spec)
    data = build_data(spec, bs, recipes)
    print(f"strain {spec.name}: {data.n_batches} batches, batch effects on {', '.join(spec.batch_effects)}, "
          f"dt {spec.inference['dt']} h")
    figures: dict[str, float] = {}
    start = None
    for par in ("non-centred", "centred"):
        sp = dataclasses.replace(spec, batch_parameterisation=par)
        pot = potential(_model_fn(sp, data), seed=a.seed)
        x0 = None if start is None else _start(pot, _complete_start(sp, start))
        t0 = time.perf_counter()
        mode, cov, ok = laplace(pot, x0=x0, iterations=a.iterations)
        t_mode = time.perf_counter() - t0
        if start is None:  # the non-centred mode, as constrained site values
            start = {k: np.asarray(v)[0] for k, v in pot.constrain(mode[None]).items()}
        d = mode.shape[0]
        H = np.linalg.inv(cov)
        L = np.linalg.cholesky(cov)
        rng = np.random.default_rng(a.seed)
        U0 = pot(mode)[0]
        dU, excess = [], []
        for _ in range(a.draws):
            x = mode + L @ rng.standard_normal(d)
            u = pot(x)[0] - U0
            dU.append(u)
            excess.append(u - 0.5 * (x - mode) @ H @ (x - mode))
        dU, excess = np.asarray(dU), np.asarray(excess)
        bad = ~np.isfinite(dU)
        dU, excess = dU[~bad], excess[~bad]
        tag = par.replace("-", "_")
        print(f"{par}: mode search {t_mode:.0f} s (converged: {ok}), d = {d}; U - U(mode) over {len(dU)} Laplace "
              f"draws: mean {dU.mean():.1f} (Gaussian {d / 2:.1f}), SD {dU.std():.1f} (Gaussian {np.sqrt(d / 2):.1f}); "
              f"excess over the quadratic form: mean {excess.mean():.2f}, SD {excess.std():.2f}, "
              f"max {excess.max():.1f}; non-finite {int(bad.sum())}")
        figures[f"laplace_excess_mean_{tag}"] = round(float(excess.mean()), 2)
        figures[f"laplace_excess_sd_{tag}"] = round(float(excess.std()), 2)
        if a.nuts_warmup > 0:
            from numpyro.infer import MCMC, NUTS, init_to_value

            init = {k: np.asarray(v)[0] for k, v in pot.constrain(mode[None]).items()}
            kernel = NUTS(_model_fn(sp, data), dense_mass=True, max_tree_depth=a.max_tree_depth,
                          target_accept_prob=float(spec.inference["target_accept"]), inverse_mass_matrix=cov,
                          adapt_mass_matrix=False, init_strategy=init_to_value(values=init))
            mcmc = MCMC(kernel, num_warmup=a.nuts_warmup, num_samples=a.nuts_samples, num_chains=1,
                        progress_bar=False)
            t0 = time.perf_counter()
            mcmc.warmup(jax.random.PRNGKey(a.seed), extra_fields=("adapt_state.step_size",), collect_warmup=True)
            step = float(np.asarray(mcmc.get_extra_fields()["adapt_state.step_size"])[-1])
            mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps", "diverging"))
            ex = mcmc.get_extra_fields()
            t_nuts = time.perf_counter() - t0
            steps = float(np.mean(ex["num_steps"]))
            print(f"  NUTS ({a.nuts_warmup} warm-up, {a.nuts_samples} draws, Laplace metric fixed): step size "
                  f"{step:.3f}, {steps:.1f} leapfrog steps per draw, {int(np.sum(ex['diverging']))} divergent, "
                  f"{t_nuts:.0f} s")
            figures[f"nuts_step_size_{tag}"] = round(step, 4)
            figures[f"nuts_leapfrog_per_draw_{tag}"] = round(steps, 1)
    print()
    for k, v in figures.items():
        print(f"{k}: {v}")
    return figures


if __name__ == "__main__":
    main()
