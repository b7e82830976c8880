"""The vectorized packet engine: voice streams, hop-by-hop transit, gateway shaping.

    >>> import numpy as np
    >>> from sim import load_scenario
    >>> from sim._model import make_streams, transit
    >>> sc = load_scenario({"users": {"n_users": 4, "n_calls": 2, "call_s": 5.0}})
    >>> st = make_streams(sc, np.random.default_rng(1))
    >>> tr = transit(sc, np.random.default_rng(2), st)
    >>> bool((tr.arrive_s[~tr.lost] > st.ready_s[~tr.lost]).all())
    True

Every packet crosses ``hops + 1`` links: client -> entry gateway -> mix layers -> exit
gateway -> client. At each hop it waits a processing time and the sender-chosen
exponential delay. With cover (our design) the uplink leaves only on the sender's
constant-rate slot grid and the exit gateway delivers on a constant-rate downlink grid;
without cover (the baseline) both go out at once. Times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._scenario import Scenario

CHUNK_PACKETS = 1 << 18  # packets per vectorized block: bounds memory to a few MB per array
# A packet due exactly at its playout time is on time. arrive - ready carries rounding
# errors of ~1e-16 s, so equal delays (constant links, slot grids) would otherwise be judged
# late or not at random; the real jitter buffer (client._jitter) allows the same 1 ns.
PLAYOUT_TOLERANCE_S = 1e-9


@dataclass(frozen=True, slots=True)
class Streams:
    """Directed media streams and their packets, sorted by (stream, ready time)."""

    n_streams: int
    stream: np.ndarray  # int64 per packet
    ready_s: np.ndarray  # when the packet's last frame is encoded
    spurt: np.ndarray  # int64 per packet: global talk-spurt number (jitter buffer adapts per spurt)
    warmup: np.ndarray  # bool per packet: call set-up traffic that only primes the buffer
    up_phase_s: np.ndarray  # per stream: phase of the sender's uplink slot grid
    down_phase_s: np.ndarray  # per stream: phase of the receiver's downlink slot grid
    start_s: np.ndarray  # per stream: call start


@dataclass(frozen=True, slots=True)
class Transit:
    """What happened to each packet; all arrays are per packet, seconds."""

    send_s: np.ndarray  # uplink departure (slot) time
    exit_s: np.ndarray  # ready to leave the exit gateway (after its own delay)
    arrive_s: np.ndarray  # arrival at the receiving client
    lost: np.ndarray  # bool: lost on some link
    network_s: np.ndarray  # link propagation plus serialization, all links
    processing_s: np.ndarray  # per-hop processing, summed
    mixing_s: np.ndarray  # sender-chosen delays, summed
    packet_hops: int  # packets x hops simulated


def talk_spurts(
    sc: Scenario, rng: np.random.Generator, starts_s: np.ndarray, length_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stream, start_s, length_s) of every talk spurt of streams starting at ``starts_s``."""
    n = len(starts_s)
    if sc.talk.model == "continuous":
        return np.arange(n), starts_s.copy(), np.full(n, length_s)
    on, off = sc.talk.mean_on_s, sc.talk.mean_off_s
    per = int(np.ceil(length_s / (on + off) * 1.5)) + 8
    ons = rng.exponential(on, (n, per))
    offs = rng.exponential(off, (n, per))
    # Each stream starts at a random point of its on/off cycle: in silence with probability
    # off/(on+off), and then (memoryless) for a fresh exponential silence.
    lead = np.where(rng.random(n) < off / (on + off), rng.exponential(off, n), 0.0)
    begin = lead[:, None] + np.concatenate(
        [np.zeros((n, 1)), np.cumsum(ons + offs, axis=1)[:, :-1]], axis=1
    )
    keep = begin < length_s
    sid = np.broadcast_to(np.arange(n)[:, None], (n, per))[keep]
    spurt_len = np.minimum(ons, length_s - begin)[keep]
    return sid, starts_s[sid] + begin[keep], spurt_len


