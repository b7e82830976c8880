"""The smallest real testnet for tests: one authority, one gateway, one mix, loopback.

    with small_testnet(tmp_path, workers=2) as net:
        ...                                   # real processes on free loopback ports
    # every process stopped here
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testbed.testnet import TestnetOptions, TestnetState, down, up


def process_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (read from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def child_pids(pid: int) -> list[int]:
    """Live (not zombie) children of ``pid``, read from /proc: a node's worker processes."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


@contextmanager
def small_testnet(directory: Path, **options: object) -> Iterator[TestnetState]:
    """A testnet of one authority (threshold 1), one gateway and one mix layer of one node,
    on ports the kernel picks, without node loop cover; ``options`` override any
    ``TestnetOptions`` field. Stops every process it started, whatever happens."""
    settings: dict[str, object] = {
        "authorities": 1,
        "threshold": 1,
        "gateways": 1,
        "layers": 1,
        "per_layer": 1,
        "base_port": 0,
        "loop_cover_rate_hz": 0.0,
    }
    settings.update(options)
    state = up(TestnetOptions(directory=directory, **settings))  # type: ignore[arg-type]
    try:
        yield state
    finally:
        down(directory)
