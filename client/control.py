"""The listener's control socket: line-delimited JSON between ``listen`` and the commands.

    >>> parse_request(b'{"type": "dial", "contact": "ada", "duration_s": 5}')
    Dial(contact='ada', duration_s=5.0)
    >>> parse_request(b'{"type": "dial"}')
    Traceback (most recent call last):
    ...
    client.control.ControlError: dial: 'contact' must be a contact name (1..64 characters)
    >>> encode_message({"type": "error", "error": "no such contact"})
    b'{"error": "no such contact", "type": "error"}\\n'

The socket is ``PROFILE/control.sock`` (AF_UNIX, stream, mode 0600 inside the 0700 profile
directory), made by ``phantom-call listen`` and removed when it exits; a second listener on
the same profile is refused while the first answers on it. Each message is one JSON object
on one line (UTF-8, at most ``MAX_LINE`` bytes) with a ``type``.

Requests (command -> listener): ``{"type": "dial", "contact": NAME, "duration_s": S|null}``
(the connection then stays open for the call: closing it hangs up, reason "dialer gone"),
``{"type": "hangup"}``, ``{"type": "answer"}``, ``{"type": "decline"}``, ``{"type":
"status"}``. Replies (listener -> command): ``{"type": "event", "event": "dialing" |
"ringing" | "connected" | "ended", "t": CLOCK_MONOTONIC seconds, "reason": ...}``,
``{"type": "status", ...}``, ``{"type": "ok"}`` and ``{"type": "error", "error": TEXT}``.
A malformed request is answered with an error and changes nothing; it never ends the
listener.
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


Request: TypeAlias = Dial | Simple
SIMPLE_TYPES = ("hangup", "answer", "decline", "status")


def parse_request(line: bytes) -> Request:
    """One request line (without or with its newline); ControlError naming the problem for
    anything else: not UTF-8 JSON, not an object, an unknown type, a bad field."""
    if len(line) > MAX_LINE:
        raise ControlError(f"a control message is at most {MAX_LINE} bytes")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError("not a JSON line") from None
    if not isinstance(obj, dict):
        raise ControlError("a control message is a JSON object")
    kind = obj.get("type")
    if kind in SIMPLE_TYPES:
        return Simple(kind)
    if kind != "dial":
        wanted = ", ".join(("dial", *SIMPLE_TYPES))
        raise ControlError(f"unknown type {str(kind)[:32]!r}: want one of {wanted}")
    name = obj.get("contact")
    if not isinstance(name, str) or contact_name_problem(name) is not None:
        raise ControlError("dial: 'contact' must be a contact name (1..64 characters)")
    duration = obj.get("duration_s")
    if duration is not None:
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not math.isfinite(duration)
            or not 0 < duration <= MAX_DURATION_S
        ):
            raise ControlError(f"dial: 'duration_s' must be seconds in (0, {MAX_DURATION_S:g}]")
        duration = float(duration)
    return Dial(name, duration)


def encode_message(message: dict[str, object]) -> bytes:
    """One message as its line (sorted keys, newline-terminated)."""
    return json.dumps(message, sort_keys=True).encode() + b"\n"


def parse_reply(line: bytes) -> dict[str, object]:
    """One line from the listener as a dict with a ``type``; ControlError otherwise."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
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
