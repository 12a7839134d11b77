"""opendo's HTTP/1.1 server protocol: bytes from a socket to the gateway and back.

``opendo dev`` and ``opendo serve`` run uvicorn's ``Server`` (sockets, signals, reloading)
with this protocol in place of uvicorn's own: requests go to the gateway (``_gateway``)
without an ASGI layer, and an accepted WebSocket handshake hands the socket to
``_wsnative.WebSocketConnection``. httptools parses; this module keeps the rules of one
connection:

- *Limits while reading.* The request target (414), the header lines (count and bytes, 431)
  and the body (413) are bounded as the bytes arrive, so an oversized head is refused before
  it fills memory; the gateway checks the same limits again for every server.
- *Timeouts.* One timer per connection, for what it waits on: an idle connection (between
  requests, and before the first) is closed after ``keep_alive_timeout``; a request's head
  must arrive within ``header_timeout`` of its first byte, and its body may not pause for
  longer than ``body_timeout`` (408). While the Worker works on a request, no timer runs.
- *Connections.* At most ``max_connections`` are open (WebSockets included); the next one
  closes the connection idle the longest, or, when none is idle, gets a 503.
- *Pipelining.* Requests are answered one at a time, in order; a request that arrives while
  another is answered waits, and reading pauses.
- *Bodies* are read when the Worker asks (``await request.bytes()``), with
  ``Expect: 100-continue`` answered then. A response that goes out before its request's body
  was read closes the connection.
- *Shutdown.* An idle connection closes at once; a busy one after its response.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import weakref
from collections import deque
from typing import Any

import httptools

from ..api.http import Headers, Request, Response
from .asgi import App
from .gateway import (
    LINGER,
    ClientGone,
    Gateway,
    Incoming,
    Limits,
    RequestTimeout,
    RequestTooLarge,
    accept_key,
    discard_websocket,
)
from .websocket import WebSocketConnection

__all__ = ["HttpProtocol"]

log = logging.getLogger("opendo")

HIGH_WATER = 1024 * 1024  # body bytes buffered before reading pauses for the Worker
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    }
)
_NO_BODY = frozenset({204, 304})


def _find_app(app: Any) -> App:
    seen = 0
    while not isinstance(app, App) and seen < 10:
        app = getattr(app, "app", None)
        seen += 1
    if not isinstance(app, App):
        raise RuntimeError("opendo's HTTP protocol serves only an opendo App")
    return app


_date = (0, b"")


def _date_line() -> bytes:
    global _date
    now = int(time.time())
    if now != _date[0]:
        _date = (now, b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n")
    return _date[1]


class _Idle:
    """The idle connections of one server, oldest first."""

    def __init__(self) -> None:
        self.connections: dict[HttpProtocol, None] = {}


_idle: weakref.WeakKeyDictionary[Any, _Idle] = weakref.WeakKeyDictionary()


class _Exchange:
    """One request of a connection, from its first byte to its response."""

    __slots__ = (
        "connection",
        "url",
        "method",
        "version",
        "headers",
        "header_bytes",
        "keep_alive",
        "upgrade",
        "expect_continue",
        "body",
        "body_size",
        "complete",
        "too_large",
        "failure",
        "waiter",
    )

    def __init__(self, connection: HttpProtocol) -> None:
        self.connection = connection
        self.url = b""
        self.method = "GET"
        self.version = "1.1"
        self.headers: list[tuple[str, str]] = []
        self.header_bytes = 0
        self.keep_alive = True
        self.upgrade = False
        self.expect_continue = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.too_large = False
        self.failure: Exception | None = None  # why the body will not arrive
        self.waiter: asyncio.Future[None] | None = None

    def headers_done(self) -> bool:
        return self.header_bytes < 0

    async def read_body(self) -> bytes:
        """The whole body (what the Request's ``bytes()`` awaits)."""
        if not self.complete and not self.too_large and self.failure is None:
            connection = self.connection
            if self.expect_continue:
                self.expect_continue = False
                connection._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiter = asyncio.get_running_loop().create_future()
            connection._update_reading()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.too_large:
            raise RequestTooLarge
        if self.failure is not None:
            raise self.failure
        return b"".join(self.body)

    def wake(self, failure: Exception | None = None) -> None:
        if failure is not None and self.failure is None:
            self.failure = failure
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Refused(Exception):
    """Raised in a parser callback: answer ``response`` and close."""

    def __init__(self, response: Response) -> None:
        self.response = response


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection (uvicorn's ``http`` protocol class)."""

    __slots__ = (
        "_gateway",
        "_limits",
        "_loop",
        "_connections",
        "_tasks",
        "_idle",
        "_transport",
        "_parser",
        "_parsing",
        "_queue",
        "_current",
        "_timer",
        "_pending_head",
        "_closing",
        "_upgrade_data",
        "_reading",
        "_write_paused",
        "_server",
        "_lingering",
    )

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self._gateway: Gateway = _find_app(config.loaded_app).gateway
        self._limits: Limits = self._gateway.limits
        self._loop = _loop or asyncio.get_event_loop()
        self._connections: set[Any] = server_state.connections
        self._tasks: set[asyncio.Task[None]] = server_state.tasks
        idle = _idle.get(server_state)
        if idle is None:
            idle = _idle[server_state] = _Idle()
        self._idle = idle.connections
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._parsing: _Exchange | None = None  # the request the parser is inside
        self._queue: deque[_Exchange] = deque()  # whole heads waiting their turn
        self._current: _Exchange | None = None  # the request being answered
        self._timer: asyncio.TimerHandle | None = None
        self._pending_head = 0  # bytes fed while inside a head
        self._closing = False
        self._upgrade_data: bytearray | None = None  # bytes after an upgrade request
        self._reading = True
        self._write_paused: asyncio.Future[None] | None = None
        self._server: str | None = None
        self._lingering = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if len(self._connections) >= self._limits.max_connections:
            if self._idle:
                oldest = next(iter(self._idle))
                oldest._close()
            else:
                log.warning(
                    "refused a connection: %d are open (max_connections)", len(self._connections)
                )
                self._write_plain(
                    Response("the server has too many open connections\n", status=503)
                )
                self._linger()
                return
        self._connections.add(self)
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            host = str(sockname[0])
            self._server = f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"
        self._become_idle()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._upgrade_data is not None:
            self._upgrade_data += data
            self._update_reading()
            return
        inside_head = self._parsing is not None and not self._parsing.headers_done()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._upgrade_data = bytearray(data[offset:])
            self._update_reading()
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.response)
            else:
                log.error("error while reading a request", exc_info=refused)
                self._refuse(Response("Internal Server Error\n", status=500))
            return
        except httptools.HttpParserError as exc:
            self._refuse(Response(f"Bad request: {exc}\n", status=400))
            return
        parsing = self._parsing
        if inside_head and parsing is not None and not parsing.headers_done():
            self._pending_head += len(data)
            if self._pending_head > self._limits.max_header_bytes + self._limits.max_url_bytes:
                self._refuse(_too_big_head(self._limits))

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._idle.pop(self, None)
        self._disarm()
        for exchange in (self._parsing, self._current, *self._queue):
            if exchange is not None:
                exchange.wake(ClientGone())
        self._queue.clear()
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)

    def pause_writing(self) -> None:
        if self._write_paused is None or self._write_paused.done():
            self._write_paused = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)

    def shutdown(self) -> None:
        """The server is stopping (uvicorn calls this): close once idle."""
        self._closing = True
        if self._current is None:
            self._close()

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._idle.pop(self, None)
        self._parsing = _Exchange(self)
        self._pending_head = 0
        if self._current is None:
            self._arm(self._limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        exchange = self._parsing
        assert exchange is not None
        exchange.url += url
        if len(exchange.url) > self._limits.max_url_bytes:
            raise _Refused(
                Response(
                    f"the request target is longer than {self._limits.max_url_bytes} bytes\n",
                    status=414,
                )
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self._parsing
        assert exchange is not None
        headers = exchange.headers
        exchange.header_bytes += len(name) + len(value) + 4
        if (
            len(headers) >= self._limits.max_headers
            or exchange.header_bytes > self._limits.max_header_bytes
        ):
            raise _Refused(_too_big_head(self._limits))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key == "expect" and text.lower() == "100-continue":
            exchange.expect_continue = True
        headers.append((key, text))

    def on_headers_complete(self) -> None:
        exchange = self._parsing
        assert exchange is not None
        parser = self._parser
        exchange.method = parser.get_method().decode("ascii")
        exchange.version = parser.get_http_version()
        exchange.keep_alive = parser.should_keep_alive()
        exchange.upgrade = parser.should_upgrade()
        exchange.header_bytes = -1  # the head is done
        self._disarm()
        if self._current is None:
            self._current = exchange
            self._arm(self._limits.body_timeout, self._body_timed_out)
            task = self._loop.create_task(self._serve(exchange))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._queue.append(exchange)
            self._update_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        assert exchange is not None
        if exchange.too_large:
            return
        exchange.body_size += len(body)
        if exchange.body_size > self._limits.max_body_bytes:
            exchange.too_large = True
            exchange.body.clear()
            exchange.wake()
            self._update_reading()
            return
        exchange.body.append(body)
        if exchange is self._current:
            self._arm(self._limits.body_timeout, self._body_timed_out)
        if exchange.body_size > HIGH_WATER and exchange.waiter is None:
            self._update_reading()

    def on_message_complete(self) -> None:
        exchange = self._parsing
        assert exchange is not None
        exchange.complete = True
        self._parsing = None
        if exchange is self._current:
            self._disarm()
        exchange.wake()

    # -- answering --------------------------------------------------------------------------

    async def _serve(self, exchange: _Exchange | None) -> None:
        """Answer requests in order, until none is waiting or the connection closes."""
        while exchange is not None:
            keep = await self._answer(exchange)
            if not keep or self._transport is None or self._transport.is_closing():
                self._current = None
                if exchange.complete or exchange.upgrade:
                    self._close()
                else:
                    self._linger()  # the client may still be sending the body
                return
            if self._write_paused is not None:
                await self._write_paused
            exchange = self._queue.popleft() if self._queue else None
            self._current = exchange
            if exchange is not None and not exchange.complete:
                self._arm(self._limits.body_timeout, self._body_timed_out)
            self._update_reading()
        if self._closing:
            self._close()
        elif self._parsing is None:
            self._become_idle()
        else:
            self._arm(self._limits.header_timeout, self._head_timed_out)

    async def _answer(self, exchange: _Exchange) -> bool:
        """Answer one request; False if the connection must close afterwards."""
        target, _, query = exchange.url.decode("latin-1").partition("?")
        target = target.partition("#")[0]
        headers = Headers._trusted(exchange.headers)
        incoming = self._gateway.read_head(
            exchange.method,
            target,
            query.partition("#")[0],
            exchange.version,
            headers,
            server=self._server,
        )
        if isinstance(incoming, Response):
            self._write_response(exchange, incoming, close=True)
            return False
        if incoming.websocket and not exchange.upgrade:
            # The gateway found a valid handshake that the parser did not take as an upgrade.
            response = Response("a WebSocket handshake needs Connection: upgrade\n", status=400)
            self._write_response(exchange, response, close=True)
            return False
        if exchange.too_large:  # known before the Worker is asked
            response = Response(
                f"the request body is larger than {self._limits.max_body_bytes} bytes\n",
                status=413,
            )
            self._write_response(exchange, response, close=True)
            return False
        reader = None if exchange.complete and exchange.body_size == 0 else exchange.read_body
        request = Request(incoming.url, method=exchange.method, headers=headers, body_reader=reader)
        response = await self._gateway.respond(incoming, request)
        transport = self._transport
        if transport is None or transport.is_closing():
            discard_websocket(response)
            return False
        if incoming.websocket:
            if response.status == 101 and response.web_socket is not None:
                self._switch(incoming, response)
                return True
            self._write_response(exchange, response, close=True)
            return False
        close = (
            self._closing
            or not exchange.keep_alive
            or exchange.upgrade  # the parser stopped at an upgrade it will not go on from
            or not exchange.complete
            or exchange.too_large
        )
        self._write_response(exchange, response, close=close)
        return not close

    def _write_response(self, exchange: _Exchange, response: Response, *, close: bool) -> None:
        head = self._status_and_headers(response, exchange.method == "HEAD")
        if close:
            head.append(b"connection: close\r\n")
        elif exchange.version == "1.0":
            head.append(b"connection: keep-alive\r\n")
        head.append(b"\r\n")
        if exchange.method != "HEAD" and response.status not in _NO_BODY:
            head.append(response.body)
        self._write(b"".join(head))

    def _status_and_headers(self, response: Response, head: bool) -> list[bytes]:
        status = response.status
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, response.status_text.encode("latin-1", "replace")),
            _date_line(),
        ]
        length: str | None = None
        for name, value in response.headers.items():
            if name in _HOP_BY_HOP:
                if name == "content-length":
                    length = value
                continue
            lines.append(b"%s: %s\r\n" % (name.encode(), value.encode("latin-1", "replace")))
        if status not in _NO_BODY and status >= 200:
            if not (head and not response.body and length is not None):
                length = str(len(response.body))
            lines.append(b"content-length: %s\r\n" % length.encode())
        return lines

    def _write_plain(self, response: Response) -> None:
        lines = self._status_and_headers(response, False)
        lines += [b"connection: close\r\n\r\n", response.body]
        self._write(b"".join(lines))

    def _switch(self, incoming: Incoming, response: Response) -> None:
        """The handshake is accepted: answer 101 and give the socket to the WebSocket."""
        transport = self._transport
        assert transport is not None and incoming.key is not None
        client = response.web_socket
        assert client is not None
        lines = [
            b"HTTP/1.1 101 Switching Protocols\r\n",
            b"upgrade: websocket\r\n",
            b"connection: Upgrade\r\n",
            b"sec-websocket-accept: %s\r\n" % accept_key(incoming.key).encode(),
        ]
        for name, value in response.headers.items():
            if (
                name in _HOP_BY_HOP
                or name.startswith("sec-websocket-")
                and name != ("sec-websocket-protocol")
            ):
                continue
            lines.append(b"%s: %s\r\n" % (name.encode(), value.encode("latin-1", "replace")))
        lines.append(b"\r\n")
        transport.write(b"".join(lines))
        self._disarm()
        self._connections.discard(self)
        pending, self._upgrade_data = self._upgrade_data, None
        connection = WebSocketConnection(self._limits, self._connections, client)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        if not self._reading:
            self._reading = True
            transport.resume_reading()
        if pending:
            connection.data_received(bytes(pending))
        self._transport = None

    # -- reading, timers, closing -------------------------------------------------------------

    def _update_reading(self) -> None:
        """Read while the connection can take more: no request waits its turn, no body piles
        up unread, no upgrade is being decided."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        parsing = self._parsing
        want = not self._queue
        if self._upgrade_data is not None:
            # Frames sent before the handshake is answered wait (a message's worth at most);
            # reading goes on, so a client that leaves meanwhile is noticed.
            want = len(self._upgrade_data) <= self._limits.max_message_bytes
        elif want and parsing is not None:
            want = (
                not parsing.too_large
                and parsing.failure is None
                and (parsing.waiter is not None or parsing.body_size <= HIGH_WATER)
            )
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _arm(self, delay: float, callback: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _become_idle(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._idle[self] = None
        self._arm(self._limits.keep_alive_timeout, self._close)

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._parsing is not None:
            self._refuse(
                Response(
                    f"the request head did not arrive within {self._limits.header_timeout:g} s\n",
                    status=408,
                )
            )

    def _body_timed_out(self) -> None:
        """The body stopped arriving: its reader fails (a 408), and the connection closes
        after the response."""
        self._timer = None
        exchange = self._current
        if exchange is not None and not exchange.complete:
            exchange.wake(RequestTimeout())
            self._update_reading()

    def _refuse(self, response: Response) -> None:
        """Answer a request that cannot be read any further, and close (see ``LINGER``)."""
        if self._current is None:
            self._write_plain(response)
        self._linger()

    def _linger(self) -> None:
        transport = self._transport
        self._disarm()
        self._idle.pop(self, None)
        self._parsing = None
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self._close()
            return
        self._lingering = True
        transport.write_eof()
        if not self._reading:
            self._reading = True
            transport.resume_reading()
        self._timer = self._loop.call_later(LINGER, self._close)

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _close(self) -> None:
        self._disarm()
        self._idle.pop(self, None)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()


def _too_big_head(limits: Limits) -> Response:
    return Response(
        f"the request head is too large: at most {limits.max_headers} header lines and "
        f"{limits.max_header_bytes} bytes of headers\n",
        status=431,
    )
