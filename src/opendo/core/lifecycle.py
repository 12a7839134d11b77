"""An object's lifecycle, as data: the states of its host, the moves between them, and the
back-off after failed starts. Standard library only; ``ObjectHost`` (``opendo.runtime``)
makes the moves.

The table is ``TRANSITIONS``; a test reads this picture and compares it with the table::

    EMPTY|HIBERNATED|BROKEN  --activate-->   ACTIVATING  an event came: claim the object,
                                                         open its storage
    ACTIVATING               --construct-->  ACTIVE      the constructor returned
    ACTIVATING               --forward-->    REMOTE      another process or node owns it: its
                                                         events are forwarded there
    ACTIVATING               --fail-->       BROKEN      the claim, the storage or the
                                                         constructor failed
    ACTIVE                   --fail-->       BROKEN      a block_concurrency_while() that the
                                                         constructor started failed or timed out
    ACTIVE                   --reset-->      EMPTY       a failed write, abort(), a failed
                                                         block_concurrency_while()
    EMPTY|HIBERNATED|BROKEN  --reset-->      (same)      a late reset: no instance to drop
    REMOTE                   --reset-->      EMPTY       the owner went away: claim it again
    ACTIVE|EMPTY|HIBERNATED  --hibernate-->  HIBERNATED  idle, or reset, with hibernatable
                                                         WebSockets: they stay connected
    ACTIVE|EMPTY|HIBERNATED|BROKEN|REMOTE  --evict-->  EVICTED  idle: the host is dropped,
                                                         and a new one is made on the next event

In every state without an instance, the next event activates the object again; a BROKEN one
perhaps only later. After the first failed start in a row the next event tries again at once;
after the n-th, events within ``start_backoff(n)`` seconds of it (1 s, doubling, at most
``MAX_START_BACKOFF`` = 30 s) fail fast, and the first event after that tries again. A start
that completes clears the count. Activation is a claim (``core.protocols.Placement``), then
the storage (``StorageProvider.open``), then the constructor; when the claim and the storage
answer at once, as they do on one machine, the three happen within the delivery of the
event, and ACTIVATING lasts no longer than that.
"""

from __future__ import annotations

import enum

__all__ = ["MAX_START_BACKOFF", "TRANSITIONS", "Lifecycle", "start_backoff"]

FIRST_START_BACKOFF = 1.0
MAX_START_BACKOFF = 30.0


class Lifecycle(enum.Enum):
    EMPTY = "empty"  # no instance; the next event activates one
    ACTIVATING = "activating"  # claiming the object, opening its storage, constructing
    ACTIVE = "active"
    HIBERNATED = "hibernated"  # no instance, but hibernatable WebSockets stay connected
    BROKEN = "broken"  # no instance: the last start failed (events may fail fast a while)
    REMOTE = "remote"  # owned elsewhere: events are forwarded to the owner
    EVICTED = "evicted"  # dropped for idleness; the host is gone from the runtime


_ = Lifecycle
TRANSITIONS: dict[tuple[Lifecycle, str], Lifecycle] = {
    (_.EMPTY, "activate"): _.ACTIVATING,
    (_.HIBERNATED, "activate"): _.ACTIVATING,
    (_.BROKEN, "activate"): _.ACTIVATING,
    (_.ACTIVATING, "construct"): _.ACTIVE,
    (_.ACTIVATING, "forward"): _.REMOTE,
    (_.ACTIVATING, "fail"): _.BROKEN,
    (_.ACTIVE, "fail"): _.BROKEN,
    (_.ACTIVE, "reset"): _.EMPTY,
    (_.EMPTY, "reset"): _.EMPTY,
    (_.HIBERNATED, "reset"): _.HIBERNATED,
    (_.BROKEN, "reset"): _.BROKEN,
    (_.REMOTE, "reset"): _.EMPTY,
    (_.ACTIVE, "hibernate"): _.HIBERNATED,
    (_.EMPTY, "hibernate"): _.HIBERNATED,
    (_.HIBERNATED, "hibernate"): _.HIBERNATED,
    (_.ACTIVE, "evict"): _.EVICTED,
    (_.EMPTY, "evict"): _.EVICTED,
    (_.HIBERNATED, "evict"): _.EVICTED,
    (_.BROKEN, "evict"): _.EVICTED,
    (_.REMOTE, "evict"): _.EVICTED,
}
del _


def start_backoff(failures: int) -> float:
    """Seconds during which events fail fast after the ``failures``-th failed start in a
    row: none after the first, then 1 s, doubling, at most ``MAX_START_BACKOFF``."""
    if failures < 2:
        return 0.0
    return min(FIRST_START_BACKOFF * 2.0 ** (failures - 2), MAX_START_BACKOFF)
