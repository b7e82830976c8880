"""Gateway role on virtual time: constant-rate downlink, same-size frames, drop policy,
owned mailboxes, stateless challenges, LEAVE and the unknown-session hint."""

from __future__ import annotations

import os
from collections.abc import Hashable

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mixnode.gateway import GatewayCore, Reply, Uplink
from overlay import (
    VOICE,
    ClientLink,
    Delivery,
    DownlinkKind,
    DropReason,
    FrameType,
    LinkCodec,
    MailboxKey,
    SessionUnknown,
    generate_private_key,
    public_key,
)

KEY = MailboxKey(b"m" * 32)
MB = KEY.mailbox_id
ADDR = ("127.0.0.1", 1)
CODEC = LinkCodec(VOICE)


def _attach(
    gw: GatewayCore, client: ClientLink, sk: bytes, addr: Hashable = ADDR, now: float = 0.0
) -> None:
    """ATTACH, the gateway's CHALLENGE, ATTACH with the proof: as a client does."""
    challenge = gw.on_datagram(client.attach_frame(), addr, now, [sk])
    assert isinstance(challenge, Reply)
    client.receive(challenge.datagram)
    assert gw.on_datagram(client.attach_frame(), addr, now, [sk]) is None


def _attached(rate: float = 50.0, **kw: object) -> tuple[GatewayCore, ClientLink, bytes]:
    sk = generate_private_key()
    gw = GatewayCore(VOICE, delivery_rate_hz=rate, **kw)  # type: ignore[arg-type]
    client = ClientLink(VOICE, public_key(sk), KEY)
    _attach(gw, client, sk)
    assert gw.sessions == 1
    return gw, client, sk


def _run(gw: GatewayCore, t0: float, t1: float, step: float = 0.001) -> list[tuple[float, bytes]]:
    out = []
    t = t0
    while t < t1:
        out += [(t, d) for _, d in gw.due_slots(t)]
        t += step
    return out


def test_constant_rate_whether_or_not_traffic() -> None:
    gw, client, _ = _attached(rate=50.0)
    idle = _run(gw, 0.0, 2.0)
    for i in range(30):
        gw.enqueue(MB, Delivery(DownlinkKind.MESSAGE, bytes([i]) * 100), now=2.0 + i * 0.03)
    busy = _run(gw, 2.0, 4.0)
    assert 99 <= len(idle) <= 101 and 99 <= len(busy) <= 101
    assert {len(d) for _, d in idle + busy} == {len(idle[0][1])}
    kinds = [client.open_downlink(d).kind for _, d in idle + busy]
    assert kinds[0] is DownlinkKind.ATTACHED
    assert kinds.count(DownlinkKind.MESSAGE) == 30
    gaps = {round(b[0] - a[0], 3) for a, b in zip(busy, busy[1:], strict=False)}
    assert gaps <= {0.02, 0.019, 0.021}


def test_delivery_order_and_content() -> None:
    gw, client, _ = _attached()
    gw.enqueue(MB, Delivery(DownlinkKind.MESSAGE, b"one"), 0.0)
    gw.enqueue(MB, Delivery(DownlinkKind.REPLY, b"two"), 0.0)
    got = [client.open_downlink(d) for _, d in _run(gw, 0.0, 0.1)]
    assert got[1:3] == [
        Delivery(DownlinkKind.MESSAGE, b"one"),
        Delivery(DownlinkKind.REPLY, b"two"),
    ]


def test_full_mailbox_drops_oldest() -> None:
    gw, client, _ = _attached(mailbox_capacity=3)
    for i in range(5):
        gw.enqueue(MB, Delivery(DownlinkKind.MESSAGE, bytes([i])), 0.0)
    assert gw.drops[DropReason.MAILBOX_FULL] == 2 and gw.mailbox_depth == 3
    msgs = [client.open_downlink(d) for _, d in _run(gw, 0.0, 0.2)]
    assert [m.data for m in msgs if m.kind is DownlinkKind.MESSAGE] == [b"\x02", b"\x03", b"\x04"]


def test_too_old_frames_dropped_not_sent_late() -> None:
    gw, client, _ = _attached(rate=10.0, max_age_s=0.25)
    for i in range(10):
        gw.enqueue(MB, Delivery(DownlinkKind.MESSAGE, bytes([i])), 0.0)
    msgs = [client.open_downlink(d) for _, d in _run(gw, 0.0, 1.0)]
    real = [m for m in msgs if m.kind is DownlinkKind.MESSAGE]
    assert 1 <= len(real) <= 3  # only those whose slot came within 0.25 s
    assert gw.drops[DropReason.STALE] == 10 - len(real)


