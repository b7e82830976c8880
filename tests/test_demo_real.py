"""The demo made real: two caller processes on two addresses through a testnet (slow).

What must hold (issue: the always-on client):
- no datagram from one caller's address reaches the other's; no captured datagram carries
  clear audio (PCM or the Opus frames of the sent voice); nothing sent to the callee's
  address carries the caller's address;
- each caller's uplink (packets and bytes per second) is the same before, during and after
  the call, within the slot jitter;
- killing ``dial`` or ``listen`` mid-call ends the call on the other side with a reason,
  within the call timeout; no process is left behind.

The capture is an AF_PACKET raw socket on ``lo`` (root) for the whole call. The tests that
need ``phantom-call listen`` and ``dial`` are skipped where the caller's command line has
neither yet.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from test_call_clock import _memory_call
from testnet_support import process_alive, small_testnet

from client import CallPolicy, VoiceProfile, artificial_voice, read_wav
from client._voice import OpusEncoder
from overlay import VOICE
from testbed.callcli import caller_can_listen
from testbed.callers import (
    ADDRESSES,
    HANGUP_TIMEOUT_S,
    SETUP_TIMEOUT_S,
    CallerError,
    TwoCallers,
    caller_command,
    load_record,
    report_from_records,
    write_network_file,
)
from testbed.demo import CallOptions, CallResult, LinkSample, call_report, link_rates
from testbed.report import emodel
from testbed.testnet import TestnetOptions, down, up

pytestmark = pytest.mark.slow
MEDIA_TIMEOUT_S = CallPolicy().media_timeout_s  # a peer silent this long ends the call
needs_listen = pytest.mark.skipif(
    not caller_can_listen(), reason="the caller's command line has no listen/dial yet"
)
A_IP, B_IP = ADDRESSES["A"], ADDRESSES["B"]
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
PACKET_OUTGOING = 4  # on lo each datagram is seen going out and coming in: keep one
MARGIN_S = 4.0  # online before and after the call (the demo's default is 10 s)


@dataclass(frozen=True, slots=True)
class Datagram:
    at: float  # CLOCK_MONOTONIC seconds
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass(slots=True)
class Capture:
    """Every UDP datagram on the loopback interface while it runs."""

    datagrams: list[Datagram] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, sock: socket.socket) -> None:
        """Read ``sock`` until ``stop``; each datagram stamped by the kernel (SO_TIMESTAMPNS,
        CLOCK_REALTIME) and put on CLOCK_MONOTONIC, so a busy test process shifts no stamp."""
        sock.settimeout(0.2)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        while not self.stop.is_set():
            try:
                frame, ancillary, _, addr = sock.recvmsg(65535, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            at = time.monotonic()
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[:16])
                    at = sec + nsec / 1e9 - (time.time() - time.monotonic())
            if addr[2] == PACKET_OUTGOING or len(frame) < 14 + 20 + 8:
                continue
            ip = frame[14:]
            if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
                continue
            ihl = (ip[0] & 0x0F) * 4
            sport, dport, length = struct.unpack("!HHH", ip[ihl : ihl + 6])
            self.datagrams.append(Datagram(
                at, socket.inet_ntoa(ip[12:16]), sport,
                socket.inet_ntoa(ip[16:20]), dport, bytes(ip[ihl + 8 : ihl + length]),
            ))  # fmt: skip


@contextmanager
def capture_loopback() -> Iterator[Capture]:
    """Capture UDP on ``lo`` in a thread for the duration of the block."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind(("lo", 0))
    cap = Capture()
    thread = threading.Thread(target=cap.run, args=(sock,), daemon=True)
    thread.start()
    try:
        yield cap
    finally:
        cap.stop.set()
        thread.join(timeout=5)
        sock.close()




