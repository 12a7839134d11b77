"""WebSocketPair and WebSocket: the standard WebSocket API, independent of any server.

A ``WebSocketPair`` is two connected ends. Whatever one end sends arrives at the other. The
object keeps the *server* end (``accept()`` it, listen, ``send``) and returns the *client*
end in ``Response(status=101, web_socket=client)``; the server layer then binds the client
end to the real network connection through a ``WebSocketTransport``. An end that is bound
forwards what arrives at it to the network; an end that is accepted hands it to its
listeners; an end that is neither buffers it until it is.

Sockets accepted inside a Durable Object belong to it: their events are delivered through
the object's input gate like any other event, and what the object sends waits at its output
gate. The end keeps no reference to ASGI or any socket library, so the same type runs under
uvicorn, in the in-process test client, or on a native socket layer.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..core import context
from ..core.codec import decode, encode
from ..core.gates import OutputGate

if TYPE_CHECKING:
    from ..core.protocols import SocketOwner

__all__ = [
    "MAX_ATTACHMENT_BYTES",
    "CloseEvent",
    "ErrorEvent",
    "MessageEvent",
    "ReadyState",
    "WebSocket",
    "WebSocketPair",
    "WebSocketRequestResponsePair",
    "WebSocketTransport",
]

log = logging.getLogger("opendo")

Data = str | bytes


class ReadyState(enum.IntEnum):
    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class MessageEvent:
    __slots__ = ("data",)
    type = "message"

    def __init__(self, data: Data) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"MessageEvent({self.data!r})"


class CloseEvent:
    __slots__ = ("code", "reason", "was_clean")
    type = "close"

    def __init__(self, code: int, reason: str, was_clean: bool) -> None:
        self.code = code
        self.reason = reason
        self.was_clean = was_clean

    @property
    def wasClean(self) -> bool:  # noqa: N802  (JavaScript's name)
        return self.was_clean

    def __repr__(self) -> str:
        return f"CloseEvent(code={self.code}, reason={self.reason!r}, was_clean={self.was_clean})"


class ErrorEvent:
    __slots__ = ("error",)
    type = "error"

    def __init__(self, error: BaseException) -> None:
        self.error = error


Event = MessageEvent | CloseEvent | ErrorEvent
Listener = Callable[[Any], Awaitable[None] | None]


class WebSocketTransport(Protocol):
    """What the server layer provides to carry one end over a real connection."""

    def send(self, data: Data) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


_EVENT_TYPES = ("message", "close", "error")
MAX_ATTACHMENT_BYTES = 16 * 1024
MAX_AUTO_RESPONSE_CHARS = 2048


def _check_close(code: int | None, reason: str) -> int:
    if code is None:
        return 1000
    if not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999):
        raise ValueError(f"a close code must be 1000 or in 3000..4999, got {code!r}")
    if len(reason.encode()) > 123:
        raise ValueError("a close reason must be at most 123 bytes of UTF-8")
    return code


class WebSocket:
    """One end of a WebSocketPair."""

    __slots__ = (
        "_peer",
        "_listeners",
        "_state",
        "_accepted",
        "_transport",
        "_pending",
        "_host",
        "_hibernatable",
        "_tags",
        "_attachment",
        "_auto_response_at",
        "__weakref__",
    )

    def __init__(self) -> None:
        self._peer: WebSocket | None = None
        self._listeners: dict[str, list[Listener]] | None = None
        self._state = ReadyState.CONNECTING
        self._accepted = False
        self._transport: WebSocketTransport | None = None
        self._pending: deque[Event] | None = None
        self._host: SocketOwner | None = None
        # The hibernation API (ctx.accept_websocket): state that outlives the instance.
        self._hibernatable = False
        self._tags: tuple[str, ...] = ()
        self._attachment: bytes | None = None
        self._auto_response_at: float | None = None

    # -- the standard API ---------------------------------------------------------------

    @property
    def ready_state(self) -> ReadyState:
        return self._state

    def accept(self) -> None:
        """Start receiving events on this end (the server end, inside the object)."""
        if self._accepted:
            raise RuntimeError("this WebSocket was already accepted")
        if self._transport is not None:
            raise RuntimeError("this end is connected to the network and cannot be accepted")
        self._accepted = True
        self._state = ReadyState.OPEN
        host = context.current_host()
        if host is not None:
            self._host = host
            host.socket_opened(self)
        self._drain_pending()

    def _drain_pending(self) -> None:
        pending, self._pending = self._pending, None
        while pending:
            self._dispatch(pending.popleft())

    def add_event_listener(self, type: str, listener: Listener) -> None:
        """Listen for ``"message"``, ``"close"`` or ``"error"`` events.

        A listener gets the event (``event.data``; ``event.code``, ``event.reason``,
        ``event.was_clean``; ``event.error``) and may be a plain or an ``async`` function.
        """
        if type not in _EVENT_TYPES:
            raise ValueError(
                f"unknown WebSocket event type {type!r}: expected one of {', '.join(_EVENT_TYPES)}"
            )
        if self._hibernatable:
            raise RuntimeError(
                "a WebSocket accepted with ctx.accept_websocket() delivers its events to the "
                "object's web_socket_message/close/error handlers, not to listeners"
            )
        if self._listeners is None:
            self._listeners = {}
        self._listeners.setdefault(type, []).append(listener)

    def remove_event_listener(self, type: str, listener: Listener) -> None:
        listeners = (self._listeners or {}).get(type, [])
        if listener in listeners:
            listeners.remove(listener)

    def send(self, message: Data) -> None:
        """Send a text (str) or binary (bytes) message to the other end."""
        if isinstance(message, bytearray | memoryview):
            message = bytes(message)
        elif not isinstance(message, str | bytes):
            raise TypeError(f"WebSocket.send() takes str or bytes, got {type(message).__name__}")
        if self._state is not ReadyState.OPEN:
            if self._state is ReadyState.CONNECTING:
                raise RuntimeError("call accept() before send()")
            return  # closing or closed: dropped, as browsers do
        peer = self._peer
        if peer is None:
            return
        host = self._host
        gate: OutputGate | None = host.output_gate if host is not None else None
        if gate is None or gate.is_clear:
            peer._arrive(MessageEvent(message))
        else:
            event = MessageEvent(message)

            def release(error: BaseException | None) -> None:
                if error is None:
                    peer._arrive(event)

            gate.when_clear(release)

    def close(self, code: int | None = None, reason: str = "") -> None:
        """Close the connection (code 1000 or 3000..4999)."""
        code = _check_close(code, reason)
        if self._state in (ReadyState.CLOSING, ReadyState.CLOSED):
            return
        self._state = ReadyState.CLOSING
        peer = self._peer
        if peer is None:
            return
        event = CloseEvent(code, reason, True)
        host = self._host
        gate = host.output_gate if host is not None else None
        if gate is None or gate.is_clear:
            peer._arrive(event)
        else:

            def release(error: BaseException | None) -> None:
                # After a failed write the object is reset: its sockets close with 1011.
                peer._arrive(
                    event if error is None else CloseEvent(1011, "Durable Object reset", False)
                )

            gate.when_clear(release)

    def terminate(self, code: int, reason: str) -> None:
        """Close from the runtime's side, with a code user code may not use (1001, 1011,
        1012)."""
        if self._state in (ReadyState.CLOSING, ReadyState.CLOSED):
            return
        self._state = ReadyState.CLOSED
        if self._peer is not None:
            self._peer._arrive(CloseEvent(code, reason, False))

    def __aiter__(self) -> AsyncIterator[Data]:
        """Iterate over incoming messages until the connection closes."""
        queue: asyncio.Queue[Data | None] = asyncio.Queue()
        self.add_event_listener("message", lambda event: queue.put_nowait(event.data))
        self.add_event_listener("close", lambda event: queue.put_nowait(None))
        if not self._accepted:
            self.accept()

        async def messages() -> AsyncIterator[Data]:
            while (item := await queue.get()) is not None:
                yield item

        return messages()

    # -- plumbing between the two ends and the server layer ------------------------------

    def _arrive(self, event: Event) -> None:
        """``event`` comes to this end from its peer."""
        if isinstance(event, CloseEvent):
            if self._state is ReadyState.CLOSED:
                return
            # The closing handshake completes here: whoever receives a close is closed.
            self._state = ReadyState.CLOSED
        transport = self._transport
        if transport is not None:
            if isinstance(event, MessageEvent):
                transport.send(event.data)
            elif isinstance(event, CloseEvent):
                transport.close(event.code, event.reason)
        elif self._accepted:
            self._dispatch(event)
            peer = self._peer
            if isinstance(event, CloseEvent) and peer is not None:
                # Answer the close, so the other end completes its closing handshake too.
                peer._arrive(CloseEvent(event.code, event.reason, event.was_clean))
        else:
            if self._pending is None:
                self._pending = deque()
            self._pending.append(event)

    def _dispatch(self, event: Event) -> None:
        host = self._host
        if self._hibernatable and host is not None:
            host.deliver_socket_event(self, event)
            return
        listeners = self._listeners.get(event.type) if self._listeners else None
        if host is not None:
            if listeners:
                host.deliver_listeners(listeners, event)
            if isinstance(event, CloseEvent):
                host.socket_closed(self)
        elif listeners:
            for listener in list(listeners):
                call_listener(listener, event)

    # -- for servers: the client end of a pair, bound to a connection ---------------------

    @property
    def bound(self) -> bool:
        """This end is connected to a transport (a network connection)."""
        return self._transport is not None

    def bind(self, transport: WebSocketTransport) -> None:
        """Connect this end (the client end the Worker answered with) to the network."""
        if self._accepted:
            raise RuntimeError("an accepted WebSocket end cannot be returned in a Response")
        self._transport = transport
        self._state = ReadyState.OPEN
        pending, self._pending = self._pending, None
        while pending:
            self._arrive(pending.popleft())

    def transport_received(self, data: Data) -> None:
        """A message came in from the network on this (bound) end."""
        peer = self._peer
        if peer is not None and self._state is ReadyState.OPEN:
            peer._arrive(MessageEvent(data))

    def transport_closed(self, code: int, reason: str, was_clean: bool) -> None:
        """The network connection of this (bound) end is gone (also: it will never be made,
        the Response that carried this end is not used)."""
        self._state = ReadyState.CLOSED
        self._transport = None
        peer = self._peer
        if peer is None or peer._state is ReadyState.CLOSED:
            return
        if not was_clean:
            peer._arrive(ErrorEvent(ConnectionResetError("the WebSocket connection was lost")))
        peer._arrive(CloseEvent(code, reason, was_clean))

    # -- for the runtime: sockets accepted with ctx.accept_websocket -----------------------

    @property
    def accepted(self) -> bool:
        return self._accepted

    @property
    def hibernatable(self) -> bool:
        """Accepted with ``ctx.accept_websocket``: its events go to the object's handlers."""
        return self._hibernatable

    @property
    def owner(self) -> SocketOwner | None:
        """The host of the object that accepted this end, if one did."""
        return self._host

    @property
    def tags(self) -> tuple[str, ...]:
        return self._tags

    def accept_hibernatable(self, owner: SocketOwner, tags: tuple[str, ...]) -> None:
        """Accept this end (the server end of a new pair) for ``owner``'s object, its events
        for the object's ``web_socket_*`` handlers (``ctx.accept_websocket``)."""
        if self._accepted or self._transport is not None or self._peer is None:
            raise RuntimeError(
                "accept_websocket() takes the server end of a new WebSocketPair, not yet accepted"
            )
        self._hibernatable = True
        self._tags = tags
        self._accepted = True
        self._state = ReadyState.OPEN
        self._host = owner
        self._drain_pending()

    @property
    def auto_response_at(self) -> float | None:
        """When (epoch seconds) the auto-response last answered on this socket."""
        return self._auto_response_at

    def auto_respond(self, response: str, at: float) -> None:
        """Answer the auto-response request with ``response``, without waking the object."""
        self._auto_response_at = at
        peer = self._peer
        if peer is not None and self._state is ReadyState.OPEN:
            peer._arrive(MessageEvent(response))

    # -- attachments (hibernation API) ----------------------------------------------------

    def serialize_attachment(self, value: Any) -> None:
        """Keep ``value`` with this socket; it survives the object's hibernation.

        Any value storage accepts, at most 16 KiB encoded.
        """
        data = encode(value)
        if len(data) > MAX_ATTACHMENT_BYTES:
            raise ValueError(
                f"a WebSocket attachment is {len(data)} bytes encoded; "
                f"the limit is {MAX_ATTACHMENT_BYTES}"
            )
        self._attachment = data

    def deserialize_attachment(self) -> Any:
        """The value given to ``serialize_attachment``, or None."""
        return None if self._attachment is None else decode(self._attachment)

    def __repr__(self) -> str:
        return f"<WebSocket {self._state.name}>"


