"""The classes users subclass: ``DurableObject``, ``WorkerEntrypoint``."""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import (
    Callable,
    Iterable,
    Mapping,
)
from typing import Any, TypeVar

from ..api import objects as _api
from ..api.http import Headers
from .bindings import _as_env
from .context import Context, DurableObjectContext, _as_alarm_info, _as_context, _as_worker_context
from .helpers import _relaxed_call, _resolve
from .http import _as_request
from .unsupported import _unsupported

_T = TypeVar("_T")
_R = TypeVar("_R")

HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


# -- the classes users subclass ------------------------------------------------------------

_ADAPTERS: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()

# Cloudflare's hibernation handlers, and the opendo hooks the runtime calls.
_HIBERNATION_HANDLERS = {
    "webSocketMessage": "web_socket_message",
    "webSocketClose": "web_socket_close",
    "webSocketError": "web_socket_error",
}


def _adapter(fn: Callable[..., Any]) -> Callable[..., Any]:
    _ADAPTERS.add(fn)
    return fn


def _adapt_init(cls: Any, convert_ctx: Callable[[Any], Any]) -> None:
    """The constructor gets ``ctx`` and ``env`` with Cloudflare's names (as Cloudflare's SDK
    wraps them), whether or not it calls ``super().__init__``."""
    init = cls.__dict__.get("__init__")
    if not callable(init) or init in _ADAPTERS:
        return

    @functools.wraps(init)
    def __init__(self: Any, ctx: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        ctx, env = convert_ctx(ctx), _as_env(env)
        self.ctx, self.env = ctx, env
        init(self, ctx, env, *args, **kwargs)

    cls.__init__ = _adapter(__init__)


def _adapt_fetch(cls: Any) -> None:
    """``fetch`` gets a ``workers.Request`` and may be a plain function."""
    fetch = cls.__dict__.get("fetch")
    if not inspect.isfunction(fetch) or fetch in _ADAPTERS:
        return

    @functools.wraps(fetch)
    async def adapted(self: Any, request: Any, *args: Any) -> Any:
        return await _resolve(_relaxed_call(fetch, self, _as_request(request), *args))

    cls.fetch = _adapter(adapted)


def _adapt_alarm(cls: Any) -> None:
    """``alarm`` gets Cloudflare's ``alarm_info`` (if it takes it) and may be a plain
    function."""
    alarm = cls.__dict__.get("alarm")
    if not inspect.isfunction(alarm) or alarm in _ADAPTERS:
        return

    @functools.wraps(alarm)
    async def adapted(self: Any, alarm_info: Any = None) -> Any:
        return await _resolve(_relaxed_call(alarm, self, _as_alarm_info(alarm_info)))

    cls.alarm = _adapter(adapted)


def _hibernation_hook(camel: str, snake: str) -> Callable[..., Any]:
    def hook(self: Any, ws: Any, *args: Any) -> Any:
        return _relaxed_call(getattr(self, camel), ws, *args)

    hook.__name__ = hook.__qualname__ = snake
    hook.__doc__ = f"opendo's {snake}: calls the object's {camel}."
    return _adapter(hook)


_HOOKS = {snake: _hibernation_hook(camel, snake) for camel, snake in _HIBERNATION_HANDLERS.items()}


class DurableObject(_api.DurableObject):
    """Base class of a Durable Object written for Cloudflare's Python Workers.

    ``self.ctx`` is a ``DurableObjectContext`` and ``self.env`` an ``Env``, in the
    constructor already. ``webSocketMessage``/``webSocketClose``/``webSocketError``
    receive the events of sockets accepted with ``ctx.acceptWebSocket``; ``alarm``,
    ``fetch`` and public methods (RPC) work as on Cloudflare.
    """

    ctx: DurableObjectContext
    env: Any

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(_as_context(ctx), _as_env(env))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _adapt_init(cls, _as_context)
        _adapt_fetch(cls)
        _adapt_alarm(cls)
        for camel, snake in _HIBERNATION_HANDLERS.items():
            # Only where the camelCase handler exists: a class without it behaves exactly as
            # opendo expects of one without the hook, and a snake_case hook of its own wins.
            if callable(getattr(cls, camel, None)) and getattr(cls, snake, None) is None:
                setattr(cls, snake, _HOOKS[snake])


class WorkerEntrypoint(_api.WorkerEntrypoint):
    """Base class of the Worker (``class Default(WorkerEntrypoint)``): ``self.env`` is an
    ``Env``, ``self.ctx`` a ``Context``; ``fetch(request)`` gets a ``workers.Request``."""

    ctx: Context  # type: ignore[assignment]
    env: Any

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(_as_worker_context(ctx), _as_env(env))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _adapt_init(cls, _as_worker_context)
        _adapt_fetch(cls)


class WorkflowEntrypoint:
    """Cloudflare Workflows: not supported (defining a subclass raises)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        _unsupported(f"WorkflowEntrypoint ({cls.__name__})", "there are no Workflows")
