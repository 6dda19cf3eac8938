"""Is the simulated batch a smooth function of the kinetic parameters? Fixed-grid steps vs a tight reference.

Gradient-based inference (L-BFGS, VI, NUTS) and recipe optimisation assume that what the twin
predicts at the assay times moves smoothly with its parameters. A fixed-step solver can break
that even when it is accurate: when the batch sugar runs out within one step, the step that
straddles the exhaustion changes from grid point to grid point as a parameter moves, and the
prediction moves in small stairs. The log-likelihood then has ripples (local minima a few units
deep along single parameters), which stall L-BFGS away from the mode and force NUTS to tiny steps.

This script sweeps one kinetic parameter over +-`span` (relative, `n` values, all at once with
`jax.vmap`) on the IndPenSim scenario, simulates with `FixedGrid(dt)` for each `dt` and with the
adaptive stiff reference (`Adaptive.stiff`: Kvaerno5, rtol = atol = 1e-8; `--reference explicit`:
Tsit5 at the same tolerances), and reports for the total product and the
biomass concentration at each saved time:

- `sign_changes`: how often the slope of the output along the sweep changes sign. A smooth
  monotone response has 0 (the reference's count is printed too; a genuine extremum counts 1);
- `rough`: the largest second difference along the sweep relative to the reference's (1 means
  as smooth as the reference; stairs give large values);
- `err_pct`: the largest deviation from the reference, % of the reference's value.

Parameters are the scenario's, or a calibration's medians (`--posterior`, loaded against this
model structure), or set with `--set kinetics.K_X=1.25e-4`. The recipe is the scenario's default
batch (breakpoints on a 0.2 h grid, hence the default steps 0.2, 0.1, 0.05 h).

Ends with `name: value` headline lines: `sign_changes_dt<dt>` summed over outputs and times, the
reference's, and the largest `rough` and `err_pct` per step.

`--reference-until H` runs the reference up to H hours and each fixed grid only from there (from
the reference's state): if the fixed grid is smooth then, its roughness comes from before H.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import twin  # noqa: E402,F401  (float64)

SCENARIO = ROOT / "scenarios" / "penicillin_indpensim.toml"


def posterior_medians(path: Path, model) -> dict[str, float]:
    """`{"kinetics.mu_max": median, ...}` of a calibration's strain-level parameters."""
    import json

    from calibration.infer import load_posterior

    idata = load_posterior(path, model=model)
    params = json.loads(idata.attrs["parameters"])
    return {info["name"]: float(np.median(np.asarray(idata.posterior[key]))) for key, info in params.items()}


