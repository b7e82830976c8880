"""The installed package's version (importlib.metadata), for ``--version`` and the
``phantom_build_info{version=...}`` metric.

    >>> VERSION == "0+unknown" or VERSION[0].isdigit()
    True

Kept out of ``overlay``: importlib.metadata loads ``socket``, which overlay never imports.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION: str = version("phantom-mixnet")
except PackageNotFoundError:  # run from a checkout without installing
    VERSION = "0+unknown"
