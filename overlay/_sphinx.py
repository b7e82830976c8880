"""Sphinx packets on X25519, BLAKE2b, ChaCha20 and LIONESS; sans-IO.

    >>> import os
    >>> from overlay import VOICE, Hop, create_forward, process_packet, public_key, Forward
    >>> keys = [os.urandom(32) for _ in range(3)]
    >>> path = [Hop(bytes([i]) * 16, public_key(k), delay_us=1000) for i, k in enumerate(keys)]
    >>> pkt = create_forward(VOICE, path, mailbox=b"m" * 16, message=b"hello")
    >>> r = process_packet(VOICE, keys[0], pkt); isinstance(r, Forward)
    True

A packet is ``version | alpha | beta | gamma | payload``; docs/sphinx.md has every byte.
Each hop does two X25519 multiplications (shared secret, blinding) and cheap symmetric work.
The sender multiplies blinding scalars modulo the group order, so building a 5-hop packet
costs one fixed-base and five variable-base multiplications instead of ~25.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

from ._errors import (
    BadCommand,
    MacMismatch,
    PayloadTampered,
    UnknownVersion,
    UsageError,
    WrongLength,
)
from ._geometry import (
    COMMAND_LEN,
    DELAY_LEN,
    GROUP_ELEMENT_LEN,
    LENGTH_LEN,
    LIONESS_KEY_LEN,
    MAC_LEN,
    MAILBOX_ID_LEN,
    MAX_DELAY_US,
    NODE_ID_LEN,
    ROUTING_SLOT_LEN,
    SPHINX_VERSION,
    SURB_ID_LEN,
    TAG_LEN,
    VERSION_LEN,
    Geometry,
)

Rng = Callable[[int], bytes]

# Field prime of Curve25519; an honest alpha is always encoded below it.
_P = 2**255 - 19
# Order of the prime-order subgroup of Curve25519 (l).
_L = 2**252 + 27742317777372353535851937790883648493
_L_INV_MOD_8 = pow(_L, -1, 8)
_TWO_254 = 1 << 254
_TWO_255 = 1 << 255
_ZERO_NONCE = bytes(12)
_ZERO_TAG = bytes(TAG_LEN)
_blake2b = hashlib.blake2b
_aead = ChaCha20Poly1305
_from_bytes = int.from_bytes

# KDF labels: BLAKE2b personalisation strings, versioned (16 bytes at most).
_LABEL_HEADER = b"pn-sphinx-v1-hdr"  # -> stream key (rho) | MAC key (mu)
_LABEL_MISC = b"pn-sphinx-v1-bt"  # -> blinding factor (b) | replay tag
_LABEL_LIONESS = b"pn-sphinx-v1-lio"  # -> four LIONESS round keys (pi)
_LABEL_SURB = b"pn-sphinx-v1-srb"  # -> LIONESS keys of a SURB's end-to-end layer


class RoutingCommand(IntEnum):
    """First byte of a routing slot: what this hop does with the packet."""

    RELAY = 1  # forward to next node after the delay
    DELIVER = 2  # final hop: queue the payload for a mailbox
    DELIVER_REPLY = 3  # final hop: queue a SURB reply (payload stays end-to-end encrypted)
    DROP = 4  # final hop: cover traffic, discard after the delay


@dataclass(frozen=True, slots=True)
class Hop:
    """One node on a path: its id, its X25519 epoch public key, the delay it must hold."""

    node_id: bytes
    public_key: bytes
    delay_us: int


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``packet`` to ``next_hop`` after ``delay_us``."""

    next_hop: bytes
    delay_us: int
    packet: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Final hop: queue ``message`` for ``mailbox`` after ``delay_us``."""

    mailbox: bytes
    delay_us: int
    message: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True)
class DeliverReply:
    """Final hop of a SURB reply: queue the still-encrypted ``payload`` for ``mailbox``."""

    mailbox: bytes
    delay_us: int
    surb_id: bytes
    payload: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True)
class Discard:
    """Final hop of drop cover: hold ``delay_us`` (for realistic timing), then discard."""

    delay_us: int
    replay_tag: bytes


ProcessResult = Forward | Deliver | DeliverReply | Discard


@dataclass(frozen=True, slots=True)
class Surb:
    """A single-use reply block, handed to the peer: enough to send one reply, no more."""

    first_hop: bytes
    header: bytes
    key: bytes  # end-to-end LIONESS key material the replier encrypts with

    def to_bytes(self) -> bytes:
        """``first_hop | key | header``; fixed length for a geometry."""
        return self.first_hop + self.key + self.header

    @classmethod
    def from_bytes(cls, geometry: Geometry, data: bytes) -> Surb:
        """Parse a SURB; WrongLength unless exactly ``surb_len(geometry)`` bytes."""
        if len(data) != surb_len(geometry):
            raise WrongLength("SURB has the wrong length")
        k = NODE_ID_LEN + 4 * LIONESS_KEY_LEN
        return cls(first_hop=data[:NODE_ID_LEN], header=data[k:], key=data[NODE_ID_LEN:k])


@dataclass(frozen=True, slots=True)
class SurbKeys:
    """What the SURB's creator keeps to open the reply; secret, use once."""

    surb_id: bytes
    key: bytes
    hop_keys: tuple[bytes, ...]


