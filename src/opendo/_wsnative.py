"""opendo's own WebSocket connections, under uvicorn: no ASGI task per socket.

Through ASGI, every WebSocket connection keeps a task, a queue and a coroutine waiting on
``receive()``, and every message sent goes through an awaited ``send`` — about 19 KiB of
memory per idle connection and a coroutine per delivery. A chat room that hibernates with
10,000 clients connected should cost far less, and a broadcast is the hot path. So the CLI's
server hands upgraded connections to this protocol instead (uvicorn takes it as its
``ws`` protocol class; plain HTTP still goes to the ASGI app):

- the handshake request is validated by the ``websockets`` library's sans-I/O server, the
  Worker is asked (one short task, as for any request), and the client end of the
  ``WebSocketPair`` it answers with is bound to this connection; the handshake state is then
  dropped;
- frames are parsed here, straight from ``data_received`` (unmasked with ``websockets``'
  C helper), and handed to the object synchronously;
- a message the object sends is framed and written to the socket at once. Servers do not
  mask, so a frame is the same bytes for every client: a loop that sends one message to
  many sockets frames it once (the last text message's frame is remembered).

What a connection holds while idle: this protocol object (slots), the transport, and the two
ends of its ``WebSocketPair``. The ASGI path (``App``) stays for mounting opendo in another
ASGI server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.datastructures import Headers as WsHeaders
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse
from websockets.server import ServerProtocol

from ._asgi import App

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C helper
    from websockets.utils import apply_mask
from ._http import Headers, Request
from ._websocket import WebSocket

__all__ = ["HttpProtocol", "NativeWebSocketProtocol"]

log = logging.getLogger("opendo")

MAX_MESSAGE = 32 * 1024 * 1024  # a received message, as on Cloudflare
CLOSE_TIMEOUT = 10.0  # seconds to wait for the client's close frame
# Messages read from one connection in one turn of the event loop. Each is delivered (and
# its handler's first step run) at once; a few per turn keep the writes of a turn, and the
# sends the output gate holds for them, in batches that stream rather than burst.
FRAMES_PER_TURN = 4
MAX_BUFFERED = 64 * 1024 * 1024  # unsent bytes to a client before it is dropped as too slow
_HOP_BY_HOP = {"connection", "upgrade", "content-length", "transfer-encoding"}

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

_last_text: str | None = None  # frame-once cache for broadcasts
_CACHE_FRAMES_UP_TO = 64 * 1024
_last_frame = b""


def _header(first: int, length: int) -> bytes:
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def text_frame(text: str) -> bytes:
    global _last_text, _last_frame
    if text is _last_text:
        return _last_frame
    payload = text.encode()
    frame = _header(0x80 | OP_TEXT, len(payload)) + payload
    if len(frame) <= _CACHE_FRAMES_UP_TO:
        _last_text, _last_frame = text, frame
    return frame


def _close_frame(code: int | None, reason: str) -> bytes:
    payload = b"" if code is None else code.to_bytes(2, "big") + reason.encode()[:123]
    return _header(0x80 | OP_CLOSE, len(payload)) + payload


def _find_app(app: Any) -> App:
    seen = 0
    while not isinstance(app, App) and seen < 10:
        app = getattr(app, "app", None)
        seen += 1
    if not isinstance(app, App):
        raise RuntimeError("the native WebSocket protocol serves only an opendo App")
    return app


class NativeWebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection, from handshake to close (uvicorn's ``ws`` protocol class)."""

    __slots__ = (
        "_app",
        "_connections",
        "_transport",
        "_handshake",
        "_opening",
        "_client",
        "_buffer",
        "_fragments",
        "_fragment_opcode",
        "_fragment_size",
        "_close_sent",
        "_closed",
        "_close_timer",
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
        self._app = _find_app(config.loaded_app)
        self._connections: set[Any] = server_state.connections
        self._transport: asyncio.Transport | None = None
        self._handshake: ServerProtocol | None = ServerProtocol(
            extensions=None, max_size=MAX_MESSAGE
        )
        self._opening: asyncio.Task[None] | None = None
        self._client: WebSocket | None = None
        self._buffer: bytearray | None = None
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_size = 0
        self._close_sent = False
        self._closed = False
        self._close_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        handshake = self._handshake
        if handshake is None:
            self._feed(data)
            return
        if self._opening is not None:
            self._keep(data)  # frames sent before our answer: read them once it is sent
            return
        handshake.receive_data(data)
        for event in handshake.events_received():
            if isinstance(event, WsRequest):
                self._opening = asyncio.ensure_future(self._open(event))
                return
        if handshake.handshake_exc is not None:
            self._write_handshake(handshake, handshake.reject(400, "Bad WebSocket handshake"))
            self._close_transport()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._closed_by_network(1006, "", clean=False)

    def eof_received(self) -> bool | None:
        return None

    def shutdown(self) -> None:
        """The server is stopping (uvicorn calls this)."""
        if self._handshake is None and not self._close_sent:
            self.close(1012, "server restarting")
            self._closed_by_network(1012, "server restarting", clean=False)
        self._close_transport()

    # -- the handshake ----------------------------------------------------------------------

    async def _open(self, ws_request: WsRequest) -> None:
        handshake = self._handshake
        assert handshake is not None
        accepted = handshake.accept(ws_request)
        if accepted.status_code != 101:  # not a valid WebSocket handshake: the Worker is not asked
            self._write_handshake(handshake, accepted)
            self._close_transport()
            return
        headers = Headers((k.lower(), v) for k, v in ws_request.headers.raw_items())
        host = headers.get("host") or "localhost"
        request = Request(f"http://{host}{ws_request.path}", method="GET", headers=headers)
        response = await self._app._ask_worker(request)
        client = response.web_socket
        if self._transport is None or self._transport.is_closing():
            if client is not None:  # the client left while the Worker decided
                client._network_closed(1006, "", False)
            return
        if response.status != 101 or client is None:
            status = response.status if response.status != 101 else 500
            ws_response = WsResponse(
                status,
                response.status_text,
                WsHeaders(_pass_headers(response.headers.items())),
                response.body,
            )
            ws_response.headers["Content-Length"] = str(len(response.body))
            ws_response.headers["Connection"] = "close"
            self._write_handshake(handshake, ws_response)
            self._close_transport()
            return
        for name, value in _pass_headers(response.headers.items()):
            accepted.headers[name] = value
        self._write_handshake(handshake, accepted)
        self._handshake = None
        self._opening = None
        self._client = client
        client._bind(self)
        pending, self._buffer = self._buffer, None
        if pending:
            self._feed(bytes(pending))

    def _write_handshake(self, handshake: ServerProtocol, response: WsResponse) -> None:
        handshake.send_response(response)
        if self._transport is not None:
            self._transport.write(b"".join(handshake.data_to_send()))

    # -- frames in --------------------------------------------------------------------------

    def _keep(self, data: bytes) -> None:
        if self._buffer is None:
            self._buffer = bytearray(data)
        else:
            self._buffer += data

    def _feed(self, data: bytes) -> None:
        if self._buffer:
            self._buffer += data
            buf: bytes | bytearray = self._buffer
        else:
            buf = data
        pos, end = 0, len(buf)
        frames = 0
        while end - pos >= 2 and not self._closed:
            if frames == FRAMES_PER_TURN and self._transport is not None:
                # Enough for this turn: the rest is read in the next one.
                self._transport.pause_reading()
                asyncio.get_running_loop().call_soon(self._continue)
                break
            frames += 1
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                return self._fail(1002, "reserved bits set")
            if not b1 & 0x80:
                return self._fail(1002, "a client's frames must be masked")
            length, head = b1 & 0x7F, pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            opcode = b0 & 0x0F
            if opcode & 0x8 and (not b0 & 0x80 or length > 125):
                return self._fail(1002, "control frames must be whole and at most 125 bytes")
            if length > MAX_MESSAGE:
                return self._fail(1009, "message too big")
            if end - head < 4 + length:
                break
            mask = bytes(buf[head : head + 4])
            payload = apply_mask(bytes(buf[head + 4 : head + 4 + length]), mask)
            pos = head + 4 + length
            self._frame(b0 & 0x80, opcode, payload)
        if self._closed:
            self._buffer = None
        elif pos == end:
            self._buffer = None
        elif buf is not self._buffer or pos:
            self._buffer = bytearray(buf[pos:])

    def _continue(self) -> None:
        """The next turn's share of what was read (see ``FRAMES_PER_TURN``)."""
        if self._closed:
            return
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
        self._feed(b"")

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                return self._fail(1002, "expected a continuation frame")
            if fin:
                return self._message(opcode, payload)
            self._fragments, self._fragment_opcode = [payload], opcode
            self._fragment_size = len(payload)
        elif opcode == OP_CONT:
            fragments = self._fragments
            if fragments is None:
                return self._fail(1002, "unexpected continuation frame")
            fragments.append(payload)
            self._fragment_size += len(payload)
            if self._fragment_size > MAX_MESSAGE:
                return self._fail(1009, "message too big")
            if fin:
                self._fragments = None
                self._message(self._fragment_opcode, b"".join(fragments))
        elif opcode == OP_PING:
            self._write(_header(0x80 | OP_PONG, len(payload)) + payload)
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            self._close_received(payload)
        else:
            self._fail(1002, f"unknown opcode {opcode}")

    def _message(self, opcode: int, payload: bytes) -> None:
        client = self._client
        if client is None or self._close_sent:
            return
        if opcode == OP_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                return self._fail(1007, "invalid UTF-8 in a text message")
            client._receive(text)
        else:
            client._receive(payload)

    def _close_received(self, payload: bytes) -> None:
        if len(payload) == 1 or len(payload) > 125:
            return self._fail(1002, "bad close frame")
        code: int | None = None
        reason = ""
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if not (1000 <= code <= 1014 or 3000 <= code <= 4999) or code in (1004, 1005, 1006):
                return self._fail(1002, "bad close code")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                return self._fail(1007, "invalid UTF-8 in a close reason")
        if not self._close_sent:
            self._close_sent = True
            self._write(_close_frame(code, reason))  # the closing handshake completes
        self._closed_by_network(1005 if code is None else code, reason, clean=True)
        self._close_transport()

    def _fail(self, code: int, reason: str) -> None:
        log.info("closing a WebSocket connection: %s", reason)
        if not self._close_sent:
            self._close_sent = True
            self._write(_close_frame(code, reason))
        self._closed_by_network(code, reason, clean=False)
        self._close_transport()

    def _closed_by_network(self, code: int, reason: str, *, clean: bool) -> None:
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            client._network_closed(code, reason, clean)

    # -- frames out (WebSocketTransport) ----------------------------------------------------

    def send(self, data: str | bytes) -> None:
        if self._close_sent:
            return
        if isinstance(data, str):
            self._write(text_frame(data))
        else:
            self._write(_header(0x80 | OP_BINARY, len(data)) + data)

    def close(self, code: int, reason: str) -> None:
        if self._close_sent:
            return
        self._close_sent = True
        self._write(_close_frame(code, reason))
        loop = asyncio.get_running_loop()
        self._close_timer = loop.call_later(CLOSE_TIMEOUT, self._close_transport)

    def _write(self, frame: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(frame)
        if transport.get_write_buffer_size() > MAX_BUFFERED:
            log.warning("dropping a WebSocket client that does not read what it is sent")
            transport.abort()

    def _close_transport(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


def _pass_headers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in items if k.lower() not in _HOP_BY_HOP]


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, passing on what follows an upgrade request.

    A client may send its first frames in the same packet as the handshake; uvicorn hands
    the WebSocket protocol only the request itself, and the frames would be lost.
    """

    def data_received(self, data: bytes) -> None:
        # uvicorn's method, plus the two lines that pass on what follows the request.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
                if upgrade.args and upgrade.args[0] < len(data):
                    self.transport.get_protocol().data_received(data[upgrade.args[0] :])  # type: ignore[attr-defined]
            else:
                self._unsupported_upgrade_warning()
