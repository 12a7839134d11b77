"""The runtime: bindings, the Worker entry point and the object hosts of one project."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import logging
import random
import sys
import traceback
from collections.abc import Hashable, Mapping
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from ..api.http import Request, Response
from ..api.objects import DurableObject, Env, ExecutionContext, WorkerEntrypoint
from ..api.websocket import ReadyState
from ..core.alarms import MAX_RETRIES, AlarmInfo, AlarmScheduler, retry_delay
from ..core.clock import Clock, LoopClock
from ..core.errors import StorageError
from ..core.ids import DurableObjectId
from ..core.migrations import apply as apply_migrations
from ..project.config import Config, ConfigError
from ..storage.api import Storage
from ..storage.sqlite import MemoryDriver, StorageDriver
from .host import ObjectHost
from .stubs import DurableObjectNamespace

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
        hibernation_timeout: float = 10.0,
        storage: StorageDriver | None = None,
        rng: random.Random | None = None,
        labels: Mapping[str, str] | None = None,  # class name -> id label (see _migrations)
    ) -> None:
        self.worker = worker
        self.rng = rng if rng is not None else random.Random()
        self.storage_driver: StorageDriver = storage if storage is not None else MemoryDriver()
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.idle_timeout = idle_timeout
        self.hibernation_timeout = hibernation_timeout
        self._hosts: dict[tuple[str, DurableObjectId], ObjectHost] = {}
        namespaces: dict[str, DurableObjectNamespace] = {}
        for binding, cls in (bindings or {}).items():
            if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
                raise TypeError(f"binding {binding!r}: {cls!r} is not a DurableObject subclass")
            label = (labels or {}).get(cls.__name__, cls.__name__)
            namespaces[binding] = DurableObjectNamespace(self, binding, cls, label)
        self.namespaces = namespaces
        self._by_class = {ns.object_class.__name__: ns for ns in namespaces.values()}
        self.env = Env({**(vars or {}), **namespaces})
        self.alarms = AlarmScheduler(self.clock, self._alarm_due)
        self._alarm_runs: dict[Hashable, asyncio.Task[None]] = {}

    @classmethod
    def from_config(
        cls, config: Config, *, clock: Clock | None = None, storage: StorageDriver | None = None
    ) -> Runtime:
        """Import the project's main module, bind its classes as the config says, and apply
        the config's pending migrations to the storage."""
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
        if storage is None:
            storage = MemoryDriver()
        labels = apply_migrations(storage, config.migrations)
        return cls(
            worker=worker,
            bindings=bindings,
            vars={**config.vars, **config.secrets},
            clock=clock,
            idle_timeout=config.idle_timeout,
            hibernation_timeout=config.hibernation_timeout,
            storage=storage,
            labels=labels,
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
                on_alarm=self._alarm_changed,
                hibernation_timeout=self.hibernation_timeout,
            )
            self._hosts[key] = host
        return host

    def _open_storage(self, host: ObjectHost) -> Storage:
        db = self.storage_driver.open(host.namespace.object_class.__name__, host.id)
        return Storage(host, db)

    # -- alarms -----------------------------------------------------------------------------

    def start(self) -> None:
        """Schedule the alarms stored by earlier runs (call once the event loop runs)."""
        for stored in self.storage_driver.scan_alarms():
            namespace = self._by_class.get(stored.class_name)
            if namespace is None:
                log.warning(
                    "an alarm of %s(%s) is stored, but no binding names that class",
                    stored.class_name,
                    stored.id,
                )
                continue
            id = namespace.id_from_string(stored.id)
            id.name = stored.name
            self.alarms.schedule((stored.class_name, id), stored.time_ms)

    def _alarm_changed(self, host: ObjectHost, time_ms: int | None) -> None:
        key = (host.namespace.object_class.__name__, host.id)
        if time_ms is None:
            self.alarms.cancel(key)
        else:
            self.alarms.schedule(key, time_ms)

    def _alarm_due(self, key: Hashable) -> None:
        if key in self._alarm_runs:
            return  # the run in progress reads the alarm again before it ends
        task = asyncio.ensure_future(self._run_alarm(key))  # type: ignore[arg-type]
        self._alarm_runs[key] = task

    async def _run_alarm(self, key: tuple[str, DurableObjectId]) -> None:
        class_name, id = key
        namespace = self._by_class[class_name]
        retry = 0
        try:
            while True:
                host = self.host(namespace, id)
                try:
                    storage = host.storage
                except StorageError as exc:
                    log.error("alarm of %s(%s) cannot run: %s", class_name, id, exc)
                    return
                assert isinstance(storage, Storage)
                due = storage.alarm_now()
                if due is None:
                    host._maybe_idle()
                    return
                if due > self.clock.time() * 1000:
                    self.alarms.schedule(key, due)
                    host._maybe_idle()
                    return
                try:
                    await host.call(
                        partial(_invoke_alarm, host=host, info=AlarmInfo(retry), due=due)
                    )
                except Exception as exc:
                    log.warning(
                        "alarm of %s(%s) failed (attempt %d): %r", class_name, id, retry + 1, exc
                    )
                    retry += 1
                    if retry > MAX_RETRIES:
                        log.error(
                            "alarm of %s(%s) given up after %d retries", class_name, id, MAX_RETRIES
                        )
                        await self._give_up_alarm(self.host(namespace, id), due)
                        return
                    await self._sleep(retry_delay(retry, self.rng))
                    continue
                return
        finally:
            del self._alarm_runs[key]
            # An alarm set meanwhile (its timer found this run busy) is scheduled again.
            live = self._hosts.get(key)
            kept = live._storage if live is not None else None
            if isinstance(kept, Storage) and not kept.closed:
                if (later := kept.alarm_now()) is not None:
                    self.alarms.schedule(key, later)

    async def _give_up_alarm(self, host: ObjectHost, due: int) -> None:
        """Delete the alarm that was due: as an event of a live instance (so it falls between
        its other events), or at once when there is none, without constructing one (which
        may be what keeps failing)."""
        if host.instance is None:
            _give_up_alarm(None, host, due)
            host._maybe_idle()
            return
        try:
            await host.call(partial(_give_up_alarm, host=host, due=due))
        except Exception as exc:
            log.error("alarm of %s could not be deleted: %r", host._name(), exc)

    async def _sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        handle = self.clock.call_at(self.clock.monotonic() + seconds, wake)
        try:
            await future
        finally:
            handle.cancel()

    async def run_alarm(self, namespace: DurableObjectNamespace, id: DurableObjectId) -> bool:
        """Run the object's alarm now if one is set; True if it ran. (For tests.)"""
        key = (namespace.object_class.__name__, id)
        host = self.host(namespace, id)
        storage = host.storage
        assert isinstance(storage, Storage)
        due = storage.alarm_now()
        if due is None:
            host._maybe_idle()
            return False
        self.alarms.cancel(key)
        if due > self.clock.time() * 1000:
            storage.alarm_run_now(round(self.clock.time() * 1000))
        task = self._alarm_runs.get(key)
        if task is None:
            task = self._alarm_runs[key] = asyncio.ensure_future(self._run_alarm(key))
        await task
        return True

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
        self.alarms.close()
        for task in list(self._alarm_runs.values()):
            task.cancel()
        for host in self.live_hosts():
            for ws in [*host._sockets, *host._hibernatable]:
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


