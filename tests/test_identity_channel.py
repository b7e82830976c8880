"""The identity-keyed signaling channel: agreement, binding to the contact, replay (also
across a restart), order, tampering, stored state, secrets, and its known-answer vectors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from client import (
    Call,
    ChannelError,
    ChannelForged,
    ChannelMalformed,
    ChannelReplayed,
    ChannelState,
    ChannelStateError,
    ChannelTooFarAhead,
    IdentityChannel,
    SecureChannel,
    Send,
    StartMedia,
    conversation_id_of,
    public_identity,
)
from client._channel import MAX_SKIPPED
from client.identity_channel import OVERHEAD, STATE_FIXED_LEN
from overlay import UsageError

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS = json.loads((VECTORS_DIR / "identity_channel_vectors.json").read_text())


def _identity(label: str) -> tuple[bytes, bytes]:
    """(dh_private, 64-byte public identity) of a test caller named ``label``."""
    seed = hashlib.sha512(label.encode()).digest()
    return seed[32:], public_identity(seed[:32], seed[32:])


ALICE, BOB, CAROL = _identity("alice"), _identity("bob"), _identity("carol")


def _channel(me: tuple[bytes, bytes], peer: tuple[bytes, bytes]) -> IdentityChannel:
    return IdentityChannel(me[0], me[1], peer[1])


def _pair() -> tuple[IdentityChannel, IdentityChannel]:
    return _channel(ALICE, BOB), _channel(BOB, ALICE)


def _restart(chan: IdentityChannel, me: tuple[bytes, bytes]) -> IdentityChannel:
    """The same end after its process stopped: rebuilt from its keys and stored state."""
    blob = chan.to_bytes()
    chan.close()
    return IdentityChannel(me[0], me[1], chan.peer_public, state=ChannelState.from_bytes(blob))


# -- agreement and binding -----------------------------------------------------------------


def test_both_ends_agree_on_the_conversation_and_every_export() -> None:
    a, b = _pair()
    assert isinstance(a, SecureChannel)
    assert a.conversation_id == b.conversation_id == conversation_id_of(BOB[1], ALICE[1])
    assert len(a.conversation_id) == 16
    for chan, peer in ((a, b), (b, a), (a, b), (a, b)):
        envelope, export = chan.seal(b"ping")
        assert len(envelope) == 4 + OVERHEAD
        assert peer.open(envelope) == (b"ping", export)
    # Every contact pair has its own conversation; the order of the pair does not matter.
    assert _channel(ALICE, CAROL).conversation_id not in (a.conversation_id, b"")
    assert conversation_id_of(ALICE[1], CAROL[1]) == conversation_id_of(CAROL[1], ALICE[1])
    sign_pk, dh_pk = ALICE[1][:32], ALICE[1][32:]
    assert IdentityChannel(ALICE[0], (sign_pk, dh_pk), BOB[1]).conversation_id == a.conversation_id


def test_a_message_opens_only_at_its_peer_and_only_in_its_conversation() -> None:
    a, b = _pair()
    c_with_a, a_with_c = _channel(CAROL, ALICE), _channel(ALICE, CAROL)
    to_bob, _ = a.seal(b"for bob")
    with pytest.raises(ChannelForged):
        c_with_a.open(to_bob)  # a third identity cannot open it
    from_bob, _ = b.seal(b"from bob")
    with pytest.raises(ChannelForged):
        a_with_c.open(from_bob)  # replayed into Alice's conversation with Carol
    with pytest.raises(ChannelForged):
        a.open(to_bob)  # reflected back to its sender
    assert c_with_a.counters.forged == 1 and a_with_c.counters.forged == 1
    assert b.open(to_bob)[0] == b"for bob" and a.open(from_bob)[0] == b"from bob"


def test_the_signing_key_is_part_of_the_identity() -> None:
    """Same X25519 key, another Ed25519 key: another identity, another conversation."""
    other = bytes(32) + BOB[1][32:]
    assert conversation_id_of(ALICE[1], other) != conversation_id_of(ALICE[1], BOB[1])
    envelope, _ = _channel(BOB, ALICE).seal(b"x")
    with pytest.raises(ChannelForged):
        IdentityChannel(ALICE[0], ALICE[1], other).open(envelope)


# -- replay, order, window ----------------------------------------------------------------


def test_a_replay_is_refused_also_after_a_restart() -> None:
    a, b = _pair()
    first, export = a.seal(b"offer")
    assert b.open(first) == (b"offer", export)
    with pytest.raises(ChannelReplayed):
        b.open(first)
    b = _restart(b, BOB)
    with pytest.raises(ChannelReplayed):
        b.open(first)
    assert b.counters.replayed == 1
    a = _restart(a, ALICE)  # the sender restarts too: its numbers go on
    second, export = a.seal(b"hangup")
    assert b.open(second) == (b"hangup", export)


def test_out_of_order_within_the_window_opens_once_also_across_a_restart() -> None:
    a, b = _pair()
    sealed = [a.seal(bytes([i])) for i in range(6)]
    for i in (5, 0, 3):
        assert b.open(sealed[i][0]) == (bytes([i]), sealed[i][1])
    b = _restart(b, BOB)  # the keys of 1, 2 and 4 were stored
    for i in (4, 1, 2):
        assert b.open(sealed[i][0]) == (bytes([i]), sealed[i][1])
    for i in range(6):
        with pytest.raises(ChannelReplayed):
            b.open(sealed[i][0])
    assert len({export for _, export in sealed}) == 6


def test_too_far_ahead_and_too_old_are_refused() -> None:
    a, b = _pair()
    sealed = [a.seal(str(n).encode())[0] for n in range(MAX_SKIPPED + 6)]
    with pytest.raises(ChannelTooFarAhead):
        b.open(sealed[MAX_SKIPPED + 1])  # MAX_SKIPPED + 1 keys would be skipped
    assert b.open(sealed[MAX_SKIPPED])[0] == str(MAX_SKIPPED).encode()  # exactly MAX_SKIPPED
    assert b.open(sealed[0])[0] == b"0"  # still in the window: MAX_SKIPPED - 1 keys kept
    b.open(sealed[MAX_SKIPPED + 5])  # four more skipped: the three oldest keys are dropped
    for n in (1, 2, 3):
        with pytest.raises(ChannelReplayed):
            b.open(sealed[n])
    assert b.open(sealed[4])[0] == b"4"
    assert b.counters.too_far_ahead == 1 and b.counters.replayed == 3


# -- tampering and malformed input ----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_changed_byte_is_refused_and_changes_nothing(data: st.DataObject) -> None:
    a, b = _pair()
    a.seal(b"skipped")  # so that number 1 is in b's window with a key computed ahead
    envelope, export = a.seal(b"CALL_OFFER mode=C")
    index = data.draw(st.integers(0, len(envelope) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    bad = bytearray(envelope)
    bad[index] ^= mask
    before = b.to_bytes()
    with pytest.raises(ChannelError):
        b.open(bytes(bad))
    assert b.to_bytes() == before
    assert b.open(envelope) == (b"CALL_OFFER mode=C", export)


@pytest.mark.parametrize(
    "envelope", [b"", b"\x01" * (OVERHEAD - 1), b"\x02" + bytes(OVERHEAD), bytearray(50)]
)
def test_short_unknown_version_or_not_bytes_is_malformed(envelope: bytes) -> None:
    b = _pair()[1]
    with pytest.raises(ChannelMalformed):
        b.open(envelope)
    assert b.counters.malformed == 1


def test_bad_keys_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="two different"):
        _channel(ALICE, ALICE)
    with pytest.raises(UsageError, match="not the private key"):
        IdentityChannel(BOB[0], ALICE[1], BOB[1])
    with pytest.raises(UsageError, match="low-order"):
        IdentityChannel(ALICE[0], ALICE[1], BOB[1][:32] + bytes(32))
    with pytest.raises(UsageError, match="64 bytes"):
        IdentityChannel(ALICE[0], ALICE[1], BOB[1][:63])
    with pytest.raises(UsageError, match="sign_public, dh_public"):
        IdentityChannel(ALICE[0], ALICE[1], (BOB[1],))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="32 bytes"):
        IdentityChannel(ALICE[0][:31], ALICE[1], BOB[1])
    with pytest.raises(UsageError, match="32 bytes"):
        public_identity(b"short", bytes(32))


# -- stored state ---------------------------------------------------------------------------


def _state_with_skipped() -> bytes:
    a, b = _pair()
    sealed = [a.seal(b"")[0] for _ in range(4)]
    b.open(sealed[3])  # keeps the keys of 0, 1, 2
    return b.to_bytes()


def _replace(blob: bytes, at: int, value: bytes) -> bytes:
    return blob[:at] + value + blob[at + len(value) :]


COUNT_AT = STATE_FIXED_LEN - 2
RECV_N_AT = 1 + 16 + 8 + 32


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s[:-1], "length"),
        (lambda s: s + b"\0", "length"),
        (lambda s: s[:10], "too short"),
        (lambda s: b"\x02" + s[1:], "version"),
        (lambda s: _replace(s, COUNT_AT, struct.pack(">H", 2)), "length"),
        (
            lambda s: (
                _replace(s, COUNT_AT, struct.pack(">H", MAX_SKIPPED + 1))
                + bytes(40 * (MAX_SKIPPED - 2))
            ),
            "length",
        ),  # fmt: skip
        (lambda s: _replace(s, STATE_FIXED_LEN, struct.pack(">Q", 1)), "increase"),
        (lambda s: _replace(s, RECV_N_AT, struct.pack(">Q", 2)), "below recv_n"),
    ],
)
def test_malformed_state_is_a_typed_error(edit: object, match: str) -> None:
    blob = _state_with_skipped()
    assert ChannelState.from_bytes(blob).to_bytes() == blob
    assert callable(edit)
    with pytest.raises(ChannelStateError, match=match):
        ChannelState.from_bytes(edit(blob))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=STATE_FIXED_LEN + 200))
def test_random_state_bytes_parse_or_raise_the_typed_error(blob: bytes) -> None:
    try:
        state = ChannelState.from_bytes(blob)
    except ChannelStateError:
        return
    assert state.to_bytes() == blob


def test_state_of_another_conversation_is_refused() -> None:
    other = _channel(ALICE, CAROL).to_bytes()
    with pytest.raises(ChannelStateError, match="another conversation"):
        IdentityChannel(ALICE[0], ALICE[1], BOB[1], state=ChannelState.from_bytes(other))


# -- secrets in memory ----------------------------------------------------------------------


def test_close_zeroes_the_keys_and_repr_shows_none() -> None:
    a, b = _pair()
    b.open(a.seal(b"x")[0])
    a.seal(b"y")
    b.open(a.seal(b"z")[0])  # one skipped key
    state = ChannelState.from_bytes(b.to_bytes())
    b = IdentityChannel(BOB[0], BOB[1], ALICE[1], state=state)
    keys = [bytes(state.send_chain), bytes(state.recv_chain)]
    keys += [bytes(k) for k in state.skipped.values()]
    for text in (repr(b), repr(state), str(b)):
        assert not any(k.hex() in text for k in keys)
    held = [state.send_chain, state.recv_chain, *state.skipped.values()]
    with b:
        pass
    assert all(not any(k) for k in held) and not state.skipped
    assert repr(b) == "IdentityChannel(closed)"
    b.close()  # idempotent
    for use in (lambda: b.seal(b""), lambda: b.open(bytes(60)), b.to_bytes):
        with pytest.raises(UsageError, match="closed"):
            use()


def test_the_channel_keeps_no_root_and_no_private_key() -> None:
    a = _channel(ALICE, BOB)
    root = _spec_root(ALICE[0], ALICE[1], BOB[1])
    stored = a.to_bytes()
    assert root not in stored and ALICE[0] not in stored
    for value in vars(a).values():
        assert value not in (root, ALICE[0], bytearray(root))


# -- with call signaling --------------------------------------------------------------------


def test_a_call_is_signaled_over_identity_channels() -> None:
    a, b = _pair()
    caller = Call(a, reply_mailbox=b"gw-a|box-a", surbs=b"")
    callee = Call(b, reply_mailbox=b"gw-b|box-b", surbs=b"")

    def deliver(actions: list[object], to: Call, now: float) -> list[object]:
        sent = [act.envelope for act in actions if isinstance(act, Send)]
        return [out for envelope in sent for out in to.handle(envelope, now)]

    back = deliver(list(caller.place(0.0)), callee, 0.5)
    deliver(back, caller, 1.0)
    started = deliver(list(callee.accept(2.0)), caller, 2.5)
    assert caller.state.name == callee.state.name == "ACTIVE"
    assert any(isinstance(x, StartMedia) for x in started)
    assert caller.call_id == callee.call_id
    # An offer of the A-B conversation replayed to Carol's conversation with Alice is dropped.
    carol = Call(_channel(CAROL, ALICE), reply_mailbox=b"gw-c|box-c", surbs=b"")
    offer = Call(_channel(ALICE, BOB), reply_mailbox=b"gw-a|box-a", surbs=b"").place(9.0)
    assert deliver(list(offer), carol, 9.5) == [] and carol.counters.channel == 1


# -- known-answer vectors -------------------------------------------------------------------


def _spec_root(dh_private: bytes, me: bytes, peer: bytes) -> bytes:
    """The root as the module doc writes it, from the primitives."""
    shared = X25519PrivateKey.from_private_bytes(dh_private).exchange(
        X25519PublicKey.from_public_bytes(peer[32:])
    )
    low, high = sorted((me, peer))
    conv = hashlib.blake2b(low + high, digest_size=16, person=b"pn-conv-v1").digest()
    return HKDF(hashes.SHA256(), 32, conv, b"pn-idchan-v1 root" + low + high).derive(shared)


class _Nonces:
    """The vector's nonces, handed out in order."""

    def __init__(self, nonces: list[bytes]) -> None:
        self.left = list(nonces)

    def __call__(self, n: int) -> bytes:
        assert n == 12
        return self.left.pop(0)


