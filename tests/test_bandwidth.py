"""The access-link budget: at most 16,000 B/s (128 kbit/s) per client each way while online,
cover included, computed from the configured rates and frame sizes (docs/research.md,
"Bandwidth per client"). UDP payload bytes, as the demo report counts them."""

from __future__ import annotations

import pytest

from client import VoiceProfile
from mixnode.config import DEFAULT_DELIVERY_RATE_HZ
from overlay import VOICE, FrameType, LinkCodec, UsageError
from sim import data_per_day, load_scenario
from testbed.demo import LinkSample, link_rates
from testbed.testnet import TestnetOptions

BUDGET_BYTES_PER_S = 16_000  # each way, per client


def _uplink_hz() -> float:
    return 1000 / VoiceProfile().packet_interval_ms  # one UPLINK per voice slot


def test_frame_sizes_are_pinned() -> None:
    codec = LinkCodec(VOICE)
    assert (VOICE.user_payload, VOICE.packet_len) == (352, 604)
    assert codec.frame_len(FrameType.UPLINK) == 2 + 8 + 8 + 604 + 16 == 638
    assert codec.delivery_len == 16 + VOICE.payload_len == 386  # a REPLY is the largest
    assert codec.frame_len(FrameType.DOWNLINK) == 2 + 8 + 8 + 3 + 386 + 16 == 423


def test_uplink_within_budget() -> None:
    rate = LinkCodec(VOICE).frame_len(FrameType.UPLINK) * _uplink_hz()
    assert _uplink_hz() == 25.0
    assert rate == 15_950 <= BUDGET_BYTES_PER_S


def test_downlink_within_budget_at_every_default() -> None:
    assert TestnetOptions().delivery_rate_hz == DEFAULT_DELIVERY_RATE_HZ
    rate = LinkCodec(VOICE).frame_len(FrameType.DOWNLINK) * DEFAULT_DELIVERY_RATE_HZ
    assert rate == 15_862.5 <= BUDGET_BYTES_PER_S


def test_downlink_still_drains_the_mailbox() -> None:
    """The simulator's choice: 1.5 downlink slots per uplink slot (docs/research.md)."""
    assert DEFAULT_DELIVERY_RATE_HZ / _uplink_hz() == 1.5


def test_simulator_day_model_agrees() -> None:
    """sim.data_per_day at the demo's rates gives the same bytes per second."""
    sc = load_scenario(
        {
            "voice": {"frames_per_packet": 2, "downlink_speedup": 1.5},
            "policy": {"schedule": "always"},
        }
    )
    day = data_per_day(sc)
    assert day["up_mb"] == round(15_950 * 86_400 / 1e6, 3)
    assert day["down_mb"] == round(15_862.5 * 86_400 / 1e6, 3)


def test_link_rates_between_two_samples() -> None:
    first, last = LinkSample(10.0, 1_000, 2_000), LinkSample(12.0, 32_900, 33_725)
    assert link_rates(first, last) == {
        "uplink_bytes_per_s": 15_950.0,
        "downlink_bytes_per_s": 15_862.5,
        "online_s": 2.0,
    }
    with pytest.raises(UsageError, match="later"):
        link_rates(last, first)
