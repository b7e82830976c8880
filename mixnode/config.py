"""Node and authority configuration: TOML in, frozen dataclasses out.

    >>> cfg = parse_node_config('''
    ... [node]
    ... name = "mix-a"
    ... role = "mix"
    ... layer = 2
    ... listen_port = 31002
    ... data_dir = "/var/lib/phantom/mix-a"
    ... [directory]
    ... authorities = ["http://127.0.0.1:31900"]
    ... authority_keys = ["%s"]
    ... ''' % ("ab" * 32))
    >>> cfg.node.layer, cfg.mixing.workers, cfg.directory.threshold
    (2, 2, 1)
    >>> parse_node_config('[node]\\nname = 5')
    Traceback (most recent call last):
    ...
    mixnode.config.ConfigError: node.name: expected a string, got 5

Every field is checked on load; an error names the field by its path (``section.field``)
and says what was wanted. Unknown sections and fields are errors too (they are typos).
Every numeric field has a closed range (``RANGES``: rates in Hz, sizes in packets, delays
in ms, periods in s; NaN and infinities are refused), and every host is an IPv4 address or
a DNS name (IPv6 is not supported: the packet sockets are IPv4). What only the running
machine can tell (does the name resolve, is the address ours, is the port free, is the
data directory a directory we can write, has epoch 0 begun) is checked at start-up:
``bind_error``, ``path_error``, ``check_writable_dir`` and ``check_genesis`` turn those
failures into a ConfigError naming the field. docs/operators.md lists every field with its
unit, range and default.

Hostile text is refused with a ConfigError too, at a bounded cost: a file larger than
``MAX_CONFIG_BYTES`` or not a regular file, nesting too deep for the parser, an integer
too long to convert; values and keys quoted in an error are shortened and escaped.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import reprlib
import secrets
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from overlay import (
    GEOMETRIES,
    Geometry,
    NodeRole,
    PhantomError,
    descriptor_host_problem,
    geometry_by_name,
)
from overlay._topology import DEFAULT_MIX_LAYERS

MAX_MIX_LAYERS = 3  # the VOICE geometry carries 5 hops: gateway, 3 mixes, gateway
# Downlink slots per second to each client: 1.5x the 25 Hz uplink of 40 ms voice slots, so
# the mailbox queue drains, and 37.5 x 423-byte DOWNLINK = 15,862 B/s, within the 16,000 B/s
# a client may receive (docs/research.md, "Bandwidth per client").
DEFAULT_DELIVERY_RATE_HZ = 37.5

MAX_CONFIG_BYTES = 1024 * 1024  # a config is a few kB; a bigger file is refused unread
T = TypeVar("T")
C = TypeVar("C", "NodeConfig", "DirAuthConfig")
_REQUIRED: Any = object()


class ConfigError(PhantomError, ValueError):
    """A configuration field is missing or invalid; the message names the field path."""


@dataclass(frozen=True, slots=True)
class FieldRange:
    """The closed range ``lo..hi`` that a numeric field must lie in, in ``unit``.

    ``integer`` fields take TOML integers only; the others take integers or floats.
    """

    lo: float
    hi: float
    unit: str
    integer: bool = False


_PORT = FieldRange(1, 65535, "port", integer=True)
GENESIS_MAX_S = 2**32 - 1  # unix seconds: 2106-02-07, the end of unsigned 32-bit time

# Every numeric field whose range does not depend on another field (node.layer depends on
# node.role, directory.threshold on the number of authority_keys). Upper bounds keep every
# loop and buffer bounded: a node processes about 10k packets/s per worker
# (docs/testnet.md), so 1000 Hz of loop cover or of downlink to one client is already a
# tenth of a worker; 1M packets of 604 bytes hold 604 MB.
RANGES: Mapping[str, FieldRange] = {
    "node.listen_port": _PORT,
    "gateway.client_port": _PORT,
    "gateway.delivery_rate_hz": FieldRange(0.1, 1000.0, "Hz"),
    "gateway.mailbox_capacity": FieldRange(1, 10_000, "packets", integer=True),
    "mixing.loop_cover_rate_hz": FieldRange(0.0, 1000.0, "Hz"),
    "mixing.max_queue": FieldRange(1, 1_000_000, "packets", integer=True),
    "mixing.late_drop_ms": FieldRange(0.0, 60_000.0, "ms"),
    "mixing.workers": FieldRange(1, 64, "processes", integer=True),
    "mixing.loop_cover_delay_ms": FieldRange(0.0, 1000.0, "ms"),
    "directory.epoch_length_s": FieldRange(10, 7 * 86400, "s", integer=True),
    "directory.genesis_s": FieldRange(0, GENESIS_MAX_S, "unix s", integer=True),
    "directory.mix_layers": FieldRange(1, MAX_MIX_LAYERS, "layers", integer=True),
    "metrics.port": _PORT,
    "link.delay_ms_mean": FieldRange(0.0, 10_000.0, "ms"),
    "link.delay_ms_jitter": FieldRange(0.0, 10_000.0, "ms"),
    "link.loss": FieldRange(0.0, 0.99, "probability"),
    "authority.listen_port": _PORT,
    "authority.round_interval_s": FieldRange(0.1, 3600.0, "s"),
}


# --------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True, slots=True)
class NodeSection:
    """[node]: who this node is and where it listens for packets (UDP)."""

    name: str
    role: NodeRole
    layer: int  # 0 for gateways, 1..3 for mixes
    listen_host: str
    listen_port: int
    data_dir: Path  # keys, cached topology; relative paths are relative to the config file
    public_host: str  # the address published in the directory (default: listen_host)
    geometry: str  # "voice" or "bulk"


@dataclass(frozen=True, slots=True)
class GatewaySection:
    """[gateway]: where clients attach and how fast the gateway delivers to them."""

    client_host: str
    client_port: int
    delivery_rate_hz: float  # packets per second to each client (real or dummy)
    mailbox_capacity: int  # packets queued per mailbox before the oldest are dropped


@dataclass(frozen=True, slots=True)
class MixingSection:
    """[mixing]: queueing, cover and processing."""

    loop_cover_rate_hz: float  # loop cover packets the node itself sends per second
    max_queue: int  # packets held in the delay queue at most
    late_drop_ms: float  # a packet later than its due time by more than this is dropped
    workers: int  # worker threads/processes for Sphinx processing
    # Mean per-hop delay (ms) the node writes into its own loop cover: the callers' default
    # (client.call.DEFAULT_MEAN_DELAY_S), so that cover is delayed like calls.
    loop_cover_delay_ms: float = 22.5


@dataclass(frozen=True, slots=True)
class DirectorySection:
    """[directory]: the authorities, their keys and the epoch schedule."""

    authorities: tuple[str, ...]  # http(s) URLs
    authority_keys: tuple[bytes, ...]  # 32-byte Ed25519 public keys
    threshold: int  # valid signatures required on a document
    epoch_length_s: int
    genesis_s: int  # unix second at which epoch 0 begins
    mix_layers: int


@dataclass(frozen=True, slots=True)
class MetricsSection:
    """[metrics]: the Prometheus endpoint (loopback only)."""

    enabled: bool
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class LinkSection:
    """[link]: user-space emulation of a wide-area link on every packet this node sends."""

    delay_ms_mean: float
    delay_ms_jitter: float
    loss: float  # probability in [0, 1)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A mix node's or gateway's whole configuration."""

    node: NodeSection
    gateway: GatewaySection | None
    mixing: MixingSection
    directory: DirectorySection
    metrics: MetricsSection
    link: LinkSection

    @property
    def geometry(self) -> Geometry:
        """The packet geometry this node speaks."""
        return geometry_by_name(self.node.geometry)


