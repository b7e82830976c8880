"""Route health from the peer's receiver reports: properties over report sequences, and a
whole call on virtual time over the in-memory Sphinx network where a mix of the caller's
route dies mid-call."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from test_call import MemoryNet, _network

from client import InMemoryChannel, ReceiverReport, artificial_voice
from client._route_health import MAX_WINDOW_REPORTS, RouteHealth, RouteHealthConfig
from client.call import Address, Caller, Contact
from client.phone import route_record
from overlay import RoutePolicy, UplinkScheduler, UsageError

SLOT_S = 0.04
CFG = RouteHealthConfig()


def _drive(
    health: RouteHealth, reports: Iterable[tuple[float, int, int]], until: float, start: float = 0.0
) -> list[tuple[float, str]]:
    """We send one media packet per slot from ``start`` to ``until`` and check after each;
    ``reports`` are (arrival time, highest_seq, received) in time order. The verdicts."""
    pending = sorted(reports)
    verdicts = []
    k = 0
    while (t := start + k * SLOT_S) <= until:
        while pending and pending[0][0] <= t:
            at, highest, received = pending.pop(0)
            health.report(ReceiverReport(highest, 0, highest, highest + 1 - received), at)
        health.sent(t)
        if (why := health.check(t)) is not None:
            verdicts.append((t, why))
        k += 1
    return verdicts


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.01, 1.9), st.integers(1, 60), st.floats(0, 0.25)),
        min_size=1,
        max_size=40,
    )
)
def test_never_a_verdict_while_reports_show_progress(
    steps: list[tuple[float, int, float]],
) -> None:
    """Reports at gaps below ``stall_s`` (and ``no_report_s``), each showing our packets
    arriving with at most 25 % lost: never a verdict."""
    t, highest, received, reports = 0.3, 0, 0, []
    for gap, new, lost_share in steps:
        t += gap
        lost = int(new * lost_share)
        highest, received = highest + new, received + new - lost
        reports.append((t, highest, max(1, received)))
    assert _drive(RouteHealth(), reports, until=t) == []


@settings(max_examples=200, deadline=None)
@given(st.floats(0.5, 20.0), st.floats(0.02, 0.5), st.floats(0.1, 0.6))
def test_a_stall_is_judged_within_stall_s_and_one_report_interval(
    stop: float, interval: float, one_way: float
) -> None:
    """The peer's count moves with every report until ``stop``; from then on reports keep
    coming every ``interval`` s and show nothing new. The verdict comes ``stall_s`` after
    our first packet the count never showed, at most one report interval (and one slot of
    checking) later; never earlier."""
    reports, t, n = [], one_way, 0
    while t <= stop + 10:
        if t <= stop:
            n = int(t / SLOT_S)  # what arrived by then
        reports.append((t, n, n + 1))
        t += interval
    verdicts = _drive(RouteHealth(), reports, until=stop + 10)
    assert verdicts, "no verdict"
    when, why = verdicts[0]
    last_progress = min(at for at, h, _ in reports if h == reports[-1][1])  # count's last move
    # Our first send after that report (a report is taken before the slot's send).
    first_unacked = next(k * SLOT_S for k in range(10_000) if k * SLOT_S >= last_progress)
    assert why == "stalled"
    assert first_unacked + CFG.stall_s <= when + 1e-9
    assert when <= first_unacked + CFG.stall_s + interval + SLOT_S + 1e-9


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 5.0), st.booleans())
def test_verdicts_are_at_least_a_cooldown_apart(dead_from: float, silent: bool) -> None:
    """A route that stays dead (reports show nothing new, or none come at all) is judged
    again and again, but never twice within ``cooldown_s``."""
    reports = [] if silent else [(0.3 + SLOT_S * k, 0, 1) for k in range(int(40 / SLOT_S))]
    verdicts = _drive(RouteHealth(), reports, until=40.0, start=dead_from)
    assert len(verdicts) >= 40 // (CFG.cooldown_s + CFG.no_report_s)
    assert {why for _, why in verdicts} == {"silent" if silent else "stalled"}
    for (a, _), (b, _) in zip(verdicts, verdicts[1:], strict=False):
        assert b - a >= CFG.cooldown_s - 1e-9


def test_a_report_overtaken_in_the_network_is_not_progress() -> None:
    """The count reaches 50 at 2.26 s, then nothing new; an older report (49) that arrives
    at 3.0 s must not restart the stall clock."""
    reports = [(0.3 + 0.04 * k, min(49, k), min(50, k + 1)) for k in range(200)]
    reports.append((3.0, 48, 49))  # sealed long ago, overtaken on the way
    verdicts = _drive(RouteHealth(), reports, until=8.0)
    first_unacked = next(k * SLOT_S for k in range(200) if k * SLOT_S >= 0.3 + 0.04 * 49)
    assert verdicts and verdicts[0][1] == "stalled"
    assert verdicts[0][0] <= first_unacked + CFG.stall_s + 2 * SLOT_S


def test_no_report_at_all_is_judged_after_no_report_s() -> None:
    verdicts = _drive(RouteHealth(), [], until=5.0, start=1.0)
    (when, why), *_ = verdicts
    assert why == "silent" and when == pytest.approx(1.0 + CFG.no_report_s)


def test_heavy_loss_over_the_window_is_judged() -> None:
    """Half our packets lost, reported every 40 ms: the window spans 20 numbers after
    0.8 s of reports and the loss (50 %) is above 30 %."""
    reports = [(0.3 + SLOT_S * k, 2 * k, k + 1) for k in range(200)]
    verdicts = _drive(RouteHealth(), reports, until=8.0)
    assert verdicts[0][1] == "lossy" and verdicts[0][0] < 1.5
    health = RouteHealth()
    _drive(health, [(0.3 + SLOT_S * k, 10 * k // 8, k + 1) for k in range(50)], until=2.2)
    assert health.loss() == pytest.approx(0.2, abs=0.03)  # 20 % lost: no verdict


@pytest.mark.parametrize(
    "field",
    [{"stall_s": 0}, {"no_report_s": -1.0}, {"loss_threshold": 1.0}, {"min_loss_packets": -1},
     {"cooldown_s": 1.0}, {"loss_window_s": float("nan")}],
)  # fmt: skip
def test_a_bad_config_is_a_usage_error(field: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        RouteHealthConfig(**field)  # type: ignore[arg-type]


# -- a whole call on virtual time ---------------------------------------------------------


async def test_a_dead_mix_on_the_callers_route_moves_it_to_a_spare(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Both callers with one route per call direction and 2 spares. 3 s into the call the
    mix of layer 2 on A's route dies (and drops B's packets too if B's route crosses it):
    A moves to a spare within ``stall_s`` or ``no_report_s`` plus a round trip, B's
    playout recovers, and the round trips the reports gave match the network's delays."""
    doc, secrets = _network()
    async with trio.open_nursery() as nursery:
        net = MemoryNet(doc, secrets, nursery)
        chan_a, chan_b = InMemoryChannel.pair()
        key = os.urandom(32)
        a_addr = Address(doc.gateways[0].node_id, os.urandom(16))
        b_addr = Address(doc.gateways[1].node_id, os.urandom(16))

        def caller(me: Address, peer: Address, chan: InMemoryChannel, seed: int) -> Caller:
            uplink = UplinkScheduler(
                doc, (me.gateway_id, me.mailbox), (peer.gateway_id, peer.mailbox),
                slot_s=SLOT_S, mean_delay_s=0.01, routing=RoutePolicy(per_call=True, failover=2),
            )  # fmt: skip
            return Caller(net.link(me), doc, me, Contact(peer, key), chan,
                          artificial_voice(12.0, seed=seed), uplink=uplink)  # fmt: skip

        a, b = caller(a_addr, b_addr, chan_a, 1), caller(b_addr, a_addr, chan_b, 2)
        await nursery.start(a.run)
        await nursery.start(b.run)
        a.place()
        with trio.fail_after(5):
            await a.connected.wait()
            await b.connected.wait()
        await trio.sleep(3.0)
        assert a.route_failovers == b.route_failovers == 0
        route = a.uplink.route
        assert route is not None
        killed_at = trio.current_time()
        net.dead.add(route[2])
        await trio.sleep(6.0)
        a.hangup()
        with trio.fail_after(5):
            await b.ended.wait()
        nursery.cancel_scope.cancel()
    assert a.route_failovers >= 1 and a.route_no_spare == 0
    assert a.uplink.route is not None and route[2] not in a.uplink.route  # a disjoint spare
    moved_at, why = a.route_verdicts[0]
    assert why in ("stalled", "silent")
    assert moved_at - killed_at <= CFG.no_report_s + 0.5
    # After the move (and a second to settle) A's packets reach B again.
    sent_after = [s for s, t in a.tx.sent.items() if t >= moved_at + 1.0 and t <= killed_at + 5]
    arrived = [s for s in sent_after if s in b.rx.arrived]
    assert sent_after and len(arrived) >= 0.95 * len(sent_after)
    # The round trips: each report's RTT halves to about the true one-way delay A->B.
    one_way = [b.rx.arrived[s] - t for s, t in a.tx.sent.items() if s in b.rx.arrived]
    rtts = sorted(r for _, r in a.rtt)
    assert rtts and one_way
    median_half = rtts[len(rtts) // 2] / 2
    true_median = sorted(one_way)[len(one_way) // 2]
    assert abs(median_half - true_median) <= 0.25 * true_median
    # What the listener's call record says of it (JSON-ready).
    record = json.loads(json.dumps(route_record(a)))
    assert record["route_failovers"] == a.route_failovers and record["route_no_spare"] == 0
    assert [why for _, why in record["route_verdicts"]] == [w for _, w in a.route_verdicts]
    assert record["rtt_ms"]["n"] == len(a.rtt)
    assert record["one_way_estimate_ms"]["p50"] == pytest.approx(
        record["rtt_ms"]["p50"] / 2, abs=0.1
    )


# A lying or flooding peer: any report the media format carries, any number of them at one
# instant, arrival and check times that may run backwards or jump ahead.
lies = st.builds(
    lambda highest, echo, lost, hold: ReceiverReport(
        min(echo, highest), hold, highest, min(lost, highest, 2**24 - 1)
    ),
    st.integers(0, 2**32 - 1) | st.integers(0, 300),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**24 - 1) | st.integers(0, 50),
    st.integers(0, 2**16 - 1),
)
steps = st.lists(
    st.tuples(
        st.sampled_from(["sent", "report", "check", "flood"]),
        st.floats(-1.0, 1.0) | st.floats(-1e6, 1e6),  # time step, backwards too
        lies,
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_a_lying_peer_and_a_jumping_clock_cost_a_bounded_window(
    script: list[tuple[str, float, ReceiverReport]],
) -> None:
    """No exception, at most MAX_WINDOW_REPORTS kept, a loss in [0, 1] or None, and (while
    the check times do not run backwards) verdicts at least a cooldown apart."""
    health, t, last_check, verdicts = RouteHealth(), 0.0, -1e9, list[float]()
    for kind, step, report in script:
        t += step
        if kind == "sent":
            health.sent(t)
        elif kind in ("report", "flood"):
            for _ in range(1000 if kind == "flood" else 1):
                health.report(report, t)
        elif t >= last_check:
            last_check = t
            if health.check(t) is not None:
                verdicts.append(t)
        assert len(health._window) <= MAX_WINDOW_REPORTS
        loss = health.loss()
        assert loss is None or 0.0 <= loss <= 1.0
    assert all(b - a >= CFG.cooldown_s for a, b in itertools.pairwise(verdicts))


def test_a_flood_of_reports_keeps_the_window_bounded() -> None:
    """Regression: 100 000 reports inside one loss window were all kept (memory, and a scan
    of them on every check)."""
    health = RouteHealth()
    for k in range(100_000):
        health.report(ReceiverReport(k, 0, k, 0), 1.0 + k * 1e-6)
    assert len(health._window) == MAX_WINDOW_REPORTS
    assert health.loss() == 0.0
