"""The call screen: what a caller sees and the keys they press, during and around a call.

    >>> status = CallStatus(peer="Alice", phase=Phase.RINGING_IN, safety_number="37215 90412")
    >>> KeyMap().command("a", status)
    <Command.ACCEPT: 'accept'>
    >>> KeyMap().command("m", status) is None  # no mute before the call is connected
    True
    >>> print(status_line(status))  # doctest: +NORMALIZE_WHITESPACE
    ringing-in Alice [PARANOID] NOT VERIFIED - compare safety numbers: 37215 90412
    | a accept, d decline

Four parts, of which only the last does I/O:

- :class:`CallStatus`, a frozen snapshot of one moment (peer, phase, mode, encryption,
  verification, the live figures), which the client builds and this module only reads;
- :class:`LiveFigures`, the live figures (median one-way delay, jitter, loss over the last
  seconds) from the media packets as they arrive, and the round trips the peer's receiver
  reports give (half of one is a one-way estimate);
- :func:`render` (a ``rich`` panel of a snapshot: the mode badge, the lock with a one-line
  explanation, the verification in a warning colour when missing, the figures, the keys) and
  :class:`KeyMap` (which key sends which :class:`Command` in which phase), both pure;
- :class:`CallScreen`, the Trio edge: a ``rich`` Live display refreshed from a
  ``status_source`` at a few hertz, keys read from the terminal in cbreak mode (restored on
  return, on an exception, on Ctrl-C, SIGTERM or SIGHUP) and passed to ``on_command``. When stdout
  is not a terminal it prints one plain line per change instead.

``python -m client.screen --demo`` shows the screen on a scripted call (ringing, then
connected once ``a`` is pressed, ended by ``h``), so that it can be tried without a network.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import math
import os
import re
import signal
import sys
import termios
import threading
import tty
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = [
    "Binding",
    "CallScreen",
    "CallStatus",
    "Command",
    "DemoCall",
    "KeyMap",
    "KeyMapError",
    "LiveFigures",
    "Phase",
    "StatusError",
    "cbreak",
    "keys_of",
    "main",
    "render",
    "status_line",
]


class StatusError(ValueError):
    """A :class:`CallStatus` field out of its range (negative time, loss above 1, ...)."""


class KeyMapError(ValueError):
    """A :class:`KeyMap` that binds one key twice in one state, or a key that is not one
    printable character."""


class Phase(enum.StrEnum):
    """Where the caller is. Equal to its string (``Phase.CONNECTED == "connected"``)."""

    IDLE = "idle"  # online, no call
    DIALING = "dialing"  # offer sent, nothing heard back yet
    RINGING_OUT = "ringing-out"  # the peer's device rings
    RINGING_IN = "ringing-in"  # this device rings
    CONNECTED = "connected"
    ENDED = "ended"


class Command(enum.StrEnum):
    """What a key asks the client to do; passed to ``on_command`` (a ``str``)."""

    ACCEPT = "accept"
    DECLINE = "decline"
    MUTE = "mute"
    UNMUTE = "unmute"
    HANGUP = "hangup"
    QUIT = "quit"


MODE_STYLES = {
    "FAST": "bold black on yellow",
    "PRIVATE": "bold white on blue",
    "PARANOID": "bold white on magenta",
}
NOT_VERIFIED = "NOT VERIFIED - compare safety numbers"
DEFAULT_ENCRYPTION = "end-to-end encrypted, X25519+ML-KEM-768"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise StatusError(message)


def _finite_at_least_zero(name: str, value: float | None) -> None:
    _check(value is None or (math.isfinite(value) and value >= 0), f"{name} {value!r} < 0")


def _printable(char: str) -> str:
    return char if char.isprintable() else "?"


@dataclass(frozen=True, slots=True)
class CallStatus:
    """One moment of the caller, as the screen shows it.

    ``phase`` may be given as its string ("ringing-in"); it is stored as a :class:`Phase`.
    Times are seconds, delays milliseconds, ``loss`` a fraction in [0, 1]; the live figures
    (``None`` when not measured yet) cover the last few seconds: ``one_way_delay_ms`` the
    median one-way delay of the media packets received, ``jitter_ms`` their interarrival
    jitter, ``loss`` the share of packets due that never came. ``online_s`` is how long the
    client has been online, ``uplink_bytes_per_s`` its constant uplink rate (cover
    included). ``delay_is_playout``: the media packets carry no capture time, so
    ``one_way_delay_ms`` holds the jitter buffer's playout delay instead, labelled so.
    Raises :class:`StatusError` on an unknown phase or a negative, infinite or NaN figure.
    Characters that are not printable (escape sequences in a name) are shown as ``?``.
    """

    peer: str = ""
    phase: Phase = Phase.IDLE
    verified: bool = False
    safety_number: str = ""
    mode: str = "PARANOID"
    encryption: str = DEFAULT_ENCRYPTION
    end_reason: str | None = None
    elapsed_s: float = 0.0
    one_way_delay_ms: float | None = None
    jitter_ms: float | None = None
    loss: float | None = None
    muted: bool = False
    online_s: float | None = None
    uplink_bytes_per_s: float | None = None
    delay_is_playout: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "phase", Phase(self.phase))
        except ValueError:
            raise StatusError(f"unknown phase {self.phase!r}") from None
        for name in (
            "elapsed_s",
            "one_way_delay_ms",
            "jitter_ms",
            "online_s",
            "uplink_bytes_per_s",
        ):
            _finite_at_least_zero(name, getattr(self, name))
        _check(self.elapsed_s is not None, "elapsed_s is None")
        _check(self.loss is None or 0 <= self.loss <= 1, f"loss {self.loss!r} not in [0, 1]")
        _check(bool(self.mode), "mode is empty")
        for name in ("peer", "safety_number", "mode", "encryption", "end_reason"):
            text = getattr(self, name)
            if text is not None and not text.isprintable():  # never a terminal escape
                object.__setattr__(self, name, "".join(_printable(c) for c in text))


@dataclass(frozen=True, slots=True)
class Binding:
    """``key`` sends ``command`` in the phases given, and only when the call's ``muted``
    equals ``when_muted`` (``None``: either way). ``label`` is what the screen shows."""

    key: str
    command: Command
    label: str
    phases: frozenset[Phase]
    when_muted: bool | None = None

    def applies(self, status: CallStatus) -> bool:
        """Whether this binding is live for ``status``."""
        return status.phase in self.phases and self.when_muted in (None, status.muted)


def _bind(
    key: str, command: Command, label: str, *phases: Phase, when_muted: bool | None = None
) -> Binding:
    return Binding(key, command, label, frozenset(phases), when_muted)


DEFAULT_BINDINGS = (
    _bind("a", Command.ACCEPT, "accept", Phase.RINGING_IN),
    _bind("d", Command.DECLINE, "decline", Phase.RINGING_IN),
    _bind("m", Command.MUTE, "mute", Phase.CONNECTED, when_muted=False),
    _bind("m", Command.UNMUTE, "unmute", Phase.CONNECTED, when_muted=True),
    _bind("h", Command.HANGUP, "hang up", Phase.DIALING, Phase.RINGING_OUT, Phase.CONNECTED),
    _bind("q", Command.QUIT, "quit", Phase.IDLE, Phase.ENDED),
)


@dataclass(frozen=True, slots=True)
class KeyMap:
    """Which key does what, as one table. Keys are single printable characters, matched
    without regard to case. Raises :class:`KeyMapError` if two bindings of one key can be
    live at once (same phase, overlapping ``when_muted``)."""

    bindings: tuple[Binding, ...] = DEFAULT_BINDINGS

    def __post_init__(self) -> None:
        for i, b in enumerate(self.bindings):
            if len(b.key) != 1 or not b.key.isprintable() or b.key.isspace():
                raise KeyMapError(f"key {b.key!r} is not one printable character")
            for other in self.bindings[:i]:
                both = other.phases & b.phases
                muted = (other.when_muted, b.when_muted)
                same_key = other.key.lower() == b.key.lower()
                if same_key and both and (None in muted or muted[0] == muted[1]):
                    raise KeyMapError(f"key {b.key!r} bound twice in {sorted(both)}")

    def command(self, key: str, status: CallStatus) -> Command | None:
        """The command ``key`` sends in ``status``, or ``None`` (unbound here)."""
        for b in self.bindings:
            if b.key.lower() == key.lower() and b.applies(status):
                return b.command
        return None

    def hints(self, status: CallStatus) -> list[tuple[str, str]]:
        """(key, label) of every binding live in ``status``, in table order."""
        return [(b.key, b.label) for b in self.bindings if b.applies(status)]


# --- rendering (pure) ---------------------------------------------------------------------


def _clock(seconds: float) -> str:
    s = int(seconds)
    hours = f"{s // 3600}:" if s >= 3600 else ""
    return f"{hours}{s // 60 % 60:02d}:{s % 60:02d}"


def _figure(value: float | None, fmt: str) -> str:
    return "--" if value is None else fmt.format(value)


def _figures(status: CallStatus) -> tuple[str, str, str]:
    loss = None if status.loss is None else 100 * status.loss
    return (
        _figure(status.one_way_delay_ms, "{:.0f} ms"),
        _figure(status.jitter_ms, "{:.1f} ms"),
        _figure(loss, "{:.1f} %"),
    )


def _headline(status: CallStatus) -> str:
    peer = status.peer or "(unknown)"
    match status.phase:
        case Phase.IDLE:
            return "Online, waiting for calls"
        case Phase.DIALING:
            return f"Calling {peer} ..."
        case Phase.RINGING_OUT:
            return f"Ringing {peer} ..."
        case Phase.RINGING_IN:
            return f"Incoming call from {peer}"
        case Phase.CONNECTED:
            return f"In call with {peer}"
        case Phase.ENDED:
            return f"Call with {peer} ended: {status.end_reason or 'ended'}"


def render(
    status: CallStatus, *, keymap: KeyMap | None = None, ascii_only: bool = False, width: int = 76
) -> RenderableType:
    """A ``rich`` panel of ``status``: the mode badge and phase, the lock with the
    encryption and a one-line explanation, the verification, the figures (while connected
    or after the call), the keys live now (``keymap``, default :class:`KeyMap`), and how
    long the client has been online. ``width`` is in cells (a narrower console wins);
    ``ascii_only`` avoids the lock and check-mark glyphs."""
    keymap = keymap or KeyMap()
    lock, ok_mark = ("[lock]", "+") if ascii_only else ("\N{LOCK}", "\N{CHECK MARK}")
    badge = Text(f" {status.mode} ", style=MODE_STYLES.get(status.mode, "bold reverse"))
    ringing = status.phase is Phase.RINGING_IN
    head = Text.assemble(badge, "  ", (_headline(status), "bold yellow" if ringing else "bold"))
    if status.muted and status.phase is Phase.CONNECTED:
        head.append("  ").append(" MUTED ", style="bold white on red")
    rows: list[RenderableType] = [head, Text()]
    state = Table.grid(padding=(0, 1))  # a glyph column, then the text with a hanging indent
    if status.phase is Phase.IDLE:
        state.add_row("", Text("No call.", style="dim"))
    elif status.encryption:
        peer = status.peer or "your contact"
        state.add_row(Text(lock), Text(status.encryption, style="bold green"))
        explain = f"Only {peer} can hear you; no relay learns who talks to whom."
        state.add_row("", Text(explain, style="dim"))
    else:
        state.add_row("!", Text("NOT ENCRYPTED", style="bold red"))
    if status.phase is not Phase.IDLE and status.verified:
        state.add_row(Text(ok_mark), Text("verified", style="bold green"))
    elif status.phase is not Phase.IDLE:
        state.add_row("!", Text(NOT_VERIFIED, style="bold yellow"))
    if status.phase is not Phase.IDLE and status.safety_number:
        style = "dim" if status.verified else "yellow"
        state.add_row("", Text(f"safety number {status.safety_number}", style=style))
    rows.append(state)
    if status.phase in (Phase.CONNECTED, Phase.ENDED):
        figures = Table.grid(padding=(0, 3))
        delay_name = "playout delay" if status.delay_is_playout else "one-way delay"
        names = ["time", delay_name, "jitter", "loss"]
        values = [_clock(status.elapsed_s), *_figures(status)]
        if status.phase is Phase.ENDED:
            names, values = names[:1], values[:1]
        figures.add_row(*(Text(n, style="dim") for n in names))
        figures.add_row(*(Text(v, style="bold") for v in values))
        rows += [Text(), figures]
    hints = keymap.hints(status)
    if hints:
        keys = Text()
        for key, label in hints:
            keys.append(f" {key} ", style="bold reverse").append(f" {label}   ")
        rows += [Text(), keys]
    subtitle = None
    if status.online_s is not None:
        rate = _figure(status.uplink_bytes_per_s, "{:,.0f} B/s")
        subtitle = f"online {_clock(status.online_s)}, uplink {rate} (cover included)"
    return Panel(
        Group(*rows),
        title="Phantom call",
        subtitle=subtitle,
        width=width,
        border_style="magenta" if status.mode == "PARANOID" else "blue",
    )


def status_line(status: CallStatus, *, keymap: KeyMap | None = None) -> str:
    """``status`` as one plain line (for logs and output that is not a terminal)."""
    parts = [status.phase.value, status.peer or "-", f"[{status.mode}]"]
    if status.muted and status.phase is Phase.CONNECTED:
        parts.append("MUTED")
    if status.phase is Phase.ENDED:
        parts.append(f"reason: {status.end_reason or 'ended'}, time {_clock(status.elapsed_s)}")
    if status.phase is not Phase.IDLE:
        verification = "verified" if status.verified else NOT_VERIFIED
        number = f": {status.safety_number}" if status.safety_number else ""
        parts.append(verification + number)
    if status.phase is Phase.CONNECTED:
        delay, jitter, loss = _figures(status)
        name = "playout" if status.delay_is_playout else "one-way"
        parts.append(f"time {_clock(status.elapsed_s)} {name} {delay} jitter {jitter} loss {loss}")
    hints = (keymap or KeyMap()).hints(status)
    if hints:
        parts.append("| " + ", ".join(f"{k} {label}" for k, label in hints))
    return " ".join(parts)


# --- the live figures (pure) -----------------------------------------------------------------


@dataclass
class LiveFigures:
    """The live figures of :class:`CallStatus` from the media packets of a call as they
    arrive: the median one-way delay over the last ``delay_window_s`` seconds (measured,
    ``received``, or half a round trip, ``rtt``: an estimate), the
    interarrival jitter J of RFC 3550 (6.4.1, in arrival order), and the share of sequence
    numbers missing between the lowest and highest received in the last ``loss_window_s``.
    Times in seconds on one clock; the figures in milliseconds and as a fraction, ``None``
    before there is anything to measure.

    >>> live = LiveFigures()
    >>> for seq, at, one_way_s in [(0, 0.00, 0.140), (1, 0.04, 0.150), (3, 0.12, 0.145)]:
    ...     live.received(seq, at, one_way_s)
    >>> live.one_way_delay_ms(0.12), live.loss(0.12)
    (145.0, 0.25)
    >>> round(live.jitter_ms(), 3)  # |D| = 10 ms: J = 10/16; |D| = 5 ms: J += (5 - J)/16
    0.898
    """

    delay_window_s: float = 2.0
    loss_window_s: float = 10.0
    _arrivals: deque[tuple[float, int, float | None]] = field(default_factory=deque, init=False)
    _rtts: deque[tuple[float, float]] = field(default_factory=deque, init=False)
    _jitter_s: float | None = field(default=None, init=False)
    _last_one_way_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for name in ("delay_window_s", "loss_window_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise StatusError(f"{name} {value!r} must be a positive number of seconds")

    def received(self, seq: int, at: float, one_way_s: float) -> None:
        """A media packet with sequence number ``seq`` arrived at ``at`` after
        ``one_way_s`` seconds. Raises :class:`StatusError` on a negative or non-finite
        delay, or an ``at`` earlier than the last one."""
        if not (math.isfinite(one_way_s) and one_way_s >= 0 and math.isfinite(at)):
            raise StatusError(f"one-way delay {one_way_s!r} s at {at!r} s")
        self._add(seq, at, one_way_s, one_way_s)

    def arrived(self, seq: int, at: float, media_s: float) -> None:
        """A media packet that carries no capture time: ``media_s`` is its media clock in
        seconds (any origin). It counts towards the jitter (from the change of
        ``at - media_s``, the relative transit of RFC 3550) and the loss, not the one-way
        delay. Raises :class:`StatusError` on a non-finite time or an ``at`` earlier than
        the last one.

        >>> live = LiveFigures()
        >>> live.arrived(0, 10.00, 0.0); live.arrived(1, 10.05, 0.04)
        >>> round(live.jitter_ms(), 3), live.one_way_delay_ms(10.05), live.loss(10.05)
        (0.625, None, 0.0)
        """
        if not (math.isfinite(media_s) and math.isfinite(at)):
            raise StatusError(f"media time {media_s!r} s at {at!r} s")
        self._add(seq, at, at - media_s, None)

    def rtt(self, at: float, rtt_s: float) -> None:
        """A round-trip time ``rtt_s`` measured at ``at`` (a receiver report the peer sent
        back). Half of it is a one-way delay estimate (the two directions' delays are drawn
        alike), which ``one_way_delay_ms`` takes with the measured one-way delays. Raises
        :class:`StatusError` on a negative or non-finite value.

        >>> live = LiveFigures()
        >>> live.rtt(1.0, 0.300); live.rtt(1.04, 0.280); live.rtt(1.08, 0.320)
        >>> live.one_way_delay_ms(1.1), live.rtt_ms(1.1)
        (150.0, 300.0)
        """
        if not (math.isfinite(at) and math.isfinite(rtt_s) and rtt_s >= 0):
            raise StatusError(f"round trip {rtt_s!r} s at {at!r} s")
        self._rtts.append((at, rtt_s))
        while self._rtts[0][0] < at - self.delay_window_s:
            self._rtts.popleft()

    def rtt_ms(self, now: float) -> float | None:
        """Median round-trip time (ms) of the samples of the last ``delay_window_s`` before
        ``now``, or None."""
        return _median_ms([r for at, r in self._rtts if at >= now - self.delay_window_s])

    def _add(self, seq: int, at: float, transit_s: float, one_way_s: float | None) -> None:
        if not math.isfinite(at):
            raise StatusError(f"arrival at {at!r} s")
        if self._arrivals and at < self._arrivals[-1][0]:
            raise StatusError(f"arrival at {at} s before the last one ({self._arrivals[-1][0]} s)")
        if self._last_one_way_s is not None:
            d = abs(transit_s - self._last_one_way_s)
            j = self._jitter_s or 0.0
            self._jitter_s = j + (d - j) / 16
        self._last_one_way_s = transit_s
        self._arrivals.append((at, seq, one_way_s))
        horizon = at - max(self.delay_window_s, self.loss_window_s)
        while self._arrivals[0][0] < horizon:
            self._arrivals.popleft()

    @property
    def last_arrival(self) -> float | None:
        """Arrival time (seconds) of the latest packet still held, or None."""
        return self._arrivals[-1][0] if self._arrivals else None

    def one_way_delay_ms(self, now: float) -> float | None:
        """Median one-way delay (ms) of the packets that arrived in the last
        ``delay_window_s`` before ``now`` and of the halves of the round trips (``rtt``)
        measured then, or None."""
        since = now - self.delay_window_s
        recent = [d for at, _, d in self._arrivals if at >= since and d is not None]
        return _median_ms(recent + [r / 2 for at, r in self._rtts if at >= since])

    def jitter_ms(self) -> float | None:
        """RFC 3550 interarrival jitter (ms), once two packets have arrived."""
        return None if self._jitter_s is None else 1000 * self._jitter_s

    def loss(self, now: float) -> float | None:
        """Share of the sequence numbers from the lowest to the highest received in the last
        ``loss_window_s`` before ``now`` that did not arrive (duplicates count once)."""
        seqs = {seq for at, seq, _ in self._arrivals if at >= now - self.loss_window_s}
        if not seqs:
            return None
        return 1 - len(seqs) / (max(seqs) - min(seqs) + 1)


def _median_ms(values_s: list[float]) -> float | None:
    if not values_s:
        return None
    recent = sorted(values_s)
    mid = len(recent) // 2
    median = recent[mid] if len(recent) % 2 else (recent[mid - 1] + recent[mid]) / 2
    return 1000 * median


# --- the terminal edge ----------------------------------------------------------------------

_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|O.|.)?", re.DOTALL)


def keys_of(data: bytes) -> list[str]:
    """The key presses in bytes read from a terminal: one per printable character; escape
    sequences (arrows, function keys) and whitespace are dropped.

    >>> keys_of(b"a\\x1b[Am\\n")
    ['a', 'm']
    """
    text = _ESCAPE.sub("", data.decode("latin-1"))
    return [c for c in text if c.isprintable() and not c.isspace()]


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in cbreak mode (keys one by one, no echo; Ctrl-C still
    interrupts) for the ``with`` body, then exactly as it was, however the body ends."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _read_chunk(fd: int) -> bytes:
    try:
        await trio.lowlevel.wait_readable(fd)
    except OSError:  # a regular file or /dev/null: epoll refuses it, and reading never blocks
        return await trio.to_thread.run_sync(os.read, fd, 64)
    return os.read(fd, 64)


@dataclass
class CallScreen:
    """The call screen on this terminal, for as long as :meth:`run` runs.

    ``status_source()`` is polled ``refresh_hz`` times a second (and right after each
    command); a key that ``keymap`` binds in the current status is passed to
    ``await on_command(command)``. :meth:`run` returns after :data:`Command.QUIT`, or
    ``linger_s`` seconds after the phase became ``ended`` when ``exit_on_end``. A call that
    ended stays on the screen (its reason, its time) for ``hold_ended_s`` seconds after the
    source went back to ``idle``, unless another call shows first, so that a glance at the
    screen still tells why the call ended (the footer keeps its live time online).
    ``console`` defaults to ``rich``'s on stdout; if it is not a terminal, one plain line
    is printed per change (and the figures every ``plain_every_s`` seconds in a call).
    Keys are read from ``stdin_fd`` (default 0; ``None``: no keys), in cbreak mode if it is a
    terminal. SIGTERM and SIGHUP, when :meth:`run` runs in the main thread, stop the
    screen, restore the terminal and are then raised again for whoever handled them before.
    """

    status_source: Callable[[], CallStatus]
    on_command: Callable[[Command], Awaitable[None]]
    keymap: KeyMap = field(default_factory=KeyMap)
    refresh_hz: float = 4.0
    exit_on_end: bool = False
    linger_s: float = 0.5
    hold_ended_s: float = 0.0
    console: Console | None = None
    stdin_fd: int | None = 0
    plain_every_s: float = 5.0
    _signalled: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.refresh_hz) and self.refresh_hz > 0):
            raise ValueError(f"refresh_hz {self.refresh_hz!r} must be positive")
        for name in ("linger_s", "hold_ended_s", "plain_every_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} {value!r} must be a number of seconds >= 0")

    async def run(self) -> None:
        """Show the screen until quit (or the end of the call, see ``exit_on_end``). Raises
        what ``status_source`` or ``on_command`` raise, after restoring the terminal."""
        console = self.console or Console()
        fd = self.stdin_fd
        self._signalled = None
        with contextlib.ExitStack() as stack:  # unwinds: display, terminal mode, signals
            signals = None
            if threading.current_thread() is threading.main_thread():
                signals = stack.enter_context(
                    trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP)
                )
            if fd is not None and os.isatty(fd):
                stack.enter_context(cbreak(fd))
            live = None
            if console.is_terminal:
                live = stack.enter_context(
                    Live(
                        console=console,
                        auto_refresh=False,
                        redirect_stdout=False,
                        redirect_stderr=False,
                    )
                )
            send, receive = trio.open_memory_channel[str](16)
            try:
                async with trio.open_nursery() as nursery:
                    if signals is not None:
                        nursery.start_soon(self._on_signal, signals, nursery.cancel_scope)
                    if fd is not None:
                        nursery.start_soon(self._read_keys, fd, send)
                    else:
                        send.close()
                    await self._loop(receive, console, live)
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:  # one task failed: raise what it raised
                if len(group.exceptions) != 1:
                    raise
                raise group.exceptions[0] from None
        if self._signalled is not None:  # the terminal is restored and our handler gone
            signal.raise_signal(self._signalled)

    async def _on_signal(self, signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
        async for signum in signals:
            self._signalled = signum
            scope.cancel()
            return

    @staticmethod
    async def _read_keys(fd: int, send: trio.MemorySendChannel[str]) -> None:
        async with send:
            while data := await _read_chunk(fd):
                for key in keys_of(data):
                    await send.send(key)

    async def _loop(
        self, keys: trio.MemoryReceiveChannel[str], console: Console, live: Live | None
    ) -> None:
        period = 1 / self.refresh_hz
        ended_at: float | None = None
        last_state: tuple[object, ...] = ()
        last_plain = -math.inf
        keys_open = True
        ascii_only = not console.encoding.lower().startswith("utf")
        held: CallStatus | None = None  # the last ``ended`` status the source gave
        held_since = -math.inf  # when the source went idle after it
        while True:
            status = self.status_source()
            now = trio.current_time()
            if status.phase is Phase.ENDED:
                held, held_since = status, math.inf
            elif status.phase is Phase.IDLE and held is not None:
                held_since = min(held_since, now)
                if now - held_since < self.hold_ended_s:
                    status = replace(held, online_s=status.online_s,
                                     uplink_bytes_per_s=status.uplink_bytes_per_s)  # fmt: skip
                else:
                    held = None
            else:
                held = None
            if live is not None:
                live.update(render(status, keymap=self.keymap, ascii_only=ascii_only), refresh=True)
            else:
                state = (
                    status.phase,
                    status.peer,
                    status.mode,
                    status.verified,
                    status.muted,
                    status.end_reason,
                )
                due = status.phase is Phase.CONNECTED and now - last_plain >= self.plain_every_s
                if state != last_state or due:
                    line = status_line(status, keymap=self.keymap)
                    console.print(line, markup=False, highlight=False, soft_wrap=True)
                    last_state, last_plain = state, now
            if status.phase is Phase.ENDED and self.exit_on_end:
                ended_at = now if ended_at is None else ended_at
                if now - ended_at >= self.linger_s:
                    if live is not None:  # what stays on the terminal offers no keys
                        live.update(render(status, keymap=KeyMap(()), ascii_only=ascii_only))
                    return
            else:
                ended_at = None
            key = None
            with trio.move_on_after(period):
                if keys_open:
                    try:
                        key = await keys.receive()
                    except trio.EndOfChannel:
                        keys_open = False
                if not keys_open:
                    await trio.sleep_forever()
            command = None if key is None else self.keymap.command(key, status)
            if command is not None:
                await self.on_command(command)
                if command is Command.QUIT:
                    return


# --- the demo -------------------------------------------------------------------------------


@dataclass
class DemoCall:
    """A scripted call for trying the screen without a network: it rings until accepted
    (``a``), declined (``d``) or ``ring_s`` pass; once connected, ``m`` mutes, ``h`` hangs up,
    and the peer hangs up after ``talk_s``. The figures are :class:`LiveFigures` of made-up
    packets, one every 40 ms: a slow wave around 140 ms with a ripple of 4 ms, and one packet
    in 250 lost. Times are on Trio's clock, from ``start``."""

    peer: str = "Alice"
    verified: bool = False
    ring_s: float = 60.0
    talk_s: float = 600.0
    start: float = 0.0
    _status: CallStatus = field(init=False)
    _since: float = field(init=False)
    _live: LiveFigures = field(default_factory=LiveFigures, init=False)
    _next_seq: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._status = CallStatus(
            peer=self.peer,
            phase=Phase.RINGING_IN,
            verified=self.verified,
            safety_number="37215 90412 55803 19946 02871 64450",
            online_s=0.0,
            uplink_bytes_per_s=15_900.0,
        )
        self._since = self.start

    def status(self) -> CallStatus:
        """The snapshot now, advancing the script on time."""
        now = trio.current_time()
        s = self._status
        if s.phase is Phase.RINGING_IN and now - self._since >= self.ring_s:
            self._move(Phase.ENDED, now, "no answer")
        elif s.phase is Phase.CONNECTED and now - self._since >= self.talk_s:
            self._move(Phase.ENDED, now, f"{self.peer} hung up")
        s = replace(self._status, online_s=now - self.start)
        if s.phase is Phase.CONNECTED:
            self._packets_until(now)
            live = self._live
            s = replace(
                s,
                elapsed_s=now - self._since,
                one_way_delay_ms=live.one_way_delay_ms(now),
                jitter_ms=live.jitter_ms(),
                loss=live.loss(now),
            )
        return s

    def _packets_until(self, now: float) -> None:
        while (at := self._since + 0.040 * self._next_seq) <= now:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            if seq % 250 != 17:
                t = at - self._since
                self._live.received(
                    seq, at, 0.140 + 0.015 * math.sin(t / 3) + 0.004 * math.sin(seq)
                )

    def _move(self, phase: Phase, now: float, end_reason: str | None = None) -> None:
        elapsed = now - self._since if self._status.phase is Phase.CONNECTED else 0.0
        self._status = replace(
            self._status, phase=phase, elapsed_s=elapsed, end_reason=end_reason, muted=False
        )
        self._since = now

    async def command(self, command: Command) -> None:
        """Act on a key's command as a client would."""
        now = trio.current_time()
        match command:
            case Command.ACCEPT:
                self._move(Phase.CONNECTED, now)
                self._live, self._next_seq = LiveFigures(), 0
            case Command.DECLINE:
                self._move(Phase.ENDED, now, "you declined")
            case Command.HANGUP:
                self._move(Phase.ENDED, now, "you hung up")
            case Command.MUTE | Command.UNMUTE:
                self._status = replace(self._status, muted=command is Command.MUTE)
            case Command.QUIT:
                pass


