"""The call state machine as data: one target state per (state, event, guard).

    >>> from client import TRANSITIONS, CallState, Event, Guard
    >>> TRANSITIONS[CallState.CALLING, Event.RECV_ANSWER][Guard.FAILED].name
    'ENDED'
    >>> sorted(g.name for g in TRANSITIONS[CallState.ACTIVE, Event.RECV_SWITCH_REQUEST])
    ['APPROVAL', 'OK', 'REFUSED']

An event's handler (``client.Call``) runs the event's checks and names their outcome, a
``Guard``; the table alone says which state that outcome leads to. A (state, event) pair
that is not in the table is no move at all: a local command there is a ``UsageError``, a
message is held (``DEFERRED``) or dropped as unexpected.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, auto
from types import MappingProxyType

from .messages import TYPE_OF, Message, MessageType


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


class Guard(Enum):
    """The outcome of an event's checks, which picks the event's one target state."""

    OK = auto()  # every check passed (or the event has none): its ordinary move
    FAILED = auto()  # a MAC, digest, generation or mode check failed: fail closed
    DECLINED = auto()  # an offer this side declines (mode, media, profile; glare: BUSY)
    LATE = auto()  # an offer whose call's HANGUP or DECLINE came first: it never rings
    REFUSED = auto()  # a mode switch request this side refuses (policy, same mode, glare)
    APPROVAL = auto()  # a switch to a less private mode: only the user may say yes


class Timer(Enum):
    SETUP = auto()  # offer unanswered, or ringing too long
    SWITCH = auto()  # a mode switch not answered or not decided
    REKEY = auto()  # start sending with the new keys (after the REKEY had time to arrive)
    MEDIA = auto()  # in a call, no media from the peer for this long: it is gone


TIMER_EVENT: Mapping[Timer, Event] = MappingProxyType({
    Timer.SETUP: Event.TIMER_SETUP,
    Timer.SWITCH: Event.TIMER_SWITCH,
    Timer.REKEY: Event.TIMER_REKEY,
    Timer.MEDIA: Event.TIMER_MEDIA,
})  # fmt: skip

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


def event_of(message: Message) -> Event:
    """The event a received message is."""
    return _RECV[TYPE_OF[type(message)]]


Moves = Mapping[Guard, CallState]


def _table() -> dict[tuple[CallState, Event], Moves]:
    S, E, G = CallState, Event, Guard
    t: dict[tuple[CallState, Event], dict[Guard, CallState]] = {
        (S.IDLE, E.PLACE): {G.OK: S.CALLING},
        # A valid offer rings; a bad mode is declined; one whose call ended already too.
        # (A forged offer is dropped before it is an event.)
        (S.IDLE, E.RECV_OFFER): {G.OK: S.RINGING_LOCAL, G.DECLINED: S.ENDED, G.LATE: S.ENDED},
        (S.CALLING, E.RECV_ANSWER): {G.OK: S.ANSWERED, G.FAILED: S.ENDED},
        (S.CALLING, E.RECV_OFFER): {G.DECLINED: S.CALLING},  # glare: declined BUSY
        (S.CALLING, E.RECV_DECLINE): {G.OK: S.ENDED},
        (S.ANSWERED, E.RECV_RING): {G.OK: S.RINGING_REMOTE},
        (S.ANSWERED, E.RECV_ACCEPT): {G.OK: S.ACTIVE, G.FAILED: S.ENDED},  # may overtake RING
        (S.ANSWERED, E.RECV_DECLINE): {G.OK: S.ENDED},
        (S.RINGING_REMOTE, E.RECV_ACCEPT): {G.OK: S.ACTIVE, G.FAILED: S.ENDED},
        (S.RINGING_REMOTE, E.RECV_DECLINE): {G.OK: S.ENDED},
        (S.RINGING_LOCAL, E.ACCEPT): {G.OK: S.ACTIVE},
        (S.RINGING_LOCAL, E.DECLINE): {G.OK: S.ENDED},
        (S.ACTIVE, E.SWITCH): {G.OK: S.SWITCHING},
        # More private: done at once; less private: the user decides; else refused.
        (S.ACTIVE, E.RECV_SWITCH_REQUEST): {
            G.OK: S.ACTIVE,
            G.REFUSED: S.ACTIVE,
            G.APPROVAL: S.APPROVING,
        },
        # A mode switch either completes or the call ends: the two sides never disagree.
        (S.SWITCHING, E.RECV_SWITCH_ACK): {G.OK: S.ACTIVE, G.FAILED: S.ENDED},
        (S.SWITCHING, E.RECV_SWITCH_REQUEST): {G.REFUSED: S.SWITCHING},  # glare
        (S.APPROVING, E.APPROVE): {G.OK: S.ACTIVE},
        (S.APPROVING, E.REFUSE): {G.OK: S.ACTIVE},
        (S.APPROVING, E.TIMER_SWITCH): {G.OK: S.ACTIVE},  # undecided: refused
    }
    setup = (S.CALLING, S.ANSWERED, S.RINGING_REMOTE, S.RINGING_LOCAL)
    in_call = (S.ACTIVE, S.SWITCHING, S.APPROVING)
    for s in setup:
        t[(s, E.TIMER_SETUP)] = {G.OK: S.ENDED}
    for s in setup + in_call:
        t[(s, E.HANGUP)] = {G.OK: S.ENDED}
        t[(s, E.RECV_HANGUP)] = {G.OK: S.ENDED}
        # Mode C: a candidate (it could reveal an IP address) fails; other modes drop it.
        t[(s, E.RECV_CANDIDATE)] = {G.OK: s, G.FAILED: S.ENDED}
    for s in in_call:
        t[(s, E.REKEY)] = {G.OK: s}
        t[(s, E.TIMER_REKEY)] = {G.OK: s}
        t[(s, E.RECV_REKEY)] = {G.OK: s, G.FAILED: S.ENDED}  # a skipped generation fails
        # Every non-final state has a timer that ends it: in a call, media silence.
        t[(s, E.RECV_MEDIA)] = {G.OK: s}
        t[(s, E.TIMER_MEDIA)] = {G.OK: S.ENDED}
    t[(S.SWITCHING, E.TIMER_SWITCH)] = {G.OK: S.ENDED}
    return {k: MappingProxyType(v) for k, v in t.items()}


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


# (state, event) -> {guard: the one target state}; read-only.
TRANSITIONS: Mapping[tuple[CallState, Event], Moves] = MappingProxyType(_table())
# Received in one of these (state, event) pairs, a message is held (at most ``MAX_HELD``)
# and handled as soon as a later state takes it; it is dropped if the call ends first.
DEFERRED: frozenset[tuple[CallState, Event]] = _deferred()


def target(state: CallState, event: Event, guard: Guard) -> CallState:
    """The state ``event`` with outcome ``guard`` leads to from ``state``.

    Raises ``AssertionError`` for a move the table lacks: a bug in the caller of this
    function (``Call`` checks that an event is in the table before it runs its checks).
    """
    target_ = TRANSITIONS.get((state, event), {}).get(guard)
    if target_ is None:
        raise AssertionError(f"{state.name} --{event.name}/{guard.name}--> not in the table")
    return target_


def state_diagram() -> str:
    """A mermaid state diagram drawn from ``TRANSITIONS`` (self-loops left out)."""
    lines = ["stateDiagram-v2", "    [*] --> IDLE"]
    edges: dict[tuple[str, str], list[str]] = {}
    for (src, ev), moves in TRANSITIONS.items():
        for dst in sorted(set(moves.values()), key=lambda s: s.value):
            if dst != src:
                edges.setdefault((src.name, dst.name), []).append(ev.name)
    for (src_name, dst_name), evs in edges.items():
        lines.append(f"    {src_name} --> {dst_name}: {', '.join(evs)}")
    lines.append("    ENDED --> [*]")
    return "\n".join(lines)


def state_table() -> str:
    """``TRANSITIONS`` as a markdown table: one row per (state, event, guard)."""
    lines = ["| state | event | guard | next state |", "| --- | --- | --- | --- |"]
    for (src, ev), moves in TRANSITIONS.items():
        for guard, dst in moves.items():
            lines.append(f"| {src.name} | {ev.name} | {guard.name} | {dst.name} |")
    return "\n".join(lines)
