"""The simulator's latency model against a real testnet run with the same parameters.

Marked slow: starts 3 authorities, 2 gateways and 6 mixes on loopback and streams voice-like
traffic through them for ~10 s, then simulates the same scenario and compares.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim import load_scenario
from sim.validate import validate
from testbed.probe import ProbeError, ProbeResult, ProbeSettings, probe
from testbed.testnet import TestnetOptions, TestnetState, down, up

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DURATION_S = 10.0
MEAN_DELAY_MS = 27.5
# Downlink 1.5x the uplink rate: at equal rates the gateway queue sits at full utilisation and
# never drains after a stall, so one busy moment on this shared machine would shift every
# later packet (docs/research.md). The simulator is told the same.
DOWNLINK_HZ = 75.0


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestnetState]:
    d = tmp_path_factory.mktemp("simnet")
    state = up(TestnetOptions(directory=d, base_port=0, delivery_rate_hz=DOWNLINK_HZ))
    try:
        yield state
    finally:
        down(d)


def _scenario_of(settings: ProbeSettings) -> object:
    """The recommended scenario, set to what this testnet does: loopback links, no loss,
    continuous speech, calls as long as the probe's streams."""
    return load_scenario(ROOT / "scenarios" / "voice.toml").replace(
        **{
            "network.access_delay": {"dist": "constant", "value_ms": 0.1},
            "network.link_delay": {"dist": "constant", "value_ms": 0.1},
            "network.link_loss": 0.0,
            "network.processing": {"dist": "uniform", "low_ms": 0.1, "high_ms": 0.6},
            "mixing.delay_mean_ms": settings.mean_delay_s * 1000.0,
            "voice.frames_per_packet": settings.frames_per_packet,
            "voice.codec_lookahead_ms": 0.0,
            "voice.downlink_speedup": DOWNLINK_HZ * settings.slot_s,
            "talk.model": "continuous",
            "users.call_s": settings.duration_s,
            "users.duration_s": settings.duration_s,
        }
    )


async def test_simulated_latency_matches_the_testnet(testnet: TestnetState) -> None:
    settings = ProbeSettings(duration_s=DURATION_S, mean_delay_s=MEAN_DELAY_MS / 1000.0)
    result: ProbeResult = await probe(testnet, settings)
    assert result.sent >= 4 * (DURATION_S / 0.02 - 30)
    assert result.loss < 0.01
    verdict = validate(result.one_way_s, _scenario_of(settings))  # type: ignore[arg-type]
    assert verdict.passed, verdict.to_dict()
    # A wrong model must fail: halve the simulated per-hop delay.
    wrong = _scenario_of(settings).replace(**{"mixing.delay_mean_ms": MEAN_DELAY_MS / 2})  # type: ignore[attr-defined]
    assert not validate(result.one_way_s, wrong).passed


def test_probe_settings_are_checked() -> None:
    with pytest.raises(ProbeError):
        ProbeSettings(duration_s=0)
    with pytest.raises(ProbeError):
        ProbeSettings(streams=0)


def test_probe_cli_writes_what_validate_reads(testnet: TestnetState, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    cmd = [sys.executable, "-m", "testbed.testnet", "probe", "--dir", testnet.directory]
    cmd += ["--duration-s", "3", "--streams", "1", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    assert data["sent"] > 0 and len(data["one_way_s"]) == data["received"]
    assert all(0 < x < 2.0 for x in data["one_way_s"])
    cmd = [sys.executable, "-m", "sim.cli", "validate", "--measured", str(out)]
    cmd += ["--scenario", str(ROOT / "scenarios" / "voice.toml"), "--out", str(tmp_path / "v")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode in (0, 1), run.stderr  # 1: the comparison failed, still a verdict
    assert (tmp_path / "v").exists()
