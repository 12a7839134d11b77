"""What each event does to an object: the one place that turns events (``core.events``) into
calls of the object's handlers.

``invoke(instance, event, storage)`` returns what the handler returns — a value, or an
awaitable the host runs to its end — so that a handler that does not suspend answers without
a task (see ``ObjectHost._start``). RPC results are copied here as they leave the object, with
the same rules as the arguments (``core.codec.clone``): what cannot be sent fails in the object,
and the caller gets that error.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

from ..api.http import Response
from ..api.objects import DurableObject
from ..core.alarms import AlarmInfo
from ..core.codec import CodecError, clone
from ..core.events import (
    Alarm,
    Call,
    Fetch,
    GiveUpAlarm,
    Listener,
    Rpc,
    SocketClose,
    SocketError,
    SocketMessage,
)
from ..core.protocols import ObjectStorage

__all__ = ["RESERVED_METHODS", "by_reference", "clone_arguments", "give_up_alarm", "invoke"]

log = logging.getLogger("opendo")

# Handlers the runtime calls; not callable over RPC (as on Cloudflare).
RESERVED_METHODS = frozenset(
    {"fetch", "alarm", "connect", "web_socket_message", "web_socket_close", "web_socket_error"}
)


def invoke(instance: DurableObject, event: object, storage: ObjectStorage | None) -> Any:
    """Run ``event`` on ``instance``: its handler's result (a value or an awaitable)."""
    match event:
        case SocketMessage(socket=ws, data=data):
            return _socket_handler(instance, "web_socket_message", ws, data)
        case Rpc():
            return _rpc(instance, event)
        case Fetch(request=request):
            return _fetch(instance, request)
        case Listener(listener=listener, event=socket_event):
            return listener(socket_event)
        case SocketClose(socket=ws, code=code, reason=reason, was_clean=was_clean):
            return _socket_handler(instance, "web_socket_close", ws, code, reason, was_clean)
        case SocketError(socket=ws, error=error):
            return _socket_handler(instance, "web_socket_error", ws, error)
        case Alarm() if storage is not None:
            return _alarm(instance, storage, event)
        case GiveUpAlarm(now=now) if storage is not None:
            give_up_alarm(storage, now)
            return None
        case Call(fn=fn):
            return fn(instance)
    raise TypeError(f"not an event this object can run: {event!r}")


async def _fetch(instance: DurableObject, request: Any) -> Response:
    response = await instance.fetch(request)
    if not isinstance(response, Response):
        raise TypeError(
            f"{type(instance).__name__}.fetch() must return a Response, "
            f"got {type(response).__name__}"
        )
    return response


def _no_method(cls: type, name: str) -> str:
    """What a call of a method the class does not have over RPC is told: the closest name,
    and the methods there are."""
    methods = sorted(
        attr
        for attr in dir(cls)
        if not attr.startswith("_")
        and attr not in RESERVED_METHODS
        and attr not in _BASE_METHODS
        and callable(getattr(cls, attr, None))
    )
    message = f"{cls.__name__} has no public method {name!r} to call over RPC"
    close = difflib.get_close_matches(name, methods, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    return message + (f" (its methods: {', '.join(methods)})" if methods else " (it has none)")


_BASE_METHODS = frozenset(dir(DurableObject))  # what every object has: fetch, alarm, ...


def _rpc(instance: DurableObject, event: Rpc) -> Any:
    name = event.method
    method = getattr(type(instance), name, None)
    if name.startswith("_") or name in RESERVED_METHODS or method is None or not callable(method):
        raise TypeError(_no_method(type(instance), name))
    result = getattr(instance, name)(*event.args, **event.kwargs)
    if inspect.iscoroutine(result):
        return _cloned(result, name)
    return _clone_result(result, name)


def _socket_handler(instance: DurableObject, name: str, ws: Any, *args: Any) -> Any:
    handler = getattr(instance, name, None)
    if handler is None:
        # A message nobody handles is lost: say so. A close needs no handler (the close was
        # answered already), nor does an error (its close follows).
        level = logging.ERROR if name == "web_socket_message" else logging.DEBUG
        log.log(
            level,
            "%s received a WebSocket event but defines no %s()",
            type(instance).__name__,
            name,
        )
        return None
    return handler(ws, *args)


def _alarm(instance: DurableObject, storage: ObjectStorage, event: Alarm) -> Any:
    """The stored alarm, if it is due by ``event.now``: its handler and its end, as one
    event — once it returns, the alarm is gone (unless it set a new one) before any other
    event can ask ``get_alarm()``. While it runs, ``get_alarm()`` says None, unless it set a
    new alarm. An ``Alarm`` event that finds a handler of the object running (a duplicate: one
    forwarded from a process or node whose timer fired too) is done: that run takes care of it."""
    if storage.alarm_running:
        return True
    due = storage.alarm_now()
    if due is None or due > event.now:
        return due
    return _run_alarm(instance, storage, due, event.retry_count)


async def _run_alarm(instance: DurableObject, storage: ObjectStorage, due: int, retry: int) -> bool:
    storage.alarm_started()
    ran = False
    try:
        handler = getattr(instance, "alarm", None)
        if handler is None:
            log.error(
                "%s has an alarm set but no alarm() handler; the alarm is dropped",
                type(instance).__name__,
            )
        else:
            await handler(AlarmInfo(retry))
        ran = True
    finally:
        storage.alarm_finished(due, ran=ran)
    return True


def give_up_alarm(storage: ObjectStorage, now: int) -> None:
    """Delete the alarm that kept failing (due by ``now``), unless it was moved later."""
    due = storage.alarm_now()
    if due is not None and due <= now:
        storage.alarm_started()
        storage.alarm_finished(due, ran=True)


# -- copies: what RPC passes ----------------------------------------------------------------------


def by_reference(value: object) -> bool:
    """What RPC passes as it is: functions (called back directly), and opendo's handles."""
    return callable(value) or getattr(type(value), "_rpc_by_reference", False)


def clone_arguments(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Copies of the arguments of an RPC call, made at the call; a value that cannot be sent
    fails here, at the caller, naming the argument."""
    try:
        copied: tuple[tuple[Any, ...], dict[str, Any]] = clone((args, kwargs), by_reference)
        return copied
    except CodecError:
        pass
    for where, value in [
        *((f"argument {i + 1}", v) for i, v in enumerate(args)),
        *((f"argument {k}=", v) for k, v in kwargs.items()),
    ]:
        try:
            clone(value, by_reference)
        except CodecError as exc:
            raise CodecError(f"{name}(): {where} cannot be sent over RPC: {exc}") from None
    raise AssertionError("unreachable: every argument could be sent")


def _clone_result(result: Any, name: str) -> Any:
    try:
        return clone(result, by_reference)
    except CodecError as exc:
        raise CodecError(f"the result of {name}() cannot be sent over RPC: {exc}") from None


async def _cloned(coro: Awaitable[Any], name: str) -> Any:
    return _clone_result(await coro, name)
