"""Media speed against the 20 ms frame clock, with PyAV's raw Opus as the baseline.

    python -m benchmarks.media            # one JSON object on stdout, ~15 s
    python -m benchmarks.media --check    # exit 1 if a target is missed

Measured in one run, interleaved so the ratios hold on a busy machine:

- ``raw_encode`` / ``raw_decode``: PyAV's libopus alone, one 20 ms frame per call (decoding
  at FFmpeg's 48 kHz, no resampling): the floor our pipeline stands on.
- ``send``: PCM -> Opus (our encoder wrapper) -> sealed, padded media packet.
- ``receive``: unmask, replay check, AEAD open, parse -> jitter buffer -> Opus decode and
  decimation to 16 kHz -> PCM.

Rates are frames per second; ``x_realtime`` divides them by 50 frames/s (one 20 ms frame
clock). ``overhead`` is the pipeline's time per frame over the raw codec's. Also reported:
wideband PESQ of the codec loop alone and through a mixnet-like delay with 5 % loss.
Targets: each side >= 20x real time (a call needs at most 1/20 of a core per side);
sending costs <= 1.5x the raw encoder (Opus dominates it); receiving costs <= 5x the raw
decoder, which is cheap (hundreds of times real time) and does not resample, while our
path also decimates 48 -> 16 kHz, opens the AEAD and runs the jitter buffer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from typing import Any

import av
import numpy as np

from benchmarks._harness import emit, machine, median_rate
from client import (
    Direction,
    JitterBuffer,
    MediaReceiver,
    MediaSender,
    OpusDecoder,
    OpusEncoder,
    VoiceProfile,
    artificial_voice,
    derive_media_keys,
    pesq_wb,
    play_through,
    render,
)
from client._voice import DECODER_RATE_HZ
from overlay import VOICE

FRAMES_PER_S = 50  # the 20 ms frame clock
SECONDS = 8.0  # artificial voice used for speed and quality


def _frames(profile: VoiceProfile, voice: np.ndarray) -> list[np.ndarray]:
    n = profile.samples_per_frame
    return [voice[i * n : (i + 1) * n] for i in range(len(voice) // n)]


def _cycle(items: list[Any]) -> Iterator[Any]:
    while True:
        yield from items


def _raw_encoder(profile: VoiceProfile) -> Any:
    enc: Any = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = profile.sample_rate_hz, "mono", "s16"
    enc.bit_rate = profile.bitrate_bps
    enc.options = {"application": "voip", "frame_duration": str(profile.frame_ms), "vbr": "off"}
    enc.open()
    return enc


def _raw_encode(enc: Any, pcm: np.ndarray, pts: int, profile: VoiceProfile) -> list[Any]:
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts = profile.sample_rate_hz, pts
    return list(enc.encode(frame))


def _raw(
    profile: VoiceProfile, frames: list[np.ndarray]
) -> tuple[Callable[[], object], Callable[[], object]]:
    """PyAV alone: the baseline."""
    enc, n = _raw_encoder(profile), profile.samples_per_frame
    pcm, pts = _cycle(frames), iter(range(0, 10**15, n))

    def encode() -> object:
        return _raw_encode(enc, next(pcm), next(pts), profile)

    prep = _raw_encoder(profile)
    coded = [bytes(p) for i, f in enumerate(frames) for p in _raw_encode(prep, f, i * n, profile)]
    dec: Any = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout = DECODER_RATE_HZ, "mono"
    dec.open()
    packets = _cycle(coded)

    def decode() -> object:
        return [f.to_ndarray() for f in dec.decode(av.Packet(next(packets)))]

    return encode, decode


def _pipeline(
    profile: VoiceProfile, frames: list[np.ndarray]
) -> tuple[Callable[[], object], Callable[[], object]]:
    keys = derive_media_keys(os.urandom(32), os.urandom(16), Direction.CALLER_TO_CALLEE)
    fpp = profile.frames_per_packet
    enc = OpusEncoder(profile)
    tx = MediaSender(profile, keys)
    pcm = _cycle(frames)

    def send() -> object:  # one packet: fpp frames
        return tx.seal([enc.encode(next(pcm)) for _ in range(fpp)])

    # Enough distinct packets for every timed receive (the replay window refuses repeats).
    prep_enc, prep_tx = OpusEncoder(profile), MediaSender(profile, keys)
    wires = [prep_tx.seal([prep_enc.encode(next(pcm)) for _ in range(fpp)]) for _ in range(6000)]
    state: dict[str, Any] = {}

    def reset() -> None:
        state["rx"] = MediaReceiver(profile, keys)
        state["jb"] = JitterBuffer()
        state["dec"] = OpusDecoder(profile)
        state["wires"] = iter(wires)
        state["t"] = 0.0

    def receive() -> object:  # one packet in, fpp frames of PCM out
        if "rx" not in state:
            reset()
        try:
            wire = next(state["wires"])
        except StopIteration:
            reset()
            wire = next(state["wires"])
        state["t"] += profile.packet_interval_ms / 1000
        now = state["t"]
        state["jb"].push_packet(state["rx"].open(wire), now)
        out = []
        for k in range(fpp):
            item = state["jb"].pop(now + 0.2 + k * profile.frame_ms / 1000)
            if item is not None:
                out.append(render(item, state["dec"]))
        return out

    return send, receive


def _quality(profile: VoiceProfile, voice: np.ndarray) -> dict[str, float]:
    enc, dec = OpusEncoder(profile), OpusDecoder(profile)
    loop = np.concatenate([dec.decode(enc.encode(f)) for f in _frames(profile, voice)])
    rng = np.random.default_rng(1)  # a seeded test distribution, not a real path
    packets = len(voice) // (profile.samples_per_frame * profile.frames_per_packet)
    delays = [
        None if rng.random() < 0.05 else 0.05 + float(rng.exponential(0.02, 5).sum())
        for _ in range(packets)
    ]
    path = play_through(voice, profile, delays)
    m2e = np.array(path.mouth_to_ear_s)
    return {
        "pesq_wb_codec_loop": round(pesq_wb(voice, loop).mos, 3),
        "pesq_wb_mixnet_5pct_loss": round(pesq_wb(voice, path.pcm).mos, 3),
        "mixnet_mouth_to_ear_p50_ms": round(1000 * float(np.percentile(m2e, 50)), 1),
        "mixnet_mouth_to_ear_p95_ms": round(1000 * float(np.percentile(m2e, 95)), 1),
        "mixnet_late_loss": round(path.stats.late_loss, 4),
    }


def run(rounds: int, number: int) -> dict[str, object]:
    """Interleave the four contenders for ``rounds`` rounds; report medians in frames/s."""
    profile = VoiceProfile()
    voice = artificial_voice(SECONDS, seed=2)
    frames = _frames(profile, voice)
    raw_encode, raw_decode = _raw(profile, frames)
    send, receive = _pipeline(profile, frames)
    fpp = profile.frames_per_packet
    cases = {
        "raw_encode": (raw_encode, number, 1),
        "raw_decode": (raw_decode, number, 1),
        "send": (send, max(1, number // fpp), fpp),
        "receive": (receive, max(1, number // fpp), fpp),
    }
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, (fn, n, frames_per_call) in cases.items():
            samples[name].append(frames_per_call * median_rate(fn, number=n, repeats=1))
    med = {k: statistics.median(v) for k, v in samples.items()}
    x_rt = {k: v / FRAMES_PER_S for k, v in med.items()}
    overhead = {
        "send_vs_raw_encode": med["raw_encode"] / med["send"],
        "receive_vs_raw_decode": med["raw_decode"] / med["receive"],
    }
    targets = {
        "send_x_realtime>=20": x_rt["send"] >= 20,
        "receive_x_realtime>=20": x_rt["receive"] >= 20,
        "send_overhead<=1.5": overhead["send_vs_raw_encode"] <= 1.5,
        "receive_overhead<=5": overhead["receive_vs_raw_decode"] <= 5.0,
    }
    return {
        "benchmark": "media",
        "profile": {
            "sample_rate_hz": profile.sample_rate_hz,
            "frame_ms": profile.frame_ms,
            "frames_per_packet": fpp,
            "bitrate_bps": profile.bitrate_bps,
            "redundancy": profile.redundancy,
            "media_packet_bytes": VOICE.user_payload,
        },
        "rounds": rounds,
        "frames_per_s": {k: round(v, 1) for k, v in med.items()},
        "x_realtime": {k: round(v, 1) for k, v in x_rt.items()},
        "overhead": {k: round(v, 3) for k, v in overhead.items()},
        "quality": _quality(profile, voice),
        "targets_met": targets,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print JSON."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.media", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median taken)")
    ap.add_argument("--number", type=int, default=400, help="frames per timing sample")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.number < 1:
        ap.error("--rounds and --number must be positive integers")
    result = run(args.rounds, args.number)
    emit(result)
    targets: dict[str, bool] = result["targets_met"]  # type: ignore[assignment]
    return 1 if args.check and not all(targets.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
