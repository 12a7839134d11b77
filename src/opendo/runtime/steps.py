"""Running a coroutine step by step: its first step now, the rest in a task.

An event's handler is called where the event is delivered, and its coroutine's first step runs
at once (``ObjectHost._start``): most handlers finish in it, with no task made. One that
suspends is handed to a task as a ``Continue``, which goes on from where the first step left
off, speaking the task's protocol one level down.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["Continue", "is_coroutine"]


async def _coroutine_type() -> None:
    pass


_coroutine = _coroutine_type()
_Coroutine = type(_coroutine)
_coroutine.close()


class Continue:
    """Awaits the rest of a coroutine whose first step already ran and yielded ``step``:
    hands each yielded future to the task running this, and sends (or throws) into the
    coroutine what the task sends (or throws) back — the task's protocol, one level down."""

    __slots__ = ("_coro", "_step")

    def __init__(self, coro: Coroutine[Any, Any, Any], step: Any) -> None:
        self._coro = coro
        self._step = step

    def __await__(self) -> Generator[Any, None, Any]:
        coro, step = self._coro, self._step
        while True:
            try:
                yield step
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the task: a cancellation
                try:
                    step = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                step = coro.send(None)
            except StopIteration as stop:
                return stop.value


def is_coroutine(value: object) -> bool:
    """Whether ``value`` is a native coroutine (cheaper than ``inspect.iscoroutine``)."""
    return type(value) is _Coroutine
