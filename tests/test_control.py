"""The daemon <-> worker control frames: round trips, bounds, and hostile bytes."""

from __future__ import annotations

import hashlib
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay import (
    CONTROL_MAX,
    CONTROL_VERSION,
    MAILBOX_ID_LEN,
    NODE_ID_LEN,
    ControlFrame,
    ControlFrameError,
    DeliveryFrame,
    DownlinkKind,
    DropReason,
    EpochKey,
    KeysFrame,
    PacketFrame,
    QuitFrame,
    StatsFrame,
    TopologyFrame,
    WorkerSettings,
    decode_control,
)

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
finite = st.floats(allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0.0, max_value=1e12, allow_nan=False)
u64 = st.integers(0, 2**64 - 1)
epoch_keys = st.builds(
    EpochKey,
    epoch=st.integers(-(2**63), 2**63 - 1),
    private_key=st.binary(min_size=32, max_size=32),
    expires_at=finite,
    replay_fd=st.none() | st.integers(0, 2**31 - 1),
)
names = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
frames: st.SearchStrategy[ControlFrame] = st.one_of(
    st.builds(KeysFrame, st.lists(epoch_keys, max_size=5).map(tuple)),
    st.builds(TopologyFrame, st.binary(max_size=3000)),
    st.builds(PacketFrame, st.binary(max_size=3000)),
    st.just(QuitFrame()),
    st.builds(
        DeliveryFrame,
        st.binary(min_size=MAILBOX_ID_LEN, max_size=MAILBOX_ID_LEN),
        st.sampled_from(DownlinkKind),
        st.binary(max_size=1000),
    ),
    st.builds(
        StatsFrame,
        st.dictionaries(names, u64, max_size=8),
        st.dictionaries(st.sampled_from(DropReason), u64),
        u64,
        u64,
        st.lists(u64, max_size=12).map(tuple),
        non_negative,
        st.lists(
            st.tuples(
                u64,
                st.lists(
                    st.binary(min_size=NODE_ID_LEN, max_size=NODE_ID_LEN), max_size=5
                ).map(tuple),
            ),
            max_size=6,
        ).map(tuple),
        st.lists(u64, max_size=6).map(tuple),
    ),
)
settings_ = st.builds(
    WorkerSettings,
    geometry=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=9),
    node_id=st.binary(min_size=NODE_ID_LEN, max_size=NODE_ID_LEN),
    late_drop_ms=non_negative,
    max_queue=st.integers(1, 2**64 - 1),
    cover_rate_hz=non_negative,
    mix_delay_ms=non_negative,
    link_delay_ms=non_negative,
    link_jitter_ms=non_negative,
    link_loss=st.floats(0.0, 1.0, exclude_max=True),
    udp_fd=st.integers(-1, 2**31 - 1),
    ctrl_fd=st.integers(-1, 2**31 - 1),
)


@FUZZ
@given(frames)
def test_every_frame_round_trips(frame: ControlFrame) -> None:
    data = frame.to_bytes()
    assert data[0] == CONTROL_VERSION and data[1:2] == type(frame).TYPE
    assert decode_control(data) == frame
    assert type(frame).from_bytes(data) == frame


@FUZZ
@given(settings_)
def test_worker_settings_round_trip(s: WorkerSettings) -> None:
    assert WorkerSettings.from_bytes(s.to_bytes()) == s
    assert WorkerSettings.from_bytes(bytes.fromhex(s.to_bytes().hex())) == s


def _only_control_errors(data: bytes) -> None:
    for parse in (decode_control, WorkerSettings.from_bytes, StatsFrame.from_bytes):
        try:
            parse(data)
        except ControlFrameError:
            pass


