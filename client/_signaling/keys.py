"""The call key schedule: call id, transcript MACs, the call secret, media secrets, rekeys.

    >>> from client import call_id_for
    >>> call_id_for(bytes(16), bytes(16)).hex()
    'ff94185efba7c20c1eb91296127c96df'

Every derivation is HKDF-SHA256 with salt = the call id and info = ``CALL_LABEL`` + " " +
a purpose; MACs are HMAC-SHA256. The call secret is the hybrid one (docs/calling.md,
"Call keys: the hybrid key schedule")::

    ikm    = offer secret || answer secret || X25519(eph_a, eph_b) || ML-KEM-768 shared
    th     = SHA-256(CALL_LABEL " hybrid" || call id || mode || X25519 pub of the caller
                     || ML-KEM encapsulation key || X25519 pub of the callee || ciphertext)
    secret = HKDF(ikm, salt = call id,
                  info = CALL_LABEL " hybrid secret" || SHA-256(offer) || SHA-256(answer) || th)

so both messages' channel secrets (hence the identities) contribute, each call has fresh
ephemeral keys (forward secrecy), the key stays secret while either X25519 or ML-KEM
holds, and a changed mode anywhere leaves media undecryptable. All secrets are 32 bytes;
the call's secrets are ``bytearray`` so that ``wipe`` can zero them.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from overlay import Rng

from .._media import CALL_ID_LEN, Direction
from .messages import SignalMalformed

CALL_LABEL = b"phantom-call-v1"  # versioned label of every call-level derivation


X25519_SEED_LEN = 32  # bytes, an X25519 private key
KEM_SEED_LEN = 64  # bytes, an ML-KEM-768 seed (d || z, FIPS 203)


def hkdf(ikm: bytes | bytearray, salt: bytes, info: bytes) -> bytes:
    """32 bytes of HKDF-SHA256 under the call label."""
    return HKDF(hashes.SHA256(), 32, salt, CALL_LABEL + b" " + info).derive(ikm)


def wipe(buffers: Iterable[bytearray]) -> None:
    """Overwrite each buffer with zeros, in place."""
    for buf in buffers:
        buf[:] = bytes(len(buf))


class CallerEphemeral:
    """The caller's ephemeral X25519 key and ML-KEM-768 key of one call, held as seeds.

    ``x25519_seed`` (32 B) and ``kem_seed`` (64 B) come from ``rng`` into ``bytearray``
    buffers that ``wipe`` zeroes; the key objects are rebuilt from them when needed and
    not kept (OpenSSL clears its own copy when a key object is freed).
    """

    def __init__(self, rng: Rng):
        self.x25519_seed = bytearray(rng(X25519_SEED_LEN))
        self.kem_seed = bytearray(rng(KEM_SEED_LEN))
        self.x25519_public = self._x25519().public_key().public_bytes_raw()
        self.kem_public = self._kem().public_key().public_bytes_raw()

    def _x25519(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self.x25519_seed)

    def _kem(self) -> MLKEM768PrivateKey:
        return MLKEM768PrivateKey.from_seed_bytes(self.kem_seed)

    def finish(self, callee_x25519: bytes, ciphertext: bytes) -> tuple[bytearray, bytearray]:
        """The caller's (X25519 shared, ML-KEM shared) secrets from the answer's block.

        Raises ``SignalMalformed`` for a public key whose X25519 result is all zeros
        (a low-order point). A wrong ciphertext is not detected here (ML-KEM's implicit
        rejection): it gives another shared secret, and the ACCEPT's MAC fails."""
        try:
            dh = self._x25519().exchange(X25519PublicKey.from_public_bytes(callee_x25519))
            kem = self._kem().decapsulate(ciphertext)
        except ValueError:
            raise SignalMalformed() from None
        return bytearray(dh), bytearray(kem)

    def buffers(self) -> list[bytearray]:
        return [self.x25519_seed, self.kem_seed]