def test_uplink_opens_and_bad_frames_counted() -> None:
    gw, client, sk = _attached()
    pkt = os.urandom(VOICE.packet_len)
    up = client.seal_uplink(pkt)
    assert gw.on_datagram(up, ("127.0.0.1", 1), 0.1, [sk]) == Uplink(pkt)
    assert gw.on_datagram(up, ("127.0.0.1", 1), 0.1, [sk]) is None  # replayed frame
    assert gw.on_datagram(b"junk", ("127.0.0.1", 1), 0.1, [sk]) is None
    other = ClientLink(VOICE, public_key(sk), MailboxKey.generate())
    hint = gw.on_datagram(other.seal_uplink(pkt), ("127.0.0.1", 2), 0.1, [sk])
    assert isinstance(hint, Reply) and other.receive(hint.datagram) == SessionUnknown()
    assert gw.drops[DropReason.LINK_AUTH] == 1
    assert gw.drops[DropReason.LINK_MALFORMED] == 1
    assert gw.drops[DropReason.NO_SESSION] == 1


def test_mailbox_ids_bounded_and_idle_sessions_end() -> None:
    """Unknown mailbox ids take the room of the oldest idle mailbox (never an attached
    one); idle mailboxes expire once their frames are stale; idle sessions end."""
    gw, _, _ = _attached(
        max_mailboxes=3,
        max_sessions=2,
        max_sessions_per_source=2,
        session_idle_s=5.0,
        max_age_s=0.5,
    )
    for i in range(10):
        gw.enqueue(bytes([i]) * 16, Delivery(DownlinkKind.MESSAGE, b"x"), now=0.0)
    assert gw.mailboxes == 3 and gw.counters["mailbox_evicted"] == 8
    assert gw.drops[DropReason.MAILBOX_EVICTED] == 8 and gw.mailbox_depth == 2
    gw.enqueue(MB, Delivery(DownlinkKind.MESSAGE, b"kept"), now=0.0)  # attached: still here
    gw.enqueue(b"z" * 16, Delivery(DownlinkKind.MESSAGE, b"x"), now=10.0)  # old ones expire
    assert gw.counters["mailbox_expired"] == 2 and gw.drops[DropReason.TOO_MANY_MAILBOXES] == 0
    gw.due_slots(10.0)
    assert gw.sessions == 0 and gw.counters["session_expired"] == 1
    gw.due_slots(11.0)  # the departed client's mailbox and z's expire too
    assert gw.mailboxes == 0 and gw.mailbox_depth == 0


# -- owned mailboxes and the ATTACH exchange (DESIGN.md decision 11) ---------------------


def test_attach_flood_from_a_silent_address_reflects_less_than_it_gets() -> None:
    """Regression: 1,000 ATTACHes (66 KB) made a gateway send 126 MB to a source that
    never answered. Now: one shorter CHALLENGE each, no session, no downlink, no state."""
    sk = generate_private_key()
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    got = sent = 0
    for i in range(1000):
        client = ClientLink(VOICE, public_key(sk), MailboxKey.generate())
        datagram = client.attach_frame()
        got += len(datagram)
        out = gw.on_datagram(datagram, ("198.51.100.7", 4000), i * 0.01, [sk])
        assert isinstance(out, Reply)
        sent += len(out.datagram)
        sent += sum(len(d) for _, d in gw.due_slots(i * 0.01))
    for t in range(100):  # and nothing after: the address never answered
        sent += sum(len(d) for _, d in gw.due_slots(10.0 + t * 0.02))
    assert sent <= got and sent == 1000 * CODEC.frame_len(FrameType.CHALLENGE)
    assert gw.sessions == 0 and gw.next_deadline() is None
    assert gw.counters["challenge"] == 1000 and gw.counters["attach"] == 0
    assert not gw._sessions and not gw._mailboxes  # noqa: SLF001 (no memory per ATTACH)


