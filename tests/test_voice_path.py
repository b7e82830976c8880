"""The whole voice path on virtual time: codec, sealed media packets, jitter buffer, PLC,
scored with wideband PESQ against the artificial voice."""

from __future__ import annotations

import numpy as np
import pytest

from client import VoiceProfile, artificial_voice, pesq_wb, play_through
from overlay import UsageError

PROFILE = VoiceProfile()
SECONDS = 6.0


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return artificial_voice(SECONDS, seed=21)


def _packets() -> int:
    return int(SECONDS * 1000) // PROFILE.packet_interval_ms


def _mixnet(seed: int, loss: float) -> list[float | None]:
    """Five exponential hops (mean 20 ms) over a 50 ms base; a seeded test distribution."""
    rng = np.random.default_rng(seed)
    return [
        None if rng.random() < loss else 0.05 + float(rng.exponential(0.02, 5).sum())
        for _ in range(_packets())
    ]


def test_steady_path_sounds_like_the_codec_alone(voice: np.ndarray) -> None:
    result = play_through(voice, PROFILE, [0.3] * _packets())
    assert result.stats.concealed == 0
    assert pesq_wb(voice, result.pcm).mos > 3.8
    # Mouth to ear: 300 ms path + packetization + the jitter buffer's margin.
    assert 0.3 < float(np.median(result.mouth_to_ear_s)) < 0.4


def test_mixnet_delays_and_loss_stay_intelligible_and_redundancy_helps(voice: np.ndarray) -> None:
    delays = _mixnet(seed=3, loss=0.1)
    with_red = play_through(voice, PROFILE, delays)
    without = play_through(voice, VoiceProfile(redundancy=0), delays)
    mos_red, mos_bare = pesq_wb(voice, with_red.pcm).mos, pesq_wb(voice, without.pcm).mos
    assert with_red.stats.recovered > 0
    assert with_red.stats.concealed < without.stats.concealed
    assert mos_red > 2.8 and mos_red > mos_bare
    assert float(np.percentile(with_red.mouth_to_ear_s, 95)) < 0.6  # the Mode C envelope


def test_everything_lost_plays_nothing_and_short_voice_is_refused(voice: np.ndarray) -> None:
    assert len(play_through(voice, PROFILE, [None] * 10).pcm) == 0
    with pytest.raises(UsageError):
        play_through(voice[:100], PROFILE, [0.1] * 10)
