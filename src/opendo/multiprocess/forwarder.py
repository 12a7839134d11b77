"""Forwarding events between the opendo processes of one machine, over local sockets.

Every process that serves a persist directory listens on a Unix socket of its own (in Linux's
abstract namespace, named after the directory and the process id), so that any other process
can reach the owner of an object by the pid that holds its lock (``LockPlacement``). A process
keeps one connection to each peer it forwards to, and numbers its calls on it; answers may come
back in any order.

An event reaches the owner as data (``wire``): a ``Fetch`` with its request and body, an
``Rpc`` with its method and copied arguments, an ``Alarm``. The owner delivers it to its host
only if the object is still its own (it claims it if nobody has it); else it answers that the
owner is gone, and the sender claims the object again. A WebSocket accepted by an object is
relayed both ways: the owner binds the client end of the object's pair to the connection, the
sender binds the server end of a pair of its own, whose client end goes back to the Worker as
if the object were here.

Only processes of the same user may connect (the peer's credentials are checked).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api.http import Response
from ..api.websocket import WebSocket, WebSocketPair
from ..core.errors import DurableObjectResetError, OwnerGoneError
from ..core.events import Fetch, Rpc
from ..core.ids import DurableObjectId
from . import wire

if TYPE_CHECKING:
    from ..runtime.runtime import Runtime

__all__ = ["ProcessForwarder"]

log = logging.getLogger("opendo")

_CREDENTIALS = struct.Struct("3i")


def _directory_key(persist: Path) -> str:
    return hashlib.sha256(os.path.realpath(persist).encode()).hexdigest()[:20]


class ProcessForwarder:
    """``core.protocols.Forwarder`` between the processes that serve one persist directory."""

    def __init__(self, persist: Path) -> None:
        self._key = _directory_key(persist)
        self.address = self.address_of(os.getpid())
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + self.address)
        self._listener.listen(256)
        self._listener.setblocking(False)
        self._runtime: Runtime | None = None
        self._server: asyncio.AbstractServer | None = None
        self._starting: asyncio.Task[None] | None = None
        self._peers: dict[str, _Peer] = {}
        self._connecting: dict[str, asyncio.Future[_Peer]] = {}
        self._incoming: set[_Incoming] = set()

    def address_of(self, pid: int) -> str:
        return f"opendo-{self._key}-{pid}"

    def attach(self, runtime: Runtime) -> None:
        self._runtime = runtime

    # -- serving what others forward here ---------------------------------------------------

    def start(self) -> None:
        """Accept other processes' connections (from within the event loop)."""
        if self._starting is None:
            loop = asyncio.get_running_loop()
            self._starting = loop.create_task(self._serve(loop))

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        self._server = await loop.create_unix_server(lambda: _Incoming(self), sock=self._listener)

    def close(self) -> None:
        for peer in list(self._peers.values()):
            peer.close()
        for incoming in list(self._incoming):
            incoming.close()
        if self._server is not None:
            self._server.close()
        elif self._starting is None:
            self._listener.close()

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
        peer = await self._peer(owner)
        answer = await peer.call(message)
        if not answer.get("ok"):
            raise wire.decode_error(answer.get("err") or {})
        if (fields := answer.get("resp")) is not None:  # a fetch's Response
            pair = answer.get("pair")
            return wire.response_from(fields, pair.client if pair is not None else None)
        assert self._runtime is not None
        return wire.decode_value(answer.get("v"), self._runtime)

    async def _peer(self, owner: str) -> _Peer:
        peer = self._peers.get(owner)
        if peer is not None and not peer.closed:
            return peer
        waiting = self._connecting.get(owner)
        if waiting is None:
            loop = asyncio.get_running_loop()
            waiting = self._connecting[owner] = loop.create_future()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, "\0" + owner)  # (uvloop takes no abstract path)
                _, connected = await loop.create_unix_connection(
                    lambda: _Peer(self, owner), sock=sock
                )
            except OSError as exc:
                sock.close()
                self._connecting.pop(owner, None)
                waiting.set_exception(OwnerGoneError(f"the process {owner} is gone ({exc})"))
                waiting.exception()  # retrieved: the awaiter below re-raises it
            else:
                self._connecting.pop(owner, None)
                self._peers[owner] = connected
                waiting.set_result(connected)
        return await asyncio.shield(waiting)

    def _lost(self, peer: _Peer) -> None:
        if self._peers.get(peer.owner) is peer:
            del self._peers[peer.owner]


class _Connection(asyncio.Protocol):
    """Frames in and out of one connection between two processes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.sockets: dict[int, WebSocket] = {}  # relayed WebSocket ends, by id

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            messages = wire.parse(self.buffer)
        except Exception as exc:
            log.error("closing a connection from another process: %s", exc)
            self.close()
            return
        for message in messages:
            try:
                self.message(message)
            except Exception:
                log.exception("a message from another process failed")

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
            end.transport_closed(1012, "the process that served it went away", False)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Relay:
    """A WebSocket end's transport over a connection between processes."""

    __slots__ = ("_connection", "_sid", "_out")

    def __init__(self, connection: _Connection, sid: int, out: str) -> None:
        self._connection = connection
        self._sid = sid
        self._out = out

    def send(self, data: str | bytes) -> None:
        self._connection.send({"k": self._out, "s": self._sid, "d": data})

    def close(self, code: int, reason: str) -> None:
        self._connection.sockets.pop(self._sid, None)
        clean = code not in (1006, 1011, 1012)
        self._connection.send(
            {"k": "wsclose", "s": self._sid, "code": code, "reason": reason, "clean": clean}
        )


class _Peer(_Connection):
    """Our connection to another process, for the calls we forward to it."""

    def __init__(self, forwarder: ProcessForwarder, owner: str) -> None:
        super().__init__()
        self._forwarder = forwarder
        self.owner = owner
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def call(self, message: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        self._next += 1
        n = message["n"] = self._next
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(OwnerGoneError(f"the process {self.owner} is gone"))
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
        self._forwarder._lost(self)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    DurableObjectResetError(
                        f"the connection to the process {self.owner} that owns the object was "
                        "lost while this call ran: it may or may not have taken effect"
                    )
                )


class _Incoming(_Connection):
    """A connection from another process, for the calls it forwards to us."""

    def __init__(self, forwarder: ProcessForwarder) -> None:
        super().__init__()
        self._forwarder = forwarder
        self._sids = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        uid = None
        if sock is not None:
            try:
                _, uid, _ = _CREDENTIALS.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
                )
            except OSError:
                uid = None
        if uid != os.getuid():
            log.warning("refused a connection from a process of another user (uid %s)", uid)
            self.close()
            return
        self._forwarder._incoming.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._forwarder._incoming.discard(self)

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
        runtime = self._forwarder._runtime
        assert runtime is not None
        namespace = runtime.namespace_of(str(message["c"]))
        if namespace is None:
            raise wire.WireError(f"no binding of class {message['c']!r} here")
        id = namespace.id_from_string(str(message["i"]))
        id.name = message.get("m")
        event = wire.decode_event(message["e"], runtime)
        host = runtime.host(namespace, id)
        if not host.claim_here():
            host.maybe_idle()
            raise OwnerGoneError(f"{host.name()} is not served by this process")
        return host.call(event)

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
