"""Wall clock steps change neither packet release times nor drops; key expiry stays wall time.

The fault: the worker's delay queue and the gateway's downlink slots ran on ``time.time()``,
so a step of -30 s held a 2 ms packet for 30 s and a step of +1 s dropped every queued
packet as late. Scheduling is now monotonic; kernel receive stamps (wall time) are mapped
onto the monotonic timeline (mixnode._worker.ReceiveStamps).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey
from worker_support import worker_settings

from mixnode._worker import STEP_TOLERANCE_S, ReceiveStamps, Worker, bind_sharded
from mixnode.config import parse_node_config
from mixnode.daemon import Node, _WorkerHandle
from mixnode.gateway import GatewayCore, Reply
from mixnode.keys import NodeKeys
from overlay import (
    VOICE,
    ClientLink,
    DeliveryFrame,
    DownlinkKind,
    DropReason,
    Hop,
    LinkCodec,
    MailboxKey,
    NodeDescriptor,
    NodeRole,
    TopologyDocument,
    TopologyFrame,
    WorkerSettings,
    build_document,
    create_forward,
    node_id_for,
    public_key,
)

CODEC = LinkCodec(VOICE)
ME = b"n" * 16
SINK = b"s" * 16
PEER = ("127.0.0.1", 9)
WALL0 = 1_790_000_000.0  # unix seconds
STEPS = (0.0, -30.0, 1.0)  # seconds the wall clock jumps


@dataclass
class Clocks:
    """A monotonic and a wall clock that the test moves; ``step`` jumps the wall only."""

    mono: float = 1000.0
    wall: float = WALL0

    def advance(self, dt: float) -> None:
        self.mono += dt
        self.wall += dt

    def step(self, dt: float) -> None:
        self.wall += dt


# -- kernel stamps ---------------------------------------------------------------------


@given(
    wait=st.floats(0.0, 0.04),
    since_observed=st.floats(0.0, 1.0),
    step=st.floats(-60.0, 60.0).filter(lambda s: s == 0 or abs(s) > 2 * STEP_TOLERANCE_S),
    step_at=st.floats(0.0, 1.0),
)
def test_stamps_map_to_the_true_arrival_across_a_step(
    wait: float, since_observed: float, step: float, step_at: float
) -> None:
    """A datagram arrives at monotonic ``a`` and is read ``wait`` later; the wall clock
    steps by ``step`` at some moment between the previous wake-up and the read (or
    before that wake-up). The mapped arrival is exact unless the step is no larger than
    the wait (then both readings are possible, give or take the tolerance); even then it
    is within the step and never after the read.
    """
    a = 500.0
    read = a + wait
    observed = a - since_observed
    t_step = observed - 1.0 + step_at * (read - observed + 1.0)  # 1 s before the wake-up .. read

    def wall(t: float) -> float:
        return t + WALL0 + (step if t >= t_step else 0.0)

    stamps = ReceiveStamps(observed - 10.0, wall(observed - 10.0))
    stamps.observe(observed, wall(observed))
    stamps.observe(read, wall(read))
    got = stamps.arrival(wall(a), read)
    assert got <= read
    if abs(step) > wait + STEP_TOLERANCE_S:
        assert got == pytest.approx(a, abs=1e-6)
    else:
        assert a - 1e-6 <= got <= a + abs(step) + 1e-6


# -- the worker --------------------------------------------------------------------------


def _worker(clocks: Clocks, **settings: object) -> tuple[Worker, socket.socket, bytes]:
    udp = bind_sharded("127.0.0.1", 0, 1)[0]
    _, ctrl = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    w = Worker(
        worker_settings(node_id=ME, **settings),
        udp,
        ctrl,
        clock=lambda: clocks.mono,
        wall_clock=lambda: clocks.wall,
    )
    sk = os.urandom(32)
    w.core.install_key(1, sk, clocks.wall + 3600)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(1.0)
    w.peers = {SINK: sink.getsockname()}
    return w, sink, sk


def _frame(sk: bytes, delay_us: int) -> bytes:
    path = [Hop(ME, public_key(sk), delay_us), Hop(SINK, public_key(os.urandom(32)), 0)]
    return CODEC.node_packet(create_forward(VOICE, path, b"m" * 16, b"x"))


def _run_with_step(
    step: float,
) -> tuple[list[float], dict[str, int], dict[DropReason, int], int]:
    """Two 2 ms packets: one arrives before the step and is read after it, one after."""
    clocks = Clocks()
    w, sink, sk = _worker(clocks)
    releases = []
    for _ in range(2):
        arrived_wall = clocks.wall
        arrived_mono = clocks.mono
        clocks.advance(0.0005)  # waits 0.5 ms in the socket
        if not releases:
            clocks.step(step)  # the wall clock jumps while the first packet waits
        w.on_received(_frame(sk, 2000), PEER, arrived_wall)
        deadline = w.core.next_deadline()
        assert deadline is not None
        releases.append(deadline - arrived_mono)
        clocks.advance(deadline - clocks.mono)
        w.run_due(clocks.mono)
    got = 0
    for _ in range(2):
        sink.recv(4096)
        got += 1
    w.udp.close()
    sink.close()
    return releases, dict(w.core.counters), dict(w.core.drops), got


def test_worker_release_times_and_drops_ignore_wall_clock_steps() -> None:
    runs = {step: _run_with_step(step) for step in STEPS}
    for step, (releases, counters, drops, got) in runs.items():
        # Stamps near 1.8e9 s resolve to 2.4e-7 s in a double.
        assert releases == pytest.approx([0.002, 0.002], abs=1e-6), step
        assert got == 2 and counters["forwarded"] == 2, step
        assert not drops, (step, drops)
    assert runs[-30.0][1:3] == runs[0.0][1:3] == runs[1.0][1:3]


def test_worker_key_expiry_follows_the_wall_clock() -> None:
    clocks = Clocks()
    w, sink, sk = _worker(clocks)
    w.core.install_key(1, sk, clocks.wall + 60.0)
    clocks.step(-30.0)
    w.run_due(clocks.mono)
    clocks.step(31.0)  # 1 s net ahead: still inside the key's lifetime
    w.run_due(clocks.mono)
    assert w.core.epochs == [1]
    clocks.advance(0.001)
    clocks.step(120.0)  # the wall clock passes the expiry while monotonic time barely moves
    w.run_due(clocks.mono)
    assert w.core.epochs == []
    w.udp.close()
    sink.close()


# -- the daemon: worker settings and the gateway's downlink -------------------------------

NODE_TOML = """
[node]
name = "gw-1"
role = "gateway"
listen_port = 31001
data_dir = "data"

