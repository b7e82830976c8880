"""The daemon's gateway in-process over loopback, with real sockets and worker processes:
ATTACH floods reflect nothing, LEAVE stops the downlink at once, and a client re-attaches by
itself when its gateway restarts under it (DESIGN.md decision 11, docs/wire-link.md)."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from client.gateway_link import open_gateway_link
from mixnode import daemon
from mixnode.config import parse_node_config
from mixnode.daemon import Node
from mixnode.keys import NodeKeys
from overlay import (
    VOICE,
    ClientLink,
    Delivery,
    DeliveryFrame,
    DownlinkKind,
    MailboxKey,
    TopologyDocument,
    public_key,
)

NODE_TOML = """
[node]
name = "gw-1"
role = "gateway"
listen_host = "127.0.0.1"
listen_port = {port}
data_dir = "data"

[gateway]
client_host = "127.0.0.1"
client_port = {client_port}
delivery_rate_hz = 50

[mixing]
workers = 1

[metrics]
enabled = false

[directory]
authorities = ["http://127.0.0.1:9"]
authority_keys = ["{key}"]
epoch_length_s = 600
"""


class _NoDirectory:
    """The gateway's client side needs no directory: publishing and fetching just fail."""

    async def publish(self, descriptor: bytes, signature: bytes) -> None:
        raise OSError("no directory in this test")

    async def fetch(self, epoch: int) -> TopologyDocument:
        raise OSError("no directory in this test")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Gateway:
    """Starts and stops the daemon's gateway on fixed loopback ports with fixed keys."""

    def __init__(self, tmp_path: Path) -> None:
        text = NODE_TOML.format(port=_free_port(), client_port=_free_port(), key="ab" * 32)
        self.config = parse_node_config(text, base_dir=tmp_path)
        self.keys = NodeKeys.load_or_create(tmp_path / "data")
        self.node: Node | None = None
        self._scope: trio.CancelScope | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.config.gateway.client_port)  # type: ignore[union-attr]

    def public_key(self) -> bytes:
        assert self.node is not None
        return public_key(self.node.gateway_private_keys()[-1])

    async def start(self, nursery: trio.Nursery) -> Node:
        self.node = await nursery.start(self._run)
        return self.node

    async def _run(self, task_status: trio.TaskStatus[Node]) -> None:
        with trio.CancelScope() as self._scope:
            await daemon.run(
                self.config, keys=self.keys, directory=_NoDirectory(), task_status=task_status
            )

    async def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        with trio.fail_after(10):
            while self.node is not None and any(
                h.proc is not None and h.proc.poll() is None for h in self.node.workers
            ):
                await trio.sleep(0.05)
        await trio.sleep(0.1)  # the client socket is closed at the end of serve()


async def _count(sock: trio.socket.SocketType, seconds: float) -> int:
    n = 0
    with trio.move_on_after(seconds):
        while True:
            await sock.recv(4096)
            n += 1
    return n


async def test_attach_flood_from_a_silent_source_gets_fewer_bytes_back(tmp_path: Path) -> None:
    """1,000 ATTACHes from one loopback address that never answers its challenges."""
    gw = _Gateway(tmp_path)
    async with trio.open_nursery() as nursery:
        node = await gw.start(nursery)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        await sock.connect(gw.address)
        got = 0

        async def receive() -> None:
            nonlocal got
            while True:
                got += len(await sock.recv(4096))

        nursery.start_soon(receive)
        sent = 0
        for _ in range(1000):
            attach = ClientLink(VOICE, gw.public_key(), MailboxKey.generate()).attach_frame()
            await sock.send(attach)
            sent += len(attach)
            await trio.sleep(0.001)
        await trio.sleep(1.0)
        assert node.gateway is not None
        assert node.gateway.sessions == 0 and node.gateway.counters["attach"] == 0
        assert 0 < got <= sent, (got, sent)  # challenges came, shorter than the ATTACHes
        text = node.metrics.registry.render()  # aggregate counts only, no address or id
        challenges = node.gateway.counters["challenge"]
        assert challenges > 900 and got == challenges * 50
        assert f'phantom_gateway_events_total{{event="challenge"}} {challenges}' in text
        assert "phantom_gateway_sessions 0" in text
        nursery.cancel_scope.cancel()
        sock.close()
    await gw.stop()


async def test_after_leave_no_downlink_datagram_arrives(tmp_path: Path) -> None:
    gw = _Gateway(tmp_path)
    async with trio.open_nursery() as nursery:
        node = await gw.start(nursery)
        assert node.gateway is not None
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind(("127.0.0.1", 0))
        raw.connect(gw.address)
        raw.setblocking(False)
        sock = trio.socket.from_stdlib_socket(raw)
        link = ClientLink(VOICE, gw.public_key(), MailboxKey.generate())
        with trio.fail_after(5):
            while True:
                await sock.send(link.attach_frame())
                with trio.move_on_after(0.2):
                    event = link.receive(await sock.recv(4096))
                    if isinstance(event, Delivery) and event.kind is DownlinkKind.ATTACHED:
                        break
        assert await _count(sock, 0.5) >= 15  # 50 Hz downlink: about 25
        await sock.send(link.leave_frame())
        with trio.fail_after(2):
            while node.gateway.sessions:
                await trio.sleep(0.005)
        while True:  # what was sent before the LEAVE was handled
            try:
                raw.recv(4096)
            except BlockingIOError:
                break
        assert await _count(sock, 1.0) == 0
        assert node.gateway.counters["leave"] == 1
        # The link of the client library says LEAVE on its way out too.
        async with open_gateway_link(VOICE, gw.address, gw.public_key(), MailboxKey.generate()):
            assert node.gateway.sessions == 1
        with trio.fail_after(2):
            while node.gateway.sessions:
                await trio.sleep(0.005)
        assert node.gateway.counters["leave"] == 2
        nursery.cancel_scope.cancel()
        sock.close()
    await gw.stop()


