"""Call signaling for Mode C: fixed binary messages and a sans-IO state machine as data.

    >>> from client import Call, InMemoryChannel, Send, StartMedia
    >>> a, b = InMemoryChannel.pair()
    >>> caller = Call(a, reply_mailbox=b"gw-a|box-a", surbs=b"surbs-a")
    >>> callee = Call(b, reply_mailbox=b"gw-b|box-b", surbs=b"surbs-b")
    >>> def deliver(actions, to, now):  # what the gateway link does, here in memory
    ...     sent = [act.envelope for act in actions if isinstance(act, Send)]
    ...     return [out for envelope in sent for out in to.handle(envelope, now)]
    >>> back = deliver(caller.place(0.0), callee, 0.5)  # OFFER; the callee sends ANSWER, RING
    >>> _ = deliver(back, caller, 1.0)
    >>> got = deliver(callee.accept(2.0), caller, 2.5)  # the user picks up: ACCEPT
    >>> caller.state.name, callee.state.name
    ('ACTIVE', 'ACTIVE')
    >>> [type(x).__name__ for x in got if isinstance(x, StartMedia)]
    ['StartMedia']

Every message is sealed by the E2EE ``SecureChannel`` (authenticated, replay-protected).
On top of that:

- the call id is BLAKE2b(conversation id, caller's nonce): an offer replayed into another
  conversation carries a call id that does not match, and is dropped;
- the offer (mode, media type, voice profile, anti-downgrade flag, reply path) is MACed by
  the channel's AEAD; the answer echoes the offer's SHA-256 and mode under an HMAC keyed
  by the offer's message secret, the accept carries an HMAC keyed by the call secret, and
  the call secret (hence every media key) covers the offer and answer bytes: a mode
  changed anywhere on the way ends the call or leaves media undecryptable;
- only the modes in ``CallPolicy.supported_modes`` are accepted (this client speaks
  Mode C, ``PARANOID``, only); anything else is declined, never silently replaced;
- a mode switch to a less private mode needs the user's explicit approval on both sides;
- in Mode C a ``CALL_CANDIDATE`` (which could reveal an IP address) ends the call.

The per-call secret is HKDF(offer secret || answer secret) over the transcript, so both
messages' ratchet keys contribute; ``CALL_REKEY`` ratchets one direction's media secret
forward with fresh material from the rekey message's own secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from enum import Enum, IntEnum, auto
from typing import TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from overlay import VOICE, PacketError, Rng, UsageError

from ._channel import ChannelError, SecureChannel
from ._media import CALL_ID_LEN, Direction, MediaKeys, check_fits, derive_media_keys
from ._voice import VoiceProfile

SIGNAL_VERSION = 1  # first byte of every signaling message
CALL_LABEL = b"phantom-call-v1"  # versioned label of every call-level derivation
NONCE_LEN = 16  # bytes, the caller's call nonce
DIGEST_LEN = 32  # bytes, SHA-256 of an offer
MAC_LEN = 32  # bytes, HMAC-SHA256
HEADER_LEN = 2 + CALL_ID_LEN  # version, type, call id
PROFILE_LEN = 11  # bytes: rate u32, frame ms u8, frames/packet u8, bitrate u32, redundancy u8
MAX_OPAQUE_LEN = 16384  # bytes, cap on reply-path and SURB fields
FLAG_NO_DOWNGRADE = 0x01  # offer flag: the caller refuses any later downgrade by default
KNOWN_FLAGS = FLAG_NO_DOWNGRADE
MAX_HELD = 8  # messages kept per call because they overtook the one they follow
MAX_ENDED_IDS = 16  # call ids remembered because their HANGUP/DECLINE overtook the offer


# -- errors ------------------------------------------------------------------------------


class SignalingError(PacketError):
    """A signaling message was dropped."""

    reason = "signal"


class SignalMalformed(SignalingError):
    """Bytes that do not parse as a signaling message of this version."""

    reason = "signal_malformed"


class SignalForged(SignalingError):
    """A MAC, digest or call id does not match: forged, cross-chat replay, or tampering."""

    reason = "signal_forged"


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


@dataclass(frozen=True, slots=True)
class Answer:
    call_id: bytes
    offer_digest: bytes
    mode: PrivacyMode
    profile: VoiceProfile
    reply_mailbox: bytes
    surbs: bytes
    confirm_mac: bytes


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

_TYPE_OF: dict[type, MessageType] = {
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


def encode(message: Message) -> bytes:
    """The wire bytes of one message (before the channel seals it)."""
    head = struct.pack(">BB", SIGNAL_VERSION, _TYPE_OF[type(message)]) + message.call_id
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
            )
        case Answer():
            body = (
                message.offer_digest
                + struct.pack(">B", message.mode)
                + _profile_bytes(message.profile)
                + _opaque(message.reply_mailbox)
                + _opaque(message.surbs)
                + message.confirm_mac
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
            msg = Offer(call_id, nonce, mode, media, flags, r.profile(), r.opaque(), r.opaque())
        case MessageType.CALL_ANSWER:
            digest = r.take(DIGEST_LEN)
            msg = Answer(call_id, digest, r.enum(PrivacyMode), r.profile(), r.opaque(),
                         r.opaque(), r.take(MAC_LEN))  # fmt: skip
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


# -- key schedule -----------------------------------------------------------------------


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, CALL_LABEL + b" " + info).derive(ikm)


def call_id_for(conversation_id: bytes, nonce: bytes) -> bytes:
    """The call id: bound to the conversation, so an offer cannot be replayed across chats."""
    return hashlib.blake2b(
        conversation_id + nonce, digest_size=CALL_ID_LEN, person=b"pn-callid-v1"
    ).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


# -- the state machine ------------------------------------------------------------------


class Role(Enum):
    CALLER = auto()
    CALLEE = auto()


class CallState(Enum):
    IDLE = auto()  # nothing sent or received yet
    CALLING = auto()  # caller: offer sent, waiting for the answer
    ANSWERED = auto()  # caller: answer in (keys agreed), waiting for ring or accept
    RINGING_REMOTE = auto()  # caller: the callee's device is ringing
    RINGING_LOCAL = auto()  # callee: offer checked, answer and ring sent, user deciding
    ACTIVE = auto()  # media flows
    SWITCHING = auto()  # active; our mode switch request is out
    APPROVING = auto()  # active; the peer asks for a less private mode, the user decides
    ENDED = auto()  # terminal


class Event(Enum):
    """Everything that can move a call: local commands, received messages, timers."""

    PLACE = auto()
    ACCEPT = auto()
    DECLINE = auto()
    HANGUP = auto()
    REKEY = auto()
    SWITCH = auto()
    APPROVE = auto()
    REFUSE = auto()
    RECV_OFFER = auto()
    RECV_ANSWER = auto()
    RECV_CANDIDATE = auto()
    RECV_RING = auto()
    RECV_ACCEPT = auto()
    RECV_DECLINE = auto()
    RECV_REKEY = auto()
    RECV_HANGUP = auto()
    RECV_SWITCH_REQUEST = auto()
    RECV_SWITCH_ACK = auto()
    RECV_MEDIA = auto()  # a media packet of the call opened: the peer is there
    TIMER_SETUP = auto()
    TIMER_SWITCH = auto()
    TIMER_REKEY = auto()
    TIMER_MEDIA = auto()


def _event_of(message: Message) -> Event:
    return _RECV[_TYPE_OF[type(message)]]


_RECV: dict[MessageType, Event] = {
    MessageType.CALL_OFFER: Event.RECV_OFFER,
    MessageType.CALL_ANSWER: Event.RECV_ANSWER,
    MessageType.CALL_CANDIDATE: Event.RECV_CANDIDATE,
    MessageType.CALL_RING: Event.RECV_RING,
    MessageType.CALL_ACCEPT: Event.RECV_ACCEPT,
    MessageType.CALL_DECLINE: Event.RECV_DECLINE,
    MessageType.CALL_REKEY: Event.RECV_REKEY,
    MessageType.CALL_HANGUP: Event.RECV_HANGUP,
    MessageType.CALL_MODE_SWITCH_REQUEST: Event.RECV_SWITCH_REQUEST,
    MessageType.CALL_MODE_SWITCH_ACK: Event.RECV_SWITCH_ACK,
}


def _table() -> dict[tuple[CallState, Event], frozenset[CallState]]:
    S, E = CallState, Event
    t: dict[tuple[CallState, Event], set[CallState]] = {
        # A valid offer rings; a forged one is dropped (stay idle); a bad mode is declined.
        (S.IDLE, E.PLACE): {S.CALLING},
        (S.IDLE, E.RECV_OFFER): {S.RINGING_LOCAL, S.IDLE, S.ENDED},
        (S.CALLING, E.RECV_ANSWER): {S.ANSWERED},
        (S.CALLING, E.RECV_OFFER): {S.CALLING},  # glare: the other offer is declined BUSY
        (S.CALLING, E.RECV_DECLINE): {S.ENDED},
        (S.ANSWERED, E.RECV_RING): {S.RINGING_REMOTE},
        (S.ANSWERED, E.RECV_ACCEPT): {S.ACTIVE},  # the accept may overtake the ring
        (S.ANSWERED, E.RECV_DECLINE): {S.ENDED},
        (S.RINGING_REMOTE, E.RECV_ACCEPT): {S.ACTIVE},
        (S.RINGING_REMOTE, E.RECV_DECLINE): {S.ENDED},
        (S.RINGING_LOCAL, E.ACCEPT): {S.ACTIVE},
        (S.RINGING_LOCAL, E.DECLINE): {S.ENDED},
        (S.ACTIVE, E.SWITCH): {S.SWITCHING},
        (S.ACTIVE, E.RECV_SWITCH_REQUEST): {S.ACTIVE, S.APPROVING},
        (S.SWITCHING, E.RECV_SWITCH_ACK): {S.ACTIVE},
        (S.SWITCHING, E.RECV_SWITCH_REQUEST): {S.SWITCHING},  # glare: refused
        (S.APPROVING, E.APPROVE): {S.ACTIVE},
        (S.APPROVING, E.REFUSE): {S.ACTIVE},
        (S.APPROVING, E.TIMER_SWITCH): {S.ACTIVE},
    }
    setup = (S.CALLING, S.ANSWERED, S.RINGING_REMOTE, S.RINGING_LOCAL)
    in_call = (S.ACTIVE, S.SWITCHING, S.APPROVING)
    for s in setup:
        t[(s, E.TIMER_SETUP)] = {S.ENDED}
    for s in setup + in_call:
        t[(s, E.HANGUP)] = {S.ENDED}
        t[(s, E.RECV_HANGUP)] = {S.ENDED}
        # Mode C: a candidate is a policy violation; other modes would drop it.
        t[(s, E.RECV_CANDIDATE)] = {S.ENDED, s}
    for s in in_call:
        t[(s, E.REKEY)] = {s}
        t[(s, E.TIMER_REKEY)] = {s}
        t[(s, E.RECV_REKEY)] = {s, S.ENDED}  # a skipped generation fails closed
        # Every non-final state has a timer that ends it: in a call, media silence.
        t[(s, E.RECV_MEDIA)] = {s}
        t[(s, E.TIMER_MEDIA)] = {S.ENDED}
    # Messages whose checks can fail end the call (fail closed): answer, accept, acks.
    for key in (
        (S.CALLING, E.RECV_ANSWER),
        (S.ANSWERED, E.RECV_ACCEPT),
        (S.RINGING_REMOTE, E.RECV_ACCEPT),
        (S.SWITCHING, E.RECV_SWITCH_ACK),
    ):
        t[key].add(S.ENDED)
    # A mode switch either completes or the call ends: the two sides never disagree.
    t[(S.SWITCHING, E.TIMER_SWITCH)] = {S.ENDED}
    return {k: frozenset(v) for k, v in t.items()}


def _deferred() -> frozenset[tuple[CallState, Event]]:
    """Messages that may overtake the one they follow (the mixnet reorders): the callee's
    RING and ACCEPT can beat its ANSWER, its REKEY and mode switch request its ACCEPT."""
    S, E = CallState, Event
    before_answer = {(S.CALLING, E.RECV_RING), (S.CALLING, E.RECV_ACCEPT)}
    before_accept = {
        (s, e)
        for s in (S.CALLING, S.ANSWERED, S.RINGING_REMOTE)
        for e in (E.RECV_REKEY, E.RECV_SWITCH_REQUEST)
    }
    return frozenset(before_answer | before_accept)


TRANSITIONS: dict[tuple[CallState, Event], frozenset[CallState]] = _table()
# Received in one of these (state, event) pairs, a message is held (at most ``MAX_HELD``)
# and handled as soon as a later state takes it; it is dropped if the call ends first.
DEFERRED: frozenset[tuple[CallState, Event]] = _deferred()


def state_diagram() -> str:
    """A mermaid state diagram drawn from ``TRANSITIONS`` (self-loops left out)."""
    lines = ["stateDiagram-v2", "    [*] --> IDLE"]
    edges: dict[tuple[str, str], list[str]] = {}
    for (src, ev), dsts in TRANSITIONS.items():
        for dst in sorted(dsts, key=lambda s: s.value):
            if dst != src:
                edges.setdefault((src.name, dst.name), []).append(ev.name)
    for (src_name, dst_name), evs in edges.items():
        lines.append(f"    {src_name} --> {dst_name}: {', '.join(evs)}")
    lines.append("    ENDED --> [*]")
    return "\n".join(lines)


class Timer(Enum):
    SETUP = auto()  # offer unanswered, or ringing too long
    SWITCH = auto()  # a mode switch not answered or not decided
    REKEY = auto()  # start sending with the new keys (after the REKEY had time to arrive)
    MEDIA = auto()  # in a call, no media from the peer for this long: it is gone


# -- actions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Hand this sealed envelope to the transport (the mixnet, to the peer's mailbox)."""

    envelope: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SetTimer:
    timer: Timer
    deadline: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """Alert the user: who is the conversation; the mode is shown before answering."""

    call_id: bytes
    mode: PrivacyMode
    media: MediaType


