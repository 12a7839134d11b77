"""Forwarding: the part of an ``ObjectHost`` for objects another process or node owns.

A host that finds the object owned elsewhere is REMOTE: its events go, in order, to the
``Forwarder`` and their results come back. An event that never reached an owner
(``OwnerGoneError``: the owner died, or says the object is not its own) claims the object
again, after the pauses of ``OWNER_GONE_PAUSES``, and is delivered wherever the claim says.
An event another owner forwarded *here* (``call_relayed``) is served here or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from ..core.errors import OwnerGoneError
from ..core.ids import DurableObjectId
from ..core.lifecycle import Lifecycle

if TYPE_CHECKING:
    from .services import HostServices

__all__ = ["OWNER_GONE_PAUSES", "Forwarding"]

log = logging.getLogger("opendo")

# An event whose owner is gone claims the object again, after these pauses (seconds): an owner
# that died may still hold its claim for a while (a cluster node's lease). After the last, the
# event fails with OwnerGoneError; the next event starts over.
OWNER_GONE_PAUSES = (0.0, 0.1, 0.3, 0.6, 1.0)


class Forwarding:
    """``ObjectHost``'s forwarding (a mixin: the host has the state it uses)."""

    __slots__ = ("owner", "_running", "_gone", "_relayed")

    owner: str | None  # the address of the owner, while REMOTE
    _running: int  # events started and not finished (forwarded ones too)
    _gone: dict[int, int]  # id(event) -> owners it found gone
    _relayed: set[int]  # id(event) of events another owner forwarded here

    # The host's, used here:
    state: Lifecycle
    id: DurableObjectId
    _services: HostServices
    _queue: deque[tuple[object, asyncio.Future[Any] | None]]

    @property
    def class_name(self) -> str:
        raise NotImplementedError

    def name(self) -> str:
        raise NotImplementedError

    def call(self, event: object) -> asyncio.Future[Any]:
        raise NotImplementedError

    def maybe_idle(self) -> None:
        raise NotImplementedError

    def _maybe_idle(self) -> None:
        raise NotImplementedError

    def _move(self, action: str) -> None:
        raise NotImplementedError

    def _pump(self) -> None:
        raise NotImplementedError

    def call_relayed(self, event: object) -> asyncio.Future[Any]:
        """An event another process or node forwarded here, because it took this one for the
        owner. It is served here or not at all: if this process knows another owner, or finds
        one when it claims the object, the event fails with ``OwnerGoneError`` (and its sender
        claims the object again) — it is never forwarded on, so no event travels in circles
        between processes whose views of the owner are stale."""
        if self.state is Lifecycle.REMOTE:
            self.maybe_idle()
            raise OwnerGoneError(f"{self.name()} is owned by {self.owner}, not here")
        self._relayed.add(id(event))
        future = self.call(event)
        future.add_done_callback(lambda _: self._relayed.discard(id(event)))
        return future

    def _forward(self, event: object, future: asyncio.Future[Any] | None) -> None:
        forwarder, owner = self._services.forwarder, self.owner
        if self._relayed and id(event) in self._relayed:  # see call_relayed
            if future is not None and not future.done():
                future.set_exception(OwnerGoneError(f"{self.name()} is owned by {owner}, not here"))
            self._maybe_idle()
            return
        if forwarder is None or owner is None:
            error = RuntimeError(f"{self.name()} is owned by {owner}, and nothing forwards there")
            if future is not None and not future.done():
                future.set_exception(error)
            return
        self._running += 1
        try:
            sent = asyncio.ensure_future(forwarder.forward(owner, self.class_name, self.id, event))
        except Exception as exc:
            self._running -= 1
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        sent.add_done_callback(lambda done: self._forwarded(done, event, future, owner))

    def _forwarded(
        self,
        done: asyncio.Future[Any],
        event: object,
        future: asyncio.Future[Any] | None,
        owner: str,
    ) -> None:
        self._running -= 1
        error = None if done.cancelled() else done.exception()
        tries = self._gone.pop(id(event), 0)
        if isinstance(error, OwnerGoneError) and tries < len(OWNER_GONE_PAUSES):
            # It never reached an owner: claim the object again, and deliver it then.
            if self.state is Lifecycle.REMOTE and self.owner == owner:
                log.info("%s: its owner %s is gone; claiming it again", self.name(), owner)
                self.owner = None
                self._move("reset")
            self._gone[id(event)] = tries + 1
            self._running += 1  # waiting to be delivered again: not idle
            pause = OWNER_GONE_PAUSES[tries]
            loop = asyncio.get_running_loop()
            loop.call_later(pause, self._redeliver, event, future)
            return
        if future is not None and not future.done():
            if done.cancelled():
                future.cancel()
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())
        self._maybe_idle()

    def _redeliver(self, event: object, future: asyncio.Future[Any] | None) -> None:
        self._running -= 1
        if future is not None and future.done():  # its caller gave up meanwhile
            self._gone.pop(id(event), None)
            self._maybe_idle()
            return
        if self.state is Lifecycle.EVICTED:
            self._gone.pop(id(event), None)
            if future is not None:
                future.set_exception(OwnerGoneError(f"{self.name()} was dropped meanwhile"))
            return
        self._queue.appendleft((event, future))
        self._pump()
