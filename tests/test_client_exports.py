"""The public surface of ``client``: every re-export exists; no network library comes along."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from surface_support import reexports

import client

CLIENT_DIR = Path(client.__file__).parent
SANS_IO = (
    "_voice.py", "_speech.py", "_media.py", "_jitter.py", "_channel.py", "_frames.py",
    "_call_media.py", "_route_health.py", "identity_channel.py",
    "_signaling/__init__.py", "_signaling/messages.py", "_signaling/keys.py",
    "_signaling/states.py", "_signaling/call.py", "_signaling/seclog.py",
)  # fmt: skip


def _reexports() -> list[str]:
    return reexports(CLIENT_DIR)


def test_every_reexport_exists_and_is_public() -> None:
    names = _reexports()
    assert len(names) == len(set(names))
    for name in names:
        assert not name.startswith("_") and hasattr(client, name), name


def test_the_call_surface_is_there() -> None:
    wanted = {
        "VoiceProfile", "OpusEncoder", "OpusDecoder", "artificial_voice", "pesq_wb",
        "MediaSender", "MediaReceiver", "derive_media_keys", "MediaReplayWindow", "JitterBuffer",
        "MediaFrame", "Conceal", "Call", "CallState", "TRANSITIONS", "SecureChannel",
        "InMemoryChannel", "MediaForged", "MediaReplayed", "MediaMalformed",
    }  # fmt: skip
    assert wanted <= set(_reexports())


def test_sans_io_modules_import_no_network_or_weak_randomness() -> None:
    banned = {"trio", "socket", "asyncio", "selectors", "ssl", "random", "time"}
    for name in SANS_IO:
        for node in ast.walk(ast.parse((CLIENT_DIR / name).read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & banned, f"{name} imports {roots & banned}"


def test_importing_the_sans_io_parts_loads_no_event_loop() -> None:
    # (``socket`` itself gets loaded by numpy's import chain; no module here opens one.)
    code = (
        "import sys\nimport client._signaling, client._jitter, client._media\n"
        "print(','.join(m for m in ('trio', 'asyncio') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=CLIENT_DIR.parent,
    )  # fmt: skip
    assert out.stdout.strip() == ""
