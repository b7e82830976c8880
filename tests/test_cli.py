"""phantom-mixnode: init writes config and keys, run hands over, status reads metrics.

Also the operator errors of `init` (phantom-mixnode and phantom-dirauth): every argument
and path checked before anything is written, exit 2 naming the option, field or path.
"""

from __future__ import annotations

import argparse
import os
import socket
import stat
import subprocess
import sys
import threading
import types
from functools import partial
from pathlib import Path

import pytest
import trio

from mixnode import cli as node_cli
from mixnode import dirauth
from mixnode.cli import histogram_quantile, main
from mixnode.config import load_node_config
from mixnode.dirauth import AUTHORITY_KEY_FILE
from mixnode.dirauth import main as dirauth_main
from mixnode.keys import IDENTITY_FILE, NodeKeys
from mixnode.metrics import Health, NodeMetrics, parse_prometheus, serve_metrics
from testbed import testnet as testnet_cli

KEY = "ab" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init(tmp: Path, *extra: str) -> list[str]:
    return [
        "init", "--config", str(tmp / "node.toml"), "--name", "mix-1", "--listen-port", "31011",
        "--data-dir", "mix-1", "--authority", "http://127.0.0.1:31900",
        "--authority-key", KEY, *extra,
    ]  # fmt: skip


def test_init_writes_config_and_private_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_init(tmp_path, "--role", "mix", "--layer", "2")) == 0
    cfg = load_node_config(tmp_path / "node.toml")
    assert cfg.node.layer == 2 and cfg.node.data_dir == tmp_path / "mix-1"
    keys = NodeKeys.load(tmp_path / "mix-1")
    assert keys.node_id.hex() in capsys.readouterr().out
    assert stat.S_IMODE((tmp_path / "mix-1" / IDENTITY_FILE).stat().st_mode) == 0o600
    assert len(keys.epochs()) == 2
    # A second init keeps the config unless forced, and never replaces the identity.
    assert main(_init(tmp_path, "--role", "mix", "--layer", "2")) == 2
    assert "--force" in capsys.readouterr().err
    assert main(_init(tmp_path, "--role", "mix", "--layer", "3", "--force")) == 0
    assert NodeKeys.load(tmp_path / "mix-1").node_id == keys.node_id


def test_init_errors_say_what_is_wanted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_init(tmp_path, "--role", "mix")) == 2
    assert "--layer is required" in capsys.readouterr().err
    gw = tmp_path / "gw"
    gw.mkdir()
    assert main(_init(gw, "--role", "gateway")) == 0  # init picks a free client port
    gw_cfg = load_node_config(gw / "node.toml").gateway
    assert gw_cfg is not None and gw_cfg.client_port not in (None, 31011)
    assert main(_init(tmp_path, "--role", "mix", "--layer", "9")) == 2
    assert "node.layer: expected an integer in 1..3, got 9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_init(tmp_path, "--role", "mix", "--layer", "1", "--listen-port", "x"))
    assert "expected a port number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*_init(tmp_path, "--role", "mix", "--layer", "1"), "--authority-key", "zz"])
    assert "64 hex digits" in capsys.readouterr().err


def test_run_refuses_unsafe_keys_and_reports_missing_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(_init(tmp_path, "--role", "mix", "--layer", "1")) == 0
    os.chmod(tmp_path / "mix-1" / IDENTITY_FILE, 0o644)
    assert main(["run", "--config", str(tmp_path / "node.toml")]) == 2
    assert "chmod 600" in capsys.readouterr().err
    os.chmod(tmp_path / "mix-1" / IDENTITY_FILE, 0o600)
    monkeypatch.setitem(sys.modules, "mixnode.daemon", None)  # import fails: not installed
    assert main(["run", "--config", str(tmp_path / "node.toml")]) == 3
    assert "mixnode.daemon" in capsys.readouterr().err


def test_run_hands_config_and_keys_to_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(_init(tmp_path, "--role", "mix", "--layer", "1")) == 0
    seen = {}

    async def run(config: object, keys: NodeKeys) -> int:
        seen["config"], seen["keys"] = config, keys
        return 0

    fake = types.ModuleType("mixnode.daemon")
    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mixnode.daemon", fake)
    assert main(["run", "--config", str(tmp_path / "node.toml")]) == 0
    assert seen["config"] == load_node_config(tmp_path / "node.toml")
    assert seen["keys"].node_id == NodeKeys.load(tmp_path / "mix-1").node_id  # type: ignore[attr-defined]


