"""WebSockets and the few JavaScript globals Python Workers use (``from js import …``)."""

from __future__ import annotations

import asyncio
import contextlib
import json as _json
import logging
import time
import types
import uuid
from collections.abc import (
    Iterable,
    Mapping,
)
from typing import Any, NoReturn, TypeVar, cast

from ..api import websocket as _ws
from ..api.http import Headers
from ..runtime.host import current_host
from ..runtime.outbound import OutboundWebSocket, connect_websocket, fetch
from .helpers import _plain

_T = TypeVar("_T")
_R = TypeVar("_R")

HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


# -- WebSockets and the ``js`` globals --------------------------------------------------------


class WebSocket(_ws.WebSocket):
    """One end of a ``WebSocketPair``, with Cloudflare's camelCase names; ``WebSocket.new(url)``
    opens one to another server."""

    __slots__ = ()
    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3

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

    @classmethod
    def new(cls, url: str, protocols: str | Iterable[str] | None = None) -> ClientWebSocket:
        """``new WebSocket(url)`` as JavaScript writes it: a WebSocket this object opens to
        another server (see ``ClientWebSocket``)."""
        return ClientWebSocket(url, protocols)


class OpenEvent:
    __slots__ = ()
    type = "open"


class ClientWebSocket:
    """``WebSocket.new("wss://…")`` (``from js import WebSocket``): a WebSocket to another
    server, with the browser's interface — ``readyState`` (CONNECTING, then OPEN, CLOSING,
    CLOSED), ``addEventListener("open" | "message" | "close" | "error", f)`` or the
    ``onopen``/``onmessage``/``onclose``/``onerror`` properties, ``send`` once open,
    ``close(code, reason)``. On ``opendo.connect_websocket``::

        ws = WebSocket.new("wss://feed.example.org/prices")
        ws.addEventListener("open", lambda event: ws.send("subscribe"))
        ws.addEventListener("message", lambda event: self.prices.append(event.data))

    In a Durable Object its listeners run as the object's events (through its input gate, as
    a standard WebSocket's do), the object stays in memory while the socket is open, and what
    ``send`` sends leaves once the writes made before the call are durable. A reset of the
    object closes the socket as it closes the object's other WebSockets."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3

    def __init__(self, url: str, protocols: str | Iterable[str] | None = None) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"WebSocket: {url!r} is not a ws:// or wss:// URL")
        self.url = url
        self.protocol = ""
        self.readyState = self.CONNECTING
        self.onopen: _ws.Listener | None = None
        self.onmessage: _ws.Listener | None = None
        self.onclose: _ws.Listener | None = None
        self.onerror: _ws.Listener | None = None
        self._listeners: dict[str, list[_ws.Listener]] = {}
        self._protocols = [protocols] if isinstance(protocols, str) else list(protocols or ())
        self._host = current_host()
        self._outgoing: asyncio.Queue[tuple[asyncio.Future[None], str | bytes | None]] = (
            asyncio.Queue()
        )
        self._close_with: tuple[int, str] = (1000, "")
        self._terminated = False
        self._task = asyncio.get_running_loop().create_task(self._run())
        if self._host is not None:
            self._host.socket_opened(self)

    def addEventListener(self, type: str, listener: _ws.Listener) -> None:  # noqa: N802
        self._listeners.setdefault(type, []).append(listener)

    def removeEventListener(self, type: str, listener: _ws.Listener) -> None:  # noqa: N802
        listeners = self._listeners.get(type, [])
        if listener in listeners:
            listeners.remove(listener)

    def send(self, message: str | bytes) -> None:
        """Send ``message`` (str or bytes) once the writes made before this call are durable.
        Before the socket is open this raises, as a browser's does; once it is closing, the
        message is dropped."""
        if self.readyState == self.CONNECTING:
            raise RuntimeError("WebSocket.send: the WebSocket is still connecting")
        if not isinstance(message, str | bytes | bytearray | memoryview):
            raise TypeError(f"WebSocket.send takes str or bytes, not {type(message).__name__}")
        if self.readyState != self.OPEN:
            return
        self._outgoing.put_nowait(
            (self._cleared(), bytes(message) if not isinstance(message, str) else message)
        )

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket, after what was sent before (code 1000 or 3000..4999)."""
        if code != 1000 and not 3000 <= code <= 4999:
            raise ValueError(f"WebSocket.close: code {code} is not 1000 or in 3000..4999")
        if self.readyState in (self.CLOSING, self.CLOSED):
            return
        self.readyState = self.CLOSING
        self._close_with = (code, reason)
        self._outgoing.put_nowait((self._cleared(), None))

    def _cleared(self) -> asyncio.Future[None]:
        cleared: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._host is not None:
            self._host.output_gate.resolve_when_clear(cleared)
        else:
            cleared.set_result(None)
        return cleared

    def terminate(self, code: int, reason: str) -> None:
        """The object was reset or dropped (its host calls this): close with ``code``; its
        listeners hear no more."""
        if self._terminated:
            return
        self._terminated = True
        self.readyState = self.CLOSED
        self._close_with = (code, reason)
        self._task.cancel()

    async def _run(self) -> None:
        socket: OutboundWebSocket | None = None
        try:
            try:
                socket = await connect_websocket(self.url, subprotocols=self._protocols)
            except ConnectionError as exc:
                self.readyState = self.CLOSED
                self._emit("error", _ws.ErrorEvent(exc))
                self._emit("close", _ws.CloseEvent(1006, "", False))
                return
            await self._session(socket)
        except asyncio.CancelledError:
            if socket is not None and self._terminated:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(socket.close(*self._close_with), 1.0)
            raise
        finally:
            if not self._terminated and self._host is not None:
                self._host.socket_closed(self)

    async def _session(self, socket: OutboundWebSocket) -> None:
        self.protocol = socket.subprotocol or ""
        if self.readyState == self.CONNECTING:
            self.readyState = self.OPEN
            self._emit("open", OpenEvent())
        writer = asyncio.ensure_future(self._write(socket))
        try:
            async for message in socket:
                self._emit("message", _ws.MessageEvent(message))
        finally:
            writer.cancel()
        self.readyState = self.CLOSED
        code, reason, clean = socket.closed_with or (1006, "", False)
        self._emit("close", _ws.CloseEvent(code, reason, clean))

    async def _write(self, socket: OutboundWebSocket) -> None:
        try:
            while True:
                cleared, message = await self._outgoing.get()
                await cleared  # a write before it failed: it is never sent
                if message is None:
                    await socket.close(*self._close_with)
                    return
                await socket.send(message)
        except asyncio.CancelledError:
            raise
        except Exception:  # a failed write, or the connection is gone
            with contextlib.suppress(Exception):
                await socket.close(1011, "a write before this message failed")

    def _emit(self, type: str, event: Any) -> None:
        """Give ``event`` to the listeners: in the object, as its events."""
        handler = getattr(self, f"on{type}")
        listeners = [*([handler] if handler is not None else []), *self._listeners.get(type, [])]
        if self._terminated or not listeners:
            return
        if self._host is None:
            for listener in listeners:
                _ws.call_listener(listener, event)
        else:
            self._host.deliver_listeners(listeners, event)


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


