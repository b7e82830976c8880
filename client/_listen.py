"""``phantom-call listen`` and ``phantom-call dial``: the always-on client and its control.

    phantom-call listen --dir ~/.config/phantom-call --auto-answer --report me.json
    phantom-call dial ada --dir ~/.config/phantom-call --duration 30
    phantom-call mute on          # also: mute off, answer, decline, hangup, status [--json]

``listen`` opens the profile, fetches the topology, attaches to the profile's gateway from a
UDP socket bound to ``--bind`` and stays online at the constant rate (``client.phone``)
until SIGTERM or SIGINT; it serves ``PROFILE/control.sock`` (``client.control``), which
``dial`` and the one-request commands use: no passphrase is needed while the listener
runs. Exit codes: 0 ok, 1 the call failed / no listener / nothing to do (no call to mute,
hang up, answer) / the network is unreachable, 2 a bad argument or profile, 4 a wrong
passphrase.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import trio

from overlay import PhantomError, TopologyDocument, UsageError, finite_number

from ._commands import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    _guarded,
    _open,
    _profile_options,
    listener_answers,
    wall_clock,
)
from ._signaling import Role
from ._voice import Pcm, VoiceProfile
from .audio import (
    AudioError,
    LiveMic,
    LiveSpeaker,
    device_spec,
    load_mic_file,
    open_live_mic,
    open_live_speaker,
)
from .call import ANSWER_DELAY_S, DEFAULT_MEAN_DELAY_S
from .contacts import ContactError, TrustState
from .control import (
    MAX_LINE,
    ControlError,
    Dial,
    LineReader,
    Mute,
    Request,
    Simple,
    encode_message,
    parse_reply,
    parse_request,
    request_message,
)
from .enrol import fetch_topology
from .gateway_link import AttachError, open_gateway_link
from .identity import format_safety_number, safety_number
from .phone import DIALER_GONE, MODE_BADGE, ActiveCall, Phone, PhoneOptions
from .profile import CONTROL_SOCKET, Profile
from .screen import CallScreen, CallStatus, Command, Phase

_Handler: TypeAlias = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:
    Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

SOCKET_MODE = 0o600
REPLY_TIMEOUT_S = 10.0  # seconds a one-request command waits for the listener's reply
STOP_GRACE_S = 0.5  # on SIGTERM mid-call: time for our HANGUP to leave before we go
TOPOLOGY_REFRESH_S = 60.0  # the listener asks for the current topology this often
MAX_CONTROL_CONNECTIONS = 32  # open at once; one more is told so and closed
CONTROL_SEND_TIMEOUT_S = 5.0  # a command that reads none of our replies this long is closed
ACCEPT_RETRY_S = 0.1  # after accept failed (out of file descriptors): wait, then again
_SECONDS = finite_number(0.001, 86_400, what="seconds", verb="want")
_DELAY_MS = finite_number(0, 1000, what="milliseconds", verb="want")


# -- the control socket ----------------------------------------------------------------------


def claim_control_socket(path: Path) -> socket.socket:
    """A listening AF_UNIX socket at ``path``, mode 0600. A stale socket file (nobody
    answers on it) is replaced; CommandError if another listener answers there."""
    if path.exists() or path.is_symlink():
        try:
            answers = listener_answers(path)
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror}", EXIT_FAILED) from None
        if answers:
            raise CommandError(
                f"another listener is running on this profile ({path} answers)", EXIT_FAILED
            )
        path.unlink(missing_ok=True)  # left by a listener that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: never readable by others, not even for a moment
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(f"another listener is running on this profile ({path})",
                               EXIT_FAILED) from None  # fmt: skip
        raise CommandError(f"{path}: {exc.strerror}", EXIT_FAILED) from None
    finally:
        os.umask(old)
    os.chmod(path, SOCKET_MODE)
    sock.listen(8)
    return sock


async def serve_control(
    phone: Phone,
    sock: socket.socket,
    *,
    counters: Counter[str] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer control connections on ``sock`` until cancelled (``client.control``), at
    most ``MAX_CONTROL_CONNECTIONS`` at once: one more gets an error reply and is closed
    (counted ``control_busy`` in ``counters``, default ``phone.counters``). Where the
    system names a connection's user (SO_PEERCRED), one from another user than ours is
    closed unanswered (``control_foreign_user``), whatever the socket file's mode became.
    An accept that fails (no file descriptor left) is retried after ``ACCEPT_RETRY_S``."""
    count = phone.counters if counters is None else counters
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    slots = trio.Semaphore(MAX_CONTROL_CONNECTIONS)
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            try:
                stream = await listener.accept()
            except OSError:
                await trio.sleep(ACCEPT_RETRY_S)
                continue
            if _peer_uid(stream) not in (None, os.geteuid()):
                count["control_foreign_user"] += 1
                await trio.aclose_forcefully(stream)
            elif slots.value == 0:
                count["control_busy"] += 1
                nursery.start_soon(_refuse, stream)
            else:
                slots.acquire_nowait()
                nursery.start_soon(_connection_in_slot, phone, stream, slots)


