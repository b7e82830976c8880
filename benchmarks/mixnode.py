"""Mix node throughput: one real node process on loopback under rising load.

    python -m benchmarks.mixnode            # one JSON object on stdout, ~45 s
    python -m benchmarks.mixnode --check    # exit 1 if the target is missed

Starts one directory authority and one mix node (layer 1, ``--workers`` processes), and
registers a sink as the layer-2 node, so the node forwards every packet to the sink. The
load generator pre-builds all packets (creation costs more than processing), then sends
each rate step from a separate process, paced in 1 ms batches, while the sink records
arrivals. Each packet's id is the group element the node will forward it with, computed
at build time with the node's key (the benchmark is the node's operator).

A step is *held* when no packet is lost and the p99 of the added latency (arrival minus
send minus the sender-chosen delay) is at most 5 ms. In the same run, the single-core
``process_packet`` rate is measured in this process, and the same loop in ``--workers``
processes at once (the most the cores give at that moment, other load included). Target:
the highest held rate is at least 1.3x the single-core rate (the node uses both cores).

``replay_check_us`` prices the node-wide replay filter (mixnode/replay.py) per packet, in
this process: a tag added to a private in-memory filter (the baseline), to the shared file
filter under its stripe lock (what the workers do), and the subgroup check that was the
alternative (refusing any alpha outside the prime-order subgroup), beside ``process_packet``.
"""

from __future__ import annotations

import argparse
import array
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nacl.bindings import crypto_core_ed25519_is_valid_point

from benchmarks._harness import emit, machine, median_rate
from mixnode.core import DEFAULT_REPLAY_BITS_LOG2, ReplayCache
from mixnode.replay import ensure_replay_file, open_replay_file
from overlay import (
    VOICE,
    Forward,
    Hop,
    LinkCodec,
    NodeDescriptor,
    NodeRole,
    canonical_json,
    create_forward,
    epoch_at,
    exp_delay_us,
    node_id_for,
    process_packet,
    public_key,
    sign_descriptor,
)

TARGET_RATIO = 1.3
P99_LIMIT_MS = 5.0  # added latency allowed at the 99th percentile
STEP_S = 1.0  # seconds of load per rate step
STEPS = (0.3, 0.45, 0.6, 0.75, 0.9, 1.1, 1.3)  # rates as multiples of the single-core rate
MEAN_DELAY_S = 0.001  # sender-chosen delay at the node (exponential mean)
EPOCH_LENGTH_S = 3600
CODEC = LinkCodec(VOICE)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _single_core_rate() -> float:
    keys = [os.urandom(32) for _ in range(5)]
    path = [Hop(bytes([i]) * 16, public_key(k), 1000) for i, k in enumerate(keys)]
    pkt = create_forward(VOICE, path, b"m" * 16, os.urandom(VOICE.user_payload))
    return median_rate(lambda: process_packet(VOICE, keys[0], pkt), number=1500, repeats=5)


def _replay_costs(tmp: Path) -> dict[str, float]:
    """Microseconds per packet of the replay check variants (medians of 5 runs)."""
    sk = os.urandom(32)
    path = ensure_replay_file(tmp / "replay", 1, public_key(sk), DEFAULT_REPLAY_BITS_LOG2)
    shared = open_replay_file(path, 1, sk, DEFAULT_REPLAY_BITS_LOG2)
    private = ReplayCache(DEFAULT_REPLAY_BITS_LOG2)
    n = 20_000
    tags = [os.urandom(32) for _ in range(6 * n)]
    out = {}
    for name, cache in (("private", private), ("shared_locked", shared)):
        it = iter(tags)
        out[name] = 1e6 / median_rate(lambda c=cache, i=it: c.add(next(i)), number=n, repeats=5)
    shared.close()
    alpha = public_key(os.urandom(32))

    def in_subgroup() -> bool:  # Montgomery u -> Edwards y; libsodium multiplies by l
        u = int.from_bytes(alpha, "little")
        y = (u - 1) * pow(u + 1, -1, _P) % _P
        return bool(crypto_core_ed25519_is_valid_point(y.to_bytes(32, "little")))

    out["subgroup_check"] = 1e6 / median_rate(in_subgroup, number=2000, repeats=5)
    return {k: round(v, 2) for k, v in out.items()}


