"""The caller's microphone and speaker: WAV files, or a sound device through PortAudio.

    pcm = load_mic_file("speech.wav", rate_hz=16000)   # any WAV PyAV reads -> mono int16
    write_speaker_file("heard.wav", pcm, rate_hz=16000)

``--mic FILE.wav`` plays a file as the microphone: decoded with PyAV (any sample format,
rate and channel count libavformat reads as WAV), mixed down to mono and resampled with
libswresample to the voice profile's rate (``VoiceProfile.sample_rate_hz``, 16 kHz by
default: the Opus encoder takes PCM at that rate). ``--speaker FILE.wav`` writes what was
heard, at the same rate, when the call ends. Unreadable or empty files raise
:class:`AudioError` with the path and the reason.

A live device (``--mic device`` / ``--speaker device``, or ``device:NAME``) goes through
PortAudio with the optional ``sounddevice`` package (``pip install 'phantom-mixnet[audio]'``
and the system's libportaudio2):

    mic = open_live_mic("", VoiceProfile())          # checked: device, format; not open yet
    mic.start()                                      # blocks while PortAudio opens it
    pcm = mic.read(0, 320)                           # a VoiceSource for MediaOut
    mic.stop(); mic.record()                         # device, latency, counters

``open_live_mic`` / ``open_live_speaker`` (and ``require_device``) raise AudioError saying
what is missing: the package, the PortAudio library, a device, or a format the device
takes. ``LiveMic`` and ``LiveSpeaker`` hold PortAudio's blocks in bounded rings
(``SampleRing``) between its callback thread and the call's slots, and count the
underruns and overruns (see their docstrings; docs/calling.md, "Live sound device").
"""

from __future__ import annotations

import importlib
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import av
import numpy as np
import numpy.typing as npt

from overlay import PhantomError

from ._speech import write_wav
from ._voice import Pcm, VoiceProfile, _audio_frame

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


# -- a live device through PortAudio ---------------------------------------------------------

BLOCK_MS = 20  # PortAudio's block: one 20 ms voice frame per callback
DEVICE_LATENCY = "low"  # PortAudio's suggested latency: the device's low-latency setting
SPEAKER_QUEUE_MS = 120  # the speaker holds at most this much; older samples are dropped
DTYPE = "int16"


class _Flags(Protocol):
    """``sounddevice.CallbackFlags``: what PortAudio reports with each block."""

    @property
    def input_overflow(self) -> bool: ...

    @property
    def output_underflow(self) -> bool: ...


class _Stream(Protocol):
    """The part of ``sounddevice.InputStream`` / ``OutputStream`` used here."""

    @property
    def latency(self) -> float: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


_InCallback = Callable[[npt.NDArray[np.int16], int, object, _Flags], None]
_OutCallback = Callable[[npt.NDArray[np.int16], int, object, _Flags], None]


class SoundDevice(Protocol):
    """The part of the ``sounddevice`` module used here (the package has no type hints)."""

    PortAudioError: type[Exception]

    def query_devices(self, device: int | str | None = None, kind: str | None = None) -> Any: ...

    def query_hostapis(self, index: int | None = None) -> Any: ...

    def check_input_settings(self, device: int, channels: int, dtype: str,
                             samplerate: float) -> None: ...  # fmt: skip

    def check_output_settings(self, device: int, channels: int, dtype: str,
                              samplerate: float) -> None: ...  # fmt: skip

    def InputStream(  # noqa: N802 (sounddevice's names)
        self, *, samplerate: float, blocksize: int, device: int, channels: int, dtype: str,
        latency: str, callback: _InCallback,
    ) -> _Stream: ...  # fmt: skip

    def OutputStream(  # noqa: N802
        self, *, samplerate: float, blocksize: int, device: int, channels: int, dtype: str,
        latency: str, callback: _OutCallback,
    ) -> _Stream: ...  # fmt: skip


def _option(kind: str) -> str:
    return "--mic" if kind == "input" else "--speaker"


def load_sounddevice(kind: str) -> SoundDevice:
    """The ``sounddevice`` module, PortAudio loaded; ``kind`` ("input" | "output") only
    words the error. AudioError when the package or the PortAudio library is missing."""
    try:
        module = importlib.import_module("sounddevice")
    except ImportError:
        raise AudioError(
            f"a live {kind} device needs the sounddevice package: "
            "pip install 'phantom-mixnet[audio]' (PortAudio comes with its wheels on "
            "macOS and Windows; on Linux install libportaudio2)"
        ) from None
    except OSError as exc:  # the package is there, the PortAudio library is not
        raise AudioError(
            f"a live {kind} device needs the PortAudio library, which sounddevice cannot "
            f"load ({exc}): install it with the system's packages (libportaudio2 on Debian "
            "and Ubuntu, portaudio on Fedora and Homebrew)"
        ) from None
    return cast(SoundDevice, module)


