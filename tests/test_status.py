"""phantom-mixnode status, /healthz and phantom-dirauth status against real processes.

A testnet of one authority, one gateway and one mix on loopback (free ports); the gateway
is restarted at ``--log-level debug --log-format json`` so that its log can be searched for
keys and client addresses after a client attached. Every wait is bounded; every process
started here is stopped (the module fixture's finally).

Marked slow: about 20 s.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from mixnode import dirauth
from mixnode._process import child_env
from mixnode.cli import main
from mixnode.config import load_node_config, make_node_config
from mixnode.daemon import Node
from mixnode.directory_client import DirectoryClient
from mixnode.keys import NodeKeys
from mixnode.metrics import serve_metrics
from overlay import VERSION, ClientLink, Delivery, DownlinkKind, LinkError, MailboxKey
from testbed.testnet import TestnetOptions, TestnetState, down, up

pytestmark = pytest.mark.slow
WAIT_S = 40.0  # s, the most any wait here takes


@dataclass
class Net:
    state: TestnetState
    gw_config: Path
    gw_log: Path
    gw_proc: subprocess.Popen[bytes]
    metrics_port: int
    auth_config: Path
    auth_port: int
    auth_pid: int


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait(what: str, ok: object) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if ok():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {WAIT_S:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its workers, should any be left
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    d = Path(tmp_path_factory.mktemp("statusnet"))
    opts = TestnetOptions(
        directory=d, base_port=0, authorities=1, threshold=1, gateways=1, layers=1, per_layer=1
    )
    state = up(opts)
    proc: subprocess.Popen[bytes] | None = None
    try:
        gw = state.nodes("gateway")[0]
        auth = next(p for p in state.processes if p.kind == "authority")
        os.kill(gw.pid, signal.SIGTERM)  # restart it with debug logging, in JSON
        _wait("gateway stopped", lambda: not Path(f"/proc/{gw.pid}").exists() or _zombie(gw.pid))
        log = d / "gw-debug.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mixnode.cli", "run", "--config", gw.config,
                 "--log-level", "debug", "--log-format", "json"],
                env=child_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        assert gw.metrics_port is not None
        port = gw.metrics_port
        _wait("gateway serving", lambda: _get(f"http://127.0.0.1:{port}/healthz")[0] == 200)
        yield Net(state, Path(gw.config), log, proc, port, Path(auth.config), auth.port, auth.pid)
    finally:
        if proc is not None:
            _stop(proc)
        down(d)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def _status(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    capsys.readouterr()
    code = main(["status", "--config", str(config), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_status_of_a_serving_node(net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _status(net.gw_config, capsys)
    assert code == 0, report
    cfg = load_node_config(net.gw_config)
    assert report["node_id"] == NodeKeys.load(cfg.node.data_dir).node_id.hex()
    assert report["role"] == "gateway" and report["version"] == VERSION
    assert report["serving"] is True and report["health"] == "serving"
    assert report["listed"] == {
        "now": True,
        "next": True,
        "why_not_now": None,
        "why_not_next": None,
    }
    assert report["authorities"] == {"reachable": 1, "total": 1, "threshold": 1}
    assert report["nodes_per_layer"] == {"0": 1, "1": 1}
    assert report["counters"][f'phantom_build_info{{version="{VERSION}"}}'] == 1  # type: ignore[index]
    assert main(["status", "--config", str(net.gw_config)]) == 0
    out = capsys.readouterr().out
    assert "state    serving" in out and "listed   now: yes  next epoch: yes" in out
    assert "authorities reachable 1 of 1 (threshold 1)" in out


def test_status_shows_the_peers_its_loop_cover_reached_per_layer(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gateway's loops cross the one mix and come back (1 Hz): layer 1 is reached;
    the gateway's own layer is not counted."""
    _wait("loop back through layer 1", lambda: _status(net.gw_config, capsys)[1].get(
        "peers_reachable") == {"1": {"reachable": 1, "listed": 1}})  # fmt: skip
    assert main(["status", "--config", str(net.gw_config)]) == 0
    assert "reachable per layer 1: 1 of 1  (loops back within 120 s)" in capsys.readouterr().out
    url = f"http://127.0.0.1:{net.metrics_port}/metrics"
    _wait("the gauge follows (every 0.5 s)", lambda: 'phantom_peers_reachable{layer="1"} 1\n'
          in _get(url)[1].decode())  # fmt: skip
    assert 'phantom_peers_listed{layer="1"} 1\n' in _get(url)[1].decode()


def test_healthz_answers_200_with_what_the_node_knows(net: Net) -> None:
    code, body = _get(f"http://127.0.0.1:{net.metrics_port}/healthz")
    health = json.loads(body)
    assert code == 200 and health["serving"] is True and health["reason"] == "serving"
    assert health["listed"] is True and health["workers_alive"] == health["workers"] == 1
    assert health["version"] == VERSION and health["directory_error"] is None


