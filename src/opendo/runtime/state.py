"""``ctx`` of a Durable Object: its id, its storage, and lifecycle and hibernation controls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from ..api.websocket import ReadyState, WebSocket, WebSocketRequestResponsePair
from ..core.errors import DurableObjectResetError, StorageError
from ..core.protocols import SocketOwner

if TYPE_CHECKING:
    from ..core.clock import Clock
    from ..core.gates import InputGate
    from ..core.ids import DurableObjectId


class StateHost(SocketOwner, Protocol):
    """What ``ctx`` needs of its object's host (``ObjectHost``)."""

    id: DurableObjectId
    ctx: DurableObjectState | None
    generation: int
    startup_blocks: int
    input_gate: InputGate
    hibernatable: dict[WebSocket, None]
    auto_response: WebSocketRequestResponsePair | None

    @property
    def instance(self) -> object | None: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def storage(self) -> Any: ...

    def track(self, task: asyncio.Future[Any]) -> None: ...

    def reset(self, reason: str, error: BaseException | None = None) -> None: ...

    def startup_block_done(self) -> None: ...


__all__ = [
    "BLOCK_CONCURRENCY_TIMEOUT",
    "MAX_HIBERNATABLE",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "DurableObjectState",
]

log = logging.getLogger("opendo")

BLOCK_CONCURRENCY_TIMEOUT = 30.0
TOO_LONG = f"block_concurrency_while() did not finish within {BLOCK_CONCURRENCY_TIMEOUT:g} s"
MAX_TAGS = 10
MAX_TAG_CHARS = 256
MAX_HIBERNATABLE = 32_768


class DurableObjectState:
    """``ctx`` of a Durable Object: its id, its storage, and lifecycle controls."""

    __slots__ = ("_host", "id")

    def __init__(self, host: StateHost) -> None:
        self._host = host
        self.id = host.id

    def _live_host(self, what: str) -> StateHost:
        host = self._host
        if host.ctx is not self:
            raise StorageError(
                f"ctx.{what} was used by an instance that was reset or evicted; "
                "only the current instance of an object may use it"
            )
        return host

    @property
    def storage(self) -> Any:
        """Durable KV and SQL storage, private to this object (see ``opendo.Storage``)."""
        return self._live_host("storage").storage

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Keep the object alive until ``awaitable`` is done (errors are logged)."""
        task = asyncio.ensure_future(awaitable)
        task.add_done_callback(_log_background_failure)
        self._host.track(task)

    def block_concurrency_while(self, fn: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        """Run ``fn()`` with no other event delivered to the object until it finishes.

        If it raises, the object is reset. Callable from the constructor (without awaiting).
        """
        host = self._live_host("block_concurrency_while()")
        lock = host.input_gate.lock()
        generation = host.generation
        starting = host.instance is None  # called by the constructor: part of the start
        if starting:
            host.startup_blocks += 1
        timed_out = False

        async def run() -> Any:
            try:
                result = await fn()
            except asyncio.CancelledError:
                if timed_out:
                    raise DurableObjectResetError(f"{TOO_LONG}; the object was reset") from None
                raise
            except Exception as exc:
                if host.generation == generation:
                    host.reset(f"block_concurrency_while() failed: {exc!r}", exc)
                raise
            finally:
                timer.cancel()
                lock.release()
            if starting and host.generation == generation:
                host.startup_block_done()
            return result

        def expire() -> None:
            nonlocal timed_out
            if not task.done():
                timed_out = True
                task.cancel()
                if host.generation == generation:
                    host.reset(TOO_LONG)

        task = asyncio.ensure_future(run())
        # A failure resets the object; whoever awaits the task sees it, nobody else must.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        clock = host.clock
        timer = clock.call_at(clock.monotonic() + BLOCK_CONCURRENCY_TIMEOUT, expire)
        host.track(task)
        return task

    # -- WebSocket hibernation ---------------------------------------------------------------

    def accept_websocket(self, ws: WebSocket, tags: Iterable[str] = ()) -> None:
        """Accept ``ws`` (the server end of a pair) so that it survives hibernation: its
        events go to ``web_socket_message``/``web_socket_close``/``web_socket_error``."""
        host = self._live_host("accept_websocket()")
        if not isinstance(ws, WebSocket):
            raise TypeError(f"accept_websocket() takes a WebSocket, got {type(ws).__name__}")
        tags = tuple(tags)
        if len(tags) > MAX_TAGS:
            raise ValueError(f"a WebSocket may have at most {MAX_TAGS} tags, got {len(tags)}")
        for tag in tags:
            if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_CHARS:
                raise ValueError(
                    f"a tag must be a non-empty str of at most {MAX_TAG_CHARS} characters, "
                    f"got {tag!r:.80}"
                )
        if len(host.hibernatable) >= MAX_HIBERNATABLE:
            raise RuntimeError(
                f"an object may hold at most {MAX_HIBERNATABLE} hibernatable WebSockets"
            )
        ws.accept_hibernatable(host, tags)
        host.hibernatable[ws] = None

    def get_websockets(self, tag: str | None = None) -> list[WebSocket]:
        """The connected sockets accepted with ``accept_websocket`` (with ``tag``, if given)."""
        host = self._live_host("get_websockets()")
        closed = ReadyState.CLOSED
        return [
            ws
            for ws in host.hibernatable
            if ws.ready_state is not closed and (tag is None or tag in ws.tags)
        ]

    def get_tags(self, ws: WebSocket) -> list[str]:
        host = self._live_host("get_tags()")
        if not isinstance(ws, WebSocket) or not ws.hibernatable or ws.owner is not host:
            raise ValueError("get_tags() takes a WebSocket accepted with accept_websocket()")
        return list(ws.tags)

    def set_websocket_auto_response(self, pair: WebSocketRequestResponsePair | None = None) -> None:
        """Answer ``pair.request`` with ``pair.response`` on every hibernatable socket,
        without waking the object; None removes it."""
        if pair is not None and not isinstance(pair, WebSocketRequestResponsePair):
            raise TypeError("set_websocket_auto_response() takes a WebSocketRequestResponsePair")
        self._live_host("set_websocket_auto_response()").auto_response = pair

    def get_websocket_auto_response(self) -> WebSocketRequestResponsePair | None:
        return self._live_host("get_websocket_auto_response()").auto_response

    def get_websocket_auto_response_timestamp(self, ws: WebSocket) -> datetime | None:
        """When ``ws`` was last answered by the auto-response, or None."""
        at = ws.auto_response_at
        return None if at is None else datetime.fromtimestamp(at, tz=UTC)

    def abort(self, reason: str = "aborted") -> NoReturn:
        """Reset the object now and raise: writes not yet committed are dropped, and the
        constructor runs again on the next event."""
        self._live_host("abort()").reset(f"abort({reason!r})")
        raise DurableObjectResetError(f"the object was aborted: {reason}")


def _log_background_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("uncaught exception in wait_until()", exc_info=exc)
