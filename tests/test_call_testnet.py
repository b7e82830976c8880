"""A real Mode C call through a testnet of real node processes (slow: about 25 s)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from test_demo_real import in_process_report, key_paths
from testnet_support import process_alive

from mixnode.directory_client import DirectoryClient
from overlay import VOICE
from testbed.demo import CallOptions, call_report, run_call
from testbed.testnet import TestnetOptions, TestnetState, down, up

pytestmark = pytest.mark.slow




def test_call_through_real_testnet(tmp_path: Path) -> None:
    state = up(TestnetOptions(directory=tmp_path, base_port=0))
    try:
        doc = DirectoryClient(
            state.authorities, state.authority_key_bytes(), state.threshold
        ).fetch()
        gw_a, gw_b = doc.gateways[0].node_id, doc.gateways[1].node_id
        result = trio.run(run_call, doc, gw_a, gw_b, CallOptions(duration_s=10.0))
    finally:
        down(tmp_path)
    pids = [p.pid for p in TestnetState.load(tmp_path).processes]
    assert pids and not any(process_alive(pid) for pid in pids)

    report = call_report(result)
    assert report["end_reason"] == {"A": "HANGUP", "B": "HANGUP"}  # signaling both ways
    assert report["channel"] == "identity X25519, hash ratchet"
    assert repr(result.a.call.channel) == repr(result.b.call.channel) == "IdentityChannel(closed)"
    assert report["uplink"]["packet_sizes"] == [VOICE.packet_len]  # type: ignore[index]
    for name, rates in report["clients"].items():  # type: ignore[attr-defined]
        # Constant rate while online, cover included: 25 x 638 B up, 37.5 x 423 B down
        # (tests/test_bandwidth.py), give or take a frame at either end of the window.
        assert rates["online_s"] >= 10, name
        assert 15_000 <= rates["uplink_bytes_per_s"] <= 16_100, name
        assert 15_000 <= rates["downlink_bytes_per_s"] <= 16_100, name
    for name, d in report["directions"].items():  # type: ignore[attr-defined]
        assert d["packets_sent"] >= 220, name  # 10 s of 40 ms packets
        assert d["loss"] <= 0.02, name
        assert d["late_loss"] <= 0.05, name
        assert d["mouth_to_ear_ms"]["p99"] <= 600, name
        assert d["mouth_to_ear_ms"]["p50"] >= 40, name  # at least the packetization
        assert d["pesq_wb"] >= 2.5, name


def _testnet_pids(directory: Path) -> list[int]:
    return [p.pid for p in TestnetState.load(directory).processes]


def test_cli_demo_writes_report_and_wavs_and_leaves_nothing(tmp_path: Path) -> None:
    report_path, wavs, net = tmp_path / "r.json", tmp_path / "wav", tmp_path / "net"
    argv = ["demo", "--duration", "2", "--dir", str(net), "--json", str(report_path),
            "--wav-out", str(wavs), "--no-pesq", "--online-margin-s", "1",
            "--mean-delay-ms", "10"]  # fmt: skip
    done = subprocess.run(  # two caller processes: init, cards, online, call, offline
        [sys.executable, "-m", "testbed.callcli", *argv], capture_output=True, timeout=150
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(report_path.read_text())
    assert report["end_reason"] == {"A": "HANGUP", "B": "HANGUP"}
    assert report["p99_vs_300_600_ms"] in ("below", "inside", "above")
    # every key of the one-process report, from the listeners' records; the delay they used
    missing = key_paths(in_process_report()) - key_paths(report)
    assert not missing, sorted(missing)
    assert report["mean_delay_ms_per_hop"] == 10.0 and report["hops"] == 5
    assert report["simulator"] is None or (
        report["simulator"]["scenario"]["mixing"]["delay_mean_ms"] == 10.0
    )
    assert report["uplink"]["packet_sizes"] == [VOICE.packet_len]
    assert report["wall_s"] > report["duration_s"] and report["processes"] == "two"
    assert "route: 5 hops, mean delay 10 ms per hop" in done.stdout.decode()
    assert sorted(p.name for p in wavs.iterdir()) == [
        "received-A-to-B.wav", "received-B-to-A.wav"
    ]  # fmt: skip
    assert not any(process_alive(pid) for pid in _testnet_pids(net))


def test_cli_demo_sigterm_tears_the_testnet_down(tmp_path: Path) -> None:
    net = tmp_path / "net"
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.callcli", "demo", "--duration", "60", "--dir", str(net)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until the call runs
            if b"calling for" in line:
                break
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        os.set_blocking(proc.stderr.fileno(), False)
        rest = (proc.stderr.read() or b"").decode(errors="replace")  # what it said on the way
        assert code == 130, rest[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(process_alive(pid) for pid in _testnet_pids(net))