@dataclass(frozen=True, slots=True)
class DeviceFormat:
    """A sound device and the format it accepted: PortAudio's device ``index``, its
    ``name`` and host API, ``rate_hz`` (Hz) and ``channels`` of the stream (int16)."""

    index: int
    name: str
    host_api: str
    rate_hz: int
    channels: int


def find_device(sd: SoundDevice, kind: str, spec: str, rate_hz: int) -> DeviceFormat:
    """The ``kind`` ("input" | "output") device named by ``spec`` (PortAudio's index or a
    part of its name; "": the default device) and the format it takes: ``rate_hz`` if
    it accepts it (else its default rate, resampled), mono (else stereo, mixed down or
    duplicated), int16. AudioError naming the device and the format it refused, or saying
    that there is no such device."""
    option = _option(kind)
    device: int | str | None = None if not spec else int(spec) if spec.isdigit() else spec
    try:
        info = sd.query_devices(device, kind=kind)
    except (sd.PortAudioError, ValueError) as exc:
        if not spec:
            raise AudioError(
                f"{option} device: no sound {kind} device here (PortAudio lists none: "
                f"{exc}); use {option} FILE.wav"
            ) from None
        raise AudioError(f"{option} device:{spec}: no single sound {kind} device matches "
                         f"{spec!r} ({exc}); 'python3 -m sounddevice' lists them, or use "
                         f"{option} FILE.wav") from None  # fmt: skip
    name, index = str(info["name"]), int(info["index"])
    host_api = str(sd.query_hostapis(int(info["hostapi"]))["name"])
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    most = int(info[f"max_{kind}_channels"])
    rates = dict.fromkeys([rate_hz, int(info["default_samplerate"])])
    last: Exception | None = None
    for rate in rates:
        for channels in (1, 2)[: max(1, min(2, most))]:
            try:
                check(device=index, channels=channels, dtype=DTYPE, samplerate=rate)
            except (sd.PortAudioError, ValueError) as exc:
                last = exc
                continue
            return DeviceFormat(index, name, host_api, rate, channels)
    tried = " or ".join(f"{r} Hz" for r in rates)
    raise AudioError(f"{option} device: the {kind} device {name!r} ({host_api}) refuses "
                     f"{tried} mono or stereo 16-bit PCM: {last}")  # fmt: skip


def require_device(kind: str, spec: str = "", rate_hz: int = 16000) -> DeviceFormat:
    """The default ``kind`` ("input" | "output") device (or the one ``spec`` names) and
    its format; AudioError naming what is missing otherwise (the package, PortAudio, a
    device, a format it takes)."""
    return find_device(load_sounddevice(kind), kind, spec, rate_hz)


class SampleRing:
    """A bounded FIFO of int16 samples: ``push`` drops the oldest when full. Not locked:
    its owner holds a lock around it (the PortAudio callback runs on its own thread)."""

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError("a sample ring holds at least one sample")
        self._buf = np.zeros(capacity, np.int16)
        self._head = self._size = 0

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def __len__(self) -> int:
        return self._size

    def clear(self) -> None:
        self._head = self._size = 0

    def push(self, pcm: Pcm) -> int:
        """Append ``pcm``; returns how many of the oldest samples were dropped for room."""
        cap = len(self._buf)
        dropped = max(0, self._size + len(pcm) - cap)
        if len(pcm) >= cap:
            self._buf[:] = pcm[len(pcm) - cap :]
            self._head, self._size = 0, cap
            return dropped
        self._head = (self._head + max(0, self._size + len(pcm) - cap)) % cap
        self._size = min(cap, self._size + len(pcm))
        start = (self._head + self._size - len(pcm)) % cap
        first = min(len(pcm), cap - start)
        self._buf[start : start + first] = pcm[:first]
        self._buf[: len(pcm) - first] = pcm[first:]
        return dropped

    def pop(self, n: int) -> Pcm:
        """The oldest ``min(n, len(self))`` samples, removed."""
        cap, k = len(self._buf), min(n, self._size)
        first = min(k, cap - self._head)
        out = np.concatenate([self._buf[self._head : self._head + first], self._buf[: k - first]])
        self._head, self._size = (self._head + k) % cap, self._size - k
        return out


class StreamResampler:
    """Mono int16 from ``in_hz`` to ``out_hz`` (libswresample through PyAV), chunk by chunk;
    its filter keeps its state between chunks."""

    def __init__(self, in_hz: int, out_hz: int):
        self.in_hz, self.out_hz = in_hz, out_hz
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=out_hz)
        self._pts = 0

    def __call__(self, pcm: Pcm) -> Pcm:
        frame = _audio_frame(np.ascontiguousarray(pcm, np.int16), self.in_hz, self._pts)
        self._pts += len(pcm)
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


