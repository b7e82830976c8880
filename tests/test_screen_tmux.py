"""The call screen in a real terminal: ``python -m client.screen --demo`` in a detached tmux
session of a fixed size, read with ``capture-pane`` and driven with ``send-keys``.

It rings (name, badge, verification, the answer keys), ``a`` accepts (the figures appear),
``m`` mutes and unmutes, ``h`` hangs up (the reason is shown), the process exits, and the
terminal is in the mode it was in before (``stty`` in the pane, and its settings read from
outside). tmux runs on a server of its own (``-S``), killed at the end whatever happens.
Without tmux the test installs it with apt-get when it runs as root, and skips otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apt_support import require_packages

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 100, 40
WAIT_S = 20.0

pytestmark = pytest.mark.slow


def tmux_binary() -> str:
    """tmux's path; installs it with apt-get when missing and root, else skips."""
    found = shutil.which("tmux")
    if found:
        return found
    require_packages("tmux")
    found = shutil.which("tmux")
    if found is None:
        pytest.skip("the tmux package is installed but no tmux is on PATH")
    return found


class Tmux:
    """One detached session on a private tmux server."""

    def __init__(self, binary: str, socket: Path) -> None:
        self.base = [binary, "-u", "-S", str(socket), "-f", "/dev/null"]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}
        self.env.pop("TMUX", None)

    def __call__(self, *args: str) -> str:
        out = subprocess.run(
            [*self.base, *args], env=self.env, capture_output=True, text=True, timeout=10,
            check=True,
        )  # fmt: skip
        return out.stdout

    def start(self) -> None:
        self("new-session", "-d", "-s", "call", "-x", str(WIDTH), "-y", str(HEIGHT),
             "-c", str(ROOT), "bash --norc --noprofile")  # fmt: skip

    def type(self, text: str, enter: bool = False) -> None:
        self("send-keys", "-t", "call", "-l", text)
        if enter:
            self("send-keys", "-t", "call", "Enter")

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "call")

    def wait_for(self, check: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {WAIT_S} s; the pane shows:\n{screen}")
            time.sleep(0.1)

    def tty_settings(self) -> str:
        """``stty -g`` of the pane's terminal, read from outside it (at a shell prompt it
        is the line editor's mode)."""
        pane_tty = self("display-message", "-p", "-t", "call", "#{pane_tty}").strip()
        return subprocess.run(
            ["stty", "-g", "-F", pane_tty], capture_output=True, text=True, timeout=10,
            check=True,
        ).stdout.strip()  # fmt: skip

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], env=self.env, capture_output=True, timeout=10)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    binary = tmux_binary()
    with tempfile.TemporaryDirectory(prefix="tmux-") as socket_dir:  # a short path: sockets
        session = Tmux(binary, Path(socket_dir) / "s")  # take at most 107 bytes
        try:
            session.start()
            yield session
        finally:
            session.kill()


def stty_flags(settings: str) -> tuple[bool, bool]:
    """(icanon, echo) from ``stty -g`` output (its fourth field is c_lflag, in hex)."""
    lflag = int(settings.split(":")[3], 16)
    return bool(lflag & termios.ICANON), bool(lflag & termios.ECHO)


def test_the_call_screen_in_a_real_terminal(tmux: Tmux, tmp_path: Path) -> None:
    tmux.wait_for(lambda s: s.strip() != "", "shell prompt")
    before, after = tmp_path / "before", tmp_path / "after"  # the shell's line editor
    tmux.type(  # changes the mode at its prompt, so the settings are read by the same line
        f"stty -g > {before}; {sys.executable} -m client.screen --demo; echo screen exited $?;"
        f" stty -g > {after}",
        enter=True,
    )

    ringing = tmux.wait_for(lambda s: "Incoming call from Alice" in s, "ringing screen")
    assert "PARANOID" in ringing
    assert "\N{LOCK} end-to-end encrypted, X25519+ML-KEM-768" in ringing
    assert "NOT VERIFIED - compare safety numbers" in ringing
    assert "safety number 37215 90412 55803 19946 02871 64450" in ringing
    assert " a  accept" in ringing and " d  decline" in ringing
    assert stty_flags(tmux.tty_settings()) == (False, False)  # cbreak, no echo

    tmux.type("a")
    connected = tmux.wait_for(lambda s: "In call with Alice" in s, "connected screen")
    assert "Incoming call" not in connected
    for word in (
        "time",
        "one-way delay",
        "jitter",
        "loss",
        " ms ",
        " % ",
        " m  mute",
        " h  hang up",
    ):
        assert word in connected, word

    tmux.type("m")
    muted = tmux.wait_for(lambda s: "MUTED" in s, "MUTED")
    assert " m  unmute" in muted
    tmux.type("m")
    tmux.wait_for(lambda s: "MUTED" not in s and " m  mute" in s, "unmuted")

    tmux.type("h")
    ended = tmux.wait_for(lambda s: re.search(r"screen exited \d", s) is not None, "exit")
    assert "Call with Alice ended: you hung up" in ended, ended
    assert "quit" not in ended  # the process is gone: no key to offer
    assert "screen exited 0" in ended
    tmux.wait_for(lambda s: after.exists() and after.read_text() != "", "stty after the demo")
    assert after.read_text() == before.read_text()
    assert stty_flags(before.read_text()) == (True, True)

    tmux.type("clear; stty -a", enter=True)
    stty = tmux.wait_for(lambda s: "icanon" in s, "stty -a")
    words = stty.split()
    assert "icanon" in words and "echo" in words
    assert "-icanon" not in words and "-echo" not in words
