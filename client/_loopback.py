"""The whole voice path on virtual time, without a network: for tests, benchmarks, the sim.

    >>> from client import VoiceProfile, artificial_voice, play_through
    >>> voice = artificial_voice(2.0, seed=1)
    >>> result = play_through(voice, VoiceProfile(), [0.25] * 25)  # 25 packets, 250 ms each
    >>> result.stats.concealed, result.stats.played + result.stats.skipped
    (0, 50)

PCM -> Opus -> media packet (sealed, constant size) -> a given delay per packet (``None``:
lost) -> open, replay window -> jitter buffer on a 20 ms playout clock -> Opus or loss
concealment -> PCM. The caller chooses the delays (a simulator's, a measured trace, or a
seeded test distribution); nothing here draws random numbers except the media keys.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from overlay import UsageError

from ._jitter import JitterBuffer, JitterConfig, JitterStats, MediaFrame
from ._media import Direction, MediaReceiver, MediaSender, derive_media_keys
from ._voice import OpusDecoder, OpusEncoder, Pcm, VoiceProfile


@dataclass(frozen=True, slots=True)
class LoopResult:
    """What came out of the speaker, and how the jitter buffer fared."""

    pcm: Pcm
    stats: JitterStats
    mouth_to_ear_s: tuple[float, ...]  # per played frame: playout time - capture time


def play_through(
    voice: Pcm,
    profile: VoiceProfile,
    delays_s: Sequence[float | None],
    *,
    jitter: JitterConfig | None = None,
) -> LoopResult:
    """Send ``voice`` as ``len(delays_s)`` packets; packet i arrives after delays_s[i]."""
    per_packet = profile.samples_per_frame * profile.frames_per_packet
    if len(voice) < per_packet * len(delays_s):
        raise UsageError("voice is shorter than the packets asked for")
    keys = derive_media_keys(os.urandom(32), os.urandom(16), Direction.CALLER_TO_CALLEE)
    enc, dec = OpusEncoder(profile), OpusDecoder(profile)
    tx, rx = MediaSender(profile, keys), MediaReceiver(profile, keys)
    frame_s = profile.frame_ms / 1000
    n = profile.samples_per_frame
    arrivals: list[tuple[float, bytes]] = []
    for i, delay in enumerate(delays_s):
        frames = [
            enc.encode(voice[(i * profile.frames_per_packet + k) * n :][:n])
            for k in range(profile.frames_per_packet)
        ]
        wire = tx.seal(frames)
        sent = (i + 1) * profile.frames_per_packet * frame_s  # when the last frame is captured
        if delay is not None:
            arrivals.append((sent + delay, wire))
    arrivals.sort(key=lambda a: a[0])
    total = len(delays_s) * profile.frames_per_packet
    jb = JitterBuffer(jitter or JitterConfig(frame_ms=profile.frame_ms))
    out: list[Pcm] = []
    m2e: list[float] = []
    if not arrivals:
        return LoopResult(np.zeros(0, np.int16), jb.stats, ())
    start, tick, k, last_index = arrivals[0][0], 0, 0, -1
    end = arrivals[-1][0] + 2.0 + total * frame_s
    now = start
    while now < end and last_index < total - 1:
        while k < len(arrivals) and arrivals[k][0] <= now:
            jb.push_packet(rx.open(arrivals[k][1]), arrivals[k][0])
            k += 1
        while (item := jb.pop(now)) is not None:
            if isinstance(item, MediaFrame):
                out.append(dec.decode(item.data))
                m2e.append(now - item.index * frame_s)
                last_index = item.index
            else:
                out.append(dec.conceal())
                if item.reason == "missing":
                    last_index = item.index
        tick += 1
        now = start + tick * frame_s  # no drift from repeated addition
    pcm = np.concatenate(out) if out else np.zeros(0, np.int16)
    return LoopResult(pcm, jb.stats, tuple(m2e))
