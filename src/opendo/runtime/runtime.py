"""The runtime: bindings, the Worker entry point and the object hosts of one project.

A ``Runtime`` is what one process runs of a project: the Worker that receives every request,
the namespaces of its bindings, and one ``ObjectHost`` per object that has work here. It is
wired with the seams of the mode the server runs in (``core.protocols``): where objects'
storage comes from (``StorageProvider``), who owns an object (``Placement``), how an event
reaches an owner elsewhere (``Forwarder``). ``opendo.project`` picks them; a ``Runtime`` made
directly (``opendo.Runtime``, for tests and embedding) keeps everything in this process.
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
from collections.abc import Mapping, Sequence
from typing import Any

from ..api.http import Request, Response
from ..api.objects import DurableObject, Env, ExecutionContext, WorkerEntrypoint
from ..core.clock import Clock, LoopClock
from ..core.ids import DurableObjectId
from ..core.metrics import called
from ..core.protocols import Forwarder, Placement, Service, StorageProvider
from .alarms import AlarmRunner
from .host import ObjectHost
from .placement import LocalPlacement
from .stubs import DurableObjectNamespace

__all__ = ["Runtime", "open_budget"]

FILES_PER_OBJECT = 5  # an object's database, its -wal and -shm, its lock, its fsync handle


def open_budget(files_per_object: int = FILES_PER_OBJECT) -> int:
    """How many objects may have their storage open at once, by default: half of this
    process's file descriptor limit (``RLIMIT_NOFILE``; the other half is for sockets and
    everything else), at ``files_per_object`` each — 2,000 at a limit of 20,000."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft // 2 // files_per_object)


log = logging.getLogger("opendo")

Key = tuple[str, DurableObjectId]


