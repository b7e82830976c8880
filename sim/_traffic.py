"""Traffic analysis: N users online, K calls, a global passive adversary on every
client-gateway link (and optionally a fraction of compromised nodes).

    >>> from sim import load_scenario, run_attacks
    >>> sc = load_scenario({"users": {"n_users": 60, "n_calls": 6, "call_s": 20.0,
    ...                               "duration_s": 30.0}, "adversary": {"targets": 6}})
    >>> rep = run_attacks(sc, attacks=["flow_correlation"])
    >>> sorted(rep.designs)
    ['baseline', 'design']

The adversary time-stamps packets at the client end of each access link. With cover
(our design) each online user's uplink and downlink are constant-rate slot grids, whatever
they carry; in the baseline an uplink shows only real media and a downlink shows media as
it arrives. Attacks read those observations through ``Observations`` and return metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ._model import Streams, make_streams, transit
from ._scenario import DAY_S, Scenario

CHUNK_USERS = 1000  # users per block of binned observations (bounds memory)
LOG2 = np.log(2.0)


@dataclass(frozen=True, slots=True)
class Population:
    """Users, their gateways, online sessions, call-rate periods and the calls between them."""

    n_users: int
    gateway: np.ndarray  # per user
    up_phase_s: np.ndarray  # per user: phase of the uplink slot grid
    down_phase_s: np.ndarray  # per user: phase of the downlink slot grid
    sess_user: np.ndarray  # online sessions, sorted by user
    sess_start_s: np.ndarray
    sess_end_s: np.ndarray
    caller: np.ndarray  # per call pair
    callee: np.ndarray
    call_start_s: np.ndarray  # (pairs, calls_per_pair)
    call_s: float
    gateway_bad: np.ndarray  # per gateway: compromised
    mix_bad: np.ndarray  # (mix layers, mixes per layer): compromised
    reachable: np.ndarray  # (pairs, calls_per_pair): callee online by its schedule at the ring
    clock_s: float = 0.0  # time of day (s) at the start of the run
    idle_slot_factor: int = 1  # idle clients send one packet per this many slots
    high_user: np.ndarray | None = None  # call-rate periods, sorted by user (idle factor > 1)
    high_start_s: np.ndarray | None = None
    high_end_s: np.ndarray | None = None


def make_population(sc: Scenario, rng: np.random.Generator) -> Population:
    """Draw gateways, phases, online schedules and call pairs; the policy (``sc.policy``)
    decides the sessions outside calls, how long both ends stay online around each call and
    when a client runs at the call rate. Scenarios whose policy is the default draw exactly
    what they drew before the policy section existed."""
    u, pol = sc.users, sc.policy
    n, dur = u.n_users, u.duration_s
    slot = sc.voice.slot_ms / 1000.0
    perm = rng.permutation(n)[: 2 * u.n_calls]
    caller, callee = perm[0::2], perm[1::2]
    part = dur / u.calls_per_pair
    base = np.arange(u.calls_per_pair) * part
    call_start = base[None, :] + rng.random((u.n_calls, u.calls_per_pair)) * (part - u.call_s)
    churn = pol.schedule == "churn" and u.mean_online_s > 0
    if churn:
        s_user, s_start, s_end = _churn(rng, n, dur, u.mean_online_s, u.mean_offline_s)
    elif pol.schedule in ("always", "churn"):
        s_user, s_start, s_end = np.arange(n), np.zeros(n), np.full(n, dur)
    else:  # daily windows are drawn below, after every draw of the older scenarios
        s_user = s_start = s_end = np.zeros(0)
    gateway = rng.integers(0, sc.network.gateways, n)
    up_phase = rng.random(n) * slot
    down_phase = rng.random(n) * slot / sc.voice.downlink_speedup
    gateway_bad = _compromise(rng, sc.adversary.compromised_fraction, 1, sc.network.gateways)[0]
    mix_bad = _compromise(
        rng, sc.adversary.compromised_fraction, sc.hops - 2, sc.network.mixes_per_layer
    )
    clock = 0.0
    if pol.schedule == "daily":
        clock = float(rng.random() * DAY_S)
        s_user, s_start, s_end = _daily(rng, n, dur, clock, pol.daily_online_h * 3600.0)
    else:
        s_user, s_start, s_end = s_user.astype(np.int64), s_start, s_end
    reach = _covered(
        s_user, s_start, s_end, np.repeat(callee, u.calls_per_pair), call_start.ravel()
    ).reshape(call_start.shape)
    # Both ends of a call stay online through it, from linger_before_s before to
    # linger_after_s after.
    c_user = np.concatenate(
        [np.repeat(caller, u.calls_per_pair), np.repeat(callee, u.calls_per_pair)]
    )
    c_start = np.concatenate([call_start.ravel(), call_start.ravel()])
    c_end = c_start + u.call_s
    high: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    if pol.linger_before_s > 0 or pol.linger_after_s > 0:
        c_start = c_start - _linger(rng, pol.linger, pol.linger_before_s, len(c_start))
        c_end = c_end + _linger(rng, pol.linger, pol.linger_after_s, len(c_end))
    o_user, o_start, o_end = [s_user, c_user], [s_start, c_start], [s_end, c_end]
    if pol.idle_slot_factor > 1:
        both = np.concatenate([call_start.ravel(), call_start.ravel()])
        h_start = both - _linger(rng, pol.linger, pol.rate_lead_s, len(both))
        h_end = both + u.call_s + _linger(rng, pol.linger, pol.rate_lag_s, len(both))
        d_user, d_start, d_end = _decoys(rng, sc, n)
        h_user = np.concatenate([c_user, d_user])
        h_start, h_end = np.concatenate([h_start, d_start]), np.concatenate([h_end, d_end])
        # A client at the call rate is online.
        o_user.append(h_user)
        o_start.append(h_start)
        o_end.append(h_end)
        order = np.argsort(h_user, kind="stable")
        high = (h_user[order], h_start[order], h_end[order])
    s_user = np.concatenate(o_user)
    s_start = np.concatenate(o_start)
    s_end = np.concatenate(o_end)
    order = np.argsort(s_user, kind="stable")
    return Population(
        n_users=n,
        gateway=gateway,
        up_phase_s=up_phase,
        down_phase_s=down_phase,
        sess_user=s_user[order],
        sess_start_s=s_start[order],
        sess_end_s=s_end[order],
        caller=caller,
        callee=callee,
        call_start_s=call_start,
        call_s=u.call_s,
        gateway_bad=gateway_bad,
        mix_bad=mix_bad,
        reachable=reach,
        clock_s=clock,
        idle_slot_factor=pol.idle_slot_factor,
        high_user=None if high is None else high[0],
        high_start_s=None if high is None else high[1],
        high_end_s=None if high is None else high[2],
    )


def _churn(
    rng: np.random.Generator, n: int, dur: float, on: float, off: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random sessions: exponential online and offline periods, stationary at time 0."""
    per = int(np.ceil(dur / (on + off) * 1.5)) + 4
    ons = rng.exponential(on, (n, per))
    offs = rng.exponential(off, (n, per))
    # Stationary start: online at 0 with probability on/(on+off); periods are
    # exponential, so what is left of the current one is a fresh draw (memoryless).
    lead = np.where(rng.random(n) < on / (on + off), 0.0, rng.exponential(off, n))
    begin = lead[:, None] + np.concatenate(
        [np.zeros((n, 1)), np.cumsum(ons + offs, axis=1)[:, :-1]], axis=1
    )
    end = begin + ons
    keep = (begin < dur) & (end > 0)
    s_user = np.broadcast_to(np.arange(n)[:, None], (n, per))[keep]
    return s_user, np.maximum(begin[keep], 0.0), np.minimum(end[keep], dur)


