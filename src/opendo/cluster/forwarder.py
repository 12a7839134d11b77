"""Forwarding events between the nodes of a cluster, over TCP.

Every node listens on a TCP port for the calls of the others, and is known to them by the
address it advertises, ``host:port`` (``[::1]:7000`` for an IPv6 host): the ``owner`` of a
``Claim`` that placement hands out. ``NodeForwarder`` is the ``core.protocols.Forwarder`` of
these links; what crosses a connection is ``runtime.links``, as between the processes of one
machine: one connection to each node, reused by every call and made again after one is lost;
calls numbered and answered in any order; WebSockets relayed both ways; an event delivered
only if the object is still the receiving node's own (else it answers that the owner is gone,
and the sender claims the object again).

What a caller is told when a link fails:

- the node cannot be reached (the connection is refused, reset or not accepted within
  ``connect_timeout``), or it closes or stays silent before the handshake is done:
  ``OwnerGoneError``. Nothing was sent; the host claims the object again.
- the node does not prove that it knows the cluster's secret, or refuses this one's proof:
  ``NodeAuthenticationError``, at once (not a hang, and no retry).
- the connection is lost after the call was sent: ``DurableObjectResetError`` (the call may
  or may not have taken effect).

Authentication (``cluster.handshake``): both ends prove they know a shared secret with a
challenge-response before the connection carries anything else. Until the dialer has proved
itself, a listener parses nothing it sends as a message; a wrong proof, a frame that is not a
handshake's or is over 4 KiB, or no proof within ``handshake_timeout`` closes the connection,
and the listener logs one WARNING that names the peer's address ("refused an unauthenticated
node connection from 127.0.0.1:PORT: <why>"). The dialer refuses a listener that does not
prove itself in the same way. The secret is never sent, and never logged.

The limits of that: a connection is authenticated when it starts, but its frames are neither
encrypted nor signed, so whoever can read or change the traffic between two nodes can read the
calls or take over a connection. Run the nodes on a private network (or under a tunnel such
as WireGuard or IPsec). The secret should be long and random (at least 16 bytes are
required, 32 advised): the handshake shows codes made from it to the node being dialed.

Timeouts, with their defaults: ``connect_timeout`` (5 s) for a connection to be accepted;
``handshake_timeout`` (5 s) for the handshake, on both sides. A node that vanishes without
closing its connections (a power cut, a partition) fails the calls in flight to it within
about 25 s: a connection idle for 10 s is probed by TCP keepalive every 5 s and dropped after
3 probes go unanswered, and one whose data stays unacknowledged for 25 s is dropped
(``TCP_USER_TIMEOUT``). A call has no timeout of its own: one that runs, runs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from ..core.errors import OwnerGoneError
from ..runtime.links import IncomingLink, LinkForwarder, OutgoingLink
from .handshake import (
    DialerHandshake,
    HandshakeError,
    ListenerHandshake,
    NodeAuthenticationError,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "MIN_SECRET_BYTES",
    "NodeAuthenticationError",
    "NodeForwarder",
    "format_address",
    "parse_address",
]

log = logging.getLogger("opendo")

CONNECT_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 5.0
MIN_SECRET_BYTES = 16
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 10, 5, 3
UNACKNOWLEDGED_MS = 25_000
_UNSPECIFIED = ("", "0.0.0.0", "::")


def parse_address(address: str) -> tuple[str, int]:
    """``("10.0.0.2", 7000)`` of ``"10.0.0.2:7000"``, ``("::1", 7000)`` of ``"[::1]:7000"``."""
    host, colon, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 host without its brackets: which colon ends it is unclear
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"a node's address is host:port, with an IPv6 host in brackets ([::1]:7000), "
            f"and a port from 1 to 65535; got {address!r}"
        )
    return host, int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tune(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    options = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", UNACKNOWLEDGED_MS),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass


class NodeForwarder(LinkForwarder):
    """``core.protocols.Forwarder`` between the nodes of a cluster, over authenticated TCP.

    ``listen`` is where this node accepts the others' connections (bound at once, so a busy
    port fails here); ``advertise`` is the address they reach it at (None: the listening
    address, which must then not be a wildcard); ``secret`` is the cluster's shared secret.
    """

    kind = "node"

    def __init__(
        self,
        listen: tuple[str, int],
        advertise: str | None,
        secret: bytes,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__()
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            size = f"{len(secret)} bytes" if isinstance(secret, bytes) else type(secret).__name__
            raise ValueError(
                f"the cluster's secret must be bytes, at least {MIN_SECRET_BYTES} of them "
                f"(32 random bytes are advised); got {size}"
            )
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("handshake_timeout", handshake_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be a number of seconds above 0, not {value!r}")
        if advertise is not None:
            parse_address(advertise)
        elif listen[0] in _UNSPECIFIED:
            raise ValueError(
                f"this node listens on every interface ({format_address(*listen)}): say "
                "which address the other nodes reach it at (advertise, host:port)"
            )
        self._secret = secret
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self._listener = self._bind(*listen)
        if advertise is None:
            host, port = self._listener.getsockname()[:2]
            advertise = format_address(host, port)
        self.address = advertise
        self._server: asyncio.AbstractServer | None = None
        self._starting: asyncio.Task[None] | None = None

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        where = format_address(host, port)
        try:
            infos = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise OSError(f"cannot listen for other nodes on {where}: {exc}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(256)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"cannot listen for other nodes on {where}: {exc.strerror}"
            ) from None
        return sock

    # -- serving what others forward here ---------------------------------------------------

    def start(self) -> None:
        """Accept the other nodes' connections (from within the event loop)."""
        if self._starting is None:
            loop = asyncio.get_running_loop()
            self._starting = loop.create_task(self._serve(loop))

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        self._server = await loop.create_server(lambda: _Incoming(self), sock=self._listener)

    def close(self) -> None:
        super().close()
        if self._starting is not None:
            self._starting.cancel()  # (if it has not served yet)
        if self._server is not None:
            self._server.close()
        else:
            self._listener.close()

    # -- forwarding -------------------------------------------------------------------------

    async def open_link(self, owner: str) -> OutgoingLink:
        host, port = parse_address(owner)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, link = await loop.create_connection(lambda: _Outgoing(self, owner), host, port)
        except TimeoutError:
            raise OwnerGoneError(
                f"the node {owner} did not accept a connection within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise OwnerGoneError(f"the node {owner} cannot be reached ({exc})") from None
        try:
            async with asyncio.timeout(self.handshake_timeout):
                await asyncio.shield(link.ready)
        except TimeoutError:
            link.close()
            raise OwnerGoneError(
                f"the node {owner} did not finish the handshake within {self.handshake_timeout:g} s"
            ) from None
        except BaseException:
            link.close()
            raise
        return link


def _peer_of(transport: asyncio.BaseTransport) -> str:
    peer: Any = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address(str(peer[0]), int(peer[1]))
    return "an unknown address"


class _Outgoing(OutgoingLink):
    """Our connection to another node: ``ready`` once each proved itself to the other."""

    def __init__(self, forwarder: NodeForwarder, owner: str) -> None:
        super().__init__(forwarder, owner)
        self._handshake = DialerHandshake(forwarder._secret)
        self.authenticated = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _tune(transport)

    def data_received(self, data: bytes) -> None:
        if self.authenticated:
            super().data_received(data)
            return
        self.buffer += data
        try:
            reply = self._handshake.receive(self.buffer)
        except HandshakeError as exc:
            log.warning("could not authenticate the node %s: %s", self.owner, exc)
            self._settle(NodeAuthenticationError(f"cannot forward to the node {self.owner}: {exc}"))
            self.close()
            return
        if reply and self.transport is not None:
            self.transport.write(reply)
        if self._handshake.done:
            self.authenticated = True
            self._settle(None)
            if self.buffer:
                self.frames_received()

    def _settle(self, error: BaseException | None) -> None:
        if self.ready.done():
            return
        if error is None:
            self.ready.set_result(None)
        else:
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: open_link re-raises it if it still waits

    def connection_lost(self, exc: Exception | None) -> None:
        why = f" ({exc})" if exc is not None else ""
        self._settle(
            OwnerGoneError(f"the node {self.owner} closed the connection during the handshake{why}")
        )
        super().connection_lost(exc)


class _Incoming(IncomingLink):
    """A connection from another node: nothing it sends is read as a message until it
    proved that it knows the secret."""

    def __init__(self, forwarder: NodeForwarder) -> None:
        super().__init__(forwarder)
        self._handshake = ListenerHandshake(forwarder._secret)
        self._timeout = forwarder.handshake_timeout
        self.authenticated = False
        self.peer = "an unknown address"
        self._timer: asyncio.TimerHandle | None = None
        self._quiet = False  # closed by this side: nothing more to say about it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer = _peer_of(transport)
        _tune(transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._timed_out)
        assert self.transport is not None
        self.transport.write(self._handshake.start())

    def data_received(self, data: bytes) -> None:
        if self.authenticated:
            super().data_received(data)
            return
        if self._quiet:
            return
        self.buffer += data
        try:
            reply = self._handshake.receive(self.buffer)
        except HandshakeError as exc:
            self._refuse(str(exc), exc.reply)
            return
        if self._handshake.done:
            self.authenticated = True
            self._cancel_timer()
            assert self.transport is not None
            self.transport.write(reply)
            if self.buffer:
                self.frames_received()

    def _timed_out(self) -> None:
        self._timer = None
        if not self.authenticated:
            self._refuse(f"it did not prove that it knows the secret within {self._timeout:g} s")

    def _refuse(self, why: str, reply: bytes = b"") -> None:
        if not self._quiet:
            log.warning("refused an unauthenticated node connection from %s: %s", self.peer, why)
        if reply and self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self._quiet = True
        self.buffer.clear()
        super().close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if not self.authenticated and not self._quiet:
            self._quiet = True
            log.warning(
                "refused an unauthenticated node connection from %s: it closed the connection "
                "before it proved that it knows the secret",
                self.peer,
            )
        super().connection_lost(exc)
