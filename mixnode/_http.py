"""HTTP with one deadline per exchange and a cap on the reply: the node's and the
authorities' only HTTP client (stdlib ``http.client``), and the deadline socket the
authority's server uses.

    body = http_get("http://127.0.0.1:8000/v1/topology/current", 5.0, max_bytes=1 << 20)

A peer that sends one byte every few seconds cannot hold an exchange past its deadline
(``DeadlineSocket``); a reply larger than ``max_bytes`` is refused (DirectoryError).
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from overlay import DirectoryError, load_json

MAX_ERROR_TEXT = 4096  # bytes of an authority's error reply read for its reason


class HttpStatusError(DirectoryError):
    """An authority answered with an HTTP status other than 200.

    ``status`` is the code and ``reason`` the authority's ``{"error": ...}`` text
    (printable ASCII, at most 200 characters, "" if it gave none);
    ``str()`` is ``"HTTP 400 descriptor.host: ..."``.
    """

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"HTTP {status} {reason}".rstrip())


class Deadline:
    """A point in time on ``clock`` (default: the monotonic clock), ``total_s`` from now."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s = total_s
        self._clock = clock
        self._at = clock() + total_s

    def left(self) -> float:
        """Seconds left (> 0); TimeoutError (an OSError) once the deadline has passed."""
        left = self._at - self._clock()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> TimeoutError:
        """The error for an exchange that did not end in time."""
        return TimeoutError(f"no complete exchange within {self.total_s:g} s")


class DeadlineSocket:
    """A connected socket whose every send and receive may take only the time left.

    ``http.client`` sets one timeout per socket operation, so a peer that sends one byte
    every few seconds would hold an exchange for as long as it likes; here each
    operation's timeout is the time left until one deadline, for the whole exchange.
    """

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self.sock = sock
        self.deadline = deadline

    def arm(self) -> None:
        """Set the socket's timeout to the time left; TimeoutError if none is."""
        self.sock.settimeout(self.deadline.left())

    def sendall(self, data: bytes) -> None:
        """``socket.sendall`` within the deadline (its timeout bounds the whole call)."""
        self.arm()
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise self.deadline.expired() from None

    def recv_into(self, buffer: memoryview) -> int:
        """``socket.recv_into`` within the deadline."""
        self.arm()
        try:
            return self.sock.recv_into(buffer)
        except TimeoutError:
            raise self.deadline.expired() from None

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        """A buffered reader whose every read is bounded by the deadline (mode "rb" only)."""
        if mode != "rb":
            raise ValueError(f"DeadlineSocket.makefile: mode {mode!r} is not supported")
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


def _open(host: str, port: int, deadline: Deadline) -> socket.socket:
    """A TCP connection to ``host:port``, each address tried with the time left."""
    error: OSError = OSError(f"{host}: no address")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(address)
        except TimeoutError:
            sock.close()
            raise deadline.expired() from None
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error


class _Http(http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, deadline: Deadline) -> None:
        super().__init__(host, port, timeout=deadline.left())
        self.deadline = deadline

    def connect(self) -> None:
        self.sock = DeadlineSocket(_open(self.host, self.port, self.deadline), self.deadline)


class _Https(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, deadline: Deadline) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=deadline.left(), context=self.tls)
        self.deadline = deadline

    def connect(self) -> None:
        raw = _open(self.host, self.port, self.deadline)
        raw.settimeout(self.deadline.left())  # the handshake's timeout bounds it as a whole
        try:
            tls = self.tls.wrap_socket(raw, server_hostname=self.host)
        except TimeoutError:
            raw.close()
            raise self.deadline.expired() from None
        except BaseException:
            raw.close()
            raise
        self.sock = DeadlineSocket(tls, self.deadline)


def http_exchange(
    url: str,
    body: bytes | None = None,
    *,
    deadline_s: float,
    max_bytes: int,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """GET ``url`` (or POST the JSON ``body``) and return the body of a 200 reply.

    The whole exchange (name lookup aside: connect, TLS, request, headers, body) must end
    within ``deadline_s`` seconds on ``clock``, else TimeoutError; the reply body may have
    at most ``max_bytes`` bytes, else DirectoryError (a longer Content-Length is refused
    before the body is read). HttpStatusError for another status; OSError or
    http.client.HTTPException for a connection that fails or a reply cut short;
    ValueError for a URL that is not ``http(s)://host[:port]/path``. Redirects are not
    followed and no proxy is used.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    deadline = Deadline(deadline_s, clock)
    kind = _Https if parts.scheme == "https" else _Http
    conn = kind(parts.hostname, parts.port, deadline)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Connection": "close", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request("GET" if body is None else "POST", target, body=body, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise HttpStatusError(resp.status, _error_text(resp.read(MAX_ERROR_TEXT)))
        if resp.length is not None and resp.length > max_bytes:
            raise DirectoryError(f"reply of {resp.length} bytes, at most {max_bytes} taken")
        data = resp.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise DirectoryError(f"reply larger than {max_bytes} bytes")
        if resp.length:  # the peer closed before its Content-Length was reached
            raise http.client.IncompleteRead(data, resp.length)
        return data
    finally:
        conn.close()


def _error_text(raw: bytes) -> str:
    """An authority's ``{"error": ...}`` reason, printable ASCII, at most 200 characters."""
    try:
        reply = load_json(raw, "error", max_bytes=MAX_ERROR_TEXT)
    except DirectoryError:
        return ""
    text = reply.get("error") if isinstance(reply, dict) else None
    if not isinstance(text, str):
        return ""
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text[:200])


def http_get(url: str, timeout_s: float, max_bytes: int) -> bytes:
    """The body of a 200 reply to a GET of ``url``: the whole exchange within ``timeout_s``
    seconds, the body at most ``max_bytes`` bytes (errors as ``http_exchange``)."""
    return http_exchange(url, deadline_s=timeout_s, max_bytes=max_bytes)


def http_post(url: str, body: bytes, timeout_s: float, max_bytes: int) -> bytes:
    """The body of a 200 reply to a POST of the JSON ``body`` to ``url``; bounds and
    errors as ``http_get``."""
    return http_exchange(url, body, deadline_s=timeout_s, max_bytes=max_bytes)
