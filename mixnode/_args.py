"""The help formatter shared by the operator commands (argument types: overlay._cliargs).

``HelpFormatter`` makes ``--help`` show every option's default ("(default: 9100)").
"""

from __future__ import annotations

import argparse


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
            # by identity: 0 and 0.0 equal False, yet a zero default is worth showing
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
            or action.default == []
        ):
            return help_text
        return super()._get_help_string(action)
