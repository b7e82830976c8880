"""A generator of malformed node and authority configs, each with the field it must name.

    >>> cases = node_cases() + dirauth_cases()
    >>> len(cases) >= 105
    True

Each ``Case`` edits a valid config (as TOML tables) in a scratch ``Workspace``: a field of
the wrong type, out of its range, missing, unknown, a bad host, a busy port, a path in the
way, a field that disagrees with another, a genesis after the clock. ``stage`` says who can
tell: ``"load"`` cases the config loader refuses on its own; ``"start"`` cases only the
running machine can (a name that does not resolve, an address that is not ours, a port
another socket holds, a file where a directory belongs), so they need ``run``.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from mixnode.config import RANGES
from mixnode.dirauth import init_authority_key
from mixnode.keys import EPOCH_DIR, IDENTITY_FILE, NodeKeys

KEY_A = "aa" * 32
KEY_B = "bb" * 32
NOT_OURS = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never an address of this host
NO_SUCH_NAME = "no-such-host.invalid"  # RFC 6761: never resolves
FUTURE_GENESIS_S = 4_000_000_000  # inside the range (2096), after any test's clock

Tables = dict[str, dict[str, Any]]


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port that was free on 127.0.0.1 a moment ago (UDP unless told)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Workspace:
    """A scratch directory and the sockets held while a case runs (closed by ``close``)."""

    root: Path
    held: ExitStack = field(default_factory=ExitStack)

    def hold_udp(self, port: int, *, reuse_port: bool = False) -> None:
        s = self.held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        if reuse_port:  # as another node's shard would
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))

    def hold_tcp(self, port: int) -> None:
        s = self.held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        s.bind(("127.0.0.1", port))
        s.listen()

    def close(self) -> None:
        self.held.close()


Edit = Callable[[Tables, Workspace], None]


@dataclass(frozen=True)
class Case:
    """One malformed config: what kind, which field the error must name, who can tell."""

    program: Literal["mixnode", "dirauth"]
    role: Literal["mix", "gateway", "authority"]
    kind: str
    field: str
    edit: Edit
    stage: Literal["load", "start"] = "load"

    @property
    def id(self) -> str:
        return f"{self.program}-{self.role}-{self.kind}-{self.field}"

    def write(self, ws: Workspace) -> Path:
        """Write this case's config into ``ws`` (keys too, for a node) and return its path."""
        tables = base_tables(self.role, ws.root)
        if self.role != "authority":
            keys = NodeKeys.create(ws.root / "data")
            keys.ensure_epochs(0)
        else:
            own = init_authority_key(ws.root / "data")  # it refuses to run unless listed
            tables["directory"]["authority_keys"][0] = own.hex()
        self.edit(tables, ws)
        path = ws.root / "config.toml"
        path.write_text(tomli_w.dumps(tables), encoding="utf-8")
        return path


def base_tables(role: str, root: Path) -> Tables:
    """A valid config with every field written (fresh free ports, data dir under ``root``)."""
    directory: dict[str, Any] = {
        "authorities": ["http://127.0.0.1:9"],
        "authority_keys": [KEY_A, KEY_B],
        "threshold": 1,
        "epoch_length_s": 3600,
        "genesis_s": 0,
        "mix_layers": 3,
    }
    if role == "authority":
        return {
            "authority": {
                "name": "auth-1",
                "listen_host": "127.0.0.1",
                "listen_port": free_port(socket.SOCK_STREAM),
                "data_dir": str(root / "data"),
                "round_interval_s": 5.0,
                "geometry": "voice",
                "allowed_nodes": [],
            },
            "directory": directory,
        }
    tables: Tables = {
        "node": {
            "name": "node-1",
            "role": role,
            "layer": 0 if role == "gateway" else 2,
            "listen_host": "127.0.0.1",
            "listen_port": free_port(),
            "public_host": "127.0.0.1",
            "data_dir": str(root / "data"),
            "geometry": "voice",
        },
        "mixing": {
            "loop_cover_rate_hz": 1.0,
            "max_queue": 1000,
            "late_drop_ms": 50.0,
            "loop_cover_delay_ms": 22.5,
            "workers": 1,
        },
        "directory": directory,
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port(socket.SOCK_STREAM)},
        "link": {"delay_ms_mean": 0.0, "delay_ms_jitter": 0.0, "loss": 0.0},
    }
    if role == "gateway":
        tables["gateway"] = {
            "client_host": "127.0.0.1",
            "client_port": free_port(),
            "delivery_rate_hz": 50.0,
            "mailbox_capacity": 256,
        }
    return tables


