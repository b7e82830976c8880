"""Media packets: constant size, AEAD, header protection, redundancy, replay window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client import (
    Direction,
    MediaForged,
    MediaMalformed,
    MediaReceiver,
    MediaReplayed,
    MediaSender,
    ReplayWindow,
    VoiceProfile,
    check_fits,
    derive_media_keys,
)
from client._media import MEDIA_LABEL
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
    assert b"v1" in MEDIA_LABEL
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
        fmap = pkt.frame_map(PROFILE.samples_per_frame)
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
            got.update(rx.open(wire).frame_map(320))
    assert sorted(got) == list(range(12))


def test_sequence_number_is_masked_on_the_wire() -> None:
    tx, _ = _pair()
    heads = [tx.seal(_frames(i))[:4] for i in range(50)]
    assert len(set(heads)) == 50
    assert sum(h == i.to_bytes(4, "big") for i, h in enumerate(heads)) == 0


def test_every_flipped_bit_is_rejected_as_forged_or_replay() -> None:
    tx, rx = _pair()
    wire = tx.seal(_frames(0))
    for pos in (0, 3, 4, 19, 200, len(wire) - 1):
        bad = bytearray(wire)
        bad[pos] ^= 0x01
        with pytest.raises((MediaForged, MediaReplayed)):
            rx.open(bytes(bad))
    assert rx.open(wire).seq == 0  # a forged packet did not move the window
    assert rx.counters.media_forged >= 5


def test_wrong_key_and_wrong_direction_are_forged() -> None:
    tx, _ = _pair()
    back = MediaReceiver(PROFILE, derive_media_keys(SECRET, CALL_ID, Direction.CALLEE_TO_CALLER))
    with pytest.raises(MediaForged):
        back.open(tx.seal(_frames(0)))


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
    for wire in (b"", bytes(383), bytes(385)):
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


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=384, max_size=384))
def test_random_packets_never_crash_the_receiver(wire: bytes) -> None:
    _, rx = _pair()
    with pytest.raises((MediaForged, MediaReplayed)):
        rx.open(wire)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 600), max_size=80))
def test_replay_window_matches_a_set_model(seqs: list[int]) -> None:
    w, seen, highest = ReplayWindow(64), set(), -1
    for s in seqs:
        ok = s not in seen and s > highest - 64
        try:
            w.accept(s)
            accepted = True
        except MediaReplayed:
            accepted = False
        assert accepted == ok
        if ok:
            seen.add(s)
            highest = max(highest, s)


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
    rx.forget_previous()
    with pytest.raises(MediaForged):
        rx.open(old[2])
    with pytest.raises(MediaForged):  # the old keys no longer seal anything it accepts
        rx.open(MediaSender(PROFILE, derive_media_keys(SECRET, CALL_ID, 0)).seal(_frames(9)))
