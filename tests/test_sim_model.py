"""The packet engine against closed forms, against the event-loop engine, and for
reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim import load_scenario, run_latency
from sim._eventloop import transit_eventloop
from sim._model import downlink_queue, make_streams, transit
from sim.validate import ks_distance


def _erlang_cdf(x: np.ndarray, k: int, mean: float) -> np.ndarray:
    """P(sum of k iid exponentials with this mean <= x), closed form."""
    y = x / mean
    return 1.0 - np.exp(-y) * sum(y**i / math.factorial(i) for i in range(k))


def _bare(**extra: object) -> dict[str, object]:
    """No links, no processing, no loss, no cover: only the sender-chosen delays remain."""
    zero = {"dist": "constant", "value_ms": 0.0}
    data: dict[str, object] = {
        "cover": False,
        "network": {
            "access_delay": zero,
            "link_delay": zero,
            "processing": zero,
            "link_loss": 0.0,
            "bandwidth_mbps": 1e12,
        },
        "talk": {"model": "continuous"},
        "users": {"n_calls": 20, "call_s": 60.0},
    }
    data.update(extra)
    return data


@pytest.mark.parametrize("hops", [3, 5])
def test_sum_of_hop_delays_is_erlang(hops: int) -> None:
    sc = load_scenario(
        _bare(mixing={"delay_mean_ms": 20.0}, network={**_bare()["network"], "hops": hops})
    )  # type: ignore[dict-item]
    st = make_streams(sc, np.random.default_rng(5))
    tr = transit(sc, np.random.default_rng(6), st)
    d = (tr.arrive_s - tr.send_s)[~st.warmup]
    assert len(d) > 30000
    x = np.sort(d)
    ecdf = np.arange(1, len(x) + 1) / len(x)
    gap = np.abs(ecdf - _erlang_cdf(x, hops, 0.020)).max()
    assert gap < 1.63 / math.sqrt(len(x))  # KS critical value at the 1% level
    assert d.mean() == pytest.approx(hops * 0.020, rel=0.02)
    # A wrong model must be rejected by the same check.
    wrong = np.abs(ecdf - _erlang_cdf(x, hops + 1, 0.020)).max()
    assert wrong > 1.63 / math.sqrt(len(x))


def test_uplink_waits_for_the_slot_grid() -> None:
    sc = load_scenario({"users": {"n_calls": 5, "call_s": 20.0}})
    st = make_streams(sc, np.random.default_rng(1))
    tr = transit(sc, np.random.default_rng(2), st)
    wait = tr.send_s - st.ready_s
    slot = sc.voice.slot_ms / 1000.0
    assert (wait >= -1e-9).all() and (wait < slot + 1e-9).all()
    phase = st.up_phase_s[st.stream]
    k = (tr.send_s - phase) / slot
    assert np.allclose(k, np.round(k), atol=1e-6)


def _lindley(exit_s: np.ndarray, stream: np.ndarray, phase: np.ndarray, slot: float) -> np.ndarray:
    out = np.empty_like(exit_s)
    last: dict[int, int] = {}
    for i in np.lexsort((exit_s, stream)):
        s = int(stream[i])
        k = max(math.ceil((exit_s[i] - phase[s]) / slot), last.get(s, -(10**9)) + 1)
        last[s] = k
        out[i] = phase[s] + k * slot
    return out


def test_downlink_queue_matches_the_recursion() -> None:
    rng = np.random.default_rng(3)
    n, streams = 3000, 7
    stream = rng.integers(0, streams, n)
    exit_s = rng.random(n) * 20 + rng.exponential(0.3, n)
    phase = rng.random(streams) * 0.06
    got = downlink_queue(exit_s, stream, phase, 0.06)
    assert np.allclose(got, _lindley(exit_s, stream, phase, 0.06))
    assert (got >= exit_s - 1e-12).all()


@pytest.mark.parametrize("cover", [True, False])
def test_event_loop_engine_agrees(cover: bool) -> None:
    # Many short calls: within a call the shaped downlink correlates delays (a running
    # maximum), so independent calls are what makes the sample large.
    sc = load_scenario(
        {
            "cover": cover,
            "users": {"n_users": 400, "n_calls": 200, "call_s": 5.0},
            # 60 ms slots; 3 frames x 2 copies fit VOICE's 352 bytes at 20 kbit/s
            "voice": {"jitter_window": 20, "frames_per_packet": 3, "bitrate_kbps": 20.0},
        }
    )
    st = make_streams(sc, np.random.default_rng(1))
    a_loop, hops = transit_eventloop(sc, np.random.default_rng(2), st)
    tr = transit(sc, np.random.default_rng(3), st)
    assert hops == tr.packet_hops
    d1 = (a_loop - st.ready_s)[np.isfinite(a_loop)]
    d2 = (tr.arrive_s - st.ready_s)[np.isfinite(tr.arrive_s)]
    assert ks_distance(d1, d2) < 0.03
    assert abs(np.isinf(a_loop).mean() - np.isinf(tr.arrive_s).mean()) < 0.01


def test_same_seed_same_result_other_seed_differs() -> None:
    sc = load_scenario({"users": {"n_calls": 5, "call_s": 10.0}})
    assert run_latency(sc).to_dict() == run_latency(sc).to_dict()
    assert run_latency(sc.replace(seed=2)).to_dict() != run_latency(sc).to_dict()


def test_envelope_components_add_up() -> None:
    res = run_latency(
        load_scenario({"mixing": {"delay_mean_ms": 20.0}, "users": {"n_calls": 20, "call_s": 30.0}})
    )
    c = res.components_ms
    total = sum(c.values())
    # Mean mouth-to-ear is the sum of the mean components (jitter buffer included).
    assert total == pytest.approx(res.mouth_to_ear_ms["mean"], rel=0.03)
    assert c["mixing"] == pytest.approx(5 * 20.0, rel=0.05)
    assert 0.5 <= c["processing"] <= 1.0  # 5 hops of 0.1-0.2 ms
    curve = res.late_loss_curve
    assert all(a["loss"] >= b["loss"] for a, b in zip(curve, curve[1:], strict=False))


def _playout_reference(st, tr, target_loss, window):  # type: ignore[no-untyped-def]
    """The jitter buffer rule, one spurt at a time."""
    delay = tr.arrive_s - st.ready_s
    play = np.full(len(delay), np.nan)
    for s in range(st.n_streams):
        mine = np.flatnonzero(st.stream == s)
        arrivals = tr.arrive_s[mine]
        by_arrival = mine[np.argsort(arrivals, kind="stable")]
        for sp in np.unique(st.spurt[mine]):
            if sp == 0:
                continue
            pk = mine[st.spurt[mine] == sp]
            t_first = tr.arrive_s[pk].min()
            if not np.isfinite(t_first):
                continue
            got = by_arrival[tr.arrive_s[by_arrival] < t_first][-window:]
            if len(got):
                play[pk] = np.quantile(delay[got], 1 - target_loss)
            else:
                play[pk] = delay[pk][np.isfinite(delay[pk])].max()
    return play


def test_vectorized_jitter_buffer_matches_the_rule() -> None:
    from sim._model import playout

    sc = load_scenario({"users": {"n_calls": 6, "call_s": 20.0}, "network": {"link_loss": 0.05}})
    st = make_streams(sc, np.random.default_rng(1))
    tr = transit(sc, np.random.default_rng(2), st)
    for window in (1, 30, 100):
        got, _late = playout(st, tr, 0.02, window)
        want = _playout_reference(st, tr, 0.02, window)
        keep = ~st.warmup & np.isfinite(tr.arrive_s)
        assert np.allclose(got[keep], want[keep])