_P = 2**255 - 19  # the field prime of Curve25519


def _bare_loop(n: int, conn: object) -> None:
    keys = [os.urandom(32) for _ in range(5)]
    path = [Hop(bytes([i]) * 16, public_key(k), 1000) for i, k in enumerate(keys)]
    pkt = create_forward(VOICE, path, b"m" * 16, os.urandom(VOICE.user_payload))
    t0 = time.perf_counter()
    for _ in range(n):
        process_packet(VOICE, keys[0], pkt)
    conn.send(n / (time.perf_counter() - t0))  # type: ignore[attr-defined]


def _parallel_rate(processes: int, n: int = 6000) -> float:
    """Packets/s of ``processes`` bare process_packet loops at once: the machine's ceiling."""
    ctx = mp.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(processes)]
    procs = [ctx.Process(target=_bare_loop, args=(n, child)) for _, child in pipes]
    for p in procs:
        p.start()
    rates = [parent.recv() for parent, _ in pipes]
    for p in procs:
        p.join()
    return float(sum(rates))


def _build(args: tuple[int, bytes, bytes, bytes, bytes, bytes]) -> list[tuple[bytes, bytes, int]]:
    """(frame, id, delay_us) for ``count`` packets node -> sink (runs in a pool worker)."""
    count, node_id, node_sk, sink_id, sink_pk, _ = args
    node_pk = public_key(node_sk)
    out = []
    for _ in range(count):
        delay = exp_delay_us(MEAN_DELAY_S)
        path = [Hop(node_id, node_pk, delay), Hop(sink_id, sink_pk, 0)]
        pkt = create_forward(VOICE, path, b"m" * 16, b"bench")
        fwd = process_packet(VOICE, node_sk, pkt)
        assert isinstance(fwd, Forward)
        out.append((CODEC.node_packet(pkt), fwd.packet[1:17], delay))
    return out


