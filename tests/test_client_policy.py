"""client.policy: validated knobs, the two profiles, and the same knobs as the simulator's."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

import client
from client.policy import DESKTOP, MOBILE, ClientPolicy, PolicyError
from overlay import UsageError
from sim import data_per_day, load_policies, load_scenario

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_desktop_profile() -> None:
    assert ClientPolicy() == DESKTOP
    assert client.ClientPolicy is ClientPolicy
    with pytest.raises(dataclasses.FrozenInstanceError):
        DESKTOP.schedule = "calls"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schedule", "weekends"),
        ("daily_online_h", 0.0),
        ("daily_online_h", 25.0),
        ("linger_before_s", -1.0),
        ("linger_after_s", math.nan),
        ("rate_lead_s", "60"),
        ("rate_lag_s", math.inf),
        ("decoys_per_hour", -0.5),
        ("idle_slot_factor", 0),
        ("idle_slot_factor", 2.5),
        ("idle_slot_factor", True),
        ("route", "hop"),
        ("route_epoch_s", 0.0),
        ("route_failover", -1),
        ("route_failover", 17),
    ],
)
def test_a_bad_field_is_named(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"idle_slot_factor": 4} if field.startswith("rate_") else {}
    kwargs[field] = value
    with pytest.raises(PolicyError, match=f"^{field}: ") as info:
        ClientPolicy(**kwargs)
    assert isinstance(info.value, UsageError)


def test_rate_switch_knobs_need_an_idle_rate() -> None:
    with pytest.raises(PolicyError, match="^idle_slot_factor: .* need an idle rate"):
        ClientPolicy(decoys_per_hour=1.0)


@pytest.mark.parametrize(("profile", "name"), [(DESKTOP, "desktop"), (MOBILE, "mobile")])
def test_profiles_are_the_measured_policies(profile: ClientPolicy, name: str) -> None:
    """The profile's knobs, as simulator fields, are exactly the measured policy's."""
    base = load_scenario(ROOT / "scenarios" / "policy-small.toml")
    measured = base.replace(**load_policies(ROOT / "scenarios" / "policies.toml")[name])
    mine = base.replace(**profile.sim_fields())
    assert mine.policy == measured.policy
    assert mine.mixing == measured.mixing


def test_mobile_fits_its_budget_and_desktop_does_not_need_one() -> None:
    base = load_scenario(ROOT / "scenarios" / "policy-small.toml")
    mobile = data_per_day(base.replace(**MOBILE.sim_fields()))
    desktop = data_per_day(base.replace(**DESKTOP.sim_fields()))
    assert mobile["total_mb"] <= 500.0 < desktop["total_mb"]
    assert desktop["call_rate_h"] == 24.0
