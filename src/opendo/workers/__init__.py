"""Cloudflare Python Workers compatibility: ``from workers import DurableObject, …``.

A Worker and its Durable Objects written for Cloudflare's Python Workers run under opendo
unchanged. When opendo loads a project's main module (``opendo dev``, ``opendo serve``, the
pytest plugin), ``import workers`` finds this module and ``import js`` finds
``opendo.workers.js``, a stand-in for the few JavaScript globals such Workers use::

    from js import WebSocketPair
    from workers import DurableObject, Response, WorkerEntrypoint


    class Room(DurableObject):
        async def fetch(self, request):
            client, server = WebSocketPair.new().object_values()
            self.ctx.acceptWebSocket(server, ["lobby"])
            server.serializeAttachment({"name": "ada"})
            return Response(None, status=101, web_socket=client)

        async def webSocketMessage(self, ws, message):
            count = (await self.ctx.storage.get("count")) or 0
            self.ctx.storage.put("count", count + 1)      # runs now, awaited or not
            for other in self.ctx.getWebSockets("lobby"):
                other.send(f"{ws.deserializeAttachment()['name']}: {message}")


    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return await self.env.ROOM.getByName("lobby").fetch(request)

Everything here is a thin adapter over opendo's own API: the same runtime, the same gates,
the same storage. The classes subclass opendo's (``workers.DurableObject`` is an
``opendo.DurableObject``, ``workers.Response`` an ``opendo.Response``), and the snake_case
names keep working next to the camelCase ones.

What maps to what
-----------------

==========================================  ===============================================
Cloudflare (Python Workers)                 opendo
==========================================  ===============================================
``webSocketMessage(ws, message)``           ``web_socket_message`` (set on the class when
``webSocketClose(ws, code, reason,``        it defines the camelCase handler; a class
``wasClean)``, ``webSocketError(ws, e)``    without one behaves as opendo's does)
``alarm(alarm_info)`` or ``alarm()``        ``alarm(info)``; ``alarm_info.retryCount``,
                                            ``.isRetry`` (and ``retry_count``, ``is_retry``)
``fetch(request)`` (sync or async)          ``fetch(request)``; ``request`` is a
                                            ``workers.Request``
handlers taking fewer arguments             called with the ones they take, as Cloudflare
                                            does
``self.ctx.storage`` / ``.id``              ``ctx.storage`` / ``ctx.id`` (``id.toString()``)
``ctx.blockConcurrencyWhile(fn)``           ``ctx.block_concurrency_while`` (``fn`` sync or
(also as ``@decorator``)                    async; returns an awaitable)
``ctx.waitUntil(aw)``                       ``ctx.wait_until``
``ctx.acceptWebSocket(ws, tags)``           ``ctx.accept_websocket``
``ctx.getWebSockets(tag)``,                 ``ctx.get_websockets``, ``ctx.get_tags``
``ctx.getTags(ws)``
``ctx.setWebSocketAutoResponse(pair)``      ``ctx.set_websocket_auto_response`` (also
                                            ``getWebSocketAutoResponse``, ``…Timestamp``)
``ctx.abort(reason)``                       ``ctx.abort`` (raises
                                            ``opendo.DurableObjectResetError``)
``storage.get/put/delete/list``             ``get/put/delete/list``: they run when called,
``storage.deleteAll()``                     awaited or not (as on Cloudflare), and return an
``storage.getAlarm/setAlarm/deleteAlarm``   awaitable of the result; options as a dict or as
                                            keywords (``list({"prefix": "a"})``,
                                            ``list(reverse=True, limit=1)``); int keys
                                            become strings, as in JavaScript
``storage.transaction(fn)``,                ``transaction`` (``txn`` camelCase too),
``storage.transactionSync(fn)``,            ``transaction_sync``, ``sync``
``storage.sync()``
``storage.sql.exec(q, *args)``              ``sql.exec``; the cursor has ``toArray()``,
                                            ``one()``, ``raw()``, ``next()``,
                                            ``columnNames``, ``rowsRead``, ``rowsWritten``;
                                            rows are dicts whose keys are also attributes
                                            (``row.name``; but ``row["items"]``, as a
                                            dict's own names win); ``sql.databaseSize``
``storage.kv.get/put/delete/list``          ``storage.kv`` (``list`` options as above)
``env.NS.idFromName/newUniqueId/``          ``id_from_name/new_unique_id/id_from_string``
``idFromString``, ``get(id)``,              ``get``, ``get_by_name``; stubs:
``getByName(name)``                         ``await stub.fetch(…)``, ``await stub.method()``
``ws.serializeAttachment``,                 ``serialize_attachment``,
``ws.deserializeAttachment``                ``deserialize_attachment``; ``ws.send``,
``ws.send``, ``ws.close``, ``ws.accept``    ``ws.close`` (a no-op once the socket closes, so
``ws.addEventListener``, ``readyState``     ``webSocketClose`` may close it back),
                                            ``add_event_listener``, ``ready_state``
``Response(body, status=, status_text=,``   ``opendo.Response``; ``Response.json(data)``
``headers=, web_socket=)``                  builds one, ``await response.json()`` parses
                                            one; ``Response.redirect(url, status)``
``Request``                                 ``opendo.Request`` (``request.cf`` is None)
``WorkerEntrypoint``: ``self.env``,         ``opendo.WorkerEntrypoint``; ``ctx.waitUntil``
``self.ctx.waitUntil``
``from js import WebSocketPair``            ``WebSocketPair.new()`` (``.object_values()``,
                                            or unpack it), ``WebSocketRequestResponsePair``
                                            ``.new(req, resp)``, ``Date.now()`` (epoch ms,
                                            on the runtime's clock inside an object)
``python_from_rpc``, ``python_to_rpc``      identity: values are Python values already
==========================================  ===============================================

What is not supported
---------------------

These raise ``NotSupportedError`` (a ``NotImplementedError``) saying so: outbound
``workers.fetch()``; module-level handlers (``@handler``, or an ``on_fetch`` function where
the Worker class should be: the project is refused when it loads);
``WorkflowEntrypoint``; ``import_from_javascript``; ``patch_env``; jurisdictions
(``env.NS.jurisdiction()``, ``newUniqueId({"jurisdiction": …})``); ``getExisting``;
point-in-time recovery (``getCurrentBookmark``, ``getBookmarkForTime``,
``onNextSessionRestoreBookmark``); ``setHibernatableWebSocketEventTimeout``;
``ctx.props``, ``ctx.exports``, ``ctx.container``, ``ctx.facets``; a Worker's
``ctx.passThroughOnException()``. ``js`` provides only ``WebSocketPair``,
``WebSocketRequestResponsePair`` and ``Date`` (others raise ``AttributeError``), and there is
no ``pyodide`` module (``to_js``, ``create_proxy``): values are plain Python, and ``import
pyodide`` raises ``NotSupportedModuleError`` (also a ``ModuleNotFoundError``) unless a real
one is importable. Raised while a project loads, these become a
``NotSupportedInProjectError``, also a ``ConfigError``, naming the line that used them. The
``workers.env`` and ``workers.waitUntil`` globals are not provided: use ``self.env`` and
``self.ctx.waitUntil``. Storage options ``allowConcurrency``, ``allowUnconfirmed`` and
``noCache`` are accepted and ignored (every write is confirmed before output leaves).
Binary WebSocket messages arrive as ``bytes``, and a response body is ``bytes`` (not a
stream). Cron triggers (``scheduled``) and queues (``queue``) are never called.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.abc
import importlib.machinery
import inspect
import json as _json
import sys
import time
import types
import weakref
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import datetime
from typing import Any, Generic, NoReturn, TypeVar, cast

from ..api import http as _http
from ..api import objects as _api
from ..api import websocket as _ws
from ..api.http import Headers
from ..core import ids as _ids
from ..core.alarms import AlarmInfo as _AlarmInfo
from ..core.errors import ConfigError
from ..runtime import stubs as _namespace
from ..runtime.host import current_host
from ..runtime.state import DurableObjectState
from ..storage import api as _storage
from ..storage import sql as _sql

__all__ = [
    "AlarmInfo",
    "Context",
    "DurableObject",
    "DurableObjectContext",
    "DurableObjectId",
    "DurableObjectNamespace",
    "DurableObjectStub",
    "Env",
    "FetchResponse",
    "Headers",
    "JsDict",
    "NotSupportedError",
    "NotSupportedInProjectError",
    "NotSupportedModuleError",
    "Request",
    "Response",
    "SqlCursor",
    "SqlStorage",
    "Storage",
    "SyncKV",
    "Transaction",
    "WebSocket",
    "WebSocketPair",
    "WebSocketRequestResponsePair",
    "WorkerEntrypoint",
    "WorkflowEntrypoint",
    "fetch",
    "handler",
    "import_from_javascript",
    "patch_env",
    "python_from_rpc",
    "python_to_rpc",
]

_T = TypeVar("_T")
_R = TypeVar("_R")

HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


class NotSupportedError(NotImplementedError):
    """A Cloudflare API that opendo does not provide."""


class NotSupportedInProjectError(NotSupportedError, ConfigError):
    """A project's Worker code uses what opendo does not provide, found when it loads: a
    ``ConfigError`` too, so ``opendo dev``/``serve`` report it as one line."""


class NotSupportedModuleError(NotSupportedError, ModuleNotFoundError):
    """``import`` of a module of Cloudflare's Python runtime that opendo does not provide;
    a ``ModuleNotFoundError`` too, so ``try: import pyodide / except ImportError`` works."""


def _unsupported(what: str, why: str) -> NoReturn:
    raise NotSupportedError(f"{what} is not supported by opendo: {why}")


# Modules of Cloudflare's Python runtime that no finder provides here: importing one raises
# NotSupportedModuleError. A module with a stand-in of its own leaves this table.
_UNSUPPORTED_MODULES = {
    "pyodide": "values are plain Python already (use them as they are, without to_js(), "
    "to_py() or create_proxy()), and an HTTP client library replaces pyodide.http",
}


class _UnsupportedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: finds the top-level modules of ``_UNSUPPORTED_MODULES``
    that no finder before it found, and fails to load them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is not None or fullname not in _UNSUPPORTED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        error = NotSupportedModuleError(
            f"the {name} module is not supported by opendo: {_UNSUPPORTED_MODULES[name]}"
        )
        error.name = name
        raise error


def install_import_hooks() -> None:
    """Make ``import pyodide`` (when no real one is importable) raise
    ``NotSupportedModuleError``; done by opendo when it loads a project."""
    if not any(isinstance(finder, _UnsupportedModules) for finder in sys.meta_path):
        sys.meta_path.append(_UnsupportedModules())


# -- small helpers -----------------------------------------------------------------------------


class _Then(Generic[_T, _R]):
    """``await`` an already delivered call, then convert its result."""

    __slots__ = ("_awaitable", "_convert")

    def __init__(self, awaitable: Awaitable[_T], convert: Callable[[_T], _R]) -> None:
        self._awaitable = awaitable
        self._convert = convert

    def __await__(self) -> Generator[Any, None, _R]:
        value = yield from self._awaitable.__await__()
        return self._convert(value)


_ARITY: weakref.WeakKeyDictionary[Callable[..., Any], int | None] = weakref.WeakKeyDictionary()


def _arity(fn: Callable[..., Any]) -> int | None:
    """How many positional arguments ``fn`` takes (None: any number)."""
    function = getattr(fn, "__func__", fn)  # a bound method: its function, less ``self``
    bound = function is not fn
    try:
        count = _ARITY[function]
    except (KeyError, TypeError):
        count = _positional(function)
        try:
            _ARITY[function] = count
        except TypeError:
            pass
    return None if count is None else max(count - bound, 0)


def _positional(fn: Callable[..., Any]) -> int | None:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            count += 1
    return count


def _relaxed_call(fn: Callable[..., _T], *args: Any) -> _T:
    """Call ``fn`` with as many of ``args`` as it takes, as Cloudflare calls Python handlers
    (so ``async def alarm(self)`` works as well as ``async def alarm(self, alarm_info)``)."""
    count = _arity(fn)
    return fn(*args) if count is None else fn(*args[:count])


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _key(key: Any) -> Any:
    """A number key becomes its string, as JavaScript's storage API does; anything else is
    for opendo's storage to accept or refuse."""
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    return key


