"""One call over one conversation, either side: a sans-IO state machine that returns actions.

Commands, received envelopes and timers are events (``states.Event``); each handler runs its
checks, names their outcome (``states.Guard``) and moves to the one state the table gives
for it (``states.TRANSITIONS``). Messages are built and parsed by ``messages``, secrets come
from ``keys``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field

from overlay import VOICE, Rng, UsageError

from .._channel import ChannelError, SecureChannel
from .._media import Direction, MediaKeys, check_fits, derive_media_keys
from .._voice import VoiceProfile
from . import keys
from .messages import (
    FLAG_NO_DOWNGRADE,
    MAX_OPAQUE_LEN,
    NONCE_LEN,
    Accept,
    Answer,
    Candidate,
    Decline,
    EndReason,
    Hangup,
    MediaType,
    Message,
    ModeSwitchAck,
    ModeSwitchRequest,
    Offer,
    PrivacyMode,
    Rekey,
    Ring,
    SignalDowngraded,
    SignalForged,
    SignalingError,
    decode,
    encode,
)
from .seclog import SecurityEvent, SecurityLog
from .states import (
    DEFERRED,
    TIMER_EVENT,
    TRANSITIONS,
    CallState,
    Event,
    Guard,
    Role,
    Timer,
    event_of,
    target,
)

MAX_HELD = 8  # messages kept per call because they overtook the one they follow
MAX_ENDED_IDS = 16  # call ids remembered because their HANGUP/DECLINE overtook the offer


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
    signal_downgraded: int = 0  # a Mode C offer or answer without the hybrid keys
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
        security_log: SecurityLog | None = None,
    ):
        self.channel = channel
        self.security_log = security_log if security_log is not None else SecurityLog()
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
        # The call's secrets: bytearrays, zeroed by ``_wipe`` when the call ends or closes.
        self._offer_secret = bytearray()
        self._accept_key = bytearray()
        self._secret: dict[Direction, bytearray] = {}
        self._ephemeral: keys.CallerEphemeral | None = None  # the caller's, until the answer
        self._generation = {Direction.CALLER_TO_CALLEE: 0, Direction.CALLEE_TO_CALLER: 0}
        self._pending_tx: tuple[int, bytearray] | None = None
        self._switch_to: PrivacyMode | None = None
        self._held: list[tuple[Message, bytes, bytes]] = []  # (message, raw, export)
        self._ended_ids: dict[bytes, tuple[EndReason, float]] = {}  # call id -> (why, until)

    # -- plumbing -----------------------------------------------------------------------

    def _go(self, event: Event, guard: Guard = Guard.OK) -> None:
        """Move to the one state the table gives (AssertionError: a bug in this module)."""
        self.state = target(self.state, event, guard)

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
            bytes(self._secret[direction]), self.call_id, direction, self._generation[direction]
        )

    def _key_buffers(self) -> list[bytearray]:
        """Every buffer holding a secret of this call now (what ``_wipe`` zeroes)."""
        bufs = [self._offer_secret, self._accept_key, *self._secret.values()]
        if self._ephemeral is not None:
            bufs += self._ephemeral.buffers()
        if self._pending_tx is not None:
            bufs.append(self._pending_tx[1])
        return bufs

    def _wipe(self) -> None:
        """Zero the call's secrets in place and drop them (see docs/calling.md for what
        this does not reach: copies inside ``bytes`` objects and the media ciphers)."""
        keys.wipe(self._key_buffers())
        self._secret.clear()
        self._offer_secret, self._accept_key = bytearray(), bytearray()
        self._ephemeral = None
        self._pending_tx = None

    def close(self) -> None:
        """The client stops: zero this call's secrets now, whatever its state. The call
        cannot carry media afterwards; a call still in progress is not told (the peer's
        media timer ends it)."""
        self._wipe()

    def _end(
        self, event: Event, reason: EndReason, *, by_peer: bool, tell: bool,
        guard: Guard = Guard.OK,
    ) -> list[Action]:  # fmt: skip
        if target(self.state, event, guard) is not CallState.ENDED:
            raise AssertionError(f"{self.state.name} --{event.name}/{guard.name}--> not ENDED")
        actions: list[Action] = []
        if tell and self.call_id is not None:
            send, _ = self._send(Hangup(self.call_id, reason))
            actions.append(send)
        self._go(event, guard)
        self._wipe()
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
        self.call_id = keys.call_id_for(self.channel.conversation_id, nonce)
        self._ephemeral = eph = keys.CallerEphemeral(self._rng)
        offer = Offer(self.call_id, nonce, self.mode, MediaType.AUDIO, FLAG_NO_DOWNGRADE,
                      self.profile, self.reply_mailbox, self.surbs, eph.x25519_public,
                      eph.kem_public)  # fmt: skip
        self._offer_body = encode(offer)
        envelope, offer_secret = self.channel.seal(self._offer_body)
        self._offer_secret = bytearray(offer_secret)
        self._go(Event.PLACE)
        return [Send(envelope), SetTimer(Timer.SETUP, now + self.policy.setup_timeout_s)]

    def accept(self, now: float) -> list[Action]:
        """Callee: the user picks up; media starts."""
        self._local(Event.ACCEPT)
        assert self.call_id is not None
        send, _ = self._send(Accept(self.call_id, self._accept_mac()))
        self._go(Event.ACCEPT)
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
        self._go(Event.REKEY)
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
        self._go(Event.SWITCH)
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
        self._go(Event.RECV_MEDIA)
        return [self._media_timer(now)]

    def fire(self, timer: Timer, now: float) -> list[Action]:
        """A timer set by ``SetTimer`` expired; stale timers are ignored."""
        event = TIMER_EVENT[timer]
        if not self._allowed(event):
            return []
        if event is Event.TIMER_MEDIA:
            return self._end(event, EndReason.TIMEOUT, by_peer=False, tell=True)
        if event is Event.TIMER_SETUP:
            if self.state is CallState.RINGING_LOCAL:
                return self._decline(event, EndReason.NO_ANSWER)
            return self._end(event, EndReason.NO_ANSWER, by_peer=False, tell=True)
        if event is Event.TIMER_SWITCH:
            if target(self.state, event, Guard.OK) is not CallState.ENDED:  # undecided
                return self._answer_switch(event, accepted=False)
            return self._end(event, EndReason.TIMEOUT, by_peer=False, tell=True)
        if self._pending_tx is None:
            return []
        generation, secret = self._pending_tx
        self._pending_tx = None
        keys.wipe([self._secret[self._tx]])
        self._secret[self._tx], self._generation[self._tx] = secret, generation
        self._go(event)
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
            fits = (h for h in self._held if (self.state, event_of(h[0])) in TRANSITIONS)
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
            setattr(self.counters, err.reason.value, getattr(self.counters, err.reason.value) + 1)
            return []

    def _dispatch(self, msg: Message, raw: bytes, export: bytes, now: float) -> list[Action]:
        event = event_of(msg)
        if isinstance(msg, Offer):
            if msg.call_id != keys.call_id_for(self.channel.conversation_id, msg.nonce):
                raise SignalForged()  # replayed from another conversation, or forged
            ended = self._ended_ids.pop(msg.call_id, None)
            if ended is not None and ended[1] > now and self.state is CallState.IDLE:
                self.counters.late_offer += 1
                self.role, self.call_id = Role.CALLEE, msg.call_id
                return self._end(event, ended[0], by_peer=True, tell=False, guard=Guard.LATE)
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
                self._go(event)
                return [RemoteRinging(msg.call_id)]
            case Accept():
                if not hmac.compare_digest(msg.confirm_mac, self._accept_mac()):
                    return self._violation(event)
                self._go(event)
                return [CancelTimer(Timer.SETUP), self._media_timer(now), self._start_media()]
            case Decline():
                return self._end(event, msg.reason, by_peer=True, tell=False)
            case Hangup():
                return self._end(event, msg.reason, by_peer=True, tell=False)
            case Candidate():
                if self.mode is PrivacyMode.PARANOID:
                    return self._violation(event)  # could reveal an IP address
                self._go(event)
                return []
            case Rekey():
                rx = self._rx
                if msg.generation != self._generation[rx] + 1:
                    return self._violation(event)
                new = self._ratchet(rx, export, msg.generation)
                keys.wipe([self._secret[rx]])
                self._secret[rx], self._generation[rx] = new, msg.generation
                self._go(event)
                return [MediaKeysChanged(rx, msg.generation, self._keys(rx))]
            case ModeSwitchRequest():
                return self._on_switch_request(msg, now)
            case ModeSwitchAck():
                if msg.mode != self._switch_to:
                    return self._violation(event)
                self._switch_to = None
                self._go(event)
                actions: list[Action] = [CancelTimer(Timer.SWITCH)]
                self._log_switch(msg.mode, msg.accepted)
                if msg.accepted:
                    self.mode = msg.mode
                    return [*actions, ModeChanged(msg.mode)]
                return [*actions, ModeSwitchRefused(msg.mode)]
        raise AssertionError("unreachable")  # pragma: no cover

    def _on_offer(self, offer: Offer, raw: bytes, export: bytes, now: float) -> list[Action]:
        if self.state is CallState.CALLING:  # glare: we are calling already
            envelope, _ = self.channel.seal(encode(Decline(offer.call_id, EndReason.BUSY)))
            self._go(Event.RECV_OFFER, Guard.DECLINED)
            return [Send(envelope)]
        self.role, self.call_id = Role.CALLEE, offer.call_id
        reason = self._offer_problem(offer)
        if reason is not None:  # fail closed, and say why: never a silent fallback
            return self._decline(Event.RECV_OFFER, reason, Guard.DECLINED)
        if offer.mode is PrivacyMode.PARANOID and not offer.hybrid:
            self.role = self.call_id = None  # dropped: as if it never came
            self._log(SecurityEvent.DOWNGRADE_REFUSED, offer.mode, offer.mode)
            raise SignalDowngraded()  # Mode C: never classical keys only
        try:
            x_pub, ciphertext, dh, kem = keys.callee_hybrid(
                offer.x25519_public, offer.kem_public, self._rng
            )
        except SignalingError:  # an authentic offer with unusable keys: a broken peer
            self.counters.signal_malformed += 1
            return self._decline(Event.RECV_OFFER, EndReason.POLICY_VIOLATION, Guard.DECLINED)
        self.mode, self.peer_profile = offer.mode, offer.profile
        self._peer_reply, self._peer_surbs = offer.reply_mailbox, offer.surbs
        self._offer_body, self._offer_secret = raw, bytearray(export)
        core = Answer(offer.call_id, hashlib.sha256(raw).digest(), self.mode, self.profile,
                      self.reply_mailbox, self.surbs, b"", x_pub, ciphertext)  # fmt: skip
        answer = Answer(core.call_id, core.offer_digest, core.mode, core.profile,
                        core.reply_mailbox, core.surbs, self._answer_mac(core), x_pub,
                        ciphertext)  # fmt: skip
        answer_raw = encode(answer)
        envelope, answer_secret = self.channel.seal(answer_raw)
        th = keys.hybrid_transcript(offer.call_id, offer.mode, offer.x25519_public,
                                    offer.kem_public, x_pub, ciphertext)  # fmt: skip
        self._derive(answer_raw, answer_secret, dh, kem, th)
        ring, _ = self._send(Ring(offer.call_id))
        self._go(Event.RECV_OFFER)
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
                      answer.reply_mailbox, answer.surbs, b"", answer.x25519_public,
                      answer.kem_ciphertext)  # fmt: skip
        ok = hmac.compare_digest(answer.offer_digest, hashlib.sha256(self._offer_body).digest())
        ok &= hmac.compare_digest(answer.confirm_mac, self._answer_mac(core))
        if not ok or answer.mode != self.mode:  # tampered transcript or a downgrade
            return self._violation(Event.RECV_ANSWER)
        eph = self._ephemeral
        if eph is None or not answer.hybrid:  # the offer had the hybrid: the answer must too
            self.counters.signal_downgraded += 1
            self._log(SecurityEvent.DOWNGRADE_REFUSED, self.mode, answer.mode)
            return self._violation(Event.RECV_ANSWER)
        try:
            check_fits(answer.profile, VOICE.user_payload)
            dh, kem = eph.finish(answer.x25519_public, answer.kem_ciphertext)
        except (UsageError, SignalingError):
            return self._violation(Event.RECV_ANSWER)
        self.peer_profile = answer.profile
        self._peer_reply, self._peer_surbs = answer.reply_mailbox, answer.surbs
        th = keys.hybrid_transcript(self._id, self.mode, eph.x25519_public, eph.kem_public,
                                    answer.x25519_public, answer.kem_ciphertext)  # fmt: skip
        self._derive(raw, export, dh, kem, th)
        keys.wipe(eph.buffers())
        self._ephemeral = None
        self._go(Event.RECV_ANSWER)
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
            self._log_switch(msg.mode, False)
            self._go(event, Guard.REFUSED)
            return [send]
        if msg.mode > self.mode:  # more private: no approval needed
            send, _ = self._send(ModeSwitchAck(self._id, msg.mode, True))
            self._log_switch(msg.mode, True)
            self.mode = msg.mode
            self._go(event)
            return [send, ModeChanged(msg.mode)]
        self._switch_to = msg.mode
        self._go(event, Guard.APPROVAL)
        return [
            ApprovalNeeded(msg.mode),
            SetTimer(Timer.SWITCH, now + self.policy.switch_timeout_s),
        ]

    def _answer_switch(self, event: Event, *, accepted: bool) -> list[Action]:
        mode = self._switch_to
        assert mode is not None
        self._switch_to = None
        send, _ = self._send(ModeSwitchAck(self._id, mode, accepted))
        self._log_switch(mode, accepted)
        self._go(event)
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

    def _decline(self, event: Event, reason: EndReason, guard: Guard = Guard.OK) -> list[Action]:
        send, _ = self._send(Decline(self._id, reason))
        return [send, *self._end(event, reason, by_peer=False, tell=False, guard=guard)]

    def _violation(self, event: Event) -> list[Action]:
        return self._end(
            event, EndReason.POLICY_VIOLATION, by_peer=False, tell=True, guard=Guard.FAILED
        )

    def _answer_mac(self, core: Answer) -> bytes:
        return keys.answer_mac(self._offer_secret, self._id, encode(core))

    def _derive(
        self, answer_raw: bytes, answer_secret: bytes, dh: bytearray, kem: bytearray, th: bytes
    ) -> None:
        """The call secret: both messages' secrets and the hybrid ones, over the whole
        transcript (``keys.call_secrets``); the inputs are zeroed afterwards."""
        self._secret, self._accept_key = keys.call_secrets(
            self._id, self._offer_body, self._offer_secret, answer_raw, answer_secret,
            dh, kem, th,
        )  # fmt: skip
        keys.wipe([self._offer_secret, dh, kem])
        self._offer_secret = bytearray()

    def _log_switch(self, mode: PrivacyMode, accepted: bool) -> None:
        """A switch from the current mode to ``mode`` completed or was refused."""
        event = SecurityEvent.MODE_CHANGED if accepted else SecurityEvent.MODE_SWITCH_REFUSED
        self._log(event, self.mode, mode, accepted)

    def _log(self, event: SecurityEvent, mode_from: PrivacyMode, mode_to: PrivacyMode,
             approved: bool = False) -> None:  # fmt: skip
        self.security_log.append(event, mode_from, mode_to, approved)

    def _accept_mac(self) -> bytes:
        return keys.accept_mac(self._accept_key, self._id, self.mode)

    def _ratchet(self, d: Direction, export: bytes, generation: int) -> bytearray:
        return keys.ratchet(self._secret[d], export, self._id, d, generation)

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
