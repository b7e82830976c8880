"""A client's encrypted UDP link to its gateway (Trio).

    async with open_gateway_link(VOICE, ("127.0.0.1", 31001), gw_key, mailbox) as link:
        await link.send(packet)                 # one Sphinx packet, sealed
        delivery = await link.receive()         # next real delivery (dummies are skipped)

The link attaches with the mailbox id only, resends ATTACH until the gateway acknowledges
it in a downlink slot, then seals every uplink packet and opens every downlink frame.
Received deliveries wait in a bounded channel; when the application does not keep up the
newest are dropped and counted (``stats``), never buffered without bound.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from overlay import ClientLink, Delivery, DownlinkKind, Geometry, LinkError

from ._tasks import open_background

ATTACH_RETRY_S = 0.2  # seconds between ATTACH resends
ATTACH_TIMEOUT_S = 5.0  # seconds to wait for the gateway's acknowledgement
RECEIVE_QUEUE = 4096  # deliveries buffered for the application at most


class AttachError(Exception):
    """The gateway did not acknowledge the attach in time."""


@dataclass(frozen=True, slots=True)
class Received:
    """A real delivery and the local time (``time.time()``) its frame arrived."""

    delivery: Delivery
    at: float


class GatewayLink:
    """An attached link; create it with :func:`open_gateway_link`."""

    def __init__(self, link: ClientLink, sock: trio.socket.SocketType, raw: socket.socket):
        self._link = link
        self._sock = sock
        self._raw = raw
        self._send_ch, self._recv_ch = trio.open_memory_channel[Received](RECEIVE_QUEUE)
        self._attached = trio.Event()
        self.stats: Counter[str] = Counter()

    async def send(self, packet: bytes) -> None:
        """Seal and send one Sphinx packet (a full socket buffer drops it, counted)."""
        try:
            self._raw.send(self._link.seal_uplink(packet))
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

    async def _reader(self) -> None:
        while True:
            try:
                data = await self._sock.recv(4096)
            except OSError:
                continue
            now = time.time()
            try:
                d = self._link.open_downlink(data)
            except LinkError:
                self.stats["bad_frames"] += 1
                continue
            self.stats["frames"] += 1
            if d.kind is DownlinkKind.DUMMY:
                self.stats["dummies"] += 1
            elif d.kind is DownlinkKind.ATTACHED:
                self._attached.set()
            else:
                self.stats["deliveries"] += 1
                try:
                    self._send_ch.send_nowait(Received(d, now))
                except trio.WouldBlock:
                    self.stats["receive_dropped"] += 1

    async def _attach(self, timeout_s: float) -> None:
        frame = self._link.attach_frame()
        with trio.move_on_after(timeout_s):
            while not self._attached.is_set():
                try:
                    self._raw.send(frame)
                except OSError:
                    self.stats["send_failed"] += 1  # gateway not up (yet): keep trying
                with trio.move_on_after(ATTACH_RETRY_S):
                    await self._attached.wait()
        if not self._attached.is_set():
            raise AttachError("the gateway did not acknowledge the attach")


@asynccontextmanager
async def open_gateway_link(
    geometry: Geometry,
    address: tuple[str, int],
    gateway_key: bytes,
    mailbox: bytes,
    *,
    timeout_s: float = ATTACH_TIMEOUT_S,
) -> AsyncIterator[GatewayLink]:
    """Attach to the gateway at ``address`` (its client port) and keep the link open.

    ``gateway_key`` is the gateway's 32-byte X25519 epoch key, ``mailbox`` our 16-byte
    mailbox id, ``timeout_s`` seconds to wait for the acknowledgement. Raises
    ``AttachError`` when the gateway does not acknowledge in time; errors raised in the
    ``async with`` block leave as themselves (not inside an ``ExceptionGroup``).
    """
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    raw.setblocking(False)
    raw.connect(address)
    sock = trio.socket.from_stdlib_socket(raw)
    link = GatewayLink(ClientLink(geometry, gateway_key, mailbox), sock, raw)
    try:
        async with open_background() as nursery:  # the reader ends with the block
            nursery.start_soon(link._reader)
            await link._attach(timeout_s)
            yield link
    finally:
        sock.close()
