"""Run by tests/test_live_audio.py in a child process whose environment points PortAudio at a
private sound server: one call's media, both directions, through the live devices.

    python tests/live_audio_child.py SECONDS [DEVICE_RATE_HZ]

A sends a 440 Hz tone; B's playout goes to the live speaker; B's live microphone hears
what the speaker played (the sink's monitor) and B sends it back; A's playout is analysed.
Prints one JSON object: the tone's peak frequency and level heard at A, the time the
devices took to open, and both devices' records. ``DEVICE_RATE_HZ`` opens the devices at
that rate (resampled to and from the voice's 16 kHz).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import numpy as np

from client import Direction, VoiceProfile, derive_media_keys
from client._call_media import MediaIn, MediaOut
from client._jitter import JitterConfig
from client.audio import LiveMic, LiveSpeaker, open_live_mic, open_live_speaker

TONE_HZ = 440.0


def main(seconds: float, device_rate_hz: int | None) -> dict[str, object]:
    profile = VoiceProfile()
    rate = profile.sample_rate_hz
    t = np.arange(int(rate * (seconds + 1))) / rate
    tone = (6000 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)
    speaker, mic = open_live_speaker("", profile), open_live_mic("", profile)
    if device_rate_hz is not None:
        packet = profile.samples_per_frame * profile.frames_per_packet
        speaker = LiveSpeaker(speaker.sd, replace(speaker.format, rate_hz=device_rate_hz), rate)
        mic = LiveMic(mic.sd, replace(mic.format, rate_hz=device_rate_hz), rate, packet)
    jitter = JitterConfig(frame_ms=profile.frame_ms)
    a_out, b_in = MediaOut(tone, profile), MediaIn(jitter)
    b_out, a_in = MediaOut(mic, profile), MediaIn(jitter)
    b_in.on_play = speaker.play
    began = time.monotonic()
    speaker.start()
    mic.start()
    opened_s = time.monotonic() - began
    for i, (out, into) in enumerate(((a_out, b_in), (b_out, a_in))):
        direction = (Direction.CALLER_TO_CALLEE, Direction.CALLEE_TO_CALLER)[i]
        keys = derive_media_keys(bytes(32), bytes(16), direction)
        out.start(profile, keys, capture_start=0.0)
        into.start(profile, keys)
    slot_s = profile.packet_interval_ms / 1000
    start, k = time.monotonic(), 0
    while (now := time.monotonic()) < start + seconds:  # one slot: a packet each way
        for out, into in ((a_out, b_in), (b_out, a_in)):
            sealed = out.seal_next()
            assert sealed is not None
            into.open(sealed[1], at=now)
            into.play(now)
        k += 1
        time.sleep(max(0.0, start + k * slot_s - time.monotonic()))
    records = {"mic": mic.record(), "speaker": speaker.record()}
    mic.stop()
    speaker.stop()
    tail = np.concatenate(a_in.trace.pcm)[-int(1.5 * rate) :].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(tail))
    peak_hz = float(np.fft.rfftfreq(len(tail), 1 / rate)[int(np.argmax(spectrum))])
    rms = float(np.sqrt(np.mean(tail**2)))
    return {"opened_s": opened_s, "peak_hz": peak_hz, "rms": rms, **records}


if __name__ == "__main__":
    rate_arg = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(main(float(sys.argv[1]), rate_arg)))
