"""A replay is a replay for the node: whichever encoding of alpha, worker, or restart.

The fault: X25519 clamps scalars to multiples of 8, so adding a point of order dividing 8
to a packet's group element (alpha) changes its encoding but not the shared secret, the
MAC or the replay tag. The node shards packets among its workers by the first byte of
alpha, and each worker had its own filter: copies with another encoding reached the other
worker and were forwarded again. A worker or node restart also forgot every tag while the
key still opened packets. Now every worker maps one filter file per epoch key under the
node's data_dir, and checks and sets a tag under a lock (mixnode/replay.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult
from testnet_support import child_pids, small_testnet
from worker_support import worker_settings

from mixnode._process import child_env
from mixnode._worker import Worker, bind_sharded, shard_of
from mixnode.config import load_node_config, make_node_config
from mixnode.core import NodeCore, ReplayCache
from mixnode.daemon import Node
from mixnode.keys import NodeKeys
from mixnode.replay import (
    ReplayFileError,
    ReplayStore,
    ensure_replay_file,
    open_replay_file,
    remove_replay_files,
    replay_epochs,
)
from overlay import (
    VOICE,
    EpochKey,
    Hop,
    LinkCodec,
    create_forward,
    epoch_at,
    process_packet,
    public_key,
)
from testbed.testnet import STATE_FILE, TestnetState, scrape

CODEC = LinkCodec(VOICE)
ME = b"n" * 16
NEXT = b"m" * 16

# -- the eight encodings of one point: P + T for the 8-torsion points T ---------------------
# Edwards25519 (RFC 7748 section 4.1, RFC 8032 section 5.1): -x^2 + y^2 = 1 + d x^2 y^2,
# birationally equivalent to Curve25519 by u = (1 + y) / (1 - y).
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # order of the prime-order subgroup
D = -121665 * pow(121666, -1, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def _add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (
        (x1 * y2 + y1 * x2) * pow(1 + t, -1, P) % P,
        (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P,
    )


def _mul(n: int, a: Point) -> Point:
    out = IDENTITY
    while n:
        if n & 1:
            out = _add(out, a)
        a, n = _add(a, a), n >> 1
    return out


def _point_with_y(y: int) -> Point | None:
    xx = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    x = pow(xx, (P + 3) // 8, P)
    if x * x % P != xx:
        x = x * SQRT_M1 % P
    return (x, y) if x * x % P == xx else None


def _torsion8() -> list[Point]:
    """The 8 points of order dividing 8: multiples of l * Q for a Q whose l * Q has order 8."""
    y = 2
    while True:
        q = _point_with_y(y)
        y += 1
        if q is None:
            continue
        t = _mul(L, q)
        if _mul(4, t) != IDENTITY:
            return [_mul(i, t) for i in range(8)]


TORSION = _torsion8()


def encodings(alpha: bytes) -> list[bytes]:
    """The u-coordinates (32 bytes, little-endian) of alpha + T for the 8 torsion points T."""
    u = int.from_bytes(alpha, "little")
    p = _point_with_y((u - 1) * pow(u + 1, -1, P) % P)
    assert p is not None
    out = []
    for t in TORSION:
        _, y = _add(p, t)
        out.append(((1 + y) * pow(1 - y, -1, P) % P).to_bytes(32, "little"))
    return out


def _with_alpha(packet: bytes, alpha: bytes) -> bytes:
    return packet[:1] + alpha + packet[33:]


def _packet(sk: bytes, *, first: bytes = ME, second: Hop | None = None, delay_us: int = 0) -> bytes:
    nxt = second or Hop(NEXT, public_key(os.urandom(32)), 0)
    return create_forward(VOICE, [Hop(first, public_key(sk), delay_us), nxt], b"x" * 16, b"hi")


def test_the_eight_encodings_share_one_secret_and_one_replay_tag() -> None:
    assert len({_mul(i, TORSION[1]) for i in range(8)}) == 8  # the generator has order 8
    sk = os.urandom(32)
    pkt = _packet(sk)
    alphas = encodings(pkt[1:33])
    assert alphas[0] == pkt[1:33] and len(set(alphas)) == 8
    assert alphas[4] == pow(int.from_bytes(alphas[0], "little"), -1, P).to_bytes(32, "little")
    secret = crypto_scalarmult(sk, pkt[1:33])
    results = [process_packet(VOICE, sk, _with_alpha(pkt, a)) for a in alphas]
    for a, r in zip(alphas, results, strict=True):
        assert crypto_scalarmult(sk, a) == secret
        assert r == results[0]  # same tag, same next packet: a replay in all but bytes


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=8, max_size=8), st.binary(min_size=32, max_size=32))
def test_two_workers_sharing_the_filter_pass_exactly_one_encoding(
    workers_of: list[int], sk: bytes
) -> None:
    """Property: however the 8 encodings are spread over two cores, exactly one passes."""
    bits, counts = bytearray(1 << 13), memoryview(bytearray(8 << 3)).cast("Q")
    cores = [NodeCore(VOICE, ME) for _ in range(2)]
    for core in cores:
        cache = ReplayCache(16, bits=memoryview(bits), counts=counts)
        core.install_key(1, sk, expires_at=2e9, cache=cache)
    pkt = _packet(sk)
    got = [
        cores[w].receive(_with_alpha(pkt, a), now=0.0, prev_hop="p")
        for w, a in zip(workers_of, encodings(pkt[1:33]), strict=True)
    ]
    assert got.count(None) == 1
    assert sum(c.counters["replays"] for c in cores) == 7


def _hammer(path: Path, sk: bytes, tags: list[bytes], start: float, conn: object) -> None:
    cache = open_replay_file(path, 3, sk, 26)
    while time.time() < start:
        pass
    conn.send(sum(cache.add(t) is None for t in tags))  # type: ignore[attr-defined]
    cache.close()


def test_two_processes_adding_the_same_tags_at_once_pass_each_exactly_once(
    tmp_path: Path,
) -> None:
    """The check-and-set is atomic across processes: no copy slips through a race."""
    sk = os.urandom(32)
    path = ensure_replay_file(tmp_path, 3, public_key(sk), 26)
    tags = [os.urandom(32) for _ in range(30_000)]
    ctx = mp.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(2)]
    start = time.time() + 0.3
    procs = [ctx.Process(target=_hammer, args=(path, sk, tags, start, child)) for _, child in pipes]
    for p in procs:
        p.start()
    passed = [parent.recv() for parent, _ in pipes]
    for p in procs:
        p.join(timeout=30)
    # 30k tags in 2**26 bits: a false alarm has probability about 1e-21.
    assert sum(passed) == len(tags), passed
    cache = open_replay_file(path, 3, sk, 26)
    assert len(cache) == len(tags) and all(cache.add(t) == "replay" for t in tags)
    cache.close()


def test_replay_file_survives_reopening_and_refuses_another_key(tmp_path: Path) -> None:
    sk, other = os.urandom(32), os.urandom(32)
    path = ensure_replay_file(tmp_path, 5, public_key(sk), 16)
    a = open_replay_file(path, 5, sk, 16)
    assert a.add(b"t" * 32) is None
    a.close()
    assert ensure_replay_file(tmp_path, 5, public_key(sk), 16) == path  # kept
    b = open_replay_file(path, 5, sk, 16)
    assert b.add(b"t" * 32) == "replay" and len(b) == 1
    b.close()
    for epoch, key, bits in ((5, other, 16), (6, sk, 16), (5, sk, 17)):
        with pytest.raises(ReplayFileError):
            open_replay_file(path, epoch, key, bits)
    # A file of another key for the same epoch is replaced by an empty one, not reused.
    ensure_replay_file(tmp_path, 5, public_key(other), 16)
    c = open_replay_file(path, 5, other, 16)
    assert c.add(b"t" * 32) is None
    c.close()
    path.write_bytes(path.read_bytes()[:-1])  # damaged (short): refused
    with pytest.raises(ReplayFileError):
        open_replay_file(path, 5, other, 16)
    assert remove_replay_files(tmp_path, keep=[]) == [5] and replay_epochs(tmp_path) == []


def test_a_worker_refuses_a_key_whose_replay_filter_is_not_its_own(tmp_path: Path) -> None:
    udp = bind_sharded("127.0.0.1", 0, 1)[0]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    w = Worker(worker_settings(node_id=ME, max_queue=100), udp, b)
    w.parent = os.getpid()  # this process plays the daemon that holds the filters
    store = ReplayStore(tmp_path, w.core.replay_bits_log2)
    sk, other = os.urandom(32), os.urandom(32)
    later = time.time() + 100
    w.install_keys([EpochKey(1, sk, later, store.ensure(1, public_key(other)))])  # other key's
    w.install_keys([EpochKey(2, sk, later, 999_999)])  # no such descriptor
    assert w.core.epochs == [] and w.core.counters["replay_file_errors"] == 2
    w.install_keys([EpochKey(2, sk, later, store.ensure(2, public_key(sk)))])
    assert w.core.epochs == [2]
    w.core.close()
    store.close()
    for s in (udp, a, b):
        s.close()


def test_the_daemon_creates_a_file_per_installed_key_and_deletes_it_with_the_key(
    tmp_path: Path,
) -> None:
    cfg = make_node_config(
        name="m",
        role="mix",
        layer=1,
        listen_port=9,  # never bound here
        data_dir=tmp_path / "node",
        authorities=["http://127.0.0.1:9"],
        authority_keys=[os.urandom(32)],
        epoch_length_s=600,
    )
    wall = [600.0 * 1000 + 1]
    node = Node(cfg, keys=NodeKeys.load_or_create(tmp_path / "node"), wall_clock=lambda: wall[0])
    node.rotate()
    node._key_message()
    assert replay_epochs(node.replay_dir) == [1000]  # key 999 was never made
    wall[0] += 600
    node.rotate()
    node._key_message()
    assert replay_epochs(node.replay_dir) == [1000, 1001]
    wall[0] += 1200  # epoch 1003: keys 1000 and 1001 are deleted, and their filters
    node.rotate()
    node._key_message()
    assert sorted(node.keys.epochs()) == [1002, 1003, 1004]
    assert replay_epochs(node.replay_dir) == [1002, 1003]
    node.replay.close()


# -- a real node: 2 workers on loopback --------------------------------------------------


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestnetState]:
    d = Path(tmp_path_factory.mktemp("replay"))
    with small_testnet(d, workers=2) as state:
        yield state


def _mix_metrics(port: int) -> tuple[float, float]:
    """(packets_out, replays) of the mix; it sends no cover, so packets_out is forwarded."""
    m = scrape(port)
    return m.get("phantom_packets_out_total", -1.0), m.get("phantom_replays_total", -1.0)


def _settled(port: int, timeout_s: float = 10.0) -> tuple[float, float]:
    """The mix's counters once two reports in a row agree (workers report every 0.5 s)."""
    deadline = time.monotonic() + timeout_s
    last = _mix_metrics(port)
    while time.monotonic() < deadline:
        time.sleep(1.1)
        now = _mix_metrics(port)
        if now == last and now[0] >= 0:
            return now
        last = now
    raise AssertionError(f"metrics never settled: {last}")


