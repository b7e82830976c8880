"""A real Mode C call through a testnet of real node processes (slow: about 25 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from client.demo import CallOptions, call_report, run_call
from mixnode.directory_client import DirectoryClient
from mixnode.testnet import TestnetOptions, TestnetState, down, up
from overlay import VOICE

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_call_through_real_testnet(tmp_path: Path) -> None:
    state = up(TestnetOptions(directory=tmp_path, base_port=0))
    try:
        doc = DirectoryClient(
            state.authorities, state.authority_key_bytes(), state.threshold
        ).fetch()
        gw_a, gw_b = doc.gateways[0].node_id, doc.gateways[1].node_id
        result = trio.run(run_call, doc, gw_a, gw_b, CallOptions(duration_s=7.0))
    finally:
        down(tmp_path)
    pids = [p.pid for p in TestnetState.load(tmp_path).processes]
    assert pids and not any(_alive(pid) for pid in pids)

    report = call_report(result)
    assert report["end_reason"] == {"A": "HANGUP", "B": "HANGUP"}  # signaling both ways
    assert report["uplink"]["packet_sizes"] == [VOICE.packet_len]  # type: ignore[index]
    for name, d in report["directions"].items():  # type: ignore[attr-defined]
        assert d["packets_sent"] >= 150, name  # 7 s of 40 ms packets
        assert d["loss"] <= 0.02, name
        assert d["late_loss"] <= 0.05, name
        assert d["mouth_to_ear_ms"]["p99"] <= 600, name
        assert d["mouth_to_ear_ms"]["p50"] >= 40, name  # at least the packetization
        assert d["pesq_wb"] >= 2.5, name
