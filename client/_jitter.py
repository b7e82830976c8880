"""Adaptive jitter buffer on a 20 ms playout clock; sans-IO (the caller passes ``now``).

    >>> from client import Conceal, MediaFrame, JitterBuffer
    >>> jb = JitterBuffer()
    >>> jb.push({0: b"f0", 1: b"f1"}, seq=0, arrival_time=10.0)
    >>> jb.pop(10.0) is None  # still buffering
    True
    >>> for k in range(3, 6):
    ...     print(jb.pop(10.0 + 0.02 * k))
    MediaFrame(index=0, data=b'f0')
    MediaFrame(index=1, data=b'f1')
    Conceal(index=2, reason='missing')

Frames are keyed by their index on the sender's media clock (timestamp / samples per
frame). Every frame index seen for the first time, as a primary frame or as a redundant
copy in the next packet, gives one delay sample ``arrival - index * frame``; redundancy
therefore shortens the effective delay as well as covering loss (in a mix network the next
packet takes an independent path and often overtakes a delayed one).

The playout delay ``D`` maps frame ``j`` to the time ``j * frame + D``. Its target is the
``quantile`` of recent delay samples plus a small margin, kept within
``[min + min_extra, min + max_extra]`` of the recent minimum. The buffer moves towards the
target one frame at a time: it inserts a concealed frame to grow
(``Conceal(reason='stretch')``) and skips a frame to shrink, at most once per
``grow_every`` / ``shrink_every`` frames, so the playout clock never jumps. It grows when it
is more than half a frame short of the target, and also whenever it is short of the
quantile itself (capped at the target): whole-frame steps leave it anywhere within a frame
of the target, and a delay settled just under a recurring delay (one mode of the delay
distribution) would lose every frame of that mode for as long as it recurs. It shrinks
when more than a frame over the target, so it never shrinks below it.

The one exception is a discontinuity of the sender's media clock (it restarted, or jumped).
A packet is off the playout clock when its newest frame would play more than
``max_wait_ms`` after it arrived (ahead: held aside, never buffered), or when it was due more
than ``resync_late_ms`` before it arrived *and* the sender's clock went back: its sequence
number is newer than any seen but it brings no frame newer than those seen (a packet that
is merely late keeps both in step). ``resync_packets`` off-clock packets in a row, off in
the same direction, restart the clock on the newest of them, as at the start of a call; a
newer on-clock packet in between ends the run, an older one (overtaken in the network)
neither counts nor ends it. Packets numbered before the run that restarted the clock are
from the old clock: dropped (no delay sample, no frame). The cost of a packet is O(frames
in it) whatever the jump.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from overlay import UsageError, is_int

from ._media import MediaPacket
from ._voice import OpusDecoder, Pcm

ConcealReason = Literal["missing", "stretch"]
MAX_FRAME_INDEX = 2**32  # frame indices come from 32-bit timestamps; floats stay exact below
_SAME_TIME_S = 1e-9  # times closer than this are the same (float sums of frame periods)


class _Clock(Enum):
    """Where a packet's newest frame falls against the playout clock."""

    ON = "on"
    BEHIND = "behind"  # due more than resync_late_ms before it arrived
    AHEAD = "ahead"  # would play more than max_wait_ms after it arrived


@dataclass(frozen=True, slots=True)
class _Held:
    """One off-clock packet of the current run, kept until the run resyncs or ends."""

    frames: dict[int, bytes]
    redundant: frozenset[int]
    seq: int
    arrival_time: float


@dataclass(frozen=True, slots=True)
class MediaFrame:
    """Play this Opus frame now."""

    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Conceal:
    """No frame to play now: run the decoder's loss concealment for one frame.

    ``missing``: frame ``index`` never arrived in time. ``stretch``: the buffer is growing
    its delay by one frame; ``index`` is the frame that will play next.
    """

    index: int
    reason: ConcealReason


