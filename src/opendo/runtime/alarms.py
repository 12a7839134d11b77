"""Running alarms: when each object's alarm is due, running it as an event, retrying it.

The schedule (``core.alarms.AlarmScheduler``) keeps one timer per object on the injected clock;
the stored alarm is the truth. When a timer fires, the runner reads the object's stored alarm
again (the timer may be stale: the alarm was moved, deleted, or the write that set it rolled
back), and if it is due, delivers an ``Alarm`` event through the object's input gate. Delivery
is at least once: the alarm stays stored until its handler has returned (the handler and the
alarm's deletion are one event). A handler that raises is retried after 2 s, 4 s, 8 s … (±25%
jitter) at most ``MAX_RETRIES`` times, then given up (a ``GiveUpAlarm`` event deletes it). An
alarm never runs twice at once for one object.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Protocol

from ..core.alarms import MAX_RETRIES, AlarmScheduler, retry_delay
from ..core.clock import Clock
from ..core.events import Alarm, GiveUpAlarm
from ..core.ids import DurableObjectId
from ..core.metrics import METRICS
from ..core.protocols import StoredAlarm
from .invoke import give_up_alarm

if TYPE_CHECKING:
    from .host import ObjectHost
    from .stubs import DurableObjectNamespace

__all__ = ["AlarmRunner"]

log = logging.getLogger("opendo")

Key = tuple[str, DurableObjectId]
ANY_TIME = 2**62  # an Alarm event "by" this runs whatever alarm is set


class Hosts(Protocol):
    """What the runner needs of the runtime: hosts, by class name and id."""

    def host(self, namespace: DurableObjectNamespace, id: DurableObjectId) -> ObjectHost: ...

    def live_host(self, key: Key) -> ObjectHost | None: ...

    def namespace_of(self, class_name: str) -> DurableObjectNamespace | None: ...


class AlarmRunner:
    """The alarms of one runtime's objects."""

    def __init__(self, hosts: Hosts, clock: Clock, rng: random.Random) -> None:
        self._hosts = hosts
        self._clock = clock
        self._rng = rng
        self.schedule = AlarmScheduler(clock, self._due)
        self.runs: dict[Hashable, asyncio.Task[bool]] = {}
        self.sleeping: set[asyncio.Task[Any]] = set()  # runs waiting for a retry

    def restore(self, stored: StoredAlarm) -> None:
        """An alarm stored by an earlier run: schedule it."""
        namespace = self._hosts.namespace_of(stored.class_name)
        if namespace is None:
            log.warning(
                "an alarm of %s(%s) is stored, but no binding names that class",
                stored.class_name,
                stored.id,
            )
            return
        id = namespace.id_from_string(stored.id)
        id.name = stored.name
        self.schedule.schedule((stored.class_name, id), stored.time_ms)

    def changed(self, host: ObjectHost, time_ms: int | None) -> None:
        key = (host.class_name, host.id)
        if time_ms is None:
            self.schedule.cancel(key)
        else:
            self.schedule.schedule(key, time_ms)

    def _due(self, key: Hashable) -> None:
        if key in self.runs:
            return  # the run in progress reads the alarm again before it ends
        self.runs[key] = asyncio.ensure_future(self._run(key))  # type: ignore[arg-type]

    async def _run(self, key: Key, *, now: bool = False) -> bool:
        """Run the object's alarm (retrying it) if it is due, or ``now`` if one is set;
        whether one was set."""
        class_name, id = key
        namespace = self._hosts.namespace_of(class_name)
        assert namespace is not None
        retry = 0
        try:
            while True:
                host = self._hosts.host(namespace, id)
                by = ANY_TIME if now else round(self._clock.time() * 1000)
                try:
                    outcome = await host.call(Alarm(by, retry))
                except Exception as exc:
                    log.warning("alarm of %s failed (attempt %d): %r", host.name(), retry + 1, exc)
                    METRICS.alarms.inc(class_name, "failed")
                    retry += 1
                    if retry > MAX_RETRIES:
                        log.error("alarm of %s given up after %d retries", host.name(), MAX_RETRIES)
                        METRICS.alarms.inc(class_name, "given_up")
                        await self._give_up(self._hosts.host(namespace, id), by)
                        return True
                    await self._sleep(retry_delay(retry, self._rng))
                    continue
                if outcome is None:
                    return False
                if outcome is True:
                    METRICS.alarms.inc(class_name, "ran")
                else:
                    self.schedule.schedule(key, int(outcome))  # not due yet
                return True
        finally:
            del self.runs[key]
            # An alarm set meanwhile (its timer found this run busy) is scheduled again.
            live = self._hosts.live_host(key)
            kept = live.open_storage if live is not None else None
            if kept is not None and not kept.closed:
                if (later := kept.alarm_now()) is not None:
                    self.schedule.schedule(key, later)

    async def _give_up(self, host: ObjectHost, by: int) -> None:
        """Delete the alarm that kept failing: as an event of a live instance (so it falls
        between its other events), or on its storage alone when there is no instance,
        without constructing one (which may be what keeps failing)."""
        try:
            if host.instance is not None:
                await host.call(GiveUpAlarm(by))
            else:
                await host.on_storage(lambda storage: give_up_alarm(storage, by))
        except Exception as exc:
            log.error("alarm of %s could not be deleted: %r", host.name(), exc)

    async def _sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        handle = self._clock.call_at(self._clock.monotonic() + seconds, wake)
        task = asyncio.current_task()
        if task is not None:
            self.sleeping.add(task)
        try:
            await future
        finally:
            handle.cancel()
            if task is not None:
                self.sleeping.discard(task)

    async def run_now(self, namespace: DurableObjectNamespace, id: DurableObjectId) -> bool:
        """Run the object's alarm now if one is set, due or not; True if one was. (For
        tests.)"""
        key = (namespace.object_class.__name__, id)
        self.schedule.cancel(key)
        task = self.runs.get(key)
        if task is not None:
            await task
            return True
        run = asyncio.ensure_future(self._run(key, now=True))
        self.runs[key] = run
        return await run

    def __len__(self) -> int:
        """How many objects have an alarm timer set."""
        return len(self.schedule)

    def close(self) -> None:
        self.schedule.close()
        for task in list(self.runs.values()):
            task.cancel()
