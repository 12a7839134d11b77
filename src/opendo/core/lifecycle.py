"""An object's lifecycle, as data: the states of its host, the moves between them, and the
back-off after failed starts. Standard library only; ``ObjectHost`` (``_runtime``) makes the
moves.

The table is ``TRANSITIONS``; a test reads this picture and compares it with the table::

    EMPTY|HIBERNATED|BROKEN  --construct-->  ACTIVE      an event came; the constructor returned
    EMPTY|HIBERNATED|BROKEN  --fail-->       BROKEN      the constructor raised
    ACTIVE                   --fail-->       BROKEN      a block_concurrency_while() that the
                                                         constructor started failed or timed out
    ACTIVE                   --reset-->      EMPTY       a failed write, abort(), a failed
                                                         block_concurrency_while()
    EMPTY|HIBERNATED|BROKEN  --reset-->      (same)      a late reset: no instance to drop
    ACTIVE|EMPTY|HIBERNATED  --hibernate-->  HIBERNATED  idle, or reset, with hibernatable
                                                         WebSockets: they stay connected
    ACTIVE|EMPTY|HIBERNATED|BROKEN  --evict-->  EVICTED  idle: the host is dropped, and a new
                                                         one is made on the next event

In every state without an instance, the next event constructs the object again; a BROKEN
one perhaps only later. After the first failed start in a row the next event constructs
again at once; after the n-th, events within ``start_backoff(n)`` seconds of it (1 s,
doubling, at most ``MAX_START_BACKOFF`` = 30 s) fail fast, and the first event after that
constructs again. A start that completes clears the count.
"""

from __future__ import annotations

import enum

__all__ = ["MAX_START_BACKOFF", "TRANSITIONS", "Lifecycle", "start_backoff"]

FIRST_START_BACKOFF = 1.0
MAX_START_BACKOFF = 30.0


class Lifecycle(enum.Enum):
    EMPTY = "empty"  # no instance; the next event constructs one
    ACTIVE = "active"
    HIBERNATED = "hibernated"  # no instance, but hibernatable WebSockets stay connected
    BROKEN = "broken"  # no instance: the last start failed (events may fail fast a while)
    EVICTED = "evicted"  # dropped for idleness; the host is gone from the runtime


TRANSITIONS: dict[tuple[Lifecycle, str], Lifecycle] = {
    (Lifecycle.EMPTY, "construct"): Lifecycle.ACTIVE,
    (Lifecycle.HIBERNATED, "construct"): Lifecycle.ACTIVE,
    (Lifecycle.BROKEN, "construct"): Lifecycle.ACTIVE,
    (Lifecycle.EMPTY, "fail"): Lifecycle.BROKEN,
    (Lifecycle.HIBERNATED, "fail"): Lifecycle.BROKEN,
    (Lifecycle.BROKEN, "fail"): Lifecycle.BROKEN,
    (Lifecycle.ACTIVE, "fail"): Lifecycle.BROKEN,
    (Lifecycle.ACTIVE, "reset"): Lifecycle.EMPTY,
    (Lifecycle.EMPTY, "reset"): Lifecycle.EMPTY,
    (Lifecycle.HIBERNATED, "reset"): Lifecycle.HIBERNATED,
    (Lifecycle.BROKEN, "reset"): Lifecycle.BROKEN,
    (Lifecycle.ACTIVE, "hibernate"): Lifecycle.HIBERNATED,
    (Lifecycle.EMPTY, "hibernate"): Lifecycle.HIBERNATED,
    (Lifecycle.HIBERNATED, "hibernate"): Lifecycle.HIBERNATED,
    (Lifecycle.ACTIVE, "evict"): Lifecycle.EVICTED,
    (Lifecycle.EMPTY, "evict"): Lifecycle.EVICTED,
    (Lifecycle.HIBERNATED, "evict"): Lifecycle.EVICTED,
    (Lifecycle.BROKEN, "evict"): Lifecycle.EVICTED,
}


def start_backoff(failures: int) -> float:
    """Seconds during which events fail fast after the ``failures``-th failed start in a
    row: none after the first, then 1 s, doubling, at most ``MAX_START_BACKOFF``."""
    if failures < 2:
        return 0.0
    return min(FIRST_START_BACKOFF * 2.0 ** (failures - 2), MAX_START_BACKOFF)
