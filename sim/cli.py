"""``phantom-sim``: run a latency scenario, sweep its parameters, attack it, validate it.

    phantom-sim run --scenario scenarios/voice.toml --out out/voice
    phantom-sim sweep --scenario scenarios/voice.toml --out out/sweep --workers 2
    phantom-sim attack --scenario scenarios/traffic-small.toml --out out/attack
    phantom-sim validate --measured measured.json --scenario scenarios/voice.toml

Results go to the output directory as JSON, CSV and PNG; a one-line summary goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from ._latency import run_latency
from ._output import (
    plot_attacks,
    plot_latency,
    plot_sweep,
    plot_validation,
    progress,
    write_csv,
    write_json,
)
from ._scenario import ScenarioError, load_scenario
from ._sweep import DEFAULT_GRID, MAX_LOSS, MAX_P99_MS, SweepError, sweep
from ._traffic import ATTACKS, CHUNK_USERS, run_attacks
from .validate import (
    SIM_PACKETS,
    MeasuredDataError,
    load_measured,
    simulate_one_way,
    validate,
)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {text!r}")
    return n


def _assignment(text: str) -> tuple[str, Any]:
    """``section.field=value``; the value is read as a TOML literal, else taken as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"want FIELD=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="phantom-sim",
        description="Simulate Phantom Net voice calls: latency envelope and traffic analysis.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, out: bool = True) -> None:
        p.add_argument("--scenario", required=True, help="scenario TOML file")
        p.add_argument("--seed", type=int, help="override the scenario's seed")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            type=_assignment,
            metavar="FIELD=VALUE",
            help="override one field, e.g. mixing.path=call or users.n_users=5000",
        )
        if out:
            p.add_argument("--out", type=Path, default=Path("out"), help="output directory")

    p = sub.add_parser("run", help="latency envelope of one scenario")
    common(p)
    p = sub.add_parser("sweep", help="sweep delay mean, hops and frames per packet")
    common(p)
    p.add_argument("--delay-mean-ms", type=_floats, help="e.g. 5,10,20,40")
    p.add_argument("--hops", type=_ints, help="e.g. 3,4,5")
    p.add_argument("--frames-per-packet", type=_ints, help="e.g. 1,2,3 (slot = frames x 20 ms)")
    p.add_argument("--downlink-speedup", type=_floats, help="e.g. 1,1.5,2 (default: scenario)")
    p.add_argument("--max-p99-ms", type=float, default=MAX_P99_MS, help="feasible p99 bound")
    p.add_argument("--max-loss", type=float, default=MAX_LOSS, help="feasible total loss")
    p.add_argument("--workers", type=_positive_int, help="local processes (default: cores)")
    p.add_argument(
        "--dask-scheduler", metavar="ADDR", help="run on a Dask cluster, tcp://host:port"
    )
    p = sub.add_parser("attack", help="traffic analysis: design against baseline")
    common(p)
    p.add_argument("--attacks", help=f"comma-separated subset of {','.join(ATTACKS)}")
    p = sub.add_parser("validate", help="compare measured one-way latencies with the model")
    common(p)
    p.add_argument("--measured", required=True, type=Path, help="JSON list of seconds")
    p.add_argument("--ks-tolerance", type=float, default=0.1)
    p.add_argument("--rel-tolerance", type=float, default=0.15)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``phantom-sim``; returns the process exit code."""
    ap = _parser()
    args = ap.parse_args(argv)
    try:
        sc = load_scenario(args.scenario)
        if args.set:
            sc = sc.replace(**dict(args.set))
        if args.seed is not None:
            sc = sc.replace(seed=args.seed)
        return _COMMANDS[args.command](sc, args)
    except (ScenarioError, MeasuredDataError, SweepError) as exc:
        ap.exit(2, f"phantom-sim: error: {exc}\n")
    return 2  # pragma: no cover - ap.exit raises


def _run(sc: Any, args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    res = run_latency(sc).to_dict()
    out: Path = args.out
    write_json(out / "results.json", res)
    write_csv(out / "late_loss.csv", res["late_loss_curve"])
    write_csv(
        out / "percentiles.csv",
        [
            {"metric": k, **v}
            for k, v in (
                ("one_way_ms", res["one_way_ms"]),
                ("mouth_to_ear_ms", res["mouth_to_ear_ms"]),
            )
        ],
    )
    plot_latency(out, res)
    m = res["mouth_to_ear_ms"]
    print(
        f"{sc.name}: {res['packets']} packets, mouth-to-ear p50 {m['p50']:.0f} ms "
        f"p99 {m['p99']:.0f} ms, loss {100 * res['total_loss']:.2f}%, R {res['r']:.1f}, "
        f"MOS {res['mos']:.2f} ({time.perf_counter() - t0:.1f} s) -> {out}"
    )
    return 0


def _sweep(sc: Any, args: argparse.Namespace) -> int:
    grid = dict(DEFAULT_GRID)
    for key, val in (
        ("mixing.delay_mean_ms", args.delay_mean_ms),
        ("network.hops", args.hops),
        ("voice.frames_per_packet", args.frames_per_packet),
        ("voice.downlink_speedup", args.downlink_speedup),
    ):
        if val:
            grid[key] = val
    total = 1
    for v in grid.values():
        total *= len(v)
    t0 = time.perf_counter()
    with progress("sweep", total) as tick:
        rep = sweep(
            sc,
            grid,
            workers=args.workers,
            dask_scheduler=args.dask_scheduler,
            max_p99_ms=args.max_p99_ms,
            max_loss=args.max_loss,
            tick=tick,
        ).to_dict()
    write_json(args.out / "sweep.json", rep)
    write_csv(args.out / "sweep.csv", rep["points"])
    plot_sweep(args.out, rep)
    best = rep["recommended"]
    took = time.perf_counter() - t0
    if best is None:
        print(f"{len(rep['points'])} points, none meets the criteria ({took:.1f} s)")
        return 1
    print(f"{len(rep['points'])} points ({took:.1f} s); recommended: {json.dumps(best)}")
    return 0


def _attack(sc: Any, args: argparse.Namespace) -> int:
    names = [a for a in args.attacks.split(",") if a] if args.attacks else None
    if names:
        bad = [a for a in names if a not in ATTACKS]
        if bad:
            raise ScenarioError(f"--attacks: unknown {bad}; want some of {sorted(ATTACKS)}")
    t0 = time.perf_counter()
    chunks = -(-sc.users.n_users // CHUNK_USERS)
    passes = 4 if names is None else len(names)
    with progress("attacks", 2 * chunks * passes) as tick:
        rep = run_attacks(sc, names, tick=tick).to_dict()
    took = time.perf_counter() - t0
    write_json(args.out / "attacks.json", rep)
    rows = [
        {"design": d, "attack": a, **m} for d, res in rep["designs"].items() for a, m in res.items()
    ]
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("design", "attack"), k))
    write_csv(args.out / "attacks.csv", [{c: r.get(c, "") for c in cols} for r in rows])
    write_json(args.out / "timing.json", {"elapsed_s": round(took, 2)})
    plot_attacks(args.out, rep)
    for d, res in rep["designs"].items():
        line = ", ".join(f"{a} top1={m['top1']:.3f}" for a, m in res.items())
        print(f"{d}: {line}")
    print(f"{rep['users']} users, {rep['calls']} calls in {took:.1f} s -> {args.out}")
    return 0


def _validate(sc: Any, args: argparse.Namespace) -> int:
    measured = load_measured(args.measured)
    res = validate(
        measured,
        sc,
        ks_tolerance=args.ks_tolerance,
        rel_tolerance=args.rel_tolerance,
    ).to_dict()
    write_json(args.out / "validation.json", res)
    write_csv(
        args.out / "validation.csv",
        [{"percentile": p, **row} for p, row in res["percentiles_ms"].items()],
    )
    plot_validation(args.out, measured, simulate_one_way(sc, SIM_PACKETS), res["ks_distance"])
    for p, row in res["percentiles_ms"].items():
        print(f"{p:>5}: measured {row['measured']:8.1f} ms  simulated {row['simulated']:8.1f} ms")
    verdict = "PASS" if res["passed"] else "FAIL"
    print(f"KS distance {res['ks_distance']:.3f} (tolerance {res['ks_tolerance']}): {verdict}")
    return 0 if res["passed"] else 1


_COMMANDS = {"run": _run, "sweep": _sweep, "attack": _attack, "validate": _validate}

if __name__ == "__main__":
    sys.exit(main())
