"""The call report's judgement and its printing: E-model (G.107), the simulator's prediction
for the same testnet and call, and the table ``phantom-call demo`` prints.

    >>> r, mos = emodel(150.0, 0.0)          # Ta 150 ms, no loss
    >>> 80 < r < 95 and 4.0 < mos < 4.5
    True

The figures themselves come from :func:`testbed.demo.call_report`; this module adds the
models of ``sim`` to them and shows them: first what a caller wants to know (how long speech
took to arrive, how much was lost, how it sounded, what each client sent), in words, then,
under its own heading, how the run compares with the simulator (for researchers).

    >>> quality_verdict(285.5)
    'Good: 99 % of speech arrived within 286 ms, well inside the 600 ms a conversation tolerates'
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mixnode.config import DEFAULT_DELIVERY_RATE_HZ
from sim import load_scenario, mos_from_r, r_factor
from sim.validate import MeasuredDataError, validate

from .demo import CallOptions


def emodel(ta_ms: float, loss: float) -> tuple[float, float]:
    """(R, MOS) of the simulator's E-model (G.107) for a mean one-way delay of ``ta_ms``
    milliseconds and a packet loss fraction ``loss`` (0..1)."""
    r = float(r_factor(ta_ms, loss))
    return r, float(mos_from_r(r))


def simulator_check(
    one_way_s: list[float],
    options: CallOptions,
    *,
    link_delay_ms: float,
    link_jitter_ms: float,
    link_loss: float,
) -> dict[str, Any] | None:
    """The simulator's one-way prediction for this testnet and call, against the measured
    one-way delays (seconds): the scenario it ran plus ``sim.validate``'s result (percentiles
    in ms, KS distance, verdict), or None if there are too few samples to compare.

    ``link_*`` are the testnet's link emulation: mean delay and its standard deviation in
    milliseconds, loss probability per packet."""
    jitter = link_jitter_ms / link_delay_ms if link_delay_ms else 0.0
    link = (
        {"dist": "lognormal", "median_ms": link_delay_ms, "sigma": jitter}
        if link_delay_ms
        else {"dist": "constant", "value_ms": 0.1}
    )
    overrides = {
        "mixing": {"delay_mean_ms": options.mean_delay_s * 1000},
        "voice": {
            "frames_per_packet": options.profile.frames_per_packet,
            # downlink slots per uplink slot: the testnet's gateways deliver at the default
            # rate (37.5 Hz), the uplink slots are 40 ms (25 Hz)
            "downlink_speedup": options.profile.packet_interval_ms
            / 1000
            * DEFAULT_DELIVERY_RATE_HZ,
        },
        "network": {
            "gateways": 2,
            "mixes_per_layer": 2,
            "access_delay": {"dist": "constant", "value_ms": 0.1},  # loopback
            "link_delay": link,
            "link_loss": link_loss,
        },
        "users": {
            "n_users": 2,
            "n_calls": 1,
            "call_s": options.duration_s,
            "duration_s": options.duration_s + 10,
        },
    }
    try:
        result = validate(one_way_s, load_scenario(overrides)).to_dict()
    except MeasuredDataError:
        return None
    return {"scenario": overrides, **result}


TOLERABLE_MS = 600.0  # one-way mouth-to-ear a conversation tolerates (G.114's upper bound)
COMFORTABLE_MS = 300.0  # below this, people do not notice the delay
PHASES = ("setting up testnet", "profiles", "online", "ringing", "in call", "after call",
          "teardown")  # fmt: skip


def quality_verdict(p99_ms: float | None) -> str:
    """One sentence for a caller on the worst direction's 99th-percentile mouth-to-ear delay
    (milliseconds), e.g. ``"Good: 99 % of speech arrived within 286 ms, ..."``."""
    if p99_ms is None or math.isnan(p99_ms):
        return "No speech arrived: nothing to judge"
    if p99_ms < COMFORTABLE_MS:
        return (f"Good: 99 % of speech arrived within {p99_ms:.0f} ms, well inside the "
                f"{TOLERABLE_MS:.0f} ms a conversation tolerates")  # fmt: skip
    if p99_ms <= TOLERABLE_MS:
        return (f"Usable: 99 % of speech arrived within {p99_ms:.0f} ms; people notice the "
                f"delay but a conversation tolerates up to {TOLERABLE_MS:.0f} ms")  # fmt: skip
    return (f"Too slow: 1 % of speech took longer than {p99_ms:.0f} ms; beyond "
            f"{TOLERABLE_MS:.0f} ms people start talking over each other")  # fmt: skip


def loss_verdict(late_loss: float | None) -> str:
    """A caller's words for the fraction (0..1) of frames that came late or never."""
    if late_loss is None:
        return "no frames to count"
    pct = 100 * late_loss
    word = "Good" if pct <= 1 else "Noticeable" if pct <= 3 else "Poor"
    return f"{word}: {pct:.2f} % of speech came late or never (at most 1 % goes unnoticed)"


def pesq_verdict(mos: float | None) -> str:
    """A caller's words for a PESQ-WB score (MOS-LQO, 1..4.64)."""
    if mos is None:
        return "not scored"
    word = "clear" if mos >= 3.5 else "understandable" if mos >= 2.5 else "hard to follow"
    return f"{mos:.2f}: {word} (3.5 or more sounds like a good phone line)"


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


