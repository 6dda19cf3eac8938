"""Tables and summaries of simulated batches: trajectories.csv and the headline figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path, atomic_write_text
from .state import CONTROL_VARIABLES, LEDGER_VARIABLES, STATE_VARIABLES

__all__ = ["trajectory_frame", "write_trajectories", "summarize", "write_json", "member",
           "median_trajectory", "summarize_ensemble", "band_frame"]

_OUTPUT_COLUMNS = {
    "oxygen_uptake_rate": "oxygen_uptake_rate_mmol_L_h",
    "kla": "kla_1_h",
    "oxygen_saturation": "oxygen_saturation_mmol_L",
    "growth_rate": "growth_rate_1_h",
    "production_rate": "specific_production_rate_g_g_h",
    "substrate_uptake": "specific_substrate_uptake_g_g_h",
    "evaporation": "evaporation_L_h",
    "power_per_volume": "power_per_volume_W_m3",
    # only where the model carries a CO2 balance (kinetics.co2)
    "carbon_evolution_rate": "carbon_evolution_rate_mmol_L_h",
    "offgas_co2": "offgas_co2_mol_mol",
    "dissolved_co2": "dissolved_co2_mmol_L",
    "co2_factor": "co2_factor",
}


def trajectory_frame(traj) -> pd.DataFrame:
    """One row per saved time: `time_h`, every state (concentrations in g/L), every control,
    the algebraic outputs and the cumulative ledger; units are in the column names."""
    cols: dict[str, np.ndarray] = {"time_h": np.asarray(traj.ts)}
    for name, info in STATE_VARIABLES.items():
        if name == "volume":
            v = np.asarray(traj.states.volume)
        elif name == "dissolved_oxygen":
            v = np.asarray(traj.outputs.dissolved_oxygen)
        else:
            v = np.asarray(traj.concentration(name))
        cols[info.column] = v
    cols["total_product_g"] = np.asarray(traj.total_product)
    for name, info in CONTROL_VARIABLES.items():
        cols[info.column] = np.asarray(getattr(traj.controls, name))
    for name, col in _OUTPUT_COLUMNS.items():
        if getattr(traj.outputs, name) is not None:
            cols[col] = np.asarray(getattr(traj.outputs, name))
    for name, info in LEDGER_VARIABLES.items():
        cols[info.column] = np.asarray(getattr(traj.states.ledger, name))
    return pd.DataFrame(cols)


def write_trajectories(traj, path: str | os.PathLike) -> Path:
    """Write `trajectory_frame(traj)` as CSV atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
        trajectory_frame(traj).to_csv(tmp, index=False, float_format="%.10g")
    return Path(path)


def summarize(traj, *, working_volume_L: float | None = None) -> dict[str, float]:
    """Headline figures of one simulated batch (SI-ish units stated in the keys)."""
    s = traj.states
    L = s.ledger
    out = {
        "duration_h": float(traj.ts[-1] - traj.ts[0]),
        "final_titer_g_L": float(traj.concentration("product")[-1]),
        "total_product_kg": float(traj.total_product[-1]) / 1000.0,
        "product_in_vessel_kg": float(s.product[-1]) / 1000.0,
        "product_drawn_kg": float(L.product_drawn[-1]) / 1000.0,
        "substrate_fed_kg": float(L.substrate_fed[-1]) / 1000.0,
        "oil_fed_kg": float(L.oil_fed[-1]) / 1000.0,
        "precursor_fed_kg": float(L.precursor_fed[-1]) / 1000.0,
        "final_volume_m3": float(s.volume[-1]) / 1000.0,
        "peak_volume_m3": float(np.max(np.asarray(s.volume))) / 1000.0,
        "volume_evaporated_m3": float(L.volume_evaporated[-1]) / 1000.0,
        "final_biomass_g_L": float(traj.concentration("biomass")[-1]),
        "min_dissolved_oxygen_pct": float(np.min(np.asarray(traj.outputs.dissolved_oxygen))),
        "peak_oxygen_uptake_mmol_L_h": float(np.max(np.asarray(traj.outputs.oxygen_uptake_rate))),
        "solver_steps": int(np.asarray(traj.num_steps)),
    }
    sub = out["substrate_fed_kg"] + float(traj.states.substrate[0]) / 1000.0
    out["product_yield_on_sugar_g_g"] = out["total_product_kg"] / sub if sub > 0 else float("nan")
    if working_volume_L:
        out["working_volume_m3"] = working_volume_L / 1000.0
    return out


def member(ens, i: int):
    """Member `i` of a vmapped trajectory."""
    import jax

    return jax.tree_util.tree_map(lambda x: x[i], ens)


def median_trajectory(ens):
    """A trajectory whose states and outputs are the per-time median over an ensemble's members
    (controls, times and solver fields of the first member)."""
    import equinox as eqx
    import jax

    med = lambda tree: jax.tree_util.tree_map(lambda x: np.median(np.asarray(x), axis=0), tree)  # noqa: E731
    first = member(ens, 0)
    return eqx.tree_at(lambda t: (t.states, t.outputs), first, (med(ens.states), med(ens.outputs)))


_QUANTILES = (5, 25, 50, 75, 95)


def summarize_ensemble(ens, *, working_volume_L: float | None = None) -> dict:
    """`summarize` for every member, then each figure's median and 50 % / 90 % intervals:
    `{figure: {"median", "q05", "q25", "q75", "q95"}}`, plus `P(peak volume > working volume)`."""
    n = int(np.asarray(ens.ts).shape[0])
    rows = [summarize(member(ens, i), working_volume_L=working_volume_L) for i in range(n)]
    out: dict = {"draws": n}
    for key in rows[0]:
        if key in ("duration_h", "working_volume_m3", "solver_steps"):
            out[key] = rows[0][key]
            continue
        v = np.asarray([r[key] for r in rows], dtype=float)
        q = np.percentile(v, _QUANTILES)
        out[key] = {"median": q[2], "q05": q[0], "q25": q[1], "q75": q[3], "q95": q[4]}
    if working_volume_L:
        out["prob_peak_volume_above_working"] = float(np.mean(
            [r["peak_volume_m3"] > r["working_volume_m3"] for r in rows]))
    return out


def band_frame(ens) -> pd.DataFrame:
    """Per saved time, the 5/25/50/75/95 % quantiles over the ensemble of every state column,
    total product and DO: columns like `product_g_L_q05`."""
    n = int(np.asarray(ens.ts).shape[0])
    frames = [trajectory_frame(member(ens, i)) for i in range(n)]
    keep = [c for c in frames[0].columns
            if c != "time_h" and (c in {i.column for i in STATE_VARIABLES.values()} or c == "total_product_g")]
    stack = np.stack([f[keep].to_numpy() for f in frames])  # (draws, times, cols)
    cols = {"time_h": frames[0]["time_h"].to_numpy()}
    q = np.percentile(stack, _QUANTILES, axis=0)
    for j, c in enumerate(keep):
        for k, p in enumerate(_QUANTILES):
            cols[f"{c}_q{p:02d}"] = q[k, :, j]
    return pd.DataFrame(cols)


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write `obj` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_default) + "\n")


def _default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
