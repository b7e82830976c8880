"""The E2EE message channel that call signaling rides on, as an interface.

    >>> from client import InMemoryChannel
    >>> alice, bob = InMemoryChannel.pair()
    >>> envelope, secret_a = alice.seal(b"hello")
    >>> plaintext, secret_b = bob.open(envelope)
    >>> plaintext, secret_a == secret_b
    (b'hello', True)

Phantom Net's messaging already runs X3DH and the Double Ratchet; calls reuse it. What a
call needs from it is captured by ``SecureChannel``: a conversation id (the identity
domain a call is bound to), and ``seal``/``open`` of authenticated, encrypted, replay-
protected messages, each of which also yields a 32-byte secret derived from that message's
key, known only to the two ends. Call secrets come from those per-message exports.

``InMemoryChannel`` is a reference implementation for tests and the local testnet, NOT the
Double Ratchet: it has a symmetric hash ratchet per direction (forward secrecy for
consumed message keys) but no Diffie-Hellman ratchet, so it gives no post-compromise
security, and its two ends are created together in one process from one random root.
The channel that ships, keyed from the two callers' identities, is
``client.identity_channel.IdentityChannel``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import ClassVar, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from overlay import DropReason, PacketError, Rng, UsageError

CONVERSATION_ID_LEN = 16  # bytes
EXPORT_LEN = 32  # bytes of per-message secret
CHANNEL_LABEL = b"pn-chan-v1"  # BLAKE2b personalisation prefix (max 16 bytes with suffix)
COUNTER_LEN = 8  # bytes, message number in the envelope
MAX_SKIPPED = 1000  # message keys kept for out-of-order delivery (as the Double Ratchet)


class ChannelError(PacketError):
    """An envelope did not open: forged, replayed, too far out of order, or truncated."""

    reason = DropReason.CHANNEL


class ChannelMalformed(ChannelError):
    """Too short to be an envelope, or a version this channel does not speak."""


class ChannelForged(ChannelError):
    """The AEAD tag does not verify: tampered on the way, sealed by someone other than the
    peer, or sealed in another conversation (a message replayed into another contact's
    conversation lands here: its keys and associated data belong to the other pair)."""


class ChannelReplayed(ChannelError):
    """The message number was already accepted, or is older than the receive window (its
    key was dropped or never kept). Checked before the tag: nothing is decrypted."""


class ChannelTooFarAhead(ChannelError):
    """The message number is more than ``MAX_SKIPPED`` past the next expected one."""


@runtime_checkable
class SecureChannel(Protocol):
    """What call signaling needs from the existing E2EE messaging channel."""

    @property
    def conversation_id(self) -> bytes:
        """16 bytes naming the conversation (the identity domain calls are bound to)."""
        ...

    def seal(self, plaintext: bytes) -> tuple[bytes, bytes]:
        """Encrypt and authenticate; returns (envelope, 32-byte secret of this message)."""
        ...

    def open(self, envelope: bytes) -> tuple[bytes, bytes]:
        """Check and decrypt; returns (plaintext, the same secret the sender got)."""
        ...


def _kdf(key: bytes, what: bytes) -> bytes:
    return hashlib.blake2b(key=key, digest_size=32, person=CHANNEL_LABEL + what).digest()


class _Chain:
    """One direction's hash ratchet: chain key -> (next chain key, message key)."""

    def __init__(self, chain_key: bytes):
        self.key = chain_key
        self.n = 0

    def step(self) -> bytes:
        message_key = _kdf(self.key, b"msg")
        self.key = _kdf(self.key, b"chain")
        self.n += 1
        return message_key


class InMemoryChannel:
    """Reference ``SecureChannel`` (a stand-in for the Double Ratchet; see the module doc)."""

    description: ClassVar[str] = "in-memory shared root, hash ratchet"  # for reports

    def __init__(self, conversation_id: bytes, send_chain: bytes, recv_chain: bytes):
        if len(conversation_id) != CONVERSATION_ID_LEN:
            raise UsageError(f"conversation_id must be {CONVERSATION_ID_LEN} bytes")
        self._conversation_id = conversation_id
        self._send = _Chain(send_chain)
        self._recv = _Chain(recv_chain)
        self._skipped: dict[int, bytes] = {}

    @classmethod
    def pair(cls, rng: Rng = os.urandom) -> tuple[InMemoryChannel, InMemoryChannel]:
        """Two ends of one conversation sharing a fresh random root."""
        root, conv = rng(32), rng(CONVERSATION_ID_LEN)
        a_to_b, b_to_a = _kdf(root, b"a2b"), _kdf(root, b"b2a")
        return cls(conv, a_to_b, b_to_a), cls(conv, b_to_a, a_to_b)

    @property
    def conversation_id(self) -> bytes:
        return self._conversation_id

    def _aad(self, n: int) -> bytes:
        return self._conversation_id + struct.pack(">Q", n)

    def seal(self, plaintext: bytes) -> tuple[bytes, bytes]:
        n = self._send.n
        key = self._send.step()
        ct = ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, self._aad(n))
        return struct.pack(">Q", n) + ct, _kdf(key, b"export")

    def open(self, envelope: bytes) -> tuple[bytes, bytes]:
        if not isinstance(envelope, bytes) or len(envelope) < COUNTER_LEN + 16:
            raise ChannelMalformed()
        (n,) = struct.unpack_from(">Q", envelope)
        if n in self._skipped:
            key = self._skipped[n]
        elif n >= self._recv.n:
            if n - self._recv.n > MAX_SKIPPED:
                raise ChannelTooFarAhead()
            probe = _Chain(self._recv.key)
            probe.n = self._recv.n
            pending = {}
            while probe.n <= n:
                index = probe.n
                pending[index] = probe.step()
            key = pending.pop(n)
        else:
            raise ChannelReplayed()  # already opened (replay) or skipped key expired
        try:
            plaintext = ChaCha20Poly1305(key).decrypt(bytes(12), envelope[8:], self._aad(n))
        except InvalidTag:
            raise ChannelForged() from None
        # Commit only after the tag verified, so forgeries cannot advance the chain.
        if n in self._skipped:
            del self._skipped[n]
        else:
            self._skipped.update(pending)
            while len(self._skipped) > MAX_SKIPPED:
                del self._skipped[min(self._skipped)]
            self._recv = probe
        return plaintext, _kdf(key, b"export")
