"""benchmarks/carbon_timing.py: its recipe variants move sugar and oil as documented, at equal
totals where they say so."""

from __future__ import annotations

import numpy as np
import pytest

from test_benchmarks import _load


def test_variants_keep_or_change_the_feed_totals_as_documented():
    ct = _load("carbon_timing")
    from twin.plants import default_recipe

    base = default_recipe()
    split = 80.0
    for var in ct.FEEDS:
        total = float(base.total(var))
        early = float(base.total(var, ct.START_H, split))
        late = float(base.total(var, split, ct.END_H))
        before = float(base.total(var, 0.0, ct.START_H))
        up = ct.variant(base, "late_plus_15", split)
        assert float(up.total(var, split, ct.END_H)) == pytest.approx(1.15 * late, rel=1e-12)
        assert float(up.total(var, 0.0, split)) == pytest.approx(before + early, rel=1e-12)
        for name, a in (("shift_late_10", 0.1), ("shift_early_10", -0.1)):
            r = ct.variant(base, name, split)
            assert float(r.total(var)) == pytest.approx(total, rel=1e-12)
            assert float(r.total(var, ct.START_H, split)) == pytest.approx((1 - a) * early, rel=1e-12)
            assert float(r.total(var, 0.0, ct.START_H)) == pytest.approx(before, rel=1e-12)
    same = ct.variant(base, "default", split)
    np.testing.assert_allclose(float(same.total("substrate_feed")), float(base.total("substrate_feed")), rtol=1e-12)
    with pytest.raises(ValueError, match="unknown variant"):
        ct.variant(base, "later", split)
