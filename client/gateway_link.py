"""A client's encrypted UDP link to its gateway (Trio).

    key = MailboxKey.generate()                 # kept by the client; contacts get key.mailbox_id
    async with open_gateway_link(VOICE, ("127.0.0.1", 31001), gw_key, key) as link:
        await link.send(packet)                 # one Sphinx packet, sealed
        delivery = await link.receive()         # next real delivery (dummies are skipped)

The link attaches by proving it holds the mailbox's key (ATTACH, the gateway's CHALLENGE
cookie, ATTACH with the proof; docs/wire-link.md), then seals every uplink packet and opens
every downlink frame. It watches its session: when no authenticated downlink frame came for
``silence_s`` seconds, or the gateway's UNKNOWN_SESSION hint is not contradicted by one
within ``hint_confirm_s`` (gateway restart, idle expiry), it attaches again with a fresh
ephemeral key, backing off exponentially with jitter up to ``REATTACH_CAP_S``, and counts it
(``stats["reattaches"]``). A re-attach is made under the gateway key the link holds then:
the gateway keeps only the keys of the epochs around the current one, so a long-lived client
gives the link each new epoch's key (``set_gateway_key``, from the topology it adopts); the
session in use keeps its own keys. Leaving the ``async with`` block sends LEAVE, so the
gateway stops the downlink at once. Received deliveries wait in a bounded channel; when the
application does not keep up the newest are dropped and counted (``stats``), never buffered
without bound. ``stats["sent_bytes"]`` and ``stats["received_bytes"]`` count the UDP payload
bytes of every frame sent (UPLINK, ATTACH, LEAVE) and every datagram received; ``meter``
holds the same per second each way (``TrafficMeter``). Every time the link reads or keeps is
on Trio's clock (``trio.current_time()``, monotonic): arrival stamps, the session watch and
the backoff; a step of the wall clock changes none of them.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from overlay import (
    Challenged,
    ClientLink,
    Delivery,
    DownlinkKind,
    Geometry,
    LinkError,
    LinkEvent,
    MailboxKey,
    Rng,
    SessionUnknown,
    SessionWatch,
    backoff_delay,
)

from ._tasks import open_background

ATTACH_RETRY_S = 0.2  # seconds between ATTACH resends
ATTACH_TIMEOUT_S = 5.0  # seconds to wait for the gateway's acknowledgement
RECEIVE_QUEUE = 4096  # deliveries buffered for the application at most
SILENCE_S = 2.0  # seconds without an authenticated downlink frame: the session is lost
HINT_CONFIRM_S = 0.3  # seconds an UNKNOWN_SESSION hint waits to be contradicted
REATTACH_TRY_S = 1.0  # seconds one re-attach attempt resends ATTACH
REATTACH_BASE_S = 0.25  # seconds: first backoff between failed re-attach attempts
REATTACH_CAP_S = 8.0  # seconds: the backoff's cap
LEAVE_COPIES = 3  # the LEAVE datagram is sent this many times (UDP may lose one)


class AttachError(Exception):
    """The gateway did not acknowledge the attach in time."""


@dataclass(frozen=True, slots=True)
class Received:
    """A real delivery and when its frame was read: ``at`` in seconds on Trio's clock
    (``trio.current_time()``, monotonic; the clock ``trio.sleep_until`` runs on)."""

    delivery: Delivery
    at: float


class TrafficMeter:
    """UDP payload bytes and datagrams each way, per whole second of a monotonic clock.

    ``record("up" | "down", nbytes, now)``; ``series()`` gives ``{"t0": first second,
    "up_bytes": [...], "up_packets": [...], "down_bytes": [...], "down_packets": [...]}``,
    one entry per second from ``t0`` (seconds with nothing are 0). Every datagram counts:
    cover, dummies, attach and leave frames included."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[int]] = {}  # second -> [up B, up n, down B, down n]

    def record(self, way: str, nbytes: int, now: float) -> None:
        bucket = self._buckets.setdefault(int(now), [0, 0, 0, 0])
        at = 0 if way == "up" else 2
        bucket[at] += nbytes
        bucket[at + 1] += 1

    def series(self, offset_s: float = 0.0) -> dict[str, object]:
        """The per-second counts; ``offset_s`` is added to ``t0`` (to name the second on
        another clock, e.g. CLOCK_MONOTONIC from Trio's)."""
        if not self._buckets:
            return {"t0": None, "up_bytes": [], "up_packets": [], "down_bytes": [],
                    "down_packets": []}  # fmt: skip
        lo, hi = min(self._buckets), max(self._buckets)
        rows = [self._buckets.get(s, [0, 0, 0, 0]) for s in range(lo, hi + 1)]
        names = ("up_bytes", "up_packets", "down_bytes", "down_packets")
        out: dict[str, object] = {"t0": lo + offset_s}
        for i, name in enumerate(names):
            out[name] = [r[i] for r in rows]
        return out


