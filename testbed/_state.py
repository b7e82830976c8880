"""What ``phantom-testnet up`` records in ``testnet.json``, and the error of the test bed.

    >>> state = TestnetState("tn", ["http://127.0.0.1:1"], ["00" * 32], 1, "voice")
    >>> state.authority_key_bytes() == [bytes(32)]
    True

The probe and the load generator read this file; the testnet writes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "testnet.json"


class TestnetError(Exception):
    """The testnet could not be started, found or stopped; the message says why."""

    __test__ = False  # not a pytest class


@dataclass(slots=True)
class ProcessInfo:
    """One process of the testnet, as recorded in the state file."""

    name: str
    kind: str  # "authority", "gateway" or "mix"
    pid: int
    config: str
    log: str
    port: int  # HTTP port of an authority, UDP node port of a node
    client_port: int | None = None
    metrics_port: int | None = None
    layer: int = 0


@dataclass(slots=True)
class TestnetState:
    """What ``up`` wrote: processes and what a client needs to find the network."""

    __test__ = False  # not a pytest class

    directory: str
    authorities: list[str]
    authority_keys: list[str]  # hex
    threshold: int
    geometry: str
    processes: list[ProcessInfo] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically (a temporary file, then a rename); OSError if not."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, directory: Path) -> TestnetState:
        """Read ``directory/testnet.json``; TestnetError naming the file if it is missing,
        unreadable or not a state file."""
        path = Path(directory) / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise TestnetError(f"{path}: no testnet here (run `phantom-testnet up`)") from None
        except OSError as exc:
            raise TestnetError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except ValueError:
            raise TestnetError(f"{path}: not a testnet state file (not JSON)") from None
        try:
            procs = [ProcessInfo(**p) for p in raw.pop("processes")]
            return cls(**raw, processes=procs)
        except (AttributeError, KeyError, TypeError):
            raise TestnetError(f"{path}: not a testnet state file (unexpected fields)") from None

    def nodes(self, kind: str | None = None) -> list[ProcessInfo]:
        """Node processes (not authorities), optionally only ``kind``."""
        return [
            p for p in self.processes if p.kind != "authority" and (kind is None or p.kind == kind)
        ]

    def authority_key_bytes(self) -> list[bytes]:
        """The authorities' Ed25519 public keys, 32 bytes each, in ``authorities`` order."""
        return [bytes.fromhex(k) for k in self.authority_keys]
