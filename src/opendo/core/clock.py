"""Time, injected.

The runtime never reads the wall clock or the event loop's clock directly: it asks a
``Clock``. ``LoopClock`` is the real one (the running loop's monotonic time plus
``call_at``). ``FakeClock`` is for tests: time stands still until the test moves it with
``advance()``, or ``jump()`` to the next timer, and every timer due by then fires in order —
so no test ever sleeps to wait for an eviction or an alarm.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "FakeClock", "LoopClock", "TimerHandle"]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once ``monotonic()`` reaches ``when``."""
        ...


class LoopClock:
    """The real clock: the running event loop's time."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def time(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_at(when, callback)


class _FakeTimer:
    __slots__ = ("when", "seq", "callback", "cancelled")

    def __init__(self, when: float, seq: int, callback: Callable[[], None]) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: _FakeTimer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 0.0, epoch: float = 1_800_000_000.0) -> None:
        self._now = start
        self._epoch_offset = epoch - start
        self._timers: list[_FakeTimer] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._epoch_offset

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _FakeTimer(when, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def pending(self) -> int:
        return sum(1 for t in self._timers if not t.cancelled)

    def next_deadline(self) -> float | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].when if self._timers else None

    def advance(self, seconds: float) -> int:
        """Move time forward and fire every timer due by then; returns how many fired."""
        if seconds < 0:
            raise ValueError("a clock never goes back")
        target = self._now + seconds
        fired = 0
        while (deadline := self.next_deadline()) is not None and deadline <= target:
            timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.when)
            timer.callback()
            fired += 1
        self._now = target
        return fired

    def jump(self) -> bool:
        """Jump to the next timer and fire it (and any due at the same time)."""
        deadline = self.next_deadline()
        if deadline is None:
            return False
        self.advance(max(0.0, deadline - self._now))
        return True
