"""A locally generated test voice, 16 kHz WAV I/O, and PESQ scoring with delay alignment.

    >>> from client import artificial_voice, pesq_wb
    >>> voice = artificial_voice(4.0, seed=1)
    >>> voice.shape, voice.dtype.name
    ((64000,), 'int16')
    >>> pesq_wb(voice, voice).mos > 4.5
    True

The voice follows the spirit of ITU-T P.50 artificial voices, built here from scratch: a
glottal pulse train (Rosenberg pulses) whose pitch drifts and declines through each
phrase, shaped by a cascade of formant resonators that glide through a vowel sequence,
with short noise bursts for fricatives, and talk spurts separated by pauses (about 60 %
activity, as in conversational speech). It is seeded and needs no recordings.

The numpy generator here only makes a test signal; it is never used for keys or timing.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from overlay import UsageError

Pcm = npt.NDArray[np.int16]

SPEECH_RATE_HZ = 16000
BLOCK_SAMPLES = 80  # 5 ms: formants and pitch are updated per block
ACTIVE_LEVEL_DBOV = -26.0  # active speech level, as ITU-T P.56 recommends for tests
# (F1, F2, F3, F4) in Hz for a few vowels (typical adult values).
VOWELS_HZ = {
    "a": (730, 1090, 2440, 3400),
    "e": (530, 1840, 2480, 3500),
    "i": (270, 2290, 3010, 3700),
    "o": (570, 840, 2410, 3400),
    "u": (300, 870, 2240, 3300),
    "ae": (660, 1720, 2410, 3500),
    "er": (490, 1350, 1690, 3300),
}
FORMANT_BW_HZ = (80, 100, 140, 200)
SPURT_S = (0.9, 2.2)  # talk spurt length range, seconds
PAUSE_S = (0.35, 1.1)  # pause length range, seconds
PESQ_MAX_SHIFT_S = 1.0  # search range for the delay between reference and degraded


def _resonator(freq_hz: float, bw_hz: float) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bw_hz / SPEECH_RATE_HZ)
    theta = 2 * np.pi * freq_hz / SPEECH_RATE_HZ
    a = np.array([1.0, -2 * r * np.cos(theta), r * r])
    return np.array([a.sum()]), a  # unity gain at DC


def _glottal_source(f0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rosenberg pulses at the per-sample pitch ``f0`` (Hz), plus a little aspiration."""
    phase = np.cumsum(f0 / SPEECH_RATE_HZ) % 1.0
    open_q, close_q = 0.4, 0.16  # fractions of the period
    pulse = np.where(
        phase < open_q,
        0.5 * (1 - np.cos(np.pi * phase / open_q)),
        np.where(phase < open_q + close_q, np.cos(0.5 * np.pi * (phase - open_q) / close_q), 0.0),
    )
    flow_derivative = np.diff(pulse, prepend=0.0)
    return flow_derivative + 0.002 * rng.standard_normal(len(f0))