def test_status_reads_a_live_metrics_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    assert main(_init(tmp_path, "--role", "mix", "--layer", "1", "--metrics-port", str(port))) == 0
    assert main(["status", "--config", str(tmp_path / "node.toml")]) == 1
    assert "is the node running?" in capsys.readouterr().out

    m = NodeMetrics()
    m.packets_in.inc(1234)
    m.drops.inc(7, label="replay")
    m.processing_seconds.observe(0.0003)
    ready = threading.Event()
    stop: list[tuple[trio.CancelScope, trio.lowlevel.TrioToken]] = []

    async def serve() -> None:
        with trio.CancelScope() as scope:
            stop.append((scope, trio.lowlevel.current_trio_token()))
            async with trio.open_nursery() as n:
                serving = Health(True, "serving", {"node_id": "00" * 16})
                await n.start(
                    partial(serve_metrics, health=lambda: serving), m.registry, "127.0.0.1", port
                )
                ready.set()

    t = threading.Thread(target=trio.run, args=(serve,))
    t.start()
    try:
        assert ready.wait(5)
        capsys.readouterr()
        assert main(["status", "--config", str(tmp_path / "node.toml")]) == 0
        out = capsys.readouterr().out
        assert "phantom_packets_in_total" in out and "1234" in out
        assert 'reason="replay"' in out and 'reason="late"' not in out
        assert "<= 0.5 ms" in out
    finally:
        scope, token = stop[0]
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        t.join(5)


def test_prometheus_parsing() -> None:
    m = NodeMetrics()
    for v in (0.0001, 0.0001, 0.002, 0.02):
        m.processing_seconds.observe(v)
    s = parse_prometheus(m.registry.render())
    assert s[("phantom_processing_seconds_count", "")] == 4
    assert histogram_quantile(s, "phantom_processing_seconds", 0.5) == 0.0001
    assert histogram_quantile(s, "phantom_processing_seconds", 0.99) == 0.025


@pytest.mark.slow
def test_console_script_help_runs() -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-m", "mixnode.cli", "--help"], capture_output=True, env=env, timeout=30
    )
    assert out.returncode == 0 and b"init" in out.stdout and b"status" in out.stdout


def test_init_names_the_data_dir_when_a_file_is_in_the_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mix-1").write_text("a file, not a directory\n")
    assert main(_init(tmp_path, "--role", "mix", "--layer", "1")) == 2
    assert "node.data_dir: " in capsys.readouterr().err
    (tmp_path / "mix-1").unlink()
    (tmp_path / "mix-1").mkdir(mode=0o700)
    (tmp_path / "mix-1" / "epoch-keys").write_text("")  # from the issue: a plain file
    assert main(_init(tmp_path, "--role", "mix", "--layer", "1", "--force")) == 2
    err = capsys.readouterr().err
    assert "node.data_dir: " in err and "epoch-keys is a file where a directory belongs" in err
    assert (
        main(_init(tmp_path, "--role", "mix", "--layer", "1", "--listen-host", "::1", "--force"))
        == 2
    )
    assert "node.listen_host: expected an IPv4 address or name (IPv6" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Refused commands write nothing; every option with a default shows it in --help