@dataclass(frozen=True, slots=True)
class AuthoritySection:
    """[authority]: a directory authority's own settings."""

    name: str
    listen_host: str
    listen_port: int
    data_dir: Path  # signing key, descriptors, documents
    round_interval_s: float  # how often it merges descriptors and gathers signatures
    geometry: str
    # Identity keys of the nodes it lists; empty means open enrolment (testnets).
    allowed_nodes: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class DirAuthConfig:
    """A directory authority's configuration; [directory] lists every authority."""

    authority: AuthoritySection
    directory: DirectorySection

    @property
    def geometry(self) -> Geometry:
        """The packet geometry published in the documents."""
        return geometry_by_name(self.authority.geometry)


# --------------------------------------------------------------------------------------
# Field readers


class _Shortened(reprlib.Repr):
    """reprlib's shortened repr; an integer too long to print (Python refuses more than
    4300 digits, and TOML hex allows more) is shown by its size."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:
            return f"<{x.bit_length()}-bit integer>"
        return super().repr_int(x, level)


_SHOW = _Shortened()
_SHOW.maxstring = 80  # characters of a quoted string value
_SHOW.maxother = 80
_SHOW.maxlevel = 2  # nested lists and tables are shown two levels deep
_SHOW.maxlong = 40  # digits of an integer
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a TOML bare key, shown as it is


def _show(value: object) -> str:
    """``value`` for an error message: strings quoted and escaped, everything shortened."""
    if isinstance(value, str):
        return _SHOW.repr(value)
    if isinstance(value, bool | float):
        return str(value)
    return _SHOW.repr(value)


def _key(key: str) -> str:
    """A table key for an error message: bare keys as they are, others quoted and shortened."""
    return key if _BARE_KEY.fullmatch(key) else _SHOW.repr(key)


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host_problem(host: str) -> str | None:
    """What an IPv4 address or DNS name (RFC 1123) was wanted as, or None if ``host`` is one.

    IPv6 literals are refused: the node's packet sockets, the gateway's client socket and
    the authority's HTTP server are IPv4 only. A name whose last label is all digits must
    be a valid dotted-quad address, so ``999.1.1.1`` is refused here, not by the resolver.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None if address.version == 4 else "an IPv4 address or name (IPv6 is not supported)"
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "a host name or IPv4 address"
    if labels[-1].isdigit():
        return "a valid IPv4 address (four numbers 0..255)"
    return None