def surb_len(geometry: Geometry) -> int:
    """Serialized SURB length for ``geometry``."""
    return NODE_ID_LEN + 4 * LIONESS_KEY_LEN + geometry.header_len


def public_key(private_key: bytes) -> bytes:
    """X25519 public key of a 32-byte private key."""
    if len(private_key) != 32:
        raise UsageError("an X25519 private key is 32 bytes")
    return crypto_scalarmult_base(private_key)


def generate_private_key(rng: Rng = os.urandom) -> bytes:
    """A fresh X25519 private key (32 random bytes, clamped by every use)."""
    return rng(32)


# -- primitives ---------------------------------------------------------------------------


def _stream(key: bytes, data: bytes) -> bytes:
    """``data`` XOR ChaCha20(key, zero nonce, counter from 1), RFC 8439's AEAD keystream.

    Keys are single-use, so a fixed nonce is safe. The one-shot AEAD call is 4x cheaper in
    Python than a streaming cipher object; its Poly1305 tag is discarded.
    """
    return _aead(key).encrypt(_ZERO_NONCE, data, None)[:-16]


def _mac(key: bytes, data: bytes) -> bytes:
    return _blake2b(data, digest_size=MAC_LEN, key=key).digest()


def _xor32(a: bytes, b: bytes) -> bytes:
    return (_from_bytes(a, "little") ^ _from_bytes(b, "little")).to_bytes(32, "little")


def lioness_encrypt(key: bytes, block: bytes) -> bytes:
    """LIONESS (Anderson-Biham) with ChaCha20 and keyed BLAKE2b; ``key`` is 128 bytes.

    Rounds: R ^= S(L^K1); L ^= H_K2(R); R ^= S(L^K3); L ^= H_K4(R).
    """
    left = _from_bytes(block[:32], "little")
    right = block[32:]
    right = _aead(_xor32(block[:32], key[:32])).encrypt(_ZERO_NONCE, right, None)[:-16]
    left ^= _from_bytes(_blake2b(right, digest_size=32, key=key[32:64]).digest(), "little")
    k3 = (left ^ _from_bytes(key[64:96], "little")).to_bytes(32, "little")
    right = _aead(k3).encrypt(_ZERO_NONCE, right, None)[:-16]
    left ^= _from_bytes(_blake2b(right, digest_size=32, key=key[96:128]).digest(), "little")
    return left.to_bytes(32, "little") + right


def lioness_decrypt(key: bytes, block: bytes) -> bytes:
    """Inverse of :func:`lioness_encrypt`."""
    right = block[32:]
    left = _from_bytes(block[:32], "little")
    left ^= _from_bytes(_blake2b(right, digest_size=32, key=key[96:128]).digest(), "little")
    k3 = (left ^ _from_bytes(key[64:96], "little")).to_bytes(32, "little")
    right = _aead(k3).encrypt(_ZERO_NONCE, right, None)[:-16]
    left ^= _from_bytes(_blake2b(right, digest_size=32, key=key[32:64]).digest(), "little")
    k1 = (left ^ _from_bytes(key[:32], "little")).to_bytes(32, "little")
    right = _aead(k1).encrypt(_ZERO_NONCE, right, None)[:-16]
    return left.to_bytes(32, "little") + right


