"""Parameter sweeps of the latency envelope, on local cores or a Dask cluster.

    >>> from sim import load_scenario, sweep
    >>> sc = load_scenario({"users": {"n_calls": 2, "call_s": 5.0}})
    >>> out = sweep(sc, {"mixing.delay_mean_ms": [5.0, 10.0]}, workers=1)
    >>> len(out.points)
    2

Every point uses the scenario's seed (common random numbers), so differences between
points come from the parameters, not from the draw.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from ._latency import run_latency
from ._scenario import Scenario, ScenarioError, load_scenario

DEFAULT_GRID: dict[str, list[Any]] = {
    "mixing.delay_mean_ms": [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0],
    "network.hops": [3, 4, 5],
    "voice.frames_per_packet": [1, 2, 3],
}
MAX_P99_MS = 600.0  # the upper end of the 300-600 ms mouth-to-ear envelope
DASK_CONNECT_TIMEOUT_S = 10  # how long to wait for the scheduler before giving up
MAX_LOSS = 0.05  # network plus late loss a call tolerates with Opus concealment and FEC


@dataclass(frozen=True, slots=True)
class SweepReport:
    """Every grid point's summary and the recommended one (None if none is feasible)."""

    scenario: str
    seed: int
    criteria: dict[str, float]
    points: list[dict[str, Any]]
    recommended: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what sweep.json holds)."""
        return asdict(self)


class SweepError(RuntimeError):
    """A sweep cannot run: a missing optional dependency or an unreachable cluster."""


def _point(data: dict[str, Any]) -> dict[str, Any]:
    """Run one grid point (top level so worker processes can import it)."""
    sc = load_scenario(data["scenario"])
    res = run_latency(sc)
    return {
        **data["params"],
        "slot_ms": sc.voice.slot_ms,
        # Constant-rate cost of every online user, each way: one packet per slot.
        "uplink_kbps": round(sc.network.geometry.packet_len * 8 / sc.voice.slot_ms, 3),
        "one_way_p99_ms": res.one_way_ms["p99"],
        "mouth_to_ear_p50_ms": res.mouth_to_ear_ms["p50"],
        "mouth_to_ear_p99_ms": res.mouth_to_ear_ms["p99"],
        "mouth_to_ear_mean_ms": res.mouth_to_ear_ms["mean"],
        "total_loss": res.total_loss,
        "r": res.r,
        "mos": res.mos,
        "mixing_mean_ms": res.components_ms["mixing"],
    }


def grid_points(sc: Scenario, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Scenario dicts for the cartesian product of ``grid``; invalid combinations are skipped
    (e.g. more frames per packet than the geometry's payload holds)."""
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        try:
            point = sc.replace(**params)
        except ScenarioError:
            continue
        out.append({"params": params, "scenario": point.to_dict()})
    if not out:
        raise ScenarioError("sweep: no valid point in the grid")
    return out


def recommend(
    points: list[dict[str, Any]], max_p99_ms: float = MAX_P99_MS, max_loss: float = MAX_LOSS
) -> dict[str, Any] | None:
    """The feasible point (p99 mouth-to-ear and loss within bounds) with the most mixing:
    most hops (each mix layer multiplies the cost of compromising a whole route), then the
    largest per-hop delay mean, then the best MOS."""
    ok = [
        p for p in points if p["mouth_to_ear_p99_ms"] <= max_p99_ms and p["total_loss"] <= max_loss
    ]
    if not ok:
        return None

    def key(p: dict[str, Any]) -> tuple[int, float, float]:
        return (p.get("network.hops", 0), p.get("mixing.delay_mean_ms", 0.0), p["mos"])

    return max(ok, key=key)


def sweep(
    sc: Scenario,
    grid: dict[str, list[Any]] | None = None,
    *,
    workers: int | None = None,
    dask_scheduler: str | None = None,
    max_p99_ms: float = MAX_P99_MS,
    max_loss: float = MAX_LOSS,
    tick: Callable[[int], None] | None = None,
) -> SweepReport:
    """Run every grid point in parallel and pick the recommended defaults."""
    jobs = grid_points(sc, grid or DEFAULT_GRID)
    tick = tick or (lambda n: None)
    if dask_scheduler:
        results = _run_dask(jobs, dask_scheduler, tick)
    else:
        n = workers if workers is not None else min(len(jobs), os.cpu_count() or 1)
        if n <= 1:
            results = []
            for j in jobs:
                results.append(_point(j))
                tick(1)
        else:
            with ProcessPoolExecutor(max_workers=n) as pool:
                results = []
                for r in pool.map(_point, jobs):
                    results.append(r)
                    tick(1)
    return SweepReport(
        scenario=sc.name,
        seed=sc.seed,
        criteria={"max_mouth_to_ear_p99_ms": max_p99_ms, "max_total_loss": max_loss},
        points=results,
        recommended=recommend(results, max_p99_ms, max_loss),
    )


def _run_dask(
    jobs: list[dict[str, Any]], address: str, tick: Callable[[int], None]
) -> list[dict[str, Any]]:
    """Map the points over a Dask cluster; results come back in grid order."""
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise SweepError(
            "--dask-scheduler needs dask[distributed]: pip install 'phantom-mixnet[cluster]'"
        ) from None
    try:
        client = Client(address, timeout=f"{DASK_CONNECT_TIMEOUT_S}s")
    except OSError as exc:
        raise SweepError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from None
    try:
        futures = client.map(_point, jobs, pure=False)
        for _ in as_completed(futures):
            tick(1)
        return list(client.gather(futures))
    finally:
        client.close()
