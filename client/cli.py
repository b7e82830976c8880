"""``phantom-call``: a real Mode C call through a local testnet, and its latency report.

    phantom-call demo                         # testnet up, 20 s call, report, testnet down
    phantom-call demo --duration 8 --link-delay-ms 20 --link-jitter-ms 5 --json call.json

The testnet is torn down in every case (also on Ctrl-C or an error) unless
``--keep-testnet`` is given; no process is left behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from mixnode._version import VERSION
from overlay import DirectoryError, UsageError, finite_number

from ._tasks import open_background
from .call import DEFAULT_MEAN_DELAY_S
from .demo import CallOptions, call_report, run_call
from .gateway_link import AttachError

_SECONDS = finite_number(1, 3600, what="seconds", verb="want")
_MILLISECONDS = finite_number(0, 1000, what="milliseconds", verb="want")
_PROBABILITY = finite_number(0, 0.5, what="a probability", verb="want")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phantom-call", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a call between two callers through a local testnet")
    demo.add_argument("--duration", type=_SECONDS, default=20.0,
                      help="seconds of call (default 20)")  # fmt: skip
    demo.add_argument("--dir", type=Path, default=None,
                      help="testnet directory (default: a temporary one)")  # fmt: skip
    demo.add_argument("--keep-testnet", action="store_true",
                      help="leave the testnet up (stop: phantom-testnet down --dir)")  # fmt: skip
    demo.add_argument("--mean-delay-ms", type=_MILLISECONDS,
                      default=DEFAULT_MEAN_DELAY_S * 1000,
                      help="mean sender-chosen delay per hop (default %(default)s)")  # fmt: skip
    demo.add_argument("--link-delay-ms", type=_MILLISECONDS, default=0.0,
                      help="one-way delay every node adds to each packet it sends")  # fmt: skip
    demo.add_argument("--link-jitter-ms", type=_MILLISECONDS, default=0.0,
                      help="standard deviation of that delay")  # fmt: skip
    demo.add_argument("--link-loss", type=_PROBABILITY, default=0.0,
                      help="probability that a node drops a packet it sends")  # fmt: skip
    demo.add_argument("--json", type=Path, default=None, dest="json_path",
                      help="report file (default: call-report.json here)")  # fmt: skip
    demo.add_argument("--wav-out", type=Path, default=None,
                      help="directory for the received audio of each direction (WAV)")  # fmt: skip
    demo.add_argument("--no-pesq", action="store_true", help="skip the PESQ scores")
    return parser


def _emodel():  # type: ignore[no-untyped-def]
    """The simulator's E-model (G.107) as (Ta ms, loss) -> (R, MOS), or None."""
    try:
        from sim import mos_from_r, r_factor
    except ImportError:
        return None

    def rate(ta_ms: float, loss: float) -> tuple[float, float]:
        r = float(r_factor(ta_ms, loss))
        return r, float(mos_from_r(r))

    return rate


