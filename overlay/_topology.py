"""Topology documents, their signatures, epochs and path selection; sans-IO.

    >>> import os
    >>> from nacl.signing import SigningKey
    >>> from overlay import VOICE, build_document, sign_document, verify_document
    >>> auth = SigningKey(os.urandom(32))
    >>> doc = build_document(7, epoch_length_s=3600, geometry=VOICE, descriptors=[])
    >>> data = doc.to_bytes()
    >>> sig = sign_document(data, bytes(auth))
    >>> verify_document(data, [sig], [bytes(auth.verify_key)], threshold=1).epoch
    7

A document lists the nodes of one epoch (gateways and three mix layers), their addresses
and X25519 epoch keys, and the packet geometry. Authorities sign a BLAKE2b digest of the
document's canonical JSON bytes; a reader accepts it only with ``threshold`` valid
signatures from distinct known authority keys, and only if the geometry digest matches.

Everything read from the network is untrusted: JSON is bounded in size and nesting before
it is parsed (``load_json``), every malformed field is a ``DirectoryFieldError`` naming it
(``document.nodes[3].epoch_keys.41: X25519 key is a low-order point``), and a descriptor
whose X25519 or Ed25519 key is not a usable point is refused (``InvalidKeyError``), so a
document listing one is refused as a whole. So is a descriptor whose host a node could not
send to (``descriptor_host_problem``): every field a node acts on is checked where a
descriptor is accepted.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ._checks import is_int
from ._errors import GeometryError, PhantomError, UsageError
from ._geometry import GEOMETRIES, MAX_DELAY_US, NODE_ID_LEN, Geometry
from ._random import exponential
from ._sphinx import Hop, Rng

# "version" field of documents and descriptors: one directory protocol version, so that a
# node which cannot read the current documents (2: max_delay_us) is not listed either.
DOCUMENT_VERSION = 2
ED25519_KEY_LEN = 32  # bytes, an Ed25519 public key (and a signing seed)
ED25519_SIG_LEN = 64  # bytes
X25519_KEY_LEN = 32  # bytes
DOCUMENT_DIGEST_LEN = 32  # bytes, BLAKE2b-256 of a document's canonical bytes
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024  # bytes; a larger document is refused before parsing
MAX_DESCRIPTOR_BYTES = 16 * 1024  # bytes
MAX_ENVELOPE_BYTES = 2 * MAX_DOCUMENT_BYTES  # bytes of a signed document (JSON string escapes)
MAX_SIGNATURES = 64  # signatures an envelope may carry
MAX_NAME_LEN = 64  # characters of an operator label
MAX_HOST_LEN = 253  # characters of a host name or address
DEFAULT_MIX_LAYERS = 3  # stratified topology: entry gateway, 3 mix layers, exit gateway
US_PER_S = 1_000_000
# Largest sender-chosen delay per hop (us) a node accepts unless the document says otherwise:
# 10 s is 10 means of the slowest delay a client may choose (1 s), so a capped draw is
# rare, while a flood of packets held this long ties a node's queue up for seconds, not
# for the 71.6 minutes that the 32-bit delay field allows.
DEFAULT_MAX_DELAY_US = 10 * US_PER_S

# Domain separation: what a signature is over can never be read as something else.
_PERSON_DOC = b"pn-topology-v1"  # BLAKE2b personalisation of the document digest
_SIG_DOC = b"pn-topology-sig-v1\x00"  # prefix of the signed message (prefix | digest)
_SIG_DESC = b"pn-descriptor-sig-v1\x00"  # prefix of a descriptor signature's message


class DirectoryError(PhantomError):
    """A topology document or descriptor failed a check; the reader must not use it."""


class DirectoryFieldError(DirectoryError):
    """One field of a document, descriptor or envelope is malformed.

    ``where`` is the dotted path of the object that holds it (``document.nodes[3]``),
    ``field`` the field inside it (``epoch_keys.41``, or ``""`` for the object itself) and
    ``problem`` what is wrong; ``str()`` is ``"document.nodes[3].epoch_keys.41: problem"``.
    """

    def __init__(self, where: str, field: str, problem: str) -> None:
        self.where = where
        self.field = field
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    @property
    def path(self) -> str:
        """``where.field`` (or ``where`` alone)."""
        return f"{self.where}.{self.field}" if self.field else self.where

    def under(self, where: str) -> DirectoryFieldError:
        """The same error for the same field of an object found at ``where`` instead."""
        return type(self)(where, self.field, self.problem)


class InvalidKeyError(DirectoryFieldError):
    """A public key is not a usable point: a low-order or non-canonical X25519 key, or an
    Ed25519 key that is not a point of the prime-order subgroup."""


class NoRouteError(DirectoryError):
    """A path cannot be built: a layer has no usable node, or a gateway is unknown."""


class NodeRole(StrEnum):
    """What a node does: a gateway attaches clients, a mix sits in one layer."""

    GATEWAY = "gateway"
    MIX = "mix"


def node_id_for(identity_key: bytes) -> bytes:
    """A node's 16-byte id: BLAKE2b-128 of its Ed25519 identity public key."""
    if len(identity_key) != ED25519_KEY_LEN:
        raise UsageError(f"identity key must be {ED25519_KEY_LEN} bytes")
    return hashlib.blake2b(identity_key, digest_size=NODE_ID_LEN).digest()


def parse_epoch(text: str) -> int | None:
    """An epoch number written in ASCII decimal without leading zeros, or None."""
    if not (0 < len(text) <= 19 and text.isascii() and text.isdecimal()):
        return None
    if text != "0" and text.startswith("0"):
        return None
    value = int(text)
    return value if value < 2**63 else None


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no whitespace, ASCII only: one byte string per meaning."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# --------------------------------------------------------------------------------------
# Strict field readers (untrusted JSON -> typed values, DirectoryFieldError naming the field)

