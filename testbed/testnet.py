"""A local testnet of real processes on 127.0.0.1: authorities, gateways, mix layers.

    phantom-testnet up --dir ./testnet                 # 3 authorities, 2 gateways, 3x2 mixes
    phantom-testnet status --dir ./testnet             # processes and their metrics
    phantom-testnet down --dir ./testnet               # SIGTERM, then SIGKILL; none left

``up`` writes every config and key into the directory, starts each process in its own
session with its own log file, waits until the authorities publish a topology document that
lists every node (verified against the threshold), and records the processes in
``testnet.json``. Link emulation (``--link-delay-ms``, ``--link-jitter-ms``,
``--link-loss``) is applied by every node to every packet it sends. docs/testnet.md has more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from nacl.signing import SigningKey
from rich.console import Console
from rich.table import Table

from mixnode._args import HelpFormatter
from mixnode._process import child_env
from mixnode.config import (
    DEFAULT_DELIVERY_RATE_HZ,
    RANGES,
    ConfigError,
    DirAuthConfig,
    NodeConfig,
    check_writable_dir,
    check_writable_file,
    make_dirauth_config,
    make_node_config,
    write_config,
)
from mixnode.dirauth import AUTHORITY_KEY_FILE, DESCRIPTOR_DIR, DOCUMENT_DIR, authority_public_key
from mixnode.directory_client import DirectoryClient
from mixnode.keys import KeyStoreError, NodeKeys, create_identity_seed
from mixnode.metrics import parse_prometheus
from overlay import (
    GEOMETRIES,
    VERSION,
    ClientLink,
    Delivery,
    DirectoryError,
    DownlinkKind,
    Geometry,
    LinkError,
    MailboxKey,
    finite_number,
    whole_number,
)

from ._state import STATE_FILE as STATE_FILE  # re-exported: the testnet's library
from ._state import ProcessInfo as ProcessInfo
from ._state import TestnetError as TestnetError
from ._state import TestnetState as TestnetState
from .probe import ProbeError, ProbeSettings, probe

DEFAULT_DIR = Path("testnet")
DEFAULT_BASE_PORT = 32000
UP_TIMEOUT_S = 60.0  # seconds to wait for a complete topology document
DOWN_TIMEOUT_S = 5.0  # seconds between SIGTERM and SIGKILL
PORTS_PER_NODE = 3  # UDP node port, UDP client port (gateways), TCP metrics port
# Upper bounds on the shape: one machine runs every process (a node is 1 + workers).
MAX_AUTHORITIES = 9
MAX_GATEWAYS = 32
MAX_PER_LAYER = 26  # mixes are named by letter: mix-1a .. mix-1z


@dataclass(frozen=True, slots=True)
class TestnetOptions:
    """Shape of the testnet and the settings every node gets."""

    __test__ = False  # not a pytest class

    directory: Path = DEFAULT_DIR
    authorities: int = 3
    threshold: int = 2
    gateways: int = 2
    layers: int = 3
    per_layer: int = 2
    base_port: int = DEFAULT_BASE_PORT
    epoch_length_s: int = 3600
    workers: int = 1
    loop_cover_rate_hz: float = 1.0
    delivery_rate_hz: float = DEFAULT_DELIVERY_RATE_HZ
    link_delay_ms: float = 0.0
    link_jitter_ms: float = 0.0
    link_loss: float = 0.0
    round_interval_s: float = 1.0
    geometry: str = "voice"

    def ports_needed(self) -> int:
        """Ports taken from ``base_port`` upwards: one per authority, three per node."""
        nodes = self.gateways + self.layers * self.per_layer
        return self.authorities + PORTS_PER_NODE * nodes


# Options whose range is a config field's (the message names the option, the range is one).
_OPTION_RANGES = {
    "epoch_length_s": "directory.epoch_length_s",
    "workers": "mixing.workers",
    "loop_cover_rate_hz": "mixing.loop_cover_rate_hz",
    "delivery_rate_hz": "gateway.delivery_rate_hz",
    "link_delay_ms": "link.delay_ms_mean",
    "link_jitter_ms": "link.delay_ms_jitter",
    "link_loss": "link.loss",
    "round_interval_s": "authority.round_interval_s",
}
_FLAGS = {"loop_cover_rate_hz": "--cover-rate-hz", "directory": "--dir"}


def option_flag(name: str) -> str:
    """The command-line flag of a TestnetOptions field (``link_loss`` -> ``--link-loss``)."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def check_options(opts: TestnetOptions) -> None:
    """TestnetError naming the option unless every one is in its range.

    Counts: 1..MAX_AUTHORITIES authorities, threshold 1..authorities, 1..MAX_GATEWAYS
    gateways, 1..3 layers, 1..MAX_PER_LAYER mixes per layer; ``base_port`` 0 (free ports)
    or a port from which ``ports_needed()`` consecutive ports stay below 65536; rates,
    delays and sizes in the range of the config field they become (``mixing.workers``...).
    """
    counts = {
        "authorities": (1, MAX_AUTHORITIES),
        "threshold": (1, opts.authorities),
        "gateways": (1, MAX_GATEWAYS),
        "layers": (1, 3),
        "per_layer": (1, MAX_PER_LAYER),
    }
    for name, (lo, hi) in counts.items():
        _check_range(name, getattr(opts, name), lo, hi, integer=True)
    for name, path in _OPTION_RANGES.items():
        r = RANGES[path]
        _check_range(name, getattr(opts, name), r.lo, r.hi, integer=r.integer)
    if opts.base_port != 0:
        top = 65536 - opts.ports_needed()
        _check_range("base_port", opts.base_port, 1, top, integer=True, zero_ok=True)
    if opts.geometry not in GEOMETRIES:
        wanted = " or ".join(repr(g) for g in GEOMETRIES)
        raise TestnetError(f"geometry: expected {wanted}, got {opts.geometry!r}")