def _sender(frames: list[bytes], rate: float, addr: tuple[str, int], conn: object) -> None:
    """Send ``frames`` at ``rate`` per second in 1 ms batches; report the send times."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    times = array.array("d", bytes(8 * len(frames)))
    t0 = time.time() + 0.02
    i, n = 0, len(frames)
    while i < n:
        now = time.time()
        due = min(n, int((now - t0) * rate) + 1)
        while i < due:
            times[i] = time.time()
            sock.sendto(frames[i], addr)
            i += 1
        time.sleep(0.001)
    conn.send(times.tobytes())  # type: ignore[attr-defined]


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def _machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / _TICK, sum(vals) / _TICK


def _run_step(
    sink: socket.socket,
    batch: list[tuple[bytes, bytes, int]],
    rate: float,
    port: int,
    node_pid: int,
) -> dict[str, object]:
    workers = _children(node_pid)
    cpu0 = [_cpu_s(p) for p in workers] + [_cpu_s(node_pid), _cpu_s(os.getpid())]
    busy0, total0 = _machine_busy_s()
    frames = [b[0] for b in batch]
    ids = {b[1]: i for i, b in enumerate(batch)}
    parent, child = mp.Pipe()
    ctx = mp.get_context("fork")
    proc = ctx.Process(target=_sender, args=(frames, rate, ("127.0.0.1", port), child))
    proc.start()
    arrivals: dict[int, float] = {}
    sink.settimeout(0.5)
    deadline = time.time() + len(batch) / rate + 5.0
    while time.time() < deadline:
        try:
            data = sink.recv(4096)
        except TimeoutError:
            if not proc.is_alive():
                break
            continue
        t = time.time()
        i = ids.get(data[3:19])
        if i is not None:
            arrivals.setdefault(i, t)
        if len(arrivals) == len(batch):
            break
    sent = array.array("d")
    sent.frombytes(parent.recv())
    sender_cpu = _cpu_s(proc.pid)
    cpu1 = [_cpu_s(p) for p in workers] + [_cpu_s(node_pid), _cpu_s(os.getpid())]
    busy1, total1 = _machine_busy_s()
    proc.join()
    wall = max(1e-9, (total1 - total0) / (os.cpu_count() or 1))
    added = sorted((arrivals[i] - sent[i] - batch[i][2] / 1e6) * 1000.0 for i in arrivals)
    p99 = added[min(len(added) - 1, int(0.99 * len(added)))] if added else float("inf")
    achieved = len(batch) / max(1e-9, sent[-1] - sent[0])
    return {
        "rate_pps": round(rate),
        "achieved_send_pps": round(achieved),
        "sent": len(batch),
        "lost": len(batch) - len(arrivals),
        "p50_added_ms": round(statistics.median(added), 3) if added else None,  # type: ignore[dict-item]
        "p99_added_ms": round(p99, 3),
        # CPU cores in use during the step (CPU seconds / wall seconds), by role.
        "cores_node_workers": [round((cpu1[i] - cpu0[i]) / wall, 2) for i in range(len(workers))],
        "cores_node_main": round((cpu1[-2] - cpu0[-2]) / wall, 2),
        "cores_loadgen": round((cpu1[-1] - cpu0[-1] + sender_cpu) / wall, 2),
        "cores_machine": round((busy1 - busy0) / wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mixnode")
    p.add_argument("--workers", type=int, default=2, help="node worker processes")
    p.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    p.add_argument(
        "--steps",
        type=lambda t: tuple(float(x) for x in t.split(",")),
        default=STEPS,
        help="rates as multiples of the single-core rate, comma-separated",
    )
    args = p.parse_args(argv)

    from nacl.signing import SigningKey

    from mixnode._process import child_env
    from mixnode.config import (
        AuthoritySection,
        DirAuthConfig,
        DirectorySection,
        make_node_config,
        write_config,
    )
    from mixnode.dirauth import init_authority_key
    from mixnode.directory_client import DirectoryClient, publish_descriptor
    from mixnode.keys import NodeKeys

    single = _single_core_rate()
    parallel = _parallel_rate(args.workers)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mixnode-"))
    replay_us = _replay_costs(tmp)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        auth_port, node_port, metrics_port = _free_port(), _free_port(), _free_port()
        auth_key = init_authority_key(tmp / "auth")
        url = f"http://127.0.0.1:{auth_port}"
        directory = DirectorySection((url,), (auth_key,), 1, EPOCH_LENGTH_S, 0, 3)
        auth_cfg = DirAuthConfig(
            AuthoritySection("auth", "127.0.0.1", auth_port, tmp / "auth", 0.5, "voice"),
            directory,
        )
        write_config(tmp / "auth.toml", auth_cfg)
        node_cfg = make_node_config(
            name="bench-mix",
            role="mix",
            layer=1,
            listen_port=node_port,
            data_dir=tmp / "node",
            authorities=[url],
            authority_keys=[auth_key],
            metrics_port=metrics_port,
            epoch_length_s=EPOCH_LENGTH_S,
            extra={"mixing": {"workers": args.workers, "loop_cover_rate_hz": 0.0}},
        )
        write_config(tmp / "node.toml", node_cfg)
        NodeKeys.load_or_create(tmp / "node")
        env = child_env()
        logs = open(tmp / "processes.log", "ab")  # noqa: SIM115
        for cmd in (
            ["-m", "mixnode.dirauth", "run", "--config", str(tmp / "auth.toml")],
            ["-m", "mixnode.cli", "run", "--config", str(tmp / "node.toml")],
        ):
            procs.append(
                subprocess.Popen([sys.executable, *cmd], env=env, stdout=logs, stderr=logs)
            )
        # The sink: a layer-2 "node" that only counts arrivals.
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sink.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root)
        except OSError:
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sink.bind(("127.0.0.1", 0))
        ident = SigningKey(os.urandom(32))
        sink_sk = os.urandom(32)
        epoch = epoch_at(time.time(), EPOCH_LENGTH_S)
        sink_desc = NodeDescriptor(
            node_id_for(bytes(ident.verify_key)),
            "bench-sink",
            NodeRole.MIX,
            2,
            "127.0.0.1",
            sink.getsockname()[1],
            None,
            bytes(ident.verify_key),
            {epoch: public_key(sink_sk), epoch + 1: public_key(sink_sk)},
            published_at=int(time.time()),  # authorities list only recent publishers
        )
        client = DirectoryClient([url], [auth_key], 1)
        deadline = time.time() + 30
        doc = None
        while time.time() < deadline:
            try:
                sig = sign_descriptor(sink_desc, bytes(ident))
                body = canonical_json(
                    {"descriptor": sink_desc.to_bytes().decode("ascii"), "signature": sig.hex()}
                )
                publish_descriptor([url], body)
                doc = client.fetch()
                if len(doc.nodes) == 2:
                    break
            except Exception:  # not up yet
                pass
            time.sleep(0.3)
        if doc is None or len(doc.nodes) != 2:
            raise RuntimeError(f"topology never listed node and sink; see {tmp}")
        time.sleep(1.5)  # the node refetches every second while the document changes
        node_keys = NodeKeys.load(tmp / "node")
        node_sk = node_keys.epoch_private(epoch)

        rates = [single * m for m in args.steps]
        total = [int(r * STEP_S) for r in rates]
        jobs = []
        for n in total:
            half = n // 2
            for part in (half, n - half):
                jobs.append(
                    (part, node_keys.node_id, node_sk, sink_desc.node_id, public_key(sink_sk), b"")
                )
        t_build = time.perf_counter()
        with mp.get_context("fork").Pool(2) as pool:
            parts = pool.map(_build, jobs)
        build_s = time.perf_counter() - t_build
        batches = [parts[2 * i] + parts[2 * i + 1] for i in range(len(total))]

        busy0, total0 = _machine_busy_s()
        time.sleep(1.0)
        busy1, total1 = _machine_busy_s()
        background = (busy1 - busy0) / max(1e-9, (total1 - total0) / (os.cpu_count() or 1))
        steps = []
        best = 0.0
        for rate, batch in zip(rates, batches, strict=True):
            r = _run_step(sink, batch, rate, node_port, procs[1].pid)
            r["held"] = r["lost"] == 0 and r["p99_added_ms"] <= P99_LIMIT_MS  # type: ignore[assignment]
            steps.append(r)
            if r["held"]:
                best = max(best, r["achieved_send_pps"])
            time.sleep(0.5)
        ratio = best / single
        result = {
            "benchmark": "mixnode",
            "geometry": VOICE.name,
            "workers": args.workers,
            "cores": os.cpu_count(),
            "single_core_process_per_s": round(single),
            # The same loop in ``workers`` processes at once: what the cores give right now.
            "parallel_bare_process_per_s": round(parallel),
            "parallel_bare_vs_single": round(parallel / single, 3),
            "node_sustained_pps": round(best),
            "ratio_vs_single_core": round(ratio, 3),
            "ratio_vs_parallel_bare": round(best / parallel, 3),
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio >= TARGET_RATIO,
            "p99_limit_ms": P99_LIMIT_MS,
            "mean_delay_ms": MEAN_DELAY_S * 1000,
            "packet_build_s": round(build_s, 1),
            "replay_check_us": {**replay_us, "process_packet": round(1e6 / single, 2)},
            # Cores busy with other work on this machine while the node sat idle.
            "background_cores": round(background, 2),
            "steps": steps,
            **machine(),
        }
        emit(result)
        return 1 if args.check and not result["meets_target"] else 0
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
