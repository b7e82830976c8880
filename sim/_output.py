"""Results on disk (JSON, CSV, PNG) and a progress bar for long runs.

>>> from sim._output import progress_enabled
>>> isinstance(progress_enabled(), bool)
True
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def progress_enabled() -> bool:
    """A bar only for a person at a terminal: not when piped, not under CI=true."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() != "true"


@contextlib.contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``tick(n)``; draws a rich bar on stderr when ``progress_enabled``."""
    if not progress_enabled() or total <= 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def write_json(path: Path, data: Any) -> None:
    """Stable JSON (sorted keys) so that the same scenario and seed give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of one table; columns from the first row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        if not rows:
            return
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(out: Path, res: dict[str, Any]) -> list[Path]:
    """latency.png (one-way and mouth-to-ear histograms) and late_loss.png (loss and MOS
    against the playout delay)."""
    plt = _pyplot()
    h = res["histogram_ms"]
    edges = h["edges"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("one_way", "one-way (ready -> arrival)"), ("mouth_to_ear", "mouth-to-ear")):
        ax.stairs(h[key], edges, label=label)
    ax.axvline(600, color="grey", ls="--", lw=1)
    ax.axvline(300, color="grey", ls=":", lw=1)
    ax.set_xlabel("delay (ms)")
    ax.set_ylabel("packets per 5 ms")
    ax.set_title(f"{res['scenario']}: p99 mouth-to-ear {res['mouth_to_ear_ms']['p99']:.0f} ms")
    ax.legend()
    p1 = out / "latency.png"
    fig.tight_layout()
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    curve = res["late_loss_curve"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [c["mouth_to_ear_ms"] for c in curve]
    ax.plot(x, [100 * c["loss"] for c in curve], label="late + network loss (%)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("fixed playout: mouth-to-ear (ms)")
    ax.set_ylabel("loss (%)")
    ax2 = ax.twinx()
    ax2.plot(x, [c["mos"] for c in curve], color="C1", label="MOS (E-model)")
    ax2.set_ylabel("MOS")
    ax.set_title("late loss and E-model MOS against playout delay")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], loc="center right")
    p2 = out / "late_loss.png"
    fig.tight_layout()
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


def plot_attacks(out: Path, rep: dict[str, Any]) -> Path:
    """attacks.png: the adversary's top-1 accuracy per attack, design against baseline."""
    plt = _pyplot()
    names = list(rep["designs"]["design"])
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.38
    for i, label in enumerate(("design", "baseline")):
        vals = [rep["designs"][label][n]["top1"] for n in names]
        ax.bar([j + (i - 0.5) * w for j in range(len(names))], vals, w, label=label)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel("top-1 accuracy of the adversary")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{rep['users']} users, {rep['calls']} calls")
    ax.legend()
    p = out / "attacks.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def plot_policies(out: Path, rep: dict[str, Any]) -> Path:
    """policy.png: flow-correlation and timing top-1 (mean over seeds, 95 % interval)
    against data per day both ways, one point per policy, with the goal and the mobile
    budget drawn in."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    floor = rep["chance_top1"] / 4  # log axis: a top-1 of 0 is drawn on the floor
    marks = {"flow_correlation": "o", "timing_likelihood": "s", "session_edges": "^"}
    for i, (attack, mark) in enumerate(marks.items()):
        pts = [p for p in rep["policies"] if attack in p["attacks"]]
        if not pts:
            continue
        x = [p["data_per_day"]["total_mb"] for p in pts]
        y = [max(p["attacks"][attack]["top1"]["mean"], floor) for p in pts]
        err = [p["attacks"][attack]["top1"]["ci95"] for p in pts]
        low = [min(e, v - floor * 0.8) for e, v in zip(err, y, strict=True)]  # stay on the axis
        ax.errorbar(
            x, y, yerr=[low, err], fmt=mark, color=f"C{i}", label=attack, capsize=3, alpha=0.8
        )
    # One label per cluster of policies drawn at about the same place.
    spots: list[tuple[float, float, list[str]]] = []
    for p in rep["policies"]:
        px = float(p["data_per_day"]["total_mb"])
        py = max(max(p["attacks"][a]["top1"]["mean"] for a in marks if a in p["attacks"]), floor)
        for sx, sy, names in spots:
            if abs(px / sx - 1) < 0.03 and abs(py / sy - 1) < 0.5:
                names.append(p["policy"])
                break
        else:
            spots.append((px, py, [p["policy"]]))
    for sx, sy, names in spots:
        ax.annotate(
            "\n".join(names),
            (sx, sy),
            fontsize=7,
            xytext=(5, 3),
            textcoords="offset points",
            va="bottom",
        )
    ax.axhline(rep["goal_top1"], color="C3", ls="--", lw=1, label="goal 1.5/N")
    ax.axhline(rep["chance_top1"], color="grey", ls=":", lw=1, label="chance 1/(N-1)")
    ax.axvline(rep["mobile_budget_mb"], color="C4", ls="--", lw=1, label="mobile budget")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("data per day, up + down (MB)")
    ax.set_ylabel("adversary top-1 (mean over seeds)")
    ax.set_title(
        f"{rep['scenario']}: {rep['users']} users, seeds {rep['seeds']} (0 drawn at chance/4)"
    )
    ax.set_xlim(right=ax.get_xlim()[1] * 1.6)  # room for the labels on the right
    ax.legend(fontsize=8, loc="upper right")
    p = out / "policy.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def plot_sweep(out: Path, rep: dict[str, Any]) -> Path:
    """sweep.png: p99 mouth-to-ear against the delay mean, one line per (hops, frames)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    groups: dict[tuple[Any, Any], list[tuple[float, float]]] = {}
    for p in rep["points"]:
        k = (p.get("network.hops"), p.get("voice.frames_per_packet"))
        groups.setdefault(k, []).append(
            (p.get("mixing.delay_mean_ms", 0.0), p["mouth_to_ear_p99_ms"])
        )
    for (hops, fpp), pts in sorted(groups.items(), key=lambda kv: str(kv[0])):
        pts.sort()
        ax.plot(
            [a for a, _ in pts], [b for _, b in pts], marker="o", label=f"{hops} hops, {fpp} fr"
        )
    ax.axhline(rep["criteria"]["max_mouth_to_ear_p99_ms"], color="grey", ls="--")
    ax.set_xlabel("mean sender-chosen delay per hop (ms)")
    ax.set_ylabel("p99 mouth-to-ear (ms)")
    ax.legend(fontsize=7, ncol=2)
    p = out / "sweep.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def plot_validation(out: Path, measured_s: Any, simulated_s: Any, ks: float) -> Path:
    """validation.png: empirical CDFs of measured and simulated one-way latency."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for data, label in ((measured_s, "measured"), (simulated_s, "simulated")):
        x = np.sort(np.asarray(data)) * 1000.0
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=f"{label} (n={len(x)})")
    ax.set_xlabel("one-way latency (ms)")
    ax.set_ylabel("CDF")
    ax.set_title(f"KS distance {ks:.3f}")
    ax.legend()
    p = out / "validation.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
