r"""The NumPyro model: priors -> strain and batch effects -> simulate every batch -> likelihood.

For fitted parameter $p$ with prior median $m_p$ and log-SD $s_p$:
$$\log\theta_p = \log m_p + s_p z_p,\qquad z_p \sim N(0, 1)$$
and, where the strain file gives batch effects (non-centred),
$$\log\theta_{p,b} = \log\theta_p + \tau_p\,\epsilon_{p,b},\qquad \tau_p \sim N^+(0, \sigma_\tau),\ \epsilon_{p,b}\sim N(0,1).$$
With `[batch_effects] parameterisation = "centred"` the model samples each batch's log-value
$b_{p,b} = \log\theta_{p,b} \sim N(\log\theta_p, \tau_p^2)$ (site `log_<p>`) instead, and records
$\epsilon_{p,b} = (b_{p,b} - \log\theta_p)/\tau_p$ as a deterministic site `eps_<p>`, so a posterior
reads the same either way. The two are one model in other coordinates (their potentials differ
by the Jacobian $\sum_p B \log\tau_p$). Where every batch is well measured, the data pin
$b_{p,b}$ and the non-centred coordinates bend the posterior into a curved ridge in
$(\tau_p, \epsilon_{p,b})$ that a Gaussian (Laplace, VI, NUTS's mass matrix) fits poorly; the
centred ones do not (Betancourt & Girolami 2015, Hamiltonian Monte Carlo for hierarchical models).
Uncertain initial amounts scale by $\exp(s\,\eta_b)$. Each batch is simulated with its own
recipe on a fixed grid (exact gradients for the discrete model, predictable cost), all batches at
once with `jax.vmap`. Observation $y$ of variable $v$ at time $t$:
$$y \sim N(\hat y(t),\ a_v^2 + (c_v \hat y(t))^2 + (d_v \hat y'(t))^2),\qquad a_v \sim N^+(0, A_v),\
c_v \sim N^+(0, C_v),\ d_v \sim N^+(0, D_v)$$
(additive for online signals, multiplicative for assays, or both). The third term, where the strain
gives the variable a `timing_h` ($D_v$, hours), is the model's timing error: a trajectory that runs
$\delta$ h early or late misses by about $\hat y'(t)\,\delta$, large where the variable changes fast
and nil where it levels off (the effective-variance treatment of an uncertain abscissa, Orear 1982,
Am. J. Phys. 50, 912). Without it a relative-error term has to take the misfit of the fast phase
(the onset of production) and then reads the slow end of the batch as far noisier than it is,
which widens every predicted final titer (calibration/strains/penicillin_indpensim.toml).
Where the strain gives the variable a `floor` (a lab that reports any reading below it as the
floor, e.g. residual sugar clipped at 0), a reading at or below the floor is left-censored: it
contributes $\log P(y \le f) = \log\Phi((f - \hat y)/\sigma)$ (Tobin 1958) instead of a density
at the floor, which would read every clipped reading as exact and pull the fit and the noise
scale towards it.
"""

from __future__ import annotations

import hashlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from twin.data import BatchSet
from twin.errors import DataError
from twin.reactor import FermentationModel, set_parameters
from twin.recipe import Profile, Recipe, snap_to_grid, stack_recipes
from twin.simulate import FixedGrid, grid_slope, simulate
from twin.state import ReactorState

from .spec import StrainSpec

__all__ = ["CalibrationData", "build_data", "observe", "calibration_model", "batch_parameters",
           "simulate_batches", "structure_hash"]


class CalibrationData(eqx.Module):
    """Everything the likelihood needs, as arrays with a leading batch axis."""

    batches: tuple[str, ...] = eqx.field(static=True)
    variables: tuple[str, ...] = eqx.field(static=True)
    recipes: Recipe  # stacked (B,)
    y0: ReactorState  # stacked (B,)
    grid: jax.Array  # (G,) save times, h
    t_end: float = eqx.field(static=True)
    obs_t: dict  # var -> (B, N)
    obs_y: dict  # var -> (B, N)
    obs_mask: dict  # var -> (B, N) bool

    @property
    def n_batches(self) -> int:
        return len(self.batches)


