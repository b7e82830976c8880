"""Link framing: round trips, exact lengths, constant downlink size, mailbox proofs, fuzz."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay import (
    BULK,
    LINK_VERSION,
    VOICE,
    Challenged,
    ClientLink,
    CookieJar,
    Delivery,
    DownlinkKind,
    FrameType,
    GatewaySession,
    LinkAuthError,
    LinkCodec,
    LinkError,
    MailboxKey,
    MailboxProofError,
    PacketError,
    ReplayWindow,
    SessionUnknown,
    SessionWatch,
    backoff_delay,
    generate_private_key,
    mailbox_id,
    public_key,
)
from overlay._link import _nonce, _proof_aead

CODEC = LinkCodec(VOICE)
KEY = MailboxKey(b"k" * 32)


def _challenge(client: ClientLink, cookie: bytes = b"c" * 16) -> bytes:
    """Give ``client`` a cookie as a gateway's CHALLENGE would; its next ATTACH proves."""
    hello = CODEC.parse(client.attach_frame())
    assert client.receive(CODEC.challenge(hello, cookie)) == Challenged(cookie)
    return client.attach_frame()


def _pair(key: MailboxKey = KEY) -> tuple[ClientLink, GatewaySession, bytes]:
    gw_sk = generate_private_key()
    client = ClientLink(VOICE, public_key(gw_sk), key)
    session = GatewaySession.accept(CODEC, [gw_sk], CODEC.parse(_challenge(client)))
    return client, session, gw_sk


def test_node_frame_round_trip() -> None:
    pkt = os.urandom(VOICE.packet_len)
    frame = CODEC.parse(CODEC.node_packet(pkt))
    assert frame.type is FrameType.NODE_PACKET and frame.body == pkt


def test_attach_uplink_downlink_round_trip() -> None:
    client, session, _ = _pair()
    assert session.mailbox == KEY.mailbox_id == client.mailbox
    pkt = os.urandom(VOICE.packet_len)
    up = client.seal_uplink(pkt)
    assert len(up) == CODEC.frame_len(FrameType.UPLINK)
    assert session.open_uplink(CODEC.parse(up)) == pkt
    for d in (
        Delivery(DownlinkKind.MESSAGE, b"hello"),
        Delivery(DownlinkKind.DUMMY, b""),
        Delivery(DownlinkKind.REPLY, os.urandom(16 + VOICE.payload_len)),
    ):
        down = session.seal_downlink(d)
        assert len(down) == CODEC.frame_len(FrameType.DOWNLINK)
        assert client.open_downlink(down) == d


def test_downlink_real_and_dummy_same_size_and_look_random() -> None:
    _, session, _ = _pair()
    a = session.seal_downlink(Delivery(DownlinkKind.MESSAGE, b"x" * 300))
    b = session.seal_downlink(Delivery(DownlinkKind.DUMMY, b""))
    assert len(a) == len(b)
    assert a[:10] == b[:10]  # version, type, session id: public
    assert b[18:].count(0) < 40  # the zero padding of a dummy is not visible


def test_uplink_replay_and_tamper_refused() -> None:
    client, session, _ = _pair()
    up = client.seal_uplink(bytes(VOICE.packet_len))
    session.open_uplink(CODEC.parse(up))
    with pytest.raises(LinkAuthError):
        session.open_uplink(CODEC.parse(up))
    up2 = bytearray(client.seal_uplink(bytes(VOICE.packet_len)))
    up2[40] ^= 1
    with pytest.raises(LinkAuthError):
        session.open_uplink(CODEC.parse(bytes(up2)))


def test_out_of_order_inside_window_accepted() -> None:
    client, session, _ = _pair()
    frames = [client.seal_uplink(bytes(VOICE.packet_len)) for _ in range(5)]
    for f in reversed(frames):
        session.open_uplink(CODEC.parse(f))


def test_attach_with_wrong_gateway_key_fails() -> None:
    client = ClientLink(VOICE, public_key(generate_private_key()), KEY)
    with pytest.raises(LinkAuthError):
        GatewaySession.accept(CODEC, [generate_private_key()], CODEC.parse(_challenge(client)))


# -- mailbox ownership (DESIGN.md decision 11) ------------------------------------------


def test_mailbox_id_is_the_labelled_hash_of_the_public_key() -> None:
    """Pinned: BLAKE2b-128, person "pn-mailbox-v1", of the Ed25519 public key."""
    want = hashlib.blake2b(KEY.public_key, digest_size=16, person=b"pn-mailbox-v1").digest()
    assert KEY.mailbox_id == mailbox_id(KEY.public_key) == want
    assert MailboxKey.generate().mailbox_id != KEY.mailbox_id
    assert "k" * 8 not in repr(KEY)  # the seed is not printed


def _forged_attach(client: ClientLink, mailbox_pub: bytes, sig: bytes) -> bytes:
    """An ATTACH whose sealed proof is (mailbox_pub, sig): what an attacker can build."""
    frame = CODEC.parse(_challenge(client))
    head = bytes((LINK_VERSION, FrameType.ATTACH)) + frame.body[:48]
    sealed = _proof_aead(client.keys, frame.body[32:48]).encrypt(_nonce(0), mailbox_pub + sig, head)
    return head + sealed


