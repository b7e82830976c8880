"""Compare measured one-way latencies of a real run with what the simulator predicts.

    >>> import numpy as np
    >>> from sim import load_scenario
    >>> from sim.validate import simulate_one_way, validate
    >>> sc = load_scenario({"users": {"n_calls": 4, "call_s": 10.0}})
    >>> measured = simulate_one_way(sc.replace(seed=99))
    >>> validate(measured, sc).passed
    True

One-way latency is measured per media packet from "ready at the sender" (last frame
encoded) to "arrived at the receiving client", in seconds: uplink slot wait, links,
processing, sender-chosen delays and downlink slot wait. The testnet measures the same span.
The KS tolerance is practical, not a significance level: packets of one call are correlated
by the shaped downlink, so the effective sample is far smaller than the packet count.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._model import make_streams, transit
from ._scenario import Scenario

COMPARED = (50.0, 90.0, 95.0, 99.0)
KS_TOLERANCE = 0.1  # largest CDF gap accepted between measured and simulated
REL_TOLERANCE = 0.15  # largest relative gap accepted at each compared percentile


class MeasuredDataError(ValueError):
    """The measured-latency file is missing, malformed or has too few samples."""


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """Measured against simulated: percentiles side by side, KS distance, verdict."""

    n_measured: int
    n_simulated: int
    percentiles_ms: dict[str, dict[str, float]]  # "p50": {"measured", "simulated", "rel_diff"}
    ks_distance: float
    ks_tolerance: float
    rel_tolerance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


SIM_PACKETS = 200_000  # simulate at least this many packets, so the model side is smooth


def simulate_one_way(sc: Scenario, min_packets: int = 0) -> np.ndarray:
    """One-way latencies (seconds) of the scenario's calls, lost packets left out; with
    ``min_packets``, more calls of the same kind until there are that many packets.

    Packets of one call are not independent (the shaped downlink queues them), so many
    calls, not long ones, make the simulated distribution smooth."""
    per_call = 2 * sc.users.call_s / (sc.voice.slot_ms / 1000.0)
    calls = max(sc.users.n_calls, int(np.ceil(min_packets / max(per_call, 1.0))))
    if calls != sc.users.n_calls:
        sc = sc.replace(
            **{"users.n_calls": calls, "users.n_users": max(sc.users.n_users, 2 * calls)}
        )
    ss = np.random.SeedSequence(sc.seed)
    r_st, r_tr = (np.random.default_rng(s) for s in ss.spawn(2))
    st = make_streams(sc, r_st)
    tr = transit(sc, r_tr, st)
    d = (tr.arrive_s - st.ready_s)[~st.warmup]
    return np.asarray(d[np.isfinite(d)], dtype=np.float64)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    x = np.concatenate([a, b])
    fa = np.searchsorted(a, x, side="right") / len(a)
    fb = np.searchsorted(b, x, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def validate(
    measured_s: np.ndarray | list[float],
    sc: Scenario,
    *,
    ks_tolerance: float = KS_TOLERANCE,
    rel_tolerance: float = REL_TOLERANCE,
) -> ValidationResult:
    """Pass when the KS distance and every compared percentile are within tolerance.

    ``measured_s``: one-way latencies in seconds, at least 20, finite and >= 0
    (MeasuredDataError otherwise). ``ks_tolerance`` in 0..1 and ``rel_tolerance`` >= 0,
    both finite (ValueError otherwise).
    """
    if not 0.0 <= ks_tolerance <= 1.0:  # (False for NaN)
        raise ValueError(f"ks_tolerance: want a KS distance in 0..1, got {ks_tolerance!r}")
    if not (math.isfinite(rel_tolerance) and rel_tolerance >= 0.0):
        raise ValueError(f"rel_tolerance: want a finite relative gap >= 0, got {rel_tolerance!r}")
    m = np.asarray(measured_s, dtype=float)
    if m.ndim != 1 or len(m) < 20:
        raise MeasuredDataError("measured: want a flat list of at least 20 latencies (s)")
    if not np.isfinite(m).all() or (m < 0).any():
        raise MeasuredDataError("measured: latencies must be finite and >= 0 seconds")
    sim = simulate_one_way(sc, SIM_PACKETS)
    pm, ps = np.percentile(m, COMPARED) * 1000.0, np.percentile(sim, COMPARED) * 1000.0
    table = {}
    ok = True
    for p, a, b in zip(COMPARED, pm, ps, strict=True):
        rel = abs(a - b) / b
        ok &= rel <= rel_tolerance
        table[f"p{p:g}"] = {
            "measured": round(float(a), 3),
            "simulated": round(float(b), 3),
            "rel_diff": round(float(rel), 4),
        }
    ks = ks_distance(m, sim)
    return ValidationResult(
        n_measured=len(m),
        n_simulated=len(sim),
        percentiles_ms=table,
        ks_distance=round(ks, 5),
        ks_tolerance=ks_tolerance,
        rel_tolerance=rel_tolerance,
        passed=bool(ok and ks <= ks_tolerance),
    )


def load_measured(path: str | Path) -> np.ndarray:
    """Read measured latencies: a JSON list of seconds or {"one_way_s": [...]}."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise MeasuredDataError(f"measured file {str(path)!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise MeasuredDataError(f"measured file {str(path)!r}: not JSON: {exc}") from None
    if isinstance(data, dict):
        if "one_way_s" not in data:
            raise MeasuredDataError("measured file: want a list or an object with 'one_way_s'")
        data = data["one_way_s"]
    if not isinstance(data, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in data
    ):
        raise MeasuredDataError("measured file: 'one_way_s' must be a list of numbers (s)")
    return np.asarray(data, dtype=float)
