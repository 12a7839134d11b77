"""``ctx`` of a Durable Object and of a Worker, and ``AlarmInfo``, camelCase."""

from __future__ import annotations

import asyncio
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from ..api import objects as _api
from ..api import websocket as _ws
from ..api.http import Headers
from ..core.alarms import AlarmInfo as _AlarmInfo
from ..runtime.state import DurableObjectState
from .bindings import DurableObjectId, _as_id
from .helpers import _resolve
from .storage import Storage
from .unsupported import _unsupported

_T = TypeVar("_T")
_R = TypeVar("_R")

HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


# -- ctx -----------------------------------------------------------------------------------------


class DurableObjectContext:
    """``self.ctx`` of a Durable Object, with Cloudflare's names (opendo's
    ``DurableObjectState`` underneath; its snake_case names work too)."""

    __slots__ = ("_state", "_storage")

    def __init__(self, state: DurableObjectState) -> None:
        self._state = state
        self._storage: Storage | None = None

    @property
    def id(self) -> DurableObjectId:
        return _as_id(self._state.id)

    @property
    def storage(self) -> Storage:
        real = self._state.storage  # refuses, naming it, if this instance is gone
        wrapped = self._storage
        if wrapped is None or wrapped._storage is not real:
            wrapped = self._storage = Storage(real)
        return wrapped

    def blockConcurrencyWhile(self, callback: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``callback()`` (sync or async) with no other event delivered until it is
        done; if it raises, the object is reset. Works as a decorator too::

            @self.ctx.blockConcurrencyWhile
            async def initialize():
                self.count = (await self.ctx.storage.get("count")) or 0
        """
        return self._state.block_concurrency_while(lambda: _resolve(callback()))

    def waitUntil(self, promise: Awaitable[Any]) -> None:
        self._state.wait_until(promise)

    def acceptWebSocket(self, ws: _ws.WebSocket, tags: Iterable[str] | None = None) -> None:
        self._state.accept_websocket(ws, () if tags is None else tags)

    def getWebSockets(self, tag: str | None = None) -> list[_ws.WebSocket]:
        return self._state.get_websockets(tag)

    def getTags(self, ws: _ws.WebSocket) -> list[str]:
        return self._state.get_tags(ws)

    def setWebSocketAutoResponse(
        self, pair: _ws.WebSocketRequestResponsePair | None = None
    ) -> None:
        self._state.set_websocket_auto_response(pair)

    def getWebSocketAutoResponse(self) -> _ws.WebSocketRequestResponsePair | None:
        return self._state.get_websocket_auto_response()

    def getWebSocketAutoResponseTimestamp(self, ws: _ws.WebSocket) -> datetime | None:
        return self._state.get_websocket_auto_response_timestamp(ws)

    def abort(self, reason: str | None = None) -> NoReturn:
        self._state.abort("aborted" if reason is None else reason)

    def setHibernatableWebSocketEventTimeout(self, timeout_ms: int | None = None) -> NoReturn:
        _unsupported(
            "ctx.setHibernatableWebSocketEventTimeout()", "WebSocket event handlers have no timeout"
        )

    def getHibernatableWebSocketEventTimeout(self) -> NoReturn:
        _unsupported(
            "ctx.getHibernatableWebSocketEventTimeout()", "WebSocket event handlers have no timeout"
        )

    @property
    def props(self) -> NoReturn:
        _unsupported("ctx.props", "there are no service bindings to pass props")

    @property
    def exports(self) -> NoReturn:
        _unsupported("ctx.exports", "there are no loopback bindings")

    @property
    def container(self) -> NoReturn:
        _unsupported("ctx.container", "there are no containers")

    @property
    def facets(self) -> NoReturn:
        _unsupported("ctx.facets", "there are no facets")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def _as_context(ctx: Any) -> Any:
    if isinstance(ctx, DurableObjectState):
        return DurableObjectContext(ctx)
    return ctx


class Context:
    """``self.ctx`` of a Worker: ``waitUntil(awaitable)``."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: _api.ExecutionContext) -> None:
        self._ctx = ctx

    def waitUntil(self, promise: Awaitable[Any]) -> None:
        self._ctx.wait_until(promise)

    def wait_until(self, promise: Awaitable[Any]) -> None:
        self._ctx.wait_until(promise)

    def passThroughOnException(self) -> NoReturn:
        _unsupported("ctx.passThroughOnException()", "there is no origin to pass through to")


def _as_worker_context(ctx: Any) -> Any:
    if isinstance(ctx, _api.ExecutionContext):
        return Context(ctx)
    return ctx


class AlarmInfo:
    """What ``alarm(alarm_info)`` is given: ``retryCount`` and ``isRetry`` (also
    ``retry_count`` and ``is_retry``)."""

    __slots__ = ("retryCount",)

    def __init__(self, retryCount: int = 0) -> None:
        self.retryCount = retryCount

    @property
    def isRetry(self) -> bool:
        return self.retryCount > 0

    @property
    def retry_count(self) -> int:
        return self.retryCount

    @property
    def is_retry(self) -> bool:
        return self.isRetry

    def __repr__(self) -> str:
        return f"AlarmInfo(retryCount={self.retryCount})"


def _as_alarm_info(info: Any) -> Any:
    if info is None:
        return AlarmInfo()
    if isinstance(info, _AlarmInfo):
        return AlarmInfo(info.retry_count)
    return info
