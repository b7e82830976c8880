"""``phantom-call``: a real Mode C call through a local testnet, and its latency report.

    phantom-call demo                         # testnet up, 20 s call, report, testnet down
    phantom-call demo --duration 8 --link-delay-ms 20 --link-jitter-ms 5 --json call.json

The callers are two processes of their own (``python -m client.cli``), A on 127.0.0.2 and
B on 127.0.0.3, each with its own profile: they ``init``, exchange cards, go online
(``listen``) at independent random moments at least ``--online-margin-s`` (10 s) before the
call, A ``dial``s, B answers (``--auto-answer``), and both stay online as long after it
(testbed.callers). ``--in-process`` runs both as tasks of this process instead (also the
fallback where the caller's command line has no ``listen``/``dial``). Each phase is shown as
it begins; the report goes to stdout, and to ``--json FILE`` only if asked.

The testnet is torn down in every case (also on Ctrl-C or an error) unless
``--keep-testnet`` is given; no process is left behind.

Kept out of ``client``: the demo starts a testnet and judges the call with the simulator;
the caller's own command line is ``client.cli``, extended here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, cast

import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from client import cli as client_cli
from client import write_wav
from client._tasks import open_background
from client.call import DEFAULT_MEAN_DELAY_S
from client.gateway_link import AttachError
from mixnode.directory_client import DirectoryClient
from overlay import DirectoryError, TopologyDocument, UsageError, finite_number

from ._state import TestnetError, TestnetState
from .callers import CallerError, TwoCallers, report_from_records, write_network_file
from .demo import CallOptions, CallResult, PhaseHook, call_report, run_call
from .demo import Progress as CallProgress
from .report import Phases, emodel, print_report, simulator_check
from .testnet import TestnetOptions, down, up

DESCRIPTION = __doc__.splitlines()[0]


_SECONDS = finite_number(1, 3600, what="seconds", verb="want")
_MILLISECONDS = finite_number(0, 1000, what="milliseconds", verb="want")
_MARGIN = finite_number(0, 600, what="seconds", verb="want")
_PROBABILITY = finite_number(0, 0.5, what="a probability", verb="want")


def add_demo(sub: client_cli.Subcommands) -> None:
    """Add ``demo`` (its options and its handler, :func:`run_demo`) to ``phantom-call``."""
    demo = sub.add_parser("demo", help="a call between two callers through a local testnet")
    demo.add_argument("--duration", type=_SECONDS, default=20.0,
                      help="seconds of call (default 20)")  # fmt: skip
    demo.add_argument("--dir", type=Path, default=None,
                      help="testnet directory (default: a temporary one)")  # fmt: skip
    demo.add_argument("--keep-testnet", action="store_true",
                      help="leave the testnet up (stop: phantom-testnet down --dir)")  # fmt: skip
    demo.add_argument("--mean-delay-ms", type=_MILLISECONDS,
                      default=DEFAULT_MEAN_DELAY_S * 1000,
                      help="mean sender-chosen delay per hop, of both callers "
                      "(default %(default)s)")  # fmt: skip
    demo.add_argument("--link-delay-ms", type=_MILLISECONDS, default=0.0,
                      help="one-way delay every node adds to each packet it sends "
                      "(default: 0)")  # fmt: skip
    demo.add_argument("--link-jitter-ms", type=_MILLISECONDS, default=0.0,
                      help="standard deviation of that delay (default: 0)")  # fmt: skip
    demo.add_argument("--link-loss", type=_PROBABILITY, default=0.0,
                      help="probability that a node drops a packet it sends "
                      "(default: 0)")  # fmt: skip
    demo.add_argument("--json", type=Path, default=None, dest="json_path",
                      help="write the report as JSON to this file (default: none)")  # fmt: skip
    demo.add_argument("--wav-out", type=Path, default=None,
                      help="directory for the received audio of each direction "
                      "(WAV; default: none)")  # fmt: skip
    demo.add_argument("--no-pesq", action="store_true", help="skip the PESQ scores")
    demo.add_argument("--online-margin-s", type=_MARGIN, default=10.0,
                      help="least seconds each caller is online before and after the call "
                      "(default 10; shorter ones let a watcher pair the callers)")  # fmt: skip
    demo.add_argument(
        "--in-process",
        action="store_true",
        help="both callers as tasks of this process (the simulator's setting)",
    )
    demo.set_defaults(handler=run_demo)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``phantom-call`` parser: the caller's subcommands and ``demo``."""
    return client_cli.build_parser(add_demo, description=DESCRIPTION)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean-up path as Ctrl-C


