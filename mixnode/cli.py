"""``phantom-mixnode``: set up, run and watch a mix node or gateway.

    $ phantom-mixnode init --config mix1.toml --role mix --layer 1 --name mix-1 \\
          --listen-port 31011 --data-dir mix-1 \\
          --authority http://127.0.0.1:31900 --authority-key <64 hex digits>
    $ phantom-mixnode init --config mix2.toml --role mix --layer 2 --name mix-2 \\
          --data-dir mix-2 --network network.json --network-fingerprint <64 hex digits>
    $ phantom-mixnode run --config mix1.toml
    $ phantom-mixnode status --config mix1.toml
    $ phantom-mixnode key --config mix1.toml     # the identity key, for the authorities
    $ phantom-mixnode leave --config mix1.toml   # (node stopped) withdraw from the network

``init`` checks every argument and path, creates the node's keys (mode 0600) in its data
dir and writes the config last, so a refused init leaves nothing behind; ``run`` loads
both, checks that the data dir takes new files (keys rotate every epoch) and hands over
to the daemon (``--log-level``, ``--log-format text|json``); ``init --network`` takes the
authorities, keys, threshold and epochs from a network file (``phantom-dirauth network``)
whose threshold of signatures it verifies; ports left out are picked free on this host and
unused by the configs beside ``--config``; ``status`` reads the node's loopback
``/healthz`` and ``/metrics`` and asks the authorities whether the node is listed now and
in the next epoch (``--json``: one object). Exit codes: 0 ok (``status``: serving),
1 runtime failure (``status``: not running, not listed or unhealthy), 2 bad config, keys,
argument or path (the message names the field, option or path), 3 missing component.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import socket
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from mixnode._args import HelpFormatter
from mixnode._logging import add_logging_options, setup_logging
from overlay import (
    MAX_NETWORK_BYTES,
    VERSION,
    DirectoryError,
    NetworkBundle,
    NodeWithdrawal,
    PhantomError,
    TopologyDocument,
    canonical_json,
    epoch_at,
    hex_fingerprint,
    hex_key,
    network_file_url,
    open_network_file,
    port,
    sign_withdrawal,
    whole_number,
)

from ._http import http_exchange
from .config import (
    ConfigError,
    NodeConfig,
    as_loaded_from,
    check_genesis,
    check_writable_dir,
    check_writable_file,
    load_node_config,
    make_node_config,
    path_error,
    write_config,
)
from .directory_client import CACHE_DIR, DirectoryClient, publish_report, race
from .keys import EPOCH_DIR, KeyStoreError, NodeKeys
from .metrics import parse_prometheus

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_MISSING = 3
STATUS_TIMEOUT_S = 3.0  # s for each exchange of `status` (node endpoint, authorities)
MAX_STATUS_BYTES = 4 * 1024 * 1024  # bytes read from the node's endpoint at most
NETWORK_FETCH_TIMEOUT_S = 10.0  # s, the whole exchange fetching a network file by URL
FIRST_LISTEN_PORT = 31000  # UDP ports init picks from, upwards, when none is given
FIRST_METRICS_PORT = 9100  # TCP (loopback) metrics ports init picks from
PORT_SEARCH = 1000  # ports tried at most from each start


class CliError(PhantomError):
    """A command cannot go on; the message says what to fix."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------
# init


