"""UplinkScheduler: the slot grid and each slot's frame, without a clock or a socket.

Every packet is opened hop by hop with the real Sphinx code and the nodes' private keys,
so what a slot carried is read from the packet itself, not from the scheduler's word.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sphinx_support import SeededRng
from test_call import EPOCH, _network, _node

from client.phone import PhoneOptions
from overlay import (
    VOICE,
    CoverKind,
    Deliver,
    Discard,
    Forward,
    NodeRole,
    RoutePolicy,
    SlotKind,
    UplinkScheduler,
    UsageError,
    build_document,
    create_drop,
    create_forward,
    process_packet,
    sample_path,
    select_path,
)

SLOT_S = 0.04
PAYLOAD = VOICE.user_payload
DOC, SECRETS = _network()
ME = (DOC.gateways[0].node_id, b"m" * 16)
PEER = (DOC.gateways[1].node_id, b"p" * 16)


def _open(packet: bytes) -> tuple[bytes, bytes] | None:
    """(mailbox, payload) the packet delivers, or None when its last hop discards it."""
    node = ME[0]  # every packet enters at our own gateway
    while True:
        result = process_packet(VOICE, SECRETS[node], packet)
        match result:
            case Forward():
                node, packet = result.next_hop, result.packet
            case Deliver():
                return result.mailbox, result.message
            case Discard():
                return None
            case _:
                raise AssertionError(result)


def _frame(tag: str, i: int) -> bytes:
    return f"{tag}{i:06d}".encode().ljust(PAYLOAD, b".")


def _scheduler(**kw: object) -> UplinkScheduler:
    return UplinkScheduler(DOC, ME, PEER, slot_s=SLOT_S, mean_delay_s=0.001, **kw)  # type: ignore[arg-type]


# -- the frames -----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=10),
    st.sampled_from(CoverKind),
)
def test_every_slot_carries_one_frame_signaling_first_and_each_class_in_order(
    plan: list[tuple[int, bool]], cover: CoverKind
) -> None:
    """``plan``: per slot, how many signaling frames arrive before it and whether a media
    frame is offered for it."""
    up = _scheduler(cover=cover, rng=SeededRng(b"uplink"))
    pushed = queued = seq = 0
    signals, media = [], []
    for k, (n_signal, offer) in enumerate(plan):
        up.push_signal([_frame("s", pushed + j) for j in range(n_signal)])
        pushed += n_signal
        queued += n_signal
        offered = (seq, _frame("m", seq)) if offer else None
        seq += offer
        slot = up.fill(k * SLOT_S, offered)
        assert slot.packet is not None and len(slot.packet) == VOICE.packet_len
        opened = _open(slot.packet)
        if queued:  # never starved: a waiting signaling frame takes the very next slot
            assert slot.kind is SlotKind.SIGNAL and slot.displaced == offer
            assert opened is not None and opened[0] == PEER[1]
            signals.append(opened[1])
            queued -= 1
        elif offered is not None:
            assert slot.kind is SlotKind.MEDIA and slot.media_seq == offered[0]
            assert opened == (PEER[1], offered[1])
            media.append(opened[1])
        else:
            assert slot.kind is SlotKind.COVER and slot.media_seq is None
            if cover is CoverKind.LOOP:
                assert opened is not None and opened[0] == ME[1]
            else:
                assert opened is None
        assert up.signal_pending == queued
    assert signals == [_frame("s", i) for i in range(len(signals))]  # order kept
    assert media == sorted(media)
    assert sum(up.slots.values()) == len(plan) and up.sent_sizes == {VOICE.packet_len}


def test_an_unroutable_signaling_frame_waits_and_the_slot_sends_last_resort_cover() -> None:
    doc = build_document(EPOCH, epoch_length_s=600, geometry=VOICE,
                         descriptors=[DOC.by_id[ME[0]]])  # fmt: skip
    up = UplinkScheduler(doc, ME, PEER, slot_s=SLOT_S)
    up.push_signal([_frame("s", 0)])
    slot = up.fill(0.0, (0, _frame("m", 0)))
    assert slot.kind is SlotKind.COVER and slot.unroutable and slot.displaced
    assert slot.packet is not None and _open(slot.packet) is None  # our gateway drops it
    assert up.signal_pending == 1 and up.slots == Counter({"cover": 1, "unroutable": 1})


def test_last_resort_cover_is_drawn_by_the_one_path_sampler_within_the_delay_cap() -> None:
    """The one-hop fallback is ``sample_path(doc, [own gateway])``: the same bytes give the
    same packet, and its delay is capped at the document's ``max_delay_us`` however long the
    mean (the gateway would drop a packet asking for more)."""
    cap_us = 5_000
    doc = build_document(EPOCH, epoch_length_s=600, geometry=VOICE, max_delay_us=cap_us,
                         descriptors=[DOC.by_id[ME[0]]])  # fmt: skip
    up = UplinkScheduler(doc, ME, PEER, slot_s=SLOT_S, mean_delay_s=3600.0, rng=SeededRng(b"lr"))
    up.push_signal([_frame("s", 0)])  # its path fails at the peer's gateway, before any draw
    slot = up.fill(0.0)
    assert slot.packet is not None and slot.unroutable
    rng = SeededRng(b"lr")
    path = sample_path(doc, [ME[0]], 3600.0, rng)
    assert [hop.delay_us for hop in path] == [cap_us]
    assert slot.packet == create_drop(VOICE, path, rng=rng)
    opened = process_packet(VOICE, SECRETS[ME[0]], slot.packet)
    assert isinstance(opened, Discard) and opened.delay_us == cap_us


def test_nothing_routable_skips_the_slot() -> None:
    doc = build_document(EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=[])
    up = UplinkScheduler(doc, ME, PEER, slot_s=SLOT_S, cover=CoverKind.DROP)
    slot = up.fill(0.0)
    assert slot.packet is None and slot.unroutable
    assert up.slots == Counter({"skipped": 1, "unroutable": 1}) and not up.sent_sizes


# -- the grid -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0.0, 1e6),
    st.lists(st.tuples(st.floats(0.0, 0.2), st.integers(0, 3), st.booleans()), max_size=30),
)
def test_the_slot_grid_does_not_depend_on_what_is_queued(
    start: float, wakes: list[tuple[float, int, bool]]
) -> None:
    """``wakes``: per slot, how late the caller wakes up (seconds), and what it queues."""
    busy, idle = _scheduler(), _scheduler()
    for up in (busy, idle):
        up.start(start)
    times: dict[int, list[float]] = {id(busy): [], id(idle): []}  # slot times
    for late, n_signal, offer in wakes:
        busy.push_signal([_frame("s", 0)] * n_signal)
        for up in (busy, idle):
            due = up.due
            t = up.take_slot(due + late)
            assert t - 1e-6 <= due + late < t + SLOT_S + 1e-6  # the slot at or before it
            times[id(up)].append(t)
        busy.fill(t, (0, _frame("m", 0)) if offer else None)
    assert times[id(busy)] == times[id(idle)]
    assert busy.slots["missed"] == idle.slots["missed"]
    sent = times[id(busy)]
    assert all(b - a >= SLOT_S - 1e-6 for a, b in zip(sent, sent[1:], strict=False))
    for t in times[id(busy)]:  # every slot on the fixed grid
        k = round((t - start) / SLOT_S)
        assert t == pytest.approx(start + k * SLOT_S, abs=1e-6)
    # slots sent plus slots missed: one per grid point passed
    assert len(wakes) + busy.slots["missed"] == busy.next_index


def test_grid_helpers() -> None:
    up = _scheduler()
    assert up.grid_at_or_after(5.0) == 5.0  # before the grid starts: now
    with pytest.raises(UsageError):
        _ = up.due
    up.start(10.0)
    assert up.grid_at_or_after(10.05) == pytest.approx(10.08)
    assert up.grid_at_or_after(10.0) == 10.0
    assert not up.media_due(10.0, 10.0) and up.media_due(10.0, 10.04)


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="slot_s"):
        UplinkScheduler(DOC, ME, PEER, slot_s=0)
    with pytest.raises(UsageError, match="mean_delay_s"):
        UplinkScheduler(DOC, ME, PEER, slot_s=SLOT_S, mean_delay_s=-1)
    up = _scheduler()
    with pytest.raises(UsageError, match="352 bytes"):
        up.push_signal([_frame("s", 0), b"short"])
    assert up.signal_pending == 0  # none of them queued
    with pytest.raises(UsageError, match="352 bytes"):
        up.fill(0.0, (0, b"short"))
    assert not up.slots


# -- routes per call direction ---------------------------------------------------------

PER_CALL = RoutePolicy(per_call=True, failover=2)


def _trace(packet: bytes) -> tuple[tuple[bytes, ...], tuple[int, ...], bytes | None]:
    """(the nodes the packet crosses, the delay each asks for in us, the mailbox it reaches
    or None when discarded), read hop by hop with the nodes' keys."""
    node, nodes, delays = ME[0], [ME[0]], []
    while True:
        result = process_packet(VOICE, SECRETS[node], packet)
        match result:
            case Forward():
                delays.append(result.delay_us)
                node, packet = result.next_hop, result.packet
                nodes.append(node)
            case Deliver():
                return tuple(nodes), (*delays, result.delay_us), result.mailbox
            case Discard():
                return tuple(nodes), (*delays, result.delay_us), None
            case _:
                raise AssertionError(result)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=8, max_size=40), st.binary(min_size=1, max_size=8))
