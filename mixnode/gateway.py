"""Sans-IO gateway role: client sessions, owned mailboxes, constant-rate downlink.

    >>> from overlay import VOICE, ClientLink, Delivery, DownlinkKind, MailboxKey
    >>> from overlay import generate_private_key, public_key
    >>> sk, key = generate_private_key(), MailboxKey.generate()
    >>> gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    >>> client = ClientLink(VOICE, public_key(sk), key)
    >>> challenge = gw.on_datagram(client.attach_frame(), "addr", now=0.0, private_keys=[sk])
    >>> type(client.receive(challenge.datagram)).__name__
    'Challenged'
    >>> gw.on_datagram(client.attach_frame(), "addr", now=0.0, private_keys=[sk])
    >>> gw.enqueue(key.mailbox_id, Delivery(DownlinkKind.MESSAGE, b"hi"), now=0.0)
    >>> [client.open_downlink(d).kind.name for _, d in gw.due_slots(0.0) + gw.due_slots(0.02)]
    ['ATTACHED', 'MESSAGE']

A client attaches in two steps (docs/wire-link.md): its first ATTACH gets a CHALLENGE
carrying a stateless cookie bound to its address, and only an ATTACH with that cookie and a
valid mailbox proof (an Ed25519 signature by the key whose hash is the mailbox id) opens a
session. Until then the gateway stores nothing and answers each ATTACH with one shorter
datagram, so it can neither be filled nor used as an amplifier; and a contact who knows a
mailbox id cannot take that mailbox's downlink. A LEAVE ends the session at once; an UPLINK
for a session the gateway does not hold gets a short UNKNOWN_SESSION hint so the client can
re-attach (a hint never longer than the frame it answers).

Every attached client gets exactly one downlink frame per slot (``1 / delivery_rate_hz``
seconds): the oldest queued delivery if there is one, otherwise a dummy; all frames have the
same size and are encrypted, so the downlink never shows whether a call is on. Mailboxes are
bounded: when one is full its oldest frame is dropped (a voice frame that old is useless
anyway), and a frame older than ``max_age_s`` at its slot is dropped rather than sent late.
Every drop is counted. Every ``now`` is the edge's monotonic clock in seconds (never the
wall clock, whose steps would stall or burst the downlink).
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from overlay import (
    CookieJar,
    Delivery,
    DownlinkKind,
    Frame,
    FrameType,
    GatewaySession,
    Geometry,
    LinkCodec,
    PacketError,
    Rng,
    attach_cookie,
)

DEFAULT_MAILBOX_CAPACITY = 64  # frames queued per mailbox at most
DEFAULT_MAX_AGE_S = 1.0  # seconds a frame may wait in a mailbox before it is dropped
DEFAULT_MAX_MAILBOXES = 10_000  # mailboxes (attached or not) a gateway holds at most
DEFAULT_SESSION_IDLE_S = 30.0  # seconds without an uplink frame before a session ends
_DUMMY = Delivery(DownlinkKind.DUMMY, b"")


@dataclass(frozen=True, slots=True)
class Uplink:
    """An UPLINK frame authenticated: hand its Sphinx packet to the mix workers."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``datagram`` back to the sender's address (never longer than what it got)."""

    datagram: bytes


GatewayAction = Uplink | Reply | None