def test_forged_mailbox_proofs_open_nothing_and_send_nothing() -> None:
    """An attacker at a real address (it gets cookies) with the victim's mailbox id but
    not its key: no session, nothing sent back but challenges, the victim keeps its mail."""
    sk = generate_private_key()
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    victim = ClientLink(VOICE, public_key(sk), KEY)
    _attach(gw, victim, sk, addr=("192.0.2.1", 1))
    victim_sid = victim.keys.session_id
    got = sent = 0
    attacker_addr = ("203.0.113.9", 5)
    for i in range(1000):
        attacker = ClientLink(VOICE, public_key(sk), MailboxKey.generate())
        hello = attacker.attach_frame()
        challenge = gw.on_datagram(hello, attacker_addr, 0.0, [sk])
        assert isinstance(challenge, Reply)
        attacker.receive(challenge.datagram)
        forged = bytearray(attacker.attach_frame())
        forged[-20 - i % 50] ^= 1  # tampered proof: does not open, or does not verify
        got += len(hello) + len(forged)
        sent += len(challenge.datagram)
        out = gw.on_datagram(bytes(forged), attacker_addr, 0.0, [sk])
        assert out is None
    assert sent <= got
    assert gw.drops[DropReason.LINK_AUTH] + gw.drops[DropReason.ATTACH_PROOF] == 1000
    assert gw.sessions == 1 and set(gw._sessions) == {victim_sid}  # noqa: SLF001
    gw.enqueue(MB, Delivery(DownlinkKind.MESSAGE, b"for the victim"), 0.0)
    slots = [(addr, victim.open_downlink(d)) for addr, d in _addressed(gw, 0.0, 0.1)]
    assert {addr for addr, _ in slots} == {("192.0.2.1", 1)}
    assert Delivery(DownlinkKind.MESSAGE, b"for the victim") in [d for _, d in slots]


def test_a_proven_attach_from_the_owner_replaces_its_old_session() -> None:
    gw, old, sk = _attached()
    new = ClientLink(VOICE, public_key(sk), KEY)  # same key, new ephemeral: a restart
    _attach(gw, new, sk, addr=("127.0.0.1", 2), now=0.5)
    assert gw.sessions == 1 and gw.counters["session_replaced"] == 1
    slots = _addressed(gw, 0.5, 0.7)
    assert {addr for addr, _ in slots} == {("127.0.0.1", 2)}
    assert new.open_downlink(slots[0][1]).kind is DownlinkKind.ATTACHED


def _addressed(gw: GatewayCore, t0: float, t1: float) -> list[tuple[Hashable, bytes]]:
    out = []
    t = t0
    while t < t1:
        out += gw.due_slots(t)
        t += 0.001
    return out


def test_attach_with_a_cookie_for_another_address_is_challenged_again() -> None:
    """A cookie proves the address it was sent to: replayed from elsewhere it counts nothing."""
    sk = generate_private_key()
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    client = ClientLink(VOICE, public_key(sk), KEY)
    challenge = gw.on_datagram(client.attach_frame(), ("192.0.2.1", 1), 0.0, [sk])
    assert isinstance(challenge, Reply)
    client.receive(challenge.datagram)
    again = gw.on_datagram(client.attach_frame(), ("192.0.2.66", 1), 0.0, [sk])
    assert isinstance(again, Reply) and gw.sessions == 0
    late = gw.on_datagram(client.attach_frame(), ("192.0.2.1", 1), 130.0, [sk])
    assert isinstance(late, Reply) and gw.sessions == 0  # the cookie expired
    assert gw.on_datagram(client.attach_frame(), ("192.0.2.1", 1), 61.0, [sk]) is None
    assert gw.sessions == 1


def test_leave_ends_the_downlink_at_once_and_a_forged_one_does_not() -> None:
    gw, client, sk = _attached()
    assert len(_run(gw, 0.0, 0.1)) == 5
    forged = bytearray(client.leave_frame())
    forged[-1] ^= 1
    assert gw.on_datagram(bytes(forged), ADDR, 0.1, [sk]) is None
    assert gw.sessions == 1 and gw.drops[DropReason.LINK_AUTH] == 1
    leave = client.leave_frame()
    assert gw.on_datagram(leave, ADDR, 0.1, [sk]) is None
    assert gw.sessions == 0 and gw.counters["leave"] == 1
    assert _run(gw, 0.1, 1.0) == []
    assert gw.on_datagram(leave, ADDR, 0.2, [sk]) is None  # no hint after a LEAVE
    assert gw.drops[DropReason.NO_SESSION] == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=800), st.sampled_from(list(FrameType)))
def test_any_client_datagram_is_answered_with_at_most_its_own_size(
    body: bytes, ftype: FrameType
) -> None:
    """Whatever a source sends, the gateway answers with no more bytes, and opens nothing."""
    sk = generate_private_key()
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    n = CODEC.body_len[ftype]
    for datagram in (body, bytes((2, ftype)) + (body + bytes(n))[:n]):
        out = gw.on_datagram(datagram, ADDR, 0.0, [sk])
        assert out is None or (isinstance(out, Reply) and len(out.datagram) <= len(datagram))
    assert gw.sessions == 0


