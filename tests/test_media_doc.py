"""docs/media.md carries the state diagram drawn from the current transition table."""

from __future__ import annotations

from pathlib import Path

from client import state_diagram

DOC = Path(__file__).resolve().parent.parent / "docs" / "media.md"


def test_the_documented_diagram_is_current() -> None:
    assert state_diagram() in DOC.read_text()
