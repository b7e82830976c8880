"""The call screen (client/screen.py): what each phase shows, which key does what, and a
terminal that is always given back as it was (on a real pseudo-terminal, no mocks)."""

from __future__ import annotations

import io
import math
import os
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from rich.console import Console

from client.screen import (
    Binding,
    CallScreen,
    CallStatus,
    Command,
    DemoCall,
    KeyMap,
    KeyMapError,
    LiveFigures,
    Phase,
    StatusError,
    keys_of,
    render,
    status_line,
)

ROOT = Path(__file__).resolve().parents[1]
SAFETY = "37215 90412 55803 19946 02871 64450"


def text_of(status: CallStatus, ascii_only: bool = False) -> str:
    console = Console(file=io.StringIO(), record=True, width=80)
    console.print(render(status, ascii_only=ascii_only))
    return console.export_text()


def styled_text_of(status: CallStatus) -> str:
    console = Console(file=io.StringIO(), record=True, width=80, color_system="standard")
    console.print(render(status))
    return console.export_text(styles=True)


def status(phase: Phase, **changes: object) -> CallStatus:
    fields: dict[str, object] = dict(
        peer="Alice", phase=phase, safety_number=SAFETY, elapsed_s=83.4, one_way_delay_ms=143.2,
        jitter_ms=4.17, loss=0.003, online_s=612.0, uplink_bytes_per_s=15_900.0,
    )  # fmt: skip
    fields.update(changes)
    return CallStatus(**fields)  # type: ignore[arg-type]


# --- render ---------------------------------------------------------------------------------


def test_every_phase_shows_the_mode_badge_and_the_online_footer() -> None:
    for phase in Phase:
        text = text_of(status(phase))
        assert "PARANOID" in text, phase
        assert "online 10:12, uplink 15,900 B/s (cover included)" in text, phase


def test_ringing_in_shows_name_verification_and_the_answer_keys() -> None:
    text = text_of(status(Phase.RINGING_IN))
    assert "Incoming call from Alice" in text
    assert "NOT VERIFIED - compare safety numbers" in text
    assert f"safety number {SAFETY}" in text
    assert "\N{LOCK} end-to-end encrypted, X25519+ML-KEM-768" in text
    assert "Only Alice can hear you" in text
    assert " a  accept" in text and " d  decline" in text
    assert "hang up" not in text and "one-way" not in text


def test_connected_shows_the_live_figures_and_mute() -> None:
    text = text_of(status(Phase.CONNECTED))
    lines = text.splitlines()
    heads = next(i for i, line in enumerate(lines) if "one-way delay" in line)
    assert lines[heads].split() == ["│", "time", "one-way", "delay", "jitter", "loss", "│"]
    assert lines[heads + 1].split() == ["│", "01:23", "143", "ms", "4.2", "ms", "0.3", "%", "│"]
    assert "In call with Alice" in text and "MUTED" not in text
    assert " m  mute" in text and " h  hang up" in text
    muted = text_of(status(Phase.CONNECTED, muted=True))
    assert "MUTED" in muted and " m  unmute" in muted


def test_connected_before_any_measurement_shows_dashes() -> None:
    text = text_of(CallStatus(peer="Bob", phase=Phase.CONNECTED, verified=True))
    assert "00:00   --              --       --" in text
    assert "\N{CHECK MARK}  verified" in text and "NOT VERIFIED" not in text
    assert "online" not in text  # no footer without the uplink figures


def test_dialing_ringing_out_and_ended() -> None:
    assert "Calling Alice ..." in text_of(status(Phase.DIALING))
    assert "Ringing Alice ..." in text_of(status(Phase.RINGING_OUT))
    ended = text_of(status(Phase.ENDED, end_reason="Alice hung up"))
    assert "Call with Alice ended: Alice hung up" in ended
    assert "01:23" in ended and "jitter" not in ended
    assert " q  quit" in ended and "hang up" not in ended.replace("Alice hung up", "")