def _cmd_init(args: argparse.Namespace) -> int:
    """Check every argument and path first; then create the keys, then write the config.

    A refused init writes nothing, so running it again with the fix needs no --force.
    """
    path = Path(args.config)
    if path.is_file() and not args.force:  # anything else there: check_writable_file
        raise CliError(f"{path} exists; use --force to overwrite the config", EXIT_CONFIG)
    if args.role == "mix" and args.layer is None:
        raise CliError("--layer is required for a mix (1..3)", EXIT_CONFIG)
    extra: dict[str, dict[str, object]] = {"mixing": {"workers": args.workers}, "node": {}}
    if args.public_host:
        extra["node"]["public_host"] = args.public_host
    network = _network_for_init(args)
    if network is not None:
        authorities = list(network.authorities)
        authority_keys = list(network.authority_keys)
        threshold: int | None = network.threshold
        epoch_length_s = network.epoch_length_s
        extra["directory"] = {"genesis_s": network.genesis_s, "mix_layers": network.mix_layers}
        extra["node"]["geometry"] = network.geometry
    else:
        authorities = list(args.authority)
        authority_keys = [bytes.fromhex(k) for k in args.authority_key]
        threshold = args.threshold
        epoch_length_s = args.epoch_length_s if args.epoch_length_s is not None else 3600
    listen_port, client_port, metrics_port = _pick_ports(args, path)
    cfg = make_node_config(
        name=args.name,
        role=args.role,
        layer=args.layer if args.layer is not None else 0,
        listen_host=args.listen_host,
        listen_port=listen_port,
        client_port=client_port,
        data_dir=Path(args.data_dir),
        authorities=authorities,
        authority_keys=authority_keys,
        threshold=threshold,
        metrics_port=metrics_port,
        epoch_length_s=epoch_length_s,
        extra=extra,
    )
    check_writable_file("--config", path)
    loaded = as_loaded_from(cfg, path)  # data_dir resolved against the config's directory
    now = time.time()
    d = loaded.directory
    check_genesis(d, now)
    _check_data_dir(loaded)
    keys = _keys(loaded, NodeKeys.load_or_create)
    try:
        keys.ensure_epochs(epoch_at(now, d.epoch_length_s, d.genesis_s))
    except OSError as exc:
        raise path_error("node.data_dir", exc) from None
    try:
        write_config(path, cfg)
    except OSError as exc:
        raise path_error("--config", exc) from None
    print(f"wrote {path}")
    print(f"node id {keys.node_id.hex()} (identity key {keys.identity_public.hex()})")
    print(f"keys in {loaded.node.data_dir} (mode 0600)")
    ports = f"udp {listen_port}" + (f", clients {client_port}" if client_port else "")
    print(f"ports: {ports}, metrics {metrics_port if cfg.metrics.enabled else 'off'}")
    if network is not None:
        pinned = "pinned" if args.network_fingerprint else "NOT pinned: trust on first use"
        print(f"network fingerprint {network.fingerprint.hex()} ({pinned})")
    print("send the identity key to the authorities' operators to be enrolled")
    return EXIT_OK


def _network_for_init(args: argparse.Namespace) -> NetworkBundle | None:
    """The verified bundle of ``--network``, or None when the directory is hand-typed.

    CliError (exit 2) for a mix of both, neither, or a bundle that does not verify.
    """
    typed = args.authority or args.authority_key or args.threshold is not None
    if args.network is None:
        if args.network_fingerprint is not None:
            raise CliError("--network-fingerprint needs --network", EXIT_CONFIG)
        if not (args.authority and args.authority_key):
            raise CliError(
                "give --network FILE|URL, or --authority and --authority-key", EXIT_CONFIG
            )
        return None
    if typed or args.epoch_length_s is not None:
        raise CliError(
            "--network gives the authorities, keys, threshold and epoch length: "
            "leave out --authority, --authority-key, --threshold and --epoch-length-s",
            EXIT_CONFIG,
        )
    pin = None if args.network_fingerprint is None else bytes.fromhex(args.network_fingerprint)
    return load_network(args.network, pin)


