"""Shared by the public-surface tests: read a package's ``X as X`` re-exports."""

from __future__ import annotations

import ast
from pathlib import Path


def reexports(package_dir: Path) -> list[str]:
    """Names imported in ``package_dir/__init__.py``; each must be re-exported as itself."""
    tree = ast.parse((package_dir / "__init__.py").read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                assert alias.asname == alias.name, f"{alias.name} is not re-exported as itself"
                names.append(alias.name)
    return names
