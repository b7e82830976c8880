"""One slow authority or peer costs at most its deadline; real loopback HTTP servers.

Regression of a fake authority, first in the list, that sent headers and then one byte
every 4 s: ``fetch_result()`` returned after 40 s (the 5 s timeout applied to each read,
and authorities were asked one after another), and would have waited for 8 MB. Every
HTTP exchange with an authority or peer now has one deadline for the whole of it, and
fetches, publishing and an authority's peer pulls ask everyone at once.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from directory_support import make_network
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

import mixnode.dirauth as dirauth
from mixnode._http import HttpStatusError, http_exchange
from mixnode.config import AuthoritySection, DirAuthConfig, DirectorySection
from mixnode.dirauth import Authority, AuthorityEvent, RunningAuthority
from mixnode.directory_client import DirectoryClient, publish_report, race
from overlay import (
    VOICE,
    DirectoryError,
    NodeDescriptor,
    SignedDocument,
    canonical_json,
    sign_descriptor,
)

EPOCH = 40
EPOCH_S = 600
NOW = EPOCH * EPOCH_S + 1
AUTH_SEEDS = [bytes([i + 1]) * 32 for i in range(3)]
AUTH_KEYS = [bytes(SigningKey(s).verify_key) for s in AUTH_SEEDS]
DEADLINE_S = 1.0  # s, the exchange deadline the tests give
DRIP_S = 0.3  # s between two bytes of a slow server: well inside any per-read timeout
SLACK_S = 0.6  # s allowed past a deadline (thread start-up on a busy machine)
BOUND_S = 20.0  # s after which a test gives up on a call that should have returned
T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Helpers: a slow server, real authorities, a bound on every call


class SlowServer:
    """A TCP server on 127.0.0.1: reads a request, sends ``reply[:head]`` at once and
    then the rest one byte every ``drip_s`` seconds (silent if ``reply`` is empty)."""

    def __init__(
        self, reply: bytes, head: int, drip_s: float = DRIP_S, *, then_close: bool = False
    ) -> None:
        self.reply, self.head, self.drip_s = reply, head, drip_s
        self.then_close = then_close
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.2)
            seen = b""
            while b"\r\n\r\n" not in seen and not self.stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                seen += chunk
            try:
                conn.sendall(self.reply[: self.head])
                for i in range(self.head, len(self.reply)):
                    if self.stop.wait(self.drip_s):
                        return
                    conn.sendall(self.reply[i : i + 1])
                if not self.then_close:
                    self.stop.wait()  # then silence until the end of the test
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for t in self.threads:
            t.join(timeout=5)


DRIP_BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 8000000\r\n\r\n" + b"{" * 200


@pytest.fixture
def slow() -> Iterator[SlowServer]:
    """The report's fake authority: headers at once, then one byte of body at a time."""
    server = SlowServer(DRIP_BODY, head=DRIP_BODY.index(b"\r\n\r\n") + 4)
    yield server
    server.close()


