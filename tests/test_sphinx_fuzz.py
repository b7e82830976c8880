"""Hostile bytes: over 100,000 inputs raise PacketError subclasses and nothing else."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from sphinx_support import NODES, make_path

from overlay import (
    BULK,
    SPHINX_VERSION,
    VOICE,
    Geometry,
    GeometryError,
    MacMismatch,
    PacketError,
    Surb,
    UnknownVersion,
    WrongLength,
    create_drop,
    create_forward,
    create_reply,
    create_surb,
    process_packet,
    surb_len,
)

SK = NODES[0].private_key

# X25519 points of small order and their non-canonical twins (the list libsodium refuses).
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (2**255 - 20).to_bytes(32, "little"),
    (2**255 - 19).to_bytes(32, "little"),
    (2**255 - 18).to_bytes(32, "little"),
    bytes.fromhex("cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880"),
    bytes.fromhex("4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7"),
    bytes.fromhex("d9ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    bytes.fromhex("daffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    bytes.fromhex("dbffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
]


def _stream(label: bytes, n: int) -> bytes:
    return hashlib.shake_256(label).digest(n)


def _chunks(label: bytes, size: int, count: int) -> Iterator[bytes]:
    data = _stream(label, size * count)
    for i in range(count):
        yield data[i * size : (i + 1) * size]


def _run(call: Callable[[], object], tally: Counter[str], *, may_pass: bool = False) -> None:
    """Run ``call``; a PacketError is counted; anything else but success fails the test."""
    try:
        call()
    except PacketError as exc:
        tally[exc.reason] += 1
        return
    except Exception as exc:  # the point of the test: nothing else may escape
        pytest.fail(f"{type(exc).__name__} escaped: {exc}")
    if not may_pass:
        pytest.fail("hostile input was accepted")
    tally["accepted"] += 1


TOTAL: Counter[str] = Counter()
RAN: set[str] = set()


@pytest.fixture(autouse=True)
def _record(request: pytest.FixtureRequest) -> None:
    RAN.add(request.node.name)


@pytest.mark.parametrize("geometry", [VOICE, BULK], ids=lambda g: g.name)
def test_random_packets_of_the_right_length(geometry: Geometry) -> None:
    count = 40_000 if geometry is VOICE else 8_000
    tally: Counter[str] = Counter()
    for i, data in enumerate(_chunks(geometry.name.encode(), geometry.packet_len, count)):
        if i % 8:  # most get past the version byte and the alpha range, to reach the MAC
            data = bytes((SPHINX_VERSION,)) + data[1:32] + bytes((data[32] & 0x7F,)) + data[33:]
        _run(lambda d=data: process_packet(geometry, SK, d), tally)
    assert tally[UnknownVersion.reason] > 0 and tally[MacMismatch.reason] > 0
    assert sum(tally.values()) == count
    TOTAL.update(tally)


def test_random_lengths() -> None:
    tally: Counter[str] = Counter()
    data = _stream(b"lengths", 4096)
    sizes = _stream(b"sizes", 2 * 20_000)
    for i in range(20_000):
        n = int.from_bytes(sizes[2 * i : 2 * i + 2], "big") % 3000
        if n == VOICE.packet_len:
            n += 1
        _run(lambda n=n: process_packet(VOICE, SK, data[:n]), tally)
    assert tally == Counter({WrongLength.reason: 20_000})
    TOTAL.update(tally)


@pytest.mark.parametrize("geometry", [VOICE, BULK], ids=lambda g: g.name)
def test_truncated_and_extended_packets(geometry: Geometry) -> None:
    path = make_path([1, 2, 3, 4, 5])
    packets = [
        create_forward(geometry, path, b"m" * 16, b"hello"),
        create_drop(geometry, path),
        create_reply(geometry, create_surb(geometry, path, b"m" * 16)[0], b"x")[1],
    ]
    tally: Counter[str] = Counter()
    for packet in packets:
        for n in range(len(packet)):
            _run(lambda p=packet[:n]: process_packet(geometry, SK, p), tally)
            _run(lambda p=packet[n + 1 :]: process_packet(geometry, SK, p), tally)
        for extra in (b"\0", b"\0" * 37, packet):
            _run(lambda p=packet + extra: process_packet(geometry, SK, p), tally)
    assert set(tally) == {WrongLength.reason}
    TOTAL.update(tally)


def test_low_order_and_non_canonical_alpha() -> None:
    """Points libsodium refuses, and encodings at or above the field prime: no secret."""
    packet = create_forward(VOICE, make_path([1, 2]), b"m" * 16, b"x")
    tally: Counter[str] = Counter()
    for point in LOW_ORDER:
        _run(lambda p=point: process_packet(VOICE, SK, packet[:1] + p + packet[33:]), tally)
    assert tally == Counter({MacMismatch.reason: len(LOW_ORDER)})
    TOTAL.update(tally)


def test_mutated_valid_packets() -> None:
    """Valid packets with a few random bytes overwritten: a result or a PacketError."""
    path = make_path([1, 2, 3, 4, 5])
    packet = create_forward(VOICE, path, b"m" * 16, b"hello")
    noise = _stream(b"mutations", 6 * 10_000)
    tally: Counter[str] = Counter()
    for i in range(10_000):
        chunk = noise[6 * i : 6 * i + 6]
        out = bytearray(packet)
        for j in range(0, 6, 3):
            pos = int.from_bytes(chunk[j : j + 2], "big") % len(out)
            out[pos] = chunk[j + 2]
        _run(lambda d=bytes(out): process_packet(VOICE, SK, d), tally, may_pass=True)
    assert tally[MacMismatch.reason] > 0 and tally["accepted"] > 0  # payload-only changes
    TOTAL.update(tally)


def test_surb_from_bytes_random() -> None:
    tally: Counter[str] = Counter()
    data = _stream(b"surbs", 2 * surb_len(VOICE))
    sizes = _stream(b"surb sizes", 2 * 10_000)
    right = 0
    for i in range(10_000):
        n = int.from_bytes(sizes[2 * i : 2 * i + 2], "big") % (2 * surb_len(VOICE))
        right += n == surb_len(VOICE)
        _run(lambda n=n: Surb.from_bytes(VOICE, data[:n]), tally, may_pass=True)
    assert tally == Counter({"accepted": right, WrongLength.reason: 10_000 - right})
    # a right-length random SURB parses, and its reply is a packet no node accepts
    surb = Surb.from_bytes(VOICE, data[: surb_len(VOICE)])
    _, reply = create_reply(VOICE, surb, b"x")
    _run(lambda: process_packet(VOICE, SK, reply), tally)
    TOTAL.update(tally)


GEOMETRY_VALUES: list[object] = [
    None, True, False, 0, 1, 5, 14, 15, 16, 17, 352, 65535, 65536, -1, 2**70, 5.0, 5.5,
    "5", "voice", "", b"5", [5], {"a": 1}, float("nan"),
]  # fmt: skip


def test_geometry_from_dict_random() -> None:
    """Every combination of odd values: a Geometry or a GeometryError, nothing else."""
    count = 0
    good = VOICE.to_dict()
    for name in (None, "x", 5):
        for hops in GEOMETRY_VALUES:
            for payload in GEOMETRY_VALUES:
                for extra in ({}, {"digest": good["digest"]}, {"packet_len": 604}):
                    data = {"name": name, "max_hops": hops, "user_payload": payload} | extra
                    count += 1
                    try:
                        geo = Geometry.from_dict(data)
                    except GeometryError:
                        continue
                    assert isinstance(geo, Geometry)
                    assert type(geo.max_hops) is int and type(geo.user_payload) is int
    for data in (None, [], "voice", 5, {}, {"name": "x"}):
        count += 1
        with pytest.raises(GeometryError):
            Geometry.from_dict(data)  # type: ignore[arg-type]
    TOTAL["geometry"] += count


def test_total_inputs() -> None:
    """Runs last in this file: the inputs above add up to more than 100,000."""
    if len(RAN) < 10:  # the 9 test items above and this one
        pytest.skip("only part of this file ran")
    assert sum(TOTAL.values()) >= 100_000, TOTAL
