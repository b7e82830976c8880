"""Logs and directory failures: formats, repeat limits, every failure typed by reason.

Regression: a directory failure logged ``INFO directory: DirectoryError`` once a second,
forever, and its counter was not exported. Now each failed attempt is counted in
``directory_errors_total{reason}`` with a reason from a fixed set, and logged with that
reason the first time, then as a summary with the count at most once a minute.
The real node at ``--log-level debug`` (no key, no client address in any line) is in
tests/test_status.py, which runs one.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import logging
from pathlib import Path

import pytest
from directory_support import make_network
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from mixnode._http import HttpStatusError
from mixnode._logging import RepeatLimiter, add_logging_options, setup_logging
from mixnode.config import make_node_config
from mixnode.daemon import DIRECTORY_LOG_EVERY_S, Node
from mixnode.directory_client import (
    DirectoryClient,
    DirectoryFailed,
    DirectoryFailure,
    failure_kind,
)
from mixnode.keys import NodeKeys
from mixnode.metrics import DIRECTORY_ERRORS
from overlay import (
    VOICE,
    DirectoryError,
    DirectoryFieldError,
    SignedDocument,
    build_document,
    sign_document,
)

EPOCH, EPOCH_S = 1000, 3600
DOC = build_document(
    EPOCH,
    epoch_length_s=EPOCH_S,
    geometry=VOICE,
    descriptors=[d for d, _ in make_network(EPOCH, EPOCH_S)],
)
DOC_BYTES = DOC.to_bytes()
SEEDS = [bytes([i + 1]) * 32 for i in range(3)]
KEYS = [bytes(SigningKey(s).verify_key) for s in SEEDS]
NOW = DOC.valid_after + 1


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


# -- formats -------------------------------------------------------------------------


def test_json_format_writes_one_object_per_line_at_the_level_asked() -> None:
    p = argparse.ArgumentParser()
    add_logging_options(p)
    args = p.parse_args(["--log-level", "warning", "--log-format", "json"])
    out = io.StringIO()
    setup_logging(args.log_level, args.log_format, stream=out)
    log = logging.getLogger("phantom.test")
    log.info("not shown")
    log.warning("directory: %s: %s", "timeout", "no reply")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["level"] for r in lines] == ["warning", "error"]
    assert lines[0]["message"] == "directory: timeout: no reply"
    assert lines[0]["logger"] == "phantom.test" and lines[0]["time"] > 0
    assert "ValueError: boom" in lines[1]["exception"]


def test_text_format_and_debug_level() -> None:
    out = io.StringIO()
    setup_logging("debug", "text", stream=out)
    logging.getLogger("phantom.test").debug("key event")
    assert out.getvalue().rstrip().endswith("DEBUG phantom.test: key event")


def test_bad_level_or_format_is_refused() -> None:
    p = argparse.ArgumentParser()
    add_logging_options(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--log-format", "xml"])
    with pytest.raises(ValueError):
        setup_logging("verbose", "text")


# -- repeat limits ---------------------------------------------------------------------


def test_a_repeated_failure_is_logged_first_then_summarised() -> None:
    now = [0.0]
    limiter = RepeatLimiter(60.0, clock=lambda: now[0])
    seen = []
    for _ in range(150):  # once a second for 150 s
        seen.append(limiter.check("directory down"))
        now[0] += 1.0
    lines = [(i, n) for i, n in enumerate(seen) if n is not None]
    assert lines == [(0, 0), (60, 60), (120, 60)]
    assert limiter.check("another failure") == 0  # a new message is logged at once
    limiter.reset()
    assert limiter.check("directory down") == 0


@given(
    events=st.lists(
        st.tuples(st.sampled_from("abcd"), st.floats(0, 100, allow_nan=False)), max_size=200
    ),
    interval=st.floats(0.5, 50),
)
def test_repeat_limiter_bounds_lines_and_loses_no_count(
    events: list[tuple[str, float]], interval: float
) -> None:
    """Per message: at most 1 + elapsed / interval lines, and the counts in the lines plus
    those not yet summarised add up to every occurrence."""
    now = [0.0]
    limiter = RepeatLimiter(interval, clock=lambda: now[0])
    lines: dict[str, int] = {}
    counted: dict[str, int] = {}
    occurred: dict[str, int] = {}
    for key, dt in events:
        now[0] += dt
        occurred[key] = occurred.get(key, 0) + 1
        n = limiter.check(key)
        if n is not None:
            lines[key] = lines.get(key, 0) + 1
            counted[key] = counted.get(key, 0) + (n or 1)
    for key, total in occurred.items():
        assert lines[key] <= 1 + now[0] / interval
        assert counted[key] <= total
    assert sum(occurred.values()) == len(events)


# -- reasons -----------------------------------------------------------------------------


def _envelope(doc: bytes, seeds: list[bytes]) -> bytes:
    return SignedDocument(doc, tuple(sign_document(doc, s) for s in seeds)).to_bytes()


def _fetch(served: list[bytes | Exception]) -> DirectoryFailure:
    urls = [f"http://127.0.0.{i + 1}:31900" for i in range(len(served))]

    def get(url: str, timeout_s: float) -> bytes:
        reply = served[urls.index(url.split("/v1/")[0])]
        if isinstance(reply, Exception):
            raise reply
        return reply

    client = DirectoryClient(urls, KEYS, 2, geometry=VOICE, clock=lambda: NOW, get=get)
    with pytest.raises(DirectoryFailed) as exc:
        client.fetch(EPOCH)
    assert len(exc.value.kinds) == len(served)
    return exc.value.kind


OTHER_DOC = build_document(
    EPOCH + 5,
    epoch_length_s=EPOCH_S,
    geometry=VOICE,
    descriptors=[d for d, _ in make_network(EPOCH + 5, EPOCH_S)],
).to_bytes()


@pytest.mark.parametrize(
    ("served", "reason"),
    [
        ([ConnectionRefusedError(111, "refused")] * 3, "unreachable"),
        ([http.client.RemoteDisconnected("closed")] * 3, "unreachable"),
        ([TimeoutError("no complete exchange within 5 s")] * 3, "timeout"),
        ([HttpStatusError(404, "no document for epoch 1000")] * 3, "refused"),
        ([b"{not json"] * 3, "parse"),
        ([_envelope(DOC_BYTES, [bytes([9]) * 32])] * 3, "threshold"),  # unknown key only
        ([_envelope(DOC_BYTES, [SEEDS[0]])] * 3, "threshold"),  # 1 of 2
        ([_envelope(OTHER_DOC, SEEDS)] * 3, "stale"),  # verified, another epoch
        (
            [ConnectionRefusedError(111, "x"), TimeoutError("t"), TimeoutError("t")],
            "timeout",
        ),
    ],
    ids=[
        "refused-connection", "disconnected", "timeout", "http-404", "garbage",
        "unknown-key", "one-of-two", "other-epoch", "majority-wins",
    ],
)  # fmt: skip
def test_each_fetch_failure_has_its_reason(served: list[bytes | Exception], reason: str) -> None:
    assert _fetch(served).value == reason


def test_signatures_that_do_not_verify_are_bad_signature() -> None:
    env = json.loads(_envelope(DOC_BYTES, SEEDS))
    for s in env["signatures"]:
        s["signature"] = ("00" if s["signature"][:2] != "00" else "11") + s["signature"][2:]
    forged = json.dumps(env, separators=(",", ":"), sort_keys=True).encode()
    assert _fetch([forged] * 3) is DirectoryFailure.BAD_SIGNATURE


@given(
    st.one_of(
        st.builds(OSError, st.integers(0, 200), st.text(max_size=5)),
        st.builds(TimeoutError, st.text(max_size=5)),
        st.builds(HttpStatusError, st.integers(100, 599), st.text(max_size=5)),
        st.builds(DirectoryError, st.text(max_size=5)),
        st.builds(
            DirectoryFieldError, st.text(max_size=5), st.text(max_size=5), st.text(max_size=5)
        ),
        st.builds(ValueError, st.text(max_size=5)),
        st.builds(http.client.IncompleteRead, st.binary(max_size=5)),
    )
)
def test_every_exception_maps_to_a_declared_label(exc: Exception) -> None:
    kind = failure_kind(exc)
    assert kind.value in DIRECTORY_ERRORS
    assert kind is not DirectoryFailure.OTHER or isinstance(exc, ValueError)


# -- the node's directory loop -----------------------------------------------------------


def test_node_counts_every_failure_and_logs_a_repeat_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: ``INFO directory: DirectoryError`` every second, no reason, no metric."""
    cfg = make_node_config(
        name="mix-1", role="mix", layer=1, listen_port=31011, data_dir=tmp_path / "d",
        authorities=["http://127.0.0.1:9"], authority_keys=[KEYS[0]],
    )  # fmt: skip
    now = [0.0]
    node = Node(cfg, keys=NodeKeys.load_or_create(tmp_path / "d"), clock=lambda: now[0])
    failure = DirectoryFailed(
        "no verifiable topology document: http://127.0.0.1:9: ConnectionRefusedError: x",
        [DirectoryFailure.UNREACHABLE],
    )
    caplog.set_level(logging.INFO, logger="phantom.mixnode")
    for _ in range(125):  # the loop retries once a second
        node._directory_failed(failure)
        now[0] += 1.0
    node._directory_failed(DirectoryFailed("no authority accepted", [DirectoryFailure.REFUSED]))
    lines = [r for r in caplog.records if r.getMessage().startswith("directory: ")]
    assert [r.levelname for r in lines] == ["WARNING"] * 4
    assert lines[0].getMessage().startswith("directory: unreachable: DirectoryFailed: no verif")
    assert f"(60 times in the last {DIRECTORY_LOG_EVERY_S:.0f} s)" in lines[1].getMessage()
    assert lines[3].getMessage().startswith("directory: refused: ")
    m = node.metrics.directory_errors
    assert m.value("unreachable") == 125 and m.value("refused") == 1
    assert (
        'phantom_directory_errors_total{reason="unreachable"} 125' in node.metrics.registry.render()
    )
    health = node.health()
    assert not health.serving and health.reason == "no_document"
    assert health.detail["directory_error"] == {
        "reason": "refused",
        "text": "DirectoryFailed: no authority accepted",
    }
