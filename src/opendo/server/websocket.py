"""One WebSocket connection of opendo's own server: a socket on one side, the client end of a
``WebSocketPair`` on the other.

Through ASGI, every WebSocket connection keeps a task, a queue and a coroutine waiting on
``receive()``, and every message sent goes through an awaited ``send`` — about 19 KiB of
memory per idle connection and a coroutine per delivery. A chat room that hibernates with
10,000 clients connected should cost far less, and a broadcast is the hot path. So once the
gateway has accepted a handshake (``_httpserver``), the socket is handed to this protocol:

- bytes from the socket go to the frame codec (``_wscodec.FrameParser``), straight from
  ``data_received``; each message it yields is handed to the object synchronously, at most
  ``FRAMES_PER_TURN`` per turn of the event loop (a burst is delivered over several turns, so
  the writes of a turn, and the sends the output gate holds for them, stream rather than pile
  up);
- a message the object sends is framed (once per message, for all the sockets it goes to)
  and kept with the connection's other frames of this turn of the event loop; at the end of
  the turn each connection writes what it has in one ``write`` (``_Writes``), so a
  broadcast of many messages costs a system call per socket, not one per message and
  socket. A client that does not read what it is sent is dropped once
  ``max_buffered_bytes`` are waiting for it.

What a connection holds while idle: this protocol object (slots), the transport, and the two
ends of its ``WebSocketPair``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from ..api.websocket import WebSocket
from .codec import (
    OP_BINARY,
    OP_CLOSE,
    OP_FAIL,
    OP_PING,
    OP_TEXT,
    FrameParser,
    binary_frame,
    close_frame,
    pong_frame,
    text_frame,
)
from .gateway import LINGER, Limits

__all__ = ["FRAMES_PER_TURN", "WebSocketConnection"]

log = logging.getLogger("opendo")

FRAMES_PER_TURN = 4


class WebSocketConnection(asyncio.Protocol):
    """An accepted WebSocket connection (the client end's ``WebSocketTransport``)."""

    __slots__ = (
        "_limits",
        "_connections",
        "_transport",
        "_client",
        "_parser",
        "_close_sent",
        "_closed",
        "_close_timer",
        "_resuming",
        "_pending",
    )

    def __init__(self, limits: Limits, connections: set[Any], client: WebSocket) -> None:
        self._limits = limits
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._client: WebSocket | None = client
        self._parser = FrameParser(limits.max_message_bytes)
        self._close_sent = False
        self._closed = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._resuming = False
        self._pending: list[bytes] | None = None  # frames of this turn, not yet written

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._connections.add(self)
        client = self._client
        assert client is not None
        client.bind(self)

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        if not self._resuming:
            self._read()

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
        if not self._close_sent:
            self.close(1012, "server restarting")
            self._closed_by_network(1012, "server restarting", clean=False)
        self._close_transport()

    # -- frames in --------------------------------------------------------------------------

    def _read(self) -> None:
        parser = self._parser
        for _ in range(FRAMES_PER_TURN):
            if self._closed:
                return
            event = parser.next_event()
            if event is None:
                return
            self._event(event)
        if parser.buffered and not self._closed and self._transport is not None:
            # Enough for this turn: the rest is read in the next one.
            self._resuming = True
            self._transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._continue)

    def _continue(self) -> None:
        self._resuming = False
        if self._closed:
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
        self._read()

    def _event(self, event: tuple[int, Any, Any]) -> None:
        opcode, payload, reason = event
        if opcode == OP_TEXT or opcode == OP_BINARY:
            client = self._client
            if client is not None and not self._close_sent:
                client.transport_received(payload)
        elif opcode == OP_PING:
            self._write(pong_frame(payload))
        elif opcode == OP_CLOSE:
            if not self._close_sent:
                self._close_sent = True
                self._write(close_frame(payload, reason))  # the closing handshake completes
            self._closed_by_network(1005 if payload is None else payload, reason, clean=True)
            self._close_transport()
        elif opcode == OP_FAIL:
            self._fail(payload, reason)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: a close frame, then no more reading (what the client still
        sends is dropped, see ``LINGER``) and TCP closed."""
        log.info("closing a WebSocket connection: %s", reason)
        if not self._close_sent:
            self._close_sent = True
            self._write(close_frame(code, reason))
        self._closed_by_network(code, reason, clean=False)
        self.flush()
        transport = self._transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self._close_transport()
            return
        transport.write_eof()
        if self._resuming:
            transport.resume_reading()
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = asyncio.get_running_loop().call_later(LINGER, self._close_transport)

    def _closed_by_network(self, code: int, reason: str, *, clean: bool) -> None:
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            client.transport_closed(code, reason, clean)

    # -- frames out (WebSocketTransport) ----------------------------------------------------

    def send(self, data: str | bytes) -> None:
        if self._close_sent:
            return
        self._write(text_frame(data) if isinstance(data, str) else binary_frame(data))

    def close(self, code: int, reason: str) -> None:
        if self._close_sent:
            return
        self._close_sent = True
        self._write(close_frame(code, reason))
        loop = asyncio.get_running_loop()
        self._close_timer = loop.call_later(self._limits.close_timeout, self._close_transport)

    def _write(self, frame: bytes) -> None:
        pending = self._pending
        if pending is not None:
            pending.append(frame)
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._pending = [frame]
        _writes().add(self)

    def flush(self) -> None:
        """Write the frames of this turn (``_Writes`` calls it at the turn's end; so does
        whatever ends the connection, first)."""
        frames, self._pending = self._pending, None
        if not frames:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        if transport.get_write_buffer_size() > self._limits.max_buffered_bytes:
            log.warning("dropping a WebSocket client that does not read what it is sent")
            transport.abort()

    def _close_transport(self) -> None:
        self.flush()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


class _Writes:
    """The connections of one event loop with frames to write this turn: one callback at
    the end of the turn writes them all."""

    __slots__ = ("loop", "dirty")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[WebSocketConnection] = []

    def add(self, connection: WebSocketConnection) -> None:
        if not self.dirty:
            self.loop.call_soon(self._flush)
        self.dirty.append(connection)

    def _flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for connection in dirty:
            connection.flush()


_all_writes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writes] = (
    weakref.WeakKeyDictionary()
)
_last: list[_Writes] = []  # the last one looked up (one loop per process, as a rule)


def _writes() -> _Writes:
    loop = asyncio.get_running_loop()
    if _last and _last[0].loop is loop:
        return _last[0]
    writes = _all_writes.get(loop)
    if writes is None:
        writes = _all_writes[loop] = _Writes(loop)
    _last[:] = [writes]
    return writes
