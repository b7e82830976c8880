"""Simulator speed: packet-hops per second of the vectorized engine against a plain
per-packet event-loop engine, on the same scenario and streams, in the same run.

    python -m benchmarks.sim            # one JSON object on stdout, ~30 s
    python -m benchmarks.sim --check    # exit 1 if a target is missed

Both engines carry the same packets (100 calls x 60 s, both directions, of
scenarios/bench.toml) hop by hop through the same delay model: uplink slot, access link,
processing and sender-chosen delay at 5 hops, links between them, the shaped downlink.
Rounds are interleaved so that the ratio holds on a busy machine.
Targets: vectorized >= 50x the event loop and >= 2 million packet-hops/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._harness import emit, machine
from sim import load_scenario, run_latency
from sim._eventloop import transit_eventloop
from sim._model import make_streams, transit

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "bench.toml"
TARGET_RATIO = 50.0
TARGET_RATE = 2e6  # packet-hops per second


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def run(rounds: int, scenario: Path) -> dict[str, object]:
    """Interleave ``rounds`` event-loop runs with vectorized runs; report medians."""
    sc = load_scenario(scenario)
    st = make_streams(sc, np.random.default_rng(sc.seed))
    hops = len(st.ready_s) * sc.hops
    transit(sc, np.random.default_rng(0), st)  # warm up
    vec, loop, full = [], [], []
    for r in range(rounds):
        loop.append(_timed(lambda r=r: transit_eventloop(sc, np.random.default_rng(r), st)))
        for k in range(5):
            vec.append(_timed(lambda k=k: transit(sc, np.random.default_rng(100 + k), st)))
        full.append(_timed(lambda: run_latency(sc)))
    vec_rate = hops / statistics.median(vec)
    loop_rate = hops / statistics.median(loop)
    ratio = vec_rate / loop_rate
    return {
        "benchmark": "sim",
        "scenario": sc.name,
        "packets": len(st.ready_s),
        "hops": sc.hops,
        "packet_hops": hops,
        "rounds": rounds,
        "packet_hops_per_s": {
            "vectorized": round(vec_rate),
            "event_loop": round(loop_rate),
            # Whole latency run: streams, transit, adaptive jitter buffer, summary.
            "vectorized_full_run": round(hops / statistics.median(full)),
        },
        "ratio_vectorized_vs_event_loop": round(ratio, 1),
        "targets_met": {
            f"ratio>={TARGET_RATIO:g}": ratio >= TARGET_RATIO,
            f"vectorized>={TARGET_RATE:g}": vec_rate >= TARGET_RATE,
        },
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print JSON."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.sim", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median taken)")
    ap.add_argument("--scenario", type=Path, default=SCENARIO, help="scenario TOML")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be a positive integer")
    result = run(args.rounds, args.scenario)
    emit(result)
    return 1 if args.check and not all(result["targets_met"].values()) else 0  # type: ignore[union-attr]


if __name__ == "__main__":
    sys.exit(main())
