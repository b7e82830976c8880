"""Geometry: sizes, digest, the published form and its validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay import (
    BULK,
    GEOMETRIES,
    VOICE,
    Geometry,
    GeometryError,
    UsageError,
    geometry_by_name,
    surb_len,
)

HOPS = st.integers(1, 16)
PAYLOAD = st.integers(15, 65535)


def test_voice_and_bulk_sizes() -> None:
    assert (VOICE.max_hops, VOICE.user_payload) == (5, 352)
    assert VOICE.routing_len == 5 * 37 == 185
    assert VOICE.header_len == 1 + 32 + 185 + 16 == 234
    assert VOICE.payload_len == 16 + 2 + 352 == 370
    assert VOICE.packet_len == 604
    assert (BULK.max_hops, BULK.user_payload) == (5, 2048)
    assert BULK.header_len == 234
    assert BULK.payload_len == 2066
    assert BULK.packet_len == 2300
    assert surb_len(VOICE) == 16 + 128 + 234 == 378


@given(HOPS, PAYLOAD)
@settings(max_examples=200, deadline=None)
def test_sizes_follow_the_formula(hops: int, payload: int) -> None:
    geo = Geometry("g", hops, payload)
    assert geo.routing_len == 37 * hops
    assert geo.header_len == 1 + 32 + 37 * hops + 16
    assert geo.payload_len == 18 + payload
    assert geo.packet_len == geo.header_len + geo.payload_len


@given(HOPS, PAYLOAD, HOPS, PAYLOAD)
@settings(max_examples=300, deadline=None)
def test_digest_differs_when_a_parameter_differs(h1: int, p1: int, h2: int, p2: int) -> None:
    a, b = Geometry("a", h1, p1), Geometry("a", h2, p2)
    assert (a.digest == b.digest) == ((h1, p1) == (h2, p2))
    assert len(a.digest) == 32


def test_digest_neighbours_all_differ() -> None:
    digests = {Geometry("g", h, p).digest for h in range(1, 17) for p in range(15, 200)}
    assert len(digests) == 16 * 185
    assert VOICE.digest != BULK.digest


def test_name_is_a_label_not_part_of_the_wire() -> None:
    """Two names for the same sizes share a digest: the digest covers the wire format only."""
    assert Geometry("other", 5, 352).digest == VOICE.digest
    assert Geometry("other", 5, 352) != VOICE


@given(HOPS, PAYLOAD, st.text(max_size=20))
@settings(max_examples=200, deadline=None)
def test_dict_round_trip(hops: int, payload: int, name: str) -> None:
    geo = Geometry(name, hops, payload)
    assert Geometry.from_dict(geo.to_dict()) == geo
    assert Geometry.from_dict({"name": name, "max_hops": hops, "user_payload": payload}) == geo


def test_published_form() -> None:
    d = VOICE.to_dict()
    assert d == {
        "name": "voice",
        "max_hops": 5,
        "user_payload": 352,
        "packet_len": 604,
        "digest": VOICE.digest.hex(),
    }
    assert Geometry.from_dict(BULK.to_dict()) is not BULK
    assert Geometry.from_dict(BULK.to_dict()) == BULK
    assert hash(Geometry.from_dict(BULK.to_dict())) == hash(BULK)


@pytest.mark.parametrize(
    ("hops", "payload", "field"),
    [
        (0, 384, "max_hops"),
        (17, 384, "max_hops"),
        (-1, 384, "max_hops"),
        (5.0, 384, "max_hops"),
        (True, 384, "max_hops"),
        ("5", 384, "max_hops"),
        (None, 384, "max_hops"),
        (5, 14, "user_payload"),
        (5, 0, "user_payload"),
        (5, 65536, "user_payload"),
        (5, 384.0, "user_payload"),
        (5, False, "user_payload"),
        (5, "384", "user_payload"),
    ],
)
def test_bad_parameters_name_the_field(hops: object, payload: object, field: str) -> None:
    with pytest.raises(GeometryError, match=field):
        Geometry("g", hops, payload)  # type: ignore[arg-type]
    with pytest.raises(GeometryError, match=field):
        Geometry.from_dict({"name": "g", "max_hops": hops, "user_payload": payload})


@pytest.mark.parametrize("missing", ["name", "max_hops", "user_payload"])
def test_missing_field_is_named(missing: str) -> None:
    data = VOICE.to_dict()
    del data[missing]
    with pytest.raises(GeometryError, match=missing):
        Geometry.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("digest", BULK.digest.hex()),
        ("digest", "00" * 32),
        ("digest", 5),
        ("packet_len", 605),
        ("packet_len", "604"),
        ("name", 5),
        ("name", None),
    ],
)
def test_published_fields_are_checked(field: str, value: object) -> None:
    data = VOICE.to_dict() | {field: value}
    with pytest.raises(GeometryError, match=field):
        Geometry.from_dict(data)


def test_geometry_error_is_a_usage_error() -> None:
    assert issubclass(GeometryError, UsageError)
    assert issubclass(GeometryError, ValueError)


def test_geometry_is_frozen() -> None:
    with pytest.raises(AttributeError):
        VOICE.max_hops = 3  # type: ignore[misc]


def test_one_registry_names_every_geometry() -> None:
    assert dict(GEOMETRIES) == {"voice": VOICE, "bulk": BULK}
    assert all(geometry_by_name(name).name == name for name in GEOMETRIES)
    with pytest.raises(TypeError):
        GEOMETRIES["jumbo"] = VOICE  # type: ignore[index]


@pytest.mark.parametrize("name", ["jumbo", "VOICE", "", None, 5, ["voice"]])
def test_an_unknown_geometry_name_is_refused_naming_the_choices(name: object) -> None:
    with pytest.raises(GeometryError, match="expected 'voice' or 'bulk'"):
        geometry_by_name(name)
