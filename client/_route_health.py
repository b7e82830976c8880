"""Is our call route still carrying media? Judged from the peer's receiver reports, sans-IO.

    >>> from client import ReceiverReport
    >>> health = RouteHealth()
    >>> health.sent(0.0); health.report(ReceiverReport(0, 10, 0, 0), 0.3)
    >>> health.check(0.3) is None
    True
    >>> for k in range(1, 60):  # we keep sending; the peer's count stays at 1
    ...     health.sent(0.04 * k)
    ...     health.report(ReceiverReport(0, 10 + 40 * k, 0, 0), 0.3 + 0.04 * k)
    >>> health.check(2.7)  # the first report 2 s after our first unacknowledged packet
    'stalled'
    >>> health.check(2.74) is None  # cooling down: the new route needs time to show
    True

A call direction with a route of its own (``overlay.RoutePolicy(per_call=True)``) learns
from the peer's reports (``client._media.ReceiverReport``, one in each of its media
packets) whether our packets get through. ``RouteHealth`` says the route failed when

- ``stalled``: reports keep arriving but the peer's ``received`` count has not risen above
  the highest seen in ``stall_s`` since the first media packet we sent after it last did;
- ``lossy``: over the reports of the last ``loss_window_s``, the share of our sequence
  numbers the peer did not receive (the spans of its ``highest_seq`` and ``received``, as
  RTCP's fraction lost) is above ``loss_threshold``, counted over ``min_loss_packets`` or
  more;
- ``silent``: no report at all for ``no_report_s`` while we kept sending media (both
  directions may be dead; moving our route is cheap, and the peer judges its own).

After it said so (the edge moves to a spare route) it judges nothing for ``cooldown_s``,
longer than a round trip plus the stall window, and starts afresh: the new route's first
packets need a round trip to show in a report. Times are seconds on one clock, passed in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from overlay import UsageError, is_int

from ._media import ReceiverReport

STALL_S = 2.0  # seconds without progress in the peer's count while we send
NO_REPORT_S = 3.0  # seconds without any report while we send
LOSS_WINDOW_S = 2.0  # seconds of reports the loss is measured over
LOSS_THRESHOLD = 0.30  # share of our packets lost over the window
MIN_LOSS_PACKETS = 20  # sequence numbers the window must span before loss is judged
COOLDOWN_S = 4.0  # seconds after a verdict before judging again
# Reports kept for the loss: a peer sends one per media packet (25/s, 50 in the window);
# a peer that sends far more costs no more than this many (memory, and work per check).
MAX_WINDOW_REPORTS = 256


@dataclass(frozen=True, slots=True)
class RouteHealthConfig:
    """The thresholds of :class:`RouteHealth` (seconds, a fraction, a packet count).
    Raises ``UsageError`` for a non-positive time, a threshold outside (0, 1), a negative
    packet count, or a cooldown not longer than ``stall_s``."""

    stall_s: float = STALL_S
    no_report_s: float = NO_REPORT_S
    loss_window_s: float = LOSS_WINDOW_S
    loss_threshold: float = LOSS_THRESHOLD
    min_loss_packets: int = MIN_LOSS_PACKETS
    cooldown_s: float = COOLDOWN_S

    def __post_init__(self) -> None:
        for name in ("stall_s", "no_report_s", "loss_window_s", "cooldown_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise UsageError(f"{name}: want a positive number of seconds, got {value!r}")
        threshold, packets = self.loss_threshold, self.min_loss_packets
        if not 0 < threshold < 1:
            raise UsageError(f"loss_threshold: want a fraction in (0, 1), got {threshold!r}")
        if not is_int(packets) or packets < 0:
            raise UsageError(f"min_loss_packets: want an integer >= 0, got {packets!r}")
        if self.cooldown_s <= self.stall_s:
            raise UsageError("cooldown_s must be longer than stall_s (plus a round trip)")


class RouteHealth:
    """The verdict on one call direction's route from the peer's reports (see the module
    docstring). Feed it ``sent(now)`` for each media packet we send and ``report(r, at)``
    for each report that arrives; ``check(now)`` returns ``"stalled"``, ``"lossy"`` or
    ``"silent"`` once when the route failed (then cools down), else None. ``reset(now)``
    starts afresh (a new call, or a route moved for another reason)."""

    def __init__(self, config: RouteHealthConfig | None = None):
        self.config = config or RouteHealthConfig()
        self.reset(-math.inf)

    def reset(self, now: float) -> None:
        """Forget everything; judge nothing before ``now + 0`` (seconds)."""
        self._quiet_until = now  # no verdict before this
        self._received: int | None = None  # the peer's last count
        self._unacked_from: float | None = None  # first send after the count last moved
        self._last_report: float | None = None
        self._first_send: float | None = None  # since the last reset
        self._last_send: float | None = None
        # (at, highest, received), the oldest dropped past MAX_WINDOW_REPORTS
        self._window: deque[tuple[float, int, int]] = deque(maxlen=MAX_WINDOW_REPORTS)

    def sent(self, now: float) -> None:
        """We sent a media packet at ``now``."""
        if self._first_send is None:
            self._first_send = now
        if self._unacked_from is None:
            self._unacked_from = now
        self._last_send = now

    def report(self, report: ReceiverReport, at: float) -> None:
        """A receiver report from the peer arrived at ``at``."""
        self._last_report = at
        # Reports overtake each other in the mixnet: only a count above any seen is progress.
        if self._received is None or report.received > self._received:
            self._received = report.received
            self._unacked_from = None  # progress: the stall clock waits for our next send
        self._window.append((at, report.highest_seq, report.received))
        while self._window[0][0] < at - self.config.loss_window_s:
            self._window.popleft()

    def loss(self) -> float | None:
        """Share of our packets lost over the reports in the window, or None while they span
        fewer than ``min_loss_packets`` sequence numbers."""
        if len(self._window) < 2:
            return None
        highest = [h for _, h, _ in self._window]  # in arrival order, not always rising
        received = [r for _, _, r in self._window]
        expected = max(highest) - min(highest)
        if expected < max(1, self.config.min_loss_packets):
            return None
        return min(1.0, max(0.0, 1 - (max(received) - min(received)) / expected))

    def check(self, now: float) -> str | None:
        """The verdict at ``now``: a reason the route failed (then nothing for
        ``cooldown_s``), or None."""
        cfg = self.config
        if now < self._quiet_until or self._first_send is None or self._last_send is None:
            return None
        reason = None
        unacked = self._unacked_from
        if self._last_report is not None and unacked is not None:
            if self._last_report - unacked >= cfg.stall_s:
                reason = "stalled"
        if reason is None and (loss := self.loss()) is not None and loss > cfg.loss_threshold:
            reason = "lossy"
        if reason is None:
            heard = self._last_report if self._last_report is not None else self._first_send
            if self._last_send - max(heard, self._first_send) >= cfg.no_report_s:
                reason = "silent"
        if reason is not None:
            self.reset(now + cfg.cooldown_s)
        return reason
