"""Peers reachable per layer: this node's loop cover that came back proves its path.

The core writes a random marker as the last hop's delay of each loop (that hop is the
node itself) and sees it again when the drop packet ends here; mixnode.reachability
matches the two, whichever worker sent or received which.
"""

from __future__ import annotations

import os

from directory_support import make_node

from mixnode.core import ForwardAt, NodeCore
from mixnode.reachability import BACK_WAIT_S, LoopReachability
from overlay import VOICE, Hop, NodeRole, TopologyDocument, public_key

ME = b"m" * 16


def test_a_returned_loop_proves_its_path_whichever_report_comes_first() -> None:
    r = LoopReachability(window_s=60.0)
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    r.sent(7, [a, b], now=0.0)
    assert r.returned(7, now=0.2) and r.proven(1.0) == {a, b}
    assert r.returned(9, now=0.3) is False  # back before its sender's report
    r.sent(9, [c], now=0.5)
    assert r.proven(1.0) == {a, b, c}
    assert r.proven(60.4) == {c}  # a and b were last proven at 0.2
    assert r.proven(61.0) == set()


def test_unmatched_and_ambiguous_loops_prove_nothing() -> None:
    r = LoopReachability()
    r.sent(5, [b"a" * 16], now=0.0)
    r.sent(5, [b"b" * 16], now=0.1)  # two loops in flight with one marker: neither counts
    assert r.returned(5, now=0.2) is False
    r.returned(6, now=1.0)
    r.sent(6, [b"c" * 16], now=1.0 + BACK_WAIT_S + 1)  # the drop waited too long
    r.sent(8, [b"d" * 16], now=0.0)
    assert r.returned(8, now=100.0) is False  # the loop was forgotten after its timeout
    assert r.proven(101.0) == set()


def test_the_core_marks_each_loop_and_sees_the_mark_come_back() -> None:
    sks = [os.urandom(32) for _ in range(2)]
    path = [Hop(b"x" * 16, public_key(sks[0]), 1000), Hop(ME, public_key(sks[1]), 0)]
    core = NodeCore(VOICE, ME, cover_rate_hz=20.0)
    core.install_key(1, sks[1], 2e9)
    core.set_loop_paths(lambda: path, now=0.0)
    actions = core.pop_due(1.0)
    assert actions and len(core.loops_sent) == len(actions)
    assert all(ids == (b"x" * 16,) for _, ids in core.loops_sent)
    # The next hop x unwraps its layer; the rest comes back here and is discarded.
    x = NodeCore(VOICE, b"x" * 16)
    x.install_key(1, sks[0], 2e9)
    for a in actions:
        assert isinstance(a, ForwardAt)
        assert x.receive(a.packet, now=1.0, prev_hop="me") is None
    for fwd in x.pop_due(1.002):
        assert isinstance(fwd, ForwardAt)
        assert core.receive(fwd.packet, now=2.0, prev_hop="x") is None
    assert sorted(core.loops_back) == sorted(d for d, _ in core.loops_sent)
    r = LoopReachability()
    for d, ids in core.loops_sent:
        r.sent(d, ids, now=2.0)
    assert all(r.returned(d, now=2.0) for d in core.loops_back)


def test_per_layer_counts_other_layers_and_other_nodes_only() -> None:
    epoch = 1000
    nodes = [make_node(i, role, layer, epoch, 10)[0] for i, (role, layer) in enumerate(
        [(NodeRole.GATEWAY, 0), (NodeRole.GATEWAY, 0), (NodeRole.MIX, 1), (NodeRole.MIX, 1),
         (NodeRole.MIX, 2), (NodeRole.MIX, 3)])]  # fmt: skip
    doc = TopologyDocument(epoch, epoch * 10, epoch * 10 + 10, VOICE, 3, tuple(nodes))
    me = nodes[2]  # a mix of layer 1
    r = LoopReachability()
    r.sent(1, [nodes[4].node_id, nodes[5].node_id, nodes[0].node_id], now=0.0)
    r.returned(1, now=0.1)
    assert r.per_layer(doc, me.node_id, now=1.0) == {0: (1, 2), 2: (1, 1), 3: (1, 1)}