def run_demo(args: argparse.Namespace) -> int:
    """``phantom-call demo``: testnet up, the call, testnet down, the report. Exit status 0,
    1 on an error (printed), 130 on Ctrl-C or SIGTERM."""
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
    phases = Phases(console)
    callers_dir = Path(tempfile.mkdtemp(prefix="phantom-callers-"))
    result: CallResult | None = None
    records: dict[str, dict[str, Any]] = {}
    wall_s: float | None = None  # two processes: set-up to both offline, seconds
    try:
        phases.start("setting up testnet", f"starting authorities and nodes in {directory} "
                     "and waiting for a signed topology (up to a minute)")  # fmt: skip
        state = up(net)  # cleans up after itself if it fails
        started = True
        doc = DirectoryClient(
            state.authorities, state.authority_key_bytes(), state.threshold
        ).fetch()
        if len(doc.gateways) < 2:
            raise TestnetError("the testnet has fewer than two gateways")
        if args.in_process or not caller_can_listen():
            if not args.in_process:
                phases.wait("this build has no `phantom-call listen`/`dial`: both callers "
                            "run in this process")  # fmt: skip
            gw_a, gw_b = doc.gateways[0].node_id, doc.gateways[1].node_id
            plan = f"two callers on two gateways, calling for {args.duration:g} s"
            phases.start("profiles", f"{len(doc.nodes)} nodes up; {plan}")
            result = _run_with_progress(console, doc, gw_a, gw_b, options, phases)
        else:
            began = time.monotonic()
            records = _two_processes(args, state, callers_dir, phases)
            wall_s = time.monotonic() - began
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130
    except (TestnetError, UsageError, DirectoryError, OSError, TimeoutError, AttachError,
            CallerError) as exc:  # fmt: skip
        console.print(f"[red]phantom-call: {type(exc).__name__}: {exc}[/red]")
        return 1
    except trio.TooSlowError:
        console.print("[red]phantom-call: the call did not connect or end in time[/red]")
        return 1
    finally:
        if started and not args.keep_testnet:
            phases.start("teardown", "stopping the testnet's processes")
            stopped = down(directory)
            console.print(f"testnet: down ({len(stopped)} processes stopped)")
            if temporary:
                shutil.rmtree(directory, ignore_errors=True)
        elif started:
            console.print(f"testnet: left running in {directory}")
        signal.signal(signal.SIGTERM, previous)
        if not records:
            shutil.rmtree(callers_dir, ignore_errors=True)
    try:
        pesq_note = "" if args.no_pesq else ", PESQ-WB (a few seconds)"
        phases.wait(f"scoring: delays, losses{pesq_note}")
        if result is not None:
            report = call_report(result, pesq=not args.no_pesq, emodel=emodel)
        else:
            report = report_from_records(records, pesq=not args.no_pesq, wall_s=wall_s,
                                         duration_s=args.duration, emodel=emodel)  # fmt: skip
        report["testnet"] = {
            "link_delay_ms": args.link_delay_ms,
            "link_jitter_ms": args.link_jitter_ms,
            "link_loss": args.link_loss,
            "nodes": len(doc.nodes),
        }
        dirs = cast(dict[str, dict[str, Any]], report["directions"])
        pcms = {name: d.pop("received_pcm", None) for name, d in dirs.items()}
        one_way = [x for d in dirs.values() for x in d.pop("one_way_s")]
        phases.wait("simulator check: the same testnet and call in the simulator")
        report["simulator"] = simulator_check(
            one_way,
            options,
            link_delay_ms=args.link_delay_ms,
            link_jitter_ms=args.link_jitter_ms,
            link_loss=args.link_loss,
        )
        if args.wav_out is not None:
            args.wav_out.mkdir(parents=True, exist_ok=True)
            for name, pcm in pcms.items():
                out = args.wav_out / f"received-{name.replace('->', '-to-')}.wav"
                if pcm is not None:
                    write_wav(out, pcm)
                else:  # the receiver's --speaker file
                    shutil.copyfile(records[name[-1]]["speaker"], out)
    finally:
        shutil.rmtree(callers_dir, ignore_errors=True)
    json_path: Path | None = args.json_path
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, json_path)
    return 0


