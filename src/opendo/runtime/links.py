"""Links: the connections that carry events to an object's owner in another process or node.

Both of opendo's transports are built of this module: Unix sockets between the processes of
one machine (``opendo.multiprocess``), TCP between the nodes of a cluster (``opendo.cluster``).
They differ only in how a connection is made and who may make one; what crosses a connection,
and what a caller is told when one fails, is the same.

A ``LinkForwarder`` is the ``core.protocols.Forwarder`` of a transport. It keeps one connection
(an ``OutgoingLink``) to each owner it forwards to, made by the first call that needs it
(calls that arrive meanwhile wait for that same connection) and made again after one is lost,
and numbers its calls on it; answers may come back in any order. A transport says how to make
a connection (``open_link``) and serves what others forward to it with ``IncomingLink``\\s.

An event crosses as data (``runtime.wire``): a ``Fetch`` with its request and body, an ``Rpc``
with its method and copied arguments, an ``Alarm``. The owner delivers it to its host only if
the object is still its own (``ObjectHost.call_relayed``: it claims the object if nobody has
it); else it answers that the owner is gone — it never forwards the event on. So a caller is told:

- ``OwnerGoneError`` when the event never reached an object: the connection could not be made
  (``open_link`` raises it), or the owner says the object is not its own. The host then claims
  the object again, and delivers the event wherever the claim says.
- ``DurableObjectResetError`` when the connection was lost after the call was sent: it may or
  may not have taken effect, as when an object is reset while a call runs.

A WebSocket accepted by an object is relayed both ways: the owner binds the client end of the
object's pair to the connection, the sender binds the server end of a pair of its own, whose
client end goes back to the Worker as if the object were here. When the connection is lost,
every socket relayed over it closes with 1012.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..api.http import Response
from ..api.websocket import WebSocket, WebSocketPair
from ..core.errors import DurableObjectError, DurableObjectResetError, OwnerGoneError
from ..core.events import Fetch, Rpc
from ..core.ids import DurableObjectId
from . import wire

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["IncomingLink", "Link", "LinkForwarder", "OutgoingLink"]

log = logging.getLogger("opendo")


class LinkForwarder:
    """``core.protocols.Forwarder`` over links; a transport subclasses it with ``open_link``,
    ``start`` and ``close``. ``kind`` names its peers in messages ("process", "node")."""

    kind = "peer"

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        # Whether this process serves objects now (a cluster node: while its lease holds).
        # When it does not, what others forward here fails with ``OwnerGoneError``, so that
        # they claim the object again instead of waiting on this process.
        self.serving: Callable[[], bool] = lambda: True
        self.incoming: set[IncomingLink] = set()
        self._links: dict[str, OutgoingLink] = {}
        self._connecting: dict[str, asyncio.Task[OutgoingLink]] = {}
        self._closed = False

    def attach(self, runtime: Runtime) -> None:
        """The runtime whose hosts receive what others forward here."""
        self.runtime = runtime

    async def open_link(self, owner: str) -> OutgoingLink:
        """A new connection to ``owner``, ready for calls; ``OwnerGoneError`` if there is
        none to be had."""
        raise NotImplementedError

    def start(self) -> None:
        """Serve what others forward here (from within the event loop)."""

    def close(self) -> None:
        self._closed = True
        for connecting in list(self._connecting.values()):
            connecting.cancel()
        for link in list(self._links.values()):
            link.close()
        for incoming in list(self.incoming):
            incoming.close()

    # -- forwarding -------------------------------------------------------------------------

    async def forward(self, owner: str, class_name: str, id: DurableObjectId, event: object) -> Any:
        if isinstance(event, Fetch):
            await event.request.bytes()  # a request crosses with its whole body
        elif isinstance(event, Rpc):
            await wire.read_bodies(event.args)
            await wire.read_bodies(event.kwargs)
        message = {
            "k": "call",
            "c": class_name,
            "i": str(id),
            "m": id.name,
            "e": wire.encode_event(event),
        }
        link = await self.link(owner)
        answer = await link.call(message)
        if not answer.get("ok"):
            raise wire.decode_error(answer.get("err") or {})
        if (fields := answer.get("resp")) is not None:  # a fetch's Response
            pair = answer.get("pair")
            return wire.response_from(fields, pair.client if pair is not None else None)
        assert self.runtime is not None
        return wire.decode_value(answer.get("v"), self.runtime)

    async def link(self, owner: str) -> OutgoingLink:
        """The connection to ``owner``: the one there is, or a new one."""
        link = self._links.get(owner)
        if link is not None and not link.closed:
            return link
        if self._closed:
            raise self._closing()
        connecting = self._connecting.get(owner)
        if connecting is None:
            connecting = asyncio.get_running_loop().create_task(self._connect(owner))
            connecting.add_done_callback(_retrieve)
            self._connecting[owner] = connecting
        return await asyncio.shield(connecting)

    async def _connect(self, owner: str) -> OutgoingLink:
        try:
            link = await self.open_link(owner)
        finally:
            self._connecting.pop(owner, None)
        if self._closed:
            link.close()
            raise self._closing()
        self._links[owner] = link
        return link

    def _closing(self) -> DurableObjectError:
        return DurableObjectError(f"this {self.kind} is shutting down: it forwards no more calls")

    def link_lost(self, link: OutgoingLink) -> None:
        if self._links.get(link.owner) is link:
            del self._links[link.owner]


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # every waiter re-raises it; none may be left to


class Link(asyncio.Protocol):
    """Frames in and out of one connection, and the WebSocket ends relayed over it."""

    def __init__(self, forwarder: LinkForwarder) -> None:
        self.forwarder = forwarder
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.sockets: dict[int, WebSocket] = {}  # relayed WebSocket ends, by id

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.frames_received()

    def frames_received(self) -> None:
        """Handle the whole messages in the buffer."""
        try:
            messages = wire.parse(self.buffer)
        except Exception as exc:
            log.error("closing a connection with another %s: %s", self.forwarder.kind, exc)
            self.close()
            return
        for message in messages:
            try:
                self.message(message)
            except Exception:
                log.exception("a message from another %s failed", self.forwarder.kind)

    def message(self, message: dict[str, Any]) -> None:
        kind = message["k"]
        if kind == "ws" or kind == "wsin":
            end = self.sockets.get(int(message["s"]))
            if end is not None:
                end.transport_received(message["d"])
        elif kind == "wsclose":
            end = self.sockets.pop(int(message["s"]), None)
            if end is not None:
                code, reason = int(message["code"]), str(message["reason"])
                end.transport_closed(code, reason, bool(message["clean"]))
        else:
            raise wire.WireError(f"unexpected message {kind!r}")

    def send(self, message: dict[str, Any]) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(wire.frame(message))

    def relay(self, end: WebSocket, sid: int, out: str) -> None:
        """Bind ``end`` to this connection: what arrives at it goes out as ``out`` frames."""
        self.sockets[sid] = end
        end.bind(_Relay(self, sid, out))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        sockets, self.sockets = self.sockets, {}
        for end in sockets.values():
            end.transport_closed(1012, f"the {self.forwarder.kind} that served it went away", False)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Relay:
    """A WebSocket end's transport over a link."""

    __slots__ = ("_link", "_sid", "_out")

    def __init__(self, link: Link, sid: int, out: str) -> None:
        self._link = link
        self._sid = sid
        self._out = out

    def send(self, data: str | bytes) -> None:
        self._link.send({"k": self._out, "s": self._sid, "d": data})

    def close(self, code: int, reason: str) -> None:
        self._link.sockets.pop(self._sid, None)
        clean = code not in (1006, 1011, 1012)
        self._link.send(
            {"k": "wsclose", "s": self._sid, "code": code, "reason": reason, "clean": clean}
        )


