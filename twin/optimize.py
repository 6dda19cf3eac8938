r"""Recipe optimisation under posterior uncertainty: `twin optimize SCENARIO --posterior P`.

The scenario's `[optimize]` table says what may change and what must hold:

```toml
[optimize]
objective = "mean"          # "mean": expected total product; "cvar": mean of the worst `risk_level`
risk_level = 0.2            # (cvar only) fraction of draws averaged
draws = 32                  # posterior draws in the objective (new-batch predictions)
check_draws = 200           # posterior draws for the final check and the reported gain
starts = 3                  # random starts besides the baseline
iterations = 200            # L-BFGS iterations per start and round
start_h = 24.0              # optimise from here on (the batch start keeps the baseline recipe)
phase_h = 23.0              # length of every optimised phase (a multiple of the posterior's dt)
min_dissolved_oxygen = "20 %"
max_volume = "100 m3"       # default: the vessel's working volume
max_substrate = "1 g/L"     # optional: residual sugar limit ...
max_substrate_after_h = 48  # ... from this time on (default start_h)
max_dissolved_co2 = "1.55 mmol/L"  # optional, for a model with a CO2 balance (model.co2 = true)
violation_tolerance = 0.05  # a constraint holds if at most this fraction of check draws breaks it
trust_region = 0.15         # optional: each phase within +-15 % of the baseline's phase mean
replan_min_gain_pct = 0.0   # `twin advise` only: an expected gain at or below this (% of the plan's
                            # total product) is within the twin's response error: continue as planned

[optimize.variables]
substrate_feed = { lower = "0 L/h", upper = "150 L/h", budget = "baseline", resolution = "1 L/h" }
oil_feed = { lower = "0 L/h", upper = "40 L/h", budget = "baseline", resolution = "1 L/h" }
temperature = { lower = "24 degC", upper = "26 degC", resolution = "0.1 degC", max_change = "1 degC" }
```

Each optimised variable becomes a `twin.control.Block` of phase values over
`[start_h, duration]`: bounds hold exactly; `budget = "baseline"` holds its total (L of feed, so
mass at the feed's concentration) equal to the baseline recipe's over the same window, exactly;
`max_change` limits the step between neighbouring phases. The objective is the total product
(in the vessel plus drawn, kg) at the end of the batch over `draws` posterior draws of a *new*
batch (fresh batch effects), vmapped; DO and volume limits are smooth worst cases over draws and
time, held by the augmented Lagrangian. After the solve the phase values are rounded to each
variable's `resolution`, and the rounded recipe and the baseline are both re-simulated on
`check_draws` draws (paired): the reported gain, its credible interval, the probability of a
gain and every constraint's worst value come from that check, never from the optimiser.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .control import Block, Budget, ControlError, ControlProblem, sensitivity, solve
from .errors import TwinError
from .recipe import Profile, Recipe, snap_to_grid
from .simulate import FixedGrid, Trajectory
from .state import CONTROL_VARIABLES

__all__ = ["OptimizeSpec", "VariableSpec", "load_optimize_spec", "RecipeOptimizer", "OptimizeError"]


class OptimizeError(TwinError):
    """An optimisation that cannot be set up or did not find a feasible recipe."""


_KEYS = {"objective", "risk_level", "draws", "check_draws", "starts", "iterations", "start_h", "phase_h",
         "min_dissolved_oxygen", "max_volume", "max_substrate", "max_substrate_after_h", "max_dissolved_co2",
         "trust_region", "seed", "violation_tolerance", "replan_min_gain_pct", "variables"}
_VAR_KEYS = {"lower", "upper", "budget", "resolution", "max_change"}


@dataclasses.dataclass(frozen=True)
class VariableSpec:
    name: str
    lower: float
    upper: float
    budget: bool
    resolution: float
    max_change: float | None


@dataclasses.dataclass(frozen=True)
class OptimizeSpec:
    objective: str
    risk_level: float
    draws: int
    check_draws: int
    starts: int
    iterations: int
    start_h: float
    phase_h: float
    min_dissolved_oxygen: float
    max_volume: float
    max_substrate: float | None
    max_substrate_after_h: float
    violation_tolerance: float
    trust_region: float | None
    seed: int
    variables: tuple[VariableSpec, ...]
    max_dissolved_co2: float | None = None  # mmol/L, over the whole batch
    replan_min_gain_pct: float = 0.0  # `twin advise`: smaller expected gains -> continue as planned


def _qty(raw, unit: str, where, field: str) -> float:
    """A number, or 'number unit' converted to `unit` (internal units); "" for plain numbers."""
    if unit:
        from .scenario import _value

        return _value(raw, unit, where, field)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise OptimizeError("must be a finite number", where=where, field=field, value=raw)
    return float(raw)


def load_optimize_spec(sc) -> OptimizeSpec:
    """The `[optimize]` table of a scenario, validated (units converted to internal units)."""
    where = sc.path
    raw = sc.raw.get("optimize")
    if raw is None:
        raise OptimizeError("the scenario has no [optimize] table (what to optimise, bounds, budgets)",
                            where=where, field="[optimize]", hint="see twin/optimize.py for the format")
    extra = sorted(set(raw) - _KEYS)
    if extra:
        raise OptimizeError("unknown key", where=where, field=f"optimize.{extra[0]}", hint=f"known: {', '.join(sorted(_KEYS))}")
    objective = raw.get("objective", "mean")
    if objective not in ("mean", "cvar"):
        raise OptimizeError("must be 'mean' or 'cvar'", where=where, field="optimize.objective", value=objective)
    risk = _qty(raw.get("risk_level", 0.2), "", where, "optimize.risk_level")
    if not 0 < risk <= 1:
        raise OptimizeError("must be in (0, 1]", where=where, field="optimize.risk_level", value=risk)
    ints = {}
    for k, d in (("draws", 32), ("check_draws", 200), ("starts", 3), ("iterations", 200), ("seed", 0)):
        v = raw.get(k, d)
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k in ("starts", "seed") else 1):
            raise OptimizeError("must be a whole number" + (" >= 0" if k in ("starts", "seed") else " >= 1"),
                                where=where, field=f"optimize.{k}", value=v)
        ints[k] = v
    start = _qty(raw.get("start_h", 0.0), "h", where, "optimize.start_h")
    phase = _qty(raw.get("phase_h", sc.duration_h / 10), "h", where, "optimize.phase_h")
    if not 0 <= start < sc.duration_h:
        raise OptimizeError(f"must lie in [0, {sc.duration_h:g}) h", where=where, field="optimize.start_h", value=start)
    if phase <= 0:
        raise OptimizeError("must be positive", where=where, field="optimize.phase_h", value=phase)
    do_min = _qty(raw.get("min_dissolved_oxygen", 0.0), "%", where, "optimize.min_dissolved_oxygen")
    if do_min >= 100.0:
        raise OptimizeError("no recipe can hold the dissolved oxygen at or above air saturation at the "
                            "head pressure the twin assumes for it", where=where,
                            field="optimize.min_dissolved_oxygen", value=do_min, hint="use a value below 100 %")
    vmax = _qty(raw.get("max_volume", float(sc.model.vessel.working_volume)), "L", where, "optimize.max_volume")
    smax = raw.get("max_substrate")
    if smax is not None:
        smax = _qty(smax, "g/L", where, "optimize.max_substrate")
        if smax <= 0:
            raise OptimizeError("must be positive", where=where, field="optimize.max_substrate", value=smax)
    s_after = _qty(raw.get("max_substrate_after_h", start), "h", where, "optimize.max_substrate_after_h")
    cmax = raw.get("max_dissolved_co2")
    if cmax is not None:
        cmax = _qty(cmax, "mmol/L", where, "optimize.max_dissolved_co2")
        if getattr(sc.model.kinetics, "co2", None) is None:
            raise OptimizeError("the model has no CO2 balance to hold a limit on", where=where,
                                field="optimize.max_dissolved_co2", value=cmax,
                                hint="set model.co2 = true with its kinetics (q_CO2, CO2_crit), or drop the limit")
        if cmax <= 0:
            raise OptimizeError("must be positive", where=where, field="optimize.max_dissolved_co2", value=cmax)
    tol = _qty(raw.get("violation_tolerance", 0.05), "", where, "optimize.violation_tolerance")
    if not 0 <= tol < 0.5:
        raise OptimizeError("must be in [0, 0.5)", where=where, field="optimize.violation_tolerance", value=tol)
    min_gain = _qty(raw.get("replan_min_gain_pct", 0.0), "", where, "optimize.replan_min_gain_pct")
    if min_gain < 0:
        raise OptimizeError("must be >= 0 (% of the plan's total product)", where=where,
                            field="optimize.replan_min_gain_pct", value=min_gain)
    tr = raw.get("trust_region")
    if tr is not None:
        tr = _qty(tr, "", where, "optimize.trust_region")
        if tr <= 0:
            raise OptimizeError("must be positive", where=where, field="optimize.trust_region", value=tr)
    variables = []
    table = raw.get("variables", {})
    if not table:
        raise OptimizeError("no variables to optimise", where=where, field="optimize.variables")
    for name, v in table.items():
        f = f"optimize.variables.{name}"
        if name not in CONTROL_VARIABLES:
            raise OptimizeError("unknown variable", where=where, field=f, hint=f"known: {', '.join(CONTROL_VARIABLES)}")
        if not isinstance(v, dict):
            raise OptimizeError("must be a table { lower, upper, ... }", where=where, field=f, value=v)
        extra = sorted(set(v) - _VAR_KEYS)
        if extra:
            raise OptimizeError("unknown key", where=where, field=f"{f}.{extra[0]}", hint=f"known: {', '.join(sorted(_VAR_KEYS))}")
        unit = CONTROL_VARIABLES[name].unit
        for k in ("lower", "upper"):
            if k not in v:
                raise OptimizeError("missing required key", where=where, field=f"{f}.{k}")
        lo, hi = _qty(v["lower"], unit, where, f"{f}.lower"), _qty(v["upper"], unit, where, f"{f}.upper")
        if lo > hi:
            raise OptimizeError("lower must be <= upper", where=where, field=f, value=(lo, hi))
        if name.endswith("_feed") or name == "draw":
            if lo < 0:
                raise OptimizeError("a flow cannot be negative", where=where, field=f"{f}.lower", value=lo)
        budget = v.get("budget")
        if budget not in (None, "baseline"):
            raise OptimizeError("must be \"baseline\" (the baseline recipe's total over the window)",
                                where=where, field=f"{f}.budget", value=budget)
        res = _qty(v.get("resolution", 0.0), unit, where, f"{f}.resolution")
        if res < 0:
            raise OptimizeError("must be >= 0", where=where, field=f"{f}.resolution", value=res)
        mc = v.get("max_change")
        mc = None if mc is None else _qty(mc, unit, where, f"{f}.max_change")
        variables.append(VariableSpec(name, lo, hi, budget == "baseline", res, mc))
    return OptimizeSpec(objective, risk, ints["draws"], ints["check_draws"], ints["starts"], ints["iterations"],
                        start, phase, do_min, vmax, smax, s_after, tol, tr, ints["seed"], tuple(variables), cmax,
                        min_gain)


def _phase_grid(spec: OptimizeSpec, t_end: float, dt: float, where) -> np.ndarray:
    """Starts of the optimised phases, with `t_end` appended."""
    for k, v in (("start_h", spec.start_h), ("phase_h", spec.phase_h)):
        if abs(v / dt - round(v / dt)) > 1e-9:
            raise OptimizeError(f"must be a multiple of the posterior's solver step ({dt:g} h)", where=where,
                                field=f"optimize.{k}", value=v)
    edges = list(np.arange(spec.start_h, t_end - 1e-9, spec.phase_h))
    if t_end - edges[-1] < 0.5 * spec.phase_h and len(edges) > 1:
        edges.pop()  # a short last phase joins the one before
    return np.asarray(edges + [t_end])


@dataclasses.dataclass
class _Fixed:
    """The part of a variable's profile before the optimised window (kept from the baseline)."""

    start: np.ndarray
    value: np.ndarray
    value_end: np.ndarray