class Object:
    """``js.Object``: the static methods that have an honest Python meaning on dicts."""

    @staticmethod
    def fromEntries(entries: Iterable[Any]) -> dict[Any, Any]:  # noqa: N802
        return {key: value for key, value in entries}

    @staticmethod
    def keys(value: Mapping[Any, Any]) -> list[Any]:
        return list(value.keys())

    @staticmethod
    def values(value: Mapping[Any, Any]) -> list[Any]:
        return list(value.values())

    @staticmethod
    def entries(value: Mapping[Any, Any]) -> list[list[Any]]:
        return [[key, item] for key, item in value.items()]

    @staticmethod
    def assign(target: dict[Any, Any], *sources: Mapping[Any, Any]) -> dict[Any, Any]:
        for source in sources:
            target.update(source)
        return target


class Array:
    """``js.Array``: ``Array.isArray(x)``, ``Array.from_(iterable)`` (``from`` is a keyword
    in Python; Pyodide spells it ``from_`` too)."""

    @staticmethod
    def isArray(value: Any) -> bool:  # noqa: N802
        return isinstance(value, list | tuple)

    @staticmethod
    def from_(iterable: Iterable[Any]) -> list[Any]:
        return list(iterable)


class JSON:
    """``js.JSON``: ``parse`` and ``stringify`` (the standard library's json)."""

    @staticmethod
    def parse(text: str) -> Any:
        return _json.loads(text)

    @staticmethod
    def stringify(value: Any) -> str:
        return _json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _Console:
    """``js.console``: ``log``/``info``/``debug`` at INFO/DEBUG, ``warn``, ``error``, to the
    server's log (logger ``opendo.console``)."""

    def __init__(self) -> None:
        self._log = logging.getLogger("opendo.console")

    def _write(self, level: int, args: tuple[Any, ...]) -> None:
        self._log.log(level, " ".join(a if isinstance(a, str) else repr(a) for a in args))

    def log(self, *args: Any) -> None:
        self._write(logging.INFO, args)

    info = log

    def debug(self, *args: Any) -> None:
        self._write(logging.DEBUG, args)

    def warn(self, *args: Any) -> None:
        self._write(logging.WARNING, args)

    def error(self, *args: Any) -> None:
        self._write(logging.ERROR, args)


class _Crypto:
    """``js.crypto``: ``randomUUID()`` (a version 4 UUID, from the operating system's random
    source)."""

    @staticmethod
    def randomUUID() -> str:  # noqa: N802
        return str(uuid.uuid4())


def _js_module() -> types.ModuleType:
    provided: dict[str, Any] = {
        "Array": Array,
        "Date": Date,
        "JSON": JSON,
        "Object": Object,
        "console": _Console(),
        "crypto": _Crypto(),
        "fetch": fetch,
        "WebSocket": WebSocket,
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
