"""Route failover through a testnet of real node processes (slow: about 30 s).

Two callers in this process, each on its own UDP gateway link, with one route per call
direction and 2 spares (the DESKTOP policy). Mid-call the mix process of A's route is
killed (its whole process group, workers included); A's receiver reports from B stop
showing progress, A moves to a spare route, and B hears A again.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
from testnet_support import process_alive, small_testnet

from client import InMemoryChannel, artificial_voice
from client._tasks import open_background
from client.call import Address, Caller, Contact
from client.gateway_link import GatewayLink, open_gateway_link
from mixnode.directory_client import DirectoryClient
from overlay import MailboxKey, NodeDescriptor, RoutePolicy, TopologyDocument, UplinkScheduler
from testbed.testnet import TestnetState

pytestmark = pytest.mark.slow

SLOT_S = 0.04
BEFORE_KILL_S = 4.0  # the call runs this long on its first route
AFTER_KILL_S = 9.0  # then this long after the kill
SETTLE_S = 1.5  # after the move: the new route's packets reach the peer, playout adapts




async def _call(doc: TopologyDocument, state: TestnetState) -> tuple[Caller, Caller, float, bytes]:
    """A calls B, talks; a mix of A's route is killed; A hangs up. (A, B, kill time, mix)."""
    gw_a, gw_b = doc.gateways[0], doc.gateways[1]
    key_a, key_b = MailboxKey.generate(), MailboxKey.generate()
    a_addr, b_addr = (
        Address(gw_a.node_id, key_a.mailbox_id),
        Address(gw_b.node_id, key_b.mailbox_id),
    )
    chan_a, chan_b = InMemoryChannel.pair()
    signal_key = os.urandom(32)

    def caller(
        link: GatewayLink, me: Address, peer: Address, chan: InMemoryChannel, seed: int
    ) -> Caller:
        uplink = UplinkScheduler(
            doc, (me.gateway_id, me.mailbox), (peer.gateway_id, peer.mailbox), slot_s=SLOT_S,
            mean_delay_s=0.0225, routing=RoutePolicy(per_call=True, failover=2),
        )  # fmt: skip
        voice = artificial_voice(BEFORE_KILL_S + AFTER_KILL_S + 8, seed=seed)
        return Caller(link, doc, me, Contact(peer, signal_key), chan, voice,
                      uplink=uplink)  # fmt: skip

    def link_to(gw: NodeDescriptor, key: MailboxKey) -> AbstractAsyncContextManager[GatewayLink]:
        assert gw.client_port is not None
        return open_gateway_link(
            doc.geometry, (gw.host, gw.client_port), gw.epoch_key(doc.epoch), key
        )

    async with link_to(gw_a, key_a) as link_a, link_to(gw_b, key_b) as link_b:
        a, b = caller(link_a, a_addr, b_addr, chan_a, 1), caller(link_b, b_addr, a_addr, chan_b, 2)
        async with open_background() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            await trio.sleep(0.5)
            a.place()
            with trio.fail_after(15):
                await a.connected.wait()
                await b.connected.wait()
            await trio.sleep(BEFORE_KILL_S)
            assert a.route_failovers == 0, a.route_verdicts
            route_a, route_b = a.uplink.route, b.uplink.route
            assert route_a is not None and route_b is not None
            # A mix of A's route, in a layer where B's route differs when there is one (so
            # that only A's direction dies; if none, both move).
            layer = next((i for i in (1, 2, 3) if route_a[i] != route_b[i]), 2)
            victim = route_a[layer]
            port = doc.node(victim).port
            proc = next(p for p in state.nodes("mix") if p.port == port)
            os.killpg(proc.pid, signal.SIGKILL)  # the node and its workers
            killed_at = trio.current_time()
            await trio.sleep(AFTER_KILL_S)
            a.hangup()
            with trio.fail_after(10):
                await b.ended.wait()
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
    return a, b, killed_at, victim


def test_a_killed_mix_on_the_callers_route_moves_the_call_to_a_spare(tmp_path: Path) -> None:
    with small_testnet(tmp_path, gateways=2, layers=3, per_layer=2) as state:
        doc = DirectoryClient(
            state.authorities, state.authority_key_bytes(), state.threshold
        ).fetch()
        a, b, killed_at, victim = trio.run(_call, doc, state)
    assert not any(process_alive(p.pid) for p in TestnetState.load(tmp_path).processes)

    assert a.route_failovers >= 1 and a.route_no_spare == 0, a.route_verdicts
    assert a.uplink.route is not None and victim not in a.uplink.route  # a disjoint spare
    moved_at, why = a.route_verdicts[0]
    failover_s = moved_at - killed_at
    assert failover_s <= 3.0 + 1.0, a.route_verdicts  # NO_REPORT_S, or STALL_S + a round trip

    # A's media after the move (once settled) reaches B and plays: late + lost settle.
    hangup = max(a.tx.sent.values())
    after = [s for s, t in a.tx.sent.items() if moved_at + SETTLE_S <= t <= hangup - 1.0]
    lost = [s for s in after if s not in b.rx.arrived]
    played = [kind for _, kind, t in b.rx.items if moved_at + SETTLE_S + 0.5 <= t <= hangup - 1.0]
    late_or_lost = sum(kind != "frame" for kind in played) / max(1, len(played))
    # (at least 2 s of packets even on a loaded machine, where the move may take longer)
    assert len(after) >= 50 and len(lost) <= 0.03 * len(after), (len(lost), len(after), why)
    assert played and late_or_lost <= 0.10, late_or_lost

    # The one-way estimate (half the median round trip from B's reports) against the true
    # one-way delay A -> B (send at A to arrival at B, on CLOCK_MONOTONIC).
    to_mono_a, to_mono_b = a.tx.to_monotonic_s, b.rx.to_monotonic_s
    true_ms = sorted(
        1000 * ((b.rx.arrived[s] + to_mono_b) - (t + to_mono_a))
        for s, t in a.tx.sent.items()
        if s in b.rx.arrived
    )
    rtt_ms = sorted(1000 * r for _, r in a.rtt)
    estimate_ms, true_median_ms = rtt_ms[len(rtt_ms) // 2] / 2, true_ms[len(true_ms) // 2]
    print(
        f"failover {failover_s:.2f} s after the kill ({why}); one-way estimate p50 "
        f"{estimate_ms:.0f} ms vs true one-way p50 {true_median_ms:.0f} ms A->B "
        f"(rtt p50 {rtt_ms[len(rtt_ms) // 2]:.0f} ms over {len(rtt_ms)} reports); after the "
        f"move {len(lost)}/{len(after)} lost, {late_or_lost:.1%} of B's playout concealed",
        file=sys.stderr,
    )
    assert 0.5 * true_median_ms <= estimate_ms <= 2.0 * true_median_ms
