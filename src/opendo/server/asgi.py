"""The ASGI application: HTTP and WebSocket requests into the gateway.

``App(runtime, assets)`` is a plain ASGI 3 application, so it runs under any ASGI server
(uvicorn, hypercorn, granian …) or mounted in a Starlette or FastAPI app. What a request
means — its URL, the checks on its head, assets, the Worker call, the upgrade decision — is
the gateway's (``_gateway``), the same as under opendo's own server; this module only
translates ASGI messages.

*Mounted.* Under a prefix (``app.mount("/do", opendo_app)``) the Worker sees the path below
it (``/counter/a``, not ``/do/counter/a``): ``root_path`` is taken off. A mounted app gets no
lifespan events (Starlette does not pass them on), so the runtime starts at the first request
when no ``lifespan.startup`` came.

*Sending* is the hot path of a chat: one message is sent to every socket of a room, from a
synchronous ``ws.send()``. ``_AsgiTransport`` steps the ASGI ``send`` awaitable inline (it
completes without suspending whenever the connection is writable), and only when it does
suspend — under back-pressure — parks it, and the messages after it, in a task. It steps any
awaitable (a coroutine, or a server's own future type), as a task would.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterator, MutableMapping
from typing import Any
from urllib.parse import quote

from ..api.http import Headers, Request, Response
from ..runtime.runtime import Runtime
from .admin import AdminListener, AdminOptions
from .assets import Assets
from .gateway import (
    ClientGone,
    Gateway,
    Limits,
    RequestTooLarge,
    discard_websocket,
)

__all__ = ["App"]

log = logging.getLogger("opendo")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_HOP_BY_HOP = {"connection", "upgrade", "sec-websocket-accept", "sec-websocket-extensions"}


class App:
    """An ASGI application serving one opendo project."""

    def __init__(
        self,
        runtime: Runtime,
        assets: Assets | None = None,
        limits: Limits | None = None,
        admin: AdminOptions | None = None,
    ) -> None:
        self.runtime = runtime
        self.assets = assets
        self.gateway = Gateway(runtime, assets, limits)
        # Started with the app (its lifespan), if asked for: see server.admin.
        self.admin = None if admin is None else AdminListener(runtime, admin)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.gateway.start()
                    if self.admin is not None:
                        self.admin.start()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runtime.aclose()
                if self.admin is not None:
                    await asyncio.to_thread(self.admin.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _head(self, scope: Scope, headers: Headers, websocket: bool | None) -> Any:
        path, query = _target(scope)
        server = scope.get("server")
        where = None
        if server:
            host, port = server[0], server[1]
            where = host if port is None else f"{host}:{port}"
        return self.gateway.read_head(
            scope.get("method", "GET"),
            path,
            query,
            scope.get("http_version", "1.1"),
            headers,
            scheme=scope.get("scheme", "http"),
            server=where,
            websocket=websocket,
        )

    # -- HTTP -----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        method = scope["method"]
        incoming = self._head(scope, headers, None)
        if isinstance(incoming, Response):
            await _send_response(incoming, method == "HEAD", send)
            return
        if incoming.websocket:
            # A valid handshake that the ASGI server passed on as plain HTTP: it cannot upgrade.
            await _send_response(
                Response("this server does not accept WebSocket upgrades here\n", status=400),
                method == "HEAD",
                send,
            )
            return
        limit = self.gateway.limits.max_body_bytes

        async def read_body() -> bytes:
            chunks = []
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            return b"".join(chunks)

        request = Request(incoming.url, method=method, headers=headers, body_reader=read_body)
        response = await self.gateway.respond(incoming, request)
        await _send_response(response, method == "HEAD", send)

    # -- WebSocket ------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = _headers(scope)
        incoming = self._head(scope, headers, True)
        if isinstance(incoming, Response):
            await _reject(scope, incoming, send)
            return
        request = Request(incoming.url, method="GET", headers=headers)
        response = await self.gateway.respond(incoming, request)
        client = response.web_socket
        if response.status != 101 or client is None:
            await _reject(scope, response, send)
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        extra = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers.items()
            if k not in _HOP_BY_HOP and k != "sec-websocket-protocol"
        ]
        if extra:
            accept["headers"] = extra
        if (subprotocol := response.headers.get("sec-websocket-protocol")) is not None:
            accept["subprotocol"] = subprotocol
        try:
            await send(accept)
        except Exception:
            discard_websocket(response)  # the client left while the Worker decided
            raise
        transport = _AsgiTransport(send)
        client.bind(transport)
        code, reason = 1006, ""
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    client.transport_received(
                        text if text is not None else message.get("bytes") or b""
                    )
                elif kind == "websocket.disconnect":
                    code = message.get("code", 1005)
                    reason = message.get("reason") or ""
                    if code == 1005 and "reason" not in message:
                        code = 1006  # the connection was lost, no close frame came
                    break
        finally:
            transport.closed = True
            client.transport_closed(code, reason, was_clean=code not in (1006, 1011, 1012))


class _AsgiTransport:
    """Carries one WebSocket end over an ASGI connection, in order, without a task per send."""

    __slots__ = ("_send", "_backlog", "_parked", "closed")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._backlog: deque[Message] = deque()
        self._parked = False
        self.closed = False

    def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            self._submit({"type": "websocket.send", "text": data})
        else:
            self._submit({"type": "websocket.send", "bytes": data})

    def close(self, code: int, reason: str) -> None:
        self._submit({"type": "websocket.close", "code": code, "reason": reason})

    def _submit(self, message: Message) -> None:
        if self.closed:
            return
        if self._parked:
            self._backlog.append(message)
            return
        try:
            steps = self._send(message).__await__()
            waiting_on = next(steps)
        except StopIteration:
            return
        except Exception as exc:
            self._lost(exc)
            return
        self._parked = True
        asyncio.ensure_future(self._resume(_Rest(steps, waiting_on)))

    async def _resume(self, rest: _Rest) -> None:
        """Finish a send that suspended (as a Task would), then the messages behind it."""
        try:
            await rest
            while self._backlog and not self.closed:
                await self._send(self._backlog.popleft())
        except Exception as exc:
            self._lost(exc)
        finally:
            rest.close()
            self._parked = False

    def _lost(self, exc: BaseException) -> None:
        # The connection went away under us; its disconnect arrives through receive().
        log.debug("WebSocket send failed: %r", exc)
        self.closed = True
        self._backlog.clear()


class _Rest:
    """The rest of an awaitable whose first step already ran and yielded ``step``: awaiting
    this hands each yielded value to the task running it and sends back what it is sent."""

    __slots__ = ("_steps", "_step")

    def __init__(self, steps: Iterator[Any], step: Any) -> None:
        self._steps = steps
        self._step = step

    def __await__(self) -> Generator[Any, Any, Any]:
        # What ``yield from steps`` would do, from its second step on: an awaitable's
        # iterator need not be a generator (granian's has no send() or throw()).
        steps, step = self._steps, self._step
        while True:
            try:
                sent = yield step
            except BaseException as exc:  # thrown in by the task: a cancellation
                throw = getattr(steps, "throw", None)
                if throw is None:
                    raise
                try:
                    step = throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                step = next(steps) if sent is None else steps.send(sent)  # type: ignore[attr-defined]
            except StopIteration as stop:
                return stop.value

    def close(self) -> None:
        close = getattr(self._steps, "close", None)
        if close is not None:
            close()


# -- helpers --------------------------------------------------------------------------------


def _headers(scope: Scope) -> Headers:
    return Headers._trusted(
        [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
    )


def _target(scope: Scope) -> tuple[str, str]:
    """The raw path below the app's mount point (percent-encoding kept), and the query."""
    root = scope.get("root_path") or ""
    path = scope["path"]
    raw = scope.get("raw_path")
    if raw:
        target = raw.decode("latin-1").partition("?")[0]
        quoted_root = quote(root)
        if root and target.startswith(quoted_root):
            target = target[len(quoted_root) :]
        elif root and path.startswith(root):
            target = quote(path[len(root) :])
    else:
        if root and path.startswith(root):
            path = path[len(root) :]
        target = quote(path)
    if not target.startswith("/"):
        target = "/" + target
    query = scope.get("query_string") or b""
    return target, query.decode("latin-1")


