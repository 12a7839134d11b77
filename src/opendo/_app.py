"""The runtime: bindings, the Worker entry point and the object hosts of one project."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from ._api import DurableObject, Env, ExecutionContext, WorkerEntrypoint
from ._clock import Clock, LoopClock
from ._config import Config, ConfigError
from ._http import Request, Response
from ._ids import DurableObjectId
from ._namespace import DurableObjectNamespace
from ._runtime import ObjectHost
from ._sqlite import MemoryDriver, StorageDriver
from ._storage import Storage
from ._websocket import ReadyState

__all__ = ["Runtime"]

log = logging.getLogger("opendo")


class Runtime:
    """Everything one project runs: its Worker, its namespaces and their live objects.

    ::

        runtime = Runtime(worker=Default, bindings={"CHAT": Chat}, vars={"GREETING": "hi"})
        response = await runtime.fetch(Request("http://localhost/lobby"))
    """

    def __init__(
        self,
        *,
        worker: type[WorkerEntrypoint] | None = None,
        bindings: Mapping[str, type[DurableObject]] | None = None,
        vars: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        idle_timeout: float = 70.0,
        storage: StorageDriver | None = None,
    ) -> None:
        self.worker = worker
        self.storage_driver: StorageDriver = storage if storage is not None else MemoryDriver()
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.idle_timeout = idle_timeout
        self._hosts: dict[tuple[str, DurableObjectId], ObjectHost] = {}
        namespaces: dict[str, DurableObjectNamespace] = {}
        for binding, cls in (bindings or {}).items():
            if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
                raise TypeError(f"binding {binding!r}: {cls!r} is not a DurableObject subclass")
            namespaces[binding] = DurableObjectNamespace(self, binding, cls)
        self.namespaces = namespaces
        self.env = Env({**(vars or {}), **namespaces})

    @classmethod
    def from_config(
        cls, config: Config, *, clock: Clock | None = None, storage: StorageDriver | None = None
    ) -> Runtime:
        """Import the project's main module and bind its classes as the config says."""
        module = import_main(config.main)
        worker = _find_worker(module, config)
        bindings: dict[str, type[DurableObject]] = {}
        for i, binding in enumerate(config.bindings):
            obj = getattr(module, binding.class_name, None)
            key = f"durable_objects.bindings[{i}].class_name"
            if obj is None:
                raise ConfigError(
                    f"{config.path}: {key}: {config.main.name} defines no class "
                    f"{binding.class_name!r}"
                )
            if not (isinstance(obj, type) and issubclass(obj, DurableObject)):
                raise ConfigError(
                    f"{config.path}: {key}: {binding.class_name!r} must be a subclass of "
                    "opendo.DurableObject"
                )
            bindings[binding.name] = obj
        return cls(
            worker=worker,
            bindings=bindings,
            vars={**config.vars, **config.secrets},
            clock=clock,
            idle_timeout=config.idle_timeout,
            storage=storage,
        )

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

    # -- hosts ----------------------------------------------------------------------------

    def host(self, namespace: DurableObjectNamespace, id: DurableObjectId) -> ObjectHost:
        key = (namespace.object_class.__name__, id)
        host = self._hosts.get(key)
        if host is None:
            host = ObjectHost(
                namespace,
                id,
                clock=self.clock,
                idle_timeout=self.idle_timeout,
                on_evict=self._forget,
                open_storage=self._open_storage,
            )
            self._hosts[key] = host
        return host

    def _open_storage(self, host: ObjectHost) -> Storage:
        db = self.storage_driver.open(host.namespace.object_class.__name__, host.id)
        return Storage(host, db)

    def _forget(self, host: ObjectHost) -> None:
        key = (host.namespace.object_class.__name__, host.id)
        if self._hosts.get(key) is host:
            del self._hosts[key]

    def live_hosts(self) -> list[ObjectHost]:
        return list(self._hosts.values())

    def evict_all(self) -> None:
        """Evict every idle object now."""
        for host in self.live_hosts():
            if host.is_idle():
                host.evict()

    async def aclose(self) -> None:
        """Close every open WebSocket (1001, going away) and drop every object."""
        for host in self.live_hosts():
            for ws in list(host._sockets):
                if ws.ready_state is ReadyState.OPEN:
                    ws._shutdown(1001, "server shutting down")
            host._cancel_idle()
            host._close_storage()
        self._hosts.clear()

    def statistics(self) -> dict[str, Any]:
        return {
            "objects": len(self._hosts),
            "sockets": sum(len(h._sockets) for h in self._hosts.values()),
        }


def import_main(path: Path) -> ModuleType:
    """Import the project's main module from its file (its folder goes on ``sys.path``)."""
    root = str(path.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    name = "_opendo_main_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _find_worker(module: ModuleType, config: Config) -> type[WorkerEntrypoint]:
    if config.entrypoint is not None:
        obj = getattr(module, config.entrypoint, None)
        if not (isinstance(obj, type) and issubclass(obj, WorkerEntrypoint)):
            raise ConfigError(
                f"{config.path}: main: {config.main.name} defines no WorkerEntrypoint "
                f"subclass named {config.entrypoint!r}"
            )
        return obj
    default = getattr(module, "Default", None)
    if isinstance(default, type) and issubclass(default, WorkerEntrypoint):
        return default
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, WorkerEntrypoint)
        and obj is not WorkerEntrypoint
        and obj.__module__ == module.__name__
    ]
    if len(found) == 1:
        return found[0]
    what = "no" if not found else f"{len(found)}"
    raise ConfigError(
        f"{config.path}: main: {config.main.name} defines {what} WorkerEntrypoint "
        'subclasses; name the entry point with main = "file.py:ClassName" or call it Default'
    )