def test_a_refused_init_writes_nothing_so_the_rerun_needs_no_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: the config was written before the data_dir check failed."""
    (tmp_path / "mix-1").write_text("a file where the data dir belongs\n")
    assert main(_init(tmp_path, "--role", "mix", "--layer", "1")) == 2
    assert "node.data_dir: " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix-1"]
    (tmp_path / "mix-1").unlink()
    assert main(_init(tmp_path, "--role", "mix", "--layer", "1")) == 0  # no --force
    # A bad argument is refused before any key is made either.
    other = tmp_path / "other"
    other.mkdir()
    assert main(_init(other, "--role", "mix", "--layer", "1", "--workers", "0")) == 2
    assert "mixing.workers: expected an integer in 1..64, got 0" in capsys.readouterr().err
    assert list(other.iterdir()) == []


def _dirauth_init(tmp: Path, *extra: str) -> list[str]:
    return ["init", "--config", str(tmp / "auth.toml"), "--name", "auth-1",
            "--listen-port", "31900", "--data-dir", "auth-1", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "2"], "directory.threshold: expected an integer in 1..1, got 2"),
        (["--round-interval-s", "nan"], "authority.round_interval_s: expected a number"),
        (["--authority", "http://[::1]:31900"], "directory.authorities[0]: expected"),
        (["--authority", "http://127.0.0.1:0"], "with a port in 1..65535"),
        (["--listen-host", "::1"], "authority.listen_host: expected an IPv4"),
        (["--epoch-length-s", "1"], "directory.epoch_length_s: expected an integer"),
    ],
)
def test_dirauth_init_checks_everything_before_making_a_key(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dirauth_main(_dirauth_init(tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert dirauth_main(_dirauth_init(tmp_path)) == 0  # then it works, no --force needed
    assert (tmp_path / "auth-1" / AUTHORITY_KEY_FILE).exists()


def test_a_threshold_of_zero_is_refused_not_made_the_majority(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: `phantom-dirauth init --threshold 0` silently became the majority."""
    for run, args in ((dirauth_main, _dirauth_init(tmp_path)),
                      (main, _init(tmp_path, "--role", "mix", "--layer", "1"))):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            run([*args, "--threshold", "0"])
        assert exit_.value.code == 2
        assert "--threshold: expected a whole number >= 1, got '0'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("program", "config", "data_dir", "named"),
    [
        ("mixnode", "/proc/m8.toml", "d", "--config: /proc/m8.toml: cannot create files in /proc"),
        ("mixnode", "FILE/n.toml", "d", "--config: FILE/n.toml: FILE is a file, not a directory"),
        ("mixnode", "n.toml", "/proc/d", "node.data_dir: /proc/d: cannot create files in /proc"),
        ("mixnode", "n.toml", "FILE", "node.data_dir: FILE is a file where a directory belongs"),
        ("mixnode", "n.toml", "FILE/x", "node.data_dir: FILE/x: FILE is a file, not a directory"),
        ("dirauth", "/proc/a.toml", "d", "--config: /proc/a.toml: cannot create files in /proc"),
        ("dirauth", "a.toml", "/proc/d", "authority.data_dir: /proc/d: cannot create files in"),
        ("dirauth", "a.toml", "FILE", "authority.data_dir: FILE is a file where a directory"),
        ("mixnode", "DIR", "d", "--config: DIR exists and is not a regular file"),
        ("dirauth", "DIR", "d", "--config: DIR exists and is not a regular file"),
    ],
)
def test_init_on_unwritable_paths_names_the_option_or_field(
    tmp_path: Path,
    program: str,
    config: str,
    data_dir: str,
    named: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Regression: FileNotFoundError traceback (mixnode), "phantom-dirauth: No such file or
    directory" with exit 1 (dirauth); and nothing may be left behind."""
    (tmp_path / "FILE").write_text("x\n")
    (tmp_path / "DIR").mkdir()
    if program == "mixnode":
        run, args = main, _init(tmp_path, "--role", "mix", "--layer", "1")
    else:
        run, args = dirauth_main, _dirauth_init(tmp_path)
    for option, value in (("--config", config), ("--data-dir", data_dir)):
        args[args.index(option) + 1] = value if value.startswith("/") else f"{tmp_path}/{value}"
    assert run(args) == 2
    err = capsys.readouterr().err
    assert named.replace("FILE", f"{tmp_path}/FILE").replace("DIR", f"{tmp_path}/DIR") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "FILE"]
    assert list((tmp_path / "DIR").iterdir()) == []


def test_dirauth_key_without_a_key_names_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dirauth_main(_dirauth_init(tmp_path)) == 0
    (tmp_path / "auth-1" / AUTHORITY_KEY_FILE).unlink()
    assert dirauth_main(["key", "--config", str(tmp_path / "auth.toml")]) == 2
    assert f"authority.data_dir: {tmp_path}/auth-1/authority.key" in capsys.readouterr().err


_PARSERS = {
    "phantom-mixnode": node_cli.build_parser,
    "phantom-dirauth": dirauth.build_parser,
    "phantom-testnet": testnet_cli.build_parser,
}


@pytest.mark.parametrize("prog", sorted(_PARSERS))
def test_help_shows_every_default(prog: str) -> None:
    """Regression: `up`, `init` and `probe` hid 9100, 2 workers, `--dir testnet`."""
    parser = _PARSERS[prog]()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    seen = 0
    for name, sub in commands.choices.items():
        text = " ".join(sub.format_help().split())  # the formatter wraps lines
        for action in sub._actions:
            if action.default in (None, False, [], argparse.SUPPRESS):
                continue
            assert f"(default: {action.default})" in text, (name, action.dest)
            seen += 1
    assert seen >= 2  # mixnode init: ports and epochs default to "picked" or "from --network"


def test_help_shows_the_reviews_defaults() -> None:
    def shown(parser: argparse.ArgumentParser, *argv: str) -> str:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return " ".join(commands.choices[argv[0]].format_help().split())

    init = shown(node_cli.build_parser(), "init")
    assert "(default: first free from 9100)" in init
    assert "processing worker processes (default: 2)" in init
    assert "testnet directory (default: testnet)" in shown(testnet_cli.build_parser(), "up")
    assert "testnet directory (default: testnet)" in shown(testnet_cli.build_parser(), "probe")
    assert "(default: None)" not in init and "(default: False)" not in init
