"""Traffic analysis: anonymity metrics against closed forms, and the attacks on a small
population, design against baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim import (
    ATTACKS,
    Observations,
    attack,
    degree_of_anonymity,
    entropy_bits,
    load_scenario,
    run_attacks,
)
from sim._traffic import entropy_from_sums, rank_of_truth


@pytest.mark.parametrize("n", [1, 2, 10, 1000, 100_000])
def test_entropy_of_uniform_set_is_log2_n(n: int) -> None:
    assert entropy_bits(np.full(n, 3.0)) == pytest.approx(math.log2(n), abs=1e-9)
    assert degree_of_anonymity(entropy_bits(np.ones(n)), n) == pytest.approx(1.0 if n > 1 else 0.0)


def test_entropy_of_known_sender_is_zero_and_blocks_add_up() -> None:
    assert entropy_bits(np.array([0.0, 5.0, 0.0])) == 0.0
    w = np.random.default_rng(1).random(1000)
    p = w / w.sum()
    direct = -(p * np.log2(p)).sum()
    halves = [w[:400], w[400:]]
    total = sum(h.sum() for h in halves)
    wlogw = sum((h * np.log(h)).sum() for h in halves)
    assert entropy_from_sums(np.array([total]), np.array([wlogw]))[0] == pytest.approx(direct)
    assert entropy_bits(w) == pytest.approx(direct)


def test_rank_with_ties() -> None:
    scores = np.array([[5.0, 1.0, 1.0, 1.0], [0.0, 9.0, 3.0, 9.0], [0.0, 2.0, 1.0, 0.0]])
    rank, top1 = rank_of_truth(scores, truth=np.array([1, 3, 1]), exclude=np.array([0, 0, 0]))
    assert rank.tolist() == [2.0, 1.5, 1.0]  # three-way tie, two-way tie, clear first
    assert top1.tolist() == pytest.approx([1 / 3, 0.5, 1.0])


def _small(**adv: object) -> dict[str, object]:
    return {
        "seed": 2,
        "users": {"n_users": 120, "n_calls": 12, "call_s": 20.0, "duration_s": 30.0},
        "adversary": {"targets": 12, **adv},
    }


def test_cover_and_shaping_defeat_the_gpa() -> None:
    rep = run_attacks(load_scenario(_small()))
    d, b = rep.designs["design"], rep.designs["baseline"]
    # Without cover and shaping a global passive adversary finds every partner.
    assert b["flow_correlation"]["top1"] >= 0.9
    assert b["timing_likelihood"]["top1"] >= 0.9
    # With them, and nobody going offline, it does about as well as guessing.
    n = 120
    assert d["flow_correlation"]["top1"] <= 0.2
    assert d["timing_likelihood"]["top1"] <= 0.2
    assert d["flow_correlation"]["mean_rank"] > n / 5
    # Every online user is an equally likely sender of a packet: entropy near log2 N.
    assert d["timing_likelihood"]["degree_of_anonymity"] > 0.97
    assert (
        b["timing_likelihood"]["degree_of_anonymity"]
        < d["timing_likelihood"]["degree_of_anonymity"]
    )
    assert d["intersection"]["candidates"] == n - 1  # all online: nothing to intersect


def test_same_seed_same_report() -> None:
    sc = load_scenario(_small())
    first = run_attacks(sc, ["flow_correlation"]).to_dict()
    assert first == run_attacks(sc, ["flow_correlation"]).to_dict()


def test_churn_shrinks_the_intersection() -> None:
    data = _small()
    data["users"] = {
        "n_users": 200,
        "n_calls": 10,
        "calls_per_pair": 3,
        "call_s": 8.0,
        "duration_s": 30.0,
        "mean_online_s": 10.0,
        "mean_offline_s": 10.0,
    }
    rep = run_attacks(load_scenario(data), ["intersection"])
    got = rep.designs["design"]["intersection"]
    assert got["candidates"] < 199 / 2
    assert got["top1"] > 1 / 199


@pytest.mark.parametrize(("fraction", "linked"), [(0.0, 0.0), (1.0, 1.0)])
def test_compromised_nodes(fraction: float, linked: float) -> None:
    sc = load_scenario(_small(compromised_fraction=fraction))
    rep = run_attacks(sc, ["compromised_hops"])
    for design in ("design", "baseline"):
        assert rep.designs[design]["compromised_hops"]["linked"] == linked


def test_route_per_call_links_less_often_than_per_packet() -> None:
    data = _small(compromised_fraction=0.5)
    data["network"] = {"gateways": 1, "mixes_per_layer": 10}
    data["seed"] = 3
    per_packet = run_attacks(load_scenario(data), ["compromised_hops"])
    data["mixing"] = {"path": "call"}
    per_call = run_attacks(load_scenario(data), ["compromised_hops"])
    a = per_packet.designs["design"]["compromised_hops"]
    b = per_call.designs["design"]["compromised_hops"]
    assert a["both_gateways_compromised"] == b["both_gateways_compromised"] > 0
    assert b["linked"] < a["linked"]


def test_a_registered_attack_runs_on_both_designs() -> None:
    @attack("busiest_downlink")
    def busiest(obs: Observations) -> dict[str, float]:
        down = obs.windows("down").sum(axis=1)
        guess = np.argmax(down)
        return {"top1": float(np.mean(obs.pop.callee[obs.targets] == guess))}

    try:
        rep = run_attacks(load_scenario(_small()), ["busiest_downlink"])
        assert set(rep.designs["design"]) == {"busiest_downlink"}
    finally:
        del ATTACKS["busiest_downlink"]
    with pytest.raises(ValueError, match="want one of"):
        run_attacks(load_scenario(_small()), ["nope"])


@pytest.mark.parametrize(("path", "per_pair_routes"), [("call", 2), ("packet", None)])
def test_route_compromise_matches_closed_form(path: str, per_pair_routes: int | None) -> None:
    """One gateway (compromised), 2 mixes per layer with 1 compromised: a route is all bad
    with probability 1/8. Per-call routes: 2 per call (one each way), so 1 - (7/8)^2."""
    data = {
        "seed": 9,
        "network": {"gateways": 1, "mixes_per_layer": 2},
        "mixing": {"path": path},
        "users": {"n_users": 6000, "n_calls": 3000, "call_s": 5.0, "duration_s": 10.0},
        "adversary": {"targets": 3000, "compromised_fraction": 0.5},
    }
    got = run_attacks(load_scenario(data), ["compromised_hops"]).designs["design"]
    linked = got["compromised_hops"]["linked"]
    if per_pair_routes is None:
        assert linked > 0.99  # about a hundred routes per call: one is all bad
    else:
        want = 1 - (7 / 8) ** per_pair_routes
        assert abs(linked - want) < 3 * math.sqrt(want * (1 - want) / 3000)


def test_churn_is_stationary() -> None:
    """On/off sessions: at any instant a user is online with probability on/(on+off)."""
    from sim._traffic import make_population

    sc = load_scenario(
        {
            "users": {
                "n_users": 20000,
                "n_calls": 1,
                "call_s": 1.0,
                "duration_s": 100.0,
                "mean_online_s": 30.0,
                "mean_offline_s": 10.0,
            }
        }
    )
    pop = make_population(sc, np.random.default_rng(4))
    for t in (0.0, 50.0, 99.0):
        on = (pop.sess_start_s <= t) & (pop.sess_end_s > t)
        frac = len(np.unique(pop.sess_user[on])) / 20000
        assert frac == pytest.approx(0.75, abs=0.02)