def _within(bound_s: float, call: Callable[[], T]) -> tuple[T, float]:
    """``call()`` and the seconds it took; fails the test if it takes over ``bound_s``."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            error.append(exc)

    start = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(bound_s)
    took = time.monotonic() - start
    assert not t.is_alive(), f"still running after {bound_s} s"
    if error:
        raise error[0]
    return result[0], took


NETWORK = make_network(EPOCH, EPOCH_S)


def _body(desc: NodeDescriptor, seed: bytes) -> bytes:
    sig = sign_descriptor(desc, seed)
    return canonical_json({"descriptor": desc.to_bytes().decode("ascii"), "signature": sig.hex()})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _authority(
    tmp: Path, i: int, peers: tuple[str, ...] = (), round_interval_s: float = 3600.0
) -> Authority:
    """Authority ``i``, holding every descriptor of NETWORK; its own URL is a port nobody
    serves (it is only left out of ``peers``)."""
    port = _free_port()
    cfg = DirAuthConfig(
        AuthoritySection(f"auth{i}", "127.0.0.1", port, tmp / f"a{i}", round_interval_s, "voice"),
        DirectorySection(
            authorities=(f"http://127.0.0.1:{port}", *peers),
            authority_keys=tuple(AUTH_KEYS),
            threshold=2,
            epoch_length_s=EPOCH_S,
            genesis_s=0,
            mix_layers=3,
        ),
    )
    auth = Authority(cfg, AUTH_SEEDS[i], clock=lambda: NOW)
    for desc, seed in NETWORK:
        auth.submit(_body(desc, seed))
    return auth


@pytest.fixture
def honest(tmp_path: Path) -> Iterator[list[RunningAuthority]]:
    """Three real authorities over HTTP, each serving the same document with its own
    signature (no peers: a reader needs two of them for the threshold)."""
    running = [RunningAuthority(_authority(tmp_path, i), "127.0.0.1", 0, 3600.0) for i in range(3)]
    for r in running:
        r.start()
    deadline = time.monotonic() + BOUND_S
    while any(r.authority.signed(EPOCH) is None for r in running):  # the first round
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield running
    for r in running:
        r.stop()


def _url(r: RunningAuthority) -> str:
    return f"http://127.0.0.1:{r.port}"


def _client(urls: list[str]) -> DirectoryClient:
    return DirectoryClient(
        urls, AUTH_KEYS, 2, geometry=VOICE, clock=lambda: NOW, timeout_s=DEADLINE_S
    )


# --------------------------------------------------------------------------------------
# Named regressions: fetching


def test_a_slow_drip_authority_first_does_not_delay_the_fetch(
    slow: SlowServer, honest: list[RunningAuthority]
) -> None:
    client = _client([slow.url] + [_url(r) for r in honest])
    result, took = _within(BOUND_S, client.fetch_result)
    assert not result.from_cache and result.signatures == 2
    env = honest[0].authority.signed(EPOCH)
    assert env is not None and result.document.to_bytes() == env.document
    assert took < DEADLINE_S + SLACK_S, took


def test_when_the_threshold_needs_the_slow_authority_the_fetch_ends_at_its_deadline(
    slow: SlowServer, honest: list[RunningAuthority]
) -> None:
    """One honest authority alone has 1 of 2 signatures: the answer is an error that
    names the slow one, after one deadline, not after the 8 MB it promised."""
    client = _client([slow.url, _url(honest[0])])
    with pytest.raises(DirectoryError) as info:
        _within(BOUND_S, client.fetch_result)
    message = str(info.value)
    assert f"{slow.url}: TimeoutError: no complete exchange within 1 s" in message, message
    assert f"{_url(honest[0])}: document has 1 valid authority signatures" in message


@pytest.mark.parametrize(
    ("reply", "head"),
    [
        (b"", 0),  # accepts, reads the request, never answers
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 500 + b"\r\n\r\n", 0),  # headers dripped
        (DRIP_BODY, DRIP_BODY.index(b"\r\n\r\n") + 4),  # body dripped
    ],
    ids=["silent", "drip-headers", "drip-body"],
)
def test_every_kind_of_slow_reply_ends_at_the_deadline(reply: bytes, head: int) -> None:
    server = SlowServer(reply, head)
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            _within(
                BOUND_S, lambda: http_exchange(server.url, deadline_s=DEADLINE_S, max_bytes=1 << 23)
            )
        took = time.monotonic() - start
        assert DEADLINE_S - 0.05 <= took < DEADLINE_S + SLACK_S, took
    finally:
        server.close()


@given(
    head=st.integers(0, len(DRIP_BODY)),
    drip_s=st.floats(0.02, 0.4),
    deadline_s=st.floats(0.2, 0.6),
)
@settings(deadline=None, max_examples=12, suppress_health_check=[HealthCheck.too_slow])
def test_however_a_server_paces_its_reply_the_exchange_ends_by_its_deadline(
    head: int, drip_s: float, deadline_s: float
) -> None:
    """The kind: any split of a reply into a burst and a drip costs one deadline at most."""
    server = SlowServer(DRIP_BODY, head, drip_s)
    try:
        start = time.monotonic()
        with pytest.raises((TimeoutError, http.client.HTTPException)):
            _within(
                BOUND_S,
                lambda: http_exchange(server.url, deadline_s=deadline_s, max_bytes=1 << 23),
            )
        assert time.monotonic() - start < deadline_s + SLACK_S
    finally:
        server.close()


@pytest.mark.parametrize(
    ("reply", "error", "text"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9000000\r\n\r\n{}", DirectoryError, "9000000 bytes"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 2000, DirectoryError, "larger"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", http.client.IncompleteRead, "2 bytes"),
        (
            b'HTTP/1.1 404 Not Found\r\nContent-Length: 21\r\n\r\n{"error":"no\\u00e9x"}',
            HttpStatusError,
            "HTTP 404 no?x",
        ),
    ],
    ids=["declared-too-large", "too-large", "cut-short", "status"],
)
def test_replies_are_capped_and_checked(reply: bytes, error: type[Exception], text: str) -> None:
    server = SlowServer(reply, head=len(reply), then_close=True)
    try:
        with pytest.raises(error, match=text.replace("?", r"\?")):
            _within(BOUND_S, lambda: http_exchange(server.url, deadline_s=5.0, max_bytes=1000))
    finally:
        server.close()


def test_race_yields_each_outcome_as_it_ends_and_stops_at_its_bound() -> None:
    release = threading.Event()

    def slow_call() -> int:
        release.wait(BOUND_S)
        return 0

    def bad_call() -> int:
        raise KeyError("remote nonsense")

    try:
        start = time.monotonic()
        outs = list(race([slow_call, lambda: 2, bad_call], 0.5))
        took = time.monotonic() - start
    finally:
        release.set()
    assert sorted(o.index for o in outs) == [1, 2]  # the slow one is abandoned
    assert {o.index: (o.value, type(o.error)) for o in outs} == {
        1: (2, type(None)),
        2: (None, KeyError),
    }
    assert 0.45 <= took < 0.5 + SLACK_S


def test_a_tls_handshake_that_never_ends_ends_at_the_deadline() -> None:
    """https:// authorities: the handshake shares the exchange's one deadline."""
    server = SlowServer(b"", 0)  # reads the ClientHello, never answers it
    url = server.url.replace("http://", "https://")
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="no complete exchange within 1 s"):
            _within(BOUND_S, lambda: http_exchange(url, deadline_s=DEADLINE_S, max_bytes=1000))
        assert time.monotonic() - start < DEADLINE_S + SLACK_S
    finally:
        server.close()


