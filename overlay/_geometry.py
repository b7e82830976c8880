"""Packet geometry: every size of a Sphinx packet derived from two numbers.

    >>> from overlay import VOICE
    >>> VOICE.packet_len, VOICE.user_payload
    (604, 352)

The digest is published in the topology document, so that clients and nodes refuse to
talk when they disagree on any size.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._checks import is_int
from ._errors import GeometryError

SPHINX_VERSION = 2  # first byte of every packet; bumped on any wire change
VERSION_LEN = 1  # bytes
GROUP_ELEMENT_LEN = 32  # bytes, an X25519 public value (alpha in the Sphinx paper)
MAC_LEN = 16  # bytes, BLAKE2b-128 header MAC (gamma in the Sphinx paper)
NODE_ID_LEN = 16  # bytes, a node's id in the topology document
MAILBOX_ID_LEN = 16  # bytes, a client's mailbox at its gateway
SURB_ID_LEN = 16  # bytes, names the reply keys a client keeps
DELAY_LEN = 4  # bytes, sender-chosen delay in microseconds, unsigned big-endian
COMMAND_LEN = 1  # bytes, a RoutingCommand
# One hop's routing slot: command, delay, address (next node or mailbox), MAC or SURB id.
ROUTING_SLOT_LEN = COMMAND_LEN + DELAY_LEN + NODE_ID_LEN + MAC_LEN  # 37 bytes
TAG_LEN = 16  # bytes of zeros in front of the payload; tampering turns them to noise (k)
LENGTH_LEN = 2  # bytes, the message length inside the payload
LIONESS_KEY_LEN = 32  # bytes, the left half of the wide block (must be < payload)
MAX_DELAY_US = 2**32 - 1
# LIONESS needs a right half: payload_len = TAG_LEN + LENGTH_LEN + user_payload > 32.
MIN_USER_PAYLOAD = LIONESS_KEY_LEN + 1 - TAG_LEN - LENGTH_LEN  # 15 bytes
MAX_USER_PAYLOAD = 2 ** (8 * LENGTH_LEN) - 1  # 65535 bytes, what the length field holds


@dataclass(frozen=True, slots=True)
class Geometry:
    """Sizes of one packet format; frozen, validated, hashable.

    ``max_hops`` is r in the Sphinx paper, ``user_payload`` the bytes a sender may carry.
    """

    name: str
    max_hops: int
    user_payload: int
    header_len: int = field(init=False)
    routing_len: int = field(init=False)
    payload_len: int = field(init=False)
    packet_len: int = field(init=False)

    def __post_init__(self) -> None:
        if not is_int(self.max_hops) or not 1 <= self.max_hops <= 16:
            raise GeometryError(f"max_hops must be an integer in 1..16, got {self.max_hops!r}")
        if not is_int(self.user_payload) or not (
            MIN_USER_PAYLOAD <= self.user_payload <= MAX_USER_PAYLOAD
        ):
            raise GeometryError(
                f"user_payload must be an integer in {MIN_USER_PAYLOAD}..{MAX_USER_PAYLOAD},"
                f" got {self.user_payload!r}"
            )
        routing = self.max_hops * ROUTING_SLOT_LEN
        header = VERSION_LEN + GROUP_ELEMENT_LEN + routing + MAC_LEN
        payload = TAG_LEN + LENGTH_LEN + self.user_payload
        object.__setattr__(self, "routing_len", routing)
        object.__setattr__(self, "header_len", header)
        object.__setattr__(self, "payload_len", payload)
        object.__setattr__(self, "packet_len", header + payload)

    @property
    def digest(self) -> bytes:
        """32-byte BLAKE2b of every parameter that shapes the wire format."""
        enc = struct.pack(
            ">BHHHHHHHHHH",
            SPHINX_VERSION,
            self.max_hops,
            self.user_payload,
            GROUP_ELEMENT_LEN,
            MAC_LEN,
            NODE_ID_LEN,
            MAILBOX_ID_LEN,
            DELAY_LEN,
            ROUTING_SLOT_LEN,
            TAG_LEN,
            LENGTH_LEN,
        )
        return hashlib.blake2b(enc, digest_size=32, person=b"pn-geometry-v1").digest()

    def to_dict(self) -> dict[str, object]:
        """The geometry as published in a topology document."""
        return {
            "name": self.name,
            "max_hops": self.max_hops,
            "user_payload": self.user_payload,
            "packet_len": self.packet_len,
            "digest": self.digest.hex(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Geometry:
        """Rebuild and check a published geometry; a digest mismatch is a GeometryError."""
        if not isinstance(data, dict):
            raise GeometryError("geometry must be a mapping of fields")
        for key, kind in (("name", str), ("max_hops", int), ("user_payload", int)):
            if key not in data:
                raise GeometryError(f"geometry is missing field {key!r}")
            if not isinstance(data[key], kind) or isinstance(data[key], bool):
                raise GeometryError(f"geometry field {key!r} must be {kind.__name__}")
        geo = cls(data["name"], data["max_hops"], data["user_payload"])  # type: ignore[arg-type]
        if "packet_len" in data and data["packet_len"] != geo.packet_len:
            raise GeometryError("geometry field 'packet_len' does not match its parameters")
        if "digest" in data and data["digest"] != geo.digest.hex():
            raise GeometryError("geometry field 'digest' does not match its parameters")
        return geo


# Voice: 5 hops (entry gateway, 3 mix layers, exit gateway); 352 bytes carry 2 Opus frames
# of 24 kbit/s with one packet of redundancy (254 of 332 media bytes, docs/media.md). The
# packet is 604 bytes, so its 638-byte UPLINK datagram at 25 Hz is 15,950 B/s: within the
# 16,000 B/s (128 kbit/s) a client may send (docs/research.md, "Bandwidth per client").
VOICE = Geometry("voice", max_hops=5, user_payload=352)
# Bulk: signaling and research traffic, about 2 KiB of payload.
BULK = Geometry("bulk", max_hops=5, user_payload=2048)

# Every geometry this version speaks, by the name a config or a topology document uses.
GEOMETRIES: Mapping[str, Geometry] = MappingProxyType({g.name: g for g in (VOICE, BULK)})


def geometry_by_name(name: object) -> Geometry:
    """The geometry called ``name`` (``"voice"`` or ``"bulk"``).

        >>> geometry_by_name("voice") is VOICE
        True
        >>> geometry_by_name("jumbo")
        Traceback (most recent call last):
        ...
        overlay._errors.GeometryError: unknown geometry 'jumbo': expected 'voice' or 'bulk'

    Raises GeometryError, naming the choices, for any other name or a non-string.
    """
    geometry = GEOMETRIES.get(name) if isinstance(name, str) else None
    if geometry is None:
        wanted = " or ".join(repr(n) for n in GEOMETRIES)
        raise GeometryError(f"unknown geometry {name!r}: expected {wanted}")
    return geometry
