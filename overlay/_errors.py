"""Typed errors of the protocol core.

Two families: ``PacketError`` for bytes that came from the network (count and drop; never
tell the sender which check failed), ``UsageError`` for local misuse (a bug in the caller).
"""

from __future__ import annotations


class PhantomError(Exception):
    """Root of every error this project raises on purpose."""


class PacketError(PhantomError):
    """A packet from the network failed a check; the packet is dropped."""

    reason = "malformed"


class WrongLength(PacketError):
    """The packet is not exactly the geometry's packet length."""

    reason = "wrong_length"


class UnknownVersion(PacketError):
    """The version byte names a format this node does not speak."""

    reason = "unknown_version"


class MacMismatch(PacketError):
    """The header MAC does not verify: tampered, misrouted or for another key."""

    reason = "mac_mismatch"


class BadCommand(PacketError):
    """The routing command is unknown or its fields are out of range."""

    reason = "bad_command"


class PayloadTampered(PacketError):
    """The payload's zero tag did not survive decryption: a bit was changed on the way."""

    reason = "payload_tampered"


class UsageError(PhantomError, ValueError):
    """A local caller passed something invalid (a bug, not an attack)."""


class GeometryError(UsageError):
    """A geometry's parameters are invalid or its digest does not match."""
