"""Argument types shared by the operator commands: each says what it wants on bad input.

``HelpFormatter`` makes ``--help`` show every option's default ("(default: 9100)").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after the help of every option that has a default.

    Options without one (None, or a flag that is off) show none, rather than
    "(default: None)"; an option whose help already names its default is left as it is.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if (
            "%(default)" in help_text
            or "(default:" in help_text
            or action.default in (None, False, argparse.SUPPRESS)
            or action.default == []
        ):
            return help_text
        return super()._get_help_string(action)


def port(text: str) -> int:
    """A UDP/TCP port number 1..65535."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {v}")
    return v


def at_least(lo: int) -> Callable[[str], int]:
    """An argument type: a whole number >= ``lo`` (e.g. a signature threshold, lo = 1)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = lo - 1
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {lo}, got {text!r}")
        return v

    return parse


def hex_key(text: str) -> str:
    """A 32-byte Ed25519 public key written as 64 hex digits (returned lower-case)."""
    try:
        if len(bytes.fromhex(text)) == 32:
            return text.lower()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"expected a 32-byte Ed25519 public key as 64 hex digits, got {text!r}"
    )