class _HopKeys(NamedTuple):
    """Per-hop keys derived from one shared secret (a tuple: this is the hot path)."""

    rho: bytes  # header stream key
    mu: bytes  # header MAC key
    blind: bytes  # blinding factor b (X25519 scalar, clamped on use)
    tag: bytes  # replay tag
    pi: bytes  # LIONESS payload key (128 bytes)


def _derive(shared: bytes) -> _HopKeys:
    h = _blake2b(b"", digest_size=64, key=shared, person=_LABEL_HEADER).digest()
    m = _blake2b(b"", digest_size=64, key=shared, person=_LABEL_MISC).digest()
    p = _blake2b(b"\x01", digest_size=64, key=shared, person=_LABEL_LIONESS).digest()
    p += _blake2b(b"\x02", digest_size=64, key=shared, person=_LABEL_LIONESS).digest()
    return _HopKeys(h[:32], h[32:], m[:32], m[32:], p)


def _clamp(k: bytes) -> int:
    """The integer X25519 multiplies by when given the 32-byte scalar ``k``."""
    return (int.from_bytes(k, "little") & (_TWO_254 - 8)) | _TWO_254


def _as_x25519_scalar(e: int) -> bytes:
    """A 32-byte scalar t with clamp(t) == t and x(t*P) == x(e*P) for P of order l.

    Clamped scalars reach only half the residues mod l; since X25519 keeps only the
    x-coordinate, e and l-e give the same result, and one of the two always fits.
    """
    for c in (e, _L - e):
        t = c + ((-c * _L_INV_MOD_8) % 8) * _L
        if _TWO_254 <= t < _TWO_255:
            return t.to_bytes(32, "little")
    raise UsageError("degenerate blinding scalar")  # probability ~2**-124


# -- packet creation ----------------------------------------------------------------------


def _check_path(geometry: Geometry, path: Sequence[Hop]) -> None:
    if not 1 <= len(path) <= geometry.max_hops:
        raise UsageError(f"path must have 1..{geometry.max_hops} hops, got {len(path)}")
    for hop in path:
        if len(hop.node_id) != NODE_ID_LEN:
            raise UsageError(f"node ids are {NODE_ID_LEN} bytes")
        if len(hop.public_key) != GROUP_ELEMENT_LEN:
            raise UsageError(f"public keys are {GROUP_ELEMENT_LEN} bytes")
        if not 0 <= hop.delay_us <= MAX_DELAY_US:
            raise UsageError("hop delay out of range")


def _slot(command: RoutingCommand, delay_us: int, address: bytes, tail: bytes) -> bytes:
    return bytes((command,)) + delay_us.to_bytes(DELAY_LEN, "big") + address + tail


def _shared_secrets(path: Sequence[Hop], rng: Rng) -> tuple[bytes, list[_HopKeys]]:
    """alpha_0 and each hop's keys; blinding scalars multiplied mod l (see module doc)."""
    x = rng(32)
    alpha0 = crypto_scalarmult_base(x)
    e = _clamp(x) % _L
    keys = []
    for hop in path:
        k = _derive(crypto_scalarmult(_as_x25519_scalar(e), hop.public_key))
        keys.append(k)
        e = (e * _clamp(k.blind)) % _L
    return alpha0, keys


def _build_header(
    geometry: Geometry, path: Sequence[Hop], final_slot: bytes, rng: Rng
) -> tuple[bytes, list[_HopKeys]]:
    alpha0, keys = _shared_secrets(path, rng)
    n, r, s = len(path), geometry.max_hops, ROUTING_SLOT_LEN
    streams = [_stream(k.rho, bytes((r + 1) * s)) for k in keys]
    filler = b""
    for i in range(1, n):
        filler = _xor(filler + bytes(s), streams[i - 1][(r - i + 1) * s :])
    head_len = (r - n + 1) * s
    head = final_slot + rng(head_len - len(final_slot))
    beta = _xor(head, streams[n - 1][:head_len]) + filler
    gamma = _mac(keys[n - 1].mu, beta)
    for i in range(n - 2, -1, -1):
        slot = _slot(RoutingCommand.RELAY, path[i].delay_us, path[i + 1].node_id, gamma)
        beta = _xor(slot + beta[: (r - 1) * s], streams[i][: r * s])
        gamma = _mac(keys[i].mu, beta)
    return bytes((SPHINX_VERSION,)) + alpha0 + beta + gamma, keys


def _xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b[:n], "little")).to_bytes(n, "little")


