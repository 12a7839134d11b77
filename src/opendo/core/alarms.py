"""Alarms: when each object's alarm is due, and how failed alarms are retried.

Each object has at most one alarm, stored in its own database (so it survives restarts and
rolls back with the writes around it). The database is the truth; this module only keeps a
timer per object for the time its alarm is due, on the injected clock. When a timer fires,
the runtime reads the object's alarm again before running it: a timer may be stale (the alarm
was moved, deleted, or the write that set it was rolled back), and that check makes it harmless.

Delivery is at least once: the alarm stays stored until its handler has returned. A handler
that raises is retried after ``2 s``, then ``4 s``, ``8 s`` … (each delay ±25% jitter), at most
``MAX_RETRIES`` times, and then given up with a log line. An alarm never runs twice at once for
one object.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from .clock import Clock, TimerHandle

__all__ = ["AlarmInfo", "AlarmScheduler", "MAX_RETRIES", "retry_delay"]

MAX_RETRIES = 6
FIRST_RETRY = 2.0
JITTER = 0.25


@dataclass(frozen=True, slots=True)
class AlarmInfo:
    """What ``alarm(info)`` is told: how many times this alarm has failed before."""

    retry_count: int = 0

    @property
    def is_retry(self) -> bool:
        return self.retry_count > 0


def retry_delay(retry_count: int, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry_count`` (1 for the first retry)."""
    if retry_count < 1:
        raise ValueError("retries are numbered from 1")
    base = FIRST_RETRY * 2 ** (retry_count - 1)
    return float(base * rng.uniform(1 - JITTER, 1 + JITTER))


class AlarmScheduler:
    """One timer per object, set for the epoch time (ms) its alarm is due."""

    def __init__(self, clock: Clock, fire: Callable[[Hashable], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._timers: dict[Hashable, tuple[int, TimerHandle]] = {}

    def schedule(self, key: Hashable, epoch_ms: int) -> None:
        """Fire ``key`` at ``epoch_ms`` (at once, if that has passed)."""
        self.cancel(key)
        delay = max(0.0, epoch_ms / 1000 - self._clock.time())
        handle = self._clock.call_at(self._clock.monotonic() + delay, lambda: self._due(key))
        self._timers[key] = (epoch_ms, handle)

    def cancel(self, key: Hashable) -> None:
        entry = self._timers.pop(key, None)
        if entry is not None:
            entry[1].cancel()

    def due_time(self, key: Hashable) -> int | None:
        entry = self._timers.get(key)
        return entry[0] if entry is not None else None

    def _due(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self._fire(key)

    def close(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def __len__(self) -> int:
        return len(self._timers)
