"""A small simulation-based calibration (Talts et al. 2018) of the shipped SVI on the synthetic
strain: data drawn from the calibration model's prior predictive, so the truth is known exactly.
The full version (50 replications, chi-square of rank histograms) is `benchmarks/calibration.py
--parts sbc`; this one catches gross miscalibration (wrong site order, conditioned data reused,
SVI stuck far from the posterior)."""

from pathlib import Path

import numpy as np
import pytest

from calibration.sbc import simulation_based_calibration
from calibration.spec import load_strain

ROOT = Path(__file__).resolve().parents[1]
SYN = ROOT / "calibration/strains/synthetic_erythromycin.toml"


@pytest.mark.slow
def test_small_sbc_ranks_are_not_piled_at_the_extremes():
    spec = load_strain(SYN)
    res = simulation_based_calibration(spec, 8, svi_steps=100, n_draws=39, seed=5)
    ranks = np.concatenate(list(res.ranks.values()))
    assert ranks.min() >= 0 and ranks.max() <= 39
    # a calibrated posterior puts 90 % of truths inside its 90 % intervals; a broken one ~0-30 %
    assert res.coverage90() >= 0.6, res.ranks
    extreme = np.mean((ranks == 0) | (ranks == 39))
    assert extreme <= 0.3, res.ranks  # uniform ranks: 2/40 = 5 % expected at the two extremes