def make_streams(
    sc: Scenario,
    rng: np.random.Generator,
    *,
    starts_s: np.ndarray | None = None,
    length_s: float | None = None,
) -> Streams:
    """Both directions of every call: packets of talk spurts plus a warm-up burst.

    By default ``users.n_calls`` calls of ``users.call_s`` starting at 0.
    """
    v = sc.voice
    slot = v.slot_ms / 1000.0
    frame = v.frame_ms / 1000.0
    if starts_s is None:
        starts_s = np.zeros(2 * sc.users.n_calls)
    length = sc.users.call_s if length_s is None else length_s
    n = len(starts_s)
    sid, sp_start, sp_len = talk_spurts(sc, rng, starts_s, length)
    # A spurt starts on the 20 ms audio frame grid; a packet is ready when its last frame is.
    sp_start = np.floor(sp_start / frame) * frame
    n_pk = np.ceil(np.ceil(sp_len / frame) / v.frames_per_packet).astype(np.int64)
    n_pk = np.maximum(n_pk, 1)
    # Warm-up: call set-up gives the receiver jitter_window delay samples before media.
    warm = v.jitter_window
    w_sid = np.repeat(np.arange(n), warm)
    w_idx = np.tile(np.arange(warm), n)
    w_ready = starts_s[w_sid] - (warm - w_idx) * slot - 1.0
    p_sid = np.repeat(sid, n_pk)
    first = np.repeat(np.cumsum(n_pk) - n_pk, n_pk)
    j = np.arange(int(n_pk.sum())) - first
    p_ready = np.repeat(sp_start, n_pk) + (j + 1) * slot + v.codec_lookahead_ms / 1000.0
    p_spurt = np.repeat(np.arange(len(sid)), n_pk) + 1
    stream = np.concatenate([w_sid, p_sid])
    ready = np.concatenate([w_ready, p_ready])
    spurt = np.concatenate([np.zeros(len(w_sid), np.int64), p_spurt])
    warmup = np.concatenate([np.ones(len(w_sid), bool), np.zeros(len(p_sid), bool)])
    order = np.lexsort((ready, stream))
    return Streams(
        n_streams=n,
        stream=stream[order],
        ready_s=ready[order],
        spurt=spurt[order],
        warmup=warmup[order],
        up_phase_s=rng.random(n) * slot,
        down_phase_s=rng.random(n) * slot / v.downlink_speedup,
        start_s=np.asarray(starts_s, dtype=float),
    )


def uplink_send(sc: Scenario, st: Streams) -> np.ndarray:
    """Uplink departure: the next slot of the sender's grid (cover) or at once (baseline)."""
    if not sc.cover:
        return st.ready_s.copy()
    slot = sc.voice.slot_ms / 1000.0
    phase = st.up_phase_s[st.stream]
    return np.asarray(phase + np.ceil((st.ready_s - phase) / slot) * slot, dtype=np.float64)


