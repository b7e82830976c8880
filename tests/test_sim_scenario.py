"""Scenario files: defaults, round trip, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlay import VOICE
from sim import Scenario, ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parent.parent


# policies.toml is a table of policies over a scenario (test_sim_policy.py loads it).
SCENARIOS = sorted(p for p in (ROOT / "scenarios").glob("*.toml") if p.name != "policies.toml")


@pytest.mark.parametrize("path", SCENARIOS)
def test_example_scenarios_load(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.network.geometry == VOICE
    assert sc.hops <= VOICE.max_hops


def test_defaults_follow_the_voice_geometry() -> None:
    sc = load_scenario({})
    assert sc.hops == VOICE.max_hops == 5
    assert sc.voice.slot_ms == 20.0
    assert sc.network.serialization_s == pytest.approx(VOICE.packet_len * 8 / 20e6)
    assert sc.voice.payload_bytes <= VOICE.user_payload


def test_round_trip_through_dict() -> None:
    sc = load_scenario(ROOT / "scenarios" / "traffic-small.toml")
    assert load_scenario(sc.to_dict()) == sc
    again = sc.replace(**{"mixing.delay_mean_ms": 7.5, "seed": 3})
    assert again.mixing.delay_mean_ms == 7.5 and again.seed == 3
    assert isinstance(again, Scenario)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"mixing": {"delay_mean_ms": "fast"}}, "mixing.delay_mean_ms"),
        ({"mixing": {"delay_mean_ms": -1.0}}, "mixing.delay_mean_ms"),
        ({"mixing": {"jitter": 1.0}}, "mixing: unknown field"),
        ({"voice": {"frames_per_packet": 4}}, "voice.frames_per_packet"),
        ({"voice": {"frames_per_packet": 2.5}}, "voice.frames_per_packet"),
        ({"network": {"hops": 6}}, "network.hops"),
        ({"network": {"geometry": "huge"}}, "network.geometry"),
        ({"network": {"link_delay": {"dist": "pareto"}}}, "network.link_delay.dist"),
        ({"network": {"link_delay": {"dist": "lognormal", "median_ms": 5.0}}}, "sigma"),
        ({"users": {"n_users": 10, "n_calls": 6}}, "users.n_calls"),
        ({"users": {"mean_online_s": 5.0}}, "users.mean_online_s"),
        ({"cover": "yes"}, "cover"),
        ({"colour": 1}, "unknown top-level"),
    ],
)
def test_bad_fields_are_named(data: dict[str, object], field: str) -> None:
    with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
        load_scenario(data)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="scenario file"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = [")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