def _keys(key: Any) -> Any:
    if isinstance(key, list | tuple):
        return [_key(k) for k in key]
    return _key(key)


def _plain(value: Any) -> Any:
    """``value`` with every ``JsDict`` (a SQL row, say) made a plain dict, so that storage
    and attachments take it as Cloudflare's do; ``value`` itself when it holds none."""
    kind = type(value)
    if kind is JsDict:
        return {k: _plain(v) for k, v in value.items()}
    if kind is dict:
        items = {k: _plain(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if kind is list or kind is tuple:
        members = [_plain(v) for v in value]
        if all(m is v for m, v in zip(members, value, strict=True)):
            return value
        return members if kind is list else tuple(members)
    return value


_FLAGS = frozenset({"allowConcurrency", "noCache"})
_WRITE_FLAGS = _FLAGS | {"allowUnconfirmed"}
_ALARM_WRITE_FLAGS = frozenset({"allowConcurrency", "allowUnconfirmed"})
_LIST_OPTIONS = _FLAGS | {"start", "startAfter", "start_after", "end", "prefix", "reverse", "limit"}


def _options(
    method: str, options: Any, keywords: Mapping[str, Any], allowed: frozenset[str]
) -> dict[str, Any]:
    """Options given as a dict (``list({"prefix": "a"})``) and/or as keywords."""
    if options is None:
        merged = dict(keywords)
    elif isinstance(options, Mapping):
        merged = {**options, **keywords}
    else:
        raise TypeError(
            f"{method}(): options must be a dict (or keywords), got {type(options).__name__}"
        )
    unknown = sorted(set(merged) - allowed)
    if unknown:
        raise TypeError(
            f"{method}(): unknown option(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(sorted(allowed)) or 'none'}"
        )
    return merged


def _list_args(
    method: str, options: Any, keywords: Mapping[str, Any]
) -> tuple[Any, Any, Any, Any, bool, Any]:
    opts = _options(method, options, keywords, _LIST_OPTIONS)
    if "startAfter" in opts and "start_after" in opts:
        raise TypeError(f"{method}(): give startAfter once")
    start_after = opts.get("startAfter", opts.get("start_after"))
    return (
        _key(opts.get("start")),
        _key(start_after),
        _key(opts.get("end")),
        _key(opts.get("prefix")),
        bool(opts.get("reverse", False)),
        opts.get("limit"),
    )


# -- HTTP ----------------------------------------------------------------------------------------


class Request(_http.Request):
    """An HTTP request: ``opendo.Request`` (``url``, ``method``, ``headers``, ``await
    text()/json()/bytes()``), as Cloudflare's ``workers.Request`` is used.

    ``Request(url, method=…, headers=…, body=…)``, or ``Request(request, …)`` for a copy
    with some fields replaced. Handlers always receive a ``workers.Request``.
    """

    __slots__ = ()

    def __init__(
        self,
        input: _http.Request | str,
        *,
        method: str | None = None,
        headers: HeadersInit = None,
        body: str | bytes | None = None,
    ) -> None:
        if isinstance(input, _http.Request):
            super().__init__(
                input.url,
                method=method or input.method,
                headers=input.headers if headers is None else headers,
                body=body,
            )
            if body is None:
                self._body = input._body  # the same body, read once
        else:
            super().__init__(input, method=method or "GET", headers=headers, body=body)

    @property
    def cf(self) -> None:
        """Cloudflare's request properties (``request.cf.colo`` …): None here, as Cloudflare
        gives for requests that did not come through its network."""
        return None

    def clone(self) -> Request:
        return Request(self)

    def __repr__(self) -> str:
        return f"Request(method={self.method!r}, url={self.url!r})"


def _as_request(request: Any) -> Any:
    """An ``opendo.Request`` as a ``workers.Request`` (the same fields, the same body)."""
    if isinstance(request, Request) or not isinstance(request, _http.Request):
        return request
    converted = Request.__new__(Request)
    for name in _http.Request.__slots__:
        setattr(converted, name, getattr(request, name))
    return converted


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Response(_http.Response):
    """An HTTP response, as Cloudflare's Python ``Response``.

    ::

        Response("hello", status=201, headers={"x-a": "1"})
        Response(None, status=101, web_socket=client)
        Response.json({"ok": True})              # builds a JSON response
        data = await response.json()             # parses one (text(), bytes() as usual)
    """

    __slots__ = ()

    def __init__(
        self,
        body: str | bytes | None = None,
        status: int | None = None,
        status_text: str | None = "",
        headers: HeadersInit = None,
        web_socket: _ws.WebSocket | None = None,
    ) -> None:
        super().__init__(
            body,
            status=200 if status is None else int(status),
            status_text=status_text or None,
            headers=headers,
            web_socket=web_socket,
        )

    @classmethod
    def from_json(
        cls,
        data: Any,
        status: int = 200,
        status_text: str | None = "",
        headers: HeadersInit = None,
    ) -> Response:
        """A response whose body is ``data`` as JSON (``application/json`` unless
        ``headers`` name another content type)."""
        fields = Headers(headers)
        if "content-type" not in fields:
            fields.set("content-type", "application/json")
        return cls(_json.dumps(data), status, status_text, fields)

    def json(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """``await response.json()`` parses the body; ``Response.json(data, status=…)``
        (called on the class) builds a JSON response, as Cloudflare's SDK allows both."""
        if isinstance(self, _http.Response):
            if args or kwargs:
                raise TypeError("response.json() takes no arguments; Response.json(data) builds")
            return self._parsed_json()
        return Response.from_json(self, *args, **kwargs)

    async def _parsed_json(self) -> Any:
        return _json.loads(self.body)

    @staticmethod
    def redirect(url: str, status: int = 302) -> Response:
        if int(status) not in _REDIRECTS:
            raise ValueError(f"a redirect status must be 301, 302, 303, 307 or 308, got {status}")
        return Response(None, status, headers={"location": url})

    def __repr__(self) -> str:
        return f"Response(status={self.status})"


FetchResponse = Response


def _as_response(response: Any) -> Any:
    """An ``opendo.Response`` as a ``workers.Response`` (the same fields)."""
    if isinstance(response, Response) or not isinstance(response, _http.Response):
        return response
    converted = Response.__new__(Response)
    for name in _http.Response.__slots__:
        setattr(converted, name, getattr(response, name))
    return converted


# -- WebSockets and the ``js`` globals --------------------------------------------------------


class WebSocket(_ws.WebSocket):
    """One end of a ``WebSocketPair``, with Cloudflare's camelCase names."""

    __slots__ = ()

    @property
    def readyState(self) -> int:
        return int(self.ready_state)

    def addEventListener(self, type: str, listener: _ws.Listener) -> None:
        self.add_event_listener(type, listener)

    def removeEventListener(self, type: str, listener: _ws.Listener) -> None:
        self.remove_event_listener(type, listener)

    def serializeAttachment(self, value: Any) -> None:
        self.serialize_attachment(_plain(value))

    def deserializeAttachment(self) -> Any:
        return self.deserialize_attachment()

    def close(self, code: int | None = None, reason: str | None = "") -> None:
        """Close the connection (code 1000 or 3000..4999). Once the socket is closing or
        closed this does nothing, whatever the code: ``webSocketClose`` handlers commonly
        close the socket back with the code they were given (1001, 1005 …)."""
        if self.ready_state in (_ws.ReadyState.CLOSING, _ws.ReadyState.CLOSED):
            return
        super().close(code, reason or "")


class WebSocketPair(_ws.WebSocketPair):
    """Two connected ``WebSocket`` ends: ``client, server = WebSocketPair.new().object_values()``
    (as Cloudflare's Python Workers write it), ``client, server = WebSocketPair()``, or
    ``pair[0]``, ``pair[1]``."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        # The same two connected ends, given Cloudflare's method names (the subclass adds
        # no state, so the ends stay exactly what opendo made).
        self.client.__class__ = WebSocket
        self.server.__class__ = WebSocket

    @classmethod
    def new(cls) -> WebSocketPair:
        return cls()

    def object_values(self) -> tuple[WebSocket, WebSocket]:
        return cast(WebSocket, self.client), cast(WebSocket, self.server)


class WebSocketRequestResponsePair(_ws.WebSocketRequestResponsePair):
    """For ``ctx.setWebSocketAutoResponse``: ``WebSocketRequestResponsePair.new("ping",
    "pong")``."""

    __slots__ = ()

    @classmethod
    def new(cls, request: str, response: str) -> WebSocketRequestResponsePair:
        return cls(request, response)


class Date:
    """``js.Date``: ``Date.now()`` only — epoch milliseconds, on the runtime's clock inside a
    Durable Object (so a test's fake clock too), else the system's."""

    @staticmethod
    def now() -> int:
        host = current_host()
        seconds = host.clock.time() if host is not None else time.time()
        return int(seconds * 1000)


def _js_module() -> types.ModuleType:
    provided: dict[str, Any] = {
        "Date": Date,
        "WebSocketPair": WebSocketPair,
        "WebSocketRequestResponsePair": WebSocketRequestResponsePair,
    }
    module = types.ModuleType(
        "js",
        "opendo's stand-in for the JavaScript globals a Cloudflare Python Worker imports: "
        + ", ".join(sorted(provided))
        + ".",
    )
    module.__dict__.update(provided)
    module.__dict__["__all__"] = sorted(provided)

    def __getattr__(name: str) -> NoReturn:
        raise AttributeError(
            f"module 'js' has no attribute {name!r}: under opendo it provides only "
            f"{', '.join(sorted(provided))} (values are plain Python, no JavaScript runs)"
        )

    module.__dict__["__getattr__"] = __getattr__
    return module


js = _js_module()
"""The module ``import js`` finds in a project opendo loads."""


# -- ids, namespaces, stubs, env -----------------------------------------------------------


class DurableObjectId(_ids.DurableObjectId):
    """An ``opendo.DurableObjectId`` with ``toString()`` (``str(id)`` works too)."""

    __slots__ = ()

    def toString(self) -> str:
        return str(self)

    @property
    def jurisdiction(self) -> None:
        return None


def _as_id(id: _ids.DurableObjectId) -> DurableObjectId:
    if isinstance(id, DurableObjectId):
        return id
    return DurableObjectId(id._raw, name=id.name, namespace=id._namespace)


_RPC_RESERVED = frozenset(
    {"fetch", "alarm", "connect", "webSocketMessage", "webSocketClose", "webSocketError"}
)
_GET_OPTIONS = frozenset({"locationHint", "routingMode"})
_FETCH_OPTIONS = frozenset({"method", "headers", "body"})


class DurableObjectStub:
    """A stub, as Cloudflare's: ``await stub.fetch(url_or_request, method=, headers=,
    body=)``, ``await stub.anyMethod(…)``, ``stub.id``, ``stub.name``. Calls on one stub are
    delivered in the order they are made."""

    __slots__ = ("_stub",)
    _rpc_by_reference = True  # passed as it is over RPC

    def __init__(self, stub: _namespace.DurableObjectStub) -> None:
        self._stub = stub

    @property
    def id(self) -> DurableObjectId:
        return _as_id(self._stub.id)

    @property
    def name(self) -> str | None:
        return self._stub.name

    def fetch(self, input: _http.Request | str, /, **options: Any) -> Awaitable[Response]:
        unknown = sorted(set(options) - _FETCH_OPTIONS)
        if unknown:
            raise TypeError(
                f"stub.fetch(): unsupported option(s) {', '.join(map(repr, unknown))}; "
                "it takes method, headers and body"
            )
        if "method" in options:
            options["method"] = str(options["method"])
        delivered = self._stub.fetch(input, **options)  # delivered now, in call order
        return _Then(delivered, _as_response)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in _RPC_RESERVED:
            raise AttributeError(f"{name!r} cannot be called over RPC")
        return getattr(self._stub, name)

    def __repr__(self) -> str:
        return repr(self._stub)


class DurableObjectNamespace:
    """``env.NS``: ``idFromName``, ``newUniqueId``, ``idFromString``, ``get(id)``,
    ``getByName(name)``."""

    __slots__ = ("_namespace",)
    _rpc_by_reference = True  # passed as it is over RPC

    def __init__(self, namespace: _namespace.DurableObjectNamespace) -> None:
        self._namespace = namespace

    def idFromName(self, name: str) -> DurableObjectId:
        return _as_id(self._namespace.id_from_name(name))

    def newUniqueId(self, options: Mapping[str, Any] | None = None) -> DurableObjectId:
        opts = _options("newUniqueId", options, {}, frozenset({"jurisdiction"}))
        if opts.get("jurisdiction") is not None:
            _unsupported("newUniqueId({'jurisdiction': …})", "there are no jurisdictions")
        return _as_id(self._namespace.new_unique_id())

    def idFromString(self, id: str) -> DurableObjectId:
        return _as_id(self._namespace.id_from_string(id))

    def get(
        self, id: _ids.DurableObjectId, options: Mapping[str, Any] | None = None
    ) -> DurableObjectStub:
        _options("get", options, {}, _GET_OPTIONS)  # hints only: one place to run here
        return DurableObjectStub(self._namespace.get(id))

    def getByName(self, name: str, options: Mapping[str, Any] | None = None) -> DurableObjectStub:
        _options("getByName", options, {}, _GET_OPTIONS)
        return DurableObjectStub(self._namespace.get_by_name(name))

    def jurisdiction(self, name: str) -> NoReturn:
        _unsupported(f"env.NS.jurisdiction({name!r})", "there are no jurisdictions")

    def getExisting(self, *args: Any) -> NoReturn:
        _unsupported("env.NS.getExisting()", "use get(id)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._namespace, name)

    def __repr__(self) -> str:
        return repr(self._namespace)


class Env:
    """``self.env``: vars and secrets as they are; Durable Object bindings as
    ``workers.DurableObjectNamespace``."""

    __slots__ = ("_env", "_bindings", "__weakref__")

    def __init__(self, env: _api.Env) -> None:
        self._env = env
        self._bindings: dict[str, DurableObjectNamespace] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._bindings[name]
        except KeyError:
            pass
        try:
            value = self._env[name]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None
        if isinstance(value, _namespace.DurableObjectNamespace):
            value = self._bindings[name] = DurableObjectNamespace(value)
        return value

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError as exc:
            raise KeyError(exc.args[0]) from None

    def __contains__(self, name: object) -> bool:
        return name in self._env

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def __repr__(self) -> str:
        return repr(self._env)


_ENVS: weakref.WeakKeyDictionary[_api.Env, Env] = weakref.WeakKeyDictionary()


def _as_env(env: Any) -> Any:
    if not isinstance(env, _api.Env):
        return env
    wrapped = _ENVS.get(env)
    if wrapped is None:
        wrapped = _ENVS[env] = Env(env)
    return wrapped


# -- storage ------------------------------------------------------------------------------------


class JsDict(dict[str, Any]):
    """A dict whose keys are also attributes (``row.name`` and ``row["name"]``), as
    Cloudflare's SDK hands JavaScript objects (SQL rows among them) to Python. A key named
    like a dict method (``items``, ``keys``, ``get`` …) is reached as ``row["items"]`` only,
    there as here."""

    _rpc_as_dict = True  # over RPC: sent as a plain dict, as Cloudflare sends a JS object

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class SqlCursor:
    """The cursor of ``sql.exec()``: iterate its rows, or ``toArray()``, ``one()``,
    ``raw()``, ``next()``; ``columnNames``, ``rowsRead``, ``rowsWritten``."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: _sql.SqlCursor) -> None:
        self._cursor = cursor

    def __iter__(self) -> Iterator[JsDict]:
        return self

    def __next__(self) -> JsDict:
        return JsDict(next(self._cursor))

    def next(self) -> JsDict:
        """The next row as ``{"done": False, "value": row}``, then ``{"done": True}``."""
        try:
            return JsDict(done=False, value=self.__next__())
        except StopIteration:
            return JsDict(done=True, value=None)

    def toArray(self) -> list[JsDict]:
        return [JsDict(row) for row in self._cursor.to_array()]

    def one(self) -> JsDict:
        return JsDict(self._cursor.one())

    def raw(self) -> Iterator[list[_sql.SqlValue]]:
        return (list(row) for row in self._cursor.raw())

    @property
    def columnNames(self) -> list[str]:
        return self._cursor.column_names

    @property
    def rowsRead(self) -> int:
        return self._cursor.rows_read

    @property
    def rowsWritten(self) -> int:
        return self._cursor.rows_written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class SqlStorage:
    """``ctx.storage.sql``: ``exec(query, *bindings)`` and ``databaseSize``."""

    __slots__ = ("_sql",)

    def __init__(self, sql: _sql.SqlStorage) -> None:
        self._sql = sql

    def exec(self, query: str, *bindings: Any) -> SqlCursor:
        return SqlCursor(self._sql.exec(query, *bindings))

    @property
    def databaseSize(self) -> int:
        return self._sql.database_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sql, name)


class SyncKV:
    """``ctx.storage.kv``: ``get``, ``put``, ``delete`` and ``list(options)`` without awaits."""

    __slots__ = ("_kv",)

    def __init__(self, kv: _storage.SyncKV) -> None:
        self._kv = kv

    def get(self, key: Any) -> Any:
        return self._kv.get(_key(key))

    def put(self, key: Any, value: Any) -> None:
        self._kv.put(_key(key), _plain(value))

    def delete(self, key: Any) -> bool:
        return self._kv.delete(_key(key))

    def list(self, options: Any = None, /, **keywords: Any) -> Iterator[tuple[str, Any]]:
        start, start_after, end, prefix, reverse, limit = _list_args(
            "storage.kv.list", options, keywords
        )
        return self._kv.list(
            start=start,
            start_after=start_after,
            end=end,
            prefix=prefix,
            reverse=reverse,
            limit=limit,
        )


_MISSING: Any = object()


def _put_args(
    method: str, key: Any, value: Any, options: Any, keywords: Mapping[str, Any]
) -> tuple[Any, Any]:
    """``put(key, value, options?)`` -> (key, value); ``put(entries, options?)`` ->
    (entries, None), as opendo's ``_put`` takes them."""
    if isinstance(key, Mapping):
        if value is not _MISSING:
            if options is not None:
                raise TypeError(f"{method}(entries, options) takes no third argument")
            options = value
        _options(method, options, keywords, _WRITE_FLAGS)
        return {_key(k): _plain(v) for k, v in key.items()}, None
    if value is _MISSING:
        raise TypeError(f"{method}() takes a key and a value, or a dict of entries")
    _options(method, options, keywords, _WRITE_FLAGS)
    return _key(key), _plain(value)


def _list_options(method: str, options: Any, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """``list(options?)`` -> the keywords of opendo's ``list``."""
    names = ("start", "start_after", "end", "prefix", "reverse", "limit")
    return dict(zip(names, _list_args(method, options, keywords), strict=True))


class Storage:
    """``ctx.storage`` with Cloudflare's names. Each call runs when it is made — awaited or
    not, as on Cloudflare — and returns an awaitable of its result (not a coroutine); writes
    made without an intervening await still commit as one batch, and nothing the object
    sends leaves before they are durable. Other names (snake_case too) are opendo's
    ``Storage``'s, whose calls behave the same: while another event's ``transaction()`` is
    open, a call is queued and runs, in call order, when it ends.
    """

    __slots__ = ("_storage", "sql", "kv")

    def __init__(self, storage: _storage.Storage) -> None:
        self._storage = storage
        self.sql = SqlStorage(storage.sql)
        self.kv = SyncKV(storage.kv)

    def get(self, key: Any, options: Any = None, /, **keywords: Any) -> Awaitable[Any]:
        """A value (None if absent), or a dict of the keys found, in key order."""
        _options("storage.get", options, keywords, _FLAGS)
        return self._storage.get(_keys(key))

    def put(
        self, key: Any, value: Any = _MISSING, options: Any = None, /, **keywords: Any
    ) -> Awaitable[None]:
        """``put(key, value, options?)`` or ``put({key: value, …}, options?)``."""
        k, v = _put_args("storage.put", key, value, options, keywords)
        return self._storage.put(k, v)

    def delete(self, key: Any, options: Any = None, /, **keywords: Any) -> Awaitable[bool | int]:
        """True if ``key`` existed; for a list of keys, how many existed."""
        _options("storage.delete", options, keywords, _WRITE_FLAGS)
        return self._storage.delete(_keys(key))

    def deleteAll(self, options: Any = None, /, **keywords: Any) -> Awaitable[None]:
        """Delete every key and every SQL table, atomically (the alarm stays)."""
        _options("storage.deleteAll", options, keywords, _WRITE_FLAGS)
        return _storage.delete_all_as(self._storage, "deleteAll")

    def list(self, options: Any = None, /, **keywords: Any) -> Awaitable[dict[str, Any]]:
        """Keys and values in key order: ``start``, ``startAfter``, ``end``, ``prefix``,
        ``reverse``, ``limit`` — as a dict (``list({"prefix": "a"})``) or as keywords."""
        return self._storage.list(**_list_options("storage.list", options, keywords))

    def getAlarm(self, options: Any = None, /, **keywords: Any) -> Awaitable[int | None]:
        """When the alarm is due, in epoch milliseconds, or None."""
        _options("storage.getAlarm", options, keywords, frozenset({"allowConcurrency"}))
        return _storage.get_alarm_as(self._storage, "getAlarm")

    def setAlarm(
        self, scheduled_time: datetime | int | float, options: Any = None, /, **keywords: Any
    ) -> Awaitable[None]:
        """Set the object's one alarm: epoch milliseconds or a datetime."""
        _options("storage.setAlarm", options, keywords, _ALARM_WRITE_FLAGS)
        return _storage.set_alarm_as(self._storage, scheduled_time, "setAlarm")

    def deleteAlarm(self, options: Any = None, /, **keywords: Any) -> Awaitable[None]:
        _options("storage.deleteAlarm", options, keywords, _ALARM_WRITE_FLAGS)
        return _storage.delete_alarm_as(self._storage, "deleteAlarm")

    def sync(self) -> asyncio.Future[None]:
        """Every write made so far, durable: ``await storage.sync()``."""
        return self._storage.sync()

    def transaction(self, closure: Callable[[Transaction], Any]) -> Coroutine[Any, Any, Any]:
        """``await storage.transaction(fn)``: ``fn(txn)`` as one transaction (``txn``
        camelCase too); no other event runs until it ends."""

        async def run(txn: _storage.Transaction) -> Any:
            return await _resolve(closure(Transaction(txn)))

        return self._storage.transaction(run)

    def transactionSync(self, fn: Callable[[], _T]) -> _T:
        return self._storage.transaction_sync(fn)

    def getCurrentBookmark(self) -> NoReturn:
        _unsupported("storage.getCurrentBookmark()", "there is no point-in-time recovery")

    def getBookmarkForTime(self, timestamp: Any) -> NoReturn:
        _unsupported("storage.getBookmarkForTime()", "there is no point-in-time recovery")

    def onNextSessionRestoreBookmark(self, bookmark: str) -> NoReturn:
        _unsupported("storage.onNextSessionRestoreBookmark()", "there is no point-in-time recovery")

    def __getattr__(self, name: str) -> Any:
        # snake_case names, and the runtime's own calls on ``instance.ctx.storage``
        return getattr(self._storage, name)


class Transaction:
    """The ``txn`` of ``storage.transaction(fn)``, camelCase: ``get``, ``put``, ``delete``,
    ``deleteAll``, ``list``, ``getAlarm``, ``setAlarm``, ``deleteAlarm``, ``rollback()``.
    Each call runs when it is made, awaited or not."""

    __slots__ = ("_txn",)

    def __init__(self, txn: _storage.Transaction) -> None:
        self._txn = txn

    def rollback(self) -> None:
        self._txn.rollback()

    def get(self, key: Any, options: Any = None, /, **keywords: Any) -> Awaitable[Any]:
        _options("txn.get", options, keywords, _FLAGS)
        return self._txn.get(_keys(key))

    def put(
        self, key: Any, value: Any = _MISSING, options: Any = None, /, **keywords: Any
    ) -> Awaitable[None]:
        k, v = _put_args("txn.put", key, value, options, keywords)
        return self._txn.put(k, v)

    def delete(self, key: Any, options: Any = None, /, **keywords: Any) -> Awaitable[bool | int]:
        _options("txn.delete", options, keywords, _WRITE_FLAGS)
        return self._txn.delete(_keys(key))

    def deleteAll(self, options: Any = None, /, **keywords: Any) -> Awaitable[None]:
        _options("txn.deleteAll", options, keywords, _WRITE_FLAGS)
        return _storage.delete_all_as(self._txn, "deleteAll")

    def list(self, options: Any = None, /, **keywords: Any) -> Awaitable[dict[str, Any]]:
        return self._txn.list(**_list_options("txn.list", options, keywords))

    def getAlarm(self, options: Any = None, /, **keywords: Any) -> Awaitable[int | None]:
        _options("txn.getAlarm", options, keywords, frozenset({"allowConcurrency"}))
        return _storage.get_alarm_as(self._txn, "getAlarm")

    def setAlarm(
        self, scheduled_time: datetime | int | float, options: Any = None, /, **keywords: Any
    ) -> Awaitable[None]:
        _options("txn.setAlarm", options, keywords, _ALARM_WRITE_FLAGS)
        return _storage.set_alarm_as(self._txn, scheduled_time, "setAlarm")

    def deleteAlarm(self, options: Any = None, /, **keywords: Any) -> Awaitable[None]:
        _options("txn.deleteAlarm", options, keywords, _ALARM_WRITE_FLAGS)
        return _storage.delete_alarm_as(self._txn, "deleteAlarm")


# -- ctx -----------------------------------------------------------------------------------------


class DurableObjectContext:
    """``self.ctx`` of a Durable Object, with Cloudflare's names (opendo's
    ``DurableObjectState`` underneath; its snake_case names work too)."""

    __slots__ = ("_state", "_storage")

    def __init__(self, state: DurableObjectState) -> None:
        self._state = state
        self._storage: Storage | None = None

    @property
    def id(self) -> DurableObjectId:
        return _as_id(self._state.id)

    @property
    def storage(self) -> Storage:
        real = self._state.storage  # refuses, naming it, if this instance is gone
        wrapped = self._storage
        if wrapped is None or wrapped._storage is not real:
            wrapped = self._storage = Storage(real)
        return wrapped

    def blockConcurrencyWhile(self, callback: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``callback()`` (sync or async) with no other event delivered until it is
        done; if it raises, the object is reset. Works as a decorator too::

            @self.ctx.blockConcurrencyWhile
            async def initialize():
                self.count = (await self.ctx.storage.get("count")) or 0
        """
        return self._state.block_concurrency_while(lambda: _resolve(callback()))

    def waitUntil(self, promise: Awaitable[Any]) -> None:
        self._state.wait_until(promise)

    def acceptWebSocket(self, ws: _ws.WebSocket, tags: Iterable[str] | None = None) -> None:
        self._state.accept_websocket(ws, () if tags is None else tags)

    def getWebSockets(self, tag: str | None = None) -> list[_ws.WebSocket]:
        return self._state.get_websockets(tag)

    def getTags(self, ws: _ws.WebSocket) -> list[str]:
        return self._state.get_tags(ws)

    def setWebSocketAutoResponse(
        self, pair: _ws.WebSocketRequestResponsePair | None = None
    ) -> None:
        self._state.set_websocket_auto_response(pair)

    def getWebSocketAutoResponse(self) -> _ws.WebSocketRequestResponsePair | None:
        return self._state.get_websocket_auto_response()

    def getWebSocketAutoResponseTimestamp(self, ws: _ws.WebSocket) -> datetime | None:
        return self._state.get_websocket_auto_response_timestamp(ws)

    def abort(self, reason: str | None = None) -> NoReturn:
        self._state.abort("aborted" if reason is None else reason)

    def setHibernatableWebSocketEventTimeout(self, timeout_ms: int | None = None) -> NoReturn:
        _unsupported(
            "ctx.setHibernatableWebSocketEventTimeout()", "WebSocket event handlers have no timeout"
        )

    def getHibernatableWebSocketEventTimeout(self) -> NoReturn:
        _unsupported(
            "ctx.getHibernatableWebSocketEventTimeout()", "WebSocket event handlers have no timeout"
        )

    @property
    def props(self) -> NoReturn:
        _unsupported("ctx.props", "there are no service bindings to pass props")

    @property
    def exports(self) -> NoReturn:
        _unsupported("ctx.exports", "there are no loopback bindings")

    @property
    def container(self) -> NoReturn:
        _unsupported("ctx.container", "there are no containers")

    @property
    def facets(self) -> NoReturn:
        _unsupported("ctx.facets", "there are no facets")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def _as_context(ctx: Any) -> Any:
    if isinstance(ctx, DurableObjectState):
        return DurableObjectContext(ctx)
    return ctx


class Context:
    """``self.ctx`` of a Worker: ``waitUntil(awaitable)``."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: _api.ExecutionContext) -> None:
        self._ctx = ctx

    def waitUntil(self, promise: Awaitable[Any]) -> None:
        self._ctx.wait_until(promise)

    def wait_until(self, promise: Awaitable[Any]) -> None:
        self._ctx.wait_until(promise)

    def passThroughOnException(self) -> NoReturn:
        _unsupported("ctx.passThroughOnException()", "there is no origin to pass through to")


def _as_worker_context(ctx: Any) -> Any:
    if isinstance(ctx, _api.ExecutionContext):
        return Context(ctx)
    return ctx


class AlarmInfo:
    """What ``alarm(alarm_info)`` is given: ``retryCount`` and ``isRetry`` (also
    ``retry_count`` and ``is_retry``)."""

    __slots__ = ("retryCount",)

    def __init__(self, retryCount: int = 0) -> None:
        self.retryCount = retryCount

    @property
    def isRetry(self) -> bool:
        return self.retryCount > 0

    @property
    def retry_count(self) -> int:
        return self.retryCount

    @property
    def is_retry(self) -> bool:
        return self.isRetry

    def __repr__(self) -> str:
        return f"AlarmInfo(retryCount={self.retryCount})"


def _as_alarm_info(info: Any) -> Any:
    if info is None:
        return AlarmInfo()
    if isinstance(info, _AlarmInfo):
        return AlarmInfo(info.retry_count)
    return info


# -- the classes users subclass ------------------------------------------------------------

_ADAPTERS: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()

# Cloudflare's hibernation handlers, and the opendo hooks the runtime calls.
_HIBERNATION_HANDLERS = {
    "webSocketMessage": "web_socket_message",
    "webSocketClose": "web_socket_close",
    "webSocketError": "web_socket_error",
}


def _adapter(fn: Callable[..., Any]) -> Callable[..., Any]:
    _ADAPTERS.add(fn)
    return fn


def _adapt_init(cls: Any, convert_ctx: Callable[[Any], Any]) -> None:
    """The constructor gets ``ctx`` and ``env`` with Cloudflare's names (as Cloudflare's SDK
    wraps them), whether or not it calls ``super().__init__``."""
    init = cls.__dict__.get("__init__")
    if not callable(init) or init in _ADAPTERS:
        return

    @functools.wraps(init)
    def __init__(self: Any, ctx: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        ctx, env = convert_ctx(ctx), _as_env(env)
        self.ctx, self.env = ctx, env
        init(self, ctx, env, *args, **kwargs)

    cls.__init__ = _adapter(__init__)


def _adapt_fetch(cls: Any) -> None:
    """``fetch`` gets a ``workers.Request`` and may be a plain function."""
    fetch = cls.__dict__.get("fetch")
    if not inspect.isfunction(fetch) or fetch in _ADAPTERS:
        return

    @functools.wraps(fetch)
    async def adapted(self: Any, request: Any, *args: Any) -> Any:
        return await _resolve(_relaxed_call(fetch, self, _as_request(request), *args))

    cls.fetch = _adapter(adapted)


def _adapt_alarm(cls: Any) -> None:
    """``alarm`` gets Cloudflare's ``alarm_info`` (if it takes it) and may be a plain
    function."""
    alarm = cls.__dict__.get("alarm")
    if not inspect.isfunction(alarm) or alarm in _ADAPTERS:
        return

    @functools.wraps(alarm)
    async def adapted(self: Any, alarm_info: Any = None) -> Any:
        return await _resolve(_relaxed_call(alarm, self, _as_alarm_info(alarm_info)))

    cls.alarm = _adapter(adapted)


def _hibernation_hook(camel: str, snake: str) -> Callable[..., Any]:
    def hook(self: Any, ws: Any, *args: Any) -> Any:
        return _relaxed_call(getattr(self, camel), ws, *args)

    hook.__name__ = hook.__qualname__ = snake
    hook.__doc__ = f"opendo's {snake}: calls the object's {camel}."
    return _adapter(hook)


_HOOKS = {snake: _hibernation_hook(camel, snake) for camel, snake in _HIBERNATION_HANDLERS.items()}


class DurableObject(_api.DurableObject):
    """Base class of a Durable Object written for Cloudflare's Python Workers.

    ``self.ctx`` is a ``DurableObjectContext`` and ``self.env`` an ``Env``, in the
    constructor already. ``webSocketMessage``/``webSocketClose``/``webSocketError``
    receive the events of sockets accepted with ``ctx.acceptWebSocket``; ``alarm``,
    ``fetch`` and public methods (RPC) work as on Cloudflare.
    """

    ctx: DurableObjectContext
    env: Any

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(_as_context(ctx), _as_env(env))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _adapt_init(cls, _as_context)
        _adapt_fetch(cls)
        _adapt_alarm(cls)
        for camel, snake in _HIBERNATION_HANDLERS.items():
            # Only where the camelCase handler exists: a class without it behaves exactly as
            # opendo expects of one without the hook, and a snake_case hook of its own wins.
            if callable(getattr(cls, camel, None)) and getattr(cls, snake, None) is None:
                setattr(cls, snake, _HOOKS[snake])


class WorkerEntrypoint(_api.WorkerEntrypoint):
    """Base class of the Worker (``class Default(WorkerEntrypoint)``): ``self.env`` is an
    ``Env``, ``self.ctx`` a ``Context``; ``fetch(request)`` gets a ``workers.Request``."""

    ctx: Context  # type: ignore[assignment]
    env: Any

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(_as_worker_context(ctx), _as_env(env))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _adapt_init(cls, _as_worker_context)
        _adapt_fetch(cls)


class WorkflowEntrypoint:
    """Cloudflare Workflows: not supported (defining a subclass raises)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        _unsupported(f"WorkflowEntrypoint ({cls.__name__})", "there are no Workflows")


# -- module-level functions --------------------------------------------------------------------


def fetch(resource: Any, /, **options: Any) -> NoReturn:
    """Outbound ``fetch()``: not supported."""
    _unsupported(
        "workers.fetch() (an outbound HTTP request)",
        "use an HTTP client library (httpx, aiohttp) from your object",
    )


def handler(func: Any) -> NoReturn:
    """Module-level handlers (``@handler async def on_fetch(request, env)``): not
    supported."""
    _unsupported(
        "a module-level handler (@handler)",
        "define class Default(WorkerEntrypoint) with async def fetch(self, request)",
    )


def import_from_javascript(module_name: str) -> NoReturn:
    _unsupported(f"import_from_javascript({module_name!r})", "no JavaScript runs under opendo")


def patch_env(*args: Any, **kwargs: Any) -> NoReturn:
    _unsupported("patch_env()", "pass vars to the project instead (opendo(..., vars={...}))")


def python_from_rpc(value: _T) -> _T:
    """The value itself: RPC values are Python values already."""
    return value


def python_to_rpc(value: _T) -> _T:
    """The value itself: RPC values are Python values already."""
    return value


def __getattr__(name: str) -> NoReturn:
    if name in ("env", "waitUntil", "wait_until"):
        raise AttributeError(
            f"workers.{name} (the importable global) is not provided by opendo: use self.env "
            "and self.ctx.waitUntil in your classes"
        )
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