def _audio_marks(mic: Path, frames: int = 150) -> list[bytes]:
    """Recognisable chunks of the sent audio: 32-byte runs of its PCM where it is not
    silent, and the first 24 bytes of each of its first Opus frames (as the caller encodes
    them with the default profile)."""
    pcm = read_wav(mic)
    raw = pcm.astype("<i2").tobytes()
    marks = [raw[i : i + 32] for i in range(0, min(len(raw), 320_000), 3200)
             if np.abs(pcm[i // 2 : i // 2 + 16]).max() > 500]  # fmt: skip
    profile = VoiceProfile()
    encoder = OpusEncoder(profile)
    n = profile.samples_per_frame
    for k in range(frames):
        frame = encoder.encode(pcm[k * n : (k + 1) * n])
        if len(frame) >= 24:
            marks.append(frame[:24])
    return marks


def _per_second(datagrams: list[Datagram], start: float, end: float) -> list[tuple[int, int]]:
    """(packets, bytes) of ``datagrams`` in each whole second from ``start`` to ``end``."""
    out = []
    t = start
    while t + 1 <= end:
        window = [d for d in datagrams if t <= d.at < t + 1]
        out.append((len(window), sum(len(d.payload) for d in window)))
        t += 1
    return out


# -- what runs today: the set-up through processes, the report from records ------------


def test_two_profiles_exchange_cards_through_processes(tmp_path: Path) -> None:
    with small_testnet(tmp_path / "net") as state:
        network = write_network_file(state, tmp_path / "network.json")
        with TwoCallers(tmp_path / "callers", network, voice_s=2.0, seed=1) as pair:
            pair.set_up()
            for me, other in (("A", "B"), ("B", "A")):
                listed = subprocess.run(
                    caller_command("contact", "list", "--dir", str(pair.callers[me].profile)),
                    capture_output=True, check=True, timeout=60,
                ).stdout.decode()  # fmt: skip
                assert other in listed, listed
                assert oct(pair.callers[me].profile.stat().st_mode & 0o777) == "0o700"
        assert pair.pids() == []  # set-up starts no long-running process


def test_a_missing_network_file_is_a_caller_error(tmp_path: Path) -> None:
    with TwoCallers(tmp_path, tmp_path / "nope.json", voice_s=2.0) as pair:
        with pytest.raises(CallerError, match="A: `init --network` exited 2"):
            pair.set_up()
    with pytest.raises(CallerError, match="not JSON"):
        (tmp_path / "r.json").write_text("{")
        load_record(tmp_path / "r.json")
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(CallerError, match="missing"):
        load_record(tmp_path / "r.json")


def _record(ip: str, t0: float, *, dial: bool) -> dict[str, object]:
    """A listener's record of a 2 s call: 100 frames of 20 ms sent from t0 + 1, each heard
    100 ms later except frame 7 (concealed); 25 packets per second of 500 bytes."""
    captured = {str(i): t0 + 1 + i * 0.02 for i in range(100)}
    played = {str(i): t0 + 1.1 + i * 0.02 for i in range(100) if i != 7}
    sent = {str(i): t0 + 1 + i * 0.04 for i in range(50)}
    arrived = {str(i): t0 + 1.05 + i * 0.04 for i in range(50) if i != 7}
    rate = {"bytes_per_s": [12500] * 5, "packets_per_s": [25] * 5}
    return {
        "pid": 1, "ip": ip, "key_agreement": "X25519", "end_reason": "HANGUP",
        "phases": {"online": t0 - 10, "dial": t0 if dial else None,
                   "ringing": t0 + 0.4 if dial else None, "connected": t0 + 1,
                   "ended": t0 + 3, "offline": t0 + 13},
        "codec_delay_ms": 0.0, "frame_ms": 20, "slot_ms": 40, "stretched": 0,
        "mean_delay_ms_per_hop": 10.0, "hops": 5, "channel": "identity X25519, hash ratchet",
        "profile": {"sample_rate_hz": 16000, "frames_per_packet": 2, "bitrate_bps": 24000,
                    "redundancy": 1},
        "jitter": {"late": 1, "recovered": 2, "skipped": 0}, "displaced": 3,
        "route": {"one_way_estimate_ms": {"n": 40, "p50": 140.0, "p90": 180.0, "p99": 230.0},
                  "route_failovers": 0},
        "uplink_slots": {"cover": 400, "media": 50, "signal": 3}, "packet_sizes": [604],
        "received": {"media": 49, "cover": 300},
        "frames": {"captured": captured, "played": played, "concealed": [7]},
        "packets": {"sent": sent, "arrived": arrived},
        "uplink": rate, "downlink": rate, "mic": "", "speaker": "",
    }  # fmt: skip


def test_report_from_two_records() -> None:
    records = {"A": _record(A_IP, 100.0, dial=True), "B": _record(B_IP, 100.0, dial=False)}
    estimate = report_from_records(records, pesq=False)["directions"]["A->B"]
    assert estimate["one_way_estimate_ms"]["p50"] == 140.0 and estimate["route_failovers"] == 0
    report = report_from_records(records, pesq=False)
    assert report["setup_s"] == {"to_ringing": 0.4, "to_connected": 1.0}
    assert report["duration_s"] == 2.0 and report["key_agreement"] == "X25519"
    assert report["clients"]["A"]["ip"] == A_IP and report["clients"]["B"]["ip"] == B_IP
    assert report["clients"]["A"]["uplink_bytes_per_s"] == 12500.0
    for d in report["directions"].values():
        assert d["mouth_to_ear_ms"]["p99"] == pytest.approx(100.0)
        assert d["one_way_ms"]["p50"] == pytest.approx(50.0)
        assert d["late_loss"] == 0.01 and d["loss"] == 0.02
    assert report["p99_vs_300_600_ms"] == "below"
    assert report["mean_delay_ms_per_hop"] == 10.0 and report["hops"] == 5
    assert report["channel"] == "identity X25519, hash ratchet" and report["wall_s"] is None
    assert report["profile"]["frames_per_packet"] == 2
    assert report["uplink"]["packet_sizes"] == [604]
    assert report["uplink"]["A"] == {"skipped": 0, "unroutable": 0, "cover": 400, "media": 50,
                                     "signal": 3}  # fmt: skip
    assert report["clients"]["A"]["online_s"] == 23.0
    for d in report["directions"].values():
        assert (d["late_frames"], d["recovered_by_redundancy"], d["skipped"]) == (1, 2, 0)
        assert d["packets_displaced_by_signaling"] == 3 and d["stretched"] == 0


# -- both modes' reports have the same keys -------------------------------------------------


def key_paths(report: dict[str, Any]) -> set[str]:
    """Every key of ``report`` as the JSON has it (``directions.A->B.one_way_ms.p99``), down
    to the slot and delivery kinds, which depend on the run (``uplink.A``, ``received.A``);
    without the keys removed before JSON (``one_way_s``, ``received_pcm``)."""
    paths: set[str] = set()

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if k in ("one_way_s", "received_pcm"):
                continue
            path = f"{prefix}{k}"
            paths.add(path)
            if isinstance(v, dict) and not re.fullmatch(r"(uplink|received)\.[AB]", path):
                walk(v, path + ".")

    walk(report, "")
    return paths


def in_process_report() -> dict[str, Any]:
    """The one-process report (``testbed.demo.call_report``) of a 2 s call between two real
    callers over the in-memory network, on virtual time."""
    a, b = trio.run(_memory_call, None, clock=trio.testing.MockClock(autojump_threshold=0))
    rates = link_rates(LinkSample(0.0, 0, 0), LinkSample(4.0, 64_000, 64_000))
    voice = artificial_voice(4.0, seed=1)
    result = CallResult(CallOptions(duration_s=2.0), a, b, voice, voice, 0.5, 4.0,
                        {"A": rates, "B": rates})  # fmt: skip
    return call_report(result, pesq=False, emodel=emodel)


def test_both_modes_reports_have_the_same_keys() -> None:
    one = in_process_report()
    assert one["uplink"]["A"]["skipped"] == 0 and one["hops"] == 5
    records = {"A": _record(A_IP, 100.0, dial=True), "B": _record(B_IP, 100.0, dial=False)}
    two = report_from_records(records, pesq=False, wall_s=60.0, emodel=emodel)
    missing = key_paths(one) - key_paths(two)
    assert not missing, sorted(missing)
    assert {"clients.A.pid", "clients.B.ip", "processes"} <= key_paths(two) - key_paths(one)
    assert two["wall_s"] == 60.0


# -- what needs listen and dial -----------------------------------------------------------


@contextmanager
def _testnet(tmp_path: Path) -> Iterator[tuple[Path, set[int]]]:
    """A default testnet: its network file and its gateways' client ports (other tests on
    this machine may use the same loopback addresses: only these ports are ours)."""
    state = up(TestnetOptions(directory=tmp_path / "net", base_port=0))
    try:
        ports = {p.client_port for p in state.nodes("gateway") if p.client_port is not None}
        yield write_network_file(state, tmp_path / "network.json"), ports
    finally:
        down(tmp_path / "net")


@needs_listen
def test_two_processes_call_leaks_neither_address_nor_audio(tmp_path: Path) -> None:
    with _testnet(tmp_path) as (network, gateway_ports), capture_loopback() as cap:
        with TwoCallers(tmp_path / "callers", network, margin_s=MARGIN_S, voice_s=40) as pair:
            pair.set_up()
            pair.go_online()
            pair.call(duration_s=6.0)
            records = pair.records()
            pids = pair.pids()
    assert pids and not any(process_alive(p) for p in pids)
    grams = cap.datagrams
    assert grams, "the capture saw nothing"
    # (1) never from one caller's address to the other's
    between = {(A_IP, B_IP), (B_IP, A_IP)}
    assert not [d for d in grams if (d.src, d.dst) in between]
    # no clear audio on any link
    marks = _audio_marks(pair.callers["A"].mic) + _audio_marks(pair.callers["B"].mic)
    assert len(marks) > 50
    leaked = [d for d in grams if any(m in d.payload for m in marks)]
    assert not leaked, leaked[:3]
    # nothing the callee receives carries the caller's address
    a_forms = (A_IP.encode(), ipaddress.IPv4Address(A_IP).packed)
    to_b = [d for d in grams if d.dst == B_IP and d.sport in gateway_ports]
    assert to_b and not [d for d in to_b if any(f in d.payload for f in a_forms)]
    # (2) each caller's uplink is the same before, during and after the call
    for name, ip in ADDRESSES.items():
        up_ = [d for d in grams if d.src == ip and d.dport in gateway_ports]
        online, offline = records[name]["phases"]["online"], records[name]["phases"]["offline"]
        seconds = _per_second(up_, online + 1, offline - 1)
        assert len(seconds) >= 2 * MARGIN_S
        counts = [n for n, _ in seconds]
        sizes = {len(d.payload) for d in up_ if online + 1 <= d.at < offline - 1}
        assert len(sizes) == 1, (name, sizes)  # one packet size, cover or call
        slots = records[name].get("uplink_slots")
        assert max(counts) - min(counts) <= 2, (name, counts, slots)  # within the slot jitter
    report = report_from_records(records, pesq=False, emodel=emodel)  # as the demo makes it
    assert report["setup_s"]["to_ringing"] is not None
    assert report["end_reason"] == {"A": "HANGUP", "B": "HANGUP"}
    # the listeners' own settings and counts, with the one-process report's keys
    assert report["mean_delay_ms_per_hop"] == 22.5 and report["hops"] == 5
    assert report["channel"] == "identity X25519, hash ratchet"
    assert report["uplink"]["packet_sizes"] == [VOICE.packet_len]
    assert report["uplink"]["A"]["skipped"] == report["uplink"]["B"]["unroutable"] == 0
    for d in report["directions"].values():
        assert d["late_frames"] >= 0 and d["recovered_by_redundancy"] >= 0
        assert d["skipped"] >= 0 and d["packets_displaced_by_signaling"] >= 0
    missing = key_paths(in_process_report()) - key_paths(report)
    assert not missing, sorted(missing)
    for d in report["directions"].values():  # the screen's estimate against the truth
        estimate, true_ms = d["one_way_estimate_ms"]["p50"], d["one_way_ms"]["p50"]
        assert 0.5 * true_ms <= estimate <= 2 * true_ms, (estimate, true_ms)
        assert d["route_failovers"] == 0  # nothing failed on the testnet


def _wait_for(path: Path, word: str, timeout_s: float) -> float | None:
    """Seconds until ``word`` (lower case) appears in the file at ``path``, or None."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if path.exists() and word in path.read_text(errors="replace").lower():
            return time.monotonic() - began
        time.sleep(0.2)
    return None


@needs_listen
@pytest.mark.parametrize("victim", ["dial", "listen"])
def test_killing_one_side_ends_the_call_on_the_other(tmp_path: Path, victim: str) -> None:
    with _testnet(tmp_path) as (network, _):
        with TwoCallers(tmp_path / "callers", network, margin_s=1.0, voice_s=60) as pair:
            pair.set_up()
            pair.go_online()
            a, b = pair.callers["A"], pair.callers["B"]
            dial = subprocess.Popen(
                caller_command("dial", "B", "--dir", str(a.profile), "--duration", "60"),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            pair.dial_process = dial
            assert _wait_for(b.log, "connected", SETUP_TIMEOUT_S) is not None, _tail(b.log)
            time.sleep(2.0)  # talking
            assert dial.poll() is None
            if victim == "dial":  # A's listener hangs up: B hears HANGUP
                dial.kill()
                dial.wait()
                survivor = b
            else:  # B vanishes: A's listener ends the call when B's media stays away
                assert b.listen is not None
                b.listen.kill()
                b.listen.wait()
                survivor = a
            took = _wait_for(survivor.log, "ended", MEDIA_TIMEOUT_S + HANGUP_TIMEOUT_S)
            assert took is not None, _tail(survivor.log)
            said = survivor.log.read_text(errors="replace")
            ended = [ln for ln in said.splitlines() if "ended" in ln.lower()][-1]
            assert ended.split("ended")[-1].strip(" :"), ended  # a reason is shown
            if victim == "listen":
                out, _ = dial.communicate(timeout=HANGUP_TIMEOUT_S)
                assert dial.returncode != 0 and b"ended" in out, out.decode()
            pair.stop(survivor)
            record = load_record(survivor.report)
            assert record["end_reason"], record
            pids = pair.pids()
    assert not any(process_alive(p) for p in pids)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"
