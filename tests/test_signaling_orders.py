"""Call signaling under the orders a mixnet delivers in: reordered, duplicated, lost.

The property drives two real ``Call`` objects over a model network that holds every sealed
envelope in flight; at each step it delivers any one of them, duplicates or loses one, lets
a user act (accept, decline, hang up, rekey), lets media arrive, or fires the earliest
timer. Invariants: a side in a non-final state always has the timer that ends that state
running; once the network is drained without loss both sides are in the same phase; once
every timer has fired both calls are over.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from client import (
    DEFERRED,
    TRANSITIONS,
    Action,
    Call,
    CallEnded,
    CallState,
    CancelTimer,
    EndReason,
    Event,
    Hangup,
    IncomingCall,
    InMemoryChannel,
    MediaKeysChanged,
    Ring,
    Send,
    SetTimer,
    StartMedia,
    Timer,
    encode,
)

S = CallState
SETUP_STATES = {S.CALLING, S.ANSWERED, S.RINGING_REMOTE, S.RINGING_LOCAL}
IN_CALL = {S.ACTIVE, S.SWITCHING, S.APPROVING}
AT_REST = {S.IDLE, S.ENDED}  # IDLE: no call known yet (the callee before any offer)
STEP_S = 0.05  # seconds of model time per step


def _guard(state: CallState) -> Timer:
    """The timer that ends ``state`` if nothing else does."""
    return Timer.SETUP if state in SETUP_STATES else Timer.MEDIA


def _phase(state: CallState) -> str:
    if state in SETUP_STATES:
        return "setup"
    return "call" if state in IN_CALL else state.name.lower()


@dataclass
class Side:
    call: Call
    timers: dict[Timer, float] = field(default_factory=dict)
    ended: list[CallEnded] = field(default_factory=list)
    media: list[StartMedia] = field(default_factory=list)
    rang: int = 0  # IncomingCall actions
    keys_changed: list[MediaKeysChanged] = field(default_factory=list)
    rekey_pending: bool = False


@dataclass
class Net:
    sides: tuple[Side, Side]
    flight: list[tuple[int, bytes]] = field(default_factory=list)  # (receiving side, envelope)
    lost: int = 0
    now: float = 0.0

    def apply(self, i: int, actions: list[Action]) -> None:
        side = self.sides[i]
        for act in actions:
            match act:
                case Send():
                    self.flight.append((1 - i, act.envelope))
                case SetTimer():
                    side.timers[act.timer] = act.deadline
                case CancelTimer():
                    side.timers.pop(act.timer, None)
                    if act.timer is Timer.REKEY:
                        side.rekey_pending = False
                case CallEnded():
                    side.ended.append(act)
                case StartMedia():
                    side.media.append(act)
                case IncomingCall():
                    side.rang += 1
                case MediaKeysChanged():
                    side.keys_changed.append(act)
                case _:
                    pass

    def deliver(self, k: int, *, keep: bool = False) -> None:
        to, envelope = self.flight[k] if keep else self.flight.pop(k)
        self.apply(to, self.sides[to].call.handle(envelope, self.now))

    def fire_earliest(self) -> None:
        i, timer, deadline = min(
            ((i, t, d) for i, s in enumerate(self.sides) for t, d in s.timers.items()),
            key=lambda x: x[2],
        )
        side = self.sides[i]
        del side.timers[timer]
        if timer is Timer.REKEY:
            side.rekey_pending = False
        self.now = max(self.now, deadline)
        self.apply(i, side.call.fire(timer, self.now))

    def check(self) -> None:
        for side in self.sides:
            state = side.call.state
            if state not in AT_REST:
                assert _guard(state) in side.timers, (state, side.timers)
            if state is S.ENDED:
                assert not side.timers and len(side.ended) == 1


def _pair() -> Net:
    a, b = InMemoryChannel.pair()
    return Net((Side(Call(a, reply_mailbox=b"A" * 32, surbs=b"")),
                Side(Call(b, reply_mailbox=b"B" * 32, surbs=b""))))  # fmt: skip


def _moves(net: Net, lossy: bool) -> list[tuple[str, int]]:
    moves = [("deliver", k) for k in range(len(net.flight))]
    if lossy:
        moves += [("lose", k) for k in range(len(net.flight))]
        moves += [("duplicate", k) for k in range(len(net.flight))]
    for i, side in enumerate(net.sides):
        state = side.call.state
        for event, name in ((Event.ACCEPT, "accept"), (Event.DECLINE, "decline"),
                            (Event.HANGUP, "hangup")):  # fmt: skip
            if (state, event) in TRANSITIONS:
                moves.append((name, i))
        if (state, Event.REKEY) in TRANSITIONS and not side.rekey_pending:
            moves.append(("rekey", i))
        if state in IN_CALL and net.sides[1 - i].call.state in IN_CALL:
            moves.append(("media", i))  # the peer's media reaches this side
    if any(side.timers for side in net.sides):
        moves.append(("fire", 0))
    return moves


def _step(net: Net, move: tuple[str, int]) -> None:
    kind, k = move
    net.now += STEP_S
    if kind == "deliver":
        net.deliver(k)
    elif kind == "lose":
        net.flight.pop(k)
        net.lost += 1
    elif kind == "duplicate":
        net.deliver(k, keep=True)
    elif kind == "fire":
        net.fire_earliest()
    else:
        side = net.sides[k]
        if kind == "rekey":
            side.rekey_pending = True
        command = {"accept": side.call.accept, "decline": side.call.decline,
                   "hangup": side.call.hangup, "rekey": side.call.rekey,
                   "media": side.call.media_received}[kind]  # fmt: skip
        net.apply(k, command(net.now))


@settings(max_examples=400, deadline=None)
@given(st.data(), st.booleans(), st.integers(0, 40))
def test_any_delivery_order_ends_both_sides_alike_and_no_state_is_left_unguarded(
    data: st.DataObject, lossy: bool, steps: int
) -> None:
    net = _pair()
    caller, callee = net.sides
    net.apply(0, caller.call.place(net.now))
    net.check()
    for _ in range(steps):
        moves = _moves(net, lossy)
        if not moves:  # both calls over, nothing in flight
            break
        _step(net, data.draw(st.sampled_from(moves)))
        net.check()
    while net.flight:  # the network drains, in any order, nothing lost
        net.now += STEP_S
        net.deliver(data.draw(st.integers(0, len(net.flight) - 1)))
        net.check()
    if net.lost == 0:
        assert _phase(caller.call.state) == _phase(callee.call.state)
    for _ in range(100):  # then time runs: every timer fires, what it sends is delivered
        if not any(side.timers for side in net.sides):
            break
        net.fire_earliest()
        while net.flight:
            net.deliver(0)
        net.check()
    assert not any(side.timers for side in net.sides)
    assert caller.call.state is S.ENDED
    if net.lost == 0 or callee.call.role is not None:
        assert callee.call.state is S.ENDED  # a callee that never saw the offer stays IDLE
    assert callee.rang <= 1 and all(len(side.media) <= 1 for side in net.sides)
    if caller.media and callee.media:  # both started: the same call keys
        assert caller.media[0].tx_keys == callee.media[0].rx_keys


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    st.sampled_from(["accept", "decline", "hangup"]),
    st.one_of(st.none(), st.integers(0, 6)),
    st.one_of(st.none(), st.integers(0, 3)),
)
def test_whatever_the_order_a_prompt_answer_ends_in_one_phase_on_both_sides(
    data: st.DataObject, answer: str, caller_hangs_up_after: int | None, rekey_after: int | None
) -> None:
    """The users act as soon as they can; only the network's order varies (no loss)."""
    net = _pair()
    caller, callee = net.sides
    net.apply(0, caller.call.place(net.now))
    delivered, rekeyed = 0, False
    while net.flight:
        net.now += STEP_S
        net.deliver(data.draw(st.integers(0, len(net.flight) - 1)))
        delivered += 1
        net.check()
        if callee.call.state is S.RINGING_LOCAL:
            command = {"accept": callee.call.accept, "decline": callee.call.decline,
                       "hangup": callee.call.hangup}[answer]  # fmt: skip
            net.apply(1, command(net.now))
        ringing_or_more = caller.call.state not in (S.CALLING, S.ENDED)
        if caller_hangs_up_after == delivered and ringing_or_more:
            net.apply(0, caller.call.hangup(net.now))
        if rekey_after == delivered and callee.call.state is S.ACTIVE:
            net.apply(1, callee.call.rekey(net.now))
            rekeyed = True
        net.check()
    assert _phase(caller.call.state) == _phase(callee.call.state)
    hung_up = caller.call.state is S.ENDED and caller.ended[0].by_peer is False
    if answer == "accept" and not hung_up:
        assert caller.call.state is callee.call.state is S.ACTIVE
        assert caller.media[0].tx_keys == callee.media[0].rx_keys
        # the callee's REKEY reached the caller, even when it overtook the ACCEPT
        assert len(caller.keys_changed) == rekeyed
    if answer != "accept":
        assert caller.call.state is callee.call.state is S.ENDED


