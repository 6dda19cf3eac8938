"""Every figure of the product (matplotlib, Agg backend, written atomically as PNG)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path  # noqa: E402

__all__ = ["plot_simulation", "plot_history", "save", "plot_recipe_vs_history", "plot_outcome", "plot_sensitivity"]

_STATE_PANELS = (
    ("biomass", "Biomass X", "g/L"),
    ("substrate", "Sugar S", "g/L"),
    ("product", "Product titer P", "g/L"),
    ("volume", "Broth volume V", "m3"),
    ("dissolved_oxygen", "Dissolved oxygen", "% air sat."),
    ("precursor", "Precursor / oil", "g/L"),
)


def save(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save `fig` to `path` atomically and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _band(values, min_span: float, *, upper: bool) -> tuple[float, float]:
    """y-limits that put `values` in the upper (or lower) half of an axis, spanning at least
    `min_span` (a flat profile gets a readable scale)."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    span = max(hi - lo, min_span)
    return (lo - 1.4 * span, hi + 0.4 * span) if upper else (lo - 0.4 * span, hi + 1.4 * span)


def _series(traj, name):
    ts = np.asarray(traj.ts)
    if name == "volume":
        return ts, np.asarray(traj.states.volume) / 1000.0
    if name == "dissolved_oxygen":
        return ts, np.asarray(traj.outputs.dissolved_oxygen)
    return ts, np.asarray(traj.concentration(name))


