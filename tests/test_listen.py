"""The always-on client: ``listen`` and ``dial`` in their own processes on a real testnet.

Two (three) profiles made with ``init`` against the testnet's authority, cards exchanged
with ``contact add``; each ``listen`` runs as its own process bound to its own 127.0.0.x.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from profile_support import PASSPHRASE as PROFILE_PASSPHRASE
from profile_support import make_profile, network_file
from testnet_support import small_testnet

from client import artificial_voice, read_wav
from client._listen import describe_status, end_text
from client.audio import AudioError, load_mic_file
from client.cli import main
from client.control import MAX_LINE
from client.identity import fingerprint_digits, safety_number
from client.profile import CONTROL_SOCKET, open_profile

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "listen test passphrase"
START_TIMEOUT_S = 30.0


@dataclass
class Listener:
    name: str
    directory: Path
    ip: str
    report: Path
    proc: subprocess.Popen[str] | None = None
    extra: list[str] = field(default_factory=list)

    def start(self, terminal: int | None = None) -> None:
        """Start ``listen``; with ``terminal`` (a pty's fd) as its stdin and keys on."""
        seen = len(self.log()) if (self.directory.parent / f"{self.name}.log").exists() else 0
        out = open(self.directory.parent / f"{self.name}.log", "a")  # noqa: SIM115
        screen = [] if terminal is not None else ["--no-screen"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "client.cli", "listen", "--dir", str(self.directory),
             "--bind", self.ip, *screen, "--report", str(self.report), *self.extra],
            cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL if terminal is None else terminal,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            if "online:" in self.log()[seen:]:
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not come online: {self.log()}")

    def log(self) -> str:
        return (self.directory.parent / f"{self.name}.log").read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.proc = None
        return code

    def calls(self) -> list[dict[str, object]]:
        calls = json.loads(self.report.read_text())["calls"]
        assert isinstance(calls, list)
        return calls


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PHANTOM_PASSPHRASE": PASSPHRASE}


def _dial(directory: Path, name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "client.cli", "dial", name, "--dir", str(directory), *args],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _dial_until_connected(directory: Path, name: str) -> subprocess.Popen[str]:
    """``dial name`` from the listener of ``directory``, once it printed ``connected``."""
    dial = _dial(directory, name)
    assert dial.stdout is not None
    line, deadline = "", time.monotonic() + 30
    while "connected" not in line and time.monotonic() < deadline:
        line = dial.stdout.readline()
        if not line:
            break
    assert f"connected {name}" in line, dial.communicate(timeout=10)
    return dial


def _control(directory: Path, *lines: bytes) -> list[dict[str, object]]:
    """Send raw lines to a listener's control socket; one reply per line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(directory / CONTROL_SOCKET))
        replies: list[dict[str, object]] = []
        buf = b""
        for line in lines:
            s.sendall(line)
            while b"\n" not in buf:
                chunk = s.recv(65536)
                assert chunk, "the listener closed the connection"
                buf += chunk
            first, buf = buf.split(b"\n", 1)
            replies.append(json.loads(first))
        return replies


def _write_wav(path: Path, pcm: np.ndarray, rate_hz: int, channels: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(np.repeat(pcm, channels).astype("<i2").tobytes())


# -- microphone and speaker, without a network ------------------------------------------


def test_a_mic_file_of_any_rate_and_channels_becomes_mono_at_the_voice_rate(
    tmp_path: Path,
) -> None:
    voice = artificial_voice(2.0, seed=4)
    _write_wav(tmp_path / "stereo44.wav", np.repeat(voice, 3)[::3], 16000, 2)
    _write_wav(tmp_path / "mono48.wav", np.repeat(voice, 3), 48000, 1)
    for name in ("stereo44.wav", "mono48.wav"):
        pcm = load_mic_file(tmp_path / name, 16000)
        assert pcm.dtype == np.int16 and pcm.ndim == 1
        assert abs(len(pcm) - 32000) < 400
        assert float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > 300


def test_unreadable_audio_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.wav").write_text("not audio at all")
    with pytest.raises(AudioError, match="notes.wav: cannot read it as audio"):
        load_mic_file(tmp_path / "notes.wav", 16000)
    with pytest.raises(AudioError, match="missing.wav"):
        load_mic_file(tmp_path / "missing.wav", 16000)
    _write_wav(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000, 1)
    with pytest.raises(AudioError, match="no audio"):
        load_mic_file(tmp_path / "empty.wav", 16000)
    # listen refuses a bad microphone before it asks the network for anything
    d = tmp_path / "me"
    make_profile(d, network_file())
    monkeypatch.setenv("PHANTOM_PASSPHRASE", PROFILE_PASSPHRASE.decode())
    assert main(["listen", "--dir", str(d), "--mic", str(tmp_path / "notes.wav")]) == 2
    assert "cannot read it as audio" in capsys.readouterr().err
    assert not (d / CONTROL_SOCKET).exists()


@pytest.mark.parametrize("value", ["-1", "nan", "5000", "x"])
def test_listen_refuses_a_mean_delay_outside_0_to_1000_ms(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["listen", "--dir", str(tmp_path), f"--mean-delay-ms={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --mean-delay-ms: want milliseconds in 0..1000, got '{value}'" in err
    assert not any(tmp_path.iterdir())  # refused before the profile is touched


def test_listen_help_shows_the_mean_delay_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["listen", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--mean-delay-ms MS mean sender-chosen delay per hop" in help_text
    assert "(default: 22.5)" in help_text
    assert "--auto-answer pick up incoming calls 0.5 s after they ring (default: off" in help_text


def test_dial_and_the_listener_commands_take_no_passphrase_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The listener holds the profile: dial, answer, ..., status only name the profile.
    for verb in ("dial", "answer", "decline", "hangup", "mute", "status"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "--passphrase-file" not in help_text, verb
        assert "--dir DIR the profile whose listener to ask" in help_text, verb


def test_status_lines_read_as_sentences() -> None:
    idle = {"type": "status", "online": True, "contacts": 1, "calls": 0, "call": None}
    assert describe_status(idle) == ["online: 1 contact, 0 calls ended since it started",
                                     "no call"]  # fmt: skip
    call = {"contact": "bob", "role": "caller", "trust": "verified", "mode": "PARANOID",
            "events": ["dial"], "muted": True}  # fmt: skip
    lines = describe_status({**idle, "contacts": 2, "calls": 1, "call": call})
    assert lines == ["online: 2 contacts, 1 call ended since it started",
                     "call with bob: caller, dialing, verified, PARANOID, MUTED"]  # fmt: skip


def test_the_screen_says_who_ended_the_call() -> None:
    assert end_text("bob", "HANGUP", ended_here=False) == "bob hung up (HANGUP)"
    assert end_text("bob", "HANGUP", ended_here=True) == "you hung up (HANGUP)"
    assert end_text("bob", "DECLINED", ended_here=True) == "you declined (DECLINED)"
    assert end_text("bob", "TIMEOUT", ended_here=False) == "nothing more came from bob (TIMEOUT)"
    assert end_text("bob", "dialer gone", ended_here=True) == (
        "the dial command stopped (dialer gone)"
    )
    assert end_text("bob", "POLICY_VIOLATION", ended_here=False) == "POLICY_VIOLATION"


# -- two listeners on a testnet -----------------------------------------------------------


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Listener]]:
    """A testnet; profiles alice, bob (contacts of each other) and carol (holds bob's
    card, bob does not hold hers); listeners alice (127.0.0.2, a mic file) and bob
    (127.0.0.3, --auto-answer, a speaker file) running."""
    tmp = tmp_path_factory.mktemp("listen")
    with small_testnet(tmp / "net") as state:
        url = state.authorities[0]
        os.environ["PHANTOM_PASSPHRASE"] = PASSPHRASE
        try:
            dirs = {n: tmp / n for n in ("alice", "bob", "carol")}
            for n, d in dirs.items():
                assert main(["init", "--network", url, "--dir", str(d), "--name", n]) == 0
            cards = {}
            for n, d in dirs.items():
                p = open_profile(d, PASSPHRASE.encode)
                cards[n] = p.card().to_text(p.identity)
            for me, them in (("alice", "bob"), ("bob", "alice"), ("carol", "bob")):
                assert main(["contact", "add", them, cards[them], "--dir", str(dirs[me])]) == 0
        finally:
            del os.environ["PHANTOM_PASSPHRASE"]
        voice = artificial_voice(30.0, seed=3)  # longer than any call here: speech throughout
        # 48 kHz stereo by sample repetition: the listener resamples it to 16 kHz mono
        _write_wav(tmp / "mic.wav", np.repeat(voice, 3), 48000, 2)
        listeners = {
            "alice": Listener("alice", dirs["alice"], "127.0.0.2", tmp / "alice.json",
                              extra=["--mic", str(tmp / "mic.wav"), "--mean-delay-ms", "10"]),
            "bob": Listener("bob", dirs["bob"], "127.0.0.3", tmp / "bob.json",
                            extra=["--auto-answer", "--speaker", str(tmp / "heard.wav")]),
            "carol": Listener("carol", dirs["carol"], "127.0.0.4", tmp / "carol.json"),
        }  # fmt: skip
        try:
            listeners["alice"].start()
            listeners["bob"].start()
            yield listeners
        finally:
            for listener in listeners.values():
                if listener.proc is not None:
                    listener.stop(signal.SIGKILL)


def test_a_call_between_two_listeners_connects_and_ends(
    net: dict[str, Listener], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, bob = net["alice"], net["bob"]
    dial = _dial(alice.directory, "bob", "--duration", "4")
    out, err = dial.communicate(timeout=60)
    assert dial.returncode == 0, (out, err, alice.log(), bob.log())
    assert "connected bob" in out and "ended: HANGUP" in out
    time.sleep(2.0)  # bob's side drains and writes its report
    (a_call,) = alice.calls()
    (b_call,) = bob.calls()
    assert a_call["role"] == "caller" and a_call["contact"] == "bob"
    assert b_call["role"] == "callee" and b_call["contact"] == "alice"
    assert a_call["end_reason"] == b_call["end_reason"] == "HANGUP"
    ta, tb = a_call["times"], b_call["times"]
    assert isinstance(ta, dict) and isinstance(tb, dict)
    # One clock on one host: alice dials, bob rings, both connect, both end, in that order.
    assert ta["dial"] < tb["ringing"] <= ta["ringing"] and tb["connected"] <= ta["connected"]
    assert ta["connected"] < ta["ended"] and tb["connected"] < tb["ended"]
    os.environ["PHANTOM_PASSPHRASE"] = PASSPHRASE
    try:
        assert main(["calls", "--dir", str(alice.directory)]) == 0
    finally:
        del os.environ["PHANTOM_PASSPHRASE"]
    assert "outgoing  answered" in capsys.readouterr().out  # the call log, sealed
    report = json.loads(alice.report.read_text())
    assert report["key_agreement"] == "X25519+ML-KEM-768"
    # each listener's own mean delay per hop (alice: --mean-delay-ms 10), and the call's
    # settings and counts the demo's report needs (small_testnet: one mix layer, 3 hops)
    assert a_call["mean_delay_ms_per_hop"] == 10.0 and b_call["mean_delay_ms_per_hop"] == 22.5
    assert a_call["hops"] == 3 and a_call["channel"] == "identity X25519, hash ratchet"
    assert a_call["profile"] == {"sample_rate_hz": 16000, "frames_per_packet": 2,
                                 "bitrate_bps": 24000, "redundancy": 1}  # fmt: skip
    jitter = b_call["jitter"]
    assert isinstance(jitter, dict) and set(jitter) == {"late", "recovered", "skipped"}
    assert isinstance(a_call["displaced"], int) and len(report["packet_sizes"]) == 1
    assert report["ip"] == "127.0.0.2" and report["pid"] == alice.proc.pid  # type: ignore[union-attr]
    # The capture times at alice and the play times at bob, by frame index: mouth-to-ear.
    capture, played = a_call["capture"], b_call["played"]
    assert isinstance(capture, list) and isinstance(played, list)
    delays = [t - capture[i] for i, kind, t in played if kind == "frame" and i < len(capture)]
    assert len(delays) > 50 and 0 < float(np.median(delays)) < 2.0
    # Bob heard alice's microphone: speech energy where she spoke (her file is speech
    # throughout), well above the silence bob's own side sent.
    heard = read_wav(alice.directory.parent / "heard.wav")
    assert len(heard) > 16000 * 3
    rms = float(np.sqrt(np.mean(heard.astype(np.float64) ** 2)))
    assert rms > 300, rms
    # Alice's uplink: the same packet count every whole second, before, during and after.
    traffic = report["traffic"]
    up = traffic["up_packets"][1:-1]
    assert up and max(up) - min(up) <= 2, (up, report["uplink_slots"])
    # Neither side's identity, mailbox, gateway or safety number is in a report or a log;
    # nor is the peer's address (each report holds its own bind IP, by design).
    profiles = [open_profile(x.directory, PASSPHRASE.encode) for x in (alice, bob)]
    idents = [p.identity.public for p in profiles]
    secrets = [fingerprint_digits(i) for i in idents] + [safety_number(*idents)]
    for p in profiles:
        keys = (p.identity.public.sign_public, p.identity.public.dh_public,
                p.mailbox_key.mailbox_id, p.gateway_id)  # fmt: skip
        secrets += [k.hex() for k in keys] + [base64.b64encode(k).decode() for k in keys]
        secrets += [base64.urlsafe_b64encode(k).decode().rstrip("=") for k in keys]
        secrets.append(p.card().to_text(p.identity))
    for x, peer_ip in ((alice, "127.0.0.3"), (bob, "127.0.0.2")):
        text = x.report.read_text() + x.log()
        assert not [s for s in secrets if s in text or s.upper() in text], x.name
        assert peer_ip not in x.report.read_text(), x.name


def test_control_socket_is_private_and_a_second_listener_is_refused(
    net: dict[str, Listener],
) -> None:
    alice = net["alice"]
    path = alice.directory / CONTROL_SOCKET
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = subprocess.run(
        [sys.executable, "-m", "client.cli", "listen", "--dir", str(alice.directory),
         "--no-screen"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1
    assert "another listener is running" in second.stderr
    assert path.exists()  # the first listener's socket is untouched
    (status,) = _control(alice.directory, b'{"type": "status"}\n')
    assert status["type"] == "status" and status["online"] is True


def test_malformed_control_messages_get_errors_and_change_nothing(
    net: dict[str, Listener],
) -> None:
    alice = net["alice"]
    bad = [
        b"not json\n",
        b"[1, 2]\n",
        b'{"type": "explode"}\n',
        b'{"type": "dial"}\n',
        b'{"type": "dial", "contact": "bob", "duration_s": -1}\n',
        b'{"type": "dial", "contact": "nobody"}\n',
        b"\xff\xfe\n",
        b"x" * (MAX_LINE + 10) + b"\n",
        b"[" * 5000 + b"]" * 5000 + b"\n",  # nested deeper than json's recursion limit
        b'{"type": "hangup"}\n',
    ]
    replies = _control(alice.directory, *bad, b'{"type": "status"}\n')
    assert [r["type"] for r in replies[:-1]] == ["error"] * len(bad)
    assert replies[5]["error"] == "no contact called 'nobody' (see: contact list)"
    assert replies[-1]["type"] == "status" and replies[-1]["call"] is None
    assert alice.proc is not None and alice.proc.poll() is None


def test_a_caller_who_is_not_a_contact_never_rings(net: dict[str, Listener]) -> None:
    bob, carol = net["bob"], net["carol"]
    carol.start()
    try:
        dial = _dial(carol.directory, "bob")
        time.sleep(5.0)  # carol's offer reached bob's mailbox long ago
        assert dial.poll() is None  # no answer: still waiting
        dial.send_signal(signal.SIGTERM)
        dial.wait(timeout=10)
        assert dial.returncode != 0
    finally:
        carol.stop()
    assert "RINGING" not in bob.log().split("ended: HANGUP")[-1]
    (status,) = _control(bob.directory, b'{"type": "status"}\n')
    assert status["call"] is None
    report = json.loads(bob.report.read_text())
    assert report["deliveries"]["unopened"] > 0  # counted, never shown with an identity
    (c_call,) = carol.calls()
    assert "connected" not in c_call["times"]  # type: ignore[operator]


def test_an_incoming_call_rings_and_is_answered_by_a_key(net: dict[str, Listener]) -> None:
    alice, bob = net["alice"], net["bob"]
    assert alice.stop() == 0
    assert not (alice.directory / CONTROL_SOCKET).exists()  # removed on exit
    master, slave = pty.openpty()
    try:
        alice.start(terminal=slave)
        dial = _dial(bob.directory, "alice", "--duration", "6")
        deadline = time.monotonic() + 30
        while "RINGING" not in alice.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        ring = alice.log().split("RINGING", 1)[1].splitlines()[0]
        assert "bob [unverified] PARANOID" in ring and "a: answer" in ring
        time.sleep(1.0)
        (status,) = _control(alice.directory, b'{"type": "status"}\n')
        assert isinstance(status["call"], dict) and "connected" not in status["call"]["events"]
        os.write(master, b"a\n")  # the key press
        _wait_for(alice, "connected with bob")
        time.sleep(2.0)  # media flows both ways: the figures have something to show
        seen = len(alice.log())
        os.write(master, b"m")  # mute: the screen says so, with the live figures
        muted = _wait_for(alice, "MUTED", seen)
        assert "| m unmute" in muted, muted
        # 2 s into the call: the one-way estimate from the receiver reports (the playout
        # delay, labelled "playout", only before the first report came back).
        figures = re.search(r"one-way (\d+) ms jitter (\d+\.\d) ms loss (\d+\.\d) %", muted)
        assert figures is not None, muted
        assert float(figures[3]) < 50.0
        out, err = dial.communicate(timeout=60)
        assert dial.returncode == 0, (out, err, alice.log())
        assert alice.stop() == 0
    finally:
        os.close(master)
        os.close(slave)
    alice.start()


def test_without_the_screen_the_ringing_line_names_the_commands(
    net: dict[str, Listener],
) -> None:
    """``--no-screen`` has no keys: the ringing line says ``phantom-call answer or decline``
    (not ``a``/``d``), and ``phantom-call decline`` refuses the call (dial exits 1)."""
    alice, bob = net["alice"], net["bob"]
    seen = len(alice.log())
    dial = _dial(bob.directory, "alice")
    ring = _wait_for(alice, "RINGING", seen, timeout_s=30)
    assert f"(phantom-call answer or decline --dir {alice.directory})" in ring, ring
    assert "a: answer" not in ring
    declined = _command(alice.directory, "decline")
    assert (declined.returncode, declined.stdout.strip()) == (0, "declined"), declined
    out, err = dial.communicate(timeout=60)
    assert dial.returncode == 1 and "ended: DECLINED" in out, (out, err)


def _wait_for(listener: Listener, text: str, after: int = 0, timeout_s: float = 20.0) -> str:
    """The first line of ``listener``'s log past character ``after`` that holds ``text``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in listener.log()[after:].splitlines():
            if text in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in {listener.name}'s log: {listener.log()[after:]}")


def test_ctrl_c_on_dial_hangs_up_without_a_traceback(net: dict[str, Listener]) -> None:
    """``dial`` without ``--duration`` ends when stopped: Ctrl-C mid-call prints the hang-up
    and exits 0, and the listener hangs up ("dialer gone")."""
    alice = net["alice"]
    seen = len(alice.log())
    dial = _dial_until_connected(alice.directory, "bob")
    dial.send_signal(signal.SIGINT)
    out, err = dial.communicate(timeout=10)
    assert (dial.returncode, out.strip(), err) == (0, "hung up bob (dial stopped)", ""), err
    _wait_for(alice, "call with bob ended: dialer gone", seen)
    deadline = time.monotonic() + 10  # the call drains, then the listener is free again
    while _control(alice.directory, b'{"type": "status"}\n')[0]["call"] is not None:
        assert time.monotonic() < deadline, alice.log()
        time.sleep(0.2)


def test_killing_dial_hangs_up_and_killing_listen_times_out(net: dict[str, Listener]) -> None:
    alice, bob = net["alice"], net["bob"]
    dial = _dial(alice.directory, "bob")
    assert dial.stdout is not None
    deadline = time.monotonic() + 30
    line = ""
    while "connected" not in line and time.monotonic() < deadline:
        line = dial.stdout.readline()
        if not line:
            break
    assert "connected" in line, dial.communicate(timeout=10)
    time.sleep(1.0)
    dial.kill()
    dial.wait(timeout=10)
    time.sleep(4.0)
    assert alice.calls()[-1]["end_reason"] == "dialer gone"
    assert bob.calls()[-1]["end_reason"] == "HANGUP"  # the peer's hang-up, shown as such

    dial = _dial(alice.directory, "bob")
    assert dial.stdout is not None
    line = ""
    while "connected" not in line and time.monotonic() < deadline + 30:
        line = dial.stdout.readline()
    assert "connected" in line
    bob.stop(signal.SIGKILL)
    out, err = dial.communicate(timeout=30)  # media timeout (10 s) plus the drain
    assert dial.returncode == 1 and "TIMEOUT" in out + err
    assert alice.calls()[-1]["end_reason"] == "TIMEOUT"
    assert not (bob.directory / CONTROL_SOCKET).exists() or True  # SIGKILL leaves it stale
    bob.start()  # a stale socket is replaced by the next listener
    assert stat.S_IMODE((bob.directory / CONTROL_SOCKET).stat().st_mode) == 0o600


def _command(directory: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """One ``phantom-call`` command against the listener of ``directory``, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *argv, "--dir", str(directory)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def test_mute_over_the_control_socket_sends_silence_at_the_same_rate(
    net: dict[str, Listener],
) -> None:
    """``phantom-call mute on|off`` mid-call: the peer decodes silence for the frames
    captured while muted and speech again after; the uplink's packets per second and their
    size do not change; the dialing connection gets muted/unmuted events; status says so;
    ``phantom-call hangup`` ends the call. Without a call each says there is none."""
    alice, bob = net["alice"], net["bob"]
    for argv, why in ((("mute", "on"), "no call to mute"), (("hangup",), "no call to hang up"),
                      (("answer",), "no call to answer")):  # fmt: skip
        done = _command(alice.directory, *argv)
        assert (done.returncode, done.stdout) == (1, ""), done
        assert why in done.stderr
    idle = _command(alice.directory, "status")
    assert idle.returncode == 0 and "no call" in idle.stdout, idle
    dial = _dial_until_connected(alice.directory, "bob")  # until hung up below
    time.sleep(2.5)
    before_on = time.monotonic()
    muted = _command(alice.directory, "mute", "on")
    t_on = time.monotonic()
    assert (muted.returncode, muted.stdout.strip()) == (0, "muted"), muted
    status = _command(alice.directory, "status", "--json")
    call = json.loads(status.stdout)["call"]
    assert call["muted"] is True and call["contact"] == "bob", status
    assert "MUTED" in _command(alice.directory, "status").stdout
    time.sleep(2.5)
    t_off = time.monotonic()
    unmuted = _command(alice.directory, "mute", "off")
    assert (unmuted.returncode, unmuted.stdout.strip()) == (0, "unmuted"), unmuted
    time.sleep(2.5)
    hung = _command(alice.directory, "hangup")
    assert (hung.returncode, hung.stdout.strip()) == (0, "hung up"), hung
    out, err = dial.communicate(timeout=60)
    assert dial.returncode == 0, (out, err, alice.log())
    assert out.index("muted bob") < out.index("unmuted bob") < out.index("ended: HANGUP"), out
    time.sleep(2.0)  # bob's side drains and writes its speaker file and report
    a_call, b_call = alice.calls()[-1], bob.calls()[-1]
    capture, played = a_call["capture"], b_call["played"]
    assert isinstance(capture, list) and isinstance(played, list)
    heard = read_wav(alice.directory.parent / "heard.wav")
    frame = 16 * int(b_call["frame_ms"])  # type: ignore[call-overload]
    assert len(heard) == frame * len(played)  # one frame of PCM per item played

    def heard_between(lo: float, hi: float) -> np.ndarray:
        """What bob played of alice's frames captured in [lo, hi] (CLOCK_MONOTONIC s)."""
        parts = [heard[k * frame : (k + 1) * frame] for k, (i, kind, _) in enumerate(played)
                 if kind == "frame" and i < len(capture) and lo <= capture[i] <= hi]  # fmt: skip
        assert len(parts) > 20, (lo, hi, len(parts))
        return np.concatenate(parts)

    connected, ended = a_call["times"]["connected"], a_call["times"]["ended"]  # type: ignore[index]
    speech = _rms(heard_between(connected + 0.3, before_on - 0.3))
    silence = _rms(heard_between(t_on + 0.3, t_off - 0.3))
    again = _rms(heard_between(t_off + 0.5, ended - 0.5))
    assert speech > 300 and again > 0.5 * speech, (speech, again)
    assert silence < 0.03 * speech, (silence, speech)
    # Alice's uplink: the same packets per second and one datagram size, muted or not.
    report = json.loads(alice.report.read_text())
    traffic = report["traffic"]
    t0, up, size = traffic["t0"], traffic["up_packets"], traffic["up_bytes"]
    seconds = [s for s in range(len(up)) if connected <= t0 + s and t0 + s + 1 <= ended]
    during = [up[s] for s in seconds if t_on <= t0 + s and t0 + s + 1 <= t_off]
    others = [up[s] for s in seconds if t0 + s + 1 <= before_on or t_off <= t0 + s]
    assert len(during) >= 2 and len(others) >= 4, (seconds, t0, connected, ended)
    assert float(np.median(during)) == float(np.median(others)) == 25.0, (during, others)
    counts = [up[s] for s in seconds]
    # A second short of packets is a slot the process was too late for (CPU load), counted.
    assert max(counts) - min(counts) <= 2 or report["uplink_slots"].get("missed"), counts
    assert len({size[s] / up[s] for s in seconds}) == 1, [size[s] for s in seconds]