class _Mix:
    """The testnet's mix and packets for it (mix -> gateway)."""

    def __init__(self, net: TestnetState) -> None:
        self.net = net
        (self.proc,) = net.nodes("mix")
        cfg = load_node_config(Path(self.proc.config))
        keys = NodeKeys.load(cfg.node.data_dir)
        self.node_id = keys.node_id
        self.epoch = epoch_at(time.time(), cfg.directory.epoch_length_s)
        self.sk = keys.epoch_private(self.epoch)
        self.data_dir = cfg.node.data_dir
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def packet(self) -> bytes:
        gw_keys = NodeKeys.load(Path(self.net.directory) / "gw-1")
        gw = Hop(gw_keys.node_id, gw_keys.epoch_public(self.epoch), 0)
        return _packet(self.sk, first=self.node_id, second=gw)

    def send(self, packet: bytes) -> None:
        self.sock.sendto(CODEC.node_packet(packet), ("127.0.0.1", self.proc.port))

    def forward_fresh(self, timeout_s: float = 20.0) -> tuple[float, float]:
        """Send fresh packets until one is forwarded (the node is up and listed)."""
        before = _mix_metrics(self.proc.metrics_port)[0]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.send(self.packet())
            time.sleep(0.5)
            if _mix_metrics(self.proc.metrics_port)[0] > max(before, 0):
                return _settled(self.proc.metrics_port)
        raise AssertionError("the mix forwards nothing")