def structure_hash(model: FermentationModel) -> str:
    """A fingerprint of the model *structure* (classes, static fields, parameter names)."""
    text = str(jax.tree_util.tree_structure(model))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _extend(profile: Profile, t_end: float) -> Profile:
    if float(profile.end) >= t_end:
        return profile
    return Profile(profile.start, jnp.asarray(t_end, dtype=float), profile.value, profile.value_end)


def recipe_from_record(record, recipe: Recipe, dt: float,
                       recorded: tuple[str, ...] = ("substrate_feed", "oil_feed", "precursor_feed",
                                                    "water_feed", "draw")) -> Recipe:
    """The recipe a batch actually ran: recorded online feeds (held piecewise-constant between
    samples) replace the planned profiles of flows the historian records; setpoints come from
    the batch's recipe. Recorded acid and base flows count as water (volume only). Breakpoints
    are snapped to the `dt` grid. A recorded precursor feed switches the recipe's precursor loop
    off (`precursor_setpoint` 0): the record already holds the flow the plant's loop chose."""
    profiles = dict(recipe.profiles)
    for var in recorded:
        if var not in record.variables():
            continue
        t, v = record.series(var)
        if var == "water_feed":
            # acid and base from the pH loop add volume like water (the twin has no pH model yet)
            for extra in ("acid_flow", "base_flow"):
                if extra in record.variables():
                    te, ve = record.series(extra)
                    v = v + np.interp(t, te, ve, left=0.0, right=0.0)
        t_grid = np.round(t / dt) * dt
        keep = np.concatenate([[True], np.diff(t_grid) > 0])
        t_grid, v = t_grid[keep], np.maximum(v[keep], 0.0)
        if t_grid[0] > 0:
            t_grid = np.concatenate([[0.0], t_grid])
            v = np.concatenate([[v[0]], v])
        end = max(float(recipe.profiles[var].end), float(t_grid[-1]) + dt)
        profiles[var] = Profile(jnp.asarray(t_grid), jnp.asarray(end), jnp.asarray(v), jnp.asarray(v))
        if var == "precursor_feed":
            # the recorded flow is what the plant's precursor loop did: no loop in the twin on top
            sp = recipe.profiles["precursor_setpoint"]
            profiles["precursor_setpoint"] = Profile(sp.start, sp.end, jnp.zeros_like(sp.value),
                                                     jnp.zeros_like(sp.value_end))
    return Recipe(profiles)


def _initial_state(record, scenario) -> ReactorState:
    """Initial state of a batch: the first assay of each concentration and the first volume where
    measured, the scenario's initial values otherwise."""
    y = scenario.y0
    vol = float(y.volume)
    if "volume" in record.variables():
        t, v = record.series("volume")
        if t[0] <= 1e-9:
            vol = float(v[0])
    conc = {}
    for name in ("biomass", "substrate", "product", "precursor", "oil"):
        c = float(getattr(y, name)) / float(y.volume)
        if name in record.variables():
            t, v = record.series(name)
            if t[0] <= 1e-9:
                c = max(float(v[0]), 0.0)
        conc[name] = c
    return ReactorState.initial(volume=vol, dissolved_oxygen=float(y.dissolved_oxygen),
                                **{k: c * vol for k, c in conc.items()})


