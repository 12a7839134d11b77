"""Serving a project: ``create_app`` for ASGI servers, and the server process of the CLI
(uvicorn's ``Server`` for sockets, signals and reloading, with opendo's own HTTP protocol)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess, Process
from uvicorn.supervisors.watchfilesreload import WatchFilesReload
from watchfiles import watch

from ..core.clock import Clock
from ..core.errors import ConfigError
from ..core.migrations import MigrationError
from ..core.migrations import apply as apply_migrations
from ..multiprocess.forwarder import ProcessForwarder
from ..multiprocess.placement import LockPlacement
from ..server.admin import AdminOptions
from ..server.asgi import App
from ..server.assets import Assets
from ..server.gateway import Limits
from ..server.http import HttpProtocol
from ..storage.sqlite import SqliteDriver, StorageDriver
from .cluster import (
    ClusterOptions,
    cluster_driver,
    cluster_options,
    cluster_secret,
    make_node,
)
from .config import check_persist_dir, load_config
from .loader import Runtime

__all__ = ["create_app", "serve"]

log = logging.getLogger("opendo")

_ENV_PROJECT = "OPENDO_PROJECT"
_ENV_ENV = "OPENDO_ENV"
_ENV_PERSIST = "OPENDO_PERSIST_TO"
_ENV_LOG_LEVEL = "OPENDO_LOG_LEVEL"
_ENV_LIMITS = "OPENDO_LIMITS"
_ENV_CLUSTER = "OPENDO_CLUSTER"
_ENV_ADMIN = "OPENDO_ADMIN"
_ENV_SECRETS_FROM = "OPENDO_SECRETS_FROM"
_ENV_LOG_FORMAT = "OPENDO_LOG_FORMAT"
_ENV_ACCESS_LOG = "OPENDO_ACCESS_LOG"


def create_app(
    project: str | Path = ".",
    *,
    env: str | None = None,
    persist_to: str | Path | None = None,
    clock: Clock | None = None,
    storage: StorageDriver | None = None,
    limits: Limits | None = None,
    cluster: ClusterOptions | None = None,
    admin: AdminOptions | None = None,
    secrets_from: str = "dev",
) -> App:
    """The ASGI application of the project in ``project`` (a directory or its opendo.toml):
    embedded, or a node of a cluster (``cluster``, or ``[cluster]`` in opendo.toml). With
    ``admin``, the app also serves the admin listener (``/metrics``, ``/healthz``,
    ``/readyz``) while it runs. Secrets come from ``.dev.vars`` (``secrets_from="dev"``) or
    from the environment (``"environ"``: the names ``[secrets] required`` lists).

    ::

        # uvicorn 'myapp:app'
        from opendo import create_app
        app = create_app("path/to/project")
    """
    config = load_config(project, env, secrets_from)
    persist = Path(persist_to) if persist_to is not None else config.root / ".opendo" / "state"
    check_persist_dir(config, persist)
    options = cluster if cluster is not None else cluster_options(config)
    if options is not None:
        # A node of a cluster: PostgreSQL is the truth, this directory only its cache.
        node = make_node(options, cluster_secret(config), persist)
        runtime = Runtime.from_config(
            config,
            clock=clock,
            storage=cluster_driver(options),
            placement=node.placement,
            forwarder=node.forwarder,
            provider=node.storages,
            services=[node],
        )
        node.attach(runtime)
    else:
        driver = storage if storage is not None else SqliteDriver(persist)
        placement, forwarder = None, None
        if isinstance(driver, SqliteDriver):
            # Any process serving this directory may own objects: find them by their locks.
            forwarder = ProcessForwarder(driver.directory)
            placement = LockPlacement(driver, forwarder)
        runtime = Runtime.from_config(
            config, clock=clock, storage=driver, placement=placement, forwarder=forwarder
        )
        if forwarder is not None:
            forwarder.attach(runtime)
    assets = None
    if config.assets is not None:
        assets = Assets(config.assets.directory, config.assets.not_found_handling)
    return App(runtime, assets, limits, admin)


def _limits_from_environ() -> Limits:
    return Limits(**json.loads(os.environ.get(_ENV_LIMITS) or "{}"))


def _admin_from_environ() -> AdminOptions | None:
    fields = json.loads(os.environ.get(_ENV_ADMIN) or "null")
    return None if fields is None else AdminOptions(**fields)


def _cluster_from_environ() -> ClusterOptions | None:
    fields = json.loads(os.environ.get(_ENV_CLUSTER) or "null")
    return None if fields is None else ClusterOptions(**fields)


def _app_from_environ() -> App:
    """The factory uvicorn calls in the serving process (also after every reload)."""
    _setup_logging()
    try:
        return create_app(
            os.environ[_ENV_PROJECT],
            env=os.environ.get(_ENV_ENV) or None,
            persist_to=os.environ.get(_ENV_PERSIST) or None,
            limits=_limits_from_environ(),
            cluster=_cluster_from_environ(),
            admin=_admin_from_environ(),
            secrets_from=os.environ.get(_ENV_SECRETS_FROM) or "dev",
        )
    except (ConfigError, MigrationError) as exc:
        print(f"opendo: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _watched(path: Path) -> bool:
    """The files whose change restarts ``opendo dev``."""
    if any(part in (".opendo", ".venv", "__pycache__", ".git") for part in path.parts):
        return False
    name = path.name
    return name.endswith((".py", ".toml")) or name.startswith(".dev.vars")


class _Reloader(WatchFilesReload):
    """uvicorn's watchfiles reloader, watching before the server starts (so no edit made
    right after "Ready" is missed) and seeing ``.dev.vars`` files."""

    def __init__(self, config: uvicorn.Config, target: Any, sockets: list[socket.socket]) -> None:
        super().__init__(config, target, sockets)
        self.watch_filter = _watched  # type: ignore[assignment]
        self.watcher = watch(
            *self.reload_dirs,
            watch_filter=None,
            stop_event=self.should_exit,
            yield_on_timeout=True,
            rust_timeout=100,
            ignore_permission_denied=True,
        )

    def startup(self) -> None:
        next(self.watcher)  # starts the watcher; returns within rust_timeout
        super().startup()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, announce: bool = True) -> None:
        super().__init__(config)
        self.announce = announce

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not ready from now on (/readyz answers 503), while what is in flight drains.
        runtime = getattr(getattr(self.config, "loaded_app", None), "runtime", None)
        if runtime is not None:
            runtime.draining = True
        super().handle_exit(sig, frame)
        # A signal asked for a clean shutdown: exit 0 afterwards instead of re-raising it.
        self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.announce:
            _announce(self.servers[0].sockets[0])


def _announce(sock: Any) -> None:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"Ready on http://{shown}:{port}", flush=True)


class _Worker(Process):
    """One of N server processes: serves the shared socket, says nothing of being ready."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = _Server(self.config, announce=False)
        return self._server


