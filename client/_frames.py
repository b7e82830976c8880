"""Who a caller talks to, and its signaling frames: fixed-size, encrypted per mailbox.

    >>> import os
    >>> from client.call import Address, SignalFramer
    >>> key = os.urandom(32)
    >>> me, peer = Address(bytes(16), b"m" * 16), Address(bytes(16), b"p" * 16)
    >>> frames = SignalFramer(key, me, peer).frames(b"an envelope")
    >>> len(frames), len(frames[0])
    (1, 352)
    >>> SignalFramer(key, peer, me).open(frames[0])
    b'an envelope'

A signaling envelope longer than one frame's chunk (316 bytes in a 352-byte payload) is
cut into up to ``MAX_FRAGMENTS`` frames: a hybrid OFFER or ANSWER takes 5. Reassembly is
bounded: at most ``MAX_PENDING_MESSAGES`` partial messages of at most ``MAX_FRAGMENTS``
fragments each, each given up ``REASSEMBLY_TIMEOUT_S`` after its first fragment; fragments
that are malformed, oversized, contradict one already held, or repeat one are counted in
``SignalFramer.dropped`` and dropped (a lost fragment means no message, never a wrong one).

Sans-IO: no clock (``open`` takes ``now``), no socket; randomness from the injected ``rng``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from overlay import MAILBOX_ID_LEN, NODE_ID_LEN, VOICE, Rng, UsageError

SIGNAL_KEY_LEN = 32  # bytes of the contact's signaling key
SIGNAL_PERSON = b"pn-sigframe-v1"  # BLAKE2b personalisation of per-mailbox frame keys
SIGNAL_NONCE_LEN = 12  # bytes, random per frame
SIGNAL_TAG_LEN = 16  # bytes, Poly1305
_FRAG = struct.Struct(">IBBH")  # message id, fragment index, fragment count, chunk length
MAX_FRAGMENTS = 16  # frames of one signaling message at most (16 x 316 B = 5,056 B)
MAX_PENDING_MESSAGES = 16  # partly received signaling messages kept at most
REASSEMBLY_TIMEOUT_S = 30.0  # seconds a partial message waits for its other fragments
MAX_RECENT_IDS = 64  # ids of completed messages remembered, so repeats are not rebuilt


@dataclass(frozen=True, slots=True)
class Address:
    """Where a client receives: its gateway's node id and its mailbox id there."""

    gateway_id: bytes
    mailbox: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.gateway_id) != NODE_ID_LEN or len(self.mailbox) != MAILBOX_ID_LEN:
            raise UsageError(
                f"gateway_id must be {NODE_ID_LEN} bytes and mailbox {MAILBOX_ID_LEN} bytes"
            )

    def to_bytes(self) -> bytes:
        return self.gateway_id + self.mailbox


@dataclass(frozen=True, slots=True)
class Contact:
    """What two users exchange over their E2EE chat before a Mode C call."""

    address: Address
    signal_key: bytes = field(repr=False)  # shared by both ends of the conversation

    def __post_init__(self) -> None:
        if len(self.signal_key) != SIGNAL_KEY_LEN:
            raise UsageError(f"signal_key must be {SIGNAL_KEY_LEN} bytes")


# -- signaling frames ----------------------------------------------------------------------


def _frame_key(signal_key: bytes, to: Address) -> bytes:
    return hashlib.blake2b(
        to.to_bytes(), key=signal_key, digest_size=32, person=SIGNAL_PERSON
    ).digest()


