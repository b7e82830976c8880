"""Type checks of values that came from outside (a file, a document, a caller).

>>> is_int(3), is_int(True), is_int(3.0)
(True, False, False)
"""

from __future__ import annotations

from typing import TypeGuard


def is_int(value: object) -> TypeGuard[int]:
    """True for an ``int`` that is not a ``bool`` (JSON and TOML ``true`` is no number)."""
    return isinstance(value, int) and not isinstance(value, bool)
