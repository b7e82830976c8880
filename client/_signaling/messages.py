"""Call signaling messages: the vocabulary and its fixed binary encoding (version 1).

    >>> from client import Ring, decode, encode
    >>> wire = encode(Ring(bytes(16)))
    >>> wire.hex()
    '010400000000000000000000000000000000'
    >>> decode(wire) == Ring(bytes(16))
    True

``encode`` gives the bytes the ``SecureChannel`` seals; ``decode`` parses them back with
exact lengths, known enums only and no trailing bytes, or raises ``SignalMalformed``.

OFFER and ANSWER end in an optional hybrid block (the hybrid post-quantum call keys,
``keys``): the offer's is the caller's ephemeral X25519 public key (32 B) and ML-KEM-768
encapsulation key (1,184 B), the answer's the callee's ephemeral X25519 public key (32 B)
and the ML-KEM ciphertext (1,088 B). Without it the message ends after its last field
(the version 1 layout, byte for byte); with it the block follows; anything else is
malformed. Mode C refuses an offer or answer without it (``SignalDowngraded``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeVar

from overlay import DropReason, PacketError, UsageError

from .._media import CALL_ID_LEN
from .._voice import VoiceProfile

SIGNAL_VERSION = 1  # first byte of every signaling message
NONCE_LEN = 16  # bytes, the caller's call nonce
DIGEST_LEN = 32  # bytes, SHA-256 of an offer
MAC_LEN = 32  # bytes, HMAC-SHA256
HEADER_LEN = 2 + CALL_ID_LEN  # version, type, call id
PROFILE_LEN = 11  # bytes: rate u32, frame ms u8, frames/packet u8, bitrate u32, redundancy u8
MAX_OPAQUE_LEN = 16384  # bytes, cap on reply-path and SURB fields
X25519_LEN = 32  # bytes, an X25519 public key
KEM_PUBLIC_LEN = 1184  # bytes, an ML-KEM-768 encapsulation key
KEM_CIPHERTEXT_LEN = 1088  # bytes, an ML-KEM-768 ciphertext
FLAG_NO_DOWNGRADE = 0x01  # offer flag: the caller refuses any later downgrade by default
KNOWN_FLAGS = FLAG_NO_DOWNGRADE


# -- errors ------------------------------------------------------------------------------


class SignalingError(PacketError):
    """A signaling message was dropped."""

    reason = DropReason.SIGNAL


class SignalMalformed(SignalingError):
    """Bytes that do not parse as a signaling message of this version."""

    reason = DropReason.SIGNAL_MALFORMED


class SignalForged(SignalingError):
    """A MAC, digest or call id does not match: forged, cross-chat replay, or tampering."""

    reason = DropReason.SIGNAL_FORGED


class SignalDowngraded(SignalingError):
    """A Mode C offer or answer without the hybrid post-quantum keys: refused, never
    answered or used with classical keys only."""

    reason = DropReason.SIGNAL_DOWNGRADED


# -- message vocabulary -----------------------------------------------------------------


class PrivacyMode(IntEnum):
    """Call modes of the Phantom Net calling frame; higher is more private."""

    FAST = 1  # Mode A: direct P2P, the peer may see your IP
    PRIVATE = 2  # Mode B: relayed, the peer's IP hidden
    PARANOID = 3  # Mode C: signaling and media through the mix network


class MediaType(IntEnum):
    AUDIO = 1
    VIDEO = 2


class MessageType(IntEnum):
    CALL_OFFER = 1
    CALL_ANSWER = 2
    CALL_CANDIDATE = 3
    CALL_RING = 4
    CALL_ACCEPT = 5
    CALL_DECLINE = 6
    CALL_REKEY = 7
    CALL_HANGUP = 8
    CALL_MODE_SWITCH_REQUEST = 9
    CALL_MODE_SWITCH_ACK = 10


class EndReason(IntEnum):
    """Why a call ended; also the reason byte of DECLINE and HANGUP."""

    HANGUP = 1
    DECLINED = 2
    BUSY = 3
    NO_ANSWER = 4
    UNSUPPORTED_MODE = 5
    POLICY_VIOLATION = 6
    TIMEOUT = 7
    UNSUPPORTED_MEDIA = 8


@dataclass(frozen=True, slots=True)
class Offer:
    call_id: bytes
    nonce: bytes
    mode: PrivacyMode
    media: MediaType
    flags: int
    profile: VoiceProfile
    reply_mailbox: bytes  # opaque: the caller's gateway node id and mailbox id
    surbs: bytes  # opaque: SURBs for replies to the caller
    x25519_public: bytes = field(default=b"", repr=False)  # 32 B, or b"" without the hybrid
    kem_public: bytes = field(default=b"", repr=False)  # 1,184 B, or b"" without the hybrid

    @property
    def hybrid(self) -> bool:
        """Whether the offer carries the hybrid block."""
        return bool(self.x25519_public or self.kem_public)


@dataclass(frozen=True, slots=True)
class Answer:
    call_id: bytes
    offer_digest: bytes
    mode: PrivacyMode
    profile: VoiceProfile
    reply_mailbox: bytes
    surbs: bytes
    confirm_mac: bytes
    x25519_public: bytes = field(default=b"", repr=False)  # 32 B, or b"" without the hybrid
    kem_ciphertext: bytes = field(default=b"", repr=False)  # 1,088 B, or b"" without it

    @property
    def hybrid(self) -> bool:
        """Whether the answer carries the hybrid block."""
        return bool(self.x25519_public or self.kem_ciphertext)


@dataclass(frozen=True, slots=True)
class Candidate:
    call_id: bytes
    kind: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ring:
    call_id: bytes


@dataclass(frozen=True, slots=True)
class Accept:
    call_id: bytes
    confirm_mac: bytes


@dataclass(frozen=True, slots=True)
class Decline:
    call_id: bytes
    reason: EndReason


@dataclass(frozen=True, slots=True)
class Rekey:
    call_id: bytes
    generation: int


@dataclass(frozen=True, slots=True)
class Hangup:
    call_id: bytes
    reason: EndReason


@dataclass(frozen=True, slots=True)
class ModeSwitchRequest:
    call_id: bytes
    mode: PrivacyMode


@dataclass(frozen=True, slots=True)
class ModeSwitchAck:
    call_id: bytes
    mode: PrivacyMode
    accepted: bool


Message = (
    Offer
    | Answer
    | Candidate
    | Ring
    | Accept
    | Decline
    | Rekey
    | Hangup
    | ModeSwitchRequest
    | ModeSwitchAck
)

TYPE_OF: dict[type, MessageType] = {
    Offer: MessageType.CALL_OFFER,
    Answer: MessageType.CALL_ANSWER,
    Candidate: MessageType.CALL_CANDIDATE,
    Ring: MessageType.CALL_RING,
    Accept: MessageType.CALL_ACCEPT,
    Decline: MessageType.CALL_DECLINE,
    Rekey: MessageType.CALL_REKEY,
    Hangup: MessageType.CALL_HANGUP,
    ModeSwitchRequest: MessageType.CALL_MODE_SWITCH_REQUEST,
    ModeSwitchAck: MessageType.CALL_MODE_SWITCH_ACK,
}


# -- fixed binary encoding --------------------------------------------------------------


def _profile_bytes(p: VoiceProfile) -> bytes:
    return struct.pack(
        ">IBBIB", p.sample_rate_hz, p.frame_ms, p.frames_per_packet, p.bitrate_bps, p.redundancy
    )


def _opaque(data: bytes) -> bytes:
    if len(data) > MAX_OPAQUE_LEN:
        raise UsageError(f"opaque fields are limited to {MAX_OPAQUE_LEN} bytes")
    return struct.pack(">H", len(data)) + data


def _hybrid(first: bytes, second: bytes, second_len: int) -> bytes:
    """The optional hybrid block: both parts at their lengths, or neither."""
    if not first and not second:
        return b""
    if len(first) != X25519_LEN or len(second) != second_len:
        raise UsageError(f"the hybrid block is {X25519_LEN} + {second_len} bytes, or empty")
    return first + second


def encode(message: Message) -> bytes:
    """The wire bytes of one message (before the channel seals it).

    Raises ``UsageError`` for a call id, opaque field or hybrid block of the wrong length.
    """
    head = struct.pack(">BB", SIGNAL_VERSION, TYPE_OF[type(message)]) + message.call_id
    if len(message.call_id) != CALL_ID_LEN:
        raise UsageError(f"call_id must be {CALL_ID_LEN} bytes")
    match message:
        case Offer():
            body = (
                message.nonce
                + struct.pack(">BBB", message.mode, message.media, message.flags)
                + _profile_bytes(message.profile)
                + _opaque(message.reply_mailbox)
                + _opaque(message.surbs)
                + _hybrid(message.x25519_public, message.kem_public, KEM_PUBLIC_LEN)
            )
        case Answer():
            body = (
                message.offer_digest
                + struct.pack(">B", message.mode)
                + _profile_bytes(message.profile)
                + _opaque(message.reply_mailbox)
                + _opaque(message.surbs)
                + message.confirm_mac
                + _hybrid(message.x25519_public, message.kem_ciphertext, KEM_CIPHERTEXT_LEN)
            )
        case Candidate():
            body = struct.pack(">B", message.kind) + _opaque(message.data)
        case Ring():
            body = b""
        case Accept():
            body = message.confirm_mac
        case Decline() | Hangup():
            body = struct.pack(">B", message.reason)
        case Rekey():
            body = struct.pack(">I", message.generation)
        case ModeSwitchRequest():
            body = struct.pack(">B", message.mode)
        case ModeSwitchAck():
            body = struct.pack(">BB", message.mode, int(message.accepted))
    return head + body


_E = TypeVar("_E", bound=IntEnum)


class _Reader:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise SignalMalformed()
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def opaque(self) -> bytes:
        (n,) = self.unpack(">H")
        if n > MAX_OPAQUE_LEN:
            raise SignalMalformed()
        return self.take(n)

    def profile(self) -> VoiceProfile:
        rate, frame_ms, fpp, bitrate, redundancy = self.unpack(">IBBIB")
        try:
            return VoiceProfile(rate, frame_ms, fpp, bitrate, redundancy)
        except UsageError:
            raise SignalMalformed() from None

    def enum(self, kind: type[_E]) -> _E:
        try:
            return kind(self.u8())
        except ValueError:
            raise SignalMalformed() from None

    def hybrid(self, second_len: int) -> tuple[bytes, bytes]:
        """The optional hybrid block at the end: (b"", b"") when absent."""
        if self.pos == len(self.data):
            return b"", b""
        return self.take(X25519_LEN), self.take(second_len)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise SignalMalformed()


def decode(data: bytes) -> Message:
    """Parse one message; exact lengths, known enums only, no trailing bytes."""
    if not isinstance(data, bytes) or len(data) < HEADER_LEN or data[0] != SIGNAL_VERSION:
        raise SignalMalformed()
    r = _Reader(data, 1)
    kind = r.enum(MessageType)
    call_id = r.take(CALL_ID_LEN)
    msg: Message
    match kind:
        case MessageType.CALL_OFFER:
            nonce = r.take(NONCE_LEN)
            mode, media = r.enum(PrivacyMode), r.enum(MediaType)
            flags = r.u8()
            if flags & ~KNOWN_FLAGS:
                raise SignalMalformed()
            fields = (r.profile(), r.opaque(), r.opaque())
            msg = Offer(call_id, nonce, mode, media, flags, *fields, *r.hybrid(KEM_PUBLIC_LEN))
        case MessageType.CALL_ANSWER:
            digest = r.take(DIGEST_LEN)
            msg = Answer(call_id, digest, r.enum(PrivacyMode), r.profile(), r.opaque(),
                         r.opaque(), r.take(MAC_LEN), *r.hybrid(KEM_CIPHERTEXT_LEN))  # fmt: skip
        case MessageType.CALL_CANDIDATE:
            msg = Candidate(call_id, r.u8(), r.opaque())
        case MessageType.CALL_RING:
            msg = Ring(call_id)
        case MessageType.CALL_ACCEPT:
            msg = Accept(call_id, r.take(MAC_LEN))
        case MessageType.CALL_DECLINE:
            msg = Decline(call_id, r.enum(EndReason))
        case MessageType.CALL_REKEY:
            (generation,) = r.unpack(">I")
            msg = Rekey(call_id, generation)
        case MessageType.CALL_HANGUP:
            msg = Hangup(call_id, r.enum(EndReason))
        case MessageType.CALL_MODE_SWITCH_REQUEST:
            msg = ModeSwitchRequest(call_id, r.enum(PrivacyMode))
        case MessageType.CALL_MODE_SWITCH_ACK:
            mode, accepted = r.enum(PrivacyMode), r.u8()
            if accepted > 1:
                raise SignalMalformed()
            msg = ModeSwitchAck(call_id, mode, bool(accepted))
    r.end()
    return msg
