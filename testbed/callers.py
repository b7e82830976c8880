"""Two callers in two processes on two addresses: the real ``phantom-call demo``.

    net = up(TestnetOptions(directory=d, base_port=0))
    network = write_network_file(net, d / "network.json")
    with TwoCallers(d / "callers", network, margin_s=10.0) as pair:
        pair.set_up()                      # init, card, contact add: each its own profile
        pair.go_online()                   # listen, A on 127.0.0.2, B on 127.0.0.3 (auto-answer)
        pair.call(duration_s=20.0)         # dial from A; both stay online margin_s after
    report = report_from_records(pair.records())

Each caller is ``python -m client.cli`` in its own process with its own temporary profile
(``--dir``) and its own loopback address (``listen --bind``). They come online at
independent random moments, each at least ``margin_s`` before the call, and go offline at
independent random moments at least ``margin_s`` after it, so a watcher of the access links
cannot pair them by their times. Every process started here is stopped when the ``with``
block ends, however it ends.

The report a listener writes (``listen --report FILE``, ``client.phone.Phone.report``) is
read by :func:`load_record`, which takes its last call and its traffic meter and gives the
record the report is assembled from::

    {"pid": 123, "ip": "127.0.0.2", "key_agreement": "X25519+ML-KEM-768",
     "end_reason": "HANGUP" | ... | null,
     "phases": {"online": s, "dial": s|null, "ringing": s|null, "connected": s|null,
                "ended": s|null, "offline": s|null},          # CLOCK_MONOTONIC seconds
     "mean_delay_ms_per_hop": 22.5, "hops": 5, "channel": "identity X25519, hash ratchet",
     "profile": {"sample_rate_hz": 16000, "frames_per_packet": 2, "bitrate_bps": 24000,
                 "redundancy": 1},                            # client.phone.call_settings
     "jitter": {"late": 0, "recovered": 1, "skipped": 0},     # the peer's frames
     "displaced": 1,                                          # media slots signaling took
     "uplink_slots": {"cover": 900, "media": 500, ...}, "packet_sizes": [604],
     "codec_delay_ms": 26.5, "frame_ms": 20,
     "frames": {"captured": {"0": s, ...},                    # frame index -> mic time
                "played": {"0": s, ...},                      # peer's frame index -> ear time
                "concealed": [5, ...]},                       # peer's frames never played
     "packets": {"sent": {"0": s, ...}, "arrived": {"0": s, ...}},   # media seq -> time
     "uplink": {"bytes_per_s": [...], "packets_per_s": [...]},       # UDP payload, each
     "downlink": {"bytes_per_s": [...], "packets_per_s": [...]}}     # whole second online

Times are CLOCK_MONOTONIC seconds of one machine, so the two records subtract directly.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from client import VoiceProfile, artificial_voice, pesq_wb, read_wav, write_wav
from client.call import codec_delay_s
from client.enrol import NetworkFileError, load_network
from client.phone import CALL_SETTINGS
from overlay import PhantomError

from ._state import TestnetState
from .demo import Emodel, assemble_report, direction_figures

ADDRESSES = {"A": "127.0.0.2", "B": "127.0.0.3"}  # each caller's own loopback address
COMMAND_TIMEOUT_S = 60.0  # init, card, contact add: each at most
ONLINE_TIMEOUT_S = 30.0  # listen: its control socket appears within
SETUP_TIMEOUT_S = 15.0  # dial: ringing and connected within (as the in-process demo)
HANGUP_TIMEOUT_S = 10.0  # the end of a call reaches the other side within
STOP_TIMEOUT_S = 10.0  # a listener asked to stop (SIGTERM) exits within, else SIGKILL
CONTROL_SOCKET = "control.sock"  # in the profile directory
Say = Callable[[str, str], None]  # (phase, what it waits for)


class CallerError(PhantomError):
    """A caller process failed or a record is unusable; the message says which and why."""


def caller_command(*args: str) -> list[str]:
    """argv of one ``phantom-call`` caller command in this interpreter (never the installed
    script, which may belong to another tree)."""
    return [sys.executable, "-m", "client.cli", *args]


def write_network_file(state: TestnetState, path: Path, timeout_s: float = 30.0) -> Path:
    """Fetch the testnet's signed network file from its first authority (it is complete once
    the peers' signatures arrived, a round or two after start) and write it to ``path``.
    CallerError if no authority served a verifiable one within ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            raw, _ = load_network(state.authorities[0])
            break
        except NetworkFileError as exc:
            if time.monotonic() > deadline:
                raise CallerError(f"no verifiable network file: {exc}") from None
            time.sleep(0.5)
    path.write_bytes(raw)
    return path


