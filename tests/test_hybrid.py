"""Hybrid post-quantum call keys: the known answers, both ends agreeing, refused offers
(tampered, replayed, cross-contact, downgraded), the security log, and call secrets zeroed
on every way a call ends."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from test_call import MemoryNet, _network, _pair
from test_signaling import BOTH, connect, deliver, pair, sends

from client import (
    Answer,
    Call,
    CallEnded,
    CallPolicy,
    CallState,
    Direction,
    EndReason,
    InMemoryChannel,
    MediaType,
    ModeSwitchRequest,
    Offer,
    PrivacyMode,
    Rekey,
    SecurityEvent,
    SecurityLog,
    SignalDowngraded,
    Timer,
    VoiceProfile,
    call_id_for,
    decode,
    encode,
)
from client._signaling import KEM_CIPHERTEXT_LEN, KEM_PUBLIC_LEN, call_secrets, hybrid_transcript
from client._signaling.keys import answer_mac
from overlay import DropReason

VECTORS = json.loads((Path(__file__).parent / "vectors" / "hybrid_vectors.json").read_text())


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 with SHA-256, 32 bytes, written out."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


# -- known answers --------------------------------------------------------------------------


def test_hybrid_key_schedule_known_answer() -> None:
    i = {k: bytes.fromhex(v) for k, v in VECTORS["inputs"].items() if k != "mode"}
    mode: int = VECTORS["inputs"]["mode"]
    ct, want = bytes.fromhex(VECTORS["ciphertext"]), VECTORS["outputs"]
    caller_x = X25519PrivateKey.from_private_bytes(i["caller_x25519_seed"])
    callee_x = X25519PrivateKey.from_private_bytes(i["callee_x25519_seed"])
    kem = MLKEM768PrivateKey.from_seed_bytes(i["caller_kem_seed"])
    caller_pub = caller_x.public_key().public_bytes_raw()
    callee_pub = callee_x.public_key().public_bytes_raw()
    kem_pub = kem.public_key().public_bytes_raw()
    assert (len(kem_pub), len(ct)) == (KEM_PUBLIC_LEN, KEM_CIPHERTEXT_LEN) == (1184, 1088)
    dh, kem_ss = caller_x.exchange(callee_x.public_key()), kem.decapsulate(ct)
    assert callee_x.exchange(caller_x.public_key()) == dh
    assert (caller_pub.hex(), callee_pub.hex()) == (
        want["caller_x25519_public"], want["callee_x25519_public"])  # fmt: skip
    assert hashlib.sha256(kem_pub).hexdigest() == want["kem_public_sha256"]
    assert (dh.hex(), kem_ss.hex()) == (want["x25519_shared"], want["kem_shared"])
    # The documented schedule, rebuilt from the primitives.
    call_id, label = i["call_id"], b"phantom-call-v1 "
    th = hashlib.sha256(label + b"hybrid" + call_id + bytes([mode]) + caller_pub
                        + kem_pub + callee_pub + ct).digest()  # fmt: skip
    assert th.hex() == want["transcript_hash"]
    assert hybrid_transcript(call_id, mode, caller_pub, kem_pub, callee_pub, ct) == th
    transcript = hashlib.sha256(i["offer"]).digest() + hashlib.sha256(i["answer"]).digest()
    ikm = i["offer_secret"] + i["answer_secret"] + dh + kem_ss
    secret = _hkdf(ikm, call_id, label + b"hybrid secret" + transcript + th)
    media = {d: _hkdf(secret, call_id, label + b"media" + bytes([d])) for d in Direction}
    accept = _hkdf(secret, call_id, label + b"accept")
    assert media[Direction.CALLER_TO_CALLEE].hex() == want["media_caller_to_callee"]
    assert media[Direction.CALLEE_TO_CALLER].hex() == want["media_callee_to_caller"]
    assert accept.hex() == want["accept_key"]
    got_media, got_accept = call_secrets(
        call_id, i["offer"], i["offer_secret"], i["answer"], i["answer_secret"],
        bytearray(dh), bytearray(kem_ss), th,
    )  # fmt: skip
    assert {d: bytes(v) for d, v in got_media.items()} == media and got_accept == accept


def test_each_secret_input_changes_the_call_key() -> None:
    base = dict(offer_secret=b"a" * 32, answer_secret=b"b" * 32, dh=b"c" * 32, kem=b"d" * 32)

    def key(**kw: bytes) -> bytes:
        v = {**base, **kw}
        media, _ = call_secrets(bytes(16), b"o", v["offer_secret"], b"a", v["answer_secret"],
                                bytearray(v["dh"]), bytearray(v["kem"]), b"t" * 32)  # fmt: skip
        return bytes(media[Direction.CALLER_TO_CALLEE])

    keys = {key(), *(key(**{k: b"z" * 32}) for k in base)}
    assert len(keys) == 1 + len(base)  # X25519 alone or ML-KEM alone never decides the key


# -- both ends, every call ------------------------------------------------------------------


def test_both_ends_derive_the_same_keys_and_every_call_new_ones() -> None:
    seen = set()
    caller, callee = pair()
    for _ in range(3):
        a, b = connect(caller, callee)
        assert (a.tx_keys, a.rx_keys) == (b.rx_keys, b.tx_keys)
        assert a.tx_keys != a.rx_keys
        seen |= {a.tx_keys.aead_key, a.rx_keys.aead_key}
        deliver(caller.hangup(3.0), callee)
        caller, callee = _fresh(caller), _fresh(callee)  # one Call per call, same channel
    assert len(seen) == 6


def _fresh(call: Call) -> Call:
    return Call(call.channel, reply_mailbox=call.reply_mailbox, surbs=call.surbs)


def test_offer_and_answer_carry_the_hybrid_block() -> None:
    a, b = InMemoryChannel.pair()
    caller, callee = (
        Call(a, reply_mailbox=b"A" * 32, surbs=b""),
        Call(b, reply_mailbox=b"", surbs=b""),
    )
    offer_env = sends(caller.place(0.0))[0]
    offer = decode(caller._offer_body)
    assert isinstance(offer, Offer) and offer.hybrid
    assert (len(offer.x25519_public), len(offer.kem_public)) == (32, KEM_PUBLIC_LEN)
    answer_env = sends(callee.handle(offer_env, 0.5))[0]
    answer = decode(a.open(answer_env)[0])
    assert isinstance(answer, Answer) and answer.hybrid
    assert (len(answer.x25519_public), len(answer.kem_ciphertext)) == (32, KEM_CIPHERTEXT_LEN)
    # 352-byte payloads carry 316 envelope bytes each: 4 or 5 frames instead of 1
    assert 3 * 316 < len(offer_env) <= 5 * 316 and 3 * 316 < len(answer_env) <= 5 * 316


# -- refused offers -------------------------------------------------------------------------


def test_tampered_replayed_and_cross_contact_offers_are_refused_and_counted() -> None:
    caller, callee = pair()
    env = sends(caller.place(0.0))[0]
    tampered = env[:-40] + bytes([env[-40] ^ 1]) + env[-39:]
    assert callee.handle(tampered, 0.1) == [] and callee.counters.channel == 1
    other_caller, other_callee = pair()  # another contact, another channel
    assert other_callee.handle(env, 0.1) == [] and other_callee.counters.channel == 1
    assert callee.handle(env, 0.2) and callee.state is CallState.RINGING_LOCAL
    assert callee.handle(env, 0.3) == [] and callee.counters.channel == 2  # replayed
    assert DropReason.CHANNEL.value == "channel"


def _downgraded_offer(channel: InMemoryChannel) -> bytes:
    nonce = b"n" * 16
    offer = Offer(call_id_for(channel.conversation_id, nonce), nonce, PrivacyMode.PARANOID,
                  MediaType.AUDIO, 1, VoiceProfile(), b"mb", b"")  # fmt: skip
    return channel.seal(encode(offer))[0]


def test_offer_without_the_hybrid_is_refused_counted_and_logged() -> None:
    a, b = InMemoryChannel.pair()
    log = SecurityLog(clock=lambda: 5.0)
    callee = Call(b, reply_mailbox=b"", surbs=b"", security_log=log)
    assert callee.handle(_downgraded_offer(a), 0.0) == []
    assert callee.counters.signal_downgraded == 1
    assert callee.state.name == "IDLE"
    assert SignalDowngraded.reason is DropReason.SIGNAL_DOWNGRADED
    [rec] = list(log)
    assert (rec.at, rec.event, rec.mode_to, rec.approved) == (
        5.0, SecurityEvent.DOWNGRADE_REFUSED, PrivacyMode.PARANOID, False)  # fmt: skip
    # The same conversation still takes a proper offer afterwards.
    caller = Call(a, reply_mailbox=b"", surbs=b"")
    assert callee.handle(sends(caller.place(1.0))[0], 1.0)
    assert callee.state is CallState.RINGING_LOCAL


def test_answer_without_the_hybrid_ends_the_call() -> None:
    a, b = InMemoryChannel.pair()
    caller = Call(a, reply_mailbox=b"", surbs=b"")
    offer_env = sends(caller.place(0.0))[0]
    raw, secret = b.open(offer_env)
    offer = decode(raw)
    assert isinstance(offer, Offer) and caller.call_id is not None
    core = Answer(offer.call_id, hashlib.sha256(raw).digest(), offer.mode, VoiceProfile(),
                  b"", b"", b"")  # fmt: skip
    mac = answer_mac(secret, offer.call_id, encode(core))
    answer = dataclasses.replace(core, confirm_mac=mac)
    out = caller.handle(b.seal(encode(answer))[0], 0.5)
    assert CallEnded(EndReason.POLICY_VIOLATION, by_peer=False) in out
    assert caller.counters.signal_downgraded == 1 and caller.state is CallState.ENDED


def test_unusable_hybrid_keys_are_declined() -> None:
    a, b = InMemoryChannel.pair()
    nonce = b"k" * 16
    offer = Offer(
        call_id_for(a.conversation_id, nonce),
        nonce,
        PrivacyMode.PARANOID,
        MediaType.AUDIO,
        1,
        VoiceProfile(),
        b"",
        b"",
        bytes(32),
        b"\xff" * KEM_PUBLIC_LEN,
    )  # fmt: skip  (not an ML-KEM key: coefficients >= q)
    callee = Call(b, reply_mailbox=b"", surbs=b"")
    out = callee.handle(a.seal(encode(offer))[0], 0.0)
    assert callee.counters.signal_malformed == 1 and callee.state is CallState.ENDED
    assert CallEnded(EndReason.POLICY_VIOLATION, by_peer=False) in out


# -- mode switches and the security log ----------------------------------------------------


def test_faster_mode_is_refused_without_approval_and_logged() -> None:
    logs = SecurityLog(), SecurityLog()
    caller, callee = pair(a_policy=BOTH, b_policy=BOTH, a_security_log=logs[0],
                          b_security_log=logs[1])  # fmt: skip
    connect(caller, callee)
    deliver(caller.request_mode_switch(PrivacyMode.PRIVATE, 3.0, user_approved=True), callee)
    assert callee.state is CallState.APPROVING  # only the user may say yes
    deliver(callee.refuse_mode_switch(4.0), caller)
    assert caller.mode is callee.mode is PrivacyMode.PARANOID
    want = (SecurityEvent.MODE_SWITCH_REFUSED, PrivacyMode.PARANOID, PrivacyMode.PRIVATE, False)
    for log in logs:
        assert [(r.event, r.mode_from, r.mode_to, r.approved) for r in log] == [want]
    deliver(caller.request_mode_switch(PrivacyMode.PRIVATE, 5.0, user_approved=True), callee)
    deliver(callee.approve_mode_switch(6.0), caller)
    assert {caller.mode, callee.mode} == {PrivacyMode.PRIVATE}
    for log in logs:
        assert list(log)[-1].event is SecurityEvent.MODE_CHANGED and list(log)[-1].approved


def test_mode_c_only_client_refuses_a_switch_request_at_once() -> None:
    log = SecurityLog()
    caller, callee = pair(b_security_log=log)
    connect(caller, callee)
    env = caller.channel.seal(encode(ModeSwitchRequest(caller.call_id or b"", PrivacyMode.FAST)))
    callee.handle(env[0], 3.0)
    assert callee.state is CallState.ACTIVE and callee.mode is PrivacyMode.PARANOID
    assert [r.event for r in log] == [SecurityEvent.MODE_SWITCH_REFUSED]


# -- call secrets zeroed on every end -------------------------------------------------------


def _zeroed_after(call: Call, end: Callable[[], object]) -> None:
    buffers = call._key_buffers()
    assert buffers and any(any(b) for b in buffers)
    end()
    assert all(not any(b) for b in buffers)  # every byte zero, in place
    assert not any(any(b) for b in call._key_buffers())


def _ringing() -> tuple[Call, Call]:
    caller, callee = pair()
    deliver(deliver(caller.place(0.0), callee), caller)
    return caller, callee


ENDS = ["hangup", "peer_hangup", "decline", "setup_timeout", "media_timeout", "violation",
        "close", "calling_close"]  # fmt: skip


@pytest.mark.parametrize("path", ENDS)
def test_call_secrets_are_zero_after_every_end(path: str) -> None:
    caller, callee = _ringing()
    if path in ("hangup", "peer_hangup", "media_timeout", "violation"):
        connect_rest = callee.accept(2.0)
        deliver(connect_rest, caller)
        assert caller.state is CallState.ACTIVE
    if path == "hangup":
        _zeroed_after(caller, lambda: caller.hangup(3.0))
    elif path == "peer_hangup":
        env = sends(caller.hangup(3.0))
        _zeroed_after(callee, lambda: [callee.handle(e, 3.1) for e in env])
    elif path == "decline":
        _zeroed_after(callee, lambda: callee.decline(2.0))
    elif path == "setup_timeout":
        _zeroed_after(caller, lambda: caller.fire(Timer.SETUP, 61.0))
    elif path == "media_timeout":
        _zeroed_after(callee, lambda: callee.fire(Timer.MEDIA, 20.0))
    elif path == "violation":  # a skipped rekey generation fails closed
        rekey_skip = caller.channel.seal(encode(Rekey(caller.call_id or b"", 5)))[0]
        _zeroed_after(callee, lambda: callee.handle(rekey_skip, 3.0))
        assert callee.state is CallState.ENDED
    elif path == "close":
        _zeroed_after(callee, callee.close)
    else:
        fresh_a, _ = pair()
        sends(fresh_a.place(0.0))
        _zeroed_after(fresh_a, fresh_a.close)  # holds the ephemeral seeds until the answer


def test_policy_with_both_modes_still_needs_the_hybrid() -> None:
    a, b = InMemoryChannel.pair()
    callee = Call(b, reply_mailbox=b"", surbs=b"", policy=CallPolicy(
        supported_modes=frozenset({PrivacyMode.PRIVATE, PrivacyMode.PARANOID}),
        required_mode=PrivacyMode.PRIVATE))  # fmt: skip
    assert callee.handle(_downgraded_offer(a), 0.0) == []
    assert callee.counters.signal_downgraded == 1


async def test_a_caller_that_stops_mid_call_zeroes_its_call_secrets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    doc, secrets = _network()
    async with trio.open_nursery() as nursery:
        net = MemoryNet(doc, secrets, nursery)
        a, b = _pair(net, doc, mean_delay_s=0.01)
        await nursery.start(a.run)
        await nursery.start(b.run)
        a.place()
        with trio.fail_after(10):
            await a.connected.wait()
            await b.connected.wait()
        held = [a.call._key_buffers(), b.call._key_buffers()]
        assert all(any(any(buf) for buf in bufs) for bufs in held)
        nursery.cancel_scope.cancel()  # the client stops; no hangup was sent
    assert all(not any(buf) for bufs in held for buf in bufs)
    assert a.call.state is CallState.ACTIVE  # not ended, but nothing left to use