def _hops_block(
    sc: Scenario, rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-packet sums over hops of (uplink link, inner links, processing, mixing, loss)."""
    net = sc.network
    h = net.hops
    ser = net.serialization_s
    up = net.access_delay.sample(rng, n) + ser
    f32 = np.float32  # per-hop draws: float32 is exact to well under a microsecond here
    # Hop-major (hops, n) blocks: summing rows is a few contiguous adds.
    inner = net.link_delay.sample(rng, (h - 1, n), f32).sum(axis=0, dtype=np.float64)
    inner += (h - 1) * ser
    proc = net.processing.sample(rng, (h, n), f32).sum(axis=0, dtype=np.float64)
    mix = rng.standard_exponential((h, n), dtype=f32).sum(axis=0, dtype=np.float64)
    mix *= sc.mixing.delay_mean_ms / 1000.0
    p_lost = 1.0 - (1.0 - net.link_loss) ** net.links
    lost = rng.random(n) < p_lost
    return up, inner, proc, mix, lost


def downlink_queue(
    exit_s: np.ndarray, stream: np.ndarray, phase_s: np.ndarray, slot_s: float
) -> np.ndarray:
    """Departure from a constant-rate FIFO downlink: one packet per slot per stream.

    Lindley recursion k_i = max(c_i, k_(i-1) + 1) in slot units, solved for all streams at
    once as k_i = i + cummax(c_j - j) within each stream (segments kept apart by an offset).
    """
    if len(exit_s) == 0:
        return exit_s.copy()
    # Streams are sorted and each stream's packets nearly so: a stable sort of one float key
    # (stream offset plus time) is much cheaper than a lexsort.
    lo = float(exit_s.min())
    span = float(exit_s.max()) - lo + 1.0
    order = np.argsort((exit_s - lo) + stream * span, kind="stable")
    s = stream[order]
    c = np.ceil((exit_s[order] - phase_s[s]) / slot_s).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    seg = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1
    m = np.arange(len(c)) - starts[seg]
    val = c - m
    span = int(val.max() - val.min()) + 1
    run = np.maximum.accumulate(val + seg * span) - seg * span
    k = m + run
    out = np.empty_like(exit_s)
    out[order] = phase_s[s] + k * slot_s
    return out


def transit(sc: Scenario, rng: np.random.Generator, st: Streams) -> Transit:
    """Carry every packet of ``st`` through the network, vectorized in blocks."""
    n = len(st.ready_s)
    send = uplink_send(sc, st)
    parts = [_hops_block(sc, rng, min(CHUNK_PACKETS, n - i)) for i in range(0, n, CHUNK_PACKETS)]
    up, inner, proc, mix, lost_any = (
        np.concatenate([p[k] for p in parts]) if parts else np.empty(0) for k in range(5)
    )
    lost = lost_any.astype(bool)
    exit_s = send + up + inner + proc + mix
    down_link = sc.network.access_delay.sample(rng, n) + sc.network.serialization_s
    if sc.cover:
        slot_dl = sc.voice.slot_ms / 1000.0 / sc.voice.downlink_speedup
        keep = ~lost
        leave = np.full(n, np.inf)
        leave[keep] = downlink_queue(exit_s[keep], st.stream[keep], st.down_phase_s, slot_dl)
    else:
        leave = exit_s
    arrive = leave + down_link
    arrive[lost] = np.inf
    return Transit(
        send_s=send,
        exit_s=exit_s,
        arrive_s=arrive,
        lost=lost,
        network_s=up + inner + down_link,
        processing_s=proc,
        mixing_s=mix,
        packet_hops=n * sc.hops,
    )


def playout(
    st: Streams, tr: Transit, target_loss: float, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive jitter buffer: per talk spurt, the playout delay (from ready time) is the
    (1 - target_loss) quantile of the last ``window`` delays the receiver got before the
    spurt's first packet arrived. All spurts of all streams at once.

    Returns (playout delay per packet in seconds, late flag per packet).
    """
    n = len(st.ready_s)
    delay = tr.arrive_s - st.ready_s
    play = np.full(n, np.nan)
    if n == 0:
        return play, np.zeros(0, bool)
    # Spurts are contiguous runs of (stream, spurt) in the (stream, ready) order.
    new = np.r_[True, (st.stream[1:] != st.stream[:-1]) | (st.spurt[1:] != st.spurt[:-1])]
    first = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    g_stream = st.stream[first]
    g_first_arrival = np.minimum.reduceat(tr.arrive_s, first)
    g_max_delay = np.maximum.reduceat(np.where(np.isfinite(delay), delay, -np.inf), first)
    # Each stream's packets in arrival order, as one key: stream offset plus time.
    finite = np.isfinite(tr.arrive_s)
    lo = float(tr.arrive_s[finite].min()) if finite.any() else 0.0
    span = (float(tr.arrive_s[finite].max()) - lo if finite.any() else 0.0) + 2.0
    key = st.stream * span + np.where(finite, tr.arrive_s - lo, span - 1.0)
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    d_sorted = delay[order]
    s_start = np.searchsorted(st.stream[order], np.arange(st.n_streams), side="left")
    # The media spurts (warm-up spurt 0 only primes the buffer).
    # A spurt whose packets were all lost plays nothing: leave its playout delay unset.
    media = (st.spurt[first] != 0) & np.isfinite(g_first_arrival)
    q_key = g_stream[media] * span + (g_first_arrival[media] - lo)
    known = np.searchsorted(key_sorted, q_key, side="left")
    begin = np.maximum(s_start[g_stream[media]], known - window)
    idx = known[:, None] - window + np.arange(window)[None, :]
    valid = idx >= begin[:, None]
    # Lost packets never arrive, so windows hold finite delays only; a window is short
    # only when the stream has not yet delivered ``window`` packets.
    full = valid.all(axis=1)
    pd = np.full(int(media.sum()), np.nan)
    if full.any():
        pd[full] = np.quantile(d_sorted[idx[full]], 1.0 - target_loss, axis=1)
    for j in np.flatnonzero(~full):
        if known[j] > begin[j]:
            pd[j] = np.quantile(d_sorted[begin[j] : known[j]], 1.0 - target_loss)
    has = ~np.isnan(pd)
    pd[~has] = g_max_delay[media][~has]
    g_play = np.full(len(first), np.nan)
    g_play[media] = pd
    play = g_play[group]
    late = ~(delay <= play + PLAYOUT_TOLERANCE_S)
    return play, late
