"""The gateway's cost and fairness limits (docs/wire-link.md, "Limits"): per-datagram work
that does not grow with the sessions held, caps that keep a flood from one host from locking
out another, mailboxes of departed clients that expire by themselves, bounded memory."""

from __future__ import annotations

import os
from collections.abc import Hashable

from hypothesis import given, settings
from hypothesis import strategies as st

from mixnode.gateway import GatewayCore, Reply, source_of
from overlay import (
    VOICE,
    ClientLink,
    Delivery,
    DownlinkKind,
    DropReason,
    MailboxKey,
    generate_private_key,
    public_key,
)

SK = generate_private_key()
GW_PUB = public_key(SK)


def _attach(
    gw: GatewayCore, addr: Hashable, now: float, key: MailboxKey | None = None
) -> ClientLink:
    """A proved ATTACH, as a client at ``addr`` that answers its challenge does it."""
    client = ClientLink(VOICE, GW_PUB, key if key is not None else MailboxKey.generate())
    challenge = gw.on_datagram(client.attach_frame(), addr, now, [SK])
    assert isinstance(challenge, Reply)
    client.receive(challenge.datagram)
    assert gw.on_datagram(client.attach_frame(), addr, now, [SK]) is None
    return client


def _fill(gw: GatewayCore, n: int, now: float = 0.0) -> None:
    """``n`` proved sessions from as many hosts (127.1.x.y) as the per-host cap needs."""
    per = gw.max_sessions_per_source
    for i in range(n):
        _attach(gw, (f"127.1.{i // per // 250}.{i // per % 250 + 1}", 1000 + i), now)


def _check(gw: GatewayCore) -> None:
    """The core's indexes agree with each other and stay inside the caps."""
    sessions = gw._sessions  # noqa: SLF001 (structure checks)
    by_source: dict[Hashable, int] = {}
    for sid, s in sessions.items():
        assert gw._by_mailbox[s.link.mailbox] == sid  # noqa: SLF001
        assert s.link.mailbox in gw._mailboxes and s.link.mailbox not in gw._idle  # noqa: SLF001
        by_source[s.source] = by_source.get(s.source, 0) + 1
    assert {k: len(v) for k, v in gw._sources.lru.items()} == by_source  # noqa: SLF001
    assert gw._sources.max_count == max(by_source.values(), default=0)  # noqa: SLF001
    assert set(gw._idle) == set(gw._mailboxes) - set(gw._by_mailbox)  # noqa: SLF001
    assert gw.mailbox_depth == sum(len(b.frames) for b in gw._mailboxes.values())  # noqa: SLF001
    assert gw.sessions <= gw.max_sessions and gw.mailboxes <= gw.max_mailboxes
    assert max(by_source.values(), default=0) <= gw.max_sessions_per_source
    queued = len(gw._due) + len(gw._asap)  # noqa: SLF001
    assert queued >= gw.sessions  # every session has its slot


# -- cost: O(1) per datagram, O(sessions) per downlink round ------------------------------


