"""Link framing: round trips, exact lengths, constant downlink size, fuzz."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay import (
    VOICE,
    ClientLink,
    Delivery,
    DownlinkKind,
    FrameType,
    GatewaySession,
    LinkAuthError,
    LinkCodec,
    LinkError,
    PacketError,
    ReplayWindow,
    generate_private_key,
    public_key,
)

CODEC = LinkCodec(VOICE)


def _pair() -> tuple[ClientLink, GatewaySession, bytes]:
    gw_sk = generate_private_key()
    client = ClientLink(VOICE, public_key(gw_sk), b"M" * 16)
    session = GatewaySession.accept(CODEC, gw_sk, CODEC.parse(client.attach_frame()))
    return client, session, gw_sk


def test_node_frame_round_trip() -> None:
    pkt = os.urandom(VOICE.packet_len)
    frame = CODEC.parse(CODEC.node_packet(pkt))
    assert frame.type is FrameType.NODE_PACKET and frame.body == pkt


def test_attach_uplink_downlink_round_trip() -> None:
    client, session, _ = _pair()
    assert session.mailbox == b"M" * 16
    pkt = os.urandom(VOICE.packet_len)
    up = client.seal_uplink(pkt)
    assert len(up) == CODEC.frame_len(FrameType.UPLINK)
    assert session.open_uplink(CODEC.parse(up)) == pkt
    for d in (
        Delivery(DownlinkKind.MESSAGE, b"hello"),
        Delivery(DownlinkKind.DUMMY, b""),
        Delivery(DownlinkKind.REPLY, os.urandom(16 + VOICE.payload_len)),
    ):
        down = session.seal_downlink(d)
        assert len(down) == CODEC.frame_len(FrameType.DOWNLINK)
        assert client.open_downlink(down) == d


def test_downlink_real_and_dummy_same_size_and_look_random() -> None:
    _, session, _ = _pair()
    a = session.seal_downlink(Delivery(DownlinkKind.MESSAGE, b"x" * 300))
    b = session.seal_downlink(Delivery(DownlinkKind.DUMMY, b""))
    assert len(a) == len(b)
    assert a[:10] == b[:10]  # version, type, session id: public
    assert b[18:].count(0) < 40  # the zero padding of a dummy is not visible


def test_uplink_replay_and_tamper_refused() -> None:
    client, session, _ = _pair()
    up = client.seal_uplink(bytes(VOICE.packet_len))
    session.open_uplink(CODEC.parse(up))
    with pytest.raises(LinkAuthError):
        session.open_uplink(CODEC.parse(up))
    up2 = bytearray(client.seal_uplink(bytes(VOICE.packet_len)))
    up2[40] ^= 1
    with pytest.raises(LinkAuthError):
        session.open_uplink(CODEC.parse(bytes(up2)))


def test_out_of_order_inside_window_accepted() -> None:
    client, session, _ = _pair()
    frames = [client.seal_uplink(bytes(VOICE.packet_len)) for _ in range(5)]
    for f in reversed(frames):
        session.open_uplink(CODEC.parse(f))


def test_attach_with_wrong_gateway_key_fails() -> None:
    client = ClientLink(VOICE, public_key(generate_private_key()), b"M" * 16)
    with pytest.raises(LinkAuthError):
        GatewaySession.accept(CODEC, generate_private_key(), CODEC.parse(client.attach_frame()))


@pytest.mark.parametrize(
    "datagram",
    [b"", b"\x01", b"\x02\x01" + bytes(VOICE.packet_len), b"\x01\x09" + bytes(10)],
)
def test_bad_frames_raise_typed_errors(datagram: bytes) -> None:
    with pytest.raises(LinkError):
        CODEC.parse(datagram)


def test_every_type_demands_exact_length() -> None:
    for ftype in FrameType:
        n = CODEC.frame_len(ftype)
        for m in (n - 1, n + 1):
            with pytest.raises(LinkError):
                CODEC.parse(bytes((1, ftype)) + bytes(m - 2))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200))
def test_fuzz_parse_and_open_only_raise_packet_errors(data: bytes) -> None:
    client, session, gw_sk = _pair()
    for candidate in (data, b"\x01" + data, b"\x01\x03" + data[: CODEC.body_len[FrameType.UPLINK]]):
        try:
            frame = CODEC.parse(candidate)
        except PacketError:
            continue
        for op, arg in (
            (session.open_uplink, frame),
            (client.open_downlink, candidate),
            (lambda f: GatewaySession.accept(CODEC, gw_sk, f), frame),
        ):
            try:
                op(arg)  # type: ignore[operator]
            except PacketError:
                pass


REPLAY_WINDOW = 1024  # overlay._link.REPLAY_WINDOW, restated: the documented link window


def test_uplink_counter_jump_to_2_63_costs_nothing() -> None:
    """Regression: counter 1 then 2**63 made the gateway raise MemoryError."""
    client, session, _ = _pair()
    session.open_uplink(CODEC.parse(client.seal_uplink(bytes(VOICE.packet_len))))
    first = client.seal_uplink(bytes(VOICE.packet_len))
    client._counter = 2**63 - 1  # a client that skips ahead; frames still authenticate
    far = client.seal_uplink(bytes(VOICE.packet_len))
    session.open_uplink(CODEC.parse(far))
    with pytest.raises(LinkAuthError):  # counter 2 is now far below the window: stale
        session.open_uplink(CODEC.parse(first))
    with pytest.raises(LinkAuthError):
        session.open_uplink(CODEC.parse(far))
    assert session._window._bits.bit_length() <= REPLAY_WINDOW


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1) | st.integers(0, 3000), max_size=60))
def test_replay_window_matches_model_and_stays_bounded(counters: list[int]) -> None:
    """Any counters (jumps up to 2**64): the same answers as a set-based model, O(1) state."""
    window = ReplayWindow()
    seen: set[int] = set()
    top = 0
    for c in counters:
        expected = c > 0 and c not in seen and (c > top or top - c < REPLAY_WINDOW)
        assert window.check(c) is expected
        if expected:
            window.accept(c)
            seen.add(c)
            top = max(top, c)
        # Out-of-window accept (misuse) must not allocate either.
        window.accept(max(0, top - 2**62))
        assert window._bits.bit_length() <= REPLAY_WINDOW
