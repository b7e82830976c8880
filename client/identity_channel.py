"""The reference ``SecureChannel`` that ships: signaling keyed from the two callers' identities.

    >>> from client.identity_channel import IdentityChannel, public_identity
    >>> a_sign, a_dh, b_sign, b_dh = (bytes([i]) * 32 for i in (1, 2, 3, 4))
    >>> alice_pub, bob_pub = public_identity(a_sign, a_dh), public_identity(b_sign, b_dh)
    >>> alice = IdentityChannel(a_dh, alice_pub, bob_pub)  # on Alice's machine
    >>> bob = IdentityChannel(b_dh, bob_pub, alice_pub)  # on Bob's machine
    >>> envelope, secret_a = alice.seal(b"CALL_OFFER ...")
    >>> plaintext, secret_b = bob.open(envelope)
    >>> plaintext, secret_a == secret_b, alice.conversation_id == bob.conversation_id
    (b'CALL_OFFER ...', True, True)

A caller's identity is an Ed25519 signing key and an X25519 key; its *public identity* is the
64 bytes ``sign_public (32) | dh_public (32)``. Each end builds its channel from its own
X25519 private key and the two public identities, as two callers on two machines would; the
messenger's Double Ratchet replaces this class through the ``SecureChannel`` interface.

Key schedule (all lengths in bytes; ``low``/``high``: the two public identities in byte order)

- ``conversation_id`` (16) = BLAKE2b-128(low | high, person="pn-conv-v1"): both ends agree,
  and every contact pair has its own.
- ``root`` (32) = HKDF-SHA256(ikm=X25519(my dh private, peer dh public), salt=conversation_id,
  info="pn-idchan-v1 root" | low | high). Only the two holders of the identities can compute
  it: mutual implicit authentication. The root is dropped (zeroed) once the chains exist.
- chain keys (32): ``low`` sends on KDF(root, "chain low->high"), ``high`` on
  KDF(root, "chain high->low"), where KDF(k, x) = BLAKE2b-256(x, key=k, person="pn-idchan-v1").
- each message: message key = KDF(chain, "message"), next chain = KDF(chain, "chain") (a hash
  ratchet per direction: a consumed message key cannot be recomputed from the current state).

Envelope: ``version (1) = 1 | n (8, big-endian) | nonce (12, random) | ChaCha20-Poly1305
ciphertext | tag (16)`` under the message key, with associated data ``conversation_id |
sender's public identity (64) | version | n``. The per-message export (the secret the call
key schedule uses) is KDF(message key, "export" | nonce). A random nonce costs 12 bytes and
makes a message number reused after a crash (state not saved after ``seal``) harmless to
confidentiality: the peer refuses the second one as a replay, nothing else.

Refusals are ``ChannelError`` subclasses, each counted in ``counters``: ``ChannelMalformed``
(short, unknown version), ``ChannelReplayed`` (number already accepted or older than the
window of ``MAX_SKIPPED`` skipped keys), ``ChannelTooFarAhead`` (more than ``MAX_SKIPPED``
ahead), ``ChannelForged`` (tag fails: tampered, not from the peer, or sealed in another
conversation, such as a message replayed from the A-B conversation into A-C). A refused
envelope changes no state.

No signature. Each envelope could also carry the sender's Ed25519 signature (64 bytes), but
it would add little the static DH does not give: only the peer (or we) can compute the keys,
so a verified tag already proves the peer sealed it. What a signature would add is proof
to third parties (non-repudiation), which a private messenger should not hand out (this
channel, like Signal's, is deniable: either end could have made any envelope), and
resistance to key-compromise impersonation, which is moot here because both identity keys
live in the same profile and are stolen together. The signing key is still bound in: the
whole public identity enters the conversation id, the root and every tag.

What this channel does NOT give (the Double Ratchet does): forward secrecy against theft of
an identity key (the root, hence every chain, follows from either static X25519 key, so
recorded signaling can be read by whoever later steals one; the call keys get forward
secrecy from the ephemeral keys of OFFER/ANSWER, not from here), and post-compromise
security (a stolen channel state reads every later message).

Persistence: ``to_bytes()`` is the state (send counter, receive chain and window, chain
keys; never the identity private key or the root), versioned; pass
``ChannelState.from_bytes(blob)`` as ``state=`` to resume, so a message opened before a
restart is still refused as a replay after it. Save after every ``open`` that succeeds and
every ``seal``. The state holds chain keys: store it only in the profile's encrypted store.

Secrets in memory: chain keys and skipped message keys live in ``bytearray`` objects that
are overwritten in place when they advance and zeroed on ``close()`` (or leaving a ``with``
block, or, best effort, garbage collection); the root is zeroed once the chains are derived
and the identity private key is not kept. What Python cannot promise: hashlib and
``cryptography`` take and return immutable ``bytes``, so transient copies of each key (the
KDF outputs, the AEAD's key object, the DH output) exist until the garbage collector frees
them, and freed memory is not zeroed; the caller's own ``bytes`` (the private key passed in,
a ``to_bytes`` blob) are the caller's to handle; pages may be swapped to disk unless the
process locks its memory, and core dumps must be disabled by the client. Zeroing narrows the
window in which a memory read finds a key; it does not close it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from overlay import PhantomError, Rng, UsageError

from ._channel import (
    CONVERSATION_ID_LEN,
    MAX_SKIPPED,
    ChannelForged,
    ChannelMalformed,
    ChannelReplayed,
    ChannelTooFarAhead,
)

KEY_LEN = 32  # bytes of every private key, public key, chain key and message key
IDENTITY_LEN = 2 * KEY_LEN  # public identity: sign_public | dh_public
ENVELOPE_VERSION = 1
NONCE_LEN = 12
TAG_LEN = 16
HEADER_LEN = 1 + 8 + NONCE_LEN  # version | n | nonce
OVERHEAD = HEADER_LEN + TAG_LEN  # bytes an envelope adds to its plaintext
STATE_VERSION = 1
STATE_FIXED_LEN = 1 + CONVERSATION_ID_LEN + 8 + KEY_LEN + 8 + KEY_LEN + 2
SKIPPED_ENTRY_LEN = 8 + KEY_LEN
MAX_N = 2**64 - 1  # message numbers are 8 bytes; the last one is never used
PERSON = b"pn-idchan-v1"  # BLAKE2b personalisation of every chain-level KDF
CONV_PERSON = b"pn-conv-v1"  # BLAKE2b personalisation of the conversation id
ROOT_INFO = b"pn-idchan-v1 root"  # HKDF info prefix of the root

PublicIdentity = bytes | bytearray | tuple[bytes, bytes]  # 64 bytes, or (sign_pk, dh_pk)


class ChannelStateError(PhantomError, ValueError):
    """Stored channel state does not parse, has an unknown version, or belongs to another
    conversation."""


def _kdf(key: bytes | bytearray, what: bytes) -> bytes:
    return _blake2b(what, key=key, person=PERSON)  # a bytearray key is read, not copied


def _blake2b(
    data: bytes, *, key: bytes | bytearray = b"", person: bytes, size: int = KEY_LEN
) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=size, person=person).digest()


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


def _identity(value: PublicIdentity, name: str) -> bytes:
    """The 64-byte public identity from 64 bytes or a (sign_pk, dh_pk) pair."""
    if isinstance(value, tuple):
        if len(value) != 2 or not all(isinstance(k, bytes | bytearray) for k in value):
            raise UsageError(f"{name} must be (sign_public, dh_public), 32 bytes each")
        value = bytes(value[0]) + bytes(value[1])
    if not isinstance(value, bytes | bytearray) or len(value) != IDENTITY_LEN:
        raise UsageError(f"{name} must be {IDENTITY_LEN} bytes (sign_public | dh_public)")
    return bytes(value)


def public_identity(sign_private: bytes, dh_private: bytes) -> bytes:
    """The 64-byte public identity (Ed25519 public | X25519 public) of two 32-byte private
    keys. Raises ``UsageError`` if either is not 32 bytes."""
    for k, name in ((sign_private, "sign_private"), (dh_private, "dh_private")):
        if not isinstance(k, bytes | bytearray) or len(k) != KEY_LEN:
            raise UsageError(f"{name} must be {KEY_LEN} bytes")
    sign_pk = Ed25519PrivateKey.from_private_bytes(bytes(sign_private)).public_key()
    dh_pk = X25519PrivateKey.from_private_bytes(bytes(dh_private)).public_key()
    return sign_pk.public_bytes(Encoding.Raw, PublicFormat.Raw) + dh_pk.public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )


def conversation_id_of(a_public: PublicIdentity, b_public: PublicIdentity) -> bytes:
    """The 16-byte conversation id of two public identities, in either order."""
    low, high = sorted((_identity(a_public, "a_public"), _identity(b_public, "b_public")))
    return _blake2b(low + high, person=CONV_PERSON, size=CONVERSATION_ID_LEN)


def _root(private: X25519PrivateKey, me: bytes, peer: bytes) -> bytearray:
    """The 32-byte root of the conversation of public identities ``me`` and ``peer``."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer[KEY_LEN:]))
    except ValueError:  # an all-zero output: the peer's key is a low-order point
        raise UsageError("peer_public's dh key is a low-order point") from None
    low, high = sorted((me, peer))
    salt = conversation_id_of(me, peer)
    return bytearray(HKDF(hashes.SHA256(), KEY_LEN, salt, ROOT_INFO + low + high).derive(shared))


