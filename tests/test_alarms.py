"""Alarms: ``storage.get_alarm/set_alarm/delete_alarm`` and the runtime that fires them.

In-process tests drive time with a ``FakeClock``: nothing here sleeps to wait for an alarm.
A timer due by ``clock.advance()`` or ``clock.jump()`` starts the alarm in a task; the tests
then wait (bounded) for what the handler records in ``probe``. Every in-process test runs over
real SQLite files (``SqliteDriver``) and over ``MemoryDriver``.

The last test runs the real ``opendo serve`` twice over one ``--persist-to`` directory: the
alarm set before the first server stops fires after the second one starts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
import math
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import reopen, run_inside, run_opendo, wait_for

from opendo import (
    AlarmInfo,
    DurableObject,
    DurableObjectResetError,
    FakeClock,
    MemoryDriver,
    Runtime,
    SqliteDriver,
    StorageDriver,
    StorageError,
)
from opendo.core.alarms import FIRST_RETRY, JITTER, MAX_RETRIES, retry_delay
from opendo.runtime.stubs import DurableObjectStub

SEED = 20260822
EPOCH = 1_800_000_000.0  # FakeClock's default: time() at monotonic() == 0
NOW_MS = 1_800_000_000_000


# -- the object, and what its alarm handler records ------------------------------------------


@dataclass(frozen=True)
class Attempt:
    retry_count: int
    is_retry: bool
    at: float  # clock.monotonic() when the handler started
    alarm_inside: int | None  # get_alarm() as the handler started
    name: str | None  # ctx.id.name
    info_type: type


Body = Callable[["Alarmed", AlarmInfo], Awaitable[None]]


class Probe:
    """What the alarm handlers of one test did; the test tells them what to do."""

    def __init__(self) -> None:
        self.clock: FakeClock | None = None
        self.attempts: list[Attempt] = []
        self.constructions = 0
        self.running = 0
        self.max_running = 0
        self.fail_first = 0  # attempts that raise (counting all attempts of the test)
        self.body: Body | None = None  # awaited by the handler before it may fail
        self.after: list[int | None] = []  # get_alarm() as each handler ends

    def monotonic(self) -> float:
        return self.clock.monotonic() if self.clock is not None else math.nan


probe = Probe()


class Alarmed(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        probe.constructions += 1

    async def run(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(self)`` inside the object (awaiting it if it returns an awaitable)."""
        return await run_inside(self, fn)

    async def alarm(self, info: AlarmInfo) -> None:
        probe.running += 1
        probe.max_running = max(probe.max_running, probe.running)
        try:
            inside = await self.ctx.storage.get_alarm()
            probe.attempts.append(
                Attempt(
                    info.retry_count,
                    info.is_retry,
                    probe.monotonic(),
                    inside,
                    self.ctx.id.name,
                    type(info),
                )
            )
            if probe.body is not None:
                await probe.body(self, info)
            probe.after.append(await self.ctx.storage.get_alarm())
            if len(probe.attempts) <= probe.fail_first:
                raise RuntimeError(f"alarm attempt {len(probe.attempts)} fails")
        finally:
            probe.running -= 1


class NoHandler(DurableObject):
    async def run(self, fn: Callable[[Any], Any]) -> Any:
        result = fn(self)
        return await result if inspect.isawaitable(result) else result


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_probe() -> None:
    global probe
    probe = Probe()


def make_runtime(
    driver: StorageDriver, clock: FakeClock, *, seed: int = SEED, **options: Any
) -> Runtime:
    runtime = Runtime(
        bindings={"ALARMED": Alarmed, "PLAIN": NoHandler},
        storage=driver,
        clock=clock,
        rng=random.Random(seed),
        **options,
    )
    runtime.start()
    return runtime


@pytest.fixture
def clock() -> FakeClock:
    clock = FakeClock()
    probe.clock = clock
    return clock


@pytest.fixture
async def runtime(driver: StorageDriver, clock: FakeClock) -> Any:
    runtime = make_runtime(driver, clock)
    yield runtime
    await runtime.aclose()


@pytest.fixture
def stub(runtime: Runtime) -> DurableObjectStub:
    return runtime.env.ALARMED.get_by_name("a")


def ms_in(clock: FakeClock, seconds: float) -> int:
    """Epoch milliseconds ``seconds`` from the fake clock's now."""
    return round((clock.time() + seconds) * 1000)


