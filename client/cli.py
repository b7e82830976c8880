"""The caller's command line, ``python -m client.cli``: its parser and its dispatch.

    python -m client.cli --version
    python -m client.cli init --network network.json     # a profile: identity, gateway
    python -m client.cli card --qr                       # your card, to paste in the chat
    python -m client.cli contact add ada 'phantom-card:1:...'
    python -m client.cli contact verify ada --confirm    # after comparing the safety number

:func:`build_parser` makes the ``phantom-call`` parser with the caller's own subcommands
(``init``, ``card``, ``contact``, ``calls``, ``security-log``: docs/calling.md, "Identity,
contacts and safety numbers"; ``listen`` and ``dial``: the always-on client,
``client.phone``; ``answer``, ``decline``, ``hangup``, ``mute``, ``status``: one request
each to the running listener, ``client.control``) and those each extension adds; every
subcommand sets the ``handler`` default that :func:`main` calls.
The ``phantom-call`` console script is the test bed's (``testbed.callcli``), which extends
this parser with ``demo``: a call through a local testnet.

    >>> def hello(sub: Subcommands) -> None:
    ...     sub.add_parser("hello").set_defaults(handler=lambda args: 7)
    >>> main(["hello"], hello)
    7
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TypeAlias

from overlay import VERSION

from ._commands import add_caller_commands
from ._listen import add_online_commands

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace], int]
Extension: TypeAlias = Callable[[Subcommands], None]  # adds subcommands
DESCRIPTION = "the caller of Phantom Net Mode C"


def build_parser(*extensions: Extension, description: str = DESCRIPTION) -> argparse.ArgumentParser:
    """``phantom-call``'s parser: ``--version``, the caller's subcommands, then each
    extension's, in order. Each subcommand sets a ``handler`` default (:data:`Handler`)."""
    parser = argparse.ArgumentParser(prog="phantom-call", description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_caller_commands(sub)
    add_online_commands(sub)
    for extend in extensions:
        extend(sub)
    return parser


def main(
    argv: Sequence[str] | None = None, *extensions: Extension, description: str = DESCRIPTION
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) with :func:`build_parser` and run the
    subcommand's handler; returns its exit status. SystemExit (status 2) on a bad argument."""
    args = build_parser(*extensions, description=description).parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