def _check_range(
    name: str, v: object, lo: float, hi: float, *, integer: bool, zero_ok: bool = False
) -> None:
    kind = "a whole number" if integer else "a number"
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok or not lo <= v <= hi:  # type: ignore[operator]
        also = "0 (free ports) or " if zero_ok else ""
        raise TestnetError(f"{option_flag(name)}: expected {also}{kind} in {lo:g}..{hi:g}, got {v}")


_children: dict[int, subprocess.Popen[bytes]] = {}  # started by this process


def _alive(pid: int, config: str) -> bool:
    """True if ``pid`` runs and is the process started with ``config`` (not a reused pid)."""
    child = _children.get(pid)
    if child is not None:  # our own child: exact, even before its exec
        return child.poll() is None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return config.encode() in cmdline


class _Ports:
    """Consecutive ports from ``base``, or free ones chosen by the kernel when base is 0."""

    def __init__(self, base: int) -> None:
        self.next = base
        self._held: list[socket.socket] = []

    def take(self) -> int:
        if self.next:
            self.next += 1
            return self.next - 1
        # Hold each probe socket (TCP and UDP on the same port) until all are chosen, so
        # that no two roles get the same port.
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = int(t.getsockname()[1])
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            t.close()
            return self.take()
        self._held += [t, u]
        return port

    def release(self) -> None:
        for s in self._held:
            s.close()
        self._held.clear()