class _Table:
    """One TOML table being read; remembers which keys were used."""

    def __init__(self, data: object, path: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a table, got {_show(data)}")
        self.data: dict[str, Any] = data
        self.path = path  # "" for the file's top level, whose keys are sections
        self.unknown = "field" if path else "section"
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        """The path of ``key`` in the file: ``section.field``, or the section's name."""
        return f"{self.path}.{_key(key)}" if self.path else _key(key)

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise ConfigError(f"{self.name(key)}: missing (required)")
        return default

    def fail(self, key: str, wanted: str, value: object) -> ConfigError:
        return ConfigError(f"{self.name(key)}: expected {wanted}, got {_show(value)}")

    def text(self, key: str, default: Any = _REQUIRED, choices: tuple[str, ...] = ()) -> str:
        v = self._get(key, default)
        if not isinstance(v, str):
            raise self.fail(key, "a string", v)
        if choices and v not in choices:
            raise self.fail(key, " or ".join(repr(c) for c in choices), v)
        if not choices and (not v or not v.isprintable()):
            raise self.fail(key, "a non-empty printable string", v)
        return v

    def integer(self, key: str, lo: int, hi: int, default: Any = _REQUIRED) -> int:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(key, f"an integer in {lo}..{hi}", v)
        return v

    def number(self, key: str, lo: float, hi: float, default: Any = _REQUIRED) -> float:
        v = self._get(key, default)
        # NaN fails both comparisons; infinities fail the range.
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise self.fail(key, f"a number in {lo:g}..{hi:g}", v)
        return float(v)

    def ranged(self, key: str, default: Any = _REQUIRED) -> Any:
        """An integer or number checked against ``RANGES['<table>.<key>']``."""
        r = RANGES[self.name(key)]
        if r.integer:
            return self.integer(key, int(r.lo), int(r.hi), default)
        return self.number(key, r.lo, r.hi, default)

    def boolean(self, key: str, default: Any = _REQUIRED) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            raise self.fail(key, "true or false", v)
        return v

    def items(
        self, key: str, item: Callable[[str, object], T], default: Any = _REQUIRED
    ) -> list[T]:
        v = self._get(key, default)
        if not isinstance(v, list):
            raise self.fail(key, "a list", v)
        return [item(f"{self.name(key)}[{i}]", x) for i, x in enumerate(v)]

    def host(self, key: str, default: Any = _REQUIRED) -> str:
        v = self.text(key, default)
        problem = host_problem(v)
        if problem is not None:
            raise self.fail(key, problem, v)
        return v

    def finish(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise ConfigError(f"{self.name(extra[0])}: unknown {self.unknown}")


# scheme, host (no brackets: IPv6 literals are refused), optional port, optional path;
# no user info, query, fragment, white space or control characters.
_URL = re.compile(
    r"(?P<scheme>https?)://(?P<host>[^/:?#@\[\]]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?"
)


def url_problem(value: str) -> str | None:
    """What an authority URL was wanted as, or None if ``value`` is one.

    ``http://`` or ``https://``, then an IPv4 address or DNS name (``host_problem``), an
    optional port 1..65535 and an optional path; nothing else (no IPv6 literal, port 0,
    user info, query, fragment, white space or control character: RFC 3986 without the
    parts an authority URL never needs).
    """
    wanted = "an http:// or https:// URL"
    if not value.isascii() or not value.isprintable() or " " in value:
        return f"{wanted} without white space, control or non-ASCII characters"
    if "[" in value:
        return f"{wanted} with an IPv4 address or name (IPv6 is not supported)"
    m = _URL.fullmatch(value)
    if m is None:
        return f"{wanted}: host, optional :port and /path; no query or user info"
    problem = host_problem(m["host"])
    if problem is not None:
        return f"{wanted} whose host is {problem}"
    if m["port"] is not None and not 1 <= int(m["port"]) <= 65535:
        return f"{wanted} with a port in 1..65535"
    return None


def _url(path: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected an http:// URL, got {_show(value)}")
    problem = url_problem(value)
    if problem is not None:
        raise ConfigError(f"{path}: expected {problem}, got {_show(value)}")
    return value.rstrip("/")


def _key_hex(path: str, value: object) -> bytes:
    bad = ConfigError(f"{path}: expected a 32-byte Ed25519 public key as 64 hex digits")
    if not isinstance(value, str) or len(value) != 64:
        raise bad
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise bad from None


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_error(host_field: str, port_field: str, host: str, port: int, exc: OSError) -> ConfigError:
    """The ConfigError for a socket that failed to bind ``host:port``, naming the field at fault.

    ``exc`` is what ``bind`` raised: a resolver error or EADDRNOTAVAIL blames the host
    field; EADDRINUSE (another node or program holds the port) or EACCES the port field.
    """
    if isinstance(exc, socket.gaierror):
        return ConfigError(f"{host_field}: cannot resolve {host!r} to an IPv4 address")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"{host_field}: {host} is not an address of this host")
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"{port_field}: port {port} on {host} is already in use")
    if exc.errno == errno.EACCES:
        return ConfigError(f"{port_field}: not permitted to bind port {port} on {host}")
    return ConfigError(f"{host_field}: cannot bind {host}:{port}: {exc.strerror or exc}")


def path_error(field: str, exc: OSError) -> ConfigError:
    """The ConfigError for a path the config or the command line names that cannot be used.

    ``field`` is the config field (``node.data_dir``) or option (``--config``); the
    message adds the path (``exc.filename``) and the system's reason.
    """
    where = exc.filename if exc.filename is not None else "the path"
    if exc.errno == errno.EEXIST:
        return ConfigError(f"{field}: {where} is a file where a directory belongs")
    if exc.errno == errno.ENOTDIR:
        return ConfigError(f"{field}: {where}: a part of this path is a file, not a directory")
    return ConfigError(f"{field}: {where}: {exc.strerror or exc}")


_PROBE_PREFIX = ".phantom-write-test"


def check_writable_dir(field: str, directory: Path, *, shown: Path | None = None) -> None:
    """ConfigError naming ``field`` and the path unless ``directory`` can take new files.

    ``directory`` need not exist yet: then its nearest existing ancestor must be a
    directory that can. The test creates and removes one empty file, so that permission
    bits, read-only mounts, immutable directories and pseudo file systems such as /proc
    all refuse it, also for root; nothing is left behind. ``shown`` is the path the
    message names (default ``directory``).
    """
    path = Path(directory)
    named = path if shown is None else Path(shown)
    try:
        path = path.absolute()
        target = path
        while not target.exists():
            if target.is_symlink():
                raise ConfigError(f"{field}: {named}: {target} is a symbolic link to nothing")
            if target.parent == target:
                break
            target = target.parent
        if target == path and shown is None and not target.is_dir():
            raise ConfigError(f"{field}: {target} is a file where a directory belongs")
        if not target.is_dir():
            raise ConfigError(f"{field}: {named}: {target} is a file, not a directory")
        probe = target / f"{_PROBE_PREFIX}.{os.getpid()}.{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            os.close(os.open(probe, flags, 0o600))
        except OSError as exc:
            where = "here" if target == named.absolute() else f"in {target}"
            raise ConfigError(
                f"{field}: {named}: cannot create files {where}: {exc.strerror or exc}"
            ) from None
        os.unlink(probe)
    except OSError as exc:
        raise path_error(field, exc) from None


def check_writable_file(field: str, path: Path) -> None:
    """ConfigError naming ``field`` and ``path`` unless it can be written (created or
    replaced atomically). Something other than a regular file there is refused."""
    p = Path(path)
    try:
        if p.exists() and not p.is_file():
            raise ConfigError(f"{field}: {p} exists and is not a regular file")
    except OSError as exc:
        raise path_error(field, exc) from None
    check_writable_dir(field, p.parent, shown=p)


def check_genesis(directory: DirectorySection, now: float) -> None:
    """ConfigError naming ``directory.genesis_s`` if epoch 0 begins after ``now`` (unix s)."""
    if now < directory.genesis_s:
        raise ConfigError(
            f"directory.genesis_s: epoch 0 begins at {directory.genesis_s}, after this "
            f"host's clock ({int(now)}); fix the field or the clock"
        )


def _resolve(base: Path | None, raw: str, field: str) -> Path:
    try:
        p = Path(raw).expanduser()
    except RuntimeError:  # ~user of no such user, or no home directory
        raise ConfigError(f"{field}: cannot expand ~ in {_show(raw)}") from None
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


def _root(text: str, where: str) -> dict[str, Any]:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{where}: not valid TOML: nested too deeply") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer too long to convert
        raise ConfigError(f"{where}: not valid TOML: {_SHOW.repr(str(exc))[1:-1]}") from None


def _read(path: Path) -> str:
    """The text of a config file: a regular file of at most MAX_CONFIG_BYTES, UTF-8."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (regular files ignore it).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError(f"{path}: cannot read config: not a regular file")
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read config: not UTF-8 ({exc.reason})") from None


def _base_dir(path: Path) -> Path:
    """The directory that relative paths in the config at ``path`` are relative to."""
    try:
        return path.resolve().parent
    except (OSError, RuntimeError):  # a symlink loop: _read has already refused it
        return path.absolute().parent


def _directory(root: _Table, *, need_authorities: bool) -> DirectorySection:
    t = _Table(root._get("directory", _REQUIRED), "directory")
    authorities = tuple(t.items("authorities", _url, default=[]))
    if need_authorities and not authorities:
        raise ConfigError("directory.authorities: expected at least one authority URL")
    keys = tuple(t.items("authority_keys", _key_hex))
    if not keys:
        raise ConfigError("directory.authority_keys: expected at least one key")
    if len(set(keys)) != len(keys):
        raise ConfigError("directory.authority_keys: a key is listed twice")
    threshold = t.integer("threshold", 1, len(keys), default=len(keys) // 2 + 1)
    sec = DirectorySection(
        authorities=authorities,
        authority_keys=keys,
        threshold=threshold,
        epoch_length_s=t.ranged("epoch_length_s", default=3600),
        genesis_s=t.ranged("genesis_s", default=0),
        mix_layers=t.ranged("mix_layers", default=DEFAULT_MIX_LAYERS),
    )
    t.finish()
    return sec


def _metrics(root: _Table) -> MetricsSection:
    t = _Table(root._get("metrics", {}), "metrics")
    host = t.host("host", default="127.0.0.1")
    if not is_loopback(host):
        raise t.fail("host", "a loopback address (metrics are never served off the machine)", host)
    sec = MetricsSection(
        enabled=t.boolean("enabled", default=True),
        host=host,
        port=t.ranged("port", default=9100),
    )
    t.finish()
    return sec


def parse_node_config(
    text: str, *, base_dir: Path | None = None, where: str = "config"
) -> NodeConfig:
    """Parse a node config from TOML text; relative paths resolve against ``base_dir``."""
    root = _Table(_root(text, where), "")
    n = _Table(root._get("node", _REQUIRED), "node")
    name = n.text("name")
    if len(name) > 64:
        raise n.fail("name", "at most 64 characters", name)
    role = NodeRole(n.text("role", choices=("mix", "gateway")))
    if role is NodeRole.GATEWAY:
        layer = n.integer("layer", 0, 0, default=0)
    else:
        layer = n.integer("layer", 1, MAX_MIX_LAYERS)
    listen_host = n.host("listen_host", default="127.0.0.1")
    node = NodeSection(
        name=name,
        role=role,
        layer=layer,
        listen_host=listen_host,
        listen_port=n.ranged("listen_port"),
        data_dir=_resolve(base_dir, n.text("data_dir"), "node.data_dir"),
        public_host=n.host("public_host", default=listen_host),
        geometry=n.text("geometry", default="voice", choices=tuple(GEOMETRIES)),
    )
    n.finish()
    if node.public_host == "0.0.0.0":
        raise n.fail(
            "public_host", "an address others can reach (0.0.0.0 is a wildcard)", "0.0.0.0"
        )
    # The published address must pass the directory's own check, or every authority would
    # refuse the descriptor at run time (multicast, 0.0.0.0/8, names ending in digits).
    problem = descriptor_host_problem(node.public_host)
    if problem is not None:
        raise n.fail(
            "public_host", f"an address the directory accepts ({problem})", node.public_host
        )

    gateway: GatewaySection | None = None
    if role is NodeRole.GATEWAY:
        g = _Table(root._get("gateway", _REQUIRED), "gateway")
        gateway = GatewaySection(
            client_host=g.host("client_host", default="127.0.0.1"),
            client_port=g.ranged("client_port"),
            delivery_rate_hz=g.ranged("delivery_rate_hz", default=DEFAULT_DELIVERY_RATE_HZ),
            mailbox_capacity=g.ranged("mailbox_capacity", default=256),
        )
        g.finish()
        if gateway.client_port == node.listen_port and gateway.client_host == listen_host:
            raise ConfigError("gateway.client_port: must differ from node.listen_port")
    elif "gateway" in root.data:
        root.used.add("gateway")
        raise ConfigError('gateway: only a node with role = "gateway" has this section')

    m = _Table(root._get("mixing", {}), "mixing")
    mixing = MixingSection(
        loop_cover_rate_hz=m.ranged("loop_cover_rate_hz", default=1.0),
        max_queue=m.ranged("max_queue", default=100_000),
        late_drop_ms=m.ranged("late_drop_ms", default=50.0),
        workers=m.ranged("workers", default=2),
        loop_cover_delay_ms=m.ranged("loop_cover_delay_ms", default=22.5),
    )
    m.finish()

    directory = _directory(root, need_authorities=True)
    if node.layer > directory.mix_layers:
        raise n.fail("layer", f"a layer in 1..{directory.mix_layers} (directory.mix_layers)", layer)
    metrics = _metrics(root)

    lk = _Table(root._get("link", {}), "link")
    link = LinkSection(
        delay_ms_mean=lk.ranged("delay_ms_mean", default=0.0),
        delay_ms_jitter=lk.ranged("delay_ms_jitter", default=0.0),
        loss=lk.ranged("loss", default=0.0),
    )
    lk.finish()
    root.finish()
    return NodeConfig(node, gateway, mixing, directory, metrics, link)


def load_node_config(path: Path) -> NodeConfig:
    """Read and check a node config file."""
    path = Path(path)
    return parse_node_config(_read(path), base_dir=_base_dir(path), where=str(path))


def parse_dirauth_config(
    text: str, *, base_dir: Path | None = None, where: str = "config"
) -> DirAuthConfig:
    """Parse an authority config from TOML text."""
    root = _Table(_root(text, where), "")
    a = _Table(root._get("authority", _REQUIRED), "authority")
    auth = AuthoritySection(
        name=a.text("name"),
        listen_host=a.host("listen_host", default="127.0.0.1"),
        listen_port=a.ranged("listen_port"),
        data_dir=_resolve(base_dir, a.text("data_dir"), "authority.data_dir"),
        round_interval_s=a.ranged("round_interval_s", default=5.0),
        geometry=a.text("geometry", default="voice", choices=tuple(GEOMETRIES)),
        allowed_nodes=tuple(a.items("allowed_nodes", _key_hex, default=[])),
    )
    a.finish()
    directory = _directory(root, need_authorities=False)
    root.finish()
    return DirAuthConfig(auth, directory)


def load_dirauth_config(path: Path) -> DirAuthConfig:
    """Read and check an authority config file."""
    path = Path(path)
    return parse_dirauth_config(_read(path), base_dir=_base_dir(path), where=str(path))


# --------------------------------------------------------------------------------------
# Writing


def _directory_dict(d: DirectorySection) -> dict[str, object]:
    return {
        "authorities": list(d.authorities),
        "authority_keys": [k.hex() for k in d.authority_keys],
        "threshold": d.threshold,
        "epoch_length_s": d.epoch_length_s,
        "genesis_s": d.genesis_s,
        "mix_layers": d.mix_layers,
    }


def node_config_to_dict(cfg: NodeConfig) -> dict[str, object]:
    """The config as TOML-ready tables (every field written, so the file is self-describing)."""
    n = cfg.node
    out: dict[str, object] = {
        "node": {
            "name": n.name,
            "role": n.role.value,
            "layer": n.layer,
            "listen_host": n.listen_host,
            "listen_port": n.listen_port,
            "public_host": n.public_host,
            "data_dir": str(n.data_dir),
            "geometry": n.geometry,
        },
    }
    if cfg.gateway is not None:
        g = cfg.gateway
        out["gateway"] = {
            "client_host": g.client_host,
            "client_port": g.client_port,
            "delivery_rate_hz": g.delivery_rate_hz,
            "mailbox_capacity": g.mailbox_capacity,
        }
    m = cfg.mixing
    out["mixing"] = {
        "loop_cover_rate_hz": m.loop_cover_rate_hz,
        "max_queue": m.max_queue,
        "late_drop_ms": m.late_drop_ms,
        "workers": m.workers,
        "loop_cover_delay_ms": m.loop_cover_delay_ms,
    }
    out["directory"] = _directory_dict(cfg.directory)
    out["metrics"] = {
        "enabled": cfg.metrics.enabled,
        "host": cfg.metrics.host,
        "port": cfg.metrics.port,
    }
    out["link"] = {
        "delay_ms_mean": cfg.link.delay_ms_mean,
        "delay_ms_jitter": cfg.link.delay_ms_jitter,
        "loss": cfg.link.loss,
    }
    return out


def dirauth_config_to_dict(cfg: DirAuthConfig) -> dict[str, object]:
    """The authority config as TOML-ready tables."""
    a = cfg.authority
    return {
        "authority": {
            "name": a.name,
            "listen_host": a.listen_host,
            "listen_port": a.listen_port,
            "data_dir": str(a.data_dir),
            "round_interval_s": a.round_interval_s,
            "geometry": a.geometry,
            "allowed_nodes": [k.hex() for k in a.allowed_nodes],
        },
        "directory": _directory_dict(cfg.directory),
    }


def config_text(cfg: NodeConfig | DirAuthConfig) -> str:
    """The config as TOML text, checked by parsing it back (ConfigError if it is not valid)."""
    if isinstance(cfg, NodeConfig):
        text = tomli_w.dumps(node_config_to_dict(cfg))
        parse_node_config(text)
    else:
        text = tomli_w.dumps(dirauth_config_to_dict(cfg))
        parse_dirauth_config(text)
    return text


def as_loaded_from(cfg: C, path: Path) -> C:
    """``cfg`` as ``load_*_config(path)`` will read it once written there: relative paths
    (the data directory) resolved against the directory of ``path``. Writes nothing."""
    base, where = _base_dir(Path(path)), str(path)
    if isinstance(cfg, NodeConfig):
        return parse_node_config(config_text(cfg), base_dir=base, where=where)
    return parse_dirauth_config(config_text(cfg), base_dir=base, where=where)


def write_config(path: Path, cfg: NodeConfig | DirAuthConfig) -> None:
    """Write a node or authority config as TOML, atomically (temp file, fsync, rename).

    ConfigError if ``cfg`` is not valid (nothing is written); OSError (with the path in
    ``filename``) if the file system refuses, and then no temp file is left behind.
    """
    text = config_text(cfg).encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_node_config(
    *,
    name: str,
    role: str,
    layer: int,
    listen_port: int,
    data_dir: Path,
    authorities: list[str],
    authority_keys: list[bytes],
    threshold: int | None = None,
    listen_host: str = "127.0.0.1",
    client_port: int | None = None,
    metrics_port: int = 9100,
    epoch_length_s: int = 3600,
    extra: Mapping[str, Mapping[str, object]] | None = None,
) -> NodeConfig:
    """Build a checked NodeConfig from the usual arguments (defaults for the rest).

    ``extra`` adds or overrides fields by table, e.g. ``{"link": {"loss": 0.01}}``.
    """
    tables: dict[str, dict[str, object]] = {
        "node": {
            "name": name,
            "role": role,
            "layer": layer,
            "listen_host": listen_host,
            "listen_port": listen_port,
            "data_dir": str(data_dir),
        },
        "directory": {
            "authorities": list(authorities),
            "authority_keys": [k.hex() for k in authority_keys],
            "epoch_length_s": epoch_length_s,
        },
        "metrics": {"port": metrics_port},
    }
    if threshold is not None:
        tables["directory"]["threshold"] = threshold
    if role == "gateway":
        tables["gateway"] = {"client_port": client_port}
    for table, fields in (extra or {}).items():
        tables.setdefault(table, {}).update(fields)
    tables = {k: {f: v for f, v in t.items() if v is not None} for k, t in tables.items()}
    return parse_node_config(tomli_w.dumps(tables), where="arguments")


def make_dirauth_config(
    *,
    name: str,
    listen_port: int,
    data_dir: Path,
    authority_keys: list[bytes],
    authorities: list[str] | None = None,
    threshold: int | None = None,
    listen_host: str = "127.0.0.1",
    epoch_length_s: int = 3600,
    round_interval_s: float = 5.0,
    geometry: str = "voice",
    mix_layers: int = DEFAULT_MIX_LAYERS,
) -> DirAuthConfig:
    """Build a checked DirAuthConfig (ConfigError naming the field, as on load).

    ``threshold`` None is the majority of ``authority_keys``; ``authorities`` None is
    this authority alone (``http://listen_host:listen_port``).
    """
    urls = [f"http://{listen_host}:{listen_port}"] if authorities is None else authorities
    directory: dict[str, object] = {
        "authorities": list(urls),
        "authority_keys": [k.hex() for k in authority_keys],
        "epoch_length_s": epoch_length_s,
        "mix_layers": mix_layers,
    }
    if threshold is not None:
        directory["threshold"] = threshold
    tables = {
        "authority": {
            "name": name,
            "listen_host": listen_host,
            "listen_port": listen_port,
            "data_dir": str(data_dir),
            "round_interval_s": round_interval_s,
            "geometry": geometry,
        },
        "directory": directory,
    }
    return parse_dirauth_config(tomli_w.dumps(tables), where="arguments")