def _encode_message(geometry: Geometry, message: bytes) -> bytes:
    if len(message) > geometry.user_payload:
        raise UsageError(
            f"message is {len(message)} bytes; this geometry carries {geometry.user_payload}"
        )
    pad = geometry.user_payload - len(message)
    return _ZERO_TAG + len(message).to_bytes(LENGTH_LEN, "big") + message + bytes(pad)


def _decode_message(body: bytes) -> bytes:
    if not hmac.compare_digest(body[:TAG_LEN], _ZERO_TAG):
        raise PayloadTampered("payload failed its integrity tag")
    n = int.from_bytes(body[TAG_LEN : TAG_LEN + LENGTH_LEN], "big")
    if n > len(body) - TAG_LEN - LENGTH_LEN:
        raise PayloadTampered("payload length out of range")
    return body[TAG_LEN + LENGTH_LEN : TAG_LEN + LENGTH_LEN + n]


def _check_mailbox(mailbox: bytes) -> None:
    if len(mailbox) != MAILBOX_ID_LEN:
        raise UsageError(f"mailbox ids are {MAILBOX_ID_LEN} bytes")


def create_forward(
    geometry: Geometry,
    path: Sequence[Hop],
    mailbox: bytes,
    message: bytes,
    *,
    rng: Rng = os.urandom,
) -> bytes:
    """A packet that crosses ``path`` and is delivered to ``mailbox`` at its last hop."""
    _check_mailbox(mailbox)
    _check_path(geometry, path)
    body = _encode_message(geometry, message)
    final = _slot(RoutingCommand.DELIVER, path[-1].delay_us, mailbox, bytes(MAC_LEN))
    header, keys = _build_header(geometry, path, final, rng)
    for k in reversed(keys):
        body = lioness_encrypt(k.pi, body)
    return header + body


def create_drop(geometry: Geometry, path: Sequence[Hop], *, rng: Rng = os.urandom) -> bytes:
    """Drop cover: a packet indistinguishable in transit that its last hop discards."""
    _check_path(geometry, path)
    final = _slot(RoutingCommand.DROP, path[-1].delay_us, bytes(NODE_ID_LEN), bytes(MAC_LEN))
    header, keys = _build_header(geometry, path, final, rng)
    body = rng(geometry.payload_len)
    for k in reversed(keys):
        body = lioness_encrypt(k.pi, body)
    return header + body


def create_surb(
    geometry: Geometry,
    path: Sequence[Hop],
    mailbox: bytes,
    *,
    rng: Rng = os.urandom,
) -> tuple[Surb, SurbKeys]:
    """A single-use reply block to ``mailbox`` over ``path``, and the keys to open the reply."""
    _check_mailbox(mailbox)
    _check_path(geometry, path)
    surb_id = rng(SURB_ID_LEN)
    final = _slot(RoutingCommand.DELIVER_REPLY, path[-1].delay_us, mailbox, surb_id)
    header, keys = _build_header(geometry, path, final, rng)
    seed = rng(32)
    key = hashlib.blake2b(b"\x01", digest_size=64, key=seed, person=_LABEL_SURB).digest()
    key += hashlib.blake2b(b"\x02", digest_size=64, key=seed, person=_LABEL_SURB).digest()
    surb = Surb(path[0].node_id, header, key)
    return surb, SurbKeys(surb_id, key, tuple(k.pi for k in keys))


def create_reply(geometry: Geometry, surb: Surb, message: bytes) -> tuple[bytes, bytes]:
    """Use ``surb`` once: returns (first hop node id, packet)."""
    if len(surb.header) != geometry.header_len:
        raise UsageError("SURB header does not match the geometry")
    body = lioness_encrypt(surb.key, _encode_message(geometry, message))
    return surb.first_hop, surb.header + body


def open_reply(geometry: Geometry, keys: SurbKeys, payload: bytes) -> bytes:
    """Undo every hop's layer and the end-to-end layer; PayloadTampered if it was changed."""
    if len(payload) != geometry.payload_len:
        raise WrongLength("reply payload has the wrong length")
    body = payload
    for pi in reversed(keys.hop_keys):
        body = lioness_encrypt(pi, body)
    return _decode_message(lioness_decrypt(keys.key, body))


# -- processing at a node -----------------------------------------------------------------


