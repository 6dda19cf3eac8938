"""Simulation-based calibration, small version (the full one: benchmarks/calibration.py --parts sbc).

Data drawn from the calibration model's own prior predictive, calibrated with the SVI path of
`twin calibrate` (Laplace start + full-rank Gaussian VI): the true parameters must fall inside
their 90 % intervals about as often as promised. Earlier bugs gave 6 % (every replication reusing
one dataset) and 25 % (unconverged SVI); a calibrated method gives about 90 %.
"""

import numpy as np
import pytest

from calibration.sbc import simulation_based_calibration
from calibration.spec import load_strain

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_small_sbc_covers_the_truth():
    spec = load_strain(ROOT / "calibration/strains/synthetic_erythromycin.toml")
    # 6 replications (the benchmark runs 50+): the suite's 10-minute budget on 2 cores
    res = simulation_based_calibration(spec, 6, svi_steps=300, n_draws=49, seed=3)
    assert len(res.failed) <= 1, res.failed
    n = len(next(iter(res.ranks.values())))
    assert n + len(res.failed) == 6
    for k, r in res.ranks.items():
        assert np.all((r >= 0) & (r <= 49)), k
        assert len(np.unique(r)) > 1, f"{k}: every replication gave the same rank"
    assert res.coverage90() >= 0.7, res.coverage90()