MAX_JSON_DEPTH = 8  # nesting of arrays and objects in any JSON we read (documents use 4)
_JSON_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash and the byte it escapes
_JSON_STRING = re.compile(rb'"[^"]*"')  # a string literal once escapes are gone
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def load_json(
    data: bytes, where: str, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH
) -> object:
    """Parse untrusted ASCII JSON of at most ``max_bytes`` bytes and ``max_depth`` levels.

    The size and nesting are checked before the parser runs (linear time, no recursion),
    so hostile input costs O(len) and never reaches Python's recursion limit. ``NaN`` and
    ``Infinity`` are refused. DirectoryFieldError at ``where`` for anything else.
    """
    if len(data) > max_bytes:
        raise DirectoryFieldError(where, "", f"larger than {max_bytes} bytes")
    if not data.isascii():
        raise DirectoryFieldError(where, "", "not ASCII JSON")
    # The brackets outside string literals (tokenized as the parser does: escapes pair
    # left to right, then strings end at the next quote), all regular expressions without
    # backtracking. Each pass removes the innermost pairs, so the brackets of valid JSON of
    # depth n are gone after n passes; anything left is too deep or unbalanced.
    text = _JSON_STRING.sub(b"", _JSON_ESCAPE.sub(b"", data))
    brackets = text.translate(None, _NOT_BRACKET).replace(b"{", b"[").replace(b"}", b"]")
    for _ in range(max_depth):
        if not brackets:
            break
        brackets = brackets.replace(b"[]", b"")
    if b"[]" in brackets:
        raise DirectoryFieldError(where, "", f"nested deeper than {max_depth} levels")
    if brackets:
        raise DirectoryFieldError(where, "", "not ASCII JSON (unbalanced brackets)")
    try:
        return json.loads(data.decode("ascii"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise DirectoryFieldError(where, "", "not ASCII JSON") from None


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _field(data: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in data:
        raise DirectoryFieldError(where, name, "missing")
    return data[name]


def _int(data: Mapping[str, Any], name: str, where: str, lo: int, hi: int) -> int:
    v = _field(data, name, where)
    if not is_int(v) or not lo <= v <= hi:
        raise DirectoryFieldError(where, name, f"expected an integer in {lo}..{hi}, got {v!r}")
    return v


def _str(data: Mapping[str, Any], name: str, where: str, max_len: int) -> str:
    v = _field(data, name, where)
    if not isinstance(v, str) or not 0 < len(v) <= max_len or not v.isprintable():
        raise DirectoryFieldError(where, name, f"expected a printable string of 1..{max_len}")
    return v


def _hex(value: object, where: str, name: str, length: int) -> bytes:
    problem = f"expected {length} bytes as lowercase hex"
    if not isinstance(value, str) or len(value) != 2 * length:
        raise DirectoryFieldError(where, name, problem)
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise DirectoryFieldError(where, name, problem) from None
    if raw.hex() != value:
        raise DirectoryFieldError(where, name, problem)
    return raw


def _exact_keys(data: object, keys: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise DirectoryFieldError(where, "", "expected an object")
    extra = set(data) - keys
    if extra:
        raise DirectoryFieldError(where, sorted(extra)[0], "unknown field")
    return data


# --------------------------------------------------------------------------------------
# Public keys from the network

# Keys are checked once per distinct value: documents are parsed again every epoch and an
# authority rebuilds them every round, with the same keys.
KEY_CHECK_CACHE = 32_768  # entries (about 100 bytes each)
_P25519 = 2**255 - 19  # the field prime of Curve25519 (RFC 7748, section 4.1)
_A25519 = 486662  # Montgomery coefficient A of Curve25519 (RFC 7748, section 4.1)


@functools.lru_cache(maxsize=KEY_CHECK_CACHE)
def x25519_key_problem(key: bytes) -> str | None:
    """Why ``key`` is not a usable X25519 public key, or None if it is.

    Refused: a length other than 32 bytes; a non-canonical encoding (bit 255 set, or a
    u-coordinate >= p, RFC 7748 section 5); and every point of small order, i.e. whose
    order divides 8 (the seven u values in libsodium's blocklist: 0, 1, p - 1 and the two
    order-8 points, and their encodings >= p). With such a key a Diffie-Hellman result is
    known to everyone, and libsodium refuses it. Order is tested with three x-only
    doublings: [8]P is the point at infinity (Z = 0) exactly when P has small order.
    """
    if len(key) != X25519_KEY_LEN:
        return f"expected {X25519_KEY_LEN} bytes, got {len(key)}"
    u = int.from_bytes(key, "little")
    if u >> 255:
        return "non-canonical X25519 key (bit 255 set)"
    if u >= _P25519:
        return "non-canonical X25519 key (u >= p)"
    x, z = u, 1
    for _ in range(3):
        xx, zz, xz = x * x % _P25519, z * z % _P25519, x * z % _P25519
        x, z = (xx - zz) ** 2 % _P25519, 4 * xz * (xx + _A25519 * xz + zz) % _P25519
    if z == 0:
        return "X25519 key is a low-order point"
    return None


@functools.lru_cache(maxsize=KEY_CHECK_CACHE)
def ed25519_key_problem(key: bytes) -> str | None:
    """Why ``key`` is not a usable Ed25519 public key, or None if it is.

    libsodium's ``crypto_core_ed25519_is_valid_point``: a canonical encoding of a point
    on the curve, in the prime-order subgroup and not of small order.
    """
    if len(key) != ED25519_KEY_LEN:
        return f"expected {ED25519_KEY_LEN} bytes, got {len(key)}"
    if not crypto_core_ed25519_is_valid_point(key):
        return "Ed25519 key is not a valid point of the prime-order subgroup"
    return None


# --------------------------------------------------------------------------------------
# Addresses from the network

_LDH_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # RFC 1123 section 2.1
_TLD = re.compile(r"[A-Za-z]")  # a top-level label starts with a letter (RFC 1123 2.1)
# IPv4 destinations no node can send a packet to, or that would reach many hosts at once.
_UNUSABLE_V4 = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "an unspecified address (0.0.0.0/8, RFC 1122)"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "a multicast address (224.0.0.0/4)"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "a reserved or broadcast address (240.0.0.0/4)"),
)


def descriptor_host_problem(host: object) -> str | None:
    """Why ``host`` cannot be a published node address, or None if it can.

    A host is either an IPv4 literal in dotted-decimal form (``ipaddress`` syntax: four
    numbers 0..255, no leading zeros), outside 0.0.0.0/8, multicast 224.0.0.0/4 and
    240.0.0.0/4 (which holds the broadcast address); or an LDH name (RFC 1123 section 2.1:
    ASCII letters, digits and hyphens, labels of 1..63 characters that neither start nor
    end with a hyphen, dots between them, at most 253 characters, one trailing dot
    allowed) whose last label starts with a letter, so that no resolver reads it as an
    address (``1.2.3.0x4``). IPv6 is refused: node sockets are IPv4.

    Whatever passes is pure ASCII without NUL, so ``socket.sendto(data, (host, port))``
    converts it without ``TypeError``/``UnicodeError`` (it can only fail with OSError).
    """
    if not isinstance(host, str):
        return "expected a string"
    if not 0 < len(host) <= MAX_HOST_LEN:
        return f"expected 1..{MAX_HOST_LEN} characters"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if address.version != 4:
            return "expected an IPv4 address or a host name (IPv6 is not supported)"
        for network, what in _UNUSABLE_V4:
            if address in network:
                return f"{what} is not a node address"
        return None
    labels = host.removesuffix(".").split(".")
    if not all(_LDH_LABEL.fullmatch(label) for label in labels):
        return "expected an IPv4 address or an LDH host name (RFC 1123)"
    if not _TLD.match(labels[-1]):
        return "expected dotted-decimal IPv4 or a name whose top label starts with a letter"
    return None


# --------------------------------------------------------------------------------------
# Node descriptors


@dataclass(frozen=True, slots=True)
class NodeDescriptor:
    """What a node publishes about itself: id, role, layer, addresses, keys.

    ``epoch_keys`` maps an epoch number to that epoch's X25519 public key (the current
    and the next epoch, so that packets built near an epoch boundary still open).
    """

    node_id: bytes
    name: str
    role: NodeRole
    layer: int
    host: str
    port: int
    client_port: int | None
    identity_key: bytes
    epoch_keys: Mapping[int, bytes] = field(hash=False)
    # Unix seconds when the node signed it: of two descriptors for the same epochs the later
    # wins, so a node that restarts on a new address is not left listed at the old one.
    published_at: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, problem: str) -> DirectoryFieldError:
            return DirectoryFieldError("descriptor", name, problem)

        if not isinstance(self.published_at, int) or not 0 <= self.published_at < 2**63:
            raise bad("published_at", "expected unix seconds >= 0")
        try:
            role = NodeRole(self.role)
        except ValueError:
            raise bad("role", f"unknown role {self.role!r}") from None
        object.__setattr__(self, "role", role)
        problem = ed25519_key_problem(self.identity_key)
        if problem is not None:
            raise InvalidKeyError("descriptor", "identity_key", problem)
        if self.node_id != node_id_for(self.identity_key):
            raise bad("node_id", "not the BLAKE2b-128 of identity_key")
        name_ok = isinstance(self.name, str) and 0 < len(self.name) <= MAX_NAME_LEN
        if not name_ok or not self.name.isprintable():
            raise bad("name", f"expected a printable string of 1..{MAX_NAME_LEN}")
        problem = descriptor_host_problem(self.host)
        if problem is not None:
            raise bad("host", problem)
        if not _is_port(self.port):
            raise bad("port", f"expected 1..65535, got {self.port!r}")
        if not is_int(self.layer):
            raise bad("layer", f"expected an integer, got {self.layer!r}")
        if role is NodeRole.GATEWAY:
            if self.layer != 0:
                raise bad("layer", f"a gateway is in layer 0, got {self.layer}")
            if not _is_port(self.client_port):
                raise bad("client_port", "a gateway needs a port in 1..65535")
        else:
            if not 1 <= self.layer <= 255:
                raise bad("layer", f"a mix is in layer 1..255, got {self.layer}")
            if self.client_port is not None:
                raise bad("client_port", "only gateways attach clients")
        keys: dict[int, bytes] = {}
        for epoch, key in sorted(self.epoch_keys.items()):
            if not 0 <= epoch < 2**63:
                raise bad(f"epoch_keys.{epoch}", "epoch out of range")
            problem = x25519_key_problem(key)
            if problem is not None:
                raise InvalidKeyError("descriptor", f"epoch_keys.{epoch}", problem)
            keys[epoch] = bytes(key)
        object.__setattr__(self, "epoch_keys", MappingProxyType(keys))

    def __reduce__(self) -> tuple[type[NodeDescriptor], tuple[object, ...]]:
        # For process pools on one machine; the wire format is to_bytes().
        return (
            NodeDescriptor,
            (
                self.node_id,
                self.name,
                self.role,
                self.layer,
                self.host,
                self.port,
                self.client_port,
                self.identity_key,
                dict(self.epoch_keys),
                self.published_at,
            ),
        )

    def epoch_key(self, epoch: int) -> bytes:
        """This node's X25519 public key for ``epoch``; DirectoryError if it has none."""
        try:
            return self.epoch_keys[epoch]
        except KeyError:
            raise DirectoryError(f"node {self.name!r} has no key for epoch {epoch}") from None

    def restricted(self, epochs: Iterable[int]) -> NodeDescriptor:
        """The same descriptor with only the keys of ``epochs``."""
        wanted = set(epochs)
        keys = {e: k for e, k in self.epoch_keys.items() if e in wanted}
        return replace(self, epoch_keys=keys)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: bytes as lowercase hex, epochs as decimal strings."""
        return {
            "node_id": self.node_id.hex(),
            "name": self.name,
            "role": self.role.value,
            "layer": self.layer,
            "host": self.host,
            "port": self.port,
            "client_port": self.client_port,
            "identity_key": self.identity_key.hex(),
            "epoch_keys": {str(e): k.hex() for e, k in self.epoch_keys.items()},
            "published_at": self.published_at,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "descriptor") -> NodeDescriptor:
        """Parse untrusted JSON found at ``where`` (e.g. ``document.nodes[3]``).

        Every malformed field is a DirectoryFieldError whose path starts with ``where``
        (InvalidKeyError for a key that is not a usable point).
        """
        d = _exact_keys(data, _DESCRIPTOR_KEYS, where)
        role = _str(d, "role", where, 16)
        if role not in (NodeRole.GATEWAY.value, NodeRole.MIX.value):
            raise DirectoryFieldError(where, "role", f"expected 'gateway' or 'mix', got {role!r}")
        cp = _field(d, "client_port", where)
        client_port = None if cp is None else _int(d, "client_port", where, 1, 65535)
        raw_keys = _field(d, "epoch_keys", where)
        if not isinstance(raw_keys, dict) or len(raw_keys) > 8:
            raise DirectoryFieldError(where, "epoch_keys", "expected an object of at most 8 keys")
        keys: dict[int, bytes] = {}
        for e, k in raw_keys.items():
            epoch = parse_epoch(e) if isinstance(e, str) else None
            if epoch is None:
                raise DirectoryFieldError(where, "epoch_keys", f"bad epoch {e!r}")
            keys[epoch] = _hex(k, where, f"epoch_keys.{e}", X25519_KEY_LEN)
        try:
            return cls(
                node_id=_hex(_field(d, "node_id", where), where, "node_id", NODE_ID_LEN),
                name=_str(d, "name", where, MAX_NAME_LEN),
                role=NodeRole(role),
                layer=_int(d, "layer", where, 0, 255),
                host=_str(d, "host", where, MAX_HOST_LEN),
                port=_int(d, "port", where, 1, 65535),
                client_port=client_port,
                identity_key=_hex(
                    _field(d, "identity_key", where), where, "identity_key", ED25519_KEY_LEN
                ),
                epoch_keys=keys,
                published_at=_int(d, "published_at", where, 0, 2**63 - 1),
            )
        except DirectoryFieldError as exc:
            raise exc.under(where) from None

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (what the node signs)."""
        return canonical_json({"version": DOCUMENT_VERSION, **self.to_dict()})

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeDescriptor:
        """Parse canonical descriptor bytes; non-canonical input is refused.

        DirectoryFieldError naming the field for anything malformed (``descriptor.port:
        ...``), InvalidKeyError for a key that is not a usable point.
        """
        obj = load_json(data, "descriptor", max_bytes=MAX_DESCRIPTOR_BYTES)
        d = _exact_keys(obj, _DESCRIPTOR_KEYS | {"version"}, "descriptor")
        _int(d, "version", "descriptor", DOCUMENT_VERSION, DOCUMENT_VERSION)
        desc = cls.from_dict({k: v for k, v in d.items() if k != "version"})
        if desc.to_bytes() != data:
            raise DirectoryFieldError("descriptor", "", "not in canonical form")
        return desc


def _is_port(value: object) -> bool:
    return is_int(value) and 1 <= value <= 65535


_DESCRIPTOR_KEYS = {
    "published_at",
    "node_id",
    "name",
    "role",
    "layer",
    "host",
    "port",
    "client_port",
    "identity_key",
    "epoch_keys",
}


def sign_descriptor(descriptor: NodeDescriptor, identity_seed: bytes) -> bytes:
    """The node's 64-byte Ed25519 signature over its canonical descriptor bytes."""
    key = SigningKey(identity_seed)
    if bytes(key.verify_key) != descriptor.identity_key:
        raise UsageError("identity seed does not match the descriptor's identity key")
    return key.sign(_SIG_DESC + descriptor.to_bytes()).signature


def verify_descriptor(data: bytes, signature: bytes) -> NodeDescriptor:
    """Parse ``data`` and check the signature by the identity key it names; fail closed."""
    desc = NodeDescriptor.from_bytes(data)
    if len(signature) != ED25519_SIG_LEN:
        raise DirectoryError("descriptor signature: wrong length")
    try:
        VerifyKey(desc.identity_key).verify(_SIG_DESC + data, signature)
    except (BadSignatureError, ValueError):
        raise DirectoryError("descriptor signature: does not verify") from None
    return desc


_SIG_WITHDRAW = b"pn-withdraw-sig-v1\x00"  # prefix of a withdrawal signature's message
_WITHDRAWAL_KEYS = {"version", "withdraw", "identity_key", "withdrawn_at"}
MAX_WITHDRAWAL_BYTES = 512  # bytes of a withdrawal's canonical JSON (about 200 used)


@dataclass(frozen=True, slots=True)
class NodeWithdrawal:
    """A node's signed request to leave the network: ``phantom-mixnode leave``.

    ``identity_key`` (32-byte Ed25519) names the node; ``withdrawn_at`` is unix seconds.
    Authorities drop the node's descriptor at once and refuse any descriptor of it
    published at or before ``withdrawn_at``, so the next document no longer lists it; a
    later descriptor (the node started again) is taken as usual.
    """

    identity_key: bytes
    withdrawn_at: int

    def __post_init__(self) -> None:
        problem = ed25519_key_problem(self.identity_key)
        if problem is not None:
            raise InvalidKeyError("withdrawal", "identity_key", problem)
        if not is_int(self.withdrawn_at) or not 0 <= self.withdrawn_at < 2**63:
            raise DirectoryFieldError("withdrawal", "withdrawn_at", "expected unix seconds >= 0")

    @property
    def node_id(self) -> bytes:
        """BLAKE2b-128 of the identity key, as in descriptors."""
        return node_id_for(self.identity_key)

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (what the node signs)."""
        return canonical_json(
            {
                "version": DOCUMENT_VERSION,
                "withdraw": self.node_id.hex(),
                "identity_key": self.identity_key.hex(),
                "withdrawn_at": self.withdrawn_at,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeWithdrawal:
        """Parse untrusted canonical bytes; DirectoryFieldError naming the field."""
        where = "withdrawal"
        d = _exact_keys(
            load_json(data, where, max_bytes=MAX_WITHDRAWAL_BYTES), _WITHDRAWAL_KEYS, where
        )
        _int(d, "version", where, DOCUMENT_VERSION, DOCUMENT_VERSION)
        key = _hex(_field(d, "identity_key", where), where, "identity_key", ED25519_KEY_LEN)
        node_id = _hex(_field(d, "withdraw", where), where, "withdraw", NODE_ID_LEN)
        w = cls(key, _int(d, "withdrawn_at", where, 0, 2**63 - 1))
        if not hmac.compare_digest(node_id, w.node_id):
            raise DirectoryFieldError(where, "withdraw", "not the BLAKE2b-128 of identity_key")
        if w.to_bytes() != data:
            raise DirectoryFieldError(where, "", "not in canonical form")
        return w


def sign_withdrawal(withdrawal: NodeWithdrawal, identity_seed: bytes) -> bytes:
    """The node's 64-byte Ed25519 signature over its withdrawal (own domain prefix)."""
    key = SigningKey(identity_seed)
    if bytes(key.verify_key) != withdrawal.identity_key:
        raise UsageError("identity seed does not match the withdrawal's identity key")
    return key.sign(_SIG_WITHDRAW + withdrawal.to_bytes()).signature


def verify_withdrawal(data: bytes, signature: bytes) -> NodeWithdrawal:
    """Parse ``data`` and check the signature by the key it names; fail closed
    (DirectoryError, DirectoryFieldError for a malformed field)."""
    w = NodeWithdrawal.from_bytes(data)
    if len(signature) != ED25519_SIG_LEN:
        raise DirectoryError("withdrawal signature: wrong length")
    try:
        VerifyKey(w.identity_key).verify(_SIG_WITHDRAW + data, signature)
    except (BadSignatureError, ValueError):
        raise DirectoryError("withdrawal signature: does not verify") from None
    return w


# --------------------------------------------------------------------------------------
# Topology documents


@dataclass(frozen=True, slots=True)
class TopologyDocument:
    """One epoch's network: its nodes sorted by id, the geometry, the validity window.

    ``gateways`` and ``layers`` (``layers[0]`` is mix layer 1) are derived from ``nodes``.
    ``max_delay_us`` is the largest per-hop delay (microseconds) that nodes accept: senders
    cap their draws at it, nodes drop a packet asking for more (``delay_too_long``).
    """

    epoch: int
    valid_after: int  # unix seconds, inclusive
    valid_until: int  # unix seconds, exclusive
    geometry: Geometry
    mix_layers: int
    nodes: tuple[NodeDescriptor, ...]
    max_delay_us: int = DEFAULT_MAX_DELAY_US  # microseconds, 0..MAX_DELAY_US
    gateways: tuple[NodeDescriptor, ...] = field(init=False)
    layers: tuple[tuple[NodeDescriptor, ...], ...] = field(init=False)
    by_id: Mapping[bytes, NodeDescriptor] = field(init=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.epoch < 2**63:
            raise DirectoryFieldError("document", "epoch", f"out of range: {self.epoch}")
        if not 0 <= self.valid_after < self.valid_until:
            raise DirectoryFieldError("document", "valid_until", "not after valid_after")
        if not 1 <= self.mix_layers <= self.geometry.max_hops - 2:
            raise DirectoryFieldError(
                "document",
                "mix_layers",
                f"expected 1..{self.geometry.max_hops - 2} "
                f"for geometry {self.geometry.name!r}, got {self.mix_layers}",
            )
        nodes = tuple(sorted(self.nodes, key=lambda n: n.node_id))
        by_id: dict[bytes, NodeDescriptor] = {}
        layers: list[list[NodeDescriptor]] = [[] for _ in range(self.mix_layers)]
        gateways: list[NodeDescriptor] = []
        for i, n in enumerate(nodes):
            where = f"nodes[{i}]"
            if n.node_id in by_id:
                raise DirectoryFieldError("document", where, f"node {n.name!r} appears twice")
            if self.epoch not in n.epoch_keys:
                raise DirectoryFieldError("document", f"{where}.epoch_keys", "no key for the epoch")
            by_id[n.node_id] = n
            if n.role is NodeRole.GATEWAY:
                gateways.append(n)
            elif n.layer > self.mix_layers:
                raise DirectoryFieldError(
                    "document", f"{where}.layer", f"{n.layer} > mix_layers {self.mix_layers}"
                )
            else:
                layers[n.layer - 1].append(n)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "gateways", tuple(gateways))
        object.__setattr__(self, "layers", tuple(tuple(layer) for layer in layers))
        object.__setattr__(self, "by_id", MappingProxyType(by_id))

    def __reduce__(self) -> tuple[type[TopologyDocument], tuple[object, ...]]:
        # For process pools on one machine; the wire format is to_bytes().
        return (
            TopologyDocument,
            (
                self.epoch,
                self.valid_after,
                self.valid_until,
                self.geometry,
                self.mix_layers,
                self.nodes,
                self.max_delay_us,
            ),
        )

    def node(self, node_id: bytes) -> NodeDescriptor:
        """The node with ``node_id``; DirectoryError if the document does not list it."""
        try:
            return self.by_id[node_id]
        except KeyError:
            raise DirectoryError("node is not in the topology document") from None

    def is_valid_at(self, now: float) -> bool:
        """True while ``valid_after <= now < valid_until``."""
        return self.valid_after <= now < self.valid_until

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form of the whole document."""
        return {
            "version": DOCUMENT_VERSION,
            "epoch": self.epoch,
            "valid_after": self.valid_after,
            "valid_until": self.valid_until,
            "geometry": self.geometry.to_dict(),
            "geometry_digest": self.geometry.digest.hex(),
            "mix_layers": self.mix_layers,
            "max_delay_us": self.max_delay_us,
            "nodes": [n.to_dict() for n in self.nodes],
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes: what authorities sign and serve."""
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> bytes:
        """BLAKE2b-256 of the canonical bytes (what each authority signs)."""
        return document_digest(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> TopologyDocument:
        """Parse canonical document bytes, strictly; checks the geometry digest.

        This does not check signatures: use ``verify_document`` for anything received.
        DirectoryFieldError naming the field for anything malformed
        (``document.nodes[3].epoch_keys.41: X25519 key is a low-order point``).
        """
        obj = load_json(data, "document", max_bytes=MAX_DOCUMENT_BYTES)
        d = _exact_keys(obj, _DOCUMENT_KEYS, "document")
        _int(d, "version", "document", DOCUMENT_VERSION, DOCUMENT_VERSION)
        geo_raw = _field(d, "geometry", "document")
        if not isinstance(geo_raw, dict):
            raise DirectoryFieldError("document", "geometry", "expected an object")
        try:
            geometry = Geometry.from_dict(geo_raw)
        except GeometryError as exc:
            raise DirectoryFieldError("document", "geometry", str(exc)) from None
        digest = _hex(_field(d, "geometry_digest", "document"), "document", "geometry_digest", 32)
        if digest != geometry.digest or geo_raw.get("digest") != digest.hex():
            raise DirectoryFieldError("document", "geometry_digest", "does not match the geometry")
        raw_nodes = _field(d, "nodes", "document")
        if not isinstance(raw_nodes, list):
            raise DirectoryFieldError("document", "nodes", "expected a list")
        nodes = tuple(
            NodeDescriptor.from_dict(n, f"document.nodes[{i}]") for i, n in enumerate(raw_nodes)
        )
        doc = cls(
            epoch=_int(d, "epoch", "document", 0, 2**63 - 1),
            valid_after=_int(d, "valid_after", "document", 0, 2**63 - 1),
            valid_until=_int(d, "valid_until", "document", 0, 2**63 - 1),
            geometry=geometry,
            mix_layers=_int(d, "mix_layers", "document", 1, 16),
            nodes=nodes,
            max_delay_us=_int(d, "max_delay_us", "document", 0, MAX_DELAY_US),
        )
        if doc.to_bytes() != data:
            raise DirectoryFieldError("document", "", "not in canonical form")
        return doc


_DOCUMENT_KEYS = {
    "version",
    "epoch",
    "valid_after",
    "valid_until",
    "geometry",
    "geometry_digest",
    "mix_layers",
    "max_delay_us",
    "nodes",
}


def document_digest(doc_bytes: bytes) -> bytes:
    """BLAKE2b-256 (personalised) of a document's canonical bytes."""
    return hashlib.blake2b(doc_bytes, digest_size=DOCUMENT_DIGEST_LEN, person=_PERSON_DOC).digest()


def build_document(
    epoch: int,
    *,
    epoch_length_s: int,
    geometry: Geometry,
    descriptors: Iterable[NodeDescriptor],
    genesis_s: int = 0,
    mix_layers: int = DEFAULT_MIX_LAYERS,
    max_delay_us: int = DEFAULT_MAX_DELAY_US,
) -> TopologyDocument:
    """The document for ``epoch``, the same bytes for the same inputs on every authority.

    Nodes without a key for ``epoch`` or in a layer the document does not have are left
    out; each kept node carries only its keys for ``epoch`` and ``epoch + 1``. If two
    descriptors share a node id, the one ``descriptor_rank`` ranks highest wins (the latest
    epoch key, then the latest ``published_at``, then the larger canonical bytes), so
    authorities that merged the same set agree. ``max_delay_us``
    (microseconds, 0..2**32-1) is published as the largest per-hop delay nodes accept;
    UsageError outside that range.
    """
    if isinstance(max_delay_us, bool) or not 0 <= max_delay_us <= MAX_DELAY_US:
        raise UsageError(f"max_delay_us must be in 0..{MAX_DELAY_US}, got {max_delay_us!r}")
    chosen: dict[bytes, NodeDescriptor] = {}
    for d in descriptors:
        if epoch not in d.epoch_keys or (d.role is NodeRole.MIX and d.layer > mix_layers):
            continue
        old = chosen.get(d.node_id)
        if old is None or descriptor_rank(d) > descriptor_rank(old):
            chosen[d.node_id] = d
    start = epoch_start(epoch, epoch_length_s, genesis_s)
    return TopologyDocument(
        epoch=epoch,
        valid_after=start,
        valid_until=start + epoch_length_s,
        geometry=geometry,
        mix_layers=mix_layers,
        nodes=tuple(d.restricted((epoch, epoch + 1)) for d in chosen.values()),
        max_delay_us=max_delay_us,
    )


def descriptor_rank(d: NodeDescriptor) -> tuple[int, int, bytes]:
    """The order of a node's descriptors: the higher rank replaces the lower one.

    ``(latest epoch with a key, published_at, canonical bytes)``: newest epoch keys first,
    then the latest signature time (a node restarted on a new address replaces its old
    entry); the bytes only break exact ties, so every authority that holds the same
    descriptors picks the same one. Used by authorities and by ``build_document``.
    """
    return (max(d.epoch_keys, default=-1), d.published_at, d.to_bytes())


# --------------------------------------------------------------------------------------
# Signatures


@dataclass(frozen=True, slots=True)
class DocumentSignature:
    """One authority's Ed25519 signature over a document digest."""

    authority_key: bytes  # 32-byte Ed25519 public key of the authority
    signature: bytes  # 64 bytes

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form (hex)."""
        return {"authority_key": self.authority_key.hex(), "signature": self.signature.hex()}

    @classmethod
    def from_dict(cls, data: object, where: str = "signature") -> DocumentSignature:
        """Parse untrusted JSON; lengths are checked, validity is not."""
        d = _exact_keys(data, {"authority_key", "signature"}, where)
        return cls(
            _hex(_field(d, "authority_key", where), where, "authority_key", ED25519_KEY_LEN),
            _hex(_field(d, "signature", where), where, "signature", ED25519_SIG_LEN),
        )


def sign_document(doc_bytes: bytes, authority_seed: bytes) -> DocumentSignature:
    """Sign a document's digest with an authority's 32-byte Ed25519 seed."""
    key = SigningKey(authority_seed)
    sig = key.sign(_SIG_DOC + document_digest(doc_bytes)).signature
    return DocumentSignature(bytes(key.verify_key), sig)


def signature_is_valid(digest: bytes, sig: DocumentSignature) -> bool:
    """True if ``sig`` is a valid signature over ``digest`` by ``sig.authority_key``."""
    try:
        VerifyKey(sig.authority_key).verify(_SIG_DOC + digest, sig.signature)
    except (BadSignatureError, ValueError):
        return False
    return True


def verify_document(
    doc_bytes: bytes,
    signatures: Iterable[DocumentSignature],
    authority_keys: Iterable[bytes],
    threshold: int,
    *,
    geometry: Geometry | None = None,
    now: float | None = None,
) -> TopologyDocument:
    """Parse and check a received document; fail closed with DirectoryError.

    Counts valid signatures from distinct keys in ``authority_keys`` (a key signing twice
    counts once, unknown keys count zero) and demands at least ``threshold``. With
    ``geometry``, the document's geometry digest must equal it; with ``now``, the
    document must be inside its validity window.
    """
    keys = {bytes(k) for k in authority_keys}
    if not 1 <= threshold <= len(keys):
        raise UsageError(f"threshold must be in 1..{len(keys)} (distinct keys), got {threshold}")
    if len(doc_bytes) > MAX_DOCUMENT_BYTES:
        raise DirectoryFieldError("document", "", f"larger than {MAX_DOCUMENT_BYTES} bytes")
    digest = document_digest(doc_bytes)
    good: set[bytes] = set()
    for sig in signatures:
        if sig.authority_key in keys and sig.authority_key not in good:
            if signature_is_valid(digest, sig):
                good.add(sig.authority_key)
    if len(good) < threshold:
        raise DirectoryError(
            f"document has {len(good)} valid authority signatures, {threshold} required"
        )
    doc = TopologyDocument.from_bytes(doc_bytes)
    if geometry is not None and doc.geometry.digest != geometry.digest:
        raise DirectoryError(
            f"document geometry {doc.geometry.name!r} does not match ours ({geometry.name!r})"
        )
    if now is not None and not doc.is_valid_at(now):
        raise DirectoryError(
            f"document for epoch {doc.epoch} is not valid now "
            f"(valid {doc.valid_after}..{doc.valid_until})"
        )
    return doc


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """What an authority serves: the exact document bytes and the signatures it holds."""

    document: bytes
    signatures: tuple[DocumentSignature, ...]

    def to_bytes(self) -> bytes:
        """JSON envelope; the document travels as a string so its bytes are kept exactly."""
        return canonical_json(
            {
                "document": self.document.decode("ascii"),
                "signatures": [s.to_dict() for s in self.signatures],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedDocument:
        """Parse an envelope (signatures are not checked here).

        DirectoryFieldError naming the field (``envelope.document: ...``) for anything
        malformed; the document itself is parsed only by ``verify``.
        """
        obj = load_json(data, "envelope", max_bytes=MAX_ENVELOPE_BYTES)
        d = _exact_keys(obj, {"document", "signatures"}, "envelope")
        doc = _field(d, "document", "envelope")
        sigs = _field(d, "signatures", "envelope")
        if not isinstance(doc, str) or not doc.isascii():
            raise DirectoryFieldError("envelope", "document", "expected a string of ASCII JSON")
        if not isinstance(sigs, list) or len(sigs) > MAX_SIGNATURES:
            raise DirectoryFieldError(
                "envelope", "signatures", f"expected a list of at most {MAX_SIGNATURES}"
            )
        return cls(
            doc.encode("ascii"),
            tuple(
                DocumentSignature.from_dict(s, f"envelope.signatures[{i}]")
                for i, s in enumerate(sigs)
            ),
        )

    def verify(
        self,
        authority_keys: Iterable[bytes],
        threshold: int,
        *,
        geometry: Geometry | None = None,
        now: float | None = None,
    ) -> TopologyDocument:
        """``verify_document`` on this envelope."""
        return verify_document(
            self.document, self.signatures, authority_keys, threshold, geometry=geometry, now=now
        )


# --------------------------------------------------------------------------------------
# Network bundles

NETWORK_VERSION = 1  # "version" of a network bundle; another version is refused
NETWORK_FINGERPRINT_LEN = 32  # bytes, BLAKE2b-256 of a bundle's canonical bytes
MAX_NETWORK_BYTES = 64 * 1024  # bytes of a bundle or its envelope; larger is refused unread
MAX_AUTHORITIES = 32  # authorities a bundle may list
MAX_URL_LEN = 2048  # characters of an authority URL
_PERSON_NET = b"pn-network-v1"  # BLAKE2b personalisation of the bundle fingerprint
_SIG_NET = b"pn-network-sig-v1\x00"  # prefix of a bundle signature's message
_NETWORK_KEYS = {
    "version",
    "authorities",
    "authority_keys",
    "threshold",
    "epoch_length_s",
    "genesis_s",
    "mix_layers",
    "geometry",
    "geometry_digest",
    "document_version",
}


@dataclass(frozen=True, slots=True)
class NetworkBundle:
    """What a node or client needs to join a network, signed by its authorities.

    Authority URLs and Ed25519 keys (32 bytes each), the signature threshold, the epoch
    parameters (seconds), the mix layers, the geometry's name and digest, and the version
    of the topology documents served. Canonical JSON with ``"version": 1``; its
    fingerprint is the BLAKE2b-256 (personalised) of those bytes, and each authority signs
    the fingerprint, as it signs documents (seed decision 5). UsageError if a field is out
    of range (a bundle an authority could not honour).
    """

    authorities: tuple[str, ...]
    authority_keys: tuple[bytes, ...]
    threshold: int
    epoch_length_s: int
    genesis_s: int
    mix_layers: int
    geometry: str
    geometry_digest: bytes
    document_version: int = DOCUMENT_VERSION

    def __post_init__(self) -> None:
        problem = _bundle_problem(self)
        if problem is not None:
            raise UsageError(f"network bundle: {problem}")

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (what the authorities sign)."""
        return canonical_json(
            {
                "version": NETWORK_VERSION,
                "authorities": list(self.authorities),
                "authority_keys": [k.hex() for k in self.authority_keys],
                "threshold": self.threshold,
                "epoch_length_s": self.epoch_length_s,
                "genesis_s": self.genesis_s,
                "mix_layers": self.mix_layers,
                "geometry": self.geometry,
                "geometry_digest": self.geometry_digest.hex(),
                "document_version": self.document_version,
            }
        )

    @property
    def fingerprint(self) -> bytes:
        """32-byte BLAKE2b-256 of the canonical bytes: what operators compare and pin."""
        return network_fingerprint(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> NetworkBundle:
        """Parse untrusted canonical bundle bytes (signatures are not checked here).

        DirectoryFieldError naming the field (``network.threshold: ...``) for anything
        malformed, of another version, or not in canonical form.
        """
        where = "network"
        d = _exact_keys(load_json(data, where, max_bytes=MAX_NETWORK_BYTES), _NETWORK_KEYS, where)
        _int(d, "version", where, NETWORK_VERSION, NETWORK_VERSION)
        urls = _field(d, "authorities", where)
        if not isinstance(urls, list) or not 0 < len(urls) <= MAX_AUTHORITIES:
            raise DirectoryFieldError(where, "authorities", f"expected 1..{MAX_AUTHORITIES} URLs")
        raw_keys = _field(d, "authority_keys", where)
        if not isinstance(raw_keys, list) or not 0 < len(raw_keys) <= MAX_AUTHORITIES:
            raise DirectoryFieldError(where, "authority_keys", f"expected 1..{MAX_AUTHORITIES}")
        for i, url in enumerate(urls):
            if not isinstance(url, str) or _url_problem(url) is not None:
                raise DirectoryFieldError(where, f"authorities[{i}]", "expected an http(s) URL")
        keys = []
        for i, k in enumerate(raw_keys):
            key = _hex(k, where, f"authority_keys[{i}]", ED25519_KEY_LEN)
            problem = ed25519_key_problem(key)
            if problem is not None:
                raise InvalidKeyError(where, f"authority_keys[{i}]", problem)
            keys.append(key)
        try:
            bundle = cls(
                authorities=tuple(urls),
                authority_keys=tuple(keys),
                threshold=_int(d, "threshold", where, 1, MAX_AUTHORITIES),
                epoch_length_s=_int(d, "epoch_length_s", where, 1, 2**32 - 1),
                genesis_s=_int(d, "genesis_s", where, 0, 2**32 - 1),
                mix_layers=_int(d, "mix_layers", where, 1, 255),
                geometry=_str(d, "geometry", where, MAX_NAME_LEN),
                geometry_digest=_hex(
                    _field(d, "geometry_digest", where), where, "geometry_digest", 32
                ),
                document_version=_int(d, "document_version", where, 1, 2**31 - 1),
            )
        except UsageError as exc:
            raise DirectoryFieldError(
                where, "", str(exc).removeprefix("network bundle: ")
            ) from None
        if bundle.to_bytes() != data:
            raise DirectoryFieldError(where, "", "not in canonical form")
        return bundle


def _url_problem(url: str) -> str | None:
    if not 0 < len(url) <= MAX_URL_LEN or not url.isascii() or not url.isprintable():
        return f"expected printable ASCII of 1..{MAX_URL_LEN}"
    if " " in url or not url.startswith(("http://", "https://")):
        return "expected an http:// or https:// URL"
    return None


def _bundle_problem(b: NetworkBundle) -> str | None:
    """What makes a bundle unusable, or None (the checks behind ``NetworkBundle``)."""
    if not 0 < len(b.authorities) <= MAX_AUTHORITIES:
        return f"expected 1..{MAX_AUTHORITIES} authority URLs"
    for url in b.authorities:
        problem = _url_problem(url) if isinstance(url, str) else "expected a string"
        if problem is not None:
            return f"authority URL: {problem}"
    keys = b.authority_keys
    if not 0 < len(keys) <= MAX_AUTHORITIES or len(set(keys)) != len(keys):
        return f"expected 1..{MAX_AUTHORITIES} distinct authority keys"
    if any(not isinstance(k, bytes) or len(k) != ED25519_KEY_LEN for k in keys):
        return "authority keys are 32 bytes"
    if not is_int(b.threshold) or not 1 <= b.threshold <= len(keys):
        return f"threshold must be in 1..{len(keys)}, got {b.threshold!r}"
    for name, lo in (("epoch_length_s", 1), ("genesis_s", 0), ("mix_layers", 1)):
        if not is_int(getattr(b, name)) or getattr(b, name) < lo:
            return f"{name} must be an integer >= {lo}"
    if not isinstance(b.geometry_digest, bytes) or len(b.geometry_digest) != 32:
        return "geometry_digest is 32 bytes"
    return None


def network_fingerprint(bundle_bytes: bytes) -> bytes:
    """BLAKE2b-256 (personalised ``pn-network-v1``) of a bundle's canonical bytes."""
    return hashlib.blake2b(
        bundle_bytes, digest_size=NETWORK_FINGERPRINT_LEN, person=_PERSON_NET
    ).digest()


def sign_network(bundle_bytes: bytes, authority_seed: bytes) -> DocumentSignature:
    """An authority's Ed25519 signature over a bundle's fingerprint (own domain prefix)."""
    key = SigningKey(authority_seed)
    sig = key.sign(_SIG_NET + network_fingerprint(bundle_bytes)).signature
    return DocumentSignature(bytes(key.verify_key), sig)


def network_signature_is_valid(fingerprint: bytes, sig: DocumentSignature) -> bool:
    """True if ``sig`` signs the bundle ``fingerprint`` by ``sig.authority_key``."""
    try:
        VerifyKey(sig.authority_key).verify(_SIG_NET + fingerprint, sig.signature)
    except (BadSignatureError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class SignedNetwork:
    """A network file: the exact bundle bytes and the authorities' signatures.

    ``GET /v1/network`` serves it and ``phantom-dirauth network --out`` writes it.
    """

    bundle: bytes
    signatures: tuple[DocumentSignature, ...]

    def to_bytes(self) -> bytes:
        """JSON envelope ``{"network": "<canonical JSON>", "signatures": [...]}``."""
        return canonical_json(
            {
                "network": self.bundle.decode("ascii"),
                "signatures": [s.to_dict() for s in self.signatures],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedNetwork:
        """Parse an envelope (nothing verified yet); DirectoryFieldError naming the field."""
        where = "network file"
        d = _exact_keys(
            load_json(data, where, max_bytes=MAX_NETWORK_BYTES), {"network", "signatures"}, where
        )
        text = _field(d, "network", where)
        sigs = _field(d, "signatures", where)
        if not isinstance(text, str) or not text.isascii():
            raise DirectoryFieldError(where, "network", "expected a string of ASCII JSON")
        if not isinstance(sigs, list) or len(sigs) > MAX_AUTHORITIES:
            raise DirectoryFieldError(
                where, "signatures", f"expected a list of at most {MAX_AUTHORITIES}"
            )
        return cls(
            text.encode("ascii"),
            tuple(
                DocumentSignature.from_dict(s, f"{where}.signatures[{i}]")
                for i, s in enumerate(sigs)
            ),
        )

    def verify(self, expected_fingerprint: bytes | None = None) -> NetworkBundle:
        """The bundle, if a threshold of its own authorities signed it; fail closed.

        The keys and threshold come from inside the bundle, so without
        ``expected_fingerprint`` this is trust on first use: it proves the listed
        authorities agree, not that they are the network you meant. With it (32 bytes,
        compared in constant time) the bundle must be exactly the one pinned.
        DirectoryError (DirectoryFieldError for a malformed field) otherwise.
        """
        bundle = NetworkBundle.from_bytes(self.bundle)
        fp = network_fingerprint(self.bundle)
        if expected_fingerprint is not None and not hmac.compare_digest(fp, expected_fingerprint):
            raise DirectoryError(
                f"network fingerprint is {fp.hex()}, not the expected {expected_fingerprint.hex()}"
            )
        keys = set(bundle.authority_keys)
        good = {
            s.authority_key
            for s in self.signatures
            if s.authority_key in keys and network_signature_is_valid(fp, s)
        }
        if len(good) < bundle.threshold:
            raise DirectoryError(
                f"network bundle has {len(good)} valid authority signatures, "
                f"{bundle.threshold} required"
            )
        return bundle


def network_file_url(source: str) -> str | None:
    """The ``/v1/network`` URL a ``--network`` source names, or None for a file path.

    >>> network_file_url("http://127.0.0.1:31900/"), network_file_url("network.json")
    ('http://127.0.0.1:31900/v1/network', None)
    """
    if not source.startswith(("http://", "https://")):
        return None
    url = source.rstrip("/")
    return url if url.endswith("/v1/network") else f"{url}/v1/network"


def open_network_file(raw: bytes, fingerprint: bytes | None = None) -> NetworkBundle:
    """The verified bundle of a network file's bytes, as every ``init --network`` takes it:
    a threshold of its own authorities signed it (:meth:`SignedNetwork.verify`; the
    32-byte ``fingerprint`` pins it), and its geometry is one this version speaks.
    DirectoryError otherwise (DirectoryFieldError for a malformed field)."""
    bundle = SignedNetwork.from_bytes(raw).verify(fingerprint)
    geometry = GEOMETRIES.get(bundle.geometry)
    if geometry is None or geometry.digest != bundle.geometry_digest:
        raise DirectoryError(
            f"geometry {bundle.geometry!r} with digest "
            f"{bundle.geometry_digest.hex()[:16]}… is not one this version speaks"
        )
    return bundle


# --------------------------------------------------------------------------------------
# Epochs


def epoch_at(now: float, epoch_length_s: int, genesis_s: int = 0) -> int:
    """The epoch that contains unix time ``now``: floor((now - genesis) / length)."""
    if epoch_length_s <= 0:
        raise UsageError(f"epoch_length_s must be > 0, got {epoch_length_s}")
    if now < genesis_s:
        raise UsageError("now is before the genesis of epochs")
    return int((now - genesis_s) // epoch_length_s)


def epoch_start(epoch: int, epoch_length_s: int, genesis_s: int = 0) -> int:
    """Unix second at which ``epoch`` begins."""
    if epoch_length_s <= 0:
        raise UsageError(f"epoch_length_s must be > 0, got {epoch_length_s}")
    return genesis_s + epoch * epoch_length_s


def seconds_until_next_epoch(now: float, epoch_length_s: int, genesis_s: int = 0) -> float:
    """How long until the next epoch begins (> 0)."""
    nxt = epoch_start(epoch_at(now, epoch_length_s, genesis_s) + 1, epoch_length_s, genesis_s)
    return nxt - now


# --------------------------------------------------------------------------------------
# Randomness and path selection


def uniform_index(n: int, rng: Rng = os.urandom) -> int:
    """An unbiased integer in ``0..n-1`` from ``rng`` bytes (rejection sampling)."""
    if n <= 0:
        raise UsageError("cannot choose from an empty set")
    bits = max(1, (n - 1).bit_length())
    nbytes = (bits + 7) // 8
    mask = (1 << bits) - 1
    while True:
        v = int.from_bytes(rng(nbytes), "big") & mask
        if v < n:
            return v


def exp_delay_us(mean_s: float, rng: Rng = os.urandom, max_us: int = MAX_DELAY_US) -> int:
    """An exponential delay with mean ``mean_s`` seconds, in whole microseconds.

    :func:`exponential` (53 random bits, -mean * ln(1 - u)) rounded, capped at ``max_us``
    (default: the largest delay a packet can carry; pass a topology document's
    ``max_delay_us`` so that nodes accept the packet). UsageError for a negative, infinite
    or NaN mean.
    """
    delay = exponential(mean_s, rng) * US_PER_S
    return min(max_us, MAX_DELAY_US, round(delay))


def sample_path(
    doc: TopologyDocument,
    route: Sequence[int | bytes],
    mean_delay_s: float,
    rng: Rng = os.urandom,
    *,
    avoid: Iterable[bytes] = (),
    epoch: int | None = None,
) -> list[Hop]:
    """One hop per step of ``route``, each with its exponential delay: the one path sampler
    of clients (:func:`select_path`) and nodes (loop cover, :func:`loop_route`).

    A step is a layer number (0: the gateways, 1..: the mix layers), from which one node is
    drawn uniformly among those not in ``avoid`` with a key for ``epoch`` (default: the
    document's); or a node id, which names that node whatever ``avoid`` says. ``rng`` gives
    the layer draws in route order, then one delay per hop (:func:`exp_delay_us`, mean
    ``mean_delay_s`` seconds, capped at the document's ``max_delay_us``), so fixed bytes
    give a fixed path.

        >>> from overlay import VOICE, build_document
        >>> doc = build_document(1, epoch_length_s=600, geometry=VOICE, descriptors=[])
        >>> sample_path(doc, [], 0.01)
        []
        >>> sample_path(doc, [0], 0.01)
        Traceback (most recent call last):
        ...
        overlay._topology.NoRouteError: gateway layer has no usable node

    NoRouteError if a layer has no usable node, a named node is not listed or has no key
    for the epoch, or the path has more hops than the geometry carries.
    """
    epoch = doc.epoch if epoch is None else epoch
    avoided = frozenset(avoid)
    chosen: list[NodeDescriptor] = []
    for step in route:
        if isinstance(step, bytes):
            node = doc.by_id.get(step)
            if node is None:
                raise NoRouteError(f"node {step.hex()[:16]} is not in the topology document")
            if epoch not in node.epoch_keys:
                raise NoRouteError(f"node {node.name!r} has no key for epoch {epoch}")
            chosen.append(node)
            continue
        if not 0 <= step <= len(doc.layers):
            raise NoRouteError(f"the topology document has no layer {step}")
        nodes = doc.gateways if step == 0 else doc.layers[step - 1]
        live = [n for n in nodes if n.node_id not in avoided and epoch in n.epoch_keys]
        if not live:
            layer = "gateway layer" if step == 0 else f"mix layer {step}"
            raise NoRouteError(f"{layer} has no usable node")
        chosen.append(live[uniform_index(len(live), rng)])
    if len(chosen) > doc.geometry.max_hops:
        raise NoRouteError(f"path of {len(chosen)} hops exceeds the geometry")
    cap = doc.max_delay_us
    return [
        Hop(n.node_id, n.epoch_keys[epoch], exp_delay_us(mean_delay_s, rng, cap)) for n in chosen
    ]


def select_path(
    doc: TopologyDocument,
    entry_gateway_id: bytes,
    exit_gateway_id: bytes,
    mean_delay_s: float,
    rng: Rng = os.urandom,
    *,
    avoid: Iterable[bytes] = (),
    epoch: int | None = None,
) -> list[Hop]:
    """Entry gateway, one mix per layer, exit gateway; each with an exponential delay.

    Delays are capped at the document's ``max_delay_us`` (a draw above it, rare for any
    sensible mean, would be dropped by the node).

    Mixes are drawn uniformly per layer among those not in ``avoid`` (so clients route
    around mixes they saw fail). Keys are for ``epoch`` (default: the document's).
    NoRouteError if a gateway is unknown or a layer has no usable mix. The draw is
    :func:`sample_path` over ``[entry, 1, ..., mix_layers, exit]``.
    """
    _gateway(doc, entry_gateway_id, "entry")
    _gateway(doc, exit_gateway_id, "exit")
    route = [entry_gateway_id, *range(1, len(doc.layers) + 1), exit_gateway_id]
    return sample_path(doc, route, mean_delay_s, rng, avoid=avoid, epoch=epoch)


def loop_route(doc: TopologyDocument, node_id: bytes) -> list[int | bytes]:
    """The route of a node's loop cover: from the layer after its own through every other
    layer (gateways are layer 0, after the last mix layer) and back to the node.

        >>> from overlay import VOICE, build_document
        >>> doc = build_document(1, epoch_length_s=600, geometry=VOICE, descriptors=[])
        >>> loop_route(doc, b"n" * 16)
        Traceback (most recent call last):
        ...
        overlay._topology.NoRouteError: node 6e6e6e6e6e6e6e6e is not in the topology document

    For a mix of layer 2 of three: ``[3, 0, 1, node_id]``; for a gateway: ``[1, 2, 3,
    node_id]``. Draw it with :func:`sample_path`. NoRouteError if the node is not listed.
    """
    node = doc.by_id.get(node_id)
    if node is None:
        raise NoRouteError(f"node {node_id.hex()[:16]} is not in the topology document")
    rings = len(doc.layers) + 1
    return [*((node.layer + i) % rings for i in range(1, rings)), node_id]


def _gateway(doc: TopologyDocument, node_id: bytes, which: str) -> NodeDescriptor:
    node = doc.by_id.get(node_id)
    if node is None or node.role is not NodeRole.GATEWAY:
        raise NoRouteError(f"{which} gateway is not a gateway in the topology document")
    return node


def layer_of(doc: TopologyDocument, node_id: bytes) -> int | None:
    """The layer a node sits in (0 for gateways), or None if it is not listed."""
    node = doc.by_id.get(node_id)
    return None if node is None else node.layer
