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
``from js import WebSocket``                ``WebSocket.new(url)``: a WebSocket to another
                                            server, with ``addEventListener``/``onmessage``,
                                            ``send``, ``close``, ``readyState``
``python_from_rpc``, ``python_to_rpc``      identity: values are Python values already
==========================================  ===============================================

What is not supported
---------------------

These raise ``NotSupportedError`` (a ``NotImplementedError``) saying so: module-level
handlers (``@handler``, or an ``on_fetch`` function where the Worker class should be: the
project is refused when it loads);
``WorkflowEntrypoint``; ``import_from_javascript``; ``patch_env``; jurisdictions
(``env.NS.jurisdiction()``, ``newUniqueId({"jurisdiction": …})``); ``getExisting``;
``setHibernatableWebSocketEventTimeout``;
``ctx.props``, ``ctx.exports``, ``ctx.container``, ``ctx.facets``; a Worker's
``ctx.passThroughOnException()``. ``js`` provides ``WebSocket``, ``WebSocketPair``,
``WebSocketRequestResponsePair``, ``Date``, ``fetch``, ``Object``, ``Array``, ``JSON``,
``console`` and ``crypto`` (others raise ``AttributeError``); ``pyodide`` (unless a real one
is importable) provides ``pyodide.ffi`` and ``pyodide.http`` (``opendo.workers.pyodide``),
and its other modules raise ``NotSupportedModuleError`` (also a ``ModuleNotFoundError``).
Raised while a project loads, these become a ``NotSupportedInProjectError``, also a
``ConfigError``, naming the line that used them. The
``workers.env`` and ``workers.waitUntil`` globals are not provided: use ``self.env`` and
``self.ctx.waitUntil``. Storage options ``allowConcurrency``, ``allowUnconfirmed`` and
``noCache`` are accepted and ignored (every write is confirmed before output leaves).
Binary WebSocket messages arrive as ``bytes``, and a response body is ``bytes`` (not a
stream). Cron triggers (``scheduled``) and queues (``queue``) are never called.
"""

from __future__ import annotations

from typing import NoReturn

from ..api.http import Headers
from ..runtime.outbound import fetch  # outbound HTTP: opendo.fetch
from .bindings import DurableObjectId, DurableObjectNamespace, DurableObjectStub, Env
from .context import AlarmInfo, Context, DurableObjectContext
from .helpers import JsDict
from .http import FetchResponse, Request, Response
from .js import WebSocket, WebSocketPair, WebSocketRequestResponsePair
from .js import js as js  # `import js` finds it (see opendo.project.loader)
from .objects import DurableObject, WorkerEntrypoint, WorkflowEntrypoint
from .storage import SqlCursor, SqlStorage, Storage, SyncKV, Transaction
from .unsupported import (
    NotSupportedError,
    NotSupportedInProjectError,
    NotSupportedModuleError,
    handler,
    import_from_javascript,
    patch_env,
    python_from_rpc,
    python_to_rpc,
)

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


def __getattr__(name: str) -> NoReturn:
    if name in ("env", "waitUntil", "wait_until"):
        raise AttributeError(
            f"workers.{name} (the importable global) is not provided by opendo: use self.env "
            "and self.ctx.waitUntil in your classes"
        )
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