[gateway]
client_port = 31101
delivery_rate_hz = 50

[mixing]
loop_cover_delay_ms = 40.0

[directory]
authorities = ["http://127.0.0.1:31900"]
authority_keys = ["{key}"]
epoch_length_s = 600
"""


def _node(tmp_path: Path, clocks: Clocks | None = None) -> Node:
    cfg = parse_node_config(NODE_TOML.format(key="ab" * 32), base_dir=tmp_path)
    keys = NodeKeys.load_or_create(tmp_path / "data")
    if clocks is None:
        return Node(cfg, keys=keys)
    return Node(cfg, keys=keys, wall_clock=lambda: clocks.wall)


def _loop_doc(node: Node) -> TopologyDocument:
    """This gateway and one mix: every loop goes gateway -> mix -> gateway."""
    mix_ik = bytes(SigningKey(os.urandom(32)).verify_key)
    nodes = [
        NodeDescriptor(
            node_id=node.node_id,
            name="gw",
            role=NodeRole.GATEWAY,
            layer=0,
            host="127.0.0.1",
            port=4000,
            client_port=4100,
            identity_key=node.keys.identity_public,
            epoch_keys={7: public_key(os.urandom(32))},
        ),
        NodeDescriptor(
            node_id=node_id_for(mix_ik),
            name="m1",
            role=NodeRole.MIX,
            layer=1,
            host="127.0.0.1",
            port=4001,
            client_port=None,
            identity_key=mix_ik,
            epoch_keys={7: public_key(os.urandom(32))},
        ),
    ]
    return build_document(7, epoch_length_s=600, geometry=VOICE, descriptors=nodes, mix_layers=1)


def test_a_worker_built_from_the_daemon_settings_uses_the_configured_loop_delay(
    tmp_path: Path,
) -> None:
    node = _node(tmp_path)
    udp = bind_sharded("127.0.0.1", 0, 1)[0]
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    settings = node._worker_settings(_WorkerHandle(0, udp), child.fileno())
    w = Worker(WorkerSettings.from_bytes(settings.to_bytes()), udp, child)
    assert w.mix_delay_s == pytest.approx(0.040)
    w.on_control(TopologyFrame(_loop_doc(node).to_bytes()).to_bytes(), 0.0)
    delays = []
    for _ in range(400):
        path = w.loop_path()
        assert path is not None
        delays += [h.delay_us for h in path]
    mean_ms = sum(delays) / len(delays) / 1000.0
    assert 34.0 < mean_ms < 46.0  # 800 draws of an exponential with mean 40 ms: sd 1.4 ms
    for s in (udp, parent, child):
        s.close()


class _Recorder:
    """Stands in for the client socket (the real one is used by tests/test_flood.py)."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, bytes]] = []

    def sendto(self, data: bytes, addr: object) -> int:
        self.sent.append((trio.current_time(), data))
        return len(data)


