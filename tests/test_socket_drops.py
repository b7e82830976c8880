"""Kernel receive drops made visible, and the gateway client port's length filter.

Real loopback sockets throughout: a receive buffer is filled until the kernel drops, and
the count must appear where the node reads it (SO_MEMINFO) and in its metrics. The
real-process versions (a stopped worker, a stopped gateway) are in tests/test_flood.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from config_cases import free_port
from hypothesis import given, settings
from hypothesis import strategies as st

from mixnode._udp import DropCount, attach_length_filter, kernel_drops, length_filter
from mixnode.config import parse_node_config
from mixnode.daemon import Node
from mixnode.gateway import GatewayCore
from mixnode.keys import NodeKeys
from overlay import LINK_VERSION, VOICE, DropReason, FrameType, LinkCodec

CODEC = LinkCodec(VOICE)
UPLINK_LEN = CODEC.frame_len(FrameType.UPLINK)
MAX_UDP = 65507  # bytes: the largest IPv4 UDP payload

NODE_TOML = """
[node]
name = "gw-1"
role = "gateway"
listen_port = {port}
data_dir = "data"

[gateway]
client_port = {client_port}
delivery_rate_hz = 50

[directory]
authorities = ["http://127.0.0.1:31900"]
authority_keys = ["{key}"]
epoch_length_s = 600
"""


def _pair(rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket, tuple[str, int]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf is not None:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return rx, tx, rx.getsockname()


def _drain(rx: socket.socket) -> list[bytes]:
    """Every waiting datagram."""
    out = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            out.append(rx.recv(MAX_UDP))
        except BlockingIOError:
            break
    return out


def _settle() -> None:
    time.sleep(0.05)  # loopback delivers in softirq, nearly at once; leave it a moment


def test_drop_count_rises_when_the_receive_buffer_fills() -> None:
    rx, tx, addr = _pair(rcvbuf=64 * 1024)
    assert kernel_drops(rx) == 0
    sent = 3000
    for _ in range(sent):
        tx.sendto(bytes(UPLINK_LEN), addr)
    _settle()
    count = kernel_drops(rx)  # known before anything is read
    got = _drain(rx)
    assert 0 < len(got) < sent  # the buffer was full: the kernel dropped the rest
    assert count == sent - len(got)
    counter = DropCount()
    assert counter.update(count) == count
    assert counter.update(count) == 0
    rx.close()
    tx.close()
    with pytest.raises(OSError):
        kernel_drops(rx)


def test_length_filter_keeps_frame_lengths_and_counts_the_rest() -> None:
    rx, tx, addr = _pair()
    keep = sorted({CODEC.frame_len(t) for t in FrameType})
    attach_length_filter(rx, keep)
    sizes = [1, 2, 9, keep[0] - 1, keep[0] + 1, 9000, MAX_UDP, *keep]
    for n in sizes:
        tx.sendto(os.urandom(n), addr)
    _settle()
    assert [len(d) for d in _drain(rx)] == keep
    assert kernel_drops(rx) == len(sizes) - len(keep)  # refused ones count as kernel drops
    rx.close()
    tx.close()


@settings(max_examples=40, deadline=None)
@given(
    keep=st.sets(st.integers(1, MAX_UDP), min_size=1, max_size=6),
    probe=st.lists(st.integers(1, MAX_UDP), min_size=1, max_size=6),
)
def test_length_filter_property(keep: set[int], probe: list[int]) -> None:
    """The real kernel delivers exactly the datagrams whose length is in the set."""
    sizes = [*probe, *keep]
    rx, tx, addr = _pair(rcvbuf=1 << 20)
    attach_length_filter(rx, keep)
    for n in sizes:
        tx.sendto(bytes(n), addr)
    _settle()
    assert [len(d) for d in _drain(rx)] == [n for n in sizes if n in keep]
    rx.close()
    tx.close()


def test_length_filter_refuses_bad_lengths() -> None:
    for bad in ([], [0], [MAX_UDP + 1], list(range(1, 300))):
        with pytest.raises(ValueError):
            length_filter(bad)


@given(steps=st.lists(st.integers(0, 2**31), max_size=20), start=st.integers(0, 2**32 - 1))
def test_drop_count_increments_survive_the_32_bit_wrap(steps: list[int], start: int) -> None:
    counter = DropCount()
    assert counter.update(start) == start
    total, kernel = 0, start
    for step in steps:
        kernel = (kernel + step) % 2**32
        total += counter.update(kernel)
    assert total == sum(steps)


# -- the gateway's client port (daemon edge, in process, real sockets) ------------------


@contextlib.contextmanager
def _gateway(tmp_path: Path) -> Iterator[Node]:
    """A gateway's control plane with its real sockets bound; no workers, no tasks."""
    port = client_port = free_port()
    while client_port == port:
        client_port = free_port()
    text = NODE_TOML.format(key="ab" * 32, port=port, client_port=client_port)
    cfg = parse_node_config(text, base_dir=tmp_path)
    node = Node(cfg, keys=NodeKeys.load_or_create(tmp_path / "data"), clock=time.monotonic)
    node._bind()
    node.gateway = GatewayCore(VOICE, delivery_rate_hz=50.0)
    node._gw_keys = [os.urandom(32)]
    try:
        yield node
    finally:
        for h in node.workers:
            h.udp.close()
        assert node.client_raw is not None
        node.client_raw.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Node]:
    with _gateway(tmp_path) as node:
        yield node