def build_data(spec: StrainSpec, batch_set: BatchSet, recipes: dict[str, Recipe], *,
               dt: float | None = None) -> CalibrationData:
    """Pack batches into arrays: stacked recipes and initial states, padded observations.

    Raises:
        DataError: no batch has the product measured; a batch whose recorded span does not cover
            its assays; an observed variable missing from every batch.
    """
    dt = float(dt or spec.inference["dt"])
    records = list(batch_set)
    if not records:
        raise DataError("no batches to calibrate on", where=spec.path)
    if not any("product" in r.variables() for r in records):
        raise DataError("no batch has the product measured", where=batch_set.source, field="product")
    t_end = max(r.end_h for r in records)
    t_end = float(np.ceil(t_end / dt) * dt)
    rec_list, y0s = [], []
    for r in records:
        if r.batch not in recipes:
            raise DataError("no recipe for batch", where=batch_set.source, field=r.batch)
        planned, _ = snap_to_grid(recipes[r.batch], dt)  # set-point changes act on the solver grid
        rec = recipe_from_record(r, planned, dt, spec.recorded_feeds)
        rec = Recipe({k: _extend(p, t_end) for k, p in rec.profiles.items()})
        rec_list.append(rec)
        y0s.append(_initial_state(r, spec.scenario))
    grid = jnp.arange(0.0, t_end + dt / 2, dt)
    obs_t, obs_y, obs_m = {}, {}, {}
    variables = []
    for o in spec.observations:
        ts, ys = [], []
        for r in records:
            if o.variable in r.variables():
                t, v = r.series(o.variable)
                if o.every_h > 0:
                    sel = _thin(t, o.every_h)
                    t, v = t[sel], v[sel]
                if len(t) and (t[-1] > t_end + 1e-9 or t[0] < 0):
                    raise DataError("assay outside the batch's time span", where=batch_set.source,
                                    field=f"{r.batch}:{o.variable}", value=(float(t[0]), float(t[-1])))
            else:
                t, v = np.zeros(0), np.zeros(0)
            ts.append(t)
            ys.append(v)
        n = max(len(t) for t in ts)
        if n == 0:
            raise DataError("observed variable has no data in any batch", where=batch_set.source,
                            field=o.variable, hint="remove it from [observations] of the strain file")
        T = np.zeros((len(records), n))
        Y = np.zeros((len(records), n))
        M = np.zeros((len(records), n), dtype=bool)
        for i, (t, v) in enumerate(zip(ts, ys)):
            T[i, : len(t)] = t
            Y[i, : len(t)] = v
            M[i, : len(t)] = np.isfinite(v)
        Y = np.where(M, Y, 0.0)
        obs_t[o.variable], obs_y[o.variable], obs_m[o.variable] = jnp.asarray(T), jnp.asarray(Y), jnp.asarray(M)
        variables.append(o.variable)
    stacked_y0 = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *y0s)
    return CalibrationData(batches=tuple(r.batch for r in records), variables=tuple(variables),
                           recipes=stack_recipes(rec_list), y0=stacked_y0, grid=grid, t_end=t_end,
                           obs_t=obs_t, obs_y=obs_y, obs_mask=obs_m)


def _thin(t: np.ndarray, every: float) -> np.ndarray:
    keep, last = [], -np.inf
    for i, ti in enumerate(t):
        if ti >= last + every - 1e-9:
            keep.append(i)
            last = ti
    return np.asarray(keep, dtype=int)


def observe(traj, variable: str):
    """The model's prediction of an observed variable along a trajectory."""
    if variable == "volume":
        return traj.states.volume
    if variable == "dissolved_oxygen":
        return traj.outputs.dissolved_oxygen
    if variable == "oxygen_uptake_rate":
        return traj.outputs.oxygen_uptake_rate
    return getattr(traj.states, variable) / traj.states.volume


def batch_parameters(spec: StrainSpec, log_global: dict, batch_eps: dict, tau: dict,
                     n_batches: int) -> dict:
    """`{public name: (B,) values}` from global log-values, batch effects and their SDs."""
    out = {}
    for p in spec.priors:
        lg = log_global[p.key]
        if p.key in spec.batch_effects:
            out[p.name] = jnp.exp(lg + tau[p.key] * batch_eps[p.key])
        else:
            out[p.name] = jnp.exp(lg) * jnp.ones(n_batches)
    return out


def simulate_batches(model: FermentationModel, data: CalibrationData, params: dict, y0: ReactorState,
                     dt: float):
    """Simulate every batch (vmap) with its own parameters `{name: (B,)}`, recipe and initial state."""
    options = FixedGrid(dt=dt, max_horizon_h=data.t_end + dt)

    def one(p, recipe, y0b):
        m = set_parameters(model, p, check=False)
        return simulate(m, recipe, y0b, 0.0, data.t_end, ts=data.grid, options=options)

    return jax.vmap(one)(params, data.recipes, y0)


