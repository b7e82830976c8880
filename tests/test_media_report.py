"""The receiver report block in media packets (phantom-media-v2): round trip, strict parse,
fuzzing and tampering; what a receiver reports; the round trip a report gives."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from client import (
    Direction,
    JitterConfig,
    MediaError,
    MediaForged,
    MediaMalformed,
    MediaReceiver,
    MediaReplayed,
    MediaSender,
    ReceiverReport,
    VoiceProfile,
    check_fits,
    derive_media_keys,
)
from client._call_media import MediaIn, MediaOut, rtt_sample
from client._media import (
    MAX_HOLD_MS,
    MAX_LOST,
    MAX_SEQ,
    REPORT_BLOCK_LEN,
    SEQ_LEN,
    TAG_LEN,
    _nonce,
    _seq_mask,
    _xor,
    media_body_capacity,
)
from overlay import VOICE, UsageError

SECRET, CALL_ID = bytes(range(32)), bytes(range(16))
PROFILE = VoiceProfile()
KEYS = derive_media_keys(SECRET, CALL_ID, Direction.CALLER_TO_CALLEE)
CAPACITY = media_body_capacity(VOICE.user_payload)  # 332 bytes of body
FIRST_END = 6 + 2 * (2 + PROFILE.frame_bytes)  # a first packet's header and 2 frames: 130


def _frames(i: int) -> list[bytes]:
    return [bytes([(i * 7 + j) % 256]) * PROFILE.frame_bytes for j in range(2)]


def _seal_body(body: bytes, seq: int) -> bytes:
    """An authentic packet around any body: what a buggy (or hostile) peer could send."""
    ct = ChaCha20Poly1305(KEYS.aead_key).encrypt(_nonce(seq), body, None)
    return _xor(struct.pack(">I", seq), _seq_mask(KEYS.hp_key, ct[:16])) + ct


def _body_with(block: bytes) -> bytes:
    """A valid first packet's header and two frames (no redundancy), then ``block``, then
    zero padding."""
    head = struct.pack(">IBB", 0, 2, 0)
    frames = b"".join(struct.pack(">H", len(f)) + f for f in _frames(0))
    body = head + frames + block
    return body + bytes(CAPACITY - len(body))


reports = st.builds(
    lambda echo, hold, ahead, lost: ReceiverReport(
        echo, hold, echo + ahead, min(lost, echo + ahead)
    ),
    st.integers(0, MAX_SEQ - 5000),
    st.integers(0, MAX_HOLD_MS),
    st.integers(0, 4096),
    st.integers(0, MAX_LOST),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), reports), min_size=1, max_size=6))
def test_reports_round_trip_in_packets_of_one_size(sent: list[ReceiverReport | None]) -> None:
    tx, rx = MediaSender(PROFILE, KEYS), MediaReceiver(PROFILE, KEYS)
    for i, report in enumerate(sent):
        wire = tx.seal(_frames(i), report)
        assert len(wire) == VOICE.user_payload
        packet = rx.open(wire)
        assert packet.report == report and packet.frames == tuple(_frames(i))
        if report is not None:
            assert packet.report is not None
            assert packet.report.received == report.highest_seq + 1 - report.lost


def test_the_report_block_sits_after_the_frames_and_before_the_padding() -> None:
    report = ReceiverReport(0x01020304, 0x0506, 0x0708090A, 0x0B0C0D)
    block = report.to_bytes()
    assert len(block) == REPORT_BLOCK_LEN == 14
    assert block == bytes.fromhex("010102030405060708090a0b0c0d")
    packet = MediaReceiver(PROFILE, KEYS).open(_seal_body(_body_with(block), 0))
    assert packet.report == report
    assert ReceiverReport.of(5, 0, 9, received=10).lost == 0
    assert ReceiverReport.of(5, 0, 2**25, received=1).lost == MAX_LOST  # saturates


@pytest.mark.parametrize(
    "block",
    [
        bytes([2]),  # an unknown type
        bytes([0xFF]) + bytes(13),
        bytes([1]) + struct.pack(">IHI", 9, 0, 8) + bytes(3),  # echo_seq above highest_seq
        bytes([1]) + struct.pack(">IHI", 3, 0, 8) + (9).to_bytes(3, "big"),  # lost > highest
        bytes([1]) + struct.pack(">IHI", 3, 0, 8) + bytes(3) + b"\x01",  # junk after the block
        bytes([0, 1]),  # no report, then junk in the padding
    ],
)
def test_an_authentic_body_with_a_bad_block_is_malformed_counted_and_consumed(block: bytes) -> None:
    rx = MediaReceiver(PROFILE, KEYS)
    wire = _seal_body(_body_with(block), 0)
    with pytest.raises(MediaMalformed):
        rx.open(wire)
    assert rx.counters.media_malformed == 1 and rx.counters.accepted == 0
    with pytest.raises(MediaReplayed):  # its number stays consumed
        rx.open(wire)


def test_a_report_cut_short_by_the_end_of_the_body_is_malformed() -> None:
    head = struct.pack(">IBB", 0, 1, 0)
    fill = CAPACITY - len(head) - 2 - 8  # one frame, then 8 bytes: a report of 14 cannot fit
    body = head + struct.pack(">H", fill) + b"f" * fill + bytes([1]) + b"\xff" * 7
    with pytest.raises(MediaMalformed):
        MediaReceiver(PROFILE, KEYS).open(_seal_body(body, 0))


def test_frames_that_fill_the_body_leave_no_report_and_parse() -> None:
    head = struct.pack(">IBB", 0, 1, 0)
    fill = CAPACITY - len(head) - 2
    packet = MediaReceiver(PROFILE, KEYS).open(
        _seal_body(head + struct.pack(">H", fill) + b"f" * fill, 0)
    )
    assert packet.report is None and packet.frames == (b"f" * fill,)


tails = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=20).map(lambda b: b"\x01" + b),  # a report type, then anything
    reports.map(lambda r: r.to_bytes())
    | st.binary(min_size=14, max_size=14).map(lambda b: b"\x01" + b[1:]),
)


@settings(max_examples=400, deadline=None)
@given(tails, st.integers(0, CAPACITY - FIRST_END - 40))
def test_any_tail_after_the_frames_opens_or_is_malformed(tail: bytes, gap: int) -> None:
    """Fuzz of the parser on authentic bodies (``tail`` after the frames, or ``gap`` zero
    bytes later): a packet, with or without a valid report, or MediaMalformed; nothing else."""
    rx = MediaReceiver(PROFILE, KEYS)
    body = (_body_with(b"")[:FIRST_END] + bytes(gap) + tail).ljust(CAPACITY, b"\0")
    try:
        packet = rx.open(_seal_body(body, 0))
    except MediaError as err:
        assert isinstance(err, MediaMalformed)
        return
    if packet.report is not None:
        r = packet.report
        assert r.echo_seq <= r.highest_seq and 1 <= r.received <= r.highest_seq + 1


@settings(max_examples=200, deadline=None)
@given(reports, st.integers(SEQ_LEN + 16, VOICE.user_payload - 1), st.integers(1, 255))
def test_tampering_with_a_packet_that_carries_a_report_is_refused(
    report: ReceiverReport, at: int, flip: int
) -> None:
    tx, rx = MediaSender(PROFILE, KEYS), MediaReceiver(PROFILE, KEYS)
    bad = bytearray(tx.seal(_frames(0), report))
    bad[at] ^= flip
    with pytest.raises(MediaForged):
        rx.open(bytes(bad))
    assert rx.counters.media_forged == 1


def test_check_fits_keeps_room_for_the_report() -> None:
    """The block costs 14 bytes: 3 frames per packet still reach 20 kbit/s, 2 frames with
    redundancy 30.4 kbit/s (31.6 before the report)."""
    check_fits(VoiceProfile(frames_per_packet=3, bitrate_bps=20000), VOICE.user_payload)
    check_fits(VoiceProfile(bitrate_bps=30400), VOICE.user_payload)
    with pytest.raises(UsageError, match="receiver report"):
        check_fits(VoiceProfile(bitrate_bps=31600), VOICE.user_payload)
    assert VOICE.user_payload - SEQ_LEN - TAG_LEN == CAPACITY


@pytest.mark.parametrize(
    "fields",
    [(-1, 0, 0, 0), (0, MAX_HOLD_MS + 1, 0, 0), (0, 0, MAX_SEQ + 1, 0), (0, 0, 0, MAX_LOST + 1),
     (3, 0, 2, 0), (0, 0, 2, 3), (True, 0, 0, 0), (0.5, 0, 1, 0)],
)  # fmt: skip
def test_a_report_out_of_range_is_a_usage_error(fields: tuple[int, int, int, int]) -> None:
    with pytest.raises(UsageError):
        ReceiverReport(*fields)
    with pytest.raises(UsageError):
        MediaSender(PROFILE, KEYS).seal(_frames(0), fields)  # type: ignore[arg-type]


def test_media_in_reports_the_last_arrival_and_its_hold() -> None:
    out, into = MediaOut(np.zeros(16000, np.int16), PROFILE), MediaIn(JitterConfig())
    out.start(PROFILE, KEYS, capture_start=0.0)
    into.start(PROFILE, KEYS)
    assert into.report(1.0) is None  # nothing arrived yet
    wires = [w for _ in range(3) if (w := out.seal_next()) is not None]
    for (_, wire), at in zip([wires[0], wires[2], wires[1]], [1.0, 1.1, 1.15], strict=True):
        assert into.open(wire, at)
    report = into.report(1.2375)  # held 87.5 ms: floored
    assert report == ReceiverReport(echo_seq=1, hold_ms=87, highest_seq=2, lost=0)
    assert report.received == 3
    assert into.report(1.15 + 70.0) == ReceiverReport(1, MAX_HOLD_MS, 2, 0)  # saturates


def test_the_round_trip_of_a_report_and_the_one_way_estimate() -> None:
    """Caller A sends seq 0 at 10.0 s; it reaches B at 10.15; B holds it 30 ms and its
    report reaches A at 10.32: the round trip is 0.29 s, 0.145 s one way (an estimate)."""
    sent = {0: 10.0, 1: 10.04}
    assert rtt_sample(ReceiverReport(0, 30, 1, 0), 10.32, sent) == pytest.approx(0.29)
    assert rtt_sample(ReceiverReport(7, 30, 7, 0), 10.32, sent) is None  # never sent by us
    assert rtt_sample(ReceiverReport(0, MAX_HOLD_MS, 1, 0), 99.0, sent) is None  # hold unknown
    assert rtt_sample(ReceiverReport(0, 500, 1, 0), 10.2, sent) is None  # another clock


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, MAX_SEQ) | st.integers(0, 300),  # any number, jumps, replays
            st.integers(0, 2**32 - 1) | st.integers(0, 4000),  # the media clock
            st.none() | reports,  # the report it carries
            st.floats(0.0, 0.5),  # seconds since the previous arrival
        ),
        max_size=40,
    ),
    st.floats(0.0, 100.0),
)
def test_whatever_a_hostile_peer_seals_our_report_stays_consistent(
    packets: list[tuple[int, int, ReceiverReport | None, float]], later: float
) -> None:
    """Authentic packets of any number, order, media clock and report: each opens or is a
    counted MediaError, and the report we would send back always builds (echo and lost
    within the highest number, hold saturating), never a UsageError in our uplink."""
    into, at, heard = MediaIn(JitterConfig()), 0.0, list[ReceiverReport]()
    into.start(PROFILE, KEYS)
    into.on_report = lambda report, _at: heard.append(report)
    for seq, timestamp, report, gap in packets:
        at += gap
        frames = b"".join(struct.pack(">H", len(f)) + f for f in _frames(seq))
        body = struct.pack(">IBB", timestamp, 2, 0) + frames
        body += report.to_bytes() if report is not None else b""
        try:
            into.open(_seal_body(body + bytes(CAPACITY - len(body)), seq), at)
        except MediaError:
            pass
        ours = into.report(at + later)
        if ours is not None:
            assert ours.echo_seq <= ours.highest_seq and ours.hold_ms <= MAX_HOLD_MS
            assert 1 <= ours.received <= ours.highest_seq + 1
            into.play(at)
    assert len(heard) <= len(packets)