@dataclass(eq=False, repr=False)
class ChannelState:
    """What a channel must remember between calls (secret: it holds chain keys).

    ``send_n``/``recv_n``: the next message number to seal / the next one expected;
    ``skipped``: message number -> message key of numbers below ``recv_n`` not yet received
    (at most ``MAX_SKIPPED``). Wire form (``to_bytes``), big-endian: version (1) = 1 |
    conversation id (16) | send_n (8) | send chain (32) | recv_n (8) | recv chain (32) |
    count (2) | count x (n (8) | message key (32)), numbers strictly increasing.
    """

    conversation_id: bytes
    send_n: int
    send_chain: bytearray
    recv_n: int
    recv_chain: bytearray
    skipped: dict[int, bytearray] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The versioned wire form (``STATE_FIXED_LEN + 40 * len(skipped)`` bytes)."""
        head = struct.pack(">B16sQ32sQ32sH", STATE_VERSION, self.conversation_id, self.send_n,
                           bytes(self.send_chain), self.recv_n, bytes(self.recv_chain),
                           len(self.skipped))  # fmt: skip
        return head + b"".join(
            struct.pack(">Q", n) + bytes(self.skipped[n]) for n in sorted(self.skipped)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ChannelState:
        """Parse ``to_bytes`` output. Raises ``ChannelStateError`` on anything else: wrong
        length, unknown version, too many skipped keys, numbers out of order or not below
        ``recv_n``."""
        if not isinstance(data, bytes | bytearray) or len(data) < STATE_FIXED_LEN:
            raise ChannelStateError("channel state is too short")
        version, conv, send_n, send_chain, recv_n, recv_chain, count = struct.unpack_from(
            ">B16sQ32sQ32sH", data
        )
        if version != STATE_VERSION:
            raise ChannelStateError(f"channel state version {version} is not {STATE_VERSION}")
        if count > MAX_SKIPPED or len(data) != STATE_FIXED_LEN + count * SKIPPED_ENTRY_LEN:
            raise ChannelStateError("channel state length does not match its skipped keys")
        skipped: dict[int, bytearray] = {}
        previous = -1
        for i in range(count):
            at = STATE_FIXED_LEN + i * SKIPPED_ENTRY_LEN
            (n,) = struct.unpack_from(">Q", data, at)
            if not previous < n < recv_n:
                raise ChannelStateError("skipped message numbers must increase, below recv_n")
            skipped[n] = bytearray(data[at + 8 : at + SKIPPED_ENTRY_LEN])
            previous = n
        return cls(conv, send_n, bytearray(send_chain), recv_n, bytearray(recv_chain), skipped)

    def clear(self) -> None:
        """Zero every key in place and forget the skipped ones."""
        _wipe(self.send_chain)
        _wipe(self.recv_chain)
        for key in self.skipped.values():
            _wipe(key)
        self.skipped.clear()

    def __repr__(self) -> str:
        return f"ChannelState(send_n={self.send_n}, recv_n={self.recv_n}, " \
               f"skipped={len(self.skipped)})"  # fmt: skip


@dataclass(slots=True)
class ChannelCounters:
    """Envelopes sealed and opened, and refused by reason (this run only; not persisted)."""

    sealed: int = 0
    opened: int = 0
    malformed: int = 0
    replayed: int = 0
    too_far_ahead: int = 0
    forged: int = 0


class IdentityChannel:
    """``SecureChannel`` keyed from two identities (see the module doc for the schedule).

    ``my_dh_private``: our X25519 private key (32 bytes; not kept). ``my_public``,
    ``peer_public``: public identities, 64 bytes or (sign_public, dh_public). ``state``:
    from ``ChannelState.from_bytes`` to resume (the channel takes it over and zeroes it on
    ``close``). ``rng``: source of the envelope nonces. Raises ``UsageError`` if a key has
    the wrong length, ``my_dh_private`` does not match ``my_public``, both identities are
    the same, or the peer's X25519 key is a low-order point; ``ChannelStateError`` if
    ``state`` belongs to another conversation.
    """

    description: ClassVar[str] = "identity X25519, hash ratchet"  # for reports

    def __init__(
        self,
        my_dh_private: bytes | bytearray,
        my_public: PublicIdentity,
        peer_public: PublicIdentity,
        *,
        state: ChannelState | None = None,
        rng: Rng = os.urandom,
    ) -> None:
        me, peer = _identity(my_public, "my_public"), _identity(peer_public, "peer_public")
        if me == peer:
            raise UsageError("a channel needs two different identities")
        if not isinstance(my_dh_private, bytes | bytearray) or len(my_dh_private) != KEY_LEN:
            raise UsageError(f"my_dh_private must be {KEY_LEN} bytes")
        private = X25519PrivateKey.from_private_bytes(bytes(my_dh_private))
        mine = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        if not hmac.compare_digest(mine, me[KEY_LEN:]):
            raise UsageError("my_dh_private is not the private key of my_public's dh key")
        self._me, self._peer, self._rng = me, peer, rng
        self._conversation_id = conversation_id_of(me, peer)
        self.counters = ChannelCounters()
        self._closed = False
        if state is not None:
            if not hmac.compare_digest(state.conversation_id, self._conversation_id):
                raise ChannelStateError("the stored channel state is of another conversation")
            self._state = state
            return
        root = _root(private, me, peer)
        low_to_high = bytearray(_kdf(root, b"chain low->high"))
        high_to_low = bytearray(_kdf(root, b"chain high->low"))
        _wipe(root)
        send, recv = (low_to_high, high_to_low) if me < peer else (high_to_low, low_to_high)
        self._state = ChannelState(self._conversation_id, 0, send, 0, recv)

    @property
    def conversation_id(self) -> bytes:
        """16 bytes naming the contact pair (the identity domain calls are bound to)."""
        return self._conversation_id

    @property
    def my_public(self) -> bytes:
        return self._me

    @property
    def peer_public(self) -> bytes:
        return self._peer

    def _aad(self, sender: bytes, n: int) -> bytes:
        return self._conversation_id + sender + struct.pack(">BQ", ENVELOPE_VERSION, n)

    def _live(self) -> ChannelState:
        if self._closed:
            raise UsageError("the channel is closed")
        return self._state

    def seal(self, plaintext: bytes) -> tuple[bytes, bytes]:
        """Encrypt and authenticate ``plaintext``; returns (envelope of ``len(plaintext) +
        OVERHEAD`` bytes, 32-byte export of this message). Raises ``UsageError`` if the
        channel is closed or its message numbers are used up (after 2**64 - 1 messages)."""
        st = self._live()
        if st.send_n >= MAX_N:
            raise UsageError("this channel's message numbers are used up")
        n = st.send_n
        key = _kdf(st.send_chain, b"message")
        st.send_chain[:] = _kdf(st.send_chain, b"chain")
        st.send_n += 1
        nonce = self._rng(NONCE_LEN)
        if len(nonce) != NONCE_LEN:
            raise UsageError(f"rng returned {len(nonce)} bytes, not {NONCE_LEN}")
        ct = ChaCha20Poly1305(key).encrypt(nonce, plaintext, self._aad(self._me, n))
        self.counters.sealed += 1
        return struct.pack(">BQ", ENVELOPE_VERSION, n) + nonce + ct, _kdf(key, b"export" + nonce)

    def open(self, envelope: bytes) -> tuple[bytes, bytes]:
        """Check and decrypt an envelope from the peer; returns (plaintext, the export the
        sender got). Raises a ``ChannelError`` subclass (and counts it) if it is refused;
        a refused envelope changes no state. ``UsageError`` if the channel is closed."""
        st = self._live()
        if not isinstance(envelope, bytes) or len(envelope) < OVERHEAD:
            self.counters.malformed += 1
            raise ChannelMalformed()
        version, n = struct.unpack_from(">BQ", envelope)
        if version != ENVELOPE_VERSION:
            self.counters.malformed += 1
            raise ChannelMalformed()
        pending: dict[int, bytearray] = {}
        chain = bytearray()
        if n in st.skipped:
            key = bytes(st.skipped[n])
        elif n < st.recv_n:
            self.counters.replayed += 1
            raise ChannelReplayed()
        elif n - st.recv_n > MAX_SKIPPED or n >= MAX_N:
            self.counters.too_far_ahead += 1
            raise ChannelTooFarAhead()
        else:
            chain = bytearray(st.recv_chain)
            for index in range(st.recv_n, n + 1):
                pending[index] = bytearray(_kdf(chain, b"message"))
                chain[:] = _kdf(chain, b"chain")
            used = pending.pop(n)
            key = bytes(used)
            _wipe(used)
        nonce = envelope[9:HEADER_LEN]
        try:
            plaintext = ChaCha20Poly1305(key).decrypt(
                nonce, envelope[HEADER_LEN:], self._aad(self._peer, n)
            )
        except InvalidTag:
            _wipe(chain)
            for k in pending.values():
                _wipe(k)
            self.counters.forged += 1
            raise ChannelForged() from None
        # Commit only after the tag verified, so forgeries cannot move the window.
        if n in st.skipped:
            _wipe(st.skipped.pop(n))
        else:
            st.skipped.update(pending)
            while len(st.skipped) > MAX_SKIPPED:
                _wipe(st.skipped.pop(min(st.skipped)))
            st.recv_chain[:] = chain
            _wipe(chain)
            st.recv_n = n + 1
        self.counters.opened += 1
        return plaintext, _kdf(key, b"export" + nonce)

    def to_bytes(self) -> bytes:
        """The state to store between calls (``ChannelState`` wire form; secret)."""
        return self._live().to_bytes()

    def close(self) -> None:
        """Zero every key this channel holds; later ``seal``/``open``/``to_bytes`` raise
        ``UsageError``. Idempotent."""
        if not self._closed:
            self._closed = True
            self._state.clear()

    def __enter__(self) -> IdentityChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: the keys are zeroed when collected
        if hasattr(self, "_state"):
            try:
                self.close()
            except Exception:  # noqa: BLE001  (late in interpreter shutdown; nothing to do)
                return

    def __repr__(self) -> str:
        if self._closed:
            return "IdentityChannel(closed)"
        st = self._state
        return f"IdentityChannel(sent={st.send_n}, next_expected={st.recv_n}, " \
               f"skipped={len(st.skipped)})"  # fmt: skip
