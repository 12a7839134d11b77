"""WebSockets and the few JavaScript globals Python Workers use (``from js import …``)."""

from __future__ import annotations

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
