"""The public surface of ``overlay``: every re-export exists; no I/O libraries come along."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from surface_support import reexports

import overlay

OVERLAY_DIR = Path(overlay.__file__).parent
FORBIDDEN = ("trio", "socket", "asyncio", "selectors", "ssl", "numpy")


def _reexports() -> list[str]:
    return reexports(OVERLAY_DIR)


def test_every_reexport_exists_and_is_public() -> None:
    names = _reexports()
    assert len(names) == len(set(names))
    for name in names:
        assert not name.startswith("_")
        assert hasattr(overlay, name), name
    public = {n for n in vars(overlay) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(overlay, n)).__name__ == "module"}
    assert public - modules == set(names)


def test_the_sphinx_surface_is_there() -> None:
    wanted = {
        "Geometry", "VOICE", "BULK", "Hop", "Forward", "Deliver", "DeliverReply", "Discard",
        "Surb", "SurbKeys", "create_forward", "create_drop", "create_surb", "create_reply",
        "open_reply", "process_packet", "generate_private_key", "public_key", "PacketError",
        "WrongLength", "UnknownVersion", "MacMismatch", "BadCommand", "PayloadTampered",
        "UsageError", "GeometryError",
    }  # fmt: skip
    assert wanted <= set(_reexports())


def test_importing_overlay_loads_no_io_library() -> None:
    code = f"import sys, overlay\nprint(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    cwd = OVERLAY_DIR.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=cwd
    )
    assert out.stdout.strip() == ""


def test_no_overlay_module_imports_io_or_weak_randomness() -> None:
    banned = set(FORBIDDEN) | {"random", "time", "mixnode", "client", "sim"}
    for path in sorted(OVERLAY_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & banned, f"{path.name} imports {roots & banned}"