class OutgoingLink(Link):
    """Our connection to another owner, for the calls we forward to it."""

    def __init__(self, forwarder: LinkForwarder, owner: str) -> None:
        super().__init__(forwarder)
        self.owner = owner
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def call(self, message: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        self._next += 1
        n = message["n"] = self._next
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(OwnerGoneError(f"the {self.forwarder.kind} {self.owner} is gone"))
            return future
        self._pending[n] = future
        self.send(message)
        return future

    def message(self, message: dict[str, Any]) -> None:
        if message["k"] == "done":
            sid = message.get("ws")
            if sid is not None:
                # The owner's object accepted a WebSocket: a pair whose server end relays to
                # it, made now, before the frames that follow this answer are read.
                pair = WebSocketPair()
                self.relay(pair.server, int(sid), "wsin")
                message["pair"] = pair
            future = self._pending.pop(int(message["n"]), None)
            if future is not None and not future.done():
                future.set_result(message)
            elif sid is not None:
                message["pair"].server.terminate(1011, "nobody waits for this WebSocket")
        else:
            super().message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.forwarder.link_lost(self)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    DurableObjectResetError(
                        f"the connection to the {self.forwarder.kind} {self.owner} that owns "
                        "the object was lost while this call ran: it may or may not have taken "
                        "effect"
                    )
                )


class IncomingLink(Link):
    """A connection from another process or node, for the calls it forwards to us."""

    def __init__(self, forwarder: LinkForwarder) -> None:
        super().__init__(forwarder)
        self._sids = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.forwarder.incoming.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.forwarder.incoming.discard(self)

    def message(self, message: dict[str, Any]) -> None:
        if message["k"] != "call":
            super().message(message)
            return
        n = message["n"]
        try:
            future = self._deliver(message)
        except Exception as exc:
            self.send({"k": "done", "n": n, "ok": False, "err": wire.encode_error(exc)})
            return
        future.add_done_callback(lambda done: self._answer(n, done))

    def _deliver(self, message: dict[str, Any]) -> asyncio.Future[Any]:
        runtime = self.forwarder.runtime
        assert runtime is not None
        if not self.forwarder.serving():
            raise OwnerGoneError(f"this {self.forwarder.kind} serves no objects now")
        namespace = runtime.namespace_of(str(message["c"]))
        if namespace is None:
            raise wire.WireError(f"no binding of class {message['c']!r} here")
        id = namespace.id_from_string(str(message["i"]))
        id.name = message.get("m")
        event = wire.decode_event(message["e"], runtime)
        return runtime.host(namespace, id).call_relayed(event)

    def _answer(self, n: int, done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            error: BaseException | None = DurableObjectResetError("the call was cancelled")
        else:
            error = done.exception()
        if error is not None:
            self.send({"k": "done", "n": n, "ok": False, "err": wire.encode_error(error)})
            return
        result = done.result()
        answer: dict[str, Any] = {"k": "done", "n": n, "ok": True}
        if isinstance(result, Response):
            answer["resp"] = wire.response_fields(result)
        else:
            try:
                answer["v"] = wire.encode_value(result, "the result")
            except Exception as exc:
                self.send({"k": "done", "n": n, "ok": False, "err": wire.encode_error(exc)})
                return
        if isinstance(result, Response) and result.web_socket is not None:
            self._sids += 1
            answer["ws"] = self._sids
            self.send(answer)  # first: what the object sent already follows it
            self.relay(result.web_socket, self._sids, "ws")
            return
        self.send(answer)
