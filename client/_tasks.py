"""Background tasks that live exactly as long as one ``async with`` block (Trio).

    async with open_background() as nursery:
        nursery.start_soon(reader)          # runs while the block runs
        await attach()                      # an error here reaches the caller as itself
    # the reader is cancelled and gone here

Trio (0.25 and later) wraps every error that leaves a nursery in an ``ExceptionGroup``,
also the one raised by the nursery's own body. A public API whose callers must see its
typed errors (``AttachError``, ``TooSlowError``, ``KeyboardInterrupt``) cannot let that
wrapper escape; this is the one place that removes it, and only for the body's own error:
errors of the background tasks are bugs and keep their group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_background() -> AsyncIterator[trio.Nursery]:
    """A nursery whose tasks are cancelled when the block ends, either way.

    Raises what the block raised, unwrapped, when that error is the only one; a group
    (``BaseExceptionGroup``) when a background task failed too or instead.
    """
    body_error: BaseException | None = None
    unwrapped: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Only the block's own error, alone: hand it back as itself (outside this handler,
        # so its context stays what it was).
        if len(group.exceptions) != 1 or group.exceptions[0] is not body_error:
            raise
        unwrapped = body_error
    if unwrapped is not None:
        raise unwrapped
