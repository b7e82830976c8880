"""A caller runs on one monotonic clock: a wall-clock step changes nothing in a call.

The fault: the gateway link stamped arrivals with ``time.time()`` and the caller subtracted
a wall offset read once (``Caller(..., wall_offset_s=...)``, default 0). A wall-clock step
during a call shifted every arrival the jitter buffer saw, and a caller built as its module
docstring shows (no offset) slept until ~1.7e9 and never played. Now the link stamps on
Trio's clock, the caller has no offset to get wrong and refuses stamps from another clock,
and the report compares two callers' times on CLOCK_MONOTONIC.
"""

from __future__ import annotations

import ast
import os
import random
import socket
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_call import LINK_S, MemoryNet, _network, converse

from client import InMemoryChannel, artificial_voice
from client._jitter import JitterBuffer
from client._media import MediaPacket
from client.call import Address, Caller, Contact, monotonic_offset_s
from client.gateway_link import GatewayLink, open_gateway_link
from mixnode.gateway import GatewayCore, Reply, Uplink
from overlay import (
    VOICE,
    Deliver,
    Delivery,
    DownlinkKind,
    Forward,
    MailboxKey,
    TopologyDocument,
    UsageError,
    generate_private_key,
    process_packet,
    public_key,
)
from testbed.demo import direction_report

CLIENT = Path(__file__).resolve().parent.parent / "client"
TIMING = ("one_way_ms", "mouth_to_ear_ms")  # percentile blocks of a direction's report


class WallClock:
    """``time.time`` and ``time.time_ns`` of the whole process, moved by ``step``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real, real_ns = time.time, time.time_ns
        monkeypatch.setattr(time, "time", lambda: real() + self.offset)
        monkeypatch.setattr(time, "time_ns", lambda: real_ns() + int(self.offset * 1e9))

    def step(self, seconds: float) -> None:
        self.offset += seconds


class Pushes:
    """Every (arrival stamp, Trio time) the jitter buffers are given, via the real class."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[float, float]] = []
        push = JitterBuffer.push_packet

        def recording(jb: JitterBuffer, packet: MediaPacket, arrival_time: float) -> None:
            self.seen.append((arrival_time, trio.current_time()))
            push(jb, packet, arrival_time)

        monkeypatch.setattr(JitterBuffer, "push_packet", recording)


# -- the real link over loopback ---------------------------------------------------------


class LoopbackNet:
    """Each gateway of ``doc`` is the real GatewayCore behind a UDP socket on 127.0.0.1
    (client sessions, 50 Hz constant-rate downlink); the mixes between them run the real
    Sphinx processing in memory, like ``test_call.MemoryNet``."""

    def __init__(self, doc: TopologyDocument, secrets: dict[bytes, bytes], nursery: trio.Nursery):
        self.doc, self.secrets, self.nursery = doc, secrets, nursery
        self.cores: dict[bytes, GatewayCore] = {}
        self.socks: dict[bytes, trio.socket.SocketType] = {}
        self.dropped = 0

    async def start(self) -> None:
        for g in self.doc.gateways:
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            self.socks[g.node_id] = sock
            self.cores[g.node_id] = GatewayCore(VOICE, delivery_rate_hz=50.0)
            self.nursery.start_soon(self._serve, g.node_id)
            self.nursery.start_soon(self._downlink, g.node_id)

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()

    def link(self, address: Address, key: MailboxKey) -> AbstractAsyncContextManager[GatewayLink]:
        """``open_gateway_link`` to the gateway of ``address`` for ``key``'s mailbox."""
        gw = address.gateway_id
        return open_gateway_link(
            VOICE, self.socks[gw].getsockname(), public_key(self.secrets[gw]), key
        )

    async def _serve(self, gw: bytes) -> None:
        sock, core = self.socks[gw], self.cores[gw]
        while True:
            data, peer = await sock.recvfrom(4096)
            action = core.on_datagram(data, peer, trio.current_time(), [self.secrets[gw]])
            if isinstance(action, Reply):
                await sock.sendto(action.datagram, peer)
            elif isinstance(action, Uplink):
                self.nursery.start_soon(self._carry, gw, action.packet)

    async def _downlink(self, gw: bytes) -> None:
        sock, core = self.socks[gw], self.cores[gw]
        while True:
            for addr, datagram in core.due_slots(trio.current_time()):
                await sock.sendto(datagram, addr)
            await trio.sleep(0.005)

    async def _carry(self, node: bytes, packet: bytes) -> None:
        while True:
            result = process_packet(VOICE, self.secrets[node], packet)
            await trio.sleep(result.delay_us / 1e6)
            match result:
                case Forward():
                    await trio.sleep(LINK_S)
                    node, packet = result.next_hop, result.packet
                case Deliver():
                    delivery = Delivery(DownlinkKind.MESSAGE, result.message)
                    self.cores[node].enqueue(result.mailbox, delivery, trio.current_time())
                    return
                case _:
                    self.dropped += 1
                    return


