"""What the hybrid post-quantum call keys add to call setup: CPU time and uplink slots.

    python -m benchmarks.callsetup          # one JSON object on stdout, ~10 s
    python -m benchmarks.callsetup --check  # exit 1 if a target is missed

Measured in one run, interleaved so the ratios hold on a busy machine (CPU time of this
process, ``time.process_time``, median of repeats, microseconds per operation):

- the X25519-only baseline: an ephemeral key pair and one agreement (what each side
  would do for classical ephemeral call keys);
- ML-KEM-768 (``cryptography``): key generation from a seed, encapsulation (with parsing
  the 1,184-byte key), decapsulation;
- each side's whole hybrid step (``keys.CallerEphemeral`` / ``keys.callee_hybrid``);
- a whole signaling setup between two ``Call`` objects in memory (OFFER, ANSWER, RING,
  ACCEPT, with the channel's AEAD and the key schedule).

And the slots: the sealed OFFER and ANSWER as the ``Caller`` sends them (32-byte reply
path, no SURBs), without and with the hybrid block, in 352-byte Sphinx payloads
(``SignalFramer``), hence the extra 40 ms uplink slots per direction.

Targets: the hybrid step adds at most 2 ms of CPU per side (less than one 20 ms frame's
budget share), and at most 4 extra slots per direction (the OFFER and ANSWER fit 5
payloads each).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from benchmarks._harness import emit, machine
from client import (
    Accept,
    Answer,
    Call,
    InMemoryChannel,
    MediaType,
    Offer,
    PrivacyMode,
    Send,
    VoiceProfile,
    encode,
)
from client._channel import COUNTER_LEN
from client._frames import Address, SignalFramer
from client._signaling import keys
from overlay import VOICE

REPEATS = 7
NUMBER = 40


def cpu_us(fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median CPU microseconds per call of each function, interleaved over repeats."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm up
    for _ in range(REPEATS):
        for name, fn in fns.items():
            t0 = time.process_time()
            for _ in range(NUMBER):
                fn()
            samples[name].append((time.process_time() - t0) / NUMBER * 1e6)
    return {name: round(statistics.median(v), 1) for name, v in samples.items()}


def _setup() -> None:
    """One whole signaling setup in memory: OFFER, ANSWER + RING, ACCEPT."""
    a, b = InMemoryChannel.pair()
    caller = Call(a, reply_mailbox=bytes(32), surbs=b"")
    callee = Call(b, reply_mailbox=bytes(32), surbs=b"")
    for out in caller.place(0.0):
        if isinstance(out, Send):
            for back in callee.handle(out.envelope, 0.1):
                if isinstance(back, Send):
                    caller.handle(back.envelope, 0.2)
    for out in callee.accept(0.3):
        if isinstance(out, Send):
            caller.handle(out.envelope, 0.4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    x_peer = X25519PrivateKey.generate().public_key().public_bytes_raw()
    kem = MLKEM768PrivateKey.generate()
    kem_pub = kem.public_key().public_bytes_raw()
    _, ct = kem.public_key().encapsulate()
    seed = bytes(64)

    def x25519_only() -> None:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(x_peer))

    eph = keys.CallerEphemeral(lambda n: bytes(n))

    def caller_hybrid() -> None:
        keys.CallerEphemeral(lambda n: bytes([7]) * n).finish(x_peer, ct)

    def callee_hybrid() -> None:
        keys.callee_hybrid(eph.x25519_public, eph.kem_public, lambda n: bytes([9]) * n)

    us = cpu_us({
        "x25519_keygen_and_agree": x25519_only,
        "mlkem768_keygen_from_seed": lambda: MLKEM768PrivateKey.from_seed_bytes(seed),
        "mlkem768_encaps": lambda: MLKEM768PublicKey.from_public_bytes(kem_pub).encapsulate(),
        "mlkem768_decaps": lambda: kem.decapsulate(ct),
        "caller_hybrid_step": caller_hybrid,
        "callee_hybrid_step": callee_hybrid,
        "whole_signaling_setup_in_memory": _setup,
    })  # fmt: skip
    extra = {
        "caller": round(us["caller_hybrid_step"] - us["x25519_keygen_and_agree"], 1),
        "callee": round(us["callee_hybrid_step"] - us["x25519_keygen_and_agree"], 1),
    }
    frames, most_extra = slots()
    checks = {
        "extra_cpu_under_2ms": max(extra.values()) <= 2000,
        "at_most_4_extra_slots": most_extra <= 4,
    }
    emit({"benchmark": "callsetup", **machine(), "cpu_us": us, "hybrid_extra_cpu_us": extra,
          "slots": frames, "checks": checks})  # fmt: skip
    return 0 if not args.check or all(checks.values()) else 1


def slots() -> tuple[dict[str, object], int]:
    """OFFER and ANSWER sizes and frames without and with the hybrid block; and the most
    extra slots either takes."""
    chunk = SignalFramer(bytes(32), Address(bytes(16), bytes(16)),
                         Address(bytes(16), bytes(16))).chunk_len  # fmt: skip
    sealed = COUNTER_LEN + 16  # the channel's counter and Poly1305 tag
    cid, p = bytes(16), VoiceProfile()
    offer = Offer(cid, bytes(16), PrivacyMode.PARANOID, MediaType.AUDIO, 1, p, bytes(32), b"")
    answer = Answer(cid, bytes(32), PrivacyMode.PARANOID, p, bytes(32), b"", bytes(32))
    eph = keys.CallerEphemeral(lambda n: bytes(n))
    x_pub, ct, _, _ = keys.callee_hybrid(eph.x25519_public, eph.kem_public, lambda n: bytes(n))
    h_offer = replace(offer, x25519_public=eph.x25519_public, kem_public=eph.kem_public)
    h_answer = replace(answer, x25519_public=x_pub, kem_ciphertext=ct)
    slot_ms = p.packet_interval_ms
    out: dict[str, object] = {"payload_bytes": VOICE.user_payload, "chunk_bytes": chunk,
                              "slot_ms": slot_ms}  # fmt: skip
    most = 0
    for name, classic, hybrid in (("offer", offer, h_offer), ("answer", answer, h_answer)):
        before = math.ceil((len(encode(classic)) + sealed) / chunk)
        after = math.ceil((len(encode(hybrid)) + sealed) / chunk)
        out[name] = {
            "sealed_bytes": [len(encode(classic)) + sealed, len(encode(hybrid)) + sealed],
            "payloads": [before, after],
            "extra_slots": after - before,
            "extra_ms_at_constant_rate": (after - before) * slot_ms,
        }
        most = max(most, after - before)
    accept = len(encode(Accept(cid, bytes(32)))) + sealed
    out["accept_and_ring_payloads"] = math.ceil(accept / chunk)
    return out, most


if __name__ == "__main__":
    sys.exit(main())