def _daily(
    rng: np.random.Generator, n: int, dur: float, clock: float, window: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One window of ``window`` seconds a day per user, at a uniform time of day; the run
    starts at time of day ``clock``. Returns the parts of the windows inside [0, dur)."""
    begin = rng.random(n) * DAY_S - clock  # a window's start, relative to the run
    users, starts, ends = [], [], []
    for day in (-1.0, 0.0, 1.0):  # the window of the day before, this day and the next
        s = begin + day * DAY_S
        e = s + window
        keep = (s < dur) & (e > 0)
        users.append(np.flatnonzero(keep))
        starts.append(np.maximum(s[keep], 0.0))
        ends.append(np.minimum(e[keep], dur))
    return np.concatenate(users), np.concatenate(starts), np.concatenate(ends)


def _covered(
    s_user: np.ndarray, s_start: np.ndarray, s_end: np.ndarray, user: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """Bool per query: is ``user`` inside one of its sessions at time ``t``."""
    if len(s_user) == 0:
        return np.zeros(len(user), bool)
    span = float(max(s_end.max(), t.max(), 0.0)) + 1.0  # user-major keys: user * span + time
    order = np.lexsort((s_start, s_user))
    su, ss, se = s_user[order], s_start[order], s_end[order]
    i = np.searchsorted(su * span + ss, user * span + t, side="right") - 1
    j = np.maximum(i, 0)
    # A user's sessions do not overlap (churn periods, one window a day), so the last one
    # to start at or before t is the only one that can hold t.
    return np.asarray((i >= 0) & (su[j] == user) & (se[j] > t), dtype=np.bool_)


def _linger(rng: np.random.Generator, kind: str, mean: float, size: int) -> np.ndarray:
    """Seconds a client stays online (or at the call rate) beyond a call, mean ``mean``."""
    if mean <= 0:
        return np.zeros(size)
    if kind == "constant":
        return np.full(size, mean)
    if kind == "uniform":
        return rng.random(size) * 2.0 * mean
    return rng.exponential(mean, size)


def _decoys(rng: np.random.Generator, sc: Scenario, n: int) -> tuple[np.ndarray, ...]:
    """Call-shaped call-rate periods without a call: Poisson starts at ``decoys_per_hour``
    per user, from one decoy length before the run to its end; each lasts as long as a call
    with its lead and lag."""
    pol, dur = sc.policy, sc.users.duration_s
    span = sc.users.call_s + pol.rate_lead_s + pol.rate_lag_s
    lo = -4.0 * span  # a decoy that began before the run can still be on at its start
    count = rng.poisson(pol.decoys_per_hour / 3600.0 * (dur - lo), n)
    user = np.repeat(np.arange(n), count)
    start = lo + rng.random(len(user)) * (dur - lo)
    k = len(user)
    length = (
        sc.users.call_s
        + _linger(rng, pol.linger, pol.rate_lead_s, k)
        + _linger(rng, pol.linger, pol.rate_lag_s, k)
    )
    return user, start, start + length


def _compromise(rng: np.random.Generator, fraction: float, rows: int, per_row: int) -> np.ndarray:
    """(rows, per_row) bool: in each row (gateways, or one mix layer) the nearest whole
    number to ``fraction`` of the nodes, chosen at random, is compromised."""
    k = int(fraction * per_row + 0.5)
    out = np.zeros((rows, per_row), bool)
    for r in range(rows):
        out[r, rng.choice(per_row, size=k, replace=False)] = True
    return out


def call_streams(
    sc: Scenario, pop: Population, rng: np.random.Generator
) -> tuple[Streams, np.ndarray, np.ndarray]:
    """Media streams of every call, both directions; returns (streams, sender, receiver)."""
    k, r = pop.call_start_s.shape
    starts = np.concatenate([pop.call_start_s.ravel(), pop.call_start_s.ravel()])
    sender = np.concatenate([np.repeat(pop.caller, r), np.repeat(pop.callee, r)])
    receiver = np.concatenate([np.repeat(pop.callee, r), np.repeat(pop.caller, r)])
    st = make_streams(sc, rng, starts_s=starts, length_s=pop.call_s)
    st = replace(st, up_phase_s=pop.up_phase_s[sender], down_phase_s=pop.down_phase_s[receiver])
    return st, sender, receiver


class Observations:
    """What the adversary records, binned at ``adversary.resolution_ms``, built per block of
    users on demand. Attacks use ``rows``, ``windows``, ``lag_pmf`` and the target pairs."""

    def __init__(
        self,
        sc: Scenario,
        pop: Population,
        st: Streams,
        sender: np.ndarray,
        receiver: np.ndarray,
        arrive_s: np.ndarray,
        send_s: np.ndarray,
        lag_pmf: np.ndarray,
        targets: np.ndarray,
        rng: np.random.Generator,
        tick: Callable[[int], None] | None = None,
    ) -> None:
        self.sc = sc
        self.pop = pop
        self.streams = st
        self.sender = sender
        self.receiver = receiver
        self.rng = rng
        self.bin_s = sc.adversary.resolution_ms / 1000.0
        self.n_bins = int(np.ceil(sc.users.duration_s / self.bin_s))
        self.lag_pmf = lag_pmf  # P(observed downlink bin - uplink bin = lag) of a real packet
        self.targets = targets  # indices of call pairs the attacks are scored on
        self.tick = tick or (lambda n: None)
        media = ~st.warmup
        ok = media & np.isfinite(arrive_s)
        # Baseline: the real packets, per user, time-sorted.
        self._up = _sparse(sender[st.stream[media]], send_s[media], pop.n_users)
        self._down = _sparse(receiver[st.stream[ok]], arrive_s[ok], pop.n_users)
        self._window_cache: dict[str, np.ndarray] = {}

    @property
    def n_users(self) -> int:
        """Users in the population."""
        return self.pop.n_users

    def chunks(self) -> Iterator[np.ndarray]:
        """User index blocks of at most CHUNK_USERS."""
        for u0 in range(0, self.n_users, CHUNK_USERS):
            yield np.arange(u0, min(u0 + CHUNK_USERS, self.n_users))

    def online(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_bins) bool: is the user online in each bin."""
        p = self.pop
        return self._mask(users, p.sess_user, p.sess_start_s, p.sess_end_s)

    def high(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_bins) bool: is the user sending at the call rate in each bin (the
        same as ``online`` without an idle rate)."""
        p = self.pop
        if p.high_user is None or p.high_start_s is None or p.high_end_s is None:
            return self.online(users)
        return self._mask(users, p.high_user, p.high_start_s, p.high_end_s)

    def _mask(
        self, users: np.ndarray, s_user: np.ndarray, s_start: np.ndarray, s_end: np.ndarray
    ) -> np.ndarray:
        lo = np.searchsorted(s_user, users, side="left")
        hi = np.searchsorted(s_user, users, side="right")
        counts = hi - lo
        idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
        row = np.repeat(np.arange(len(users)), counts)
        diff = np.zeros((len(users), self.n_bins + 1), np.int32)
        b0 = np.clip(np.floor(s_start[idx] / self.bin_s).astype(np.int64), 0, self.n_bins)
        b1 = np.clip(np.ceil(s_end[idx] / self.bin_s).astype(np.int64), 0, self.n_bins)
        np.add.at(diff, (row, b0), 1)
        np.add.at(diff, (row, b1), -1)
        return np.cumsum(diff[:, :-1], axis=1) > 0

    def rows(self, kind: str, users: np.ndarray) -> np.ndarray:
        """(len(users), n_bins) float32 packet counts the adversary sees: kind 'up' or 'down'."""
        if self.sc.cover:
            slot = self.sc.voice.slot_ms / 1000.0
            if kind == "down":
                slot /= self.sc.voice.downlink_speedup
            phase = (self.pop.up_phase_s if kind == "up" else self.pop.down_phase_s)[users]
            k = np.arange(int(np.ceil(self.sc.users.duration_s / slot)) + 1)
            b = np.floor((phase[:, None] + k[None, :] * slot) / self.bin_s).astype(np.int64)
            b = np.minimum(b, self.n_bins)  # bin n_bins collects what falls past the end
            on = np.zeros((len(users), self.n_bins + 1), bool)
            on[:, :-1] = self.online(users)
            w = np.take_along_axis(on, b, axis=1)
            f = self.pop.idle_slot_factor
            if f > 1:  # idle: every f-th slot; at the call rate: every slot
                hi = np.zeros((len(users), self.n_bins + 1), bool)
                hi[:, :-1] = self.high(users)
                w &= np.take_along_axis(hi, b, axis=1) | (k % f == 0)[None, :]
            flat = (np.arange(len(users))[:, None] * (self.n_bins + 1) + b)[w]
            out = np.bincount(flat, minlength=len(users) * (self.n_bins + 1))
            return out.reshape(len(users), self.n_bins + 1)[:, :-1].astype(np.float32)
        starts, times = self._up if kind == "up" else self._down
        lo, hi = starts[users], starts[users + 1]
        idx = np.concatenate([np.arange(a, c) for a, c in zip(lo, hi, strict=True)])
        row = np.repeat(np.arange(len(users)), hi - lo)
        b = np.floor(times[idx] / self.bin_s).astype(np.int64)
        keep = (b >= 0) & (b < self.n_bins)
        flat = row[keep] * self.n_bins + b[keep]
        out = np.bincount(flat, minlength=len(users) * self.n_bins)
        return out.reshape(len(users), self.n_bins).astype(np.float32)

    def windows(self, kind: str) -> np.ndarray:
        """(n_users, W) packet counts per ``adversary.window_s`` window, for every user."""
        if kind not in self._window_cache:
            per = max(1, round(self.sc.adversary.window_s / self.bin_s))
            n_w = self.n_bins // per
            out = np.empty((self.n_users, n_w), np.float32)
            for users in self.chunks():
                r = self.rows(kind, users)[:, : n_w * per]
                out[users] = r.reshape(len(users), n_w, per).sum(axis=2)
                self.tick(len(users))
            self._window_cache[kind] = out
        return self._window_cache[kind]


def _sparse(user: np.ndarray, t: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row starts, times) of events grouped by user: CSR without a matrix."""
    order = np.lexsort((t, user))
    counts = np.bincount(user, minlength=n)
    return np.r_[0, np.cumsum(counts)], t[order]


def rank_of_truth(
    scores: np.ndarray, truth: np.ndarray, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Expected rank (1 = best) of the true partner under random tie-breaking, and the
    probability the adversary's top-1 guess is right. ``scores`` is (targets, users)."""
    s = scores.astype(np.float64).copy()
    s[np.arange(len(s)), exclude] = -np.inf
    s = np.round(s, 9)
    true = s[np.arange(len(s)), truth][:, None]
    above = (s > true).sum(axis=1)
    ties = (s == true).sum(axis=1)  # includes the truth itself
    rank = above + (ties + 1) / 2.0
    top1 = np.where(above == 0, 1.0 / ties, 0.0)
    return rank, top1


def entropy_bits(weights: np.ndarray) -> float:
    """Shannon entropy (bits) of the sender distribution p_u = w_u / sum(w)
    (Serjantov and Danezis 2002); zero weights contribute nothing."""
    w = np.asarray(weights, dtype=float)
    w = w[w > 0]
    return float(entropy_from_sums(np.array([w.sum()]), np.array([(w * np.log(w)).sum()]))[0])


def entropy_from_sums(total: np.ndarray, wlogw: np.ndarray) -> np.ndarray:
    """Entropy in bits from sum(w) and sum(w ln w), which can be accumulated block by block:
    H = log2 W - sum(w ln w) / (W ln 2)."""
    return np.asarray((np.log(total) - wlogw / total) / LOG2, dtype=np.float64)


def degree_of_anonymity(h_bits: float, n: int) -> float:
    """Normalized degree d = H / log2 N (Diaz et al. 2002): 1 when every user is equally
    likely, 0 when the sender is known."""
    return h_bits / float(np.log2(n)) if n > 1 else 0.0


def _summary(rank: np.ndarray, top1: np.ndarray, n: int) -> dict[str, float]:
    return {
        "top1": round(float(top1.mean()), 6),
        "mean_rank": round(float(rank.mean()), 3),
        "median_rank": round(float(np.median(rank)), 3),
        "chance_top1": round(1.0 / (n - 1), 6),
    }


AttackFn = Callable[[Observations], dict[str, float]]
ATTACKS: dict[str, AttackFn] = {}


def attack(name: str) -> Callable[[AttackFn], AttackFn]:
    """Register an attack under ``name`` (see docs/research.md, "Adding an attack")."""

    def register(fn: AttackFn) -> AttackFn:
        ATTACKS[name] = fn
        return fn

    return register


@attack("flow_correlation")
def flow_correlation(obs: Observations) -> dict[str, float]:
    """Pearson correlation of per-window packet counts: the caller's uplink against every
    user's downlink plus the caller's downlink against every uplink; the best is the guess."""
    up, down = obs.windows("up"), obs.windows("down")

    def z(x: np.ndarray) -> np.ndarray:
        c = x - x.mean(axis=1, keepdims=True)
        sd = np.sqrt((c * c).mean(axis=1, keepdims=True))
        out: np.ndarray = np.zeros_like(c)  # 0 where a user sent nothing (sd == 0)
        np.divide(c, sd, out=out, where=sd > 0)
        return out

    zu, zd = z(up), z(down)
    a = obs.pop.caller[obs.targets]
    b = obs.pop.callee[obs.targets]
    scores = (zu[a] @ zd.T + zd[a] @ zu.T) / up.shape[1]
    rank, top1 = rank_of_truth(scores, b, a)
    return _summary(rank, top1, obs.n_users)


@attack("timing_likelihood")
def timing_likelihood(obs: Observations) -> dict[str, float]:
    """Poisson likelihood of the callee's downlink given each user's uplink convolved with
    the known delay distribution; also the sender-set entropy of the callee's packets."""
    pmf = obs.lag_pmf
    a = obs.pop.caller[obs.targets]
    b = obs.pop.callee[obs.targets]
    d_b = obs.rows("down", b)  # (T, n_bins)
    n_fft = 1 << int(np.ceil(np.log2(obs.n_bins + len(pmf))))
    f_hat = np.fft.rfft(pmf, n_fft)
    # Background the adversary allows for packets not from the candidate: 1% of one stream.
    slot_bins = obs.sc.voice.slot_ms / obs.sc.adversary.resolution_ms
    beta = 0.01 / max(slot_bins, 1.0)
    # Entropy sample: packets the callee receives during its calls.
    per = obs.sc.adversary.entropy_packets
    samp_t, samp_b = [], []
    for i, t in enumerate(obs.targets):
        bins = np.flatnonzero(d_b[i] > 0)
        st = obs.pop.call_start_s[t]
        in_call = np.zeros(len(bins), bool)
        for s0 in st:
            in_call |= (bins * obs.bin_s >= s0) & (bins * obs.bin_s < s0 + obs.pop.call_s)
        bins = bins[in_call]
        if len(bins):
            pick = obs.rng.choice(bins, size=min(per, len(bins)), replace=False)
            samp_t.extend([i] * len(pick))
            samp_b.extend(pick.tolist())
    samp_bins = np.array(samp_b, dtype=np.int64)
    lam_sum = np.zeros(len(samp_bins))
    lam_log = np.zeros(len(samp_bins))
    scores = np.empty((len(b), obs.n_users), np.float64)
    for users in obs.chunks():
        up = obs.rows("up", users)
        lam = np.fft.irfft(np.fft.rfft(up, n_fft, axis=1) * f_hat, n_fft, axis=1)[:, : obs.n_bins]
        np.maximum(lam, 0.0, out=lam)  # FFT round-off
        scores[:, users] = d_b @ np.log(lam + beta).T - lam.sum(axis=1)[None, :]
        if len(samp_bins):
            g = lam[:, samp_bins]
            lam_sum += g.sum(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                lam_log += np.where(g > 1e-12, g * np.log(np.maximum(g, 1e-300)), 0.0).sum(axis=0)
        obs.tick(len(users))
    rank, top1 = rank_of_truth(scores, a, b)
    out = _summary(rank, top1, obs.n_users)
    ok = lam_sum > 0
    h = float(entropy_from_sums(lam_sum[ok], lam_log[ok]).mean()) if ok.any() else 0.0
    out["entropy_bits"] = round(h, 4)
    out["entropy_max_bits"] = round(float(np.log2(obs.n_users)), 4)
    out["degree_of_anonymity"] = round(degree_of_anonymity(h, obs.n_users), 4)
    out["entropy_packets"] = int(ok.sum())
    return out


@attack("intersection")
def intersection(obs: Observations) -> dict[str, float]:
    """Intersect, over the caller's calls (times known to the adversary), the users whose
    links show them able to take part: online (our design) or sending/receiving (baseline)."""
    a = obs.pop.caller[obs.targets]
    b = obs.pop.callee[obs.targets]
    t_count = len(obs.targets)
    calls = obs.pop.call_start_s[obs.targets]  # (T, r)
    b0 = np.floor(calls / obs.bin_s).astype(np.int64)
    b1 = np.minimum(np.ceil((calls + obs.pop.call_s) / obs.bin_s).astype(np.int64), obs.n_bins)
    size = np.zeros(t_count)
    has_b = np.zeros(t_count, bool)
    for users in obs.chunks():
        if obs.sc.cover:  # able to take part: at the call rate (online without an idle rate)
            act = obs.high(users).astype(np.int32)
            need_all = True
        else:
            act = (obs.rows("up", users) + obs.rows("down", users) > 0).astype(np.int32)
            need_all = False
        cum = np.concatenate([np.zeros((len(users), 1), np.int64), np.cumsum(act, axis=1)], axis=1)
        ok = np.ones((t_count, len(users)), bool)
        for j in range(calls.shape[1]):
            seen = cum[:, b1[:, j]] - cum[:, b0[:, j]]  # (users, T)
            full = (b1[:, j] - b0[:, j])[None, :]
            ok &= ((seen >= full) if need_all else (seen > 0)).T
        ok &= users[None, :] != a[:, None]  # the caller is not its own partner
        size += ok.sum(axis=1)
        sel = (users[None, :] == b[:, None]) & ok
        has_b |= sel.any(axis=1)
        obs.tick(len(users))
    n = obs.n_users
    rank = np.where(has_b, (size + 1) / 2.0, size + (n - 1 - size + 1) / 2.0)
    top1 = np.where(has_b, 1.0 / np.maximum(size, 1), 0.0)
    out = _summary(rank, top1, n)
    out["candidates"] = round(float(size.mean()), 3)
    return out


@attack("session_edges")
def session_edges(obs: Observations) -> dict[str, float]:
    """Align rate changes: where a user's uplink count per window steps up or down (coming
    online, leaving, switching between idle and call rate), the partner's steps the same
    way at nearly the same time. Each user's signed steps are spread over +-h windows, h
    the larger of 2 s and the policy's mean lead, lag and linger (the adversary knows the
    policy), and users are scored by the cosine of the caller's steps with theirs."""
    up = obs.windows("up")
    d = np.diff(up, axis=1)
    e = (np.sign(d) * (np.abs(d) > 1.5)).astype(np.float32)  # +-1 count is slot jitter
    pol = obs.sc.policy
    spread = max(2.0, pol.linger_before_s, pol.linger_after_s, pol.rate_lead_s, pol.rate_lag_s)
    h = max(1, round(spread / obs.sc.adversary.window_s))
    c = np.concatenate([np.zeros((len(e), 1), np.float32), np.cumsum(e, axis=1)], axis=1)
    idx = np.arange(e.shape[1])
    lo, hi = np.clip(idx - h, 0, e.shape[1]), np.clip(idx + h + 1, 0, e.shape[1])
    s = c[:, hi] - c[:, lo]  # box sum of the steps within +-h windows
    a = obs.pop.caller[obs.targets]
    b = obs.pop.callee[obs.targets]
    norm_e = np.linalg.norm(e[a], axis=1)[:, None]
    norm_s = np.linalg.norm(s, axis=1)[None, :]
    raw = e[a] @ s.T
    scores = np.divide(raw, norm_e * norm_s, out=np.zeros_like(raw), where=norm_e * norm_s > 0)
    rank, top1 = rank_of_truth(scores, b, a)
    obs.tick(obs.n_users)
    return _summary(rank, top1, obs.n_users)


@attack("compromised_hops")
def compromised_hops(obs: Observations) -> dict[str, float]:
    """A fraction of gateways and mixes is compromised. Baseline: the caller's and callee's
    gateways together link the call by timing. Our design: they also need every mix of
    some packet's route, since cover and shaping hide timing; routes per packet, per call
    direction or per sender and epoch, with ``mixing.failover`` spare routes. Under
    ``adversary.selective_dos`` compromised nodes drop what crosses a route they do not
    fully own, which makes the client fail over; a call that runs out of routes fails."""
    sc = obs.sc
    rng = obs.rng
    layers = sc.hops - 2
    gw_bad, mix_bad = obs.pop.gateway_bad, obs.pop.mix_bad
    a = obs.pop.caller[obs.targets]
    b = obs.pop.callee[obs.targets]
    gw_both = gw_bad[obs.pop.gateway[a]] & gw_bad[obs.pop.gateway[b]]
    failed = np.zeros(len(a), bool)
    if not sc.cover:
        linked = gw_both
    else:
        st = obs.streams
        media = ~st.warmup
        r = obs.pop.call_start_s.shape[1]
        k = len(obs.pop.caller)
        pair_of_stream = np.arange(st.n_streams) // r % k
        wanted = np.zeros(k, bool)
        wanted[obs.targets] = True
        pk = media & wanted[pair_of_stream[st.stream]]
        p_stream = st.stream[pk]
        if sc.mixing.path == "packet":
            route = rng.integers(0, sc.network.mixes_per_layer, (len(p_stream), layers))
            bad = mix_bad[np.arange(layers)[None, :], route].all(axis=1)
            pair_bad = np.zeros(k, bool)
            pair_bad[pair_of_stream[p_stream[bad]]] = True
        else:
            # One route (and its spares) per key: a call direction, or a sender and epoch.
            if sc.mixing.path == "call":
                key = np.arange(st.n_streams)
            else:
                sender = obs.sender
                starts = np.concatenate([obs.pop.call_start_s.ravel()] * 2)
                epoch = np.floor((obs.pop.clock_s + starts) / sc.mixing.epoch_s).astype(np.int64)
                key = np.unique(np.stack([sender, epoch]), axis=1, return_inverse=True)[1]
                key = np.asarray(key).ravel()
            n_keys = int(key.max()) + 1
            tries = sc.mixing.failover + 1 if sc.adversary.selective_dos else 1
            key_bad, key_failed = route_outcome(rng, mix_bad, n_keys, tries)
            has_media = np.zeros(st.n_streams, bool)
            has_media[p_stream] = True
            streams = np.flatnonzero(has_media)
            pair_bad = np.zeros(k, bool)
            pair_bad[pair_of_stream[streams[key_bad[key[streams]]]]] = True
            pair_failed = np.zeros(k, bool)
            pair_failed[pair_of_stream[streams[key_failed[key[streams]]]]] = True
            failed = pair_failed[obs.targets]
        linked = gw_both & pair_bad[obs.targets]
    n = obs.n_users
    rank = np.where(linked, 1.0, n / 2.0)
    top1 = np.where(linked, 1.0, 1.0 / (n - 1))
    out = _summary(rank, top1, n)
    out["linked"] = round(float(linked.mean()), 6)
    out["both_gateways_compromised"] = round(float(gw_both.mean()), 6)
    out["failed"] = round(float(failed.mean()), 6)
    return out


def route_outcome(
    rng: np.random.Generator, mix_bad: np.ndarray, n_keys: int, tries: int
) -> tuple[np.ndarray, np.ndarray]:
    """Routes of ``n_keys`` independent route holders, each trying up to ``tries`` routes.

    A route takes one uniform mix per layer of ``mix_bad`` (layers, mixes per layer). With
    ``tries`` > 1 the adversary drops what crosses a route it holds in part, so the holder
    moves on until a route is clean or all bad. Returns (linked: some route all bad, failed:
    every try was dropped), each a bool array of length ``n_keys``. With per-route
    probabilities q (all bad) and s (part bad), P(linked) = q (1 - s^tries) / (1 - s)
    and P(failed) = s^tries (``tries`` = 1: q and 0).
    """
    layers, per = mix_bad.shape
    linked = np.zeros(n_keys, bool)
    active = np.arange(n_keys)
    for _ in range(tries):
        route = rng.integers(0, per, (len(active), layers))
        bad = mix_bad[np.arange(layers)[None, :], route]
        all_bad, any_bad = bad.all(axis=1), bad.any(axis=1)
        linked[active[all_bad]] = True
        active = active[any_bad & ~all_bad]
    failed = np.zeros(n_keys, bool)
    if tries > 1:
        failed[active] = True
    return linked, failed


def lag_pmf(sc: Scenario, rng: np.random.Generator, n_streams: int = 100) -> np.ndarray:
    """The adversary's knowledge: P(downlink bin - uplink bin = lag) of one real packet,
    estimated by simulating the published delay model."""
    st = make_streams(sc, rng, starts_s=np.zeros(n_streams), length_s=20.0)
    tr = transit(sc, rng, st)
    ok = np.isfinite(tr.arrive_s)
    bin_s = sc.adversary.resolution_ms / 1000.0
    lag = np.floor(tr.arrive_s[ok] / bin_s) - np.floor(tr.send_s[ok] / bin_s)
    lag = lag.astype(np.int64)
    pmf = np.bincount(lag, minlength=int(lag.max()) + 2).astype(np.float64) + 1e-3
    return np.asarray(pmf / pmf.sum(), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class AttackReport:
    """Metrics of every attack against ``design`` (cover on) and ``baseline`` (cover off)."""

    scenario: str
    seed: int
    users: int
    calls: int
    targets: int
    packet_hops: int
    designs: dict[str, dict[str, dict[str, float]]]  # design -> attack -> metric -> value

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what attacks.json holds)."""
        return asdict(self)


def prepare(
    sc: Scenario,
) -> tuple[Population, Streams, np.ndarray, np.ndarray, np.ndarray, np.random.SeedSequence]:
    """Population, call streams (with sender and receiver), scored targets and the seed
    sequence of the two designs, all drawn from ``sc.seed``."""
    ss = np.random.SeedSequence(sc.seed)
    r_pop, r_stream, r_target = (np.random.default_rng(s) for s in ss.spawn(3))
    pop = make_population(sc, r_pop)
    st, sender, receiver = call_streams(sc, pop, r_stream)
    k = len(pop.caller)
    targets = np.sort(r_target.choice(k, size=min(k, sc.adversary.targets), replace=False))
    return pop, st, sender, receiver, targets, ss


def observe(
    sc: Scenario,
    pop: Population,
    st: Streams,
    sender: np.ndarray,
    receiver: np.ndarray,
    targets: np.ndarray,
    seq: np.random.SeedSequence,
    tick: Callable[[int], None] | None = None,
) -> tuple[Observations, int]:
    """Carry the media through the network of ``sc`` and return what the adversary sees,
    with the packet-hops simulated."""
    r_tr, r_lag, r_att = (np.random.default_rng(s) for s in seq.spawn(3))
    tr = transit(sc, r_tr, st)
    obs = Observations(
        sc,
        pop,
        st,
        sender,
        receiver,
        tr.arrive_s,
        tr.send_s,
        lag_pmf(sc, r_lag),
        targets,
        r_att,
        tick,
    )
    return obs, tr.packet_hops


def check_attacks(names: list[str]) -> None:
    """Raise ValueError naming an attack that is not registered."""
    for name in names:
        if name not in ATTACKS:
            raise ValueError(f"attack {name!r}: want one of {sorted(ATTACKS)}")


def run_attacks(
    sc: Scenario,
    attacks: list[str] | None = None,
    *,
    tick: Callable[[int], None] | None = None,
) -> AttackReport:
    """Run the attacks against our design (``cover`` on) and the baseline (cover off) on the
    same population, calls and talk spurts."""
    names = list(ATTACKS) if attacks is None else attacks
    check_attacks(names)
    pop, st, sender, receiver, targets, ss = prepare(sc)
    designs: dict[str, Any] = {}
    hops = 0
    for label, cover, seq in zip(("design", "baseline"), (True, False), ss.spawn(2), strict=True):
        scd = replace(sc, cover=cover)
        obs, h = observe(scd, pop, st, sender, receiver, targets, seq, tick)
        hops += h
        designs[label] = {name: ATTACKS[name](obs) for name in names}
    return AttackReport(
        scenario=sc.name,
        seed=sc.seed,
        users=sc.users.n_users,
        calls=int(len(pop.caller) * sc.users.calls_per_pair),
        targets=len(targets),
        packet_hops=hops,
        designs=designs,
    )
