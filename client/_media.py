"""Media packets: Opus frames with redundancy, sealed with ChaCha20-Poly1305, constant size.

    >>> import os
    >>> from client import Direction, MediaReceiver, MediaSender, VoiceProfile, derive_media_keys
    >>> secret, call_id = os.urandom(32), os.urandom(16)
    >>> profile = VoiceProfile()
    >>> keys = derive_media_keys(secret, call_id, Direction.CALLER_TO_CALLEE)
    >>> tx, rx = MediaSender(profile, keys), MediaReceiver(profile, keys)
    >>> wire = tx.seal([b"a" * profile.frame_bytes, b"b" * profile.frame_bytes])
    >>> len(wire)  # always exactly overlay.VOICE.user_payload
    352
    >>> packet = rx.open(wire)
    >>> packet.seq, sorted(packet.frame_map())
    (0, [0, 1])

Wire layout (every field big-endian; docs/media.md has the full table)::

    masked seq (4) | ChaCha20-Poly1305 ciphertext of the body (len - 20) | tag (16)
    body = timestamp (4) | n_frames (1) | n_redundant (1)
           | (frame length (2) | frame) * (n_redundant + n_frames)
           | [report type (1) = 1 | echo_seq (4) | hold_ms (2) | highest_seq (4) | lost (3)]
           | zero padding

The optional receiver report (in the manner of RTCP RR, RFC 3550 6.4.1) tells the peer
what we received of its media: the sequence number of the last packet that arrived, how
many milliseconds we held it before sealing this packet, the highest number accepted and
how many numbers up to it were not (cumulative lost, 24 bits, as RTCP's). A zero type
byte (or no room after the frames) means no report.

The sequence number is masked with a PRF (keyed BLAKE2b) of a sample of the ciphertext
under a separate header key, in the manner of QUIC's header protection, so the whole
packet looks uniformly random to the gateway that stores it. The AEAD nonce is the 32-bit
sequence number, never reused under one key: keys are per call and per direction, and a
sender refuses to wrap.

Python cannot promise to wipe keys from memory; they live only in ``MediaKeys`` objects
that a call drops when it ends.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from overlay import VOICE, DropReason, PacketError, UsageError

from ._voice import VoiceProfile

MEDIA_LABEL = b"phantom-media-v2"  # versioned KDF label; bump on any wire change
KEY_LEN = 32  # bytes, ChaCha20-Poly1305 and the header-protection key
CALL_SECRET_LEN = 32  # bytes of per-call secret from the E2EE channel
CALL_ID_LEN = 16  # bytes
SEQ_LEN = 4  # bytes, masked sequence number
TAG_LEN = 16  # bytes, Poly1305 tag
HP_SAMPLE_LEN = 16  # bytes of ciphertext that seed the header-protection mask
HP_PERSON = b"pn-media-hp-v1"  # BLAKE2b personalisation of the header-protection PRF
BODY_HEADER_LEN = 6  # timestamp (4) + n_frames (1) + n_redundant (1)
FRAME_LEN_LEN = 2  # bytes, length prefix of each Opus frame
REPORT_NONE = 0  # report type byte: no report, zero padding follows
REPORT_RR = 1  # report type byte: a ReceiverReport follows
REPORT_LEN = 13  # echo_seq (4) + hold_ms (2) + highest_seq (4) + lost (3)
REPORT_BLOCK_LEN = 1 + REPORT_LEN  # bytes the sender keeps free after the frames
MAX_HOLD_MS = 2**16 - 1  # hold_ms saturates here; such a report gives no RTT sample
MAX_LOST = 2**24 - 1  # cumulative lost saturates here (RTCP's 24 bits)
MAX_SEQ = 2**32 - 1  # a sender stops here (about 5.4 years at 25 packets/s)
MAX_TIMESTAMP = 2**32 - 1  # samples of media clock
REPLAY_WINDOW = 128  # packets, as in SRTP's recommended minimum of 64, doubled
# A number up to this many packets ahead of the highest accepted one claims to be media of
# this call (164 s at 40 ms per packet); random bytes unmask into the expected range with
# probability (EXPECTED_AHEAD + REPLAY_WINDOW) / 2**32, about 1e-6.
EXPECTED_AHEAD = 4096  # packets
MIN_PACKET_LEN = SEQ_LEN + HP_SAMPLE_LEN + TAG_LEN  # shortest packet we can unmask


class MediaError(PacketError):
    """A media packet failed a check; it is counted and dropped."""

    reason = DropReason.MEDIA


class MediaMalformed(MediaError):
    """Wrong length, or a body that authenticated but does not parse (a buggy peer)."""

    reason = DropReason.MEDIA_MALFORMED


class MediaForged(MediaError):
    """The packet claims to be media of this call (its unmasked sequence number is in the
    range the replay window expects) but the AEAD tag does not verify: tampered or corrupted
    after the sender sealed it."""

    reason = DropReason.MEDIA_FORGED


class MediaReplayed(MediaError):
    """The sequence number was already accepted, or the packet is authentic but older than
    the replay window."""

    reason = DropReason.MEDIA_REPLAYED


class NotMedia(MediaError):
    """Not media of this call as far as the receiver can tell: the unmasked sequence number
    is outside the expected range and the tag does not verify. Cover, signaling frames,
    packets under other keys and random bytes all look like this; so does a media packet
    whose masked number or first 16 ciphertext bytes were changed (the number turns random).
    """

    reason = DropReason.NOT_MEDIA


class Direction(IntEnum):
    """Which way media flows; each direction has its own keys."""

    CALLER_TO_CALLEE = 0
    CALLEE_TO_CALLER = 1


@dataclass(frozen=True, slots=True)
class MediaKeys:
    """The AEAD key and header-protection key of one direction of one call."""

    aead_key: bytes = field(repr=False)
    hp_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.aead_key) != KEY_LEN or len(self.hp_key) != KEY_LEN:
            raise UsageError(f"media keys must be {KEY_LEN} bytes each")


def derive_media_keys(
    call_secret: bytes, call_id: bytes, direction: Direction, generation: int = 0
) -> MediaKeys:
    """HKDF-SHA256(salt=call id, ikm=call secret) with labels naming direction and rekey
    generation, so the two directions and every rekey get unrelated keys."""
    if not isinstance(call_secret, bytes) or len(call_secret) != CALL_SECRET_LEN:
        raise UsageError(f"call_secret must be {CALL_SECRET_LEN} bytes")
    if not isinstance(call_id, bytes) or len(call_id) != CALL_ID_LEN:
        raise UsageError(f"call_id must be {CALL_ID_LEN} bytes")
    if not isinstance(generation, int) or not 0 <= generation < 2**32:
        raise UsageError("generation must be an integer in 0..2**32-1")
    info = MEDIA_LABEL + struct.pack(">BI", Direction(direction), generation)
    okm = HKDF(hashes.SHA256(), 2 * KEY_LEN, call_id, info).derive(call_secret)
    return MediaKeys(okm[:KEY_LEN], okm[KEY_LEN:])


def _nonce(seq: int) -> bytes:
    return bytes(8) + struct.pack(">I", seq)


def _seq_mask(hp_key: bytes, sample: bytes) -> bytes:
    """Keyed BLAKE2b of a ciphertext sample: a PRF, so the masked number looks random."""
    return hashlib.blake2b(sample, key=hp_key, digest_size=SEQ_LEN, person=HP_PERSON).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def media_body_capacity(packet_len: int) -> int:
    """Bytes for timestamp, counts and frames inside a packet of ``packet_len`` bytes."""
    return packet_len - SEQ_LEN - TAG_LEN


def check_fits(profile: VoiceProfile, packet_len: int) -> None:
    """Raise a UsageError naming the fields when a profile's packet cannot fit."""
    frames = profile.frames_per_packet * (1 + profile.redundancy)
    need = BODY_HEADER_LEN + frames * (FRAME_LEN_LEN + profile.frame_bytes) + REPORT_BLOCK_LEN
    have = media_body_capacity(packet_len)
    if need > have:
        raise UsageError(
            f"frames_per_packet * (1 + redundancy) * frame bytes (bitrate_bps, frame_ms) and"
            f" the {REPORT_BLOCK_LEN}-byte receiver report need {need} bytes but a"
            f" {packet_len}-byte media packet holds {have}"
        )


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """What a receiver tells the sender about its media (RTCP RR style, fixed size).

    ``echo_seq``: the sequence number of the last media packet that arrived from the peer;
    ``hold_ms``: milliseconds between its arrival and the sealing of the packet that
    carries this report (saturating at ``MAX_HOLD_MS``); ``highest_seq``: the highest number
    accepted; ``lost``: numbers up to ``highest_seq`` not accepted (saturating at
    ``MAX_LOST``). Raises ``UsageError`` for a field out of range or an inconsistent report
    (``echo_seq`` above ``highest_seq``, or no packet received: ``lost > highest_seq``).
    """

    echo_seq: int
    hold_ms: int
    highest_seq: int
    lost: int

    def __post_init__(self) -> None:
        for name, hi in (("echo_seq", MAX_SEQ), ("hold_ms", MAX_HOLD_MS),
                         ("highest_seq", MAX_SEQ), ("lost", MAX_LOST)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
                raise UsageError(f"{name}: want an integer in [0, {hi}], got {value!r}")
        if self.echo_seq > self.highest_seq or self.lost > self.highest_seq:
            raise UsageError(f"inconsistent receiver report {self!r}")

    @classmethod
    def of(cls, echo_seq: int, hold_ms: int, highest_seq: int, received: int) -> ReceiverReport:
        """The report of a receiver that accepted ``received`` packets (>= 1), ``lost``
        saturating at ``MAX_LOST``; UsageError as the constructor."""
        return cls(echo_seq, hold_ms, highest_seq, min(MAX_LOST, highest_seq + 1 - received))

    @property
    def received(self) -> int:
        """Packets the peer accepted: ``highest_seq + 1 - lost`` (too high once ``lost``
        saturated, after 2^24 lost packets: a week of media)."""
        return self.highest_seq + 1 - self.lost

    def to_bytes(self) -> bytes:
        """The ``REPORT_BLOCK_LEN`` bytes of the block, type byte first."""
        head = struct.pack(">BIHI", REPORT_RR, self.echo_seq, self.hold_ms, self.highest_seq)
        return head + self.lost.to_bytes(3, "big")


@dataclass(frozen=True, slots=True)
class MediaPacket:
    """What one media packet carried: ``redundant`` frames immediately precede ``frames``."""

    seq: int
    timestamp: int  # media clock, in samples, of frames[0]
    frames: tuple[bytes, ...]
    redundant: tuple[bytes, ...]
    profile: VoiceProfile  # the sender's negotiated profile: it defines the media clock
    report: ReceiverReport | None = None  # what the peer received of our media

    @property
    def first_index(self) -> int:
        """Frame index of ``frames[0]``: timestamp / the sender's samples per frame."""
        return self.timestamp // self.profile.samples_per_frame

    def frame_map(self) -> dict[int, bytes]:
        """Frame index (timestamp / the sender's samples per frame) to frame, redundant ones
        included; the index counts the sender's frames, whatever our own profile is."""
        first = self.first_index
        out = {first - len(self.redundant) + i: f for i, f in enumerate(self.redundant)}
        out.update({first + i: f for i, f in enumerate(self.frames)})
        return {k: v for k, v in out.items() if k >= 0}


class MediaSender:
    """Seals ``frames_per_packet`` frames at a time; remembers recent ones for redundancy."""

    def __init__(
        self, profile: VoiceProfile, keys: MediaKeys, *, packet_len: int = VOICE.user_payload
    ):
        check_fits(profile, packet_len)
        self.profile = profile
        self.packet_len = packet_len
        self._aead = ChaCha20Poly1305(keys.aead_key)
        self._hp_key = keys.hp_key
        self._seq = 0
        self._timestamp = 0
        self._history: deque[tuple[bytes, ...]] = deque(maxlen=max(1, profile.redundancy))

    @property
    def next_seq(self) -> int:
        return self._seq

    def rekey(self, keys: MediaKeys) -> None:
        """Seal with new keys from the next packet on; numbering and redundancy carry on."""
        self._aead = ChaCha20Poly1305(keys.aead_key)
        self._hp_key = keys.hp_key

    def seal(self, frames: Sequence[bytes], report: ReceiverReport | None = None) -> bytes:
        """One packet of exactly ``packet_len`` bytes, whatever the frames' sizes, with
        ``report`` after the frames if given. UsageError for frames that are not
        ``frames_per_packet`` byte strings, that do not fit, or an exhausted sequence space."""
        p = self.profile
        if len(frames) != p.frames_per_packet or not all(isinstance(f, bytes) for f in frames):
            raise UsageError(f"seal wants exactly {p.frames_per_packet} frames of bytes")
        if self._seq > MAX_SEQ or self._timestamp > MAX_TIMESTAMP:
            raise UsageError("sequence space exhausted: rekey or end the call")
        redundant = [f for pkt in self._history for f in pkt] if p.redundancy else []
        parts = [struct.pack(">IBB", self._timestamp, len(frames), len(redundant))]
        for f in (*redundant, *frames):
            if len(f) >= 2 ** (8 * FRAME_LEN_LEN):
                raise UsageError("an Opus frame is longer than its length prefix allows")
            parts += [struct.pack(">H", len(f)), f]
        if report is not None:
            if not isinstance(report, ReceiverReport):
                raise UsageError(f"report: want a ReceiverReport, got {report!r}")
            parts.append(report.to_bytes())
        body = b"".join(parts)
        capacity = media_body_capacity(self.packet_len)
        if len(body) > capacity:
            raise UsageError(f"frames need {len(body)} bytes, the packet holds {capacity}")
        body += bytes(capacity - len(body))
        ciphertext = self._aead.encrypt(_nonce(self._seq), body, None)
        mask = _seq_mask(self._hp_key, ciphertext[:HP_SAMPLE_LEN])
        wire = _xor(struct.pack(">I", self._seq), mask) + ciphertext
        self._history.append(tuple(frames))
        self._seq += 1
        self._timestamp += p.samples_per_frame * p.frames_per_packet
        return wire


class MediaReplayWindow:
    """SRTP-style sliding window over sequence numbers (RFC 3711 section 3.3.2).

    ``check`` before decrypting (cheap rejection), ``accept`` only after the tag verified,
    so a forged packet can never move the window. Time and memory are O(size), whatever
    the jump between numbers: a jump of ``size`` or more starts a fresh bitmap instead of
    shifting the old one.
    """

    def __init__(self, size: int = REPLAY_WINDOW):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise UsageError("size must be a positive integer")
        self.size = size
        self.highest = -1
        self._bits = 0  # bit i set: highest - i was accepted; never wider than size bits
        self._full = (1 << size) - 1

    def is_stale(self, seq: int) -> bool:
        """True when ``seq`` is ``size`` or more behind the highest accepted number."""
        return self.highest - seq >= self.size

    def expects(self, seq: int, ahead: int = EXPECTED_AHEAD) -> bool:
        """True when ``seq`` is inside the window or at most ``ahead`` numbers past it."""
        return self.highest - self.size < seq <= self.highest + ahead

    def check(self, seq: int) -> None:
        """Raise MediaReplayed if ``seq`` was accepted already or is stale; UsageError for a
        negative or non-integer number."""
        if not isinstance(seq, int) or seq < 0:
            raise UsageError("sequence numbers are non-negative integers")
        if seq > self.highest:
            return
        age = self.highest - seq
        if age >= self.size or (self._bits >> age) & 1:
            raise MediaReplayed()

    def accept(self, seq: int) -> None:
        """Record ``seq`` as received (after its tag verified); MediaReplayed as ``check``."""
        self.check(seq)
        shift = seq - self.highest
        if shift <= 0:
            self._bits |= 1 << -shift
            return
        if shift >= self.size:
            self._bits = 1  # nothing of the old window is inside the new one
        else:
            self._bits = ((self._bits << shift) | 1) & self._full
        self.highest = seq


@dataclass(slots=True)
class MediaCounters:
    """Aggregate counters only: how many packets were accepted and dropped, by reason."""

    accepted: int = 0
    media_malformed: int = 0
    media_forged: int = 0  # claimed to be media of this call; the tag did not verify
    media_replayed: int = 0
    not_media: int = 0  # cover, signaling, other keys' packets, noise


class MediaReceiver:
    """Opens packets of one direction: unmask, replay check, AEAD open, strict parse.

    ``profile`` is the sending peer's negotiated profile (``StartMedia.rx_profile``), not
    ours: the packets it opens carry it, and their frame indices count its frames.
    """

    def __init__(
        self,
        profile: VoiceProfile,
        keys: MediaKeys,
        *,
        packet_len: int = VOICE.user_payload,
        window: int = REPLAY_WINDOW,
    ):
        check_fits(profile, packet_len)
        self.profile = profile
        self.packet_len = packet_len
        self._keys = [(ChaCha20Poly1305(keys.aead_key), keys.hp_key)]
        self.window = MediaReplayWindow(window)
        self.counters = MediaCounters()

    def open(self, wire: bytes) -> MediaPacket:
        """The packet's contents, or a MediaError subclass, counted by its ``reason``:
        MediaMalformed (wrong length, or an authentic body that does not parse),
        MediaReplayed, MediaForged (claims to be media, tag fails) or NotMedia."""
        try:
            packet = self._open(wire)
        except MediaError as err:
            setattr(self.counters, err.reason.value, getattr(self.counters, err.reason.value) + 1)
            raise
        self.counters.accepted += 1
        return packet

    def rekey(self, keys: MediaKeys) -> None:
        """Open with new keys first; the previous keys stay for packets still in flight
        until ``forget_previous`` (call it a few seconds later) or the next rekey."""
        self._keys = [(ChaCha20Poly1305(keys.aead_key), keys.hp_key), self._keys[0]]

    def forget_previous(self) -> None:
        """Drop the keys before the last rekey."""
        del self._keys[1:]

    def _open(self, wire: bytes) -> MediaPacket:
        """At most one AEAD open per key (two while a rekey is in progress), whatever the
        input. Replayed outranks forged, which outranks not-media, across the keys tried."""
        if not isinstance(wire, bytes | bytearray) or len(wire) != self.packet_len:
            raise MediaMalformed()
        wire = bytes(wire)
        ciphertext = wire[SEQ_LEN:]
        error: MediaError = NotMedia()
        for aead, hp_key in self._keys:
            mask = _seq_mask(hp_key, ciphertext[:HP_SAMPLE_LEN])
            (seq,) = struct.unpack(">I", _xor(wire[:SEQ_LEN], mask))
            stale = self.window.is_stale(seq)
            if not stale:
                try:
                    self.window.check(seq)  # accepted already: refused without decrypting
                except MediaReplayed as err:
                    error = err
                    continue
            try:
                body = aead.decrypt(_nonce(seq), ciphertext, None)
            except InvalidTag:
                if not isinstance(error, MediaReplayed) and self.window.expects(seq):
                    error = MediaForged()
                continue
            if stale:  # authentic, but too old to tell from a replay
                error = MediaReplayed()
                continue
            self.window.accept(seq)  # authentic: even if the body is odd, never accept twice
            return _parse_body(seq, body, self.profile)
        raise error


def _parse_body(seq: int, body: bytes, profile: VoiceProfile) -> MediaPacket:
    timestamp, n_frames, n_redundant = struct.unpack_from(">IBB", body)
    pos, frames = BODY_HEADER_LEN, []
    for _ in range(n_frames + n_redundant):
        if pos + FRAME_LEN_LEN > len(body):
            raise MediaMalformed()
        (length,) = struct.unpack_from(">H", body, pos)
        pos += FRAME_LEN_LEN
        if length == 0 or pos + length > len(body):
            raise MediaMalformed()
        frames.append(body[pos : pos + length])
        pos += length
    report = None
    if pos < len(body) and body[pos] == REPORT_RR:
        if pos + REPORT_BLOCK_LEN > len(body):
            raise MediaMalformed()
        echo_seq, hold_ms, highest_seq = struct.unpack_from(">IHI", body, pos + 1)
        lost = int.from_bytes(body[pos + 11 : pos + REPORT_BLOCK_LEN], "big")
        try:
            report = ReceiverReport(echo_seq, hold_ms, highest_seq, lost)
        except UsageError:
            raise MediaMalformed() from None
        pos += REPORT_BLOCK_LEN
    # What is left (REPORT_NONE's type byte included) must be zero padding.
    if n_frames == 0 or not hmac.compare_digest(body[pos:], bytes(len(body) - pos)):
        raise MediaMalformed()
    current, redundant = tuple(frames[n_redundant:]), tuple(frames[:n_redundant])
    return MediaPacket(seq, timestamp, current, redundant, profile, report)
