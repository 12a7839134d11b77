"""What a storage call returns: an awaitable of a call that has already run, or of one queued.

Each KV and alarm call runs when it is made and returns an awaitable of its result that is
not a coroutine (``Settled``), so a call left unawaited has still happened, as on Cloudflare.
Only while another event's ``transaction()`` is open does a call wait: it is queued
(``Queued``), and its awaitable is a future that the queue's turn completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

from ..core.errors import StorageError
from ..core.gates import OutputLock

__all__ = ["DONE", "Queued", "Settled", "gone", "settled"]

T = TypeVar("T")


class Settled(Generic[T]):
    """The awaitable a storage call returns when it has already run: awaiting it gives the
    result without suspending. Not a coroutine, so one left unawaited loses nothing and
    warns of nothing."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def __await__(self) -> Generator[Any, None, T]:
        yield from ()
        return self._value

    def __repr__(self) -> str:
        return f"<storage call done: {self._value!r}>"


DONE: Settled[Any] = Settled(None)


def settled(value: T) -> Awaitable[T]:
    """The awaitable of a call that ran and returned ``value``."""
    return DONE if value is None else Settled(value)


class Queued:
    """A call made while another event's ``transaction()`` was open: it runs when that
    transaction ends. ``turn`` is the event of a queued ``transaction()`` itself; ``lock``
    holds the output gate from the call of a write until that write is durable."""

    __slots__ = ("op", "future", "lock", "turn")

    def __init__(
        self,
        op: Callable[[], Any] | None,
        future: asyncio.Future[Any],
        lock: OutputLock | None = None,
        turn: object | None = None,
    ) -> None:
        self.op = op
        self.future = future
        self.lock = lock
        self.turn = turn


def gone(method: str) -> StorageError:
    return StorageError(
        f"storage.{method}() was called on the storage of an object that was reset or "
        "evicted; use the storage of the current instance (self.ctx.storage)"
    )
