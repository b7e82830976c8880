"""Client policies in the simulator: each policy's effect against a closed form or a small
exact case, the day model of data, the measurement over seeds and the ``policy`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from overlay import VOICE, FrameType, LinkCodec
from sim import ScenarioError, data_per_day, load_policies, load_scenario, run_attacks, run_policy
from sim._policy import mean_ci, measure_policies, recommend
from sim._traffic import Observations, make_population, observe, prepare, route_outcome
from sim.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _sc(**policy: Any) -> dict[str, Any]:
    return {
        "seed": 4,
        "voice": {"frames_per_packet": 2, "downlink_speedup": 2.0},
        "users": {
            "n_users": 120,
            "n_calls": 12,
            "call_s": 10.0,
            "duration_s": 60.0,
            "mean_online_s": 40.0,
            "mean_offline_s": 20.0,
        },
        "adversary": {"targets": 12},
        "policy": policy,
    }


def _obs(data: dict[str, Any]) -> Observations:
    sc = load_scenario(data)
    pop, st, sender, receiver, targets, ss = prepare(sc)
    return observe(sc, pop, st, sender, receiver, targets, ss.spawn(2)[0])[0]


@pytest.mark.parametrize("attack", ["flow_correlation", "session_edges"])
def test_always_online_leaves_chance_exactly(attack: str) -> None:
    """Always online at the call rate: every user's windows are the same constant, so every
    score ties: top-1 = 1/(N-1) and mean rank = N/2 exactly."""
    run = run_policy(load_scenario(_sc(schedule="always")), "always", [attack])
    got = run.attacks[attack]
    assert got["top1"] == round(1 / 119, 6)
    assert got["mean_rank"] == 60.0
    assert run.reachability == 1.0


def test_online_only_for_calls_gives_the_partner_away() -> None:
    """Small exact case: online only around calls with a fixed linger, the two ends of a
    call have the same online pattern and nobody else has it; a random linger as long as
    the run hides it."""
    data = _sc(schedule="calls", linger="constant", linger_before_s=1.0, linger_after_s=1.7)
    fixed = run_policy(load_scenario(data), "fixed", ["flow_correlation"])
    assert fixed.attacks["flow_correlation"]["top1"] >= 0.9
    assert fixed.reachability == 0.0  # nobody is online when a call rings
    data = _sc(schedule="calls", linger_before_s=600.0, linger_after_s=600.0)
    long = run_policy(load_scenario(data), "long", ["flow_correlation"])
    assert long.attacks["flow_correlation"]["top1"] < 0.3


@pytest.mark.parametrize(
    ("policy", "want"),
    [
        ({"schedule": "always"}, 1.0),
        ({"schedule": "calls"}, 0.0),
        ({"schedule": "churn"}, 40.0 / 60.0),
        ({"schedule": "daily", "daily_online_h": 6.0}, 0.25),
    ],
)
def test_reachability_matches_the_schedule(policy: dict[str, Any], want: float) -> None:
    """The share of calls that find the callee online: 1, 0, on/(on+off), hours/24."""
    data = _sc(**policy)
    data["users"] |= {"n_users": 20000, "n_calls": 10000, "duration_s": 20.0}
    pop = make_population(load_scenario(data), np.random.default_rng(5))
    got = float(pop.reachable.mean())
    assert abs(got - want) <= 4 * math.sqrt(want * (1 - want) / 10000) + 1e-12


def test_idle_rate_sends_one_packet_per_factor_slots() -> None:
    """An idle client's uplink carries the slots k with k % factor == 0 and nothing else;
    a client in a call carries every slot through the call."""
    f = 10
    obs = _obs(_sc(schedule="always", idle_slot_factor=f))
    pop = obs.pop
    busy = set(pop.caller.tolist()) | set(pop.callee.tolist())
    idle = np.array([u for u in range(pop.n_users) if u not in busy][:20])
    slot = obs.sc.voice.slot_ms / 1000.0
    k = np.arange(int(np.ceil(60.0 / slot)) + 1)
    for i, u in enumerate(idle):
        t = pop.up_phase_s[u] + k * slot
        want = int(((t < 60.0) & (k % f == 0)).sum())
        assert obs.rows("up", idle)[i].sum() == want
    caller = pop.caller[:1]
    start = pop.call_start_s[0, 0]
    row = obs.rows("up", caller)[0]
    b0, b1 = int(np.ceil(start / obs.bin_s)), int(np.floor((start + 10.0) / obs.bin_s))
    assert row[b0:b1].sum() == pytest.approx((b1 - b0) * obs.bin_s / slot, abs=1)


def test_data_per_day_closed_form() -> None:
    """Always at the call rate: one UPLINK datagram per slot and one DOWNLINK datagram per
    downlink slot, all day (1.447 GB and 1.966 GB for 40 ms and 20 ms); an idle rate of 1/f
    with no calls divides both by f; a daily window of h hours scales by h/24."""
    codec = LinkCodec(VOICE)
    up = codec.frame_len(FrameType.UPLINK) / 0.04 * 86400 / 1e6
    down = codec.frame_len(FrameType.DOWNLINK) / 0.02 * 86400 / 1e6
    got = data_per_day(load_scenario(_sc(schedule="always")))
    assert got["up_mb"] == pytest.approx(up, abs=1e-3)
    assert got["down_mb"] == pytest.approx(down, abs=1e-3)
    idle = _sc(schedule="always", idle_slot_factor=8, budget_calls_per_day=0.0)
    assert data_per_day(load_scenario(idle))["up_mb"] == pytest.approx(up / 8, abs=1e-3)
    daily = _sc(schedule="daily", daily_online_h=3.0, budget_calls_per_day=0.0)
    assert data_per_day(load_scenario(daily))["down_mb"] == pytest.approx(down / 8, abs=1e-3)


def test_decoys_are_poisson() -> None:
    """Decoy periods start as a Poisson process: per user, rate x (run + 4 decoy lengths)."""
    data = _sc(schedule="always", idle_slot_factor=5, decoys_per_hour=60.0)
    data["users"] |= {"n_users": 4000, "n_calls": 1}
    sc = load_scenario(data)
    pop = make_population(sc, np.random.default_rng(2))
    assert pop.high_user is not None
    decoys = len(pop.high_user) - 2  # the one call's two ends
    want = 4000 * 60.0 / 3600.0 * (60.0 + 4 * 10.0)
    assert abs(decoys - want) < 4 * math.sqrt(want)


def test_route_failover_under_selective_dos_matches_closed_form() -> None:
    """Per route: all bad with q = 1/8, part bad with s = 6/8 (1 of 2 mixes per layer bad).
    With t tries under selective DoS: P(linked) = q (1 - s^t) / (1 - s), P(failed) = s^t."""
    bad = np.array([[True, False]] * 3)
    n = 200_000
    q, s = 1 / 8, 6 / 8
    for tries in (1, 2, 4):
        linked, failed = route_outcome(np.random.default_rng(tries), bad, n, tries)
        want = q * (1 - s**tries) / (1 - s)
        assert abs(linked.mean() - want) < 5 * math.sqrt(want * (1 - want) / n)
        want_f = s**tries if tries > 1 else 0.0
        assert abs(failed.mean() - want_f) < 5 * math.sqrt(max(want_f * (1 - want_f), 1e-9) / n)


@pytest.mark.parametrize(("path", "routes"), [("call", 6), ("epoch", 2)])
def test_epoch_routes_share_one_route_per_sender(path: str, routes: int) -> None:
    """Three calls a pair inside one epoch: per-call routes give 6 routes a pair (3 calls,
    2 directions), epoch routes 2 (one per sender); linked = 1 - (7/8)^routes."""
    data = {
        "seed": 9,
        "network": {"gateways": 1, "mixes_per_layer": 2},
        "mixing": {"path": path, "epoch_s": 1e9},
        "users": {
            "n_users": 6000,
            "n_calls": 3000,
            "calls_per_pair": 3,
            "call_s": 2.0,
            "duration_s": 9.0,
        },
        "adversary": {"targets": 3000, "compromised_fraction": 0.5},
    }
    got = run_attacks(load_scenario(data), ["compromised_hops"]).designs["design"]
    linked = got["compromised_hops"]["linked"]
    want = 1 - (7 / 8) ** routes
    assert abs(linked - want) < 4 * math.sqrt(want * (1 - want) / 3000)


def test_policy_run_is_reproducible_and_equals_the_attack_design() -> None:
    sc = load_scenario(_sc(linger_before_s=5.0, linger_after_s=5.0))
    names = ["flow_correlation", "intersection"]
    a = run_policy(sc, "x", names)
    assert a == run_policy(sc, "x", names)
    assert a.attacks == run_attacks(sc, names).designs["design"]


def test_mean_ci_is_the_student_t_interval() -> None:
    x = [0.1, 0.3, 0.2, 0.4]
    got = mean_ci(x)
    half = stats.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert got["mean"] == pytest.approx(0.25) and got["ci95"] == pytest.approx(half, abs=1e-6)
    assert mean_ci([0.5]) == {"mean": 0.5, "ci95": 0.0, "n": 1}


def _row(name: str, top1: float, mb: float, reach: float) -> dict[str, Any]:
    m = {"top1": {"mean": top1}}
    return {
        "policy": name,
        "attacks": {"flow_correlation": m, "timing_likelihood": m},
        "data_per_day": {"total_mb": mb},
        "reachability": {"mean": reach},
        "goal_met": top1 <= 0.001,
    }


def test_recommend_picks_the_goal_then_reachability_then_data() -> None:
    rows = [
        _row("always", 0.0005, 3400.0, 1.0),
        _row("daily", 0.0005, 400.0, 0.97),
        _row("calls-only", 0.0002, 80.0, 0.0),  # nobody can reach it: never recommended
        _row("idle", 0.004, 450.0, 1.0),
        _row("leaky", 0.03, 300.0, 1.0),
    ]
    rec = recommend(rows, 0.001)
    assert rec["desktop"] == {"policy": "always", "goal_met": True}
    assert rec["mobile"] == {"policy": "daily", "goal_met": True}
    rec = recommend(rows[2:] + rows[:1], 0.001)
    assert rec["mobile"] == {"policy": "idle", "goal_met": False, "top1": 0.004}


def test_measure_policies_reports_every_metric_with_an_interval() -> None:
    base = load_scenario(_sc())
    rep = measure_policies(
        base,
        {"always": {"policy.schedule": "always"}, "calls": {"policy.schedule": "calls"}},
        [1, 2],
        ["flow_correlation", "timing_likelihood", "compromised_hops"],
        latency_calls=4,
    )
    assert [p["policy"] for p in rep["policies"]] == ["always", "calls"]
    for p in rep["policies"]:
        assert set(p["attacks"]["flow_correlation"]["top1"]) == {"mean", "ci95", "n"}
        assert p["mouth_to_ear_p99_ms"]["mean"] > 100
    always, calls = rep["policies"]
    assert always["reachability"]["mean"] == 1.0 and calls["reachability"]["mean"] == 0.0
    assert always["data_per_day"]["total_mb"] > calls["data_per_day"]["total_mb"]


def test_policy_command_writes_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scen = tmp_path / "base.toml"
    scen.write_text(
        "[users]\nn_users = 60\nn_calls = 6\ncall_s = 5.0\nduration_s = 20.0\n"
        "[adversary]\ntargets = 6\n"
    )
    pols = tmp_path / "p.toml"
    pols.write_text('[policies.a]\n"policy.schedule" = "always"\n[policies.b]\n')
    argv = ["policy", "--scenario", str(scen), "--policies", str(pols), "--seeds", "1,2"]
    argv += ["--attacks", "flow_correlation,timing_likelihood", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "flow top1" in out and "desktop" in out
    rep = json.loads((tmp_path / "o" / "policy.json").read_text())
    assert rep["seeds"] == [1, 2] and len(rep["policies"]) == 2
    assert (tmp_path / "o" / "policy.png").stat().st_size > 10_000
    assert (tmp_path / "o" / "policy.csv").read_text().startswith("policy,")
    assert main([*argv[:-1], str(tmp_path / "again")]) == 0  # same seeds, same bytes
    again = (tmp_path / "again" / "policy.json").read_bytes()
    assert again == (tmp_path / "o" / "policy.json").read_bytes()
    with pytest.raises(SystemExit):
        main([*argv[:-2], "--only", "zzz", "--out", str(tmp_path / "o")])
    assert "--only: unknown ['zzz']" in capsys.readouterr().err


def test_bad_policy_fields_are_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="policy.schedule"):
        load_scenario({"policy": {"schedule": "weekends"}})
    with pytest.raises(ScenarioError, match="policy.idle_slot_factor"):
        load_scenario({"policy": {"idle_slot_factor": 0}})
    with pytest.raises(ScenarioError, match="mixing.path"):
        load_scenario({"mixing": {"path": "hop"}})
    bad = tmp_path / "p.toml"
    bad.write_text("x = 1\n")
    with pytest.raises(ScenarioError, match="policies.NAME"):
        load_policies(bad)


def test_shipped_policies_load() -> None:
    base = load_scenario(ROOT / "scenarios" / "policy-small.toml")
    for fields in load_policies(ROOT / "scenarios" / "policies.toml").values():
        base.replace(**fields)
