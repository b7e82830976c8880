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
from them. docs/wire-link.md has every byte.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

from ._errors import PacketError, UsageError
from ._geometry import MAILBOX_ID_LEN, SURB_ID_LEN, Geometry
from ._sphinx import Rng

LINK_VERSION = 1  # first byte of every datagram; bumped on any change below
SESSION_ID_LEN = 8  # bytes, names a client session at its gateway
COUNTER_LEN = 8  # bytes, per-direction frame counter, big-endian; also the AEAD nonce
AEAD_TAG_LEN = 16  # bytes, Poly1305
KEY_LEN = 32  # bytes, X25519 public values and ChaCha20 keys
REPLAY_WINDOW = 1024  # frames; a client counter older than this is refused
_LABEL_LINK = b"pn-link-v1-keys"  # BLAKE2b personalisation for the client link keys


class LinkError(PacketError):
    """A datagram is not a well-formed link frame."""

    reason = "link_malformed"


class LinkAuthError(LinkError):
    """An encrypted client frame does not open: wrong key, tampered, or replayed."""

    reason = "link_auth"


class FrameType(IntEnum):
    """Second byte of a datagram."""

    NODE_PACKET = 1  # node to node: one Sphinx packet
    ATTACH = 2  # client to gateway: ephemeral key, sealed mailbox id
    UPLINK = 3  # client to gateway: one sealed Sphinx packet
    DOWNLINK = 4  # gateway to client: one sealed delivery or dummy, always the same size


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
class SessionKeys:
    """Both directions' keys and the session id of one client link (secret)."""

    session_id: bytes
    uplink_key: bytes
    downlink_key: bytes


def _session_keys(shared: bytes, client_pub: bytes, gateway_pub: bytes) -> SessionKeys:
    out = hashlib.blake2b(
        client_pub + gateway_pub, digest_size=64, key=shared, person=_LABEL_LINK
    ).digest()
    sid = hashlib.blake2b(out, digest_size=SESSION_ID_LEN).digest()
    return SessionKeys(sid, out[:32], out[32:])


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
        self.body_len = {
            FrameType.NODE_PACKET: self.packet_len,
            FrameType.ATTACH: KEY_LEN + MAILBOX_ID_LEN + AEAD_TAG_LEN,
            FrameType.UPLINK: SESSION_ID_LEN + COUNTER_LEN + self.packet_len + AEAD_TAG_LEN,
            FrameType.DOWNLINK: SESSION_ID_LEN
            + COUNTER_LEN
            + self.inner_downlink_len
            + AEAD_TAG_LEN,
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


class ClientLink:
    """The client side of an encrypted link to one gateway (sans-IO).

    ``attach_frame()`` opens the session; ``seal_uplink(packet)`` wraps Sphinx packets;
    ``open_downlink(datagram)`` returns the slot's Delivery (dummies included, so the
    caller can count them) or raises a LinkError.
    """

    def __init__(
        self,
        geometry: Geometry,
        gateway_public_key: bytes,
        mailbox: bytes,
        *,
        rng: Rng = os.urandom,
    ) -> None:
        if len(gateway_public_key) != KEY_LEN:
            raise UsageError("a gateway's link key is 32 bytes")
        if len(mailbox) != MAILBOX_ID_LEN:
            raise UsageError(f"mailbox ids are {MAILBOX_ID_LEN} bytes")
        self.codec = LinkCodec(geometry)
        self._mailbox = mailbox
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

    def attach_frame(self) -> bytes:
        """ATTACH: ephemeral public key and the mailbox id sealed under the uplink key.

        Counter 0 is reserved for it, so the same datagram may be resent until ATTACHED.
        """
        sealed = self._up.encrypt(_nonce(0), self._mailbox, self._eph_pub)
        return bytes((LINK_VERSION, FrameType.ATTACH)) + self._eph_pub + sealed

    def seal_uplink(self, packet: bytes) -> bytes:
        """UPLINK: one Sphinx packet under the next counter."""
        if len(packet) != self.codec.packet_len:
            raise UsageError("an uplink frame carries exactly one packet of the geometry")
        self._counter += 1
        ctr = self._counter.to_bytes(COUNTER_LEN, "big")
        head = bytes((LINK_VERSION, FrameType.UPLINK)) + self.keys.session_id + ctr
        return head + self._up.encrypt(_nonce(self._counter), packet, head)

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
    if body[:SESSION_ID_LEN] != session_id:
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
    def accept(cls, codec: LinkCodec, gateway_private_key: bytes, frame: Frame) -> GatewaySession:
        """Open an ATTACH frame with the gateway's key; LinkAuthError if it does not open."""
        if frame.type is not FrameType.ATTACH:
            raise LinkError("not an attach frame")
        eph_pub = frame.body[:KEY_LEN]
        try:
            shared = crypto_scalarmult(gateway_private_key, eph_pub)
        except CryptoError:
            raise LinkAuthError("attach key is a low-order point") from None
        keys = _session_keys(shared, eph_pub, crypto_scalarmult_base(gateway_private_key))
        try:
            mailbox = ChaCha20Poly1305(keys.uplink_key).decrypt(
                _nonce(0), frame.body[KEY_LEN:], eph_pub
            )
        except InvalidTag:
            raise LinkAuthError("attach frame does not authenticate") from None
        return cls(codec, keys, mailbox)

    @staticmethod
    def session_id_of(frame: Frame) -> bytes:
        """The session id an UPLINK frame claims (not yet authenticated)."""
        return frame.body[:SESSION_ID_LEN]

    def open_uplink(self, frame: Frame) -> bytes:
        """The Sphinx packet inside an UPLINK frame; LinkAuthError if forged or replayed."""
        if frame.type is not FrameType.UPLINK:
            raise LinkError("not an uplink frame")
        head2 = bytes((LINK_VERSION, FrameType.UPLINK))
        return _open(self._up, self.keys.session_id, frame.body, self._window, head2)

    def seal_downlink(self, delivery: Delivery) -> bytes:
        """One downlink datagram; every one has the same length, real or dummy."""
        self._counter += 1
        ctr = self._counter.to_bytes(COUNTER_LEN, "big")
        head = bytes((LINK_VERSION, FrameType.DOWNLINK)) + self.keys.session_id + ctr
        inner = self.codec.encode_delivery(delivery)
        return head + self._down.encrypt(_nonce(self._counter), inner, head)
