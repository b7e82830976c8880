"""A live microphone and speaker (``client.audio``) through the real PortAudio library.

What runs where:

- ``SampleRing`` on its own: everywhere.
- What ``phantom-call listen --mic device`` says when a piece is missing, exit 2 before it
  goes online: no sounddevice package (hidden from the child process), no PortAudio
  library (sounddevice's own library lookup finds none in the child), no device (the real
  PortAudio with an ALSA configuration that defines no device: where sounddevice and
  PortAudio are installed and the machine has no sound card).
- A call's media through a real device: a private PulseAudio server with a null sink,
  which PortAudio's ALSA host API reaches through alsa-plugins' ``pulse`` PCM; the speaker
  plays into the sink and the microphone records the sink's monitor. It needs sounddevice,
  libportaudio2, pulseaudio and libasound2-plugins (Debian names): installed with apt-get
  when the tests run as root on a machine with apt-get (tests/apt_support.py), else the
  tests are skipped, saying which is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from apt_support import require_packages
from hypothesis import given, settings
from hypothesis import strategies as st
from profile_support import PASSPHRASE, make_profile, network_file
from testnet_support import small_testnet

from client import read_wav, write_wav
from client.audio import AudioError, SampleRing, SoundDevice, find_device
from client.profile import CONTROL_SOCKET, open_profile

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("live_audio_child.py")
PULSE_START_S = 15.0
HAS_SOUNDDEVICE = importlib.util.find_spec("sounddevice") is not None
NEEDS_SOUNDDEVICE = pytest.mark.skipif(
    not HAS_SOUNDDEVICE, reason="the sounddevice package is not installed here "
    "(pip install 'phantom-mixnet[audio]')"
)  # fmt: skip


def _env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with ``home`` as HOME (ALSA reads ~/.asoundrc) and as the
    runtime directory, without a sound server of the session."""
    env = {k: v for k, v in os.environ.items() if k not in ("PULSE_SERVER", "ALSA_CONFIG_PATH")}
    runtime = home / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), XDG_CONFIG_HOME=str(home / "cfg"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=120)  # fmt: skip


# -- the ring ----------------------------------------------------------------------------


def test_sample_ring_keeps_the_newest_and_counts_what_it_dropped() -> None:
    ring = SampleRing(5)
    assert ring.push(np.arange(3, dtype=np.int16)) == 0
    assert ring.pop(2).tolist() == [0, 1] and len(ring) == 1
    assert ring.push(np.arange(10, 16, dtype=np.int16)) == 2  # 2 + 6 > 5: the oldest go
    assert ring.pop(9).tolist() == [11, 12, 13, 14, 15] and len(ring) == 0
    assert ring.push(np.arange(20, 24, dtype=np.int16)) == 0  # wraps around the end
    assert ring.pop(1).tolist() == [20]
    assert ring.push(np.arange(30, 32, dtype=np.int16)) == 0
    assert ring.pop(10).tolist() == [21, 22, 23, 30, 31]
    assert ring.push(np.arange(40, 52, dtype=np.int16)) == 7  # longer than the ring
    assert ring.pop(5).tolist() == [47, 48, 49, 50, 51]
    assert ring.pop(3).tolist() == []
    with pytest.raises(ValueError, match="at least one sample"):
        SampleRing(0)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 40),
    st.lists(st.tuples(st.booleans(), st.integers(0, 100)), max_size=60),
)
def test_sample_ring_is_a_bounded_fifo_that_drops_the_oldest(
    capacity: int, ops: list[tuple[bool, int]]
) -> None:
    """Against a deque of the same capacity: the same samples out, the same drops, never
    more than ``capacity`` held, whatever the sizes pushed and popped."""
    ring, model, counter = SampleRing(capacity), deque[int](), 0
    for push, n in ops:
        if push:
            pcm = (np.arange(counter, counter + n) % 30000).astype(np.int16)
            counter += n
            expected_drop = max(0, len(model) + n - capacity)
            model.extend(pcm.tolist())
            for _ in range(expected_drop):
                model.popleft()
            assert ring.push(pcm) == expected_drop
        else:
            want = [model.popleft() for _ in range(min(n, len(model)))]
            assert ring.pop(n).tolist() == want
        assert len(ring) == len(model) <= capacity