def call_listener(listener: Listener, event: Event) -> None:
    try:
        result = listener(event)
    except Exception:
        log.exception("uncaught exception in a WebSocket %s listener", event.type)
        return
    if inspect.isawaitable(result):
        task = asyncio.ensure_future(result)
        task.add_done_callback(_log_listener_failure)


def _log_listener_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("uncaught exception in a WebSocket listener", exc_info=exc)


class WebSocketRequestResponsePair:
    """For ``ctx.set_websocket_auto_response``: a message that, when a hibernatable socket
    receives exactly it, is answered with ``response`` without waking the object."""

    __slots__ = ("request", "response")

    def __init__(self, request: str, response: str) -> None:
        for what, value in (("request", request), ("response", response)):
            if not isinstance(value, str):
                raise TypeError(
                    f"the auto-response {what} must be a str, got {type(value).__name__}"
                )
            if len(value) > MAX_AUTO_RESPONSE_CHARS:
                raise ValueError(
                    f"the auto-response {what} is {len(value)} characters; "
                    f"the limit is {MAX_AUTO_RESPONSE_CHARS}"
                )
        self.request = request
        self.response = response

    def __repr__(self) -> str:
        return f"WebSocketRequestResponsePair({self.request!r}, {self.response!r})"


class WebSocketPair:
    """Two connected WebSocket ends: ``client, server = WebSocketPair()``."""

    __slots__ = ("client", "server")

    def __init__(self) -> None:
        self.client = WebSocket()
        self.server = WebSocket()
        self.client._peer = self.server
        self.server._peer = self.client

    def __iter__(self) -> Any:
        return iter((self.client, self.server))

    def __getitem__(self, index: int) -> WebSocket:
        return (self.client, self.server)[index]