def _attach_steps(n: int) -> tuple[int, int, int]:
    """Loop steps for: an honest ATTACH, one enqueue, one downlink round; at ``n`` sessions."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0, max_sessions=2000, max_mailboxes=4000)
    _fill(gw, n)
    gw.due_slots(0.0)
    for _ in range(n):  # deliveries waiting for departed and attached clients alike
        gw.enqueue(os.urandom(16), Delivery(DownlinkKind.MESSAGE, b"x"), 0.0)
    before = gw.steps
    honest = _attach(gw, ("127.0.0.2", 1), 0.001)
    attach = gw.steps - before
    before = gw.steps
    gw.enqueue(honest.mailbox, Delivery(DownlinkKind.MESSAGE, b"y"), 0.002)
    enqueue = gw.steps - before
    gw.due_slots(0.003)  # the honest client's ATTACHED
    before = gw.steps
    assert len(gw.due_slots(0.02)) == n + 1
    round_steps = gw.steps - before
    _check(gw)
    return attach, enqueue, round_steps


def test_attach_and_enqueue_visit_nothing_and_a_round_visits_each_session_once() -> None:
    """Regression: each ATTACH scanned every mailbox once 10k were held (7.4 ms each), and
    the downlink scanned every session on every wake-up. Now the loop steps of an ATTACH or
    an enqueue do not depend on the sessions held, and a round visits n sessions n times."""
    costs = {n: _attach_steps(n) for n in (1, 30, 300)}
    assert {c[0] for c in costs.values()} == {0} and {c[1] for c in costs.values()} == {0}
    assert {n: c[2] for n, c in costs.items()} == {1: 2, 30: 31, 300: 301}


def test_the_edge_wakes_once_per_slot_whatever_the_attach_times() -> None:
    """Sessions attached at scattered times share one slot grid: over 1 s at 50 Hz the
    deadlines the edge sleeps to are about 50, not one per session per slot."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    for i in range(40):
        _attach(gw, ("127.0.0.1", 2000 + i), now=i * 0.0037)
    t, wakes, frames = 0.0, 0, 0
    while t < 1.2:
        nxt = gw.next_deadline()
        assert nxt is not None
        t = max(t, nxt)
        frames += len(gw.due_slots(t))
        wakes += 1
    assert wakes <= 40 + 62  # 40 ATTACHED acknowledgements, then one wake per 20 ms slot
    assert frames >= 40 * 55  # every session still gets every slot (~ 50 Hz)


# -- fairness: a flood of proved ATTACHes never locks out a client from elsewhere ----------


def _receives(gw: GatewayCore, client: ClientLink, t0: float) -> bool:
    """The client's mailbox gets a message and the client's downlink carries it."""
    gw.enqueue(client.mailbox, Delivery(DownlinkKind.MESSAGE, b"hello"), t0)
    got = []
    t = t0
    while t < t0 + 0.1:
        got += [client.open_downlink(d) for addr, d in gw.due_slots(t) if addr[0] == "127.0.0.2"]  # type: ignore[index]
        t += 0.005
    return Delivery(DownlinkKind.MESSAGE, b"hello") in got


def test_a_flood_from_one_host_does_not_lock_out_another() -> None:
    """Regression: after 10,000 ATTACHes an honest one was refused (too_many_mailboxes).
    An attacker answering its challenges from 127.0.0.1 attaches 200 proved sessions: it
    keeps at most its per-host share, and a client at 127.0.0.2 attaches and receives."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    for i in range(200):
        _attach(gw, ("127.0.0.1", 3000 + i), now=i * 0.001)
    assert gw.sessions == gw.max_sessions_per_source == 64
    assert gw.counters["session_evicted"] == 200 - 64
    honest = _attach(gw, ("127.0.0.2", 1), now=0.3)
    assert _receives(gw, honest, 0.3)
    assert gw.drops[DropReason.TOO_MANY_MAILBOXES] == 0
    _check(gw)


def test_a_full_gateway_makes_room_from_the_heaviest_host() -> None:
    """Attackers on many hosts fill the gateway to max_sessions; a newcomer from a host with
    no session takes the place of the least recently active session of the heaviest host."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0, max_sessions=100, max_sessions_per_source=10)
    _fill(gw, 100)
    heavy = ("127.9.9.9", 1)
    for i in range(10):
        _attach(gw, (heavy[0], 100 + i), now=0.01)  # evicts from the 127.1.x hosts first
    assert gw.sessions == 100 and gw._sources.count(heavy[0]) == 10  # noqa: SLF001
    honest = _attach(gw, ("127.0.0.2", 1), now=0.02)
    assert gw.sessions == 100 and gw.counters["session_evicted"] == 11
    assert _receives(gw, honest, 0.02)
    _check(gw)


