"""Data-plane pieces of a node without processes: socket sharding, link emulation, shedding."""

from __future__ import annotations

import os
import socket
import time

import pytest
from nacl.signing import SigningKey
from worker_support import worker_settings

from mixnode._worker import Worker, bind_sharded, shard_of
from overlay import (
    VOICE,
    DropReason,
    Hop,
    LinkCodec,
    NodeDescriptor,
    NodeRole,
    PacketFrame,
    TopologyDocument,
    TopologyFrame,
    build_document,
    create_forward,
    node_id_for,
    public_key,
)

CODEC = LinkCodec(VOICE)
PEER = ("127.0.0.1", 9)  # sender address of the datagrams


def _drain(s: socket.socket) -> list[bytes]:
    s.setblocking(False)
    out = []
    while True:
        try:
            out.append(s.recv(4096))
        except BlockingIOError:
            return out


def test_reuseport_shards_by_the_first_alpha_byte() -> None:
    socks = bind_sharded("127.0.0.1", 0, 2)
    port = socks[0].getsockname()[1]
    assert socks[1].getsockname()[1] == port
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    frames = [CODEC.node_packet(b"\x01" + os.urandom(VOICE.packet_len - 1)) for _ in range(40)]
    for f in frames + frames:  # every packet twice: an identical copy lands beside it
        c.sendto(f, ("127.0.0.1", port))
    time.sleep(0.2)
    got = [_drain(s) for s in socks]
    for i, received in enumerate(got):
        assert received, "both workers get a share"
        for f in received:
            assert shard_of(f[2:], 2) == i
            assert received.count(f) == 2
    assert sum(map(len, got)) == 80
    for s in socks + [c]:
        s.close()


def _worker(**settings: object) -> tuple[Worker, socket.socket, bytes]:
    udp = bind_sharded("127.0.0.1", 0, 1)[0]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    w = Worker(worker_settings(**settings), udp, b)
    sk = os.urandom(32)
    w.core.install_key(1, sk, time.time() + 100)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    w.peers = {b"s" * 16: sink.getsockname()}
    return w, sink, sk


def _frame(sk: bytes) -> bytes:
    path = [Hop(b"n" * 16, public_key(sk), 0), Hop(b"s" * 16, public_key(os.urandom(32)), 0)]
    return CODEC.node_packet(create_forward(VOICE, path, b"m" * 16, b"x"))


def test_forwarding_and_link_loss_emulation() -> None:
    w, sink, sk = _worker()
    now = time.monotonic()
    w.on_datagram(_frame(sk), PEER, now, now)
    w.run_due(now + 0.001)
    time.sleep(0.05)
    assert len(_drain(sink)) == 1
    lossy, sink2, sk2 = _worker(link_loss=0.99999)
    for _ in range(20):
        lossy.on_datagram(_frame(sk2), PEER, now, now)
    lossy.run_due(now + 0.001)
    time.sleep(0.05)
    assert _drain(sink2) == [] and lossy.core.drops[DropReason.LINK_LOSS] == 20


def test_link_delay_emulation_holds_packets() -> None:
    w, sink, sk = _worker(link_delay_ms=200.0, link_jitter_ms=0.0)
    now = time.monotonic()
    w.on_datagram(_frame(sk), PEER, now, now)
    w.run_due(now + 0.001)
    time.sleep(0.05)
    assert _drain(sink) == [] and len(w.emulated) == 1
    w.run_due(now + 0.25)
    time.sleep(0.05)
    assert len(_drain(sink)) == 1


def test_overdue_datagrams_shed_before_crypto_and_junk_counted() -> None:
    w, _, sk = _worker()
    now = time.monotonic()
    w.on_datagram(_frame(sk), PEER, now - 1.0, now)  # waited a second in the socket
    w.on_datagram(b"\x01\x09junk", PEER, now, now)
    w.on_datagram(os.urandom(3000), PEER, now, now)
    c, d = w.core.counters, w.core.drops
    assert d[DropReason.LATE] == 1 and d[DropReason.LINK_MALFORMED] == 2 and c["packets_in"] == 3
    assert c["forwarded"] == 0


def _doc_listing(addr: tuple[str, int], max_delay_us: int) -> TopologyDocument:
    """A document whose only mix listens at ``addr``."""
    ik = bytes(SigningKey(os.urandom(32)).verify_key)
    mix = NodeDescriptor(
        node_id=node_id_for(ik),
        name="m1",
        role=NodeRole.MIX,
        layer=1,
        host=addr[0],
        port=addr[1],
        client_port=None,
        identity_key=ik,
        epoch_keys={7: public_key(os.urandom(32))},
    )
    return build_document(
        7, epoch_length_s=600, geometry=VOICE, descriptors=[mix], max_delay_us=max_delay_us
    )


def _frame_with_delay(sk: bytes, delay_us: int) -> bytes:
    path = [Hop(b"n" * 16, public_key(sk), delay_us), Hop(b"s" * 16, public_key(os.urandom(32)), 0)]
    return CODEC.node_packet(create_forward(VOICE, path, b"m" * 16, b"x"))


def test_document_max_delay_and_previous_hops_reach_the_core() -> None:
    w, _, sk = _worker(max_queue=20)
    listed = ("127.0.0.1", 4001)
    w.on_control(
        TopologyFrame(_doc_listing(listed, 1_000_000).to_bytes()).to_bytes(), time.monotonic()
    )
    assert w.core.max_delay_us == 1_000_000
    now = time.monotonic()
    w.on_datagram(_frame_with_delay(sk, 1_000_001), PEER, now, now)
    assert w.core.drops[DropReason.DELAY_TOO_LONG] == 1
    # Unlisted senders, however many addresses they use, share one class: they hold half.
    for port in range(100, 130):
        w.on_datagram(_frame_with_delay(sk, 1_000_000), ("127.0.0.9", port), now, now)
    assert w.core.queue_depth == 10 and w.core.drops[DropReason.QUEUE_FULL] == 20
    # The listed mix and the daemon's uplink packets still find room.
    for _ in range(3):
        w.on_datagram(_frame_with_delay(sk, 1000), listed, now, now)
    w.on_control(PacketFrame(_frame_with_delay(sk, 1000)[2:]).to_bytes(), now)
    assert w.core.queue_depth == 14 and w.core.drops[DropReason.QUEUE_FULL] == 20


@pytest.mark.parametrize("host", ["\u00fc" * 70, "a b", "bad\x00host", "x" * 300])
def test_an_unusable_peer_address_costs_one_counted_packet_not_the_worker(host: str) -> None:
    """Regression: a listed host that sendto cannot encode killed the worker (TypeError)."""
    w, sink, sk = _worker()
    w.peers = {b"s" * 16: (host, 9)}
    now = time.monotonic()
    w.on_datagram(_frame(sk), PEER, now, now)
    w.run_due(now + 0.001)
    assert w.core.drops[DropReason.SEND_FAILED] == 1
    w.peers = {b"s" * 16: sink.getsockname()}  # the next document lists it properly
    w.on_datagram(_frame(sk), PEER, now, now)
    w.run_due(now + 0.001)
    time.sleep(0.05)
    assert len(_drain(sink)) == 1