def _spawn(args: list[str], log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` can reach its workers
            cwd=log.parent,
        )
    _children[proc.pid] = proc
    return proc.pid


def _forget_directory_state(d: Path) -> None:
    """Clear what an earlier run of this directory published (keys and identities stay).

    Ports are chosen anew on each ``up``; an authority that kept the last run's descriptors
    (same node identities, same epoch, old ports) would go on listing the old addresses.
    """
    for sub in (DESCRIPTOR_DIR, DOCUMENT_DIR):
        for path in d.glob(f"auth-*/{sub}"):
            shutil.rmtree(path, ignore_errors=True)
    for path in d.glob("*/topology"):
        shutil.rmtree(path, ignore_errors=True)


@dataclass(slots=True)
class _Plan:
    """Everything ``up`` will write, built and checked in memory first."""

    directory: Path
    state: TestnetState
    new_seeds: dict[Path, bytes]  # authority data dir -> seed of a key not yet on disk
    authorities: list[tuple[str, DirAuthConfig]]  # name, config
    nodes: list[tuple[str, NodeConfig]]


def _plan(opts: TestnetOptions, d: Path) -> _Plan:
    """Ports, authority keys and every config, checked; writes nothing."""
    specs: list[tuple[str, str, int]] = [
        (f"gw-{i + 1}", "gateway", 0) for i in range(opts.gateways)
    ]
    for layer in range(1, opts.layers + 1):
        specs += [(f"mix-{layer}{chr(97 + j)}", "mix", layer) for j in range(opts.per_layer)]
    ports = _Ports(opts.base_port)
    try:
        auth_ports = [ports.take() for _ in range(opts.authorities)]
        node_ports = [(ports.take(), ports.take(), ports.take()) for _ in specs]
    finally:
        ports.release()
    urls: list[str] = []
    keys: list[bytes] = []
    new_seeds: dict[Path, bytes] = {}
    for i in range(opts.authorities):
        ad = d / f"auth-{i + 1}"
        if (ad / AUTHORITY_KEY_FILE).exists():
            try:
                keys.append(authority_public_key(ad))
            except (OSError, KeyStoreError) as exc:
                raise TestnetError(f"{ad / AUTHORITY_KEY_FILE}: {_reason(exc)}") from None
        else:
            new_seeds[ad] = SigningKey.generate().encode()
            keys.append(bytes(SigningKey(new_seeds[ad]).verify_key))
        urls.append(f"http://127.0.0.1:{auth_ports[i]}")
    authorities = [
        (
            f"auth-{i + 1}",
            make_dirauth_config(
                name=f"auth-{i + 1}",
                listen_port=auth_ports[i],
                data_dir=d / f"auth-{i + 1}",
                authorities=urls,
                authority_keys=keys,
                threshold=opts.threshold,
                epoch_length_s=opts.epoch_length_s,
                round_interval_s=opts.round_interval_s,
                geometry=opts.geometry,
                mix_layers=opts.layers,
            ),
        )
        for i in range(opts.authorities)
    ]
    nodes = []
    for (name, role, layer), (node_port, client_port, metrics_port) in zip(
        specs, node_ports, strict=True
    ):
        extra: dict[str, dict[str, object]] = {
            "directory": {"mix_layers": opts.layers},
            "mixing": {"workers": opts.workers, "loop_cover_rate_hz": opts.loop_cover_rate_hz},
            "link": {
                "delay_ms_mean": opts.link_delay_ms,
                "delay_ms_jitter": opts.link_jitter_ms,
                "loss": opts.link_loss,
            },
            "node": {"geometry": opts.geometry},
        }
        if role == "gateway":
            extra["gateway"] = {"delivery_rate_hz": opts.delivery_rate_hz}
        cfg = make_node_config(
            name=name,
            role=role,
            layer=layer,
            listen_port=node_port,
            data_dir=d / name,
            authorities=urls,
            authority_keys=keys,
            threshold=opts.threshold,
            client_port=client_port if role == "gateway" else None,
            metrics_port=metrics_port,
            epoch_length_s=opts.epoch_length_s,
            extra=extra,
        )
        nodes.append((name, cfg))
    state = TestnetState(str(d), urls, [k.hex() for k in keys], opts.threshold, opts.geometry)
    return _Plan(d, state, new_seeds, authorities, nodes)


def _reason(exc: BaseException) -> str:
    return (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)


def _write_keys_and_configs(plan: _Plan) -> None:
    """Authority keys, configs and node keys, each file written atomically."""
    for ad, seed in plan.new_seeds.items():
        create_identity_seed(ad / AUTHORITY_KEY_FILE, seed)
    for name, auth in plan.authorities:
        write_config(plan.directory / f"{name}.toml", auth)
    for name, cfg in plan.nodes:
        write_config(plan.directory / f"{name}.toml", cfg)
        NodeKeys.load_or_create(cfg.node.data_dir)  # `init`'s part


def up(opts: TestnetOptions) -> TestnetState:
    """Check the options, write configs and keys, start every process, wait for the topology.

    TestnetError (naming the option or path) if an option is out of range, the directory
    cannot take files, or a testnet already runs there: then nothing has been written. If
    start-up fails later, every process started is stopped and ``testnet.json`` removed
    (keys, configs and logs stay, for the next run and for reading). Returns the state.
    """
    check_options(opts)
    d = opts.directory.absolute()
    try:
        check_writable_dir(option_flag("directory"), d)
    except ConfigError as exc:
        raise TestnetError(str(exc)) from None
    state_path = d / STATE_FILE
    reused = state_path.exists()
    if reused:
        old = TestnetState.load(d)
        if any(_alive(p.pid, p.config) for p in old.processes):
            raise TestnetError(f"{d}: a testnet is already running (`phantom-testnet down`)")
    plan = _plan(opts, d)  # nothing is written before this returns
    try:
        d.mkdir(parents=True, exist_ok=True)
        if reused:
            _forget_directory_state(d)
        _write_keys_and_configs(plan)
    except (OSError, KeyStoreError) as exc:
        where = exc.filename if isinstance(exc, OSError) and exc.filename else d
        raise TestnetError(f"{option_flag('directory')}: {where}: {_reason(exc)}") from None
    state = plan.state
    expected = len(plan.nodes)
    py = sys.executable
    try:
        for name, auth in plan.authorities:
            cfg_path, log = d / f"{name}.toml", d / f"{name}.log"
            port = auth.authority.listen_port
            pid = _spawn([py, "-m", "mixnode.dirauth", "run", "--config", str(cfg_path)], log)
            state.processes.append(
                ProcessInfo(name, "authority", pid, str(cfg_path), str(log), port)
            )
        for name, cfg in plan.nodes:
            cfg_path, log = d / f"{name}.toml", d / f"{name}.log"
            client_port = cfg.gateway.client_port if cfg.gateway is not None else None
            pid = _spawn([py, "-m", "mixnode.cli", "run", "--config", str(cfg_path)], log)
            state.processes.append(
                ProcessInfo(
                    name,
                    cfg.node.role.value,
                    pid,
                    str(cfg_path),
                    str(log),
                    cfg.node.listen_port,
                    client_port,
                    cfg.metrics.port,
                    cfg.node.layer,
                )
            )
        state.save(state_path)
        wait_for_topology(state, expected=expected)
        wait_for_gateways(state)
    except BaseException:
        if state.processes:
            state.save(state_path)  # what `down` reads, should the next line be interrupted
            down(d)
        state_path.unlink(missing_ok=True)
        raise
    return state


def wait_for_topology(state: TestnetState, expected: int, timeout_s: float = UP_TIMEOUT_S) -> None:
    """Block until a document verified against the threshold lists ``expected`` nodes."""
    client = DirectoryClient(state.authorities, state.authority_key_bytes(), state.threshold)
    # Every node at the address it has now: a directory reused from an earlier run still
    # serves that run's descriptors (same identities, other ports) until nodes republish.
    want = {(p.port, p.client_port) for p in state.nodes()}
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        for p in state.processes:
            if not _alive(p.pid, p.config):
                raise TestnetError(f"{p.name} exited during start-up; see {p.log}")
        try:
            nodes = client.fetch().nodes
            seen = len(want & {(n.port, n.client_port) for n in nodes})
        except (DirectoryError, OSError):
            seen = 0
        if seen >= expected:
            time.sleep(1.5)  # nodes refetch every second while the document changes
            return
        time.sleep(0.3)
    raise TestnetError(f"topology lists {seen} of {expected} nodes after {timeout_s:.0f} s")


def wait_for_gateways(state: TestnetState, timeout_s: float = UP_TIMEOUT_S) -> None:
    """Block until every gateway acknowledges a client attach, as a caller will need.

    A gateway is listed in the document before its client port answers reliably; a
    network handed out earlier makes the first attach of a caller time out.
    """
    doc = DirectoryClient(state.authorities, state.authority_key_bytes(), state.threshold).fetch()
    geometry: Geometry = doc.geometry
    deadline = time.monotonic() + timeout_s
    for g in doc.gateways:
        assert g.client_port is not None
        link = ClientLink(geometry, g.epoch_key(doc.epoch), MailboxKey.generate())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            sock.connect((g.host, g.client_port))
            while True:
                if time.monotonic() > deadline:
                    raise TestnetError(f"gateway {g.name} does not answer attaches")
                try:
                    sock.send(link.attach_frame())  # answered by CHALLENGE, then ATTACHED
                    event = link.receive(sock.recv(4096))
                    if isinstance(event, Delivery) and event.kind is DownlinkKind.ATTACHED:
                        sock.send(link.leave_frame())
                        break
                except (OSError, LinkError):
                    continue


def down(directory: Path, timeout_s: float = DOWN_TIMEOUT_S) -> list[str]:
    """SIGTERM every process (nodes first), SIGKILL what is left; returns names stopped."""
    state = TestnetState.load(directory)
    procs = sorted(state.processes, key=lambda p: p.kind == "authority")
    live = [p for p in procs if _alive(p.pid, p.config)]
    for p in live:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p.pid, p.config) for p in live):
        for p in live:
            _reap(p.pid)
        time.sleep(0.05)
    for p in live:
        for sig_target in (p.pid,):
            if _alive(sig_target, p.config):
                try:
                    os.kill(sig_target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        # Workers of a node share its process group; make sure none outlives it.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _reap(p.pid)
    return [p.name for p in live]


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _children[pid]
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def scrape(port: int, timeout_s: float = 1.0) -> dict[str, float]:
    """A node's metrics as {name{labels}: value} (empty if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return {}
    samples = parse_prometheus(text).items()
    return {f"{n}{{{labels}}}" if labels else n: v for (n, labels), v in samples}


def _sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.split("{")[0] == prefix)


def status(directory: Path) -> None:
    """Print a table of the testnet's processes and their aggregate metrics."""
    state = TestnetState.load(directory)
    table = Table(title=f"testnet in {state.directory}")
    for col in ("name", "kind", "pid", "alive", "port", "in", "out", "drops", "queue", "cover"):
        table.add_column(col, justify="right" if col not in ("name", "kind") else "left")
    for p in state.processes:
        alive = _alive(p.pid, p.config)
        m = scrape(p.metrics_port) if alive and p.metrics_port else {}

        def num(name: str, metrics: dict[str, float] = m) -> str:
            return f"{_sum(metrics, name):.0f}" if metrics else "-"

        table.add_row(
            p.name,
            p.kind,
            str(p.pid),
            "[green]yes[/green]" if alive else "[red]no[/red]",
            str(p.port),
            num("phantom_packets_in_total"),
            num("phantom_packets_out_total"),
            num("phantom_drops_total"),
            num("phantom_queue_depth"),
            num("phantom_cover_sent_total"),
        )
    Console().print(table)


def run_probe(args: argparse.Namespace) -> None:
    """``phantom-testnet probe``: measure, write JSON, print percentiles."""
    try:
        settings = ProbeSettings(
            duration_s=args.duration_s,
            streams=args.streams,
            mean_delay_s=args.mean_delay_ms / 1000.0,
            frames_per_packet=args.frames_per_packet,
        )
    except ProbeError as exc:
        raise TestnetError(str(exc)) from None
    state = TestnetState.load(args.dir)
    try:  # before measuring: a result that cannot be written is a run lost
        check_writable_file("--out", args.out)
    except ConfigError as exc:
        raise TestnetError(str(exc)) from None
    try:
        result = trio.run(probe, state, settings)
    except ProbeError as exc:  # raised before any task starts, so never inside a group
        raise TestnetError(str(exc)) from None
    try:
        args.out.write_text(json.dumps(result.to_dict()))
    except OSError as exc:
        raise TestnetError(f"--out: {args.out}: {exc.strerror or exc}") from None
    print(
        f"{result.received}/{result.sent} packets, loss {result.loss:.4f}, one-way ms "
        f"{result.percentiles_ms()}; samples in {args.out}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``phantom-testnet`` argument parser."""
    p = argparse.ArgumentParser(
        prog="phantom-testnet", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser(
        "up", help="generate configs and keys, start every process", formatter_class=HelpFormatter
    )
    s = sub.add_parser("status", help="show processes and metrics", formatter_class=HelpFormatter)
    dn = sub.add_parser("down", help="stop every process", formatter_class=HelpFormatter)
    pr = sub.add_parser(
        "probe",
        help="measure one-way latency of voice-like streams (for phantom-sim validate)",
        formatter_class=HelpFormatter,
    )
    for q in (u, s, dn, pr):
        q.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="testnet directory")
    count = whole_number(0)
    real = finite_number(0)
    u.add_argument("--authorities", type=count, default=3, help="directory authorities")
    u.add_argument("--threshold", type=count, default=2, help="signatures a document needs")
    u.add_argument("--gateways", type=count, default=2, help="gateways (layer 0)")
    u.add_argument("--layers", type=count, default=3, help="mix layers (1..3)")
    u.add_argument("--per-layer", type=count, default=2, help="mixes per layer")
    u.add_argument(
        "--base-port", type=count, default=DEFAULT_BASE_PORT, help="first port (0: free ports)"
    )
    u.add_argument("--epoch-length-s", type=count, default=3600, help="seconds per epoch")
    u.add_argument("--workers", type=count, default=1, help="worker processes per node")
    u.add_argument("--cover-rate-hz", type=real, default=1.0, help="loop cover per node")
    u.add_argument("--delivery-rate-hz", type=real, default=DEFAULT_DELIVERY_RATE_HZ,
                   help="gateway downlink rate, Hz")  # fmt: skip
    u.add_argument("--link-delay-ms", type=real, default=0.0, help="mean one-way link delay")
    u.add_argument("--link-jitter-ms", type=real, default=0.0, help="its standard deviation")
    u.add_argument("--link-loss", type=real, default=0.0, help="loss probability per packet")
    dn.add_argument("--timeout", type=real, default=DOWN_TIMEOUT_S, help="seconds before SIGKILL")
    pr.add_argument("--duration-s", type=real, default=20.0, help="seconds each stream sends")
    pr.add_argument("--streams", type=count, default=4, help="concurrent streams")
    pr.add_argument("--mean-delay-ms", type=real, default=27.5, help="sender delay per hop")
    pr.add_argument("--frames-per-packet", type=count, default=1, help="20 ms frames per slot")
    pr.add_argument("--out", type=Path, default=Path("measured.json"), help="JSON output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``phantom-testnet``: 0 ok, 2 with a message naming the option,
    path or field at fault (nothing written by a refused ``up``), 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            opts = TestnetOptions(
                directory=args.dir,
                authorities=args.authorities,
                threshold=args.threshold,
                gateways=args.gateways,
                layers=args.layers,
                per_layer=args.per_layer,
                base_port=args.base_port,
                epoch_length_s=args.epoch_length_s,
                workers=args.workers,
                loop_cover_rate_hz=args.cover_rate_hz,
                delivery_rate_hz=args.delivery_rate_hz,
                link_delay_ms=args.link_delay_ms,
                link_jitter_ms=args.link_jitter_ms,
                link_loss=args.link_loss,
            )
            state = up(opts)
            print(f"testnet up in {state.directory}: {len(state.processes)} processes")
        elif args.command == "status":
            status(args.dir)
        elif args.command == "probe":
            run_probe(args)
        else:
            stopped = down(args.dir, args.timeout)
            print(f"stopped {len(stopped)} processes")
    except (TestnetError, ConfigError, KeyStoreError) as exc:
        print(f"phantom-testnet: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