def test_known_answer_vectors() -> None:
    v = VECTORS
    pub = {x: bytes.fromhex(v[x]["public"]) for x in "ab"}
    dh = {x: bytes.fromhex(v[x]["dh_private"]) for x in "ab"}
    for x in "ab":
        assert public_identity(bytes.fromhex(v[x]["sign_private"]), dh[x]) == pub[x]
    low, high = sorted(pub.values())
    conv = hashlib.blake2b(low + high, digest_size=16, person=b"pn-conv-v1").digest()
    assert conv.hex() == v["conversation_id"] == conversation_id_of(pub["a"], pub["b"]).hex()
    assert _spec_root(dh["a"], pub["a"], pub["b"]).hex() == v["root"]
    assert _spec_root(dh["b"], pub["b"], pub["a"]).hex() == v["root"]
    nonces = _Nonces([bytes.fromhex(e["nonce"]) for e in v["envelopes"]])
    chan = {x: IdentityChannel(dh[x], pub[x], pub["b" if x == "a" else "a"], rng=nonces)
            for x in "ab"}  # fmt: skip
    for e in v["envelopes"]:
        envelope, export = chan[e["from"]].seal(bytes.fromhex(e["plaintext"]))
        assert (envelope.hex(), export.hex()) == (e["envelope"], e["export"])
        if e["delivered"]:
            got = chan["b" if e["from"] == "a" else "a"].open(envelope)
            assert got == (bytes.fromhex(e["plaintext"]), export)
    assert chan["a"].to_bytes().hex() == v["state_a"]
    assert chan["b"].to_bytes().hex() == v["state_b"]


def test_generator_reproduces_the_file() -> None:
    spec = importlib.util.spec_from_file_location(
        "_gen_channel", VECTORS_DIR / "generate_channel.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == (VECTORS_DIR / "identity_channel_vectors.json").read_text()
    assert module.main(["--check"]) == 0
