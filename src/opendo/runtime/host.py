"""The object host: one live instance per id, events through the gates, eviction.

Theory of operation
-------------------

The ``Runtime`` owns one ``ObjectHost`` per object id that has work, in a dict keyed by
``(namespace, id)``. Looking a host up and creating it is synchronous, and so is running an
object's constructor, so any number of concurrent first requests for a new id build exactly
one instance: the first one constructs it, the rest find it.

Every event for an object — a fetch, an RPC call, a WebSocket message — goes through
``ObjectHost.deliver``. Delivery is synchronous with the *call* (a stub's ``fetch`` or method
enqueues before it returns its awaitable), which is what keeps calls on one stub in order.
An event starts at once when the object is constructed, its input gate is open and nothing is
queued ahead of it; otherwise it waits in a FIFO queue that drains when the gate opens. A
started event runs as its own task, and the next event starts only after it has run up to its
first await — so a storage call there has locked the input gate before anything else can
start. Events interleave at awaits, as on Cloudflare.

A result (the value of an RPC call, a fetch's ``Response``) reaches its caller only once the
output gate is clear of writes made before it; an exception reaches only that caller, marked
``remote``, and is logged with its traceback here.

The host's states and the moves between them are a table, with its picture, in
``_lifecycle``: EMPTY, ACTIVE, HIBERNATED, BROKEN, EVICTED. ``ObjectHost._move`` makes the
moves.

An object *fails to start* when its constructor raises, or when a ``block_concurrency_while``
that the constructor started fails or times out (a reset before those blocks are done, such
as a failed write, counts too). The host drops what was built, closes the object's
hibernatable WebSockets with 1011 (their events cannot be delivered), and fails every event
waiting for the start with ``DurableObjectStartError``: nothing is delivered again, so
nothing loops. The host stays, BROKEN, counting the failures in a row, and backs off
(``start_backoff``: events fail fast for a while after repeated failures, with an error that
says when the next attempt will be). A start that completes clears the count; so does the
eviction of the idle BROKEN host, which waits at least until its back-off has passed. Each
failed start logs one line (the first of a run with its traceback). An alarm retries a
failed start on its own schedule (2 s, doubling), which is never shorter than the back-off.

A host is idle when no event runs or waits, no standard WebSocket is open, no
``block_concurrency_while`` or ``wait_until`` work is pending, and the output gate is clear.
An idle host is evicted ``idle_timeout`` seconds later by the injected clock — or, when it has
hibernatable WebSockets (``ctx.accept_websocket``), *hibernated* ``hibernation_timeout``
seconds later: the instance and its storage are dropped, but the host stays, holding the
sockets with their tags and attachments, and the next event on any of them (or any other
event) constructs the object again.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from ..api.websocket import (
    CloseEvent,
    Event,
    Listener,
    MessageEvent,
    ReadyState,
    WebSocket,
    WebSocketRequestResponsePair,
)
from ..core import context
from ..core.clock import Clock, TimerHandle
from ..core.context import current_event
from ..core.errors import DurableObjectResetError, DurableObjectStartError, StorageError, as_remote
from ..core.gates import InputGate, InputLock, OutputGate
from ..core.ids import DurableObjectId
from ..core.lifecycle import TRANSITIONS, Lifecycle, start_backoff

if TYPE_CHECKING:
    from ..api.objects import DurableObject
    from .stubs import DurableObjectNamespace

__all__ = ["DurableObjectState", "Lifecycle", "ObjectHost", "current_event", "current_host"]

log = logging.getLogger("opendo")


def current_host() -> ObjectHost | None:
    """The host whose event is running now, if any."""
    host = context.current_host()
    return host if isinstance(host, ObjectHost) else None


Call = Callable[["DurableObject"], Any]

BLOCK_CONCURRENCY_TIMEOUT = 30.0
_TOO_LONG = f"block_concurrency_while() did not finish within {BLOCK_CONCURRENCY_TIMEOUT:g} s"
MAX_TAGS = 10
MAX_TAG_CHARS = 256
MAX_HIBERNATABLE = 32_768


class StorageHandle(Protocol):
    """What the host needs of an object's storage: to close it (rolling back what was not
    committed) when the instance goes away."""

    def close(self) -> None: ...


class ObjectHost:
    """Hosts the single live instance of one Durable Object."""

    __slots__ = (
        "namespace",
        "id",
        "state",
        "instance",
        "ctx",
        "input_gate",
        "output_gate",
        "_queue",
        "_waiting_for_gate",
        "_starting",
        "_running",
        "_sockets",
        "_hibernatable",
        "auto_response",
        "_hibernation_timeout",
        "_background",
        "_events",
        "_idle_timer",
        "_idle_watch",
        "_clock",
        "_idle_timeout",
        "_on_evict",
        "_open_storage",
        "_on_alarm",
        "_storage",
        "constructions",
        "generation",
        "_startup",
        "_start_failures",
        "_retry_at",
        "_start_reason",
    )

    def __init__(
        self,
        namespace: DurableObjectNamespace,
        id: DurableObjectId,
        *,
        clock: Clock,
        idle_timeout: float,
        on_evict: Callable[[ObjectHost], None],
        open_storage: Callable[[ObjectHost], StorageHandle] | None = None,
        on_alarm: Callable[[ObjectHost, int | None], None] | None = None,
        hibernation_timeout: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.id = id
        self.state = Lifecycle.EMPTY
        self.instance: DurableObject | None = None
        self.ctx: DurableObjectState | None = None
        self.input_gate = InputGate()
        self.output_gate = OutputGate()
        self._queue: deque[tuple[Call, asyncio.Future[Any] | None]] = deque()
        self._waiting_for_gate = False
        self._starting = False
        self._running = 0
        self._sockets: set[WebSocket] = set()  # standard sockets: they keep the object alive
        self._hibernatable: dict[WebSocket, None] = {}  # accept_websocket(), in accept order
        self.auto_response: WebSocketRequestResponsePair | None = None
        self._hibernation_timeout = hibernation_timeout
        self._background: set[asyncio.Future[Any]] = set()
        self._events: set[asyncio.Future[Any]] = set()
        self._idle_timer: TimerHandle | None = None
        self._idle_watch: OutputGate | None = None
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._on_evict = on_evict
        self._open_storage = open_storage
        self._on_alarm = on_alarm
        self._storage: StorageHandle | None = None
        self.constructions = 0
        self.generation = 0  # bumped when the instance is dropped
        self._startup = 0  # block_concurrency_while() calls of the constructor not yet done
        self._start_failures = 0  # failed starts in a row
        self._retry_at = 0.0  # clock.monotonic() before which a BROKEN host fails fast
        self._start_reason = ""

    @property
    def class_name(self) -> str:
        return self.namespace.object_class.__name__

    def _move(self, action: str) -> None:
        self.state = TRANSITIONS[(self.state, action)]

    # -- delivery -------------------------------------------------------------------------

    def call(self, fn: Call) -> asyncio.Future[Any]:
        """Deliver an event whose result goes back to a caller."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliver(fn, future)
        return future

    def deliver(self, fn: Call, future: asyncio.Future[Any] | None) -> None:
        if self.state is Lifecycle.EVICTED:
            raise RuntimeError("event delivered to an evicted host")
        self._cancel_idle()
        if self._queue or not self._ready():
            self._queue.append((fn, future))
            self._pump()
        else:
            self._start(fn, future)

    def deliver_listeners(self, listeners: Iterable[Listener], event: Event) -> None:
        """Deliver a WebSocket event to the listeners of a socket this object accepted."""
        for listener in list(listeners):
            self.deliver(_bind_listener(listener, event), None)

    def deliver_socket_event(self, ws: WebSocket, event: Event) -> None:
        """An event on a socket accepted with ``ctx.accept_websocket``: to the object's
        ``web_socket_*`` handlers (constructing it if it hibernated), or, for the
        auto-response request, answered here without waking it."""
        if isinstance(event, MessageEvent):
            pair = self.auto_response
            if pair is not None and event.data == pair.request:
                ws._auto_response_at = self._clock.time()
                if ws._peer is not None and ws._state is ReadyState.OPEN:
                    ws._peer._arrive(MessageEvent(pair.response))
                return
            call = _hibernation_call("web_socket_message", ws, event.data)
        elif isinstance(event, CloseEvent):
            self._hibernatable.pop(ws, None)
            call = _hibernation_call(
                "web_socket_close", ws, event.code, event.reason, event.was_clean
            )
        else:
            call = _hibernation_call("web_socket_error", ws, event.error)
        self.deliver(call, None)

    def _ready(self) -> bool:
        return self.state is Lifecycle.ACTIVE and self.input_gate.is_open and not self._starting

    def _pump(self) -> None:
        if not self._queue:
            return  # (a gate of a dropped instance opened: nothing to construct for)
        if self.instance is None and not self._construct():
            return
        if self._starting:
            return  # the event starting now pumps again after its first step
        if not self.input_gate.is_open:
            if not self._waiting_for_gate:
                self._waiting_for_gate = True
                self.input_gate.when_open(self._gate_opened)
            return
        while self._queue and self._ready():
            self._start(*self._queue.popleft())
        if self._queue:
            self._pump()

    def _gate_opened(self) -> None:
        self._waiting_for_gate = False
        # Only schedule: the code that released the gate continues first.
        asyncio.get_running_loop().call_soon(self._pump)

    def _construct(self) -> bool:
        if self.state is Lifecycle.BROKEN:
            wait = self._retry_at - self._clock.monotonic()
            if wait > 0:
                self._fail_waiting(
                    f"{self._name()} failed to start {self._start_failures} times in a row, "
                    f"the last time: {self._start_reason}; the next attempt is in {wait:.3g} s",
                    wait,
                )
                self._maybe_idle()
                return False
        self._move("activate")
        cls = self.namespace.object_class
        self.ctx = DurableObjectState(self)
        token = context.set_host(self)
        try:
            self.instance = cls(self.ctx, self.namespace.runtime.env)
        except Exception as exc:
            self._start_failed(f"the constructor raised {exc!r}", exc)
            return False
        finally:
            context.reset_host(token)
        self.constructions += 1
        self._move("construct")
        if not self._startup:
            self._start_failures = 0
        return True

    def _startup_block_done(self) -> None:
        """A ``block_concurrency_while`` of the constructor finished: started, if it was the
        last one."""
        self._startup -= 1
        if not self._startup:
            self._start_failures = 0

    def _start_failed(self, reason: str, error: BaseException | None = None) -> None:
        """The start failed: drop what was built, fail the waiting events, back off."""
        self._start_failures += 1
        failures = self._start_failures
        backoff = start_backoff(failures)
        self._retry_at = self._clock.monotonic() + backoff
        self._start_reason = reason
        then = f"the next attempt is in {backoff:g} s" if backoff else "the next event tries again"
        log.error(
            "%s failed to start (%d in a row): %s; %s",
            self._name(),
            failures,
            reason,
            then,
            exc_info=error if failures == 1 else None,
        )
        self._drop_instance()
        for ws in list(self._hibernatable):
            ws._shutdown(1011, "Durable Object failed to start")
        self._hibernatable.clear()
        self._move("fail")
        self._fail_waiting(f"{self._name()} failed to start: {reason}; {then}", backoff)
        self._maybe_idle()

    def _fail_waiting(self, message: str, retry_after: float) -> None:
        queued, self._queue = self._queue, deque()
        for _, future in queued:
            if future is not None and not future.done():
                future.set_exception(
                    DurableObjectStartError(
                        message, reason=self._start_reason, retry_after=retry_after
                    )
                )

    def _name(self) -> str:
        return f"{self.namespace.object_class.__name__}({self.id})"

    def _start(self, fn: Call, future: asyncio.Future[Any] | None) -> None:
        """Run an event up to its first suspension, now.

        The event runs in a context of its own (as a task would: what it sets in a
        ``ContextVar`` stays in it). A coroutine's first step runs here, eagerly, and most
        handlers finish in it (storage calls do not suspend): their result goes out with no
        task made. One that suspends continues in a task. While the first step runs, the
        host counts as starting, so an event delivered meanwhile waits for it.
        """
        instance = self.instance
        assert instance is not None
        generation = self.generation
        scope = contextvars.copy_context()
        scope.run(context.enter, self)
        self._running += 1
        self._starting = True
        try:
            result = scope.run(fn, instance)
            if type(result) is _Coroutine:
                coro = result
                try:
                    step = scope.run(coro.send, None)
                except StopIteration as stop:
                    result = stop.value
                else:
                    self._continue_in_task(_Continue(coro, step), future, generation, scope)
                    return
        except Exception as exc:
            self._running -= 1
            self._fail(future, exc)
            self._maybe_idle()
            return
        finally:
            self._starting = False
            if self._queue:
                self._pump()
        if inspect.isawaitable(result):  # not a coroutine: a future, or another awaitable
            self._continue_in_task(result, future, generation, scope)
        else:
            self._running -= 1
            self._respond(future, result, generation)
            self._maybe_idle()

    def _continue_in_task(
        self,
        awaitable: Awaitable[Any],
        future: asyncio.Future[Any] | None,
        generation: int,
        scope: contextvars.Context,
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._settle(awaitable, future, generation), context=scope
        )
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _settle(
        self, awaitable: Awaitable[Any], future: asyncio.Future[Any] | None, generation: int
    ) -> None:
        """The rest of an event that suspended (in a task, in the event's context)."""
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if future is not None and not future.done():
                future.set_exception(DurableObjectResetError("the call was cancelled"))
            raise
        except Exception as exc:
            self._fail(future, exc)
        else:
            self._respond(future, result, generation)
        finally:
            self._running -= 1
            self._maybe_idle()

    def _respond(self, future: asyncio.Future[Any] | None, result: Any, generation: int) -> None:
        if future is None:
            return
        if generation != self.generation:
            # The instance this call ran on was reset: what it wrote may be gone.
            if not future.done():
                future.set_exception(
                    DurableObjectResetError("the object was reset while this call ran")
                )
            return

        def release(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(DurableObjectResetError(f"a write failed: {error}"))

        self.output_gate.when_clear(release)

    def _fail(self, future: asyncio.Future[Any] | None, exc: BaseException) -> None:
        name = type(self.instance).__name__ if self.instance is not None else "object"
        if future is None:
            log.error("uncaught exception in %s(%s)", name, self.id, exc_info=exc)
        else:
            log.error("exception in %s(%s) reaches its caller", name, self.id, exc_info=exc)
            if not future.done():
                future.set_exception(as_remote(exc))

    # -- sockets, background work and idleness ---------------------------------------------

    def socket_opened(self, ws: WebSocket) -> None:
        self._cancel_idle()
        self._sockets.add(ws)

    def socket_closed(self, ws: WebSocket) -> None:
        self._sockets.discard(ws)
        self._maybe_idle()

    def track(self, task: asyncio.Future[Any]) -> None:
        """Keep the object alive while ``task`` runs."""
        self._cancel_idle()
        self._background.add(task)
        task.add_done_callback(self._untrack)

    def _untrack(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        self._maybe_idle()

    def is_idle(self) -> bool:
        return self._only_waiting_for_output() and self.output_gate.is_clear

    def _maybe_idle(self) -> None:
        if self.state is Lifecycle.EVICTED or self._idle_timer is not None:
            return
        if not self.is_idle():
            if self._only_waiting_for_output():
                # Idle once the last writes are durable: look again then.
                gate = self.output_gate
                if gate is not self._idle_watch:
                    self._idle_watch = gate
                    gate.when_clear(self._output_cleared)
            return
        if self.instance is None and self._hibernatable:
            return  # hibernating already
        timeout = self._hibernation_timeout if self._hibernatable else self._idle_timeout
        if self.state is Lifecycle.BROKEN:  # its back-off is kept until it has passed
            timeout = max(timeout, self._retry_at - self._clock.monotonic())
        self._idle_timer = self._clock.call_at(
            self._clock.monotonic() + timeout, self._idle_expired
        )

    def _output_cleared(self, error: BaseException | None) -> None:
        self._idle_watch = None
        if error is None:  # a broken gate means a reset, which looks again itself
            self._maybe_idle()

    def _only_waiting_for_output(self) -> bool:
        return (
            self._running == 0
            and not self._queue
            and not self._sockets
            and not self._background
            and self.input_gate.is_open
        )

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self.is_idle():
            self.evict()

    @property
    def storage(self) -> StorageHandle:
        """The object's storage, opened on first use."""
        if self._storage is None:
            if self._open_storage is None:
                raise RuntimeError("this runtime has no storage")
            self._storage = self._open_storage(self)
        return self._storage

    def alarm_changed(self, time_ms: int | None) -> None:
        """Storage set (or deleted) this object's alarm."""
        if self._on_alarm is not None:
            self._on_alarm(self, time_ms)

    def _close_storage(self) -> None:
        storage, self._storage = self._storage, None
        if storage is not None:
            storage.close()

    def evict(self) -> None:
        """Drop the instance; the next event builds a new one. Hibernatable WebSockets stay
        connected (the host hibernates); without them, the host is forgotten too."""
        self._cancel_idle()
        self._close_storage()
        self.generation += 1
        self.instance = None
        self.ctx = None
        if self._hibernatable:
            self._move("hibernate")
            log.debug(
                "hibernated %s(%s) with %d WebSockets",
                self.namespace.object_class.__name__,
                self.id,
                len(self._hibernatable),
            )
        else:
            self._move("evict")
            self._on_evict(self)

    def reset(self, reason: str, error: BaseException | None = None) -> None:
        """Drop the instance after a failure; queued events construct a new one. Before the
        constructor's ``block_concurrency_while`` calls are done, the start failed."""
        if self._startup:
            self._start_failed(reason, error)
            return
        log.warning("resetting %s: %s", self._name(), reason)
        self._drop_instance()
        self._move("hibernate" if self._hibernatable else "reset")
        if self._queue:
            asyncio.get_running_loop().call_soon(self._pump)
        else:
            self._maybe_idle()

    def _drop_instance(self) -> None:
        for ws in list(self._sockets):
            ws._shutdown(1011, "Durable Object reset")
        self._sockets.clear()
        self.generation += 1
        self.instance = None
        self.ctx = None
        self._startup = 0
        self.input_gate = InputGate()
        self._waiting_for_gate = False
        self.output_gate = OutputGate()
        # After the new gates exist: a flush still in flight holds the new output gate, so
        # the next instance cannot reveal what that flush has not yet made durable.
        self._close_storage()

    def statistics(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "running": self._running,
            "queued": len(self._queue),
            "sockets": len(self._sockets),
            "hibernatable_sockets": len(self._hibernatable),
            "constructions": self.constructions,
            "start_failures": self._start_failures,
        }


class DurableObjectState:
    """``ctx`` of a Durable Object: its id, its storage, and lifecycle controls."""

    __slots__ = ("_host", "id")

    def __init__(self, host: ObjectHost) -> None:
        self._host = host
        self.id = host.id

    def _live_host(self, what: str) -> ObjectHost:
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
        lock: InputLock = host.input_gate.lock()
        generation = host.generation
        starting = host.instance is None  # called by the constructor: part of the start
        if starting:
            host._startup += 1
        timed_out = False

        async def run() -> Any:
            try:
                result = await fn()
            except asyncio.CancelledError:
                if timed_out:
                    raise DurableObjectResetError(f"{_TOO_LONG}; the object was reset") from None
                raise
            except Exception as exc:
                if host.generation == generation:
                    host.reset(f"block_concurrency_while() failed: {exc!r}", exc)
                raise
            finally:
                timer.cancel()
                lock.release()
            if starting and host.generation == generation:
                host._startup_block_done()
            return result

        def expire() -> None:
            nonlocal timed_out
            if not task.done():
                timed_out = True
                task.cancel()
                if host.generation == generation:
                    host.reset(_TOO_LONG)

        task = asyncio.ensure_future(run())
        # A failure resets the object; whoever awaits the task sees it, nobody else must.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        timer = host._clock.call_at(host._clock.monotonic() + BLOCK_CONCURRENCY_TIMEOUT, expire)
        host.track(task)
        return task

    # -- WebSocket hibernation ---------------------------------------------------------------

    def accept_websocket(self, ws: WebSocket, tags: Iterable[str] = ()) -> None:
        """Accept ``ws`` (the server end of a pair) so that it survives hibernation: its
        events go to ``web_socket_message``/``web_socket_close``/``web_socket_error``."""
        host = self._live_host("accept_websocket()")
        if not isinstance(ws, WebSocket):
            raise TypeError(f"accept_websocket() takes a WebSocket, got {type(ws).__name__}")
        if ws._accepted or ws._transport is not None or ws._peer is None:
            raise RuntimeError(
                "accept_websocket() takes the server end of a new WebSocketPair, not yet accepted"
            )
        tags = tuple(tags)
        if len(tags) > MAX_TAGS:
            raise ValueError(f"a WebSocket may have at most {MAX_TAGS} tags, got {len(tags)}")
        for tag in tags:
            if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_CHARS:
                raise ValueError(
                    f"a tag must be a non-empty str of at most {MAX_TAG_CHARS} characters, "
                    f"got {tag!r:.80}"
                )
        if len(host._hibernatable) >= MAX_HIBERNATABLE:
            raise RuntimeError(
                f"an object may hold at most {MAX_HIBERNATABLE} hibernatable WebSockets"
            )
        ws._hibernatable = True
        ws._tags = tags
        ws._accepted = True
        ws._state = ReadyState.OPEN
        ws._host = host
        host._hibernatable[ws] = None
        ws._drain_pending()

    def get_websockets(self, tag: str | None = None) -> list[WebSocket]:
        """The connected sockets accepted with ``accept_websocket`` (with ``tag``, if given)."""
        host = self._live_host("get_websockets()")
        return [
            ws
            for ws in host._hibernatable
            if ws._state is not ReadyState.CLOSED and (tag is None or tag in ws._tags)
        ]

    def get_tags(self, ws: WebSocket) -> list[str]:
        host = self._live_host("get_tags()")
        if not ws._hibernatable or ws._host is not host:
            raise ValueError("get_tags() takes a WebSocket accepted with accept_websocket()")
        return list(ws._tags)

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
        at = ws._auto_response_at
        return None if at is None else datetime.fromtimestamp(at, tz=UTC)

    def abort(self, reason: str = "aborted") -> NoReturn:
        """Reset the object now and raise: writes not yet committed are dropped, and the
        constructor runs again on the next event."""
        self._live_host("abort()").reset(f"abort({reason!r})")
        raise DurableObjectResetError(f"the object was aborted: {reason}")


async def _coroutine_type() -> None:
    pass


_coroutine = _coroutine_type()
_Coroutine = type(_coroutine)
_coroutine.close()


class _Continue:
    """Awaits the rest of a coroutine whose first step already ran and yielded ``step``:
    hands each yielded future to the task running this, and sends (or throws) into the
    coroutine what the task sends (or throws) back — the task's protocol, one level down."""

    __slots__ = ("_coro", "_step")

    def __init__(self, coro: Coroutine[Any, Any, Any], step: Any) -> None:
        self._coro = coro
        self._step = step

    def __await__(self) -> Generator[Any, None, Any]:
        coro, step = self._coro, self._step
        while True:
            try:
                yield step
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the task: a cancellation
                try:
                    step = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                step = coro.send(None)
            except StopIteration as stop:
                return stop.value


def _hibernation_call(name: str, ws: WebSocket, *args: Any) -> Call:
    def call(instance: DurableObject) -> Any:
        handler = getattr(instance, name, None)
        if handler is None:
            # A message nobody handles is lost: say so. A close needs no handler (the close
            # was answered already), nor does an error (its close follows).
            level = logging.ERROR if name == "web_socket_message" else logging.DEBUG
            log.log(
                level,
                "%s received a WebSocket event but defines no %s()",
                type(instance).__name__,
                name,
            )
            return None
        return handler(ws, *args)

    return call


def _bind_listener(listener: Listener, event: Event) -> Call:
    def call(_instance: DurableObject) -> Any:
        return listener(event)

    return call


def _log_background_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("uncaught exception in wait_until()", exc_info=exc)
