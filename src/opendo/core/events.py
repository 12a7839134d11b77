"""Events as data: what can happen to a Durable Object.

Every event for an object — a request, an RPC call, an alarm, a WebSocket message or close — is
one of these values. The object's host queues them and delivers them one at a time through the
input gate (``opendo.runtime``); a forwarder can carry one to the process or node that owns the
object, because it is data, not a closure over objects of this process. Which of them cross
processes, and how, is the forwarder's business: ``Fetch`` (its request), ``Rpc`` (its method
name and the copies of its arguments), and the WebSocket events of a socket that is proxied.
``Call`` and ``Listener`` carry Python functions and stay in the process that made them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Alarm",
    "Call",
    "Event",
    "Fetch",
    "GiveUpAlarm",
    "Listener",
    "Rpc",
    "SocketClose",
    "SocketError",
    "SocketMessage",
]


@dataclass(frozen=True, slots=True)
class Fetch:
    """``await stub.fetch(request)``: the object's ``fetch(request)``."""

    request: Any  # an opendo.Request


@dataclass(frozen=True, slots=True)
class Rpc:
    """``await stub.method(*args, **kwargs)``, with the arguments already copied."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alarm:
    """Run the object's alarm if it is due by ``now`` (epoch ms); ``retry_count`` failures
    before. Its result: None (no alarm is set), the time it is due (not yet), or True (its
    handler ran)."""

    now: int
    retry_count: int = 0


@dataclass(frozen=True, slots=True)
class GiveUpAlarm:
    """The alarm due by ``now`` failed too often: delete it (unless it was moved later)."""

    now: int


@dataclass(frozen=True, slots=True)
class SocketMessage:
    """A message on a WebSocket accepted with ``ctx.accept_websocket``."""

    socket: Any
    data: str | bytes


@dataclass(frozen=True, slots=True)
class SocketClose:
    socket: Any
    code: int
    reason: str
    was_clean: bool


@dataclass(frozen=True, slots=True)
class SocketError:
    socket: Any
    error: BaseException


@dataclass(frozen=True, slots=True)
class Listener:
    """An event of a standard WebSocket (``ws.accept()``), for one of its listeners."""

    listener: Callable[[Any], Any]
    event: Any


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``fn(instance)`` as an event of the object (the pytest plugin's
    ``run_in_durable_object``)."""

    fn: Callable[[Any], Any]


Event = (
    Fetch | Rpc | Alarm | GiveUpAlarm | SocketMessage | SocketClose | SocketError | Listener | Call
)