def _events(gw: GatewayCore) -> int:
    """Everything the gateway core counted: its events and its drops."""
    return sum(gw.counters.values()) + sum(gw.drops.values())


def _read_all(node: Node) -> int:
    total = 0
    while n := node.read_client_batch():
        total += n
    return total


def _metric(node: Node, name: str, label: str) -> float:
    metric = getattr(node.metrics, name)
    return float(metric.value(label))


def test_client_port_drops_junk_by_length_in_the_kernel(gateway: Node) -> None:
    assert gateway.client_port is not None
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = ("127.0.0.1", gateway.client_port)
    junk = [1, 100, UPLINK_LEN - 1, UPLINK_LEN + 1, 9000, MAX_UDP]
    for n in junk:
        tx.sendto(os.urandom(n), addr)
    tx.sendto(os.urandom(UPLINK_LEN), addr)  # right length: parsed, refused as malformed
    _settle()
    assert _read_all(gateway) == 1
    gateway.count_socket_drops()
    assert gateway.gateway is not None
    assert _events(gateway.gateway) == 1  # one drop, by the link parser
    assert gateway.drops[DropReason.WRONG_LENGTH] == 0  # the kernel had them already
    assert _metric(gateway, "socket_drops", "client") == len(junk)
    tx.close()


def test_client_port_counts_a_full_receive_buffer(gateway: Node) -> None:
    """Fill the client socket while the control plane does not read: every datagram is
    either read or in socket_drops_total{socket="client"}."""
    assert gateway.client_port is not None
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = ("127.0.0.1", gateway.client_port)
    sent = 0
    for _ in range(30):  # a 4 MiB buffer (8 MiB with overhead) holds a few thousand
        for _ in range(1000):
            tx.sendto(os.urandom(UPLINK_LEN), addr)
        sent += 1000
    _settle()
    gateway.count_socket_drops()
    read = _read_all(gateway)
    drops = _metric(gateway, "socket_drops", "client")
    assert read < sent and drops > 0
    assert read + drops == sent
    assert gateway.metrics.packets_in.value() == read
    tx.close()


def test_client_reader_checks_length_without_the_kernel_filter(gateway: Node) -> None:
    """Where no filter is attached, oversized datagrams are read truncated (MSG_TRUNC) and
    dropped as wrong_length before any parsing."""
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1", 0))
    plain.setblocking(False)
    assert gateway.client_raw is not None
    gateway.client_raw.close()
    gateway.client_raw = plain
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big = bytes([1, FrameType.UPLINK]) + bytes(MAX_UDP - 2)  # an uplink head, but 64 KB
    for d in (big, bytes(UPLINK_LEN + 1), b"", os.urandom(UPLINK_LEN)):
        tx.sendto(d, plain.getsockname())
    _settle()
    assert _read_all(gateway) == 4
    assert gateway.drops[DropReason.WRONG_LENGTH] == 3
    assert gateway.gateway is not None
    assert _events(gateway.gateway) == 1
    tx.close()


def test_every_client_datagram_is_read_or_counted(tmp_path: Path) -> None:
    """Fuzz: any datagrams at the client port (lengths near and far from frame lengths,
    valid heads or not) cost no crash, and each is either dropped by the kernel or read
    and then counted by the length check or by the gateway core."""
    heads = [bytes((v, t)) for v in (1, LINK_VERSION) for t in FrameType] + [b"", b"\x00\x00"]
    lengths = sorted({CODEC.frame_len(t) for t in FrameType})
    sizes = st.one_of(
        st.sampled_from(lengths),
        st.sampled_from(lengths).map(lambda n: n + 1),
        st.integers(0, 2048),
        st.integers(2049, MAX_UDP),
    )
    datagram = st.tuples(st.sampled_from(heads), sizes).map(
        lambda hs: (hs[0] + os.urandom(hs[1]))[: hs[1]] if hs[1] else b""
    )

    with _gateway(tmp_path) as node:
        assert node.client_port is not None and node.client_raw is not None
        core, raw = node.gateway, node.client_raw
        assert core is not None
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        @settings(max_examples=60, deadline=None)
        @given(batch=st.lists(datagram, min_size=1, max_size=80))
        def check(batch: list[bytes]) -> None:
            kernel0, core0 = kernel_drops(raw), _events(core)
            wrong0 = node.drops[DropReason.WRONG_LENGTH]
            for d in batch:
                tx.sendto(d, ("127.0.0.1", node.client_port))
            _settle()
            read = _read_all(node)
            kernel = kernel_drops(raw) - kernel0
            assert read + kernel == len(batch)
            assert kernel == sum(1 for d in batch if len(d) not in lengths)
            wrong = node.drops[DropReason.WRONG_LENGTH] - wrong0
            assert wrong == 0  # the kernel filter had every one of them
            assert _events(core) - core0 >= read

        check()
        tx.close()
