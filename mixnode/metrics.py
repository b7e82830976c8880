"""Aggregate-only metrics in the Prometheus text format, served on loopback.

    >>> from overlay import DropReason
    >>> reg = Registry()
    >>> m = NodeMetrics(reg)
    >>> m.packets_in.inc(); m.count_drops({DropReason.MAC_MISMATCH: 1})
    >>> m.processing_seconds.observe(0.0002)
    >>> "phantom_drops_total{reason=\\"mac_mismatch\\"} 1" in reg.render()
    True

Only counts, gauges and fixed-bucket histograms: no metric carries an address, a node id,
a mailbox or any other per-user value. A labelled metric declares its label values up front
(e.g. the drop reasons); an undeclared value is counted under ``other``, so a label can
never become a channel for identities. ``serve_metrics`` is a trio task that refuses to
bind anything but a loopback address.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from overlay import DEFAULT_MIX_LAYERS, EXPORTED_DROP_REASONS, VERSION, DropReason, UsageError

from .config import is_loopback
from .directory_client import DirectoryFailure
from .reachability import REACHABLE_WINDOW_S

NAMESPACE = "phantom"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"  # label value for anything not declared

# Why a node dropped a packet: the label values of drops_total (overlay.DropReason).
DROP_REASONS: tuple[str, ...] = tuple(str(r) for r in EXPORTED_DROP_REASONS)
# What a gateway did with its clients' sessions (docs/wire-link.md, docs/operators.md).
GATEWAY_EVENTS: tuple[str, ...] = (
    "attach",
    "challenge",
    "attach_refused",
    "attach_replayed",
    "session_replaced",
    "leave",
    "session_expired",
    "unknown_session_hint",
    "session_evicted",
    "roam_refused",
    "mailbox_expired",
    "mailbox_evicted",
    "slot_withheld",
)
# Seconds to process one packet: 50 us .. 100 ms.
PROCESSING_BUCKETS_S: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)
MAX_REQUEST_BYTES = 8192  # bytes of an HTTP request head the endpoint reads at most
REQUEST_TIMEOUT_S = 5.0  # seconds a client has to send its request head
# Why an exchange with the directory failed (mixnode.directory_client.DirectoryFailure).
DIRECTORY_ERRORS: tuple[str, ...] = tuple(k.value for k in DirectoryFailure)
# Which socket the kernel dropped datagrams on: the gateway's client port, or the node's
# packet port (all worker sockets together).
SOCKETS: tuple[str, ...] = ("client", "packet")

log = logging.getLogger("phantom.metrics")


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c == "_" for c in name) or name[0].isdigit():
        raise UsageError(f"bad metric name {name!r}")


def _fmt(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if v == int(v) and abs(v) < 2**53:
        return str(int(v))
    return repr(v)


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, label: str | None, values: Sequence[str]):
        _check_name(name)
        if label is not None:
            _check_name(label)
            if not values:
                raise UsageError(f"{name}: a labelled metric declares its label values")
            values = tuple(dict.fromkeys([*values, OTHER]))
        self.name = name
        self.help = help
        self.label = label
        self.values: tuple[str, ...] = tuple(values) if label is not None else ("",)
        self._lock = threading.Lock()

    def _key(self, label: str | None) -> str:
        if self.label is None:
            if label is not None:
                raise UsageError(f"{self.name} has no label")
            return ""
        return label if label in self.values else OTHER

    def _labels(self, key: str, extra: str = "") -> str:
        parts = [] if self.label is None else [f'{self.label}="{key}"']
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""


class _Valued(_Metric):
    """A metric holding one number per label value (counters and gauges)."""

    def __init__(self, name: str, help: str, label: str | None = None, values: Sequence[str] = ()):
        super().__init__(name, help, label, values)
        self._v = dict.fromkeys(self.values, 0.0)

    def value(self, label: str | None = None) -> float:
        """The current number (of ``label``, if the metric has one)."""
        return self._v[self._key(label)]

    def samples(self, full: str) -> Iterable[str]:
        with self._lock:
            items = list(self._v.items())
        for key, v in items:
            yield f"{full}{self._labels(key)} {_fmt(v)}"


class Counter(_Valued):
    """A count that only goes up (packets, drops)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, *, label: str | None = None) -> None:
        """Add ``amount`` (>= 0) to the count (of ``label``, if the counter has one)."""
        if amount < 0:
            raise UsageError(f"{self.name}: a counter cannot go down")
        key = self._key(label)
        with self._lock:
            self._v[key] += amount