def test_a_call_direction_crosses_one_route_and_cover_keeps_a_path_per_packet(
    plan: list[int], seed: bytes
) -> None:
    """``plan``: per slot, 0 cover, 1 a signaling frame, 2 a media frame. Every signaling
    and media packet of the call crosses the same mixes (``up.route``), with delays still
    drawn per packet; cover still loops to our own mailbox."""
    up = _scheduler(routing=PER_CALL, rng=SeededRng(b"call" + seed))
    assert up.route is None  # drawn at the call's first packet
    call_routes: set[tuple[bytes, ...]] = set()
    call_delays: set[tuple[int, ...]] = set()
    for k, what in enumerate(plan):
        if what == 1:
            up.push_signal([_frame("s", k)])
        slot = up.fill(k * SLOT_S, (k, _frame("m", k)) if what == 2 else None)
        assert slot.packet is not None and len(slot.packet) == VOICE.packet_len
        nodes, delays, mailbox = _trace(slot.packet)
        if what:
            assert mailbox == PEER[1] and nodes == up.route
            call_routes.add(nodes)
            call_delays.add(delays)
        else:
            assert slot.kind is SlotKind.COVER and mailbox == ME[1] and nodes[-1] == ME[0]
    assert len(call_routes) <= 1
    assert len(call_delays) == sum(1 for w in plan if w)  # 4 delays of 1 ms mean, each drawn


