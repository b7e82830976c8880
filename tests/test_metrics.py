"""Metrics: Prometheus text rendering, fixed label sets, the loopback-only endpoint."""

from __future__ import annotations

import errno
import math
import socket
import struct
from typing import Any

import pytest
import trio

from mixnode.metrics import DROP_REASONS, SOCKETS, NodeMetrics, Registry, serve_metrics
from overlay import UsageError


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in output")


def test_render_counters_gauges_histogram() -> None:
    m = NodeMetrics()
    m.packets_in.inc(3)
    m.packets_out.inc()
    m.drops.inc(label="replay")
    m.drops.inc(2, label="mac_mismatch")
    m.queue_depth.set(17)
    m.queue_depth.dec(2)
    for v in (0.00003, 0.0002, 0.0002, 0.003, 5.0):
        m.processing_seconds.observe(v)
    text = m.registry.render()
    assert "# TYPE phantom_packets_in_total counter" in text
    assert "# TYPE phantom_queue_depth gauge" in text
    assert "# TYPE phantom_processing_seconds histogram" in text
    assert _sample(text, "phantom_packets_in_total") == 3
    assert _sample(text, 'phantom_drops_total{reason="mac_mismatch"}') == 2
    assert _sample(text, 'phantom_drops_total{reason="replay"}') == 1
    assert _sample(text, 'phantom_drops_total{reason="late"}') == 0
    assert _sample(text, "phantom_queue_depth") == 15
    assert _sample(text, 'phantom_processing_seconds_bucket{le="5e-05"}') == 1
    assert _sample(text, 'phantom_processing_seconds_bucket{le="0.00025"}') == 3
    assert _sample(text, 'phantom_processing_seconds_bucket{le="0.005"}') == 4
    assert _sample(text, 'phantom_processing_seconds_bucket{le="+Inf"}') == 5
    assert _sample(text, "phantom_processing_seconds_count") == 5
    assert math.isclose(_sample(text, "phantom_processing_seconds_sum"), 5.00343)


def test_labels_are_a_fixed_set() -> None:
    m = NodeMetrics()
    m.drops.inc(label="10.1.2.3")  # never a new series: counted as "other"
    text = m.registry.render()
    assert "10.1.2.3" not in text
    assert _sample(text, 'phantom_drops_total{reason="other"}') == 1
    series = [x for x in text.splitlines() if x.startswith("phantom_drops_total{")]
    assert len(series) == len(DROP_REASONS)
    with pytest.raises(UsageError):
        m.packets_in.inc(label="x")
    with pytest.raises(UsageError):
        m.packets_in.inc(-1)


def test_registry_rejects_duplicates_and_bad_names() -> None:
    r = Registry()
    r.counter("a_total", "A.")
    with pytest.raises(UsageError):
        r.counter("a_total", "again")
    with pytest.raises(UsageError):
        r.counter("bad-name", "x")
    with pytest.raises(UsageError):
        r.histogram("h", "x", [1.0, 0.5])


async def _get(port: int, path: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_endpoint_serves_metrics_on_loopback() -> None:
    m = NodeMetrics()
    m.cover_sent.inc(4)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, m.registry, "127.0.0.1", 0)
        body = await _get(port, b"/metrics")
        assert body.startswith(b"HTTP/1.1 200 OK")
        assert b"text/plain; version=0.0.4" in body
        assert b"phantom_cover_sent_total 4" in body
        assert (await _get(port, b"/secret")).startswith(b"HTTP/1.1 404")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.org", "::"])
async def test_endpoint_refuses_non_loopback(host: str) -> None:
    with pytest.raises(UsageError, match="loopback"):
        await serve_metrics(Registry(), host, 0)


def test_socket_drops_are_labelled_by_socket_only() -> None:
    m = NodeMetrics()
    m.socket_drops.inc(5, label="client")
    m.socket_drops.inc(2, label="packet")
    m.socket_drops.inc(label="127.0.0.1:4000")  # never a new series
    text = m.registry.render()
    assert "# TYPE phantom_socket_drops_total counter" in text
    assert _sample(text, 'phantom_socket_drops_total{socket="client"}') == 5
    assert _sample(text, 'phantom_socket_drops_total{socket="packet"}') == 2
    assert _sample(text, 'phantom_socket_drops_total{socket="other"}') == 1
    series = [x for x in text.splitlines() if x.startswith("phantom_socket_drops_total{")]
    assert len(series) == len(SOCKETS) + 1


async def test_busy_port_is_an_oserror_not_a_group() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as info:
            await serve_metrics(Registry(), "127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError) as info:
                await nursery.start(serve_metrics, Registry(), "127.0.0.1", port)
            assert info.value.errno == errno.EADDRINUSE


async def test_a_client_that_resets_costs_its_connection_only() -> None:
    """A reset in the middle of a request used to end the server (and the node with it)
    with a BrokenResourceError inside three ExceptionGroups."""
    m = NodeMetrics()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, m.registry, "127.0.0.1", 0)
        for _ in range(3):
            s = socket.socket()
            s.connect(("127.0.0.1", port))
            s.send(b"GET /met")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST
        await trio.sleep(0.2)
        assert (await _get(port, b"/metrics")).startswith(b"HTTP/1.1 200 OK")
        nursery.cancel_scope.cancel()


async def test_listener_error_after_start_reaches_the_caller_as_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Errors from inside the server's nursery are not wrapped in an ExceptionGroup. The
    listener is replaced here (a unit test); the real listener is used above."""

    async def failing(handler: Any, listeners: Any, *, task_status: Any) -> None:
        task_status.started(listeners)
        await trio.sleep(0)
        raise OSError(errno.EBADF, "listener gone")

    monkeypatch.setattr(trio, "serve_listeners", failing)
    with pytest.raises(OSError) as info:
        await serve_metrics(Registry(), "127.0.0.1", 0)
    assert info.value.errno == errno.EBADF