class GatewayLink:
    """An attached link; create it with :func:`open_gateway_link`."""

    def __init__(
        self,
        geometry: Geometry,
        gateway_key: bytes,
        mailbox_key: MailboxKey,
        sock: trio.socket.SocketType,
        raw: socket.socket,
        *,
        silence_s: float = SILENCE_S,
        hint_confirm_s: float = HINT_CONFIRM_S,
        rng: Rng = os.urandom,
    ) -> None:
        self._geometry, self._gateway_key, self._mailbox_key = geometry, gateway_key, mailbox_key
        self._rng = rng
        self._link = self._new_link()  # the session in use
        self._pending: ClientLink | None = None  # a session being attached
        self._sock = sock
        self._raw = raw
        self._send_ch, self._recv_ch = trio.open_memory_channel[Received](RECEIVE_QUEUE)
        self._acked = trio.Event()
        self._progress = trio.Event()  # something arrived for the attach under way
        self._wake = trio.Event()  # something arrived that the session watch should see
        self._rekeyed = trio.Event()  # a new gateway key: a re-attach waiting may try now
        self._watch = SessionWatch(silence_s, hint_confirm_s, trio.current_time())
        self.attached = False
        self.stats: Counter[str] = Counter()
        self.meter = TrafficMeter()  # every datagram each way, per second of Trio's clock

    def _send_raw(self, frame: bytes) -> None:
        """Send one datagram (OSError as the socket raises it), counted in
        ``stats["sent_bytes"]`` and the meter."""
        self._raw.send(frame)
        self.stats["sent_bytes"] += len(frame)
        self.meter.record("up", len(frame), trio.current_time())

    @property
    def gateway_key(self) -> bytes:
        """The gateway's X25519 public key the next (re-)attach uses (32 bytes)."""
        return self._gateway_key

    def set_gateway_key(self, gateway_key: bytes) -> None:
        """Attach under ``gateway_key`` (the gateway's 32-byte X25519 key for a new epoch)
        from now on; the session in use is kept, and a re-attach waiting out its backoff
        tries again at once. ValueError for a key that is not 32 bytes."""
        if len(gateway_key) != 32:
            raise ValueError("a gateway key is 32 bytes")
        if gateway_key == self._gateway_key:
            return
        self._gateway_key = gateway_key
        self.stats["gateway_key_changes"] += 1
        self._rekeyed.set()  # ends a re-attach attempt under the old key, or its backoff
        self._progress.set()

    def _new_link(self) -> ClientLink:
        return ClientLink(self._geometry, self._gateway_key, self._mailbox_key, rng=self._rng)

    async def send(self, packet: bytes) -> None:
        """Seal and send one Sphinx packet (a full socket buffer drops it, counted)."""
        try:
            frame = self._link.seal_uplink(packet)
            self._send_raw(frame)
            self.stats["sent"] += 1
        except BlockingIOError:
            self.stats["send_dropped"] += 1
        except OSError:  # e.g. ICMP port unreachable reported on a connected socket
            self.stats["send_failed"] += 1
        await trio.lowlevel.checkpoint()

    async def receive(self) -> Received:
        """The next real delivery (message or reply)."""
        return await self._recv_ch.receive()

    def receive_nowait(self) -> Received | None:
        """A waiting delivery, or None."""
        try:
            return self._recv_ch.receive_nowait()
        except trio.WouldBlock:
            return None

    def _open(self, data: bytes) -> tuple[ClientLink, LinkEvent] | None:
        links = [self._link]
        if self._pending is not None and self._pending is not self._link:
            links.insert(0, self._pending)
        for link in links:
            try:
                return link, link.receive(data)
            except LinkError:
                continue
        return None

    async def _reader(self) -> None:
        while True:
            try:
                data = await self._sock.recv(4096)
            except OSError:
                continue
            self.stats["received_bytes"] += len(data)
            now = trio.current_time()  # monotonic: a wall-clock step never moves a stamp
            self.meter.record("down", len(data), now)
            opened = self._open(data)
            if opened is None:
                self.stats["bad_frames"] += 1
                continue
            link, event = opened
            match event:
                case Challenged():
                    self.stats["challenges"] += 1
                    self._progress.set()
                case SessionUnknown():
                    self.stats["unknown_session_hints"] += 1
                    if link is self._link:
                        self._watch.on_hint(now)
                        self._wake.set()
                case Delivery(kind=kind):
                    self.stats["frames"] += 1
                    if link is self._pending and kind is DownlinkKind.ATTACHED:
                        self._link, self._pending = link, None
                        self._acked.set()
                        self._progress.set()
                    if link is self._link:
                        self._watch.on_downlink(now)
                    self._deliver(event, now)

    def _deliver(self, d: Delivery, now: float) -> None:
        if d.kind is DownlinkKind.DUMMY:
            self.stats["dummies"] += 1
        elif d.kind is not DownlinkKind.ATTACHED:
            self.stats["deliveries"] += 1
            try:
                self._send_ch.send_nowait(Received(d, now))
            except trio.WouldBlock:
                self.stats["receive_dropped"] += 1

    async def _attach(self, link: ClientLink, timeout_s: float) -> bool:
        """Attach ``link`` (ATTACH, CHALLENGE, ATTACH with proof, ATTACHED); True if acked."""
        self._pending, self._acked = link, trio.Event()
        with trio.move_on_after(timeout_s):
            while not self._acked.is_set() and not self._rekeyed.is_set():
                self._progress = trio.Event()
                try:
                    frame = link.attach_frame()
                    self._send_raw(frame)  # counts its bytes
                except OSError:
                    self.stats["send_failed"] += 1  # gateway not up (yet): keep trying
                with trio.move_on_after(ATTACH_RETRY_S):
                    await self._progress.wait()
        if self._pending is link:
            self._pending = None
        if self._acked.is_set():
            self._watch.on_downlink(trio.current_time())
            self.attached = True
        return self._acked.is_set()

    async def _keeper(self) -> None:
        """Re-attach whenever the session watch says the session is lost."""
        while True:
            now = trio.current_time()
            if not self._watch.lost(now):
                self._wake = trio.Event()
                with trio.move_on_after(self._watch.next_check(now)):
                    await self._wake.wait()
                continue
            self.stats["sessions_lost"] += 1
            attempt = 0
            while True:
                self._rekeyed = trio.Event()
                if await self._attach(self._new_link(), REATTACH_TRY_S):
                    break
                self.stats["reattach_failed"] += 1
                delay = backoff_delay(
                    attempt, base_s=REATTACH_BASE_S, cap_s=REATTACH_CAP_S, rng=self._rng
                )
                with trio.move_on_after(delay):
                    await self._rekeyed.wait()  # a new key is worth trying at once
                attempt = 0 if self._rekeyed.is_set() else attempt + 1
            self.stats["reattaches"] += 1

    def _leave(self) -> None:
        """Send LEAVE for the current session (best effort: never blocks, never raises)."""
        if not self.attached:
            return
        frame = self._link.leave_frame()
        for _ in range(LEAVE_COPIES):
            try:
                self._send_raw(frame)
            except OSError:
                self.stats["send_failed"] += 1
        self.attached = False


