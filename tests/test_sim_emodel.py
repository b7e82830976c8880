"""E-model (ITU-T G.107) values against hand-computed figures."""

from __future__ import annotations

import math

import pytest

from sim import mos_from_r, r_factor
from sim._emodel import delay_impairment, loss_impairment


def test_no_impairment_gives_the_default_rating() -> None:
    assert float(r_factor(0.0, 0.0)) == pytest.approx(93.2)
    assert float(delay_impairment(100.0)) == 0.0


def test_idd_at_400_ms_by_hand() -> None:
    x = math.log2(400 / 100)  # = 2
    want = 25 * ((1 + x**6) ** (1 / 6) - 3 * (1 + (x / 3) ** 6) ** (1 / 6) + 2)
    assert float(delay_impairment(400.0)) == pytest.approx(want)
    assert 23.5 < want < 24.5


def test_loss_impairment_half_way_at_bpl() -> None:
    # Ppl = Bpl: Ie-eff = Ie + (95 - Ie) / 2.
    assert float(loss_impairment(0.10, ie=10.0, bpl=10.0)) == pytest.approx(10 + 85 / 2)


def test_mos_mapping_bounds_and_monotonic() -> None:
    assert float(mos_from_r(-5)) == 1.0
    assert float(mos_from_r(120)) == 4.5
    assert float(mos_from_r(50)) == pytest.approx(1 + 1.75 + 50 * -10 * 50 * 7e-6)
    rs = [float(mos_from_r(r)) for r in range(0, 101, 5)]
    assert rs == sorted(rs)
    assert float(r_factor(600.0, 0.05)) < float(r_factor(300.0, 0.01))
