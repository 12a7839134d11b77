"""The seams between opendo's layers, as protocols.

Each is one question with one answer, asked in one place (DESIGN.md §3); every mode opendo runs
in — one process, N processes on one machine, N nodes on PostgreSQL — implements them, and the
loader (``opendo.project``) is the one place that picks the implementations.

Between the runtime and an object's surroundings:

- ``SocketOwner``: what a WebSocket accepted inside an object needs of the object's host — the
  output gate its sends wait at, and where its events go.
- ``StorageOwner``: what an object's storage needs of the host — the gates, a reset when a
  write fails, word of alarm changes.
- ``Placement``: who owns an object, with which epoch. ``claim`` answers for this process: a
  ``Claim`` whose ``owner`` is None means "here, with this epoch"; another owner means
  "forward to it". The epoch grows with every activation and every durable write is checked
  against it, so an instance that lost its claim can never commit.
- ``Forwarder``: deliver an event to an object owned elsewhere, and bring back its result.
- ``StorageProvider``: open an object's storage (``ObjectStorage``, what user code sees as
  ``ctx.storage``) for an activation, and the alarms stored (``AlarmStore``).
- ``Service``: what a mode runs beside the objects (a cluster node's lease, its flushes to
  PostgreSQL, its alarm poller): started with the runtime, closed after its objects.

Between the storage API and what keeps the data, see ``core.storage``.

Any of the calls that may wait (``claim``, ``open``) may return either the answer or an
awaitable of it: in-process answers come at once, and the hot path stays free of tasks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from .gates import InputGate, OutputGate
    from .ids import DurableObjectId

__all__ = [
    "AlarmStore",
    "Claim",
    "Forwarder",
    "ObjectStorage",
    "Placement",
    "Service",
    "SocketOwner",
    "StorageOwner",
    "StorageProvider",
    "StoredAlarm",
]


# -- the runtime and the object's host -------------------------------------------------------


class SocketOwner(Protocol):
    """The host of the object that accepted a WebSocket."""

    @property
    def output_gate(self) -> OutputGate: ...

    def socket_opened(self, ws: Any) -> None:
        """A standard WebSocket (``ws.accept()``) was accepted: it keeps the object alive."""
        ...

    def socket_closed(self, ws: Any) -> None: ...

    def deliver_socket_event(self, ws: Any, event: Any) -> None:
        """An event on a socket accepted with ``ctx.accept_websocket``: to the object's
        ``web_socket_*`` handlers, through its input gate."""
        ...

    def deliver_listeners(self, listeners: Iterable[Callable[[Any], Any]], event: Any) -> None:
        """An event on a standard socket: to its listeners, through the input gate."""
        ...


class StorageOwner(Protocol):
    """The host of the object a storage belongs to."""

    @property
    def id(self) -> DurableObjectId: ...

    @property
    def class_name(self) -> str: ...

    @property
    def output_gate(self) -> OutputGate: ...

    @property
    def input_gate(self) -> InputGate: ...

    def reset(self, reason: str, error: BaseException | None = None) -> None:
        """Drop the instance after a failure (a write that did not make it: ``error``). A
        ``FencedError`` means the claim is gone too: the next event claims the object again."""
        ...

    def alarm_changed(self, time_ms: int | None) -> None:
        """The stored alarm is now ``time_ms`` (None: no alarm)."""
        ...


# -- placement and forwarding -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer of ``Placement.claim``: the object is ours with ``epoch`` (``owner`` None),
    or ``owner`` has it (an address the ``Forwarder`` understands)."""

    epoch: int = 0
    owner: str | None = None


class Placement(Protocol):
    def claim(self, class_name: str, id: DurableObjectId) -> Claim | Awaitable[Claim]:
        """Claim the object for this process, or say who owns it."""
        ...

    def release(self, class_name: str, id: DurableObjectId, epoch: int) -> None:
        """This process no longer hosts the object (evicted, or shutting down)."""
        ...


class Forwarder(Protocol):
    def start(self) -> None:
        """Begin to serve what others forward here (called once the event loop runs, before
        anything is claimed)."""
        ...

    def close(self) -> None: ...

    def forward(
        self, owner: str, class_name: str, id: DurableObjectId, event: Any
    ) -> Awaitable[Any]:
        """Deliver ``event`` to the object at ``owner``; its result (or its error)."""
        ...


# -- storage, as the runtime sees it ---------------------------------------------------------------


class StoredAlarm(NamedTuple):
    class_name: str
    id: str  # 64 hex digits
    name: str | None
    time_ms: int


class AlarmStore(Protocol):
    def scan_alarms(self) -> Iterator[StoredAlarm]:
        """Every stored alarm, of every object (read when the runtime starts)."""
        ...

    async def aclose(self) -> None:
        """Wait for what the storage still does for objects closed so far (the runtime's
        ``aclose`` awaits it, and never suspends: an implementation blocks briefly, if it
        waits at all)."""
        ...


class ObjectStorage(Protocol):
    """An object's ``ctx.storage``, as the runtime drives it."""

    @property
    def closed(self) -> bool: ...

    def close(self) -> None:
        """The instance is gone: roll back what was not committed, and close (once a flush in
        flight returns)."""
        ...

    def alarm_now(self) -> int | None:
        """The stored alarm, whatever a running handler should be told."""
        ...

    @property
    def alarm_running(self) -> bool:
        """An alarm handler of this instance is running (between ``alarm_started`` and
        ``alarm_finished``)."""
        ...

    def alarm_started(self) -> None:
        """An alarm handler starts: ``get_alarm()`` says None, unless it sets a new one."""
        ...

    def alarm_finished(self, due: int, *, ran: bool) -> None:
        """The alarm handler returned (``ran``), or failed: once it ran, the alarm that was
        ``due`` is deleted unless the handler set another."""
        ...

    def alarm_run_now(self, now_ms: int) -> None:
        """Move the stored alarm to ``now_ms`` (to run it at once)."""
        ...


class StorageProvider(AlarmStore, Protocol):
    def open(
        self, owner: StorageOwner, class_name: str, id: DurableObjectId, epoch: int
    ) -> ObjectStorage | Awaitable[ObjectStorage]:
        """The storage of one activation of the object (``epoch`` from its claim)."""
        ...


class Service(Protocol):
    def start(self) -> None:
        """Begin (called once the event loop runs, before anything is claimed)."""
        ...

    async def aclose(self) -> None:
        """End, once the runtime's objects are closed (their last writes handed over)."""
        ...
