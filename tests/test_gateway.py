"""Gateway role on virtual time: constant-rate downlink, same-size frames, drop policy."""

from __future__ import annotations

import os

from mixnode.gateway import GatewayCore
from overlay import VOICE, ClientLink, Delivery, DownlinkKind, public_key

MB = b"M" * 16


def _attached(rate: float = 50.0, **kw: object) -> tuple[GatewayCore, ClientLink, bytes]:
    sk = os.urandom(32)
    gw = GatewayCore(VOICE, delivery_rate_hz=rate, **kw)  # type: ignore[arg-type]
    client = ClientLink(VOICE, public_key(sk), MB)
    assert gw.on_datagram(client.attach_frame(), ("127.0.0.1", 1), 0.0, [sk]) is None
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
    assert gw.counters["drop:mailbox_full"] == 2 and gw.mailbox_depth == 3
    msgs = [client.open_downlink(d) for _, d in _run(gw, 0.0, 0.2)]
    assert [m.data for m in msgs if m.kind is DownlinkKind.MESSAGE] == [b"\x02", b"\x03", b"\x04"]


def test_too_old_frames_dropped_not_sent_late() -> None:
    gw, client, _ = _attached(rate=10.0, max_age_s=0.25)
    for i in range(10):
        gw.enqueue(MB, Delivery(DownlinkKind.MESSAGE, bytes([i])), 0.0)
    msgs = [client.open_downlink(d) for _, d in _run(gw, 0.0, 1.0)]
    real = [m for m in msgs if m.kind is DownlinkKind.MESSAGE]
    assert 1 <= len(real) <= 3  # only those whose slot came within 0.25 s
    assert gw.counters["drop:stale"] == 10 - len(real)


def test_uplink_opens_and_bad_frames_counted() -> None:
    gw, client, sk = _attached()
    pkt = os.urandom(VOICE.packet_len)
    up = client.seal_uplink(pkt)
    assert gw.on_datagram(up, ("127.0.0.1", 1), 0.1, [sk]) == pkt
    assert gw.on_datagram(up, ("127.0.0.1", 1), 0.1, [sk]) is None  # replayed frame
    assert gw.on_datagram(b"junk", ("127.0.0.1", 1), 0.1, [sk]) is None
    other = ClientLink(VOICE, public_key(sk), b"N" * 16)
    assert gw.on_datagram(other.seal_uplink(pkt), ("127.0.0.1", 2), 0.1, [sk]) is None
    assert gw.counters["drop:link_auth"] == 1
    assert gw.counters["drop:link_malformed"] == 1
    assert gw.counters["drop:no_session"] == 1


def test_mailbox_ids_bounded_and_idle_sessions_end() -> None:
    gw, _, _ = _attached(max_mailboxes=3, session_idle_s=5.0, max_age_s=0.5)
    for i in range(10):
        gw.enqueue(bytes([i]) * 16, Delivery(DownlinkKind.MESSAGE, b"x"), now=0.0)
    assert gw.counters["drop:too_many_mailboxes"] > 0
    gw.enqueue(b"z" * 16, Delivery(DownlinkKind.MESSAGE, b"x"), now=10.0)  # old ones expire
    assert gw.counters["drop:too_many_mailboxes"] == 8
    gw.due_slots(10.0)
    assert gw.sessions == 0 and gw.counters["session_expired"] == 1