def _simulator_check(one_way_s: list[float], args: argparse.Namespace, options: CallOptions):  # type: ignore[no-untyped-def]
    """The simulator's one-way prediction for this testnet and call, against the measured."""
    try:
        from sim import load_scenario
        from sim.validate import MeasuredDataError, validate
    except ImportError:
        return None
    jitter = args.link_jitter_ms / args.link_delay_ms if args.link_delay_ms else 0.0
    link = (
        {"dist": "lognormal", "median_ms": args.link_delay_ms, "sigma": jitter}
        if args.link_delay_ms
        else {"dist": "constant", "value_ms": 0.1}
    )
    overrides = {
        "mixing": {"delay_mean_ms": options.mean_delay_s * 1000},
        "voice": {
            "frames_per_packet": options.profile.frames_per_packet,
            # the testnet's gateways deliver at 50 Hz (20 ms), uplink slots are 40 ms
            "downlink_speedup": options.profile.packet_interval_ms / 20.0,
        },
        "network": {
            "gateways": 2,
            "mixes_per_layer": 2,
            "access_delay": {"dist": "constant", "value_ms": 0.1},  # loopback
            "link_delay": link,
            "link_loss": args.link_loss,
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


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean-up path as Ctrl-C


def demo(args: argparse.Namespace) -> int:
    import trio
    from rich.console import Console

    from mixnode.directory_client import DirectoryClient
    from mixnode.testnet import TestnetError, TestnetOptions, down, up

    console = Console(stderr=True)
    temporary = args.dir is None
    directory = Path(tempfile.mkdtemp(prefix="phantom-call-")) if temporary else args.dir
    options = CallOptions(duration_s=args.duration, mean_delay_s=args.mean_delay_ms / 1000)
    net = TestnetOptions(
        directory=directory,
        base_port=0,
        link_delay_ms=args.link_delay_ms,
        link_jitter_ms=args.link_jitter_ms,
        link_loss=args.link_loss,
    )
    previous = signal.signal(signal.SIGTERM, _terminate)
    started = False
    try:
        console.print(f"testnet: starting in {directory} ...")
        state = up(net)  # cleans up after itself if it fails
        started = True
        doc = DirectoryClient(
            state.authorities, state.authority_key_bytes(), state.threshold
        ).fetch()
        if len(doc.gateways) < 2:
            raise TestnetError("the testnet has fewer than two gateways")
        gw_a, gw_b = doc.gateways[0].node_id, doc.gateways[1].node_id
        console.print(f"testnet: {len(doc.nodes)} nodes up; calling for {args.duration:g} s")
        result = _run_with_progress(trio, console, doc, gw_a, gw_b, options)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130
    except (TestnetError, UsageError, DirectoryError, OSError, TimeoutError, AttachError) as exc:
        console.print(f"[red]phantom-call: {type(exc).__name__}: {exc}[/red]")
        return 1
    except trio.TooSlowError:
        console.print("[red]phantom-call: the call did not connect or end in time[/red]")
        return 1
    finally:
        if started and not args.keep_testnet:
            stopped = down(directory)
            console.print(f"testnet: down ({len(stopped)} processes stopped)")
            if temporary:
                shutil.rmtree(directory, ignore_errors=True)
        elif started:
            console.print(f"testnet: left running in {directory}")
        signal.signal(signal.SIGTERM, previous)
    report = call_report(result, pesq=not args.no_pesq, emodel=_emodel())
    report["testnet"] = {
        "link_delay_ms": args.link_delay_ms,
        "link_jitter_ms": args.link_jitter_ms,
        "link_loss": args.link_loss,
        "nodes": len(doc.nodes),
    }
    dirs = report["directions"]
    pcms = {name: d.pop("received_pcm") for name, d in dirs.items()}  # type: ignore[union-attr]
    one_way = [x for d in dirs.values() for x in d.pop("one_way_s")]  # type: ignore[union-attr]
    report["simulator"] = _simulator_check(one_way, args, options)
    if args.wav_out is not None:
        from ._speech import write_wav

        args.wav_out.mkdir(parents=True, exist_ok=True)
        for name, pcm in pcms.items():
            write_wav(args.wav_out / f"received-{name.replace('->', '-to-')}.wav", pcm)
    json_path = args.json_path or Path("call-report.json")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    _print_report(report, json_path)
    return 0


async def _call_until_signal(doc, gw_a, gw_b, options, progress):  # type: ignore[no-untyped-def]
    """``run_call``, cancelled cleanly on SIGTERM, which then leaves as KeyboardInterrupt
    (trio itself turns Ctrl-C into KeyboardInterrupt); the caller's ``finally`` then tears
    the testnet down."""
    import trio

    result, terminated = None, False
    try:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with open_background() as nursery:

                async def watch() -> None:
                    nonlocal terminated
                    async for _ in signals:
                        terminated = True  # raised below, outside the nursery: never a group
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch)
                result = await run_call(doc, gw_a, gw_b, options, progress=progress)
    except Exception as exc:
        if not terminated:
            raise
        # Asked to stop: an error of the call's teardown does not change why it ended.
        print(f"phantom-call: while stopping: {type(exc).__name__}: {exc}", file=sys.stderr)
    if terminated:
        raise KeyboardInterrupt
    return result


def _run(trio, *args):  # type: ignore[no-untyped-def]
    """``trio.run(_call_until_signal, *args)``. Ctrl-C can land in any task; when it comes
    out inside an ``ExceptionGroup`` it is handed on as the KeyboardInterrupt it is."""
    try:
        return trio.run(_call_until_signal, *args)
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        raise KeyboardInterrupt from group


def _run_with_progress(trio, console, doc, gw_a, gw_b, options):  # type: ignore[no-untyped-def]
    if not console.is_terminal:
        return _run(trio, doc, gw_a, gw_b, options, None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("call"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("call", total=options.duration_s)

        def progress(done: float, total: float) -> None:
            bar.update(task, completed=done)

        return _run(trio, doc, gw_a, gw_b, options, progress)


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def _print_report(report: dict, json_path: Path) -> None:  # type: ignore[type-arg]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Mode C call, {report['duration_s']:g} s, setup {report['setup_s']} s")
    table.add_column("")
    dirs = report["directions"]
    for name in dirs:
        table.add_column(name, justify="right")

    def row(label: str, get) -> None:  # type: ignore[no-untyped-def]
        table.add_row(label, *(_fmt(get(d)) for d in dirs.values()))

    for key, label in (("mouth_to_ear_ms", "mouth-to-ear"), ("one_way_ms", "network one-way")):
        for p in ("p50", "p95", "p99", "max"):
            row(f"{label} {p} (ms)", lambda d, k=key, p=p: (d[k] or {}).get(p))
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return demo(args)
    return 2  # pragma: no cover  (argparse requires a command)


if __name__ == "__main__":
    sys.exit(main())
