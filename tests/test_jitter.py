"""Jitter buffer on virtual time with synthetic delay distributions (a mixnet's are
sums of exponential per-hop delays)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client import Conceal, JitterBuffer, JitterConfig, JitterStats, MediaFrame
from overlay import UsageError

FRAME_S = 0.02


NEW = b"new"  # suffix of the frames a sender produced after its clock jumped


@dataclass
class Run:
    stats: JitterStats
    items: list[MediaFrame | Conceal]  # only those for frames the sender sent
    targets: list[float]
    timeline: list[tuple[float, MediaFrame | Conceal]]  # every item with its playout time
    jump_arrival: float | None  # first arrival of a packet sealed after the clock jumped

    @property
    def new_audio_delay(self) -> float:
        """Seconds from the first post-jump arrival to the first post-jump frame played."""
        assert self.jump_arrival is not None
        played = [t for t, i in self.timeline if isinstance(i, MediaFrame) and i.data.endswith(NEW)]
        return (played[0] if played else float("inf")) - self.jump_arrival

    @property
    def played(self) -> int:
        return sum(isinstance(i, MediaFrame) for i in self.items)

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
    jump_at: int | None = None,
    jump_frames: int = 0,
) -> Run:
    """Sender: one packet per fpp frames, sent when its last frame is captured. From
    packet ``jump_at`` on, its media clock is ``jump_frames`` frames off (at most back to
    0), and its new frames end with NEW; the first such packet repeats older frames under
    the new clock, as MediaSender's redundancy does."""
    if jump_at is not None:
        jump_frames = max(jump_frames, -jump_at * fpp)
    rng = np.random.default_rng(seed)
    arrivals = []
    for s in range(packets):
        if rng.random() < loss:
            continue
        jumped = jump_at is not None and s >= jump_at
        first = s * fpp + (jump_frames if jumped else 0)
        lo = max(0, first - redundancy * fpp)
        frames = {i: i.to_bytes(4, "big") for i in range(lo, first + fpp)}
        if jumped:  # the frames sealed since the jump, redundant copies included
            jump_first = jump_at * fpp + jump_frames  # type: ignore[operator]
            frames.update({i: f + NEW for i, f in frames.items() if i >= jump_first})
        sent = (s + 1) * fpp * FRAME_S
        arrivals.append((sent + delay(rng, s), s, frames, first, jumped))
    arrivals.sort(key=lambda a: a[0])
    jb = JitterBuffer(config)
    timeline: list[tuple[float, MediaFrame | Conceal]] = []
    targets: list[float] = []
    k, now, end = 0, 0.0037, arrivals[-1][0] + 1.0
    last = packets * fpp - 1 if jump_at is None else None  # with a jump: play on to the end
    while now < end and (last is None or not timeline or timeline[-1][1].index < last):
        while k < len(arrivals) and arrivals[k][0] <= now:
            t, s, frames, first, _ = arrivals[k]
            jb.push(frames, s, t, redundant={i for i in frames if i < first})
            k += 1
        while (item := jb.pop(now)) is not None:
            timeline.append((now, item))
        targets.append(jb.stats.target_s)
        now += FRAME_S
    jump_arrival = min((a[0] for a in arrivals if a[4]), default=None)
    items = [i for _, i in timeline if i.index < packets * fpp]
    return Run(jb.stats, items, targets, timeline, jump_arrival)


def mixnet(fixed: float = 0.05, hops: int = 5, mean: float = 0.02) -> Callable[..., float]:
    return lambda rng, s: fixed + float(rng.exponential(mean, hops).sum())


def test_frames_come_out_in_order_and_every_frame_is_accounted_for() -> None:
    run = simulate(mixnet(), packets=800)
    played = [i.index for i in run.items if isinstance(i, MediaFrame)]
    assert played == sorted(played) and len(set(played)) == len(played)
    assert all(i.data == i.index.to_bytes(4, "big") for i in run.items if isinstance(i, MediaFrame))
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
    for s in (1, 2, 3):  # sender restarted its clock far ahead
        jb.push({5000 + s: b"b"}, s, 2.0 + s * 0.04)
    assert jb.stats.resyncs == 1 and jb.stats.off_clock == 3
    played = [jb.pop(2.12 + k * FRAME_S) for k in range(10)]
    assert MediaFrame(5003, b"b") in played
    for bad in (-1, 2**32):
        with pytest.raises(UsageError):
            jb.push({bad: b"x"}, 4, 3.0)


def test_a_sender_clock_restarted_behind_the_playout_point_plays_within_a_second() -> None:
    # 10 s of call, then the sender's timestamps start again from 0 (its clock restarted).
    run = simulate(mixnet(), packets=400, seed=7, jump_at=250, jump_frames=-500)
    assert run.stats.resyncs == 1
    assert run.new_audio_delay < 1.0
    after = [i for t, i in run.timeline if run.jump_arrival is not None and t > run.jump_arrival]
    assert sum(isinstance(i, MediaFrame) and i.data.endswith(NEW) for i in after) > 285  # of 300


