"""The local security log: mode changes and refused downgrades, on this device only.

    >>> from client import PrivacyMode, SecurityEvent, SecurityLog
    >>> log = SecurityLog(clock=lambda: 1700000000.0)
    >>> log.append(SecurityEvent.MODE_SWITCH_REFUSED, PrivacyMode.PARANOID, PrivacyMode.FAST,
    ...            approved=False)
    >>> [(r.event.value, r.mode_from.name, r.mode_to.name, r.approved) for r in log]
    [('mode_switch_refused', 'PARANOID', 'FAST', False)]

Nothing here leaves the device and nothing secret is recorded: an event, the two modes,
whether it was approved, and the time from the injected ``clock`` (the log's
owner gives the wall clock; without one ``at`` is None: nothing in ``client`` reads the
wall clock) (seed 3.3, 4.5). The log is bounded
(``max_records``, oldest dropped first); ``sink``, if given, also receives every record
as it is appended (a profile stores them; the log does no I/O of its own).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from overlay import UsageError

from .messages import PrivacyMode

MAX_SECURITY_RECORDS = 1000  # records kept in memory by default


class SecurityEvent(StrEnum):
    MODE_CHANGED = "mode_changed"  # a switch completed (either side asked)
    MODE_SWITCH_REFUSED = "mode_switch_refused"  # a switch request refused or undecided
    DOWNGRADE_REFUSED = "downgrade_refused"  # a Mode C offer/answer without the hybrid keys


@dataclass(frozen=True, slots=True)
class SecurityRecord:
    at: float | None  # seconds since the epoch from the log's clock; None without one
    event: SecurityEvent
    mode_from: PrivacyMode
    mode_to: PrivacyMode
    # The change went through: approved by the user where the table needs it (a less
    # private mode), by policy otherwise. False for every refusal.
    approved: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: ``at`` (unix seconds or None), ``event`` (its value), ``from`` and
        ``to`` (the modes' names), ``approved``.

            >>> r = SecurityRecord(1.5, SecurityEvent.DOWNGRADE_REFUSED, PrivacyMode.PARANOID,
            ...                    PrivacyMode.PARANOID, False)
            >>> SecurityRecord.from_dict(r.to_dict()) == r
            True
        """
        return {"at": self.at, "event": self.event.value, "from": self.mode_from.name,
                "to": self.mode_to.name, "approved": self.approved}  # fmt: skip

    @classmethod
    def from_dict(cls, d: object) -> SecurityRecord:
        """The record ``to_dict`` gave; UsageError naming the field for anything else."""
        if not isinstance(d, dict):
            raise UsageError("a security record must be an object")
        at = d.get("at")
        if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)
                               or not math.isfinite(at)):  # fmt: skip
            raise UsageError(f"at: want unix seconds or null, got {at!r}")
        try:
            event = SecurityEvent(str(d.get("event")))
        except ValueError:
            raise UsageError(f"event: unknown {str(d.get('event'))[:40]!r}") from None
        modes = []
        for key in ("from", "to"):
            name = d.get(key)
            if not isinstance(name, str) or name not in PrivacyMode.__members__:
                raise UsageError(f"{key}: want a mode name, got {str(name)[:40]!r}")
            modes.append(PrivacyMode[name])
        if not isinstance(d.get("approved"), bool):
            raise UsageError("approved: want true or false")
        return cls(None if at is None else float(at), event, modes[0], modes[1], d["approved"])


class SecurityLog:
    """An append-only, bounded, in-memory log of security events; local only."""

    def __init__(
        self,
        *,
        max_records: int = MAX_SECURITY_RECORDS,
        sink: Callable[[SecurityRecord], None] | None = None,
        clock: Callable[[], float] | None = None,
    ):
        if not isinstance(max_records, int) or max_records < 1:
            raise UsageError("max_records must be a positive integer")
        self._records: deque[SecurityRecord] = deque(maxlen=max_records)
        self._sink, self._clock = sink, clock

    def append(
        self, event: SecurityEvent, mode_from: PrivacyMode, mode_to: PrivacyMode, approved: bool
    ) -> None:
        """Record one event. Raises ``UsageError`` for values of the wrong types."""
        if not isinstance(event, SecurityEvent):
            raise UsageError("event must be a SecurityEvent")
        if not isinstance(mode_from, PrivacyMode) or not isinstance(mode_to, PrivacyMode):
            raise UsageError("mode_from and mode_to must be PrivacyMode values")
        at = None if self._clock is None else self._clock()
        record = SecurityRecord(at, event, mode_from, mode_to, bool(approved))
        self._records.append(record)
        if self._sink is not None:
            self._sink(record)

    def __iter__(self) -> Iterator[SecurityRecord]:
        return iter(tuple(self._records))

    def __len__(self) -> int:
        return len(self._records)
