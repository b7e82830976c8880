"""Link framing for UDP: one datagram, one fixed-size frame; sans-IO.

    >>> import os
    >>> from overlay import VOICE, LinkCodec, FrameType, generate_private_key, public_key
    >>> codec = LinkCodec(VOICE)
    >>> codec.parse(codec.node_packet(bytes(VOICE.packet_len))).type is FrameType.NODE_PACKET
    True

Every frame is ``version | type | body`` and every type has exactly one length. Node to node
frames carry one Sphinx packet in the clear (it is already layered encryption). Client to
gateway frames are encrypted: the client picks an ephemeral X25519 key, agrees a secret with
the gateway's published key, and every later frame is ChaCha20-Poly1305 under a per-direction
key with a 64-bit counter as nonce. Downlink frames are all the same size and the
real/dummy flag is inside the ciphertext, so an observer of the client's link learns nothing
from them.

A mailbox is owned (DESIGN.md decision 11): its id is derived from an Ed25519 public key
(:class:`MailboxKey`), and ATTACH proves the private key with a signature over the
gateway's key, the client's ephemeral key and a stateless cookie the gateway sent to the
client's address (CHALLENGE), as in WireGuard's cookie reply and DTLS HelloVerifyRequest.
docs/wire-link.md has every byte.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from ._drop import DropReason
from ._errors import PacketError, UsageError
from ._geometry import MAILBOX_ID_LEN, SURB_ID_LEN, Geometry
from ._random import uniform01
from ._sphinx import Rng

LINK_VERSION = 2  # first byte of every datagram; bumped on any change below
SESSION_ID_LEN = 8  # bytes, names a client session at its gateway
COUNTER_LEN = 8  # bytes, per-direction frame counter, big-endian; also the AEAD nonce
AEAD_TAG_LEN = 16  # bytes, Poly1305
KEY_LEN = 32  # bytes, X25519 public values, Ed25519 public keys and ChaCha20 keys
SIGNATURE_LEN = 64  # bytes, Ed25519 (RFC 8032)
COOKIE_LEN = 16  # bytes, the gateway's stateless ATTACH cookie
COOKIE_PERIOD_S = 60.0  # seconds; a cookie is good for one to two periods
REPLAY_WINDOW = 1024  # frames; a client counter older than this is refused
_LABEL_LINK = b"pn-link-v2-keys"  # BLAKE2b personalisation for the client link keys
_LABEL_MAILBOX = b"pn-mailbox-v1"  # BLAKE2b personalisation: mailbox id of a public key
_LABEL_PROOF = b"pn-link-v2-proof"  # BLAKE2b personalisation: the ATTACH proof's AEAD key
_LABEL_COOKIE = b"pn-link-v2-cook"  # BLAKE2b personalisation: the gateway's cookie MAC
_TRANSCRIPT = b"phantom-net link v2 attach"  # context prefix of the signed ATTACH transcript
_PROOF_LEN = KEY_LEN + SIGNATURE_LEN  # mailbox public key | signature


class LinkError(PacketError):
    """A datagram is not a well-formed link frame."""

    reason = DropReason.LINK_MALFORMED


class LinkAuthError(LinkError):
    """An encrypted client frame does not open: wrong key, tampered, or replayed."""

    reason = DropReason.LINK_AUTH


class MailboxProofError(LinkAuthError):
    """An ATTACH opened but does not prove its mailbox: bad signature or foreign key."""

    reason = DropReason.ATTACH_PROOF


class FrameType(IntEnum):
    """Second byte of a datagram."""

    NODE_PACKET = 1  # node to node: one Sphinx packet
    ATTACH = 2  # client to gateway: ephemeral key, cookie, sealed mailbox proof
    UPLINK = 3  # client to gateway: one sealed Sphinx packet
    DOWNLINK = 4  # gateway to client: one sealed delivery or dummy, always the same size
    CHALLENGE = 5  # gateway to client: the cookie for an ATTACH without a valid one
    LEAVE = 6  # client to gateway: end this session now (sealed, empty)
    UNKNOWN_SESSION = 7  # gateway to client: an UPLINK named no session here (a hint)


class DownlinkKind(IntEnum):
    """Inside a downlink frame's ciphertext: what the slot carries."""

    DUMMY = 0  # padding; the client discards it
    MESSAGE = 1  # a forward message's plaintext for this mailbox
    REPLY = 2  # a SURB reply: surb id | still-encrypted Sphinx payload
    ATTACHED = 3  # the gateway accepted the ATTACH of this session


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed frame; ``body`` is the type's fixed-size body after the two header bytes."""

    type: FrameType
    body: bytes


