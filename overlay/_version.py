"""The package's version, for ``--version`` and the ``phantom_build_info{version=...}`` metric.

    >>> VERSION[0].isdigit()
    True

The one place it is written: ``pyproject.toml`` reads it from here (``[tool.setuptools.dynamic]``),
so the installed distribution's metadata says the same. A literal, not read back through
``importlib.metadata``: that loads ``socket``, which overlay never imports.
"""

VERSION = "0.1.0"