def test_idle_has_no_call_to_encrypt_or_verify() -> None:
    text = text_of(status(Phase.IDLE))
    assert "Online, waiting for calls" in text and "No call." in text
    assert "VERIFIED" not in text and "encrypted" not in text
    assert " q  quit" in text


def test_a_call_without_encryption_says_so_in_red() -> None:
    styled = styled_text_of(status(Phase.CONNECTED, encryption=""))
    assert "\x1b[1;31mNOT ENCRYPTED" in styled and "encrypted," not in styled


def test_not_verified_is_in_the_warning_colour() -> None:
    styled = styled_text_of(status(Phase.RINGING_IN))
    assert "\x1b[1;33mNOT VERIFIED - compare safety numbers" in styled
    assert "\x1b[1;37;45m PARANOID " in styled  # the badge: bold white on magenta


def test_ascii_only_has_no_glyphs() -> None:
    text = text_of(status(Phase.CONNECTED, verified=True), ascii_only=True)
    assert "[lock] end-to-end encrypted" in text and "│ +      verified" in text
    assert "\N{LOCK}" not in text and "\N{CHECK MARK}" not in text


def test_status_line_for_logs() -> None:
    assert status_line(status(Phase.CONNECTED, muted=True)) == (
        f"connected Alice [PARANOID] MUTED NOT VERIFIED - compare safety numbers: {SAFETY}"
        " time 01:23 one-way 143 ms jitter 4.2 ms loss 0.3 % | m unmute, h hang up"
    )
    assert status_line(status(Phase.ENDED, end_reason="you hung up", verified=True)) == (
        "ended Alice [PARANOID] reason: you hung up, time 01:23 verified: " + SAFETY + " | q quit"
    )
    assert status_line(CallStatus(elapsed_s=4000)) == "idle - [PARANOID] | q quit"


# --- CallStatus -----------------------------------------------------------------------------


def test_phase_may_be_given_as_its_string() -> None:
    s = CallStatus(phase="ringing-out")  # type: ignore[arg-type]
    assert s.phase is Phase.RINGING_OUT and f"{s.phase}" == "ringing-out"


@pytest.mark.parametrize(
    ("field", "value"),
    [("phase", "talking"), ("elapsed_s", -1.0), ("one_way_delay_ms", math.nan),
     ("jitter_ms", math.inf), ("loss", 1.5), ("loss", -0.1), ("online_s", -5.0),
     ("uplink_bytes_per_s", -1.0), ("mode", "")],
)  # fmt: skip
def test_a_status_out_of_range_is_refused(field: str, value: object) -> None:
    with pytest.raises(StatusError, match=field.split("_")[0]):
        CallStatus(**{field: value})  # type: ignore[arg-type]


# --- LiveFigures ----------------------------------------------------------------------------


def test_live_figures_follow_the_last_seconds() -> None:
    live = LiveFigures(delay_window_s=2.0, loss_window_s=10.0)
    assert (live.one_way_delay_ms(0.0), live.jitter_ms(), live.loss(0.0)) == (None, None, None)
    for seq in range(100):  # 4 s at 40 ms: 100 ms delay, then 200 ms from 2 s on
        if seq % 10 != 5:  # one in ten lost
            live.received(seq, 0.04 * seq, 0.100 if seq < 50 else 0.200)
    assert live.one_way_delay_ms(3.96) == pytest.approx(200.0)  # only the last 2 s
    assert live.one_way_delay_ms(10.0) is None  # nothing for 6 s
    assert live.loss(3.96) == pytest.approx(10 / 100)
    live.received(99, 4.0, 0.200)  # a duplicate counts once
    assert live.loss(4.0) == pytest.approx(10 / 100)
    # one step of 100 ms, then no change: J = 100/16 decaying by 15/16 per packet
    assert live.jitter_ms() == pytest.approx(100 / 16 * (15 / 16) ** 45)


