"""Sphinx round trips, SURBs, replay tags and local misuse."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sphinx_support import NODES, SeededRng, make_path, walk

from overlay import (
    BULK,
    MAILBOX_ID_LEN,
    SURB_ID_LEN,
    VOICE,
    Deliver,
    DeliverReply,
    Discard,
    Forward,
    Geometry,
    Hop,
    PayloadTampered,
    Surb,
    UsageError,
    WrongLength,
    create_drop,
    create_forward,
    create_reply,
    create_surb,
    lioness_decrypt,
    lioness_encrypt,
    open_reply,
    process_packet,
    public_key,
    surb_len,
)
from overlay._geometry import MAX_DELAY_US

GEOMETRIES = [VOICE, BULK]
THREE_HOPS = Geometry("three", max_hops=3, user_payload=384)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw: st.DrawFn) -> tuple[Geometry, list[Hop], bytes, bytes, SeededRng]:
    """A geometry, a path of 1..max_hops with random delays, a mailbox, a message, an rng."""
    geometry = draw(st.sampled_from(GEOMETRIES))
    hops = draw(st.integers(1, geometry.max_hops))
    delays = draw(st.lists(st.integers(0, MAX_DELAY_US), min_size=hops, max_size=hops))
    path = make_path(delays, first=draw(st.integers(0, len(NODES) - 1)))
    mailbox = draw(st.binary(min_size=MAILBOX_ID_LEN, max_size=MAILBOX_ID_LEN))
    size = draw(
        st.sampled_from([0, 1, geometry.user_payload]) | st.integers(0, geometry.user_payload)
    )
    message = draw(st.binary(min_size=size, max_size=size))
    return geometry, path, mailbox, message, SeededRng(draw(st.binary(min_size=8, max_size=8)))


@SETTINGS
@given(cases())
def test_forward_round_trip(case: tuple[Geometry, list[Hop], bytes, bytes, SeededRng]) -> None:
    geometry, path, mailbox, message, rng = case
    packet = create_forward(geometry, path, mailbox, message, rng=rng)
    assert len(packet) == geometry.packet_len
    results = walk(geometry, path, packet)
    last = results[-1]
    assert isinstance(last, Deliver)
    assert (last.mailbox, last.message, last.delay_us) == (mailbox, message, path[-1].delay_us)
    assert len({r.replay_tag for r in results}) == len(results)


@SETTINGS
@given(cases())
def test_surb_round_trip(case: tuple[Geometry, list[Hop], bytes, bytes, SeededRng]) -> None:
    geometry, path, mailbox, message, rng = case
    surb, keys = create_surb(geometry, path, mailbox, rng=rng)
    wire = surb.to_bytes()
    assert len(wire) == surb_len(geometry)
    assert Surb.from_bytes(geometry, wire) == surb
    first_hop, packet = create_reply(geometry, Surb.from_bytes(geometry, wire), message)
    assert first_hop == path[0].node_id
    assert len(packet) == geometry.packet_len
    last = walk(geometry, path, packet)[-1]
    assert isinstance(last, DeliverReply)
    assert (last.mailbox, last.surb_id, last.delay_us) == (mailbox, keys.surb_id, path[-1].delay_us)
    assert len(keys.surb_id) == SURB_ID_LEN
    assert open_reply(geometry, keys, last.payload) == message


@SETTINGS
@given(cases())
def test_drop_round_trip(case: tuple[Geometry, list[Hop], bytes, bytes, SeededRng]) -> None:
    geometry, path, _mailbox, _message, rng = case
    packet = create_drop(geometry, path, rng=rng)
    assert len(packet) == geometry.packet_len
    last = walk(geometry, path, packet)[-1]
    assert isinstance(last, Discard)
    assert last.delay_us == path[-1].delay_us


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: g.name)
def test_real_randomness_round_trip(geometry: Geometry) -> None:
    """The default rng is os.urandom; two packets for the same input differ everywhere."""
    path = make_path([1, 2, 3, 4, 5])
    a = create_forward(geometry, path, b"m" * 16, b"same")
    b = create_forward(geometry, path, b"m" * 16, b"same")
    assert a[0] == b[0] and a[1:33] != b[1:33] and a[33:] != b[33:]
    for pkt in (a, b):
        last = walk(geometry, path, pkt)[-1]
        assert isinstance(last, Deliver) and last.message == b"same"


def test_every_packet_kind_has_the_same_length_at_every_hop() -> None:
    path = make_path([10, 20, 30])
    surb, _ = create_surb(VOICE, path, b"m" * 16)
    packets = [
        create_forward(VOICE, path, b"m" * 16, b"x"),
        create_drop(VOICE, path),
        create_reply(VOICE, surb, b"x")[1],
    ]
    for packet in packets:
        while True:
            assert len(packet) == VOICE.packet_len == 604
            result = process_packet(VOICE, _key_for(path, packet), packet)
            if not isinstance(result, Forward):
                break
            packet = result.packet


def _key_for(path: list[Hop], packet: bytes) -> bytes:
    """The private key of whichever node on ``path`` the packet is for (MAC tells)."""
    for hop in path:
        sk = next(n.private_key for n in NODES if n.node_id == hop.node_id)
        try:
            process_packet(VOICE, sk, packet)
        except Exception:
            continue
        return sk
    raise AssertionError("no node on the path accepts the packet")


def test_replay_tag_is_stable_and_per_hop() -> None:
    """The same packet gives the same tag (so a node's cache catches a replay)."""
    path = make_path([0, 0, 0])
    packet = create_forward(VOICE, path, b"m" * 16, b"x")
    first = process_packet(VOICE, NODES[0].private_key, packet)
    again = process_packet(VOICE, NODES[0].private_key, bytearray(packet))
    assert first == again
    other = process_packet(
        VOICE, NODES[0].private_key, create_forward(VOICE, path, b"m" * 16, b"x")
    )
    assert other.replay_tag != first.replay_tag
    assert len(first.replay_tag) == 32


def test_surb_reply_is_a_fresh_packet_but_the_same_header() -> None:
    """Replying twice with one SURB repeats the header, so the first hop's tag repeats."""
    path = make_path([5, 6, 7])
    surb, _ = create_surb(VOICE, path, b"m" * 16)
    _, one = create_reply(VOICE, surb, b"a")
    _, two = create_reply(VOICE, surb, b"b")
    assert one[: VOICE.header_len] == two[: VOICE.header_len]
    tag1 = process_packet(VOICE, NODES[0].private_key, one).replay_tag
    tag2 = process_packet(VOICE, NODES[0].private_key, two).replay_tag
    assert tag1 == tag2


def test_open_reply_rejects_another_surbs_reply() -> None:
    path = make_path([1, 1])
    surb_a, keys_a = create_surb(VOICE, path, b"a" * 16)
    _surb_b, keys_b = create_surb(VOICE, path, b"b" * 16)
    last = walk(VOICE, path, create_reply(VOICE, surb_a, b"hello")[1])[-1]
    assert isinstance(last, DeliverReply)
    assert open_reply(VOICE, keys_a, last.payload) == b"hello"
    with pytest.raises(PayloadTampered):
        open_reply(VOICE, keys_b, last.payload)
    with pytest.raises(WrongLength):
        open_reply(VOICE, keys_a, last.payload[:-1])


def test_surb_from_bytes_length() -> None:
    surb, _ = create_surb(BULK, make_path([1, 2, 3, 4, 5]), b"m" * 16)
    wire = surb.to_bytes()
    assert len(wire) == surb_len(BULK) == 16 + 128 + BULK.header_len
    assert Surb.from_bytes(BULK, wire) == surb
    for bad in (wire[:-1], wire + b"\0", b"", wire[: surb_len(THREE_HOPS)]):
        with pytest.raises(WrongLength):
            Surb.from_bytes(BULK, bad)


@given(st.binary(min_size=33, max_size=600), st.binary(min_size=128, max_size=128))
@settings(max_examples=200, deadline=None)
def test_lioness_round_trip_and_wide_block(block: bytes, key: bytes) -> None:
    enc = lioness_encrypt(key, block)
    assert len(enc) == len(block)
    assert lioness_decrypt(key, enc) == block
    flipped = bytes([enc[0] ^ 1]) + enc[1:]
    dec = lioness_decrypt(key, flipped)
    assert dec[:16] != block[:16] and dec[-16:] != block[-16:]


def _path5() -> list[Hop]:
    return make_path([1, 2, 3, 4, 5])


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: create_forward(VOICE, [], b"m" * 16, b""), "1..5 hops"),
        (lambda: create_forward(VOICE, make_path([1] * 6), b"m" * 16, b""), "1..5 hops"),
        (lambda: create_drop(VOICE, []), "1..5 hops"),
        (lambda: create_surb(VOICE, [], b"m" * 16), "1..5 hops"),
        (lambda: create_forward(VOICE, _path5(), b"m" * 15, b""), "mailbox"),
        (lambda: create_surb(VOICE, _path5(), b"m" * 17), "mailbox"),
        (lambda: create_forward(VOICE, _path5(), b"m" * 16, bytes(353)), "carries 352"),
        (lambda: create_reply(VOICE, create_surb(VOICE, _path5(), b"m" * 16)[0], bytes(353)),
         "carries 352"),
        (lambda: create_reply(THREE_HOPS, create_surb(VOICE, _path5(), b"m" * 16)[0], b""),
         "geometry"),
        (lambda: create_drop(VOICE, [Hop(b"n" * 15, NODES[0].public_key, 0)]), "node ids"),
        (lambda: create_drop(VOICE, [Hop(b"n" * 16, NODES[0].public_key[:31], 0)]), "public"),
        (lambda: create_drop(VOICE, [Hop(b"n" * 16, NODES[0].public_key, -1)]), "delay"),
        (lambda: create_drop(VOICE, [Hop(b"n" * 16, NODES[0].public_key, 2**32)]), "delay"),
        (lambda: create_forward(VOICE, [Hop(b"n" * 16, NODES[0].public_key, 2**32)],
                                b"m" * 16, b""), "delay"),
    ],
)  # fmt: skip
def test_local_misuse_is_a_usage_error(call: object, words: str) -> None:
    assert callable(call)
    with pytest.raises(UsageError, match=words):
        call()


def test_public_key_needs_32_bytes() -> None:
    with pytest.raises(UsageError):
        public_key(os.urandom(31))


def test_equivalent_alpha_is_caught_as_a_replay() -> None:
    """u -> 1/u adds the point of order 2; the clamped key kills it, so the node computes the
    same secret. The packet then is a replay: same result, same replay tag."""
    p = 2**255 - 19
    path = make_path([7, 8])
    packet = create_forward(VOICE, path, b"m" * 16, b"x")
    u = int.from_bytes(packet[1:33], "little")
    twin = packet[:1] + pow(u, p - 2, p).to_bytes(32, "little") + packet[33:]
    assert twin != packet
    assert process_packet(VOICE, NODES[0].private_key, twin) == process_packet(
        VOICE, NODES[0].private_key, packet
    )
