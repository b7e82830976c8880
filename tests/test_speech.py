"""The artificial test voice, WAV round trip, delay measurement and PESQ alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client import artificial_voice, measure_delay, pesq_wb, read_wav, write_wav
from overlay import UsageError


def test_voice_is_seeded_and_speech_like() -> None:
    a = artificial_voice(6.0, seed=1)
    assert np.array_equal(a, artificial_voice(6.0, seed=1))
    assert not np.array_equal(a, artificial_voice(6.0, seed=2))
    frames = a[: len(a) // 320 * 320].reshape(-1, 320).astype(float)
    energy = np.sqrt((frames**2).mean(axis=1))
    active = energy > 30
    assert 0.4 < active.mean() < 0.9  # talk spurts and pauses
    level_db = 20 * np.log10(np.sqrt(np.mean(frames[active] ** 2)) / 32768)
    assert -28 < level_db < -24
    spectrum = np.abs(np.fft.rfft(a.astype(float)))
    freqs = np.fft.rfftfreq(len(a), 1 / 16000)
    low = spectrum[(freqs > 80) & (freqs < 4000)].sum()
    assert low > 3 * spectrum[freqs > 4000].sum()  # voice energy sits low


def test_pitch_differs_between_voices() -> None:
    def pitch(x: np.ndarray) -> float:
        seg = x[16000:20000].astype(float)
        ac = np.correlate(seg, seg, "full")[len(seg) - 1 :]
        lo, hi = 16000 // 400, 16000 // 60
        return 16000 / (lo + int(np.argmax(ac[lo:hi])))

    assert pitch(artificial_voice(3.0, seed=4)) < pitch(artificial_voice(3.0, seed=4, female=True))


def test_wav_round_trip(tmp_path: Path) -> None:
    a = artificial_voice(1.0, seed=3)
    write_wav(tmp_path / "v.wav", a)
    assert np.array_equal(read_wav(tmp_path / "v.wav"), a)
    with pytest.raises(UsageError):
        read_wav(tmp_path / "v.wav", rate_hz=8000)


def test_delay_measured_and_removed_before_pesq() -> None:
    a = artificial_voice(5.0, seed=9)
    delayed = np.concatenate([np.zeros(1234, np.int16), a])[: len(a)]
    assert measure_delay(a, delayed, 4000) == 1234
    result = pesq_wb(a, delayed)
    assert result.delay_samples == 1234 and result.mos > 4.3
    noisy = (a + np.random.default_rng(0).normal(0, 800, len(a))).astype(np.int16)
    assert pesq_wb(a, noisy).mos < result.mos - 1


def test_bad_inputs_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        artificial_voice(0.1)
    with pytest.raises(UsageError):
        pesq_wb(np.zeros(100, np.int16), np.zeros(100, np.int16))