async def test_a_caller_built_as_documented_plays_over_real_links_through_wall_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two callers built exactly as ``client.call``'s docstring shows, on real
    ``GatewayLink``s over loopback: the call connects and plays, and wall-clock steps of
    -30 s and +1 s in mid-call change no arrival stamp the jitter buffers are given."""
    wall, pushes = WallClock(monkeypatch), Pushes(monkeypatch)
    doc, secrets = _network()
    key_a, key_b = MailboxKey.generate(), MailboxKey.generate()
    me_a = Address(doc.gateways[0].node_id, key_a.mailbox_id)
    me_b = Address(doc.gateways[1].node_id, key_b.mailbox_id)
    signal_key = os.urandom(32)
    chan_a, chan_b = InMemoryChannel.pair()
    voice_a, voice_b = artificial_voice(8.0, seed=1), artificial_voice(8.0, seed=2)
    steps: list[tuple[float, int]] = []  # (Trio time of the step, pushes before it)

    async def talk() -> None:
        for step in (-30.0, 1.0):
            await trio.sleep(1.5)
            steps.append((trio.current_time(), len(pushes.seen)))
            wall.step(step)
        await trio.sleep(2.5)  # room for >= 25 frames after the last step on a loaded machine

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            net = LoopbackNet(doc, secrets, nursery)
            try:
                await net.start()
                async with net.link(me_a, key_a) as link_a, net.link(me_b, key_b) as link_b:
                    a = Caller(link_a, doc, me_a, Contact(me_b, signal_key), chan_a, voice_a)
                    b = Caller(link_b, doc, me_b, Contact(me_a, signal_key), chan_b, voice_b)
                    async with trio.open_nursery() as callers:
                        await callers.start(a.run)
                        await callers.start(b.run)
                        await trio.sleep(0.3)
                        await converse(a, b, talk, timeout_s=10)
                        await trio.sleep(0.5)
                        callers.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
            finally:
                net.close()
    assert b.end_reason is not None and b.end_reason.name == "HANGUP"
    # Every stamp was read on Trio's clock shortly before the push, before and after a step.
    assert len(pushes.seen) > steps[-1][1] > steps[0][1] > 10
    assert all(0.0 <= pushed - at < 0.5 for at, pushed in pushes.seen)
    for tx, rx in ((a, b), (b, a)):
        played = [t for _, kind, t in rx.rx.items if kind == "frame"]
        assert len(played) >= 0.5 * tx.tx.frames_sent  # it plays ...
        assert sum(t > steps[-1][0] for t in played) >= 25  # ... and goes on after the steps
        report = direction_report(tx, rx, artificial_voice(8.0), pesq=False)
        m2e = report["mouth_to_ear_ms"]
        assert isinstance(m2e, dict) and 40 <= m2e["p50"] <= m2e["max"] < 1500


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=6))
def test_link_stamps_stay_on_trios_clock_whatever_the_wall_clock_does(
    steps: list[float],
) -> None:
    """Any sequence of wall-clock steps: each delivery's ``at`` lies between the moment
    the gateway queued it and the moment ``receive()`` returned it, on Trio's clock."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        wall = WallClock(monkeypatch)

        async def run() -> None:
            gw_secret, key = generate_private_key(), MailboxKey.generate()
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            core = GatewayCore(VOICE, delivery_rate_hz=50.0)

            async def serve() -> None:
                while True:
                    data, peer = await sock.recvfrom(4096)
                    action = core.on_datagram(data, peer, trio.current_time(), [gw_secret])
                    if isinstance(action, Reply):
                        await sock.sendto(action.datagram, peer)

            async def downlink() -> None:
                while True:
                    for addr, datagram in core.due_slots(trio.current_time()):
                        await sock.sendto(datagram, addr)
                    await trio.sleep(0.005)

            with sock, trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(serve)
                    nursery.start_soon(downlink)
                    addr = sock.getsockname()
                    async with open_gateway_link(VOICE, addr, public_key(gw_secret), key) as link:
                        for i, step in enumerate(steps):
                            wall.step(step)
                            queued = trio.current_time()
                            message = Delivery(DownlinkKind.MESSAGE, bytes([i]))
                            core.enqueue(key.mailbox_id, message, queued)
                            got = await link.receive()
                            assert got.delivery.data == bytes([i])
                            assert queued <= got.at <= trio.current_time()
                    nursery.cancel_scope.cancel()

        trio.run(run)


