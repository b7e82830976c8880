"""The call report's judgement and its printing: E-model (G.107), the simulator's prediction
for the same testnet and call, and the table ``phantom-call demo`` prints.

    >>> r, mos = emodel(150.0, 0.0)          # Ta 150 ms, no loss
    >>> 80 < r < 95 and 4.0 < mos < 4.5
    True

The figures themselves come from :func:`testbed.demo.call_report`; this module adds the
models of ``sim`` to them and shows them.
"""

from __future__ import annotations

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


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def print_report(report: dict[str, Any], json_path: Path) -> None:
    """Print the report of :func:`testbed.demo.call_report` (plus ``simulator``, from
    :func:`simulator_check`) as a table on stdout; ``json_path`` is named as its file."""
    table = Table(title=f"Mode C call, {report['duration_s']:g} s, setup {report['setup_s']} s")
    table.add_column("")
    dirs = report["directions"]
    for name in dirs:
        table.add_column(name, justify="right")

    def row(label: str, get: Callable[[dict[str, Any]], object]) -> None:
        table.add_row(label, *(_fmt(get(d)) for d in dirs.values()))

    for key, label in (("mouth_to_ear_ms", "mouth-to-ear"), ("one_way_ms", "network one-way")):
        for p in ("p50", "p95", "p99", "max"):

            def pct(d: dict[str, Any], k: str = key, p: str = p) -> object:
                return (d[k] or {}).get(p)

            row(f"{label} {p} (ms)", pct)
    row("jitter RFC 3550 (ms)", lambda d: d["jitter_ms"])
    row("packets sent / received", lambda d: f"{d['packets_sent']} / {d['packets_received']}")
    row("packet loss", lambda d: f"{100 * d['loss']:.2f} %" if d["loss"] is not None else None)
    row(
        "late loss",
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
    if "channel" in report:
        console.print(f"signaling channel: {report['channel']}")
    sim = report.get("simulator")
    if sim:
        pm = sim["percentiles_ms"]
        console.print(
            "network one-way, measured vs simulated (ms): "
            + ", ".join(f"{p} {v['measured']:.0f}/{v['simulated']:.0f}" for p, v in pm.items())
            + f"; KS {sim['ks_distance']:.3f} ({'agrees' if sim['passed'] else 'differs'})"
        )
    verdict = report["p99_vs_300_600_ms"]
    colour = "green" if verdict in ("inside", "below") else "red"
    console.print(
        f"p99 mouth-to-ear {report['mouth_to_ear_p99_ms']} ms: [{colour}]{verdict}[/{colour}]"
        f" the 300-600 ms envelope; report: {json_path}"
    )