def _encode_headers(
    headers: Headers, body_length: int | None, head: bool = False
) -> list[tuple[bytes, bytes]]:
    out = []
    length = None
    for k, v in headers.items():
        if k == "content-length":
            length = v
            continue
        out.append((k.encode("latin-1"), v.encode("latin-1", "replace")))
    if body_length is not None:
        if not (head and body_length == 0 and length is not None):
            length = str(body_length)
        out.append((b"content-length", length.encode()))
    return out


async def _send_response(response: Response, head: bool, send: Send) -> None:
    body = response.body
    status = response.status
    no_body = status in (204, 304) or status < 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": _encode_headers(response.headers, None if no_body else len(body), head),
        }
    )
    await send({"type": "http.response.body", "body": b"" if head or no_body else body})


async def _reject(scope: Scope, response: Response, send: Send) -> None:
    discard_websocket(response)
    if "websocket.http.response" in scope.get("extensions", {}):
        status = response.status if response.status != 101 else 500
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": _encode_headers(response.headers, len(response.body)),
            }
        )
        await send({"type": "websocket.http.response.body", "body": response.body})
        # uvicorn's websockets-sansio protocol marks the handshake done only when the
        # connection is lost, which its close schedules for the next turn; returning before
        # then makes it log "ASGI callable returned without completing handshake".
        await asyncio.sleep(0)
    else:
        await send({"type": "websocket.close", "code": 1008})