class LiveDevice:
    """What a live microphone and speaker share: the stream's life and the counters."""

    kind = ""  # "input" | "output"
    role = ""  # "mic" | "speaker": its name in the call's record

    def __init__(self, sd: SoundDevice, fmt: DeviceFormat, rate_hz: int, capacity: int):
        self.sd, self.format, self.rate_hz = sd, fmt, rate_hz
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()  # the ring, the counters, the primed state
        self._ring = SampleRing(capacity)
        self._primed = False
        self._stream: _Stream | None = None
        self._latency_s: float | None = None  # PortAudio's, of the open stream
        self._running = False
        self._life = threading.Lock()  # start and stop, which block, one at a time

    def _callback(self, data: npt.NDArray[np.int16], frames: int, time: object,
                  status: _Flags) -> None:  # fmt: skip
        """PortAudio's callback on its own thread: ``data`` is (frames, channels) int16."""
        raise NotImplementedError

    def _open(self) -> _Stream:
        f = self.format
        open_stream = self.sd.InputStream if self.kind == "input" else self.sd.OutputStream
        return open_stream(
            samplerate=f.rate_hz, blocksize=round(f.rate_hz * BLOCK_MS / 1000), device=f.index,
            channels=f.channels, dtype=DTYPE, latency=DEVICE_LATENCY, callback=self._callback,
        )  # fmt: skip

    def _push(self, pcm: Pcm) -> None:
        """Into the ring, the lock held: a full ring drops its oldest samples, counted."""
        dropped = self._ring.push(pcm)
        if dropped:
            self.counters["overruns"] += 1
            self.counters["dropped_samples"] += dropped

    def start(self) -> None:
        """Open the device's stream and start it; the counters start from zero. It blocks
        (PortAudio opens the device): call it from a worker thread while online. AudioError
        naming the device if it cannot be opened."""
        with self._life:
            if self._stream is not None:
                return
            with self._lock:
                self.counters.clear()
                self._ring.clear()
                self._primed = False
            stream: _Stream | None = None
            try:
                stream = self._open()
                stream.start()
            except (self.sd.PortAudioError, ValueError) as exc:
                if stream is not None:
                    stream.close()
                raise AudioError(f"{_option(self.kind)} device: cannot open the {self.kind} "
                                 f"device {self.format.name!r}: {exc}") from None  # fmt: skip
            self._stream, self._latency_s = stream, stream.latency
            with self._lock:
                self._running = True

    def stop(self) -> None:
        """Stop and close the stream (blocks until PortAudio's last callback returned); the
        counters and the latency go too (``record`` them before)."""
        with self._life:
            with self._lock:
                self._running = False
                self.counters.clear()
            stream, self._stream, self._latency_s = self._stream, None, None
            if stream is not None:
                try:
                    stream.stop()
                finally:
                    stream.close()

    def record(self) -> dict[str, object]:
        """The device, its format and latency (PortAudio's figure for the stream's buffers,
        ms; None while closed), and the counters since ``start`` (JSON-ready)."""
        latency = self._latency_s
        with self._lock:
            counters = dict(self.counters)
        return {
            "device": self.format.name, "host_api": self.format.host_api,
            "rate_hz": self.format.rate_hz, "channels": self.format.channels,
            "block_ms": BLOCK_MS,
            "latency_ms": None if latency is None else round(1000 * latency, 1),
            **counters,
        }  # fmt: skip


class LiveMic(LiveDevice):
    """A microphone through PortAudio, a ``VoiceSource`` for the call's media: PortAudio's
    callback puts each block (mixed to mono, resampled to ``rate_hz``) in a ring that
    holds at most two packets' worth of samples plus a block; at each slot the sender
    reads the packet's frames from it (``read``), oldest first, once the ring held a packet
    and a block (so a block landing just after the slot's read does not starve it).

    Counted per call (``record``): ``blocks`` from the device, ``frames`` read,
    ``underruns`` (the device had not delivered a frame when the sender wanted it: silence
    is sent until the ring holds a packet and a block again) and ``silent_frames`` (the
    frames sent as silence so), ``overruns`` and ``dropped_samples`` (the ring was full:
    the oldest samples went, the sender gets the newest), ``device_overflows`` (PortAudio
    lost input itself)."""

    kind, role = "input", "mic"

    def __init__(self, sd: SoundDevice, fmt: DeviceFormat, rate_hz: int, packet_samples: int):
        block = round(rate_hz * BLOCK_MS / 1000)
        super().__init__(sd, fmt, rate_hz, 2 * packet_samples + block)
        self._prime = packet_samples + block
        self._resample = None if fmt.rate_hz == rate_hz else StreamResampler(fmt.rate_hz, rate_hz)

    def _callback(self, data: npt.NDArray[np.int16], frames: int, time: object,
                  status: _Flags) -> None:  # fmt: skip
        block = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1).astype(np.int16)
        if self._resample is not None:
            block = self._resample(block)
        with self._lock:
            self.counters["blocks"] += 1
            if status.input_overflow:
                self.counters["device_overflows"] += 1
            self._push(block)

    def read(self, frame_index: int, n: int) -> Pcm:
        """The next ``n`` samples heard (``frame_index`` is not needed: a live microphone
        has only now); silence while the device is closed or behind."""
        with self._lock:
            if not self._running:
                return np.zeros(n, np.int16)
            if not self._primed and len(self._ring) >= max(n, self._prime):
                self._primed = True
            if self._primed and len(self._ring) < n:
                self.counters["underruns"] += 1
                self._primed = False
            if not self._primed:
                if self.counters["frames"]:  # behind the call: the ring fills again
                    self.counters["silent_frames"] += 1
                return np.zeros(n, np.int16)
            self.counters["frames"] += 1
            return self._ring.pop(n)


