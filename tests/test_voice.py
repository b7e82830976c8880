"""Opus through PyAV: profile validation, CBR frame sizes, decoder PLC, PESQ of the loop."""

from __future__ import annotations

import numpy as np
import pytest

from client import (
    Decimator,
    OpusDecoder,
    OpusEncoder,
    VoiceProfile,
    artificial_voice,
    pesq_wb,
)
from overlay import UsageError


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return artificial_voice(6.0, seed=11)


def _loop(voice: np.ndarray, profile: VoiceProfile, lost: set[int], conceal: str) -> np.ndarray:
    enc, dec = OpusEncoder(profile), OpusDecoder(profile)
    n = profile.samples_per_frame
    out = []
    for i in range(len(voice) // n):
        frame = enc.encode(voice[i * n : (i + 1) * n])
        assert len(frame) == profile.frame_bytes
        if i in lost:
            out.append(dec.conceal() if conceal == "plc" else np.zeros(n, np.int16))
        else:
            out.append(dec.decode(frame))
    return np.concatenate(out)


def test_profile_defaults_and_derived_sizes() -> None:
    p = VoiceProfile()
    assert (p.sample_rate_hz, p.frame_ms, p.samples_per_frame) == (16000, 20, 320)
    assert p.frame_bytes == p.bitrate_bps * p.frame_ms // 8000
    assert p.packet_interval_ms == p.frame_ms * p.frames_per_packet
    assert hash(p) == hash(VoiceProfile())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sample_rate_hz", 44100),
        ("frame_ms", 25),
        ("frames_per_packet", 0),
        ("frames_per_packet", True),
        ("bitrate_bps", 1000),
        ("redundancy", 3),
        ("bitrate_bps", 16001),  # not a whole number of bytes per frame
    ],
)
def test_profile_rejects_bad_fields_by_name(field: str, value: object) -> None:
    with pytest.raises(UsageError, match=field):
        VoiceProfile(**{field: value})  # type: ignore[arg-type]


def test_encoder_rejects_wrong_pcm() -> None:
    enc = OpusEncoder(VoiceProfile())
    with pytest.raises(UsageError):
        enc.encode(np.zeros(319, np.int16))
    with pytest.raises(UsageError):
        enc.encode(np.zeros(320, np.float32))  # type: ignore[arg-type]


def test_cbr_frames_have_constant_size_for_speech_and_silence(voice: np.ndarray) -> None:
    profile = VoiceProfile(bitrate_bps=16000)
    enc = OpusEncoder(profile)
    sizes = {len(enc.encode(voice[i * 320 : (i + 1) * 320])) for i in range(50)}
    sizes |= {len(enc.encode(np.zeros(320, np.int16))) for _ in range(20)}
    assert sizes == {40}


def test_codec_loop_pesq_is_good(voice: np.ndarray) -> None:
    out = _loop(voice, VoiceProfile(), set(), "plc")
    result = pesq_wb(voice, out)
    assert result.mos > 3.8
    assert 0 < result.delay_samples < 320  # Opus lookahead plus the decimation filter


def test_decoder_plc_beats_silence_under_loss(voice: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    lost = {i for i in range(len(voice) // 320) if rng.random() < 0.1}
    plc = pesq_wb(voice, _loop(voice, VoiceProfile(), lost, "plc")).mos
    zero = pesq_wb(voice, _loop(voice, VoiceProfile(), lost, "zero")).mos
    assert plc > zero + 0.3


def test_conceal_before_any_frame_is_silence_and_corrupt_frame_is_concealed() -> None:
    dec = OpusDecoder(VoiceProfile())
    assert not dec.conceal().any()
    out = dec.decode(b"\xff" * 7)  # code 3 with an impossible frame count
    assert out.shape == (320,)
    assert dec.concealed == 2 and dec.decoded == 0
    with pytest.raises(UsageError):
        dec.decode(b"")


def test_decimator_passes_low_tones_and_removes_high_ones() -> None:
    t = np.arange(48000) / 48000
    for freq, keep in ((1000, True), (12000, False)):
        dec = Decimator(3)
        x = (10000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
        y = np.concatenate([dec(x[i : i + 960]) for i in range(0, len(x), 960)])
        assert len(y) == 16000
        rms = np.sqrt(np.mean(y[1000:].astype(float) ** 2))
        assert (rms > 6000) if keep else (rms < 100)
