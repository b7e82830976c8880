"""Sphinx speed: our VOICE geometry vs sphinxmix (Curve25519) vs two bare X25519 calls.

    python -m benchmarks.sphinx            # one JSON object on stdout, ~20 s
    python -m benchmarks.sphinx --check    # exit 1 if a target is missed

All three are measured in the same run and interleaved, so the ratios hold on a noisy box.
Targets: per-hop rate >= 2x sphinxmix, per-hop time <= 1.5x the floor, 5-hop creation
>= 4x sphinxmix.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

from benchmarks._harness import emit, machine, median_rate
from overlay import VOICE, Hop, create_forward, process_packet, public_key

HOPS = 5


def _ours() -> tuple[callable, callable]:  # type: ignore[valid-type]
    keys = [os.urandom(32) for _ in range(HOPS)]
    path = [Hop(bytes([i]) * 16, public_key(k), 1000) for i, k in enumerate(keys)]
    msg = os.urandom(VOICE.user_payload)
    pkt = create_forward(VOICE, path, b"m" * 16, msg)
    return (
        lambda: create_forward(VOICE, path, b"m" * 16, msg),
        lambda: process_packet(VOICE, keys[0], pkt),
    )


def _sphinxmix() -> tuple[callable, callable]:  # type: ignore[valid-type]
    from sphinxmix.SphinxClient import Nenc, create_forward_message
    from sphinxmix.SphinxNode import sphinx_process
    from sphinxmix.SphinxParams import SphinxParams
    from sphinxmix.SphinxParamsC25519 import Group_C25519

    # Same user payload as VOICE; header room for 5 hops of routing.
    params = SphinxParams(group=Group_C25519(), body_len=VOICE.payload_len, header_len=32 + 5 * 37)
    secrets = [os.urandom(32) for _ in range(HOPS)]
    routing = [Nenc(bytes([i])) for i in range(HOPS)]
    pubs = [crypto_scalarmult_base(x) for x in secrets]
    msg = os.urandom(VOICE.user_payload - 64)  # sphinxmix frames the message itself
    header, delta = create_forward_message(params, routing, pubs, b"dest", msg)
    return (
        lambda: create_forward_message(params, routing, pubs, b"dest", msg),
        lambda: sphinx_process(params, secrets[0], header, delta),
    )


def _floor() -> callable:  # type: ignore[valid-type]
    k1, k2, p = os.urandom(32), os.urandom(32), crypto_scalarmult_base(os.urandom(32))
    return lambda: (crypto_scalarmult(k1, p), crypto_scalarmult(k2, p))


def run(rounds: int, number: int) -> dict[str, object]:
    """Interleave the contenders for ``rounds`` rounds; report medians."""
    o_create, o_proc = _ours()
    s_create, s_proc = _sphinxmix()
    floor = _floor()
    cases = {
        "ours_create": (o_create, number),
        "ours_process": (o_proc, number * 4),
        "sphinxmix_create": (s_create, max(1, number // 4)),
        "sphinxmix_process": (s_proc, number * 2),
        "floor_two_x25519": (floor, number * 4),
    }
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, (fn, n) in cases.items():
            samples[name].append(median_rate(fn, number=n, repeats=1))
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {
        "process_vs_sphinxmix": med["ours_process"] / med["sphinxmix_process"],
        "process_time_vs_floor": med["floor_two_x25519"] / med["ours_process"],
        "create_vs_sphinxmix": med["ours_create"] / med["sphinxmix_create"],
    }
    targets = {
        "process_vs_sphinxmix>=2": ratios["process_vs_sphinxmix"] >= 2.0,
        "process_time_vs_floor<=1.5": ratios["process_time_vs_floor"] <= 1.5,
        "create_vs_sphinxmix>=4": ratios["create_vs_sphinxmix"] >= 4.0,
    }
    return {
        "benchmark": "sphinx",
        "geometry": VOICE.to_dict(),
        "hops": HOPS,
        "rounds": rounds,
        "ops_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets_met": targets,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print JSON."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.sphinx", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (median taken)")
    ap.add_argument("--number", type=int, default=200, help="calls per timing sample")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.number < 1:
        ap.error("--rounds and --number must be positive integers")
    result = run(args.rounds, args.number)
    emit(result)
    return 1 if args.check and not all(result["targets_met"].values()) else 0  # type: ignore[union-attr]


if __name__ == "__main__":
    sys.exit(main())
