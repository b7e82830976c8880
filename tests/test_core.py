"""Node core on virtual time: delays, late drop, replay, queue bound, cover rate, key overlap."""

from __future__ import annotations

import os

import pytest

from mixnode.core import DeliverAt, Dropped, ForwardAt, NodeCore, ReplayCache
from overlay import (
    SPHINX_VERSION,
    VOICE,
    DownlinkKind,
    DropReason,
    Hop,
    create_forward,
    create_reply,
    create_surb,
    exponential,
    public_key,
)

ME = b"n" * 16
NEXT = b"m" * 16
MAILBOX = b"x" * 16
PREV = ("127.0.0.1", 9000)  # the previous hop: the sender address of the datagram


def _core(**kw: object) -> tuple[NodeCore, bytes]:
    sk = os.urandom(32)
    core = NodeCore(VOICE, ME, **kw)  # type: ignore[arg-type]
    core.install_key(1, sk, expires_at=1000.0)
    return core, sk


def _packet(sk: bytes, delay_us: int, *, final: bool = False) -> bytes:
    if final:
        return create_forward(VOICE, [Hop(ME, public_key(sk), delay_us)], MAILBOX, b"hello")
    path = [Hop(ME, public_key(sk), delay_us), Hop(NEXT, public_key(os.urandom(32)), 0)]
    return create_forward(VOICE, path, MAILBOX, b"hello")


def test_forward_released_at_chosen_delay() -> None:
    core, sk = _core()
    assert core.receive(_packet(sk, 250_000), now=10.0, prev_hop=PREV) is None
    assert core.next_deadline() == pytest.approx(10.25)
    assert core.pop_due(10.2499) == []
    (action,) = core.pop_due(10.25)
    assert isinstance(action, ForwardAt)
    assert action.next_hop == NEXT and action.send_at == pytest.approx(10.25)
    assert len(action.packet) == VOICE.packet_len
    assert core.queue_depth == 0 and core.counters["forwarded"] == 1


def test_queue_orders_by_release_time() -> None:
    core, sk = _core()
    for d in (30_000, 10_000, 20_000):
        core.receive(_packet(sk, d), now=0.0, prev_hop=PREV)
    times = [a.send_at for a in core.pop_due(0.031) if isinstance(a, ForwardAt)]
    assert times == sorted(times) and len(times) == 3


def test_delivery_and_reply() -> None:
    core, sk = _core()
    core.receive(_packet(sk, 0, final=True), now=0.0, prev_hop=PREV)
    (d,) = core.pop_due(0.0)
    assert isinstance(d, DeliverAt)
    assert d.mailbox == MAILBOX and d.kind is DownlinkKind.MESSAGE and d.data == b"hello"
    surb, _ = create_surb(VOICE, [Hop(ME, public_key(sk), 0)], MAILBOX)
    _, reply = create_reply(VOICE, surb, b"back")
    core.receive(reply, now=1.0, prev_hop=PREV)
    (r,) = core.pop_due(1.0)
    assert isinstance(r, DeliverAt) and r.kind is DownlinkKind.REPLY
    assert len(r.data) == 16 + VOICE.payload_len


def test_late_on_arrival_is_dropped() -> None:
    core, sk = _core(late_drop_s=0.05)
    # Arrived at t=0 with a 10 ms delay, processed only at t=0.2: overdue by 190 ms.
    assert core.receive(_packet(sk, 10_000), now=0.2, prev_hop=PREV, arrived_at=0.0) == Dropped(
        "late"
    )
    # Overdue by 30 ms only: kept.
    assert core.receive(_packet(sk, 10_000), now=0.04, prev_hop=PREV, arrived_at=0.0) is None
    assert core.drops[DropReason.LATE] == 1


def test_late_in_queue_is_dropped() -> None:
    core, sk = _core(late_drop_s=0.05)
    core.receive(_packet(sk, 10_000), now=0.0, prev_hop=PREV)
    assert core.pop_due(0.5) == [Dropped("late")]
    assert core.drops[DropReason.LATE] == 1


