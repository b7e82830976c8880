"""Argument types for the command lines: each parses one value or says what it wants.

    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="phantom-x", exit_on_error=False)
    >>> _ = parser.add_argument("--workers", type=whole_number(1))
    >>> parser.parse_args(["--workers", "4"]).workers
    4
    >>> whole_number(1)("0")
    Traceback (most recent call last):
    ...
    overlay._cliargs.ArgumentValueError: expected a whole number >= 1, got '0'
    >>> finite_number(0, 0.5, what="a probability", verb="want")("x")
    Traceback (most recent call last):
    ...
    overlay._cliargs.ArgumentValueError: want a probability in 0..0.5, got 'x'

The operator commands say "expected ...", the simulator and the caller "want ..."; both
name the range and quote what was given. Plain ``argparse`` and the standard library only:
every command line of the project (node, authority, simulator, caller) may use these.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

from ._errors import UsageError


class ArgumentValueError(UsageError, argparse.ArgumentTypeError):
    """A command-line value is not what its option takes; argparse prints the message."""


_Num = TypeVar("_Num", int, float)


def _ranged(
    convert: Callable[[str], _Num], lo: float, hi: float | None, what: str, verb: str
) -> Callable[[str], _Num]:
    """A parser: ``convert(text)``, finite and in ``[lo, hi]``, or ArgumentValueError."""
    span = f">= {lo:g}" if hi is None or math.isinf(hi) else f"in {lo:g}..{hi:g}"

    def parse(text: str) -> _Num:
        try:
            value = convert(text)
        except ValueError:
            raise ArgumentValueError(f"{verb} {what} {span}, got {text!r}") from None
        if not (math.isfinite(value) and lo <= value and (hi is None or value <= hi)):
            raise ArgumentValueError(f"{verb} {what} {span}, got {text!r}")
        return value

    return parse


def whole_number(
    lo: int, hi: int | None = None, *, what: str = "a whole number", verb: str = "expected"
) -> Callable[[str], int]:
    """An argument type: a decimal integer in ``lo..hi`` (no upper bound if ``hi`` is None).

    The parser raises ArgumentValueError ("expected a whole number >= 1, got '0'").
    """
    return _ranged(int, lo, hi, what, verb)


def finite_number(
    lo: float, hi: float = math.inf, *, what: str = "a finite number", verb: str = "expected"
) -> Callable[[str], float]:
    """An argument type: a finite float in ``[lo, hi]``; NaN and infinities are refused.

    The parser raises ArgumentValueError ("want seconds in 1..3600, got '0'").
    """
    return _ranged(float, lo, hi, what, verb)


port = whole_number(1, 65535, what="a port number")
"""An argument type: a UDP/TCP port number 1..65535."""


def _hex32(text: str, what: str) -> str:
    try:
        if len(bytes.fromhex(text)) == 32:
            return text.lower()
    except ValueError:
        pass
    raise ArgumentValueError(f"expected {what} as 64 hex digits, got {text!r}")


def hex_key(text: str) -> str:
    """An argument type: a 32-byte Ed25519 public key as 64 hex digits (returned lower-case)."""
    return _hex32(text, "a 32-byte Ed25519 public key")


def hex_fingerprint(text: str) -> str:
    """An argument type: a 32-byte network fingerprint as 64 hex digits (lower-case)."""
    return _hex32(text, "a 32-byte network fingerprint")