class _Workers(Multiprocess):
    """N server processes on one socket (``opendo serve --workers N``): uvicorn's supervisor
    (it restarts a worker that dies), announcing "Ready" once every worker serves."""

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            worker = _Worker(self.config, self.sockets)
            worker.start()
            self.processes.append(worker)
        for process in self.processes:
            process.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit)
        if not self.should_exit.is_set():
            _announce(self.sockets[0])


def _setup_logging() -> None:
    """The server's log: to stderr, as text or one JSON object per line; uvicorn's own lines
    in the same format; the access log on unless turned off."""
    from ..core.logs import JsonFormatter, install

    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get(_ENV_LOG_FORMAT) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(os.environ.get(_ENV_LOG_LEVEL, "info").upper())
    access = os.environ.get(_ENV_ACCESS_LOG, "1") == "1"
    logging.getLogger("opendo.access").disabled = not access
    # Identical lines repeated (a full disk fails every write) are rate-limited.
    install(root)


def serve(
    project: Path,
    *,
    host: str,
    port: int,
    env: str | None,
    persist_to: Path,
    reload: bool,
    log_level: str = "info",
    limits: Limits | None = None,
    workers: int = 1,
    cluster: ClusterOptions | None = None,
    admin: AdminOptions | None = None,
    log_format: str = "text",
    access_log: bool = True,
    secrets_from: str = "dev",
) -> None:
    """Run the project's server in the foreground until SIGINT or SIGTERM: one process, or
    ``workers`` processes on one socket (objects live in the one that holds their lock, and
    the others forward to it); in a ``cluster``, each process is a node of it. With
    ``admin``, each process serves an admin listener (``server.admin``)."""
    limits = limits or Limits()
    os.environ[_ENV_LOG_LEVEL] = log_level
    os.environ[_ENV_LOG_FORMAT] = log_format
    os.environ[_ENV_ACCESS_LOG] = "1" if access_log else "0"
    if admin is not None and workers > 1:
        admin = dataclasses.replace(admin, ports=workers)
    os.environ[_ENV_ADMIN] = json.dumps(None if admin is None else admin.to_json())
    os.environ[_ENV_LIMITS] = json.dumps(dataclasses.asdict(limits))
    os.environ[_ENV_CLUSTER] = json.dumps(None if cluster is None else cluster.to_json())
    os.environ[_ENV_SECRETS_FROM] = secrets_from
    config = load_config(project, env, secrets_from)  # fail early, with a clear message
    os.environ[_ENV_PROJECT] = str(config.path)
    os.environ[_ENV_ENV] = env or ""
    os.environ[_ENV_PERSIST] = str(persist_to)
    persist_to.mkdir(parents=True, exist_ok=True)
    uv_config = uvicorn.Config(
        "opendo.project.serve:_app_from_environ",
        factory=True,
        host=host,
        port=port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=HttpProtocol,  # opendo's own, WebSocket upgrades included
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(limits.shutdown_timeout)),
        access_log=False,  # opendo's own (server.gateway)
        proxy_headers=False,
        server_header=False,
        log_level="warning",
        log_config=None,  # uvicorn's lines go to opendo's handler, in its format
        reload=reload,
        reload_dirs=[str(config.root)] if reload else None,
    )
    server = _Server(uv_config)
    if reload:
        sock = uv_config.bind_socket()
        _Reloader(uv_config, target=server.run, sockets=[sock]).run()
    elif workers > 1:
        _setup_logging()
        uv_config.workers = workers
        # Pending migrations move data: once, here, before any worker opens an object.
        driver = SqliteDriver(persist_to) if cluster is None else cluster_driver(cluster)
        apply_migrations(driver, config.migrations)
        _Workers(uv_config, sockets=[uv_config.bind_socket()]).run()
    else:
        _setup_logging()
        server.run()
