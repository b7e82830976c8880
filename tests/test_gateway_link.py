"""The client's gateway link: a clear error when nobody answers, and every error of the
``async with`` block reaching the caller as itself under Trio's strict exception groups."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey
from profile_support import network_file

from client._tasks import open_background
from client.gateway_link import AttachError, GatewayLink, open_gateway_link
from client.phone import Phone
from client.profile import create_profile
from mixnode.gateway import GatewayCore, Reply, Uplink
from overlay import (
    LINK_VERSION,
    VOICE,
    Delivery,
    DownlinkKind,
    FrameType,
    MailboxKey,
    NodeDescriptor,
    NodeRole,
    build_document,
    generate_private_key,
    node_id_for,
    public_key,
)


def _udp(addr: Hashable) -> tuple[str, int]:
    """A client address as the gateway core keeps it (what ``recvfrom`` gave), for
    ``sendto``."""
    assert isinstance(addr, tuple) and len(addr) == 2
    return addr


class _BodyError(Exception):
    pass


async def test_attach_to_nobody_times_out_cleanly() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: sends may see ICMP port unreachable
    with pytest.raises(AttachError):  # AttachError itself, not an ExceptionGroup around it
        async with open_gateway_link(
            VOICE,
            ("127.0.0.1", port),
            public_key(os.urandom(32)),
            MailboxKey.generate(),
            timeout_s=0.6,
        ):
            pass


async def _acknowledge_attach(sock: trio.socket.SocketType, private_key: bytes) -> None:
    """A gateway that answers ATTACHes (the real GatewayCore; no downlink slots)."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    while True:
        data, peer = await sock.recvfrom(4096)
        action = gw.on_datagram(data, peer, trio.current_time(), [private_key])
        if isinstance(action, Reply):
            await sock.sendto(action.datagram, peer)
        for addr, datagram in gw.due_slots(trio.current_time()):
            await sock.sendto(datagram, _udp(addr))


async def test_errors_of_the_block_leave_the_attached_link_as_themselves() -> None:
    gw_key = generate_private_key()
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    with sock:
        async with trio.open_nursery() as gateway:
            gateway.start_soon(_acknowledge_attach, sock, gw_key)
            with trio.fail_after(5):
                with pytest.raises(_BodyError):
                    async with open_gateway_link(
                        VOICE, address, public_key(gw_key), MailboxKey.generate()
                    ) as link:
                        assert link.stats["frames"] >= 1  # the ATTACHED frame came in
                        raise _BodyError
                # and a block that ends normally closes the link without a group either
                key = MailboxKey.generate()
                async with open_gateway_link(VOICE, address, public_key(gw_key), key):
                    pass
            gateway.cancel_scope.cancel()


async def test_open_background_unwraps_only_the_blocks_own_error() -> None:
    with pytest.raises(_BodyError):
        async with open_background() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise _BodyError
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C reaches a CLI's handler as itself
        async with open_background() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise KeyboardInterrupt

    async def fail() -> None:
        raise RuntimeError("a background task's bug")

    with pytest.raises(BaseExceptionGroup) as info:  # a task's error stays in its group
        async with open_background() as nursery:
            nursery.start_soon(fail)
            await trio.sleep_forever()
    assert [type(e) for e in info.value.exceptions] == [RuntimeError]
    with pytest.raises(BaseExceptionGroup) as info:  # both errors, none lost
        async with open_background() as nursery:
            nursery.start_soon(fail)
            try:
                await trio.sleep_forever()
            finally:
                raise _BodyError
    assert {type(e) for e in info.value.exceptions} == {RuntimeError, _BodyError}


async def test_open_background_ends_its_tasks_and_honours_outer_cancellation() -> None:
    finished = []

    async def task() -> None:
        try:
            await trio.sleep_forever()
        finally:
            finished.append(True)

    async with open_background() as nursery:
        nursery.start_soon(task)
        await trio.sleep(0)
    assert finished == [True]  # the block returned, the task was cancelled
    with trio.move_on_after(0.05) as scope:
        async with open_background() as nursery:
            nursery.start_soon(task)
            await trio.sleep_forever()
    assert scope.cancelled_caught and finished == [True, True]