def test_live_figures_median_of_an_even_count_and_bad_input() -> None:
    live = LiveFigures()
    live.received(0, 1.0, 0.100)
    live.received(1, 1.0, 0.300)
    assert live.one_way_delay_ms(1.0) == pytest.approx(200.0)
    for seq, at, delay in [(2, 0.5, 0.1), (2, 2.0, -0.001), (2, 2.0, math.nan), (2, math.inf, 0.1)]:
        with pytest.raises(StatusError):
            live.received(seq, at, delay)
    with pytest.raises(StatusError, match="delay_window_s"):
        LiveFigures(delay_window_s=0)


def test_packets_without_a_capture_time_give_jitter_and_loss_and_a_playout_label() -> None:
    live = LiveFigures()
    # media clock 40 ms a packet; transit 100, 110, 100 ms; seq 2 never came
    for seq, at in [(0, 5.100), (1, 5.150), (3, 5.220)]:
        live.arrived(seq, at, 0.040 * seq)
    assert live.one_way_delay_ms(5.22) is None  # no capture time: no one-way delay
    assert live.jitter_ms() == pytest.approx(10 / 16 + (10 - 10 / 16) / 16)
    assert live.loss(5.22) == pytest.approx(0.25)
    live.received(4, 5.26, 0.1)  # both kinds mix: only the timed one gives a delay
    assert live.one_way_delay_ms(5.26) == pytest.approx(100.0)
    for seq, at, media in [(5, 5.0, 0.2), (5, 6.0, math.nan), (5, math.inf, 0.2)]:
        with pytest.raises(StatusError):
            live.arrived(seq, at, media)
    playout = status(Phase.CONNECTED, delay_is_playout=True)
    assert "playout delay" in text_of(playout) and "one-way" not in text_of(playout)
    assert " playout 143 ms jitter 4.2 ms" in status_line(playout)


# --- KeyMap ---------------------------------------------------------------------------------

EXPECTED = {  # (key, phase) -> command, muted or not; everything else is unbound
    ("a", Phase.RINGING_IN): Command.ACCEPT,
    ("d", Phase.RINGING_IN): Command.DECLINE,
    ("m", Phase.CONNECTED): Command.MUTE,  # UNMUTE when muted
    ("h", Phase.DIALING): Command.HANGUP,
    ("h", Phase.RINGING_OUT): Command.HANGUP,
    ("h", Phase.CONNECTED): Command.HANGUP,
    ("q", Phase.IDLE): Command.QUIT,
    ("q", Phase.ENDED): Command.QUIT,
}


def test_the_default_key_table() -> None:
    keymap = KeyMap()
    for key in "admhqxz1 ":
        for phase in Phase:
            for muted in (False, True):
                want = EXPECTED.get((key, phase))
                if muted and want is Command.MUTE:
                    want = Command.UNMUTE
                s = CallStatus(phase=phase, muted=muted)
                assert keymap.command(key, s) is want, (key, phase, muted)
                assert keymap.command(key.upper(), s) is want, (key.upper(), phase, muted)


def test_commands_are_strings() -> None:
    assert f"{Command.HANGUP}" == "hangup" and isinstance(Command.MUTE, str)


def test_a_key_bound_twice_in_one_state_is_refused() -> None:
    twice = KeyMap().bindings + (
        Binding("M", Command.HANGUP, "x", frozenset({Phase.CONNECTED}), when_muted=True),
    )
    with pytest.raises(KeyMapError, match="bound twice"):
        KeyMap(twice)
    with pytest.raises(KeyMapError, match="one printable"):
        KeyMap((Binding("ab", Command.QUIT, "quit", frozenset({Phase.IDLE})),))
    with pytest.raises(KeyMapError, match="one printable"):
        KeyMap((Binding(" ", Command.QUIT, "quit", frozenset({Phase.IDLE})),))


def test_keys_of_drops_escape_sequences_and_whitespace() -> None:
    assert keys_of(b"a\x1b[Am\r\n\x1bOPh\x1b") == ["a", "m", "h"]
    assert keys_of(b"\x1b[1;5Cq") == ["q"]
    assert keys_of(b"") == []


