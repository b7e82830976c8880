"""An authority (or whoever answers in its place) that replies with something that is
not HTTP: every fetch fails with an OSError, and a topology fetch with an EnrolError naming
the authority, never another exception (the listener's topology refresh counts a failed
fetch and carries on; an http.client exception ended it)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from profile_support import network_file

from client.enrol import EnrolError, fetch_topology, http_get, load_network

REPLIES = [
    b"garbage\r\n\r\n",  # BadStatusLine
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc",  # a broken chunk
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n",  # more than 100 headers
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n",  # a header line too long
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 5000 + b"\r\n",
]


def _serve(reply: bytes) -> Iterator[str]:
    """A loopback TCP server that answers every connection with ``reply`` and closes."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2.0)
                try:
                    conn.recv(65536)
                    conn.sendall(reply)
                except OSError:
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2.0)
        server.close()


@pytest.fixture(params=range(len(REPLIES)))
def bad_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _serve(REPLIES[request.param])


def test_a_reply_that_is_not_http_is_an_oserror(bad_url: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(OSError):
        http_get(bad_url + "/v1/topology/current", 64 * 1024, timeout_s=5.0)
    assert time.monotonic() - t0 < 5.0


def test_a_topology_fetch_from_such_authorities_is_an_enrol_error(
    bad_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "network.json"
    path.write_bytes(network_file((bad_url, bad_url), threshold=1))
    _, bundle = load_network(str(path))
    with pytest.raises(EnrolError, match="no verifiable topology document"):
        fetch_topology(bundle, time.time(), timeout_s=5.0)