class LiveSpeaker(LiveDevice):
    """A speaker through PortAudio, fed by the call's playout (``play``, the
    ``MediaIn.on_play`` sink): frames at ``rate_hz`` (resampled to the device's rate)
    queue for PortAudio's callback, at most ``SPEAKER_QUEUE_MS``. The callback starts
    taking from the queue once it holds a block and a frame, and again after it ran dry.

    Counted per call (``record``): ``blocks`` the device asked for, ``frames`` queued,
    ``played_samples``, ``underruns`` (the queue ran dry while playing: silence until it
    holds a block and a frame again) and ``silence_samples`` (silence played after the
    first sound),
    ``overruns`` and ``dropped_samples`` (the queue was full: the oldest went),
    ``device_underflows`` (PortAudio itself ran dry)."""

    kind, role = "output", "speaker"

    def __init__(self, sd: SoundDevice, fmt: DeviceFormat, rate_hz: int):
        capacity = round(fmt.rate_hz * SPEAKER_QUEUE_MS / 1000)
        super().__init__(sd, fmt, rate_hz, capacity)
        self._prime = 2 * round(fmt.rate_hz * BLOCK_MS / 1000)  # a block and a frame
        self._resample = None if fmt.rate_hz == rate_hz else StreamResampler(rate_hz, fmt.rate_hz)

    def play(self, pcm: Pcm) -> None:
        """Queue one frame played out (int16 at ``rate_hz``); dropped while closed."""
        with self._lock:
            if not self._running:
                return
        if self._resample is not None:
            pcm = self._resample(pcm)
        with self._lock:
            self.counters["frames"] += 1
            self._push(pcm)

    def _callback(self, data: npt.NDArray[np.int16], frames: int, time: object,
                  status: _Flags) -> None:  # fmt: skip
        with self._lock:
            self.counters["blocks"] += 1
            if status.output_underflow:
                self.counters["device_underflows"] += 1
            if not self._primed and len(self._ring) >= self._prime:
                self._primed = True
            got = self._ring.pop(frames) if self._primed else np.zeros(0, np.int16)
            if self._primed and len(got) < frames:
                self.counters["underruns"] += 1
                self._primed = False
            if self.counters["played_samples"]:  # after the first sound: silence counted
                self.counters["silence_samples"] += frames - len(got)
            self.counters["played_samples"] += len(got)
        data[: len(got)] = got[:, None]
        data[len(got) :] = 0


def open_live_mic(spec: str, voice: VoiceProfile) -> LiveMic:
    """The live microphone (``spec`` as in ``find_device``) for calls of ``voice``'s rate
    and packets, checked but not yet opened (``LiveMic.start``). AudioError as in
    ``require_device``."""
    sd = load_sounddevice("input")
    fmt = find_device(sd, "input", spec, voice.sample_rate_hz)
    packet = voice.samples_per_frame * voice.frames_per_packet
    return LiveMic(sd, fmt, voice.sample_rate_hz, packet)


def open_live_speaker(spec: str, voice: VoiceProfile) -> LiveSpeaker:
    """The live speaker (``spec`` as in ``find_device``) for ``voice``'s rate, checked but
    not yet opened (``LiveSpeaker.start``). AudioError as in ``require_device``."""
    sd = load_sounddevice("output")
    return LiveSpeaker(sd, find_device(sd, "output", spec, voice.sample_rate_hz),
                       voice.sample_rate_hz)  # fmt: skip


def device_spec(value: str) -> str | None:
    """The device a ``--mic`` / ``--speaker`` value names: "" for ``device`` (the default
    device), the index or name after ``device:``; None for a file."""
    if value == DEVICE:
        return ""
    if value.startswith(DEVICE + ":") and len(value) > len(DEVICE) + 1:
        return value[len(DEVICE) + 1 :]
    return None