# -- the faults that the property found, pinned ---------------------------------------------


def test_a_hangup_that_overtakes_its_offer_ends_the_call_unrung() -> None:
    for order in ((1, 0), (0, 1)):  # HANGUP first, then the usual order
        net = _pair()
        caller, callee = net.sides
        net.apply(0, caller.call.place(0.0))
        net.apply(0, caller.call.hangup(0.1))
        offer, hangup = net.flight
        net.flight = [[offer, hangup][j] for j in order]
        net.deliver(0)
        net.deliver(0)
        net.check()
        assert callee.call.state is S.ENDED and callee.rang == (1 if order == (0, 1) else 0)
        assert callee.ended == [CallEnded(EndReason.HANGUP, by_peer=True)]
        assert callee.call.counters.late_offer == (1 if order == (1, 0) else 0)
        if order == (1, 0):
            assert not net.flight  # nothing is sent back for a call that is over


def test_every_order_of_answer_ring_and_accept_connects_the_caller() -> None:
    for order in itertools.permutations(range(3)):
        net = _pair()
        caller, callee = net.sides
        net.apply(0, caller.call.place(0.0))
        net.deliver(0)  # OFFER -> ANSWER, RING
        net.apply(1, callee.call.accept(0.5))  # -> ACCEPT
        sent = list(net.flight)
        net.flight = [sent[j] for j in order]
        for _ in order:
            net.deliver(0)
            net.check()
        assert caller.call.state is callee.call.state is S.ACTIVE, order
        assert caller.media[0].tx_keys == callee.media[0].rx_keys
        held = order.index(0)  # the RING and ACCEPT that came before the ANSWER
        assert caller.call.counters.held == held
        stale_ring = order.index(2) < order.index(1)  # a RING after the ACCEPT is stale
        assert caller.call.counters.unexpected == (stale_ring and held < 2)


