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

Cost and fairness (docs/wire-link.md, "Limits"): every per-datagram operation is O(1) in
the number of sessions and mailboxes (dicts by session id, by mailbox and by source host;
no scan), and a downlink round visits each due session once. Memory is bounded whatever
arrives: at most ``max_sessions`` sessions, ``max_sessions_per_source`` of them per source
host, and ``max_mailboxes`` mailboxes. When a proved ATTACH finds its source at its cap, the
source's least recently active session ends; when the gateway is full, the least recently
active session of the source holding the most sessions ends (max-min fairness), so a flood
from some hosts never locks out a client from another. A mailbox without a session is freed
once its newest frame is older than ``max_age_s`` (everything in it would be stale), or
earlier, oldest first, when a new mailbox needs its room. A session's downlink follows its
authenticated UPLINKs to a new address, but an address no cookie proved gets at most
``AMPLIFICATION`` times the bytes it sent (RFC 9000 section 8), so forging a source address
on one's own session buys no amplifier.
"""

from __future__ import annotations

import math
import os
from collections import Counter, OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from overlay import (
    COOKIE_PERIOD_S,
    CookieJar,
    Delivery,
    DownlinkKind,
    DropReason,
    Frame,
    FrameType,
    GatewaySession,
    Geometry,
    LinkCodec,
    PacketError,
    Rng,
    attach_cookie,
)

# Seconds an ended session's ATTACH is remembered: longer than any cookie is valid.
ENDED_MEMORY_S = 2 * COOKIE_PERIOD_S + 1.0
DEFAULT_MAILBOX_CAPACITY = 64  # frames queued per mailbox at most
DEFAULT_MAX_AGE_S = 1.0  # seconds a frame may wait in a mailbox before it is dropped
# Sessions one gateway serves: its downlink runs in one process (one core); a session costs
# about 15 us per 20 ms slot (its downlink frame with the send, half an uplink), so one core
# serves about 1,350 (benchmarks/gateway.py; docs/operators.md, "Gateway capacity").
DEFAULT_MAX_SESSIONS = 1_000
# Sessions one source host may hold: several clients behind one NAT (and every testnet
# client, all on 127.0.0.1) fit; one host cannot take more than this share of the gateway.
DEFAULT_MAX_SESSIONS_PER_SOURCE = 64
DEFAULT_MAX_MAILBOXES = 10_000  # mailboxes (attached or not) a gateway holds at most
DEFAULT_SESSION_IDLE_S = 30.0  # seconds without an uplink frame before a session ends
# Bytes the downlink may send to a roamed-to address per byte received from it (QUIC's
# anti-amplification limit before path validation, RFC 9000 section 8).
AMPLIFICATION = 3
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


def source_of(addr: Hashable) -> Hashable:
    """The source host a session counts against: the host of a ``(host, port)`` address
    (every port of one host is one source), any other address as it is."""
    if isinstance(addr, tuple) and addr:
        host: Hashable = addr[0]
        return host
    return addr


@dataclass(slots=True, eq=False)
class _Session:
    link: GatewaySession
    addr: Hashable
    source: Hashable
    next_k: int  # grid index of its next regular downlink slot
    last_seen: float
    ack_pending: bool = True
    eph: bytes = b""  # the client's ephemeral key from its ATTACH: names the ATTACH itself
    uplinked: bool = False  # an UPLINK opened: the client has its ATTACHED
    # Downlink frames this session may still send to an address it roamed to (None: the
    # address answered a cookie): anti-amplification, as QUIC before path validation.
    credit: int | None = None


@dataclass(slots=True)
class _Mailbox:
    frames: deque[tuple[float, Delivery]] = field(default_factory=deque)
    touched: float = 0.0


class _Sources:
    """Sessions by source host, least recently active first, and the hosts by how many
    sessions they hold; every operation O(1)."""

    __slots__ = ("_by_count", "lru", "max_count")

    def __init__(self) -> None:
        self.lru: dict[Hashable, OrderedDict[bytes, None]] = {}
        self._by_count: dict[int, dict[Hashable, None]] = {}
        self.max_count = 0

    def count(self, src: Hashable) -> int:
        sids = self.lru.get(src)
        return 0 if sids is None else len(sids)

    def add(self, src: Hashable, sid: bytes) -> None:
        sids = self.lru.setdefault(src, OrderedDict())
        sids[sid] = None
        self._recount(src, len(sids) - 1, len(sids))

    def remove(self, src: Hashable, sid: bytes) -> None:
        sids = self.lru[src]
        del sids[sid]
        if not sids:
            del self.lru[src]
        self._recount(src, len(sids) + 1, len(sids))

    def touch(self, src: Hashable, sid: bytes) -> None:
        self.lru[src].move_to_end(sid)

    def oldest(self, src: Hashable) -> bytes:
        """The least recently active session of ``src`` (which holds at least one)."""
        return next(iter(self.lru[src]))

    def heaviest(self) -> Hashable:
        """A source holding the most sessions (there is at least one session)."""
        return next(iter(self._by_count[self.max_count]))

    def _recount(self, src: Hashable, old: int, new: int) -> None:
        if old:
            bucket = self._by_count[old]
            del bucket[src]
            if not bucket:
                del self._by_count[old]
        if new:
            self._by_count.setdefault(new, {})[src] = None
        if new > self.max_count:
            self.max_count = new
        elif old == self.max_count and old not in self._by_count:
            self.max_count = new  # src was alone at the top, one lower now


class GatewayCore:
    """Client sessions and mailboxes of one gateway, driven by the edge's clock.

    ``rng`` (default ``os.urandom``) draws the cookie secret. Caps: ``max_sessions`` in all,
    ``max_sessions_per_source`` per source host (:func:`source_of`), ``max_mailboxes``
    (must exceed ``max_sessions``: an attaching client always finds room). ``counters``
    holds aggregate counts only: ``attach``, ``challenge``, ``attach_replayed``,
    ``session_replaced``,
    ``session_evicted``, ``roam_refused``, ``leave``, ``session_expired``,
    ``mailbox_expired``, ``mailbox_evicted``, ``slot_withheld``, ``unknown_session_hint``,
    ``uplink``, ``deliveries``, ``dummies`` and ``slot_skipped``; ``drops`` counts frames
    dropped by DropReason (the daemon exports ``ATTACH_PROOF`` also as the event
    ``attach_refused``).
    ``steps`` counts the entries the core's loops visited (slots, expired or evicted
    mailboxes): a cost meter for tests and benchmarks, not a metric. Raises ValueError on a
    bad setting.
    """

    def __init__(
        self,
        geometry: Geometry,
        *,
        delivery_rate_hz: float,
        mailbox_capacity: int = DEFAULT_MAILBOX_CAPACITY,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_sessions_per_source: int = DEFAULT_MAX_SESSIONS_PER_SOURCE,
        max_mailboxes: int = DEFAULT_MAX_MAILBOXES,
        session_idle_s: float = DEFAULT_SESSION_IDLE_S,
        rng: Rng = os.urandom,
    ) -> None:
        if delivery_rate_hz <= 0:
            raise ValueError("delivery_rate_hz must be > 0")
        if not 1 <= max_sessions_per_source <= max_sessions < max_mailboxes:
            raise ValueError("need 1 <= max_sessions_per_source <= max_sessions < max_mailboxes")
        self.codec = LinkCodec(geometry)
        self.slot_s = 1.0 / delivery_rate_hz
        self.mailbox_capacity = mailbox_capacity
        self.max_age_s = max_age_s
        self.max_sessions = max_sessions
        self.max_sessions_per_source = max_sessions_per_source
        self.max_mailboxes = max_mailboxes
        self.session_idle_s = session_idle_s
        # Downlink frames one UPLINK pays for at an address not proved by a cookie, and
        # the most that can be saved up (2 s of slots).
        down = self.codec.frame_len(FrameType.DOWNLINK)
        self._earn = AMPLIFICATION * self.codec.frame_len(FrameType.UPLINK) // down
        self._credit_cap = max(self._earn, round(2 * delivery_rate_hz))
        self.counters: Counter[str] = Counter()
        self.drops: Counter[DropReason] = Counter()
        self.steps = 0
        self._cookies = CookieJar(rng=rng)
        self._sessions: dict[bytes, _Session] = {}
        self._by_mailbox: dict[bytes, bytes] = {}  # mailbox id -> its one session id
        self._by_eph: dict[bytes, bytes] = {}  # ATTACH ephemeral key -> its live session id
        # ATTACHes whose session ended (LEAVE, replaced, evicted, expired), by ephemeral key,
        # until their cookie can no longer be valid: a replay of one revives nothing.
        self._ended: OrderedDict[bytes, float] = OrderedDict()
        self._sources = _Sources()
        self._mailboxes: dict[bytes, _Mailbox] = {}
        self._idle: OrderedDict[bytes, None] = OrderedDict()  # no session; oldest touched first
        self._depth = 0  # frames in all mailboxes
        # Downlink slots lie on one grid (grid0 + k * slot_s), so that the edge wakes once per
        # slot for all clients. A new session's ATTACHED goes out at once (_asap); after that
        # every session is due at the next grid point, so _due stays in slot order by
        # appending alone: a FIFO, O(1) per slot.
        self._grid0: float | None = None
        self._asap: deque[tuple[float, bytes, _Session]] = deque()
        self._due: deque[tuple[int, bytes, _Session]] = deque()

    # -- uplink ------------------------------------------------------------------------

    def on_datagram(
        self, datagram: bytes, addr: Hashable, now: float, private_keys: Sequence[bytes]
    ) -> GatewayAction:
        """Handle one client datagram from ``addr`` at ``now``; ``private_keys`` are the
        gateway's current X25519 keys. Returns Uplink (a Sphinx packet for the workers),
        Reply (a CHALLENGE or UNKNOWN_SESSION for ``addr``) or None; a bad frame is counted
        in ``drops`` and never raises. O(1) in the number of sessions.
        """
        try:
            frame = self.codec.parse(datagram)
            if frame.type is FrameType.ATTACH:
                return self._attach(frame, addr, now, private_keys)
            if frame.type is FrameType.LEAVE:
                self._leave(frame, now)
                return None
            if frame.type is not FrameType.UPLINK:
                raise PacketError("unexpected frame type on the client port")
            sid = GatewaySession.session_id_of(frame)
            s = self._sessions.get(sid)
            if s is None:
                self.drops[DropReason.NO_SESSION] += 1
                self.counters["unknown_session_hint"] += 1
                return Reply(self.codec.unknown_session(frame))
            packet = s.link.open_uplink(frame)
        except PacketError as exc:
            self.drops[exc.reason] += 1
            return None
        s.uplinked = True
        # The UPLINK shows the client has its ATTACHED: an acknowledgement still pending (a
        # resent, or replayed, ATTACH before this UPLINK re-armed it) would only repeat it.
        s.ack_pending = False
        self._seen(s, sid, addr, now, proved=False)
        self.counters["uplink"] += 1
        return Uplink(packet)

    def _seen(self, s: _Session, sid: bytes, addr: Hashable, now: float, *, proved: bool) -> None:
        """An authenticated frame of ``s`` came from ``addr`` (``proved``: an ATTACH whose
        cookie proved the address): it is active, and its downlink follows it (NAT
        rebinding) unless the new source is at its cap. The UPLINK frame (``proved`` False)
        earns downlink credit at its address: a source address anyone can forge never gets
        more than ``AMPLIFICATION`` times the bytes sent from it."""
        s.last_seen = now
        src = source_of(addr)
        if src == s.source:
            self._sources.touch(src, sid)
        elif self._sources.count(src) >= self.max_sessions_per_source:
            self.counters["roam_refused"] += 1  # the downlink stays where it was
            return
        else:
            self._sources.remove(s.source, sid)
            self._sources.add(src, sid)
            s.source = src
        if proved:
            s.credit = None
        elif addr != s.addr:
            s.credit = self._earn
        elif s.credit is not None:
            s.credit = min(s.credit + self._earn, self._credit_cap)
        s.addr = addr

    def _attach(
        self, frame: Frame, addr: Hashable, now: float, private_keys: Sequence[bytes]
    ) -> GatewayAction:
        eph_pub, cookie = attach_cookie(frame)
        peer = peer_bytes(addr)
        if not self._cookies.check(cookie, peer, eph_pub, now):
            # Stateless: nothing is stored, and the answer is shorter than the question.
            self.counters["challenge"] += 1
            return Reply(self.codec.challenge(frame, self._cookies.make(peer, eph_pub, now)))
        # An ATTACH is good for its own session's setup only. Once that session ended, or
        # once the client's first UPLINK showed it has its ATTACHED, a copy is a replay (an
        # on-path observer can resend it from the client's address while the cookie is
        # valid): it changes nothing and costs no public-key work.
        self._forget_ended(now)
        live = self._by_eph.get(eph_pub)
        if eph_pub in self._ended or (live is not None and self._sessions[live].uplinked):
            self.counters["attach_replayed"] += 1
            return None
        link = GatewaySession.accept(self.codec, private_keys, frame)  # raises: counted
        sid = link.keys.session_id
        old = self._sessions.get(sid)
        if old is not None:  # a resent ATTACH: acknowledge again, keep counters
            old.ack_pending = True
            self._seen(old, sid, addr, now, proved=True)
            return None
        replaced = self._by_mailbox.get(link.mailbox)
        if replaced is not None:  # one session per mailbox: its owner attached again
            self._end(replaced, now)
            self.counters["session_replaced"] += 1
        src = source_of(addr)
        self._make_room(src, now)
        if link.mailbox not in self._mailboxes and self._new_mailbox(link.mailbox, now) is None:
            return None  # not reached while max_sessions < max_mailboxes; counted
        self._idle.pop(link.mailbox, None)
        if self._grid0 is None:
            self._grid0 = now
        s = _Session(link, addr, src, self._grid_after(now), now, eph=eph_pub)
        self._sessions[sid] = s
        self._by_eph[eph_pub] = sid
        self._by_mailbox[link.mailbox] = sid
        self._sources.add(src, sid)
        self._asap.append((now, sid, s))
        self.counters["attach"] += 1
        return None

    def _forget_ended(self, now: float) -> None:
        """Drop ended ATTACHes whose cookies have lapsed (oldest first; amortised O(1))."""
        ended = self._ended
        while ended:
            eph, until = next(iter(ended.items()))
            if until > now:
                break
            del ended[eph]

    def _make_room(self, src: Hashable, now: float) -> None:
        """End one session if a new one from ``src`` would pass a cap (module docstring)."""
        if self._sources.count(src) >= self.max_sessions_per_source:
            victim = self._sources.oldest(src)
        elif len(self._sessions) >= self.max_sessions:
            victim = self._sources.oldest(self._sources.heaviest())
        else:
            return
        self._end(victim, now)
        self.counters["session_evicted"] += 1

    def _leave(self, frame: Frame, now: float) -> None:
        sid = GatewaySession.session_id_of(frame)
        s = self._sessions.get(sid)
        if s is None:  # no hint: a client that left must not be told to come back
            self.drops[DropReason.NO_SESSION] += 1
            return
        s.link.open_leave(frame)  # raises: counted, the session stays
        self._end(sid, now)
        self.counters["leave"] += 1

    def _end(self, sid: bytes, now: float) -> None:
        """Forget session ``sid`` (its queued slot is skipped when it comes up); its
        mailbox becomes idle and expires unless its owner attaches again."""
        s = self._sessions.pop(sid)
        self._sources.remove(s.source, sid)
        self._by_eph.pop(s.eph, None)
        self._ended[s.eph] = now + ENDED_MEMORY_S
        while len(self._ended) > self.max_sessions * 4:  # bounded whatever happens
            self._ended.popitem(last=False)
        mailbox = s.link.mailbox
        if self._by_mailbox.get(mailbox) == sid:
            del self._by_mailbox[mailbox]
            box = self._mailboxes.get(mailbox)
            if box is not None:
                box.touched = now
                self._idle[mailbox] = None

    # -- mailboxes ---------------------------------------------------------------------

    def _new_mailbox(self, mailbox: bytes, now: float) -> _Mailbox | None:
        """A new idle mailbox; at ``max_mailboxes`` the oldest idle one makes room."""
        if len(self._mailboxes) >= self.max_mailboxes:
            if not self._idle:
                self.drops[DropReason.TOO_MANY_MAILBOXES] += 1
                return None
            oldest, _ = self._idle.popitem(last=False)
            self._free(oldest, DropReason.MAILBOX_EVICTED)
            self.counters["mailbox_evicted"] += 1
        box = self._mailboxes[mailbox] = _Mailbox(touched=now)
        self._idle[mailbox] = None
        return box

    def _free(self, mailbox: bytes, reason: DropReason) -> None:
        self.steps += 1
        box = self._mailboxes.pop(mailbox)
        self._depth -= len(box.frames)
        self.drops[reason] += len(box.frames)

    def expire(self, now: float) -> None:
        """Free the mailboxes without a session whose newest frame is older than
        ``max_age_s``: amortized O(1) per call (each mailbox is freed once)."""
        idle, boxes = self._idle, self._mailboxes
        while idle:
            oldest = next(iter(idle))
            if now - boxes[oldest].touched <= self.max_age_s:
                return
            del idle[oldest]
            self._free(oldest, DropReason.STALE)
            self.counters["mailbox_expired"] += 1

    def enqueue(self, mailbox: bytes, delivery: Delivery, now: float) -> None:
        """Queue a delivery for ``mailbox``; a full mailbox drops its oldest frame. O(1)."""
        self.expire(now)
        box = self._mailboxes.get(mailbox)
        if box is None:
            box = self._new_mailbox(mailbox, now)
            if box is None:
                return
        elif mailbox in self._idle:
            self._idle.move_to_end(mailbox)
        box.touched = now
        if len(box.frames) >= self.mailbox_capacity:
            box.frames.popleft()
            self._depth -= 1
            self.drops[DropReason.MAILBOX_FULL] += 1
        box.frames.append((now, delivery))
        self._depth += 1

    @property
    def mailbox_depth(self) -> int:
        """Frames waiting over all mailboxes (kept as a count: O(1))."""
        return self._depth

    @property
    def mailboxes(self) -> int:
        """Mailboxes held, with or without a session."""
        return len(self._mailboxes)

    @property
    def sessions(self) -> int:
        """Attached clients."""
        return len(self._sessions)

    # -- downlink ----------------------------------------------------------------------

    def _grid_after(self, t: float) -> int:
        """The smallest k with ``grid0 + k * slot_s > t``."""
        g0 = t if self._grid0 is None else self._grid0
        k = math.floor((t - g0) / self.slot_s) + 1
        if g0 + (k - 1) * self.slot_s > t:
            k -= 1
        elif g0 + k * self.slot_s <= t:
            k += 1
        return k

    def _slot_time(self, k: int) -> float:
        assert self._grid0 is not None  # a slot exists only after the first ATTACH
        return self._grid0 + k * self.slot_s

    def next_deadline(self) -> float | None:
        """When the next downlink slot is due (None: no client attached). O(1) amortized."""
        for queue in (self._asap, self._due):
            while queue and self._sessions.get(queue[0][1]) is not queue[0][2]:
                queue.popleft()  # its session ended
                self.steps += 1
        if self._asap:
            return self._asap[0][0]
        return self._slot_time(self._due[0][0]) if self._due else None

    def due_slots(self, now: float) -> list[tuple[Hashable, bytes]]:
        """One (address, datagram) per attached client whose slot has come; also expires
        idle mailboxes. Visits each due session once: O(due sessions).

        A slot missed by more than one period is skipped, not caught up in a burst: the
        rate seen on the wire stays constant.
        """
        self.expire(now)
        out: list[tuple[Hashable, bytes]] = []
        asap, due, sessions = self._asap, self._due, self._sessions
        while asap and asap[0][0] <= now:
            _, sid, s = asap.popleft()
            self._send_slot(sid, s, now, out)
        while due and self._slot_time(due[0][0]) <= now:
            k, sid, s = due.popleft()
            if sessions.get(sid) is s and s.next_k == k:
                s.next_k = k + 1
                self._send_slot(sid, s, now, out)
            else:
                self.steps += 1  # its session ended
        return out

    def _send_slot(
        self, sid: bytes, s: _Session, now: float, out: list[tuple[Hashable, bytes]]
    ) -> None:
        self.steps += 1
        if self._sessions.get(sid) is not s:
            return  # ended before its first slot
        if now - s.last_seen > self.session_idle_s:
            self._end(sid, now)
            self.counters["session_expired"] += 1
            return
        if self._slot_time(s.next_k) <= now:
            self.counters["slot_skipped"] += 1
            s.next_k = self._grid_after(now)
        self._due.append((s.next_k, sid, s))
        if s.credit is not None:
            if s.credit <= 0:  # roamed and stopped sending: not an amplifier
                self.counters["slot_withheld"] += 1
                return
            s.credit -= 1
        out.append((s.addr, s.link.seal_downlink(self._next_delivery(s, now))))

    def _next_delivery(self, s: _Session, now: float) -> Delivery:
        if s.ack_pending:
            s.ack_pending = False
            return Delivery(DownlinkKind.ATTACHED, b"")
        box = self._mailboxes.get(s.link.mailbox)
        while box is not None and box.frames:
            at, delivery = box.frames.popleft()
            self._depth -= 1
            if now - at > self.max_age_s:
                self.drops[DropReason.STALE] += 1
                continue
            self.counters["deliveries"] += 1
            return delivery
        self.counters["dummies"] += 1
        return _DUMMY
