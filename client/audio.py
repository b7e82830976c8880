"""The caller's microphone and speaker: WAV files, or a sound device through PortAudio.

    pcm = load_mic_file("speech.wav", rate_hz=16000)   # any WAV PyAV reads -> mono int16
    write_speaker_file("heard.wav", pcm, rate_hz=16000)

``--mic FILE.wav`` plays a file as the microphone: decoded with PyAV (any sample format,
rate and channel count libavformat reads as WAV), mixed down to mono and resampled with
libswresample to the voice profile's rate (``VoiceProfile.sample_rate_hz``, 16 kHz by
default: the Opus encoder takes PCM at that rate). ``--speaker FILE.wav`` writes what was
heard, at the same rate, when the call ends. Unreadable or empty files raise
:class:`AudioError` with the path and the reason.

A live device (``--mic device`` / ``--speaker device``) goes through the optional
``sounddevice`` package (``pip install phantom-mixnet[audio]``): :func:`require_device`
raises AudioError saying what to install, or that no input/output device exists.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import av
import numpy as np

from overlay import PhantomError

from ._speech import write_wav
from ._voice import Pcm

DEVICE = "device"  # the --mic / --speaker value that names the sound device
MAX_MIC_SECONDS = 3600.0  # a microphone file is cut after this long


class AudioError(PhantomError):
    """A microphone or speaker that cannot be used; the message says which and why."""


def load_mic_file(path: str | Path, rate_hz: int) -> Pcm:
    """The file at ``path`` as mono int16 PCM at ``rate_hz`` (Hz), at most
    ``MAX_MIC_SECONDS`` long. AudioError if it cannot be read or holds no audio."""
    chunks: list[np.ndarray] = []
    limit = int(MAX_MIC_SECONDS * rate_hz)
    total = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"--mic {path}: no audio stream in the file")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_hz)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += len(chunk)
                if total >= limit:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (OSError, av.FFmpegError, ValueError) as exc:
        raise AudioError(f"--mic {path}: cannot read it as audio: {exc}") from None
    pcm = np.concatenate(chunks).astype(np.int16)[:limit] if chunks else np.zeros(0, np.int16)
    if not len(pcm):
        raise AudioError(f"--mic {path}: the file holds no audio samples")
    return pcm


def write_speaker_file(path: str | Path, pcm: Pcm, rate_hz: int) -> None:
    """Write what was heard (mono int16 at ``rate_hz``) as a WAV file; AudioError if the
    file cannot be written."""
    try:
        write_wav(path, pcm, rate_hz=rate_hz)
    except OSError as exc:
        raise AudioError(f"--speaker {path}: {exc.strerror or exc}") from None


def require_device(kind: str) -> ModuleType:
    """The ``sounddevice`` module when a default ``kind`` ("input" or "output") device
    exists; AudioError naming what is missing otherwise (the package, PortAudio, or a
    device)."""
    try:
        sd = importlib.import_module("sounddevice")
    except ImportError:
        raise AudioError(
            f"a live {kind} device needs the sounddevice package: "
            "pip install 'phantom-mixnet[audio]' (PortAudio comes with its wheels on "
            "macOS and Windows; on Linux install libportaudio2)"
        ) from None
    except OSError as exc:  # the package is there, the PortAudio library is not
        raise AudioError(f"sounddevice cannot load PortAudio: {exc}") from None
    try:
        sd.query_devices(kind=kind)
    except Exception as exc:  # sounddevice raises PortAudioError or ValueError
        raise AudioError(f"no default sound {kind} device: {exc}") from None
    return sd