# -- the caller on virtual time -------------------------------------------------------------


def _seeded(seed: int) -> Callable[[int], bytes]:
    """Reproducible bytes for paths, delays and nonces: two runs of one call agree in time."""
    return random.Random(seed).randbytes


async def _memory_call(wall: WallClock | None) -> tuple[Caller, Caller]:
    """A 2 s in-memory call on virtual time; with ``wall``, the wall clock jumps by up to
    10^9 s every 7 ms of it."""
    doc, secrets = _network()
    jumps = random.Random(3)
    async with trio.open_nursery() as nursery:
        net = MemoryNet(doc, secrets, nursery)
        chan_a, chan_b = InMemoryChannel.pair()
        key = bytes(32)
        me_a = Address(doc.gateways[0].node_id, bytes(16))
        me_b = Address(doc.gateways[1].node_id, bytes([1]) * 16)
        voice = artificial_voice(4.0, seed=1)
        a = Caller(net.link(me_a), doc, me_a, Contact(me_b, key), chan_a, voice,  # type: ignore[arg-type]
                   mean_delay_s=0.01, rng=_seeded(1))  # fmt: skip
        b = Caller(net.link(me_b), doc, me_b, Contact(me_a, key), chan_b, voice,  # type: ignore[arg-type]
                   mean_delay_s=0.01, rng=_seeded(2))  # fmt: skip

        async def jump() -> None:
            while wall is not None:
                wall.step(jumps.uniform(-1e9, 1e9))
                await trio.sleep(0.007)

        nursery.start_soon(jump)
        await nursery.start(a.run)
        await nursery.start(b.run)
        await trio.sleep(0.5)
        await converse(a, b, partial(trio.sleep, 2.0))
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    return a, b


def _timing(a: Caller, b: Caller) -> list[tuple[str, str, float]]:
    voice = artificial_voice(4.0, seed=1)
    out = []
    for name, (tx, rx) in (("A->B", (a, b)), ("B->A", (b, a))):
        report = direction_report(tx, rx, voice, pesq=False)
        for block in TIMING:
            figures = report[block]
            assert isinstance(figures, dict)
            out += [(name, f"{block}.{k}", v) for k, v in figures.items()]
        jitter = report["jitter_ms"]
        assert isinstance(jitter, float)
        out.append((name, "jitter_ms", jitter))
    return out


