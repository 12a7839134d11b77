"""The ASGI application: HTTP and WebSocket requests into the Worker entry point.

``App(runtime, assets)`` is a plain ASGI 3 application, so it runs under uvicorn (what the
CLI uses), under any ASGI server, or mounted in a Starlette/FastAPI app. Assets are served
first; everything else becomes a ``Request`` for the Worker. A WebSocket handshake is a
request too: when the Worker answers ``Response(status=101, web_socket=client)``, the
connection is accepted and the client end is bound to it; any other answer is sent back as
a plain HTTP response to the handshake.

Sending is the hot path of a chat: one message is sent to every socket of a room, from a
synchronous ``ws.send()``. ``_AsgiTransport`` runs the ASGI ``send`` coroutine inline
(it completes without suspending whenever the connection is writable), and only when it
does suspend — under back-pressure — parks it, and the messages after it, in a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any
from urllib.parse import quote

from ._app import Runtime
from ._assets import Asset, Assets
from ._http import Headers, Request, Response

__all__ = ["App"]

log = logging.getLogger("opendo")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SMALL_FILE = 256 * 1024
_HOP_BY_HOP = {"connection", "upgrade", "sec-websocket-accept", "sec-websocket-extensions"}


class App:
    """An ASGI application serving one opendo project."""

    def __init__(self, runtime: Runtime, assets: Assets | None = None) -> None:
        self.runtime = runtime
        self.assets = assets

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
                    self.runtime.start()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runtime.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP -----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        method = scope["method"]
        if self.assets is not None and method in ("GET", "HEAD"):
            asset = self.assets.match(_raw_path(scope), headers)
            if asset is not None:
                await _send_asset(asset, headers, method == "HEAD", send)
                return

        async def read_body() -> bytes:
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            return b"".join(chunks)

        request = Request(
            _url(scope, headers), method=method, headers=headers, body_reader=read_body
        )
        response = await self._ask_worker(request)
        if response.status == 101:
            log.error("the Worker answered 101 to a request that is not a WebSocket upgrade")
            response = Response("Internal Server Error", status=500)
        await _send_response(response, method == "HEAD", send)

    async def _ask_worker(self, request: Request) -> Response:
        try:
            return await self.runtime.fetch(request)
        except Exception:
            log.exception("%s %s failed", request.method, request.url)
            return Response("Internal Server Error", status=500)

    # -- WebSocket ------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = _headers(scope)
        request = Request(_url(scope, headers), method="GET", headers=headers)
        response = await self._ask_worker(request)
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
        await send(accept)
        transport = _AsgiTransport(send)
        client._bind(transport)
        code, reason = 1006, ""
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    client._receive(text if text is not None else message.get("bytes") or b"")
                elif kind == "websocket.disconnect":
                    code = message.get("code", 1005)
                    reason = message.get("reason") or ""
                    if code == 1005 and "reason" not in message:
                        code = 1006  # the connection was lost, no close frame came
                    break
        finally:
            transport.closed = True
            client._network_closed(code, reason, was_clean=code not in (1006, 1011, 1012))


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
        coro: Coroutine[Any, Any, None] = self._send(message)  # type: ignore[assignment]
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return
        except Exception as exc:
            self._lost(exc)
            return
        self._parked = True
        asyncio.ensure_future(self._resume(coro, waiting_on))

    async def _resume(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        """Finish a send that suspended (as a Task would), then the messages behind it."""
        try:
            while True:
                if isinstance(waiting_on, asyncio.Future):
                    waiting_on._asyncio_future_blocking = False
                    await asyncio.wait([waiting_on])
                else:
                    await asyncio.sleep(0)
                try:
                    waiting_on = coro.send(None)
                except StopIteration:
                    break
            while self._backlog and not self.closed:
                await self._send(self._backlog.popleft())
        except Exception as exc:
            self._lost(exc)
        finally:
            coro.close()
            self._parked = False

    def _lost(self, exc: BaseException) -> None:
        # The connection went away under us; its disconnect arrives through receive().
        log.debug("WebSocket send failed: %r", exc)
        self.closed = True
        self._backlog.clear()


# -- helpers --------------------------------------------------------------------------------


def _headers(scope: Scope) -> Headers:
    return Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])


def _raw_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if raw:
        return str(raw.decode("latin-1").partition("?")[0])
    return quote(scope["path"])


def _url(scope: Scope, headers: Headers) -> str:
    scheme = scope.get("scheme", "http")
    if scheme == "ws":
        scheme = "http"
    elif scheme == "wss":
        scheme = "https"
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    url = f"{scheme}://{host}{_raw_path(scope)}"
    if query := scope.get("query_string"):
        url += "?" + query.decode("latin-1")
    return url


def _encode_headers(headers: Headers, body_length: int | None) -> list[tuple[bytes, bytes]]:
    out = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in headers.items()
        if k != "content-length"
    ]
    if body_length is not None:
        out.append((b"content-length", str(body_length).encode()))
    return out


async def _send_response(response: Response, head: bool, send: Send) -> None:
    body = response.body
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": _encode_headers(response.headers, len(body)),
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _reject(scope: Scope, response: Response, send: Send) -> None:
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
    else:
        await send({"type": "websocket.close", "code": 1008})


async def _send_asset(asset: Asset, headers: Headers, head: bool, send: Send) -> None:
    common = [
        (b"content-type", asset.content_type.encode()),
        (b"etag", asset.etag.encode()),
        (b"cache-control", b"public, max-age=0, must-revalidate"),
    ]
    if _etag_matches(headers.get("if-none-match"), asset.etag):
        await send({"type": "http.response.start", "status": 304, "headers": common})
        await send({"type": "http.response.body", "body": b""})
        return
    if head:
        body = b""
    elif asset.size <= _SMALL_FILE:
        body = asset.path.read_bytes()
    else:
        body = await asyncio.to_thread(asset.path.read_bytes)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*common, (b"content-length", str(asset.size).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _etag_matches(header: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: ``*`` or a list of (possibly weak) entity tags."""
    if header is None:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False