@dataclass(frozen=True, slots=True)
class JitterConfig:
    """Tuning of the jitter buffer; times in milliseconds."""

    frame_ms: int = 20
    quantile: float = 0.99  # share of frames that should arrive before their playout time
    window_frames: int = 500  # delay samples kept (10 s of 20 ms frames)
    min_extra_ms: int = 20  # the target never goes below the recent minimum plus this
    max_extra_ms: int = 600  # ... nor above the minimum plus this
    initial_extra_ms: int = 60  # added to the first frame's delay before playout starts
    margin_ms: int = 5  # added to the quantile: a frame due exactly on arrival is at risk
    grow_every: int = 2  # at most one inserted frame per this many frames played
    shrink_every: int = 10  # at most one skipped frame per this many frames played
    max_wait_ms: int = 800  # a packet due later than this after arrival is off the clock
    resync_late_ms: int = 120  # a packet due earlier than this before arrival is off it
    resync_packets: int = 3  # off-clock packets in a row (same direction) restart the clock

    def __post_init__(self) -> None:
        ints = (
            "frame_ms",
            "window_frames",
            "min_extra_ms",
            "max_extra_ms",
            "initial_extra_ms",
            "margin_ms",
            "grow_every",
            "shrink_every",
            "max_wait_ms",
            "resync_late_ms",
            "resync_packets",
        )
        for name in ints:
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise UsageError(f"{name} must be a non-negative integer, got {value!r}")
        if self.frame_ms == 0 or self.window_frames == 0 or self.resync_packets == 0:
            raise UsageError("frame_ms, window_frames and resync_packets must be positive")
        if self.grow_every == 0 or self.shrink_every == 0:
            raise UsageError("grow_every and shrink_every must be positive")
        if not isinstance(self.quantile, float) or not 0.5 <= self.quantile < 1.0:
            raise UsageError("quantile must be a float in [0.5, 1)")
        if self.max_extra_ms < self.min_extra_ms:
            raise UsageError("max_extra_ms must be at least min_extra_ms")
        if self.max_wait_ms <= self.max_extra_ms + self.initial_extra_ms:
            raise UsageError(
                "max_wait_ms must exceed max_extra_ms + initial_extra_ms (frames on the clock"
                " wait that long)"
            )


@dataclass(frozen=True, slots=True)
class JitterStats:
    """Counters and the current delays (seconds) of one jitter buffer."""

    played: int  # real frames handed out
    concealed: int  # Conceal(missing) handed out
    stretched: int  # Conceal(stretch) handed out
    skipped: int  # frames dropped to shrink the delay
    late: int  # frames that arrived after they were concealed
    recovered: int  # frames that arrived only as a redundant copy and were then played
    duplicates: int  # frames that arrived again (redundancy of frames already in hand)
    resyncs: int  # playout clock restarts after the sender's clock jumped
    off_clock: int  # packets off the playout clock: towards a resync, or from before one
    delay_s: float  # current playout delay (relative to the sender's clock)
    target_s: float  # where the buffer is heading
    min_delay_s: float  # recent minimum delay sample

    @property
    def late_loss(self) -> float:
        """Share of due frames that were concealed (arrived late or never)."""
        due = self.played + self.concealed
        return self.concealed / due if due else 0.0