@dataclass(frozen=True, slots=True)
class RemoteRinging:
    call_id: bytes


@dataclass(frozen=True, slots=True)
class StartMedia:
    """Media may flow: our keys and profile for sending, the peer's for receiving."""

    call_id: bytes
    mode: PrivacyMode
    tx_profile: VoiceProfile
    rx_profile: VoiceProfile
    tx_keys: MediaKeys
    rx_keys: MediaKeys
    peer_reply_mailbox: bytes = field(repr=False)
    peer_surbs: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MediaKeysChanged:
    """A rekey: use these keys for ``direction`` from now on (keep the old rx keys a while)."""

    direction: Direction
    generation: int
    keys: MediaKeys


@dataclass(frozen=True, slots=True)
class ApprovalNeeded:
    """The peer asks for a less private mode; only the user may say yes."""

    mode: PrivacyMode


@dataclass(frozen=True, slots=True)
class ModeChanged:
    mode: PrivacyMode


@dataclass(frozen=True, slots=True)
class ModeSwitchRefused:
    mode: PrivacyMode


@dataclass(frozen=True, slots=True)
class CallEnded:
    reason: EndReason
    by_peer: bool


Action = (
    Send
    | SetTimer
    | CancelTimer
    | IncomingCall
    | RemoteRinging
    | StartMedia
    | MediaKeysChanged
    | ApprovalNeeded
    | ModeChanged
    | ModeSwitchRefused
    | CallEnded
)


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """What this side accepts; times in seconds."""

    supported_modes: frozenset[PrivacyMode] = frozenset({PrivacyMode.PARANOID})
    required_mode: PrivacyMode = PrivacyMode.PARANOID  # per-contact minimum
    allow_video: bool = False  # Mode C is audio-first; video needs an explicit opt-in
    setup_timeout_s: float = 60.0  # unanswered offer, or ringing without a decision
    switch_timeout_s: float = 30.0
    rekey_delay_s: float = 5.0  # > a mixnet signaling delay, so the REKEY arrives first
    media_timeout_s: float = 10.0  # in a call: no media from the peer this long ends it

    def __post_init__(self) -> None:
        if not self.supported_modes or not all(
            isinstance(m, PrivacyMode) for m in self.supported_modes
        ):
            raise UsageError("supported_modes must be a non-empty set of PrivacyMode")
        if self.required_mode not in self.supported_modes:
            raise UsageError("required_mode must be one of supported_modes")
        for name in ("setup_timeout_s", "switch_timeout_s", "rekey_delay_s", "media_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise UsageError(f"{name} must be a positive number of seconds")


@dataclass(slots=True)
class SignalCounters:
    """Aggregate counters of dropped messages, by reason."""

    channel: int = 0
    signal_malformed: int = 0
    signal_forged: int = 0
    unexpected: int = 0  # a valid message the current state has no use for
    held: int = 0  # a valid message that overtook the one it follows, kept for later
    ended_before_offer: int = 0  # a HANGUP/DECLINE for a call not offered yet, remembered
    late_offer: int = 0  # an offer whose call was already ended: refused, never rings


class Call:
    """One call over one conversation, either side; sans-IO.

    Local commands (``place``, ``accept``, ``decline``, ``hangup``, ``rekey``,
    ``request_mode_switch``, ``approve_mode_switch``, ``refuse_mode_switch``), received
    envelopes (``handle``) and timers (``fire``) all return a list of actions.
    """

    def __init__(
        self,
        channel: SecureChannel,
        *,
        reply_mailbox: bytes,
        surbs: bytes,
        profile: VoiceProfile | None = None,
        policy: CallPolicy | None = None,
        mode: PrivacyMode = PrivacyMode.PARANOID,
        rng: Rng = os.urandom,
    ):
        self.channel = channel
        self.policy = policy or CallPolicy()
        if mode not in self.policy.supported_modes or mode < self.policy.required_mode:
            raise UsageError("mode must be supported and at least the policy's required_mode")
        for name, value in (("reply_mailbox", reply_mailbox), ("surbs", surbs)):
            if not isinstance(value, bytes) or len(value) > MAX_OPAQUE_LEN:
                raise UsageError(f"{name} must be bytes of at most {MAX_OPAQUE_LEN}")
        self.profile = profile or VoiceProfile()
        check_fits(self.profile, VOICE.user_payload)
        self.mode = mode
        self.reply_mailbox = reply_mailbox
        self.surbs = surbs
        self._rng = rng
        self.state = CallState.IDLE
        self.role: Role | None = None
        self.call_id: bytes | None = None
        self.counters = SignalCounters()
        self.peer_profile: VoiceProfile | None = None
        self._peer_reply = b""
        self._peer_surbs = b""
        self._offer_body = b""
        self._offer_secret = b""
        self._accept_key = b""
        self._secret: dict[Direction, bytes] = {}
        self._generation = {Direction.CALLER_TO_CALLEE: 0, Direction.CALLEE_TO_CALLER: 0}
        self._pending_tx: tuple[int, bytes] | None = None
        self._switch_to: PrivacyMode | None = None
        self._held: list[tuple[Message, bytes, bytes]] = []  # (message, raw, export)
        self._ended_ids: dict[bytes, tuple[EndReason, float]] = {}  # call id -> (why, until)

    # -- plumbing -----------------------------------------------------------------------

    def _go(self, event: Event, to: CallState) -> None:
        allowed = TRANSITIONS.get((self.state, event), frozenset())
        if to not in allowed:  # a bug in this module, never input-driven
            raise AssertionError(f"{self.state.name} --{event.name}--> {to.name} not in table")
        self.state = to

    def _allowed(self, event: Event) -> bool:
        return (self.state, event) in TRANSITIONS

    def _local(self, event: Event) -> None:
        if not self._allowed(event):
            raise UsageError(f"cannot {event.name.lower()} in state {self.state.name}")

    def _send(self, message: Message) -> tuple[Send, bytes]:
        envelope, secret = self.channel.seal(encode(message))
        return Send(envelope), secret

    @property
    def _tx(self) -> Direction:
        if self.role is Role.CALLER:
            return Direction.CALLER_TO_CALLEE
        return Direction.CALLEE_TO_CALLER

    @property
    def _rx(self) -> Direction:
        return Direction(1 - self._tx)

    def _keys(self, direction: Direction) -> MediaKeys:
        assert self.call_id is not None
        return derive_media_keys(
            self._secret[direction], self.call_id, direction, self._generation[direction]
        )

    def _end(self, event: Event, reason: EndReason, *, by_peer: bool, tell: bool) -> list[Action]:
        actions: list[Action] = []
        if tell and self.call_id is not None:
            send, _ = self._send(Hangup(self.call_id, reason))
            actions.append(send)
        self._go(event, CallState.ENDED)
        self._secret.clear()  # Python cannot wipe memory; at least drop the references
        self._offer_secret = self._accept_key = b""
        self._pending_tx = None
        self.counters.unexpected += len(self._held)  # overtook nothing after all
        self._held.clear()
        actions += [CancelTimer(t) for t in Timer]
        actions.append(CallEnded(reason, by_peer))
        return actions

    # -- local commands -----------------------------------------------------------------

    def place(self, now: float) -> list[Action]:
        """Caller: send the offer (mode, media, our voice profile, our reply path)."""
        self._local(Event.PLACE)
        self.role = Role.CALLER
        nonce = self._rng(NONCE_LEN)
        self.call_id = call_id_for(self.channel.conversation_id, nonce)
        offer = Offer(self.call_id, nonce, self.mode, MediaType.AUDIO, FLAG_NO_DOWNGRADE,
                      self.profile, self.reply_mailbox, self.surbs)  # fmt: skip
        self._offer_body = encode(offer)
        envelope, self._offer_secret = self.channel.seal(self._offer_body)
        self._go(Event.PLACE, CallState.CALLING)
        return [Send(envelope), SetTimer(Timer.SETUP, now + self.policy.setup_timeout_s)]

    def accept(self, now: float) -> list[Action]:
        """Callee: the user picks up; media starts."""
        self._local(Event.ACCEPT)
        assert self.call_id is not None
        send, _ = self._send(Accept(self.call_id, self._accept_mac()))
        self._go(Event.ACCEPT, CallState.ACTIVE)
        return [send, CancelTimer(Timer.SETUP), self._media_timer(now), self._start_media()]

    def decline(self, now: float) -> list[Action]:
        """Callee: the user rejects the call."""
        self._local(Event.DECLINE)
        return self._decline(Event.DECLINE, EndReason.DECLINED)

    def hangup(self, now: float) -> list[Action]:
        """Either side, any time during setup or the call."""
        self._local(Event.HANGUP)
        if self.state is CallState.RINGING_LOCAL:
            send, _ = self._send(Decline(self._id, EndReason.DECLINED))
            return [send, *self._end(Event.HANGUP, EndReason.HANGUP, by_peer=False, tell=False)]
        return self._end(Event.HANGUP, EndReason.HANGUP, by_peer=False, tell=True)

    def rekey(self, now: float) -> list[Action]:
        """Ratchet our sending direction's media secret; new keys apply after a delay."""
        self._local(Event.REKEY)
        if self._pending_tx is not None:
            raise UsageError("a rekey is already pending")
        generation = self._generation[self._tx] + 1
        send, export = self._send(Rekey(self._id, generation))
        self._pending_tx = (generation, self._ratchet(self._tx, export, generation))
        self._go(Event.REKEY, self.state)
        return [send, SetTimer(Timer.REKEY, now + self.policy.rekey_delay_s)]

    def request_mode_switch(
        self, mode: PrivacyMode, now: float, *, user_approved: bool = False
    ) -> list[Action]:
        """Ask the peer to change mode; going less private needs ``user_approved``."""
        self._local(Event.SWITCH)
        if mode not in self.policy.supported_modes or mode < self.policy.required_mode:
            raise UsageError(f"mode {mode.name} is not allowed by this side's policy")
        if mode == self.mode:
            raise UsageError(f"the call is already in mode {mode.name}")
        if mode < self.mode and not user_approved:
            raise UsageError("a switch to a less private mode needs user_approved=True")
        send, _ = self._send(ModeSwitchRequest(self._id, mode))
        self._switch_to = mode
        self._go(Event.SWITCH, CallState.SWITCHING)
        return [send, SetTimer(Timer.SWITCH, now + self.policy.switch_timeout_s)]

    def approve_mode_switch(self, now: float) -> list[Action]:
        """The user explicitly re-approves the less private mode the peer asked for."""
        self._local(Event.APPROVE)
        return self._answer_switch(Event.APPROVE, accepted=True)

    def refuse_mode_switch(self, now: float) -> list[Action]:
        self._local(Event.REFUSE)
        return self._answer_switch(Event.REFUSE, accepted=False)

    def media_received(self, now: float) -> list[Action]:
        """A media packet of this call opened (``now`` in seconds): the peer is still there.

        In a call this re-arms the ``MEDIA`` timer (``SetTimer``); otherwise it returns [].
        """
        if not self._allowed(Event.RECV_MEDIA):
            return []
        self._go(Event.RECV_MEDIA, self.state)
        return [self._media_timer(now)]

    def fire(self, timer: Timer, now: float) -> list[Action]:
        """A timer set by ``SetTimer`` expired; stale timers are ignored."""
        event = {Timer.SETUP: Event.TIMER_SETUP, Timer.SWITCH: Event.TIMER_SWITCH,
                 Timer.REKEY: Event.TIMER_REKEY, Timer.MEDIA: Event.TIMER_MEDIA}[timer]  # fmt: skip
        if not self._allowed(event):
            return []
        if event is Event.TIMER_MEDIA:
            return self._end(event, EndReason.TIMEOUT, by_peer=False, tell=True)
        if event is Event.TIMER_SETUP:
            if self.state is CallState.RINGING_LOCAL:
                return self._decline(event, EndReason.NO_ANSWER)
            return self._end(event, EndReason.NO_ANSWER, by_peer=False, tell=True)
        if event is Event.TIMER_SWITCH:
            if self.state is CallState.APPROVING:
                return self._answer_switch(event, accepted=False)
            return self._end(event, EndReason.TIMEOUT, by_peer=False, tell=True)
        if self._pending_tx is None:
            return []
        generation, secret = self._pending_tx
        self._pending_tx = None
        self._secret[self._tx], self._generation[self._tx] = secret, generation
        self._go(event, self.state)
        return [MediaKeysChanged(self._tx, generation, self._keys(self._tx))]

    # -- received messages --------------------------------------------------------------

    def handle(self, envelope: bytes, now: float) -> list[Action]:
        """One envelope from the peer. Bad ones are counted and dropped (no exception).

        Messages may arrive in any order: one that overtook the message it follows is held
        (``DEFERRED``) and handled once the state takes it; a HANGUP or DECLINE that
        overtook its offer is remembered, so that the late offer ends the call unrung.
        """
        try:
            plaintext, export = self.channel.open(envelope)
        except ChannelError:
            self.counters.channel += 1
            return []
        actions = self._checked(plaintext, export, now)
        while True:  # bounded: each round takes one of at most MAX_HELD held messages
            fits = (h for h in self._held if (self.state, _event_of(h[0])) in TRANSITIONS)
            ready = next(fits, None)
            if ready is None:
                return actions
            self._held.remove(ready)
            actions += self._checked(ready[1], ready[2], now)

    def _checked(self, plaintext: bytes, export: bytes, now: float) -> list[Action]:
        try:
            message = decode(plaintext)
            return self._dispatch(message, plaintext, export, now)
        except SignalingError as err:
            setattr(self.counters, err.reason, getattr(self.counters, err.reason) + 1)
            return []

    def _dispatch(self, msg: Message, raw: bytes, export: bytes, now: float) -> list[Action]:
        event = _event_of(msg)
        if isinstance(msg, Offer):
            if msg.call_id != call_id_for(self.channel.conversation_id, msg.nonce):
                raise SignalForged()  # replayed from another conversation, or forged
            ended = self._ended_ids.pop(msg.call_id, None)
            if ended is not None and ended[1] > now and self.state is CallState.IDLE:
                self.counters.late_offer += 1
                self.role, self.call_id = Role.CALLEE, msg.call_id
                return self._end(event, ended[0], by_peer=True, tell=False)
        elif msg.call_id != self.call_id:
            if isinstance(msg, Hangup | Decline):
                self._remember_ended(msg.call_id, msg.reason, now)
            else:
                self.counters.unexpected += 1
            return []
        if not self._allowed(event):
            if (self.state, event) in DEFERRED and len(self._held) < MAX_HELD:
                self.counters.held += 1
                self._held.append((msg, raw, export))
            else:
                self.counters.unexpected += 1
            return []
        match msg:
            case Offer():
                return self._on_offer(msg, raw, export, now)
            case Answer():
                return self._on_answer(msg, raw, export, now)
            case Ring():
                self._go(event, CallState.RINGING_REMOTE)
                return [RemoteRinging(msg.call_id)]
            case Accept():
                if not hmac.compare_digest(msg.confirm_mac, self._accept_mac()):
                    return self._violation(event)
                self._go(event, CallState.ACTIVE)
                return [CancelTimer(Timer.SETUP), self._media_timer(now), self._start_media()]
            case Decline():
                return self._end(event, msg.reason, by_peer=True, tell=False)
            case Hangup():
                return self._end(event, msg.reason, by_peer=True, tell=False)
            case Candidate():
                if self.mode is PrivacyMode.PARANOID:
                    return self._violation(event)  # could reveal an IP address
                self._go(event, self.state)
                return []
            case Rekey():
                rx = self._rx
                if msg.generation != self._generation[rx] + 1:
                    return self._violation(event)
                self._secret[rx] = self._ratchet(rx, export, msg.generation)
                self._generation[rx] = msg.generation
                self._go(event, self.state)
                return [MediaKeysChanged(rx, msg.generation, self._keys(rx))]
            case ModeSwitchRequest():
                return self._on_switch_request(msg, now)
            case ModeSwitchAck():
                if msg.mode != self._switch_to:
                    return self._violation(event)
                self._switch_to = None
                self._go(event, CallState.ACTIVE)
                actions: list[Action] = [CancelTimer(Timer.SWITCH)]
                if msg.accepted:
                    self.mode = msg.mode
                    return [*actions, ModeChanged(msg.mode)]
                return [*actions, ModeSwitchRefused(msg.mode)]
        raise AssertionError("unreachable")  # pragma: no cover

    def _on_offer(self, offer: Offer, raw: bytes, export: bytes, now: float) -> list[Action]:
        if self.state is CallState.CALLING:  # glare: we are calling already
            envelope, _ = self.channel.seal(encode(Decline(offer.call_id, EndReason.BUSY)))
            self._go(Event.RECV_OFFER, CallState.CALLING)
            return [Send(envelope)]
        self.role, self.call_id = Role.CALLEE, offer.call_id
        reason = self._offer_problem(offer)
        if reason is not None:  # fail closed, and say why: never a silent fallback
            return self._decline(Event.RECV_OFFER, reason)
        self.mode, self.peer_profile = offer.mode, offer.profile
        self._peer_reply, self._peer_surbs = offer.reply_mailbox, offer.surbs
        self._offer_body, self._offer_secret = raw, export
        core = Answer(offer.call_id, hashlib.sha256(raw).digest(), self.mode, self.profile,
                      self.reply_mailbox, self.surbs, b"")  # fmt: skip
        answer = Answer(core.call_id, core.offer_digest, core.mode, core.profile,
                        core.reply_mailbox, core.surbs, self._answer_mac(core))  # fmt: skip
        answer_raw = encode(answer)
        envelope, answer_secret = self.channel.seal(answer_raw)
        self._derive(answer_raw, answer_secret)
        ring, _ = self._send(Ring(offer.call_id))
        self._go(Event.RECV_OFFER, CallState.RINGING_LOCAL)
        return [
            Send(envelope),
            ring,
            IncomingCall(offer.call_id, offer.mode, offer.media),
            SetTimer(Timer.SETUP, now + self.policy.setup_timeout_s),
        ]

    def _offer_problem(self, offer: Offer) -> EndReason | None:
        p = self.policy
        if offer.mode not in p.supported_modes or offer.mode < p.required_mode:
            return EndReason.UNSUPPORTED_MODE
        if offer.mode is PrivacyMode.PARANOID and not offer.flags & FLAG_NO_DOWNGRADE:
            return EndReason.POLICY_VIOLATION
        if offer.media is MediaType.VIDEO and not p.allow_video:
            return EndReason.UNSUPPORTED_MEDIA
        try:
            check_fits(offer.profile, VOICE.user_payload)
        except UsageError:
            return EndReason.UNSUPPORTED_MEDIA
        return None

    def _on_answer(self, answer: Answer, raw: bytes, export: bytes, now: float) -> list[Action]:
        core = Answer(answer.call_id, answer.offer_digest, answer.mode, answer.profile,
                      answer.reply_mailbox, answer.surbs, b"")  # fmt: skip
        ok = hmac.compare_digest(answer.offer_digest, hashlib.sha256(self._offer_body).digest())
        ok &= hmac.compare_digest(answer.confirm_mac, self._answer_mac(core))
        if not ok or answer.mode != self.mode:  # tampered transcript or a downgrade
            return self._violation(Event.RECV_ANSWER)
        try:
            check_fits(answer.profile, VOICE.user_payload)
        except UsageError:
            return self._violation(Event.RECV_ANSWER)
        self.peer_profile = answer.profile
        self._peer_reply, self._peer_surbs = answer.reply_mailbox, answer.surbs
        self._derive(raw, export)
        self._go(Event.RECV_ANSWER, CallState.ANSWERED)
        return [SetTimer(Timer.SETUP, now + self.policy.setup_timeout_s)]

    def _on_switch_request(self, msg: ModeSwitchRequest, now: float) -> list[Action]:
        event = Event.RECV_SWITCH_REQUEST
        p = self.policy
        refuse = (
            self.state is CallState.SWITCHING  # glare
            or msg.mode not in p.supported_modes
            or msg.mode < p.required_mode
            or msg.mode == self.mode
        )
        if refuse:
            send, _ = self._send(ModeSwitchAck(self._id, msg.mode, False))
            self._go(event, self.state)
            return [send]
        if msg.mode > self.mode:  # more private: no approval needed
            send, _ = self._send(ModeSwitchAck(self._id, msg.mode, True))
            self.mode = msg.mode
            self._go(event, CallState.ACTIVE)
            return [send, ModeChanged(msg.mode)]
        self._switch_to = msg.mode
        self._go(event, CallState.APPROVING)
        return [
            ApprovalNeeded(msg.mode),
            SetTimer(Timer.SWITCH, now + self.policy.switch_timeout_s),
        ]

    def _answer_switch(self, event: Event, *, accepted: bool) -> list[Action]:
        mode = self._switch_to
        assert mode is not None
        self._switch_to = None
        send, _ = self._send(ModeSwitchAck(self._id, mode, accepted))
        self._go(event, CallState.ACTIVE)
        if accepted:
            self.mode = mode
            return [send, CancelTimer(Timer.SWITCH), ModeChanged(mode)]
        return [send, CancelTimer(Timer.SWITCH), ModeSwitchRefused(mode)]

    # -- helpers ------------------------------------------------------------------------

    def _remember_ended(self, call_id: bytes, reason: EndReason, now: float) -> None:
        """A HANGUP/DECLINE for a call we have not seen: its offer may still be on the way.

        Kept for ``setup_timeout_s`` (the caller gives up by then), ``MAX_ENDED_IDS`` at most.
        """
        self.counters.ended_before_offer += 1
        for old in [c for c, (_, until) in self._ended_ids.items() if until <= now]:
            del self._ended_ids[old]
        self._ended_ids.pop(call_id, None)
        self._ended_ids[call_id] = (reason, now + self.policy.setup_timeout_s)
        while len(self._ended_ids) > MAX_ENDED_IDS:
            del self._ended_ids[next(iter(self._ended_ids))]

    def _media_timer(self, now: float) -> SetTimer:
        return SetTimer(Timer.MEDIA, now + self.policy.media_timeout_s)

    @property
    def _id(self) -> bytes:
        assert self.call_id is not None
        return self.call_id

    def _decline(self, event: Event, reason: EndReason) -> list[Action]:
        send, _ = self._send(Decline(self._id, reason))
        return [send, *self._end(event, reason, by_peer=False, tell=False)]

    def _violation(self, event: Event) -> list[Action]:
        return self._end(event, EndReason.POLICY_VIOLATION, by_peer=False, tell=True)

    def _answer_mac(self, core: Answer) -> bytes:
        """Keyed by the offer's message secret: proves the answerer read our very offer."""
        key = _hkdf(self._offer_secret, self._id, b"answer")
        return _mac(key, encode(core))

    def _derive(self, answer_raw: bytes, answer_secret: bytes) -> None:
        """The call secret: both messages' secrets, over the whole transcript."""
        transcript = hashlib.sha256(self._offer_body).digest()
        transcript += hashlib.sha256(answer_raw).digest()
        secret = _hkdf(self._offer_secret + answer_secret, self._id, b"secret" + transcript)
        for d in Direction:
            self._secret[d] = _hkdf(secret, self._id, b"media" + bytes([d]))
        self._accept_key = _hkdf(secret, self._id, b"accept")
        self._offer_secret = b""

    def _accept_mac(self) -> bytes:
        return _mac(self._accept_key, b"accept" + self._id + bytes([self.mode]))

    def _ratchet(self, d: Direction, export: bytes, generation: int) -> bytes:
        info = b"rekey" + bytes([d]) + struct.pack(">I", generation)
        return _hkdf(self._secret[d] + export, self._id, info)

    def _start_media(self) -> StartMedia:
        assert self.peer_profile is not None and self.call_id is not None
        return StartMedia(
            call_id=self.call_id,
            mode=self.mode,
            tx_profile=self.profile,
            rx_profile=self.peer_profile,
            tx_keys=self._keys(self._tx),
            rx_keys=self._keys(self._rx),
            peer_reply_mailbox=self._peer_reply,
            peer_surbs=self._peer_surbs,
        )