class Phases:
    """The demo's phases, shown as they begin, each with what it waits for, so the screen
    never sits still without saying why::

        [3/7] online: A and B attach to their gateways (cover traffic only) ...

    ``console`` is where the lines go (stderr in ``phantom-call demo``); times are
    CLOCK_MONOTONIC seconds since the first phase.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.began = time.monotonic()
        self.current: str | None = None

    def start(self, phase: str, waiting_for: str) -> None:
        """Begin ``phase`` (one of :data:`PHASES`; another name is shown without a number),
        saying what it waits for."""
        self.current = phase
        number = f"{PHASES.index(phase) + 1}/{len(PHASES)}" if phase in PHASES else "-"
        self.wait(f"[bold][{number}] {phase}[/bold]: {waiting_for}")

    def wait(self, what: str) -> None:
        """Say what the current phase now waits for, with the seconds since the start."""
        self.console.print(f"{time.monotonic() - self.began:6.1f} s  {what}", highlight=False)


def print_report(report: dict[str, Any], json_path: Path | None = None) -> None:
    """Print the report of either mode (:func:`testbed.demo.assemble_report`, plus
    ``simulator``, from :func:`simulator_check`) on stdout: the figures, a caller's
    verdict, then the simulator comparison under its own heading; ``json_path``, if given,
    is named as the report file."""
    setup = report["setup_s"]
    if isinstance(setup, dict):
        ringing, connected = setup.get("to_ringing"), setup.get("to_connected")
        setup_text = (f"ringing after {ringing} s, " if ringing is not None else "") + (
            f"connected after {connected} s, from A's phone taking the dial")  # fmt: skip
    else:
        setup_text = f"connected after {setup} s"
    table = Table(title=f"Mode C call, {report['duration_s']:g} s; {setup_text}")
    table.add_column("")
    dirs = report["directions"]
    for name in dirs:
        table.add_column(name, justify="right")

    def row(label: str, get: Callable[[dict[str, Any]], object]) -> None:
        table.add_row(label, *(_fmt(get(d)) for d in dirs.values()))

    for key, label in (("mouth_to_ear_ms", "mouth-to-ear"), ("one_way_ms", "network one-way")):
        for p in ("p50", "p95", "p99", "max"):

            def pct(d: dict[str, Any], k: str = key, p: str = p) -> object:
                return (d.get(k) or {}).get(p)

            row(f"{label} {p} (ms)", pct)
    row("screen's one-way estimate p50 (ms)",  # half the round trip, from receiver reports
        lambda d: (d.get("one_way_estimate_ms") or {}).get("p50"))  # fmt: skip
    row("jitter RFC 3550 (ms)", lambda d: d.get("jitter_ms"))
    row("packets sent / received", lambda d: f"{d['packets_sent']} / {d['packets_received']}")
    row("packet loss", lambda d: f"{100 * d['loss']:.2f} %" if d["loss"] is not None else None)
    row(
        "late or lost",
        lambda d: f"{100 * d['late_loss']:.2f} %" if d["late_loss"] is not None else None,
    )
    row("concealed frames", lambda d: d["concealed_frames"])
    row("PESQ-WB (MOS-LQO)", lambda d: d["pesq_wb"])
    row(
        "E-model R / MOS",
        lambda d: f"{d['emodel']['r']} / {d['emodel']['mos']}" if "emodel" in d else None,
    )
    console = Console()
    console.print(table)
    clients = report.get("clients")
    if clients:
        for name, c in clients.items():
            where = f" (pid {c['pid']}, {c['ip']})" if "pid" in c else ""
            console.print(
                f"client {name}{where}: sends {_fmt(c.get('uplink_bytes_per_s'))} B/s, "
                f"receives {_fmt(c.get('downlink_bytes_per_s'))} B/s, cover included"
            )
    if "key_agreement" in report:
        console.print(f"key agreement: {report['key_agreement']}")
    if "channel" in report:
        console.print(f"signaling channel: {report['channel']}")
    if report.get("hops") is not None and report.get("mean_delay_ms_per_hop") is not None:
        console.print(f"route: {report['hops']} hops, mean delay "
                      f"{report['mean_delay_ms_per_hop']:g} ms per hop")  # fmt: skip
    worst = report["mouth_to_ear_p99_ms"]
    good = worst is not None and worst <= TOLERABLE_MS
    colour = "green" if good else "red"
    console.print(f"[bold {colour}]{quality_verdict(worst)}[/bold {colour}]")
    losses = [d["late_loss"] for d in dirs.values() if d["late_loss"] is not None]
    console.print(f"Late or lost: {loss_verdict(max(losses) if losses else None)}")
    scores = [d["pesq_wb"] for d in dirs.values() if d.get("pesq_wb") is not None]
    worst_mos = min(scores) if scores else None
    console.print(f"Sound (PESQ-WB, worse direction): {pesq_verdict(worst_mos)}")
    sim = report.get("simulator")
    if sim:
        pm = sim["percentiles_ms"]
        console.print("\n[bold]Simulator check (for researchers)[/bold]")
        console.print(
            "network one-way delay, measured / simulated (ms): "
            + ", ".join(f"{p} {v['measured']:.0f}/{v['simulated']:.0f}" for p, v in pm.items())
        )
        same = "matches" if sim["passed"] else "does not match"
        console.print(
            f"KS distance {sim['ks_distance']:.3f}: the simulator's model {same} this run's "
            "delay distribution (a check of the model, not of the call's quality)"
        )
    if json_path is not None:
        console.print(f"report: {json_path}")
