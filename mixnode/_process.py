"""The environment of the processes a node starts (its workers) and a testnet starts.

>>> env = child_env()
>>> env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(__file__).resolve().parents[1])
True
"""

from __future__ import annotations

import os
from pathlib import Path


def child_env() -> dict[str, str]:
    """The environment for child processes: this package importable even if not installed.

    A copy of ``os.environ`` with the checkout's root put first on ``PYTHONPATH``."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH", "")) if x)
    return env
