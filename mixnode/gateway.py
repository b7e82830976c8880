"""Sans-IO gateway role: client sessions, bounded mailboxes, constant-rate downlink.

    >>> import os
    >>> from overlay import VOICE, ClientLink, Delivery, DownlinkKind, public_key
    >>> sk = os.urandom(32)
    >>> gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    >>> client = ClientLink(VOICE, public_key(sk), b"M" * 16)
    >>> gw.on_datagram(client.attach_frame(), "addr", now=0.0, private_keys=[sk])
    >>> gw.enqueue(b"M" * 16, Delivery(DownlinkKind.MESSAGE, b"hi"), now=0.0)
    >>> [client.open_downlink(d).kind.name for _, d in gw.due_slots(0.0) + gw.due_slots(0.02)]
    ['ATTACHED', 'MESSAGE']

A client attaches with its mailbox id and nothing else. Every attached client gets exactly
one downlink frame per slot (``1 / delivery_rate_hz`` seconds): the oldest queued delivery
if there is one, otherwise a dummy; all frames have the same size and are encrypted, so the
downlink never shows whether a call is on. Mailboxes are bounded: when one is full its
oldest frame is dropped (a voice frame that old is useless anyway), and a frame older than
``max_age_s`` at its slot is dropped rather than sent late. Every drop is counted.
Every ``now`` is the edge's monotonic clock in seconds (never the wall clock, whose steps
would stall or burst the downlink).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from overlay import (
    Delivery,
    DownlinkKind,
    Frame,
    FrameType,
    GatewaySession,
    Geometry,
    LinkAuthError,
    LinkCodec,
    PacketError,
)

DEFAULT_MAILBOX_CAPACITY = 64  # frames queued per mailbox at most
DEFAULT_MAX_AGE_S = 1.0  # seconds a frame may wait in a mailbox before it is dropped
DEFAULT_MAX_MAILBOXES = 10_000  # mailboxes (attached or not) a gateway holds at most
DEFAULT_SESSION_IDLE_S = 30.0  # seconds without an uplink frame before a session ends
_DUMMY = Delivery(DownlinkKind.DUMMY, b"")


@dataclass(slots=True)
class _Session:
    link: GatewaySession
    addr: Hashable
    next_slot: float
    last_seen: float
    ack_pending: bool = True


@dataclass(slots=True)
class _Mailbox:
    frames: deque[tuple[float, Delivery]] = field(default_factory=deque)
    touched: float = 0.0


class GatewayCore:
    """Client sessions and mailboxes of one gateway, driven by the edge's clock."""

    def __init__(
        self,
        geometry: Geometry,
        *,
        delivery_rate_hz: float,
        mailbox_capacity: int = DEFAULT_MAILBOX_CAPACITY,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_mailboxes: int = DEFAULT_MAX_MAILBOXES,
        session_idle_s: float = DEFAULT_SESSION_IDLE_S,
    ) -> None:
        if delivery_rate_hz <= 0:
            raise ValueError("delivery_rate_hz must be > 0")
        self.codec = LinkCodec(geometry)
        self.slot_s = 1.0 / delivery_rate_hz
        self.mailbox_capacity = mailbox_capacity
        self.max_age_s = max_age_s
        self.max_mailboxes = max_mailboxes
        self.session_idle_s = session_idle_s
        self.counters: Counter[str] = Counter()
        self._sessions: dict[bytes, _Session] = {}
        self._mailboxes: dict[bytes, _Mailbox] = {}

    # -- uplink ------------------------------------------------------------------------

    def on_datagram(
        self, datagram: bytes, addr: Hashable, now: float, private_keys: Sequence[bytes]
    ) -> bytes | None:
        """Handle one client datagram; returns the Sphinx packet of an UPLINK frame.

        ATTACH opens (or refreshes) a session; bad frames are counted and return None.
        """
        try:
            frame = self.codec.parse(datagram)
            if frame.type is FrameType.ATTACH:
                self._attach(frame, addr, now, private_keys)
                return None
            if frame.type is not FrameType.UPLINK:
                raise PacketError("unexpected frame type on the client port")
            s = self._sessions.get(GatewaySession.session_id_of(frame))
            if s is None:
                self.counters["drop:no_session"] += 1
                return None
            packet = s.link.open_uplink(frame)
        except PacketError as exc:
            self.counters["drop:" + exc.reason] += 1
            return None
        s.addr = addr  # the client may have moved (NAT rebinding); the frame authenticated
        s.last_seen = now
        self.counters["uplink"] += 1
        return packet

    def _attach(
        self, frame: Frame, addr: Hashable, now: float, private_keys: Sequence[bytes]
    ) -> None:
        link = None
        for sk in private_keys:
            try:
                link = GatewaySession.accept(self.codec, sk, frame)
                break
            except LinkAuthError:
                continue
        if link is None:
            raise LinkAuthError("attach does not open under any current key")
        old = self._sessions.get(link.keys.session_id)
        if old is not None:  # a resent ATTACH: acknowledge again, keep counters
            old.ack_pending, old.addr, old.last_seen = True, addr, now
            return
        for sid, s in list(self._sessions.items()):  # one session per mailbox
            if s.link.mailbox == link.mailbox:
                del self._sessions[sid]
        if not self._ensure_mailbox(link.mailbox, now):
            return
        self._sessions[link.keys.session_id] = _Session(link, addr, now, now)
        self.counters["attach"] += 1

    # -- mailboxes ---------------------------------------------------------------------

    def _ensure_mailbox(self, mailbox: bytes, now: float) -> _Mailbox | None:
        box = self._mailboxes.get(mailbox)
        if box is None:
            if len(self._mailboxes) >= self.max_mailboxes:
                self._expire_mailboxes(now)
                if len(self._mailboxes) >= self.max_mailboxes:
                    self.counters["drop:too_many_mailboxes"] += 1
                    return None
            box = self._mailboxes[mailbox] = _Mailbox(touched=now)
        return box

    def _expire_mailboxes(self, now: float) -> None:
        attached = {s.link.mailbox for s in self._sessions.values()}
        for m, box in list(self._mailboxes.items()):
            if m not in attached and now - box.touched > self.max_age_s:
                self.counters["drop:stale"] += len(box.frames)
                del self._mailboxes[m]

    def enqueue(self, mailbox: bytes, delivery: Delivery, now: float) -> None:
        """Queue a delivery for ``mailbox``; a full mailbox drops its oldest frame."""
        box = self._ensure_mailbox(mailbox, now)
        if box is None:
            return
        box.touched = now
        if len(box.frames) >= self.mailbox_capacity:
            box.frames.popleft()
            self.counters["drop:mailbox_full"] += 1
        box.frames.append((now, delivery))

    @property
    def mailbox_depth(self) -> int:
        """Frames waiting over all mailboxes."""
        return sum(len(b.frames) for b in self._mailboxes.values())

    @property
    def sessions(self) -> int:
        """Attached clients."""
        return len(self._sessions)

    # -- downlink ----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the next downlink slot is due (None: no client attached)."""
        return min((s.next_slot for s in self._sessions.values()), default=None)

    def due_slots(self, now: float) -> list[tuple[Hashable, bytes]]:
        """One (address, datagram) per attached client whose slot has come.

        A slot missed by more than one period is skipped, not caught up in a burst: the
        rate seen on the wire stays constant.
        """
        out: list[tuple[Hashable, bytes]] = []
        for sid, s in list(self._sessions.items()):
            if now - s.last_seen > self.session_idle_s:
                del self._sessions[sid]
                self.counters["session_expired"] += 1
                continue
            if s.next_slot > now:
                continue
            s.next_slot += self.slot_s
            if s.next_slot <= now:
                self.counters["slot_skipped"] += 1
                s.next_slot = now + self.slot_s
            out.append((s.addr, s.link.seal_downlink(self._next_delivery(s, now))))
        return out

    def _next_delivery(self, s: _Session, now: float) -> Delivery:
        if s.ack_pending:
            s.ack_pending = False
            return Delivery(DownlinkKind.ATTACHED, b"")
        box = self._mailboxes.get(s.link.mailbox)
        while box is not None and box.frames:
            at, delivery = box.frames.popleft()
            if now - at > self.max_age_s:
                self.counters["drop:stale"] += 1
                continue
            self.counters["deliveries"] += 1
            return delivery
        self.counters["dummies"] += 1
        return _DUMMY