async def get_alarm(stub: DurableObjectStub) -> int | None:
    return await stub.run(lambda o: o.ctx.storage.get_alarm())  # type: ignore[no-any-return]


async def set_alarm(stub: DurableObjectStub, when: Any) -> None:
    await stub.run(lambda o: o.ctx.storage.set_alarm(when))


async def settle(runtime: Runtime) -> None:
    """Let every alarm run that has started finish, and the loop go quiet."""
    await wait_for(lambda: not runtime.alarms.runs)
    for _ in range(20):
        await asyncio.sleep(0)
    await wait_for(lambda: not runtime.alarms.runs)


async def attempts(n: int) -> None:
    await wait_for(lambda: len(probe.attempts) >= n)
    assert len(probe.attempts) == n, probe.attempts


def run_now(call: Awaitable[Any]) -> Any:
    """The result of a storage call that has run (for use inside ``transaction_sync``)."""
    steps = call.__await__()
    try:
        next(steps)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the storage call suspended")


# -- get_alarm / set_alarm / delete_alarm ----------------------------------------------------


async def test_set_alarm_takes_epoch_ms_or_an_aware_datetime(stub: DurableObjectStub) -> None:
    async def fn(o: Any) -> list[Any]:
        st = o.ctx.storage
        seen: list[Any] = [await st.get_alarm()]
        seen.append(await st.set_alarm(NOW_MS + 5_000))
        seen.append(await st.get_alarm())
        await st.set_alarm(dt.datetime(2030, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.UTC))
        seen.append(await st.get_alarm())
        plus2 = dt.timezone(dt.timedelta(hours=2))
        await st.set_alarm(dt.datetime(2030, 1, 2, 5, 4, 5, 678_000, tzinfo=plus2))
        seen.append(await st.get_alarm())
        await st.set_alarm(NOW_MS + 1234.6)  # a float of ms: rounded to whole ms
        seen.append(await st.get_alarm())
        seen.append(await st.delete_alarm())
        seen.append(await st.get_alarm())
        seen.append(await st.delete_alarm())  # deleting no alarm is fine
        return seen

    seen = await stub.run(fn)
    in_2030 = 1_893_553_445_678
    assert seen == [None, None, NOW_MS + 5_000, in_2030, in_2030, NOW_MS + 1235, None, None, None]
    assert all(type(v) is int for v in (seen[2], seen[3], seen[4], seen[5]))


async def test_set_alarm_replaces_the_previous_alarm(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    await set_alarm(stub, ms_in(clock, 10))
    await set_alarm(stub, ms_in(clock, 20))
    assert await get_alarm(stub) == ms_in(clock, 20)
    assert len(runtime.alarms) == 1  # one timer for the object

    clock.advance(15)  # past the replaced time
    await settle(runtime)
    assert probe.attempts == []
    clock.advance(5)
    await attempts(1)
    assert probe.attempts[0].at == 20
    await settle(runtime)
    clock.advance(3600)
    await settle(runtime)
    assert len(probe.attempts) == 1


@pytest.mark.parametrize("bad", ["soon", None, True, [NOW_MS], b"1", dt.date(2030, 1, 1)])
async def test_set_alarm_rejects_what_is_not_a_time_with_type_error(
    stub: DurableObjectStub, bad: Any
) -> None:
    await set_alarm(stub, NOW_MS + 1000)
    with pytest.raises(TypeError, match="datetime or epoch milliseconds"):
        await set_alarm(stub, bad)
    assert await get_alarm(stub) == NOW_MS + 1000


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_set_alarm_of_nan_or_infinity_is_a_storage_error(
    stub: DurableObjectStub, bad: float
) -> None:
    await set_alarm(stub, NOW_MS + 1000)
    with pytest.raises(StorageError, match="is not a time"):
        await set_alarm(stub, bad)
    assert await get_alarm(stub) == NOW_MS + 1000


@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1, 1e300])
async def test_set_alarm_of_a_time_out_of_range_is_a_storage_error(
    stub: DurableObjectStub, bad: float
) -> None:
    await set_alarm(stub, NOW_MS + 1000)
    with pytest.raises(StorageError):
        await set_alarm(stub, bad)
    assert await get_alarm(stub) == NOW_MS + 1000


