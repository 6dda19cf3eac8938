"""benchmarks/base_history.py: the within (fixed-effects) regression of the pH loop's net base
inflow on the feeds recovers a planted response, and the history's figures are printed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from test_benchmarks import _load


def test_within_fit_recovers_a_planted_feed_response_despite_batch_and_time_effects():
    """net = 0.6 sugar + 3.5 oil + batch effect + time effect + noise, with feeds correlated with
    both effects: the two-way fit recovers 0.6 and 3.5 within 3 SEs; the time-only fit is pulled
    off by the batch effect it leaves in."""
    bh = _load("base_history")
    rng = np.random.default_rng(3)
    batches, bins = 12, 50
    b = np.repeat(np.arange(batches), bins)
    k = np.tile(np.arange(bins), batches)
    batch_eff = rng.normal(0.0, 5.0, batches)[b]
    time_eff = 10.0 * np.sin(k / 7.0)
    sugar = 80.0 + 0.3 * batch_eff + 2.0 * np.cos(k / 5.0) + rng.normal(0.0, 3.0, b.size)
    oil = 23.0 + 0.1 * batch_eff + rng.normal(0.0, 1.0, b.size)
    net = 0.6 * sugar + 3.5 * oil + batch_eff + time_eff + rng.normal(0.0, 1.0, b.size)
    g = pd.DataFrame({"batch": b, "bin": k, "net": net, "substrate_feed": sugar, "oil_feed": oil})
    f = bh.within_fit(g)
    assert abs(f["sugar"] - 0.6) < 3 * f["sugar_se"] and f["sugar_se"] < 0.05
    assert abs(f["oil"] - 3.5) < 3 * f["oil_se"] and f["oil_se"] < 0.1
    one = bh.within_fit(g, two_way=False)
    assert abs(one["sugar"] - 0.6) > 3 * one["sugar_se"]


def test_base_history_prints_its_headline_figures(capsys):
    bh = _load("base_history")
    figures = bh.main([])
    out = capsys.readouterr().out
    for k, v in figures.items():
        assert f"{k}: {v}" in out
    assert 0.0 <= figures["within_r2"] <= figures["max_within_r2_any_fit"] <= 1.0