def _on_grid_bounds(lo: np.ndarray, hi: np.ndarray, res: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds moved inwards onto the resolution grid (a trust-region bound such as 20.18 L/h is
    not a value a pump is set to); where no grid value lies within the bounds, the bounds stay."""
    lo_g = np.ceil(lo / res - 1e-9) * res
    hi_g = np.floor(hi / res + 1e-9) * res
    inside = lo_g <= hi_g
    return np.where(inside, lo_g, lo), np.where(inside, hi_g, hi)


class RecipeOptimizer:
    """Builds the control problem for a scenario, a baseline recipe and posterior draws.

    Args:
        sc: the scenario (its model and `[optimize]` table).
        baseline: the recipe to beat (snapped to the posterior's grid here).
        draws: `calibration.posterior.PosteriorDraws` (new-batch draws).
        spec: the parsed `[optimize]` table (default: from the scenario).
    """

    def __init__(self, sc, baseline: Recipe, draws, spec: OptimizeSpec | None = None):
        self.sc = sc
        self.spec = spec or load_optimize_spec(sc)
        self.dt = float(draws.dt)
        self.baseline, self.moves = snap_to_grid(baseline, self.dt)
        self.t_end = float(sc.duration_h)
        self.edges = _phase_grid(self.spec, self.t_end, self.dt, sc.path)
        self.widths = np.diff(self.edges)
        self.ts = jnp.arange(0.0, self.t_end + self.dt / 2, self.dt)
        self._window = np.asarray(self.ts) >= self.spec.max_substrate_after_h - 1e-9
        self.draws = draws
        self._fixed = {v.name: self._fixed_part(v.name) for v in self.spec.variables}
        self.baseline_phases = {v.name: self._phase_means(self.baseline, v.name) for v in self.spec.variables}
        self.blocks = tuple(self._block(v) for v in self.spec.variables)
        # the pH loop's acid + base inflow of each calibration batch, (batches, steps) L/h
        from calibration.posterior import ph_loop_inflows, recipe_water

        self.ph_loop_inflows = ph_loop_inflows(draws.attrs, self.t_end, self.dt)
        self._water = recipe_water(self.baseline, self.t_end, self.dt)  # not a decision (checked below)
        if self.ph_loop_inflows is not None and "water_feed" in [v.name for v in self.spec.variables]:
            raise OptimizeError("water_feed cannot be optimised while the pH loop's acid/base inflow "
                                "is added to it", where=sc.path, field="optimize.variables.water_feed")

    # -- recipe <-> phase values ---------------------------------------------------------------
    def _fixed_part(self, name: str) -> _Fixed:
        p = self.baseline.profiles[name]
        start = np.asarray(p.start)
        keep = start < self.spec.start_h - 1e-9
        return _Fixed(start[keep], np.asarray(p.value)[keep], np.asarray(p.value_end)[keep])

    def _phase_means(self, recipe: Recipe, name: str) -> np.ndarray:
        p = recipe.profiles[name]
        return np.asarray([float(p.integral(a, b)) / (b - a) for a, b in zip(self.edges[:-1], self.edges[1:])])

    def recipe(self, controls: dict) -> Recipe:
        """The baseline with each optimised variable's window replaced by `controls` (traceable)."""
        profiles = dict(self.baseline.profiles)
        for v in self.spec.variables:
            fx = self._fixed[v.name]
            u = jnp.asarray(controls[v.name], dtype=float)
            # times stay concrete (NumPy) under jit, so `simulate` can check them against its grid
            start = np.concatenate([fx.start, self.edges[:-1]])
            value = jnp.concatenate([jnp.asarray(fx.value), u])
            value_end = jnp.concatenate([jnp.asarray(fx.value_end), u])
            end = np.maximum(self.t_end, float(self.baseline.profiles[v.name].end))
            profiles[v.name] = Profile(start, end, value, value_end)
        return Recipe(profiles)

    def _block(self, v: VariableSpec) -> Block:
        lo = np.full(len(self.widths), v.lower)
        hi = np.full(len(self.widths), v.upper)
        base = self.baseline_phases[v.name]
        if self.spec.trust_region is not None:
            span = self.spec.trust_region * np.maximum(np.abs(base), 1e-9)
            lo, hi = np.maximum(lo, base - span), np.minimum(hi, base + span)
            lo = np.minimum(lo, hi)
        budget = None
        if v.budget:
            total = float(np.sum(base * self.widths))
            budget = Budget(total=total, weights=self.widths)
        try:
            return Block(v.name, lo, hi, budget=budget, max_change=v.max_change)
        except ControlError as e:
            raise OptimizeError(f"infeasible before any solve: {e}", where=self.sc.path,
                                field=f"optimize.variables.{v.name}",
                                hint="widen the bounds or the trust region, or change the budget") from None

    # -- simulation over draws -----------------------------------------------------------------
    def water_per_draw(self, n: int) -> dict[str, Profile]:
        """What the twin adds to the water feed of draw `i` of `n`: the pH loop's acid + base inflow
        recorded in calibration batch `i mod batches` (`calibration.posterior.ph_loop_water`; not
        part of any recipe handed to operators). Empty where the history records no acid or base."""
        from calibration.posterior import ph_loop_water

        return ph_loop_water(self._water, self.ph_loop_inflows, n, self.t_end, self.dt)

    def simulate(self, recipe: Recipe, draws=None) -> Trajectory:
        from calibration.posterior import simulate_draws

        draws = draws or self.draws
        return simulate_draws(self.sc.model, recipe, self.sc.y0, draws, 0.0, self.t_end, ts=self.ts,
                              options=FixedGrid(dt=self.dt, max_horizon_h=self.t_end + self.dt),
                              per_draw=self.water_per_draw(draws.n))

    def _score(self, total_kg):
        if self.spec.objective == "mean":
            return jnp.mean(total_kg)
        k = max(int(math.ceil(self.spec.risk_level * total_kg.shape[0])), 1)
        return jnp.mean(jnp.sort(total_kg)[:k])

    def objective(self, controls: dict, args) -> tuple[jax.Array, jax.Array]:
        """(J in kg, g) with g = [DO shortfall, volume excess], each scaled to order one."""
        traj = self.simulate(self.recipe(controls))
        total_kg = traj.total_product[:, -1] / 1000.0
        J = self._score(total_kg)
        tau_do, tau_v = 0.5, 0.002
        do = traj.outputs.dissolved_oxygen
        do_min = -tau_do * jax.nn.logsumexp(-do / tau_do)
        vmax = self.spec.max_volume * tau_v * jax.nn.logsumexp(traj.states.volume / (self.spec.max_volume * tau_v))
        g = []
        if self.spec.min_dissolved_oxygen > 0:
            g.append((self.spec.min_dissolved_oxygen - do_min) / self.spec.min_dissolved_oxygen)
        g.append((vmax - self.spec.max_volume) / self.spec.max_volume)
        if self.spec.max_substrate is not None:
            sub = (traj.states.substrate / traj.states.volume)[:, self._window]
            tau_s = 0.02 * self.spec.max_substrate
            smax = tau_s * jax.nn.logsumexp(sub / tau_s)
            g.append((smax - self.spec.max_substrate) / self.spec.max_substrate)
        if self.spec.max_dissolved_co2 is not None:
            g.append(co2_excess(traj.outputs.dissolved_co2, self.spec.max_dissolved_co2))
        return J, jnp.stack(g)

    @property
    def constraint_names(self) -> tuple[str, ...]:
        names = []
        if self.spec.min_dissolved_oxygen > 0:
            names.append(f"dissolved oxygen >= {self.spec.min_dissolved_oxygen:g} % (smooth worst case)")
        names.append(f"volume <= {self.spec.max_volume / 1000:g} m3 (smooth worst case)")
        if self.spec.max_substrate is not None:
            names.append(f"sugar <= {self.spec.max_substrate:g} g/L from {self.spec.max_substrate_after_h:g} h "
                         "(smooth worst case)")
        if self.spec.max_dissolved_co2 is not None:
            names.append(f"dissolved CO2 <= {self.spec.max_dissolved_co2:g} mmol/L (smooth worst case)")
        return tuple(names)

    def problem(self) -> ControlProblem:
        return ControlProblem(self.blocks, self.objective, constraint_names=self.constraint_names)

    def round(self, controls: dict) -> dict:
        """Phase values rounded to each variable's resolution, within its bounds; for a budgeted
        variable the rounding goes up or down phase by phase (largest remainders first) so that the
        total stays as close to the budget as the resolution allows."""
        out = {}
        for v, b in zip(self.spec.variables, self.blocks):
            u = np.asarray(controls[v.name], dtype=float)
            if v.resolution > 0:
                res = v.resolution
                lo, hi = _on_grid_bounds(np.asarray(b.lower), np.asarray(b.upper), res)
                r = np.clip(np.round(u / res) * res, lo, hi)
                if b.budget is not None:
                    w = self.widths
                    deficit = float(b.budget.total - np.sum(w * r))
                    order = np.argsort(-(u - r) * np.sign(deficit))  # phases rounded against the deficit
                    for i in order:
                        step = np.sign(deficit) * res
                        if abs(deficit) < 0.5 * w[i] * res or not lo[i] <= r[i] + step <= hi[i]:
                            continue
                        r[i] += step
                        deficit -= step * w[i]
                u = r
            out[v.name] = u
        return out

    def solve(self, *, progress: Callable[[int, int], None] | None = None):
        from .control import LBFGS

        problem = self.problem()
        starts = [{k: np.clip(v, np.asarray(b.lower), np.asarray(b.upper))
                   for (k, v), b in zip(self.baseline_phases.items(), self.blocks)}]
        return solve(problem, starts=starts, n_random=self.spec.starts, key=jax.random.PRNGKey(self.spec.seed),
                     solver=LBFGS(max_steps=self.spec.iterations), progress=progress)

    def sensitivity(self, controls: dict) -> dict[str, np.ndarray]:
        """dJ/du per phase (kg of product per control unit) at `controls`. For a budgeted variable,
        the derivative at constant total: the gradient with its component along the budget weights
        removed (what moving feed into this phase from the others, pro rata, would do)."""
        g = sensitivity(self.problem(), controls)
        for b in self.blocks:
            if b.budget is not None:
                w = self.widths
                g[b.name] = g[b.name] - w * float(np.dot(g[b.name], w) / np.dot(w, w))
        return g


def co2_excess(dissolved_co2, limit: float):
    """The dissolved-CO2 limit as a constraint g <= 0: the smooth worst case over draws and times
    (log-sum-exp at 1 % of the limit), relative to the limit."""
    tau = 0.01 * limit
    return (tau * jax.nn.logsumexp(dissolved_co2 / tau) - limit) / limit


def constraint_report(traj: Trajectory, spec: OptimizeSpec) -> dict[str, Any]:
    """Worst value over draws and time of every constraint, and the fraction of draws violating it.
    The sugar limit applies from `max_substrate_after_h` on."""
    do_min = np.min(np.asarray(traj.outputs.dissolved_oxygen), axis=1)
    vmax = np.max(np.asarray(traj.states.volume), axis=1)
    out = {"max_volume_m3": {"limit": spec.max_volume / 1000, "worst": float(vmax.max()) / 1000,
                             "fraction_of_draws_violating": float(np.mean(vmax > spec.max_volume * (1 + 1e-6)))}}
    if spec.min_dissolved_oxygen > 0:
        out["min_dissolved_oxygen_pct"] = {
            "limit": spec.min_dissolved_oxygen, "worst": float(do_min.min()),
            "fraction_of_draws_violating": float(np.mean(do_min < spec.min_dissolved_oxygen - 1e-6))}
    if spec.max_substrate is not None:
        ts = np.asarray(traj.ts)[0]
        window = ts >= spec.max_substrate_after_h - 1e-9
        smax = np.max((np.asarray(traj.states.substrate) / np.asarray(traj.states.volume))[:, window], axis=1)
        out["max_substrate_g_L"] = {"limit": spec.max_substrate, "worst": float(smax.max()),
                                    "fraction_of_draws_violating": float(np.mean(smax > spec.max_substrate * (1 + 1e-6)))}
    if spec.max_dissolved_co2 is not None:
        cmax = np.max(np.asarray(traj.outputs.dissolved_co2), axis=1)
        out["max_dissolved_co2_mmol_L"] = {
            "limit": spec.max_dissolved_co2, "worst": float(cmax.max()),
            "fraction_of_draws_violating": float(np.mean(cmax > spec.max_dissolved_co2 * (1 + 1e-6)))}
    return out


def _history_bands(attrs: dict, variables, ts: np.ndarray) -> dict | None:
    """What operators did in the posterior's calibration batches: `{variable: (batches, times)}`
    from the recorded online series where recorded, from each batch's recipe otherwise."""
    strain_file = attrs.get("strain_file")
    if not strain_file or not Path(strain_file).is_file():
        return None
    from calibration.infer import load_history
    from calibration.spec import load_strain

    from .recipe import sample

    spec = load_strain(strain_file)
    bs, recipes = load_history(spec)
    out = {}
    for var in variables:
        rows = []
        for rec in bs:
            if var in rec.variables():
                t, v = rec.series(var)
                idx = np.clip(np.searchsorted(t, ts, side="right") - 1, 0, len(t) - 1)
                rows.append(np.asarray(v)[idx])
            else:
                rows.append(sample(recipes[rec.batch], var, ts))
        out[var] = np.stack(rows)
    return out


def _totals(recipe: Recipe, t_end: float) -> dict[str, float]:
    return {v: float(recipe.total(v, 0.0, t_end)) for v in ("substrate_feed", "oil_feed", "precursor_feed",
                                                            "water_feed", "draw")}


def run_optimize(scenario: Path, posterior: Path, out: Path, *, baseline_path: Path | None = None,
                 progress: Callable[[int, int], None] | None = None, overrides=None) -> dict:
    """`twin optimize`: solve, round, check on every posterior draw, write recipe.csv, summary.json
    and the figures. Nothing is written unless the rounded recipe holds every constraint on the
    check draws (else `OptimizeError`, exit status 2 in the CLI)."""
    import time

    from calibration.posterior import load_draws

    from . import __version__
    from .plots import plot_outcome, plot_recipe_vs_history, plot_sensitivity
    from .recipe import read_recipe_csv, sample, write_recipe_csv
    from .report import write_json
    from .scenario import load_scenario, parse_overrides
    from .units import from_internal, to_internal

    t0 = time.perf_counter()
    sc = load_scenario(scenario, overrides=parse_overrides(overrides))
    spec = load_optimize_spec(sc)
    baseline = sc.recipe if baseline_path is None else read_recipe_csv(
        baseline_path, defaults=sc.control_defaults, span=(0.0, sc.duration_h))
    draws = load_draws(posterior, sc.model, spec.draws, seed=spec.seed)
    opt = RecipeOptimizer(sc, baseline, draws, spec)
    result = opt.solve(progress=progress)
    rounded = opt.round(result.controls)
    new_recipe = jax.tree_util.tree_map(jnp.asarray, opt.recipe(rounded))
    check = load_draws(posterior, sc.model, spec.check_draws, seed=spec.seed + 1)
    ens_new = jax.tree_util.tree_map(np.asarray, opt.simulate(new_recipe, check))
    ens_base = jax.tree_util.tree_map(np.asarray, opt.simulate(opt.baseline, check))
    from .simulate import ensure_success

    ensure_success(ens_new, label="optimised recipe (check draws)")
    ensure_success(ens_base, label="baseline recipe (check draws)")
    tot_new = np.asarray(ens_new.total_product)[:, -1] / 1000.0
    tot_base = np.asarray(ens_base.total_product)[:, -1] / 1000.0
    gain_pct = 100.0 * (tot_new / tot_base - 1.0)
    cons_new = constraint_report(ens_new, spec)
    cons_base = constraint_report(ens_base, spec)
    violated = {k: v for k, v in cons_new.items() if v["fraction_of_draws_violating"] > spec.violation_tolerance}
    budgets_new, budgets_base = _totals(new_recipe, opt.t_end), _totals(opt.baseline, opt.t_end)
    display = {"aeration": "m3/min"}
    units = {v: display.get(v, CONTROL_VARIABLES[v].unit) for v in CONTROL_VARIABLES}
    # kg per display unit (per m3/min of gas, not per L/h): dJ/du_display = dJ/du * du/du_display
    sens = {v: g * float(to_internal(1.0, units[v], CONTROL_VARIABLES[v].dimension))
            for v, g in opt.sensitivity(rounded).items()}
    summary = {
        "objective": {"kind": spec.objective, "risk_level": spec.risk_level if spec.objective == "cvar" else None,
                      "value_kg": result.objective, "optimiser_feasible": result.feasible,
                      "optimiser_max_violation": result.max_violation,
                      "start_objectives_kg": result.start_objectives.tolist(), "best_start": result.best_start,
                      "iterations": result.iterations.tolist(), "solve_s": result.wall_s},
        "predicted_total_product_kg": {"new_median": float(np.median(tot_new)), "baseline_median": float(np.median(tot_base)),
                                       "new_mean": float(tot_new.mean()), "baseline_mean": float(tot_base.mean())},
        "expected_gain_pct": float(np.mean(gain_pct)),
        "gain_pct_90ci": [float(np.percentile(gain_pct, 5)), float(np.percentile(gain_pct, 95))],
        "prob_new_beats_baseline": float(np.mean(gain_pct > 0)),
        "check_draws": int(tot_new.shape[0]),
        "material_L": {k: {"new": budgets_new[k], "baseline": budgets_base[k],
                           "relative_difference": (budgets_new[k] / budgets_base[k] - 1) if budgets_base[k] else 0.0}
                       for k in budgets_new},
        # what the simulated batches took in, loops included (the precursor loop's flow is decided
        # by the broth, not by the recipe): mean over the check draws, kg
        "material_fed_kg": {k: {"new": float(np.mean(getattr(ens_new.states.ledger, k)[:, -1])) / 1000.0,
                                "baseline": float(np.mean(getattr(ens_base.states.ledger, k)[:, -1])) / 1000.0}
                            for k in ("substrate_fed", "oil_fed", "precursor_fed")},
        "constraints_new_recipe": cons_new, "constraints_baseline": cons_base,
        "sensitivity_kg_per_unit": {k: v.tolist() for k, v in sens.items()},
        "sensitivity_units": {k: f"kg per {units[k]}" for k in sens},
        "phases_h": opt.edges.tolist(),
        "recipe_breakpoints_moved_to_grid": [list(m) for m in opt.moves],
        "provenance": {"posterior": str(posterior), "strain": draws.attrs.get("strain"),
                       "posterior_method": draws.attrs.get("method"), "posterior_created": draws.attrs.get("created"),
                       "data_hash": draws.attrs.get("data_hash"), "scenario": str(scenario),
                       "overrides": list(overrides or []), "baseline": str(baseline_path) if baseline_path else "scenario recipe",
                       "twin_version": __version__, "solver_dt_h": opt.dt},
        "wall_s": time.perf_counter() - t0,
    }
    if violated:
        name, v = next(iter(violated.items()))
        vb = cons_base[name]
        raise OptimizeError(
            f"the optimised recipe violates '{name}' on {v['fraction_of_draws_violating']:.0%} of the posterior "
            f"draws (worst {v['worst']:.4g}, limit {v['limit']:.4g}; the baseline: "
            f"{vb['fraction_of_draws_violating']:.0%}, worst {vb['worst']:.4g}); no recipe written", where=scenario,
            field=f"optimize ({name})",
            hint="tighten the limit in [optimize] (the optimiser holds a smooth worst case), or add draws")
    out.mkdir(parents=True, exist_ok=True)
    write_recipe_csv(new_recipe, out / "recipe.csv", units=display)
    write_json(summary, out / "summary.json")
    ts = np.arange(0.0, opt.t_end, 0.5)
    variables = [v.name for v in spec.variables] + [v for v in ("aeration", "back_pressure", "water_feed", "draw")
                                                     if v not in [x.name for x in spec.variables]]
    shown = lambda v, x: np.asarray(from_internal(np.asarray(x), units[v], CONTROL_VARIABLES[v].dimension))  # noqa: E731
    new_s = {v: shown(v, sample(new_recipe, v, ts)) for v in variables}
    base_s = {v: shown(v, sample(opt.baseline, v, ts)) for v in variables}
    hist = _history_bands(draws.attrs, variables, ts)
    hist = None if hist is None else {v: shown(v, h) for v, h in hist.items()}
    plot_recipe_vs_history(variables, ts, new_s, base_s, hist, units=units,
                           title=f"{sc.title}: new recipe vs baseline and operator history", path=out / "recipe_vs_history.png")
    limits = {"dissolved_oxygen": spec.min_dissolved_oxygen, "volume": spec.max_volume / 1000}
    if spec.max_dissolved_co2 is not None:
        limits["dissolved_co2"] = spec.max_dissolved_co2
    plot_outcome(ens_new, ens_base, path=out / "outcome.png", limits=limits,
        title=f"Predicted outcome, {tot_new.shape[0]} posterior draws (new batches): expected gain "
              f"{summary['expected_gain_pct']:+.1f} % [90 %: {summary['gain_pct_90ci'][0]:+.1f}, "
              f"{summary['gain_pct_90ci'][1]:+.1f}], P(better) {summary['prob_new_beats_baseline']:.2f}")
    plot_sensitivity(opt.edges, sens, units, path=out / "why.png",
                     title="Why: d(expected total product, kg) per unit change of each phase at the new recipe\n(budgeted feeds: at constant total, i.e. feed moved into the phase from the others)")
    return summary
