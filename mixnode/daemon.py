"""The mix node / gateway daemon: the Trio edge around the sans-IO cores.

    phantom-mixnode run --config node.toml      # calls trio.run(run, config)

The control plane lives here, in one Trio process: keys and epochs, the directory
(publish this node's descriptor, fetch and verify each epoch's topology), the gateway's
client port and constant-rate downlink, the metrics and ``/healthz`` endpoint (``health``:
listed and serving, or why not), signals. The data plane is
``workers`` processes (mixnode._worker), each owning one SO_REUSEPORT socket on the node's
port, because Sphinx processing does not scale over threads in Python (see that module).
The daemon restarts a worker that dies, on the same socket, so that its shard keeps
working; SIGTERM or SIGINT stops everything, workers first. Before it hands an epoch key to
the workers it makes the key's replay filter (mixnode.replay: a memfd every worker maps,
loaded from its file under data_dir), so the replay decision is the node's across workers
and restarts; it copies the filters to disk every second and at a clean stop, and deletes
each with its key.

The gateway's client socket keeps only datagrams of a link frame's length (a kernel
filter: junk costs the node nothing) and is read in batches; what the kernel drops on any
of the node's sockets is counted (``socket_drops_total``, docs/operators.md).

Clocks: the gateway's downlink slots and mailbox ages run on Trio's clock (monotonic);
the wall clock serves epochs, key expiry and descriptors only, so a step of the wall
clock neither delays nor drops a client's frames.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import trio

from mixnode._logging import RepeatLimiter
from mixnode._process import child_env
from mixnode._udp import DropCount, attach_length_filter, kernel_drops
from mixnode._worker import RECV_BATCH, bind_sharded, shard_of
from mixnode.config import ConfigError, NodeConfig, bind_error, check_genesis
from mixnode.core import DEFAULT_REPLAY_BITS_LOG2
from mixnode.directory_client import (
    DirectoryClient,
    DirectoryFailed,
    DirectoryFailure,
    failure_kind,
    publish_report,
)
from mixnode.gateway import GatewayAction, GatewayCore, Reply, Uplink
from mixnode.keys import IDENTITY_FILE, NodeKeys
from mixnode.metrics import (
    GATEWAY_EVENTS,
    PROCESSING_BUCKETS_S,
    Health,
    NodeMetrics,
    serve_metrics,
)
from mixnode.reachability import REACHABLE_WINDOW_S, LoopReachability
from mixnode.replay import REPLAY_DIR, ReplayStore
from overlay import (
    CONTROL_MAX,
    VERSION,
    ControlFrameError,
    Delivery,
    DeliveryFrame,
    DirectorySchedule,
    DropReason,
    EpochKey,
    KeysFrame,
    LinkCodec,
    NodeDescriptor,
    NodeRole,
    PacketFrame,
    PublishDescriptor,
    QuitFrame,
    StatsFrame,
    TopologyDocument,
    TopologyFrame,
    WorkerSettings,
    canonical_json,
    decode_control,
    epoch_at,
    epoch_start,
    sign_descriptor,
)

log = logging.getLogger("phantom.mixnode")

KEY_OVERLAP_S = 60.0  # seconds the previous epoch's key keeps opening packets
WORKER_STOP_S = 3.0  # seconds a worker gets to exit after a QuitFrame before SIGKILL
WORKER_READY_S = 10.0  # seconds to wait for workers to start before publishing anyway
WORKER_RESTART_S = 1.0  # seconds between restarts of a crashed worker
DIRECTORY_LOG_EVERY_S = 60.0  # seconds between summary lines of a repeated directory failure
# Bytes asked for the client socket's receive buffer: room for a burst of frames while the
# control plane is busy. Linux caps it at net.core.rmem_max (and doubles it for overhead).
CLIENT_RCVBUF = 4 << 20
REPLAY_SYNC_S = 1.0  # seconds between copies of the replay filters to disk (a crash loses less)


class Directory(Protocol):
    """Where a node publishes its descriptor and fetches verified topology documents."""

    async def publish(self, descriptor: bytes, signature: bytes) -> None: ...

    async def fetch(self, epoch: int) -> TopologyDocument: ...


class AuthorityDirectory:
    """The real directory: POST the descriptor to every authority, fetch and verify."""

    def __init__(self, config: NodeConfig) -> None:
        self.urls = list(config.directory.authorities)
        self.client = DirectoryClient.from_config(config)
        self._last_answer: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    async def publish(self, descriptor: bytes, signature: bytes) -> None:
        """POST to every authority; DirectoryFailed (with each one's reason) if none took it.

        Logs how many took it, and why the others did not (an authority that does not
        enrol this node says so here)."""
        body = canonical_json(
            {"descriptor": descriptor.decode("ascii"), "signature": signature.hex()}
        )
        report = await trio.to_thread.run_sync(publish_report, self.urls, body)
        why = "; ".join(report.refused) or "no authority configured"
        if not report.accepted:
            raise DirectoryFailed(f"no authority accepted the descriptor: {why}", report.kinds)
        # A node republishes until it is listed: say so again only when the answer changes.
        news = (report.accepted, report.refused) != self._last_answer
        self._last_answer = (report.accepted, report.refused)
        log.log(
            logging.INFO if news else logging.DEBUG,
            "descriptor accepted by %d of %d authorities",
            len(report.accepted),
            len(self.urls),
        )
        if report.refused:
            level = logging.WARNING if news else logging.DEBUG
            log.log(level, "descriptor refused by %d authorities: %s", len(report.refused), why)

    async def fetch(self, epoch: int) -> TopologyDocument:
        """The verified document of ``epoch``; from the cache while no authority yields one,
        and then ``cache_failure`` says why (None after a fetch from an authority)."""
        result = await self.client.afetch_result(epoch)
        self.cache_failure = result.failure
        return result.document

    cache_failure: DirectoryFailed | None = None


@dataclass(slots=True)
class _WorkerHandle:
    index: int
    udp: socket.socket  # kept open here so that a restarted worker gets the same shard
    ctrl: trio.socket.SocketType | None = None  # receives (Trio)
    ctrl_raw: socket.socket | None = None  # sends (non-blocking; full means drop)
    proc: subprocess.Popen[bytes] | None = None
    last: Counter[str] | None = None  # the worker's last cumulative counters
    last_drops: Counter[DropReason] | None = None  # and its drops
    ready: trio.Event | None = None  # set by the worker's first report
    hist: list[int] | None = None  # the worker's last cumulative processing histogram
    hist_sum: float = 0.0
    # The kernel's drop count of ``udp``: kept across restarts, since the socket stays.
    drops: DropCount = field(default_factory=DropCount)


class Node:
    """One running node: owns the worker processes and the control-plane tasks."""

    def __init__(
        self,
        config: NodeConfig,
        directory: Directory | None = None,
        keys: NodeKeys | None = None,
        *,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (monotonic seconds, Trio's by default) schedules the gateway;
        ``wall_clock`` (unix seconds) is for epochs, key expiry and descriptors only."""
        self.config = config
        self.clock = clock
        self.wall_clock = wall_clock
        self.directory = directory
        self.geometry = config.geometry
        if keys is None:
            created = not (config.node.data_dir / IDENTITY_FILE).exists()
            keys = NodeKeys.load_or_create(config.node.data_dir)
            if created:
                log.info("created a new identity: node id %s", keys.node_id.hex())
        self.keys = keys
        self.node_id = self.keys.node_id
        self.replay_dir = config.node.data_dir / REPLAY_DIR
        self.replay = ReplayStore(self.replay_dir, DEFAULT_REPLAY_BITS_LOG2)
        self.metrics = NodeMetrics(mix_layers=config.directory.mix_layers)
        self.reach = LoopReachability()  # which nodes our loop cover proved reachable
        self.role = config.node.role
        self.topology: TopologyDocument | None = None
        self.epoch = -1
        self.gateway: GatewayCore | None = None
        self.client_sock: trio.socket.SocketType | None = None
        self.client_raw: socket.socket | None = None
        self.workers: list[_WorkerHandle] = []
        self.counters: Counter[str] = Counter()  # control-plane counters (gateway etc.)
        self.drops: Counter[DropReason] = Counter()  # what the control plane dropped
        self.port = 0
        self.client_port: int | None = None
        # Lengths of every link frame type: anything else on the client port is junk.
        codec = LinkCodec(self.geometry)
        self._client_lengths = frozenset(codec.frame_len(t) for t in codec.body_len)
        self._client_drops = DropCount()
        self.metrics_port: int | None = None
        self._stopping = False
        self.listed = False  # the current document lists this node at its addresses
        self.directory_error: tuple[DirectoryFailure, str] | None = None  # the last one
        self._directory_log = RepeatLimiter(DIRECTORY_LOG_EVERY_S, clock=clock)

    # -- epochs and keys ---------------------------------------------------------------

    def current_epoch(self) -> int:
        d = self.config.directory
        return epoch_at(self.wall_clock(), d.epoch_length_s, d.genesis_s)

    def _key_expiry(self, epoch: int) -> float:
        d = self.config.directory
        return epoch_start(epoch + 1, d.epoch_length_s, d.genesis_s) + KEY_OVERLAP_S

    def rotate(self) -> bool:
        """Generate/prune keys for the current epoch; True if the epoch changed.

        Logs the epochs whose keys were generated and deleted (numbers only)."""
        epoch = self.current_epoch()
        if epoch == self.epoch:
            return False
        before = set(self.keys.epochs())
        _, deleted = self.keys.rotate(epoch)
        made = sorted(set(self.keys.epochs()) - before)
        log.info(
            "epoch %d: epoch keys generated for %s, deleted for %s, held for %s",
            epoch,
            made or "none",
            deleted or "none",
            self.keys.epochs(),
        )
        self.epoch = epoch
        try:
            self.replay.drop(keep=self.keys.epochs())
        except OSError as exc:
            log.warning("replay files: cannot delete old ones: %s", exc.strerror)
        self.metrics.epoch.set(epoch)
        return True

    def _key_message(self) -> bytes:
        """A KeysFrame with the keys the workers use, each with its replay filter's memfd.

        A key whose filter cannot be made is left out (fail closed: its packets drop as
        ``unknown_epoch``), counted in ``replay_file_errors`` and logged.
        """
        held = [e for e in self.keys.epochs() if e <= self.epoch]
        keys = []
        for e in held[-2:]:
            expires_at = self._key_expiry(e)
            if expires_at <= self.wall_clock():
                continue  # past its overlap: the workers would drop it at once
            try:
                fd = self.replay.ensure(e, self.keys.epoch_public(e))
            except OSError as exc:
                self.counters["replay_file_errors"] += 1
                log.error("replay filter of epoch %d: %s; key not used", e, exc.strerror)
                continue
            keys.append(EpochKey(e, self.keys.epoch_private(e), expires_at, fd))
        return KeysFrame(tuple(keys)).to_bytes()

    def gateway_private_keys(self) -> list[bytes]:
        held = [e for e in self.keys.epochs() if e <= self.epoch + 1]
        return [self.keys.epoch_private(e) for e in sorted(held, reverse=True)[:3]]

    def descriptor(self) -> tuple[bytes, bytes]:
        """This node's signed descriptor for the current and the next epoch."""
        n = self.config.node
        desc = NodeDescriptor(
            node_id=self.node_id,
            name=n.name,
            role=n.role,
            layer=n.layer,
            host=n.public_host,
            port=self.port,
            client_port=self.client_port,
            identity_key=self.keys.identity_public,
            epoch_keys=self.keys.public_epoch_keys([self.epoch, self.epoch + 1]),
            published_at=int(self.wall_clock()),
        )
        return desc.to_bytes(), sign_descriptor(desc, self.keys.identity_seed)

    # -- workers -----------------------------------------------------------------------

    def _worker_settings(self, h: _WorkerHandle, ctrl_fd: int) -> WorkerSettings:
        """What worker ``h`` starts with; ``ctrl_fd`` is its end of the control socket."""
        c = self.config
        return WorkerSettings(
            geometry=c.node.geometry,
            node_id=self.node_id,
            late_drop_ms=c.mixing.late_drop_ms,
            max_queue=max(1, c.mixing.max_queue // c.mixing.workers),
            cover_rate_hz=c.mixing.loop_cover_rate_hz / c.mixing.workers,
            mix_delay_ms=c.mixing.loop_cover_delay_ms,
            link_delay_ms=c.link.delay_ms_mean,
            link_jitter_ms=c.link.delay_ms_jitter,
            link_loss=c.link.loss,
            udp_fd=h.udp.fileno(),
            ctrl_fd=ctrl_fd,
        )

    def _spawn(self, h: _WorkerHandle) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (parent, child):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        parent.setblocking(False)
        h.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mixnode._worker",
                self._worker_settings(h, child.fileno()).to_bytes().hex(),
            ],
            pass_fds=(h.udp.fileno(), child.fileno()),
            env=child_env(),
            stdin=subprocess.DEVNULL,
        )
        child.close()
        h.ctrl_raw = parent
        h.ctrl = trio.socket.from_stdlib_socket(parent)
        h.last, h.last_drops = Counter(), Counter()
        h.ready = trio.Event()
        h.hist, h.hist_sum = [0] * (len(PROCESSING_BUCKETS_S) + 1), 0.0
        self._send_worker(h, self._key_message())
        if self.topology is not None:
            self._send_worker(h, TopologyFrame(self.topology.to_bytes()).to_bytes())

    def _send_worker(self, h: _WorkerHandle, msg: bytes) -> None:
        if h.ctrl_raw is None:
            return
        try:
            h.ctrl_raw.send(msg)
        except OSError:
            self.drops[DropReason.DELIVERY_BACKLOG] += 1

    def broadcast(self, msg: bytes) -> None:
        for h in self.workers:
            self._send_worker(h, msg)

    async def _worker_reader(self, h: _WorkerHandle) -> None:
        while True:
            ctrl = h.ctrl
            assert ctrl is not None
            try:
                msg = await ctrl.recv(CONTROL_MAX)
            except trio.ClosedResourceError:
                continue  # the worker was restarted: read from its new socket
            except OSError:
                msg = b""
            if not msg:
                await trio.sleep(0.1)
                continue
            try:
                frame = decode_control(msg)
            except ControlFrameError:
                if msg[1:2] == DeliveryFrame.TYPE:
                    self.drops[DropReason.NO_CLIENT] += 1  # a delivery for no known client
                else:
                    self.counters["control_malformed"] += 1
                continue
            match frame:
                case DeliveryFrame():
                    self._on_delivery(frame)
                case StatsFrame():
                    self._on_stats(h, frame)
                case _:  # a frame for workers: not ours to act on
                    self.counters["control_malformed"] += 1

    async def _supervise(self) -> None:
        while True:
            await trio.sleep(WORKER_RESTART_S)
            for h in self.workers:
                if h.proc is not None and h.proc.poll() is not None and not self._stopping:
                    log.warning("worker %d exited with %s; restarting", h.index, h.proc.returncode)
                    self.counters["worker_restarts"] += 1
                    old = h.ctrl
                    self._spawn(h)
                    if old is not None:
                        old.close()

    async def _sync_replay(self) -> None:
        """Copy the replay filters to disk every REPLAY_SYNC_S: a crash loses at most that."""
        while True:
            await trio.sleep(REPLAY_SYNC_S)
            try:
                await trio.to_thread.run_sync(self.replay.snapshot)
            except OSError as exc:
                self.counters["replay_file_errors"] += 1
                log.warning("replay files: sync failed: %s", exc.strerror)

    def _on_stats(self, h: _WorkerHandle, stats: StatsFrame) -> None:
        now = Counter(stats.counters)
        now_drops = Counter(stats.drops)
        assert h.last is not None and h.last_drops is not None and h.ready is not None
        h.ready.set()
        delta = now - h.last
        h.last = now
        m = self.metrics
        m.count_drops(now_drops - h.last_drops)
        h.last_drops = now_drops
        for name, n in delta.items():
            if name == "packets_in":
                m.packets_in.inc(n)
            elif name == "packets_out":
                m.packets_out.inc(n)
            elif name == "replays":
                m.replays.inc(n)
            elif name == "cover_sent":
                m.cover_sent.inc(n)
            elif name == "cover_received":
                m.cover_received.inc(n)
        t = self.clock()
        for marker, ids in stats.loops_sent:
            self.reach.sent(marker, list(ids), t)
        for marker in stats.loops_back:
            self.reach.returned(marker, t)
        self._depths[h.index] = stats.queue_depth
        m.queue_depth.set(sum(self._depths.values()))
        hist, hist_sum = list(stats.hist), stats.hist_sum
        assert h.hist is not None
        # Workers bucket their own observations: shipping every sample to this process
        # would cost more CPU than the histogram is worth at 10k packets per second.
        m.processing_seconds.merge_counts(
            [a - b for a, b in zip(hist, h.hist, strict=True)], hist_sum - h.hist_sum
        )
        h.hist, h.hist_sum = hist, hist_sum

    _depths: dict[int, int]

    # -- gateway -----------------------------------------------------------------------

    def _on_delivery(self, frame: DeliveryFrame) -> None:
        if self.gateway is None:
            self.drops[DropReason.NO_CLIENT] += 1
            return
        self.gateway.enqueue(frame.mailbox, Delivery(frame.kind, frame.data), self.clock())

    async def _client_reader(self) -> None:
        assert self.gateway is not None and self.client_raw is not None
        raw = self.client_raw
        while True:
            await trio.lowlevel.wait_readable(raw)
            self.read_client_batch()

    def read_client_batch(self) -> int:
        """Read and handle up to ``RECV_BATCH`` waiting client datagrams; returns how many.

        Never blocks. A datagram longer than any link frame is read only up to that length
        (MSG_TRUNC tells it was longer), and one whose length is no frame's is dropped
        (``drops_total{reason="wrong_length"}``) before any parsing or crypto; the kernel's
        length filter normally refused it already (:meth:`count_socket_drops`).
        """
        assert self.gateway is not None and self.client_raw is not None
        gw, raw, lengths = self.gateway, self.client_raw, self._client_lengths
        bufsize = max(lengths)
        n = len(self.workers)
        got = 0
        for _ in range(RECV_BATCH):
            try:
                data, _, flags, addr = raw.recvmsg(bufsize)
            except BlockingIOError:
                break
            except OSError:
                continue  # e.g. ICMP port unreachable from a client that went away
            got += 1
            if flags & socket.MSG_TRUNC or len(data) not in lengths:
                self.drops[DropReason.WRONG_LENGTH] += 1
                continue
            try:
                action = gw.on_datagram(data, addr, self.clock(), self._gw_keys)
            except Exception:  # a bug must cost one datagram, never the node
                log.exception("client datagram handling failed")
                self.drops[DropReason.HANDLER_ERROR] += 1
                continue
            self._act(action, addr, n)
        self.metrics.packets_in.inc(got)
        return got

    def _act(self, action: GatewayAction, addr: tuple[Any, ...], n: int) -> None:
        """Carry out what the gateway core decided for one client datagram."""
        match action:
            case Uplink(packet):
                frame = PacketFrame(packet).to_bytes()
                self._send_worker(self.workers[shard_of(packet, n)], frame)
            case Reply(datagram):  # CHALLENGE or UNKNOWN_SESSION, shorter than the request
                assert self.client_raw is not None
                try:
                    self.client_raw.sendto(datagram, addr)
                    self.metrics.packets_out.inc()
                except OSError:  # includes BlockingIOError: a full buffer drops it
                    self.drops[DropReason.SEND_FAILED] += 1

    async def _downlink(self) -> None:
        assert self.gateway is not None and self.client_raw is not None
        gw, sock = self.gateway, self.client_raw
        while True:
            now = self.clock()
            for addr, datagram in gw.due_slots(now):
                assert isinstance(addr, tuple)  # the (host, port, ...) that recvmsg gave the core
                try:
                    sock.sendto(datagram, addr)
                    self.metrics.packets_out.inc()
                    self.metrics.deliveries.inc()
                except (BlockingIOError, OSError):
                    self.drops[DropReason.SEND_FAILED] += 1
            nxt = gw.next_deadline()
            await trio.sleep(0.05 if nxt is None else max(0.0, nxt - self.clock()))

    # -- directory ---------------------------------------------------------------------

    async def _directory_loop(self, listed: trio.Event) -> None:
        """Publish this node's descriptor and follow the topology documents, forever.

        The decisions (publish or only fetch, adopt the document, how long to wait) are
        overlay's DirectorySchedule; this edge rotates keys, talks to the directory, hands
        an adopted document to the workers, logs and counts failures by reason, and sets
        ``listed`` once a document lists this node at its bound ports."""
        d = self.config.directory
        client = self.directory if self.directory is not None else AuthorityDirectory(self.config)
        with trio.move_on_after(WORKER_READY_S):  # publish only once packets can be processed
            for h in self.workers:
                assert h.ready is not None
                await h.ready.wait()
        schedule = DirectorySchedule(
            self.node_id,
            port=self.port,
            client_port=self.client_port,
            epoch_length_s=d.epoch_length_s,
            genesis_s=d.genesis_s,
        )
        while True:
            if self.rotate():
                self.broadcast(self._key_message())
                self._gw_keys = self.gateway_private_keys()
            step = schedule.start_round(self.epoch)
            try:
                if isinstance(step, PublishDescriptor):
                    desc, sig = self.descriptor()
                    await client.publish(desc, sig)
                    schedule.published(step.epoch)
                doc = await client.fetch(self.epoch)
            except Exception as exc:  # network or directory trouble: retry, never crash
                self._directory_failed(exc)
                await trio.sleep(schedule.failed())
                continue
            cache_failure = client.cache_failure if isinstance(client, AuthorityDirectory) else None
            if cache_failure is not None:  # serving from the cached document meanwhile
                self._directory_failed(cache_failure)
            elif self.directory_error is not None:
                log.info("directory: reachable again")
                self.directory_error = None
                self._directory_log.reset()
            got = schedule.fetched(
                doc,
                now=self.clock(),
                wall=self.wall_clock(),
                from_cache=cache_failure is not None,
            )
            if got.adopt:
                self.topology = doc
                self.broadcast(TopologyFrame(doc.to_bytes()).to_bytes())
                log.info("topology for epoch %d: %d nodes", doc.epoch, len(doc.nodes))
            if got.listed_changed:
                log.log(
                    logging.INFO if got.listed else logging.WARNING,
                    "%s the topology document of epoch %d",
                    "listed in" if got.listed else "no longer listed in",
                    doc.epoch,
                )
            self.listed = got.listed
            self.metrics.listed.set(int(got.listed))
            if got.listed:
                listed.set()
            await trio.sleep(got.wait_s)

    def _directory_failed(self, exc: Exception) -> None:
        """Count a failed directory attempt by reason; log it, a repeat at most once a minute.

        The first occurrence of a message is logged at WARNING with its reason (each
        authority's, in its words), then a summary line with the count every
        DIRECTORY_LOG_EVERY_S while it repeats; every attempt is counted in
        ``directory_errors_total{reason}``.
        """
        kind = failure_kind(exc)
        text = f"{type(exc).__name__}: {exc}"
        self.directory_error = (kind, text)
        self.metrics.directory_errors.inc(label=kind.value)
        repeats = self._directory_log.check(text)
        if repeats == 0:
            log.warning("directory: %s: %s", kind.value, text)
        elif repeats is not None:
            log.warning(
                "directory: %s: %s (%d times in the last %.0f s)",
                kind.value,
                text,
                repeats,
                DIRECTORY_LOG_EVERY_S,
            )

    def health(self) -> Health:
        """Whether this node serves: its current document lists it at its addresses and
        every worker runs. Otherwise the first missing piece is the reason."""
        n = self.config.node
        alive = sum(1 for h in self.workers if h.proc is not None and h.proc.poll() is None)
        err = self.directory_error
        detail: dict[str, object] = {
            "node_id": self.node_id.hex(),
            "name": n.name,
            "role": self.role.value,
            "layer": n.layer,
            "version": VERSION,
            "epoch": self.epoch,
            "document_epoch": None if self.topology is None else self.topology.epoch,
            "listed": self.listed,
            "port": self.port,
            "client_port": self.client_port,
            "workers": len(self.workers),
            "workers_alive": alive,
            "directory_error": None if err is None else {"reason": err[0].value, "text": err[1]},
            "peers_reachable": {
                str(layer): {"reachable": ok, "listed": total}
                for layer, (ok, total) in self.peers_reachable().items()
            },
            "reachable_window_s": REACHABLE_WINDOW_S,
        }
        if self.topology is None:
            reason = "no_document"
        elif not self.listed:
            reason = "not_listed"
        elif self.topology.epoch != self.epoch:
            reason = "stale_document"
        elif alive < len(self.workers):
            reason = "workers_down"
        else:
            return Health(True, "serving", detail)
        return Health(False, reason, detail)

    def peers_reachable(self) -> dict[int, tuple[int, int]]:
        """``{layer: (reachable, listed)}`` of the other layers' nodes in the current
        document: reachable means one of this node's loops crossed it and came back within
        REACHABLE_WINDOW_S (mixnode.reachability). Empty without a document."""
        if self.topology is None:
            return {}
        return self.reach.per_layer(self.topology, self.node_id, self.clock())

    # -- gauges ------------------------------------------------------------------------

    def count_socket_drops(self) -> None:
        """Add what the kernel dropped on this node's sockets since the last look.

        ``socket_drops_total{socket="packet"}`` sums the worker sockets (a full receive
        buffer); ``{socket="client"}`` is the gateway's client socket (a full buffer, or a
        length no link frame has, refused by its filter). Read with SO_MEMINFO, so a flood
        shows even when nothing else arrives.
        """
        socks = [(h.udp, h.drops, "packet") for h in self.workers]
        if self.client_raw is not None:
            socks.append((self.client_raw, self._client_drops, "client"))
        for sock, seen, label in socks:
            try:
                count = kernel_drops(sock)
            except OSError:
                continue  # closed while stopping
            self.metrics.socket_drops.inc(seen.update(count), label=label)

    async def _gauges(self) -> None:
        last: Counter[str] = Counter()
        last_drops: Counter[DropReason] = Counter()
        while True:
            await trio.sleep(0.5)
            self.count_socket_drops()
            for layer, (ok, total) in self.peers_reachable().items():
                self.metrics.peers_reachable.set(ok, label=str(layer))
                self.metrics.peers_listed.set(total, label=str(layer))
            if self.gateway is not None:
                self.metrics.mailbox_depth.set(self.gateway.mailbox_depth)
                self.metrics.gateway_sessions.set(self.gateway.sessions)
                self.metrics.gateway_mailboxes.set(self.gateway.mailboxes)
                now = self.gateway.counters + self.counters
                now_drops = self.gateway.drops + self.drops
            else:
                now = Counter(self.counters)
                now_drops = Counter(self.drops)
            for name, n in (now - last).items():
                if name in GATEWAY_EVENTS:
                    self.metrics.gateway_events.inc(n, label=name)
            new_drops = now_drops - last_drops
            self.metrics.count_drops(new_drops)
            if new_drops[DropReason.ATTACH_PROOF]:
                self.metrics.gateway_events.inc(
                    new_drops[DropReason.ATTACH_PROOF], label="attach_refused"
                )
            last, last_drops = now, now_drops

    # -- lifecycle ---------------------------------------------------------------------

    def _bind(self) -> None:
        """Bind the packet sockets (and a gateway's client socket); ConfigError names the field.

        Runs before the workers and tasks start, so that a bad host or a busy port is an
        operator's error message, not a half-started node.
        """
        n, g = self.config.node, self.config.gateway
        try:
            socks = bind_sharded(n.listen_host, n.listen_port, self.config.mixing.workers)
        except OSError as exc:
            raise bind_error(
                "node.listen_host", "node.listen_port", n.listen_host, n.listen_port, exc
            ) from None
        self.port = socks[0].getsockname()[1]
        self.workers = [_WorkerHandle(i, s) for i, s in enumerate(socks)]
        if g is None:
            return
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            raw.bind((g.client_host, g.client_port))
        except OSError as exc:
            raw.close()
            for s in socks:
                s.close()
            raise bind_error(
                "gateway.client_host", "gateway.client_port", g.client_host, g.client_port, exc
            ) from None
        raw.setblocking(False)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        try:  # junk of any other length never takes room in the receive buffer
            attach_length_filter(raw, self._client_lengths)
        except OSError as exc:  # the length check in read_client_batch still applies
            log.warning("client socket: no kernel length filter (%s)", exc.strerror)
        self.client_raw = raw
        self.client_sock = trio.socket.from_stdlib_socket(raw)
        self.client_port = raw.getsockname()[1]

    async def _start_metrics(self, nursery: trio.Nursery) -> None:
        m = self.config.metrics
        try:
            self.metrics_port = await nursery.start(
                partial(serve_metrics, health=self.health), self.metrics.registry, m.host, m.port
            )
        except OSError as exc:
            raise bind_error("metrics.host", "metrics.port", m.host, m.port, exc) from None

    async def serve(self, task_status: trio.TaskStatus[Node]) -> None:
        c = self.config
        self._depths = {}
        check_genesis(c.directory, time.time())
        self.rotate()
        self._gw_keys = self.gateway_private_keys()
        self._bind()
        if self.role is NodeRole.GATEWAY:
            assert c.gateway is not None
            self.gateway = GatewayCore(
                self.geometry,
                delivery_rate_hz=c.gateway.delivery_rate_hz,
                mailbox_capacity=c.gateway.mailbox_capacity,
            )
        try:
            for h in self.workers:
                self._spawn(h)
            async with trio.open_nursery() as nursery:
                if c.metrics.enabled:
                    await self._start_metrics(nursery)
                for h in self.workers:
                    nursery.start_soon(self._worker_reader, h)
                nursery.start_soon(self._supervise)
                nursery.start_soon(self._sync_replay)
                nursery.start_soon(self._gauges)
                if self.gateway is not None:
                    nursery.start_soon(self._client_reader)
                    nursery.start_soon(self._downlink)
                listed = trio.Event()
                nursery.start_soon(self._directory_loop, listed)
                nursery.start_soon(self._signals, nursery.cancel_scope)
                log.info(
                    "node %s (%s) listening on port %d with %d workers",
                    c.node.name,
                    self.role.value,
                    self.port,
                    len(self.workers),
                )
                task_status.started(self)
        finally:
            self._stopping = True
            with trio.CancelScope(shield=True):
                await self._stop_workers()
            try:
                self.replay.close()  # a clean stop keeps every tag
            except OSError as exc:
                log.warning("replay files: sync failed: %s", exc.strerror)
            for h in self.workers:
                h.udp.close()
            if self.client_sock is not None:
                self.client_sock.close()

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal %d: shutting down", signum)
                scope.cancel()
                return

    async def _stop_workers(self) -> None:
        self._stopping = True
        self.broadcast(QuitFrame().to_bytes())
        deadline = time.monotonic() + WORKER_STOP_S
        for h in self.workers:
            if h.proc is None:
                continue
            while h.proc.poll() is None and time.monotonic() < deadline:
                await trio.sleep(0.02)
            if h.proc.poll() is None:
                h.proc.kill()
                h.proc.wait()
            if h.ctrl is not None:
                h.ctrl.close()


async def run(
    config: NodeConfig,
    *,
    keys: NodeKeys | None = None,
    directory: Directory | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until cancelled or signalled (SIGTERM/SIGINT); reports the Node started.

    ``keys`` default to those in the config's data directory (created if missing);
    ``directory`` defaults to the authorities named in the config. Raises ConfigError,
    naming the field, if a socket cannot bind (bad host, address not on this host, busy
    port) or if ``directory.genesis_s`` is after this host's clock.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        await Node(config, directory, keys).serve(task_status)
    except BaseExceptionGroup as group:
        # A start-up ConfigError raised inside the nursery (the metrics port) comes out
        # wrapped; hand it on bare so that the caller reports the field, not a traceback.
        config_errors, rest = group.split(ConfigError)
        if config_errors is not None and rest is None:
            raise _first_leaf(config_errors) from None
        raise


def _first_leaf(group: BaseExceptionGroup[ConfigError]) -> ConfigError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
