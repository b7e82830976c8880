"""E-model (ITU-T G.107) rating R and MOS from one-way delay and packet loss.

    >>> from sim import mos_from_r, r_factor
    >>> round(float(r_factor(100.0, 0.0)), 1), round(float(mos_from_r(93.2)), 2)
    (93.2, 4.41)

Simplified as planning tools usually do: default values for every parameter except delay and
loss (R0 - Is = 93.2, A = 0), the delay impairment Id reduced to its Idd term (echo assumed
controlled), and random (not bursty) loss, BurstR = 1. Figures are cited in docs/research.md.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

R_DEFAULT = 93.2  # R0 - Is with every G.107 default value
IDD_KNEE_MS = 100.0  # Idd is zero up to this absolute one-way delay Ta


def delay_impairment(ta_ms: float | np.ndarray) -> NDArray[np.float64]:
    """Idd of G.107 for absolute one-way delay ``ta_ms``: 0 up to 100 ms, then rising."""
    ta = np.asarray(ta_ms, dtype=np.float64)
    x = np.log2(np.maximum(ta, IDD_KNEE_MS) / IDD_KNEE_MS)
    idd = 25.0 * ((1 + x**6) ** (1 / 6) - 3 * (1 + (x / 3) ** 6) ** (1 / 6) + 2)
    return np.asarray(np.where(ta > IDD_KNEE_MS, idd, 0.0), dtype=np.float64)


def loss_impairment(
    loss: float | np.ndarray, ie: float = 0.0, bpl: float = 25.1
) -> NDArray[np.float64]:
    """Ie-eff = Ie + (95 - Ie) * Ppl / (Ppl + Bpl), Ppl in percent, random loss."""
    ppl = 100.0 * np.clip(np.asarray(loss, dtype=np.float64), 0.0, 1.0)
    return np.asarray(ie + (95.0 - ie) * ppl / (ppl + bpl), dtype=np.float64)


def r_factor(
    ta_ms: float | np.ndarray, loss: float | np.ndarray, ie: float = 0.0, bpl: float = 25.1
) -> np.ndarray:
    """Transmission rating R = 93.2 - Idd(Ta) - Ie-eff(loss)."""
    return R_DEFAULT - delay_impairment(ta_ms) - loss_impairment(loss, ie, bpl)


def mos_from_r(r: float | np.ndarray) -> np.ndarray:
    """Estimated mean opinion score (1..4.5) from R, G.107 Annex B."""
    r = np.asarray(r, dtype=float)
    mos = 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6
    # The cubic dips just below 1 for 0 < R < 6.5; MOS is 1 at worst.
    return np.where(r <= 0, 1.0, np.where(r >= 100, 4.5, np.maximum(mos, 1.0)))