def _set(path: str, value: object) -> Edit:
    section, key = path.split(".")

    def edit(t: Tables, ws: Workspace) -> None:
        t.setdefault(section, {})[key] = value

    return edit


def _drop(path: str) -> Edit:
    section, _, key = path.partition(".")

    def edit(t: Tables, ws: Workspace) -> None:
        if key:
            del t[section][key]
        else:
            del t[section]

    return edit


def _wrong_type(value: object) -> object:
    """A value of another TOML type than ``value``."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int):
        return 1.5  # a float where an integer belongs
    if isinstance(value, float):
        return "fast"
    if isinstance(value, str):
        return 5
    if isinstance(value, list):
        return [5] if value else "none"
    raise TypeError(value)


def _outside(path: str) -> list[object]:
    """Values just outside and far outside a ranged field, and the non-finite ones."""
    r = RANGES[path]
    if r.integer:
        return [int(r.lo) - 1, int(r.hi) + 1, 2**40]
    return [r.lo - 1e-6 * max(1.0, abs(r.lo)), r.hi * (1 + 1e-9) + 1e-9, 1e300, math.nan, math.inf]


_HOSTS_REFUSED_ON_LOAD = ["999.1.1.1", "::1", "two words", "-lead.example", "a..b", "1.2.3"]
_HOST_FIELDS = {
    "mix": ["node.listen_host", "node.public_host"],
    "gateway": ["node.listen_host", "node.public_host", "gateway.client_host"],
    "authority": ["authority.listen_host"],
}
_BINDS = {  # host field -> (port field, socket type)
    "node.listen_host": ("node.listen_port", socket.SOCK_DGRAM),
    "gateway.client_host": ("gateway.client_port", socket.SOCK_DGRAM),
    "authority.listen_host": ("authority.listen_port", socket.SOCK_STREAM),
}
_REQUIRED = {
    "mix": ["node", "directory", "node.name", "node.role", "node.layer", "node.listen_port",
            "node.data_dir", "directory.authorities", "directory.authority_keys"],
    "gateway": ["gateway", "gateway.client_port"],
    "authority": ["authority", "directory", "authority.name", "authority.listen_port",
                  "authority.data_dir", "directory.authority_keys"],
}  # fmt: skip


def _generic(program: Literal["mixnode", "dirauth"], role: Any) -> list[Case]:
    """Wrong type, out of range, missing, unknown field and bad hosts, for every field."""
    cases: list[Case] = []
    tables = base_tables(role, Path("/nonexistent"))
    for section, fields in tables.items():
        for key, value in fields.items():
            path = f"{section}.{key}"
            named = f"{path}[0]" if isinstance(value, list) and value else path  # item type
            cases.append(Case(program, role, "wrong_type", named, _set(path, _wrong_type(value))))
            for v in _outside(path) if path in RANGES else []:
                cases.append(Case(program, role, f"out_of_range({v})", path, _set(path, v)))
        cases.append(
            Case(program, role, "unknown_field", f"{section}.colour", _set(f"{section}.colour", 1))
        )
    cases.append(Case(program, role, "unknown_section", "extra", lambda t, ws: t.update(extra={})))
    for path in _REQUIRED[role]:
        cases.append(Case(program, role, "missing", path, _drop(path)))
    for path in _HOST_FIELDS[role]:
        for host in _HOSTS_REFUSED_ON_LOAD:
            cases.append(Case(program, role, f"bad_host({host})", path, _set(path, host)))
        if path in _BINDS:
            cases.append(
                Case(program, role, "unresolvable", path, _set(path, NO_SUCH_NAME), "start")
            )
            cases.append(Case(program, role, "not_ours", path, _set(path, NOT_OURS), "start"))
            port_field, kind = _BINDS[path]
            cases.append(
                Case(program, role, "busy_port", port_field, _busy(port_field, kind), "start")
            )
    cases.append(
        Case(program, role, "genesis_after_clock", "directory.genesis_s",
             _set("directory.genesis_s", FUTURE_GENESIS_S), "start")
    )  # fmt: skip
    return cases


def _busy(port_field: str, kind: int) -> Edit:
    section, key = port_field.split(".")

    def edit(t: Tables, ws: Workspace) -> None:
        port = int(t[section][key])
        if kind == socket.SOCK_STREAM:
            ws.hold_tcp(port)
        else:  # held with SO_REUSEPORT, as a second node's shard on the same port would be
            ws.hold_udp(port, reuse_port=port_field == "node.listen_port")

    return edit


def _file_in_the_way(relative: str, *, directory: bool = False) -> Edit:
    def edit(t: Tables, ws: Workspace) -> None:
        target = ws.root / "data" / relative
        if target.is_dir():
            for child in target.iterdir():
                child.unlink()
            target.rmdir()
        else:
            target.unlink(missing_ok=True)
        if directory:
            target.mkdir(mode=0o700)
        else:
            target.write_text("not a directory\n")

    return edit


def _data_dir_is_a_file(section: str) -> Edit:
    def edit(t: Tables, ws: Workspace) -> None:
        plain = ws.root / "plain-file"
        plain.write_text("x\n")
        t[section]["data_dir"] = str(plain)

    return edit


def _mix(kind: str, path: str, edit: Edit, stage: Literal["load", "start"] = "load") -> Case:
    return Case("mixnode", "mix", kind, path, edit, stage)


def _gateway(kind: str, path: str, edit: Edit) -> Case:
    return Case("mixnode", "gateway", kind, path, edit)


def node_cases() -> list[Case]:
    """Malformed mix and gateway configs."""
    cases = _generic("mixnode", "mix") + [
        c for c in _generic("mixnode", "gateway") if c.field.startswith("gateway")
    ]
    keys, urls = "directory.authority_keys", "directory.authorities"
    cases += [
        _mix("layer_above_mix_layers", "node.layer", _set("directory.mix_layers", 1)),
        _mix("layer_0_for_a_mix", "node.layer", _set("node.layer", 0)),
        _gateway("layer_for_a_gateway", "node.layer", _set("node.layer", 1)),
        _mix("gateway_section_on_a_mix", "gateway", _set("gateway.client_port", 1)),
        _mix("threshold_above_keys", "directory.threshold", _set("directory.threshold", 3)),
        _mix("duplicate_key", keys, _set(keys, [KEY_A, KEY_A])),
        _mix("short_key", f"{keys}[0]", _set(keys, ["beef"])),
        _mix("no_keys", keys, _set(keys, [])),
        _mix("no_authorities", urls, _set(urls, [])),
        _mix("ftp_url", f"{urls}[0]", _set(urls, ["ftp://x"])),
        _mix("bad_url_port", f"{urls}[0]", _set(urls, ["http://h:99999"])),
        _mix("metrics_off_loopback", "metrics.host", _set("metrics.host", "0.0.0.0")),
        _mix("wildcard_published", "node.public_host", _wildcard(publish=True)),
        _mix("wildcard_defaulted", "node.public_host", _wildcard(publish=False)),
        _mix("bad_geometry", "node.geometry", _set("node.geometry", "huge")),
        _mix("bad_role", "node.role", _set("node.role", "relay")),
        _mix("long_name", "node.name", _set("node.name", "n" * 65)),
        _mix("empty_name", "node.name", _set("node.name", "")),
        _gateway("client_port_is_listen_port", "gateway.client_port", _same_ports),
        _mix("busy_port", "metrics.port", _busy("metrics.port", socket.SOCK_STREAM), "start"),
        _mix("data_dir_is_a_file", "node.data_dir", _data_dir_is_a_file("node"), "start"),
        _mix("epoch_keys_is_a_file", "node.data_dir", _file_in_the_way(EPOCH_DIR), "start"),
        _mix(
            "identity_is_a_directory",
            "node.data_dir",
            _file_in_the_way(IDENTITY_FILE, directory=True),
            "start",
        ),
    ]
    return cases


def _wildcard(*, publish: bool) -> Edit:
    def edit(t: Tables, ws: Workspace) -> None:
        t["node"]["listen_host"] = "0.0.0.0"
        if publish:
            t["node"]["public_host"] = "0.0.0.0"
        else:
            del t["node"]["public_host"]

    return edit


def _same_ports(t: Tables, ws: Workspace) -> None:
    t["gateway"]["client_port"] = t["node"]["listen_port"]


def dirauth_cases() -> list[Case]:
    """Malformed directory authority configs."""
    return _generic("dirauth", "authority") + [
        Case("dirauth", "authority", "bad_allowed_node", "authority.allowed_nodes[0]",
             _set("authority.allowed_nodes", ["zz"])),
        Case("dirauth", "authority", "data_dir_is_a_file", "authority.data_dir",
             _data_dir_is_a_file("authority"), "start"),
        Case("dirauth", "authority", "no_signing_key", "authority.data_dir",
             _file_in_the_way("authority.key", directory=True), "start"),
    ]  # fmt: skip
