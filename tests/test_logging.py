"""The server log's rate limit on repeated identical lines (``opendo.core.logs.RepeatFilter``).

Driven through a real ``logging.Logger`` and handler, with the filter's injected clock
(the one fake: time); ``tests/test_disk_full.py`` checks it on a real server's log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest

from opendo.core.logs import BURST, INTERVAL, JsonFormatter, RepeatFilter, install


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logged(clock: Clock) -> Iterator[tuple[logging.Logger, Lines]]:
    logger = logging.getLogger("opendo.test-repeats")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = Lines()
    handler.addFilter(RepeatFilter(clock=clock))
    logger.addHandler(handler)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_the_first_lines_pass_then_a_summary_at_most_every_interval(
    logged: tuple[logging.Logger, Lines], clock: Clock
) -> None:
    logger, handler = logged
    for _ in range(100):
        logger.error("storage failed: %s", "disk full")
        clock.now += 0.01
    assert handler.lines == ["ERROR storage failed: disk full"] * BURST
    clock.now += INTERVAL
    logger.error("storage failed: %s", "disk full")
    assert handler.lines[BURST:] == [
        f"ERROR storage failed: disk full [repeated {100 - BURST + 1} times in the last 6 s]"
    ]
    for _ in range(10):  # within the next interval: dropped, and counted for the next summary
        clock.now += INTERVAL / 25
        logger.error("storage failed: %s", "disk full")
    assert len(handler.lines) == BURST + 1
    clock.now += INTERVAL
    logger.error("storage failed: %s", "disk full")
    assert handler.lines[-1].endswith("[repeated 11 times in the last 7 s]"), handler.lines[-1]


def test_lines_that_differ_are_counted_apart(logged: tuple[logging.Logger, Lines]) -> None:
    logger, handler = logged
    for i in range(3):
        for _ in range(BURST + 3):
            logger.warning("resetting Chat(%d)", i)
        logger.error("resetting Chat(%d)", i)  # another level: another line
    assert len(handler.lines) == 3 * (BURST + 1)
    assert handler.lines.count("WARNING resetting Chat(2)") == BURST


def test_after_a_quiet_interval_a_line_passes_again(
    logged: tuple[logging.Logger, Lines], clock: Clock
) -> None:
    logger, handler = logged
    for _ in range(BURST):
        logger.info("a client went away")
    clock.now += INTERVAL
    for _ in range(BURST):
        logger.info("a client went away")
    assert handler.lines == ["INFO a client went away"] * (2 * BURST)


def test_install_puts_one_filter_on_each_handler() -> None:
    logger = logging.getLogger("opendo.test-install")
    handlers = [Lines(), Lines()]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        install(logger)
        install(logger)
        assert [len(h.filters) for h in handlers] == [1, 1]
        assert all(isinstance(h.filters[0], RepeatFilter) for h in handlers)
    finally:
        for handler in handlers:
            logger.removeHandler(handler)


def test_access_log_lines_are_never_rate_limited(clock: Clock) -> None:
    access = logging.getLogger("opendo.access")
    handler = Lines()
    handler.addFilter(RepeatFilter(clock=clock))
    access.addHandler(handler)
    access.propagate = False
    level = access.level
    access.setLevel(logging.INFO)
    try:
        for _ in range(BURST * 4):  # the same request again and again: a line each
            access.info("GET /counter/a 200 0.4 ms Counter a")
    finally:
        access.removeHandler(handler)
        access.propagate = True
        access.setLevel(level)
    assert handler.lines == ["INFO GET /counter/a 200 0.4 ms Counter a"] * (BURST * 4)


def test_json_lines_carry_the_access_fields_and_the_traceback() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("opendo.access", logging.INFO, __file__, 1, "GET %s", ("/a",), None)
    for name, value in {"method": "GET", "path": "/a", "status": 200, "ms": 1.5}.items():
        setattr(record, name, value)
    setattr(record, "class", "Counter")
    entry = json.loads(formatter.format(record))
    assert entry.pop("time").endswith("+00:00")
    assert entry == {
        "level": "info",
        "logger": "opendo.access",
        "message": "GET /a",
        "method": "GET",
        "path": "/a",
        "status": 200,
        "ms": 1.5,
        "class": "Counter",
    }
    try:
        raise ValueError("bad frame")
    except ValueError:
        failed = logging.LogRecord(
            "opendo", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = formatter.format(failed)
    assert "\n" not in line  # one line per record, the traceback inside it
    assert json.loads(line)["exception"].endswith("ValueError: bad frame")
