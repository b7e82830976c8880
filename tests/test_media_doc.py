"""docs/media.md carries the state diagram and table drawn from the current transition table."""

from __future__ import annotations

from pathlib import Path

from client import state_diagram, state_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "media.md"


def test_the_documented_diagram_is_current() -> None:
    assert state_diagram() in DOC.read_text()


def test_the_documented_table_is_current() -> None:
    assert state_table() in DOC.read_text()
