"""Client policies: what a client does to stay hidden, what it costs, measured over seeds.

    >>> from sim import load_scenario, data_per_day
    >>> sc = load_scenario({"voice": {"frames_per_packet": 2, "downlink_speedup": 1.5},
    ...                     "policy": {"schedule": "always"}})
    >>> round(data_per_day(sc)["up_mb"]), round(data_per_day(sc)["down_mb"])
    (1378, 1371)

A policy is a set of scenario overrides (``policy.*``, ``mixing.path``, ...) applied to one
base scenario. ``measure_policies`` runs every policy on the same seeds (the design only: the
baseline without cover does not depend on the policy) and reports, per policy, the mean over
seeds and a 95 % Student-t confidence interval of each attack's top-1 and mean rank, the
reachability (share of calls whose callee is online by its schedule when the call rings) and
the mouth-to-ear p99; data per day each way comes from the day model of ``data_per_day``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from overlay import FrameType, LinkCodec

from ._latency import run_latency
from ._scenario import DAY_S, Scenario, ScenarioError
from ._traffic import ATTACKS, check_attacks, observe, prepare

GOAL_FACTOR = 1.5  # goal: flow-correlation and timing top-1 at most 1.5 / N (the issue)
GOAL_ATTACKS = ("flow_correlation", "timing_likelihood")
MOBILE_BUDGET_MB = 500.0  # data per day, both ways, of the mobile profile
MIN_REACHABILITY = 0.95  # a profile must let calls find the callee online (DESIGN.md 10)
MB = 1e6  # bytes


def data_per_day(sc: Scenario) -> dict[str, float]:
    """Bytes a client sends and receives per day under ``sc.policy``, in MB (10^6 bytes).

    Each uplink slot carries one UPLINK datagram and each downlink slot one DOWNLINK
    datagram of the scenario's geometry (docs/wire-link.md; UDP payload, no IP header).
    The day has ``budget_calls_per_day`` calls of ``budget_call_s``; the client is online for
    its schedule's share of the day (always 1, daily ``daily_online_h`` / 24, churn
    on / (on + off), calls 0) and, outside it, around each call and decoy as long as the
    policy keeps it online. With an idle rate, only calls with their lead and lag and the
    decoys run at the call rate. Returns ``up_mb``, ``down_mb``, ``total_mb``,
    ``online_h`` and ``call_rate_h`` (hours a day at the call rate).
    """
    pol, u, v = sc.policy, sc.users, sc.voice
    codec = LinkCodec(sc.network.geometry)
    slot = v.slot_ms / 1000.0
    up_rate = codec.frame_len(FrameType.UPLINK) / slot  # bytes per second at the call rate
    down_rate = codec.frame_len(FrameType.DOWNLINK) / (slot / v.downlink_speedup)
    if pol.schedule == "always" or (pol.schedule == "churn" and u.mean_online_s == 0):
        base = 1.0
    elif pol.schedule == "churn":
        base = u.mean_online_s / (u.mean_online_s + u.mean_offline_s)
    elif pol.schedule == "daily":
        base = pol.daily_online_h / 24.0
    else:
        base = 0.0
    calls = pol.budget_calls_per_day
    decoys = pol.decoys_per_hour * 24.0 if pol.idle_slot_factor > 1 else 0.0
    rate_span = pol.budget_call_s + pol.rate_lead_s + pol.rate_lag_s
    online_span = pol.budget_call_s + pol.linger_before_s + pol.linger_after_s
    if pol.idle_slot_factor > 1:
        online_span = max(online_span, rate_span)
    online = min(DAY_S, base * DAY_S + (1 - base) * (calls * online_span + decoys * rate_span))
    if pol.idle_slot_factor > 1:
        high = min(online, (calls + decoys) * rate_span)
    else:
        high = online
    idle = online - high
    f = pol.idle_slot_factor
    up = high * up_rate + idle * up_rate / f
    down = high * down_rate + idle * down_rate / f
    return {
        "up_mb": round(up / MB, 3),
        "down_mb": round(down / MB, 3),
        "total_mb": round((up + down) / MB, 3),
        "online_h": round(online / 3600.0, 3),
        "call_rate_h": round(high / 3600.0, 3),
    }


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean of per-seed values and the half-width of its Student-t confidence interval
    (0 with one value): ``{"mean", "ci95", "n"}``."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    half = 0.0
    if n > 1:
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"mean": round(float(x.mean()), 6), "ci95": round(half, 6), "n": n}


@dataclass(frozen=True, slots=True)
class PolicyRun:
    """One policy on one seed: design-side attack metrics, reachability, call failures."""

    policy: str
    seed: int
    attacks: dict[str, dict[str, float]]
    reachability: float
    packet_hops: int


def run_policy(
    sc: Scenario,
    name: str,
    attacks: list[str] | None = None,
    *,
    tick: Callable[[int], None] | None = None,
) -> PolicyRun:
    """Attack our design (cover on) under ``sc``'s policy; the population, calls and design
    draws are those of ``run_attacks`` for the same scenario, so its design figures are the
    same numbers."""
    names = list(ATTACKS) if attacks is None else attacks
    check_attacks(names)
    pop, st, sender, receiver, targets, ss = prepare(sc)
    obs, hops = observe(sc, pop, st, sender, receiver, targets, ss.spawn(2)[0], tick)
    return PolicyRun(
        policy=name,
        seed=sc.seed,
        attacks={n: ATTACKS[n](obs) for n in names},
        reachability=round(float(pop.reachable.mean()), 6),
        packet_hops=hops,
    )


def load_policies(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a policy file: ``[policies.NAME]`` tables of dotted scenario fields, e.g.
    ``"policy.schedule" = "always"``; raise ScenarioError naming a bad entry."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ScenarioError(f"policy file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"policy file {str(path)!r}: not valid TOML: {exc}") from None
    table = raw.get("policies")
    if set(raw) - {"policies"} or not isinstance(table, Mapping) or not table:
        raise ScenarioError(f"policy file {str(path)!r}: want only [policies.NAME] tables")
    out: dict[str, dict[str, Any]] = {}
    for name, fields in table.items():
        if not isinstance(fields, Mapping):
            raise ScenarioError(f"policies.{name}: want a table of dotted fields")
        out[name] = dict(fields)
    return out


def _latency_key(sc: Scenario) -> str:
    d = sc.to_dict()
    return repr((d["seed"], d["network"], d["mixing"]["delay_mean_ms"], d["voice"], d["talk"]))


def measure_policies(
    base: Scenario,
    policies: Mapping[str, Mapping[str, Any]],
    seeds: list[int],
    attacks: list[str] | None = None,
    *,
    latency_calls: int = 40,
    tick: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Every policy on every seed; returns a JSON-able dict with, per policy, the settings,
    per-seed runs and the mean and 95 % interval of every metric, plus the goal and the two
    recommended profiles (``recommend``).

    mouth-to-ear p99 comes from ``run_latency`` on ``latency_calls`` calls of the policy's
    scenario per seed (no policy field enters the latency model, so equal settings share
    one run). Raises ScenarioError for a bad override or ValueError for an unknown attack.
    """
    names = list(ATTACKS) if attacks is None else attacks
    check_attacks(names)
    n = base.users.n_users
    p99_cache: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for pname, fields in policies.items():
        sc0 = base.replace(**dict(fields))
        runs: list[PolicyRun] = []
        p99: list[float] = []
        for seed in seeds:
            sc = sc0.replace(seed=seed)
            runs.append(run_policy(sc, pname, names, tick=tick))
            key = _latency_key(sc)
            if key not in p99_cache:
                lat = sc.replace(**{"users.n_calls": min(latency_calls, n // 2)})
                p99_cache[key] = run_latency(lat).mouth_to_ear_ms["p99"]
            p99.append(p99_cache[key])
        metrics: dict[str, Any] = {}
        for a in names:
            keys = [k for k in runs[0].attacks[a] if k not in ("chance_top1",)]
            metrics[a] = {k: mean_ci([r.attacks[a][k] for r in runs]) for k in keys}
        rows.append(
            {
                "policy": pname,
                "settings": dict(fields),
                "seeds": list(seeds),
                "attacks": metrics,
                "reachability": mean_ci([r.reachability for r in runs]),
                "mouth_to_ear_p99_ms": mean_ci(p99),
                "data_per_day": data_per_day(sc0),
                "runs": [asdict(r) for r in runs],
            }
        )
    goal = GOAL_FACTOR / n
    for row in rows:
        row["goal_met"] = all(
            row["attacks"][a]["top1"]["mean"] <= goal for a in GOAL_ATTACKS if a in names
        )
    return {
        "scenario": base.name,
        "users": n,
        "seeds": list(seeds),
        "goal_top1": round(goal, 8),
        "chance_top1": round(1.0 / (n - 1), 8),
        "mobile_budget_mb": MOBILE_BUDGET_MB,
        "policies": rows,
        "recommended": recommend(rows, goal),
    }


def _leak(row: Mapping[str, Any]) -> float:
    """The larger goal-attack top-1 of a policy (mean over seeds)."""
    return float(
        max(row["attacks"][a]["top1"]["mean"] for a in GOAL_ATTACKS if a in row["attacks"])
    )


def recommend(rows: list[dict[str, Any]], goal: float) -> dict[str, Any]:
    """The two profiles, among policies whose reachability is at least ``MIN_REACHABILITY``.
    Desktop (no data limit): among those that meet the goal, the best reachability, then
    the least data. Mobile (``MOBILE_BUDGET_MB`` a day both ways): the same among those
    within the budget; when none meets the goal there, the one with the smallest
    goal-attack top-1 ("best point"), then the best reachability."""

    def pick(cands: list[dict[str, Any]]) -> dict[str, Any] | None:
        ok = [r for r in cands if r["goal_met"]]
        if ok:
            best = min(
                ok, key=lambda r: (-r["reachability"]["mean"], r["data_per_day"]["total_mb"])
            )
            return {"policy": best["policy"], "goal_met": True}
        if not cands:
            return None
        best = min(cands, key=lambda r: (_leak(r), -r["reachability"]["mean"]))
        return {"policy": best["policy"], "goal_met": False, "top1": _leak(best)}

    usable = [r for r in rows if r["reachability"]["mean"] >= MIN_REACHABILITY]
    mobile = [r for r in usable if r["data_per_day"]["total_mb"] <= MOBILE_BUDGET_MB]
    return {"desktop": pick(usable), "mobile": pick(mobile)}