def test_cover_takes_a_fresh_path_per_packet_under_per_call_routes() -> None:
    up = _scheduler(routing=PER_CALL, rng=SeededRng(b"cover"))
    up.push_signal([_frame("s", 0)])
    up.fill(0.0)  # the call's route is drawn
    covers = {_trace(up.fill(k * SLOT_S).packet or b"")[0] for k in range(1, 41)}
    assert len(covers) > 4  # 8 loops through 2 mixes in each of 3 layers


def test_each_call_draws_its_own_route_uniformly() -> None:
    """A new ``peer`` (even the same contact) starts a new call direction: over 160 calls
    all 8 routes of the test network appear, each mix of a layer in about half the calls."""
    up = _scheduler(routing=PER_CALL, rng=SeededRng(b"calls"))
    seen: Counter[tuple[bytes, ...]] = Counter()
    for k in range(160):
        up.peer = PEER
        slot = up.fill(k * SLOT_S, (0, _frame("m", k)))
        assert slot.packet is not None
        nodes = _trace(slot.packet)[0]
        assert nodes == up.route
        seen[nodes] += 1
    assert len(seen) == 8
    for layer in (1, 2, 3):
        counts = Counter(nodes[layer] for nodes in seen.elements())
        assert len(counts) == 2 and min(counts.values()) > 50  # binomial(160, 1/2): 80 +- 6.3


