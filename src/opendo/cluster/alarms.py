"""Alarms in a cluster: the ones nobody would run are picked from PostgreSQL.

An object's alarm lives in its database; each flush mirrors it into ``opendo_alarm``. The owner
of an object runs its alarm itself: it schedules the alarm when it opens the object's storage
and whenever it changes (``runtime.alarms``), as one process does. What is left is the alarms
of objects nobody owns — evicted ones, and those of a node that died — so every node polls,
every ``interval`` seconds, for alarms that are due by the database's clock and whose object
has no live owner, takes up to ``BATCH`` of them with ``FOR UPDATE SKIP LOCKED`` (nodes polling
at once take different ones) and marks them picked for a while; then it schedules each one,
which claims its object here when its time comes (or forwards it, if another node claimed it
meanwhile). The alarm runs at least once: a pick that does not lead to a run (the node dies)
lapses, and the alarm is picked again. The owner's flush that deletes or moves the alarm
clears the mark.

Every ``PRUNE_EVERY`` seconds a node also prunes the history older than ``retention``: per
object, the newest snapshot older than that becomes the first state kept (``history_from``),
and the log up to it and the snapshots before it are deleted. Nodes that prune at once delete
the same rows; that is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..core.protocols import StoredAlarm
from . import pg

if TYPE_CHECKING:
    from .lease import Lease

__all__ = ["AlarmPoller"]

log = logging.getLogger("opendo")

BATCH = 100
PRUNE_EVERY = 600.0

_PICK = """
UPDATE opendo_alarm AS a SET picked_until = now() + $1 * interval '1 second'
FROM (
    SELECT d.ns, d.id FROM opendo_alarm d
    LEFT JOIN opendo_object o ON o.ns = d.ns AND o.id = d.id
    LEFT JOIN opendo_node n ON n.node_id = o.node_id AND n.lease_until > now()
    WHERE d.time_ms <= (extract(epoch FROM now()) * 1000)::bigint
      AND (d.picked_until IS NULL OR d.picked_until < now())
      AND n.node_id IS NULL
    ORDER BY d.time_ms
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
) AS due
WHERE a.ns = due.ns AND a.id = due.id
RETURNING a.ns, a.id, a.name, a.time_ms
"""
_BASES = """
SELECT ns, id, max(seq) AS seq FROM opendo_snapshot
WHERE at < now() - $1 * interval '1 second' GROUP BY ns, id
"""
_PRUNE_LOG = """
DELETE FROM opendo_log AS l USING unnest($1::text[], $2::text[], $3::bigint[]) AS b(ns, id, seq)
WHERE l.ns = b.ns AND l.id = b.id AND l.seq <= b.seq
"""
_PRUNE_SNAPSHOTS = """
DELETE FROM opendo_snapshot AS s USING unnest($1::text[], $2::text[], $3::bigint[])
    AS b(ns, id, seq)
WHERE s.ns = b.ns AND s.id = b.id AND s.seq < b.seq
"""
_KEPT_FROM = """
UPDATE opendo_object AS o SET history_from = b.seq
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS b(ns, id, seq)
WHERE o.ns = b.ns AND o.id = b.id AND o.history_from < b.seq
"""


class Scheduler:
    """What the poller hands picked alarms to (``runtime.alarms``)."""

    def restore(self, stored: StoredAlarm) -> None: ...


class AlarmPoller:
    """Picks the due alarms of unowned objects (see the module's essay)."""

    def __init__(
        self,
        lease: Lease,
        scheduler: Any,
        *,
        interval: float,
        hold: float,
        retention: float,
        timeout: float,
    ) -> None:
        self.lease = lease
        self.scheduler = scheduler
        self.interval = interval
        self.hold = hold  # how long a pick keeps others off
        self.retention = retention
        self.timeout = timeout
        self.picked = 0
        self._task: asyncio.Task[None] | None = None
        self._pruned = time.monotonic()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.lease.alive():
                continue
            try:
                await self.poll()
                if time.monotonic() - self._pruned > PRUNE_EVERY:
                    self._pruned = time.monotonic()
                    await self.prune()
            except Exception as exc:
                log.warning("the alarm poller could not read PostgreSQL: %s", pg.describe(exc))

    async def poll(self) -> int:
        """Pick and schedule the due alarms of unowned objects; how many."""
        async with pg.connection(self.lease.pool, self.timeout) as conn:
            rows = await conn.fetch(_PICK, self.hold, BATCH)
        for row in rows:
            self.scheduler.restore(
                StoredAlarm(row["ns"], row["id"], row["name"], int(row["time_ms"]))
            )
        self.picked += len(rows)
        return len(rows)

    async def prune(self) -> int:
        """Delete the history older than ``retention``; how many objects had some."""
        async with pg.connection(self.lease.pool, self.timeout) as conn:
            async with conn.transaction():
                bases = await conn.fetch(_BASES, self.retention)
                if not bases:
                    return 0
                args = (
                    [b["ns"] for b in bases],
                    [b["id"] for b in bases],
                    [int(b["seq"]) for b in bases],
                )
                await conn.execute(_PRUNE_LOG, *args)
                await conn.execute(_PRUNE_SNAPSHOTS, *args)
                await conn.execute(_KEPT_FROM, *args)
        return len(bases)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
