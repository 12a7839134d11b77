"""Forwarding events between the opendo processes of one machine, over local sockets.

Every process that serves a persist directory listens on a Unix socket of its own (in Linux's
abstract namespace, named after the directory and the process id), so that any other process
can reach the owner of an object by the pid that holds its lock (``LockPlacement``).

What crosses a connection, and what a caller is told when one fails, is ``runtime.links``: one
connection to each peer, calls numbered and answered in any order, WebSockets relayed both
ways, an event delivered only if the object is still this process's own. A peer that is gone
refuses the connection (``OwnerGoneError``: the sender claims the object again); one that dies
while a call runs resets it (``DurableObjectResetError``).

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

from ..core.errors import OwnerGoneError
from ..runtime.links import IncomingLink, LinkForwarder, OutgoingLink

__all__ = ["ProcessForwarder"]

log = logging.getLogger("opendo")

_CREDENTIALS = struct.Struct("3i")


def _directory_key(persist: Path) -> str:
    return hashlib.sha256(os.path.realpath(persist).encode()).hexdigest()[:20]


class ProcessForwarder(LinkForwarder):
    """``core.protocols.Forwarder`` between the processes that serve one persist directory."""

    kind = "process"

    def __init__(self, persist: Path) -> None:
        super().__init__()
        self._key = _directory_key(persist)
        self.address = self.address_of(os.getpid())
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + self.address)
        self._listener.listen(256)
        self._listener.setblocking(False)
        self._server: asyncio.AbstractServer | None = None
        self._starting: asyncio.Task[None] | None = None

    def address_of(self, pid: int) -> str:
        return f"opendo-{self._key}-{pid}"

    # -- serving what others forward here ---------------------------------------------------

    def start(self) -> None:
        """Accept other processes' connections (from within the event loop)."""
        if self._starting is None:
            loop = asyncio.get_running_loop()
            self._starting = loop.create_task(self._serve(loop))

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        self._server = await loop.create_unix_server(lambda: _Incoming(self), sock=self._listener)

    def close(self) -> None:
        super().close()
        if self._server is not None:
            self._server.close()
        elif self._starting is None:
            self._listener.close()

    # -- forwarding -------------------------------------------------------------------------

    async def open_link(self, owner: str) -> OutgoingLink:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, "\0" + owner)  # (uvloop takes no abstract path)
            _, link = await loop.create_unix_connection(
                lambda: OutgoingLink(self, owner), sock=sock
            )
        except OSError as exc:
            sock.close()
            raise OwnerGoneError(f"the process {owner} is gone ({exc})") from None
        return link


class _Incoming(IncomingLink):
    """A connection from another process: only one of this user's is served."""

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
