"""Typed errors of the protocol core.

Two families: ``PacketError`` for bytes that came from the network (count and drop; never
tell the sender which check failed), ``UsageError`` for local misuse (a bug in the caller).
"""

from __future__ import annotations

from typing import ClassVar

from ._drop import DropReason


class PhantomError(Exception):
    """Root of every error this project raises on purpose."""


class PacketError(PhantomError):
    """A packet from the network failed a check; the packet is dropped.

    ``reason`` (a class attribute) is the DropReason it is counted under.
    """

    reason: ClassVar[DropReason] = DropReason.MALFORMED


class WrongLength(PacketError):
    """The packet is not exactly the geometry's packet length."""

    reason = DropReason.WRONG_LENGTH


class UnknownVersion(PacketError):
    """The version byte names a format this node does not speak."""

    reason = DropReason.UNKNOWN_VERSION


class MacMismatch(PacketError):
    """The header MAC does not verify: tampered, misrouted or for another key."""

    reason = DropReason.MAC_MISMATCH


class BadCommand(PacketError):
    """The routing command is unknown or its fields are out of range."""

    reason = DropReason.BAD_COMMAND


class PayloadTampered(PacketError):
    """The payload's zero tag did not survive decryption: a bit was changed on the way."""

    reason = DropReason.PAYLOAD_TAMPERED


class UsageError(PhantomError, ValueError):
    """A local caller passed something invalid (a bug, not an attack)."""


class GeometryError(UsageError):
    """A geometry's parameters are invalid or its digest does not match."""