def test_authority_status_and_metrics(net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert dirauth.main(["status", "--config", str(net.auth_config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["serving"] is True and report["descriptors"] == 2
    assert report["document"]["nodes"] == 2 and report["document"]["signatures"] == 1
    assert report["peers"] == 0 and report["enrolled"] == 0 and report["version"] == VERSION
    assert dirauth.main(["status", "--config", str(net.auth_config)]) == 0
    assert "2 nodes, 1 signatures (threshold 1)" in capsys.readouterr().out
    code, body = _get(f"http://127.0.0.1:{net.auth_port}/metrics")
    text = body.decode()
    assert code == 200
    for line in (
        "phantom_authority_descriptors 2",
        "phantom_authority_document_nodes 2",
        "phantom_authority_document_signatures 1",
        f'phantom_build_info{{version="{VERSION}"}} 1',
        'phantom_authority_events_total{event="descriptor_accepted"}',
    ):
        assert line in text, line


def _attach(doc_host: str, port: int, link: ClientLink) -> int:
    """Attach a client to the gateway over a real socket; returns the client's port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.connect((doc_host, port))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                sock.send(link.attach_frame())
                event = link.receive(sock.recv(4096))
                if isinstance(event, Delivery) and event.kind is DownlinkKind.ATTACHED:
                    for _ in range(20):  # a few downlink slots
                        link.receive(sock.recv(4096))
                    sock.send(link.leave_frame())
                    return int(sock.getsockname()[1])
            except (OSError, LinkError):
                continue
    raise AssertionError("the gateway did not acknowledge the attach")


def test_debug_log_has_no_key_and_no_client_address(net: Net) -> None:
    """Every line the gateway wrote at debug level, after a client attached: no hex of any
    of its keys (identity seed and public key, every epoch key, private and public), no
    mailbox id, no client port."""
    s = net.state
    doc = DirectoryClient(s.authorities, s.authority_key_bytes(), s.threshold).fetch()
    g = doc.gateways[0]
    assert g.client_port is not None
    key = MailboxKey.generate()
    client_port = _attach(
        g.host, g.client_port, ClientLink(doc.geometry, g.epoch_key(doc.epoch), key)
    )
    time.sleep(1.0)  # let the node log what it would
    cfg = load_node_config(net.gw_config)
    keys = NodeKeys.load(cfg.node.data_dir)
    secrets = [keys.identity_seed.hex(), keys.identity_public.hex(), key.mailbox_id.hex()]
    for e in keys.epochs():
        secrets += [keys.epoch_private(e).hex(), keys.epoch_public(e).hex()]
    lines = net.gw_log.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records and any("epoch keys generated" in r["message"] for r in records)
    assert any(r["message"].startswith("listed in the topology document") for r in records)
    for line in lines:
        low = line.lower()
        for secret in secrets:
            assert secret not in low and secret[:16] not in low, line
        assert f":{client_port}" not in line and f", {client_port})" not in line, line


def test_directory_failure_shows_in_metrics_log_and_status(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    """The authority stops: the node goes on serving from its document, counts the
    failures by reason, logs the reason once (not every second), and status says the
    authorities are out of reach."""
    os.kill(net.auth_pid, signal.SIGTERM)
    _wait(
        "authority stopped",
        lambda: not Path(f"/proc/{net.auth_pid}").exists() or _zombie(net.auth_pid),
    )
    metric = 'phantom_directory_errors_total{reason="unreachable"}'

    def failures() -> float:
        text = _get(f"http://127.0.0.1:{net.metrics_port}/metrics")[1].decode()
        return next(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith(metric)
        )

    _wait("directory failures counted", lambda: failures() >= 3)
    code, report = _status(net.gw_config, capsys)
    assert report["authorities"] == {"reachable": 0, "total": 1, "threshold": 1}
    assert report["listed"]["now"] is None  # type: ignore[index]
    assert "no verifiable document" in report["listed"]["why_not_now"]  # type: ignore[index]
    assert report["directory_error"]["reason"] == "unreachable"  # type: ignore[index]
    assert code == 0  # it still serves from the document it holds
    records = [json.loads(x) for x in net.gw_log.read_text().splitlines() if x.startswith("{")]
    logged = [r["message"] for r in records if r["message"].startswith("directory: unreachable: ")]
    # Each failure message once (the authority going away may have failed a first attempt
    # otherwise: a reset), at WARNING; no summary yet, since it has not repeated a minute.
    assert logged and len(set(logged)) == len(logged) < failures(), logged
    assert all("times in the last" not in m for m in logged)
    assert all(r["level"] == "warning" for r in records if r["message"] in logged)


def test_status_of_a_stopped_node(net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    _stop(net.gw_proc)
    code, report = _status(net.gw_config, capsys)
    assert code == 1 and report["running"] is False and report["serving"] is False
    assert "is the node running?" in str(report["why_not"])
    assert main(["status", "--config", str(net.gw_config)]) == 1
    assert "NOT serving" in capsys.readouterr().out


# -- without processes ---------------------------------------------------------------------


async def test_healthz_is_503_with_the_reason_until_listed(tmp_path: Path) -> None:
    cfg = make_node_config(
        name="mix-1", role="mix", layer=1, listen_port=31011, data_dir=tmp_path / "d",
        authorities=["http://127.0.0.1:9"], authority_keys=[bytes(32)],
    )  # fmt: skip
    node = Node(cfg, keys=NodeKeys.load_or_create(tmp_path / "d"))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_metrics(
                node.metrics.registry, "127.0.0.1", 0, health=node.health, task_status=task_status
            )
        )
        code, body = await trio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/healthz")
        nursery.cancel_scope.cancel()
    health = json.loads(body)
    assert code == 503 and health["serving"] is False and health["reason"] == "no_document"
    assert health["node_id"] == node.node_id.hex()


def test_status_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--config", str(tmp_path / "missing.toml")]) == 2
    assert dirauth.main(["status", "--config", str(tmp_path / "missing.toml")]) == 2


@pytest.mark.parametrize(
    "module",
    [
        "mixnode.cli",
        "mixnode.dirauth",
        "testbed.testnet",
        "testbed.callcli",
        "client.cli",
        "sim.cli",
    ],
)
def test_every_command_has_version(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith(f" {VERSION}"), out
