"""Random numbers from random bytes: the one place bytes become a uniform or exponential draw.

    >>> uniform01(lambda n: bytes(n)), exponential(0.5, lambda n: bytes(n))
    (0.0, 0.0)
    >>> round(exponential(0.5, lambda n: b"\\x80" + bytes(n - 1)), 6)  # u = 1/2: mean * ln 2
    0.346574

Every function takes ``rng(n) -> n bytes`` (default ``os.urandom``), so that packet delays,
loop cover and retry jitter can be replayed from fixed bytes in tests; none uses ``random``.
"""

from __future__ import annotations

import math
import os

from ._errors import UsageError
from ._sphinx import Rng

UNIFORM_BITS = 53  # bits of a float's mantissa: u takes every multiple of 2**-53 in [0, 1)


def uniform01(rng: Rng = os.urandom) -> float:
    """A uniform float in ``[0, 1)``: the top 53 bits of 8 bytes of ``rng`` (big-endian)."""
    return (int.from_bytes(rng(8), "big") >> (64 - UNIFORM_BITS)) / float(1 << UNIFORM_BITS)


def exponential(mean: float, rng: Rng = os.urandom) -> float:
    """An exponential draw with mean ``mean`` (any unit; the result is in the same unit).

    ``-mean * ln(1 - u)`` for ``u = uniform01(rng)``: finite (at most ``mean * 36.8``) and
    0 for u = 0. A mean of 0 gives 0 without reading ``rng``. UsageError if ``mean`` is
    negative, infinite or NaN.
    """
    if not mean >= 0 or math.isinf(mean):
        raise UsageError(f"mean of an exponential must be a finite number >= 0, got {mean!r}")
    if mean == 0:
        return 0.0
    return -mean * math.log1p(-uniform01(rng))
