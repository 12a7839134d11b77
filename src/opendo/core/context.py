"""Who is running now: the object host of the current event, and the event itself.

The runtime sets both when it starts an event (each event runs in a context of its own, as a
task would), so that code below it — a WebSocket accepted inside the object, a storage call —
knows whose event it is without being told.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocols import SocketOwner

__all__ = ["current_event", "current_host", "enter"]

_current_host: contextvars.ContextVar[SocketOwner | None] = contextvars.ContextVar(
    "opendo_current_host", default=None
)

# One token per event, the same in its first step and in the task that continues it:
# storage.transaction() knows which event owns it by this.
_current_event: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "opendo_current_event", default=None
)


def enter(host: SocketOwner) -> None:
    """In an event's own context: the event runs on ``host``."""
    _current_host.set(host)
    _current_event.set(object())


def set_host(host: SocketOwner | None) -> contextvars.Token[SocketOwner | None]:
    return _current_host.set(host)


def reset_host(token: contextvars.Token[SocketOwner | None]) -> None:
    _current_host.reset(token)


def current_host() -> SocketOwner | None:
    """The host whose event is running now, if any."""
    return _current_host.get()


def current_event() -> object | None:
    """Who is running now, as a transaction's owner: the event (with the tasks it
    started), or else the task."""
    event = _current_event.get()
    if event is not None:
        return event
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