def test_an_honest_client_behind_a_busy_host_stays_when_it_is_active() -> None:
    """At the per-host cap the least recently active session gives way: a client that sends
    its constant-rate uplink is never the one, idle sessions of a flood are."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0, max_sessions_per_source=5)
    honest = _attach(gw, ("127.0.0.1", 1), now=0.0)
    for i in range(50):
        up = honest.seal_uplink(bytes(VOICE.packet_len))
        assert gw.on_datagram(up, ("127.0.0.1", 1), i * 0.02, [SK]) is not None
        _attach(gw, ("127.0.0.1", 100 + i), now=i * 0.02 + 0.01)
    assert honest.keys.session_id in gw._sessions  # noqa: SLF001
    assert gw.sessions == 5 and gw.counters["session_evicted"] == 46


def test_roaming_into_a_full_host_is_refused() -> None:
    """An authenticated UPLINK from a new host moves the downlink only if that host has room:
    sessions cannot be piled onto one address past its cap by rewriting source addresses."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0, max_sessions_per_source=2)
    a = _attach(gw, ("127.0.0.1", 1), 0.0)
    _attach(gw, ("127.0.0.3", 1), 0.0)
    _attach(gw, ("127.0.0.3", 2), 0.0)
    up = a.seal_uplink(bytes(VOICE.packet_len))
    assert gw.on_datagram(up, ("127.0.0.3", 9), 0.01, [SK]) is not None  # packet accepted
    assert gw.counters["roam_refused"] == 1
    assert {addr for addr, _ in gw.due_slots(0.02)} == {
        ("127.0.0.1", 1),
        ("127.0.0.3", 1),
        ("127.0.0.3", 2),
    }
    up = a.seal_uplink(bytes(VOICE.packet_len))
    gw.on_datagram(up, ("127.0.0.4", 9), 0.03, [SK])  # room there: the downlink follows
    assert ("127.0.0.4", 9) in {addr for addr, _ in gw.due_slots(0.04)}
    _check(gw)


# -- mailboxes of departed clients --------------------------------------------------------