def test_replay_dropped_and_counted() -> None:
    core, sk = _core()
    pkt = _packet(sk, 0)
    assert core.receive(pkt, now=0.0, prev_hop=PREV) is None
    assert core.receive(pkt, now=0.1, prev_hop=PREV) == Dropped("replay")
    assert core.counters["replays"] == 1


def test_replay_filter_fixed_memory_no_misses_few_false_alarms() -> None:
    cache = ReplayCache(bits_log2=16)  # 8 KiB
    tags = [os.urandom(32) for _ in range(3000)]
    false_alarms = sum(cache.add(t) == "replay" for t in tags)
    assert all(cache.add(t) == "replay" for t in tags)  # every replay caught
    # 3000 tags in 65536 bits with k=8: expected false alarm rate ~0.2%.
    assert false_alarms < 30 and cache.memory_bytes == 8192
    assert len(cache) == 3000 - false_alarms
    with pytest.raises(ValueError):
        ReplayCache(bits_log2=40)


def test_queue_full() -> None:
    core, sk = _core(max_queue=3)
    for hop in "abc":  # each hop below the threshold: the queue fills
        assert core.receive(_packet(sk, 1000), now=0.0, prev_hop=hop) is None
    assert core.receive(_packet(sk, 1000), now=0.0, prev_hop="d") == Dropped("queue_full")
    assert core.queue_depth == 3


def test_one_hop_may_hold_what_the_queue_has_free() -> None:
    core, sk = _core(max_queue=10)
    got = [core.receive(_packet(sk, 1000), now=0.0, prev_hop="a") for _ in range(8)]
    assert got == [None] * 5 + [Dropped("queue_full")] * 3  # 5 held, 5 free
    assert core.receive(_packet(sk, 1000), now=0.0, prev_hop="b") is None
    core.pop_due(0.001)  # releasing returns the shares
    assert core.queue_depth == 0
    assert core.receive(_packet(sk, 1000), now=0.001, prev_hop="a") is None


def test_garbage_counted_by_reason() -> None:
    core, _ = _core()
    assert core.receive(b"short", now=0.0, prev_hop=PREV) == Dropped("wrong_length")
    bad = bytearray(os.urandom(VOICE.packet_len))
    bad[0] = SPHINX_VERSION
    assert core.receive(bytes(bad), now=0.0, prev_hop=PREV) == Dropped("mac_mismatch")
    bad[0] = 9
    assert core.receive(bytes(bad), now=0.0, prev_hop=PREV) == Dropped("unknown_version")
    assert core.drops[DropReason.MAC_MISMATCH] == 1


def test_key_overlap_and_expiry() -> None:
    core, old = _core()
    in_flight = _packet(old, 0)
    replayed = _packet(old, 0)
    assert core.receive(replayed, now=0.0, prev_hop=PREV) is None
    new = os.urandom(32)
    core.install_key(2, new, expires_at=2000.0)
    core.install_key(1, old, expires_at=10.0)  # previous key kept for the overlap only
    assert core.epochs == [2, 1]
    assert core.receive(_packet(new, 0), now=1.0, prev_hop=PREV) is None
    # The previous epoch's key still opens a packet in flight; its cache is kept, per key.
    assert core.receive(in_flight, now=1.0, prev_hop=PREV) is None
    assert core.receive(replayed, now=1.0, prev_hop=PREV) == Dropped("replay")
    assert core.replay_entries() == 3
    # After the overlap (wall clock, unix seconds) the old key and its cache are gone.
    core.expire_keys(9.0)
    assert core.epochs == [2, 1]
    core.expire_keys(11.0)
    assert core.receive(_packet(old, 0), now=11.0, prev_hop=PREV) == Dropped("mac_mismatch")
    assert core.epochs == [2] and core.replay_entries() == 1


