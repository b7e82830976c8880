"""Every flipped header bit is caught at its hop; every flipped payload bit at the end."""

from __future__ import annotations

import pytest
from sphinx_support import BY_ID, SeededRng, make_path, walk

from overlay import (
    BULK,
    VOICE,
    DeliverReply,
    Forward,
    Geometry,
    Hop,
    MacMismatch,
    PacketError,
    PayloadTampered,
    UnknownVersion,
    create_forward,
    create_reply,
    create_surb,
    open_reply,
    process_packet,
)

DELAYS = [100, 200, 300, 400, 500]


def _flip(packet: bytes, bit: int) -> bytes:
    out = bytearray(packet)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _packets_at_hops(geometry: Geometry, path: list[Hop], packet: bytes) -> list[bytes]:
    """The packet as each hop of ``path`` receives it."""
    out = [packet]
    for result in walk(geometry, path, packet)[:-1]:
        assert isinstance(result, Forward)
        out.append(result.packet)
    return out


def _forward(geometry: Geometry) -> tuple[list[Hop], list[bytes]]:
    path = make_path(DELAYS)
    msg = SeededRng(b"message")(geometry.user_payload)
    packet = create_forward(geometry, path, b"m" * 16, msg, rng=SeededRng(b"tamper"))
    return path, _packets_at_hops(geometry, path, packet)


VOICE_PATH, VOICE_HOPS = _forward(VOICE)


@pytest.mark.parametrize("hop", range(5))
def test_every_header_bit_voice(hop: int) -> None:
    """All 1872 header bits (version, alpha, beta, gamma) at each hop of a 5-hop packet."""
    sk = BY_ID[VOICE_PATH[hop].node_id].private_key
    packet = VOICE_HOPS[hop]
    process_packet(VOICE, sk, packet)  # the untouched packet is fine
    for bit in range(VOICE.header_len * 8):
        expected = UnknownVersion if bit < 8 else MacMismatch
        with pytest.raises(expected):
            process_packet(VOICE, sk, _flip(packet, bit))


def test_every_header_bit_bulk_first_hop() -> None:
    path, hops = _forward(BULK)
    sk = BY_ID[path[0].node_id].private_key
    for bit in range(BULK.header_len * 8):
        with pytest.raises((UnknownVersion, MacMismatch)):
            process_packet(BULK, sk, _flip(hops[0], bit))


def _delivered(path: list[Hop], hop: int, packet: bytes) -> object:
    """Process a (tampered) packet from ``hop`` to the end; return the last result."""
    return walk(VOICE, path[hop:], packet)[-1]


@pytest.mark.parametrize("hop", range(5))
def test_every_payload_bit_forward(hop: int) -> None:
    """All 3216 payload bits, flipped before any hop, turn delivery into PayloadTampered."""
    for bit in range(VOICE.header_len * 8, VOICE.packet_len * 8):
        with pytest.raises(PayloadTampered):
            _delivered(VOICE_PATH, hop, _flip(VOICE_HOPS[hop], bit))


def test_payload_bits_reply() -> None:
    """Flipped payload bits of a SURB reply at any hop are caught by open_reply."""
    path = make_path(DELAYS, first=3)
    surb, keys = create_surb(VOICE, path, b"r" * 16, rng=SeededRng(b"surb"))
    _, packet = create_reply(VOICE, surb, b"reply")
    hops = _packets_at_hops(VOICE, path, packet)
    last = walk(VOICE, path, packet)[-1]
    assert isinstance(last, DeliverReply)
    assert open_reply(VOICE, keys, last.payload) == b"reply"
    start = VOICE.header_len * 8
    for hop in range(5):
        for bit in range(start + hop, VOICE.packet_len * 8, 5):
            result = _delivered(path, hop, _flip(hops[hop], bit))
            assert isinstance(result, DeliverReply)
            with pytest.raises(PayloadTampered):
                open_reply(VOICE, keys, result.payload)
    # and in the delivered payload itself
    for bit in range(0, VOICE.payload_len * 8, 3):
        with pytest.raises(PayloadTampered):
            open_reply(VOICE, keys, _flip(last.payload, bit))


def test_packet_for_another_node_fails_the_mac() -> None:
    """A packet handed to the wrong node (or after key rotation) is a MAC mismatch."""
    for hop, packet in enumerate(VOICE_HOPS):
        other = VOICE_PATH[(hop + 1) % 5].node_id
        with pytest.raises(MacMismatch):
            process_packet(VOICE, BY_ID[other].private_key, packet)


def test_header_cut_and_pasted_onto_another_payload() -> None:
    """Swapping payloads between two packets on the same path is caught at the end."""
    path = VOICE_PATH
    other = create_forward(VOICE, path, b"m" * 16, b"other", rng=SeededRng(b"other"))
    spliced = VOICE_HOPS[0][: VOICE.header_len] + other[VOICE.header_len :]
    with pytest.raises(PayloadTampered):
        _delivered(path, 0, spliced)


def test_errors_are_packet_errors_with_reasons() -> None:
    for cls in (MacMismatch, UnknownVersion, PayloadTampered):
        assert issubclass(cls, PacketError)
    reasons = {MacMismatch.reason, UnknownVersion.reason, PayloadTampered.reason}
    assert len(reasons) == 3
