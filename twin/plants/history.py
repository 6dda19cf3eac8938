"""Operator history on the IndPenSim plant, paired recipe comparisons, and the seed syntax.

`operator_recipe` varies the default recipe the way shifts of operators do: the sugar-feed level
(x N(1, 0.05), clipped to 0.9-1.1) and the timing of its ramp (breakpoints from 12 h shifted by
N(0, 1.5) h, clipped to +-3 h, on the 0.2 h grid), the oil-feed level (x N(1, 0.05), 0.9-1.1),
aeration (x N(1, 0.03), 0.94-1.06), the temperature set-point (24.85 degC + N(0, 0.2), clipped
to +-0.4, to 0.05 degC) and the pH set-point (6.5 + N(0, 0.04), clipped to +-0.08, to 0.01).
Batch `i` of a history with seed `s` runs on plant seed `1000 s + i`; its variation is drawn from
`default_rng(SeedSequence([s, i, 2]))`.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ParameterError, RecipeError, TwinError
from ..io import atomic_path
from ..recipe import Recipe, recipe_from_phases, write_recipe_csv
from .indpensim import (BATCH_H, NOISE_DESCRIPTION, STEP_H, SUGAR_FEED_G_L, PlantRun,
                        default_recipe, pensimpy_version, run_batch)

__all__ = ["parse_seeds", "operator_recipe", "history_seed", "generate_history", "write_history",
           "compare_recipes", "PairedComparison", "REPORT_COLUMNS", "plant_totals"]

_MAX_SEEDS = 1000


def parse_seeds(text: str) -> list[int]:
    """Parse a seed list: `"100-109"` (inclusive range) or `"1,5,7"` (or a mix, `"1,3-5"`).

    Raises:
        ParameterError: empty, non-integer, negative, reversed range, duplicates, or more than
            1000 seeds.

    Example:
        >>> parse_seeds("100-102")
        [100, 101, 102]
    """
    s = str(text).strip()
    if not s:
        raise ParameterError("seeds must not be empty; write a range like 100-109 or a list "
                             "like 1,5,7", field="seeds", value=text)
    out: list[int] = []
    for part in s.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ParameterError("a seed range must go up (start-end with end >= start)",
                                     field="seeds", value=text)
            if b - a + 1 > _MAX_SEEDS:
                raise ParameterError(f"at most {_MAX_SEEDS} seeds", field="seeds", value=text)
            out.extend(range(a, b + 1))
        elif re.fullmatch(r"\d+", part):
            out.append(int(part))
        else:
            raise ParameterError("seeds are integers >= 0 as a range like 100-109 or a list "
                                 "like 1,5,7", field="seeds", value=text)
    if len(set(out)) != len(out):
        raise ParameterError("a seed appears twice", field="seeds", value=text)
    if len(out) > _MAX_SEEDS:
        raise ParameterError(f"at most {_MAX_SEEDS} seeds", field="seeds", value=text)
    return out


def history_seed(seed: int, i: int) -> int:
    """The plant seed of batch `i` of a history generated with `seed`."""
    return 1000 * int(seed) + int(i)


def _phases(recipe: Recipe, name: str) -> list[tuple[float, float, float, float]]:
    p = recipe.profiles[name]
    return [tuple(float(v) for v in row) for row in
            zip(np.asarray(p.start), np.asarray(p.stops), np.asarray(p.value), np.asarray(p.value_end))]


def operator_recipe(rng: np.random.Generator, base: Recipe | None = None) -> tuple[Recipe, dict]:
    """A variation of `base` (default: the plant's default recipe) as an operator would run it.

    Returns:
        `(recipe, variation)` where `variation` records every change (see the module docstring).
    """
    base = default_recipe() if base is None else base
    clip = lambda x, lo, hi: float(min(max(x, lo), hi))  # noqa: E731
    var = {
        "sugar_feed_factor": round(clip(rng.normal(1.0, 0.05), 0.9, 1.1), 3),
        "sugar_ramp_shift_h": round(round(clip(rng.normal(0.0, 1.5), -3, 3) / STEP_H) * STEP_H, 1),
        "oil_feed_factor": round(clip(rng.normal(1.0, 0.05), 0.9, 1.1), 3),
        "aeration_factor": round(clip(rng.normal(1.0, 0.03), 0.94, 1.06), 3),
        "temperature_degC": round(24.85 + round(clip(rng.normal(0.0, 0.2), -0.4, 0.4) / 0.05) * 0.05, 2),
        "pH": round(6.5 + round(clip(rng.normal(0.0, 0.04), -0.08, 0.08) / 0.01) * 0.01, 2),
    }
    ph = {name: _phases(base, name) for name in base.profiles}
    shift = var["sugar_ramp_shift_h"]
    sugar = []
    for a, b, v, ve in ph["substrate_feed"]:
        a2 = a + shift if a >= 12.0 else a
        b2 = b + shift if 12.0 <= b < BATCH_H else b
        f = var["sugar_feed_factor"]
        sugar.append((a2, b2, v * f, ve * f))
    ph["substrate_feed"] = sugar
    ph["oil_feed"] = [(a, b, v * var["oil_feed_factor"], ve * var["oil_feed_factor"])
                      for a, b, v, ve in ph["oil_feed"]]
    ph["aeration"] = [(a, b, v * var["aeration_factor"], ve * var["aeration_factor"])
                      for a, b, v, ve in ph["aeration"]]
    ph["temperature"] = [(0.0, BATCH_H, var["temperature_degC"])]
    ph["pH"] = [(0.0, BATCH_H, var["pH"])]
    return recipe_from_phases(ph, span=(0.0, BATCH_H), where="operator recipe"), var


def _describe(var: dict) -> str:
    if "description" in var:  # a designed batch (e.g. a pilot trial) says what it is itself
        return str(var["description"])
    return (f"operator variation: sugar feed x{var['sugar_feed_factor']:.3f}, "
            f"sugar ramp shifted {var['sugar_ramp_shift_h']:+.1f} h, "
            f"oil feed x{var['oil_feed_factor']:.3f}, aeration x{var['aeration_factor']:.3f}, "
            f"T set-point {var['temperature_degC']:.2f} degC, pH set-point {var['pH']:.2f}")


@dataclass
class HistoryBatch:
    run: PlantRun
    variation: dict


def generate_history(n: int, seed: int, *, duration_h: float = BATCH_H,
                     progress: Callable[[int, str], None] | None = None) -> list[HistoryBatch]:
    """Run `n` historical batches with operator variation (see the module docstring).

    Args:
        n: number of batches, 1-1000.
        seed: history seed, integer >= 0 (batch `i` runs on plant seed `1000 seed + i`).
        duration_h: batch length (230 h; shorter only for tests).
        progress: called as `progress(i, batch_id)` after each batch.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 1000:
        raise ParameterError("the number of batches must be an integer in [1, 1000]", field="n",
                             value=n)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError("seed must be an integer >= 0", field="seed", value=seed)
    out = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i, 2]))
        recipe, var = operator_recipe(rng)
        batch = f"IPS-H{seed}-{i + 1:02d}"
        run = run_batch(recipe, history_seed(seed, i), duration_h=duration_h, batch=batch)
        out.append(HistoryBatch(run, var))
        if progress is not None:
            progress(i, batch)
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("pensimpy", "numpy", "scipy", "pandas", "pyarrow", "jax", "fermentation-twin"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    from .. import __version__

    out["twin"] = __version__
    return out


def write_history(history: Sequence[HistoryBatch], directory, *, seed: int, command: str,
                  fmt: str = "csv", truth_name: str = "truth.csv") -> Path:
    """Write a history as the `twin.data` format plus `recipes/<batch>.csv` and the truth table.

    Files: `measurements.csv` (or `.parquet`), `batches.csv`, `provenance.json` (seeds, variations,
    versions, noise model, the command), `recipes/<batch>.csv` (aeration in m3/min) and
    `truth_name` (noise-free values at the measurement times, the same long format; `.csv` or
    `.parquet` by its suffix).
    """
    from ..data import batch_set_from_frames, write_batches

    d = Path(directory)
    long = pd.concat([h.run.measurements for h in history], ignore_index=True)
    batches = pd.DataFrame([h.run.batches_row(_describe(h.variation)) for h in history])
    data = batch_set_from_frames(long, batches, source="IndPenSim history")
    for h in history:
        write_recipe_csv(h.run.recipe, d / "recipes" / f"{h.run.batch}.csv",
                         units={"aeration": "m3/min"})
    truth = pd.concat([h.run.truth for h in history], ignore_index=True)
    with atomic_path(d / truth_name) as tmp:
        if truth_name.endswith(".parquet"):
            truth.to_parquet(tmp, index=False)
        else:
            truth.to_csv(tmp, index=False, float_format="%.8g")
    provenance = {
        "generator": "twin.plants.history.generate_history (IndPenSim plant via pensimpy)",
        "command": command,
        "history_seed": int(seed),
        "plant": {"name": "IndPenSim", "package": "pensimpy", "version": pensimpy_version(),
                  "licence": "MIT", "sugar_feed_g_L_nominal": SUGAR_FEED_G_L,
                  "citation": ["Goldrick et al. 2015 J Biotechnol 193:70-82",
                               "Goldrick et al. 2019 Comput Chem Eng 130:106471"]},
        "noise_model": NOISE_DESCRIPTION,
        "truth_file": truth_name,
        "batches": [{"batch": h.run.batch, "plant_seed": h.run.seed, "fault": h.run.fault,
                     "noise_seed_sequence": [h.run.seed, h.run.fault, 1],
                     "variation_seed_sequence": [int(seed), i, 2],
                     "recipe": f"recipes/{h.run.batch}.csv", "variation": h.variation,
                     "totals": h.run.totals}
                    for i, h in enumerate(history)],
        "versions": _versions(),
    }
    write_batches(data, d, fmt=fmt, provenance=provenance)
    return d


# ---------------------------------------------------------------------------------------------
# Paired comparison of two recipes on the same plant seeds

REPORT_COLUMNS = {
    "penicillin_total_kg": "penicillin total (kg)",
    "sugar_kg": "sugar fed (kg)",
    "oil_L": "oil fed (L)",
    "paa_kg": "PAA fed (kg)",
    "acid_L": "acid (L)",
    "base_L": "base (L)",
    "final_volume_L": "final volume (L)",
    "peak_volume_L": "peak volume (L)",
}


@dataclass
class PairedComparison:
    """Per-seed totals of a recipe and the default recipe on the same plant seeds."""

    table: pd.DataFrame  # one row per seed: <col>_recipe, <col>_default, <col>_diff_pct
    runs: dict[int, tuple[PlantRun, PlantRun]]  # seed -> (recipe run, default run)

    @property
    def penicillin_diff_pct(self) -> np.ndarray:
        return self.table["penicillin_total_kg_diff_pct"].to_numpy()


def compare_recipes(recipe: Recipe, seeds: Sequence[int], *, baseline: Recipe | None = None,
                    duration_h: float = BATCH_H,
                    progress: Callable[[int, int], None] | None = None) -> PairedComparison:
    """Run `recipe` and `baseline` (default recipe) on each plant seed; paired totals.

    Raises:
        RecipeError: either recipe is one the plant cannot run (checked before any run).
    """
    from .indpensim import check_recipe

    baseline = default_recipe() if baseline is None else baseline
    check_recipe(recipe, duration_h=duration_h)
    check_recipe(baseline, duration_h=duration_h, where="default recipe")
    rows, runs = [], {}
    for j, s in enumerate(seeds):
        r = run_batch(recipe, s, duration_h=duration_h, batch=f"recipe-{s}")
        b = run_batch(baseline, s, duration_h=duration_h, batch=f"default-{s}")
        runs[s] = (r, b)
        row = {"seed": s}
        for c in REPORT_COLUMNS:
            row[f"{c}_recipe"] = r.totals[c]
            row[f"{c}_default"] = b.totals[c]
            row[f"{c}_diff_pct"] = (100.0 * (r.totals[c] - b.totals[c]) / b.totals[c]
                                    if b.totals[c] != 0 else float("nan"))
        rows.append(row)
        if progress is not None:
            progress(j, s)
    return PairedComparison(pd.DataFrame(rows), runs)


def plant_totals(job: tuple[Recipe, int]) -> dict[str, float]:
    """Totals (`REPORT_COLUMNS`) of one plant batch, `job = (recipe, seed)`; a plant solver
    failure gives `{"failed": message}` instead of raising. Picklable, for process pools (each
    batch takes about 12 s of one core)."""
    recipe, seed = job
    try:
        run = run_batch(recipe, int(seed))
    except TwinError as e:
        return {"failed": str(e)}
    return {c: float(run.totals[c]) for c in REPORT_COLUMNS}


def write_comparison_csv(cmp: PairedComparison, path) -> Path:
    with atomic_path(path) as tmp:
        cmp.table.to_csv(tmp, index=False, float_format="%.10g")
    return Path(path)


def plot_comparison(cmp: PairedComparison, path, *, recipe_label: str = "recipe") -> Path:
    """PNG: titer and volume against time for each seed, recipe (solid) vs default (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(cmp.runs), 1)))
    for c, (s, (r, b)) in zip(colors, cmp.runs.items()):
        for run, ls, lab in ((r, "-", recipe_label), (b, "--", "default")):
            t = run.trajectory
            axes[0].plot(t["time_h"], t["product"], ls, color=c, lw=1.1, label=f"seed {s} {lab}")
            axes[1].plot(t["time_h"], t["volume"] / 1000, ls, color=c, lw=1.1)
    axes[0].set(xlabel="time (h)", ylabel="penicillin titer (g/L)",
                title=f"titer: {recipe_label} (solid) vs default (dashed)")
    axes[1].set(xlabel="time (h)", ylabel="broth volume (m3)", title="volume")
    if len(cmp.runs) <= 5:
        axes[0].legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


__all__ += ["write_comparison_csv", "plot_comparison", "HistoryBatch", "TwinError", "RecipeError"]
