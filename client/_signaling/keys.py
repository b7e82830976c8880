"""The call key schedule: call id, transcript MACs, the call secret, media secrets, rekeys.

    >>> from client import call_id_for
    >>> call_id_for(bytes(16), bytes(16)).hex()
    'ff94185efba7c20c1eb91296127c96df'

Every derivation is HKDF-SHA256 with salt = the call id and info = ``CALL_LABEL`` + " " +
a purpose; MACs are HMAC-SHA256. The call secret is HKDF(offer secret || answer secret)
over the SHA-256 of the offer and answer bytes, so both messages' ratchet keys contribute
and a changed mode anywhere leaves media undecryptable. All secrets are 32 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._media import CALL_ID_LEN, Direction

CALL_LABEL = b"phantom-call-v1"  # versioned label of every call-level derivation


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """32 bytes of HKDF-SHA256 under the call label."""
    return HKDF(hashes.SHA256(), 32, salt, CALL_LABEL + b" " + info).derive(ikm)


def call_id_for(conversation_id: bytes, nonce: bytes) -> bytes:
    """The call id: bound to the conversation, so an offer cannot be replayed across chats."""
    return hashlib.blake2b(
        conversation_id + nonce, digest_size=CALL_ID_LEN, person=b"pn-callid-v1"
    ).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` (32 bytes)."""
    return hmac.new(key, data, hashlib.sha256).digest()


def answer_mac(offer_secret: bytes, call_id: bytes, core: bytes) -> bytes:
    """Keyed by the offer's message secret: proves the answerer read our very offer.
    ``core``: the encoded answer with an empty ``confirm_mac``."""
    return mac(hkdf(offer_secret, call_id, b"answer"), core)


def call_secrets(
    call_id: bytes, offer: bytes, offer_secret: bytes, answer: bytes, answer_secret: bytes
) -> tuple[dict[Direction, bytes], bytes]:
    """The media secret of each direction and the accept key, from both messages' secrets
    over the whole transcript (``offer`` and ``answer``: their encoded bytes)."""
    transcript = hashlib.sha256(offer).digest() + hashlib.sha256(answer).digest()
    secret = hkdf(offer_secret + answer_secret, call_id, b"secret" + transcript)
    media = {d: hkdf(secret, call_id, b"media" + bytes([d])) for d in Direction}
    return media, hkdf(secret, call_id, b"accept")


def accept_mac(accept_key: bytes, call_id: bytes, mode: int) -> bytes:
    """The ACCEPT's proof of the call secret and the agreed mode."""
    return mac(accept_key, b"accept" + call_id + bytes([mode]))


def ratchet(secret: bytes, export: bytes, call_id: bytes, d: Direction, generation: int) -> bytes:
    """Direction ``d``'s media secret of ``generation``, from the previous one and the
    REKEY message's own secret ``export``."""
    info = b"rekey" + bytes([d]) + struct.pack(">I", generation)
    return hkdf(secret + export, call_id, info)
