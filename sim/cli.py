"""``phantom-sim``: run a latency scenario, sweep its parameters, attack it, validate it.

    phantom-sim run --scenario scenarios/voice.toml --out out/voice
    phantom-sim sweep --scenario scenarios/voice.toml --out out/sweep --workers 2
    phantom-sim attack --scenario scenarios/traffic-small.toml --out out/attack
    phantom-sim policy --scenario scenarios/policy-small.toml --policies scenarios/policies.toml
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

from overlay import VERSION, finite_number, whole_number

from ._latency import run_latency
from ._output import (
    plot_attacks,
    plot_latency,
    plot_policies,
    plot_sweep,
    plot_validation,
    progress,
    write_csv,
    write_json,
)
from ._policy import load_policies, measure_policies
from ._scenario import ScenarioError, load_scenario
from ._sweep import DEFAULT_GRID, MAX_LOSS, MAX_P99_MS, SweepError, sweep
from ._traffic import ATTACKS, run_attacks
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
    ap.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
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
    p.add_argument(
        "--workers", type=whole_number(1, verb="want"), help="local processes (default: cores)"
    )
    p.add_argument(
        "--dask-scheduler", metavar="ADDR", help="run on a Dask cluster, tcp://host:port"
    )
    p = sub.add_parser("attack", help="traffic analysis: design against baseline")
    common(p)
    p.add_argument("--attacks", help=f"comma-separated subset of {','.join(ATTACKS)}")
    p = sub.add_parser(
        "policy", help="client policies: every attack, data per day, reachability, over seeds"
    )
    common(p)
    p.add_argument(
        "--policies",
        type=Path,
        default=Path("scenarios/policies.toml"),
        help="TOML file of [policies.NAME] tables of dotted fields "
        "(default: scenarios/policies.toml)",
    )
    p.add_argument(
        "--seeds", type=_ints, help="e.g. 1,2,3,4,5 (default: --seed if given, else 1..5)"
    )
    p.add_argument("--only", help="comma-separated subset of the file's policy names")
    p.add_argument("--attacks", help=f"comma-separated subset of {','.join(ATTACKS)}")
    p = sub.add_parser("validate", help="compare measured one-way latencies with the model")
    common(p)
    p.add_argument(
        "--measured",
        required=True,
        type=Path,
        help='JSON list of one-way latencies in seconds, or an object with "one_way_s" '
        "(phantom-testnet probe --out)",
    )
    p.add_argument(
        "--ks-tolerance",
        type=finite_number(0, 1, what="a KS distance", verb="want"),
        default=0.1,
        help="largest KS distance (CDF gap, 0..1) that passes (default: 0.1)",
    )
    p.add_argument(
        "--rel-tolerance",
        type=finite_number(0, what="a relative gap", verb="want"),
        default=0.15,
        help="largest relative gap (>= 0) at p50, p90, p95 and p99 that passes (default: 0.15)",
    )
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
    passes = len(ATTACKS) if names is None else len(names)
    with progress("attacks", 2 * sc.users.n_users * passes) as tick:
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


def _policy(sc: Any, args: argparse.Namespace) -> int:
    policies = load_policies(args.policies)
    if args.only:
        want = [p for p in args.only.split(",") if p]
        bad = [p for p in want if p not in policies]
        if bad:
            raise ScenarioError(f"--only: unknown {bad}; the file has {sorted(policies)}")
        policies = {p: policies[p] for p in want}
    if args.seeds is None:
        args.seeds = [args.seed] if args.seed is not None else [1, 2, 3, 4, 5]
    if not args.seeds:
        raise ScenarioError("--seeds: want at least one seed")
    names = [a for a in args.attacks.split(",") if a] if args.attacks else list(ATTACKS)
    bad = [a for a in names if a not in ATTACKS]
    if bad:
        raise ScenarioError(f"--attacks: unknown {bad}; want some of {sorted(ATTACKS)}")
    t0 = time.perf_counter()
    # The bar counts users walked: both window passes, then one pass per attack that walks
    # the users again (timing, intersection) or scores them all at once (session_edges).
    again = ("timing_likelihood", "intersection", "session_edges")
    per_run = sc.users.n_users * (2 + sum(a in again for a in names))
    with progress("policies", len(policies) * len(args.seeds) * per_run) as tick:
        rep = measure_policies(sc, policies, args.seeds, names, tick=tick)
    took = time.perf_counter() - t0
    out: Path = args.out
    write_json(out / "policy.json", rep)  # same seeds, same bytes: the time goes elsewhere
    write_json(out / "timing.json", {"elapsed_s": round(took, 1)})
    rows = _policy_rows(rep)
    write_csv(out / "policy.csv", rows)
    plot_policies(out, rep)
    short = {"flow_correlation": "flow", "timing_likelihood": "timing", "session_edges": "edges"}
    short |= {"intersection": "inters", "compromised_hops": "hops"}
    head = ["policy"] + [f"{short.get(a, a)} top1" for a in names]
    head += ["up MB/d", "down MB/d", "reach", "p99 ms", "goal"]
    width = max(len(r["policy"]) for r in rows)
    print(f"{head[0]:<{width}}  " + "  ".join(f"{h:>11}" for h in head[1:]))
    for r in rows:
        vals = [r[f"{a}_top1"] for a in names]
        vals += [r["up_mb_day"], r["down_mb_day"], r["reachability"], r["m2e_p99_ms"]]
        cells = [_cell(v) for v in vals] + ["met" if r["goal_met"] else "-"]
        print(f"{r['policy']:<{width}}  " + "  ".join(f"{c:>11}" for c in cells))
    rec = rep["recommended"]
    print(
        f"goal top-1 <= {rep['goal_top1']:.6f}; desktop: {rec['desktop']}; mobile: "
        f"{rec['mobile']}; {len(policies)} policies x {len(args.seeds)} seeds in {took:.0f} s"
        f" -> {out}"
    )
    return 0


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _policy_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """One CSV row per policy: means and 95 % half-widths of every metric."""
    rows = []
    for p in rep["policies"]:
        row: dict[str, Any] = {"policy": p["policy"]}
        for a, m in p["attacks"].items():
            for k in ("top1", "mean_rank"):
                row[f"{a}_{k}"] = m[k]["mean"]
                row[f"{a}_{k}_ci95"] = m[k]["ci95"]
        row["up_mb_day"] = p["data_per_day"]["up_mb"]
        row["down_mb_day"] = p["data_per_day"]["down_mb"]
        row["reachability"] = p["reachability"]["mean"]
        row["reachability_ci95"] = p["reachability"]["ci95"]
        row["m2e_p99_ms"] = p["mouth_to_ear_p99_ms"]["mean"]
        row["m2e_p99_ms_ci95"] = p["mouth_to_ear_p99_ms"]["ci95"]
        row["goal_met"] = p["goal_met"]
        rows.append(row)
    return rows


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


_COMMANDS = {
    "run": _run,
    "sweep": _sweep,
    "attack": _attack,
    "policy": _policy,
    "validate": _validate,
}

if __name__ == "__main__":
    sys.exit(main())
