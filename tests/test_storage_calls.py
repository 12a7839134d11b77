"""A storage call takes effect when it is made, awaited or not — as on Cloudflare.

``storage.put(...)`` without ``await`` is a common slip; it must not lose the write. Every
API (``ctx.storage``, the ``txn`` of ``storage.transaction``, ``opendo.workers``) returns an
awaitable that is not a coroutine: the call has happened (or, while another event's
transaction is open, is queued in call order), and awaiting it only gives its result.
Tests run with warnings as errors, so a coroutine left unawaited would also fail them.

Objects are driven in-process over real SQLite files (``SqliteDriver`` under ``tmp_path``),
and every write is read back after the instance is evicted, from its database.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import run_inside, wait_for

from opendo import DurableObject, Runtime, SqliteDriver, workers


class Box(DurableObject):
    async def run(self, fn: Callable[[Any], Any]) -> Any:
        return await run_inside(self, fn)


class CfBox(workers.DurableObject):
    async def run(self, fn: Callable[[Any], Any]) -> Any:
        return await run_inside(self, fn)


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    runtime = Runtime(bindings={"BOX": Box, "CF": CfBox}, storage=SqliteDriver(tmp_path))
    yield runtime
    await runtime.aclose()


def coroutines(*calls: Any) -> int:
    """How many of the calls' results are coroutines (closed here, so none warns)."""
    found = [call for call in calls if inspect.iscoroutine(call)]
    for coroutine in found:
        coroutine.close()
    return len(found)


async def stored(runtime: Runtime, binding: str, name: str) -> Any:
    """Everything the object has stored, read by a new instance after eviction."""
    runtime.evict_all()
    stub = getattr(runtime.env, binding).get_by_name(name)

    def read(o: Any) -> Any:
        st = o.ctx.storage
        return dict(st.kv.list()), st.alarm_now()

    return await stub.run(read)


# -- one event: each call has happened when it returns ------------------------------------------


async def test_writes_not_awaited_take_effect_when_called(runtime: Runtime) -> None:
    def write(o: Any) -> Any:  # a plain function: nothing is awaited
        st = o.ctx.storage
        made = coroutines(
            st.put("a", 1),
            st.put({"b": 2, "c": 3}),
            st.delete("c"),
            st.set_alarm(10**13),
        )
        return made, st.kv.get("a"), st.kv.get("c"), st.alarm_now()

    stub = runtime.env.BOX.get_by_name("w")
    assert await stub.run(write) == (0, 1, None, 10**13)
    assert await stored(runtime, "BOX", "w") == ({"a": 1, "b": 2}, 10**13)

    def clear(o: Any) -> Any:
        st = o.ctx.storage
        return coroutines(st.delete_all(), st.delete_alarm(), st.put("after", True))

    assert await runtime.env.BOX.get_by_name("w").run(clear) == 0
    assert await stored(runtime, "BOX", "w") == ({"after": True}, None)


async def test_awaiting_a_call_gives_its_result(runtime: Runtime) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        put = st.put("k", "v")
        existed, missing = st.delete("k"), st.delete(["k", "x"])
        got, listed, alarm = st.get("k"), st.list(), st.get_alarm()
        calls = (put, existed, missing, got, listed, alarm)
        assert coroutines(*calls) == 0
        return [await call for call in calls]

    assert await runtime.env.BOX.get_by_name("r").run(fn) == [None, True, 0, None, {}, None]


async def test_txn_writes_not_awaited_take_effect(runtime: Runtime) -> None:
    async def fn(o: Any) -> Any:
        async def body(txn: Any) -> Any:
            made = coroutines(
                txn.put("a", 1),
                txn.put({"b": 2}),
                txn.delete("b"),
                txn.set_alarm(10**13),
                txn.get("a"),
                txn.list(),
                txn.get_alarm(),
            )
            return made, await txn.list()

        return await o.ctx.storage.transaction(body)

    assert await runtime.env.BOX.get_by_name("t").run(fn) == (0, {"a": 1})
    assert await stored(runtime, "BOX", "t") == ({"a": 1}, 10**13)


async def test_workers_calls_not_awaited_take_effect(runtime: Runtime) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        made = coroutines(st.put("a", 1), st.put("b", 2), st.delete("b"), st.setAlarm(10**13))

        async def body(txn: Any) -> None:
            assert coroutines(txn.put("c", 3), txn.deleteAlarm()) == 0

        await st.transaction(body)
        return made

    assert await runtime.env.CF.get_by_name("cf").run(fn) == 0
    assert await stored(runtime, "CF", "cf") == ({"a": 1, "c": 3}, None)