def test_failover_moves_only_to_the_spares_drawn_at_call_start() -> None:
    up = _scheduler(routing=PER_CALL, rng=SeededRng(b"failover"))
    assert not up.route_failed()  # no route yet
    up.push_signal([_frame("s", 0)])
    first = up.fill(0.0)
    rng = SeededRng(b"failover")  # the draws of the call's start: route, then 2 spares
    drawn: list[tuple[bytes, ...]] = []
    for _ in range(3):  # each spare keeps off the mixes of the route before it (2 per layer)
        avoid = set(drawn[-1][1:-1]) if drawn else set()
        hops = select_path(DOC, ME[0], PEER[0], 0.001, rng, avoid=avoid)
        drawn.append(tuple(hop.node_id for hop in hops))
    assert not set(drawn[0][1:-1]) & set(drawn[1][1:-1])  # disjoint in every layer
    assert first.packet is not None and _trace(first.packet)[0] == drawn[0] == up.route
    for spare in (1, 2):
        assert up.route_failed() and up.route == drawn[spare]
        assert up.spare_routes == 2 - spare
        for k in range(5):
            slot = up.fill((spare * 10 + k) * SLOT_S, (k, _frame("m", k)))
            assert slot.packet is not None and _trace(slot.packet)[0] == drawn[spare]
    assert not up.route_failed() and up.route == drawn[2]  # out of spares: stays, reported
    assert up.failovers == 2
    up.peer = PEER  # the next call draws afresh, with 2 new spares
    up.fill(100.0, (0, _frame("m", 0)))
    assert up.spare_routes == 2


# Keyed mixes, 4 per layer of 3, and one without a key for the epoch per layer.
_POOL = {
    layer: [_node(10 * layer + i, NodeRole.MIX, layer, keyed=i < 4)[0] for i in range(5)]
    for layer in (1, 2, 3)
}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=3, max_size=3),
    st.integers(0, 5),
    st.binary(min_size=8, max_size=8),
)
def test_spare_routes_keep_off_the_mixes_of_the_routes_before_them(
    layers: list[tuple[int, bool]], failover: int, seed: bytes
) -> None:
    """Over documents of 1 to 4 keyed mixes per layer (and maybe one without a key for the
    epoch): in every layer with a mix to spare, each spare avoids the mixes of all routes drawn
    before it; in a layer too small for that, at least the mix of the route just before it
    (when the layer has two); a layer of one mix is reused."""
    mixes = [n for k, (count, unkeyed) in enumerate(layers, start=1)
             for n in _POOL[k][:count] + _POOL[k][4:] * unkeyed]  # fmt: skip
    gateways = list(DOC.gateways)
    doc = build_document(EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=gateways + mixes)
    up = UplinkScheduler(doc, ME, PEER, slot_s=SLOT_S, rng=SeededRng(seed),
                         routing=RoutePolicy(per_call=True, failover=failover))  # fmt: skip
    assert up.fill(0.0, (0, _frame("m", 0))).kind is SlotKind.MEDIA
    routes = [up.route]
    while up.route_failed():
        routes.append(up.route)
    assert len(routes) == 1 + failover
    for k, route in enumerate(routes):
        assert route is not None and route[0] == ME[0] and route[-1] == PEER[0]
        for i, (count, _) in enumerate(layers, start=1):
            before = {r[i] for r in routes[:k] if r is not None}
            if count > len(before):
                assert route[i] not in before
            elif count >= 2:
                assert route[i] != routes[k - 1][i]  # type: ignore[index]
            assert doc.by_id[route[i]].layer == i and EPOCH in doc.by_id[route[i]].epoch_keys


def test_per_packet_routes_stay_the_default_and_byte_identical() -> None:
    """The default draws exactly what it drew before: ``select_path`` then
    ``create_forward`` per packet, from the same stream of bytes."""
    up = _scheduler(rng=SeededRng(b"default"))
    assert up.routing == RoutePolicy() and not up.route_failed()
    rng = SeededRng(b"default")
    for k in range(5):
        slot = up.fill(k * SLOT_S, (k, _frame("m", k)))
        path = select_path(DOC, ME[0], PEER[0], 0.001, rng)
        assert slot.packet == create_forward(VOICE, path, PEER[1], _frame("m", k), rng=rng)
        assert up.route is None


def test_route_policy_arguments_and_the_desktop_client() -> None:
    with pytest.raises(UsageError, match="failover"):
        RoutePolicy(per_call=True, failover=17)
    with pytest.raises(UsageError, match="failover"):
        RoutePolicy(per_call=True, failover=True)
    with pytest.raises(UsageError, match="per_call routes"):
        RoutePolicy(failover=1)
    with pytest.raises(UsageError, match="routing"):
        _scheduler(routing="call")
    assert PhoneOptions().policy.routing() == RoutePolicy(per_call=True, failover=2)