def test_attach_without_the_mailbox_key_is_refused() -> None:
    """Regression: ATTACH carried only the mailbox id, so any contact could take it over."""
    gw_sk = generate_private_key()
    victim = MailboxKey.generate()
    attacker = MailboxKey.generate()
    client = ClientLink(VOICE, public_key(gw_sk), attacker)
    # The victim's public key with the attacker's signature, or a zero signature.
    for sig in (attacker.sign(b"anything"), bytes(64)):
        forged = _forged_attach(client, victim.public_key, sig)
        with pytest.raises(MailboxProofError):
            GatewaySession.accept(CODEC, [gw_sk], CODEC.parse(forged))
    # A valid signature of the transcript with another gateway key in it does not verify.
    other = ClientLink(VOICE, public_key(generate_private_key()), victim)
    stolen = CODEC.parse(_challenge(other))
    with pytest.raises(LinkAuthError):
        GatewaySession.accept(CODEC, [gw_sk], stolen)
    # The attacker's own key opens the attacker's own mailbox, never the victim's.
    session = GatewaySession.accept(CODEC, [gw_sk], CODEC.parse(_challenge(client)))
    assert session.mailbox == attacker.mailbox_id != victim.mailbox_id


def test_attach_proof_is_bound_to_the_cookie() -> None:
    gw_sk = generate_private_key()
    client = ClientLink(VOICE, public_key(gw_sk), KEY)
    good = bytearray(_challenge(client, b"a" * 16))
    good[2 + 32 : 2 + 48] = b"b" * 16  # another cookie, same sealed proof
    with pytest.raises(LinkAuthError):
        GatewaySession.accept(CODEC, [gw_sk], CODEC.parse(bytes(good)))


def test_a_new_cookie_makes_a_new_proof_under_a_new_key() -> None:
    """No (key, nonce) reuse: each cookie seals under its own key."""
    gw_sk = generate_private_key()
    client = ClientLink(VOICE, public_key(gw_sk), KEY)
    a = _challenge(client, b"a" * 16)
    assert client.attach_frame() == a  # resent unchanged
    b = _challenge(client, b"b" * 16)
    assert a[50:] != b[50:]
    for frame in (a, b):
        assert GatewaySession.accept(CODEC, [gw_sk], CODEC.parse(frame)).mailbox == KEY.mailbox_id


def test_hello_and_challenge_sizes() -> None:
    """The CHALLENGE is shorter than the ATTACH it answers, for every geometry."""
    for geometry in (VOICE, BULK):
        codec = LinkCodec(geometry)
        client = ClientLink(geometry, public_key(generate_private_key()), KEY)
        hello = client.attach_frame()
        assert len(hello) == codec.frame_len(FrameType.ATTACH) == 162
        assert hello[2 + 32 :] == bytes(128)  # no cookie, no proof yet
        challenge = codec.challenge(codec.parse(hello), b"c" * 16)
        assert len(challenge) == codec.frame_len(FrameType.CHALLENGE) == 50 < len(hello)
        up = codec.parse(client.seal_uplink(bytes(geometry.packet_len)))
        assert len(codec.unknown_session(up)) == 10


def test_challenge_for_another_ephemeral_key_is_refused() -> None:
    gw_sk = generate_private_key()
    a = ClientLink(VOICE, public_key(gw_sk), KEY)
    b = ClientLink(VOICE, public_key(gw_sk), KEY)
    with pytest.raises(LinkError):
        a.receive(CODEC.challenge(CODEC.parse(b.attach_frame()), b"c" * 16))
    assert a.attach_frame()[34:] == bytes(128)  # still asking for a cookie


def test_cookie_jar_binds_peer_key_and_time() -> None:
    jar = CookieJar(period_s=60.0)
    eph = public_key(generate_private_key())
    c = jar.make(b"peer", eph, 119.0)
    assert jar.check(c, b"peer", eph, 119.0) and jar.check(c, b"peer", eph, 179.0)
    assert not jar.check(c, b"peer", eph, 180.0)  # two periods later
    assert not jar.check(c, b"peer", eph, 59.0)  # from the future
    assert not jar.check(c, b"peeR", eph, 119.0)
    assert not jar.check(c, b"peer", bytes(32), 119.0)
    assert not CookieJar(period_s=60.0).check(c, b"peer", eph, 119.0)  # another secret


def test_leave_authenticates_once() -> None:
    client, session, _ = _pair()
    leave = client.leave_frame()
    assert len(leave) == CODEC.frame_len(FrameType.LEAVE) == 34
    session.open_leave(CODEC.parse(leave))
    with pytest.raises(LinkAuthError):  # replayed
        session.open_leave(CODEC.parse(leave))
    forged = bytearray(client.leave_frame())
    forged[-1] ^= 1
    with pytest.raises(LinkAuthError):
        session.open_leave(CODEC.parse(bytes(forged)))
    other, _, _ = _pair()
    with pytest.raises(LinkAuthError):
        session.open_leave(CODEC.parse(other.leave_frame()))