class Gauge(_Valued):
    """A level that goes up and down (queue depth)."""

    kind = "gauge"

    def set(self, value: float, *, label: str | None = None) -> None:
        """Set the level."""
        key = self._key(label)
        with self._lock:
            self._v[key] = float(value)

    def inc(self, amount: float = 1.0, *, label: str | None = None) -> None:
        """Raise the level by ``amount`` (negative to lower it)."""
        key = self._key(label)
        with self._lock:
            self._v[key] += amount

    def dec(self, amount: float = 1.0, *, label: str | None = None) -> None:
        """Lower the level by ``amount``."""
        self.inc(-amount, label=label)


class Histogram(_Metric):
    """Observations counted in fixed buckets (upper bounds, seconds), with sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float]):
        super().__init__(name, help, None, ())
        b = tuple(float(x) for x in buckets)
        if not b or list(b) != sorted(set(b)) or b[-1] == math.inf:
            raise UsageError(f"{name}: buckets must be finite and strictly increasing")
        self.buckets = b
        self._counts = [0] * (len(b) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def merge_counts(self, counts: Sequence[int], total: float) -> None:
        """Add observations bucketed elsewhere with the same bounds.

        ``counts`` holds one count per bucket (``len(buckets) + 1`` of them, the last for
        +Inf; not cumulative, each >= 0), ``total`` their sum (seconds). Raises UsageError
        for a wrong number of buckets or a negative count.
        """
        if len(counts) != len(self._counts) or any(c < 0 for c in counts):
            raise UsageError(
                f"{self.name}: need {len(self._counts)} bucket counts >= 0, got {list(counts)}"
            )
        with self._lock:
            for i, c in enumerate(counts):
                self._counts[i] += c
            self._sum += total

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self._counts)

    @property
    def sum(self) -> float:
        """Sum of the observations."""
        return self._sum

    def samples(self, full: str) -> Iterable[str]:
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        running = 0
        for bound, c in zip((*self.buckets, math.inf), counts, strict=True):
            running += c
            yield f'{full}_bucket{{le="{_fmt(bound)}"}} {running}'
        yield f"{full}_sum {_fmt(total)}"
        yield f"{full}_count {running}"


Metric = Counter | Gauge | Histogram


class Registry:
    """A named set of metrics, rendered together."""

    def __init__(self, namespace: str = NAMESPACE):
        _check_name(namespace)
        self.namespace = namespace
        self._metrics: dict[str, Metric] = {}
        self._lock = threading.Lock()

    def register(self, metric: Metric) -> Metric:
        """Add a metric; UsageError if the name is taken."""
        with self._lock:
            if metric.name in self._metrics:
                raise UsageError(f"metric {metric.name!r} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def counter(
        self, name: str, help: str, label: str | None = None, values: Sequence[str] = ()
    ) -> Counter:
        """Register and return a counter."""
        c = Counter(name, help, label, values)
        self.register(c)
        return c

    def gauge(
        self, name: str, help: str, label: str | None = None, values: Sequence[str] = ()
    ) -> Gauge:
        """Register and return a gauge."""
        g = Gauge(name, help, label, values)
        self.register(g)
        return g

    def histogram(self, name: str, help: str, buckets: Sequence[float]) -> Histogram:
        """Register and return a histogram."""
        h = Histogram(name, help, buckets)
        self.register(h)
        return h

    def get(self, name: str) -> Metric:
        """The metric registered as ``name`` (without the namespace)."""
        return self._metrics[name]

    def render(self) -> str:
        """Everything in the Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        with self._lock:
            metrics = list(self._metrics.values())
        for m in metrics:
            full = f"{self.namespace}_{m.name}"
            help_text = m.help.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} {m.kind}")
            lines.extend(m.samples(full))
        return "\n".join(lines) + "\n"


