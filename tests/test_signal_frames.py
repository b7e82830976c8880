"""Signaling frames: a long envelope over several 352-byte payloads, and bounded reassembly
that survives any order, repeats and loss, and drops what does not fit (counted)."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from client._frames import (
    _FRAG,
    MAX_FRAGMENTS,
    MAX_PENDING_MESSAGES,
    REASSEMBLY_TIMEOUT_S,
    SIGNAL_NONCE_LEN,
    Address,
    SignalFramer,
)

KEY = bytes(range(32))
ME, PEER = Address(bytes(16), b"m" * 16), Address(bytes(16), b"p" * 16)


CHUNK = 316  # envelope bytes per frame: VOICE's 352-byte payload less 36 bytes of framing

def ends() -> tuple[SignalFramer, SignalFramer]:
    return SignalFramer(KEY, ME, PEER), SignalFramer(KEY, PEER, ME)


def raw_frame(tx: SignalFramer, msg_id: int, index: int, count: int, chunk: bytes,
              length: int | None = None) -> bytes:  # fmt: skip
    """An authentic frame with any header (what a broken peer could send)."""
    body = _FRAG.pack(msg_id, index, count, len(chunk) if length is None else length) + chunk
    body += bytes(tx.chunk_len + _FRAG.size - len(body))
    nonce = os.urandom(SIGNAL_NONCE_LEN)
    return nonce + tx._tx.encrypt(nonce, body, None)


def test_a_hybrid_offer_takes_five_payloads() -> None:
    tx, rx = ends()
    assert tx.chunk_len == CHUNK
    frames = tx.frames(os.urandom(1290))  # a hybrid OFFER sealed by the channel
    assert len(frames) == 5 and {len(f) for f in frames} == {352}
    got = [rx.open(f, 0.0) for f in frames]
    assert got[:4] == [None] * 4 and got[4] is not None and len(got[4]) == 1290


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, MAX_FRAGMENTS * CHUNK),
    seed=st.integers(0, 2**32),
    repeats=st.lists(st.integers(0, MAX_FRAGMENTS - 1), max_size=8),
)
def test_any_order_with_repeats_gives_the_message_once(
    size: int, seed: int, repeats: list[int]
) -> None:
    tx, rx = ends()
    envelope = random.Random(seed).randbytes(size)
    frames = tx.frames(envelope)
    stream = frames + [frames[i % len(frames)] for i in repeats]
    random.Random(seed).shuffle(stream)
    got = [out for f in stream if (out := rx.open(f, 1.0)) is not None]
    assert got == [envelope]
    assert rx.pending_messages == 0 and rx.pending_bytes == 0
    assert rx.dropped["duplicate"] == len(stream) - len(frames)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(CHUNK + 1, MAX_FRAGMENTS * CHUNK), seed=st.integers(0, 2**32))
def test_any_loss_gives_no_message_and_expires(size: int, seed: int) -> None:
    tx, rx = ends()
    r = random.Random(seed)
    frames = tx.frames(r.randbytes(size))
    lost = r.randrange(len(frames))
    kept = [f for i, f in enumerate(frames) if i != lost]
    r.shuffle(kept)
    assert [rx.open(f, 0.0) for f in kept] == [None] * len(kept)
    assert rx.pending_messages == 1
    rx.open(tx.frames(b"x")[0], REASSEMBLY_TIMEOUT_S + 1)  # any later frame sweeps
    assert rx.pending_messages == 0 and rx.dropped["expired"] == 1


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 4 * MAX_PENDING_MESSAGES), seed=st.integers(0, 2**32))
def test_memory_stays_bounded_under_many_partial_messages(n: int, seed: int) -> None:
    tx, rx = ends()
    r = random.Random(seed)
    for _ in range(n):
        frames = tx.frames(r.randbytes(MAX_FRAGMENTS * CHUNK))
        for f in frames[:-1]:  # never the last one
            assert rx.open(f, 0.0) is None
        assert rx.pending_messages <= MAX_PENDING_MESSAGES
        assert rx.pending_bytes <= MAX_PENDING_MESSAGES * MAX_FRAGMENTS * rx.chunk_len
    assert rx.dropped["evicted"] == max(0, n - MAX_PENDING_MESSAGES)


def test_malformed_oversized_and_overlapping_fragments_are_counted_and_dropped() -> None:
    tx, rx = ends()
    assert rx.open(raw_frame(tx, 1, 3, 3, b"a"), 0.0) is None  # index not below count
    assert rx.open(raw_frame(tx, 1, 0, 0, b"a"), 0.0) is None  # no fragments
    assert rx.open(raw_frame(tx, 1, 0, 2, b"a", length=400), 0.0) is None  # over the chunk
    assert rx.dropped["malformed"] == 3
    assert rx.open(raw_frame(tx, 2, 0, MAX_FRAGMENTS + 1, b"a"), 0.0) is None
    assert rx.dropped["oversized"] == 1
    assert rx.open(raw_frame(tx, 3, 0, 2, b"first"), 0.0) is None
    assert rx.open(raw_frame(tx, 3, 0, 2, b"other"), 0.0) is None  # same index, new bytes
    assert rx.open(raw_frame(tx, 3, 1, 3, b"x"), 0.0) is None  # another count
    assert rx.dropped["overlap"] == 2
    assert rx.open(raw_frame(tx, 3, 1, 2, b"-second"), 0.0) == b"first-second"
    assert rx.pending_messages == 0