def caller_can_listen() -> bool:
    """Whether the caller's command line has ``listen`` and ``dial`` (the two-process demo
    needs both)."""
    parser = client_cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {"listen", "dial"} <= set(action.choices)
    return False


def _two_processes(
    args: argparse.Namespace, state: TestnetState, directory: Path, phases: Phases
) -> dict[str, dict[str, Any]]:
    """Both callers as processes of their own (:class:`testbed.callers.TwoCallers`): set up,
    online, the call, offline; their records. Every caller process is stopped on the way
    out, however it ends."""
    phases.start("profiles", "fetching the testnet's signed network file")
    network = write_network_file(state, directory / "network.json")
    with TwoCallers(directory, network, margin_s=args.online_margin_s,
                    voice_s=args.duration + 2 * args.online_margin_s + 30,
                    say=phases.start, mean_delay_ms=args.mean_delay_ms) as pair:  # fmt: skip
        pair.set_up()
        pair.go_online()
        pair.call(args.duration)
        phases.wait("both callers offline; reading their call reports")
        return pair.records()


async def _call_until_signal(
    doc: TopologyDocument,
    gw_a: bytes,
    gw_b: bytes,
    options: CallOptions,
    progress: CallProgress | None,
    phase: PhaseHook | None = None,
) -> CallResult:
    """``run_call``, cancelled cleanly on SIGTERM, which then leaves as KeyboardInterrupt
    (trio itself turns Ctrl-C into KeyboardInterrupt); the caller's ``finally`` then tears
    the testnet down."""
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
                result = await run_call(doc, gw_a, gw_b, options, progress=progress, phase=phase)
    except Exception as exc:
        if not terminated:
            raise
        # Asked to stop: an error of the call's teardown does not change why it ended.
        print(f"phantom-call: while stopping: {type(exc).__name__}: {exc}", file=sys.stderr)
    if terminated:
        raise KeyboardInterrupt
    assert result is not None  # run_call returned: nothing was raised above
    return result


def _run_with_progress(
    console: Console,
    doc: TopologyDocument,
    gw_a: bytes,
    gw_b: bytes,
    options: CallOptions,
    phases: Phases,
) -> CallResult:
    """``run_call`` in ``trio.run``, each phase shown, with a progress bar on a terminal."""

    def run(progress: CallProgress | None) -> CallResult:
        # Ctrl-C can land in any task; when it comes out inside an ``ExceptionGroup`` it
        # is handed on as the KeyboardInterrupt it is.
        try:
            return trio.run(_call_until_signal, doc, gw_a, gw_b, options, progress, phases.start)
        except BaseExceptionGroup as group:
            if group.subgroup(KeyboardInterrupt) is None:
                raise
            raise KeyboardInterrupt from group

    if not console.is_terminal:
        return run(None)

    with Progress(
        TextColumn("call"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("call", total=options.duration_s)

        def progress(done: float, total: float) -> None:
            bar.update(task, completed=done)

        return run(progress)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``phantom-call``: the caller's subcommands and ``demo``; returns the
    exit status of the one run."""
    return client_cli.main(argv, add_demo, description=DESCRIPTION)


if __name__ == "__main__":
    sys.exit(main())
