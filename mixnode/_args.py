"""Argument types shared by the operator commands: each says what it wants on bad input."""

from __future__ import annotations

import argparse


def port(text: str) -> int:
    """A UDP/TCP port number 1..65535."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {v}")
    return v


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