def _peer_uid(stream: trio.SocketStream) -> int | None:
    """The user id of the process at the other end of an AF_UNIX connection; None where
    the system does not tell (no SO_PEERCRED), -1 (nobody's: refused) if asking failed."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        creds = stream.socket.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return -1
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def _refuse(stream: trio.SocketStream) -> None:
    async with stream:
        await _Replies(stream).send({"type": "error", "error": "too many control connections"})


async def _connection_in_slot(
    phone: Phone, stream: trio.SocketStream, slots: trio.Semaphore
) -> None:
    try:
        await _connection(phone, stream)
    finally:
        slots.release()


class _Replies:
    """The sending side of one control connection: one message at a time (the events of
    the call it dialed and the replies to its requests share the stream). A command that
    does not read a message within ``CONTROL_SEND_TIMEOUT_S`` (its socket buffer full) has
    its connection closed, so it costs no more."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self._lock = trio.Lock()

    async def send(self, message: dict[str, object]) -> None:
        async with self._lock:
            try:
                with trio.move_on_after(CONTROL_SEND_TIMEOUT_S) as scope:
                    await self.stream.send_all(encode_message(message))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if scope.cancelled_caught:
                await trio.aclose_forcefully(self.stream)


def _status(phone: Phone) -> dict[str, object]:
    call = phone.current
    out: dict[str, object] = {"type": "status", "online": True, "contacts": len(phone.peers),
                              "calls": len(phone.calls), "call": None}  # fmt: skip
    if call is not None:
        out["call"] = {"contact": call.name, "role": call.role.name.lower(),
                       "trust": str(call.state), "mode": MODE_BADGE,
                       "events": sorted(call.times, key=call.times.__getitem__),
                       "muted": call.muted}  # fmt: skip
    return out


async def _forward_events(out: _Replies, call: ActiveCall, offset_s: float) -> None:
    """Send ``call``'s events to the connection that dialed it, each once, until it ended
    (mute switches as they happen); ``offset_s``: Trio's clock -> CLOCK_MONOTONIC."""
    names = {"dial": "dialing", "ringing": "ringing", "connected": "connected"}
    sent: set[str] = set()
    muted = False  # a call starts unmuted
    while True:
        changed = call.changed
        for key, event in names.items():
            if key in call.times and key not in sent:
                sent.add(key)
                await out.send({"type": "event", "event": event, "t": call.times[key]})
        if call.muted != muted and not call.done.is_set():
            muted = call.muted
            await out.send({"type": "event", "event": "muted" if muted else "unmuted",
                            "t": trio.current_time() + offset_s})  # fmt: skip
        if call.done.is_set():
            await out.send({"type": "event", "event": "ended", "reason": call.reason,
                            "t": call.times.get("ended"),
                            "connected": "connected" in call.times})  # fmt: skip
            return
        await changed.wait()


