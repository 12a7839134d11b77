"""A node's lease: its row in ``opendo_node``, renewed with the database's clock.

A node is a serving process. It registers with a new random id and its address, and renews
``lease_until = now() + S`` every S/3 seconds (S: ``lease_seconds``). Whether a node is alive is
decided by the database alone — ``lease_until > now()``, in the claim that takes an object
over — so clocks of the nodes never decide who owns an object.

The node judges its own lease by its monotonic clock: it takes the time *before* it sends a
renewal, and, once the renewal succeeded, counts itself alive until that time plus S minus a
margin (S/10). The database set ``lease_until`` from a ``now()`` no earlier than that moment,
so by the node's deadline its lease is still valid in the database: no other node can have
taken its objects over yet. When the deadline passes without a renewal (PostgreSQL slow or
unreachable, the process stopped), the node has *lost* its lease: ``on_lost`` is called (the
node drops its objects and closes their sockets with 1012), and it registers again as a new
node — with a new id, deleting its old row in the same transaction, so that nothing claimed
under the old id can be thought alive.

``alive()`` is what storage asks before every call; it is a comparison with the monotonic
clock, so a process that was stopped (SIGSTOP) finds itself dead the moment it runs again,
before it reads anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import pg

__all__ = ["Lease"]

log = logging.getLogger("opendo")

_REGISTER = """
INSERT INTO opendo_node (node_id, address, lease_until)
VALUES ($1, $2, now() + $3 * interval '1 second')
"""
_RENEW = """
UPDATE opendo_node SET lease_until = now() + $2 * interval '1 second'
WHERE node_id = $1 RETURNING node_id
"""
_FORGET = "DELETE FROM opendo_node WHERE node_id = $1"
_FORGET_DEAD = "DELETE FROM opendo_node WHERE lease_until < now() - interval '1 hour'"


class Lease:
    """This node's membership (see the module's essay)."""

    def __init__(
        self,
        pool: Any,
        address: str,
        seconds: float,
        on_lost: Callable[[str], None],
    ) -> None:
        self.pool = pool
        self.address = address
        self.seconds = seconds
        self.margin = seconds / 10
        self.interval = seconds / 3
        self.node_id = ""
        self.deadline = 0.0  # time.monotonic() until which this node is alive
        self.losses = 0  # how many times the lease was lost
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self.registered = asyncio.Event()

    def alive(self) -> bool:
        return time.monotonic() < self.deadline

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._closed:
            if not self.registered.is_set():
                await self._register()
                continue
            await asyncio.sleep(self.interval)
            await self._renew()

    async def _register(self) -> None:
        """Join as a new node (forgetting the old id, if there was one), retrying until it
        works."""
        delay = 0.1
        while not self._closed:
            node_id = uuid.uuid4().hex
            start = time.monotonic()
            try:
                async with pg.connection(self.pool, self.interval) as conn:
                    async with conn.transaction():
                        if self.node_id:
                            await conn.execute(_FORGET, self.node_id)
                        await conn.execute(_REGISTER, node_id, self.address, self.seconds)
                        if self.losses == 0:
                            await conn.execute(_FORGET_DEAD)
            except Exception as exc:
                log.warning("cannot join the cluster yet: %s; retrying", pg.describe(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.interval)
                continue
            self.node_id = node_id
            self._extend(start)
            self.registered.set()
            log.info("joined the cluster as node %s at %s", node_id, self.address)
            return

    async def _renew(self) -> None:
        start = time.monotonic()
        try:
            async with pg.connection(self.pool, self.interval) as conn:
                row = await conn.fetchrow(_RENEW, self.node_id, self.seconds)
        except Exception as exc:
            left = self.deadline - time.monotonic()
            log.warning(
                "could not renew the lease of node %s (%s); %.3g s left",
                self.node_id,
                pg.describe(exc),
                left,
            )
            return
        if row is None:
            self._lose("its row in opendo_node is gone")
            return
        if self.alive():
            self._extend(start)
        else:
            self._lose("its renewal came back after the lease may have lapsed")

    def _extend(self, start: float) -> None:
        self.deadline = start + self.seconds - self.margin
        self._arm()

    def _arm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        wait = self.deadline - time.monotonic()
        self._watchdog = asyncio.get_running_loop().call_later(max(wait, 0), self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self.registered.is_set():
            return
        if self.alive():  # the loop runs a timer up to its clock's resolution early
            self._arm()
        else:
            self._lose(f"it was not renewed for {self.seconds - self.margin:.3g} s")

    def _lose(self, why: str) -> None:
        if not self.registered.is_set():
            return
        self.registered.clear()
        self.deadline = 0.0
        self.losses += 1
        log.error(
            "node %s lost its lease (%s): dropping its objects; joining again", self.node_id, why
        )
        try:
            self._on_lost(why)
        except Exception:
            log.exception("dropping the objects of a node that lost its lease failed")

    async def close(self) -> None:
        """Stop renewing, and leave the cluster (the node's objects may be claimed at once)."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.node_id:
            try:
                async with pg.connection(self.pool, self.interval) as conn:
                    await conn.execute(_FORGET, self.node_id)
            except Exception as exc:
                log.warning("could not leave the cluster cleanly: %s", pg.describe(exc))
        self.deadline = 0.0
        self.registered.clear()