@dataclass(frozen=True, slots=True)
class Delivery:
    """A downlink slot's content after decryption."""

    kind: DownlinkKind
    data: bytes


@dataclass(frozen=True, slots=True)
class Challenged:
    """The gateway sent a cookie for our ATTACH: send ``attach_frame()`` again now."""

    cookie: bytes


@dataclass(frozen=True, slots=True)
class SessionUnknown:
    """The gateway says it has no session of ours (unauthenticated: a hint, not a fact)."""


LinkEvent = Delivery | Challenged | SessionUnknown


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Both directions' keys and the session id of one client link (secret)."""

    session_id: bytes
    uplink_key: bytes
    downlink_key: bytes


def mailbox_id(mailbox_public_key: bytes) -> bytes:
    """The 16-byte mailbox id of a 32-byte Ed25519 mailbox public key.

    ``BLAKE2b-128(person = "pn-mailbox-v1", data = public key)``: self-certifying, so a
    gateway needs no registration, and finding another key with a contact's id costs a
    second preimage of 128 bits. UsageError if the key is not 32 bytes.
    """
    if len(mailbox_public_key) != KEY_LEN:
        raise UsageError("a mailbox public key is 32 bytes")
    return hashlib.blake2b(
        mailbox_public_key, digest_size=MAILBOX_ID_LEN, person=_LABEL_MAILBOX
    ).digest()


class MailboxKey:
    """The private key that owns a mailbox (Ed25519, RFC 8032); only its client holds it.

        >>> key = MailboxKey.generate()
        >>> key.mailbox_id == mailbox_id(key.public_key), len(key.mailbox_id)
        (True, 16)
        >>> MailboxKey(key.seed).mailbox_id == key.mailbox_id
        True

    Contacts get ``mailbox_id`` (on the contact card); the seed and the public key stay
    with the client (the public key travels only encrypted, inside ATTACH). Python cannot
    promise to wipe the seed from memory.
    """

    __slots__ = ("_signing", "public_key", "mailbox_id")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise UsageError("a mailbox key seed is 32 bytes")
        self._signing = SigningKey(seed)
        self.public_key = bytes(self._signing.verify_key)
        self.mailbox_id = mailbox_id(self.public_key)

    @classmethod
    def generate(cls, rng: Rng = os.urandom) -> MailboxKey:
        """A fresh mailbox key from 32 bytes of ``rng``."""
        return cls(rng(32))

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed (secret: store it like any private key)."""
        return bytes(self._signing)

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``message``."""
        return self._signing.sign(message).signature

    def __repr__(self) -> str:
        return "MailboxKey(<secret>)"


def _transcript(gateway_pub: bytes, eph_pub: bytes, cookie: bytes) -> bytes:
    return _TRANSCRIPT + gateway_pub + eph_pub + cookie


def _session_keys(shared: bytes, client_pub: bytes, gateway_pub: bytes) -> SessionKeys:
    out = hashlib.blake2b(
        client_pub + gateway_pub, digest_size=64, key=shared, person=_LABEL_LINK
    ).digest()
    sid = hashlib.blake2b(out, digest_size=SESSION_ID_LEN).digest()
    return SessionKeys(sid, out[:32], out[32:])


def _proof_aead(keys: SessionKeys, cookie: bytes) -> ChaCha20Poly1305:
    # One key per cookie: a client that gets a new cookie never reuses (key, nonce 0).
    key = hashlib.blake2b(cookie, digest_size=32, key=keys.uplink_key, person=_LABEL_PROOF)
    return ChaCha20Poly1305(key.digest())