async def _invoke_alarm(
    instance: DurableObject, host: ObjectHost, info: AlarmInfo, due: int
) -> None:
    """The handler and the alarm's end, as one event: once it returns, the alarm is gone
    (unless it set a new one) before any other event can ask ``get_alarm()``. While it
    runs, ``get_alarm()`` says None, unless it set a new alarm."""
    storage = host.storage
    assert isinstance(storage, Storage)
    storage.alarm_started()
    ran = False
    try:
        handler = getattr(instance, "alarm", None)
        if handler is None:
            log.error(
                "%s has an alarm set but no alarm() handler; the alarm is dropped",
                type(instance).__name__,
            )
        else:
            await handler(info)
        ran = True
    finally:
        storage.alarm_finished(due, ran=ran)


def _give_up_alarm(instance: DurableObject | None, host: ObjectHost, due: int) -> None:
    storage = host.storage
    assert isinstance(storage, Storage)
    storage.alarm_started()
    storage.alarm_finished(due, ran=True)


def import_main(path: Path) -> ModuleType:
    """Import the project's main module from its file (its folder goes on ``sys.path``).

    ``import workers`` in it finds ``opendo.workers``, the names of Cloudflare's Python
    Workers, and ``import js`` the few JavaScript globals they use (``opendo.workers.js``),
    as the Cloudflare runtime provides both to the Workers it runs; ``import pyodide``, unless
    a real one is importable, raises ``NotSupportedError``. A ``NotSupportedError`` raised
    while the module loads is reported as a ``NotSupportedInProjectError`` (a
    ``ConfigError``) that starts with the file and line of the project's code that used it.
    """
    from .. import workers

    root = str(path.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    sys.modules.setdefault("workers", workers)
    sys.modules.setdefault("js", workers.js)  # `from js import WebSocketPair`
    workers._install_unsupported_modules()
    name = "_opendo_main_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except workers.NotSupportedError as exc:
        del sys.modules[name]
        if isinstance(exc, ConfigError):
            raise
        raise workers.NotSupportedInProjectError(f"{_user_line(exc, path)}: {exc}") from exc
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _user_line(exc: BaseException, main: Path) -> str:
    """``file:line: source`` of the innermost frame of ``exc`` outside opendo and importlib."""
    package = Path(__file__).parent.parent  # opendo itself
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith("<") or Path(frame.filename).is_relative_to(package):
            continue
        return f"{frame.filename}:{frame.lineno}" + (f": {frame.line}" if frame.line else "")
    return str(main)


def _find_worker(module: ModuleType, config: Config) -> type[WorkerEntrypoint]:
    if config.entrypoint is not None:
        obj = getattr(module, config.entrypoint, None)
        if not (isinstance(obj, type) and issubclass(obj, WorkerEntrypoint)):
            if config.entrypoint == "on_fetch" and callable(obj):
                raise _module_handler(config)
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
    if not found and callable(getattr(module, "on_fetch", None)):
        raise _module_handler(config)
    what = "no" if not found else f"{len(found)}"
    raise ConfigError(
        f"{config.path}: main: {config.main.name} defines {what} WorkerEntrypoint "
        'subclasses; name the entry point with main = "file.py:ClassName" or call it Default'
    )


def _module_handler(config: Config) -> ConfigError:
    """Cloudflare's older style, ``async def on_fetch(request, env)`` in the module."""
    from ..workers import NotSupportedInProjectError

    return NotSupportedInProjectError(
        f"{config.path}: main: {config.main.name}: a module-level handler (on_fetch) is not "
        "supported by opendo: write a class Default(WorkerEntrypoint) with "
        "async def fetch(self, request) instead (env is self.env, ctx is self.ctx)"
    )