async def _demo(args: argparse.Namespace) -> None:
    call = DemoCall(
        peer=args.peer,
        verified=args.verified,
        ring_s=args.ring_s,
        talk_s=args.talk_s,
        start=trio.current_time(),
    )
    await CallScreen(call.status, call.command, exit_on_end=True, linger_s=args.linger_s).run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m client.screen --demo [--peer NAME] [--verified]``: the screen on a
    scripted call. Returns the exit status: 0, 130 after Ctrl-C (2 and a usage message on a
    bad argument)."""
    parser = argparse.ArgumentParser(prog="python -m client.screen", description="the call screen")
    add = parser.add_argument
    add("--demo", action="store_true", required=True, help="the screen on a scripted call")
    add("--peer", default="Alice", help="the caller's name (default Alice)")
    add("--verified", action="store_true", help="show the safety number as verified")
    add("--ring-s", type=float, default=60.0, help="seconds it rings unanswered")
    add("--talk-s", type=float, default=600.0, help="seconds before the peer hangs up")
    add("--linger-s", type=float, default=0.5, help="seconds the ended call stays shown")
    args = parser.parse_args(argv)
    for name in ("ring_s", "talk_s", "linger_s"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            parser.error(f"--{name.replace('_', '-')} must be a number >= 0, not {value}")
    try:
        trio.run(_demo, args)
    except KeyboardInterrupt:  # Ctrl-C: the terminal is already restored
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
