"""The data plane of a node: one worker process per core, each owning one UDP socket.

    python -m mixnode._worker SETTINGS_HEX   # started by mixnode.daemon, never by hand

Why processes: Sphinx processing is CPU-bound and mostly Python between the libsodium
calls, so two threads process fewer packets than one (measured: 7.6k/s against 9.3k/s on
this machine). The daemon binds ``workers`` UDP sockets to the node's port with
SO_REUSEPORT and attaches a classic BPF program that picks the socket from a byte of the
packet's group element (alpha). That spreads the load, but it is no replay defence: one
alpha has eight encodings with the same shared secret (see mixnode.replay), so copies of a
packet can reach any worker. The replay decision is the node's: every worker maps the
same filter per epoch key (the daemon's memfd, named in the KeysFrame) and checks and
sets a tag under a lock, so exactly one copy passes, across restarts too.

Each worker is a plain loop around ``poll`` (no trio here: per-packet scheduling costs
would eat the second core). It speaks to the daemon over a UNIX datagram socket, one
control frame per datagram (overlay's KeysFrame, TopologyFrame, PacketFrame, QuitFrame
down; DeliveryFrame, StatsFrame up); it starts from overlay's WorkerSettings.

Clocks: the delay queue, late drops, link emulation and reports run on the monotonic
clock; the wall clock serves only key expiry (epochs are wall time). Kernel receive stamps
are wall time and are mapped onto the monotonic timeline by :class:`ReceiveStamps`, so a
wall clock step neither holds nor drops packets.

Previous hops: a datagram from a listed node's address (host and port as the topology
document writes them, so list nodes by IP address) counts as that node's, any other
sender as one class ``UNLISTED`` and uplink packets from the daemon as ``UPLINK``; the
core shares its delay queue fairly among these (spoofed sources cannot multiply shares).
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import heapq
import math
import os
import secrets
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

from mixnode.core import DeliverAt, ForwardAt, NodeCore
from mixnode.metrics import PROCESSING_BUCKETS_S
from mixnode.replay import ReplayFileError, open_replay_file
from overlay import (
    CONTROL_MAX,
    LINK_VERSION,
    ControlFrameError,
    DeliveryFrame,
    DropReason,
    EpochKey,
    FrameType,
    Hop,
    KeysFrame,
    LinkCodec,
    LinkError,
    NoRouteError,
    PacketFrame,
    QuitFrame,
    StatsFrame,
    TopologyDocument,
    TopologyFrame,
    WorkerSettings,
    decode_control,
    geometry_by_name,
    loop_route,
    sample_path,
)

NODE_FRAME_HEAD = bytes((LINK_VERSION, FrameType.NODE_PACKET))
unpack_timespec = struct.Struct("qq").unpack_from
SO_TIMESTAMPNS = 35  # Linux: kernel receive timestamps as struct timespec
SO_ATTACH_REUSEPORT_CBPF = 51  # Linux: classic BPF picks the socket in a reuseport group
ALPHA_BYTE_OFFSET = 3  # link header (2) + Sphinx version (1): first byte of alpha
RECV_BATCH = 64  # datagrams read per poll wake-up at most
PEER_QUEUE_MAX = 4096  # packets waiting per peer when the socket is full
EMULATION_MAX = 65536  # packets held by link-delay emulation at most
STATS_INTERVAL_S = 0.5  # seconds between statistics reports to the daemon
# What sendto can raise for an address taken from a document: OSError, and for a host that
# does not encode (the directory refuses such hosts; this keeps a worker alive regardless)
# TypeError, ValueError or UnicodeError. Each costs one packet, counted as send_failed.
SEND_ERRORS = (OSError, TypeError, ValueError, UnicodeError)
STEP_TOLERANCE_S = 0.001  # a change of (wall - monotonic) beyond this is a clock step
STEP_MEMORY_S = 2.0  # seconds after a step during which a stamp may still predate it
UNLISTED = "unlisted"  # previous hop of a datagram from an address no listed node has
UPLINK = "uplink"  # previous hop of a client's packet handed over by the daemon
Clock = Callable[[], float]


class ReceiveStamps:
    """Kernel receive stamps (SO_TIMESTAMPNS: CLOCK_REALTIME) on the monotonic timeline.

        >>> stamps = ReceiveStamps(mono=100.0, wall=5000.0)
        >>> stamps.arrival(4999.75, mono_now=100.0)  # stamped 250 ms ago
        99.75
        >>> stamps.observe(mono=100.0, wall=4970.0)  # the wall clock steps back 30 s
        >>> stamps.arrival(4999.75, mono_now=100.0)  # still 250 ms ago, not 30 s ahead
        99.75

    A stamp maps through the offset wall - monotonic. A step of the wall clock changes the
    offset, so a packet stamped before a step and read after it would seem to have waited
    the step (or to come from the future). The offset from before the latest step is kept
    for ``STEP_MEMORY_S``; of the two readings the later one that is not in the future
    wins, and an arrival is never later than ``mono_now``. Seconds throughout.
    """

    __slots__ = ("offset", "_before", "_before_until")

    def __init__(self, mono: float, wall: float) -> None:
        self.offset = wall - mono
        self._before = self.offset
        self._before_until = -math.inf

    def observe(self, mono: float, wall: float) -> None:
        """Note the clocks now (on every wake-up); a jump of their offset is a step."""
        offset = wall - mono
        if abs(offset - self.offset) > STEP_TOLERANCE_S:
            self._before, self._before_until = self.offset, mono + STEP_MEMORY_S
        self.offset = offset

    def arrival(self, stamp: float, mono_now: float) -> float:
        """The monotonic time at which a datagram with wall ``stamp`` arrived.

        A reading up to ``STEP_TOLERANCE_S`` in the future is rounding or slewing, not a
        step: it counts as valid (and is clamped to ``mono_now``).
        """
        at = stamp - self.offset
        if mono_now < self._before_until:
            other = stamp - self._before
            latest = mono_now + STEP_TOLERANCE_S
            if at > latest or at < other <= latest:
                at = other
        return at if at < mono_now else mono_now


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def shard_of(packet: bytes, workers: int) -> int:
    """The worker that owns a Sphinx packet (same rule as the BPF program)."""
    return packet[1] % workers if len(packet) > 1 else 0


def _udp_sockets_on_port(port: int) -> list[tuple[str, int]] | None:
    """(address, inode) of every IPv4 UDP socket bound to ``port`` (/proc/net/udp), or None.

    Linux only; None where the table cannot be read.
    """
    try:
        with open("/proc/net/udp", encoding="ascii") as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
    except OSError:
        return None
    # Columns: sl local_address rem_address st ... uid timeout inode; local is "ADDR:PORT"
    # in hex, the address as the host-order integer of the network-order bytes.
    out = []
    for row in rows:
        address, _, hex_port = row[1].partition(":")
        if int(hex_port, 16) == port:
            packed = int(address, 16).to_bytes(4, sys.byteorder)
            out.append((socket.inet_ntoa(packed), int(row[9])))
    return out


def bind_sharded(host: str, port: int, workers: int) -> list[socket.socket]:
    """``workers`` UDP sockets on one port, sharded by the packet's first alpha byte.

    The port must be free. SO_REUSEPORT would let a second node of the same user join this
    node's group and take a share of its packets, so a probe socket first binds the port
    without SO_REUSEPORT (EADDRINUSE if any socket holds it), and after binding the sockets
    on the port are compared with ours (Linux /proc/net/udp) to close the window between
    probe and bind. Raises OSError: EADDRINUSE for a busy port, EADDRNOTAVAIL for an
    address not on this host, ``socket.gaierror`` for a name that does not resolve.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, port))
        port = probe.getsockname()[1]  # port 0: the probe chose a free one
    socks: list[socket.socket] = []
    try:
        for _ in range(workers):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.bind((host, port))
        address = socks[0].getsockname()[0]
        ours = {os.fstat(s.fileno()).st_ino for s in socks}
        for other, inode in _udp_sockets_on_port(port) or []:
            if inode not in ours and (other == address or "0.0.0.0" in (other, address)):
                raise OSError(errno.EADDRINUSE, f"UDP port {port} is shared with another socket")
        if workers > 1:
            # A = packet[ALPHA_BYTE_OFFSET]; A %= workers; return A
            prog = (_SockFilter * 3)(
                _SockFilter(0x30, 0, 0, ALPHA_BYTE_OFFSET),
                _SockFilter(0x94, 0, 0, workers),
                _SockFilter(0x16, 0, 0, 0),
            )
            fprog = _SockFprog(3, ctypes.cast(prog, ctypes.POINTER(_SockFilter)))
            raw = ctypes.string_at(ctypes.addressof(fprog), ctypes.sizeof(fprog))
            socks[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, raw)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


