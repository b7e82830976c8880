"""The settings a test worker starts with (mixnode._worker.Worker, in this process)."""

from __future__ import annotations

import dataclasses
from typing import Any

from overlay import WorkerSettings

BASE = WorkerSettings(
    geometry="voice",
    node_id=b"n" * 16,
    late_drop_ms=50.0,
    max_queue=1000,
    cover_rate_hz=0.0,
    mix_delay_ms=1.0,
)


def worker_settings(**changes: Any) -> WorkerSettings:
    """BASE with ``changes`` (field names of WorkerSettings); ControlFrameError if invalid."""
    return dataclasses.replace(BASE, **changes)
