"""Which listed nodes this node's own loop cover proved reachable, per layer (sans-IO).

    >>> r = LoopReachability()
    >>> r.sent(12345, [b"a" * 16, b"b" * 16], now=0.0)
    >>> r.returned(12345, now=0.3)
    True
    >>> sorted(r.proven(now=1.0))
    [b'aaaaaaaaaaaaaaaa', b'bbbbbbbbbbbbbbbb']

**What "reachable" means.** A node sends loop cover (``mixing.loop_cover_rate_hz``): a
drop packet through one random node of every other layer and back to itself. When such a
packet comes back, every node on its path received it, processed it and sent it on, so
each of them is *reachable* through the network from this node, and the first of them
(the next layer) directly. A listed node counts as reachable while one of this node's
loops through it came back within the last ``window_s`` (REACHABLE_WINDOW_S). Nothing is
probed beyond the cover the node already sends: no extra packet, no extra socket.
A loop never crosses the node's own layer, so that layer has no count.

How a returned loop is matched to its path without touching the packet format: the
last hop of a loop is this node, which discards the packet at once, so the delay it
writes for itself is seen by no one else and holds nothing; it carries a random marker
(uniform in 0..``max_delay_us``, mixnode.core), which the returning packet shows again
when the node opens it. Workers report the loops they sent (marker and path) and the
drop packets that ended here (their last-hop delay); the daemon matches them here,
whichever worker got which. A marker seen twice in flight is ambiguous and neither
counts; a sent loop unmatched after ``timeout_s`` is forgotten, and so is a returned
drop after BACK_WAIT_S (the reports of the other workers have come in by then). Clients'
drop cover ending at a gateway carries small exponential delays; one equal to a marker
in flight (odds of a few in 10^7 per packet at the default 10 s ``max_delay_us``) would
credit that loop's path once.

Undercount, not overcount: with ``n`` nodes in a layer and ``r`` loops a second, a node
is visited about ``r * window_s / n`` times a window, so with many nodes per layer a
reachable node may not show; raise the cover rate if the count matters there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from overlay import TopologyDocument

REACHABLE_WINDOW_S = 120.0  # s: a node proven within this long counts as reachable
LOOP_TIMEOUT_S = 30.0  # s: a sent loop not back by then is forgotten
BACK_WAIT_S = 3.0  # s: a returned drop waits this long for its loop's report, then goes
MAX_PENDING = 4096  # unmatched entries kept at most, each way (oldest go first)


class LoopReachability:
    """Matches sent loops with returned drop packets; remembers when each node was proven.

    Times are seconds on one monotonic clock the caller supplies. Node ids are the
    16-byte ids of the topology document.
    """

    def __init__(
        self, window_s: float = REACHABLE_WINDOW_S, timeout_s: float = LOOP_TIMEOUT_S
    ) -> None:
        self.window_s = window_s
        self.timeout_s = timeout_s
        self._sent: dict[int, tuple[float, tuple[bytes, ...]]] = {}
        self._back: dict[int, float] = {}
        self._ambiguous: dict[int, float] = {}  # delays seen twice in flight, until timeout
        self._proven: dict[bytes, float] = {}  # node id -> when a loop through it came back

    def sent(self, delay_us: int, path: Sequence[bytes], now: float) -> None:
        """A loop left with last-hop delay ``delay_us`` through ``path`` (node ids, this
        node excluded)."""
        self._expire(now)
        if delay_us in self._ambiguous:
            return
        if delay_us in self._back:
            del self._back[delay_us]
            self._prove(path, now)
        elif delay_us in self._sent:
            del self._sent[delay_us]
            self._ambiguous[delay_us] = now
        else:
            self._sent[delay_us] = (now, tuple(path))
            _bound(self._sent)

    def returned(self, delay_us: int, now: float) -> bool:
        """A drop packet with last-hop delay ``delay_us`` ended here; True if it matched
        a loop already reported sent."""
        self._expire(now)
        if delay_us in self._ambiguous:
            return False
        got = self._sent.pop(delay_us, None)
        if got is not None:
            self._prove(got[1], now)
            return True
        if delay_us in self._back:
            del self._back[delay_us]
            self._ambiguous[delay_us] = now
        else:
            self._back[delay_us] = now
            _bound(self._back)
        return False

    def proven(self, now: float) -> set[bytes]:
        """Node ids a loop proved within the last ``window_s``."""
        return {n for n, t in self._proven.items() if now - t <= self.window_s}

    def per_layer(self, doc: TopologyDocument, me: bytes, now: float) -> dict[int, tuple[int, int]]:
        """``{layer: (reachable, listed)}`` for every layer of ``doc`` but this node's own
        (gateways are layer 0), counting other nodes only."""
        mine = doc.by_id.get(me)
        own = None if mine is None else mine.layer
        ok = self.proven(now)
        out: dict[int, tuple[int, int]] = {}
        rings = [(0, doc.gateways)] + [(i + 1, nodes) for i, nodes in enumerate(doc.layers)]
        for layer, nodes in rings:
            if layer == own:
                continue
            others = [n for n in nodes if n.node_id != me]
            out[layer] = (sum(1 for n in others if n.node_id in ok), len(others))
        return out

    def _prove(self, path: Iterable[bytes], now: float) -> None:
        for node_id in path:
            self._proven[node_id] = now
        if len(self._proven) > 4 * MAX_PENDING:
            old = [n for n, t in self._proven.items() if now - t > self.window_s]
            for n in old:
                del self._proven[n]

    def _expire(self, now: float) -> None:
        """Forget what waited too long (entries are in time order: stop at the first
        young one)."""
        _drop_older(self._back, now - BACK_WAIT_S)
        _drop_older(self._ambiguous, now - self.timeout_s)
        sent = self._sent
        while sent:
            d, (t, _) = next(iter(sent.items()))
            if t >= now - self.timeout_s:
                break
            del sent[d]


def _drop_older(table: dict[int, float], before: float) -> None:
    while table:
        d, t = next(iter(table.items()))
        if t >= before:
            break
        del table[d]


_V = TypeVar("_V")


def _bound(table: dict[int, _V]) -> None:
    """Drop the oldest entries (insertion order) beyond MAX_PENDING."""
    while len(table) > MAX_PENDING:
        del table[next(iter(table))]
