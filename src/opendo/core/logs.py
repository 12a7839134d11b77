"""Keeping the server's log readable when the same thing goes wrong again and again, and
writing it as JSON when asked to.

A full disk fails every write, and every failed write logs its error and the reset it causes;
a client that sends garbage in a loop can do the same. ``RepeatFilter``, installed on the
server's log handlers, lets the first ``burst`` (5) occurrences of an identical line (same
logger, level and message) through, then drops further ones and lets one through at most
every ``interval`` (5) seconds, marked ``[repeated N times in the last S s]``, N counting the
lines it stands for. A line that comes again after ``interval`` seconds of quiet starts a
new burst. A run of dropped lines is summarised by the next occurrence after the interval:
the count is never lost while the condition lasts, and a condition that stops stops logging.
The access log (a line per request, identical ones included) is never rate-limited.

``JsonFormatter`` (``--log-format json``) writes each line as one JSON object.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["BURST", "INTERVAL", "UNLIMITED", "JsonFormatter", "RepeatFilter", "install"]

BURST = 5  # identical lines that pass before they are rate-limited
INTERVAL = 5.0  # seconds between two summaries of one repeated line
UNLIMITED = frozenset({"opendo.access"})  # loggers whose lines are never rate-limited
_KEYS = 1024  # distinct lines remembered


class _Seen:
    __slots__ = ("passed", "dropped", "last", "summary_at")

    def __init__(self, now: float) -> None:
        self.passed = 0
        self.dropped = 0
        self.last = now
        self.summary_at = now


class RepeatFilter(logging.Filter):
    """Rate-limits repeated identical log lines; see the module's docstring."""

    def __init__(
        self,
        burst: int = BURST,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, int, str], _Seen] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in UNLIMITED:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True  # the handler reports the broken record itself
        key = (record.name, record.levelno, message)
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or (not seen.dropped and now - seen.last >= self.interval):
                seen = self._remember(key, now)
            seen.last = now
            if seen.passed < self.burst:
                seen.passed += 1
                seen.summary_at = now
                return True
            seen.dropped += 1
            if now - seen.summary_at < self.interval:
                return False
            record.msg = (
                f"{message} [repeated {seen.dropped} times in the last "
                f"{now - seen.summary_at:.0f} s]"
            )
            record.args = None
            seen.dropped = 0
            seen.summary_at = now
            return True

    def _remember(self, key: tuple[str, int, str], now: float) -> _Seen:
        seen = self._seen
        if len(seen) >= _KEYS:
            for old in [k for k, s in seen.items() if not s.dropped and now - s.last >= 60]:
                del seen[old]
            if len(seen) >= _KEYS:
                seen.clear()
        seen[key] = entry = _Seen(now)
        return entry


def install(*loggers: logging.Logger) -> None:
    """Put a ``RepeatFilter`` on every handler of ``loggers`` (the root logger if none is
    given) that has none yet."""
    for logger in loggers or (logging.getLogger(),):
        for handler in logger.handlers:
            if not any(isinstance(f, RepeatFilter) for f in handler.filters):
                handler.addFilter(RepeatFilter())


# The access log's fields (server.gateway), written as keys of their own.
ACCESS_FIELDS = ("method", "path", "status", "ms", "class", "object")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``; an access log line's fields (``ACCESS_FIELDS``); an exception's traceback as
    ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.entry(record), ensure_ascii=False, default=str)

    def entry(self, record: logging.LogRecord) -> dict[str, object]:
        """The record as the dictionary ``format`` writes."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in ACCESS_FIELDS:
            if name in fields:
                entry[name] = fields[name]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return entry