# --------------------------------------------------------------------------------------
# Named regressions: publishing and the authority's rounds


def test_publishing_to_a_slow_authority_returns_within_its_deadline_with_the_reason(
    honest: list[RunningAuthority],
) -> None:
    desc, seed = NETWORK[2]
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b" " * 100
    slow = SlowServer(reply, head=reply.index(b"\r\n\r\n") + 4)
    urls = [slow.url, _url(honest[1])]
    try:
        report, took = _within(
            BOUND_S, lambda: publish_report(urls, _body(desc, seed), timeout_s=DEADLINE_S)
        )
    finally:
        slow.close()
    assert report.accepted == (_url(honest[1]),)
    assert report.refused == (f"{slow.url}: TimeoutError: no complete exchange within 1 s",)
    assert took < DEADLINE_S + SLACK_S, took


def test_a_slow_peer_does_not_stop_or_delay_an_authoritys_round(
    tmp_path: Path, slow: SlowServer, honest: list[RunningAuthority]
) -> None:
    """Authority 0 pulls from a slow peer and an honest one: the round ends within its
    interval, with the honest peer's signature, and the slow one counted."""
    interval = 1.5  # s: each exchange with a peer may take a third of it
    auth = _authority(tmp_path / "round", 0, (slow.url, _url(honest[1])), interval)
    assert auth.peer_timeout_s == pytest.approx(interval / 3)
    _, took = _within(BOUND_S, auth.sync_round)
    assert took < interval, took
    env = auth.signed(EPOCH)
    assert env is not None
    doc = env.verify(AUTH_KEYS, 2, geometry=VOICE)  # ours and the honest peer's
    assert len(doc.nodes) == len(NETWORK)
    # The slow peer: its descriptor and withdrawal lists, two document signatures and its
    # network bundle signature, all unanswered in time.
    assert auth.counters[AuthorityEvent.PEER_UNREACHABLE] == 5


def test_a_long_round_interval_still_bounds_each_peer_exchange(tmp_path: Path) -> None:
    assert _authority(tmp_path / "x", 0, round_interval_s=3600).peer_timeout_s == 3.0
    assert _authority(tmp_path / "y", 0, round_interval_s=0.1).peer_timeout_s == 0.5


# --------------------------------------------------------------------------------------
# The authority's server: a slow client cannot hold a thread, nor many clients all of them


def test_a_client_dripping_its_request_is_cut_off_at_the_connection_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dirauth, "HANDLER_TIMEOUT_S", DEADLINE_S)
    running = RunningAuthority(_authority(tmp_path, 0), "127.0.0.1", 0, 3600.0).start()
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as s:
            start = time.monotonic()
            closed = False
            for byte in b"GET /v1/health HTTP/1.1\r\nX-Pad: " + b"a" * 100:  # about 40 s
                try:
                    s.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                s.settimeout(DRIP_S)
                try:
                    if s.recv(1) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                    break
            took = time.monotonic() - start
        assert closed
        assert took < DEADLINE_S + SLACK_S + DRIP_S, took
    finally:
        running.stop()


def test_connections_beyond_the_cap_are_closed_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dirauth, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(dirauth, "HANDLER_TIMEOUT_S", 30.0)
    running = RunningAuthority(_authority(tmp_path, 0), "127.0.0.1", 0, 3600.0).start()
    url = f"http://127.0.0.1:{running.port}"
    idle = [socket.create_connection(("127.0.0.1", running.port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.2)  # both are being served (waiting for a request line)
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as extra:
            assert extra.recv(1) == b""  # closed unanswered
        assert running.authority.counters[AuthorityEvent.CONNECTION_SHED] == 1
        for s in idle:
            s.close()
        deadline = time.monotonic() + BOUND_S
        while True:  # the slots come back once the idle connections are gone
            try:
                health = json.loads(http_exchange(f"{url}/v1/health", deadline_s=5, max_bytes=4096))
                break
            except (OSError, http.client.HTTPException):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert health["counters"]["connection_shed"] >= 1
    finally:
        for s in idle:
            s.close()
        running.stop()


def test_the_envelope_served_is_what_readers_verify(honest: list[RunningAuthority]) -> None:
    raw = http_exchange(f"{_url(honest[0])}/v1/topology/current", deadline_s=5, max_bytes=1 << 22)
    env = SignedDocument.from_bytes(raw)
    assert env.verify(AUTH_KEYS[:1], 1, geometry=VOICE).epoch == EPOCH
