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
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "testnet.json"
DEFAULT_DIR = Path("testnet")
DEFAULT_BASE_PORT = 32000
UP_TIMEOUT_S = 60.0  # seconds to wait for a complete topology document
DOWN_TIMEOUT_S = 5.0  # seconds between SIGTERM and SIGKILL


class TestnetError(Exception):
    """The testnet could not be started, found or stopped; the message says why."""


@dataclass(slots=True)
class ProcessInfo:
    """One process of the testnet, as recorded in the state file."""

    name: str
    kind: str  # "authority", "gateway" or "mix"
    pid: int
    config: str
    log: str
    port: int  # HTTP port of an authority, UDP node port of a node
    client_port: int | None = None
    metrics_port: int | None = None
    layer: int = 0


@dataclass(slots=True)
class TestnetState:
    """What ``up`` wrote: processes and what a client needs to find the network."""

    __test__ = False  # not a pytest class

    directory: str
    authorities: list[str]
    authority_keys: list[str]  # hex
    threshold: int
    geometry: str
    processes: list[ProcessInfo] = field(default_factory=list)

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, directory: Path) -> TestnetState:
        path = Path(directory) / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise TestnetError(f"{path}: no testnet here (run `phantom-testnet up`)") from None
        procs = [ProcessInfo(**p) for p in raw.pop("processes")]
        return cls(**raw, processes=procs)

    def nodes(self, kind: str | None = None) -> list[ProcessInfo]:
        """Node processes (not authorities), optionally only ``kind``."""
        return [
            p for p in self.processes if p.kind != "authority" and (kind is None or p.kind == kind)
        ]

    def authority_key_bytes(self) -> list[bytes]:
        return [bytes.fromhex(k) for k in self.authority_keys]


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
    delivery_rate_hz: float = 50.0
    link_delay_ms: float = 0.0
    link_jitter_ms: float = 0.0
    link_loss: float = 0.0
    round_interval_s: float = 1.0
    geometry: str = "voice"


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


def child_env() -> dict[str, str]:
    """The environment for child processes: this package importable even if not installed."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH", "")) if x)
    return env


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
    import shutil

    from mixnode.dirauth import DESCRIPTOR_DIR, DOCUMENT_DIR

    for sub in (DESCRIPTOR_DIR, DOCUMENT_DIR):
        for path in d.glob(f"auth-*/{sub}"):
            shutil.rmtree(path, ignore_errors=True)
    for path in d.glob("*/topology"):
        shutil.rmtree(path, ignore_errors=True)


def up(opts: TestnetOptions) -> TestnetState:
    """Write configs and keys, start every process, wait for the topology; returns the state."""
    from mixnode.config import (
        AuthoritySection,
        DirAuthConfig,
        DirectorySection,
        load_node_config,
        make_node_config,
        write_config,
    )
    from mixnode.dirauth import AUTHORITY_KEY_FILE, authority_public_key, init_authority_key
    from mixnode.keys import NodeKeys

    d = opts.directory.resolve()
    d.mkdir(parents=True, exist_ok=True)
    state_path = d / STATE_FILE
    if state_path.exists():
        old = TestnetState.load(d)
        if any(_alive(p.pid, p.config) for p in old.processes):
            raise TestnetError(f"{d}: a testnet is already running (`phantom-testnet down`)")
        _forget_directory_state(d)
    if not 1 <= opts.threshold <= opts.authorities:
        raise TestnetError("--threshold must be between 1 and --authorities")
    specs: list[tuple[str, str, int]] = [
        (f"gw-{i + 1}", "gateway", 0) for i in range(opts.gateways)
    ]
    for layer in range(1, opts.layers + 1):
        specs += [(f"mix-{layer}{chr(97 + j)}", "mix", layer) for j in range(opts.per_layer)]
    ports = _Ports(opts.base_port)
    auth_ports = [ports.take() for _ in range(opts.authorities)]
    node_ports = [(ports.take(), ports.take(), ports.take()) for _ in specs]
    ports.release()
    urls, keys = [], []
    auth_dirs = []
    for i in range(opts.authorities):
        ad = d / f"auth-{i + 1}"
        pub = (
            authority_public_key(ad)
            if (ad / AUTHORITY_KEY_FILE).exists()
            else init_authority_key(ad)
        )
        urls.append(f"http://127.0.0.1:{auth_ports[i]}")
        keys.append(pub)
        auth_dirs.append(ad)
    directory = DirectorySection(
        authorities=tuple(urls),
        authority_keys=tuple(keys),
        threshold=opts.threshold,
        epoch_length_s=opts.epoch_length_s,
        genesis_s=0,
        mix_layers=opts.layers,
    )
    state = TestnetState(str(d), urls, [k.hex() for k in keys], opts.threshold, opts.geometry)
    py = sys.executable
    try:
        for i, ad in enumerate(auth_dirs):
            name = f"auth-{i + 1}"
            cfg_path = d / f"{name}.toml"
            auth = AuthoritySection(
                name=name,
                listen_host="127.0.0.1",
                listen_port=auth_ports[i],
                data_dir=ad,
                round_interval_s=opts.round_interval_s,
                geometry=opts.geometry,
            )
            write_config(cfg_path, DirAuthConfig(auth, directory))
            pid = _spawn(
                [py, "-m", "mixnode.dirauth", "run", "--config", str(cfg_path)], d / f"{name}.log"
            )
            state.processes.append(
                ProcessInfo(
                    name, "authority", pid, str(cfg_path), str(d / f"{name}.log"), auth_ports[i]
                )
            )
        for (name, role, layer), (node_port, client_port, metrics_port) in zip(
            specs, node_ports, strict=True
        ):
            extra: dict[str, dict[str, object]] = {
                "directory": {
                    "threshold": opts.threshold,
                    "mix_layers": opts.layers,
                },
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
                client_port=client_port if role == "gateway" else None,
                metrics_port=metrics_port,
                epoch_length_s=opts.epoch_length_s,
                extra=extra,
            )
            cfg_path = d / f"{name}.toml"
            write_config(cfg_path, cfg)
            NodeKeys.load_or_create(load_node_config(cfg_path).node.data_dir)  # `init`'s part
            log = d / f"{name}.log"
            pid = _spawn([py, "-m", "mixnode.cli", "run", "--config", str(cfg_path)], log)
            state.processes.append(
                ProcessInfo(
                    name,
                    role,
                    pid,
                    str(cfg_path),
                    str(log),
                    node_port,
                    client_port if role == "gateway" else None,
                    metrics_port,
                    layer,
                )
            )
        state.save(state_path)
        wait_for_topology(state, expected=len(specs))
        wait_for_gateways(state)
    except BaseException:
        state.save(state_path)
        down(d)
        raise
    return state


def wait_for_topology(state: TestnetState, expected: int, timeout_s: float = UP_TIMEOUT_S) -> None:
    """Block until a document verified against the threshold lists ``expected`` nodes."""
    from mixnode.directory_client import DirectoryClient
    from overlay import DirectoryError

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
    from mixnode.directory_client import DirectoryClient
    from overlay import ClientLink, Delivery, DownlinkKind, Geometry, LinkError, MailboxKey

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
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def _sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.split("{")[0] == prefix)


def status(directory: Path) -> None:
    """Print a table of the testnet's processes and their aggregate metrics."""
    from rich.console import Console
    from rich.table import Table

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
    import trio

    from mixnode.probe import ProbeError, ProbeSettings, probe

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
    try:
        result = trio.run(probe, state, settings)
    except ProbeError as exc:  # raised before any task starts, so never inside a group
        raise TestnetError(str(exc)) from None
    args.out.write_text(json.dumps(result.to_dict()))
    print(
        f"{result.received}/{result.sent} packets, loss {result.loss:.4f}, one-way ms "
        f"{result.percentiles_ms()}; samples in {args.out}"
    )


