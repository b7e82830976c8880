"""The media of one call, both directions, sans-IO: what a caller sends and plays out.

    >>> from client import Direction, VoiceProfile, artificial_voice, derive_media_keys
    >>> keys = derive_media_keys(bytes(32), bytes(16), Direction.CALLER_TO_CALLEE)
    >>> out, into = MediaOut(artificial_voice(1.0), VoiceProfile()), MediaIn(JitterConfig())
    >>> out.seal_next()  # no keys before StartMedia
    >>> out.start(VoiceProfile(), keys, capture_start=0.0)
    >>> into.start(VoiceProfile(), keys)
    >>> seq, wire = out.seal_next()
    >>> into.open(wire, at=0.1)
    True
    >>> start, frame_s = into.grid()  # 60 ms after the first arrival, 20 ms frames
    >>> round(start, 3), frame_s
    (0.16, 0.02)
    >>> for k in range(3):
    ...     into.play(start + k * frame_s)
    >>> [(index, kind) for index, kind, _ in into.trace.items]
    [(0, 'frame'), (1, 'frame'), (2, 'missing')]

``MediaOut`` cuts our voice into the frames of each slot, encodes and seals them, with the
receiver report ``MediaIn.report(now)`` gives; ``MediaIn`` opens the peer's packets,
buffers them in the jitter buffer and decodes what the playout grid asks for, and keeps
what the next report needs. :func:`rtt_sample` turns a report the peer sent back into a
round-trip time. Both keep the traces the call report needs; times are seconds
on the caller's one clock, passed in (no clock, no socket here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ._jitter import JitterBuffer, JitterConfig, JitterStats, MediaFrame
from ._media import MAX_HOLD_MS, MediaKeys, MediaReceiver, MediaSender, ReceiverReport
from ._voice import OpusDecoder, OpusEncoder, Pcm, VoiceProfile


@dataclass(slots=True)
class MediaTrace:
    """Times (seconds on the caller's Trio clock) of one direction's media, for the report.

    ``to_monotonic_s``: add it to a time here for ``time.monotonic()`` seconds
    (CLOCK_MONOTONIC, shared by the processes of one machine)."""

    to_monotonic_s: float = 0.0
    capture_start: float | None = None  # when frame 0's first sample entered the mic
    sent: dict[int, float] = field(default_factory=dict)  # media seq -> send time
    displaced: int = 0  # media packets whose slot a signaling frame took
    frames_sent: int = 0


@dataclass(slots=True)
class PlayoutTrace:
    """The receiving side of one direction; times in seconds on the caller's Trio clock,
    ``to_monotonic_s`` as in :class:`MediaTrace`."""

    to_monotonic_s: float = 0.0
    arrived: dict[int, float] = field(default_factory=dict)  # media seq -> arrival time
    # Per playout tick item: (frame index, "frame" | "missing" | "stretch", play time)
    items: list[tuple[int, str, float]] = field(default_factory=list)
    # One entry per item while ``keep_pcm`` (a speaker file or a report scores it): about
    # 115 MB per hour of call, so an always-on client without either keeps none.
    pcm: list[Pcm] = field(default_factory=list)
    keep_pcm: bool = True
    stats: JitterStats | None = None


class VoiceSource(Protocol):
    """Where our voice comes from: ``read(i, n)`` is frame ``i``'s ``n`` samples (int16 at
    the profile's rate), fewer or none once the voice ran out (sent as silence)."""

    def read(self, frame_index: int, n: int) -> Pcm: ...


@dataclass(frozen=True, slots=True)
class PcmVoice:
    """A voice held whole in memory (a microphone file, a test voice)."""

    pcm: Pcm

    def read(self, frame_index: int, n: int) -> Pcm:
        return self.pcm[frame_index * n : (frame_index + 1) * n]


class MediaOut:
    """Our media: ``voice`` (int16 PCM at ``profile``'s rate, silence once it runs out; or
    a ``VoiceSource`` such as a live microphone),
    ``profile.frames_per_packet`` frames per packet, sealed once ``start`` gave keys.
    While ``muted`` the frames encode silence in place of the voice (which still runs on):
    the packets keep their rate and their size."""

    def __init__(self, voice: Pcm | VoiceSource, profile: VoiceProfile):
        self.source = PcmVoice(voice) if isinstance(voice, np.ndarray) else voice
        self.profile = profile
        self.muted = False
        self.trace = MediaTrace()
        self._sender: MediaSender | None = None
        self._encoder: OpusEncoder | None = None
        self._packets = 0  # media packets produced this call

    @property
    def sending(self) -> bool:
        return self._sender is not None

    def start(self, profile: VoiceProfile, keys: MediaKeys, capture_start: float) -> None:
        """Keys and the negotiated profile of our direction; the mic opens at
        ``capture_start`` (seconds)."""
        self._sender = MediaSender(profile, keys)
        self._encoder = OpusEncoder(profile)
        self.trace.capture_start = capture_start

    def stop(self) -> None:
        """Our media stops (the call ended); ``seal_next`` returns None from now on."""
        self._sender = self._encoder = None

    def rekey(self, keys: MediaKeys) -> None:
        assert self._sender is not None
        self._sender.rekey(keys)

    def seal_next(self, report: ReceiverReport | None = None) -> tuple[int, bytes] | None:
        """``(sequence number, sealed payload)`` of the next packet's frames, carrying
        ``report`` (``MediaIn.report`` at the sealing time) if given; None while not
        sending."""
        if self._sender is None or self._encoder is None:
            return None
        p, n = self.profile, self.profile.samples_per_frame
        frames = []
        for j in range(p.frames_per_packet):
            i = self._packets * p.frames_per_packet + j
            pcm = self.source.read(i, n)
            if self.muted or len(pcm) < n:  # muted, or the test voice ran out: silence
                pcm = np.zeros(n, np.int16)
            frames.append(self._encoder.encode(pcm))
        seq = self._sender.next_seq
        wire = self._sender.seal(frames, report)
        self._packets += 1
        self.trace.frames_sent += p.frames_per_packet
        return seq, wire


class MediaIn:
    """The peer's media, once ``start`` gave its keys and profile: opened, buffered, and
    played out on the jitter buffer's grid from the first arrival. ``on_arrival(seq, at,
    media_s)``, if set, hears of each packet opened: its sequence number, arrival time and
    media clock (seconds from the sender's first frame); ``on_play(pcm)``, if set, gets
    each frame played (int16 at the peer's rate; a live speaker); ``on_report(report, at)``,
    if set, hears of each receiver report the peer's packets carry. ``last_seq``/``last_at``:
    the number and arrival time (seconds) of the latest packet opened, for our next report."""

    def __init__(self, jitter: JitterConfig):
        self.jitter_config = jitter
        self.on_arrival: Callable[[int, float, float], None] | None = None
        self.on_play: Callable[[Pcm], None] | None = None
        self.trace = PlayoutTrace()
        self._receiver: MediaReceiver | None = None
        self._decoder: OpusDecoder | None = None
        self._jb: JitterBuffer | None = None
        self.first_arrival: float | None = None  # seconds
        self.on_report: Callable[[ReceiverReport, float], None] | None = None
        self.last_seq: int | None = None
        self.last_at: float | None = None  # seconds

    @property
    def listening(self) -> bool:
        return self._receiver is not None

    def start(self, profile: VoiceProfile, keys: MediaKeys) -> None:
        """The peer's negotiated profile and keys (``StartMedia.rx_*``)."""
        self._receiver = MediaReceiver(profile, keys)
        self._decoder = OpusDecoder(profile)
        # The jitter buffer runs on the peer's frames, which may last longer than ours.
        self._jb = JitterBuffer(replace(self.jitter_config, frame_ms=profile.frame_ms))

    def rekey(self, keys: MediaKeys) -> None:
        assert self._receiver is not None
        self._receiver.rekey(keys)

    def open(self, data: bytes, at: float) -> bool:
        """Open and buffer one delivery that arrived at ``at`` (seconds): True if it was
        media of the call, False while not listening. Raises ``MediaError`` (its
        subclasses, counted by the receiver) for anything else."""
        if self._receiver is None or self._jb is None:
            return False
        packet = self._receiver.open(data)
        self.trace.arrived.setdefault(packet.seq, at)
        self.last_seq, self.last_at = packet.seq, at
        if packet.report is not None and self.on_report is not None:
            self.on_report(packet.report, at)
        if self.on_arrival is not None:
            self.on_arrival(packet.seq, at, packet.timestamp / packet.profile.sample_rate_hz)
        self._jb.push_packet(packet, at)  # frame indices on the peer's profile
        if self.first_arrival is None:
            self.first_arrival = at
        return True

    def report(self, now: float) -> ReceiverReport | None:
        """The receiver report to seal into a packet at ``now`` (seconds): the latest packet
        opened, held ``now - last_at`` (milliseconds, floored, saturating at
        ``MAX_HOLD_MS``); None before the first packet opened."""
        if self._receiver is None or self.last_seq is None or self.last_at is None:
            return None
        hold_ms = min(MAX_HOLD_MS, max(0, int((now - self.last_at) * 1000)))
        counters, highest = self._receiver.counters, self._receiver.window.highest
        return ReceiverReport.of(self.last_seq, hold_ms, highest, counters.accepted)

    def grid(self) -> tuple[float, float]:
        """(first playout time, seconds per frame) of the playout grid; call it once
        ``first_arrival`` is set."""
        assert self.first_arrival is not None and self._jb is not None
        start = self.first_arrival + self._jb.config.initial_extra_ms / 1000
        return start, self._jb.config.frame_ms / 1000  # the peer's frames

    def play(self, t: float) -> None:
        """Play every item due at the playout tick ``t`` (seconds) into the trace."""
        assert self._jb is not None and self._decoder is not None
        while (item := self._jb.pop(t)) is not None:
            if isinstance(item, MediaFrame):
                pcm = self._decoder.decode(item.data)
                self.trace.items.append((item.index, "frame", t))
            else:
                pcm = self._decoder.conceal()
                self.trace.items.append((item.index, item.reason, t))
            if self.trace.keep_pcm:
                self.trace.pcm.append(pcm)
            if self.on_play is not None:
                self.on_play(pcm)
        self.trace.stats = self._jb.stats


def rtt_sample(report: ReceiverReport, at: float, sent: dict[int, float]) -> float | None:
    """The round-trip time (seconds) a receiver report that arrived at ``at`` gives:
    ``at - sent[echo_seq] - hold``, where ``sent`` maps our media sequence numbers to their
    send times (``MediaTrace.sent``, the same clock as ``at``). None when we hold no send
    time for ``echo_seq``, when the hold saturated (unknown), or when the result is
    negative (a time from another clock).

        >>> rtt_sample(ReceiverReport(7, 40, 9, 0), 10.5, {7: 10.0})  # 0.5 s - 40 ms hold
        0.46
    """
    sent_at = sent.get(report.echo_seq)
    if sent_at is None or report.hold_ms >= MAX_HOLD_MS:
        return None
    rtt = at - sent_at - report.hold_ms / 1000
    return round(rtt, 9) if rtt >= 0 else None
