"""The listener's control socket: line-delimited JSON between ``listen`` and the commands.

    >>> parse_request(b'{"type": "dial", "contact": "ada", "duration_s": 5}')
    Dial(contact='ada', duration_s=5.0)
    >>> parse_request(b'{"type": "mute", "on": true}')
    Mute(on=True)
    >>> parse_request(b'{"type": "dial"}')
    Traceback (most recent call last):
    ...
    client.control.ControlError: dial: 'contact' must be a contact name (1..64 characters)
    >>> encode_message({"type": "error", "error": "no such contact"})
    b'{"error": "no such contact", "type": "error"}\\n'

The socket is ``PROFILE/control.sock`` (AF_UNIX, stream, mode 0600 inside the 0700 profile
directory), made by ``phantom-call listen`` and removed when it exits; a second listener on
the same profile is refused while the first answers on it. Each message is one JSON object
on one line (UTF-8, at most ``MAX_LINE`` bytes) with a ``type``. The listener serves at
most 32 connections at once, closes one whose command reads none of its replies for 5 s,
and one from another user (where the system names it) unanswered.

Requests (command -> listener): ``{"type": "dial", "contact": NAME, "duration_s": S|null}``
(the connection then stays open for the call: closing it hangs up, reason "dialer gone"),
``{"type": "hangup"}``, ``{"type": "answer"}``, ``{"type": "decline"}``, ``{"type":
"mute", "on": true|false}`` (mute or unmute the current call's microphone: silence goes
out at the same rate and size), ``{"type": "status"}``. Replies (listener -> command):
``{"type": "event", "event": "dialing" | "ringing" | "connected" | "muted" | "unmuted" |
"ended", "t": CLOCK_MONOTONIC seconds, "reason": ...}`` (to the connection that dialed),
``{"type": "status", "online": true, "contacts": N, "calls": N, "call": null | {"contact",
"role", "trust", "mode", "events", "muted"}}``, ``{"type": "ok"}`` and ``{"type": "error",
"error": TEXT}``. A malformed request is answered with an error and changes nothing; it
never ends the listener. :func:`request_message` is the inverse of :func:`parse_request`
(what a command sends).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TypeAlias

from overlay import PhantomError

from .contacts import contact_name_problem

MAX_LINE = 16 * 1024  # bytes of one control message, newline included
MAX_DURATION_S = 86_400.0


class ControlError(PhantomError):
    """A control message that cannot be used; the message says why (sent back as the
    ``error`` of an error reply)."""


@dataclass(frozen=True, slots=True)
class Dial:
    """Call the contact ``contact``; hang up after ``duration_s`` seconds if given."""

    contact: str
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class Simple:
    """A request without arguments: ``hangup``, ``answer``, ``decline`` or ``status``."""

    type: str


@dataclass(frozen=True, slots=True)
class Mute:
    """Mute (``on``) or unmute the microphone of the current call."""

    on: bool


Request: TypeAlias = Dial | Simple | Mute
SIMPLE_TYPES = ("hangup", "answer", "decline", "status")


def parse_request(line: bytes) -> Request:
    """One request line (without or with its newline); ControlError naming the problem for
    anything else: not UTF-8 JSON, not an object, an unknown type, a bad field."""
    if len(line) > MAX_LINE:
        raise ControlError(f"a control message is at most {MAX_LINE} bytes")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        raise ControlError("not a JSON line") from None
    if not isinstance(obj, dict):
        raise ControlError("a control message is a JSON object")
    kind = obj.get("type")
    if kind in SIMPLE_TYPES:
        return Simple(kind)
    if kind == "mute":
        on = obj.get("on")
        if not isinstance(on, bool):
            raise ControlError("mute: 'on' must be true (mute) or false (unmute)")
        return Mute(on)
    if kind != "dial":
        wanted = ", ".join(("dial", "mute", *SIMPLE_TYPES))
        raise ControlError(f"unknown type {str(kind)[:32]!r}: want one of {wanted}")
    name = obj.get("contact")
    if not isinstance(name, str) or contact_name_problem(name) is not None:
        raise ControlError("dial: 'contact' must be a contact name (1..64 characters)")
    duration = obj.get("duration_s")
    if duration is not None:
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not 0 < duration <= MAX_DURATION_S  # first: a 400-digit int has no float
            or not math.isfinite(duration)
        ):
            raise ControlError(f"dial: 'duration_s' must be seconds in (0, {MAX_DURATION_S:g}]")
        duration = float(duration)
    return Dial(name, duration)


def request_message(request: Request) -> dict[str, object]:
    """The message of ``request`` (for :func:`encode_message`); parsing it gives
    ``request`` back."""
    if isinstance(request, Dial):
        return {"type": "dial", "contact": request.contact, "duration_s": request.duration_s}
    if isinstance(request, Mute):
        return {"type": "mute", "on": request.on}
    return {"type": request.type}


def encode_message(message: dict[str, object]) -> bytes:
    """One message as its line (sorted keys, newline-terminated)."""
    return json.dumps(message, sort_keys=True).encode() + b"\n"


def parse_reply(line: bytes) -> dict[str, object]:
    """One line from the listener as a dict with a ``type``; ControlError otherwise."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ControlError("the listener sent something that is not a JSON line") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ControlError("the listener sent a message without a type")
    return obj


class LineReader:
    """Splits a byte stream into lines of at most ``MAX_LINE`` bytes. ``feed`` returns the
    complete lines so far (without newlines); ControlError for a longer line."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines = []
        while (i := self._buf.find(b"\n")) >= 0:
            lines.append(bytes(self._buf[:i]))
            del self._buf[: i + 1]
        if len(self._buf) > MAX_LINE:
            self._buf.clear()
            raise ControlError(f"a control message is at most {MAX_LINE} bytes")
        return lines