def test_an_active_call_whose_peer_is_silent_times_out() -> None:
    net = _pair()
    caller, callee = net.sides
    net.apply(0, caller.call.place(0.0))
    net.deliver(0)
    net.apply(1, callee.call.accept(1.0))
    lost_accept = net.flight.pop()  # the callee is ACTIVE; its ACCEPT is lost
    assert lost_accept and callee.call.state is S.ACTIVE
    deadline = callee.timers[Timer.MEDIA]
    net.apply(1, callee.call.media_received(deadline - 1.0))  # media re-arms the timer
    assert callee.timers[Timer.MEDIA] == deadline - 1.0 + callee.call.policy.media_timeout_s
    net.now = 100.0
    while callee.timers:
        net.fire_earliest()
    assert callee.ended == [CallEnded(EndReason.TIMEOUT, by_peer=False)]
    assert any(to == 0 for to, _ in net.flight)  # the caller is told (HANGUP TIMEOUT)


def test_held_messages_and_remembered_ends_are_bounded() -> None:
    net = _pair()
    caller, callee = net.sides
    net.apply(0, caller.call.place(0.0))
    call_id = caller.call.call_id
    assert call_id is not None
    for _ in range(20):  # authentic RINGs before any ANSWER: held, at most MAX_HELD
        envelope, _ = callee.call.channel.seal(encode(Ring(call_id)))
        assert caller.call.handle(envelope, 0.1) == []
    counters = caller.call.counters
    assert counters.held == 8 and counters.unexpected == 12
    for _ in range(40):  # HANGUPs for calls never offered: remembered, at most MAX_ENDED_IDS
        envelope, _ = caller.call.channel.seal(encode(Hangup(os.urandom(16), EndReason.HANGUP)))
        callee.call.handle(envelope, 0.2)
    assert callee.call.counters.ended_before_offer == 40
    net.deliver(0)  # the real offer still rings: its call id was not among them
    assert callee.rang == 1 and callee.call.state is S.RINGING_LOCAL
    net.deliver(0)  # ANSWER: the first held RING plays; seven wait for the end of the call
    assert caller.call.state is S.RINGING_REMOTE
    net.apply(0, caller.call.hangup(0.3))
    assert counters.unexpected == 12 + 7


def test_deferred_pairs_are_outside_the_table_and_each_event_is_taken_later() -> None:
    for state, event in DEFERRED:
        assert (state, event) not in TRANSITIONS
        assert any(e is event for _, e in TRANSITIONS)
    assert (S.ACTIVE, Event.RECV_RING) not in DEFERRED  # a RING after the ACCEPT is stale