@pytest.mark.slow
def test_real_node_forwards_one_of_eight_encodings_and_keeps_replays_across_restarts(
    net: TestnetState,
) -> None:
    mix = _Mix(net)
    mix.forward_fresh()
    # X: a packet whose eight encodings reach both workers.
    while True:
        x = mix.packet()
        alphas = encodings(x[1:33])
        if {shard_of(_with_alpha(x, a), 2) for a in alphas} == {0, 1}:
            break
    out0, replays0 = _settled(mix.proc.metrics_port)
    for a in alphas:
        mix.send(_with_alpha(x, a))
    out1, replays1 = _settled(mix.proc.metrics_port)
    assert (out1 - out0, replays1 - replays0) == (1, 7)
    assert mix.epoch in replay_epochs(mix.data_dir / "replay")

    # Clean restart (SIGTERM), same data_dir and keys: X is still a replay.
    os.kill(mix.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(mix.proc.pid):
        time.sleep(0.05)
    assert not _alive(mix.proc.pid)
    _restart(net, mix)
    out2, replays2 = mix.forward_fresh()
    assert replays2 == 0
    mix.send(x)
    assert _settled(mix.proc.metrics_port) == (out2, 1)

    # Both workers killed (SIGKILL) and restarted by the daemon: X is still a replay.
    workers = child_pids(mix.proc.pid)
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = child_pids(mix.proc.pid)
        if len(now) == 2 and not set(now) & set(workers):
            break
        time.sleep(0.1)
    assert len(child_pids(mix.proc.pid)) == 2
    out3, replays3 = mix.forward_fresh()
    for a in alphas:
        mix.send(_with_alpha(x, a))
    assert _settled(mix.proc.metrics_port) == (out3, replays3 + 8)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        waited = 0
    if waited:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _restart(net: TestnetState, mix: _Mix) -> None:
    """Start the mix again from its config; the state file learns the new pid for `down`."""
    with open(mix.proc.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mixnode.cli", "run", "--config", mix.proc.config],
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _started.append(proc)  # `down` stops it by pid; the handle is kept for reaping
    mix.proc.pid = proc.pid
    net.save(Path(net.directory) / STATE_FILE)


_started: list[subprocess.Popen[bytes]] = []