def test_mailbox_depth_falls_back_when_clients_leave() -> None:
    """Regression: phantom_mailbox_depth stayed at 51 for ever, because mailboxes of departed
    clients expired only once 10k were held. Now they expire once their frames are stale."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0, max_age_s=1.0)
    clients = [_attach(gw, ("127.0.0.1", 10 + i), 0.0) for i in range(3)]
    gw.due_slots(0.0)
    for c in clients:
        assert gw.on_datagram(c.leave_frame(), ("127.0.0.1", 0), 0.01, [SK]) is None
    for i in range(51):
        mailbox = clients[i % 3].mailbox
        gw.enqueue(mailbox, Delivery(DownlinkKind.MESSAGE, b"late"), 0.02)
    assert gw.mailbox_depth == 51 and gw.sessions == 0 and gw.next_deadline() is None
    gw.due_slots(0.5)  # the idle edge calls due_slots every 50 ms
    assert gw.mailbox_depth == 51  # not stale yet: a client re-attaching would get them
    gw.due_slots(1.1)
    assert gw.mailbox_depth == 0 and gw.mailboxes == 0
    assert gw.counters["mailbox_expired"] == 3 and gw.drops[DropReason.STALE] == 51


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["attach", "enqueue", "uplink", "leave", "tick"]),
            st.integers(0, 7),  # which host, mailbox or client
            st.floats(0.0, 0.7),  # seconds that pass before it
        ),
        max_size=40,
    )
)
def test_memory_stays_bounded_whatever_arrives(ops: list[tuple[str, int, float]]) -> None:
    """Any mix of ATTACHes from a few hosts, deliveries to known and unknown mailboxes,
    uplinks, LEAVEs and time: the indexes agree and every cap holds after each step."""
    gw = GatewayCore(
        VOICE,
        delivery_rate_hz=50.0,
        max_sessions=4,
        max_sessions_per_source=2,
        max_mailboxes=6,
        mailbox_capacity=3,
        max_age_s=0.5,
        session_idle_s=1.0,
    )
    keys = [MailboxKey(bytes([i]) * 32) for i in range(4)]
    clients: list[tuple[ClientLink, tuple[str, int]]] = []
    now = 0.0
    for op, i, dt in ops:
        now += dt
        if op == "attach":
            addr = (f"127.0.0.{i % 3 + 1}", i)
            clients.append((_attach(gw, addr, now, keys[i % 4]), addr))
        elif op == "enqueue":
            mailbox = keys[i % 4].mailbox_id if i < 4 else bytes([i]) * 16
            gw.enqueue(mailbox, Delivery(DownlinkKind.MESSAGE, b"m"), now)
        elif op in ("uplink", "leave") and clients:
            client, addr = clients[i % len(clients)]
            frame = (
                client.seal_uplink(bytes(VOICE.packet_len))
                if op == "uplink"
                else client.leave_frame()
            )
            gw.on_datagram(frame, addr, now, [SK])
        else:
            gw.due_slots(now)
        _check(gw)
    gw.due_slots(now + 2.0)  # everything idle: sessions end, mailboxes expire
    gw.due_slots(now + 3.0)
    assert gw.sessions == 0 and gw.mailboxes == 0 and gw.mailbox_depth == 0


def test_source_of_groups_ports_of_one_host() -> None:
    assert source_of(("127.0.0.1", 1)) == source_of(("127.0.0.1", 2)) == "127.0.0.1"
    assert source_of("addr") == "addr"


# -- roaming is no amplifier --------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.floats(0.0, 3.0)),  # which source address, gap (s)
        min_size=1,
        max_size=30,
    )
)
def test_a_forged_source_address_gets_at_most_three_times_what_it_sent(
    uplinks: list[tuple[int, float]],
) -> None:
    """An attacker owns a session (its cookie came to 127.0.0.1) and sends UPLINKs whose
    source address it forges (127.0.0.5..7): each forged address receives no more than
    3x the bytes sent from it, whatever the order and timing (RFC 9000 section 8)."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    home = ("127.0.0.1", 1)
    client = _attach(gw, home, 0.0)
    got: dict[Hashable, int] = {}
    sent: dict[Hashable, int] = {}
    now = 0.0
    for which, gap in uplinks:
        end = now + gap
        while now < end:
            for addr, datagram in gw.due_slots(now):
                sent[addr] = sent.get(addr, 0) + len(datagram)
            now += 0.01
        addr = home if which == 0 else (f"127.0.0.{4 + which}", 9)
        frame = client.seal_uplink(bytes(VOICE.packet_len))
        got[addr] = got.get(addr, 0) + len(frame)
        gw.on_datagram(frame, addr, now, [SK])
    for t in range(300):  # and after the last one
        for addr, datagram in gw.due_slots(now + t * 0.01):
            sent[addr] = sent.get(addr, 0) + len(datagram)
    for addr, n in sent.items():
        assert addr == home or n <= 3 * got[addr], (addr, n, got[addr])


def test_roaming_regression_one_forged_uplink_no_longer_buys_30_s_of_downlink() -> None:
    """Regression: one 670-byte UPLINK with a forged source moved the session's 50 Hz
    downlink there for 30 s (about 680 KB, 1000x). Now 4 frames, then it is withheld;
    an honest client that moved (NAT rebinding) and keeps sending keeps its downlink."""
    gw = GatewayCore(VOICE, delivery_rate_hz=50.0)
    attacker = _attach(gw, ("127.0.0.1", 1), 0.0)
    gw.on_datagram(attacker.seal_uplink(bytes(VOICE.packet_len)), ("127.0.0.9", 9), 0.0, [SK])
    honest = _attach(gw, ("127.0.0.2", 1), 0.0)
    to: dict[Hashable, int] = {}
    for i in range(1, 1500):  # 15 s; the honest client uplinks at 25 Hz from a new port
        if i % 4 == 0:
            up = honest.seal_uplink(bytes(VOICE.packet_len))
            assert gw.on_datagram(up, ("127.0.0.2", 2), i * 0.01, [SK]) is not None
        for addr, _ in gw.due_slots(i * 0.01):
            to[addr] = to.get(addr, 0) + 1
    assert to[("127.0.0.9", 9)] == 4 and gw.counters["slot_withheld"] > 700
    assert to[("127.0.0.2", 2)] >= 745  # every slot after the move
