"""Call signaling: wire format, the state table, fail-closed policy, keys, timers."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client import (
    TRANSITIONS,
    Accept,
    Action,
    Answer,
    ApprovalNeeded,
    Call,
    CallEnded,
    CallPolicy,
    CallState,
    Candidate,
    Decline,
    Direction,
    EndReason,
    Event,
    Hangup,
    IncomingCall,
    InMemoryChannel,
    MediaKeysChanged,
    MediaReceiver,
    MediaSender,
    MediaType,
    Message,
    ModeChanged,
    ModeSwitchAck,
    ModeSwitchRefused,
    ModeSwitchRequest,
    Offer,
    PrivacyMode,
    Rekey,
    RemoteRinging,
    Ring,
    Send,
    SignalMalformed,
    StartMedia,
    Timer,
    VoiceProfile,
    call_id_for,
    decode,
    encode,
    state_diagram,
)
from client._signaling.keys import hkdf as _hkdf
from client._signaling.keys import mac as _mac
from overlay import UsageError

BOTH = CallPolicy(supported_modes=frozenset({PrivacyMode.PRIVATE, PrivacyMode.PARANOID}),
                  required_mode=PrivacyMode.PRIVATE)  # fmt: skip


def sends(actions: list[Action]) -> list[bytes]:
    return [a.envelope for a in actions if isinstance(a, Send)]


def others(actions: list[Action]) -> list[Action]:
    return [a for a in actions if not isinstance(a, Send)]


def deliver(actions: list[Action], to: Call, now: float = 1.0) -> list[Action]:
    return [out for env in sends(actions) for out in to.handle(env, now)]


def pair(**kw: object) -> tuple[Call, Call]:
    a, b = InMemoryChannel.pair()
    ka = {k[2:]: v for k, v in kw.items() if k.startswith("a_")}
    kb = {k[2:]: v for k, v in kw.items() if k.startswith("b_")}
    return (Call(a, reply_mailbox=b"A" * 32, surbs=b"sa", **ka),  # type: ignore[arg-type]
            Call(b, reply_mailbox=b"B" * 32, surbs=b"sb", **kb))  # type: ignore[arg-type]  # fmt: skip


def connect(caller: Call, callee: Call) -> tuple[StartMedia, StartMedia]:
    back = deliver(caller.place(0.0), callee)
    assert [type(a) for a in others(back)] == [IncomingCall, type(others(back)[1])]
    got = deliver(back, caller)
    assert RemoteRinging in {type(a) for a in got}
    accepted = callee.accept(2.0)
    got = deliver(accepted, caller)
    a_media = next(a for a in got if isinstance(a, StartMedia))
    b_media = next(a for a in accepted if isinstance(a, StartMedia))
    assert caller.state is callee.state is CallState.ACTIVE
    return a_media, b_media


# -- wire format --------------------------------------------------------------------------

CID = bytes(range(16))
PROFILE = VoiceProfile()
SAMPLES: list[Message] = [
    Offer(CID, b"n" * 16, PrivacyMode.PARANOID, MediaType.AUDIO, 1, PROFILE, b"mb", b"surbs"),
    Answer(CID, b"d" * 32, PrivacyMode.PARANOID, PROFILE, b"", b"s" * 300, b"m" * 32),
    Candidate(CID, 2, b"192.0.2.1:5000"),
    Ring(CID),
    Accept(CID, b"m" * 32),
    Decline(CID, EndReason.BUSY),
    Rekey(CID, 7),
    Hangup(CID, EndReason.POLICY_VIOLATION),
    ModeSwitchRequest(CID, PrivacyMode.PRIVATE),
    ModeSwitchAck(CID, PrivacyMode.PRIVATE, True),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_and_rejects_any_truncation(message: Message) -> None:
    raw = encode(message)
    assert decode(raw) == message
    for cut in range(len(raw)):
        with pytest.raises(SignalMalformed):
            decode(raw[:cut])
    with pytest.raises(SignalMalformed):
        decode(raw + b"\x00")
    with pytest.raises(SignalMalformed):
        decode(bytes([2]) + raw[1:])  # unknown version


def test_unknown_enum_values_and_flags_are_malformed() -> None:
    raw = bytearray(encode(SAMPLES[0]))
    for pos, value in ((1, 99), (34, 9), (35, 3), (36, 0x80)):  # type, mode, media, flags
        bad = bytearray(raw)
        bad[pos] = value
        with pytest.raises(SignalMalformed):
            decode(bytes(bad))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_decode_or_raise_malformed(data: bytes) -> None:
    try:
        assert encode(decode(data)) == data  # anything accepted re-encodes identically
    except SignalMalformed:
        pass


# -- the table ----------------------------------------------------------------------------


def test_table_is_closed_and_ended_is_terminal() -> None:
    assert all(s is not CallState.ENDED for s, _ in TRANSITIONS)
    reached = {d for ds in TRANSITIONS.values() for d in ds.values()} | {CallState.IDLE}
    assert reached == set(CallState)
    assert {e for _, e in TRANSITIONS} == set(Event)
    diagram = state_diagram()
    for s in CallState:
        assert s.name in diagram
    assert "RINGING_LOCAL --> ACTIVE: ACCEPT" in diagram


# -- calls --------------------------------------------------------------------------------


def test_a_call_agrees_on_keys_and_carries_media_both_ways() -> None:
    caller, callee = pair()
    a, b = connect(caller, callee)
    assert a.tx_keys == b.rx_keys and a.rx_keys == b.tx_keys and a.tx_keys != a.rx_keys
    assert a.peer_reply_mailbox == b"B" * 32 and b.peer_reply_mailbox == b"A" * 32
    assert a.peer_surbs == b"sb" and a.mode is PrivacyMode.PARANOID
    frames = [b"x" * PROFILE.frame_bytes] * PROFILE.frames_per_packet
    assert MediaReceiver(PROFILE, b.rx_keys).open(MediaSender(PROFILE, a.tx_keys).seal(frames))
    out = caller.hangup(5.0)
    assert others(out)[-1] == CallEnded(EndReason.HANGUP, by_peer=False)
    assert others(deliver(out, callee))[-1] == CallEnded(EndReason.HANGUP, by_peer=True)
    assert caller.state is callee.state is CallState.ENDED


def test_two_calls_on_one_conversation_get_unrelated_keys() -> None:
    a, b = InMemoryChannel.pair()
    keys = []
    for _ in range(2):
        caller = Call(a, reply_mailbox=b"A", surbs=b"")
        callee = Call(b, reply_mailbox=b"B", surbs=b"")
        keys.append(connect(caller, callee)[0].tx_keys)
    assert keys[0] != keys[1]


def test_accept_may_overtake_ring() -> None:
    caller, callee = pair()
    answer, ring = sends(deliver(caller.place(0.0), callee))
    accept = sends(callee.accept(1.0))[0]
    assert caller.handle(answer, 1.0) and caller.state is CallState.ANSWERED
    assert any(isinstance(a, StartMedia) for a in caller.handle(accept, 1.1))
    assert caller.handle(ring, 1.2) == [] and caller.counters.unexpected == 1
    assert caller.state is CallState.ACTIVE


def test_decline_ends_both_sides() -> None:
    caller, callee = pair()
    deliver(deliver(caller.place(0.0), callee), caller)
    out = deliver(callee.decline(1.0), caller)
    assert others(out)[-1] == CallEnded(EndReason.DECLINED, by_peer=True)


def test_unsupported_mode_is_declined_never_replaced() -> None:
    caller, callee = pair(a_policy=BOTH, a_mode=PrivacyMode.PRIVATE)  # callee: Mode C only
    back = deliver(caller.place(0.0), callee)
    assert callee.state is CallState.ENDED
    assert CallEnded(EndReason.UNSUPPORTED_MODE, by_peer=False) in back
    assert CallEnded(EndReason.UNSUPPORTED_MODE, by_peer=True) in deliver(back, caller)
    assert not any(isinstance(a, StartMedia | IncomingCall) for a in back)


def test_callee_minimum_mode_is_enforced_even_if_supported() -> None:
    strict = CallPolicy(supported_modes=BOTH.supported_modes, required_mode=PrivacyMode.PARANOID)
    caller, callee = pair(a_policy=BOTH, a_mode=PrivacyMode.PRIVATE, b_policy=strict)
    assert CallEnded(EndReason.UNSUPPORTED_MODE, by_peer=False) in deliver(
        caller.place(0.0), callee
    )


def test_video_in_mode_c_is_declined() -> None:
    caller, callee = pair()
    cid = call_id_for(caller.channel.conversation_id, b"n" * 16)
    offer = Offer(cid, b"n" * 16, PrivacyMode.PARANOID, MediaType.VIDEO, 1, PROFILE, b"", b"")
    env, _ = caller.channel.seal(encode(offer))
    out = callee.handle(env, 0.0)
    assert CallEnded(EndReason.UNSUPPORTED_MEDIA, by_peer=False) in out


def test_downgraded_answer_fails_closed_even_with_a_valid_mac() -> None:
    caller, callee = pair(a_policy=BOTH)
    offer_env = sends(caller.place(0.0))[0]
    raw, export = callee.channel.open(offer_env)
    offer = decode(raw)
    assert isinstance(offer, Offer)
    core = Answer(offer.call_id, hashlib.sha256(raw).digest(), PrivacyMode.PRIVATE, PROFILE,
                  b"", b"", b"")  # fmt: skip
    mac = _mac(_hkdf(export, offer.call_id, b"answer"), encode(core))
    evil = Answer(core.call_id, core.offer_digest, core.mode, core.profile, b"", b"", mac)
    out = caller.handle(callee.channel.seal(encode(evil))[0], 1.0)
    assert caller.state is CallState.ENDED
    assert others(out)[-1] == CallEnded(EndReason.POLICY_VIOLATION, by_peer=False)
    assert len(sends(out)) == 1  # the peer is told


@pytest.mark.parametrize("field", ["reply_mailbox", "offer_digest", "confirm_mac"])
def test_tampered_answer_fails_closed(field: str) -> None:
    caller, callee = pair()
    answer_env = sends(deliver(caller.place(0.0), callee))[0]
    # A peer that holds the channel keys but changes one field after MACing.
    plain = decode(caller.channel.open(answer_env)[0])
    assert isinstance(plain, Answer)
    values = {"reply_mailbox": b"elsewhere", "offer_digest": bytes(32), "confirm_mac": bytes(32)}
    fields = {f: getattr(plain, f) for f in Answer.__slots__}
    fields[field] = values[field]
    forged, _ = callee.channel.seal(encode(Answer(**fields)))
    out = caller.handle(forged, 1.0)
    assert others(out)[-1] == CallEnded(EndReason.POLICY_VIOLATION, by_peer=False)


class _NoBindingChannel:
    """Test double: a channel that does not bind the conversation (so the call id must)."""

    def __init__(self, conversation_id: bytes):
        self.conversation_id = conversation_id

    def seal(self, plaintext: bytes) -> tuple[bytes, bytes]:
        return plaintext, b"s" * 32

    def open(self, envelope: bytes) -> tuple[bytes, bytes]:
        return envelope, b"s" * 32


def test_offer_replayed_into_another_conversation_is_dropped() -> None:
    caller = Call(_NoBindingChannel(b"1" * 16), reply_mailbox=b"", surbs=b"")
    callee = Call(_NoBindingChannel(b"2" * 16), reply_mailbox=b"", surbs=b"")
    assert callee.handle(sends(caller.place(0.0))[0], 1.0) == []
    assert callee.state is CallState.IDLE and callee.counters.signal_forged == 1
    second = Call(_NoBindingChannel(b"1" * 16), reply_mailbox=b"", surbs=b"")
    same_chat = Call(_NoBindingChannel(b"1" * 16), reply_mailbox=b"", surbs=b"")
    assert any(isinstance(a, IncomingCall) for a in same_chat.handle(sends(second.place(0))[0], 1))


def test_real_channel_rejects_cross_conversation_and_replay() -> None:
    caller, callee = pair()
    _, other = InMemoryChannel.pair()
    env = sends(caller.place(0.0))[0]
    assert Call(other, reply_mailbox=b"", surbs=b"").handle(env, 0.0) == []
    assert callee.handle(env, 0.0)
    assert callee.handle(env, 0.1) == [] and callee.counters.channel == 1  # replay


def test_candidate_in_mode_c_ends_the_call() -> None:
    caller, callee = pair()
    connect(caller, callee)
    assert callee.call_id is not None
    env, _ = callee.channel.seal(encode(Candidate(callee.call_id, 1, b"198.51.100.7:4000")))
    out = caller.handle(env, 3.0)
    assert caller.state is CallState.ENDED
    assert others(out)[-1] == CallEnded(EndReason.POLICY_VIOLATION, by_peer=False)
    assert others(deliver(out, callee))[-1] == CallEnded(EndReason.POLICY_VIOLATION, True)


def test_downgrade_switch_needs_approval_on_both_sides() -> None:
    caller, callee = pair(a_policy=BOTH, b_policy=BOTH)
    connect(caller, callee)
    with pytest.raises(UsageError, match="user_approved"):
        caller.request_mode_switch(PrivacyMode.PRIVATE, 3.0)
    req = caller.request_mode_switch(PrivacyMode.PRIVATE, 3.0, user_approved=True)
    got = deliver(req, callee)
    assert ApprovalNeeded(PrivacyMode.PRIVATE) in got and callee.mode is PrivacyMode.PARANOID
    assert callee.state is CallState.APPROVING
    ack = callee.approve_mode_switch(4.0)
    assert ModeChanged(PrivacyMode.PRIVATE) in ack
    assert ModeChanged(PrivacyMode.PRIVATE) in deliver(ack, caller)
    assert caller.mode is callee.mode is PrivacyMode.PRIVATE
    # Back up to Paranoid: no approval needed for more privacy.
    up = deliver(callee.request_mode_switch(PrivacyMode.PARANOID, 5.0), caller)
    assert ModeChanged(PrivacyMode.PARANOID) in up
    assert ModeChanged(PrivacyMode.PARANOID) in deliver(up, callee)


def test_refused_or_unsupported_switch_keeps_the_mode() -> None:
    caller, callee = pair(a_policy=BOTH, b_policy=BOTH)
    connect(caller, callee)
    got = deliver(caller.request_mode_switch(PrivacyMode.PRIVATE, 3.0, user_approved=True), callee)
    assert ApprovalNeeded(PrivacyMode.PRIVATE) in got
    assert ModeSwitchRefused(PrivacyMode.PRIVATE) in deliver(callee.refuse_mode_switch(4), caller)
    assert caller.mode is callee.mode is PrivacyMode.PARANOID
    # A Mode C-only peer refuses without even asking its user.
    c2, d2 = pair(a_policy=BOTH)
    connect(c2, d2)
    got = deliver(c2.request_mode_switch(PrivacyMode.PRIVATE, 3.0, user_approved=True), d2)
    assert not any(isinstance(a, ApprovalNeeded) for a in got)
    assert ModeSwitchRefused(PrivacyMode.PRIVATE) in deliver(got, c2)


def test_unanswered_switch_ends_the_call_and_undecided_one_is_refused() -> None:
    caller, callee = pair(a_policy=BOTH, b_policy=BOTH)
    connect(caller, callee)
    req = caller.request_mode_switch(PrivacyMode.PRIVATE, 3.0, user_approved=True)
    got = deliver(req, callee)
    refused = callee.fire(Timer.SWITCH, 40.0)
    assert ModeSwitchRefused(PrivacyMode.PRIVATE) in refused and callee.state is CallState.ACTIVE
    assert got
    out = caller.fire(Timer.SWITCH, 40.0)
    assert others(out)[-1] == CallEnded(EndReason.TIMEOUT, by_peer=False)


def test_rekey_changes_one_direction_on_both_sides() -> None:
    caller, callee = pair()
    a, b = connect(caller, callee)
    out = caller.rekey(10.0)
    with pytest.raises(UsageError):
        caller.rekey(10.5)  # one at a time
    got = deliver(out, callee)
    rx = next(x for x in got if isinstance(x, MediaKeysChanged))
    assert rx.direction is Direction.CALLER_TO_CALLEE and rx.generation == 1
    assert rx.keys != b.rx_keys
    applied = caller.fire(Timer.REKEY, 15.0)
    assert applied == [MediaKeysChanged(Direction.CALLER_TO_CALLEE, 1, rx.keys)]
    frames = [b"y" * PROFILE.frame_bytes] * PROFILE.frames_per_packet
    wire = MediaSender(PROFILE, applied[0].keys).seal(frames)
    assert MediaReceiver(PROFILE, rx.keys).open(wire)
    assert caller.fire(Timer.REKEY, 16.0) == []  # nothing pending any more


def test_skipped_rekey_generation_fails_closed() -> None:
    caller, callee = pair()
    connect(caller, callee)
    assert caller.call_id is not None
    env, _ = caller.channel.seal(encode(Rekey(caller.call_id, 5)))
    out = callee.handle(env, 3.0)
    assert others(out)[-1] == CallEnded(EndReason.POLICY_VIOLATION, by_peer=False)


def test_setup_timers_end_calls_and_stale_timers_are_ignored() -> None:
    caller, callee = pair()
    out = caller.place(0.0)
    assert any(getattr(a, "timer", None) is Timer.SETUP for a in out)
    ended = caller.fire(Timer.SETUP, 60.0)
    assert others(ended)[-1] == CallEnded(EndReason.NO_ANSWER, by_peer=False)
    assert caller.fire(Timer.SETUP, 61.0) == []
    c2, d2 = pair()
    deliver(c2.place(0.0), d2)
    timeout = d2.fire(Timer.SETUP, 60.0)
    assert others(deliver(timeout, c2))[-1] == CallEnded(EndReason.NO_ANSWER, by_peer=True)


def test_glare_declines_both_offers_busy() -> None:
    a, b = pair()
    oa, ob = a.place(0.0), b.place(0.0)
    busy_a, busy_b = deliver(ob, a), deliver(oa, b)
    assert a.state is b.state is CallState.CALLING
    assert CallEnded(EndReason.BUSY, by_peer=True) in deliver(busy_a, b)
    assert CallEnded(EndReason.BUSY, by_peer=True) in deliver(busy_b, a)


def test_local_misuse_is_a_usage_error() -> None:
    caller, callee = pair()
    for command in (caller.accept, caller.hangup, caller.rekey, caller.decline):
        with pytest.raises(UsageError):
            command(0.0)
    with pytest.raises(UsageError):
        Call(InMemoryChannel.pair()[0], reply_mailbox=b"", surbs=b"", mode=PrivacyMode.FAST)
    with pytest.raises(UsageError):
        CallPolicy(supported_modes=frozenset({PrivacyMode.PARANOID}),
                   required_mode=PrivacyMode.FAST)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_any_authentic_garbage_is_counted_not_raised(data: bytes) -> None:
    caller, callee = pair()
    deliver(caller.place(0.0), callee)
    env, _ = caller.channel.seal(data)
    before = callee.state
    callee.handle(env, 1.0)
    assert callee.state in (before, CallState.ENDED)
    assert callee.handle(os.urandom(40), 1.0) == []
