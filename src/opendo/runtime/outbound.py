"""``opendo.fetch``: an outbound HTTP request from a Worker or an object (on httpx).

As on Cloudflare, the request leaves only once the output gate is clear — every write the
object made before it is durable — so the outside world never hears of a write that could
still be lost; a write that failed breaks the gate and the request is never sent (the error
is raised). Waiting for the answer takes no input lock: other events of the object may run
meanwhile (core.gates). Outside an object (in the Worker), the request leaves at once.

The answer is an ``opendo.Response`` (``await response.text()``, ``.json()``, ``.bytes()``),
its body read whole. A network failure or a timeout raises ``ConnectionError`` naming the
request; an HTTP error status is an answer like any other. One connection pool per event
loop; ``FETCH_TIMEOUT`` bounds connecting and each read (``asyncio.timeout`` around the call
bounds the whole of it).

``connect_websocket(url)`` opens a WebSocket to another server (on the websockets library):
the handshake, and each message ``send`` sends, leave under the same rule as a request — once
the writes before them are durable; ``recv()`` and ``async for`` read what arrives.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable, Mapping

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as _ws_connect
from websockets.exceptions import WebSocketException

from ..api.http import Headers, Request, Response
from ..core.context import current_host
from ..core.gates import OutputGate

__all__ = ["FETCH_TIMEOUT", "OutboundWebSocket", "connect_websocket", "fetch"]

FETCH_TIMEOUT = 30.0  # seconds to connect, and between two reads of an answer

_DECODED = frozenset({"content-encoding", "content-length", "transfer-encoding"})
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


async def fetch(
    resource: str | Request,
    *,
    method: str = "GET",
    headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: str | bytes | None = None,
) -> Response:
    """Send an HTTP request and return its answer: ``await fetch("https://…")``, or
    ``await fetch(url, method="POST", headers={...}, body=...)``, or ``await fetch(request)``.

    ::

        response = await fetch("https://api.example.org/report", method="POST", body="done")
        if response.ok:
            data = await response.json()
    """
    request = (
        resource
        if isinstance(resource, Request)
        else Request(resource, method=method, headers=headers, body=body)
    )
    content = await request.bytes()
    host = current_host()
    if host is not None:
        await _output_clear(host.output_gate)
    client = _client()
    # In a task of its own: an event's steps may run in more than one task, and httpx's
    # timeouts (anyio cancel scopes) must end in the task they began in.
    call = client.request(
        request.method,
        request.url,
        headers=list(request.headers.items()),
        content=content or None,
        timeout=FETCH_TIMEOUT,
    )
    try:
        answer = await asyncio.ensure_future(call)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"fetch {request.method} {request.url}: {exc!r}") from exc
    return Response(
        answer.content,
        status=answer.status_code,
        status_text=answer.reason_phrase or None,
        # httpx has decoded the body: its length and encoding are the answer's no more
        headers=[(k, v) for k, v in answer.headers.multi_items() if k not in _DECODED],
    )


async def _output_clear(gate: OutputGate) -> None:
    cleared: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    gate.resolve_when_clear(cleared)
    await cleared


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = httpx.AsyncClient(follow_redirects=True)
    return client


class OutboundWebSocket:
    """A WebSocket this process opened to another server (``connect_websocket``)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, if any."""
        return self._connection.subprotocol

    @property
    def closed_with(self) -> tuple[int, str, bool] | None:
        """Once the connection is closed: the code and reason the server closed it with
        (1006 and "" if it sent none), and whether the closing handshake completed."""
        protocol = self._connection.protocol
        if self._connection.close_code is None and protocol.close_rcvd is None:
            return None
        received = protocol.close_rcvd
        if received is None:
            return 1006, "", False
        return received.code, received.reason, protocol.close_sent is not None

    async def send(self, message: str | bytes) -> None:
        """Send a message, once the writes made before it are durable."""
        host = current_host()
        if host is not None:
            await _output_clear(host.output_gate)
        await self._connection.send(message)

    async def recv(self) -> str | bytes:
        """The next message (``websockets.ConnectionClosed`` once the connection is)."""
        return await self._connection.recv()

    def __aiter__(self) -> OutboundWebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self._connection.recv()
        except WebSocketException:
            raise StopAsyncIteration from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._connection.close(code, reason)

    async def __aenter__(self) -> OutboundWebSocket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def connect_websocket(
    url: str,
    *,
    headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    subprotocols: Iterable[str] = (),
) -> OutboundWebSocket:
    """Open a WebSocket to ``url`` (``ws://`` or ``wss://``)::

    async with await connect_websocket("wss://feed.example.org/prices") as feed:
        await feed.send("subscribe")
        first = await feed.recv()
    """
    host = current_host()
    if host is not None:
        await _output_clear(host.output_gate)
    try:
        connection = await _ws_connect(
            url,
            additional_headers=list(Headers(headers).items()),
            subprotocols=list(subprotocols) or None,  # type: ignore[arg-type]
            open_timeout=FETCH_TIMEOUT,
        )
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise ConnectionError(f"connect_websocket {url}: {exc!r}") from exc
    return OutboundWebSocket(connection)
