"""WebSockets and the few JavaScript globals Python Workers use (``from js import …``)."""

from __future__ import annotations

import time
import types
from collections.abc import (
    Iterable,
    Mapping,
)
from typing import Any, NoReturn, TypeVar, cast

from ..api import websocket as _ws
from ..api.http import Headers
from ..runtime.host import current_host
from ..runtime.outbound import fetch
from .helpers import _plain

_T = TypeVar("_T")
_R = TypeVar("_R")

HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


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
        "fetch": fetch,
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
