"""The call log: time, duration, direction and result of each call, nothing else.

    >>> log = CallLog()
    >>> log.append(CallRecord(1_700_000_000, 62, CallDirection.OUTGOING, CallResult.ANSWERED,
    ...                       "ada"))
    >>> log.append(CallRecord(1_700_900_000, 0, CallDirection.INCOMING, CallResult.MISSED,
    ...                       "bob"))
    >>> log.purge(now=1_701_000_000, retention_days={"ada": 7})   # ada's calls: 7 days
    1
    >>> [r.contact for r in log.records()]
    ['bob']

Seed 6.3: a local, encrypted log only (the profile stores it under the passphrase, see
``client.profile``), no sync, minimal metadata, optional auto-delete per contact. A record
holds the start time (unix seconds), the duration (whole seconds), the direction, the
result and the contact's local name: no address, key, mode, route or quality figure. The
retention is applied each time the profile opens the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from overlay import PhantomError

DAY_S = 86_400  # seconds in a day of the auto-delete rule
MAX_DURATION_S = 7 * DAY_S  # a longer call is a bug, not a record


class CallLogError(PhantomError):
    """A record out of range, or a malformed stored log; the message names the field."""


class CallDirection(StrEnum):
    """Who placed the call."""

    OUTGOING = "outgoing"
    INCOMING = "incoming"


class CallResult(StrEnum):
    """How the call went."""

    ANSWERED = "answered"  # media flowed; duration counts from the answer
    MISSED = "missed"  # incoming, never answered
    DECLINED = "declined"  # refused by the callee
    CANCELLED = "cancelled"  # the caller hung up before an answer
    FAILED = "failed"  # no answer through the network, or refused for security


_FIELDS = ("time_s", "duration_s", "direction", "result", "contact")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call: ``time_s`` (unix seconds, start), ``duration_s`` (whole seconds,
    0..604800), ``direction``, ``result``, ``contact`` (the local contact name).
    CallLogError for a value out of range."""

    time_s: int
    duration_s: int
    direction: CallDirection
    result: CallResult
    contact: str

    def __post_init__(self) -> None:
        if not isinstance(self.time_s, int) or not 0 <= self.time_s < 2**63:
            raise CallLogError(f"call record: time_s must be unix seconds, got {self.time_s!r}")
        if not isinstance(self.duration_s, int) or not 0 <= self.duration_s <= MAX_DURATION_S:
            raise CallLogError(
                f"call record: duration_s must be 0..{MAX_DURATION_S}, got {self.duration_s!r}"
            )
        if not isinstance(self.contact, str) or not self.contact:
            raise CallLogError("call record: contact must be a non-empty name")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: exactly the five fields."""
        return {
            "time_s": self.time_s,
            "duration_s": self.duration_s,
            "direction": self.direction.value,
            "result": self.result.value,
            "contact": self.contact,
        }

    @classmethod
    def from_dict(cls, d: object) -> CallRecord:
        """Parse :meth:`to_dict`'s form; CallLogError naming the problem."""
        if not isinstance(d, dict) or set(d) != set(_FIELDS):
            raise CallLogError(f"call log: expected a record with exactly {', '.join(_FIELDS)}")
        try:
            return cls(
                d["time_s"],
                d["duration_s"],
                CallDirection(d["direction"]),
                CallResult(d["result"]),
                d["contact"],
            )
        except ValueError as exc:
            raise CallLogError(f"call log: {exc}") from None


class CallLog:
    """The records in the order appended (sans-IO: the profile loads and stores it)."""

    def __init__(self, records: list[CallRecord] | None = None) -> None:
        self._records = list(records or [])

    def append(self, record: CallRecord) -> None:
        """Add ``record`` at the end."""
        self._records.append(record)

    def records(self, contact: str | None = None) -> list[CallRecord]:
        """Every record, oldest appended first; only ``contact``'s if given."""
        return [r for r in self._records if contact is None or r.contact == contact]

    def purge(self, now: float, retention_days: Mapping[str, int]) -> int:
        """Delete the records of each contact in ``retention_days`` that started more than
        that many days before ``now`` (unix seconds); returns how many went."""
        before = len(self._records)
        self._records = [
            r
            for r in self._records
            if r.contact not in retention_days
            or now - r.time_s <= retention_days[r.contact] * DAY_S
        ]
        return before - len(self._records)

    def forget(self, contact: str) -> int:
        """Delete every record of ``contact``; returns how many went."""
        before = len(self._records)
        self._records = [r for r in self._records if r.contact != contact]
        return before - len(self._records)

    def to_list(self) -> list[dict[str, object]]:
        """JSON-ready form."""
        return [r.to_dict() for r in self._records]

    @classmethod
    def from_list(cls, items: object) -> CallLog:
        """Parse :meth:`to_list`'s form; CallLogError for anything malformed."""
        if not isinstance(items, list):
            raise CallLogError("call log: expected a list of records")
        return cls([CallRecord.from_dict(d) for d in items])
