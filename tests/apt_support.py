"""System packages a test needs (Debian names): installed with apt-get when the test runs as
root on a machine that has apt-get, so that a fresh machine runs the test rather than
skipping it; elsewhere the test skips and names what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

import pytest

APT_TIMEOUT_S = 600  # seconds one apt-get command may take


def missing_packages(packages: Sequence[str]) -> list[str]:
    """The packages of ``packages`` dpkg does not list as installed (all of them without
    dpkg-query)."""
    if shutil.which("dpkg-query") is None:
        return list(packages)
    out = []
    for name in packages:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0 or "install ok installed" not in done.stdout:
            out.append(name)
    return out


def require_packages(*packages: str) -> None:
    """Make sure ``packages`` are installed: install the missing ones with apt-get (root
    only; ``apt-get update`` once if the first try fails), else ``pytest.skip`` naming them."""
    missing = missing_packages(packages)
    if not missing:
        return
    names = " ".join(missing)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"needs {names} (apt-get install {names}: root and apt-get wanted)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    for command in (install, ["apt-get", "update", "-q"], install):
        subprocess.run(command, env=env, capture_output=True, timeout=APT_TIMEOUT_S, check=False)
        if not missing_packages(missing):
            return
    pytest.skip(f"{names} missing and apt-get could not install them")
