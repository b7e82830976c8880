"""Gateway cost: a proved ATTACH and a downlink round, at 100 and 10,000 sessions.

    python -m benchmarks.gateway            # one JSON object on stdout, ~30 s
    python -m benchmarks.gateway --check    # exit 1 if a target is missed

Baselines measured in the same run: the crypto an ATTACH cannot avoid
(``GatewaySession.accept``: X25519 and Ed25519) and the bare per-slot work of the downlink
(one ChaCha20-Poly1305 seal of a slot and one ``sendto`` on loopback). Targets: GatewayCore's
cost per ATTACH and per session per slot at 10,000 sessions stays within 1.5x of its cost at
100 (nothing scans the sessions), and the overhead over the baselines is small.
``sessions_per_core_50hz`` is how many clients one gateway process can serve with a 50 Hz
downlink (a round with its ``sendto``) and a 25 Hz uplink each, the core's share only: the
hand-off of each uplink to a worker is not counted (docs/operators.md).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Hashable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from benchmarks._harness import emit, machine
from mixnode.gateway import GatewayCore, Reply
from overlay import (
    VOICE,
    ClientLink,
    GatewaySession,
    LinkCodec,
    MailboxKey,
    generate_private_key,
    public_key,
)

SK = generate_private_key()
SIZES = (100, 10_000)
MEASURED = 200  # ATTACHes timed per size
UPLINK_HZ = 25  # a client's uplink packets per second (client default: 2 x 20 ms per packet)


def _addr(i: int) -> tuple[str, int]:
    """Hosts 127.x.y.z with 50 sessions each (under the per-host cap)."""
    h = i // 50
    return (f"127.{h // 62500 % 250 + 1}.{h // 250 % 250}.{h % 250 + 1}", 1024 + i % 50)


def _proved(gw: GatewayCore, addr: Hashable, now: float) -> bytes:
    """The second ATTACH of a fresh client at ``addr``: the one that carries the proof."""
    return _client(gw, addr, now).attach_frame()


def _client(gw: GatewayCore, addr: Hashable, now: float) -> ClientLink:
    """A fresh client at ``addr`` that got its CHALLENGE (its next ATTACH is proved)."""
    client = ClientLink(VOICE, public_key(SK), MailboxKey.generate())
    challenge = gw.on_datagram(client.attach_frame(), addr, now, [SK])
    assert isinstance(challenge, Reply)
    client.receive(challenge.datagram)
    return client


def _gateway(n: int, *, full: bool) -> GatewayCore:
    """A gateway holding ``n`` proved sessions (``full``: at its max_sessions)."""
    cap = n if full else 2 * n + 2 * MEASURED
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0, max_sessions=cap, max_mailboxes=2 * cap)
    for i in range(n):
        assert gw.on_datagram(_proved(gw, _addr(i), 0.0), _addr(i), 0.0, [SK]) is None
    assert gw.sessions == n
    return gw


def _attach_us(gw: GatewayCore, n: int) -> tuple[float, float]:
    """Median µs of one proved ATTACH (fresh client, fresh host) on ``gw``, and of one
    UPLINK from those clients afterwards."""
    clients = [(_addr(10 * n + i), _client(gw, _addr(10 * n + i), 0.0)) for i in range(MEASURED)]
    times = []
    for addr, client in clients:
        frame = client.attach_frame()
        t0 = time.perf_counter()
        gw.on_datagram(frame, addr, 0.0, [SK])
        times.append(time.perf_counter() - t0)
    uplinks = [(addr, c.seal_uplink(bytes(VOICE.packet_len))) for addr, c in clients]
    up_times = []
    for addr, frame in uplinks:
        t0 = time.perf_counter()
        gw.on_datagram(frame, addr, 0.001, [SK])
        up_times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6, statistics.median(up_times) * 1e6


def _accept_us() -> float:
    """Median µs of the crypto alone: ``GatewaySession.accept`` on proved ATTACHes."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    codec = LinkCodec(VOICE)
    frames = [codec.parse(_proved(gw, ("127.0.0.1", 1), 0.0)) for _ in range(MEASURED)]
    times = []
    for frame in frames:
        t0 = time.perf_counter()
        GatewaySession.accept(codec, [SK], frame)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _round_us(gw: GatewayCore, sink: socket.socket | None, first: int, rounds: int = 5) -> float:
    """Median µs per session of the downlink rounds ``first`` .. ``first + rounds - 1``
    (``sink``: with a real sendto each, as the daemon's edge does)."""
    per = []
    for r in range(first, first + rounds):
        t0 = time.perf_counter()
        out = gw.due_slots(r * gw.slot_s)
        if sink is not None:
            for _, datagram in out:
                try:
                    sink.send(datagram)
                except OSError:  # a full buffer drops it, as in the daemon
                    pass
        per.append((time.perf_counter() - t0) / len(out))
    return statistics.median(per) * 1e6


def _floor_us(sink: socket.socket, n: int = 2000) -> float:
    """µs per slot of the bare work: one seal of a slot and one sendto."""
    aead = ChaCha20Poly1305(os.urandom(32))
    slot = bytes(LinkCodec(VOICE).inner_downlink_len)
    head = bytes(18)
    t0 = time.perf_counter()
    for i in range(n):
        sink.send(head + aead.encrypt(i.to_bytes(12, "big"), slot, head))
    return (time.perf_counter() - t0) / n * 1e6


def _sink() -> tuple[socket.socket, socket.socket]:
    """A loopback UDP pair: the receiver never reads (the kernel drops what overflows)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    tx.setblocking(False)
    return rx, tx


def measure() -> dict[str, object]:
    rx, tx = _sink()
    result: dict[str, object] = {"benchmark": "gateway", **machine()}
    try:
        result["baseline_accept_us"] = round(_accept_us(), 1)
        result["baseline_slot_us"] = round(_floor_us(tx), 2)
        for n in SIZES:
            gw = _gateway(n, full=False)
            gw.due_slots(0.0)  # the ATTACHED slots
            result[f"round_us_per_session_{n}"] = round(_round_us(gw, None, 1), 2)
            result[f"round_send_us_per_session_{n}"] = round(_round_us(gw, tx, 6), 2)
            attach, uplink = _attach_us(gw, n)
            result[f"attach_us_{n}"], result[f"uplink_us_{n}"] = round(attach, 1), round(uplink, 2)
            result[f"attach_us_{n}_full"] = round(_attach_us(_gateway(n, full=True), n)[0], 1)
    finally:
        rx.close()
        tx.close()
    down_us = float(result[f"round_send_us_per_session_{SIZES[-1]}"])  # type: ignore[arg-type]
    up_us = float(result[f"uplink_us_{SIZES[-1]}"])  # type: ignore[arg-type]
    result["sessions_per_core_50hz"] = int(1e6 / (50 * down_us + UPLINK_HZ * up_us))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    r = measure()
    small, big = SIZES
    checks = {
        "attach_flat": float(r[f"attach_us_{big}"]) <= 1.5 * float(r[f"attach_us_{small}"]),  # type: ignore[arg-type]
        "attach_full_flat": float(r[f"attach_us_{big}_full"])  # type: ignore[arg-type]
        <= 1.5 * float(r[f"attach_us_{small}_full"]),  # type: ignore[arg-type]
        "round_flat": float(r[f"round_us_per_session_{big}"])  # type: ignore[arg-type]
        <= 1.5 * float(r[f"round_us_per_session_{small}"]),  # type: ignore[arg-type]
    }
    r["checks"] = checks
    emit(r)
    return 0 if not args.check or all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
