"""Known answers for the hybrid call key schedule (client._signaling.keys).

    python3 -m tests.vectors.generate_hybrid   # rewrite tests/vectors/hybrid_vectors.json

Fixed inputs: the caller's X25519 and ML-KEM-768 seeds, the callee's X25519 key, the
channel secrets, call id, mode and message bytes. ML-KEM encapsulation takes its own
randomness (``cryptography`` has no seeded encapsulation), so the ciphertext is drawn
once here and stored; the test decapsulates it with the fixed seed. Regenerating gives a
new ciphertext, hence new shared and call secrets: do it only when the schedule changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from client import Direction
from client._signaling import keys

VECTORS_PATH = Path(__file__).with_name("hybrid_vectors.json")

INPUTS = {
    "call_id": bytes(range(16)),
    "mode": 3,
    "caller_x25519_seed": bytes(range(32, 64)),
    "caller_kem_seed": bytes(range(64, 128)),
    "callee_x25519_seed": bytes(range(128, 160)),
    "offer_secret": bytes([0xA1]) * 32,
    "answer_secret": bytes([0xB2]) * 32,
    "offer": b"offer bytes as sent",
    "answer": b"answer bytes as sent",
}


def outputs(inputs: dict[str, bytes | int], ciphertext: bytes) -> dict[str, str]:
    """Everything the schedule derives from ``inputs`` and the stored ``ciphertext``."""
    call_id, mode = inputs["call_id"], inputs["mode"]
    assert isinstance(call_id, bytes) and isinstance(mode, int)
    b = {k: v for k, v in inputs.items() if isinstance(v, bytes)}
    caller_x = X25519PrivateKey.from_private_bytes(b["caller_x25519_seed"])
    callee_x = X25519PrivateKey.from_private_bytes(b["callee_x25519_seed"])
    kem = MLKEM768PrivateKey.from_seed_bytes(b["caller_kem_seed"])
    caller_pub = caller_x.public_key().public_bytes_raw()
    callee_pub = callee_x.public_key().public_bytes_raw()
    kem_pub = kem.public_key().public_bytes_raw()
    dh = caller_x.exchange(callee_x.public_key())
    kem_shared = kem.decapsulate(ciphertext)
    th = keys.hybrid_transcript(call_id, mode, caller_pub, kem_pub, callee_pub, ciphertext)
    media, accept = keys.call_secrets(
        call_id, b["offer"], b["offer_secret"], b["answer"], b["answer_secret"],
        bytearray(dh), bytearray(kem_shared), th,
    )  # fmt: skip
    return {
        "caller_x25519_public": caller_pub.hex(),
        "callee_x25519_public": callee_pub.hex(),
        "kem_public_sha256": _sha(kem_pub),
        "x25519_shared": dh.hex(),
        "kem_shared": kem_shared.hex(),
        "transcript_hash": th.hex(),
        "media_caller_to_callee": bytes(media[Direction.CALLER_TO_CALLEE]).hex(),
        "media_callee_to_caller": bytes(media[Direction.CALLEE_TO_CALLER]).hex(),
        "accept_key": bytes(accept).hex(),
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def generate() -> str:
    kem = MLKEM768PrivateKey.from_seed_bytes(INPUTS["caller_kem_seed"])  # type: ignore[arg-type]
    _, ciphertext = kem.public_key().encapsulate()
    doc = {
        "inputs": {k: v.hex() if isinstance(v, bytes) else v for k, v in INPUTS.items()},
        "ciphertext": ciphertext.hex(),
        "outputs": outputs(INPUTS, ciphertext),  # type: ignore[arg-type]
    }
    return json.dumps(doc, indent=1) + "\n"


if __name__ == "__main__":
    VECTORS_PATH.write_text(generate())