def test_unknown_session_hint_only_for_our_session() -> None:
    client, _, _ = _pair()
    other, _, _ = _pair()
    ours = CODEC.parse(client.seal_uplink(bytes(VOICE.packet_len)))
    assert client.receive(CODEC.unknown_session(ours)) == SessionUnknown()
    theirs = CODEC.parse(other.seal_uplink(bytes(VOICE.packet_len)))
    with pytest.raises(LinkError):
        client.receive(CODEC.unknown_session(theirs))


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x02",
        b"\x03\x01" + bytes(VOICE.packet_len),
        b"\x01\x01" + bytes(VOICE.packet_len),  # link version 1: refused
        b"\x02\x09" + bytes(10),
    ],
)
def test_bad_frames_raise_typed_errors(datagram: bytes) -> None:
    with pytest.raises(LinkError):
        CODEC.parse(datagram)


def test_every_type_demands_exact_length() -> None:
    for ftype in FrameType:
        n = CODEC.frame_len(ftype)
        for m in (n - 1, n + 1):
            with pytest.raises(LinkError):
                CODEC.parse(bytes((2, ftype)) + bytes(m - 2))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200), st.sampled_from(list(FrameType)))
def test_fuzz_parse_and_open_only_raise_packet_errors(data: bytes, ftype: FrameType) -> None:
    """Every frame type, right length and random body: parse and every open raise only
    PacketError (LinkError and its subclasses), on the client and the gateway side."""
    client, session, gw_sk = _pair()
    typed = (
        bytes((2, ftype))
        + (data * (1 + CODEC.body_len[ftype] // max(1, len(data))))[: CODEC.body_len[ftype]]
    )
    for candidate in (data, b"\x02" + data, typed):
        try:
            frame = CODEC.parse(candidate)
        except PacketError:
            continue
        for op, arg in (
            (session.open_uplink, frame),
            (session.open_leave, frame),
            (client.open_downlink, candidate),
            (client.receive, candidate),
            (lambda f: GatewaySession.accept(CODEC, [gw_sk], f), frame),
        ):
            try:
                op(arg)  # type: ignore[operator]
            except PacketError:
                pass


REPLAY_WINDOW = 1024  # overlay._link.REPLAY_WINDOW, restated: the documented link window


def test_uplink_counter_jump_to_2_63_costs_nothing() -> None:
    """Regression: counter 1 then 2**63 made the gateway raise MemoryError."""
    client, session, _ = _pair()
    session.open_uplink(CODEC.parse(client.seal_uplink(bytes(VOICE.packet_len))))
    first = client.seal_uplink(bytes(VOICE.packet_len))
    client._counter = 2**63 - 1  # a client that skips ahead; frames still authenticate
    far = client.seal_uplink(bytes(VOICE.packet_len))
    session.open_uplink(CODEC.parse(far))
    with pytest.raises(LinkAuthError):  # counter 2 is now far below the window: stale
        session.open_uplink(CODEC.parse(first))
    with pytest.raises(LinkAuthError):
        session.open_uplink(CODEC.parse(far))
    assert session._window._bits.bit_length() <= REPLAY_WINDOW


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1) | st.integers(0, 3000), max_size=60))
def test_replay_window_matches_model_and_stays_bounded(counters: list[int]) -> None:
    """Any counters (jumps up to 2**64): the same answers as a set-based model, O(1) state."""
    window = ReplayWindow()
    seen: set[int] = set()
    top = 0
    for c in counters:
        expected = c > 0 and c not in seen and (c > top or top - c < REPLAY_WINDOW)
        assert window.check(c) is expected
        if expected:
            window.accept(c)
            seen.add(c)
            top = max(top, c)
        # Out-of-window accept (misuse) must not allocate either.
        window.accept(max(0, top - 2**62))
        assert window._bits.bit_length() <= REPLAY_WINDOW


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.binary(min_size=8, max_size=8))
def test_backoff_is_exponential_capped_and_jittered(attempt: int, noise: bytes) -> None:
    d = min(8.0, 0.25 * 2.0 ** min(attempt, 60))
    delay = backoff_delay(attempt, base_s=0.25, cap_s=8.0, rng=lambda n: noise[:n])
    assert d / 2 <= delay < d or delay == d / 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["down", "hint"]), st.floats(0, 0.5)), max_size=40))
def test_session_watch_never_loses_a_session_that_keeps_its_downlink(
    events: list[tuple[str, float]],
) -> None:
    """However many hints arrive, a session whose authenticated downlink keeps coming
    (gaps under both limits) is never counted lost; silence always is."""
    watch = SessionWatch(silence_s=2.0, hint_confirm_s=0.6, last_downlink=0.0)
    now = 0.0
    for kind, gap in events:
        now += gap
        if kind == "hint":
            watch.on_hint(now)
        else:
            watch.on_downlink(now)
        assert not watch.lost(now) or watch.hint_at is not None
        watch.on_downlink(now + 0.01)  # the next slot's frame
        now += 0.01
        assert not watch.lost(now)
    assert watch.lost(now + 2.001)