class _Edge:
    """A gateway edge in memory around the real GatewayCore: replies and 50 Hz downlink.

    ``restart()`` swaps in a fresh core (every session and cookie secret lost), as a
    gateway process restart does. ``private_keys``: the epoch keys it accepts attaches
    under (a gateway holds those of the epochs around the current one); ``uplinks``: the
    Sphinx packets it took from clients."""

    def __init__(self, sock: trio.socket.SocketType, private_key: bytes) -> None:
        self.sock, self.private_keys = sock, [private_key]
        self.core = GatewayCore(VOICE, delivery_rate_hz=50.0)
        self.uplinks: list[bytes] = []

    def restart(self) -> None:
        self.core = GatewayCore(VOICE, delivery_rate_hz=50.0)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._downlink)
            while True:
                data, peer = await self.sock.recvfrom(4096)
                action = self.core.on_datagram(data, peer, trio.current_time(), self.private_keys)
                if isinstance(action, Reply):
                    await self.sock.sendto(action.datagram, peer)
                elif isinstance(action, Uplink):
                    self.uplinks.append(action.packet)

    async def _downlink(self) -> None:
        while True:
            for addr, datagram in self.core.due_slots(trio.current_time()):
                await self.sock.sendto(datagram, _udp(addr))
            await trio.sleep(0.005)


@asynccontextmanager
async def _serving(private_key: bytes) -> AsyncIterator[_Edge]:
    """An ``_Edge`` on a fresh loopback port, serving until the block ends."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    edge = _Edge(sock, private_key)
    with sock:
        async with open_background() as nursery:
            nursery.start_soon(edge.serve)
            yield edge


async def test_forged_hints_do_not_reattach_and_a_restart_is_noticed_by_its_hint() -> None:
    """UNKNOWN_SESSION is unauthenticated: while authenticated downlink keeps coming, a
    forged one changes nothing; after a real restart the hint makes the link re-attach
    long before its silence limit (10 s here)."""
    gw_key = generate_private_key()
    key = MailboxKey.generate()
    async with _serving(gw_key) as edge:
        sock = edge.sock
        async with open_gateway_link(
            VOICE, sock.getsockname(), public_key(gw_key), key, silence_s=10.0
        ) as link:
            peer = _udp(next(iter(edge.core._sessions.values())).addr)  # noqa: SLF001
            hint = bytes((LINK_VERSION, FrameType.UNKNOWN_SESSION)) + link._link.keys.session_id  # noqa: SLF001
            for _ in range(20):  # forged hints, from the gateway's own address
                await sock.sendto(hint, peer)
                await trio.sleep(0.05)
            assert link.stats["unknown_session_hints"] == 20
            assert link.stats["reattaches"] == 0 and edge.core.sessions == 1
            edge.restart()
            started = trio.current_time()
            with trio.fail_after(5):
                while link.stats["reattaches"] == 0:
                    await link.send(bytes(VOICE.packet_len))
                    await trio.sleep(0.02)
            assert trio.current_time() - started < 3.0  # by the hint, not the silence
            assert edge.core.sessions == 1 and edge.core.counters["attach"] == 1
            edge.core.enqueue(
                key.mailbox_id,
                Delivery(DownlinkKind.MESSAGE, b"again"),
                trio.current_time(),
            )
            with trio.fail_after(2):
                assert (await link.receive()).delivery.data == b"again"
        assert edge.core.counters["leave"] == 1


async def _flows(edge: _Edge, link: GatewayLink, key: MailboxKey, data: bytes) -> None:
    """A packet sent reaches the gateway, and a delivery queued there reaches the link."""
    before = len(edge.uplinks)
    await link.send(data.ljust(VOICE.packet_len, b"."))
    now = trio.current_time()
    edge.core.enqueue(key.mailbox_id, Delivery(DownlinkKind.MESSAGE, data), now)
    with trio.fail_after(2):
        assert (await link.receive()).delivery.data == data
        while len(edge.uplinks) == before:
            await trio.sleep(0.01)
    assert edge.uplinks[-1].startswith(data)


async def _reattached(link: GatewayLink, count: int, within_s: float) -> None:
    """Wait (up to ``within_s``) for the link's ``count``-th re-attach, sending meanwhile."""
    with trio.fail_after(within_s):
        while link.stats["reattaches"] < count:
            await link.send(bytes(VOICE.packet_len))
            await trio.sleep(0.02)