def peer_bytes(addr: Hashable) -> bytes:
    """The canonical bytes of a client address that a cookie binds (its ``repr``).

    For the socket's ``(host, port)`` tuples the repr is one exact string per address.
    """
    return repr(addr).encode()


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
    """Client sessions and mailboxes of one gateway, driven by the edge's clock.

    ``rng`` (default ``os.urandom``) draws the cookie secret; ``counters`` holds aggregate
    counts only: ``attach``, ``challenge``, ``session_replaced``, ``leave``,
    ``session_expired``, ``unknown_session_hint``, ``uplink``, ``deliveries``, ``dummies``,
    ``slot_skipped`` and ``drop:<reason>``.
    """

    def __init__(
        self,
        geometry: Geometry,
        *,
        delivery_rate_hz: float,
        mailbox_capacity: int = DEFAULT_MAILBOX_CAPACITY,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_mailboxes: int = DEFAULT_MAX_MAILBOXES,
        session_idle_s: float = DEFAULT_SESSION_IDLE_S,
        rng: Rng = os.urandom,
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
        self._cookies = CookieJar(rng=rng)
        self._sessions: dict[bytes, _Session] = {}
        self._by_mailbox: dict[bytes, bytes] = {}  # mailbox id -> its one session id
        self._mailboxes: dict[bytes, _Mailbox] = {}

    # -- uplink ------------------------------------------------------------------------

    def on_datagram(
        self, datagram: bytes, addr: Hashable, now: float, private_keys: Sequence[bytes]
    ) -> GatewayAction:
        """Handle one client datagram from ``addr`` at ``now``; ``private_keys`` are the
        gateway's current X25519 keys. Returns Uplink (a Sphinx packet for the workers),
        Reply (a CHALLENGE or UNKNOWN_SESSION for ``addr``) or None; a bad frame is counted
        as ``drop:<reason>`` and never raises.
        """
        try:
            frame = self.codec.parse(datagram)
            if frame.type is FrameType.ATTACH:
                return self._attach(frame, addr, now, private_keys)
            if frame.type is FrameType.LEAVE:
                self._leave(frame)
                return None
            if frame.type is not FrameType.UPLINK:
                raise PacketError("unexpected frame type on the client port")
            s = self._sessions.get(GatewaySession.session_id_of(frame))
            if s is None:
                self.counters["drop:no_session"] += 1
                self.counters["unknown_session_hint"] += 1
                return Reply(self.codec.unknown_session(frame))
            packet = s.link.open_uplink(frame)
        except PacketError as exc:
            self.counters["drop:" + exc.reason] += 1
            return None
        s.addr = addr  # the client may have moved (NAT rebinding); the frame authenticated
        s.last_seen = now
        self.counters["uplink"] += 1
        return Uplink(packet)

    def _attach(
        self, frame: Frame, addr: Hashable, now: float, private_keys: Sequence[bytes]
    ) -> GatewayAction:
        eph_pub, cookie = attach_cookie(frame)
        peer = peer_bytes(addr)
        if not self._cookies.check(cookie, peer, eph_pub, now):
            # Stateless: nothing is stored, and the answer is shorter than the question.
            self.counters["challenge"] += 1
            return Reply(self.codec.challenge(frame, self._cookies.make(peer, eph_pub, now)))
        link = GatewaySession.accept(self.codec, private_keys, frame)  # raises: counted
        sid = link.keys.session_id
        old = self._sessions.get(sid)
        if old is not None:  # a resent ATTACH: acknowledge again, keep counters
            old.ack_pending, old.addr, old.last_seen = True, addr, now
            return None
        if not self._ensure_mailbox(link.mailbox, now):
            return None
        replaced = self._by_mailbox.get(link.mailbox)
        if replaced is not None:  # one session per mailbox: its owner attached again
            self._end(replaced)
            self.counters["session_replaced"] += 1
        self._sessions[sid] = _Session(link, addr, now, now)
        self._by_mailbox[link.mailbox] = sid
        self.counters["attach"] += 1
        return None

    def _leave(self, frame: Frame) -> None:
        sid = GatewaySession.session_id_of(frame)
        s = self._sessions.get(sid)
        if s is None:  # no hint: a client that left must not be told to come back
            self.counters["drop:no_session"] += 1
            return
        s.link.open_leave(frame)  # raises: counted, the session stays
        self._end(sid)
        self.counters["leave"] += 1

    def _end(self, sid: bytes) -> None:
        s = self._sessions.pop(sid)
        if self._by_mailbox.get(s.link.mailbox) == sid:
            del self._by_mailbox[s.link.mailbox]

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
        for m, box in list(self._mailboxes.items()):
            if m not in self._by_mailbox and now - box.touched > self.max_age_s:
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
                self._end(sid)
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