class Worker:
    """One data-plane process: receive, process, hold, forward; report to the daemon."""

    def __init__(
        self,
        settings: WorkerSettings,
        udp: socket.socket,
        ctrl: socket.socket,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        """``clock`` schedules (monotonic seconds); ``wall_clock`` (unix seconds) is for
        key expiry only."""
        geometry = geometry_by_name(settings.geometry)
        self.clock = clock
        self.wall_clock = wall_clock
        self.stamps = ReceiveStamps(clock(), wall_clock())
        self.node_id = settings.node_id
        self.core = NodeCore(
            geometry,
            self.node_id,
            late_drop_s=settings.late_drop_ms / 1000.0,
            max_queue=settings.max_queue,
            cover_rate_hz=settings.cover_rate_hz,
        )
        self.codec = LinkCodec(geometry)
        self.node_frame_len = self.codec.frame_len(FrameType.NODE_PACKET)
        self.delay_mean_s = settings.link_delay_ms / 1000.0
        self.delay_jitter_s = settings.link_jitter_ms / 1000.0
        self.loss = settings.link_loss
        self.mix_delay_s = settings.mix_delay_ms / 1000.0
        self.udp = udp
        self.ctrl = ctrl
        udp.setblocking(False)
        ctrl.setblocking(False)
        udp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.peers: dict[bytes, tuple[str, int]] = {}
        self.prev_hops: dict[tuple[str, int], bytes] = {}  # listed address -> node id
        self.topology: TopologyDocument | None = None
        self.pending: dict[tuple[str, int], deque[bytes]] = {}
        self.emulated: list[tuple[float, int, tuple[str, int], bytes]] = []
        self.seq = 0
        self.hist = [0] * (len(PROCESSING_BUCKETS_S) + 1)  # processing seconds, cumulative
        self.hist_sum = 0.0
        self.running = True
        self.parent = os.getppid()
        self.sysrand = secrets.SystemRandom()

    # -- control -----------------------------------------------------------------------

    def on_control(self, msg: bytes, now: float) -> None:
        """Act on one control frame from the daemon; a malformed one is counted
        (``control_malformed``) and ignored."""
        try:
            frame = decode_control(msg)
        except ControlFrameError:
            self.core.counters["control_malformed"] += 1
            return
        match frame:
            case PacketFrame(packet):
                self.on_packet(packet, UPLINK, now, now)
            case KeysFrame(keys):
                self.install_keys(keys)
            case TopologyFrame(document):
                doc = TopologyDocument.from_bytes(document)  # verified by the daemon
                self.topology = doc
                self.core.max_delay_us = doc.max_delay_us
                self.peers = {n.node_id: (n.host, n.port) for n in doc.nodes}
                self.prev_hops = {(n.host, n.port): n.node_id for n in doc.nodes}
                me = doc.by_id.get(self.node_id)
                self.core.set_loop_paths(self.loop_path if me is not None else None, now)
            case QuitFrame():
                self.running = False
            case _:  # a frame for the daemon: not ours to act on
                self.core.counters["control_malformed"] += 1

    def install_keys(self, keys: Sequence[EpochKey]) -> None:
        """Install epoch keys from the daemon.

        A new key gets the node-wide filter: the daemon's memfd ``replay_fd``, opened as
        ``/proc/<daemon pid>/fd/<replay_fd>``. If it cannot be opened or belongs to another
        key, the key is not installed (fail closed: its packets drop as ``unknown_epoch``)
        and ``replay_file_errors`` counts it. A key without a replay fd (unit tests) gets a
        private filter.
        """
        wall = self.wall_clock()
        for key in keys:
            epoch, sk, expires_at = key.epoch, key.private_key, key.expires_at
            replay_fd = key.replay_fd
            cache = None
            if replay_fd is not None and epoch not in self.core.epochs and expires_at > wall:
                path = Path(f"/proc/{self.parent}/fd/{replay_fd}")
                try:
                    cache = open_replay_file(path, epoch, sk, self.core.replay_bits_log2)
                except (OSError, ReplayFileError) as exc:
                    self.core.counters["replay_file_errors"] += 1
                    print(
                        f"replay filter of epoch {epoch} unusable ({exc}); key not used",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
            self.core.install_key(epoch, sk, expires_at, cache)
        self.core.expire_keys(wall)

    def loop_path(self) -> Sequence[Hop] | None:
        """A random loop from this node through every other layer and back to it."""
        doc = self.topology
        if doc is None:
            return None
        try:
            return sample_path(doc, loop_route(doc, self.node_id), self.mix_delay_s, os.urandom)
        except NoRouteError:
            return None

    # -- packets -----------------------------------------------------------------------

    def on_packet(self, packet: bytes, prev_hop: Hashable, now: float, arrived_at: float) -> None:
        t0 = time.perf_counter()
        self.core.receive(packet, now, prev_hop=prev_hop, arrived_at=arrived_at)
        dt = time.perf_counter() - t0
        self.hist[bisect.bisect_left(PROCESSING_BUCKETS_S, dt)] += 1
        self.hist_sum += dt

    def on_received(self, data: bytes, addr: tuple[str, int], stamp: float | None) -> None:
        """One datagram from ``addr`` with its kernel receive stamp (wall seconds) if any."""
        now = self.clock()
        self.stamps.observe(now, self.wall_clock())
        arrived = now if stamp is None else self.stamps.arrival(stamp, now)
        try:
            self.on_datagram(data, addr, arrived, now)
        except Exception:  # a bug must cost one datagram, not the worker
            self.core.drop(DropReason.HANDLER_ERROR)

    def on_datagram(
        self, data: bytes, addr: tuple[str, int], arrived_at: float, now: float
    ) -> None:
        """Handle one datagram; ``arrived_at`` and ``now`` are monotonic seconds."""
        if len(data) != self.node_frame_len or data[:2] != NODE_FRAME_HEAD:
            self.core.counters["packets_in"] += 1
            try:
                self.codec.parse(data)
                self.core.drop(DropReason.LINK_MALFORMED)  # a well-formed frame of a client type
            except LinkError as exc:
                self.core.drop(exc.reason)
            return
        if now - arrived_at > self.core.late_drop_s:
            # Waited in the socket longer than the late limit: the node is overloaded.
            # Shed it before the expensive crypto, so the backlog drains instead of growing.
            self.core.counters["packets_in"] += 1
            self.core.drop(DropReason.LATE)
            return
        self.on_packet(data[2:], self.prev_hops.get(addr, UNLISTED), now, arrived_at)

    def send(self, addr: tuple[str, int], frame: bytes, now: float) -> None:
        if self.loss and self.sysrand.random() < self.loss:
            self.core.drop(DropReason.LINK_LOSS)
            return
        if self.delay_mean_s or self.delay_jitter_s:
            d = max(0.0, self.sysrand.gauss(self.delay_mean_s, self.delay_jitter_s))
            if len(self.emulated) >= EMULATION_MAX:
                self.core.drop(DropReason.PEER_QUEUE_FULL)
                return
            self.seq += 1
            heapq.heappush(self.emulated, (now + d, self.seq, addr, frame))
            return
        self.transmit(addr, frame)

    def transmit(self, addr: tuple[str, int], frame: bytes) -> None:
        q = self.pending.get(addr)
        if q:
            if len(q) >= PEER_QUEUE_MAX:
                self.core.drop(DropReason.PEER_QUEUE_FULL)
            else:
                q.append(frame)
            return
        try:
            self.udp.sendto(frame, addr)
            self.core.counters["packets_out"] += 1
        except BlockingIOError:
            self.pending.setdefault(addr, deque()).append(frame)
        except SEND_ERRORS:
            self.core.drop(DropReason.SEND_FAILED)

    def flush(self) -> None:
        for addr, q in list(self.pending.items()):
            while q:
                try:
                    self.udp.sendto(q[0], addr)
                    self.core.counters["packets_out"] += 1
                except BlockingIOError:
                    break
                except SEND_ERRORS:
                    self.core.drop(DropReason.SEND_FAILED)
                q.popleft()
            if not q:
                del self.pending[addr]

    def run_due(self, now: float) -> None:
        """Send what is due at monotonic ``now``; forget keys expired by the wall clock."""
        self.core.expire_keys(self.wall_clock())
        for action in self.core.pop_due(now):
            if isinstance(action, ForwardAt):
                addr = self.peers.get(action.next_hop)
                if addr is None:
                    self.core.drop(DropReason.UNKNOWN_NEXT_HOP)
                    continue
                self.send(addr, self.codec.node_packet(action.packet), now)
            elif isinstance(action, DeliverAt):
                msg = DeliveryFrame(action.mailbox, action.kind, action.data).to_bytes()
                try:
                    self.ctrl.send(msg)
                except OSError:
                    self.core.drop(DropReason.DELIVERY_BACKLOG)
        while self.emulated and self.emulated[0][0] <= now:
            _, _, addr, frame = heapq.heappop(self.emulated)
            self.transmit(addr, frame)

    def report(self) -> None:
        """Send the daemon a StatsFrame (dropped if the control socket is full)."""
        stats = StatsFrame(
            counters=dict(self.core.counters),
            drops=dict(self.core.drops),
            queue_depth=self.core.queue_depth + len(self.emulated),
            replay_entries=self.core.replay_entries(),
            hist=tuple(self.hist),
            hist_sum=self.hist_sum,
            loops_sent=tuple(self.core.loops_sent),
            loops_back=tuple(self.core.loops_back),
        )
        self.core.loops_sent, self.core.loops_back = [], []
        try:
            self.ctrl.send(stats.to_bytes())
        except OSError:
            pass

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.udp, select.POLLIN)
        poller.register(self.ctrl, select.POLLIN)
        clock = self.clock
        next_report = clock()
        anc = socket.CMSG_SPACE(16)
        while self.running:
            now = clock()
            deadline = self.core.next_deadline()
            if self.emulated:
                e = self.emulated[0][0]
                deadline = e if deadline is None else min(deadline, e)
            wait = STATS_INTERVAL_S if deadline is None else max(0.0, deadline - now)
            wait = min(wait, max(0.0, next_report - now))
            if self.pending:
                poller.modify(self.udp, select.POLLIN | select.POLLOUT)
            events = poller.poll(wait * 1000.0)
            ctrl_fd = self.ctrl.fileno()
            events.sort(key=lambda e: e[0] != ctrl_fd)  # keys and topology before packets
            for fd, ev in events:
                if fd == self.ctrl.fileno():
                    if ev & (select.POLLHUP | select.POLLERR):
                        self.running = False
                    for _ in range(RECV_BATCH):
                        try:
                            msg = self.ctrl.recv(CONTROL_MAX)
                        except BlockingIOError:
                            break
                        if not msg:
                            self.running = False
                            break
                        self.on_control(msg, clock())
                elif ev & select.POLLIN:
                    for _ in range(RECV_BATCH):
                        try:
                            data, ancdata, _, addr = self.udp.recvmsg(4096, anc)
                        except BlockingIOError:
                            break
                        except OSError:
                            continue
                        stamp = None
                        if ancdata:
                            sec, nsec = unpack_timespec(ancdata[0][2])
                            stamp = sec + nsec * 1e-9
                        self.on_received(data, addr, stamp)
                        self.run_due(clock())
            if self.pending:
                self.flush()
                if not self.pending:
                    poller.modify(self.udp, select.POLLIN)
            now = clock()
            self.run_due(now)
            if now >= next_report:
                if os.getppid() != self.parent:  # the daemon is gone: never outlive it
                    break
                self.report()
                next_report = now + STATS_INTERVAL_S
        self.report()
        self.core.close()  # unmap the replay filters


def main() -> None:
    """Entry point: ``python -m mixnode._worker SETTINGS_HEX`` (WorkerSettings' frame in hex,
    naming the inherited UDP and control sockets' fds)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when workers stop
    settings = WorkerSettings.from_bytes(bytes.fromhex(sys.argv[1]))
    udp = socket.socket(fileno=settings.udp_fd)
    ctrl = socket.socket(fileno=settings.ctrl_fd)
    Worker(settings, udp, ctrl).run()
    os._exit(0)


if __name__ == "__main__":
    main()
