"""The in-memory reference E2EE channel: order, replay, forgery, per-message secrets."""

from __future__ import annotations

import pytest

from client import ChannelError, InMemoryChannel, SecureChannel
from client._channel import MAX_SKIPPED


def test_reference_channel_satisfies_the_protocol() -> None:
    a, b = InMemoryChannel.pair()
    assert isinstance(a, SecureChannel) and a.conversation_id == b.conversation_id


def test_out_of_order_delivery_and_matching_secrets() -> None:
    a, b = InMemoryChannel.pair()
    sealed = [a.seal(bytes([i])) for i in range(5)]
    for i in (3, 0, 4, 1, 2):
        plain, secret = b.open(sealed[i][0])
        assert plain == bytes([i]) and secret == sealed[i][1]
    assert len({s for _, s in sealed}) == 5


def test_replay_forgery_and_wrong_direction_are_rejected() -> None:
    a, b = InMemoryChannel.pair()
    env, _ = a.seal(b"hi")
    b.open(env)
    with pytest.raises(ChannelError):
        b.open(env)
    env2, _ = a.seal(b"again")
    with pytest.raises(ChannelError):
        a.open(env2)  # our own message does not open with the receiving chain
    bad = bytearray(env2)
    bad[-1] ^= 1
    with pytest.raises(ChannelError):
        b.open(bytes(bad))
    assert b.open(env2)[0] == b"again"  # the forgery did not advance the chain


def test_too_far_ahead_and_truncated_are_rejected() -> None:
    a, b = InMemoryChannel.pair()
    for _ in range(MAX_SKIPPED + 1):
        a.seal(b"")
    env, _ = a.seal(b"late")
    with pytest.raises(ChannelError):
        b.open(env)
    with pytest.raises(ChannelError):
        b.open(b"short")
