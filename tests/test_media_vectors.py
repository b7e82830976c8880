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
            info = b"phantom-media-v1" + bytes([direction]) + struct.pack(">I", generation)
            okm = _hkdf_sha256(SECRET, CALL_ID, info, 64)
            assert (keys.aead_key, keys.hp_key) == (okm[:32], okm[32:])


def test_media_packet_opens_by_the_documented_layout() -> None:
    keys = derive_media_keys(SECRET, CALL_ID, Direction.CALLER_TO_CALLEE)
    tx = MediaSender(VoiceProfile(), keys)
    w0 = tx.seal([b"\x01" * 60, b"\x02" * 60])
    w1 = tx.seal([b"\x03" * 60, b"\x04" * 60])
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
        assert body[6 + len(expected) :] == bytes(332 - 6 - len(expected))
    # Pinned: any change to the format or the labels shows here.
    assert hashlib.sha256(w0).hexdigest() == (
        "0b997b8c48d9ee14fee37e4cadd35cbf54acfa1e71fb9714873ba5894fccf062"
    )
    assert hashlib.sha256(w1).hexdigest() == (
        "aecbf6b7be119327b86d113b726b2eac9e118a67cce097816b7f078d81e4cd7c"
    )


def test_offer_bytes_are_pinned() -> None:
    offer = Offer(CALL_ID, bytes(16), PrivacyMode.PARANOID, MediaType.AUDIO, 1,
                  VoiceProfile(), b"mb", b"su")  # fmt: skip
    assert encode(offer) == bytes.fromhex(
        "0101" + CALL_ID.hex() + "00" * 16 + "030101" + "00003e80" + "14" + "02" + "00005dc0"
        + "01" + "0002" + b"mb".hex() + "0002" + b"su".hex()
    )  # fmt: skip