# A sample line: name, optional {labels}, value (no timestamp; Registry.render writes none).
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_prometheus(text: str) -> dict[tuple[str, str], float]:
    """Samples of a Prometheus text page (as ``Registry.render`` writes it):
    ``{(name, labels text without braces): value}``; comments, blank lines and lines that
    are not a ``name[{labels}] value`` sample are skipped, never an error.

    >>> parse_prometheus('# TYPE a counter\\na_total{reason="x"} 3\\nb 1.5\\n')
    {('a_total', 'reason="x"'): 3.0, ('b', ''): 1.5}
    """
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out[(m.group(1), (m.group(2) or "")[1:-1])] = value
    return out


class NodeMetrics:
    """The metrics every mix node and gateway exports (names without the namespace)."""

    def __init__(self, registry: Registry | None = None, mix_layers: int = DEFAULT_MIX_LAYERS):
        """``mix_layers`` (the network's) declares the ``layer`` label values 0..mix_layers."""
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.packets_in = r.counter("packets_in_total", "Packets received (all kinds).")
        self.packets_out = r.counter("packets_out_total", "Packets sent (all kinds).")
        self.drops = r.counter("drops_total", "Packets dropped, by reason.", "reason", DROP_REASONS)
        self.replays = r.counter("replays_total", "Packets dropped as replays.")
        self.queue_depth = r.gauge("queue_depth", "Packets waiting in the delay queue.")
        self.cover_sent = r.counter("cover_sent_total", "Loop cover packets sent by this node.")
        self.cover_received = r.counter(
            "cover_received_total", "Loop cover packets that came back through every layer."
        )
        self.processing_seconds = r.histogram(
            "processing_seconds", "Seconds to process one packet.", PROCESSING_BUCKETS_S
        )
        self.deliveries = r.counter(
            "deliveries_total", "Packets delivered to clients (gateways; real and dummy)."
        )
        self.mailbox_depth = r.gauge(
            "mailbox_depth", "Packets waiting in all client mailboxes (gateways)."
        )
        self.gateway_events = r.counter(
            "gateway_events_total",
            "Client session events (gateways), by event.",
            "event",
            GATEWAY_EVENTS,
        )
        self.gateway_sessions = r.gauge("gateway_sessions", "Attached clients (gateways).")
        self.socket_drops = r.counter(
            "socket_drops_total",
            "Datagrams the kernel dropped before the node read them (receive buffer full, "
            "or refused by the socket's length filter), by socket.",
            "socket",
            SOCKETS,
        )
        self.gateway_mailboxes = r.gauge(
            "gateway_mailboxes", "Mailboxes held, with or without a session (gateways)."
        )
        self.directory_errors = r.counter(
            "directory_errors_total",
            "Failed directory attempts (publish or fetch), by reason.",
            "reason",
            DIRECTORY_ERRORS,
        )
        self.listed = r.gauge(
            "listed", "1 if the current topology document lists this node at its addresses."
        )
        self.epoch = r.gauge("epoch", "The epoch this node's clock is in.")
        layers = [str(i) for i in range(mix_layers + 1)]
        self.peers_listed = r.gauge(
            "peers_listed",
            "Other nodes the current document lists, by layer (0: gateways; not the "
            "node's own layer).",
            "layer",
            layers,
        )
        self.peers_reachable = r.gauge(
            "peers_reachable",
            "Of those, nodes one of this node's loop cover packets crossed and came back "
            f"within the last {REACHABLE_WINDOW_S:g} s, by layer.",
            "layer",
            layers,
        )
        build_info(r)

    def count_drops(self, drops: Mapping[DropReason, int]) -> None:
        """Add drop counts (by reason, each >= 0) to ``drops_total`` under their exported
        labels (:attr:`overlay.DropReason.exported`)."""
        for reason, n in drops.items():
            if n:
                self.drops.inc(n, label=reason.exported)


def build_info(registry: Registry) -> Gauge:
    """Register ``build_info{version="<installed version>"} 1`` (the Prometheus idiom)."""
    g = registry.gauge("build_info", "Always 1; the label is the version.", "version", [VERSION])
    g.set(1, label=VERSION)
    return g