def load_network(source: str, fingerprint: bytes | None = None) -> NetworkBundle:
    """Read a network file (path) or fetch it (``http(s)://`` URL of an authority, or of
    its ``/v1/network``), verify a threshold of its own authorities' signatures and, if
    given, the 32-byte pinned ``fingerprint``; the geometry must be one we speak.

    CliError (exit 2) naming ``--network`` for anything wrong.
    """
    try:
        url = network_file_url(source)
        if url is not None:
            raw = http_exchange(
                url, deadline_s=NETWORK_FETCH_TIMEOUT_S, max_bytes=MAX_NETWORK_BYTES
            )
        else:
            with open(source, "rb") as f:
                raw = f.read(MAX_NETWORK_BYTES + 1)
        return open_network_file(raw, fingerprint)
    except (DirectoryError, OSError, ValueError) as exc:
        raise CliError(f"--network: {source}: {exc}", EXIT_CONFIG) from None
    except Exception as exc:  # http.client errors: the server's reply was cut or malformed
        raise CliError(f"--network: {source}: {type(exc).__name__}: {exc}", EXIT_CONFIG) from None


def _pick_ports(args: argparse.Namespace, config: Path) -> tuple[int, int | None, int]:
    """(listen, client or None, metrics) ports: those given, else the first ones free on
    this host and named by no config beside ``config`` (another node's, running or not)."""
    taken = _ports_of_configs(config.parent, exclude=config)
    given = {p for p in (args.listen_port, args.client_port, args.metrics_port) if p}
    taken |= given

    def pick(start: int, kind: int) -> int:
        for p in range(start, min(start + PORT_SEARCH, 65536)):
            if p not in taken and _port_free(args.listen_host, p, kind):
                taken.add(p)
                return p
        raise CliError(f"no free port in {start}..{start + PORT_SEARCH - 1}", EXIT_CONFIG)

    listen = args.listen_port or pick(FIRST_LISTEN_PORT, socket.SOCK_DGRAM)
    client = args.client_port
    if args.role == "gateway" and client is None:
        client = pick(listen + 1, socket.SOCK_DGRAM)
    metrics = args.metrics_port or pick(FIRST_METRICS_PORT, socket.SOCK_STREAM)
    return listen, client, metrics