def test_a_dropped_key_closes_its_replay_filter_and_a_duplicate_one_is_closed() -> None:
    closed: list[int] = []
    core = NodeCore(VOICE, ME)

    def cache(epoch: int) -> ReplayCache:
        return ReplayCache(16, on_close=lambda: closed.append(epoch))

    for e in (1, 2):
        core.install_key(e, os.urandom(32), expires_at=100.0 * e, cache=cache(e))
    core.install_key(2, os.urandom(32), expires_at=300.0, cache=cache(-2))  # expiry only
    assert closed == [-2] and core.epochs == [2, 1]
    core.install_key(3, os.urandom(32), expires_at=400.0, cache=cache(3))  # keeps two
    assert closed == [-2, 1] and core.epochs == [3, 2]
    core.expire_keys(350.0)
    assert closed == [-2, 1, 2] and core.epochs == [3]
    core.close()
    assert closed == [-2, 1, 2, 3] and core.epochs == []


def test_replay_filter_shared_by_two_handles_is_one_filter() -> None:
    bits, counts = bytearray(1 << 13), memoryview(bytearray(64)).cast("Q")
    a = ReplayCache(16, bits=memoryview(bits), counts=counts)
    b = ReplayCache(16, bits=memoryview(bits), counts=counts)
    tags = [os.urandom(32) for _ in range(200)]
    assert all(a.add(t) is None for t in tags)
    assert all(b.add(t) == "replay" for t in tags) and len(b) == 200
    with pytest.raises(ValueError):
        ReplayCache(16, bits=bytearray(100))
    with pytest.raises(ValueError):
        ReplayCache(16, counts=memoryview(bytearray(8)).cast("Q"))


def test_no_key() -> None:
    core = NodeCore(VOICE, ME)
    assert core.receive(os.urandom(VOICE.packet_len), now=0.0, prev_hop=PREV) == Dropped(
        "unknown_epoch"
    )


def test_loop_cover_rate_is_poisson_on_virtual_time() -> None:
    sks = [os.urandom(32) for _ in range(3)]
    path = [Hop(bytes([i]) * 16, public_key(k), 1000) for i, k in enumerate(sks)] + [
        Hop(ME, public_key(os.urandom(32)), 0)
    ]
    core = NodeCore(VOICE, ME, cover_rate_hz=5.0)
    core.set_loop_paths(lambda: path, now=0.0)
    sent: list[float] = []
    t = 0.0
    while t < 100.0:
        nxt = core.next_deadline()
        assert nxt is not None
        t = nxt
        for a in core.pop_due(t):
            assert isinstance(a, ForwardAt) and a.next_hop == path[0].node_id
            sent.append(a.send_at)
    # 5 Hz over 100 s: 500 expected, sd ~22.
    assert 400 < len(sent) < 600
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    small = sum(g < 0.2 for g in gaps) / len(gaps)
    assert 0.55 < small < 0.72  # P(gap < 0.2 s) = 1 - e^-1 = 0.63 for exponential gaps


def test_loop_cover_comes_back_and_is_absorbed() -> None:
    sk = os.urandom(32)
    core = NodeCore(VOICE, ME, cover_rate_hz=10.0)
    core.install_key(1, sk, 1e9)
    core.set_loop_paths(lambda: [Hop(ME, public_key(sk), 0)], now=0.0)
    actions = core.pop_due(5.0)
    assert actions and all(isinstance(a, ForwardAt) for a in actions)
    for a in actions:
        assert isinstance(a, ForwardAt)
        assert core.receive(a.packet, now=5.0, prev_hop=PREV) is None
    assert core.counters["cover_received"] == len(actions) == core.counters["cover_sent"]


def test_exponential_mean() -> None:
    xs = [exponential(1.0 / 4.0, os.urandom) for _ in range(4000)]  # rate 4 Hz
    assert 0.23 < sum(xs) / len(xs) < 0.27
