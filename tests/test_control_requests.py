"""The listener's control requests (``client.control``): what the parser accepts
round-trips through what a command sends; anything else is a ControlError, never another
exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.control import (
    MAX_LINE,
    ControlError,
    Dial,
    Mute,
    Simple,
    encode_message,
    parse_reply,
    parse_request,
    request_message,
)

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=400)
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70)
    | st.integers(-(10**400), 10**400)
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
types = st.sampled_from(["dial", "mute", "hangup", "answer", "decline", "status", "explode"])
requests = st.fixed_dictionaries(
    {"type": types | json_values},
    optional={"contact": st.text(max_size=70) | json_values, "on": json_values,
              "duration_s": st.floats(-1, 1e5) | json_values, "extra": json_values},
)  # fmt: skip


def _accepts_or_refuses(line: bytes) -> None:
    """``line`` parses to a request that round-trips, or raises ControlError only."""
    try:
        request = parse_request(line)
    except ControlError:
        return
    assert isinstance(request, Dial | Mute | Simple)
    sent = encode_message(request_message(request))
    assert sent.endswith(b"\n") and len(sent) <= MAX_LINE
    assert parse_request(sent) == request


@FUZZ
@given(requests)
def test_a_request_parses_and_round_trips_or_is_a_control_error(message: dict[str, object]) -> None:
    _accepts_or_refuses(json.dumps(message).encode())


@FUZZ
@given(json_values)
def test_any_json_parses_and_round_trips_or_is_a_control_error(value: object) -> None:
    _accepts_or_refuses(json.dumps(value).encode())


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_a_control_error(data: bytes) -> None:
    _accepts_or_refuses(data)
    _accepts_or_refuses(b'{"type": "mute", "on": ' + data + b"}")


def test_mute_wants_a_boolean_on() -> None:
    assert parse_request(b'{"type": "mute", "on": true}') == Mute(True)
    assert parse_request(b'{"type": "mute", "on": false}\n') == Mute(False)
    for bad in (b'{"type": "mute"}', b'{"type": "mute", "on": 1}', b'{"type": "mute", "on": 0}',
                b'{"type": "mute", "on": "true"}', b'{"type": "mute", "on": null}',
                b'{"type": "mute", "on": [true]}'):  # fmt: skip
        with pytest.raises(ControlError, match=r"mute: 'on' must be true \(mute\) or false"):
            parse_request(bad)
    with pytest.raises(ControlError, match="want one of dial, mute, hangup"):
        parse_request(b'{"type": "unmute"}')


def test_a_duration_too_large_for_a_float_is_a_control_error() -> None:
    """Regression: a 400-digit duration raised OverflowError (math.isfinite of an int)."""
    line = b'{"type": "dial", "contact": "ada", "duration_s": 1' + b"0" * 400 + b"}"
    with pytest.raises(ControlError, match="duration_s"):
        parse_request(line)


def test_deeply_nested_json_is_a_control_error() -> None:
    """Regression: 5000 nested brackets in one line raised RecursionError out of
    parse_request (and out of the listener's connection task)."""
    for line in (b"[" * 5000 + b"]" * 5000, b'{"type": ' + b"[" * 8000 + b"]" * 8000 + b"}"):
        assert len(line) <= MAX_LINE
        with pytest.raises(ControlError, match="not a JSON line"):
            parse_request(line)
    with pytest.raises(ControlError, match="not a JSON line"):
        parse_reply(b'{"a": ' * 3000 + b"1" + b"}" * 3000)


@FUZZ
@given(st.integers(1, MAX_LINE // 2), st.sampled_from([b"[]", b"{}"]), st.binary(max_size=8))
def test_any_nesting_depth_parses_or_is_a_control_error(
    depth: int, pair: bytes, tail: bytes
) -> None:
    opening, closing = pair[:1], pair[1:]
    inner = b'"k": ' if opening == b"{" else b""
    _accepts_or_refuses((opening + inner) * depth + b"1" + closing * depth + tail)
