"""Regenerate the identity channel's known-answer vectors, byte for byte.

    python3 -m tests.vectors.generate_channel           # rewrite identity_channel_vectors.json
    python3 -m tests.vectors.generate_channel --check   # exit 1 if the file differs

Keys and nonces come from the Sphinx generator's ``SeededRng``, so the same code yields the
same file. A change to this file's output is a change to the channel's wire format or key
schedule: bump ENVELOPE_VERSION / STATE_VERSION in client/identity_channel.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from client.identity_channel import IdentityChannel, _root, public_identity

VECTORS_PATH = Path(__file__).with_name("identity_channel_vectors.json")
# (sender, plaintext, delivered): sealed in this order; the receiver opens the delivered
# ones at once, so B's final state keeps the key of A's undelivered message 2.
MESSAGES = (
    ("a", b"CALL_OFFER 1", True), ("b", b"CALL_ANSWER", True), ("a", b"", True),
    ("a", b"lost on the way", False), ("a", b"CALL_HANGUP", True),
)  # fmt: skip


def _sphinx_generator() -> ModuleType:
    here = Path(__file__).with_name("generate.py")
    spec = importlib.util.spec_from_file_location("_gen_sphinx", here)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build() -> str:
    """The vectors file's text."""
    gen = _sphinx_generator()
    keys = gen.SeededRng(gen._seed("identity-channel/keys"))
    nonces = gen.SeededRng(gen._seed("identity-channel/nonces"))
    party: dict[str, dict[str, str]] = {}
    for name in ("a", "b"):
        sign, dh = keys(32), keys(32)
        party[name] = {
            "sign_private": sign.hex(),
            "dh_private": dh.hex(),
            "public": public_identity(sign, dh).hex(),
        }
    a_pub, b_pub = (bytes.fromhex(party[x]["public"]) for x in "ab")
    a_dh = X25519PrivateKey.from_private_bytes(bytes.fromhex(party["a"]["dh_private"]))
    chan = {
        "a": IdentityChannel(bytes.fromhex(party["a"]["dh_private"]), a_pub, b_pub, rng=nonces),
        "b": IdentityChannel(bytes.fromhex(party["b"]["dh_private"]), b_pub, a_pub, rng=nonces),
    }
    envelopes = []
    for sender, plaintext, delivered in MESSAGES:
        envelope, export = chan[sender].seal(plaintext)
        if delivered:
            opened = chan["b" if sender == "a" else "a"].open(envelope)
            assert opened == (plaintext, export)
        envelopes.append({
            "from": sender, "delivered": delivered, "plaintext": plaintext.hex(),
            "nonce": envelope[9:21].hex(),
            "envelope": envelope.hex(), "export": export.hex(),
        })  # fmt: skip
    doc = {
        "description": "IdentityChannel known-answer vectors, from "
        "python3 -m tests.vectors.generate_channel; nonce i is the rng's i-th 12 bytes",
        "rng": gen.RNG_DESCRIPTION,
        "keys_rng_seed": gen._seed("identity-channel/keys").hex(),
        "nonces_rng_seed": gen._seed("identity-channel/nonces").hex(),
        "a": party["a"],
        "b": party["b"],
        "low": "a" if a_pub < b_pub else "b",
        "conversation_id": chan["a"].conversation_id.hex(),
        "root": bytes(_root(a_dh, a_pub, b_pub)).hex(),
        "envelopes": envelopes,
        "state_a": chan["a"].to_bytes().hex(),
        "state_b": chan["b"].to_bytes().hex(),
    }
    return json.dumps(doc, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    return int(_sphinx_generator().write_or_check(argv, __doc__ or "", VECTORS_PATH, build))


if __name__ == "__main__":
    sys.exit(main())
