"""The loader: a project's config and its Worker module become a running ``Runtime``.

This is the one place that wires the layers together for the mode the server runs in: it
imports the user's module (with ``import workers`` / ``import js`` resolving to opendo's
Cloudflare compatibility), binds the classes the config names, applies pending migrations to
the storage driver, and picks the storage provider, placement and forwarder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import workers
from ..api.objects import DurableObject, WorkerEntrypoint
from ..core.clock import Clock
from ..core.errors import ConfigError
from ..core.migrations import apply as apply_migrations
from ..core.protocols import Forwarder, Placement, Service, StorageProvider
from ..runtime import runtime as engine
from ..storage import Storages
from ..storage.sqlite import MemoryDriver, StorageDriver
from ..workers.js import js
from ..workers.unsupported import install_import_hooks
from .config import Config

__all__ = ["Runtime", "find_worker", "import_main"]


class Runtime(engine.Runtime):
    """Everything one project runs: its Worker, its namespaces and their live objects.

    ::

        runtime = Runtime(worker=Default, bindings={"CHAT": Chat}, vars={"GREETING": "hi"})
        response = await runtime.fetch(Request("http://localhost/lobby"))

    ``storage`` is a driver (``SqliteDriver(directory)``; by default a ``MemoryDriver``).
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
        open_objects: int | None = None,
        storage: StorageDriver | None = None,
        rng: random.Random | None = None,
        labels: Mapping[str, str] | None = None,  # class name -> id label (core.migrations)
        placement: Placement | None = None,
        forwarder: Forwarder | None = None,
        provider: StorageProvider | None = None,
        services: Sequence[Service] = (),
    ) -> None:
        self.storage_driver: StorageDriver = storage if storage is not None else MemoryDriver()
        super().__init__(
            storage=provider if provider is not None else Storages(self.storage_driver),
            worker=worker,
            bindings=bindings,
            vars=vars,
            clock=clock,
            idle_timeout=idle_timeout,
            hibernation_timeout=hibernation_timeout,
            open_objects=open_objects,
            placement=placement,
            forwarder=forwarder,
            rng=rng,
            labels=labels,
            services=services,
        )

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        clock: Clock | None = None,
        storage: StorageDriver | None = None,
        placement: Placement | None = None,
        forwarder: Forwarder | None = None,
        provider: StorageProvider | None = None,
        services: Sequence[Service] = (),
    ) -> Runtime:
        """Import the project's main module, bind its classes as the config says, and apply
        the config's pending migrations to the storage (``storage``: the driver, which for a
        cluster keeps the migration record; ``provider``: where objects' storage comes from,
        when that is not ``storage``)."""
        module = import_main(config.main)
        worker = find_worker(module, config)
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
            vars={**config.vars, **config.worker_secrets},
            clock=clock,
            idle_timeout=config.idle_timeout,
            hibernation_timeout=config.hibernation_timeout,
            open_objects=config.open_objects,
            storage=storage,
            labels=labels,
            placement=placement,
            forwarder=forwarder,
            provider=provider,
            services=services,
        )


def import_main(path: Path) -> ModuleType:
    """Import the project's main module from its file (its folder goes on ``sys.path``).

    ``import workers`` in it finds ``opendo.workers``, the names of Cloudflare's Python
    Workers, and ``import js`` the few JavaScript globals they use (``opendo.workers.js``),
    as the Cloudflare runtime provides both to the Workers it runs; ``pyodide``, unless a
    real one is importable, is opendo's stand-in (``pyodide.ffi``, ``pyodide.http``), and its
    other modules raise ``NotSupportedError``. A ``NotSupportedError`` raised
    while the module loads is reported as a ``NotSupportedInProjectError`` (a
    ``ConfigError``) that starts with the file and line of the project's code that used it.
    """
    root = str(path.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    sys.modules.setdefault("workers", workers)
    sys.modules.setdefault("js", js)  # `from js import WebSocketPair`
    install_import_hooks()
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


def find_worker(module: ModuleType, config: Config) -> type[WorkerEntrypoint]:
    """The Worker entry point of the project's module (as ``main`` names it, or ``Default``,
    or its only ``WorkerEntrypoint`` subclass)."""
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
    return workers.NotSupportedInProjectError(
        f"{config.path}: main: {config.main.name}: a module-level handler (on_fetch) is not "
        "supported by opendo: write a class Default(WorkerEntrypoint) with "
        "async def fetch(self, request) instead (env is self.env, ctx is self.ctx)"
    )