# -- firing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("delay_ms", [1, 1_234, 10_000, 86_400_007])
async def test_the_alarm_fires_at_its_time_and_not_before(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock, delay_ms: int
) -> None:
    due = ms_in(clock, delay_ms / 1000)
    await set_alarm(stub, due)

    clock.advance((delay_ms - 1) / 1000)  # one millisecond early
    await settle(runtime)
    assert probe.attempts == []
    assert await get_alarm(stub) == due

    clock.advance(0.001)
    await attempts(1)
    [attempt] = probe.attempts
    assert attempt.info_type is AlarmInfo
    assert (attempt.retry_count, attempt.is_retry) == (0, False)
    assert attempt.at == pytest.approx(delay_ms / 1000, abs=1e-6)
    assert attempt.name == "a"
    await settle(runtime)
    assert await get_alarm(stub) is None  # done: a successful handler clears the alarm

    clock.advance(3600)
    await settle(runtime)
    assert len(probe.attempts) == 1


@pytest.mark.parametrize("when", [NOW_MS - 5_000, NOW_MS, 0])
async def test_an_alarm_in_the_past_fires_at_once(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock, when: int
) -> None:
    await set_alarm(stub, when)
    clock.advance(0)
    await attempts(1)
    assert probe.attempts[0].at == 0 and probe.attempts[0].retry_count == 0
    await settle(runtime)
    assert await get_alarm(stub) is None


