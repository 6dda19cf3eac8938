"""The forecast figure: data so far, the forecast fan to the end, the history faded behind."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .plots import save

__all__ = ["plot_forecast"]


def _assays(record, variable):
    if record is None or variable not in record.variables():
        return np.zeros(0), np.zeros(0)
    return record.series(variable)


def _series(record, key):
    """Titer assays (g/L) or the total product the data show (kg) of a record."""
    from .errors import DataError
    from .forecast import observed_total_curve

    if key == "final_titer_g_L":
        return _assays(record, "product")
    try:
        t, total = observed_total_curve(record)
    except DataError:
        return np.zeros(0), np.zeros(0)
    return t, total / 1000.0


def plot_forecast(fc, record, *, path: str | os.PathLike, history=None, truth=None,
                  title: str | None = None) -> Path:
    """Two panels: titer (g/L) and total product (kg, vessel + drawn) against time.

    Args:
        fc: a `twin.forecast.Forecast`.
        record: the running batch (`BatchRecord`); its titer assays and the total product its
            data show up to `fc.at_h` are drawn as black dots, later ones (if the file has them)
            as open circles.
        path: PNG to write.
        history: optional `BatchSet` of historical batches (titer assays drawn faded behind).
        truth: optional `{"final_titer_g_L": x, "total_product_kg": y}` (benchmarks: the true end).
        title: figure title.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), constrained_layout=True)
    grid = np.asarray(fc.grid)
    after = grid >= fc.at_h - 1e-9
    for ax, fan, unit, key in ((axes[0], fc.fan_titer, "g/L", "final_titer_g_L"),
                               (axes[1], fc.fan_total_kg, "kg", "total_product_kg")):
        if history is not None:
            for k, r in enumerate(history):
                t, v = _series(r, key)
                ax.plot(t, v, "-", color="0.6", lw=0.8, alpha=0.45,
                        label=f"historical batches ({len(history)})" if k == 0 else None, zorder=1)
        ax.fill_between(grid[after], fan[0][after], fan[4][after], color="C0", alpha=0.18, lw=0,
                        label="90 % interval", zorder=2)
        ax.fill_between(grid[after], fan[1][after], fan[3][after], color="C0", alpha=0.35, lw=0,
                        label="50 % interval", zorder=3)
        ax.plot(grid[after], fan[2][after], color="C0", lw=1.8, label="median forecast", zorder=4)
        ax.plot(grid[~after], fan[2][~after], color="C0", lw=1.2, ls=":", zorder=4,
                label="model fit to the data so far")
        ax.axvline(fc.at_h, color="k", lw=0.9, ls="--", zorder=5)
        ax.text(fc.at_h, 0.02, f" forecast at {fc.at_h:g} h", transform=ax.get_xaxis_transform(),
                va="bottom", ha="left", fontsize=8)
        s = getattr(fc, key)
        ax.errorbar([fc.end_h + 3], [s["median"]], yerr=[[s["median"] - s["q05"]], [s["q95"] - s["median"]]],
                    fmt="o", color="C0", capsize=4, ms=5, zorder=6)
        if truth is not None and key in truth:
            ax.plot([fc.end_h + 3], [truth[key]], "r*", ms=11, zorder=7, label="true end (plant)")
        if fc.threshold is not None and (fc.threshold.quantity == "final_titer") == (key == "final_titer_g_L"):
            val = fc.threshold.value / (1000.0 if fc.threshold.quantity == "total_product" else 1.0)
            ax.axhline(val, color="C3", lw=1, ls="-.",
                       label=f"threshold {fc.threshold.text}: P(below) = {fc.prob_below:.2f}")
        ax.set_xlim(0, fc.end_h + 8)
        ax.set_xlabel("time (h)")
        ax.grid(alpha=0.3)
    for ax, key, what in ((axes[0], "final_titer_g_L", "titer assays"),
                          (axes[1], "total_product_kg", "from the data (titer x volume + drawn)")):
        t2, v2 = _series(record, key)
        now = t2 <= fc.at_h + 1e-9
        ax.plot(t2[now], v2[now], "ko", ms=4, label=f"{what} so far", zorder=8)
        if (~now).any():
            ax.plot(t2[~now], v2[~now], "o", mfc="none", mec="k", ms=4, zorder=8,
                    label="later data (not used)")
    q = fc.final_titer_g_L
    axes[0].set(ylabel="penicillin titer (g/L)",
                title=f"final titer {q['median']:.1f} g/L (90 %: {q['q05']:.1f}-{q['q95']:.1f})")
    q = fc.total_product_kg
    axes[1].set(ylabel="total penicillin, vessel + drawn (kg)",
                title=f"total {q['median']:.0f} kg (90 %: {q['q05']:.0f}-{q['q95']:.0f}); "
                      f"peak productivity at {fc.peak_productivity_h['median']:.0f} h")
    axes[0].legend(fontsize=7.5, loc="upper left")
    axes[1].legend(fontsize=7.5, loc="upper left")
    fig.suptitle(title or f"Forecast of batch {fc.batch} ({fc.strain}) at {fc.at_h:g} h "
                          f"[{fc.method}, ESS {fc.ess:.0f}]", fontsize=11)
    return save(fig, path)