async def _downlink_with_step(tmp_path: Path, step: float) -> tuple[list[float], list[str]]:
    """2 s of downlink at 50 Hz with 30 deliveries; the wall clock jumps after 0.5 s."""
    clocks = Clocks()
    node = _node(tmp_path, clocks)
    gw = node.gateway = GatewayCore(VOICE, delivery_rate_hz=50.0, max_age_s=0.5)
    rec = _Recorder()
    node.client_raw = rec  # type: ignore[assignment]
    sk = os.urandom(32)
    key = MailboxKey.generate()
    mailbox = key.mailbox_id
    client = ClientLink(VOICE, public_key(sk), key)
    challenge = gw.on_datagram(client.attach_frame(), ("127.0.0.1", 1), trio.current_time(), [sk])
    assert isinstance(challenge, Reply)
    client.receive(challenge.datagram)
    gw.on_datagram(client.attach_frame(), ("127.0.0.1", 1), trio.current_time(), [sk])
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._downlink)
        await trio.sleep(0.005)  # deliveries fall between slots, never on one
        for i in range(30):
            await trio.sleep(0.05)
            clocks.advance(0.05)
            if i == 10:
                clocks.step(step)
            node._on_delivery(DeliveryFrame(mailbox, DownlinkKind.MESSAGE, bytes([i])))
        await trio.sleep(2.0 - 30 * 0.05)
        nursery.cancel_scope.cancel()
    times = [round(t - t0, 6) for t, _ in rec.sent]
    kinds = [client.open_downlink(d).kind.name for _, d in rec.sent]
    return times, kinds


async def test_gateway_downlink_slots_ignore_wall_clock_steps(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    base = await _downlink_with_step(tmp_path / "a", 0.0)
    assert len(base[0]) == 101  # 50 Hz: slots at 0, 0.02, ..., 2.0 s
    assert base[1].count("MESSAGE") == 30 and "ATTACHED" in base[1]
    for i, step in enumerate(STEPS[1:]):
        assert await _downlink_with_step(tmp_path / str(i), step) == base, step