async def test_wild_wall_clock_jumps_leave_the_call_report_unchanged(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same seeded call twice on virtual time, once while ``time.time`` jumps by up to
    10^9 s every 7 ms: every timing figure of the report agrees within 1 ms."""
    calm = _timing(*await _memory_call(None))
    wild = _timing(*await _memory_call(WallClock(monkeypatch)))
    assert [k for *k, _ in calm] == [k for *k, _ in wild]
    for (name, figure, x), (_, _, y) in zip(calm, wild, strict=True):
        assert abs(x - y) <= 1.0, (name, figure, x, y)
    m2e = {f: v for n, f, v in calm if n == "A->B"}
    assert 40 <= m2e["mouth_to_ear_ms.p50"] < 1000


async def test_the_report_compares_two_callers_on_the_monotonic_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """B's times moved as if B had run in another process (another Trio offset), with the
    offset recorded in its traces: the report's figures stay the same."""
    a, b = await _memory_call(None)
    before = _timing(a, b)
    shift = 12345.678  # seconds between the two runs' Trio clocks
    for trace in (b.tx, b.rx):
        trace.to_monotonic_s -= shift
    b.tx.capture_start = (b.tx.capture_start or 0.0) + shift
    b.tx.sent = {seq: t + shift for seq, t in b.tx.sent.items()}
    b.rx.arrived = {seq: t + shift for seq, t in b.rx.arrived.items()}
    b.rx.items = [(i, kind, t + shift) for i, kind, t in b.rx.items]
    after = _timing(a, b)
    for (name, figure, x), (_, _, y) in zip(before, after, strict=True):
        assert abs(x - y) <= 0.1, (name, figure, x, y)


# -- one clock, and stamps from another are refused -------------------------------------------


def test_the_monotonic_offset_turns_trio_time_into_clock_monotonic_in_any_run() -> None:
    """Two Trio runs have different clocks; both map onto time.monotonic() within 1 ms."""

    async def run() -> tuple[float, float]:
        offset = monotonic_offset_s()
        await trio.sleep(0.05)
        assert monotonic_offset_s() == offset  # read once per run
        return trio.current_time() + offset, time.monotonic()

    mapped = [trio.run(run) for _ in range(2)]
    assert all(abs(mono - converted) < 1e-3 for converted, mono in mapped)


class _StampLink:
    """Delivers one message stamped by ``stamp`` (a mock link; the real one is above)."""

    def __init__(self, stamp: Callable[[], float]) -> None:
        self.stamp, self.given = stamp, False

    async def send(self, packet: bytes) -> None:
        await trio.lowlevel.checkpoint()

    async def receive(self) -> object:
        if self.given:
            await trio.sleep_forever()
        self.given = True
        return _Stamped(Delivery(DownlinkKind.MESSAGE, bytes(VOICE.user_payload)), self.stamp())


class _Stamped:
    def __init__(self, delivery: Delivery, at: float) -> None:
        self.delivery, self.at = delivery, at


def _stamp_caller(stamp: Callable[[], float]) -> Caller:
    doc, _ = _network()
    me, peer = (Address(g.node_id, bytes(16)) for g in doc.gateways[:2])
    chan, _ = InMemoryChannel.pair()
    link = _StampLink(stamp)
    return Caller(link, doc, me, Contact(peer, bytes(32)), chan, artificial_voice(0.5))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "stamp",
    [time.time, time.monotonic, lambda: trio.current_time() + 0.5],
    ids=["wall", "monotonic-without-trio-offset", "future"],
)
async def test_a_link_stamping_on_another_clock_is_refused(stamp: Callable[[], float]) -> None:
    caller = _stamp_caller(stamp)
    with pytest.raises(BaseExceptionGroup) as info, trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(caller.run)
    assert info.group_contains(UsageError)
    assert sum(caller.received.values()) == 0  # refused before it was counted as anything


async def test_a_link_stamping_on_trios_clock_is_taken() -> None:
    caller = _stamp_caller(trio.current_time)
    async with trio.open_nursery() as nursery:
        await nursery.start(caller.run)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert caller.received["cover"] == 1


_WALL_READS = {("time", "time"), ("time", "time_ns"), ("datetime", "now"),
               ("datetime", "utcnow"), ("datetime", "today"), ("date", "today")}  # fmt: skip
# The caller's profile commands (init, calls): a topology document's validity window and the
# call log's times are wall-clock by nature; its one read, ``wall_clock()``, feeds no call.
_WALL_CLOCK_READERS = {"_commands.py": 1}


def test_no_client_module_reads_the_wall_clock() -> None:
    """Scheduling and measuring use Trio's clock (or CLOCK_MONOTONIC for the report);
    nothing in client/ reads the wall clock, so no step of it can reach a call."""
    found = []
    for path in sorted(CLIENT.glob("*.py")):
        allowed = _WALL_CLOCK_READERS.get(path.name, 0)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id, node.attr) in _WALL_READS
            ):
                if allowed:
                    allowed -= 1
                    continue
                found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime"):
                names = {a.name for a in node.names}
                if names & {"time", "time_ns", "datetime", "date"}:
                    found.append(f"{path.name}:{node.lineno} from {node.module} import")
    assert found == []
