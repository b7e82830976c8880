"""Timing helpers shared by the benchmarks: medians of repeats, JSON out."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable


def median_rate(fn: Callable[[], object], *, number: int, repeats: int) -> float:
    """Operations per second: the median over ``repeats`` runs of ``number`` calls."""
    fn()  # warm up caches and lazy imports
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        rates.append(number / (time.perf_counter() - t0))
    return statistics.median(rates)


def machine() -> dict[str, object]:
    """Where the numbers were taken."""
    return {"python": sys.version.split()[0], "machine": platform.machine()}


def emit(result: dict[str, object]) -> None:
    """Print one JSON object on stdout."""
    print(json.dumps(result, indent=2, sort_keys=False))