class AuthorityMetrics:
    """What a directory authority exports (``GET /metrics`` on its HTTP port).

    Gauges describe the last round; ``events_total{event}`` mirrors the AuthorityEvent
    counts. All of it is public anyway (documents list the nodes), so it is served where
    the documents are.
    """

    def __init__(self, events: Sequence[str], registry: Registry | None = None):
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.peers = r.gauge("authority_peers", "Peer authorities configured.")
        self.peers_reachable = r.gauge(
            "authority_peers_reachable", "Peers that answered in the last round."
        )
        self.descriptors = r.gauge("authority_descriptors", "Node descriptors held.")
        self.enrolled = r.gauge(
            "authority_enrolled_nodes",
            "Identity keys allowed (allowed_nodes and `allow`; 0: open enrolment).",
        )
        self.threshold = r.gauge("authority_threshold", "Signatures a document needs.")
        self.document_epoch = r.gauge(
            "authority_document_epoch", "Epoch of the current document (-1: none yet)."
        )
        self.document_nodes = r.gauge(
            "authority_document_nodes", "Nodes listed in the current epoch's document."
        )
        self.document_signatures = r.gauge(
            "authority_document_signatures",
            "Valid signatures held for the current epoch's document (ours included).",
        )
        self.last_signed = r.gauge(
            "authority_last_signed_timestamp_seconds",
            "Unix time this authority last signed a new document (0: never).",
        )
        self.events = r.counter(
            "authority_events_total", "Authority events since start, by event.", "event", events
        )
        build_info(r)
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def count_events(self, snapshot: dict[str, int]) -> None:
        """Bring ``events_total`` up to ``snapshot`` (cumulative counts by event)."""
        with self._lock:
            for event, n in snapshot.items():
                delta = n - self._seen.get(event, 0)
                if delta > 0:
                    self.events.inc(delta, label=event)
                    self._seen[event] = n


@dataclass(frozen=True, slots=True)
class Health:
    """A process's answer to ``GET /healthz``: serving or not, why, and what it knows.

    ``reason`` is ``"serving"`` or a short token saying what is missing (``starting``,
    ``no_document``, ``not_listed``, ``workers_down``, ``stale_document``); ``detail`` is
    JSON-able (no secret, no client address).
    """

    serving: bool
    reason: str
    detail: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """``{"serving": …, "reason": …, **detail}`` as one line of JSON."""
        body = {"serving": self.serving, "reason": self.reason, **self.detail}
        return json.dumps(body, sort_keys=True).encode() + b"\n"


# --------------------------------------------------------------------------------------
# The endpoint


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _handle(
    registry: Registry, health: Callable[[], Health] | None, stream: trio.SocketStream
) -> None:
    async with stream:
        buf = b""
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            while b"\r\n\r\n" not in buf and len(buf) < MAX_REQUEST_BYTES:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
        line = buf.split(b"\r\n", 1)[0].split()
        path = line[1].split(b"?", 1)[0] if len(line) >= 2 else b""
        if len(line) < 2 or line[0] != b"GET":
            reply = _response("405 Method Not Allowed", b"GET /metrics\n")
        elif path == b"/healthz" and health is not None:
            h = health()
            status = "200 OK" if h.serving else "503 Service Unavailable"
            reply = _response(status, h.to_json(), "application/json")
        elif path not in (b"/metrics", b"/"):
            reply = _response("404 Not Found", b"GET /metrics\n")
        else:
            reply = _response("200 OK", registry.render().encode(), CONTENT_TYPE)
        await stream.send_all(reply)


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside (possibly nested) groups, or None if there are several."""
    if len(group.exceptions) != 1:
        return None
    inner = group.exceptions[0]
    return _sole(inner) if isinstance(inner, BaseExceptionGroup) else inner


async def serve_metrics(
    registry: Registry,
    host: str,
    port: int,
    *,
    health: Callable[[], Health] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled; reports the bound port.

    With ``health``, ``GET /healthz`` answers its Health as JSON: 200 when serving,
    503 otherwise (called once per request, in the event loop: it must not block).

    Raises UsageError for a host that is not a loopback address, OSError if the port
    cannot be bound (``errno.EADDRINUSE`` for a busy one), and any later error of the
    listener as itself, never wrapped in an ExceptionGroup (trio's nurseries are strict).
    A client that resets, stalls or sends garbage costs its own connection only.
    """
    if not is_loopback(host):
        raise UsageError(f"metrics host must be a loopback address, got {host!r}")
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await _handle(registry, health, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away (e.g. a reset): nothing to answer
        except Exception:  # a bug must cost one connection, never the node
            log.exception("metrics request failed")

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            task_status.started(bound)
    except BaseExceptionGroup as group:
        sole = _sole(group)
        if sole is None:
            raise
        raise sole from None
