"""The layers, read from the import graph of every module (ast, nothing imported).

    overlay                      imports nothing of this project
    mixnode, client, sim         import overlay and themselves
    testbed                      may import anything; nothing imports it (tests may)

Every import counts: at module level, inside functions, under ``if TYPE_CHECKING``. Imports
of this project's modules stand at module level only, and form no circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("overlay", "mixnode", "client", "sim", "testbed")
ALLOWED = {
    "overlay": set(),
    "mixnode": {"overlay"},
    "client": {"overlay"},
    "sim": {"overlay"},
    "testbed": set(PACKAGES),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, tree: ast.Module) -> Iterator[tuple[ast.stmt, str]]:
    """(statement, absolute module) for every import in ``tree``; ``from p import m``
    yields ``p.m`` when that is a module of ours, else ``p``."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node, sub if sub in MODULES else target


def _graph() -> dict[str, list[tuple[ast.stmt, str]]]:
    return {
        name: list(_imports(name, ast.parse(path.read_text()))) for name, path in MODULES.items()
    }


GRAPH = _graph()


def test_the_packages_are_found() -> None:
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES)
    assert {"testbed.testnet", "testbed.callcli", "client.cli", "overlay"} <= set(MODULES)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_layers_below(package: str) -> None:
    wrong = {
        f"{name}:{node.lineno} imports {target}"
        for name, edges in GRAPH.items()
        if name.split(".")[0] == package
        for node, target in edges
        if (top := target.split(".")[0]) in PACKAGES
        and top != package
        and top not in ALLOWED[package]
    }
    assert not wrong, sorted(wrong)


def test_modules_of_ours_are_imported_at_module_level_only() -> None:
    nested: set[str] = set()
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        nested |= {
            f"{name}:{node.lineno} imports {target}"
            for node, target in _imports(name, tree)
            if target.split(".")[0] in PACKAGES and id(node) not in top_level
        }
    assert not nested, sorted(nested)


def test_no_circle_between_modules() -> None:
    edges = {
        name: {t for _, t in targets if t in MODULES and t != name}
        for name, targets in GRAPH.items()
    }
    # A package's __init__ re-exports its submodules; an import of the package by one of
    # them means the names it re-exports, not a circle through the submodule itself.
    for name in edges:
        edges[name] -= {p for p in edges[name] if name.startswith(p + ".")}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError(" -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for nxt in sorted(edges[name]):
            visit(nxt, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def test_a_forbidden_edge_is_seen() -> None:
    """The walk sees an import inside a function under TYPE_CHECKING, relative or not."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "def f() -> None:\n"
        "    if TYPE_CHECKING:\n"
        "        from testbed.testnet import up\n"
        "    from ..testbed import probe\n"
    )
    found = sorted(t for _, t in _imports("client.cli", tree))
    assert found == ["testbed.probe", "testbed.testnet", "typing"]
