"""Jitter buffer on virtual time with synthetic delay distributions (a mixnet's are
sums of exponential per-hop delays)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client import Conceal, Frame, JitterBuffer, JitterConfig, JitterStats
from overlay import UsageError

FRAME_S = 0.02


@dataclass
class Run:
    stats: JitterStats
    items: list[Frame | Conceal]  # only those for frames the sender sent
    targets: list[float]

    @property
    def played(self) -> int:
        return sum(isinstance(i, Frame) for i in self.items)

    @property
    def missing(self) -> int:
        return sum(isinstance(i, Conceal) and i.reason == "missing" for i in self.items)

    @property
    def late_loss(self) -> float:
        return self.missing / (self.played + self.missing)


def simulate(
    delay: Callable[[np.random.Generator, int], float],
    *,
    packets: int = 1500,
    fpp: int = 2,
    redundancy: int = 1,
    loss: float = 0.0,
    seed: int = 0,
    config: JitterConfig | None = None,
) -> Run:
    """Sender: one packet per fpp frames, sent when its last frame is captured."""
    rng = np.random.default_rng(seed)
    arrivals = []
    for s in range(packets):
        if rng.random() < loss:
            continue
        first = s * fpp
        lo = max(0, first - redundancy * fpp)
        frames = {i: i.to_bytes(4, "big") for i in range(lo, first + fpp)}
        sent = (first + fpp) * FRAME_S
        arrivals.append((sent + delay(rng, s), s, frames, first))
    arrivals.sort(key=lambda a: a[0])
    jb = JitterBuffer(config)
    items: list[Frame | Conceal] = []
    targets: list[float] = []
    k, now, end = 0, 0.0037, arrivals[-1][0] + 1.0
    total = packets * fpp
    while now < end and (items[-1].index < total - 1 if items else True):
        while k < len(arrivals) and arrivals[k][0] <= now:
            t, s, frames, first = arrivals[k]
            jb.push(frames, s, t, redundant={i for i in frames if i < first})
            k += 1
        while (item := jb.pop(now)) is not None:
            items.append(item)
        targets.append(jb.stats.target_s)
        now += FRAME_S
    return Run(jb.stats, [i for i in items if i.index < total], targets)


def mixnet(fixed: float = 0.05, hops: int = 5, mean: float = 0.02) -> Callable[..., float]:
    return lambda rng, s: fixed + float(rng.exponential(mean, hops).sum())


def test_frames_come_out_in_order_and_every_frame_is_accounted_for() -> None:
    run = simulate(mixnet(), packets=800)
    played = [i.index for i in run.items if isinstance(i, Frame)]
    assert played == sorted(played) and len(set(played)) == len(played)
    assert all(i.data == i.index.to_bytes(4, "big") for i in run.items if isinstance(i, Frame))
    missing = [i.index for i in run.items if isinstance(i, Conceal) and i.reason == "missing"]
    assert run.played + run.missing + run.stats.skipped == 1600  # every frame once
    assert not set(missing) & set(played)


def test_constant_delay_settles_at_the_minimum_without_loss() -> None:
    run = simulate(lambda rng, s: 0.3, packets=500)
    st = run.stats
    assert run.missing == 0 and st.late == 0
    # Frame j arrives 0.3 s + packetization after j * 20 ms: 20..40 ms over 0.3 s; the
    # target is the top of that plus the 5 ms margin, and the delay sits within a frame.
    assert st.target_s == pytest.approx(0.345)
    assert st.target_s - 0.02 <= st.delay_s <= st.target_s + 0.02


def test_mixnet_delays_keep_late_loss_near_the_quantile() -> None:
    run = simulate(mixnet(), packets=1500, seed=1)
    assert run.late_loss < 0.05
    assert run.stats.late > 0  # the tail is real: some frames do arrive after playout
    assert run.stats.target_s - run.stats.min_delay_s < 0.6


def test_redundancy_lowers_late_loss_on_independent_paths() -> None:
    with_red = simulate(mixnet(), packets=1500, seed=3, config=JitterConfig(quantile=0.9))
    without = simulate(
        mixnet(), packets=1500, seed=3, redundancy=0, config=JitterConfig(quantile=0.9)
    )
    # The quantile sets the late loss; the copies, which often overtake a delayed packet,
    # let the buffer reach it with less delay.
    assert with_red.late_loss < without.late_loss + 0.01
    assert with_red.stats.target_s < without.stats.target_s - 0.01


def test_redundancy_covers_random_packet_loss() -> None:
    run = simulate(mixnet(mean=0.005), packets=1500, loss=0.1, seed=4)
    assert run.stats.recovered > 100  # about 10 % of 3000 frames came from a copy
    assert run.late_loss < 0.04  # loss of two packets in a row is ~1 %
    bare = simulate(mixnet(mean=0.005), packets=1500, loss=0.1, seed=4, redundancy=0)
    assert bare.late_loss > 0.08


def test_target_follows_jitter_up_and_down() -> None:
    def phases(rng: np.random.Generator, s: int) -> float:
        mean = 0.04 if 500 <= s < 1000 else 0.002
        return 0.05 + float(rng.exponential(mean, 5).sum())

    run = simulate(phases, packets=1500, seed=5)
    # Ticks are 20 ms, packets 40 ms apart: packet s is sent around tick 2 s.
    calm, rough, calm_again = run.targets[900], run.targets[1900], run.targets[2950]
    assert rough > calm + 0.1
    assert calm_again < rough - 0.1
    assert run.stats.stretched > 0 and run.stats.skipped > 0


def test_long_gap_resynchronizes_and_nothing_before_start() -> None:
    jb = JitterBuffer()
    assert jb.pop(100.0) is None
    jb.push({0: b"a"}, 0, 1.0)
    jb.push({5000: b"b"}, 1, 2.0)  # sender restarted its clock far ahead
    assert jb.stats.resyncs == 1
    item = None
    for k in range(10):
        item = jb.pop(2.0 + k * FRAME_S) or item
    assert item == Frame(5000, b"b") or isinstance(item, Conceal)
    with pytest.raises(UsageError):
        jb.push({-1: b"x"}, 2, 3.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("quantile", 1.0), ("quantile", 0.2), ("frame_ms", 0), ("grow_every", 0),
     ("max_extra_ms", 10), ("window_frames", -1)],
)  # fmt: skip
def test_config_rejects_bad_fields_by_name(field: str, value: object) -> None:
    with pytest.raises(UsageError, match=field):
        JitterConfig(**{field: value})  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 0.8), min_size=5, max_size=60),
    st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_any_arrival_pattern_plays_each_frame_at_most_once_in_order(
    delays: list[float], lost: list[bool]
) -> None:
    jb = JitterBuffer()
    arrivals = sorted(((s + 1) * 0.04 + d, s) for s, d in enumerate(delays) if not lost[s])
    out: list[Frame | Conceal] = []
    k, tick = 0, 0
    while tick < 400:
        now = tick * FRAME_S
        while k < len(arrivals) and arrivals[k][0] <= now:
            t, s = arrivals[k]
            lo = max(0, 2 * s - 2)
            jb.push({i: bytes([i % 256]) for i in range(lo, 2 * s + 2)}, s, t)
            k += 1
        while (item := jb.pop(now)) is not None:
            out.append(item)
        tick += 1
    played = [i.index for i in out if isinstance(i, Frame)]
    assert played == sorted(set(played))
    assert all(i.data == bytes([i.index % 256]) for i in out if isinstance(i, Frame))
    missing = {i.index for i in out if isinstance(i, Conceal) and i.reason == "missing"}
    assert not missing & set(played)