def process_packet(geometry: Geometry, private_key: bytes, packet: bytes) -> ProcessResult:
    """Remove one layer. Returns what to do, or raises a PacketError; never anything else.

    The caller checks ``replay_tag`` against its replay cache before acting on the result.
    This is the per-hop hot path: key derivation and LIONESS are inlined on purpose.
    """
    if type(packet) is not bytes:
        packet = bytes(packet)
    if len(packet) != geometry.packet_len:
        raise WrongLength("packet has the wrong length")
    if packet[0] != SPHINX_VERSION:
        raise UnknownVersion("unknown packet version")
    b_end = _ALPHA_END + geometry.routing_len
    h_end = b_end + MAC_LEN
    alpha = packet[VERSION_LEN:_ALPHA_END]
    beta = packet[_ALPHA_END:b_end]
    if _from_bytes(alpha, "little") >= _P:  # X25519 ignores bit 255: refuse twin encodings
        raise MacMismatch("header does not verify")
    try:
        shared = crypto_scalarmult(private_key, alpha)
    except CryptoError:  # libsodium refuses a low-order point (all-zero result)
        raise MacMismatch("header does not verify") from None
    hdr = _blake2b(b"", digest_size=64, key=shared, person=_LABEL_HEADER).digest()
    if not _compare(
        _blake2b(beta, digest_size=MAC_LEN, key=hdr[32:]).digest(), packet[b_end:h_end]
    ):
        raise MacMismatch("header does not verify")
    routing = _aead(hdr[:32]).encrypt(_ZERO_NONCE, beta + _SLOT_ZEROS, None)
    command, delay_us = _SLOT_HEAD.unpack_from(routing)
    address = routing[_ADDR_START:_ADDR_END]
    tail = routing[_ADDR_END:ROUTING_SLOT_LEN]
    misc = _blake2b(b"", digest_size=64, key=shared, person=_LABEL_MISC).digest()
    # LIONESS decryption (see lioness_decrypt), keys k1..k4 from the payload label.
    k12 = _blake2b(b"\x01", digest_size=64, key=shared, person=_LABEL_LIONESS).digest()
    k34 = _blake2b(b"\x02", digest_size=64, key=shared, person=_LABEL_LIONESS).digest()
    right = packet[h_end + LIONESS_KEY_LEN :]
    left = _from_bytes(packet[h_end : h_end + LIONESS_KEY_LEN], "little")
    left ^= _from_bytes(_blake2b(right, digest_size=32, key=k34[32:]).digest(), "little")
    k = (left ^ _from_bytes(k34[:32], "little")).to_bytes(32, "little")
    right = _aead(k).encrypt(_ZERO_NONCE, right, None)[:-16]
    left ^= _from_bytes(_blake2b(right, digest_size=32, key=k12[32:]).digest(), "little")
    k = (left ^ _from_bytes(k12[:32], "little")).to_bytes(32, "little")
    payload = left.to_bytes(32, "little") + _aead(k).encrypt(_ZERO_NONCE, right, None)[:-16]
    if command == _RELAY:
        alpha_next = crypto_scalarmult(misc[:32], alpha)
        nxt = _VERSION_BYTE + alpha_next + routing[ROUTING_SLOT_LEN:-16] + tail + payload
        return Forward(address, delay_us, nxt, misc[32:])
    if command == _DELIVER:
        return Deliver(address, delay_us, _decode_message(payload), misc[32:])
    if command == _DELIVER_REPLY:
        return DeliverReply(address, delay_us, tail, payload, misc[32:])
    if command == _DROP:
        return Discard(delay_us, misc[32:])
    raise BadCommand("unknown routing command")


_ALPHA_END = VERSION_LEN + GROUP_ELEMENT_LEN
_ADDR_START = COMMAND_LEN + DELAY_LEN
_ADDR_END = _ADDR_START + NODE_ID_LEN
_SLOT_HEAD = struct.Struct(">BI")  # command, delay in microseconds
_SLOT_ZEROS = bytes(ROUTING_SLOT_LEN)
_VERSION_BYTE = bytes((SPHINX_VERSION,))
_RELAY = int(RoutingCommand.RELAY)
_DELIVER = int(RoutingCommand.DELIVER)
_DELIVER_REPLY = int(RoutingCommand.DELIVER_REPLY)
_DROP = int(RoutingCommand.DROP)
_compare = hmac.compare_digest