def _nonneg(kind: type, what: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> object:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``phantom-testnet`` argument parser."""
    p = argparse.ArgumentParser(prog="phantom-testnet", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="generate configs and keys, start every process")
    s = sub.add_parser("status", help="show processes and metrics")
    dn = sub.add_parser("down", help="stop every process")
    pr = sub.add_parser(
        "probe", help="measure one-way latency of voice-like streams (for phantom-sim validate)"
    )
    for q in (u, s, dn, pr):
        q.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="testnet directory")
    count = _nonneg(int, "a whole number >= 0")
    real = _nonneg(float, "a number >= 0")
    u.add_argument("--authorities", type=count, default=3)
    u.add_argument("--threshold", type=count, default=2)
    u.add_argument("--gateways", type=count, default=2)
    u.add_argument("--layers", type=count, default=3, help="mix layers (1..3)")
    u.add_argument("--per-layer", type=count, default=2, help="mixes per layer")
    u.add_argument("--base-port", type=count, default=DEFAULT_BASE_PORT)
    u.add_argument("--epoch-length-s", type=count, default=3600)
    u.add_argument("--workers", type=count, default=1, help="worker processes per node")
    u.add_argument("--cover-rate-hz", type=real, default=1.0, help="loop cover per node")
    u.add_argument("--delivery-rate-hz", type=real, default=50.0, help="gateway downlink rate")
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
    """Entry point of ``phantom-testnet``."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            if args.gateways < 1 or args.per_layer < 1 or not 1 <= args.layers <= 3:
                raise TestnetError("need --gateways >= 1, --per-layer >= 1, --layers in 1..3")
            if args.link_loss >= 1:
                raise TestnetError("--link-loss must be below 1")
            opts = TestnetOptions(
                directory=args.dir,
                authorities=args.authorities,
                threshold=args.threshold,
                gateways=args.gateways,
                layers=args.layers,
                per_layer=args.per_layer,
                base_port=args.base_port,
                epoch_length_s=args.epoch_length_s,
                workers=max(1, args.workers),
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
    except TestnetError as exc:
        print(f"phantom-testnet: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a config or key problem: say what, not a traceback
        from overlay import PhantomError

        if isinstance(exc, PhantomError | ValueError):
            print(f"phantom-testnet: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
