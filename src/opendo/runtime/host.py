"""The object host: one live instance per id, events through the gates, activation, eviction.

Theory of operation
-------------------

The ``Runtime`` owns one ``ObjectHost`` per object that has work, in a dict keyed by
``(class name, id)``. Looking a host up and creating it is synchronous, so any number of
concurrent first events for a new id find the same host, and it activates the object once.

Every event for an object — a fetch, an RPC call, an alarm, a WebSocket message — is data
(``core.events``) and goes through ``ObjectHost.deliver``. Delivery is synchronous with the
*call* (a stub's ``fetch`` or method enqueues before it returns its awaitable), which is what
keeps calls on one stub in order. An event starts at once when the object is active, its input
gate is open and nothing is queued ahead of it; otherwise it waits in a FIFO queue that drains
when the gate opens. An event's first step runs at once, in a context of its own; one that
suspends continues in a task, and the next event starts only after that first step — so a
storage call there has locked the input gate before anything else can start. Events interleave
at awaits, as on Cloudflare.

*Activation* (the lifecycle table is ``core.lifecycle``): the first event of an object without
an instance claims it (``Placement.claim``: here, with an epoch, or owned elsewhere), opens its
storage for that epoch (``StorageProvider.open``), and constructs it. Either of the first two
may answer at once or later; while they work the host is ACTIVATING and events queue. When
another process or node owns the object, the host turns REMOTE: its events go, in order, to
the ``Forwarder``, and come back as results; if that owner is gone, the host claims the object
again. A failed start (the claim, the storage or the constructor) fails the waiting events
with ``DurableObjectStartError`` and backs off.

A result (the value of an RPC call, a fetch's ``Response``) reaches its caller only once the
output gate is clear of writes made before it; an exception reaches only that caller, marked
``remote``, and is logged with its traceback here.

A host is idle when no event runs or waits, no standard WebSocket is open, no
``block_concurrency_while`` or ``wait_until`` work is pending, and the output gate is clear.
An idle host is evicted ``idle_timeout`` seconds later by the injected clock — or, when it has
hibernatable WebSockets (``ctx.accept_websocket``), *hibernated* ``hibernation_timeout``
seconds later: the instance and its storage are dropped, but the host stays, holding the
sockets with their tags and attachments, and the next event on any of them (or any other
event) activates the object again. When more objects have their storage open than the
runtime's budget (``open_objects``), the longest idle are evicted at once (``evict_if_idle``).
Forwarding to another owner is ``runtime.forwarding``'s part of the host.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ..api.websocket import (
    CloseEvent,
    Listener,
    MessageEvent,
    WebSocket,
    WebSocketRequestResponsePair,
)
from ..api.websocket import Event as SocketEvent
from ..core import context
from ..core import events as ev
from ..core.clock import Clock, TimerHandle
from ..core.errors import (
    DurableObjectError,
    DurableObjectResetError,
    DurableObjectStartError,
    OwnerGoneError,
    StorageError,
    as_remote,
)
from ..core.gates import InputGate, OutputGate
from ..core.ids import DurableObjectId
from ..core.lifecycle import TRANSITIONS, Lifecycle, start_backoff
from ..core.metrics import METRICS
from ..core.protocols import Claim, ObjectStorage
from ..core.storage import FencedError
from .forwarding import Forwarding
from .invoke import invoke
from .services import HostServices, Namespace
from .state import DurableObjectState
from .steps import Continue, is_coroutine

if TYPE_CHECKING:
    from ..api.objects import DurableObject

__all__ = ["HostServices", "Lifecycle", "ObjectHost", "current_host"]

log = logging.getLogger("opendo")

Queued = tuple[object, "asyncio.Future[Any] | None"]


class OpenSocket(Protocol):
    """A standard WebSocket of an object (one end of a pair, or one it opened to another
    server): it keeps the object in memory, and a reset or a drop terminates it."""

    def terminate(self, code: int, reason: str) -> None: ...


def current_host() -> ObjectHost | None:
    """The host whose event is running now, if any."""
    host = context.current_host()
    return host if isinstance(host, ObjectHost) else None


class ObjectHost(Forwarding):
    """Hosts the single live instance of one Durable Object."""

    __slots__ = (  # and Forwarding's
        "namespace",
        "id",
        "state",
        "instance",
        "ctx",
        "input_gate",
        "output_gate",
        "hibernatable",
        "auto_response",
        "constructions",
        "generation",
        "startup_blocks",
        "epoch",
        "_services",
        "_queue",
        "_waiting_for_gate",
        "_starting",
        "_sockets",
        "_background",
        "_events",
        "_idle_timer",
        "_idle_watch",
        "_storage",
        "_claimed",
        "_start_failures",
        "_retry_at",
        "_start_reason",
        "_start_cause",
    )

    def __init__(self, namespace: Namespace, id: DurableObjectId, services: HostServices) -> None:
        self.namespace = namespace
        self.id = id
        self.state = Lifecycle.EMPTY
        self.instance: DurableObject | None = None
        self.ctx: DurableObjectState | None = None
        self.input_gate = InputGate()
        self.output_gate = OutputGate()
        self.hibernatable: dict[WebSocket, None] = {}  # accept_websocket(), in accept order
        self.auto_response: WebSocketRequestResponsePair | None = None
        self.constructions = 0
        self.generation = 0  # bumped when the instance is dropped
        self.startup_blocks = 0  # block_concurrency_while() calls of the constructor running
        self.epoch = 0  # of the claim this host holds
        self.owner: str | None = None  # who owns the object, when it is REMOTE
        self._services = services
        self._queue: deque[Queued] = deque()
        self._waiting_for_gate = False
        self._starting = False
        self._running = 0  # events started and not finished (forwarded ones too)
        self._sockets: set[OpenSocket] = set()  # standard sockets: they keep the object alive
        self._background: set[asyncio.Future[Any]] = set()
        self._events: set[asyncio.Future[Any]] = set()
        self._idle_timer: TimerHandle | None = None
        self._idle_watch: OutputGate | None = None
        self._storage: ObjectStorage | None = None
        self._claimed = False
        self._start_failures = 0  # failed starts in a row
        self._retry_at = 0.0  # clock.monotonic() before which a BROKEN host fails fast
        self._start_reason = ""
        self._gone: dict[int, int] = {}  # id(event) -> owners it found gone
        self._relayed: set[int] = set()  # id(event) of events another owner forwarded here
        self._start_cause: BaseException | None = None

    @property
    def class_name(self) -> str:
        return self.namespace.object_class.__name__

    @property
    def clock(self) -> Clock:
        return self._services.clock

    @property
    def sockets(self) -> frozenset[OpenSocket]:
        """The standard WebSockets open in the object: accepted (``ws.accept()``), or opened
        to another server (``js.WebSocket``)."""
        return frozenset(self._sockets)

    def name(self) -> str:
        return f"{self.class_name}({self.id})"

    def _move(self, action: str) -> None:
        self.state = state = TRANSITIONS[(self.state, action)]
        METRICS.lifecycle.inc(self.class_name, state.value)

    # -- delivery -------------------------------------------------------------------------

    def call(self, event: object) -> asyncio.Future[Any]:
        """Deliver an event whose result goes back to a caller."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliver(event, future)
        return future

    def deliver(self, event: object, future: asyncio.Future[Any] | None) -> None:
        if self.state is Lifecycle.EVICTED:
            raise RuntimeError("event delivered to an evicted host")
        self._cancel_idle()
        if self.state is Lifecycle.REMOTE and not self._queue:
            self._forward(event, future)
        elif self._queue or not self._ready():
            self._queue.append((event, future))
            self._pump()
        else:
            self._start(event, future)

    def deliver_listeners(self, listeners: Iterable[Listener], event: SocketEvent) -> None:
        """Deliver a WebSocket event to the listeners of a socket this object accepted."""
        for listener in list(listeners):
            self.deliver(ev.Listener(listener, event), None)

    def deliver_socket_event(self, ws: WebSocket, event: SocketEvent) -> None:
        """An event on a socket accepted with ``ctx.accept_websocket``: to the object's
        ``web_socket_*`` handlers (activating it if it hibernated), or, for the
        auto-response request, answered here without waking it."""
        if isinstance(event, MessageEvent):
            pair = self.auto_response
            if pair is not None and event.data == pair.request:
                ws.auto_respond(pair.response, self._services.clock.time())
                return
            self.deliver(ev.SocketMessage(ws, event.data), None)
        elif isinstance(event, CloseEvent):
            self.hibernatable.pop(ws, None)
            self.deliver(ev.SocketClose(ws, event.code, event.reason, event.was_clean), None)
        else:
            self.deliver(ev.SocketError(ws, event.error), None)

    def _ready(self) -> bool:
        return self.state is Lifecycle.ACTIVE and self.input_gate.is_open and not self._starting

    def _pump(self) -> None:
        if not self._queue:
            return  # (a gate of a dropped instance opened: nothing to activate for)
        state = self.state
        if state is Lifecycle.REMOTE:
            while self._queue and self.state is Lifecycle.REMOTE:
                self._forward(*self._queue.popleft())
            return
        if state is Lifecycle.ACTIVATING:
            return  # the activation pumps when it is done
        if self.instance is None:
            self._activate()
            if self.instance is None:
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

    # -- activation: claim, storage, constructor --------------------------------------------

    def _activate(self) -> None:
        if self.state is Lifecycle.BROKEN:
            wait = self._retry_at - self._services.clock.monotonic()
            if wait > 0:
                self._fail_waiting(
                    f"{self.name()} failed to start {self._start_failures} times in a row, "
                    f"the last time: {self._start_reason}; the next attempt is in {wait:.3g} s",
                    wait,
                )
                self._maybe_idle()
                return
        self._move("activate")
        if self._claimed:
            self._open_storage()
            return
        try:
            claim = self._services.placement.claim(self.class_name, self.id)
        except Exception as exc:
            self._start_failed(f"it could not be claimed: {exc!r}", exc)
            return
        if isinstance(claim, Claim):
            self._take(claim)
        else:
            self._later(self._claim_later(claim))

    async def _claim_later(self, claim: Awaitable[Claim]) -> None:
        try:
            answer = await claim
        except Exception as exc:
            self._start_failed(f"it could not be claimed: {exc!r}", exc)
            return
        self._take(answer)

    def _take(self, claim: Claim) -> None:
        if claim.owner is not None:
            self.owner = claim.owner
            self._move("forward")
            self._pump()
            return
        self._claimed = True
        self.epoch = claim.epoch
        self._open_storage()

    def _open_storage(self) -> None:
        kept = self._storage
        if kept is not None and not kept.closed:  # opened by on_storage() meanwhile
            self._opened(kept)
            return
        try:
            storage = self._services.storage.open(self, self.class_name, self.id, self.epoch)
        except Exception as exc:
            self._start_failed(f"its storage could not be opened: {exc}", exc)
            return
        if inspect.isawaitable(storage):
            self._later(self._open_later(storage))
        else:
            self._opened(storage)

    async def _open_later(self, storage: Awaitable[ObjectStorage]) -> None:
        try:
            opened = await storage
        except Exception as exc:
            self._start_failed(f"its storage could not be opened: {exc}", exc)
            return
        self._opened(opened)

    def _later(self, step: Coroutine[Any, Any, None]) -> None:
        """Finish the activation in a task (the claim or the storage answers later)."""
        task = asyncio.get_running_loop().create_task(step)
        self._events.add(task)
        task.add_done_callback(self._events.discard)
        task.add_done_callback(lambda _: self._pump())

    def _opened(self, storage: ObjectStorage) -> None:
        self._keep_storage(storage)
        cls = self.namespace.object_class
        self.ctx = DurableObjectState(self)
        token = context.set_host(self)
        try:
            self.instance = cls(self.ctx, self._services.env)
        except Exception as exc:
            self._start_failed(f"the constructor raised {exc!r}", exc)
            return
        finally:
            context.reset_host(token)
        self.constructions += 1
        self._move("construct")
        if not self.startup_blocks:
            self._start_failures = 0

    def startup_block_done(self) -> None:
        """A ``block_concurrency_while`` of the constructor finished: started, if it was the
        last one."""
        self.startup_blocks -= 1
        if not self.startup_blocks:
            self._start_failures = 0

    def _start_failed(self, reason: str, error: BaseException | None = None) -> None:
        """The start failed: drop what was built, fail the waiting events, back off."""
        self._start_failures += 1
        failures = self._start_failures
        backoff = start_backoff(failures)
        self._retry_at = self._services.clock.monotonic() + backoff
        self._start_reason = reason
        self._start_cause = error
        then = f"the next attempt is in {backoff:g} s" if backoff else "the next event tries again"
        log.error(
            "%s failed to start (%d in a row): %s; %s",
            self.name(),
            failures,
            reason,
            then,
            exc_info=error if failures == 1 else None,
        )
        self._drop_instance()
        for ws in list(self.hibernatable):
            ws.terminate(1011, "Durable Object failed to start")
        self.hibernatable.clear()
        self._move("fail")
        self._fail_waiting(f"{self.name()} failed to start: {reason}; {then}", backoff)
        self._maybe_idle()

    def _fail_waiting(self, message: str, retry_after: float) -> None:
        """Fail the queued events: with the platform's own error when that is why the start
        failed (``StorageUnavailableError``: its storage cannot be used), else with a
        ``DurableObjectStartError`` that says why and when the next attempt is."""
        queued, self._queue = self._queue, deque()
        cause = self._start_cause
        for _, future in queued:
            if future is not None and not future.done():
                if isinstance(cause, DurableObjectError) and not isinstance(
                    cause, DurableObjectStartError
                ):
                    future.set_exception(type(cause)(*cause.args))
                else:
                    future.set_exception(
                        DurableObjectStartError(
                            message, reason=self._start_reason, retry_after=retry_after
                        )
                    )

    # -- running one event ----------------------------------------------------------------

    def _start(self, event: object, future: asyncio.Future[Any] | None) -> None:
        """Run an event up to its first suspension, now.

        The event runs in a context of its own (as a task would: what it sets in a
        ``ContextVar`` stays in it). A coroutine's first step runs here, eagerly, and most
        handlers finish in it (storage calls do not suspend): their result goes out with no
        task made. One that suspends continues in a task. While the first step runs, the
        host counts as starting, so an event delivered meanwhile waits for it.
        """
        instance = self.instance
        assert instance is not None
        if self._gone:
            self._gone.pop(id(event), None)  # it found its owner gone before: here now
        generation = self.generation
        scope = contextvars.copy_context()
        scope.run(context.enter, self)
        self._running += 1
        self._starting = True
        try:
            result = scope.run(invoke, instance, event, self._storage)
            if is_coroutine(result):
                coro = result
                try:
                    step = scope.run(coro.send, None)
                except StopIteration as stop:
                    result = stop.value
                else:
                    self._continue_in_task(Continue(coro, step), future, generation, scope)
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
        self.output_gate.resolve_when_clear(future, result, _write_failed)

    def _fail(self, future: asyncio.Future[Any] | None, exc: BaseException) -> None:
        name = type(self.instance).__name__ if self.instance is not None else "object"
        if future is None:
            log.error("uncaught exception in %s(%s)", name, self.id, exc_info=exc)
        else:
            log.error("exception in %s(%s) reaches its caller", name, self.id, exc_info=exc)
            if not future.done():
                future.set_exception(as_remote(exc))

    # -- sockets, background work and idleness ---------------------------------------------

    def socket_opened(self, ws: OpenSocket) -> None:
        self._cancel_idle()
        self._sockets.add(ws)

    def socket_closed(self, ws: OpenSocket) -> None:
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

    def maybe_idle(self) -> None:
        """Start the idle countdown if nothing keeps the object busy."""
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.state is Lifecycle.EVICTED or self._idle_timer is not None:
            return
        if self.state is Lifecycle.ACTIVATING:
            return
        if not self.is_idle():
            if self._only_waiting_for_output():
                # Idle once the last writes are durable: look again then.
                gate = self.output_gate
                if gate is not self._idle_watch:
                    self._idle_watch = gate
                    gate.when_clear(self._output_cleared)
            return
        if self.instance is None and self.hibernatable:
            return  # hibernating already
        services = self._services
        timeout = services.hibernation_timeout if self.hibernatable else services.idle_timeout
        clock = services.clock
        if self.state is Lifecycle.BROKEN:  # its back-off is kept until it has passed
            timeout = max(timeout, self._retry_at - clock.monotonic())
        self._idle_timer = clock.call_at(clock.monotonic() + timeout, self._idle_expired)
        services.idle_started(self)

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
            self._services.idle_ended(self)

    def evict_if_idle(self) -> bool:
        """Evict now if the object is idle (as its idle countdown would, later): the runtime's
        way to give back storage handles under pressure. Whether it did."""
        if self._idle_timer is None or self.state is Lifecycle.BROKEN:
            return False  # busy (or keeping its back-off after failed starts)
        self._cancel_idle()
        if self.is_idle() and self.state is not Lifecycle.ACTIVATING:
            self.evict()
            return True
        return False

    def _idle_expired(self) -> None:
        self._idle_timer = None
        self._services.idle_ended(self)
        if self.is_idle() and self.state is not Lifecycle.ACTIVATING:
            self.evict()

    # -- storage ------------------------------------------------------------------------------

    @property
    def storage(self) -> ObjectStorage:
        """The storage of the current instance."""
        storage = self._storage
        if storage is None:
            raise StorageError(
                f"the storage of {self.name()} is not open: it is {self.state.value}"
            )
        return storage

    @property
    def open_storage(self) -> ObjectStorage | None:
        """The storage, if one is open (of the current or of a dropped instance)."""
        return self._storage

    async def on_storage(self, fn: Callable[[ObjectStorage], Any]) -> Any:
        """``fn(storage)`` on the object's storage, without constructing the object when it
        has no instance (the alarm runner's last resort for an object that
        fails to start)."""
        if self.instance is not None:
            return await self.call(ev.Call(lambda _instance: fn(self.storage)))
        if not self._claimed:
            claim = self._services.placement.claim(self.class_name, self.id)
            if not isinstance(claim, Claim):
                claim = await claim
            if claim.owner is not None:
                raise OwnerGoneError(f"{self.name()} is owned by {claim.owner}")
            self._claimed, self.epoch = True, claim.epoch
        storage = self._storage
        if storage is None or storage.closed:
            opening = self._services.storage.open(self, self.class_name, self.id, self.epoch)
            storage = await opening if inspect.isawaitable(opening) else opening
            # Kept open: the next activation uses it, eviction closes it (once it is durable).
            self._keep_storage(storage)
        try:
            return fn(storage)
        finally:
            self._maybe_idle()

    def alarm_changed(self, time_ms: int | None) -> None:
        """Storage set (or deleted) this object's alarm."""
        self._services.alarm_changed(self, time_ms)

    def _keep_storage(self, storage: ObjectStorage) -> None:
        kept, self._storage = self._storage, storage
        if kept is None:
            self._services.storage_opened(self)

    def close_storage(self) -> None:
        storage, self._storage = self._storage, None
        if storage is not None:
            storage.close()
            self._services.storage_closed(self)

    # -- the instance goes away ---------------------------------------------------------------

    def evict(self) -> None:
        """Drop the instance; the next event builds a new one. Hibernatable WebSockets stay
        connected (the host hibernates); without them, the host is forgotten too."""
        self._cancel_idle()
        self.close_storage()
        self.generation += 1
        self.instance = None
        self.ctx = None
        if self.hibernatable:
            self._move("hibernate")
            log.debug("hibernated %s with %d WebSockets", self.name(), len(self.hibernatable))
        else:
            self._move("evict")
            self.release()
            self._services.forget(self)

    def release(self) -> None:
        """Give up the claim (the host goes away)."""
        if self._claimed:
            self._claimed = False
            self._services.placement.release(self.class_name, self.id, self.epoch)

    def reset(self, reason: str, error: BaseException | None = None) -> None:
        """Drop the instance after a failure; queued events construct a new one. Before the
        constructor's ``block_concurrency_while`` calls are done, the start failed."""
        if self.startup_blocks:
            self._start_failed(reason, error)
            return
        log.warning("resetting %s: %s", self.name(), reason)
        self._drop_instance()
        if isinstance(error, FencedError):
            self.release()  # another process or node has it now, or may: claim it again
        self._move("hibernate" if self.hibernatable else "reset")
        if self._queue:
            asyncio.get_running_loop().call_soon(self._pump)
        else:
            self._maybe_idle()

    def _drop_instance(self) -> None:
        for ws in list(self._sockets):
            ws.terminate(1011, "Durable Object reset")
        self._sockets.clear()
        self.generation += 1
        self.instance = None
        self.ctx = None
        self.startup_blocks = 0
        self.input_gate = InputGate()
        self._waiting_for_gate = False
        self.output_gate = OutputGate()
        # After the new gates exist: a flush still in flight holds the new output gate, so
        # the next instance cannot reveal what that flush has not yet made durable.
        self.close_storage()

    def shutdown(self, code: int, reason: str) -> None:
        """The runtime closes: every socket closes with ``code``, the storage, the claim."""
        for ws in [*self._sockets, *self.hibernatable]:
            ws.terminate(code, reason)
        self._cancel_idle()
        self.close_storage()
        self.release()

    def statistics(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "running": self._running,
            "queued": len(self._queue),
            "sockets": len(self._sockets),
            "hibernatable_sockets": len(self.hibernatable),
            "constructions": self.constructions,
            "start_failures": self._start_failures,
        }


def _write_failed(error: BaseException) -> BaseException:
    """What a caller gets when a write its answer waited for failed."""
    return DurableObjectResetError(f"a write failed: {error}")