def callee_hybrid(
    caller_x25519: bytes, kem_public: bytes, rng: Rng
) -> tuple[bytes, bytes, bytearray, bytearray]:
    """The callee's side of the hybrid step: a fresh ephemeral X25519 key and an ML-KEM
    encapsulation to the offer's key. Returns (X25519 public 32 B, ciphertext 1,088 B,
    X25519 shared, ML-KEM shared). ML-KEM's encapsulation randomness is the library's own
    (``cryptography`` takes no seed for it); the X25519 key comes from ``rng``.

    Raises ``SignalMalformed`` for an encapsulation key that fails ML-KEM's checks or an
    X25519 public key of low order."""
    seed = bytearray(rng(X25519_SEED_LEN))
    try:
        eph = X25519PrivateKey.from_private_bytes(seed)
        dh = bytearray(eph.exchange(X25519PublicKey.from_public_bytes(caller_x25519)))
        kem, ciphertext = MLKEM768PublicKey.from_public_bytes(kem_public).encapsulate()
    except ValueError:
        raise SignalMalformed() from None
    finally:
        wipe([seed])
    return eph.public_key().public_bytes_raw(), ciphertext, dh, bytearray(kem)


def hybrid_transcript(
    call_id: bytes, mode: int, caller_x25519: bytes, kem_public: bytes,
    callee_x25519: bytes, ciphertext: bytes,
) -> bytes:  # fmt: skip
    """SHA-256 binding the call id, the mode, both ephemeral publics and the ciphertext."""
    return hashlib.sha256(
        CALL_LABEL + b" hybrid" + call_id + bytes([mode])
        + caller_x25519 + kem_public + callee_x25519 + ciphertext
    ).digest()  # fmt: skip


def call_id_for(conversation_id: bytes, nonce: bytes) -> bytes:
    """The call id: bound to the conversation, so an offer cannot be replayed across chats."""
    return hashlib.blake2b(
        conversation_id + nonce, digest_size=CALL_ID_LEN, person=b"pn-callid-v1"
    ).digest()


def mac(key: bytes | bytearray, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` (32 bytes)."""
    return hmac.new(key, data, hashlib.sha256).digest()


def answer_mac(offer_secret: bytes | bytearray, call_id: bytes, core: bytes) -> bytes:
    """Keyed by the offer's message secret: proves the answerer read our very offer.
    ``core``: the encoded answer with an empty ``confirm_mac``."""
    return mac(hkdf(offer_secret, call_id, b"answer"), core)


def call_secrets(
    call_id: bytes, offer: bytes, offer_secret: bytes | bytearray, answer: bytes,
    answer_secret: bytes | bytearray, x25519_shared: bytearray, kem_shared: bytearray,
    transcript_hash: bytes,
) -> tuple[dict[Direction, bytearray], bytearray]:  # fmt: skip
    """The media secret of each direction and the accept key (32 B each, ``bytearray``),
    from both messages' channel secrets and the hybrid shared secrets, over the whole
    transcript (``offer`` and ``answer``: their encoded bytes; ``transcript_hash``:
    ``hybrid_transcript``). The intermediate ``ikm`` and call secret are zeroed here."""
    transcript = hashlib.sha256(offer).digest() + hashlib.sha256(answer).digest()
    ikm = bytearray(offer_secret) + answer_secret + x25519_shared + kem_shared
    secret = bytearray(hkdf(ikm, call_id, b"hybrid secret" + transcript + transcript_hash))
    media = {d: bytearray(hkdf(secret, call_id, b"media" + bytes([d]))) for d in Direction}
    accept = bytearray(hkdf(secret, call_id, b"accept"))
    wipe([ikm, secret])
    return media, accept


def accept_mac(accept_key: bytes | bytearray, call_id: bytes, mode: int) -> bytes:
    """The ACCEPT's proof of the call secret and the agreed mode."""
    return mac(accept_key, b"accept" + call_id + bytes([mode]))


def ratchet(
    secret: bytearray, export: bytes, call_id: bytes, d: Direction, generation: int
) -> bytearray:
    """Direction ``d``'s media secret of ``generation``, from the previous one and the
    REKEY message's own secret ``export``."""
    info = b"rekey" + bytes([d]) + struct.pack(">I", generation)
    ikm = secret + export
    out = bytearray(hkdf(ikm, call_id, info))
    wipe([ikm])
    return out
