"""Latency envelope of a voice call: mouth-to-ear delay, late loss, E-model R and MOS.

    >>> from sim import load_scenario, run_latency
    >>> res = run_latency(load_scenario({"users": {"n_calls": 4, "call_s": 10.0}}))
    >>> 100 < res.mouth_to_ear_ms["p50"] < res.mouth_to_ear_ms["p99"]
    True

mouth-to-ear = packetization + codec look-ahead + uplink slot wait + network (links and
serialization) + per-hop processing + sender-chosen delays + downlink slot wait + jitter
buffer hold. ``one_way_ms`` is the part a testnet measures: packet ready at the sender to
packet arrival at the receiver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._emodel import mos_from_r, r_factor
from ._model import make_streams, playout, transit
from ._scenario import Scenario

PERCENTILES = (50, 90, 95, 99, 99.9)
PLAYOUT_GRID_MS = tuple(range(100, 1201, 25))  # fixed playout delays for the late-loss curve


def percentiles_ms(samples_s: np.ndarray) -> dict[str, float]:
    """p50..p99.9 and mean of finite samples, in milliseconds (rounded to 1 us)."""
    x = samples_s[np.isfinite(samples_s)] * 1000.0
    if len(x) == 0:
        return {f"p{p:g}": float("nan") for p in PERCENTILES} | {"mean": float("nan")}
    vals = np.percentile(x, PERCENTILES)
    out = {f"p{p:g}": round(float(v), 3) for p, v in zip(PERCENTILES, vals, strict=True)}
    out["mean"] = round(float(x.mean()), 3)
    return out


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """Summary of one latency run; ``to_dict`` is what goes into results.json."""

    scenario: str
    seed: int
    packets: int
    packet_hops: int
    one_way_ms: dict[str, float]
    mouth_to_ear_ms: dict[str, float]
    components_ms: dict[str, float]
    network_loss: float
    late_loss: float
    total_loss: float
    r: float
    mos: float
    late_loss_curve: list[dict[str, float]]
    histogram_ms: dict[str, list[float]]  # 5 ms bins: edges, one-way and mouth-to-ear counts

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def run_latency(sc: Scenario) -> LatencyResult:
    """Simulate ``users.n_calls`` calls (both directions) and summarize the envelope."""
    ss = np.random.SeedSequence(sc.seed)
    rng_streams, rng_transit = (np.random.default_rng(s) for s in ss.spawn(2))
    st = make_streams(sc, rng_streams)
    tr = transit(sc, rng_transit, st)
    return summarize(sc, st, tr)


def summarize(sc: Any, st: Any, tr: Any) -> LatencyResult:
    """Percentiles, components, loss and E-model of a simulated set of streams."""
    v = sc.voice
    play, late = playout(st, tr, v.jitter_target_loss, v.jitter_window)
    media = ~st.warmup
    lost = tr.lost[media]
    one_way = (tr.arrive_s - st.ready_s)[media]
    late_m = late[media] & ~lost
    played = media & ~late & ~tr.lost
    fixed_s = (v.slot_ms + v.codec_lookahead_ms) / 1000.0  # packetization + look-ahead
    m2e = fixed_s + play[played]
    n = int(media.sum())
    net_loss = float(lost.mean()) if n else 0.0
    late_loss = float(late_m.mean()) if n else 0.0
    total = net_loss + late_loss
    ta = float(m2e.mean() * 1000.0) if len(m2e) else float("nan")
    r = float(r_factor(ta, total, v.ie, v.bpl))
    send_wait = (tr.send_s - st.ready_s)[media & ~tr.lost]
    exit_to_client = (tr.arrive_s - tr.exit_s)[media & ~tr.lost]
    down_access = sc.network.access_delay.mean_s + sc.network.serialization_s
    components = {
        "packetization": v.slot_ms,
        "codec_lookahead": v.codec_lookahead_ms,
        "uplink_slot_wait": float(send_wait.mean() * 1000.0),
        "network": float(tr.network_s[media].mean() * 1000.0),
        "processing": float(tr.processing_s[media].mean() * 1000.0),
        "mixing": float(tr.mixing_s[media].mean() * 1000.0),
        "downlink_slot_wait": float((exit_to_client.mean() - down_access) * 1000.0),
        "jitter_buffer": float((play[played] - one_way[played[media]]).mean() * 1000.0),
    }
    components = {k: round(x, 3) for k, x in components.items()}
    curve = []
    finite = np.where(lost, np.inf, one_way)
    for p_ms in PLAYOUT_GRID_MS:
        late_p = float((finite > p_ms / 1000.0).mean()) if n else 0.0
        m2e_ms = p_ms + fixed_s * 1000.0
        rr = float(r_factor(m2e_ms, late_p, v.ie, v.bpl))
        curve.append(
            {
                "playout_ms": float(p_ms),
                "mouth_to_ear_ms": round(m2e_ms, 3),
                "loss": round(late_p, 6),
                "r": round(rr, 3),
                "mos": round(float(mos_from_r(rr)), 3),
            }
        )
    return LatencyResult(
        scenario=sc.name,
        seed=sc.seed,
        packets=n,
        packet_hops=tr.packet_hops,
        one_way_ms=percentiles_ms(np.where(lost, np.nan, one_way)),
        mouth_to_ear_ms=percentiles_ms(m2e),
        components_ms=components,
        network_loss=round(net_loss, 6),
        late_loss=round(late_loss, 6),
        total_loss=round(total, 6),
        r=round(r, 3),
        mos=round(float(mos_from_r(r)), 3),
        late_loss_curve=curve,
        histogram_ms=_histograms(np.where(lost, np.nan, one_way), m2e),
    )


HIST_EDGES_MS = np.arange(0.0, 1505.0, 5.0)


def _histograms(one_way_s: np.ndarray, m2e_s: np.ndarray) -> dict[str, list[float]]:
    x = one_way_s[np.isfinite(one_way_s)] * 1000.0
    return {
        "edges": HIST_EDGES_MS.tolist(),
        "one_way": np.histogram(x, HIST_EDGES_MS)[0].astype(float).tolist(),
        "mouth_to_ear": np.histogram(m2e_s * 1000.0, HIST_EDGES_MS)[0].astype(float).tolist(),
    }
