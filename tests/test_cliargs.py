"""The argument types every command line shares (overlay._cliargs): values and messages."""

from __future__ import annotations

import argparse

import pytest

from mixnode._args import HelpFormatter
from overlay import (
    ArgumentValueError,
    UsageError,
    finite_number,
    hex_fingerprint,
    hex_key,
    port,
    whole_number,
)


def test_good_values_parse() -> None:
    assert whole_number(0)("0") == 0 and whole_number(1, 3)(" 3 ") == 3
    assert finite_number(0)("2.5") == 2.5 and finite_number(1, 3600)("3600") == 3600.0
    assert port("1") == 1 and port("65535") == 65535
    assert hex_key("AB" * 32) == "ab" * 32


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (whole_number(1), "0", "expected a whole number >= 1, got '0'"),
        (whole_number(0), "two", "expected a whole number >= 0, got 'two'"),
        (whole_number(1, 3), "4", "expected a whole number in 1..3, got '4'"),
        (whole_number(1, verb="want"), "1.5", "want a whole number >= 1, got '1.5'"),
        (finite_number(0), "inf", "expected a finite number >= 0, got 'inf'"),
        (finite_number(0), "nan", "expected a finite number >= 0, got 'nan'"),
        (finite_number(0), "-1e-9", "expected a finite number >= 0, got '-1e-9'"),
        (finite_number(1, 3600, what="seconds", verb="want"), "0", "want seconds in 1..3600"),
        (finite_number(0, 0.5, what="a probability", verb="want"), "x", "want a probability"),
        (port, "0", "expected a port number in 1..65535, got '0'"),
        (port, "65536", "expected a port number in 1..65535, got '65536'"),
        (port, "http", "expected a port number in 1..65535, got 'http'"),
        (hex_key, "ab" * 31, "expected a 32-byte Ed25519 public key as 64 hex digits"),
        (hex_key, "zz" * 32, "expected a 32-byte Ed25519 public key as 64 hex digits"),
        (hex_fingerprint, "xyz", "expected a 32-byte network fingerprint as 64 hex digits"),
    ],
)
def test_bad_values_say_what_was_expected_and_what_came(
    parse: object, text: str, message: str
) -> None:
    assert callable(parse)
    with pytest.raises(ArgumentValueError) as exc:
        parse(text)
    assert message in str(exc.value)
    assert isinstance(exc.value, UsageError)


def test_argparse_prints_the_message_with_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--workers", type=whole_number(1))
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "0"])
    err = capsys.readouterr().err
    assert "argument --workers: expected a whole number >= 1, got '0'" in err


def test_help_shows_a_zero_default_and_hides_none_and_false() -> None:
    """0 and 0.0 equal False: the help once hid every zero default (--link-delay-ms ...)."""
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--delay", type=float, default=0.0, help="delay")
    p.add_argument("--count", type=int, default=0, help="count")
    p.add_argument("--name", default=None, help="name")
    p.add_argument("--flag", action="store_true", help="flag")
    text = " ".join(p.format_help().split())
    assert "delay (default: 0.0)" in text and "count (default: 0)" in text
    assert "name (default" not in text and "flag (default" not in text