@asynccontextmanager
async def open_gateway_link(
    geometry: Geometry,
    address: tuple[str, int],
    gateway_key: bytes,
    mailbox_key: MailboxKey,
    *,
    timeout_s: float = ATTACH_TIMEOUT_S,
    silence_s: float = SILENCE_S,
    bind: str | None = None,
) -> AsyncIterator[GatewayLink]:
    """Attach to the gateway at ``address`` (its client port) and keep the link open.

    ``gateway_key`` is the gateway's 32-byte X25519 epoch key, ``mailbox_key`` the
    :class:`~overlay.MailboxKey` that owns our mailbox, ``timeout_s`` seconds to wait for
    the first acknowledgement, ``silence_s`` seconds without downlink after which the link
    re-attaches, ``bind`` the local IP address to send from (default: any; a port the
    kernel picks). Raises ``AttachError`` when the gateway does not acknowledge in time;
    errors raised in the ``async with`` block leave as themselves (not inside an
    ``ExceptionGroup``). On the way out the link sends LEAVE.
    """
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    raw.setblocking(False)
    if bind is not None:
        try:
            raw.bind((bind, 0))
        except OSError:
            raw.close()
            raise
    raw.connect(address)
    sock = trio.socket.from_stdlib_socket(raw)
    link = GatewayLink(geometry, gateway_key, mailbox_key, sock, raw, silence_s=silence_s)
    try:
        async with open_background() as nursery:  # the reader ends with the block
            nursery.start_soon(link._reader)
            if not await link._attach(link._link, timeout_s):
                raise AttachError("the gateway did not acknowledge the attach")
            nursery.start_soon(link._keeper)
            try:
                yield link
            finally:
                link._leave()
    finally:
        sock.close()