async def test_a_client_reattaches_when_its_gateway_restarts(tmp_path: Path) -> None:
    """The gateway restarts (same keys, same port, no sessions): the link notices, attaches
    again with backoff, counts it, and deliveries flow again both ways."""
    gw = _Gateway(tmp_path)
    key = MailboxKey.generate()
    async with trio.open_nursery() as outer:
        node = await gw.start(outer)
        async with open_gateway_link(
            VOICE, gw.address, gw.public_key(), key, silence_s=0.5
        ) as link:
            assert node.gateway is not None
            node._on_delivery(DeliveryFrame(key.mailbox_id, DownlinkKind.MESSAGE, b"one"))  # noqa: SLF001
            with trio.fail_after(3):
                assert (await link.receive()).delivery.data == b"one"
            await gw.stop()
            assert link.stats["reattaches"] == 0
            async with trio.open_nursery() as inner:
                node2 = await gw.start(inner)
                assert node2.gateway is not None and node2.gateway.sessions == 0
                with trio.fail_after(15):
                    while link.stats["reattaches"] < 1:
                        await link.send(bytes(VOICE.packet_len))  # hints, then uplink
                        await trio.sleep(0.02)
                assert node2.gateway.sessions == 1
                node2._on_delivery(DeliveryFrame(key.mailbox_id, DownlinkKind.MESSAGE, b"two"))  # noqa: SLF001
                with trio.fail_after(3):
                    assert (await link.receive()).delivery.data == b"two"
                before = node2.gateway.counters["uplink"]
                await link.send(bytes(VOICE.packet_len))
                with trio.fail_after(2):
                    while node2.gateway.counters["uplink"] == before:
                        await trio.sleep(0.01)
                assert link.stats["sessions_lost"] == 1
                inner.cancel_scope.cancel()
        await gw.stop()
        outer.cancel_scope.cancel()


async def _proved_attach(sock: trio.socket.SocketType, link: ClientLink) -> None:
    """ATTACH, CHALLENGE, proved ATTACH, until the ATTACHED slot comes (as a client does)."""
    with trio.fail_after(5):
        while True:
            await sock.send(link.attach_frame())
            with trio.move_on_after(0.2):
                while True:
                    event = link.receive(await sock.recv(4096))
                    if isinstance(event, Delivery) and event.kind is DownlinkKind.ATTACHED:
                        return
                    if not isinstance(event, Delivery):
                        break  # the challenge: answer it


async def test_a_flood_of_proved_attaches_from_one_host_locks_out_no_other(
    tmp_path: Path,
) -> None:
    """Regression: 10,000 ATTACHes filled gw-1 and an honest ATTACH was refused. An attacker
    on 127.0.0.1 that answers its challenges attaches 80 proved sessions: it keeps its
    per-host share (64), a client on 127.0.0.2 attaches and receives, the counters show
    it, and the mailboxes of evicted or unknown clients expire so mailbox_depth falls back."""
    gw = _Gateway(tmp_path)
    socks: list[trio.socket.SocketType] = []
    async with trio.open_nursery() as nursery:
        node = await gw.start(nursery)
        assert node.gateway is not None
        cap = node.gateway.max_sessions_per_source
        for _ in range(cap + 16):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            await sock.bind(("127.0.0.1", 0))
            await sock.connect(gw.address)
            await _proved_attach(sock, ClientLink(VOICE, gw.public_key(), MailboxKey.generate()))
        assert node.gateway.sessions == cap
        assert node.gateway.counters["session_evicted"] == 16
        honest_sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks.append(honest_sock)
        await honest_sock.bind(("127.0.0.2", 0))
        await honest_sock.connect(gw.address)
        key = MailboxKey.generate()
        honest = ClientLink(VOICE, gw.public_key(), key)
        await _proved_attach(honest_sock, honest)
        node._on_delivery(DeliveryFrame(key.mailbox_id, DownlinkKind.MESSAGE, b"hello"))  # noqa: SLF001
        with trio.fail_after(3):
            while honest.receive(await honest_sock.recv(4096)) != Delivery(
                DownlinkKind.MESSAGE, b"hello"
            ):
                pass
        for i in range(51):  # deliveries for clients that are not here
            node._on_delivery(DeliveryFrame(bytes([i]) * 16, DownlinkKind.MESSAGE, b"x"))  # noqa: SLF001
        assert node.gateway.mailbox_depth >= 51
        await trio.sleep(1.7)  # frames stale after 1 s; gauges every 0.5 s
        text = node.metrics.registry.render()
        assert "phantom_mailbox_depth 0" in text, text
        assert f"phantom_gateway_sessions {cap + 1}" in text
        assert f"phantom_gateway_mailboxes {cap + 1}" in text
        assert 'phantom_gateway_events_total{event="session_evicted"} 16' in text
        expired = node.gateway.counters["mailbox_expired"]
        assert expired == 16 + 51
        assert f'phantom_gateway_events_total{{event="mailbox_expired"}} {expired}' in text
        nursery.cancel_scope.cancel()
    for sock in socks:
        sock.close()
    await gw.stop()