def _spurt(n: int, rng: np.random.Generator, base_f0: float) -> np.ndarray:
    """One talk spurt of ``n`` samples: pitch contour, vowel glides, a few fricatives."""
    t = np.arange(n) / SPEECH_RATE_HZ
    dur = n / SPEECH_RATE_HZ
    # Declining pitch with a slow intonation wave and a little jitter.
    f0 = (
        base_f0
        * (1.1 - 0.2 * t / dur)
        * (1 + 0.08 * np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6)))
    )
    f0 *= 1 + 0.01 * rng.standard_normal(n)
    source = _glottal_source(f0, rng)
    names = list(VOWELS_HZ)
    # Syllables of 120..260 ms, each a vowel target; glide linearly between targets.
    targets, bounds, pos = [], [], 0
    while pos < n:
        targets.append(np.array(VOWELS_HZ[names[rng.integers(len(names))]], float))
        bounds.append(pos)
        pos += int(rng.uniform(0.12, 0.26) * SPEECH_RATE_HZ)
    bounds.append(n)
    out = np.zeros(n)
    zi = [np.zeros(2) for _ in FORMANT_BW_HZ]
    env = np.ones(n)
    for start in range(0, n, BLOCK_SAMPLES):
        stop = min(n, start + BLOCK_SAMPLES)
        k = int(np.searchsorted(bounds, start, side="right")) - 1
        seg0, seg1 = bounds[k], bounds[k + 1]
        frac = (start - seg0) / max(1, seg1 - seg0)
        nxt = targets[min(k + 1, len(targets) - 1)]
        formants = targets[k] + (nxt - targets[k]) * max(0.0, frac - 0.6) / 0.4
        # Syllable amplitude: rise, hold, dip at the boundary (consonant-like).
        env[start:stop] = 0.35 + 0.65 * np.sin(np.pi * min(1.0, max(0.02, frac))) ** 0.5
        block = source[start:stop]
        for i, (fr, bw) in enumerate(zip(formants, FORMANT_BW_HZ, strict=True)):
            b, a = _resonator(float(fr), bw)
            block, zi[i] = lfilter(b, a, block, zi=zi[i])
        out[start:stop] = block
    out *= env
    # Fricatives: short high-passed noise bursts at some syllable boundaries.
    hp_b, hp_a = np.array([1.0, -1.0]), np.array([1.0, -0.6])
    for b0 in bounds[1:-1]:
        if rng.random() < 0.35:
            m = int(rng.uniform(0.04, 0.09) * SPEECH_RATE_HZ)
            m = min(m, n - b0)
            noise = lfilter(hp_b, hp_a, rng.standard_normal(m)) * np.hanning(m)
            noise *= 0.6 * np.std(out) / (np.std(noise) + 1e-12)
            out[b0 : b0 + m] = 0.3 * out[b0 : b0 + m] + noise
    # 10 ms fade in and out.
    ramp = min(n // 2, SPEECH_RATE_HZ // 100)
    out[:ramp] *= np.linspace(0, 1, ramp)
    out[n - ramp :] *= np.linspace(1, 0, ramp)
    return out


def artificial_voice(seconds: float, *, seed: int = 0, female: bool = False) -> Pcm:
    """``seconds`` of artificial speech at 16 kHz, int16, active level -26 dBov."""
    if not isinstance(seconds, int | float) or not 0.5 <= seconds <= 600:
        raise UsageError("seconds must be a number in 0.5..600")
    rng = np.random.default_rng(seed)
    n = int(seconds * SPEECH_RATE_HZ)
    base_f0 = 210.0 if female else 120.0
    out = np.zeros(n)
    active = np.zeros(n, bool)
    pos = int(rng.uniform(0.1, 0.3) * SPEECH_RATE_HZ)
    while pos < n:
        m = min(n - pos, int(rng.uniform(*SPURT_S) * SPEECH_RATE_HZ))
        if m > SPEECH_RATE_HZ // 10:
            out[pos : pos + m] = _spurt(m, rng, base_f0 * rng.uniform(0.9, 1.1))
            active[pos : pos + m] = True
        pos += m + int(rng.uniform(*PAUSE_S) * SPEECH_RATE_HZ)
    level = np.sqrt(np.mean(out[active] ** 2)) if active.any() else 1.0
    out *= 32768 * 10 ** (ACTIVE_LEVEL_DBOV / 20) / level
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def write_wav(path: str | Path, pcm: Pcm, rate_hz: int = SPEECH_RATE_HZ) -> None:
    """Write mono int16 PCM as a WAV file."""
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
        raise UsageError("pcm must be a 1-D int16 array")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.astype("<i2").tobytes())


def read_wav(path: str | Path, rate_hz: int = SPEECH_RATE_HZ) -> Pcm:
    """Read a mono 16-bit WAV file at ``rate_hz``; anything else is a UsageError."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != rate_hz:
            raise UsageError(f"{path}: want mono 16-bit PCM at {rate_hz} Hz")
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def measure_delay(reference: Pcm, degraded: Pcm, max_shift: int) -> int:
    """Samples by which ``degraded`` lags ``reference`` (cross-correlation peak)."""
    ref = reference.astype(np.float64)
    deg = degraded.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(ref) + len(deg))))
    corr = np.fft.irfft(np.fft.rfft(deg, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.concatenate([np.arange(0, max_shift + 1), np.arange(-max_shift, 0)])
    values = np.concatenate([corr[: max_shift + 1], corr[size - max_shift :]])
    return int(lags[int(np.argmax(values))])


@dataclass(frozen=True, slots=True)
class PesqResult:
    """A wideband PESQ score (MOS-LQO) and the delay that was removed before scoring."""

    mos: float
    delay_samples: int

    @property
    def delay_ms(self) -> float:
        return 1000 * self.delay_samples / SPEECH_RATE_HZ


def pesq_wb(reference: Pcm, degraded: Pcm) -> PesqResult:
    """Wideband PESQ (ITU-T P.862.2) at 16 kHz after aligning by the measured delay."""
    from pesq import pesq  # type: ignore[import-untyped]  # lazily: only scoring needs it

    for name, x in (("reference", reference), ("degraded", degraded)):
        if not isinstance(x, np.ndarray) or x.ndim != 1 or len(x) < SPEECH_RATE_HZ // 4:
            raise UsageError(f"{name} must be a 1-D array of at least 0.25 s")
    shift = measure_delay(reference, degraded, int(PESQ_MAX_SHIFT_S * SPEECH_RATE_HZ))
    deg = degraded[shift:] if shift >= 0 else np.concatenate([np.zeros(-shift, np.int16), degraded])
    n = min(len(reference), len(deg))
    mos = pesq(SPEECH_RATE_HZ, reference[:n].astype(np.float64), deg[:n].astype(np.float64), "wb")
    return PesqResult(float(mos), shift)
