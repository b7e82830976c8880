"""The layers, read from the import graph of every module (ast, nothing imported).

    overlay                      imports nothing of this project
    mixnode, client, sim         import overlay and themselves
    testbed                      may import anything; nothing imports it (tests may)

Every import counts: at module level, inside functions, under ``if TYPE_CHECKING``. Imports
of this project's modules stand at module level only, and form no circle. The checks are
functions of a source tree, so that a fake tree with a forbidden import shows they can fail.
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

Modules = dict[str, Path]  # dotted module name -> source file
Edges = list[tuple[ast.stmt, str]]  # (import statement, absolute module it imports)


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(root: Path) -> Modules:
    """Every module of the packages under ``root``."""
    return {
        _module_name(root, p): p
        for pkg in PACKAGES
        if (root / pkg).is_dir()
        for p in sorted((root / pkg).rglob("*.py"))
    }


def imports_of(name: str, tree: ast.Module, modules: Modules) -> Iterator[tuple[ast.stmt, str]]:
    """(statement, absolute module) for every import in ``tree``, wherever it stands;
    ``from p import m`` yields ``p.m`` when that is one of ``modules``, else ``p``."""
    is_package = name in modules and modules[name].name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
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
                yield node, sub if sub in modules else target


def import_graph(modules: Modules) -> dict[str, Edges]:
    return {
        name: list(imports_of(name, ast.parse(path.read_text()), modules))
        for name, path in modules.items()
    }


def layer_violations(graph: dict[str, Edges], package: str) -> list[str]:
    """``module:line imports target`` for each import by ``package`` of a package of ours
    that it may not import."""
    return sorted(
        {
            f"{name}:{node.lineno} imports {target}"
            for name, edges in graph.items()
            if name.split(".")[0] == package
            for node, target in edges
            if (top := target.split(".")[0]) in PACKAGES
            and top != package
            and top not in ALLOWED[package]
        }
    )


def nested_imports(modules: Modules) -> list[str]:
    """Imports of our modules that do not stand at module level (in a function, under
    ``if TYPE_CHECKING``, in a ``try``)."""
    nested: set[str] = set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        nested |= {
            f"{name}:{node.lineno} imports {target}"
            for node, target in imports_of(name, tree, modules)
            if target.split(".")[0] in PACKAGES and id(node) not in top_level
        }
    return sorted(nested)


def find_circle(graph: dict[str, Edges]) -> list[str] | None:
    """One circle of imports between modules (``[a, b, a]``), or None."""
    edges = {
        name: {t for _, t in targets if t in graph and t != name} for name, targets in graph.items()
    }
    # A package's __init__ re-exports its submodules; an import of the package by one of
    # them means the names it re-exports, not a circle through the submodule itself.
    for name in edges:
        edges[name] -= {p for p in edges[name] if name.startswith(p + ".")}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for nxt in sorted(edges[name]):
            if (circle := visit(nxt, [*path, name])) is not None:
                return circle
        done.add(name)
        return None

    for name in sorted(edges):
        if (circle := visit(name, [])) is not None:
            return circle
    return None


MODULES = find_modules(ROOT)
GRAPH = import_graph(MODULES)


def test_the_packages_are_found() -> None:
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES)
    assert {"testbed.testnet", "testbed.callcli", "client.cli", "overlay"} <= set(MODULES)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_layers_below(package: str) -> None:
    wrong = layer_violations(GRAPH, package)
    assert not wrong, wrong


def test_modules_of_ours_are_imported_at_module_level_only() -> None:
    nested = nested_imports(MODULES)
    assert not nested, nested


def test_no_circle_between_modules() -> None:
    circle = find_circle(GRAPH)
    assert circle is None, " -> ".join(circle or [])


def test_a_forbidden_edge_is_seen() -> None:
    """The walk sees an import inside a function under TYPE_CHECKING, relative or not."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "def f() -> None:\n"
        "    if TYPE_CHECKING:\n"
        "        from testbed.testnet import up\n"
        "    from ..testbed import probe\n"
    )
    found = sorted(t for _, t in imports_of("client.cli", tree, MODULES))
    assert found == ["testbed.probe", "testbed.testnet", "typing"]


def test_the_checks_fail_on_a_tree_that_breaks_the_layers(tmp_path: Path) -> None:
    """A fake source tree: overlay importing mixnode under TYPE_CHECKING, a client module
    importing the test bed inside a function, sim importing client, and a circle in
    mixnode. Each is reported; the test bed importing everything is not."""
    files = {
        "overlay/__init__.py": "from ._core import core\n",
        "overlay/_core.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from mixnode.node import Node\n"
            "def core() -> None: ...\n"
        ),
        "mixnode/__init__.py": "",
        "mixnode/node.py": "from overlay import core\nfrom . import peer\nclass Node: ...\n",
        "mixnode/peer.py": "from .node import Node\n",
        "client/__init__.py": "",
        "client/cli.py": "import overlay\ndef main() -> None:\n    from testbed import demo\n",
        "sim/__init__.py": "from client.cli import main\n",
        "testbed/__init__.py": "",
        "testbed/demo.py": "import client.cli\nimport mixnode.node\nimport overlay\nimport sim\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules = find_modules(tmp_path)
    graph = import_graph(modules)
    wrong = {pkg: layer_violations(graph, pkg) for pkg in PACKAGES}
    assert wrong == {
        "overlay": ["overlay._core:3 imports mixnode.node"],
        "mixnode": [],
        "client": ["client.cli:3 imports testbed.demo"],
        "sim": ["sim:1 imports client.cli"],
        "testbed": [],
    }
    assert nested_imports(modules) == [
        "client.cli:3 imports testbed.demo",
        "overlay._core:3 imports mixnode.node",
    ]
    assert find_circle(graph) == ["mixnode.node", "mixnode.peer", "mixnode.node"]
