"""Media packets: constant size, AEAD, header protection, redundancy, replay window."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from client import (
    REPLAY_WINDOW,
    Direction,
    JitterBuffer,
    JitterConfig,
    MediaError,
    MediaForged,
    MediaMalformed,
    MediaReceiver,
    MediaReplayed,
    MediaReplayWindow,
    MediaSender,
    NotMedia,
    VoiceProfile,
    check_fits,
    derive_media_keys,
)
from client._media import EXPECTED_AHEAD, HP_SAMPLE_LEN, MEDIA_LABEL, SEQ_LEN, _seq_mask, _xor
from overlay import VOICE, PacketError, UsageError

SECRET, CALL_ID = bytes(range(32)), bytes(range(16))
PROFILE = VoiceProfile()


def _pair(profile: VoiceProfile = PROFILE) -> tuple[MediaSender, MediaReceiver]:
    keys = derive_media_keys(SECRET, CALL_ID, Direction.CALLER_TO_CALLEE)
    return MediaSender(profile, keys), MediaReceiver(profile, keys)


def _frames(i: int, profile: VoiceProfile = PROFILE, size: int | None = None) -> list[bytes]:
    n = profile.frame_bytes if size is None else size
    return [bytes([(i * 7 + j) % 256]) * n for j in range(profile.frames_per_packet)]


def test_keys_differ_by_direction_call_generation_and_secret() -> None:
    base = derive_media_keys(SECRET, CALL_ID, Direction.CALLER_TO_CALLEE)
    others = [
        derive_media_keys(SECRET, CALL_ID, Direction.CALLEE_TO_CALLER),
        derive_media_keys(SECRET, bytes(16), Direction.CALLER_TO_CALLEE),
        derive_media_keys(SECRET, CALL_ID, Direction.CALLER_TO_CALLEE, generation=1),
        derive_media_keys(bytes(32), CALL_ID, Direction.CALLER_TO_CALLEE),
    ]
    keys = {base.aead_key, base.hp_key} | {k.aead_key for k in others} | {k.hp_key for k in others}
    assert len(keys) == 10
    assert b"v2" in MEDIA_LABEL  # v2: the receiver report block
    assert SECRET.hex() not in repr(base) and base.aead_key.hex() not in repr(base)
    with pytest.raises(UsageError):
        derive_media_keys(b"short", CALL_ID, Direction.CALLER_TO_CALLEE)


def test_round_trip_with_redundancy_and_constant_size() -> None:
    tx, rx = _pair()
    sizes = set()
    for i in range(5):
        # Speech-sized and tiny (silence-like) frames make the same packet size.
        wire = tx.seal(_frames(i, size=PROFILE.frame_bytes if i % 2 else 3))
        sizes.add(len(wire))
        pkt = rx.open(wire)
        assert pkt.seq == i and pkt.timestamp == i * 2 * 320
        assert list(pkt.frames) == _frames(i, size=PROFILE.frame_bytes if i % 2 else 3)
        fmap = pkt.frame_map()
        if i == 0:
            assert sorted(fmap) == [0, 1]
        else:
            assert sorted(fmap) == [2 * i - 2, 2 * i - 1, 2 * i, 2 * i + 1]
            prev = _frames(i - 1, size=PROFILE.frame_bytes if (i - 1) % 2 else 3)
            assert [fmap[2 * i - 2], fmap[2 * i - 1]] == prev
    assert sizes == {VOICE.user_payload}
    assert rx.counters.accepted == 5


def test_one_lost_packet_costs_no_frame() -> None:
    tx, rx = _pair()
    got: dict[int, bytes] = {}
    for i in range(6):
        wire = tx.seal(_frames(i))
        if i != 3:
            got.update(rx.open(wire).frame_map())
    assert sorted(got) == list(range(12))


def test_sequence_number_is_masked_on_the_wire() -> None:
    tx, _ = _pair()
    heads = [tx.seal(_frames(i))[:4] for i in range(50)]
    assert len(set(heads)) == 50
    assert sum(h == i.to_bytes(4, "big") for i, h in enumerate(heads)) == 0


def test_every_flipped_bit_is_rejected_and_tampered_bodies_count_as_forged() -> None:
    tx, rx = _pair()
    wire = tx.seal(_frames(0))
    # Past the masked number and the header-protection sample (bytes 4..19) the number
    # still unmasks to 0, which the window expects: forged. Byte 3 holds the number's low
    # bits (0 -> 1, still expected): forged. Byte 0 (0 -> 2**24) and the sample (the mask
    # turns random) move the number out of range: not media.
    want = {0: NotMedia, 3: MediaForged, 4: NotMedia, 19: NotMedia, 20: MediaForged,
            200: MediaForged, len(wire) - 1: MediaForged}  # fmt: skip
    for pos, error in want.items():
        bad = bytearray(wire)
        bad[pos] ^= 0x01
        with pytest.raises(error):
            rx.open(bytes(bad))
    assert rx.open(wire).seq == 0  # a forged packet did not move the window
    assert (rx.counters.media_forged, rx.counters.not_media) == (4, 3)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(SEQ_LEN + HP_SAMPLE_LEN, VOICE.user_payload - 1),
    st.integers(1, 255),
    st.integers(0, 300),
)
def test_a_tampered_media_body_is_counted_forged_and_only_that(
    pos: int, flip: int, seq: int
) -> None:
    tx, rx = _pair()
    wires = [tx.seal(_frames(i)) for i in range(seq + 1)]
    if seq:
        rx.open(wires[seq - 1])
    bad = bytearray(wires[seq])
    bad[pos] ^= flip
    with pytest.raises(MediaForged):
        rx.open(bytes(bad))
    assert (rx.counters.media_forged, rx.counters.not_media, rx.counters.media_replayed) == (
        1,
        0,
        0,
    )
    assert rx.open(wires[seq]).seq == seq


def test_wrong_key_and_wrong_direction_are_not_media() -> None:
    tx, _ = _pair()
    back = MediaReceiver(PROFILE, derive_media_keys(SECRET, CALL_ID, Direction.CALLEE_TO_CALLER))
    with pytest.raises(NotMedia):
        back.open(tx.seal(_frames(0)))
    assert (back.counters.not_media, back.counters.media_forged) == (1, 0)


def test_replays_and_too_old_packets_are_rejected() -> None:
    tx, rx = _pair()
    wires = [tx.seal(_frames(i)) for i in range(200)]
    rx.open(wires[150])
    rx.open(wires[100])  # late but inside the window
    with pytest.raises(MediaReplayed):
        rx.open(wires[100])
    with pytest.raises(MediaReplayed):
        rx.open(wires[150])
    with pytest.raises(MediaReplayed):
        rx.open(wires[10])  # older than the 128-packet window
    assert rx.open(wires[199]).seq == 199
    assert rx.counters.media_replayed == 3
    assert isinstance(MediaReplayed(), PacketError)


def test_wrong_lengths_are_malformed() -> None:
    _, rx = _pair()
    for wire in (b"", bytes(351), bytes(353)):
        with pytest.raises(MediaMalformed):
            rx.open(wire)
    assert rx.counters.media_malformed == 3


def test_profiles_that_do_not_fit_are_refused_by_name() -> None:
    with pytest.raises(UsageError, match="frames_per_packet"):
        check_fits(VoiceProfile(frames_per_packet=3, bitrate_bps=32000), VOICE.user_payload)
    check_fits(VoiceProfile(frames_per_packet=3, bitrate_bps=20000), VOICE.user_payload)
    tx, _ = _pair()
    with pytest.raises(UsageError):
        tx.seal(_frames(0)[:1])
    with pytest.raises(UsageError):
        tx.seal([bytes(200), bytes(200)])


def _unmasked(wire: bytes) -> int:
    keys = derive_media_keys(SECRET, CALL_ID, Direction.CALLER_TO_CALLEE)
    sample = wire[SEQ_LEN : SEQ_LEN + HP_SAMPLE_LEN]
    return int.from_bytes(_xor(wire[:SEQ_LEN], _seq_mask(keys.hp_key, sample)), "big")


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=352, max_size=352), st.integers(0, 2**32 - 1))
def test_random_packets_are_not_media_and_never_crash_the_receiver(
    wire: bytes, highest: int
) -> None:
    tx, rx = _pair()
    rx.window.accept(highest)
    with pytest.raises(MediaError) as info:
        rx.open(wire)
    c = rx.counters
    assert c.media_forged + c.media_replayed + c.not_media == 1 and c.accepted == 0
    # Cover and signaling frames are random bytes to the media keys: only a number that
    # unmasks into the expected range (p ~ 1e-6) may count as forged.
    if not rx.window.expects(_unmasked(wire)):
        assert isinstance(info.value, NotMedia | MediaReplayed)
        assert c.media_forged == 0


def test_cover_and_signaling_during_a_call_are_not_counted_forged() -> None:
    tx, rx = _pair()
    for i in range(50):
        rx.open(tx.seal(_frames(i)))
        with pytest.raises(NotMedia):
            rx.open(bytes(((i * 31 + j) * 197) % 256 for j in range(VOICE.user_payload)))
    assert (rx.counters.accepted, rx.counters.not_media, rx.counters.media_forged) == (50, 50, 0)


def _jumps() -> st.SearchStrategy[list[int]]:
    """Sequence numbers reached by jumps of any size up to 2**64, either way."""
    step = st.one_of(
        st.integers(-3, 3),
        st.integers(-200, 200),
        st.integers(-(2**64), 2**64),
        st.sampled_from([2**63, -(2**63), 2**64, 1]),
    )
    return st.lists(step, max_size=60).map(_walk)


def _walk(steps: list[int]) -> list[int]:
    seq, out = 0, []
    for s in steps:
        seq = max(0, seq + s)
        out.append(seq)
    return out


@settings(max_examples=300, deadline=None)
@given(_jumps(), st.sampled_from([1, 64, REPLAY_WINDOW]))
def test_replay_window_matches_a_set_model_at_bounded_cost_for_any_jump(
    seqs: list[int], size: int
) -> None:
    w = MediaReplayWindow(size)
    seen: set[int] = set()
    highest = -1
    for s in seqs:
        ok = s not in seen and s > highest - size
        try:
            w.check(s)
            w.accept(s)
            accepted = True
        except MediaReplayed:
            accepted = False
        assert accepted == ok
        if ok:
            seen.add(s)
            highest = max(highest, s)
        assert w.highest == highest
        # O(size) storage whatever the jump: the bitmap never grows past the window.
        assert w._bits.bit_length() <= size


def test_replay_window_after_a_jump_of_2_to_the_63() -> None:
    w = MediaReplayWindow()
    w.accept(1)
    w.accept(2**63)
    assert w._bits == 1
    with pytest.raises(MediaReplayed):
        w.accept(1)  # far behind now
    w.accept(2**63 - 5)
    with pytest.raises(MediaReplayed):
        w.accept(2**63 - 5)
    with pytest.raises(UsageError):
        w.check(-1)
    assert w.expects(2**63 + EXPECTED_AHEAD) and not w.expects(2**63 + EXPECTED_AHEAD + 1)


def test_authentic_but_malformed_body_is_malformed_and_not_replayable() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from client._media import _nonce, _seq_mask, _xor

    keys = derive_media_keys(SECRET, CALL_ID, Direction.CALLER_TO_CALLEE)
    _, rx = _pair()
    body = bytes([0, 0, 0, 0, 1, 0, 0xFF, 0xFF])  # a frame longer than the packet
    body = body + bytes(VOICE.user_payload - 20 - 8)
    ct = ChaCha20Poly1305(keys.aead_key).encrypt(_nonce(7), body, None)
    wire = _xor((7).to_bytes(4, "big"), _seq_mask(keys.hp_key, ct[:16])) + ct
    with pytest.raises(MediaMalformed):
        rx.open(wire)
    with pytest.raises(MediaReplayed):
        rx.open(wire)


def test_rekey_keeps_numbering_and_opens_packets_still_in_flight() -> None:
    tx, rx = _pair()
    old = [tx.seal(_frames(i)) for i in range(3)]
    new_keys = derive_media_keys(SECRET, CALL_ID, Direction.CALLER_TO_CALLEE, generation=1)
    tx.rekey(new_keys)
    rx.rekey(new_keys)
    fresh = tx.seal(_frames(3))
    pkt = rx.open(fresh)
    assert pkt.seq == 3 and len(pkt.redundant) == 2  # numbering and redundancy carry on
    assert rx.open(old[1]).seq == 1  # sealed before the rekey, arrives after it
    with pytest.raises(MediaReplayed):
        rx.open(old[1])
    bad = bytearray(old[0])
    bad[200] ^= 1
    with pytest.raises(MediaForged):  # tampered under the previous keys: still forged
        rx.open(bytes(bad))
    rx.forget_previous()
    with pytest.raises(NotMedia):  # the old keys are gone: noise to the receiver now
        rx.open(old[2])
    with pytest.raises(NotMedia):  # the old keys no longer seal anything it accepts
        rx.open(MediaSender(PROFILE, derive_media_keys(SECRET, CALL_ID, 0)).seal(_frames(9)))


@st.composite
def _profiles(draw: st.DrawFn) -> VoiceProfile:
    """Any profile that is valid and fits a media packet."""
    try:
        profile = VoiceProfile(
            sample_rate_hz=draw(st.sampled_from([8000, 12000, 16000, 24000, 48000])),
            frame_ms=draw(st.sampled_from([10, 20, 40, 60])),
            frames_per_packet=draw(st.integers(1, 3)),
            bitrate_bps=draw(st.sampled_from([6000, 8000, 12000, 16000, 24000])),
            redundancy=draw(st.integers(0, 2)),
        )
        check_fits(profile, VOICE.user_payload)
    except UsageError:
        assume(False)
    return profile


@settings(max_examples=60, deadline=None)
@given(_profiles())
def test_frame_indices_count_the_senders_frames(peer: VoiceProfile) -> None:
    """A receiver built with the sending peer's profile (as a call builds it, whatever its
    own is) numbers the peer's frames 0, 1, 2, ...: every frame once, redundant copies on
    the index of the original, none taken for another frame's duplicate."""
    tx, rx = _pair(peer)
    jb = JitterBuffer(JitterConfig(frame_ms=peer.frame_ms))
    packets, fpp = 12, peer.frames_per_packet
    for i in range(packets):
        pkt = rx.open(tx.seal(_frames(i, peer)))
        assert pkt.first_index == i * fpp and pkt.profile == peer
        fmap = pkt.frame_map()
        assert [fmap[i * fpp + j] for j in range(fpp)] == list(pkt.frames)
        assert sorted(fmap) == list(range(max(0, i - peer.redundancy) * fpp, (i + 1) * fpp))
        jb.push_packet(pkt, i * peer.packet_interval_ms / 1000)
    copies = sum(min(i, peer.redundancy) * fpp for i in range(packets))
    assert jb.stats.duplicates == copies


def test_a_jitter_buffer_on_other_frames_than_the_packets_refuses_them() -> None:
    tx, rx = _pair(VoiceProfile(frame_ms=40, bitrate_bps=12000))
    with pytest.raises(UsageError, match="frame_ms"):
        JitterBuffer(JitterConfig(frame_ms=20)).push_packet(rx.open(tx.seal(_frames(0))), 0.0)