@dataclass(slots=True)
class Caller:
    """One caller process's files and, once online, its ``listen`` process."""

    name: str  # "A" or "B"
    ip: str
    profile: Path
    report: Path
    mic: Path
    speaker: Path
    listen: subprocess.Popen[bytes] | None = None
    online_at: float | None = None  # CLOCK_MONOTONIC: its control socket appeared
    stopping: bool = False  # asked to stop: its exit is no failure
    log: Path = field(default_factory=Path)


class TwoCallers:
    """Two caller processes, A (who dials) and B (who auto-answers), under ``directory``.

    ``network`` is the network file ``init`` reads; ``margin_s`` the least time online
    before and after the call (10 s: a shorter one only in tests); ``voice_s`` the seconds
    of artificial voice each microphone file holds (played from the start of each call);
    ``say`` hears each phase and what it waits for; ``seed`` fixes the random online and
    offline moments (default: drawn from the system's generator); ``mean_delay_ms``, the
    mean sender-chosen delay per hop both listeners use (``listen --mean-delay-ms``; None:
    the listener's default). CallerError if ``margin_s`` is outside 0..600 or
    ``mean_delay_ms`` outside 0..1000.
    """

    def __init__(
        self,
        directory: Path,
        network: Path,
        *,
        margin_s: float = 10.0,
        voice_s: float = 60.0,
        say: Say | None = None,
        seed: int | None = None,
        mean_delay_ms: float | None = None,
    ) -> None:
        if not 0 <= margin_s <= 600:
            raise CallerError("margin_s must be in 0..600 seconds")
        if mean_delay_ms is not None and not 0 <= mean_delay_ms <= 1000:
            raise CallerError("mean_delay_ms must be in 0..1000 milliseconds")
        self.mean_delay_ms = mean_delay_ms
        self.directory, self.network, self.margin_s = directory, network, margin_s
        self.voice_s = voice_s
        self.say: Say = say or (lambda phase, what: None)
        self.rng = random.Random(seed) if seed is not None else random.SystemRandom()
        self.callers = {
            name: Caller(name, ip, directory / name / "profile", directory / name / "report.json",
                         directory / name / "mic.wav", directory / name / "speaker.wav",
                         log=directory / name / "listen.log")
            for name, ip in ADDRESSES.items()
        }  # fmt: skip
        self.dial_process: subprocess.Popen[bytes] | None = None
        self.dial_output = ""

    def __enter__(self) -> TwoCallers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    # -- commands ---------------------------------------------------------------------

    def _run(self, caller: Caller, *args: str) -> str:
        """Run one caller command to its end; its stdout, or CallerError with its stderr."""
        argv = caller_command(*args, "--dir", str(caller.profile))
        try:
            done = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT_S,
                                  env=_env(), check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            what = f"{caller.name}: `{args[0]}` took over {COMMAND_TIMEOUT_S:g} s"
            raise CallerError(what) from None
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace")[-800:]
            command = " ".join(args[:2])
            raise CallerError(f"{caller.name}: `{command}` exited {done.returncode}: {said}")
        return done.stdout.decode()

    def set_up(self) -> None:
        """Each caller: a profile of its own (``init``), then the other's card added as a
        contact (``card``, ``contact add``). CallerError naming the command if one fails."""
        for c in self.callers.values():
            c.profile.parent.mkdir(parents=True, exist_ok=True)
            self.say("profiles", f"{c.name}: phantom-call init (its own identity and gateway)")
            self._run(c, "init", "--network", str(self.network), "--name", c.name,
                      "--no-passphrase")  # fmt: skip
            seed = 1 if c.name == "A" else 2
            write_wav(c.mic, artificial_voice(self.voice_s, seed=seed, female=c.name == "B"))
        cards = {}
        for c in self.callers.values():
            printed = self._run(c, "card").splitlines()
            lines = [ln for ln in printed if ln.startswith("phantom-card:")]
            if not lines:
                raise CallerError(f"{c.name}: `card` printed no phantom-card: line")
            cards[c.name] = lines[0].strip()
        a, b = self.callers["A"], self.callers["B"]
        self.say("profiles", "exchanging cards: each adds the other as a contact")
        self._run(a, "contact", "add", "B", cards["B"])
        self._run(b, "contact", "add", "A", cards["A"])

    def _start_listen(self, c: Caller) -> None:
        argv = caller_command("listen", "--dir", str(c.profile), "--bind", c.ip, "--no-screen",
                              "--mic", str(c.mic), "--speaker", str(c.speaker),
                              "--report", str(c.report))  # fmt: skip
        if c.name == "B":
            argv.append("--auto-answer")
        if self.mean_delay_ms is not None:
            argv += ["--mean-delay-ms", repr(float(self.mean_delay_ms))]
        with open(c.log, "wb") as log:
            c.listen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                        stdin=subprocess.DEVNULL)  # fmt: skip

    def go_online(self) -> float:
        """Start both listeners, each at an independent random moment in the first half of
        the margin; return when both have their control socket (the moment, monotonic)."""
        spread = self.margin_s / 2
        starts = sorted((self.rng.uniform(0, spread), name) for name in self.callers)
        t0 = time.monotonic()
        for offset, name in starts:
            c = self.callers[name]
            wait = max(0.0, t0 + offset - time.monotonic())
            self.say("online", f"{name} goes online in {wait:.1f} s, a random moment "
                     f"(phantom-call listen --bind {c.ip})")  # fmt: skip
            _sleep_until(t0 + offset, self._check_alive)
            self._start_listen(c)
        deadline = time.monotonic() + ONLINE_TIMEOUT_S
        for c in self.callers.values():
            self.say("online", f"waiting for {c.name} to attach (its control socket)")
            while not (c.profile / CONTROL_SOCKET).exists():
                self._check_alive()
                if time.monotonic() > deadline:
                    raise CallerError(f"{c.name}: not online after {ONLINE_TIMEOUT_S:g} s; "
                                      f"see {c.log}")  # fmt: skip
                time.sleep(0.1)
            if c.online_at is None:
                c.online_at = time.monotonic()
        return time.monotonic()

    def _check_alive(self) -> None:
        for c in self.callers.values():
            if c.listen is not None and not c.stopping and c.listen.poll() is not None:
                raise CallerError(f"{c.name}: listen exited {c.listen.returncode} early: "
                                  f"{_tail(c.log)}")  # fmt: skip

    def call(self, duration_s: float) -> None:
        """Wait until both have been online ``margin_s``, dial B from A for ``duration_s``
        seconds, wait for the call to end, then keep each online at least ``margin_s`` more
        and stop each at its own random moment. CallerError if dial fails or hangs."""
        online = [c.online_at for c in self.callers.values() if c.online_at is not None]
        if len(online) != 2:
            raise CallerError("call() before go_online()")
        place_at = max(online) + self.margin_s
        self.say("online", f"cover traffic only until the call, {place_at - time.monotonic():.0f}"
                 " s more")  # fmt: skip
        _sleep_until(place_at, self._check_alive)
        a = self.callers["A"]
        self.say("ringing", "A: phantom-call dial B; B answers by itself (--auto-answer)")
        self.dial_process = subprocess.Popen(
            caller_command("dial", "B", "--dir", str(a.profile), "--duration", f"{duration_s:g}"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.dial_output = self._follow_dial(self.dial_process, duration_s)
        if self.dial_process.returncode != 0:
            raise CallerError(f"dial exited {self.dial_process.returncode}: "
                              f"{self.dial_output[-800:]}")  # fmt: skip
        ended = time.monotonic()
        extra = self.margin_s / 2
        stops = sorted((ended + self.margin_s + self.rng.uniform(0, extra), name)
                       for name in self.callers)  # fmt: skip
        for at, name in stops:
            self.say("after call", f"{name} stays online until +{at - ended:.1f} s after the call")
            _sleep_until(at, self._check_alive)
            self.stop(self.callers[name])

    def _follow_dial(self, proc: subprocess.Popen[bytes], duration_s: float) -> str:
        """Show each line ``dial`` prints (ringing, connected, ended) as its phase, and the
        seconds of call every 5 s, until it exits; its whole output. CallerError if it
        outlives the setup, the call and the hang-up timeouts, or a listener dies."""
        lines: queue.SimpleQueue[str] = queue.SimpleQueue()

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put(raw.decode(errors="replace").rstrip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        limit = SETUP_TIMEOUT_S + duration_s + HANGUP_TIMEOUT_S
        deadline = time.monotonic() + limit
        said: list[str] = []
        next_tick: float | None = None  # when to say how long the call has run
        connected_at = 0.0
        while proc.poll() is None or reader.is_alive() or not lines.empty():
            if time.monotonic() > deadline:
                raise CallerError(f"dial did not end within {limit:g} s")
            self._check_alive()
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if next_tick is not None and time.monotonic() >= next_tick:
                    elapsed = time.monotonic() - connected_at
                    self.say("in call", f"{elapsed:.0f} of {duration_s:g} s")
                    next_tick += 5.0
                continue
            said.append(line)
            if line.startswith("ringing"):
                self.say("ringing", f"B's phone rings (dial: {line})")
            elif line.startswith("connected"):
                connected_at = time.monotonic()
                next_tick = connected_at + 5.0
                self.say("in call", f"connected; calling for {duration_s:g} s")
            elif line.startswith("ended"):
                next_tick = None
                self.say("after call", f"the call {line}")
        proc.wait()
        return "\n".join(said)

    def stop(self, c: Caller) -> int | None:
        """Ask ``c``'s listener to stop (SIGTERM), SIGKILL it after ``STOP_TIMEOUT_S``; its
        exit status (None if it never ran)."""
        p = c.listen
        if p is None:
            return None
        c.stopping = True
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def stop_all(self) -> None:
        """Stop every process started here (dial, then both listeners)."""
        if self.dial_process is not None and self.dial_process.poll() is None:
            self.dial_process.kill()
            self.dial_process.wait()
        for c in self.callers.values():
            self.stop(c)

    def pids(self) -> list[int]:
        """Process ids of every caller process started so far."""
        procs = [self.dial_process, *(c.listen for c in self.callers.values())]
        return [p.pid for p in procs if p is not None]

    def records(self) -> dict[str, dict[str, Any]]:
        """Both listeners' call reports (read after they stopped), by caller name, with the
        WAV paths added (``mic``, ``speaker``). CallerError naming a missing or bad file."""
        out = {}
        for c in self.callers.values():
            out[c.name] = {**load_record(c.report), "mic": str(c.mic), "speaker": str(c.speaker)}
        return out


def _env() -> dict[str, str]:
    """The callers' environment: this one, with this tree importable."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


def _tail(path: Path, n: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _sleep_until(moment: float, check: Callable[[], None]) -> None:
    """Sleep until CLOCK_MONOTONIC ``moment``, calling ``check`` (which may raise) every
    0.2 s."""
    while (left := moment - time.monotonic()) > 0:
        check()
        time.sleep(min(0.2, left))


# -- the report from two records ----------------------------------------------------------


def load_record(path: Path) -> dict[str, Any]:
    """The record (shape in this module's docstring) of the last call in a listener's
    report file; CallerError naming the file and what is missing if it holds no call."""
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise CallerError(f"{path}: no call report: {exc.strerror or exc}") from None
    except ValueError:
        raise CallerError(f"{path}: not JSON") from None
    need = ("pid", "ip", "online_since", "calls", "traffic")
    if not isinstance(raw, dict) or (missing := [k for k in need if k not in raw]):
        raise CallerError(f"{path}: not a listener's report (missing {missing or 'all'})")
    if not raw["calls"]:
        raise CallerError(f"{path}: the listener had no call")
    try:
        return listener_record(raw)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CallerError(f"{path}: a malformed call report ({type(exc).__name__}: {exc})"
                          ) from None  # fmt: skip


def listener_record(raw: dict[str, Any]) -> dict[str, Any]:
    """The record of the last call of ``raw``, a listener's report (``Phone.report``).
    KeyError, TypeError or ValueError if a field is missing or of the wrong kind."""
    call = raw["calls"][-1]
    times = call["times"]
    played: dict[str, float] = {}
    concealed: list[int] = []
    for i, kind, at in call["played"]:
        if kind == "frame":
            played[str(int(i))] = float(at)
        elif kind == "missing":
            concealed.append(int(i))
    traffic = raw["traffic"]
    t0, ups = traffic["t0"], traffic["up_bytes"]
    profile = VoiceProfile()
    return {
        "pid": int(raw["pid"]),
        "ip": str(raw["ip"]),
        "key_agreement": call.get("key_agreement") or raw.get("key_agreement"),
        "end_reason": call.get("end_reason"),
        "uplink_slots": raw.get("uplink_slots"),  # slots by kind, "missed" if it fell behind
        "received": raw.get("deliveries"),  # deliveries by what they turned out to be
        "slot_ms": raw.get("slot_ms"),
        "packet_sizes": raw.get("packet_sizes"),  # bytes, of every packet sent online
        **{key: call.get(key) for key in CALL_SETTINGS},
        "jitter": call.get("jitter"),  # what its jitter buffer did to the peer's frames
        "displaced": call.get("displaced"),  # its media packets whose slot signaling took
        "route": {k: call.get(k) for k in ("one_way_estimate_ms", "route_failovers")},
        "stretched": sum(1 for _, kind, _ in call["played"] if kind == "stretch"),
        "phases": {
            "online": raw["online_since"],
            **{k: times.get(k) for k in ("dial", "ringing", "connected", "ended")},
            "offline": t0 + len(ups) if t0 is not None else None,
        },
        "codec_delay_ms": codec_delay_s(profile) * 1000,
        "frame_ms": float(call["frame_ms"]),
        "frames": {
            "captured": {str(i): float(t) for i, t in enumerate(call.get("capture") or [])},
            "played": played,
            "concealed": concealed,
        },
        "packets": {"sent": call["sent"], "arrived": call["arrived"]},
        "uplink": {"bytes_per_s": ups, "packets_per_s": traffic["up_packets"]},
        "downlink": {
            "bytes_per_s": traffic["down_bytes"],
            "packets_per_s": traffic["down_packets"],
        },  # fmt: skip
    }


def _times(d: dict[str, Any]) -> dict[int, float]:
    return {int(k): float(v) for k, v in d.items()}


def _mean_rate(per_s: Sequence[float]) -> float | None:
    """Mean of the whole seconds: the first and last of a series are partial."""
    whole = per_s[1:-1] if len(per_s) > 2 else per_s
    return round(float(np.mean(whole)), 1) if len(whole) else None


def record_direction(tx: dict[str, Any], rx: dict[str, Any], *, pesq: bool = True,
                     emodel: Emodel | None = None) -> dict[str, Any]:  # fmt: skip
    """Figures of the media ``tx``'s process sent and ``rx``'s played, from their records
    (both on CLOCK_MONOTONIC): the keys of ``testbed.demo.direction_report``
    (:func:`testbed.demo.direction_figures`), with PESQ-WB from tx's mic and rx's speaker
    WAV. A figure a record lacks (an older listener's) is null."""
    sent, arrived = _times(tx["packets"]["sent"]), _times(rx["packets"]["arrived"])
    captured, played = _times(tx["frames"]["captured"]), _times(rx["frames"]["played"])
    codec_s = float(tx.get("codec_delay_ms", 0.0)) / 1000
    m2e = [played[i] - captured[i] + codec_s for i in played if i in captured]
    concealed = [i for i in rx["frames"].get("concealed", []) if int(i) in captured]
    out: dict[str, Any] = direction_figures(
        sent, arrived, m2e, frames_sent=len(captured),
        played=sum(1 for i in played if i in captured), concealed=len(concealed),
        stretched=rx.get("stretched"), codec_s=codec_s, jitter=rx.get("jitter"),
        displaced=tx.get("displaced"), route=tx.get("route"), emodel=emodel,
    )  # fmt: skip
    if pesq:
        try:
            reference, degraded = read_wav(tx["mic"]), read_wav(rx["speaker"])
            frames_s = len(captured) * float(tx.get("frame_ms", 20)) / 1000
            reference = reference[: int(frames_s * 16000)]
            if len(reference) >= 16000 and len(degraded) >= 16000:
                out["pesq_wb"] = round(pesq_wb(reference, degraded).mos, 3)
        except ImportError:
            out["pesq_wb_missing"] = "pip install pesq"
        except (OSError, KeyError, PhantomError) as exc:
            out["pesq_wb_missing"] = f"{type(exc).__name__}: {exc}"
    return out


def report_from_records(records: dict[str, dict[str, Any]], *, pesq: bool = True,
                        duration_s: float | None = None, wall_s: float | None = None,
                        emodel: Emodel | None = None) -> dict[str, Any]:  # fmt: skip
    """The demo's report from A's and B's records (:meth:`TwoCallers.records`), with the
    keys of the one-process report (:func:`testbed.demo.assemble_report`): both directions;
    the call's settings as A's record gives them (``mean_delay_ms_per_hop``, ``hops``,
    ``channel``, ``profile``); ``uplink`` slots per caller and the packet sizes both sent;
    ``clients.<A|B>.{pid, ip, online_s, uplink_bytes_per_s, downlink_bytes_per_s,
    uplink_packets_per_s, downlink_packets_per_s}`` (UDP payload, cover included, mean over
    the whole seconds online); ``setup_s.{to_ringing, to_connected}`` measured from A's
    dial; ``duration_s`` from A's connected to ended (else the given one); ``wall_s``: the
    run's, as given (seconds); and ``processes`` = "two"."""
    a, b = records["A"], records["B"]
    dirs = {"A->B": record_direction(a, b, pesq=pesq, emodel=emodel),
            "B->A": record_direction(b, a, pesq=pesq, emodel=emodel)}  # fmt: skip
    phases = a["phases"]

    def since_dial(key: str) -> float | None:
        t, dial = phases.get(key), phases.get("dial")
        return round(t - dial, 3) if t is not None and dial is not None else None

    clients = {name: _client_rates(r) for name, r in records.items()}
    connected, ended = phases.get("connected"), phases.get("ended")
    if connected is not None and ended is not None:
        duration_s = round(ended - connected, 1)
    report = assemble_report(
        dirs, duration_s=duration_s, wall_s=wall_s,
        setup_s={"to_ringing": since_dial("ringing"), "to_connected": since_dial("connected")},
        key_agreement=a.get("key_agreement"),
        end_reason={"A": a.get("end_reason"), "B": b.get("end_reason")},
        settings=a, slot_ms=a.get("slot_ms"),
        uplink_slots={name: r.get("uplink_slots") for name, r in records.items()},
        packet_sizes=[n for r in records.values() for n in r.get("packet_sizes") or []],
        received={name: r.get("received") for name, r in records.items()}, clients=clients,
    )  # fmt: skip
    return {**report, "processes": "two"}


def _client_rates(record: dict[str, Any]) -> dict[str, Any]:
    """One caller's ``clients`` entry of the report (see :func:`report_from_records`)."""
    online, offline = record["phases"].get("online"), record["phases"].get("offline")
    return {
        "pid": record["pid"],
        "ip": record["ip"],
        "online_s": round(offline - online, 3) if None not in (online, offline) else None,
        "uplink_bytes_per_s": _mean_rate(record["uplink"]["bytes_per_s"]),
        "downlink_bytes_per_s": _mean_rate(record["downlink"]["bytes_per_s"]),
        "uplink_packets_per_s": _mean_rate(record["uplink"]["packets_per_s"]),
        "downlink_packets_per_s": _mean_rate(record["downlink"]["packets_per_s"]),
    }