@settings(FUZZ, max_examples=2000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_control_frame_errors_only(data: bytes) -> None:
    _only_control_errors(data)
    for head in (b"\x01K", b"\x01S", b"\x01D", b"\x01W", b"\x01Q"):
        _only_control_errors(head + data)


@settings(FUZZ, max_examples=300)
@given(frames | settings_, st.data())
def test_cut_or_flipped_frames_raise_control_frame_errors_only(
    frame: ControlFrame | WorkerSettings, data: st.DataObject
) -> None:
    raw = frame.to_bytes()
    cut = data.draw(st.integers(0, len(raw)))
    _only_control_errors(raw[:cut])
    i = data.draw(st.integers(0, len(raw) - 1))
    flipped = bytearray(raw)
    flipped[i] ^= data.draw(st.integers(1, 255))
    _only_control_errors(bytes(flipped))
    _only_control_errors(raw + b"\x00")


def test_seeded_noise_raises_control_frame_errors_only() -> None:
    noise = hashlib.shake_256(b"control").digest(200 * 64)
    for i in range(200):
        chunk = noise[i * 64 : (i + 1) * 64]
        for kind in b"KTPQDSW?":
            _only_control_errors(bytes((CONTROL_VERSION, kind)) + chunk)


def test_malformed_frames_say_what_is_wrong() -> None:
    with pytest.raises(ControlFrameError, match="version"):
        decode_control(b"\x02Q")
    with pytest.raises(ControlFrameError, match="unknown control frame type"):
        decode_control(b"\x01Z")
    with pytest.raises(ControlFrameError, match="shorter"):
        decode_control(b"\x01")
    with pytest.raises(ControlFrameError, match="trailing"):
        decode_control(b"\x01Qx")
    with pytest.raises(ControlFrameError, match="truncated"):
        decode_control(b"\x01K\x00\x01" + bytes(10))
    with pytest.raises(ControlFrameError, match="downlink kind"):
        decode_control(b"\x01D" + bytes(16) + b"\x09")
    with pytest.raises(ControlFrameError, match="unknown drop reason"):
        decode_control(b"\x01S\x00\x00\x00\x01\x04nope")
    # An empty frame ends with hist_sum (8 bytes) and two empty loop lists (2 + 2 bytes).
    nan_sum = StatsFrame().to_bytes()[:-12] + struct.pack(">d", math.nan) + bytes(4)
    with pytest.raises(ControlFrameError, match="non-finite"):
        decode_control(nan_sum)
    with pytest.raises(ControlFrameError, match="expected b'K'"):
        KeysFrame.from_bytes(QuitFrame().to_bytes())


def test_control_max_bounds_both_ways() -> None:
    assert len(TopologyFrame(bytes(CONTROL_MAX - 2)).to_bytes()) == CONTROL_MAX
    with pytest.raises(ControlFrameError, match="exceeds"):
        TopologyFrame(bytes(CONTROL_MAX - 1)).to_bytes()
    with pytest.raises(ControlFrameError, match="exceeds"):
        decode_control(b"\x01T" + bytes(CONTROL_MAX - 1))


def test_values_out_of_range_are_refused_when_built() -> None:
    ok = dict(geometry="voice", node_id=bytes(16), late_drop_ms=50.0, max_queue=1)
    more = dict(cover_rate_hz=0.0, mix_delay_ms=1.0)
    WorkerSettings(**ok, **more)  # type: ignore[arg-type]
    for bad in (
        {"geometry": ""},
        {"geometry": "vöice"},
        {"node_id": bytes(15)},
        {"late_drop_ms": -1.0},
        {"max_queue": 0},
        {"link_loss": 1.0},
        {"udp_fd": -2},
        {"mix_delay_ms": math.inf},
    ):
        with pytest.raises(ControlFrameError):
            WorkerSettings(**{**ok, **more, **bad})  # type: ignore[arg-type]
    with pytest.raises(ControlFrameError):
        EpochKey(1, bytes(31), 0.0)
    with pytest.raises(ControlFrameError):
        DeliveryFrame(bytes(15), DownlinkKind.MESSAGE, b"")
    with pytest.raises(ControlFrameError):
        StatsFrame(counters={"x": -1}).to_bytes()
    with pytest.raises(ControlFrameError):
        StatsFrame(counters={"ü": 1}).to_bytes()


def test_a_keys_frame_pins_its_layout() -> None:
    frame = KeysFrame((EpochKey(7, bytes(range(32)), 1.5, 9), EpochKey(8, bytes(32), 2.0)))
    want = (
        b"\x01K\x00\x02"
        + struct.pack(">q", 7) + bytes(range(32)) + struct.pack(">d", 1.5) + struct.pack(">i", 9)
        + struct.pack(">q", 8) + bytes(32) + struct.pack(">d", 2.0) + struct.pack(">i", -1)
    )  # fmt: skip
    assert frame.to_bytes() == want