async def test_a_session_lost_in_a_new_epoch_reattaches_under_the_new_key() -> None:
    """A gateway keeps only the keys of the epochs around the current one. A session lost
    after the epoch moved on is re-attached under the key the link was given for the new
    epoch (``set_gateway_key``: what the listener does with each topology it adopts),
    whether the key came before the loss or while the link was already trying again
    under the old one; traffic flows both ways after each."""
    k1, k2, k3 = generate_private_key(), generate_private_key(), generate_private_key()
    key = MailboxKey.generate()
    async with _serving(k1) as edge:
        async with open_gateway_link(
            VOICE, edge.sock.getsockname(), public_key(k1), key, silence_s=1.0
        ) as link:
            await _flows(edge, link, key, b"epoch 1")
            # Epoch 2 is published (the gateway holds k1 and k2); the client adopts it:
            # the session in use is kept.
            edge.private_keys = [k2, k1]
            link.set_gateway_key(public_key(k2))
            assert link.gateway_key == public_key(k2)
            await _flows(edge, link, key, b"still epoch 1's session")
            assert link.stats["reattaches"] == 0
            # Past the overlap the gateway restarts holding k2 only: re-attached under k2.
            edge.private_keys = [k2]
            edge.restart()
            await _reattached(link, 1, 5.0)
            await _flows(edge, link, key, b"epoch 2")
            # Epoch 3: the gateway restarts holding only k3 before the client has the
            # key; its attempts under k2 fail (and back off) until the key comes.
            edge.private_keys = [k3]
            edge.restart()
            with trio.fail_after(10):
                while link.stats["reattach_failed"] < 3:
                    await trio.sleep(0.05)
            assert link.stats["reattaches"] == 1 and edge.core.sessions == 0
            given = trio.current_time()
            link.set_gateway_key(public_key(k3))
            await _reattached(link, 2, 3.0)
            assert trio.current_time() - given < 0.5  # not after the attempt or backoff
            await _flows(edge, link, key, b"epoch 3")
            assert edge.core.sessions == 1 and link.stats["gateway_key_changes"] == 2
            with pytest.raises(ValueError, match="32 bytes"):
                link.set_gateway_key(bytes(31))
        assert edge.core.counters["leave"] == 1


def _epochs_of_nodes(
    epochs: tuple[int, ...],
) -> tuple[list[NodeDescriptor], dict[int, bytes]]:
    """A gateway and one mix per layer, each keyed for ``epochs``; the gateway's X25519
    secrets by epoch."""
    nodes, gateway_keys = [], {}
    for i, layer in enumerate((0, 1, 2, 3)):
        ik = bytes(SigningKey(os.urandom(32)).verify_key)
        secrets = {e: generate_private_key() for e in epochs}
        if layer == 0:
            gateway_keys = secrets
        role = NodeRole.GATEWAY if layer == 0 else NodeRole.MIX
        nodes.append(NodeDescriptor(
            node_id=node_id_for(ik), name=f"n{i}", role=role, layer=layer, host="127.0.0.1",
            port=4000 + i, client_port=5000 if layer == 0 else None, identity_key=ik,
            epoch_keys={e: public_key(k) for e, k in secrets.items()},
        ))  # fmt: skip
    return nodes, gateway_keys


async def test_the_listener_adopting_an_epoch_gives_its_link_the_gateways_new_key(
    tmp_path: Path,
) -> None:
    """``Phone.adopt`` (the listener's topology refresh): the uplink takes the new document
    and the link the gateway's key for its epoch, so a session lost after the gateway
    dropped the old key comes back; a document without our gateway keeps the key."""
    nodes, secrets = _epochs_of_nodes((7, 8))
    docs = [build_document(e, epoch_length_s=600, geometry=VOICE, descriptors=nodes)
            for e in (7, 8, 9)]  # fmt: skip
    gateway = docs[0].gateways[0]
    profile = create_profile(tmp_path / "p", network_file(), gateway.node_id, None)
    async with _serving(secrets[7]) as edge:
        async with open_gateway_link(
            VOICE, edge.sock.getsockname(), gateway.epoch_key(7), profile.mailbox_key,
            silence_s=1.0,
        ) as link:  # fmt: skip
            phone = Phone(profile, docs[0], link)
            phone.adopt(docs[1])
            assert phone.uplink.doc is docs[1] and link.gateway_key == public_key(secrets[8])
            phone.adopt(docs[2])  # no key of our gateway for epoch 9: nobody to attach to
            assert phone.uplink.doc is docs[2] and link.gateway_key == public_key(secrets[8])
            assert phone.counters == {"topology_adopted": 2, "gateway_not_in_topology": 1}
            edge.private_keys = [secrets[8]]
            edge.restart()
            await _reattached(link, 1, 5.0)
            await _flows(edge, link, profile.mailbox_key, b"epoch 8")
            assert link.stats["reattach_failed"] == 0