def _scale_y0(y0: ReactorState, factors: dict) -> ReactorState:
    for name, f in factors.items():
        y0 = eqx.tree_at(lambda y: getattr(y, name), y0, getattr(y0, name) * f)
    return y0


def calibration_model(spec: StrainSpec, model: FermentationModel, data: CalibrationData, *,
                      dt: float, predict_only: bool = False, observed: bool = True):
    """The NumPyro model (call inside numpyro inference).

    With `observed=False` the observation sites are sampled instead of conditioned on the data
    (the prior predictive, for simulation-based calibration); the data's times and mask are kept.
    """
    B = data.n_batches
    log_global, eps, tau = {}, {}, {}
    for p in spec.priors:
        z = numpyro.sample(f"z_{p.key}", dist.Normal(0.0, 1.0))
        log_global[p.key] = jnp.log(p.median) + p.log_sd * z
        numpyro.deterministic(p.key, jnp.exp(log_global[p.key]))
    centred = spec.batch_parameterisation == "centred"
    for key in spec.batch_effects:
        tau[key] = numpyro.sample(f"tau_{key}", dist.HalfNormal(spec.batch_sd_prior))
        with numpyro.plate("batches", B):
            if centred:
                log_b = numpyro.sample(f"log_{key}", dist.Normal(log_global[key], tau[key]))
                eps[key] = numpyro.deterministic(f"eps_{key}", (log_b - log_global[key]) / tau[key])
            else:
                eps[key] = numpyro.sample(f"eps_{key}", dist.Normal(0.0, 1.0))
    params = batch_parameters(spec, log_global, eps, tau, B)
    factors = {}
    for name, s in spec.initial.items():
        with numpyro.plate("batches", B):
            eta = numpyro.sample(f"eta0_{name}", dist.Normal(0.0, 1.0))
        factors[name] = jnp.exp(s * eta)
    y0 = _scale_y0(data.y0, factors)
    traj = simulate_batches(model, data, params, y0, dt)
    for o in spec.observations:
        if o.variable not in data.obs_t:
            continue
        a = numpyro.sample(f"sd_{o.variable}", dist.HalfNormal(o.sd)) if o.sd > 0 else 0.0
        c = numpyro.sample(f"cv_{o.variable}", dist.HalfNormal(o.cv)) if o.cv > 0 else 0.0
        pred_grid = observe(traj, o.variable)  # (B, G)
        at_readings = jax.vmap(jnp.interp, in_axes=(0, None, 0))
        pred = at_readings(data.obs_t[o.variable], data.grid, pred_grid)
        var = a**2 + (c * pred) ** 2 + 1e-12
        if o.timing_h > 0:
            d = numpyro.sample(f"timing_{o.variable}", dist.HalfNormal(o.timing_h))
            slope = at_readings(data.obs_t[o.variable], data.grid, grid_slope(pred_grid, data.grid))
            var = var + (d * slope) ** 2
        sd = jnp.sqrt(var)
        if predict_only:
            continue
        mask = data.obs_mask[o.variable]
        if o.floor is not None and observed:
            # a reading at or below the floor says only "at most floor" (left-censored)
            censored = mask & (data.obs_y[o.variable] <= o.floor)
            numpyro.factor(f"censored_{o.variable}", censored_loglik(pred, sd, o.floor, censored))
            mask = mask & ~censored
        with numpyro.handlers.mask(mask=mask):
            numpyro.sample(f"obs_{o.variable}", dist.Normal(pred, sd),
                           obs=data.obs_y[o.variable] if observed else None)
    return traj


def censored_loglik(pred, sd, floor: float, censored):
    r"""$\sum \log P(y \le f)$ over the `censored` readings: $\log\Phi((f - \hat y)/\sigma)$ each,
    with the normal noise model of the exact readings (`pred`, `sd` broadcast with `censored`)."""
    z = (floor - pred) / sd
    return jnp.sum(jnp.where(censored, jax.scipy.stats.norm.logcdf(jnp.where(censored, z, 0.0)), 0.0))