class Runtime:
    """Everything one project runs: its Worker, its namespaces and their live objects.

    ::

        runtime = Runtime(worker=Default, bindings={"CHAT": Chat}, vars={"GREETING": "hi"},
                          storage=Storages(MemoryDriver()))
        response = await runtime.fetch(Request("http://localhost/lobby"))
    """

    def __init__(
        self,
        *,
        storage: StorageProvider,
        worker: type[WorkerEntrypoint] | None = None,
        bindings: Mapping[str, type[DurableObject]] | None = None,
        vars: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        idle_timeout: float = 70.0,
        hibernation_timeout: float = 10.0,
        open_objects: int | None = None,
        placement: Placement | None = None,
        forwarder: Forwarder | None = None,
        rng: random.Random | None = None,
        labels: Mapping[str, str] | None = None,  # class name -> id label (core.migrations)
        services: Sequence[Service] = (),
    ) -> None:
        self.worker = worker
        self.services = tuple(services)
        self.storage = storage
        self.placement: Placement = placement if placement is not None else LocalPlacement()
        self.forwarder = forwarder
        self.rng = rng if rng is not None else random.Random()
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.idle_timeout = idle_timeout
        self.hibernation_timeout = hibernation_timeout
        self._hosts: dict[Key, ObjectHost] = {}
        # The budget of open storage (see open_budget): past it, the longest-idle objects
        # are evicted at once instead of at the end of their idle timeout.
        self.open_objects = open_objects if open_objects is not None else open_budget()
        if self.open_objects < 1:
            raise ValueError(f"open_objects must be at least 1, got {self.open_objects}")
        self._open = 0  # hosts whose storage is open
        self._idle: dict[ObjectHost, None] = {}  # idle hosts, the longest idle first
        namespaces: dict[str, DurableObjectNamespace] = {}
        for binding, cls in (bindings or {}).items():
            if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
                raise TypeError(f"binding {binding!r}: {cls!r} is not a DurableObject subclass")
            label = (labels or {}).get(cls.__name__, cls.__name__)
            namespaces[binding] = DurableObjectNamespace(self, binding, cls, label)
        self.namespaces = namespaces
        self._by_class = {ns.object_class.__name__: ns for ns in namespaces.values()}
        self.env = Env({**(vars or {}), **namespaces})
        self.alarms = AlarmRunner(self, self.clock, self.rng)
        self._started = False
        self._closing = False
        self.draining = False  # the server stops taking requests: see ready

    # -- requests ---------------------------------------------------------------------------

    async def fetch(self, request: Request) -> Response:
        """Hand a request to the Worker entry point."""
        if self.worker is None:
            return Response("Not found", status=404)
        worker = self.worker(ExecutionContext(), self.env)
        response = await worker.fetch(request)
        if not isinstance(response, Response):
            raise TypeError(
                f"{type(worker).__name__}.fetch() must return a Response, "
                f"got {type(response).__name__}"
            )
        return response

    # -- objects ----------------------------------------------------------------------------

    def send(
        self, namespace: DurableObjectNamespace, id: DurableObjectId, event: object
    ) -> asyncio.Future[Any]:
        """Deliver ``event`` to the object (here, or forwarded to its owner); its result."""
        host = self.host(namespace, id)
        called(host.class_name, id)
        return host.call(event)

    def host(self, namespace: DurableObjectNamespace, id: DurableObjectId) -> ObjectHost:
        key = (namespace.object_class.__name__, id)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = ObjectHost(namespace, id, self)
        return host

    def live_host(self, key: Key) -> ObjectHost | None:
        return self._hosts.get(key)

    def namespace_of(self, class_name: str) -> DurableObjectNamespace | None:
        return self._by_class.get(class_name)

    def forget(self, host: ObjectHost) -> None:
        key = (host.class_name, host.id)
        if self._hosts.get(key) is host:
            del self._hosts[key]

    def storage_opened(self, host: ObjectHost) -> None:
        self._open += 1
        if self._open > self.open_objects and self._idle:
            self._relieve()

    def storage_closed(self, host: ObjectHost) -> None:
        self._open -= 1

    def idle_started(self, host: ObjectHost) -> None:
        self._idle[host] = None

    def idle_ended(self, host: ObjectHost) -> None:
        self._idle.pop(host, None)

    def _relieve(self) -> None:
        """Evict the longest-idle objects until the open storage is within its budget."""
        skipped: list[ObjectHost] = []
        while self._open > self.open_objects and self._idle:
            host = next(iter(self._idle))
            del self._idle[host]
            if not host.evict_if_idle():
                skipped.append(host)  # in a start back-off: kept, to be looked at again
        for host in skipped:
            self._idle[host] = None

    def live_hosts(self) -> list[ObjectHost]:
        return list(self._hosts.values())

    def evict_all(self) -> None:
        """Evict every idle object now."""
        for host in self.live_hosts():
            if host.is_idle():
                host.evict()

    # -- alarms -----------------------------------------------------------------------------

    def start(self) -> None:
        """Schedule the alarms stored by earlier runs (once, when the event loop runs)."""
        if self._started:
            return
        self._started = True
        if self.forwarder is not None:
            self.forwarder.start()
        for service in self.services:
            service.start()
        for stored in self.storage.scan_alarms():
            self.alarms.restore(stored)

    def alarm_changed(self, host: ObjectHost, time_ms: int | None) -> None:
        self.alarms.changed(host, time_ms)

    async def run_alarm(self, namespace: DurableObjectNamespace, id: DurableObjectId) -> bool:
        """Run the object's alarm now if one is set; True if it ran. (For tests.)"""
        return await self.alarms.run_now(namespace, id)

    # -- closing ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every open WebSocket (1001, going away) and drop every object."""
        self._closing = True
        self.alarms.close()
        self.drop_objects(1001, "server shutting down")
        if self.forwarder is not None:
            self.forwarder.close()
        for service in self.services:
            await service.aclose()
        await self.storage.aclose()

    def drop_objects(self, code: int, reason: str) -> None:
        """Drop every object now: their sockets close with ``code`` and ``reason``, their
        storage closes (what was committed still goes on to be durable), their claims go."""
        for host in self.live_hosts():
            try:
                host.shutdown(code, reason)
            except Exception:  # one object's failure must not keep the others
                log.exception("dropping %s failed", host.name())
        self._hosts.clear()

    @property
    def ready(self) -> bool:
        """Serving: started, not draining (the server was asked to stop), not closing."""
        return self._started and not self.draining and not self._closing

    def census(self) -> dict[str, dict[tuple[str, ...], int]]:
        """What is live now (for /metrics): ``objects`` by class and lifecycle state,
        ``sockets`` by class and kind (standard, hibernatable), ``open_storage``."""
        objects: dict[tuple[str, ...], int] = {}
        sockets: dict[tuple[str, ...], int] = {}
        for host in self._hosts.values():
            key = (host.class_name, host.state.value)
            objects[key] = objects.get(key, 0) + 1
            for kind, count in (
                ("standard", len(host.sockets)),
                ("hibernatable", len(host.hibernatable)),
            ):
                if count:
                    key = (host.class_name, kind)
                    sockets[key] = sockets.get(key, 0) + count
        return {"objects": objects, "sockets": sockets, "open_storage": {(): self._open}}

    def statistics(self) -> dict[str, Any]:
        return {
            "objects": len(self._hosts),
            "open_storage": self._open,
            "sockets": sum(len(h.sockets) for h in self._hosts.values()),
        }