def _kinds(client: ClientLink, out: list[tuple[float, bytes]]) -> list[str]:
    return [client.open_downlink(d).kind.name for _, d in out]


def test_a_replayed_attach_after_the_first_uplink_takes_no_slot_and_no_crypto() -> None:
    """Regression: resending a client's proved ATTACH from its address (an on-path observer,
    within the cookie's lifetime) re-armed ATTACHED in every slot, muting its deliveries."""
    gw, client, sk = _attached()
    proved = client.attach_frame()  # what the client sent, with the cookie and the proof
    assert _kinds(client, _run(gw, 0.0, 0.01)) == ["ATTACHED"]
    up = client.seal_uplink(bytes(VOICE.packet_len))
    assert isinstance(gw.on_datagram(up, ADDR, 0.01, [sk]), Uplink)
    t, out = 0.02, []
    for i in range(100):  # 50 deliveries/s queued, the ATTACH replayed once per slot
        gw.enqueue(MB, Delivery(DownlinkKind.MESSAGE, bytes([i])), now=t)
        assert gw.on_datagram(proved, ADDR, t, [sk]) is None
        out += _run(gw, t, t + 0.02)
        t += 0.02
    kinds = _kinds(client, out)
    assert "ATTACHED" not in kinds and kinds.count("MESSAGE") >= 95
    assert gw.counters["attach_replayed"] == 100 and gw.counters["attach"] == 1


def test_a_replayed_attach_revives_no_session_after_leave_or_a_newer_attach() -> None:
    gw, client, sk = _attached()
    old = client.attach_frame()
    assert gw.on_datagram(client.leave_frame(), ADDR, 0.1, [sk]) is None
    assert gw.on_datagram(old, ADDR, 0.2, [sk]) is None  # the LEAVE stands
    assert gw.sessions == 0 and _run(gw, 0.2, 1.0) == []
    # The owner attaches again with a new link; the old ATTACH, replayed, ends nothing.
    again = ClientLink(VOICE, public_key(sk), KEY)
    _attach(gw, again, sk, now=1.0)
    assert gw.on_datagram(old, ADDR, 1.1, [sk]) is None
    assert gw.sessions == 1 and gw.counters["session_replaced"] == 0
    assert gw.counters["attach_replayed"] == 2


def test_a_resent_attach_before_the_first_uplink_is_acknowledged_again() -> None:
    """The client resends its ATTACH until ATTACHED arrives: that must keep working."""
    gw, client, sk = _attached()
    _run(gw, 0.0, 0.01)  # the ATTACHED went out (and was lost, say)
    assert gw.on_datagram(client.attach_frame(), ADDR, 0.2, [sk]) is None
    assert _kinds(client, _run(gw, 0.2, 0.25))[0] == "ATTACHED"
    assert gw.counters["attach_replayed"] == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["uplink", "replay", "leave", "reattach", "tick"]), max_size=30))
# Found by this property: an ATTACH replayed after a re-attach but before its first UPLINK
# re-armed ATTACHED, which then went out after the UPLINK.
@example(["uplink"] * 8 + ["reattach", "replay", "uplink"])
def test_no_sequence_of_replayed_attaches_changes_what_the_owner_gets(steps: list[str]) -> None:
    """Property: replaying any ATTACH the owner ever sent never revives an ended session,
    never ends the live one and never re-arms ATTACHED once the owner has sent an UPLINK."""
    sk = generate_private_key()
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    client = ClientLink(VOICE, public_key(sk), KEY)
    _attach(gw, client, sk)
    gw.due_slots(0.0)  # the ATTACHED goes out before the client's first UPLINK
    sent = [client.attach_frame()]
    live, uplinked, t = True, False, 0.0
    for step in steps:
        t += 0.02
        if step == "uplink" and live:
            gw.on_datagram(client.seal_uplink(bytes(VOICE.packet_len)), ADDR, t, [sk])
            uplinked = True
        elif step == "replay":
            for frame in sent:
                gw.on_datagram(frame, ADDR, t, [sk])
        elif step == "leave" and live:
            gw.on_datagram(client.leave_frame(), ADDR, t, [sk])
            live = False
        elif step == "reattach":
            client = ClientLink(VOICE, public_key(sk), KEY)
            _attach(gw, client, sk, now=t)
            gw.due_slots(t)
            sent.append(client.attach_frame())
            live, uplinked = True, False
        out = gw.due_slots(t)
        assert gw.sessions == (1 if live else 0)
        if live and uplinked:
            assert all(client.open_downlink(d).kind.name != "ATTACHED" for _, d in out)
        if not live:
            assert out == []
