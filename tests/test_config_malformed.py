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
from collections.abc import Iterator
from pathlib import Path

import pytest

from mixnode.config import ConfigError, load_dirauth_config, load_node_config
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


def _run(module: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "run", "--config", str(config)],
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
    done = _run(MODULES[case.program], case.write(workspace))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert case.field in done.stderr
