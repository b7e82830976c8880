"""Logging for the operator commands: level and format options, JSON lines, repeat limits.

    >>> import argparse, io
    >>> p = argparse.ArgumentParser(); add_logging_options(p)
    >>> args = p.parse_args(["--log-level", "debug", "--log-format", "json"])
    >>> out = io.StringIO(); setup_logging(args.log_level, args.log_format, stream=out)
    >>> logging.getLogger("phantom.demo").info("epoch %d: keys generated", 7)
    >>> json.loads(out.getvalue())["message"]
    'epoch 7: keys generated'

Standard library ``logging`` only. ``--log-format json`` writes one JSON object per line
(``time`` unix seconds, ``level``, ``logger``, ``message``, and ``exception`` when there is
one), for log shippers; ``text`` is ``<time> <LEVEL> <logger>: <message>``. What callers
log is their business: the node and authority never log a secret, a client address or a
mailbox id at any level (tests/test_logging.py runs a node at ``debug`` and checks).

``RepeatLimiter`` keeps a failure that repeats every second (an authority down) from
filling the log: the first occurrence of a message is logged, then one summary line per
``interval_s`` with how many times it happened meanwhile.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[str, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REPEAT_INTERVAL_S = 60.0  # s between summary lines of a repeated message
MAX_REPEAT_KEYS = 64  # distinct messages tracked at once (oldest forgotten first)


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-level`` (debug|info|warning|error, default info) and ``--log-format``
    (text|json, default text) to ``parser``."""
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="least severe level logged"
    )
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="text lines or JSON lines"
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (unix s), level, logger, message[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=True)


def setup_logging(level: str = "info", fmt: str = "text", *, stream: TextIO | None = None) -> None:
    """Send the root logger's records at ``level`` or above to ``stream`` (stderr) as
    ``fmt`` ("text" or "json"), replacing handlers set before. ValueError for another
    level or format (argparse's choices keep them out)."""
    if level not in LOG_LEVELS or fmt not in LOG_FORMATS:
        raise ValueError(f"log level {level!r} or format {fmt!r} unknown")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


@dataclass(slots=True)
class _Seen:
    last_logged: float
    repeats: int = 0


class RepeatLimiter:
    """Decides which occurrences of a repeated message are logged.

    ``check(key)`` returns None to stay silent, 0 for a first occurrence (log it), or
    ``n > 0`` when ``interval_s`` seconds (on ``clock``) have passed since the last line
    of ``key``: log a summary, the message happened ``n`` times meanwhile (this one
    included). At most ``max_keys`` messages are remembered; the least recent is dropped.
    """

    def __init__(
        self,
        interval_s: float = REPEAT_INTERVAL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_REPEAT_KEYS,
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[str, _Seen] = OrderedDict()

    def check(self, key: str) -> int | None:
        """Whether to log this occurrence of ``key`` (see the class)."""
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(now)
            if len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
            return 0
        self._seen.move_to_end(key)
        seen.repeats += 1
        if now - seen.last_logged < self.interval_s:
            return None
        n, seen.repeats, seen.last_logged = seen.repeats, 0, now
        return n

    def reset(self) -> None:
        """Forget every message (e.g. once the failure has cleared): each is new again."""
        self._seen.clear()