# --- CallScreen on a real pseudo-terminal ----------------------------------------------------


async def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not check():
            await trio.sleep(0.01)


def in_cbreak(fd: int) -> bool:
    lflag = termios.tcgetattr(fd)[3]
    return not lflag & (termios.ICANON | termios.ECHO)


async def test_keys_drive_a_call_and_the_terminal_comes_back() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=80, color_system=None)
        call = DemoCall(start=trio.current_time())
        sent: list[Command] = []

        async def on_command(command: Command) -> None:
            sent.append(command)
            await call.command(command)

        screen = CallScreen(
            call.status, on_command, console=console, stdin_fd=slave, exit_on_end=True,
            linger_s=0.0, refresh_hz=50,
        )  # fmt: skip
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(screen.run)
                await wait_until(lambda: in_cbreak(slave), "cbreak")
                await wait_until(lambda: "Incoming call from Alice" in out.getvalue(), "ring")
                os.write(master, b"m")  # not bound while ringing
                os.write(master, b"a")
                await wait_until(lambda: call.status().phase is Phase.CONNECTED, "accept")
                os.write(master, b"m")
                await wait_until(lambda: call.status().muted, "mute")
                await wait_until(lambda: "MUTED" in out.getvalue(), "MUTED shown")
                os.write(master, b"M")
                await wait_until(lambda: not call.status().muted, "unmute")
                os.write(master, b"\x1b[Ax h")
        assert sent == [Command.ACCEPT, Command.MUTE, Command.UNMUTE, Command.HANGUP]
        last = out.getvalue().rsplit("Phantom call", 1)[1]
        assert "Call with Alice ended: you hung up" in last
        assert "quit" not in last  # the screen left behind offers no keys
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


async def test_the_terminal_comes_back_when_the_status_source_fails() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        calls = 0

        def failing() -> CallStatus:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError("the client is gone")
            assert in_cbreak(slave)
            return CallStatus(peer="Bob", phase=Phase.DIALING)

        async def on_command(command: Command) -> None:
            raise AssertionError(command)

        console = Console(file=io.StringIO(), force_terminal=True, width=80)
        screen = CallScreen(failing, on_command, console=console, stdin_fd=slave, refresh_hz=50)
        with pytest.raises(RuntimeError, match="the client is gone"):
            await screen.run()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


async def test_quit_returns_and_no_keys_without_stdin() -> None:
    console = Console(file=io.StringIO(), force_terminal=False)
    sent: list[Command] = []

    async def on_command(command: Command) -> None:
        sent.append(command)

    screen = CallScreen(lambda: CallStatus(), on_command, console=console, stdin_fd=None)
    with trio.move_on_after(0.3) as scope:
        await screen.run()
    assert scope.cancelled_caught and sent == []  # no keys: runs until cancelled
    assert console.file.getvalue() == "idle - [PARANOID] | q quit\n"  # type: ignore[attr-defined]

    read, write = os.pipe()
    try:
        os.write(write, b"zq")
        screen = CallScreen(lambda: CallStatus(), on_command, console=console, stdin_fd=read)
        with trio.fail_after(5):
            await screen.run()
        assert sent == [Command.QUIT]
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.parametrize(("hold_s", "shown"), [
    (2.0, ["ended", "ringing-in"]),  # still held when the next call rings
    (0.5, ["ended", "idle", "ringing-in"]),  # held 0.5 s, then idle
])  # fmt: skip
async def test_a_call_that_ended_stays_on_the_screen_after_the_source_went_idle(
    hold_s: float, shown: list[str]
) -> None:
    # The listener's source goes idle about a second after a call ends; the screen keeps
    # the ended call (its reason) for hold_ended_s, then shows idle; a new call shows at once.
    console = Console(file=io.StringIO(), force_terminal=False)
    start = trio.current_time()

    def source() -> CallStatus:
        t = trio.current_time() - start
        if t < 0.3:
            return CallStatus(peer="bob", phase=Phase.ENDED, end_reason="HANGUP")
        if t < 1.6:
            return CallStatus(online_s=t)
        return CallStatus(peer="ada", phase=Phase.RINGING_IN)

    async def on_command(command: Command) -> None:
        pass

    screen = CallScreen(source, on_command, console=console, stdin_fd=None,
                        hold_ended_s=hold_s, refresh_hz=20)  # fmt: skip
    with trio.move_on_after(1.8):
        await screen.run()
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert [line.split()[0] for line in lines] == shown, lines
    assert "reason: HANGUP" in lines[0]
    with pytest.raises(ValueError, match="hold_ended_s"):
        CallScreen(source, on_command, hold_ended_s=-1)


