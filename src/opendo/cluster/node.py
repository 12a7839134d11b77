"""A cluster node: the lease, placement, storage, alarms and forwarding of one serving process.

``ClusterNode`` is what the loader wires into a ``Runtime`` in cluster mode: its
``placement`` (``ClusterPlacement``), its ``storages`` (``ClusterStorages``), its
``forwarder`` (``NodeForwarder``, authenticated TCP between nodes) and itself as the runtime's
``Service``. ``start()`` (inside the event loop) connects to PostgreSQL — retrying until it
answers —, migrates the schema, joins the cluster (``Lease``) and starts the alarm poller;
claims wait for it. When the lease is lost, the node drops every object (their sockets close
with 1012, "service restart", so clients reconnect — to any node) and joins again as a new
node. ``aclose()`` hands the last flushes to PostgreSQL, releases what it owns and leaves.

Settings (``ClusterSettings``) and their defaults are in docs/howto/cluster.md.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.links import LinkForwarder
from . import pg, schema
from .alarms import AlarmPoller
from .lease import Lease
from .placement import ClusterPlacement
from .storage import ClusterStorages

if TYPE_CHECKING:
    from ..core.protocols import Forwarder

__all__ = ["ClusterNode", "ClusterSettings"]

log = logging.getLogger("opendo")


@dataclass(frozen=True)
class ClusterSettings:
    dsn: str  # postgresql://USER@HOST:PORT/DB
    advertise: str  # HOST:PORT where the other nodes reach this one
    secret: bytes  # shared by every node (OPENDO_CLUSTER_SECRET)
    cache: Path  # this node's cache directory (removed when it starts and stops)
    lease_seconds: float = 10.0
    pool_size: int = 8
    alarm_interval: float = 1.0  # how often unowned objects' due alarms are looked for
    retention_days: float = 30.0  # point-in-time recovery's history, as Cloudflare's
    listen: tuple[str, int] | None = None  # what to bind; by default the advertised address

    @property
    def timeout(self) -> float:
        """How long one unit of work against PostgreSQL may take (a claim, a flush)."""
        return max(1.0, self.lease_seconds / 2)


class ClusterNode:
    """One node of a cluster (see the module's essay)."""

    def __init__(self, settings: ClusterSettings, forwarder: Forwarder) -> None:
        self.settings = settings
        self.forwarder = forwarder
        self.lease = Lease(None, settings.advertise, settings.lease_seconds, self._lost)
        self.storages = ClusterStorages(self.lease, settings.cache, settings.timeout)
        self.placement = ClusterPlacement(self.lease, self.storages.shipper, settings.timeout)
        self.poller: AlarmPoller | None = None
        self.runtime: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def attach(self, runtime: Any) -> None:
        """Serve ``runtime``'s objects (its forwarder too delivers to it)."""
        self.runtime = runtime
        attach = getattr(self.forwarder, "attach", None)
        if attach is not None:
            attach(runtime)
        if isinstance(self.forwarder, LinkForwarder):
            self.forwarder.serving = self.lease.alive  # others' events refused when lost
        self.poller = AlarmPoller(
            self.lease,
            runtime.alarms,
            interval=self.settings.alarm_interval,
            hold=self.settings.lease_seconds,
            retention=self.settings.retention_days * 86400,
            timeout=self.settings.timeout,
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        settings = self.settings
        delay = 0.1
        while True:
            try:
                pool = await pg.create_pool(
                    settings.dsn, size=settings.pool_size, connect_within=settings.timeout
                )
                async with pg.connection(pool, settings.timeout * 4) as conn:
                    await schema.migrate(conn)
                break
            except Exception as exc:
                log.warning(
                    "cannot reach the cluster's PostgreSQL yet: %s; retrying", pg.describe(exc)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, settings.lease_seconds)
        self.lease.pool = pool
        self.lease.start()
        await self.lease.registered.wait()
        if self.poller is not None:
            self.poller.start()

    def _lost(self, why: str) -> None:
        if self.runtime is not None:
            self.runtime.drop_objects(1012, "this server lost its place in the cluster")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.poller is not None:
            await self.poller.close()
        await self.storages.shipper.drain(self.settings.timeout)
        await self.lease.close()
        if self.lease.pool is not None:
            try:
                await asyncio.wait_for(self.lease.pool.close(), self.settings.timeout)
            except (TimeoutError, Exception):
                self.lease.pool.terminate()
        shutil.rmtree(self.settings.cache, ignore_errors=True)

    def statistics(self) -> dict[str, Any]:
        return {
            "node": self.lease.node_id,
            "alive": self.lease.alive(),
            "lease_losses": self.lease.losses,
            **self.storages.statistics(),
            "alarms_picked": self.poller.picked if self.poller is not None else 0,
        }
