"""Testing Durable Objects with pytest: the ``opendo`` fixture.

Installing opendo registers this module as a pytest plugin. It defines one fixture,
``opendo``, and one hook, for async tests that use it: no autouse fixtures, no options.
``opendo(...)`` builds an in-process project for the current test — its Worker, its objects,
its storage in a fresh temporary directory (alarms included), a fake clock — and gives it
back as a ``Project``, whose methods are ``async``: use them from ``async def`` tests. Such a
test runs on an event loop of its own (the hook), unless pytest-asyncio takes it (in its
``auto`` mode, or marked ``@pytest.mark.asyncio``; anyio works too, marked ``anyio``) — so it
runs whether pytest-asyncio is installed or not, however it is configured. Nothing listens
on a socket.

=========================================  =============================================
``project = opendo("examples/chat")``      a project from its ``opendo.toml`` (a path
                                           relative to pytest's rootdir, or absolute;
                                           ``opendo()`` alone reads the rootdir's);
                                           ``vars=``, ``env=`` (an ``[env.NAME]``),
                                           ``idle_timeout=``, ``hibernation_timeout=``
``opendo(bindings={"C": C}, worker=W)``    a project from classes, no file needed
``await project.fetch("/lobby")``          an HTTP request through the Worker (assets
                                           first, as the server does) -> ``Response``
``await project.websocket("/lobby")``      a WebSocket through the Worker ->
                                           ``WebSocketClient`` (also ``async with``)
``project.env.CHAT.get_by_name("x")``      a stub: RPC and ``fetch`` as in a Worker
``await project.run_in_durable_object(``   ``fn(instance, ctx)`` as an event inside the
``stub, fn)``                              object (gates apply); returns what it returns
``await project.run_durable_object_``      run the object's alarm now; False if none set
``alarm(stub)``
``await project.list_durable_object_``     ids of the objects that are live or have
``ids("CHAT")``                            something stored, with their names
``await project.evict(stub)``              drop the instance (hibernatable WebSockets
``await project.evict_all()``              stay connected); the next event rebuilds it
``await project.advance(seconds)``         move the fake clock: alarms due by then run,
                                           idle objects are evicted
=========================================  =============================================

Each ``opendo(...)`` call makes a separate runtime with its own storage directory under the
test's ``tmp_path`` (``persist_to=`` shares one, to restart a project within a test), and
imports the project's main module afresh, so module-level state does not leak between
tests either. Everything is closed when the test ends.

The fake clock (``project.clock``, an ``opendo.FakeClock``) starts at the current whole
second of real time and stands still until ``advance()`` moves it. An alarm set for a time
computed from it (``project.clock.time() * 1000 + 60_000``) runs exactly when ``advance()``
reaches it; one an object computes from ``time.time()`` lands up to a second later on the
fake clock (the real clock has moved on a little), so advance a second past it.

Errors are not turned into 500s as the server does: an exception in the Worker reaches
``fetch()``'s caller, and one in an object reaches the caller of the stub or of
``run_in_durable_object`` (with its type and message).

Worked example: the chat's ``Chat`` object (``examples/chat``)::

    # tests/test_chat.py  (pytest-asyncio, asyncio_mode = "auto")
    import pytest


    @pytest.fixture
    def chat(opendo):
        # The project of examples/chat/opendo.toml, with empty storage for this test.
        return opendo("examples/chat")


    async def test_a_room_greets_broadcasts_and_remembers(chat):
        ada = await chat.websocket("/lobby")
        assert await ada.receive_json() == {"id": 1}  # the tutorial's greeting
        assert await ada.receive_json() == {"type": "history", "messages": []}
        assert await ada.receive_json() == {
            "type": "presence", "users": [{"id": 1, "name": None}], "count": 1
        }

        bob = await chat.websocket("/lobby")
        assert await bob.receive_json() == {"id": 2}
        assert await ada.receive_json() == {"type": "join", "user": {"id": 2, "name": None}}
        bob.drain()  # his history and presence frames

        ada.send_json({"text": "hello"})
        for ws in (ada, bob):
            frame = await ws.receive_json()
            assert (frame["from"], frame["text"]) == (1, "hello")

        # Inside the object: its SQL storage, as an event of its own.
        lobby = chat.env.CHAT.get_by_name("lobby")

        def count(room, ctx):
            return ctx.storage.sql.exec("SELECT count(*) AS n FROM messages").one()["n"]

        assert await chat.run_in_durable_object(lobby, count) == 1

        # Out of memory, but both sockets stay connected; the next message rebuilds the room.
        assert await chat.evict(lobby)
        bob.send_json({"text": "still here?"})
        assert (await ada.receive_json())["text"] == "still here?"

        assert [id.name for id in await chat.list_durable_object_ids("CHAT")] == ["lobby"]


    async def test_every_test_starts_with_empty_storage(chat):
        ws = await chat.websocket("/lobby")
        assert await ws.receive_json() == {"id": 1}
        assert await chat.list_durable_object_ids("CHAT") == [chat.env.CHAT.id_from_name("lobby")]

Alarms, with classes given directly::

    # tests/test_reminder.py
    import time

    from opendo import DurableObject


    class Reminder(DurableObject):
        async def remind_in(self, seconds):
            await self.ctx.storage.set_alarm(time.time() * 1000 + seconds * 1000)

        async def alarm(self, info):
            await self.ctx.storage.put("reminded", True)


    async def test_the_reminder_fires(opendo):
        project = opendo(bindings={"REMINDER": Reminder})
        stub = project.env.REMINDER.get_by_name("r")
        await stub.remind_in(60)
        await project.advance(59)
        assert await project.run_in_durable_object(stub, reminded) is None
        await project.advance(3)  # a second past its time; its handler has run by now
        assert await project.run_in_durable_object(stub, reminded) is True
        assert await project.run_durable_object_alarm(stub) is False  # none left


    def reminded(instance, ctx):
        return ctx.storage.kv.get("reminded")
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect
import json
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast, overload
from urllib.parse import urlsplit, urlunsplit

import pytest

from ..api.http import Headers, Request, Response
from ..api.objects import DurableObject, Env, WorkerEntrypoint
from ..api.websocket import CloseEvent, MessageEvent, ReadyState, WebSocket
from ..core.clock import FakeClock
from ..core.events import Call
from ..core.ids import DurableObjectId
from ..core.lifecycle import Lifecycle
from ..project.config import load_config
from ..project.loader import Runtime
from ..runtime.host import ObjectHost
from ..runtime.state import DurableObjectState
from ..runtime.stubs import DurableObjectNamespace, DurableObjectStub
from ..server.assets import Assets
from ..server.gateway import asset_response
from ..storage.sqlite import SqliteDriver

__all__ = [
    "Project",
    "ProjectFactory",
    "WebSocketClient",
    "WebSocketClosed",
    "WebSocketRejected",
    "opendo",
]

R = TypeVar("R")
HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None

BASE_URL = "http://localhost"
RECEIVE_TIMEOUT = 5.0  # seconds a WebSocketClient waits for a message
SETTLE_TIMEOUT = 10.0  # seconds advance() waits for the alarm handlers it started
EVICT_TIMEOUT = 5.0  # seconds evict() waits for an object to finish what it is doing


# -- the fixture ----------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """An ``async def`` test that uses the ``opendo`` fixture runs on an event loop of its
    own, unless an asyncio plugin takes it: pytest-asyncio one it marks ``asyncio`` (in its
    ``auto`` mode, every one), anyio one marked ``anyio``. So such a test runs whether
    pytest-asyncio is installed or not, and however it is configured."""
    test = pyfuncitem.obj
    if (
        not inspect.iscoroutinefunction(test)
        or "opendo" not in pyfuncitem.fixturenames
        or pyfuncitem.get_closest_marker("asyncio") is not None
        or pyfuncitem.get_closest_marker("anyio") is not None
    ):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(test(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


@pytest.fixture
def opendo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProjectFactory]:
    """Build in-process opendo projects for this test: ``project = opendo("path")`` (an
    opendo.toml, or its directory, relative to the rootdir) or ``opendo(bindings={...},
    worker=...)``. Storage and alarms live in the test's tmp_path; a fake clock drives time;
    all is closed after the test. See ``opendo.testing``."""
    factory = ProjectFactory(request.config.rootpath, tmp_path)
    try:
        yield factory
    finally:
        factory.close()


class ProjectFactory:
    """What the ``opendo`` fixture gives: call it to build a ``Project``."""

    def __init__(self, rootdir: Path, tmp_path: Path) -> None:
        self.rootdir = rootdir
        self.tmp_path = tmp_path
        self.projects: list[Project] = []

    def __call__(
        self,
        project: str | os.PathLike[str] | None = None,
        *,
        bindings: Mapping[str, type[DurableObject]] | None = None,
        worker: type[WorkerEntrypoint] | None = None,
        vars: Mapping[str, Any] | None = None,
        env: str | None = None,
        clock: FakeClock | None = None,
        persist_to: str | os.PathLike[str] | None = None,
        idle_timeout: float | None = None,
        hibernation_timeout: float | None = None,
    ) -> Project:
        """A new project: from ``project`` (an opendo.toml or its directory; by default the
        rootdir's), or from ``bindings`` and ``worker`` when given instead.

        ``vars`` are added to (and override) the configured vars and secrets; ``env`` selects
        an ``[env.NAME]``; ``persist_to`` is the storage directory (by default a new one under
        the test's ``tmp_path``, as a relative one is: give two projects the same one to
        restart a project); ``clock`` replaces the ``FakeClock``.
        """
        if project is not None and (bindings is not None or worker is not None):
            raise TypeError("give opendo() a project path or classes (bindings=, worker=)")
        if env is not None and project is None and (bindings is not None or worker is not None):
            raise TypeError("env= selects an [env.NAME] of an opendo.toml; classes have none")
        if clock is None:
            # A whole second, so that times computed from it are exact in milliseconds.
            clock = FakeClock(epoch=float(int(time.time())))
        if persist_to is None:
            directory = self.tmp_path / f"opendo-state-{len(self.projects)}"
        else:
            directory = Path(persist_to)
            if not directory.is_absolute():
                directory = self.tmp_path / directory
        storage = SqliteDriver(directory)
        assets: Assets | None = None
        runtime: _TestRuntime
        if bindings is None and worker is None:
            location = Path(project) if project is not None else self.rootdir
            if not location.is_absolute():
                location = self.rootdir / location
            config = load_config(location, env)
            changes: dict[str, Any] = {}
            if vars:
                changes["vars"] = {**config.vars, **vars}
                changes["secrets"] = {k: v for k, v in config.secrets.items() if k not in vars}
            if idle_timeout is not None:
                changes["idle_timeout"] = float(idle_timeout)
            if hibernation_timeout is not None:
                changes["hibernation_timeout"] = float(hibernation_timeout)
            config = dataclasses.replace(config, **changes)
            runtime = cast(
                _TestRuntime, _TestRuntime.from_config(config, clock=clock, storage=storage)
            )
            if config.assets is not None:
                assets = Assets(config.assets.directory, config.assets.not_found_handling)
        else:
            runtime = _TestRuntime(
                worker=worker,
                bindings=bindings,
                vars=vars,
                clock=clock,
                storage=storage,
                idle_timeout=70.0 if idle_timeout is None else float(idle_timeout),
                hibernation_timeout=(
                    10.0 if hibernation_timeout is None else float(hibernation_timeout)
                ),
            )
        runtime.rng = random.Random(0)  # retry delays of failed alarms: the same every run
        runtime.start()
        built = Project(runtime, clock, storage, assets)
        self.projects.append(built)
        return built

    def close(self) -> None:
        """Close every project built (done after the test)."""
        errors: list[BaseException] = []
        for project in reversed(self.projects):
            try:
                project._close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


class _TestRuntime(Runtime):
    """A Runtime whose alarm runs ``advance()`` can wait for (those waiting on the fake clock
    for a retry excepted)."""

    @property
    def on_clock(self) -> set[asyncio.Task[Any]]:
        return self.alarms.sleeping

    @property
    def alarm_runs(self) -> list[asyncio.Task[Any]]:
        return list(self.alarms.runs.values())


# -- the project ------------------------------------------------------------------------------


class Project:
    """One in-process opendo project, built by the ``opendo`` fixture.

    ``runtime`` is the ``opendo.Runtime``; ``env`` its bindings and vars; ``clock`` its
    ``FakeClock``; ``storage`` its ``SqliteDriver`` (``storage.directory`` holds the files).
    """

    def __init__(
        self, runtime: _TestRuntime, clock: FakeClock, storage: SqliteDriver, assets: Assets | None
    ) -> None:
        self.runtime: Runtime = runtime
        self._runtime = runtime
        self.env: Env = runtime.env
        self.clock = clock
        self.storage = storage
        self.assets = assets
        self._closed = False

    # -- requests ---------------------------------------------------------------------------

    async def fetch(
        self,
        request: Request | str,
        *,
        method: str = "GET",
        headers: HeadersInit = None,
        body: str | bytes | None = None,
    ) -> Response:
        """Send a request as the server would: a static asset if one matches (GET and HEAD),
        else to the Worker. ``request`` is a ``Request`` or a url (``"/path"`` is
        ``http://localhost/path``); exceptions of the Worker are raised here."""
        if isinstance(request, str):
            request = Request(
                self._url(request), method=method, headers=_with_host(headers, request), body=body
            )
        elif not isinstance(request, Request):
            raise TypeError(f"fetch() takes a Request or a url str, got {type(request).__name__}")
        if self.assets is not None and request.method in ("GET", "HEAD"):
            asset = self.assets.match(urlsplit(request.url).path or "/", request.headers)
            if asset is not None:
                return await asset_response(asset, request)
        return await self.runtime.fetch(request)

    def websocket(self, url: str, *, headers: HeadersInit = None) -> _Connecting:
        """Open a WebSocket through the Worker: ``ws = await project.websocket("/room")``, or
        ``async with project.websocket("/room") as ws:`` (closed with 1000 at the end).
        Raises ``WebSocketRejected`` when the Worker answers anything but 101."""
        return _Connecting(self, url, headers)

    async def _connect(self, url: str, headers: HeadersInit) -> WebSocketClient:
        request_headers = Headers(_with_host(headers, url))
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        for name, value in (
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", key),
        ):
            if name not in request_headers:
                request_headers.set(name, value)
        request = Request(self._url(url), method="GET", headers=request_headers)
        response = await self.runtime.fetch(request)
        if response.status != 101 or response.web_socket is None:
            raise WebSocketRejected(response)
        return WebSocketClient(response)

    @staticmethod
    def _url(url: str) -> str:
        if url.startswith("/"):
            return BASE_URL + url
        parts = urlsplit(url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
        return urlunsplit(parts._replace(scheme=scheme)) if scheme else url

    # -- inside objects -----------------------------------------------------------------------

    @overload
    async def run_in_durable_object(
        self, stub: DurableObjectStub, fn: Callable[[Any, DurableObjectState], Awaitable[R]]
    ) -> R: ...

    @overload
    async def run_in_durable_object(
        self, stub: DurableObjectStub, fn: Callable[[Any, DurableObjectState], R]
    ) -> R: ...

    async def run_in_durable_object(
        self, stub: DurableObjectStub, fn: Callable[[Any, DurableObjectState], Any]
    ) -> Any:
        """Run ``fn(instance, ctx)`` inside the object (constructing it if needed), as one of
        its events: through its input gate, and its result held until the writes made before
        it are durable. ``fn`` may be a plain or an ``async`` function."""
        host = self._host(stub)

        def call(instance: DurableObject) -> Any:
            ctx = host.ctx
            assert ctx is not None
            return fn(instance, ctx)

        return await host.call(Call(call))

    async def run_durable_object_alarm(self, stub: DurableObjectStub) -> bool:
        """Run the object's alarm now, even if it is not due yet; False if none is set."""
        return await self.runtime.run_alarm(self._check(stub), stub.id)

    async def list_durable_object_ids(
        self, namespace: DurableObjectNamespace | str
    ) -> list[DurableObjectId]:
        """The ids of the namespace's objects that are live (constructed, or hibernating with
        WebSockets) or have something stored (a key, a table or an alarm), with their names;
        sorted by name, then unnamed ones by id."""
        ns = self._namespace(namespace)
        found: dict[str, DurableObjectId] = {}
        for host in self.runtime.live_hosts():
            if host.namespace is ns and host.state in (Lifecycle.ACTIVE, Lifecycle.HIBERNATED):
                found[str(host.id)] = host.id
        for stored in self.storage.objects(ns.object_class.__name__):
            if stored.id in found:
                continue
            name = stored.name
            try:
                id = ns.id_from_name(name) if name is not None else ns.id_from_string(stored.id)
            except ValueError:
                continue  # not an id of this namespace
            if str(id) == stored.id:
                found[stored.id] = id
        return sorted(found.values(), key=lambda id: (id.name is None, id.name or "", str(id)))

    # -- eviction -------------------------------------------------------------------------------

    async def evict(self, stub: DurableObjectStub, *, within: float = EVICT_TIMEOUT) -> bool:
        """Evict the object from memory once it is idle (waiting at most ``within`` seconds
        for what it is doing). Hibernatable WebSockets stay connected; the next event builds
        a new instance from storage. True if an instance was dropped, False if none was live.

        An object with an open standard WebSocket (``ws.accept()``) cannot be evicted: that
        raises ``RuntimeError``."""
        host = self._live_host(stub)
        if host is None:
            return False
        if host.sockets:
            raise RuntimeError(
                f"{stub!r} has {len(host.sockets)} open standard WebSocket(s) (ws.accept()); "
                "an object is evicted only without them (ctx.accept_websocket ones may stay)"
            )
        await self._until_idle([host], within)
        live = host.instance is not None
        if host.state is not Lifecycle.EVICTED:
            host.evict()
        return live

    async def evict_all(self, *, within: float = EVICT_TIMEOUT) -> int:
        """Evict every live object once idle, except those with an open standard WebSocket;
        hibernatable WebSockets stay connected. Returns how many instances were dropped."""
        hosts = [h for h in self.runtime.live_hosts() if not h.sockets]
        await self._until_idle(hosts, within)
        dropped = 0
        for host in hosts:
            if host.state is Lifecycle.EVICTED or host.sockets:
                continue
            dropped += host.instance is not None
            host.evict()
        return dropped

    async def _until_idle(self, hosts: list[ObjectHost], within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        await asyncio.sleep(0)
        while busy := [h for h in hosts if h.state is not Lifecycle.EVICTED and not h.is_idle()]:
            if loop.time() > deadline:
                raise TimeoutError(
                    f"{busy[0].namespace.object_class.__name__}({busy[0].id}) was still busy "
                    f"after {within:g} s: {busy[0].statistics()}"
                )
            await asyncio.sleep(0.001)

    # -- time -------------------------------------------------------------------------------------

    async def advance(self, seconds: float) -> None:
        """Move the fake clock forward: alarms due by then run (``advance`` returns once their
        handlers are done, or wait for a retry), idle objects are evicted or hibernate."""
        self.clock.advance(seconds)
        await self.settle()

    async def settle(self, within: float = SETTLE_TIMEOUT) -> None:
        """Wait until no alarm handler runs (those waiting for a retry on the fake clock
        excepted)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        await asyncio.sleep(0)  # alarm runs woken by the clock take their next step
        while True:
            runs = self._runtime.alarm_runs
            busy = [t for t in runs if not t.done() and t not in self._runtime.on_clock]
            if not busy:
                break
            if loop.time() > deadline:
                raise TimeoutError(f"alarm handlers still running after {within:g} s")
            await asyncio.wait(busy, timeout=0.005, return_when=asyncio.FIRST_COMPLETED)
        for _ in range(3):
            await asyncio.sleep(0)  # what finishing them scheduled

    # -- closing ----------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the runtime: WebSockets close with 1001, objects and storage are dropped.
        (The fixture does it after the test; call it to restart a project in one test.)"""
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Runtime.aclose never suspends: run it here, whether or not an event loop runs.
        closing = self.runtime.aclose()
        try:
            closing.send(None)
        except StopIteration:
            return
        closing.close()
        raise RuntimeError("Runtime.aclose() suspended; opendo.testing cannot close it")

    # -- helpers ----------------------------------------------------------------------------------

    def _namespace(self, namespace: DurableObjectNamespace | str) -> DurableObjectNamespace:
        if isinstance(namespace, str):
            found = self.runtime.namespaces.get(namespace)
            if found is None:
                known = ", ".join(sorted(self.runtime.namespaces)) or "none"
                raise KeyError(f"no Durable Object binding named {namespace!r} (bindings: {known})")
            return found
        if not isinstance(namespace, DurableObjectNamespace):
            raise TypeError(
                f"expected a namespace (env.NAME) or a binding name, got {type(namespace).__name__}"
            )
        if namespace.directory is not self.runtime:
            raise ValueError(f"{namespace!r} belongs to another project")
        return namespace

    def _check(self, stub: DurableObjectStub) -> DurableObjectNamespace:
        if not isinstance(stub, DurableObjectStub):
            raise TypeError(f"expected a DurableObjectStub, got {type(stub).__name__}")
        ns = stub._namespace
        if ns.directory is not self.runtime:
            raise ValueError(f"{stub!r} belongs to another project (another test's?)")
        return ns

    def _host(self, stub: DurableObjectStub) -> ObjectHost:
        """The object's host, made if it has none (as an event to it would)."""
        return self.runtime.host(self._check(stub), stub.id)

    def _live_host(self, stub: DurableObjectStub) -> ObjectHost | None:
        ns = self._check(stub)
        for host in self.runtime.live_hosts():
            if host.namespace is ns and host.id == stub.id:
                return host
        return None

    def __repr__(self) -> str:
        bindings = ", ".join(self.runtime.namespaces)
        return f"<opendo.testing.Project {bindings} in {self.storage.directory}>"


def _with_host(headers: HeadersInit, url: str) -> Headers:
    out = Headers(headers)
    if "host" not in out:
        out.set("host", urlsplit(url).netloc or urlsplit(BASE_URL).netloc)
    return out


# -- the WebSocket client ---------------------------------------------------------------------


class WebSocketRejected(Exception):
    """The Worker answered a WebSocket handshake with something other than 101."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"the WebSocket handshake was answered {response.status}")
        self.response = response
        self.status = response.status


class WebSocketClosed(Exception):
    """The WebSocket is closed (``code``, ``reason``) and no message is left to receive."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the WebSocket is closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class _Connecting:
    """``await project.websocket(url)`` or ``async with project.websocket(url) as ws``."""

    def __init__(self, project: Project, url: str, headers: HeadersInit) -> None:
        self._project = project
        self._url = url
        self._headers = headers
        self._client: WebSocketClient | None = None

    def __await__(self) -> Generator[Any, None, WebSocketClient]:
        return self._project._connect(self._url, self._headers).__await__()

    async def __aenter__(self) -> WebSocketClient:
        self._client = await self._project._connect(self._url, self._headers)
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            self._client.close()


class WebSocketClient:
    """The client end of a WebSocket the Worker accepted, in the test's hands.

    Messages are kept in order as they arrive; ``receive()`` takes the next one, waiting for
    it. ``response`` is the Worker's 101 response.
    """

    def __init__(self, response: Response) -> None:
        ws = response.web_socket
        assert ws is not None
        self.response = response
        self._ws: WebSocket = ws
        self._messages: deque[str | bytes] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.close_was_clean: bool | None = None
        ws.add_event_listener("message", self._on_message)
        ws.add_event_listener("close", self._on_close)
        ws.accept()  # what the object sent meanwhile arrives now

    def _on_message(self, event: MessageEvent) -> None:
        self._messages.append(event.data)
        self._notify()

    def _on_close(self, event: CloseEvent) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = event.code, event.reason
            self.close_was_clean = event.was_clean
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    @property
    def closed(self) -> bool:
        """True once the connection is closed (by either side)."""
        return self._ws.ready_state is ReadyState.CLOSED or self.close_code is not None

    def send(self, message: str | bytes) -> None:
        """Send a text (str) or binary (bytes) message to the object."""
        if self.closed:
            raise WebSocketClosed(self.close_code or 1006, self.close_reason)
        self._ws.send(message)

    def send_json(self, value: Any) -> None:
        self.send(json.dumps(value))

    async def receive(self, within: float = RECEIVE_TIMEOUT) -> str | bytes:
        """The next message; ``TimeoutError`` if none comes within ``within`` seconds,
        ``WebSocketClosed`` if the connection closed and none is left."""
        try:
            async with asyncio.timeout(within):
                while not self._messages:
                    if self.closed:
                        raise WebSocketClosed(self.close_code or 1006, self.close_reason)
                    await self._changed()
        except TimeoutError:
            raise TimeoutError(f"no WebSocket message within {within:g} s") from None
        return self._messages.popleft()

    async def receive_json(self, within: float = RECEIVE_TIMEOUT) -> Any:
        """The next message, a text frame, parsed as JSON."""
        message = await self.receive(within)
        if not isinstance(message, str):
            raise TypeError(f"expected a text frame of JSON, got {len(message)} bytes")
        return json.loads(message)

    def drain(self) -> list[str | bytes]:
        """The messages that have arrived and were not received yet (without waiting)."""
        messages = list(self._messages)
        self._messages.clear()
        return messages

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (the object's ``web_socket_close`` or close listener runs)."""
        if not self.closed:
            self._ws.close(code, reason)

    def disconnect(self) -> None:
        """Drop the connection without a close frame, as a lost network does: the object
        sees an error, then a close with code 1006."""
        if not self.closed:
            self.close_code, self.close_reason, self.close_was_clean = 1006, "", False
            self._ws.transport_closed(1006, "", was_clean=False)
            self._notify()

    async def wait_closed(self, within: float = RECEIVE_TIMEOUT) -> tuple[int, str]:
        """Wait until the connection closes; its code and reason (messages stay receivable)."""
        try:
            async with asyncio.timeout(within):
                while not self.closed:
                    await self._changed()
        except TimeoutError:
            raise TimeoutError(f"the WebSocket did not close within {within:g} s") from None
        return self.close_code or 1006, self.close_reason

    async def __aenter__(self) -> WebSocketClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<WebSocketClient {state}, {len(self._messages)} message(s) waiting>"