# -- what is missing, said before going online -------------------------------------------


def _listen_with(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``phantom-call listen --dir PROFILE ARGS`` in a child after ``code`` ran there."""
    profile = tmp_path / "me"
    if not profile.exists():
        make_profile(profile, network_file())
    run = (
        f"{code}\nimport sys\nfrom client.cli import main\n"
        f"sys.exit(main(['listen', '--dir', {str(profile)!r}, '--no-screen', *{args!r}]))"
    )
    env = _env(tmp_path, PHANTOM_PASSPHRASE=PASSPHRASE.decode())
    done = _python(run, env)
    assert not (profile / CONTROL_SOCKET).exists()  # it never went online
    return done


def test_without_sounddevice_listen_says_what_to_install(tmp_path: Path) -> None:
    hide = "import sys\nsys.modules['sounddevice'] = None  # as if not installed"
    done = _listen_with(tmp_path, hide, "--mic", "device")
    assert done.returncode == 2, done.stderr
    assert ("a live input device needs the sounddevice package: "
            "pip install 'phantom-mixnet[audio]'") in done.stderr  # fmt: skip
    done = _listen_with(tmp_path, hide, "--speaker", "device")
    assert done.returncode == 2 and "a live output device needs the sounddevice" in done.stderr


@NEEDS_SOUNDDEVICE
def test_without_the_portaudio_library_listen_names_the_system_package(tmp_path: Path) -> None:
    # sounddevice looks PortAudio up with ctypes.util.find_library: here it finds none
    hide = "import ctypes.util\nctypes.util.find_library = lambda name: None"
    done = _listen_with(tmp_path, hide, "--mic", "device")
    assert done.returncode == 2, done.stderr
    assert "needs the PortAudio library" in done.stderr
    assert "PortAudio library not found" in done.stderr and "libportaudio2" in done.stderr


@NEEDS_SOUNDDEVICE
def test_without_a_sound_device_listen_says_so_and_suggests_a_file(tmp_path: Path) -> None:
    require_packages("libportaudio2")
    probe = _python("import sounddevice as sd; print(len(sd.query_devices()))", _env(tmp_path))
    if probe.returncode != 0:
        pytest.skip(f"PortAudio cannot be loaded here: {probe.stderr.strip().splitlines()[-1]}")
    if int(probe.stdout) != 0:
        pytest.skip("this machine has sound devices: PortAudio lists some")
    done = _listen_with(tmp_path, "", "--mic", "device")
    assert done.returncode == 2, done.stderr
    assert "--mic device: no sound input device here (PortAudio lists none" in done.stderr
    assert "use --mic FILE.wav" in done.stderr
    done = _listen_with(tmp_path, "", "--speaker", "device:7")
    assert done.returncode == 2, done.stderr
    assert "--speaker device:7: no single sound output device matches '7'" in done.stderr
    assert "use --speaker FILE.wav" in done.stderr


class _Refusing:
    """A sounddevice whose one device (16 and 48 kHz at most 2 channels) takes no format:
    PortAudio converts sample formats and channel counts itself, so no real device here
    can be made to refuse; the message is what this test is about."""

    class PortAudioError(Exception):
        pass

    def query_devices(self, device: object = None, kind: str | None = None) -> object:
        return {"name": "USB Headset", "index": 3, "hostapi": 0, "max_input_channels": 2,
                "max_output_channels": 2, "default_samplerate": 48000.0}  # fmt: skip

    def query_hostapis(self, index: int | None = None) -> object:
        return {"name": "ALSA"}

    def check_input_settings(self, device: int, channels: int, dtype: str,
                             samplerate: float) -> None:  # fmt: skip
        raise self.PortAudioError(f"Invalid sample rate [PaErrorCode -9997] ({channels} ch)")


def test_a_device_that_refuses_the_format_is_named_with_the_format() -> None:
    with pytest.raises(AudioError) as refused:
        find_device(cast(SoundDevice, _Refusing()), "input", "", 16000)
    assert str(refused.value) == (
        "--mic device: the input device 'USB Headset' (ALSA) refuses 16000 Hz or 48000 Hz "
        "mono or stereo 16-bit PCM: Invalid sample rate [PaErrorCode -9997] (2 ch)"
    )


# -- a real device: PulseAudio's null sink through ALSA's pulse plugin -------------------

ASOUNDRC = "pcm.!default { type pulse }\nctl.!default { type pulse }\n"


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a child process whose default sound device is a private
    PulseAudio server's null sink (its monitor is the default input)."""
    if not HAS_SOUNDDEVICE:
        pytest.skip("the sounddevice package is not installed here")
    require_packages("libportaudio2", "pulseaudio", "libasound2-plugins")
    exe = shutil.which("pulseaudio")
    if exe is None:
        pytest.skip("no pulseaudio here (Debian: apt-get install pulseaudio libasound2-plugins)")
    home = tmp_path_factory.mktemp("pulse")
    (home / ".asoundrc").write_text(ASOUNDRC)
    socket_path = home / "pulse.sock"
    env = _env(home, PULSE_SERVER=f"unix:{socket_path}")
    log = open(home / "pulseaudio.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [exe, "-n", "--daemonize=no", "--exit-idle-time=-1", "--disable-shm=yes",
         "--use-pid-file=no", "--realtime=no", "--high-priority=no", "--log-target=stderr",
         f"--load=module-native-protocol-unix auth-anonymous=1 socket={socket_path}",
         "--load=module-null-sink sink_name=phantom"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + PULSE_START_S
        while not socket_path.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not socket_path.exists():
            text = (home / "pulseaudio.log").read_text()[-800:]
            pytest.skip(f"the PulseAudio server did not start: {text}")
        names = "import sounddevice as sd; print([d['name'] for d in sd.query_devices()])"
        probe = _python(names, env)
        if probe.returncode != 0:
            pytest.skip(f"PortAudio cannot be loaded: {probe.stderr.strip().splitlines()[-1]}")
        if "'pulse'" not in probe.stdout:
            pytest.skip("PortAudio's ALSA lists no pulse device (libasound2-plugins missing?)")
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def _through_device(env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, str(CHILD), "6", *args], cwd=ROOT, env=env,
                          text=True, capture_output=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _check(result: dict[str, object], device_rate_hz: int) -> None:
    # A's tone went to B's speaker, came back through B's microphone, and A hears it.
    assert abs(float(str(result["peak_hz"])) - 440) < 3, result
    assert float(str(result["rms"])) > 2000, result
    mic, speaker = result["mic"], result["speaker"]
    assert isinstance(mic, dict) and isinstance(speaker, dict)
    for record in (mic, speaker):
        assert record["device"] == "default" and record["host_api"] == "ALSA"
        assert record["rate_hz"] == device_rate_hz and record["block_ms"] == 20
        assert isinstance(record["latency_ms"], float) and record["latency_ms"] > 0
    assert mic["frames"] > 50 and mic["blocks"] > 50, mic  # ~300 frames in 6 s
    assert speaker["played_samples"] > device_rate_hz, speaker


def test_a_calls_media_through_a_real_sound_device(pulse: dict[str, str]) -> None:
    _check(_through_device(pulse), 16000)


def test_a_device_at_another_rate_is_resampled(pulse: dict[str, str]) -> None:
    _check(_through_device(pulse, "48000"), 48000)


# -- phantom-call listen --mic device --speaker device on a testnet ----------------------

CALL_S = 8


def _listener(home: Path, directory: Path, ip: str, env: dict[str, str], *extra: str,
              ) -> subprocess.Popen[str]:  # fmt: skip
    """``listen`` in its own process, once it says it is online; its log is HOME/NAME.log."""
    log = home / f"{directory.name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "listen", "--dir", str(directory), "--bind", ip,
         "--no-screen", "--report", str(home / f"{directory.name}.json"), *extra],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while "online:" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


def test_listen_with_a_live_mic_and_speaker_on_a_testnet(
    pulse: dict[str, str], tmp_path: Path
) -> None:
    """Bob (a tone file as his microphone, --auto-answer) is called by alice, whose
    microphone and speaker are the sound device: what bob sends plays on alice's speaker,
    her microphone hears it (the sink's monitor) and sends it back: bob hears his tone."""
    env = {**pulse, "PHANTOM_PASSPHRASE": PASSPHRASE.decode()}
    tone = (6000 * np.sin(2 * np.pi * 440 * np.arange(16000 * 30) / 16000)).astype(np.int16)
    write_wav(tmp_path / "tone.wav", tone, rate_hz=16000)
    dirs = {n: tmp_path / n for n in ("alice", "bob")}
    with small_testnet(tmp_path / "net") as state:
        for n, d in dirs.items():
            init = [sys.executable, "-m", "client.cli", "init", "--network",
                    state.authorities[0], "--dir", str(d), "--name", n]  # fmt: skip
            subprocess.run(init, cwd=ROOT, env=env, check=True, capture_output=True)
        cards = {}
        for n, d in dirs.items():
            profile = open_profile(d, lambda: PASSPHRASE)
            cards[n] = profile.card().to_text(profile.identity)
        for me, them in (("alice", "bob"), ("bob", "alice")):
            add = [sys.executable, "-m", "client.cli", "contact", "add", them, cards[them],
                   "--dir", str(dirs[me])]  # fmt: skip
            subprocess.run(add, cwd=ROOT, env=env, check=True, capture_output=True)
        procs = [
            _listener(tmp_path, dirs["bob"], "127.0.0.3", env, "--auto-answer", "--mic",
                      str(tmp_path / "tone.wav"), "--speaker", str(tmp_path / "heard.wav")),
            _listener(tmp_path, dirs["alice"], "127.0.0.2", env, "--mic", "device",
                      "--speaker", "device"),
        ]  # fmt: skip
        try:
            dial = subprocess.run(
                [sys.executable, "-m", "client.cli", "dial", "bob", "--dir", str(dirs["alice"]),
                 "--duration", str(CALL_S)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
            )  # fmt: skip
            assert dial.returncode == 0, (dial.stdout, dial.stderr)
            deadline = time.monotonic() + 20  # both sides drain and write their records
            while not all((tmp_path / f"{n}.json").exists() and
                          json.loads((tmp_path / f"{n}.json").read_text())["calls"]
                          for n in dirs):  # fmt: skip
                assert time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=20)
    (call,) = json.loads((tmp_path / "alice.json").read_text())["calls"]
    devices = call["devices"]
    assert devices["mic"]["device"] == devices["speaker"]["device"] == "default"
    assert devices["mic"]["frames"] > 50 and devices["speaker"]["played_samples"] > 16000
    assert devices["mic"]["latency_ms"] > 0 and devices["speaker"]["latency_ms"] > 0
    (bob_call,) = json.loads((tmp_path / "bob.json").read_text())["calls"]
    assert bob_call["devices"] == {}  # files, not devices
    heard = read_wav(tmp_path / "heard.wav").astype(np.float64)
    tail = heard[len(heard) // 2 :]  # the devices open at "connected", then the loop fills
    assert float(np.sqrt(np.mean(tail**2))) > 1000  # the tone, not the silence of a mic
    spectrum = np.abs(np.fft.rfft(tail))
    assert abs(float(np.fft.rfftfreq(len(tail), 1 / 16000)[int(np.argmax(spectrum))]) - 440) < 3
