"""docs/operators.md's walkthrough runs as written and prints what the guide shows.

The guide marks what to run and what to expect with HTML comments before code blocks:

    <!-- guide: run -->             the next ```sh block: a bash script, run once
    <!-- guide: run until N s -->   run again (1 s apart) until it exits 0 and its
                                    output matches, for at most N s
    <!-- guide: output -->          the next ```text block: the previous run's output
                                    (stdout and stderr together); ``…`` in a line stands for
                                    any text, a line of ``…`` alone for any lines

Every block runs in order in one empty directory, with ``phantom-dirauth`` and
``phantom-mixnode`` on PATH as ``sys.executable -m mixnode.dirauth|mixnode.cli`` of this
checkout. What differs on this machine is put in: free ports for the authorities' 31900
and 31901, the gateway's metrics port for 9100 (init picks another when 9100 is taken) and
the fingerprint ``network`` printed for ``<fingerprint>``. Each block runs in its own
session (process group); whatever it started in the background (authorities, nodes and
their workers) is stopped at the end, SIGTERM then SIGKILL, even when a step fails.

Marked slow: about a minute (two epochs of 10 s for a stopped node to leave the document).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from directory_support import free_ports

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "operators.md"
STEP_TIMEOUT_S = 60.0  # s, one run of one block at most
_MARK = re.compile(r"<!-- guide: (run(?: until (\d+) s)?|output) -->\n```(\w+)\n(.*?)```", re.S)
_FINGERPRINT = re.compile(r"network fingerprint ([0-9a-f]{64})")
_COMMANDS = {"phantom-dirauth": "mixnode.dirauth", "phantom-mixnode": "mixnode.cli"}


@dataclass
class Step:
    script: str
    until_s: float | None  # retried for this long; None: run once
    expected: str | None  # the output block after it, if any


def guide_steps(text: str) -> list[Step]:
    """The marked blocks of ``text`` in order; ValueError for a block out of place."""
    steps: list[Step] = []
    for m in _MARK.finditer(text):
        kind, until, lang, body = m.groups()
        if kind == "output":
            if lang != "text" or not steps or steps[-1].expected is not None:
                raise ValueError(f"an output block must follow a run block: {body[:60]!r}")
            steps[-1].expected = body
        else:
            if lang != "sh":
                raise ValueError(f"a run block is ```sh: {body[:60]!r}")
            steps.append(Step(body, float(until) if until else None, None))
    return steps


def output_pattern(expected: str) -> re.Pattern[str]:
    """The regular expression an output block stands for (see the module docstring)."""
    parts = []
    for line in expected.rstrip("\n").split("\n"):
        if line == "…":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*".join(re.escape(x) for x in line.split("…")) + r"\n")
    return re.compile("".join(parts))


def test_the_output_pattern_reads_ellipses_as_the_guide_says() -> None:
    p = output_pattern("a …\n…\nz\n")
    assert p.fullmatch("a 1 2\nz\n") and p.fullmatch("a \nb\nc\nz\n")
    assert not p.fullmatch("a 1\nz\nextra\n") and not p.fullmatch("b\nz\n")


@dataclass
class Shell:
    """Runs guide blocks in ``cwd``, each in its own session, and stops them all at the end."""

    cwd: Path
    env: dict[str, str]
    sessions: list[int]

    def run(self, script: str) -> tuple[int, str]:
        proc = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.sessions.append(proc.pid)
        try:
            out, _ = proc.communicate(timeout=STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return -1, out + f"\n(killed after {STEP_TIMEOUT_S:.0f} s)"
        return proc.returncode, out

    def stop_all(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pgid in self.sessions:
                try:
                    os.killpg(pgid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and any(map(_group_alive, self.sessions)):
                time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, module in _COMMANDS.items():
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {sys.executable} -m {module} "$@"\n')
        script.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH")) if x)
    env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr interleave as on a terminal
    env["COLUMNS"] = "120"
    work = tmp_path / "work"
    work.mkdir()
    sh = Shell(work, env, [])
    try:
        yield sh
    finally:
        sh.stop_all()


def test_the_operators_guide_runs_as_written(shell: Shell) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the guide reads the health endpoint with curl")
    steps = guide_steps(GUIDE.read_text())
    assert len(steps) >= 10, "the walkthrough's marked blocks are missing"
    auth_ports = free_ports(2)
    values = {"31900": str(auth_ports[0]), "31901": str(auth_ports[1])}

    def fill(text: str) -> str:
        gw = shell.cwd / "gw.toml"
        if gw.exists():
            values["9100"] = str(tomllib.loads(gw.read_text())["metrics"]["port"])
        names = re.compile("|".join(re.escape(k) for k in sorted(values, key=len, reverse=True)))
        return names.sub(lambda m: values[m.group()], text)  # one pass: nothing replaced twice

    for i, step in enumerate(steps, 1):
        deadline = time.monotonic() + (step.until_s or 0.0)
        while True:
            code, out = shell.run(fill(step.script))
            pattern = None if step.expected is None else output_pattern(fill(step.expected))
            ok = code == 0 and (pattern is None or pattern.fullmatch(out) is not None)
            if ok or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        assert ok, (
            f"guide step {i} (exit {code}):\n{step.script}\n--- printed:\n{out}"
            f"--- the guide shows:\n{step.expected}"
        )
        found = _FINGERPRINT.search(out)
        if found and "<fingerprint>" not in values:
            values["<fingerprint>"] = found.group(1)
