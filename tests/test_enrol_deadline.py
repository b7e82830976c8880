"""A slow authority cannot hold ``phantom-call init``: the whole reply has one deadline."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from client.enrol import http_get


class _Drip(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):  # one byte every 50 ms: each read is quick, the whole is not
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.05)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def drip_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_dripping_reply_ends_at_the_deadline(drip_url: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="within 1 s"):
        http_get(drip_url, 8 * 1024 * 1024, timeout_s=1.0)
    assert time.monotonic() - t0 < 3.0  # the per-read timeout alone would wait ~50 s


def test_a_reply_over_the_limit_is_refused(drip_url: str) -> None:
    with pytest.raises(ValueError, match="larger than 10 bytes"):
        http_get(drip_url, 10, timeout_s=5.0)