async def test_get_alarm_inside_the_handler_is_none(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    await set_alarm(stub, ms_in(clock, 1))
    clock.advance(1)
    await attempts(1)
    await settle(runtime)
    assert probe.attempts[0].alarm_inside is None
    assert probe.after == [None]


async def test_a_handler_that_sets_a_new_alarm_sees_it_and_it_fires(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    t1, t2 = ms_in(clock, 1), ms_in(clock, 30)

    async def rearm(o: Alarmed, info: AlarmInfo) -> None:
        if len(probe.attempts) == 1:
            await o.ctx.storage.set_alarm(t2)

    probe.body = rearm
    await set_alarm(stub, t1)
    clock.advance(1)
    await attempts(1)
    await settle(runtime)
    assert probe.attempts[0].alarm_inside is None
    assert probe.after == [t2]  # get_alarm() inside, after set_alarm(t2)
    assert await get_alarm(stub) == t2  # kept after the handler

    clock.advance(28.999)
    await settle(runtime)
    assert len(probe.attempts) == 1
    clock.advance(0.001)
    await attempts(2)
    assert probe.attempts[1].at == pytest.approx(30)
    assert probe.attempts[1].retry_count == 0
    await settle(runtime)
    assert await get_alarm(stub) is None


async def test_a_handler_that_rearms_the_same_time_keeps_its_alarm(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    due = ms_in(clock, 1)

    async def rearm(o: Alarmed, info: AlarmInfo) -> None:
        if len(probe.attempts) == 1:
            await o.ctx.storage.set_alarm(due)  # "run me again": the same (now past) time

    probe.body = rearm
    await set_alarm(stub, due)
    clock.advance(1)
    await attempts(1)
    await settle(runtime)
    assert probe.after == [due]  # the handler saw its new alarm...
    assert await get_alarm(stub) == due  # ...which must survive the handler's end
    clock.advance(0)
    await attempts(2)


async def test_a_handler_that_deletes_the_alarm_it_set_leaves_none(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    async def set_then_delete(o: Alarmed, info: AlarmInfo) -> None:
        await o.ctx.storage.set_alarm(ms_in(clock, 50))
        await o.ctx.storage.delete_alarm()

    probe.body = set_then_delete
    await set_alarm(stub, ms_in(clock, 1))
    clock.advance(1)
    await attempts(1)
    await settle(runtime)
    assert probe.after == [None]
    assert await get_alarm(stub) is None
    clock.advance(3600)
    await settle(runtime)
    assert len(probe.attempts) == 1


# -- retries ---------------------------------------------------------------------------------


def failures(caplog: pytest.LogCaptureFixture) -> int:
    return sum("failed (attempt" in r.getMessage() for r in caplog.records)


async def failing_schedule(
    driver: StorageDriver, clock: FakeClock, caplog: pytest.LogCaptureFixture, seed: int
) -> list[float]:
    """Run an always-failing alarm to its end; return the delays between its attempts."""
    global probe
    probe = Probe()
    probe.clock = clock
    probe.fail_first = 1_000
    caplog.clear()
    # Idle eviction later than any backoff: the only timer before it is the retry's, so
    # ``jump()`` lands exactly on it and the handler records the exact delay.
    runtime = make_runtime(driver, clock, seed=seed, idle_timeout=3600)
    try:
        stub = runtime.env.ALARMED.get_by_name("retry")
        start = clock.monotonic()
        await set_alarm(stub, ms_in(clock, 0))
        clock.advance(0)
        for n in range(1, MAX_RETRIES + 2):
            await attempts(n)
            if n <= MAX_RETRIES:
                await wait_for(lambda n=n: failures(caplog) == n)  # sleeping before the retry
                assert clock.jump()
        await settle(runtime)
        assert [a.retry_count for a in probe.attempts] == list(range(MAX_RETRIES + 1))
        assert [a.is_retry for a in probe.attempts] == [False] + [True] * MAX_RETRIES
        assert probe.attempts[0].at == start
        given_up = [r for r in caplog.records if "given up" in r.getMessage()]
        assert len(given_up) == 1 and given_up[0].levelno == logging.ERROR
        assert await get_alarm(stub) is None  # the alarm was deleted

        clock.advance(3600)  # no more attempts, ever
        await settle(runtime)
        assert len(probe.attempts) == MAX_RETRIES + 1
        times = [a.at for a in probe.attempts]
        return [b - a for a, b in zip(times, times[1:], strict=False)]
    finally:
        await runtime.aclose()


async def test_a_failing_alarm_is_retried_with_backoff_then_given_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="opendo")
    delays = await failing_schedule(SqliteDriver(tmp_path / "one"), FakeClock(), caplog, SEED)

    assert len(delays) == MAX_RETRIES == 6
    for k, delay in enumerate(delays, start=1):
        base = FIRST_RETRY * 2 ** (k - 1)
        assert base == [2, 4, 8, 16, 32, 64][k - 1]
        assert (1 - JITTER) * base <= delay <= (1 + JITTER) * base, (k, delay)
    # The jitter comes from the runtime's rng alone: the same seed, the same schedule.
    rng = random.Random(SEED)
    assert delays == pytest.approx([retry_delay(k, rng) for k in range(1, 7)], abs=1e-9)
    again = await failing_schedule(MemoryDriver(), FakeClock(), caplog, SEED)
    assert again == delays
    other = await failing_schedule(MemoryDriver(), FakeClock(), caplog, SEED + 1)
    assert other != delays


async def test_retries_survive_eviction_during_the_backoff(
    driver: StorageDriver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="opendo")
    probe.fail_first = 1_000
    runtime = make_runtime(driver, clock, idle_timeout=1)  # evicted before every retry
    try:
        stub = runtime.env.ALARMED.get_by_name("evicted")
        await set_alarm(stub, ms_in(clock, 0))
        clock.advance(0)
        for n in range(1, MAX_RETRIES + 2):
            await attempts(n)
            if n <= MAX_RETRIES:
                await wait_for(lambda n=n: failures(caplog) == n)
                assert clock.jump()  # the idle timer: the object is evicted...
                assert runtime.live_hosts() == []
                assert clock.jump()  # ...and the retry constructs it again
        await settle(runtime)
        # The first attempt runs on the instance that set the alarm; every retry on a new one.
        assert probe.constructions == 1 + MAX_RETRIES
        assert [a.retry_count for a in probe.attempts] == list(range(MAX_RETRIES + 1))
        assert "given up" in caplog.text
        assert await get_alarm(stub) is None
    finally:
        await runtime.aclose()


async def test_a_handler_that_fails_twice_then_succeeds_runs_three_times(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="opendo")
    probe.fail_first = 2
    await set_alarm(stub, ms_in(clock, 5))
    clock.advance(5)
    for n in (1, 2, 3):
        await attempts(n)
        if n < 3:
            await wait_for(lambda n=n: failures(caplog) == n)
            clock.advance(2 * FIRST_RETRY**n)  # past the longest jitter of retry n
    await settle(runtime)
    assert [(a.retry_count, a.is_retry) for a in probe.attempts] == [
        (0, False),
        (1, True),
        (2, True),
    ]
    assert "given up" not in caplog.text
    assert await get_alarm(stub) is None
    clock.advance(3600)
    await settle(runtime)
    assert len(probe.attempts) == 3


async def test_deleting_the_alarm_during_the_backoff_stops_the_retries(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="opendo")
    probe.fail_first = 1_000
    await set_alarm(stub, ms_in(clock, 1))
    clock.advance(1)
    await attempts(1)
    await wait_for(lambda: failures(caplog) == 1)
    await stub.run(lambda o: o.ctx.storage.delete_alarm())
    clock.advance(3600)
    await settle(runtime)
    assert len(probe.attempts) == 1
    assert "given up" not in caplog.text


# -- never twice at once ------------------------------------------------------------------------


async def test_an_alarm_never_runs_twice_at_once(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    release = asyncio.Event()
    t2 = ms_in(clock, 2)

    async def hold(o: Alarmed, info: AlarmInfo) -> None:
        if len(probe.attempts) == 1:
            await release.wait()

    probe.body = hold
    await set_alarm(stub, ms_in(clock, 1))
    clock.advance(1)
    await attempts(1)
    assert probe.running == 1

    # Another event sets the alarm again while the handler runs, and its time comes.
    await set_alarm(stub, t2)
    clock.advance(10)
    for _ in range(50):
        await asyncio.sleep(0)
    assert await get_alarm(stub) == t2  # another event may run meanwhile
    assert len(probe.attempts) == 1 and probe.running == 1
    # Running it by hand waits for the run in progress instead of starting another.
    by_hand = asyncio.ensure_future(runtime.run_alarm(runtime.env.ALARMED, stub.id))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not by_hand.done() and len(probe.attempts) == 1

    release.set()
    assert await asyncio.wait_for(by_hand, 10) is True
    await settle(runtime)
    assert probe.after[0] == t2  # the first handler saw the alarm set while it ran
    assert await get_alarm(stub) == t2  # not taken for the one that ran
    clock.advance(0)  # the later alarm, due already, runs now: after the first one
    await attempts(2)
    await settle(runtime)
    assert probe.max_running == 1
    assert probe.attempts[1].retry_count == 0
    assert await get_alarm(stub) is None


async def test_an_alarm_event_from_elsewhere_does_not_run_it_again_while_it_runs(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    """Another process (or node) whose timer fired forwards an ``Alarm`` event to the owner,
    whose own run may be in progress: the duplicate must not start the handler again."""
    from opendo.core.events import Alarm

    release = asyncio.Event()

    async def hold(o: Alarmed, info: AlarmInfo) -> None:
        await release.wait()

    probe.body = hold
    due = ms_in(clock, 1)
    await set_alarm(stub, due)
    clock.advance(1)
    await attempts(1)
    host = runtime.host(runtime.env.ALARMED, stub.id)
    duplicate = host.call(Alarm(due + 1000, 0))  # as a forwarded alarm arrives
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(probe.attempts) == 1 and probe.max_running == 1
    release.set()
    assert await asyncio.wait_for(duplicate, 10) is True  # it was taken care of
    await settle(runtime)
    assert len(probe.attempts) == 1 and probe.max_running == 1
    assert await get_alarm(stub) is None


# -- lifecycle -------------------------------------------------------------------------------


async def test_an_alarm_wakes_an_evicted_object(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    await set_alarm(stub, ms_in(clock, 5))
    assert probe.constructions == 1
    await wait_for(lambda: all(h.is_idle() for h in runtime.live_hosts()))
    runtime.evict_all()
    assert runtime.live_hosts() == []

    clock.advance(5)
    await attempts(1)
    assert probe.constructions == 2  # the constructor ran again, for the alarm
    assert probe.attempts[0].name == "a"
    await settle(runtime)
    assert await get_alarm(stub) is None


async def test_an_alarm_deleted_before_its_time_does_not_run(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    await set_alarm(stub, ms_in(clock, 5))
    await stub.run(lambda o: o.ctx.storage.delete_alarm())
    assert len(runtime.alarms) == 0
    clock.advance(3600)
    await settle(runtime)
    assert probe.attempts == []


async def test_an_alarm_set_in_a_rolled_back_transaction_sync_is_not_kept(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    t1, t2 = ms_in(clock, 10), ms_in(clock, 5)

    def set_and_fail(o: Any, when: int) -> None:
        storage = o.ctx.storage

        def fn() -> None:
            run_now(storage.set_alarm(when))
            assert run_now(storage.get_alarm()) == when
            raise ValueError("rolled back")

        with pytest.raises(ValueError, match="rolled back"):
            storage.transaction_sync(fn)

    await stub.run(lambda o: set_and_fail(o, t2))  # no alarm before it: none after
    assert await get_alarm(stub) is None
    clock.advance(5)
    await settle(runtime)
    assert probe.attempts == []

    start = clock.monotonic()
    t1, t2 = ms_in(clock, 10), ms_in(clock, 5)
    await set_alarm(stub, t1)
    await stub.run(lambda o: set_and_fail(o, t2))  # t1 stays in force
    assert await get_alarm(stub) == t1
    clock.advance(5)
    await settle(runtime)
    assert probe.attempts == []
    clock.advance(5)
    await attempts(1)
    assert probe.attempts[0].at == start + 10


async def test_an_alarm_set_in_a_rolled_back_transaction_is_not_kept(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    t1 = ms_in(clock, 10)
    await set_alarm(stub, t1)

    async def raising(o: Any) -> None:
        async def fn(txn: Any) -> None:
            await txn.set_alarm(ms_in(clock, 3))
            raise ValueError("rolled back")

        with pytest.raises(ValueError):
            await o.ctx.storage.transaction(fn)

    async def rolling_back(o: Any) -> None:
        async def fn(txn: Any) -> None:
            await txn.delete_alarm()
            txn.rollback()

        await o.ctx.storage.transaction(fn)

    await stub.run(raising)
    await stub.run(rolling_back)
    assert await get_alarm(stub) == t1
    clock.advance(9.999)
    await settle(runtime)
    assert probe.attempts == []
    clock.advance(0.001)
    await attempts(1)


async def test_an_alarm_set_then_dropped_by_a_reset_keeps_the_earlier_time(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    t1 = ms_in(clock, 10)
    await set_alarm(stub, t1)

    async def set_then_abort(o: Any) -> None:
        await o.ctx.storage.set_alarm(ms_in(clock, 100))
        o.ctx.abort("changed my mind")  # the write is not committed yet: it is dropped

    with pytest.raises(DurableObjectResetError):
        await stub.run(set_then_abort)
    assert await get_alarm(stub) == t1
    clock.advance(10)
    await settle(runtime)
    assert [a.at for a in probe.attempts] == [10]  # due at t1, not at the dropped time


async def test_delete_all_leaves_the_alarm(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    due = ms_in(clock, 7)

    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.set_alarm(due)
        await st.put({"a": 1, "b": 2})
        st.sql.exec("CREATE TABLE t (x)")
        await st.delete_all()
        return await st.list(), await st.get_alarm()

    assert await stub.run(fn) == ({}, due)
    clock.advance(7)
    await attempts(1)


async def test_alarms_of_different_objects_are_independent(
    runtime: Runtime, clock: FakeClock
) -> None:
    ns = runtime.env.ALARMED
    for name, seconds in (("x", 3), ("y", 1), ("z", 2)):
        await set_alarm(ns.get_by_name(name), ms_in(clock, seconds))
    await ns.get_by_name("z").run(lambda o: o.ctx.storage.delete_alarm())
    for n in (1, 2):
        assert clock.jump()
        await attempts(n)
    await settle(runtime)
    assert [(a.name, a.at) for a in probe.attempts] == [("y", 1), ("x", 3)]


async def test_an_alarm_without_a_handler_is_dropped_with_an_error(
    runtime: Runtime, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    stub = runtime.env.PLAIN.get_by_name("p")
    await stub.run(lambda o: o.ctx.storage.set_alarm(ms_in(clock, 1)))
    clock.advance(1)
    await wait_for(lambda: "no alarm() handler" in caplog.text)
    await settle(runtime)
    assert await stub.run(lambda o: o.ctx.storage.get_alarm()) is None


# -- run_alarm ---------------------------------------------------------------------------------


async def test_run_alarm_runs_a_set_alarm_now(
    runtime: Runtime, stub: DurableObjectStub, clock: FakeClock
) -> None:
    ns = runtime.env.ALARMED
    assert await runtime.run_alarm(ns, stub.id) is False  # none set
    assert probe.attempts == []

    await set_alarm(stub, ms_in(clock, 3600))
    assert await runtime.run_alarm(ns, stub.id) is True
    assert len(probe.attempts) == 1 and probe.attempts[0].at == 0
    assert probe.attempts[0].retry_count == 0
    assert await get_alarm(stub) is None
    assert await runtime.run_alarm(ns, stub.id) is False

    clock.advance(7200)  # past the time it was set for: it does not run again
    await settle(runtime)
    assert len(probe.attempts) == 1

    await set_alarm(stub, ms_in(clock, -1))  # a past one, not yet fired
    assert await runtime.run_alarm(ns, stub.id) is True
    assert len(probe.attempts) == 2
    clock.advance(0)
    await settle(runtime)
    assert len(probe.attempts) == 2


async def test_run_alarm_without_an_alarm_leaves_no_object_behind(
    runtime: Runtime, clock: FakeClock
) -> None:
    ns = runtime.env.ALARMED
    assert await runtime.run_alarm(ns, ns.id_from_name("nothing")) is False
    clock.advance(10 * runtime.idle_timeout)
    assert runtime.live_hosts() == []


# -- restarts and shutdown -----------------------------------------------------------------


async def test_an_alarm_survives_a_runtime_restart(driver: StorageDriver) -> None:
    first_clock = FakeClock()
    first = make_runtime(driver, first_clock)
    try:
        await set_alarm(first.env.ALARMED.get_by_name("kept"), ms_in(first_clock, 30))
        await set_alarm(first.env.ALARMED.get_by_name("late"), ms_in(first_clock, 5))
    finally:
        await first.aclose()
    first_clock.advance(3600)  # the closed runtime fires nothing
    await asyncio.sleep(0)
    assert probe.attempts == []

    # The next process starts 10 s later: "late" is overdue, "kept" is due in 20 s.
    clock = FakeClock(epoch=EPOCH + 10)
    probe.clock = clock
    second = make_runtime(reopen(driver), clock)
    try:
        assert len(second.alarms) == 2
        clock.advance(0)
        await attempts(1)
        assert probe.attempts[0].name == "late"
        clock.advance(19.999)
        await settle(second)
        assert len(probe.attempts) == 1
        clock.advance(0.001)
        await attempts(2)
        assert (probe.attempts[1].name, probe.attempts[1].at) == ("kept", pytest.approx(20))
        await settle(second)
        for name in ("kept", "late"):
            assert await get_alarm(second.env.ALARMED.get_by_name(name)) is None
    finally:
        await second.aclose()

    third = make_runtime(reopen(driver), FakeClock(epoch=EPOCH + 100))
    try:
        assert len(third.alarms) == 0  # nothing left to fire
    finally:
        await third.aclose()


async def test_a_stored_alarm_of_a_class_no_longer_bound_is_skipped(
    driver: StorageDriver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_runtime(driver, clock)
    try:
        await set_alarm(first.env.ALARMED.get_by_name("orphan"), ms_in(clock, 1))
    finally:
        await first.aclose()
    second = Runtime(bindings={"PLAIN": NoHandler}, storage=reopen(driver), clock=clock)
    try:
        second.start()
        assert "no binding names that class" in caplog.text
        assert len(second.alarms) == 0
        clock.advance(3600)
        await asyncio.sleep(0)
        assert probe.attempts == []
    finally:
        await second.aclose()


async def test_aclose_cancels_pending_alarms(
    driver: StorageDriver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="opendo")
    runtime = make_runtime(driver, clock, idle_timeout=3600)
    probe.fail_first = 1  # "b" fails once: its retry is pending when the runtime closes
    await set_alarm(runtime.env.ALARMED.get_by_name("b"), ms_in(clock, 1))
    clock.advance(1)
    await attempts(1)
    await wait_for(lambda: failures(caplog) == 1)
    await set_alarm(runtime.env.ALARMED.get_by_name("a"), ms_in(clock, 10))

    await runtime.aclose()
    assert len(runtime.alarms) == 0
    clock.advance(3600)
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(probe.attempts) == 1


# -- a real server, stopped before its alarm is due and started again ------------------------

TIMER_TOML = """\
name = "alarms"
main = "worker.py"

[[durable_objects.bindings]]
name = "TIMER"
class_name = "Timer"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Timer"]
"""


class SeesItself(DurableObject):
    """Its alarm handler asks the object itself, in an event queued before the handler ends,
    what the alarm and the handler's write look like."""

    seen: list[asyncio.Future[Any]] = []

    async def fetch(self, request: Any) -> Any:
        from opendo import Response

        state = {"fired": await self.ctx.storage.get("fired"), "alarm": None}
        state["alarm"] = await self.ctx.storage.get_alarm()
        return Response(json.dumps(state))

    async def alarm(self, info: AlarmInfo) -> None:
        await self.ctx.storage.put("fired", True)
        stub = self.env.SELF.get(self.ctx.id)
        SeesItself.seen.append(stub.fetch("http://localhost/state"))


async def test_the_next_event_after_the_handler_finds_the_alarm_gone(opendo: Any) -> None:
    project = opendo(bindings={"SELF": SeesItself})
    stub = project.env.SELF.get_by_name("x")
    SeesItself.seen.clear()
    await project.run_in_durable_object(
        stub, lambda instance, ctx: ctx.storage.set_alarm(project.clock.time() * 1000 + 1000)
    )
    assert await project.run_durable_object_alarm(stub) is True
    [queued] = SeesItself.seen
    response = await queued
    # Never "it ran, and it is still due" (the restart test below polls for the same over
    # real sockets, where an event can arrive at any moment around the handler's end).
    assert json.loads(await response.text()) == {"fired": True, "alarm": None}


TIMER_WORKER = '''\
"""GET /set/<epoch ms> sets the alarm; GET /state says whether it fired."""

import json
import time

from opendo import DurableObject, Response, WorkerEntrypoint


class Timer(DurableObject):
    async def fetch(self, request):
        storage = self.ctx.storage
        if request.path.startswith("/set/"):
            await storage.set_alarm(int(request.path[len("/set/") :]))
        state = {"fired": await storage.get("fired"), "alarm": await storage.get_alarm()}
        return Response(json.dumps(state))

    async def alarm(self, info):
        fired = {"at_ms": time.time() * 1000, "retry_count": info.retry_count}
        await self.ctx.storage.put("fired", fired)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.TIMER.get_by_name("timer").fetch(request)
'''


def http_state(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.status == 200
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_an_alarm_survives_a_server_restart(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "opendo.toml").write_text(TIMER_TOML)
    (project / "worker.py").write_text(TIMER_WORKER)
    log = tmp_path / "server.log"

    # The alarm must come due while no server runs: on a loaded machine the first server may
    # not have stopped in time, and then the run starts over with more room.
    for margin in (1.5, 4.0, 10.0):
        persist = tmp_path / f"state-{margin}"
        serve_args = ("serve", project, "--port", "0", "--persist-to", persist)
        with run_opendo(*serve_args, stderr_log=log) as first:
            port = first.wait_ready()
            due = round((time.time() + margin) * 1000)
            assert http_state(port, f"/set/{due}") == {"fired": None, "alarm": due}
            assert first.stop(signal.SIGTERM) == 0
        stopped = time.time() * 1000
        if stopped < due:
            break
    assert stopped < due, f"the first server took {stopped - due + margin * 1000:.0f} ms to stop"

    # Real time passes while no server runs: wait (bounded) until the alarm is overdue.
    pause = threading.Event()
    deadline = time.monotonic() + 15
    while time.time() * 1000 <= due + 100:
        assert time.monotonic() < deadline
        pause.wait(0.05)

    restarted = time.time() * 1000
    with run_opendo(*serve_args, stderr_log=log) as second:
        port = second.wait_ready()
        ready = time.time() * 1000
        deadline = time.monotonic() + 10
        while (state := http_state(port, "/state"))["fired"] is None:
            assert time.monotonic() < deadline, f"the alarm did not fire; log: {log.read_text()}"
            pause.wait(0.05)
        assert second.stop(signal.SIGTERM) == 0

    fired = state["fired"]
    assert fired["retry_count"] == 0
    assert fired["at_ms"] >= restarted > due  # it fired after the restart...
    assert fired["at_ms"] - ready < 5_000  # ...soon after the server was ready
    assert state["alarm"] is None