def _nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(COUNTER_LEN, "big")


class LinkCodec:
    """Frame sizes for one geometry, and the encoders/parsers that enforce them."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.packet_len = geometry.packet_len
        # A downlink slot holds the larger of a message and a reply, plus kind and length.
        self.delivery_len = max(geometry.user_payload, SURB_ID_LEN + geometry.payload_len)
        self.inner_downlink_len = 1 + 2 + self.delivery_len
        sealed_head = SESSION_ID_LEN + COUNTER_LEN
        self.body_len = {
            FrameType.NODE_PACKET: self.packet_len,
            FrameType.ATTACH: KEY_LEN + COOKIE_LEN + _PROOF_LEN + AEAD_TAG_LEN,
            FrameType.UPLINK: sealed_head + self.packet_len + AEAD_TAG_LEN,
            FrameType.DOWNLINK: sealed_head + self.inner_downlink_len + AEAD_TAG_LEN,
            FrameType.CHALLENGE: KEY_LEN + COOKIE_LEN,
            FrameType.LEAVE: sealed_head + AEAD_TAG_LEN,
            FrameType.UNKNOWN_SESSION: SESSION_ID_LEN,
        }

    def frame_len(self, frame_type: FrameType) -> int:
        """Total datagram length of a frame type."""
        return 2 + self.body_len[frame_type]

    def parse(self, datagram: bytes) -> Frame:
        """Check version, type and exact length; LinkError otherwise."""
        if len(datagram) < 2:
            raise LinkError("datagram too short")
        if datagram[0] != LINK_VERSION:
            raise LinkError("unknown link version")
        try:
            ftype = FrameType(datagram[1])
        except ValueError:
            raise LinkError("unknown frame type") from None
        if len(datagram) != 2 + self.body_len[ftype]:
            raise LinkError("frame has the wrong length")
        return Frame(ftype, bytes(datagram[2:]))

    def node_packet(self, packet: bytes) -> bytes:
        """A node-to-node frame around one Sphinx packet."""
        if len(packet) != self.packet_len:
            raise UsageError("a node frame carries exactly one packet of the geometry")
        return bytes((LINK_VERSION, FrameType.NODE_PACKET)) + packet

    def challenge(self, attach: Frame, cookie: bytes) -> bytes:
        """CHALLENGE for an ATTACH frame: its ephemeral key and ``cookie`` (50 bytes).

        Always shorter than the ATTACH it answers (162 bytes), so it amplifies nothing.
        """
        if attach.type is not FrameType.ATTACH or len(cookie) != COOKIE_LEN:
            raise UsageError("a challenge answers an ATTACH frame with a 16-byte cookie")
        return bytes((LINK_VERSION, FrameType.CHALLENGE)) + attach.body[:KEY_LEN] + cookie

    @staticmethod
    def unknown_session(frame: Frame) -> bytes:
        """UNKNOWN_SESSION for an UPLINK frame: its claimed session id (10 bytes)."""
        if frame.type is not FrameType.UPLINK:
            raise UsageError("only an UPLINK frame is answered with UNKNOWN_SESSION")
        return bytes((LINK_VERSION, FrameType.UNKNOWN_SESSION)) + frame.body[:SESSION_ID_LEN]

    def encode_delivery(self, delivery: Delivery) -> bytes:
        """The fixed-size plaintext of a downlink slot (padded with zeros)."""
        if len(delivery.data) > self.delivery_len:
            raise UsageError("delivery too large for this geometry")
        pad = self.delivery_len - len(delivery.data)
        return (
            bytes((delivery.kind,))
            + len(delivery.data).to_bytes(2, "big")
            + delivery.data
            + bytes(pad)
        )

    def decode_delivery(self, inner: bytes) -> Delivery:
        """Inverse of :meth:`encode_delivery`; LinkError on a malformed slot."""
        if len(inner) != self.inner_downlink_len:
            raise LinkError("downlink slot has the wrong length")
        try:
            kind = DownlinkKind(inner[0])
        except ValueError:
            raise LinkError("unknown downlink kind") from None
        n = int.from_bytes(inner[1:3], "big")
        if n > self.delivery_len:
            raise LinkError("downlink length out of range")
        return Delivery(kind, inner[3 : 3 + n])


class CookieJar:
    """The gateway's stateless ATTACH cookies: a keyed MAC, nothing stored per client.

        >>> jar = CookieJar(rng=lambda n: bytes(n))
        >>> c = jar.make(b"127.0.0.1:5000", bytes(32), now=10.0)
        >>> jar.check(c, b"127.0.0.1:5000", bytes(32), now=100.0)
        True
        >>> jar.check(c, b"127.0.0.1:5001", bytes(32), now=10.0)
        False

    ``cookie = BLAKE2b-128(key = secret, person = "pn-link-v2-cook", data = period (8,
    signed) | ephemeral key | peer)`` where ``period = floor(now / period_s)``; a cookie is
    accepted in its period and the next (as WireGuard's cookie secret, rotated every two
    minutes). ``now`` is the gateway's monotonic clock in seconds; ``peer`` the canonical
    bytes of the sender's address. The secret comes from ``rng`` and never leaves the jar.
    """

    __slots__ = ("_secret", "period_s")

    def __init__(self, *, rng: Rng = os.urandom, period_s: float = COOKIE_PERIOD_S) -> None:
        if period_s <= 0:
            raise UsageError("period_s must be > 0")
        self._secret = rng(32)
        self.period_s = period_s

    def _mac(self, period: int, peer: bytes, eph_pub: bytes) -> bytes:
        data = period.to_bytes(8, "big", signed=True) + eph_pub + peer
        return hashlib.blake2b(
            data, digest_size=COOKIE_LEN, key=self._secret, person=_LABEL_COOKIE
        ).digest()

    def make(self, peer: bytes, eph_pub: bytes, now: float) -> bytes:
        """The 16-byte cookie for ``eph_pub`` sent from ``peer`` at ``now``."""
        return self._mac(math.floor(now / self.period_s), peer, eph_pub)

    def check(self, cookie: bytes, peer: bytes, eph_pub: bytes, now: float) -> bool:
        """True if ``cookie`` was made for (peer, eph_pub) in this period or the last one."""
        period = math.floor(now / self.period_s)
        ok = False
        for p in (period, period - 1):  # both compared, in constant time each
            ok |= hmac.compare_digest(cookie, self._mac(p, peer, eph_pub))
        return ok


class ClientLink:
    """The client side of an encrypted link to one gateway (sans-IO).

    ``attach_frame()`` is the ATTACH to send (without a cookie until the gateway's
    CHALLENGE came, then with the mailbox proof); ``receive(datagram)`` takes any datagram
    from the gateway and returns a :data:`LinkEvent` or raises a LinkError;
    ``seal_uplink(packet)`` wraps Sphinx packets; ``leave_frame()`` ends the session.
    """

    def __init__(
        self,
        geometry: Geometry,
        gateway_public_key: bytes,
        mailbox_key: MailboxKey,
        *,
        rng: Rng = os.urandom,
    ) -> None:
        if len(gateway_public_key) != KEY_LEN:
            raise UsageError("a gateway's link key is 32 bytes")
        if not isinstance(mailbox_key, MailboxKey):
            raise UsageError("a client link needs the MailboxKey that owns its mailbox")
        self.codec = LinkCodec(geometry)
        self._mailbox_key = mailbox_key
        self._gateway_pub = gateway_public_key
        eph = rng(32)
        self._eph_pub = crypto_scalarmult_base(eph)
        try:
            shared = crypto_scalarmult(eph, gateway_public_key)
        except CryptoError:
            raise UsageError("gateway link key is a low-order point") from None
        self.keys = _session_keys(shared, self._eph_pub, gateway_public_key)
        self._up = ChaCha20Poly1305(self.keys.uplink_key)
        self._down = ChaCha20Poly1305(self.keys.downlink_key)
        self._counter = 0
        self._window = ReplayWindow()
        self._cookie: bytes | None = None
        self._attach: bytes | None = None

    @property
    def mailbox(self) -> bytes:
        """Our 16-byte mailbox id."""
        return self._mailbox_key.mailbox_id

    def attach_frame(self) -> bytes:
        """ATTACH (162 bytes for every geometry): resend it until ATTACHED comes.

        Before a CHALLENGE: ``eph_pub`` and zeros, which asks the gateway for a cookie.
        After: ``eph_pub | cookie | AEAD(mailbox public key | Ed25519 signature)``.
        """
        head = bytes((LINK_VERSION, FrameType.ATTACH)) + self._eph_pub
        if self._cookie is None:
            return head + bytes(COOKIE_LEN + _PROOF_LEN + AEAD_TAG_LEN)
        if self._attach is None:
            cookie = self._cookie
            sig = self._mailbox_key.sign(_transcript(self._gateway_pub, self._eph_pub, cookie))
            proof = self._mailbox_key.public_key + sig
            sealed = _proof_aead(self.keys, cookie).encrypt(_nonce(0), proof, head + cookie)
            self._attach = head + cookie + sealed
        return self._attach

    def receive(self, datagram: bytes) -> LinkEvent:
        """Any datagram from the gateway: a Delivery, Challenged or SessionUnknown.

        LinkError if malformed or of a type a gateway does not send, LinkAuthError if a
        DOWNLINK is forged or replayed; a CHALLENGE or UNKNOWN_SESSION for another
        ephemeral key or session is LinkError too.
        """
        frame = self.codec.parse(datagram)
        if frame.type is FrameType.DOWNLINK:
            return self.open_downlink(datagram)
        if frame.type is FrameType.CHALLENGE:
            if not hmac.compare_digest(frame.body[:KEY_LEN], self._eph_pub):
                raise LinkError("challenge for another attach")
            cookie = frame.body[KEY_LEN:]
            if cookie != self._cookie:
                self._cookie, self._attach = cookie, None
            return Challenged(cookie)
        if frame.type is FrameType.UNKNOWN_SESSION:
            if not hmac.compare_digest(frame.body, self.keys.session_id):
                raise LinkError("hint for another session")
            return SessionUnknown()
        raise LinkError("not a frame a gateway sends")

    def seal_uplink(self, packet: bytes) -> bytes:
        """UPLINK: one Sphinx packet under the next counter."""
        if len(packet) != self.codec.packet_len:
            raise UsageError("an uplink frame carries exactly one packet of the geometry")
        return self._seal(FrameType.UPLINK, packet)

    def leave_frame(self) -> bytes:
        """LEAVE: the session ends at the gateway as soon as this frame authenticates."""
        return self._seal(FrameType.LEAVE, b"")

    def _seal(self, ftype: FrameType, plain: bytes) -> bytes:
        self._counter += 1
        ctr = self._counter.to_bytes(COUNTER_LEN, "big")
        head = bytes((LINK_VERSION, ftype)) + self.keys.session_id + ctr
        return head + self._up.encrypt(_nonce(self._counter), plain, head)

    def open_downlink(self, datagram: bytes) -> Delivery:
        """Open one downlink frame; LinkAuthError if forged, replayed or for another session."""
        frame = self.codec.parse(datagram)
        if frame.type is not FrameType.DOWNLINK:
            raise LinkError("not a downlink frame")
        return self.codec.decode_delivery(
            _open(self._down, self.keys.session_id, frame.body, self._window, datagram[:2])
        )


class ReplayWindow:
    """Sliding window of accepted counters (as in IPsec/SRTP): refuses repeats and stale ones.

    The window is ``REPLAY_WINDOW`` bits below the highest accepted counter, so time and memory
    are O(1) whatever the jump between counters (RFC 4303 section 3.4.3): a sender that skips
    from 1 to 2**63 shifts nothing; the window is simply reset to the new top.

        >>> w = ReplayWindow()
        >>> w.accept(1); w.accept(2**63)
        >>> w.check(2**63), w.check(1), w.check(2**63 - 1)
        (False, False, True)
    """

    __slots__ = ("_top", "_bits")

    def __init__(self) -> None:
        self._top = 0
        self._bits = 0

    def check(self, counter: int) -> bool:
        """True if ``counter`` is new and inside the window (does not record it)."""
        if counter > self._top:
            return True
        off = self._top - counter
        return off < REPLAY_WINDOW and not (self._bits >> off) & 1 and counter > 0

    def accept(self, counter: int) -> None:
        """Record ``counter`` (after its frame authenticated)."""
        if counter > self._top:
            shift = counter - self._top
            if shift >= REPLAY_WINDOW:  # everything older falls out: no shift of 2**63 bits
                self._bits = 1
            else:
                self._bits = ((self._bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self._top = counter
        elif self._top - counter < REPLAY_WINDOW:  # older than the window: nothing to record
            self._bits |= 1 << (self._top - counter)


def _open(
    aead: ChaCha20Poly1305, session_id: bytes, body: bytes, window: ReplayWindow, head2: bytes
) -> bytes:
    if not hmac.compare_digest(body[:SESSION_ID_LEN], session_id):
        raise LinkAuthError("frame is for another session")
    ctr_bytes = body[SESSION_ID_LEN : SESSION_ID_LEN + COUNTER_LEN]
    counter = int.from_bytes(ctr_bytes, "big")
    if not window.check(counter):
        raise LinkAuthError("replayed or stale frame")
    head = head2 + body[: SESSION_ID_LEN + COUNTER_LEN]
    try:
        plain = aead.decrypt(_nonce(counter), body[SESSION_ID_LEN + COUNTER_LEN :], head)
    except InvalidTag:
        raise LinkAuthError("frame does not authenticate") from None
    window.accept(counter)
    return plain


def attach_cookie(frame: Frame) -> tuple[bytes, bytes]:
    """(ephemeral public key, cookie) an ATTACH frame claims (not yet authenticated)."""
    if frame.type is not FrameType.ATTACH:
        raise LinkError("not an attach frame")
    return frame.body[:KEY_LEN], frame.body[KEY_LEN : KEY_LEN + COOKIE_LEN]


class GatewaySession:
    """The gateway side of one client link: opens uplink frames, seals downlink slots."""

    def __init__(self, codec: LinkCodec, keys: SessionKeys, mailbox: bytes) -> None:
        self.codec = codec
        self.keys = keys
        self.mailbox = mailbox
        self._up = ChaCha20Poly1305(keys.uplink_key)
        self._down = ChaCha20Poly1305(keys.downlink_key)
        self._window = ReplayWindow()
        self._counter = 0

    @classmethod
    def accept(
        cls, codec: LinkCodec, private_keys: Sequence[bytes], frame: Frame
    ) -> GatewaySession:
        """Open an ATTACH under one of the gateway's X25519 keys and check its mailbox proof.

        The caller has checked the cookie (:class:`CookieJar`) first: this costs one X25519
        per key tried and one Ed25519 verification. LinkAuthError if it opens under no key,
        MailboxProofError if the signature over ``context | gateway key | ephemeral key |
        cookie`` does not verify under the enclosed mailbox public key.
        """
        eph_pub, cookie = attach_cookie(frame)
        head = bytes((LINK_VERSION, FrameType.ATTACH)) + eph_pub + cookie
        sealed = frame.body[KEY_LEN + COOKIE_LEN :]
        for sk in private_keys:
            try:
                shared = crypto_scalarmult(sk, eph_pub)
            except CryptoError:
                raise LinkAuthError("attach key is a low-order point") from None
            gateway_pub = crypto_scalarmult_base(sk)
            keys = _session_keys(shared, eph_pub, gateway_pub)
            try:
                proof = _proof_aead(keys, cookie).decrypt(_nonce(0), sealed, head)
            except InvalidTag:
                continue
            mailbox_pub, sig = proof[:KEY_LEN], proof[KEY_LEN:]
            try:
                VerifyKey(mailbox_pub).verify(_transcript(gateway_pub, eph_pub, cookie), sig)
            except (CryptoError, ValueError):
                raise MailboxProofError("mailbox proof does not verify") from None
            return cls(codec, keys, mailbox_id(mailbox_pub))
        raise LinkAuthError("attach does not open under any current key")

    @staticmethod
    def session_id_of(frame: Frame) -> bytes:
        """The session id an UPLINK or LEAVE frame claims (not yet authenticated)."""
        return frame.body[:SESSION_ID_LEN]

    def open_uplink(self, frame: Frame) -> bytes:
        """The Sphinx packet inside an UPLINK frame; LinkAuthError if forged or replayed."""
        if frame.type is not FrameType.UPLINK:
            raise LinkError("not an uplink frame")
        head2 = bytes((LINK_VERSION, FrameType.UPLINK))
        return _open(self._up, self.keys.session_id, frame.body, self._window, head2)

    def open_leave(self, frame: Frame) -> None:
        """Authenticate a LEAVE frame; LinkAuthError if forged or replayed."""
        if frame.type is not FrameType.LEAVE:
            raise LinkError("not a leave frame")
        head2 = bytes((LINK_VERSION, FrameType.LEAVE))
        _open(self._up, self.keys.session_id, frame.body, self._window, head2)

    def seal_downlink(self, delivery: Delivery) -> bytes:
        """One downlink datagram; every one has the same length, real or dummy."""
        self._counter += 1
        ctr = self._counter.to_bytes(COUNTER_LEN, "big")
        head = bytes((LINK_VERSION, FrameType.DOWNLINK)) + self.keys.session_id + ctr
        inner = self.codec.encode_delivery(delivery)
        return head + self._down.encrypt(_nonce(self._counter), inner, head)


@dataclass(slots=True)
class SessionWatch:
    """When does a client count its session lost? (sans-IO; ``now`` in monotonic seconds)

    The gateway sends one authenticated DOWNLINK per slot to every session, so silence is
    the authority: lost after ``silence_s`` without one. An UNKNOWN_SESSION hint is not
    authenticated (the gateway may have lost the keys), so it only shortens the wait: lost
    if no authenticated DOWNLINK arrived within ``hint_confirm_s`` after the hint. A forged
    hint therefore never ends a live session.

        >>> w = SessionWatch(silence_s=2.0, hint_confirm_s=0.2, last_downlink=0.0)
        >>> w.on_hint(1.0); w.lost(1.1), w.lost(1.25)
        (False, True)
        >>> w.on_downlink(1.3); w.lost(1.4), w.lost(3.4)
        (False, True)
    """

    silence_s: float
    hint_confirm_s: float
    last_downlink: float
    hint_at: float | None = None

    def on_downlink(self, now: float) -> None:
        """An authenticated DOWNLINK frame arrived (it overrules an earlier hint)."""
        self.last_downlink = now
        self.hint_at = None

    def on_hint(self, now: float) -> None:
        """An UNKNOWN_SESSION hint for our session arrived."""
        if self.hint_at is None:
            self.hint_at = now

    def lost(self, now: float) -> bool:
        """True if the session should be re-attached."""
        if now - self.last_downlink >= self.silence_s:
            return True
        return self.hint_at is not None and now - self.hint_at >= self.hint_confirm_s

    def next_check(self, now: float) -> float:
        """Seconds until :meth:`lost` may change, without new frames."""
        due = self.last_downlink + self.silence_s
        if self.hint_at is not None:
            due = min(due, self.hint_at + self.hint_confirm_s)
        return max(0.0, due - now)


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, rng: Rng = os.urandom) -> float:
    """Seconds to wait before retry ``attempt`` (0, 1, ...): exponential, capped, jittered.

    ``d = min(cap_s, base_s * 2**attempt)``, then uniform in ``[d/2, d)`` ("equal jitter",
    so that clients of a restarted gateway do not come back in step).

        >>> backoff_delay(0, base_s=0.5, cap_s=8.0, rng=lambda n: bytes(n))
        0.25
        >>> backoff_delay(10, base_s=0.5, cap_s=8.0, rng=lambda n: bytes(n))
        4.0
    """
    d = min(cap_s, base_s * 2.0 ** min(attempt, 60))
    u = uniform01(rng)
    return d / 2 + u * d / 2