def plot_simulation(traj, *, title: str, path: str | os.PathLike, ensemble=None,
                    working_volume_L: float | None = None) -> Path:
    """States over time with the recipe beneath.

    Args:
        traj: a `twin.simulate.Trajectory` (the central line).
        title: figure title.
        path: PNG to write.
        ensemble: optional vmapped `Trajectory` (posterior draws); drawn as 50 % and 90 % bands.
        working_volume_L: drawn as a limit line on the volume panel.
    """
    fig = plt.figure(figsize=(12, 12))
    lines = title.count("\n") + 1  # a third title line (and more) pushes the panels down
    gs = fig.add_gridspec(5, 2, height_ratios=[1, 1, 1, 0.8, 0.8], hspace=0.42, wspace=0.38,
                          top=0.88 - 0.02 * max(lines - 2, 0))
    axes = []
    for k, (name, label, unit) in enumerate(_STATE_PANELS):
        ax = fig.add_subplot(gs[k // 2, k % 2], sharex=axes[0] if axes else None)
        axes.append(ax)
        ts, y = _series(traj, name)
        if ensemble is not None:
            _, ys = _series(ensemble, name)
            ys = ys.reshape(-1, ts.size)
            for lo, hi, a in ((5, 95, 0.18), (25, 75, 0.3)):
                ax.fill_between(ts, np.percentile(ys, lo, axis=0), np.percentile(ys, hi, axis=0),
                                color="C0", alpha=a, lw=0, label=f"{hi - lo}% band" if k == 0 else None)
        ax.plot(ts, y, color="C0", lw=1.8, label="median" if ensemble is not None and k == 0 else None)
        if name == "precursor":
            oil = np.asarray(traj.concentration("oil"))
            if np.any(oil > 0):
                ax.plot(ts, oil, color="C5", lw=1.5, label="oil")
                ax.plot([], [], color="C0", label="precursor")
                ax.legend(loc="upper left", fontsize=8)
            else:
                label = "Precursor"
        if name == "volume" and working_volume_L:
            ax.axhline(working_volume_L / 1000.0, color="k", ls=":", lw=1, label="working volume")
            ax.legend(loc="lower right", fontsize=8)
        if name == "product":
            total = float(np.asarray(traj.total_product)[-1]) / 1000.0
            ax.text(0.02, 0.95, f"total product {total:.4g} kg\n(vessel + drawn)", transform=ax.transAxes,
                    va="top", fontsize=8, color="C3")
        ax.set_title(label, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    if ensemble is not None:
        axes[0].legend(loc="upper left", fontsize=8)
    c = traj.controls
    ts = np.asarray(traj.ts)
    ax = fig.add_subplot(gs[3, 0], sharex=axes[0])
    for name, label, col in (("substrate_feed", "sugar feed", "C1"), ("oil_feed", "oil feed", "C5"),
                             ("precursor_feed", "precursor feed", "C4"), ("water_feed", "water", "C9")):
        v = np.asarray(getattr(c, name))
        if np.any(v > 0):
            ax.step(ts, v, where="post", color=col, label=label)
    ax.set_title("Recipe: feeds", fontsize=10)
    ax.set_ylabel("L/h")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    draw = np.asarray(c.draw)
    if np.any(draw > 0):
        ax_d = ax.twinx()
        ax_d.fill_between(ts, 0, draw, step="post", color="k", alpha=0.15)
        ax_d.set_ylabel("draw, L/h (grey)", fontsize=8)
    ax = fig.add_subplot(gs[3, 1], sharex=axes[0])
    temp, ph = np.asarray(c.temperature), np.asarray(c.pH)
    ax.step(ts, temp, where="post", color="C3", label="temperature, degC")
    ax.set_ylabel("degC", color="C3")
    ax.set_ylim(*_band(temp, 1.0, upper=True))  # temperature in the upper half, pH in the lower:
    ax_p = ax.twinx()                           # two flat set-points do not hide each other
    ax_p.step(ts, ph, where="post", color="C2", label="pH")
    ax_p.set_ylabel("pH", color="C2")
    ax_p.set_ylim(*_band(ph, 0.2, upper=False))
    ax.set_title("Recipe: temperature (upper) and pH (lower)", fontsize=10)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(gs[4, 0], sharex=axes[0])
    ax.step(ts, np.asarray(c.aeration) / 6e4, where="post", color="C0", label="aeration, m3/min")
    ax.set_ylabel("aeration, m3/min", color="C0")
    ax_b = ax.twinx()
    ax_b.step(ts, np.asarray(c.back_pressure), where="post", color="C7")
    ax_b.set_ylabel("back pressure, bar", color="C7")
    ax.set_title("Recipe: aeration and back pressure", fontsize=10)
    ax.set_xlabel("time, h")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(gs[4, 1], sharex=axes[0])
    ax.plot(ts, np.asarray(traj.outputs.oxygen_uptake_rate), color="C0", label="OUR, mmol/L/h")
    ax.plot(ts, np.asarray(traj.outputs.kla) / 10.0, color="C1", label="kLa / 10, 1/h")
    ax.set_title("Oxygen uptake and transfer", fontsize=10)
    if traj.outputs.dissolved_co2 is not None:  # the model carries CO2: its inhibition shows here
        ax_c = ax.twinx()
        ax_c.plot(ts, np.asarray(traj.outputs.dissolved_co2), color="C3", lw=1.2)
        ax_c.set_ylabel("dissolved CO2, mmol/L", color="C3", fontsize=8)
        ax.plot([], [], color="C3", label="dissolved CO2 (right)")
        ax.set_title("Oxygen uptake and transfer; dissolved CO2", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("time, h")
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=13, y=0.925 if lines == 1 else 0.94 if lines == 2 else 0.95)
    return save(fig, path)


def plot_history(batch_set, *, title: str, path: str | os.PathLike,
                 variables=("product", "biomass", "substrate", "volume", "dissolved_oxygen", "substrate_feed")) -> Path:
    """Every batch of a `twin.data.BatchSet`: one panel per variable, one line per batch."""
    n = len(variables)
    ncol = 3
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False, sharex=True)
    cmap = plt.get_cmap("viridis")
    records = list(batch_set)
    for i, var in enumerate(variables):
        ax = axes[i // ncol][i % ncol]
        for j, rec in enumerate(records):
            if var not in rec.variables():
                continue
            t, v = rec.series(var)
            scale = 1e-3 if var == "volume" else 1.0
            style = dict(marker="o", ms=3, lw=0.8) if len(t) < 60 else dict(lw=0.8)
            ax.plot(t, v * scale, color=cmap(j / max(len(records) - 1, 1)), alpha=0.85, **style,
                    label=rec.batch if i == 0 else None)
        unit = "m3" if var == "volume" else _unit_of(var)
        ax.set_title(f"{var.replace('_', ' ')} ({unit})", fontsize=10)
        ax.grid(alpha=0.3)
    for j in range(n, nrow * ncol):
        axes[j // ncol][j % ncol].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("time, h")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return save(fig, path)


def _unit_of(var: str) -> str:
    try:
        from .data import MEASURED_VARIABLES

        return MEASURED_VARIABLES[var].unit
    except Exception:
        return ""


def plot_fit(grid, predictive: dict, observations: dict, batches, *, title: str,
             path: str | os.PathLike, units: dict | None = None, floors: dict | None = None) -> Path:
    """Every batch (rows) and measured variable (columns): data points over the posterior
    predictive median with 50 % and 90 % bands.

    Args:
        grid: (G,) times, h.
        predictive: `{variable: (draws, batches, G)}`.
        observations: `{variable: (times (B, N), values (B, N), mask (B, N))}`.
        batches: batch ids (B,).
        floors: `{variable: floor}`: readings at or below it (left-censored, "at most floor")
            are drawn as open circles.
    """
    floors = floors or {}
    variables = list(predictive)
    B = len(batches)
    fig, axes = plt.subplots(B, len(variables), figsize=(3.3 * len(variables), 1.9 * B + 0.8),
                             squeeze=False, sharex=True)
    g = np.asarray(grid)
    for j, var in enumerate(variables):
        p = np.asarray(predictive[var])
        scale = 1e-3 if var == "volume" else 1.0
        for i in range(B):
            ax = axes[i][j]
            q = np.percentile(p[:, i, :], [5, 25, 50, 75, 95], axis=0) * scale
            ax.fill_between(g, q[0], q[4], color="C0", alpha=0.18, lw=0)
            ax.fill_between(g, q[1], q[3], color="C0", alpha=0.35, lw=0)
            ax.plot(g, q[2], color="C0", lw=1.2)
            if var in observations:
                t, y, m = (np.asarray(a) for a in observations[var])
                c = m[i] & (y[i] <= floors[var]) if var in floors else np.zeros_like(m[i])
                ax.plot(t[i][m[i] & ~c], y[i][m[i] & ~c] * scale, "o", ms=2.5, color="k")
                if c.any():
                    ax.plot(t[i][c], y[i][c] * scale, "o", ms=3.0, mfc="none", mec="k", mew=0.6)
            if i == 0:
                unit = "m3" if var == "volume" else (units or {}).get(var, "")
                ax.set_title(f"{var.replace('_', ' ')} ({unit})", fontsize=9)
            if j == 0:
                ax.set_ylabel(str(batches[i]), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time, h", fontsize=8)
    legend = "black: data; blue: posterior predictive median, 50 % and 90 % bands"
    if floors:
        legend += "\nopen circles: readings at or below the lab's floor, read as 'at most' (censored)"
    fig.suptitle(title + "\n" + legend, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.8 if floors else 0.6) / (1.9 * B + 0.8)))
    return save(fig, path, dpi=90)


def plot_parameters(names, units, prior_median, prior_log_sd, posterior: dict, *, title: str,
                    path: str | os.PathLike, truth: dict | None = None) -> Path:
    """Prior (grey) vs posterior (blue) density of each parameter on a log axis."""
    n = len(names)
    ncol = min(n, 4)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
    for k, name in enumerate(names):
        ax = axes[k // ncol][k % ncol]
        x = np.asarray(posterior[name]).ravel()
        lo_p, hi_p = np.log(prior_median[k]) - 3 * prior_log_sd[k], np.log(prior_median[k]) + 3 * prior_log_sd[k]
        # a posterior beyond the prior's 3 SD gets a margin, so its density falls to 0 inside the axes
        pad = 0.08 * (max(hi_p, np.log(x.max())) - min(lo_p, np.log(x.min())))
        lo = min(lo_p, np.log(x.min()) - pad)
        hi = max(hi_p, np.log(x.max()) + pad)
        z = np.linspace(lo, hi, 400)
        prior = np.exp(-0.5 * ((z - np.log(prior_median[k])) / prior_log_sd[k]) ** 2)
        ax.fill_between(np.exp(z), 0, prior / prior.max(), color="0.6", alpha=0.4, label="prior")
        hist, edges = np.histogram(np.log(x), bins=40, range=(lo, hi))
        centres = np.exp(0.5 * (edges[1:] + edges[:-1]))
        ax.plot(centres, hist / max(hist.max(), 1), color="C0", lw=1.5, label="posterior")
        if truth and name in truth:
            ax.axvline(truth[name], color="C3", ls="--", lw=1.2, label="truth")
        ax.set_xscale("log")
        # labels at 1 and 3 per decade only: matplotlib's default also labels the minor ticks of
        # an axis shorter than about a decade, at full size, and they ran into each other
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10.0, subs=(1.0, 3.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yticks([])
        ax.set_title(f"{name} ({units[k]})", fontsize=9)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=7)
    for k in range(n, nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path, dpi=100)


def _step(ax, ts, v, **kw):
    ax.step(ts, v, where="post", **kw)


def plot_recipe_vs_history(variables, ts, new: dict, baseline: dict, history: dict | None, *, units: dict,
                           title: str, path: str | os.PathLike) -> Path:
    """Each manipulated variable: the new recipe over the band of what operators did (median and
    range over the historical batches) and the baseline.

    Args:
        variables: names to draw (one panel each).
        ts: times, h.
        new, baseline: `{variable: values at ts}`.
        history: `{variable: (batches, times) values at ts}` or None.
    """
    n = len(variables)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.6 * n), sharex=True, squeeze=False,
                             layout="constrained")  # the title sits on the panels, not 1.5 in above
    for ax, var in zip(axes[:, 0], variables):
        if history and var in history:
            h = np.asarray(history[var])
            ax.fill_between(ts, h.min(axis=0), h.max(axis=0), step="post", color="0.75", alpha=0.6,
                            lw=0, label=f"operators: range of {h.shape[0]} batches")
            _step(ax, ts, np.median(h, axis=0), color="0.4", lw=1.0, label="operators: median")
        _step(ax, ts, baseline[var], color="k", ls="--", lw=1.3, label="baseline recipe")
        _step(ax, ts, new[var], color="C3", lw=2.0, label="new recipe")
        ax.set_ylabel(f"{var}\n{units.get(var, '')}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=8, ncol=4)
    axes[-1, 0].set_xlabel("time, h")
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


_OUTCOME_PANELS = (("product", "Product titer", "g/L"), ("total_product", "Total product (vessel + drawn)", "kg"),
                   ("biomass", "Biomass", "g/L"), ("substrate", "Sugar", "g/L"),
                   ("dissolved_oxygen", "Dissolved oxygen", "% air sat."), ("volume", "Broth volume", "m3"))


def _outcome_series(ens, name):
    if name == "total_product":
        return np.asarray(ens.total_product) / 1000.0
    if name == "volume":
        return np.asarray(ens.states.volume) / 1000.0
    if name in ("dissolved_oxygen", "dissolved_co2"):
        return np.asarray(getattr(ens.outputs, name))
    return np.asarray(getattr(ens.states, name)) / np.asarray(ens.states.volume)


def plot_outcome(ens_new, ens_base, *, title: str, path: str | os.PathLike, limits: dict | None = None) -> Path:
    """Predicted trajectories with posterior bands (median, 50 % and 90 %), new recipe vs baseline.

    Args:
        ens_new, ens_base: vmapped `Trajectory` over the same posterior draws.
        limits: optional `{"dissolved_oxygen": min %, "volume": max m3, "dissolved_co2": mmol/L}`
            drawn as lines. Dissolved CO2 gets a panel where the model carries it.
    """
    panels = _OUTCOME_PANELS
    if ens_new.outputs.dissolved_co2 is not None:
        panels = panels + (("dissolved_co2", "Dissolved CO2", "mmol/L"),)
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(12, 3.3 * rows), sharex=True, squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    ts = np.asarray(ens_new.ts)[0]
    for ax, (name, label, unit) in zip(axes.ravel(), panels):
        for ens, color, who in ((ens_base, "0.3", "baseline"), (ens_new, "C3", "new recipe")):
            y = _outcome_series(ens, name)
            for lo, hi, a in ((5, 95, 0.15), (25, 75, 0.3)):
                ax.fill_between(ts, np.percentile(y, lo, axis=0), np.percentile(y, hi, axis=0), color=color,
                                alpha=a, lw=0)
            ax.plot(ts, np.median(y, axis=0), color=color, lw=1.8, label=f"{who}: median, 50/90 % bands")
        if limits and name in limits:
            ax.axhline(limits[name], color="k", ls=":", lw=1, label="limit")
        ax.set_title(label, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    for ax in axes.ravel()[max(len(panels) - 2, 0):len(panels)]:
        ax.set_xlabel("time, h")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def plot_sensitivity(edges, sens: dict, units: dict, *, title: str, path: str | os.PathLike) -> Path:
    """dJ/du per phase of every optimised variable (bars over each phase's time window)."""
    n = len(sens)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.4 * n), sharex=True, squeeze=False)
    edges = np.asarray(edges)
    for ax, (var, g) in zip(axes[:, 0], sens.items()):
        g = np.asarray(g)
        colors = ["C2" if x > 0 else "C3" for x in g]
        ax.bar(edges[:-1], g, width=np.diff(edges), align="edge", color=colors, edgecolor="k", lw=0.5)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel(f"d(product)/d({var})\nkg per {units.get(var, '')}", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time, h (phase windows)")
    fig.suptitle(title, fontsize=11)
    return save(fig, path)