def sign_changes(y: np.ndarray) -> int:
    """Sign changes of the first difference along axis 0 (exact zeros skipped)."""
    d = np.diff(y)
    s = np.sign(d[np.abs(d) > 1e-12 * max(np.abs(y).max(), 1e-300)])
    return int(np.sum(s[1:] != s[:-1]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", type=Path, default=SCENARIO)
    p.add_argument("--posterior", type=Path, default=None, help="posterior.nc: use its parameter medians")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="name=value, e.g. "
                   "kinetics.K_X=1.25e-4 (after --posterior)")
    p.add_argument("--param", default="kinetics.mu_max", help="the parameter swept")
    p.add_argument("--span", type=float, default=0.1, help="relative half-width of the sweep")
    p.add_argument("--n", type=int, default=41, help="values in the sweep")
    p.add_argument("--dts", default="0.2,0.1,0.05", help="fixed steps, h")
    p.add_argument("--times", default="24,48,96,230", help="saved times, h")
    p.add_argument("--reference", choices=("stiff", "explicit"), default="stiff",
                   help="the tight reference: Kvaerno5 (stiff, the default) or Tsit5 (explicit; "
                        "compiles in a fraction of the time, fine for the quasi-steady oxygen model)")
    p.add_argument("--reference-until", type=float, default=0.0,
                   help="h: run the reference up to this time and the fixed grid only after it (locates "
                        "where along the batch the roughness comes from; 0: the fixed grid from the start)")
    a = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from twin.reactor import get_parameter, set_parameters
    from twin.scenario import load_scenario
    from twin.simulate import Adaptive, FixedGrid, simulate

    sc = load_scenario(a.scenario)
    values = posterior_medians(a.posterior, sc.model) if a.posterior else {}
    for item in a.overrides:
        name, _, v = item.partition("=")
        try:
            values[name.strip()] = float(v)
        except ValueError:
            p.error(f"--set {item!r}: expected name=number, e.g. kinetics.K_X=1.25e-4")
    model = set_parameters(sc.model, values) if values else sc.model
    centre = float(get_parameter(model, a.param))
    sweep = jnp.linspace(centre * (1 - a.span), centre * (1 + a.span), a.n)
    ts = jnp.asarray([float(t) for t in a.times.split(",")])
    print(f"scenario {sc.name}; sweep {a.param} over [{float(sweep[0]):.4g}, {float(sweep[-1]):.4g}] "
          f"({a.n} values); parameters: " + (", ".join(f"{k}={v:.4g}" for k, v in values.items()) or "the scenario's"))

    reference = (Adaptive.stiff(rtol=1e-8, atol=1e-8, max_steps=200_000) if a.reference == "stiff"
                 else Adaptive(rtol=1e-8, atol=1e-8, max_steps=200_000))
    t_switch = float(a.reference_until)
    if t_switch > 0 and not float(ts.min()) > t_switch:
        p.error(f"--reference-until {t_switch:g}: every saved time must come after it (--times {a.times})")

    def outputs(value, options, y0_=sc.y0, t0_=0.0):
        m = set_parameters(model, {a.param: value}, check=False)
        tr = simulate(m, sc.recipe, y0_, t0_, float(ts.max()), ts=ts, options=options)
        return jnp.stack([tr.total_product / 1000.0, tr.states.biomass / tr.states.volume])

    def head(value):  # the reference's state at t_switch (computed once, shared by every step)
        m = set_parameters(model, {a.param: value}, check=False)
        tr = simulate(m, sc.recipe, sc.y0, 0.0, t_switch, ts=jnp.asarray([t_switch]), options=reference)
        return jax.tree_util.tree_map(lambda x: x[-1], tr.states)

    solvers = {"reference": reference}
    solvers.update({f"dt{float(d):g}": FixedGrid(float(d)) for d in a.dts.split(",")})
    heads = jax.vmap(head)(sweep) if t_switch > 0 else None
    res = {}
    for key, options in solvers.items():
        t0 = time.perf_counter()
        if heads is None or options is reference:
            run = jax.vmap(lambda v, o=options: outputs(v, o))
            res[key] = np.asarray(run(sweep))  # (n, 2, times)
        else:
            run = jax.vmap(lambda v, y, o=options: outputs(v, o, y, t_switch))
            res[key] = np.asarray(run(sweep, heads))
        print(f"  {key}: {time.perf_counter() - t0:.1f} s")
    ref = res["reference"]
    ref_d2 = np.abs(np.diff(ref, 2, axis=0)).max(axis=0)
    figures = {}
    names = ("product_kg", "biomass_g_L")
    print(f"{'solver':>10s} {'output':>12s} {'t_h':>6s} {'sign_changes':>12s} {'rough':>8s} {'err_pct':>8s}")
    for key, y in res.items():
        total, worst_rough, worst_err = 0, 0.0, 0.0
        for i, nm in enumerate(names):
            for j, t in enumerate(np.asarray(ts)):
                sc_ = sign_changes(y[:, i, j])
                rough = float(np.abs(np.diff(y[:, i, j], 2)).max() / max(ref_d2[i, j], 1e-300))
                err = float(100 * np.max(np.abs(y[:, i, j] - ref[:, i, j]) / np.maximum(np.abs(ref[:, i, j]), 1e-300)))
                total += sc_
                worst_rough, worst_err = max(worst_rough, rough), max(worst_err, err)
                print(f"{key:>10s} {nm:>12s} {t:6.0f} {sc_:12d} {rough:8.2f} {err:8.3f}")
        figures[f"sign_changes_{key}"] = total
        if key != "reference":
            figures[f"rough_max_{key}"] = round(worst_rough, 2)
            figures[f"err_max_pct_{key}"] = round(worst_err, 3)
    print()
    for k, v in figures.items():
        print(f"{k}: {v}")
    return figures


if __name__ == "__main__":
    main()