def test_bad_refresh_rate_is_refused() -> None:
    async def on_command(command: Command) -> None:
        pass

    with pytest.raises(ValueError, match="refresh_hz"):
        CallScreen(lambda: CallStatus(), on_command, refresh_hz=0)
    with pytest.raises(ValueError, match="linger_s"):
        CallScreen(lambda: CallStatus(), on_command, linger_s=-1)


# --- the demo as a process ------------------------------------------------------------------


def demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "client.screen", "--demo", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_plain_lines_when_output_is_not_a_terminal() -> None:
    out = subprocess.run(
        demo("--talk-s", "0.5", "--linger-s", "0"), input=b"a", capture_output=True,
        env=env(), timeout=30, check=True,
    )  # fmt: skip
    lines = out.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["ringing-in", "connected", "ended"], lines
    assert lines[0].endswith("| a accept, d decline")
    assert "time 00:00 one-way 140 ms jitter -- loss 0.0 %" in lines[1]
    assert lines[2].startswith("ended Alice [PARANOID] reason: Alice hung up, time 00:0")
    assert "\x1b" not in out.stdout.decode()


def test_the_demo_refuses_bad_arguments() -> None:
    for args in (["--ring-s", "-1"], ["--talk-s", "nan"], ["--linger-s", "x"]):
        out = subprocess.run(demo(*args), capture_output=True, env=env(), timeout=30)
        assert out.returncode == 2 and b"usage:" in out.stderr, args


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGHUP, -signal.SIGHUP), (signal.SIGINT, 130)],
)
def test_a_signal_restores_the_terminal_and_still_ends_the_process(
    signum: signal.Signals, status: int
) -> None:
    """SIGTERM and SIGHUP still kill the process (after the terminal is restored); Ctrl-C
    (SIGINT) ends the demo with status 130."""
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        proc = subprocess.Popen(
            demo(), stdin=slave, stdout=slave, stderr=slave, env={**env(), "TERM": "xterm"},
            start_new_session=True,
        )  # fmt: skip
        try:
            seen = b""
            deadline = time.monotonic() + 20
            while b"Incoming call" not in seen or not in_cbreak(slave):
                assert time.monotonic() < deadline, seen
                if select.select([master], [], [], 0.1)[0]:
                    seen += os.read(master, 65536)
            proc.send_signal(signum)
            while proc.poll() is None:
                assert time.monotonic() < deadline + 10
                if select.select([master], [], [], 0.1)[0]:
                    os.read(master, 65536)
            assert proc.returncode == status
            assert termios.tcgetattr(slave) == before
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        os.close(master)
        os.close(slave)


def test_a_peer_name_is_shown_as_written_never_as_markup_or_control_codes() -> None:
    text = styled_text_of(status(Phase.RINGING_IN, peer="[blink]Eve[/] \x1b[2J\x07"))
    assert "Incoming call from [blink]Eve[/] ?[2J?" in text
    assert "\x1b[2J" not in text and "\x07" not in text and "\x1b[5m" not in text
    assert status_line(status(Phase.ENDED, peer="Eve\x1b[2J", end_reason="\x1b]0;x\x07")) == (
        "ended Eve?[2J [PARANOID] reason: ?]0;x?, time 01:23 NOT VERIFIED - compare safety"
        f" numbers: {SAFETY} | q quit"
    )