@pytest.mark.parametrize("jump", [250, 3600 * 50])  # 5 s, an hour of 20 ms frames
def test_a_sender_clock_far_ahead_plays_within_a_second(jump: int) -> None:
    run = simulate(mixnet(), packets=400, seed=8, jump_at=250, jump_frames=jump)
    assert run.stats.resyncs == 1 and run.new_audio_delay < 1.0
    # Nothing was concealed for the hour in between: the clock jumped instead.
    end = max(t for t, i in run.timeline if isinstance(i, MediaFrame))
    assert sum(isinstance(i, Conceal) for t, i in run.timeline if t < end) < 20


def test_a_late_burst_on_the_same_clock_is_not_a_resync() -> None:
    def stall(rng: np.random.Generator, s: int) -> float:
        return 0.08 + (0.9 if 200 <= s < 230 else 0.0)  # 1.2 s of packets held 0.9 s

    run = simulate(stall, packets=400, seed=9)
    assert run.stats.resyncs == 0 and run.stats.off_clock == 0 and run.stats.late > 0
    played = [i.index for i in run.items if isinstance(i, MediaFrame)]
    assert played == sorted(set(played))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(-(2**32), 2**32),
    st.integers(3, 150),
    st.integers(0, 2**16),
    st.sampled_from([0.002, 0.01, 0.02, 0.03]),
)
def test_after_any_single_clock_discontinuity_audio_plays_again_within_a_second(
    jump_frames: int, jump_at: int, seed: int, mean: float
) -> None:
    packets = jump_at + 60
    jump_frames = min(jump_frames, 2**32 - 2 * packets - 2 * jump_at - 8)
    run = simulate(
        mixnet(mean=mean), packets=packets, seed=seed, jump_at=jump_at, jump_frames=jump_frames
    )
    assert run.new_audio_delay <= 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("quantile", 1.0), ("quantile", 0.2), ("frame_ms", 0), ("grow_every", 0),
     ("max_extra_ms", 10), ("window_frames", -1), ("max_wait_ms", 600),
     ("resync_packets", 0), ("resync_late_ms", -5)],
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
    out: list[MediaFrame | Conceal] = []
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
    played = [i.index for i in out if isinstance(i, MediaFrame)]
    assert played == sorted(set(played))
    assert all(i.data == bytes([i.index % 256]) for i in out if isinstance(i, MediaFrame))
    missing = {i.index for i in out if isinstance(i, Conceal) and i.reason == "missing"}
    assert not missing & set(played)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**32 - 5), st.integers(0, 2**32), st.booleans()),
        min_size=1,
        max_size=120,
    )
)
def test_hostile_indices_and_jumps_keep_the_buffer_bounded(
    packets: list[tuple[int, int, bool]],
) -> None:
    """Any indices and sequence numbers, one packet per tick, interleaved with an honest
    stream or not: what the buffer holds stays within max_wait of the playout point."""
    config = JitterConfig()
    jb = JitterBuffer(config)
    bound = config.max_wait_ms // config.frame_ms + 4 + 1
    for k, (index, seq, honest) in enumerate(packets):
        now = k * FRAME_S
        first, s = (2 * k, k) if honest else (index, seq)
        jb.push({first + j: b"x" for j in range(4)}, s, now)
        while jb.pop(now) is not None:
            pass
        assert len(jb._buffer) <= bound
        assert len(jb._run) <= config.resync_packets


def test_stragglers_from_before_a_resync_neither_play_nor_move_the_target() -> None:
    jb = JitterBuffer()
    for s in range(50):  # 2 s on the old clock, 100 ms of delay
        jb.push({2 * s: b"o", 2 * s + 1: b"o"}, s, 0.04 * (s + 1) + 0.1)
    target = jb.stats.target_s
    for s in range(51, 54):  # the clock jumped an hour ahead; packet 50 was overtaken
        first = 2 * s + 180_000
        jb.push({first: b"n", first + 1: b"n"}, s, 0.04 * (s + 1) + 0.1)
    assert jb.stats.resyncs == 1
    new_target = jb.stats.target_s
    jb.push({100: b"o", 101: b"o"}, 50, 2.3)  # the straggler, an hour behind the new clock
    assert jb.stats.target_s == new_target and jb.stats.off_clock == 4
    assert abs(new_target - target) > 3000  # (the clocks differ by an hour)
    played = [jb.pop(2.3 + k * FRAME_S) for k in range(20)]
    assert not any(isinstance(i, MediaFrame) and i.data == b"o" for i in played)
    assert any(isinstance(i, MediaFrame) and i.data == b"n" for i in played)
