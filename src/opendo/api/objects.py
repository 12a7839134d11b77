"""The classes users subclass: ``DurableObject`` and ``WorkerEntrypoint``."""

from __future__ import annotations

import asyncio
import difflib
from typing import Any

from .http import Request, Response

__all__ = ["DurableObject", "Env", "ExecutionContext", "WorkerEntrypoint"]


class Env:
    """Bindings and variables: ``env.CHAT`` (a namespace), ``env.FOO`` (a var or secret)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __getitem__(self, name: str) -> Any:
        try:
            return self.__dict__[name]
        except KeyError:
            raise KeyError(self._missing(name)) from None

    def __getattr__(self, name: str) -> Any:  # only for names it does not have
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(self._missing(name))

    def _missing(self, name: str) -> str:
        known = sorted(self.__dict__)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        has = ", ".join(known) if known else "nothing (no bindings, vars or secrets)"
        return f"env has no binding or variable named {name!r} (it has {has}){hint}"

    def __contains__(self, name: object) -> bool:
        return name in self.__dict__

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)

    def __repr__(self) -> str:
        return f"Env({', '.join(sorted(self.__dict__))})"


class DurableObject:
    """Base class of a Durable Object.

    ::

        class Counter(DurableObject):
            def __init__(self, ctx, env):
                super().__init__(ctx, env)
                self.count = 0

            async def increment(self) -> int:     # callable as RPC: await stub.increment()
                self.count += 1
                return self.count
    """

    ctx: Any  # opendo.DurableObjectState
    env: Any

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    async def fetch(self, request: Request) -> Response:
        return Response("Not found: this Durable Object defines no fetch()", status=404)


class ExecutionContext:
    """``ctx`` of a Worker: work that may outlive the response."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def wait_until(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class WorkerEntrypoint:
    """Base class of the Worker that receives every request first.

    ::

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return await self.env.CHAT.get_by_name("lobby").fetch(request)
    """

    ctx: ExecutionContext
    env: Any

    def __init__(self, ctx: ExecutionContext, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    async def fetch(self, request: Request) -> Response:
        return Response("Not found", status=404)