def _ports_of_configs(directory: Path, exclude: Path) -> set[int]:
    """Every port named by the node configs in ``directory`` (unreadable ones skipped)."""
    ports: set[int] = set()
    try:
        files = sorted(directory.glob("*.toml"))[:1000]
    except OSError:
        return ports
    for f in files:
        if f.resolve() == exclude.resolve():
            continue
        try:
            with open(f, "rb") as fh:
                doc = tomllib.loads(fh.read(1 << 20).decode("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        for table, field in (
            ("node", "listen_port"),
            ("gateway", "client_port"),
            ("metrics", "port"),
            ("authority", "listen_port"),
        ):
            value = doc.get(table, {}).get(field) if isinstance(doc.get(table), dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                ports.add(value)
        if isinstance(doc.get("node"), dict) and "metrics" not in doc:
            ports.add(FIRST_METRICS_PORT)  # the default metrics port of a node config
    return ports


def _port_free(host: str, port: int, kind: int) -> bool:
    """Whether ``host:port`` (UDP or TCP) can be bound now; loopback for metrics."""
    bind_host = "127.0.0.1" if kind == socket.SOCK_STREAM else host
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((bind_host, port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------------------
# run


def _check_data_dir(cfg: NodeConfig) -> None:
    """ConfigError naming ``node.data_dir`` unless the node can write there.

    The node writes its epoch keys at start-up and at every epoch change, and caches
    documents: a read-only mount or an immutable directory is refused now, not later.
    """
    data_dir = cfg.node.data_dir
    check_writable_dir("node.data_dir", data_dir)
    for sub in (EPOCH_DIR, CACHE_DIR):
        if os.path.lexists(data_dir / sub):
            check_writable_dir("node.data_dir", data_dir / sub)


def _keys(cfg: NodeConfig, open_keys: Callable[[Path], NodeKeys]) -> NodeKeys:
    """``open_keys(node.data_dir)``; a path in the way or a bad key file names the field."""
    data_dir = cfg.node.data_dir
    try:
        if data_dir.exists() and not data_dir.is_dir():
            raise ConfigError(f"node.data_dir: {data_dir} is a file, not a directory")
        return open_keys(data_dir)
    except OSError as exc:
        raise path_error("node.data_dir", exc) from None
    except KeyStoreError as exc:
        raise ConfigError(f"node.data_dir: {exc}") from None


def _load(path: str) -> tuple[NodeConfig, NodeKeys]:
    cfg = load_node_config(Path(path))
    keys = _keys(cfg, NodeKeys.load)
    _check_data_dir(cfg)
    return cfg, keys


def _cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    cfg, keys = _load(args.config)
    try:
        daemon = importlib.import_module("mixnode.daemon")
    except ModuleNotFoundError as exc:
        if exc.name not in ("mixnode.daemon", "mixnode"):
            raise
        raise CliError(
            "the node daemon (mixnode.daemon) is not installed in this build; "
            "install the full phantom-mixnet package",
            EXIT_MISSING,
        ) from None
    run = getattr(daemon, "run", None)
    if run is None:
        raise CliError("mixnode.daemon has no run(config) entry point", EXIT_MISSING)
    kwargs = {"keys": keys} if "keys" in inspect.signature(run).parameters else {}
    if inspect.iscoroutinefunction(run):
        import trio

        result = trio.run(lambda: run(cfg, **kwargs))
    else:
        result = run(cfg, **kwargs)
    return int(result) if isinstance(result, int) else EXIT_OK


# --------------------------------------------------------------------------------------
# key, leave


def _cmd_key(args: argparse.Namespace) -> int:
    cfg = load_node_config(Path(args.config))
    keys = _keys(cfg, NodeKeys.load)
    print(keys.identity_public.hex())
    print(f"node id {keys.node_id.hex()}", file=sys.stderr)
    return EXIT_OK


def _cmd_leave(args: argparse.Namespace) -> int:
    """Post a signed withdrawal to every authority; the node must be stopped first."""
    cfg = load_node_config(Path(args.config))
    keys = _keys(cfg, NodeKeys.load)
    n = cfg.node
    if not _port_free(n.listen_host, n.listen_port, socket.SOCK_DGRAM):
        raise CliError(
            f"node.listen_port {n.listen_port} is in use: stop the node first "
            "(a running node publishes itself again)",
            EXIT_FAILED,
        )
    withdrawal = NodeWithdrawal(keys.identity_public, int(time.time()))
    sig = sign_withdrawal(withdrawal, keys.identity_seed)
    body = canonical_json(
        {"withdrawal": withdrawal.to_bytes().decode("ascii"), "signature": sig.hex()}
    )
    report = publish_report(cfg.directory.authorities, body, path="/v1/withdraw")
    for line in report.refused:
        print(f"phantom-mixnode: leave: {line}", file=sys.stderr)
    if not report.accepted:
        raise CliError("no authority took the withdrawal; try again", EXIT_FAILED)
    print(
        f"withdrawn from {len(report.accepted)} of {len(cfg.directory.authorities)} "
        "authorities: the next document no longer lists this node"
    )
    return EXIT_OK


# --------------------------------------------------------------------------------------
# status


def histogram_quantile(samples: dict[tuple[str, str], float], name: str, q: float) -> float | None:
    """Upper bucket bound below which a fraction ``q`` of observations fall (or None)."""
    buckets: list[tuple[float, float]] = []
    for (n, labels), v in samples.items():
        if n == f"{name}_bucket":
            le = labels.split('le="', 1)[1].rstrip('"')
            buckets.append((float("inf") if le == "+Inf" else float(le), v))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    for bound, count in buckets:
        if count >= target:
            return bound
    return None


def _get(url: str) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET on the node's loopback endpoint; CliError if none."""
    try:
        with urllib.request.urlopen(url, timeout=STATUS_TIMEOUT_S) as resp:
            return int(resp.status), resp.read(MAX_STATUS_BYTES)
    except urllib.error.HTTPError as exc:  # 503 from /healthz carries the reason
        return exc.code, exc.read(MAX_STATUS_BYTES)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot read {url}: {reason} (is the node running?)") from None


def _fetch_metrics(cfg: NodeConfig) -> str:
    url = f"http://{cfg.metrics.host}:{cfg.metrics.port}/metrics"
    return _get(url)[1].decode("utf-8", errors="replace")


def _fetch_health(cfg: NodeConfig) -> dict[str, object]:
    """The node's ``/healthz`` answer (a JSON object); CliError if it cannot be read."""
    url = f"http://{cfg.metrics.host}:{cfg.metrics.port}/healthz"
    code, body = _get(url)
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if code not in (200, 503) or not isinstance(obj, dict):
        raise CliError(f"{url}: HTTP {code}, not a health report (an older node?)")
    return obj


def _authorities_reachable(cfg: NodeConfig) -> int:
    """How many authorities answer ``/v1/health`` within STATUS_TIMEOUT_S (asked at once)."""
    urls = [f"{u.rstrip('/')}/v1/health" for u in cfg.directory.authorities]
    calls = [
        partial(http_exchange, u, deadline_s=STATUS_TIMEOUT_S, max_bytes=MAX_STATUS_BYTES)
        for u in urls
    ]
    return sum(1 for out in race(calls, STATUS_TIMEOUT_S + 0.5) if out.error is None)


def _listing(
    client: DirectoryClient,
    epoch: int,
    node_id: bytes | None,
    ports: tuple[object, object] | None,
) -> tuple[bool | None, str | None, TopologyDocument | None]:
    """(listed, why not, document) of ``epoch``'s verified document for this node."""
    try:
        doc = client.fetch(epoch)
    except DirectoryError as exc:
        return None, f"no verifiable document for epoch {epoch}: {exc}", None
    if node_id is None:
        return None, "node id unknown (node not running and keys unreadable)", doc
    mine = doc.by_id.get(node_id)
    if mine is None:
        return False, f"the document of epoch {epoch} does not list this node", doc
    if ports is not None and (mine.port, mine.client_port) != ports:
        return False, "listed at other ports than the node's (it republishes; wait)", doc
    return True, None, doc


def node_status(cfg: NodeConfig, now: float) -> tuple[dict[str, object], int]:
    """What ``status`` reports, as one JSON-able object, and the exit code it implies.

    EXIT_OK when the node answers ``/healthz`` with 200 (listed and serving), else
    EXIT_FAILED; ``why_not`` says why. Reads the node's loopback endpoint and asks the
    authorities (each within STATUS_TIMEOUT_S).
    """
    d, n = cfg.directory, cfg.node
    epoch = epoch_at(now, d.epoch_length_s, d.genesis_s)
    report: dict[str, object] = {
        "name": n.name,
        "role": n.role.value,
        "layer": n.layer,
        "version": VERSION,
        "epoch": epoch,
    }
    health: dict[str, object] | None = None
    try:
        health = _fetch_health(cfg)
        samples = parse_prometheus(_fetch_metrics(cfg))
    except CliError as exc:
        report["running"], report["why_not"] = False, str(exc)
        samples = {}
    node_id: bytes | None = None
    ports: tuple[object, object] | None = None
    if health is not None:
        report["running"] = True
        report["serving"] = bool(health.get("serving"))
        report["health"] = health.get("reason")
        report["directory_error"] = health.get("directory_error")
        report["node_version"] = health.get("version")
        report["peers_reachable"] = health.get("peers_reachable")
        report["reachable_window_s"] = health.get("reachable_window_s")
        nid = health.get("node_id")
        node_id = bytes.fromhex(nid) if isinstance(nid, str) else None
        ports = (health.get("port"), health.get("client_port"))
    else:
        report["serving"] = False
        try:
            node_id = NodeKeys.load(n.data_dir).node_id
        except (OSError, KeyStoreError):
            node_id = None
    report["node_id"] = None if node_id is None else node_id.hex()
    report["authorities"] = {
        "reachable": _authorities_reachable(cfg),
        "total": len(d.authorities),
        "threshold": d.threshold,
    }
    client = DirectoryClient(
        d.authorities,
        d.authority_keys,
        d.threshold,
        geometry=cfg.geometry,
        timeout_s=STATUS_TIMEOUT_S,
    )
    listed: dict[str, object] = {}
    doc: TopologyDocument | None = None
    for which, e in (("now", epoch), ("next", epoch + 1)):
        ok, why, got = _listing(client, e, node_id, ports)
        listed[which], listed[f"why_not_{which}"] = ok, why
        doc = got if which == "now" else doc
    report["listed"] = listed
    if doc is not None:
        per_layer: dict[str, int] = {}
        for node in doc.nodes:
            per_layer[str(node.layer)] = per_layer.get(str(node.layer), 0) + 1
        report["nodes_per_layer"] = per_layer
    report["counters"] = {
        f"{name}{{{labels}}}" if labels else name: value
        for (name, labels), value in sorted(samples.items())
        if "_bucket" not in name
    }
    hist = "phantom_processing_seconds"
    if (f"{hist}_count", "") in samples:
        report["processing_seconds"] = {
            f"p{int(q * 100)}": histogram_quantile(samples, hist, q) for q in (0.5, 0.99)
        }
    if report["serving"]:
        return report, EXIT_OK
    if "why_not" not in report:
        report["why_not"] = listed.get("why_not_now") or report.get("health")
    return report, EXIT_FAILED


def _cmd_status(args: argparse.Namespace) -> int:
    cfg = load_node_config(Path(args.config))
    if not cfg.metrics.enabled:
        raise CliError("metrics.enabled is false in this config: nothing to read", EXIT_CONFIG)
    report, code = node_status(cfg, time.time())
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return code
    _print_status(report, args.all)
    return code


def _print_status(report: dict[str, object], show_all: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    auth = report["authorities"]
    assert isinstance(auth, dict)
    listed = report["listed"]
    assert isinstance(listed, dict)

    def yes(v: object) -> str:
        return {True: "yes", False: "no", None: "unknown"}[v if isinstance(v, bool) else None]

    state = "serving" if report["serving"] else f"NOT serving ({report.get('why_not')})"
    lines = [
        f"node     {report['name']}  id {report['node_id'] or 'unknown'}",
        f"role     {report['role']}  layer {report['layer']}  version {report['version']}",
        f"state    {state}",
        f"epoch    {report['epoch']}",
        f"listed   now: {yes(listed['now'])}  next epoch: {yes(listed['next'])}",
    ]
    for which in ("now", "next"):
        if listed[f"why_not_{which}"]:
            lines.append(f"         {which}: {listed[f'why_not_{which}']}")
    lines.append(
        f"authorities reachable {auth['reachable']} of {auth['total']} "
        f"(threshold {auth['threshold']})"
    )
    if report.get("nodes_per_layer"):
        layers = report["nodes_per_layer"]
        assert isinstance(layers, dict)
        per_layer = "  ".join(f"{k}: {v}" for k, v in sorted(layers.items()))
        lines.append(f"listed per layer {per_layer}")
    reach = report.get("peers_reachable")
    if isinstance(reach, dict) and reach:
        per_layer = "  ".join(
            f"{k}: {v.get('reachable')} of {v.get('listed')}"
            for k, v in sorted(reach.items())
            if isinstance(v, dict)
        )
        window = report.get("reachable_window_s")
        lines.append(
            f"reachable per layer {per_layer}  (loops back within {window:g} s)"
            if isinstance(window, int | float)
            else f"reachable per layer {per_layer}"
        )
    err = report.get("directory_error")
    if isinstance(err, dict):
        lines.append(f"last directory error ({err.get('reason')}): {err.get('text')}")
    for line in lines:
        console.print(line, highlight=False, markup=False)
    counters = report["counters"]
    assert isinstance(counters, dict)
    if not counters:
        return
    table = Table(show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in counters.items():
        if "{" in name and value == 0 and not show_all:
            continue
        shown = int(value) if value == int(value) else round(value, 6)
        table.add_row(name, str(shown))
    quantiles = report.get("processing_seconds")
    if isinstance(quantiles, dict):
        for q, bound in quantiles.items():
            text = "-" if bound is None else f"<= {bound * 1e3:g} ms"
            table.add_row(f"phantom_processing_seconds {q}", text)
    console.print(table)


# --------------------------------------------------------------------------------------
# argument parsing


def build_parser() -> argparse.ArgumentParser:
    """The ``phantom-mixnode`` argument parser."""
    p = argparse.ArgumentParser(
        prog="phantom-mixnode",
        description="Run a Phantom Net mix node or gateway.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser(
        "init", help="write a config and create the node's keys", formatter_class=HelpFormatter
    )
    i.add_argument("--config", required=True, help="path of the TOML config to write")
    i.add_argument("--role", choices=("mix", "gateway"), required=True, help="what the node does")
    i.add_argument("--layer", type=int, help="mix layer 1..3 (gateways: 0)")
    i.add_argument("--name", required=True, help="operator label, published in the directory")
    i.add_argument("--listen-host", default="127.0.0.1", help="UDP address for packets")
    i.add_argument(
        "--listen-port", type=port, help="UDP port for packets (default: first free from 31000)"
    )
    i.add_argument(
        "--public-host", help="address published in the directory (default: --listen-host)"
    )
    i.add_argument(
        "--client-port", type=port, help="gateways: port where clients attach (default: free)"
    )
    i.add_argument("--data-dir", required=True, help="keys and cached documents (mode 0700)")
    i.add_argument(
        "--network",
        help="network file or authority URL: authorities, keys, threshold, epochs (verified)",
    )
    i.add_argument(
        "--network-fingerprint",
        type=hex_fingerprint,
        help="expected network fingerprint, 64 hex digits (without it: trust on first use)",
    )
    i.add_argument(
        "--authority", action="append", default=[], help="directory authority URL (repeat)"
    )
    i.add_argument(
        "--authority-key",
        action="append",
        default=[],
        type=hex_key,
        help="authority Ed25519 public key, hex (repeat)",
    )
    i.add_argument(
        "--threshold", type=whole_number(1), help="signatures required (default: majority)"
    )
    i.add_argument("--epoch-length-s", type=int, help="seconds per epoch (default: 3600)")
    i.add_argument(
        "--metrics-port", type=port, help="loopback metrics port (default: first free from 9100)"
    )
    i.add_argument("--workers", type=int, default=2, help="processing worker processes")
    i.add_argument("--force", action="store_true", help="overwrite an existing config")
    i.set_defaults(func=_cmd_init)

    r = sub.add_parser(
        "run", help="run the node until SIGTERM/SIGINT", formatter_class=HelpFormatter
    )
    r.add_argument("--config", required=True, help="path of the node's TOML config")
    add_logging_options(r)
    r.set_defaults(func=_cmd_run)

    for name, func, what in (
        ("key", _cmd_key, "print the node's identity key (hex)"),
        ("leave", _cmd_leave, "withdraw the (stopped) node from the network's next document"),
    ):
        c = sub.add_parser(name, help=what, formatter_class=HelpFormatter)
        c.add_argument("--config", required=True, help="path of the node's TOML config")
        c.set_defaults(func=func)

    s = sub.add_parser(
        "status",
        help="is the node serving? (exit 0 serving, 1 not, 2 config error)",
        formatter_class=HelpFormatter,
    )
    s.add_argument("--config", required=True, help="path of the node's TOML config")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--all", action="store_true", help="also show labelled series at zero")
    s.set_defaults(func=_cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``phantom-mixnode``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"phantom-mixnode: {exc}", file=sys.stderr)
        return exc.code
    except (ConfigError, KeyStoreError) as exc:
        print(f"phantom-mixnode: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