class JitterBuffer:
    """Reorders frames, absorbs delay variation, and says what to play every frame tick."""

    def __init__(self, config: JitterConfig | None = None):
        self.config = config or JitterConfig()
        self._frame_s = self.config.frame_ms / 1000
        self._buffer: dict[int, bytes] = {}
        self._redundant_only: set[int] = set()
        self._concealed: deque[int] = deque(maxlen=self.config.window_frames)
        self._seen: set[int] = set()
        self._samples: deque[float] = deque()
        self._sorted: list[float] = []
        self._next_index: int | None = None
        self._next_time = 0.0
        self._since_adjust = 0
        self._played = self._concealed_n = self._stretched = self._skipped = 0
        self._late = self._recovered = self._duplicates = self._resyncs = 0
        self._off_clock = 0
        self._max_wait_s = self.config.max_wait_ms / 1000
        self._late_s = self.config.resync_late_ms / 1000
        self._run: deque[_Held] = deque(maxlen=self.config.resync_packets)
        self._run_clock = _Clock.ON
        self._max_seq = -1  # newest packet pushed
        self._clock_seq = -1  # packets numbered below this belong to an earlier clock
        self._max_index = -1  # newest frame index taken on the current clock

    # -- arrivals ---------------------------------------------------------------------

    def push(
        self,
        frames: Mapping[int, bytes],
        seq: int,
        arrival_time: float,
        *,
        redundant: Collection[int] = (),
    ) -> None:
        """Frames of one packet: frame index -> Opus frame, redundant copies included.

        ``redundant`` names the indices that came as copies (only for the ``recovered``
        counter). ``seq`` (the media packet's sequence number) is not used for ordering,
        which goes by frame index; it tells a sender whose clock went back from a late
        packet, so it must grow by packet. Indices are integers in ``0 .. 2**32 - 1``
        (``UsageError`` otherwise). A packet off the playout clock counts towards a resync
        (module docstring).
        """
        if not frames:
            return
        if any(not isinstance(i, int) or not 0 <= i < MAX_FRAME_INDEX for i in frames):
            raise UsageError(f"frame indices must be integers in 0..{MAX_FRAME_INDEX - 1}")
        if not isinstance(seq, int):
            raise UsageError("seq must be an integer")
        if self._next_index is None:
            self._start(min(frames), arrival_time)
        if seq < self._clock_seq:
            self._off_clock += 1  # from before the last resync: its times mean nothing now
            return
        newest = max(frames)
        clock = self._clock(newest, arrival_time)
        if clock is _Clock.BEHIND and not (seq > self._max_seq and newest <= self._max_index):
            clock = _Clock.ON  # late, but on the same sender clock: adaptation's job
        overtaken = seq < self._max_seq
        self._max_seq = max(self._max_seq, seq)
        if clock is _Clock.ON:
            if not overtaken:
                self._run.clear()
        else:
            self._off_clock += 1
            if clock is not self._run_clock:
                self._run.clear()
            self._run_clock = clock
            self._run.append(_Held(dict(frames), frozenset(redundant), seq, arrival_time))
            if len(self._run) == self.config.resync_packets:
                self._resync()
                return
            if clock is _Clock.AHEAD:
                return  # held aside: buffering it would keep a frame for that long
        self._max_index = max(self._max_index, newest)
        self._arrive_all(frames, arrival_time, redundant)

    def push_packet(self, packet: MediaPacket, arrival_time: float) -> None:
        """``push`` for an opened media packet; its frame indices count the sender's frames
        (``packet.profile``), whose duration must be this buffer's ``frame_ms``."""
        if packet.profile.frame_ms != self.config.frame_ms:
            raise UsageError(
                f"the packet's frames last {packet.profile.frame_ms} ms but the jitter buffer"
                f" runs on frame_ms={self.config.frame_ms}: configure it from the sender's"
                " profile"
            )
        frames = packet.frame_map()
        first = packet.first_index
        self.push(frames, packet.seq, arrival_time, redundant={i for i in frames if i < first})

    def _arrive_all(
        self, frames: Mapping[int, bytes], arrival_time: float, redundant: Collection[int]
    ) -> None:
        for index in sorted(frames):
            self._arrive(index, frames[index], arrival_time, index in redundant)

    def _clock(self, newest: int, now: float) -> _Clock:
        assert self._next_index is not None
        due = self._next_time + (newest - self._next_index) * self._frame_s
        if due - now > self._max_wait_s:
            return _Clock.AHEAD
        if now - due > self._late_s:
            return _Clock.BEHIND
        return _Clock.ON

    def _start(self, first: int, now: float) -> None:
        self._next_index = first
        self._next_time = now + self.config.initial_extra_ms / 1000

    def _resync(self) -> None:
        """Restart on the run's newest packet as at the start of a call, then take the
        run's packets (older ones mostly fall behind the new playout point)."""
        run = list(self._run)
        self._run.clear()
        self._run_clock = _Clock.ON
        self._resyncs += 1
        self._buffer.clear()
        self._redundant_only.clear()
        self._seen.clear()
        self._concealed.clear()
        self._samples.clear()
        self._sorted.clear()
        newest = run[-1]
        self._start(min(newest.frames), newest.arrival_time)
        self._max_index = max(max(held.frames) for held in run)
        self._clock_seq = min(held.seq for held in run)
        for held in run:
            self._arrive_all(held.frames, held.arrival_time, held.redundant)

    def _arrive(self, index: int, data: bytes, now: float, redundant: bool) -> None:
        assert self._next_index is not None
        if index not in self._seen:
            self._seen.add(index)
            self._sample(now - index * self._frame_s)
            if index < self._next_index:
                if index in self._concealed:
                    self._late += 1
                return
            self._buffer[index] = data
            if redundant:
                self._redundant_only.add(index)
        else:
            self._duplicates += 1
            self._redundant_only.discard(index)
        if len(self._seen) > 4 * self.config.window_frames:
            floor = self._next_index - self.config.window_frames
            self._seen = {i for i in self._seen if i >= floor}

    def _sample(self, delay: float) -> None:
        self._samples.append(delay)
        bisect.insort(self._sorted, delay)
        if len(self._samples) > self.config.window_frames:
            old = self._samples.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    # -- the target -------------------------------------------------------------------

    def _target(self) -> float:
        return self._goal()[0]

    def _goal(self) -> tuple[float, float]:
        """(target, need) in seconds: where the buffer heads, and the delay it must not
        sit below, the quantile itself (at most the target)."""
        if not self._sorted:
            start = self._next_time - (self._next_index or 0) * self._frame_s
            return start, start
        lo = self._sorted[0]
        k = min(len(self._sorted) - 1, int(self.config.quantile * len(self._sorted)))
        quantile = self._sorted[k]
        want = quantile + self.config.margin_ms / 1000
        target = min(
            max(want, lo + self.config.min_extra_ms / 1000), lo + self.config.max_extra_ms / 1000
        )
        return target, min(quantile, target)

    # -- playout ----------------------------------------------------------------------

    def pop(self, now: float) -> MediaFrame | Conceal | None:
        """What to play for the tick at ``now``; None while buffering or before it is due.

        Call it every frame period; call it again in a loop if the caller fell behind.
        """
        if self._next_index is None or now < self._next_time - _SAME_TIME_S:
            return None
        index = self._next_index
        delay = self._next_time - index * self._frame_s
        target, need = self._goal()
        self._since_adjust += 1
        self._next_time += self._frame_s
        cfg = self.config
        short = delay < target - self._frame_s / 2 or delay < need - _SAME_TIME_S
        if short and self._since_adjust >= cfg.grow_every:
            self._since_adjust = 0
            self._stretched += 1
            return Conceal(index, "stretch")  # same index again next tick: delay + 1 frame
        if delay > target + self._frame_s and self._since_adjust >= cfg.shrink_every:
            self._since_adjust = 0
            if index in self._buffer or index + 1 in self._buffer:
                self._skipped += 1
                self._drop(index)
                index += 1
        self._next_index = index + 1
        data = self._buffer.pop(index, None)
        if data is None:
            self._concealed_n += 1
            self._concealed.append(index)
            return Conceal(index, "missing")
        self._played += 1
        if index in self._redundant_only:
            self._redundant_only.discard(index)
            self._recovered += 1
        return MediaFrame(index, data)

    def _drop(self, index: int) -> None:
        self._buffer.pop(index, None)
        self._redundant_only.discard(index)

    @property
    def stats(self) -> JitterStats:
        index = self._next_index or 0
        return JitterStats(
            played=self._played,
            concealed=self._concealed_n,
            stretched=self._stretched,
            skipped=self._skipped,
            late=self._late,
            recovered=self._recovered,
            duplicates=self._duplicates,
            resyncs=self._resyncs,
            off_clock=self._off_clock,
            delay_s=self._next_time - index * self._frame_s,
            target_s=self._target(),
            min_delay_s=self._sorted[0] if self._sorted else 0.0,
        )


def render(item: MediaFrame | Conceal, decoder: OpusDecoder) -> Pcm:
    """PCM for one jitter-buffer item: decode a frame, or run the decoder's concealment."""
    if isinstance(item, MediaFrame):
        return decoder.decode(item.data)
    return decoder.conceal()
