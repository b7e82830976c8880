"""Malformed configs end in a clear error naming the field, exit code 2, never a traceback.

The cases come from tests/config_cases.py (every field of a node, gateway and authority
config: wrong type, out of range, missing, unknown, bad host, busy port, paths in the way,
a genesis after the clock). The loader sees every case; the commands run as subprocesses
on every case that only start-up can tell and on one case of each other kind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mixnode.config import ConfigError, load_dirauth_config, load_node_config
from mixnode.keys import EPOCH_DIR
from tests.config_cases import Case, Workspace, dirauth_cases, node_cases

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 30.0  # a command that starts instead of refusing is killed after this
CASES = node_cases() + dirauth_cases()
MODULES = {"mixnode": "mixnode.cli", "dirauth": "mixnode.dirauth"}


def _subset() -> list[Case]:
    """Every start-stage case, and the first load-stage case of each kind and program."""
    seen: set[tuple[str, str]] = set()
    out = []
    for c in CASES:
        kind = c.kind.split("(")[0]
        if c.stage == "start" or (c.program, kind) not in seen:
            seen.add((c.program, kind))
            out.append(c)
    return out


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    ws = Workspace(tmp_path)
    try:
        yield ws
    finally:
        ws.close()


def test_the_generator_covers_every_kind() -> None:
    kinds = {c.kind.split("(")[0] for c in CASES}
    assert len(CASES) >= 105 and len({c.id for c in CASES}) == len(CASES)
    for kind in ("wrong_type", "out_of_range", "missing", "unknown_field", "bad_host",
                 "unresolvable", "not_ours", "busy_port", "data_dir_is_a_file"):  # fmt: skip
        assert kind in kinds
    assert {c.program for c in CASES} == {"mixnode", "dirauth"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_loader_names_the_field(case: Case, workspace: Workspace) -> None:
    path = case.write(workspace)
    load = load_node_config if case.program == "mixnode" else load_dirauth_config
    if case.stage == "start":
        load(path)  # only the running machine can tell: the file itself is well formed
        return
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{case.field}:")


def _run(module: str, *args: str, wrap: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` (after the ``wrap`` prefix), killed with its whole process
    group if it is still running after RUN_TIMEOUT_S (it started instead of refusing)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [*wrap, sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,  # its workers too are stopped if it starts by mistake
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("case", _subset(), ids=[c.id for c in _subset()])
def test_run_refuses_with_the_field_and_exit_2(case: Case, workspace: Workspace) -> None:
    done = _run(MODULES[case.program], "run", "--config", str(case.write(workspace)))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert case.field in done.stderr


# --------------------------------------------------------------------------------------
# Unwritable paths and hostile text, through the real commands (tests run as root, which
# ignores mode bits: /proc, a file where a directory belongs, a read-only bind mount)

KEY = "ab" * 32
MEMORY_LIMIT = ["prlimit", f"--as={2 * 1024**3}"]  # bytes of address space: 2 GiB
COMMANDS = {"mixnode": "mixnode.cli", "dirauth": "mixnode.dirauth", "testnet": "testbed.testnet"}


def _command(program: str, *args: str, wrap: Sequence[str] = ()) -> tuple[int, str]:
    done = _run(COMMANDS[program], *args, wrap=wrap)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stderr


def _node_init(config: str, data_dir: str) -> list[str]:
    return ["init", "--config", config, "--role", "mix", "--layer", "1", "--name", "m",
            "--listen-port", "31011", "--data-dir", data_dir,
            "--authority", "http://127.0.0.1:31900", "--authority-key", KEY]  # fmt: skip


def _auth_init(config: str, data_dir: str) -> list[str]:
    return ["init", "--config", config, "--name", "a", "--listen-port", "31900",
            "--data-dir", data_dir]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("program", "args", "named"),
    [  # "@/" is the test's scratch directory
        ("mixnode", _node_init("/proc/m8.toml", "@/d"), "--config: /proc/m8.toml"),
        ("mixnode", _node_init("@/n.toml", "/proc/d"), "node.data_dir: /proc/d"),
        ("mixnode", _node_init("@/FILE/n.toml", "@/d"), "--config: @/FILE/n.toml: @/FILE is"),
        ("dirauth", _auth_init("/proc/a.toml", "@/d"), "--config: /proc/a.toml"),
        ("dirauth", _auth_init("@/a.toml", "/proc/d"), "authority.data_dir: /proc/d"),
        ("dirauth", _auth_init("@/a.toml", "@/FILE"), "authority.data_dir: @/FILE is a file"),
        ("mixnode", ["run", "--config", "@/DEEP"], "@/DEEP: not valid TOML: nested too deeply"),
        ("dirauth", ["run", "--config", "@/DEEP"], "@/DEEP: not valid TOML: nested too deeply"),
        ("mixnode", ["run", "--config", "/dev/zero"], "/dev/zero: cannot read config: not a"),
        ("dirauth", ["key", "--config", "@/FIFO"], "@/FIFO: cannot read config: not a regular"),
        ("testnet", ["up", "--dir", "/proc/tn"], "--dir: /proc/tn: cannot create files in"),
        ("testnet", ["up", "--dir", "@/FILE"], "--dir: @/FILE is a file where a directory"),
        ("testnet", ["up", "--dir", "@/tn", "--base-port", "70000"], "--base-port: expected"),
    ],
)
def test_commands_name_the_unusable_path_and_exit_2(
    tmp_path: Path, program: str, args: list[str], named: str
) -> None:
    (tmp_path / "FILE").write_text("x\n")
    (tmp_path / "DEEP").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    os.mkfifo(tmp_path / "FIFO")  # opening it for reading would wait for a writer
    made = {p.name for p in tmp_path.iterdir()}
    argv = (a.replace("@/", f"{tmp_path}/") for a in args)
    code, err = _command(program, *argv, wrap=MEMORY_LIMIT)  # /dev/zero: read it all?
    assert code == 2, err
    assert named.replace("@/", f"{tmp_path}/") in err
    assert {p.name for p in tmp_path.iterdir()} == made  # nothing half-written


def _read_only_mount(directory: Path) -> list[str]:
    """A command prefix that runs the rest with ``directory`` bind-mounted read-only, in a
    mount namespace of its own (gone with the process: nothing to clean up)."""
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"',
            str(directory)]  # fmt: skip
    probe = subprocess.run([*wrap, "touch", str(directory / "probe")], capture_output=True)
    if probe.returncode == 0 or b"Read-only file system" not in probe.stderr:
        (directory / "probe").unlink(missing_ok=True)
        pytest.skip("cannot make a read-only mount namespace here")
    return wrap


@pytest.mark.slow
@pytest.mark.parametrize("program", ["mixnode", "dirauth"])
def test_run_on_a_read_only_data_dir_names_it_and_exits_2(tmp_path: Path, program: str) -> None:
    """Regression: `run` with the data dir on a read-only file system died with
    `OSError: [Errno 30]` from the key store (keys rotate at start-up)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    config, data_dir = str(ro / "c.toml"), str(ro / "d")
    init = _node_init(config, data_dir) if program == "mixnode" else _auth_init(config, data_dir)
    assert _command(program, *init)[0] == 0
    for sub in ("topology", "descriptors", "documents"):  # as after a first run
        (ro / "d" / sub).mkdir(mode=0o700)
    code, err = _command(program, "run", "--config", config, wrap=_read_only_mount(ro))
    assert code == 2, err
    field = "node.data_dir" if program == "mixnode" else "authority.data_dir"
    assert f"{field}: {data_dir}" in err and "Read-only file system" in err


@pytest.mark.slow
def test_run_on_an_immutable_epoch_key_dir_names_it_and_exits_2(tmp_path: Path) -> None:
    """Root ignores mode bits, not `chattr +i`: the keys could not rotate there (EPERM)."""
    config, data_dir = str(tmp_path / "n.toml"), tmp_path / "d"
    assert _command("mixnode", *_node_init(config, str(data_dir)))[0] == 0
    epoch_keys = data_dir / EPOCH_DIR
    if subprocess.run(["chattr", "+i", str(epoch_keys)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        code, err = _command("mixnode", "run", "--config", config)
    finally:
        subprocess.run(["chattr", "-i", str(epoch_keys)], check=True)
    assert code == 2, err
    assert f"node.data_dir: {epoch_keys}: cannot create files here" in err