async def _connection(phone: Phone, stream: trio.SocketStream) -> None:
    owned: ActiveCall | None = None
    reader, out = LineReader(), _Replies(stream)
    async with stream, trio.open_nursery() as nursery:
        try:
            while True:
                try:
                    data = await stream.receive_some(MAX_LINE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                try:
                    lines = reader.feed(data)
                except ControlError as exc:
                    await out.send({"type": "error", "error": str(exc)})
                    continue
                for line in lines:
                    try:
                        request = parse_request(line)
                    except ControlError as exc:
                        await out.send({"type": "error", "error": str(exc)})
                        continue
                    reply, call = _handle(phone, request, owned)
                    if call is not None:
                        owned = call
                        nursery.start_soon(_forward_events, out, call, phone.offset)
                    if reply is not None:
                        await out.send(reply)
        finally:
            if owned is not None and not owned.caller.ended.is_set():
                phone.hangup(owned, DIALER_GONE)
            # the events of a call this connection placed go nowhere once it closed
            nursery.cancel_scope.cancel()


def _handle(
    phone: Phone, request: Request, owned: ActiveCall | None
) -> tuple[dict[str, object] | None, ActiveCall | None]:
    """The reply to one request (None: the events say it) and the call it placed."""
    if isinstance(request, Dial):
        if owned is not None and not owned.done.is_set():
            return {"type": "error", "error": "this connection already has a call"}, None
        try:
            return None, phone.dial(request.contact, request.duration_s)
        except (UsageError, ContactError, PhantomError) as exc:
            return {"type": "error", "error": str(exc)}, None
    if isinstance(request, Mute):
        if phone.mute(request.on):
            return {"type": "ok"}, None
        verb = "mute" if request.on else "unmute"
        return {"type": "error", "error": f"mute: no call to {verb}"}, None
    if request.type == "status":
        return _status(phone), None
    done = {"hangup": phone.hangup, "answer": phone.answer, "decline": phone.decline}
    if done[request.type]():
        return {"type": "ok"}, None
    verb = "hang up" if request.type == "hangup" else request.type
    return {"type": "error", "error": f"{request.type}: no call to {verb}"}, None


# -- listen ------------------------------------------------------------------------------


ENDED_SHOWN_S = 10.0  # a call that ended stays on the screen this long (its reason)


def _default_bind(host: str) -> str:
    try:
        return "127.0.0.1" if ipaddress.ip_address(host).is_loopback else "0.0.0.0"
    except ValueError:  # a host name
        return "0.0.0.0"


class _Lines:
    """The plain line interface: one line per thing to see, with the local time."""

    def __call__(self, line: str) -> None:
        print(f"{time.strftime('%H:%M:%S', time.localtime(wall_clock()))}  {line}", flush=True)


def end_text(peer: str, reason: str, ended_here: bool) -> str:
    """Why a call ended, in words for the call screen, with the reason's code as the
    report and ``dial`` give it: ``end_text("bob", "HANGUP", False)`` is ``"bob hung up
    (HANGUP)"``; ``ended_here``: this side hung up or declined."""
    words = {
        "HANGUP": "you hung up" if ended_here else f"{peer} hung up",
        "DECLINED": "you declined" if ended_here else f"{peer} declined",
        "NO_ANSWER": f"{peer} did not answer",
        "BUSY": f"{peer} is in another call",
        "TIMEOUT": f"nothing more came from {peer}",
        DIALER_GONE: "the dial command stopped",
        "listener stopped": "the listener stopped",
    }.get(reason)
    return reason if words is None else f"{words} ({reason})"


def screen_status(phone: Phone) -> CallStatus:
    """What the call screen shows now: the current call (phase, contact, trust state and
    safety number, elapsed time, mute, live figures) or idle, with the time online and the
    uplink rate. The delay shown is the one-way estimate, half the median round trip the
    peer's receiver reports gave over the last seconds; before the first one, the jitter
    buffer's playout delay (how far playout lags the fastest recent frame, ms), labelled
    so. Jitter (RFC 3550, ms) and loss (fraction) come from the arriving packets."""
    now = trio.current_time()
    online = None if phone.started_at is None else max(0.0, now + phone.offset - phone.started_at)
    call = phone.current
    if call is None:
        return CallStatus(online_s=online, uplink_bytes_per_s=phone.uplink_bytes_per_s())
    caller = call.caller
    if caller.ended.is_set():
        phase = Phase.ENDED
    elif "connected" in call.times:
        phase = Phase.CONNECTED
    elif caller.ringing.is_set():
        phase = Phase.RINGING_IN if call.role is Role.CALLEE else Phase.RINGING_OUT
    else:
        phase = Phase.DIALING if call.role is Role.CALLER else Phase.IDLE
    since = call.times.get("connected")
    until = call.times.get("ended", now + phone.offset)
    peer = phone.peers.get(call.name)
    number = ""
    if peer is not None:
        mine = phone.profile.identity.public
        number = format_safety_number(safety_number(mine, peer.contact.card.identity))
    stats = caller.media_in.trace.stats
    playout = None if stats is None else 1000 * max(0.0, stats.delay_s - stats.min_delay_s)
    estimate = call.live.one_way_delay_ms(now)
    return CallStatus(
        peer=call.name, phase=phase, verified=call.state is TrustState.VERIFIED,
        safety_number=number, mode=MODE_BADGE,
        end_reason=None if call.reason is None else end_text(call.name, call.reason,
                                                             call.ended_here),
        elapsed_s=0.0 if since is None else max(0.0, until - since), online_s=online,
        uplink_bytes_per_s=phone.uplink_bytes_per_s(), muted=call.muted,
        one_way_delay_ms=playout if estimate is None else estimate,
        jitter_ms=call.live.jitter_ms(), loss=call.live.loss(now),
        delay_is_playout=estimate is None,
    )  # fmt: skip


async def _screen(phone: Phone, stop: trio.Event) -> None:
    """The call screen (client.screen) with its keys: accept, decline, mute, unmute, hang
    up, quit."""

    async def command(cmd: Command) -> None:
        actions = {Command.ACCEPT: phone.answer, Command.DECLINE: phone.decline,
                   Command.HANGUP: phone.hangup}  # fmt: skip
        if cmd is Command.QUIT:
            stop.set()
        elif cmd in (Command.MUTE, Command.UNMUTE):
            phone.mute(cmd is Command.MUTE)
        elif cmd in actions:
            actions[cmd]()

    # Quit sets ``stop``; on SIGTERM the screen restores the terminal and raises the signal
    # again, for ``_stop_on_signal``.
    await CallScreen(lambda: screen_status(phone), command, hold_ended_s=ENDED_SHOWN_S).run()


async def _stop_on_signal(
    signals: AsyncIterator[int], stop: trio.Event, ui: Callable[[str], None]
) -> None:
    async for signum in signals:
        ui(f"stopping ({signal.Signals(signum).name})")
        stop.set()
        return


async def _refresh_topology(phone: Phone, profile: Profile) -> None:
    """Adopt each new epoch's topology document (fetched in a worker thread, verified
    against the network's threshold; ``Phone.adopt``), so new paths use the epoch's keys
    and a re-attach the gateway's. A failed fetch is counted
    (``deliveries["topology_fetch_failed"]`` in the report) and retried."""
    while True:
        await trio.sleep(TOPOLOGY_REFRESH_S)
        try:
            doc = await trio.to_thread.run_sync(fetch_topology, profile.network, wall_clock())
        except PhantomError:
            phone.counters["topology_fetch_failed"] += 1
            continue
        if doc.epoch > phone.uplink.doc.epoch:
            phone.adopt(doc)


async def _listen_main(
    profile: Profile, doc: TopologyDocument, sock: socket.socket, options: PhoneOptions,
    screen: bool,
) -> None:  # fmt: skip
    node = doc.node(profile.gateway_id)
    if node.client_port is None:
        raise UsageError("the profile's gateway has no client port in the topology")
    # With the call screen on a terminal it shows what the lines would say.
    ui = _Lines() if not (screen and sys.stdout.isatty()) else (lambda line: None)
    stop = trio.Event()
    async with open_gateway_link(doc.geometry, (node.host, node.client_port),
                                 node.epoch_key(doc.epoch), profile.mailbox_key,
                                 bind=options.bind) as link:  # fmt: skip
        phone = Phone(profile, doc, link, options, ui=ui, wall_clock=wall_clock)
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(phone.run)
                    await nursery.start(serve_control, phone, sock)
                    nursery.start_soon(_refresh_topology, phone, profile)
                    control = profile.directory / CONTROL_SOCKET
                    ui(f"online: gateway {node.name}, {_count(len(phone.peers), 'contact')}, "
                       f"bound to {options.bind}; control socket {control}")  # fmt: skip
                    if screen:
                        nursery.start_soon(_screen, phone, stop)
                    nursery.start_soon(_stop_on_signal, signals, stop, ui)
                    await stop.wait()
                    call = phone.current
                    if call is not None and not call.caller.ended.is_set():
                        phone.hangup(call, "listener stopped")
                        await trio.sleep(STOP_GRACE_S)
                    if call is not None:
                        phone.finish(call)
                    nursery.cancel_scope.cancel()
        finally:
            phone.write_report()
            try:
                phone.save_channels()
            except PhantomError as exc:
                ui(f"warning: {exc}")
            phone.close()


def _mic(value: str | None, voice: VoiceProfile) -> Pcm | LiveMic | None:
    """``--mic``: None, a live microphone (checked, opened when a call connects) or a file."""
    if value is None:
        return None
    spec = device_spec(value)
    if spec is not None:
        return open_live_mic(spec, voice)
    return load_mic_file(value, voice.sample_rate_hz)


def _speaker(value: str | None, voice: VoiceProfile) -> Path | LiveSpeaker | None:
    """``--speaker``: None, a live speaker (checked, opened when a call connects) or a file."""
    if value is None:
        return None
    spec = device_spec(value)
    return Path(value) if spec is None else open_live_speaker(spec, voice)


@_guarded
def cmd_listen(args: argparse.Namespace) -> int:
    profile = _open(args)
    # The listener runs for days: other commands (contact add, calls) use the profile
    # meanwhile, so it holds the profile's lock only around its own writes (client.phone).
    lock, args.profile_lock = args.profile_lock, None
    if lock is not None:
        os.close(lock)
    options = PhoneOptions(auto_answer=args.auto_answer, report=args.report,
                           mean_delay_s=args.mean_delay_ms / 1000)  # fmt: skip
    try:  # a microphone or speaker that cannot be used stops us before we go online
        options.mic = _mic(args.mic, options.voice)
        options.speaker = _speaker(args.speaker, options.voice)
    except AudioError as exc:
        raise CommandError(str(exc)) from None
    path = profile.directory / CONTROL_SOCKET
    sock = claim_control_socket(path)
    try:
        doc = fetch_topology(profile.network, wall_clock())
        if profile.gateway_id not in doc.by_id:
            raise CommandError(
                "the profile's gateway is not in the current topology "
                "(phantom-call init --force picks another)",
                EXIT_FAILED,
            )
        options.bind = args.bind or _default_bind(doc.node(profile.gateway_id).host)
        screen = not args.no_screen and sys.stdin.isatty()
        options.keys = screen
        trio.run(_listen_main, profile, doc, sock, options, screen)
    except AttachError as exc:
        raise CommandError(f"the gateway did not answer: {exc}", EXIT_FAILED) from None
    except OSError as exc:
        raise CommandError(f"--bind {args.bind}: {exc.strerror}", EXIT_FAILED) from None
    finally:
        sock.close()
        path.unlink(missing_ok=True)
    return EXIT_OK


# -- dial --------------------------------------------------------------------------------


def _connect(directory: Path) -> socket.socket:
    path = directory / CONTROL_SOCKET
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise CommandError(f"no listener on {directory} (start one: phantom-call listen "
                           f"--dir {directory})", EXIT_FAILED) from None  # fmt: skip
    return sock


def _reply_errors(handler: _Handler) -> _Handler:
    """``handler`` (already ``_guarded``), with a listener's unreadable reply (ControlError)
    as its message and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except ControlError as exc:
            print(f"phantom-call: error: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return run


@_reply_errors
@_guarded
def cmd_dial(args: argparse.Namespace) -> int:
    """Dial through the listener and print its events until the call ended: exit 0 when it
    connected and ended by a hang-up (also Ctrl-C mid-call: closing the connection makes the
    listener hang up, reason "dialer gone"), 1 otherwise."""
    sock = _connect(args.dir)
    state = {"connected": False}
    with sock:
        try:
            return _follow_call(sock, args, state)
        except KeyboardInterrupt:
            if state["connected"]:
                print(f"hung up {args.name} (dial stopped)", flush=True)
                return EXIT_OK
            print(f"phantom-call: dial stopped before {args.name} answered: the call is "
                  "cancelled", file=sys.stderr)  # fmt: skip
            return EXIT_FAILED


def _follow_call(sock: socket.socket, args: argparse.Namespace, state: dict[str, bool]) -> int:
    """``cmd_dial``'s request and events; ``state["connected"]`` set once it connected."""
    reader = LineReader()
    sock.sendall(encode_message({"type": "dial", "contact": args.name,
                                 "duration_s": args.duration}))  # fmt: skip
    while True:
        try:
            data = sock.recv(MAX_LINE)
        except ConnectionError:  # reset: the listener died with our request unread
            data = b""
        if not data:
            print("phantom-call: the listener went away mid-call", file=sys.stderr)
            return EXIT_FAILED
        for line in reader.feed(data):
            msg = parse_reply(line)
            if msg["type"] == "error":
                raise CommandError(str(msg.get("error")), EXIT_USAGE)
            if msg["type"] != "event":
                continue
            event = msg.get("event")
            if event == "connected":
                state["connected"] = True
            if event != "ended":
                print(f"{event} {args.name}", flush=True)
                continue
            reason = msg.get("reason")
            print(f"ended: {reason}", flush=True)
            if state["connected"] and reason == "HANGUP":
                return EXIT_OK
            why = f"ended by {reason}" if state["connected"] else "never connected"
            print(f"phantom-call: the call {why} ({reason})", file=sys.stderr)
            return EXIT_FAILED


# -- one request each: hangup, answer, decline, mute, status --------------------------------


def ask_listener(
    directory: Path, request: Request, timeout_s: float = REPLY_TIMEOUT_S
) -> dict[str, object]:
    """Send ``request`` to the listener of the profile ``directory`` and return its one
    reply (a dict with a ``type``). CommandError (exit 1) when no listener runs there or
    it does not answer within ``timeout_s`` seconds; ControlError for a reply that is not
    a control message."""
    sock = _connect(directory)
    reader = LineReader()
    with sock:
        sock.settimeout(timeout_s)
        try:
            sock.sendall(encode_message(request_message(request)))
            while True:
                data = sock.recv(MAX_LINE)
                if not data:
                    raise CommandError("the listener closed the connection without a reply",
                                       EXIT_FAILED)  # fmt: skip
                for line in reader.feed(data):
                    return parse_reply(line)
        except TimeoutError:
            raise CommandError(f"the listener on {directory} did not answer within "
                               f"{timeout_s:g} s", EXIT_FAILED) from None  # fmt: skip
        except OSError as exc:
            raise CommandError(f"{directory / CONTROL_SOCKET}: {exc.strerror or exc}",
                               EXIT_FAILED) from None  # fmt: skip


_DONE = {"hangup": "hung up", "answer": "answered", "decline": "declined"}


@_reply_errors
@_guarded
def cmd_control(args: argparse.Namespace) -> int:
    """``hangup``, ``answer``, ``decline``, ``mute on|off``: one request to the listener;
    exit 0 when it was done, 1 when there was no call to do it to (or no listener)."""
    verb = args.control
    request: Request = Mute(args.state == "on") if verb == "mute" else Simple(verb)
    reply = ask_listener(args.dir, request)
    if reply["type"] != "ok":
        raise CommandError(str(reply.get("error", reply)), EXIT_FAILED)
    print(_DONE.get(verb) or ("muted" if args.state == "on" else "unmuted"))
    return EXIT_OK


def _count(n: object, noun: str) -> str:
    """``n noun`` with the noun's plural when ``n`` is not 1 ("1 contact", "0 calls")."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def describe_status(reply: dict[str, object]) -> list[str]:
    """A status reply as lines of text: the listener, then its current call or none."""
    lines = [f"online: {_count(reply.get('contacts'), 'contact')}, "
             f"{_count(reply.get('calls'), 'call')} ended since it started"]  # fmt: skip
    call = reply.get("call")
    if not isinstance(call, dict):
        return [*lines, "no call"]
    events = call.get("events")
    phase = events[-1] if isinstance(events, list) and events else "?"
    phase = "dialing" if phase == "dial" else phase  # the dial command's word for it
    muted = ", MUTED" if call.get("muted") else ""
    lines.append(f"call with {call.get('contact')}: {call.get('role')}, {phase}, "
                 f"{call.get('trust')}, {call.get('mode')}{muted}")  # fmt: skip
    return lines


@_reply_errors
@_guarded
def cmd_status(args: argparse.Namespace) -> int:
    reply = ask_listener(args.dir, Simple("status"))
    if reply["type"] != "status":
        raise CommandError(str(reply.get("error", reply)), EXIT_FAILED)
    print(json.dumps(reply, sort_keys=True) if args.json else "\n".join(describe_status(reply)))
    return EXIT_OK


# -- the parser --------------------------------------------------------------------------


def add_online_commands(sub: Subcommands) -> None:
    """Add ``listen``, ``dial`` and the one-request commands (``answer``, ``decline``,
    ``hangup``, ``mute``, ``status``) to ``phantom-call``'s parser."""
    add_options = _profile_options
    listen = sub.add_parser("listen", help="stay online at the constant rate; calls ring here")
    add_options(listen)
    listen.add_argument("--bind", default=None, metavar="IP",
                        help="local address of the gateway link (default 127.0.0.1 for a "
                             "gateway on loopback, else 0.0.0.0)")  # fmt: skip
    listen.add_argument("--auto-answer", action="store_true",
                        help=f"pick up incoming calls {ANSWER_DELAY_S:g} s after they ring "
                             "(default: off: the screen's key or phantom-call answer)")  # fmt: skip
    listen.add_argument("--mic", default=None, metavar="FILE.wav|device[:NAME]",
                        help="microphone: a WAV file played from the start of each call, or "
                             "'device' (the default sound input; 'device:NAME' picks one by "
                             "PortAudio index or name), open while a call is connected; "
                             "needs phantom-mixnet[audio] and PortAudio (libportaudio2); "
                             "default silence")  # fmt: skip
    listen.add_argument("--speaker", default=None, metavar="FILE.wav|device[:NAME]",
                        help="speaker: write what was heard to this WAV file at each "
                             "call's end, or play it on 'device' (the default sound output; "
                             "'device:NAME' as for --mic); default none")  # fmt: skip
    listen.add_argument("--report", type=Path, default=None, metavar="FILE.json",
                        help="per-process JSON report, written at each call's end and on "
                             "exit (default: none)")  # fmt: skip
    listen.add_argument("--mean-delay-ms", type=_DELAY_MS, metavar="MS",
                        default=DEFAULT_MEAN_DELAY_S * 1000,
                        help="mean sender-chosen delay per hop, milliseconds in 0..1000 "
                             "(default: %(default)g)")  # fmt: skip
    listen.add_argument("--no-screen", action="store_true",
                        help="plain log lines, no keys (also without a terminal)")  # fmt: skip
    listen.set_defaults(handler=cmd_listen)

    help_dir = "the profile whose listener to ask (default as for listen)"
    dial = sub.add_parser("dial", help="call a contact through the running listener")
    dial.add_argument("name", help="the contact's name")
    dial.add_argument("--dir", type=Path, default=None, help=help_dir)
    dial.add_argument("--duration", type=_SECONDS, default=None, metavar="S",
                      help="hang up S seconds after the call connects (default: when this "
                           "command is stopped)")  # fmt: skip
    dial.set_defaults(handler=cmd_dial)

    for verb, text in (
        ("answer", "pick up the call ringing at the running listener"),
        ("decline", "refuse the call ringing at the running listener"),
        ("hangup", "hang up the running listener's call"),
        ("mute", "mute or unmute the microphone of the running listener's call"),
        ("status", "the running listener: online, its contacts, its call"),
    ):
        p = sub.add_parser(verb, help=text)
        if verb == "mute":
            p.add_argument("state", choices=("on", "off"),
                           help="on: the other side hears silence (sent at the same rate "
                                "and size); off: your microphone again")  # fmt: skip
        if verb == "status":
            p.add_argument("--json", action="store_true", help="the listener's reply as JSON")
        p.add_argument("--dir", type=Path, default=None, help=help_dir)
        p.set_defaults(handler=cmd_status if verb == "status" else cmd_control, control=verb)
