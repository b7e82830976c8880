"""A plain per-packet discrete-event engine: the baseline the vectorized engine is checked
and benchmarked against. Same model as ``sim._model.transit``, one heap event per hop.

    >>> import numpy as np
    >>> from sim import load_scenario
    >>> from sim._model import make_streams
    >>> sc = load_scenario({"users": {"n_users": 4, "n_calls": 1, "call_s": 2.0}})
    >>> st = make_streams(sc, np.random.default_rng(1))
    >>> arrive, hops = transit_eventloop(sc, np.random.default_rng(2), st)
    >>> hops == len(arrive) * sc.hops
    True
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from ._model import Streams
from ._scenario import Dist, Scenario


def _draw(dist: Dist, rng: np.random.Generator) -> float:
    """One delay in seconds."""
    a = dist.a_ms / 1000.0
    if dist.kind == "constant":
        return a
    if dist.kind == "uniform":
        return a + rng.random() * (dist.b_ms / 1000.0 - a)
    if dist.kind == "exponential":
        return rng.exponential(a) if a > 0 else 0.0
    return a * math.exp(dist.b_ms * rng.standard_normal())


def transit_eventloop(
    sc: Scenario, rng: np.random.Generator, st: Streams
) -> tuple[np.ndarray, int]:
    """Arrival time of every packet at its receiver (inf if lost), and packet-hops."""
    net, v = sc.network, sc.voice
    hops = net.hops
    ser = net.serialization_s
    mean_mix = sc.mixing.delay_mean_ms / 1000.0
    slot = v.slot_ms / 1000.0
    slot_dl = slot / v.downlink_speedup
    n = len(st.ready_s)
    arrive = [math.inf] * n
    last_slot: dict[int, int] = {}
    heap: list[tuple[float, int, int]] = []
    for i in range(n):
        ready = float(st.ready_s[i])
        if sc.cover:
            ph = float(st.up_phase_s[st.stream[i]])
            ready = ph + math.ceil((ready - ph) / slot) * slot
        heap.append((ready, i, 0))
    heapq.heapify(heap)
    while heap:
        t, i, h = heapq.heappop(heap)
        if h == 0:  # leaves the sender on the access link
            if rng.random() < net.link_loss:
                continue
            heapq.heappush(heap, (t + _draw(net.access_delay, rng) + ser, i, 1))
            continue
        if h <= hops:  # at node h: unwrap, wait the sender-chosen delay
            t += _draw(net.processing, rng) + rng.exponential(mean_mix)
            if h == hops:  # the exit gateway hands it to the downlink queue at time t
                heapq.heappush(heap, (t, i, hops + 1))
                continue
            if rng.random() < net.link_loss:
                continue
            heapq.heappush(heap, (t + _draw(net.link_delay, rng) + ser, i, h + 1))
            continue
        if rng.random() < net.link_loss:  # exit gateway -> receiver link
            continue
        s = int(st.stream[i])
        if sc.cover:  # FIFO in the order packets enter the queue: one per downlink slot
            ph = float(st.down_phase_s[s])
            k = max(math.ceil((t - ph) / slot_dl), last_slot.get(s, -(1 << 62)) + 1)
            last_slot[s] = k
            t = ph + k * slot_dl
        arrive[i] = t + _draw(net.access_delay, rng) + ser
    return np.array(arrive), n * hops
