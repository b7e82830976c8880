"""Known answers: the media format and key derivation as docs/media.md describes them,
rebuilt here from the standard primitives, plus pinned digests that catch any change."""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from client import (
    Direction,
    MediaSender,
    MediaType,
    Offer,
    PrivacyMode,
    ReceiverReport,
    VoiceProfile,
    derive_media_keys,
    encode,
)

SECRET, CALL_ID = bytes(range(32)), bytes(range(16))


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869, written out."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def test_media_keys_follow_the_documented_derivation() -> None:
    for direction in Direction:
        for generation in (0, 1, 70000):
            keys = derive_media_keys(SECRET, CALL_ID, direction, generation)
            info = b"phantom-media-v2" + bytes([direction]) + struct.pack(">I", generation)
            okm = _hkdf_sha256(SECRET, CALL_ID, info, 64)
            assert (keys.aead_key, keys.hp_key) == (okm[:32], okm[32:])


def test_media_packet_opens_by_the_documented_layout() -> None:
    keys = derive_media_keys(SECRET, CALL_ID, Direction.CALLER_TO_CALLEE)
    tx = MediaSender(VoiceProfile(), keys)
    w0 = tx.seal([b"\x01" * 60, b"\x02" * 60])
    w1 = tx.seal([b"\x03" * 60, b"\x04" * 60], ReceiverReport(5, 40, 7, 2))
    for seq, wire in enumerate((w0, w1)):
        ct = wire[4:]
        mask = hashlib.blake2b(ct[:16], key=keys.hp_key, digest_size=4, person=b"pn-media-hp-v1")
        masked = bytes(a ^ b for a, b in zip(wire[:4], mask.digest(), strict=True))
        assert struct.unpack(">I", masked)[0] == seq
        body = ChaCha20Poly1305(keys.aead_key).decrypt(bytes(8) + struct.pack(">I", seq), ct, None)
        assert len(body) == 332
        timestamp, n_frames, n_red = struct.unpack_from(">IBB", body)
        assert (timestamp, n_frames, n_red) == (640 * seq, 2, 2 * seq)
        frames = [bytes([i]) * 60 for i in range(1, 3 + 2 * seq)]  # redundant ones first
        expected = b"".join(struct.pack(">H", len(f)) + f for f in frames)
        assert body[6 : 6 + len(expected)] == expected
        end = 6 + len(expected)
        if seq == 1:  # type 1, echo_seq 5, hold_ms 40, highest_seq 7, lost 2 (24 bits)
            block = bytes([1]) + struct.pack(">IHI", 5, 40, 7) + (2).to_bytes(3, "big")
            assert body[end : end + 14] == block
            end += 14
        assert body[end:] == bytes(332 - end)
    # Pinned (regenerated for phantom-media-v2): any change to the format or labels shows here.
    assert hashlib.sha256(w0).hexdigest() == (
        "fad51fb1f22af5b55b080ac89398a29ed3ba72869312c6e7594c10f65708dbb6"
    )
    assert hashlib.sha256(w1).hexdigest() == (
        "1360ff063a869621cd1be579dc5c6223e02467fa9329318d40526e8b6ed9b376"
    )


def test_offer_bytes_are_pinned() -> None:
    offer = Offer(CALL_ID, bytes(16), PrivacyMode.PARANOID, MediaType.AUDIO, 1,
                  VoiceProfile(), b"mb", b"su")  # fmt: skip
    assert encode(offer) == bytes.fromhex(
        "0101" + CALL_ID.hex() + "00" * 16 + "030101" + "00003e80" + "14" + "02" + "00005dc0"
        + "01" + "0002" + b"mb".hex() + "0002" + b"su".hex()
    )  # fmt: skip
