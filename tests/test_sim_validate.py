"""Validation of the latency model against measured samples: here synthetic samples from
a small independent implementation of the documented delay model (docs/research.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sim import Dist, Scenario, load_scenario
from sim.cli import main
from sim.validate import MeasuredDataError, ks_distance, load_measured, validate

SCENARIO = {
    "seed": 4,
    "talk": {"model": "continuous"},
    "users": {"n_users": 400, "n_calls": 150, "call_s": 4.0},
}


def independent_one_way(sc: Scenario, seed: int) -> list[float]:
    """Packet by packet, from the model as written down: a voice packet every slot; wait for
    the sender's next uplink slot; access link; per hop processing + exponential delay, links
    between hops; FIFO downlink at one packet per slot; access link back. Seconds."""
    rng = np.random.default_rng(seed)
    net, v = sc.network, sc.voice
    slot = v.slot_ms / 1000.0
    ser = net.geometry.packet_len * 8 / (net.bandwidth_mbps * 1e6)

    def lognormal(d: Dist) -> float:
        return d.a_ms / 1000.0 * math.exp(d.b_ms * rng.standard_normal())

    out = []
    for _stream in range(2 * sc.users.n_calls):
        up_phase, down_phase = rng.random() * slot, rng.random() * slot
        last = -(10**9)
        exits = []
        for k in range(int(sc.users.call_s / slot)):
            ready = (k + 1) * slot + v.codec_lookahead_ms / 1000.0
            t = up_phase + math.ceil((ready - up_phase) / slot) * slot
            t += lognormal(net.access_delay) + ser
            for hop in range(net.hops):
                if hop:
                    t += lognormal(net.link_delay) + ser
                t += 0.0001 + 0.0001 * rng.random()  # processing, uniform 0.1-0.2 ms
                t += rng.exponential(sc.mixing.delay_mean_ms / 1000.0)
            if rng.random() < 1 - (1 - net.link_loss) ** (net.hops + 1):
                continue
            exits.append((t, ready))
        for t, ready in sorted(exits):
            k = max(math.ceil((t - down_phase) / slot), last + 1)
            last = k
            arrive = down_phase + k * slot + lognormal(net.access_delay) + ser
            out.append(arrive - ready)
    return out


def test_model_matches_an_independent_generator() -> None:
    sc = load_scenario(SCENARIO)
    measured = independent_one_way(sc, seed=11)
    res = validate(measured, sc)
    assert res.passed, res
    assert res.ks_distance < 0.05
    assert set(res.percentiles_ms) == {"p50", "p90", "p95", "p99"}


def test_a_different_network_fails() -> None:
    sc = load_scenario(SCENARIO)
    slower = sc.replace(**{"mixing.delay_mean_ms": 40.0})
    res = validate(independent_one_way(slower, seed=11), sc)
    assert not res.passed
    assert res.ks_distance > 0.3


def test_ks_distance_basics() -> None:
    x = np.arange(100.0)
    assert ks_distance(x, x) == 0.0
    assert ks_distance(x, x + 1000) == 1.0


def test_bad_measured_data(tmp_path: Path) -> None:
    sc = load_scenario(SCENARIO)
    with pytest.raises(MeasuredDataError, match="at least 20"):
        validate([0.3] * 5, sc)
    with pytest.raises(MeasuredDataError, match="finite"):
        validate([0.3] * 30 + [float("nan")], sc)
    p = tmp_path / "m.json"
    p.write_text('{"latency": [1, 2]}')
    with pytest.raises(MeasuredDataError, match="one_way_s"):
        load_measured(p)
    p.write_text("[0.1, true]")
    with pytest.raises(MeasuredDataError, match="list of numbers"):
        load_measured(p)


def test_validate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scen = tmp_path / "s.toml"
    scen.write_text(
        'seed = 4\n[talk]\nmodel = "continuous"\n'
        "[users]\nn_users = 400\nn_calls = 150\ncall_s = 4.0\n"
    )
    sc = load_scenario(scen)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"one_way_s": independent_one_way(sc, seed=5)}))
    assert (
        main(
            [
                "validate",
                "--measured",
                str(good),
                "--scenario",
                str(scen),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert "PASS" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "validation.json").read_text())["passed"] is True
    assert (tmp_path / "o" / "validation.csv").read_text().startswith("percentile,")
    assert (tmp_path / "o" / "validation.png").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([x * 2 for x in independent_one_way(sc, seed=5)]))
    assert (
        main(
            [
                "validate",
                "--measured",
                str(bad),
                "--scenario",
                str(scen),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "value", "wants"),
    [
        ("--ks-tolerance", "-0.1", "a KS distance in 0..1"),
        ("--ks-tolerance", "nan", "a KS distance in 0..1"),
        ("--ks-tolerance", "1.5", "a KS distance in 0..1"),
        ("--rel-tolerance", "-1", "a relative gap >= 0"),
        ("--rel-tolerance", "nan", "a relative gap >= 0"),
        ("--rel-tolerance", "inf", "a relative gap >= 0"),
        ("--rel-tolerance", "lots", "a relative gap >= 0"),
    ],
)
def test_validate_cli_refuses_bad_tolerances(
    option: str, value: str, wants: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--measured", "m.json", option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: want {wants}, got {value!r}" in err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ks_tolerance": -0.1}, "ks_tolerance: want a KS distance in 0..1"),
        ({"ks_tolerance": math.nan}, "ks_tolerance: want a KS distance in 0..1"),
        ({"rel_tolerance": -1.0}, "rel_tolerance: want a finite relative gap >= 0"),
        ({"rel_tolerance": math.inf}, "rel_tolerance: want a finite relative gap >= 0"),
    ],
)
def test_validate_refuses_bad_tolerances(kwargs: dict[str, float], message: str) -> None:
    sc = load_scenario(SCENARIO)
    with pytest.raises(ValueError, match=message):
        validate([0.3] * 30, sc, **kwargs)