# -- while another event's transaction is open ------------------------------------------------


class Held:
    """One event holds ``storage.transaction(body)`` open until ``release`` is set; other
    events, started before it, resume inside it when ``go`` is set."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.go = asyncio.Event()
        self.inside = asyncio.Event()
        self.release = asyncio.Event()
        self.others: list[asyncio.Future[Any]] = []
        self.waiting = self.resumed = 0
        self.txn: asyncio.Future[Any] | None = None

    def other(self, fn: Callable[[Any], Any]) -> None:
        """An event that waits (not on storage) for ``go``, then runs ``fn(instance)``."""

        async def run(o: Any) -> Any:
            self.waiting += 1
            await self.go.wait()
            self.resumed += 1
            return await run_inside(o, fn)  # its first calls are made before it suspends

        self.others.append(asyncio.ensure_future(self.stub.run(run)))

    async def hold(self, body: Callable[[Any], Any]) -> None:
        async def run(o: Any) -> Any:
            async def txn(t: Any) -> Any:
                result = await run_inside(t, body)
                self.go.set()
                self.inside.set()
                await self.release.wait()
                return result

            return await o.ctx.storage.transaction(txn)

        await wait_for(lambda: self.waiting == len(self.others))
        self.txn = asyncio.ensure_future(self.stub.run(run))
        await asyncio.wait_for(self.inside.wait(), 5)
        await wait_for(lambda: self.resumed == len(self.others))

    async def end(self) -> list[Any]:
        assert self.txn is not None
        self.release.set()
        await asyncio.wait_for(self.txn, 5)
        return list(await asyncio.wait_for(asyncio.gather(*self.others), 5))


@pytest.mark.parametrize("binding", ["BOX", "CF"])
async def test_a_write_made_during_another_events_transaction_happens_after_it(
    runtime: Runtime, binding: str
) -> None:
    held = Held(getattr(runtime.env, binding).get_by_name("h"))
    pending: list[Any] = []

    def during(o: Any) -> int:  # not awaited: queued behind the transaction, in call order
        st = o.ctx.storage
        pending.extend([st.put("k", "first"), st.put("k", "second"), st.delete("gone")])
        pending.append(st.put("n", 1))
        return coroutines(*pending)

    held.other(during)

    async def txn(t: Any) -> None:
        await t.put("k", "txn")
        await t.put("gone", True)

    await held.hold(txn)
    assert all(not call.done() for call in pending if isinstance(call, asyncio.Future))
    assert await held.end() == [0]
    assert await stored(runtime, binding, "h") == ({"k": "second", "n": 1}, None)


async def test_queued_calls_and_a_waiting_transaction_keep_call_order(runtime: Runtime) -> None:
    held = Held(runtime.env.BOX.get_by_name("q"))
    seen: list[Any] = []

    def before(o: Any) -> Any:
        o.ctx.storage.put("k", "before")  # not awaited

    async def waiting_txn(o: Any) -> Any:
        async def body(t: Any) -> None:
            seen.append(await t.get("k"))
            await t.put("k", "txn 2")

        await o.ctx.storage.transaction(body)

    async def after(o: Any) -> Any:
        return await o.ctx.storage.put("k", "after"), await o.ctx.storage.get("k")

    held.other(before)
    held.other(waiting_txn)
    held.other(after)
    await held.hold(lambda t: t.put("k", "txn 1"))
    assert await held.end() == [None, None, (None, "after")]
    assert seen == ["before"]
    assert await stored(runtime, "BOX", "q") == ({"k": "after"}, None)


async def test_a_call_queued_behind_a_transaction_fails_if_the_object_is_reset(
    runtime: Runtime,
) -> None:
    held = Held(runtime.env.BOX.get_by_name("reset"))
    pending: list[Any] = []
    held.other(lambda o: pending.append(o.ctx.storage.put("k", "queued")))
    await held.hold(lambda t: t.put("k", "txn"))
    # The queued put fails with the instance; nothing it would have written is stored.
    runtime.host(runtime.env.BOX, runtime.env.BOX.id_from_name("reset")).reset("test")
    with pytest.raises(Exception, match="reset"):
        await asyncio.wait_for(pending[0], 5)
    held.release.set()
    await asyncio.gather(held.txn, *held.others, return_exceptions=True)
    assert await stored(runtime, "BOX", "reset") == ({}, None)
