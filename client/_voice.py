"""Opus voice codec through PyAV (which ships libopus): 16 kHz mono, 20 ms frames.

    >>> import numpy as np
    >>> from client import OpusDecoder, OpusEncoder, VoiceProfile
    >>> profile = VoiceProfile()
    >>> enc, dec = OpusEncoder(profile), OpusDecoder(profile)
    >>> frame = enc.encode(np.zeros(profile.samples_per_frame, dtype=np.int16))
    >>> len(frame) == profile.frame_bytes
    True
    >>> dec.decode(frame).shape, dec.conceal().shape
    ((320,), (320,))

Choices, with the reason measured on this build of PyAV/FFmpeg:

- Constant bitrate (``vbr=off``): every frame has exactly ``frame_bytes`` bytes, so a media
  packet's layout is fixed and a frame can never overflow the Sphinx payload. The media
  packet is padded to a constant size anyway, so VBR would buy nothing for privacy.
- Opus in-band FEC (LBRR) is off by default: FFmpeg's libopus decoder has no way to ask
  for the FEC copy, so the bits would be wasted, and with FEC on at 20 kbit/s the encoder
  drops to narrowband. Loss is covered by packet-level redundancy instead (``_media``).
- DTX: FFmpeg's libopus wrapper here does not accept a ``dtx`` option (it is left
  unconsumed); a silent frame is a normal CBR frame. Packets are constant-size regardless.
- Concealment: libopus conceals a lost frame when given a packet whose frame is empty
  (RFC 6716 section 4.4; a TOC byte alone). ``OpusDecoder.conceal`` feeds exactly that,
  so the decoder's own PLC extrapolates pitch and fades out over consecutive losses.
- FFmpeg's libopus decoder always outputs 48 kHz; we decimate by an integer factor with
  a windowed-sinc low-pass FIR that keeps its state between frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from overlay import UsageError, is_int

Pcm = npt.NDArray[np.int16]

OPUS_RATES_HZ = (8000, 12000, 16000, 24000, 48000)  # rates libopus accepts
OPUS_FRAME_MS = (10, 20, 40, 60)  # whole-millisecond Opus frame durations
DECODER_RATE_HZ = 48000  # FFmpeg's libopus decoder always decodes at this rate
MIN_BITRATE_BPS = 6000  # libopus lower bound
MAX_BITRATE_BPS = 128000  # far above what a voice packet can carry
MAX_FRAMES_PER_PACKET = 6
MAX_REDUNDANCY = 2  # how many earlier packets' frames a packet repeats
FIR_TAPS_PER_FACTOR = 16  # decimation filter length per unit of the decimation factor
TOC_CODE_MASK = 0xFC  # RFC 6716 3.1: clear the frame-count code -> one frame


@dataclass(frozen=True, slots=True)
class VoiceProfile:
    """How voice is coded and packetized; frozen, validated, hashable.

    ``redundancy`` is how many previous packets' frames each packet carries again (0 or 1
    usually): with 1, one lost packet in a row costs no audio at all.
    """

    sample_rate_hz: int = 16000
    frame_ms: int = 20
    frames_per_packet: int = 2
    bitrate_bps: int = 24000
    redundancy: int = 1
    samples_per_frame: int = field(init=False)
    frame_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        if not is_int(self.sample_rate_hz) or self.sample_rate_hz not in OPUS_RATES_HZ:
            raise UsageError(f"sample_rate_hz must be one of {OPUS_RATES_HZ}")
        if not is_int(self.frame_ms) or self.frame_ms not in OPUS_FRAME_MS:
            raise UsageError(f"frame_ms must be one of {OPUS_FRAME_MS}")
        if not is_int(self.frames_per_packet) or not (
            1 <= self.frames_per_packet <= MAX_FRAMES_PER_PACKET
        ):
            raise UsageError(f"frames_per_packet must be an integer in 1..{MAX_FRAMES_PER_PACKET}")
        if not is_int(self.bitrate_bps) or not (
            MIN_BITRATE_BPS <= self.bitrate_bps <= MAX_BITRATE_BPS
        ):
            raise UsageError(
                f"bitrate_bps must be an integer in {MIN_BITRATE_BPS}..{MAX_BITRATE_BPS}"
            )
        if not is_int(self.redundancy) or not 0 <= self.redundancy <= MAX_REDUNDANCY:
            raise UsageError(f"redundancy must be an integer in 0..{MAX_REDUNDANCY}")
        bits = self.bitrate_bps * self.frame_ms
        if bits % 8000:
            raise UsageError("bitrate_bps * frame_ms must be a whole number of bytes per frame")
        object.__setattr__(self, "samples_per_frame", self.sample_rate_hz * self.frame_ms // 1000)
        object.__setattr__(self, "frame_bytes", bits // 8000)

    @property
    def packet_interval_ms(self) -> int:
        """Milliseconds of audio in one media packet (the sending clock)."""
        return self.frame_ms * self.frames_per_packet


def _audio_frame(pcm: Pcm, rate_hz: int, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate_hz
    frame.pts = pts
    return frame


class OpusEncoder:
    """One stream of PCM frames in, one CBR Opus frame out per call."""

    def __init__(self, profile: VoiceProfile, *, fec: bool = False, loss_percent: int = 0):
        if not is_int(loss_percent) or not 0 <= loss_percent <= 100:
            raise UsageError("loss_percent must be an integer in 0..100")
        self.profile = profile
        ctx: Any = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = profile.sample_rate_hz
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = profile.bitrate_bps
        ctx.options = {
            "application": "voip",
            "frame_duration": str(profile.frame_ms),
            "vbr": "off",
            "fec": "1" if fec else "0",
            "packet_loss": str(loss_percent),
        }
        ctx.open()
        if ctx.options:  # FFmpeg leaves options it did not understand
            raise UsageError(f"libopus did not accept options {sorted(ctx.options)}")
        self._ctx = ctx
        self._pts = 0

    def encode(self, pcm: Pcm) -> bytes:
        """Encode exactly one frame of int16 mono PCM; returns ``profile.frame_bytes`` bytes."""
        n = self.profile.samples_per_frame
        if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.shape != (n,):
            raise UsageError(f"pcm must be an int16 array of shape ({n},)")
        packets = self._ctx.encode(_audio_frame(pcm, self.profile.sample_rate_hz, self._pts))
        self._pts += n
        if len(packets) != 1:
            raise UsageError(f"libopus returned {len(packets)} packets for one frame")
        return bytes(packets[0])


class Decimator:
    """Integer-factor low-pass decimation with state kept across calls (48 kHz -> rate)."""

    def __init__(self, factor: int):
        if not is_int(factor) or factor < 1:
            raise UsageError("factor must be a positive integer")
        self.factor = factor
        taps = FIR_TAPS_PER_FACTOR * factor + 1
        n = np.arange(taps) - (taps - 1) / 2
        cutoff = 0.45 / factor  # cycles per input sample; 0.5/factor is the new Nyquist
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
        self._h = h / h.sum()
        self._reversed = np.ascontiguousarray(self._h[::-1])
        self._history = np.zeros(taps - 1)
        self._phase = 0

    @property
    def delay_samples_in(self) -> int:
        """Group delay of the filter, in input samples."""
        return (len(self._h) - 1) // 2

    def __call__(self, x: npt.NDArray[np.int16]) -> Pcm:
        if self.factor == 1:
            return x.astype(np.int16)
        buf = np.concatenate([self._history, x.astype(np.float64)])
        taps = len(self._h)
        self._history = buf[len(buf) - (taps - 1) :]
        # Polyphase: evaluate the filter only at the kept output positions.
        count = len(range(self._phase, len(x), self.factor))
        step = buf.strides[0]
        windows = np.lib.stride_tricks.as_strided(
            buf[self._phase :], shape=(count, taps), strides=(self.factor * step, step)
        )
        self._phase = (self._phase - len(x)) % self.factor
        out: npt.NDArray[np.float64] = windows @ self._reversed
        pcm: Pcm = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
        return pcm


class OpusDecoder:
    """Opus frames in, PCM frames out; ``conceal()`` stands in for a lost frame."""

    def __init__(self, profile: VoiceProfile):
        self.profile = profile
        ctx: Any = av.CodecContext.create("libopus", "r")
        ctx.sample_rate = DECODER_RATE_HZ
        ctx.layout = "mono"
        ctx.open()
        self._ctx = ctx
        self._decimate = Decimator(DECODER_RATE_HZ // profile.sample_rate_hz)
        self._toc: int | None = None
        self.concealed = 0  # frames produced by concealment
        self.decoded = 0  # frames decoded from real data

    def _run(self, data: bytes) -> Pcm:
        chunks = [f.to_ndarray().reshape(-1) for f in self._ctx.decode(av.Packet(data))]
        pcm48 = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return self._fit(self._decimate(pcm48))

    def _fit(self, pcm: Pcm) -> Pcm:
        n = self.profile.samples_per_frame
        if len(pcm) == n:
            return pcm
        out = np.zeros(n, np.int16)
        out[: min(n, len(pcm))] = pcm[:n]
        return out

    def decode(self, frame: bytes) -> Pcm:
        """Decode one Opus frame; a corrupt frame is concealed rather than raised."""
        if not isinstance(frame, bytes | bytearray) or not frame:
            raise UsageError("frame must be non-empty bytes")
        try:
            pcm = self._run(bytes(frame))
        except av.error.FFmpegError:
            return self.conceal()
        self._toc = frame[0] & TOC_CODE_MASK
        self.decoded += 1
        return pcm

    def conceal(self) -> Pcm:
        """One frame of decoder PLC (a TOC-only packet); silence before any real frame."""
        self.concealed += 1
        if self._toc is None:
            return np.zeros(self.profile.samples_per_frame, np.int16)
        return self._run(bytes([self._toc]))
