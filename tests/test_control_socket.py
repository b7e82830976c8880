"""The listener's control socket under abuse (``client._listen.serve_control``): a line
nested thousands deep, more connections than it serves at once, a command that never
reads its replies. Each costs a bounded amount and the listener keeps answering."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

from client._listen import (
    CONTROL_SEND_TIMEOUT_S,
    MAX_CONTROL_CONNECTIONS,
    claim_control_socket,
    serve_control,
)
from client.control import MAX_LINE, LineReader, parse_reply
from client.phone import Phone

# Requests that fail to parse never reach the phone: the listener is served without one.
NO_PHONE = cast(Phone, None)


async def _connect(path: Path) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(str(path))
    return trio.SocketStream(sock)


async def _replies(stream: trio.SocketStream, n: int) -> list[dict[str, object]]:
    reader, out = LineReader(), list[dict[str, object]]()
    while len(out) < n:
        data = await stream.receive_some(MAX_LINE)
        if not data:
            break
        out += [parse_reply(line) for line in reader.feed(data)]
    return out


async def _serve(nursery: trio.Nursery, tmp_path: Path) -> Path:
    path = tmp_path / "control.sock"
    sock = claim_control_socket(path)
    await nursery.start(partial(serve_control, NO_PHONE, sock, counters=Counter[str]()))
    return path


async def test_deep_nesting_is_answered_with_an_error_and_the_listener_goes_on(
    tmp_path: Path,
) -> None:
    """Regression: the RecursionError of such a line ended the listener's nursery."""
    async with trio.open_nursery() as nursery:
        path = await _serve(nursery, tmp_path)
        for _ in range(2):
            stream = await _connect(path)
            await stream.send_all(b"[" * 5000 + b"]" * 5000 + b"\n" + b"[1]\n")
            replies = await _replies(stream, 2)
            assert [r["type"] for r in replies] == ["error", "error"]
            assert replies[0]["error"] == "not a JSON line"
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_connections_beyond_the_limit_are_refused_and_slots_come_back(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        path = await _serve(nursery, tmp_path)
        held = [await _connect(path) for _ in range(MAX_CONTROL_CONNECTIONS)]
        for stream in held:  # each is served
            await stream.send_all(b"x\n")
            assert (await _replies(stream, 1))[0]["error"] == "not a JSON line"
        extra = await _connect(path)
        (reply,) = await _replies(extra, 2)  # one error, then the listener closes it
        assert reply["error"] == "too many control connections"
        await extra.aclose()
        await held.pop().aclose()
        await trio.sleep(0.2)  # the listener sees the close and frees the slot
        again = await _connect(path)
        await again.send_all(b"x\n")
        assert (await _replies(again, 1))[0]["error"] == "not a JSON line"
        for stream in (*held, again):
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_command_that_never_reads_is_closed_after_the_send_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Before, its replies blocked the connection's task for good."""
    async with trio.open_nursery() as nursery:
        path = await _serve(nursery, tmp_path)
        stream = await _connect(path)
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        start, sent = trio.current_time(), 0
        with trio.move_on_after(10 * CONTROL_SEND_TIMEOUT_S):
            try:
                while True:  # error replies pile up unread until the listener gives up
                    await stream.send_all(b"x\n" * 1024)
                    sent += 1
            except trio.BrokenResourceError:
                pass
        assert trio.current_time() - start < 5 * CONTROL_SEND_TIMEOUT_S
        assert sent < 10_000
        await stream.aclose()
        nursery.cancel_scope.cancel()


FOREIGN_UID = 65534  # nobody
SYSTEM_PYTHON = "/usr/bin/python3"  # one that user may run (the venv's may be private)


@pytest.mark.skipif(
    not hasattr(socket, "SO_PEERCRED") or os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
    reason="needs SO_PEERCRED, root (to run a client as another user) and /usr/bin/python3",
)
async def test_a_connection_from_another_user_is_closed_unanswered() -> None:
    """Even when the socket file and its directory were opened to everyone (a chmod by
    mistake), a command run by another user gets no answer and changes nothing."""
    directory = Path(tempfile.mkdtemp(prefix="pn-ctl-"))  # not under 0700 pytest dirs
    try:
        directory.chmod(0o777)
        path = directory / "control.sock"
        counters = Counter[str]()
        code = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "s.connect(sys.argv[1])\n"
            "s.settimeout(5)\n"
            "try:\n"  # the listener may close before our request is even written
            "    s.sendall(sys.argv[2].encode() + bytes([10]))\n"
            "    print(repr(s.recv(4096)))\n"
            "except (BrokenPipeError, ConnectionResetError):\n"
            "    print(repr(b''))\n"
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(serve_control, NO_PHONE, claim_control_socket(path), counters=counters)
            )
            path.chmod(0o666)
            done = await trio.run_process(
                [SYSTEM_PYTHON, "-c", code, str(path), '{"type": "status"}'], capture_stdout=True,
                capture_stderr=True, check=False, user=FOREIGN_UID,
            )  # fmt: skip
            nursery.cancel_scope.cancel()
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == b"b''"  # closed unanswered
        assert counters["control_foreign_user"] == 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