class SignalFramer:
    """Cuts sealed signaling envelopes into fixed-size encrypted frames and joins them again.

    A frame is ``nonce (12) | ChaCha20-Poly1305(id (4) | index | count | length (2) | chunk
    | zero padding) | tag (16)``, exactly ``payload_len`` bytes. The key is per receiving
    mailbox, so a frame cannot be reflected to its sender.

    ``dropped`` counts authentic fragments given up, by reason: ``malformed`` (index not
    below count, count 0, length over the chunk), ``oversized`` (count over
    ``MAX_FRAGMENTS``), ``overlap`` (another count or another chunk for a fragment held),
    ``duplicate`` (a fragment held already, or of a message already completed),
    ``expired`` and ``evicted`` (partial messages timed out, or pushed out by newer ones;
    counted per message).
    """

    def __init__(
        self,
        signal_key: bytes,
        me: Address,
        peer: Address,
        *,
        payload_len: int = VOICE.user_payload,
        rng: Rng = os.urandom,
    ):
        self._tx = ChaCha20Poly1305(_frame_key(signal_key, peer))
        self._rx = ChaCha20Poly1305(_frame_key(signal_key, me))
        self.payload_len = payload_len
        self.chunk_len = payload_len - SIGNAL_NONCE_LEN - SIGNAL_TAG_LEN - _FRAG.size
        self._rng = rng
        self.timeout_s = REASSEMBLY_TIMEOUT_S
        # message id -> (fragment count, first fragment's arrival, fragments by index)
        self._pending: OrderedDict[int, tuple[int, float, dict[int, bytes]]] = OrderedDict()
        self._recent: OrderedDict[int, None] = OrderedDict()  # completed message ids
        self.dropped: Counter[str] = Counter()

    @property
    def pending_bytes(self) -> int:
        """Bytes of fragments held for partial messages (at most
        ``MAX_PENDING_MESSAGES * MAX_FRAGMENTS * chunk_len``)."""
        return sum(len(c) for _, _, parts in self._pending.values() for c in parts.values())

    @property
    def pending_messages(self) -> int:
        return len(self._pending)

    def frames(self, envelope: bytes) -> list[bytes]:
        """The frames of one envelope, in order: ``ceil(len / chunk_len)`` of them, each
        ``payload_len`` bytes. Raises ``UsageError`` for an empty envelope or one over
        ``MAX_FRAGMENTS`` frames."""
        chunks = [envelope[i : i + self.chunk_len] for i in range(0, len(envelope), self.chunk_len)]
        if not chunks or len(chunks) > MAX_FRAGMENTS:
            raise UsageError(f"a signaling message must be 1..{MAX_FRAGMENTS} frames long")
        (msg_id,) = struct.unpack(">I", self._rng(4))
        out = []
        for i, chunk in enumerate(chunks):
            body = _FRAG.pack(msg_id, i, len(chunks), len(chunk)) + chunk
            body += bytes(self.chunk_len + _FRAG.size - len(body))
            nonce = self._rng(SIGNAL_NONCE_LEN)
            out.append(nonce + self._tx.encrypt(nonce, body, None))
        return out

    def open(self, frame: bytes, now: float = 0.0) -> bytes | None:
        """A whole envelope when ``frame`` completes one; None for a partial message or a
        fragment dropped (counted in ``dropped``). ``now``: seconds on the caller's clock,
        for the reassembly timeout.

        Raises ``InvalidTag`` for anything that is not our signaling frame.
        """
        if len(frame) != self.payload_len:
            raise InvalidTag()
        body = self._rx.decrypt(frame[:SIGNAL_NONCE_LEN], frame[SIGNAL_NONCE_LEN:], None)
        msg_id, index, count, length = _FRAG.unpack_from(body)
        self._expire(now)
        if count == 0 or index >= count or length > self.chunk_len:
            self.dropped["malformed"] += 1
            return None
        if count > MAX_FRAGMENTS:
            self.dropped["oversized"] += 1
            return None
        chunk = body[_FRAG.size : _FRAG.size + length]
        if msg_id in self._recent:
            self.dropped["duplicate"] += 1
            return None
        if count == 1:
            self._remember(msg_id)
            return chunk
        if msg_id not in self._pending:
            if len(self._pending) >= MAX_PENDING_MESSAGES:
                self._pending.popitem(last=False)
                self.dropped["evicted"] += 1
            self._pending[msg_id] = (count, now, {})
        expected, _, parts = self._pending[msg_id]
        if expected != count or parts.get(index, chunk) != chunk:
            self.dropped["overlap"] += 1
            return None
        if index in parts:
            self.dropped["duplicate"] += 1
            return None
        parts[index] = chunk
        if len(parts) < count:
            return None
        del self._pending[msg_id]
        self._remember(msg_id)
        return b"".join(parts[i] for i in range(count))

    def _expire(self, now: float) -> None:
        for msg_id in [m for m, (_, t0, _) in self._pending.items() if now - t0 > self.timeout_s]:
            del self._pending[msg_id]
            self.dropped["expired"] += 1

    def _remember(self, msg_id: int) -> None:
        self._recent[msg_id] = None
        while len(self._recent) > MAX_RECENT_IDS:
            self._recent.popitem(last=False)
