"""Lifecycle controls, in-process: ``block_concurrency_while``, ``wait_until``, ``abort`` and
what keeps an object from being evicted.

The runtime runs in the test's event loop with a ``FakeClock``, so timeouts (the 30 s of
``block_concurrency_while``, the idle timeout) pass only when a test moves the clock. Storage
is real SQLite under ``tmp_path``; where durability matters, ``conftest.GatedDriver`` holds
each database's ``flush()`` (the fsync) on a ``threading.Event`` — the documented storage
boundary.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import GatedDriver, wait_for

from opendo import (
    DurableObject,
    DurableObjectResetError,
    FakeClock,
    ReadyState,
    Request,
    Response,
    Runtime,
    SqliteDriver,
    WebSocket,
    WebSocketPair,
)
from opendo.runtime.host import Lifecycle, ObjectHost
from opendo.runtime.state import BLOCK_CONCURRENCY_TIMEOUT

IDLE = 10.0
RECV = 5.0  # bound for something that must happen
QUIET = 0.3  # how long we watch to conclude that something does not happen


class Probe(DurableObject):
    """Records what it runs in ``env.LOG``; waits on the events in ``env.GATES``."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.log: list[Any] = env.LOG
        self.gates: dict[str, asyncio.Event] = env.GATES
        self.log.append("constructed")
        self.value = 0

    async def record(self, item: Any) -> Any:
        self.log.append(item)
        return item

    async def bump(self) -> int:
        self.value += 1
        return self.value

    async def block(self, gate: str, result: Any) -> Any:
        async def fn() -> Any:
            self.log.append("block started")
            await self.gates[gate].wait()
            self.log.append("block finished")
            return result

        return await self.ctx.block_concurrency_while(fn)

    async def block_and_fail(self, gate: str) -> None:
        async def fn() -> None:
            self.log.append("block started")
            await self.gates[gate].wait()
            raise ValueError("failed inside block_concurrency_while")

        await self.ctx.block_concurrency_while(fn)

    def start_block(self, gate: str) -> str:
        """Start ``block_concurrency_while`` without awaiting it (as a constructor would)."""

        async def fn() -> None:
            self.log.append("block started")
            await self.gates[gate].wait()

        self.ctx.block_concurrency_while(fn)
        return "started"

    def later(self, gate: str, fail: bool) -> str:
        async def work() -> None:
            await self.gates[gate].wait()
            self.log.append(("background done", gate))
            if fail:
                raise RuntimeError("the background work failed")

        self.ctx.wait_until(work())
        return "scheduled"

    async def put(self, key: str, value: Any) -> Any:
        await self.ctx.storage.put(key, value)
        return value

    async def get(self, key: str) -> Any:
        return await self.ctx.storage.get(key)

    async def put_and_abort(self, key: str, value: Any) -> None:
        await self.ctx.storage.put(key, value)
        self.ctx.abort(f"dropping {key}")

    async def put_wait_and_abort(self, key: str, value: Any) -> None:
        await self.ctx.storage.put(key, value)
        self.log.append(("put", key))
        await asyncio.sleep(0)  # the end of the turn: the batch commits and its flush starts
        await asyncio.sleep(0)
        self.ctx.abort(f"dropping {key}")

    async def fetch(self, request: Request) -> Response:
        client, server = WebSocketPair()
        server.accept()
        server.add_event_listener("message", lambda event: server.send(f"echo:{event.data}"))
        return Response(status=101, web_socket=client)


def make_runtime(
    clock: FakeClock | None = None, storage: SqliteDriver | None = None
) -> tuple[Runtime, list[Any], dict[str, asyncio.Event]]:
    log: list[Any] = []
    gates: dict[str, asyncio.Event] = {}
    runtime = Runtime(
        bindings={"PROBE": Probe},
        vars={"LOG": log, "GATES": gates},
        clock=clock or FakeClock(),
        idle_timeout=IDLE,
        storage=storage,
    )
    return runtime, log, gates


def host_of(runtime: Runtime, name: str) -> ObjectHost:
    ns = runtime.env.PROBE
    return runtime.host(ns, ns.id_from_name(name))


async def settle() -> None:
    """Let every task that can run, run (a bounded number of loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- block_concurrency_while --------------------------------------------------------------------


async def test_events_arriving_during_block_concurrency_while_wait_and_keep_their_order() -> None:
    runtime, log, gates = make_runtime()
    gates["g"] = asyncio.Event()
    stub = runtime.env.PROBE.get_by_name("x")
    blocked = stub.block("g", {"loaded": True})
    await wait_for(lambda: "block started" in log)

    # From several stubs, so their arrival order is the only order there is.
    calls = [runtime.env.PROBE.get_by_name("x").record(i) for i in range(5)]
    await settle()
    assert log == ["constructed", "block started"]
    assert host_of(runtime, "x").statistics()["queued"] == 5
    assert not blocked.done()

    gates["g"].set()
    assert await asyncio.wait_for(blocked, RECV) == {"loaded": True}
    assert await asyncio.wait_for(asyncio.gather(*calls), RECV) == [0, 1, 2, 3, 4]
    assert log == ["constructed", "block started", "block finished", 0, 1, 2, 3, 4]


async def test_block_concurrency_while_times_out_after_30_s_and_resets_the_object() -> None:
    clock = FakeClock()
    runtime, log, gates = make_runtime(clock)
    gates["never"] = asyncio.Event()
    stub = runtime.env.PROBE.get_by_name("x")
    assert await stub.bump() == 1
    blocked = stub.block("never", "unused")
    await wait_for(lambda: "block started" in log)
    queued = [stub.record("a"), runtime.env.PROBE.get_by_name("x").record("b")]

    clock.advance(BLOCK_CONCURRENCY_TIMEOUT - 0.1)
    await settle()
    assert not blocked.done() and not any(call.done() for call in queued)
    assert log == ["constructed", "block started"]

    clock.advance(0.1)
    with pytest.raises(DurableObjectResetError, match="30 s"):
        await asyncio.wait_for(blocked, RECV)
    # The queued events go to a new instance, in the order they arrived.
    assert await asyncio.wait_for(asyncio.gather(*queued), RECV) == ["a", "b"]
    assert log == ["constructed", "block started", "constructed", "a", "b"]
    assert await stub.bump() == 1  # in-memory state was dropped
    assert host_of(runtime, "x").constructions == 2


async def test_an_exception_inside_block_concurrency_while_resets_the_object() -> None:
    runtime, log, gates = make_runtime()
    gates["g"] = asyncio.Event()
    stub = runtime.env.PROBE.get_by_name("x")
    assert await stub.bump() == 1
    failing = stub.block_and_fail("g")
    await wait_for(lambda: "block started" in log)
    queued = stub.record("after")

    gates["g"].set()
    with pytest.raises(ValueError, match="failed inside block_concurrency_while") as info:
        await asyncio.wait_for(failing, RECV)
    assert info.value.remote is True  # type: ignore[attr-defined]
    assert await asyncio.wait_for(queued, RECV) == "after"
    assert log == ["constructed", "block started", "constructed", "after"]
    assert await stub.bump() == 1
    assert host_of(runtime, "x").constructions == 2


async def test_an_unawaited_block_that_times_out_leaves_no_unretrieved_task_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    runtime, log, gates = make_runtime(clock)
    gates["never"] = asyncio.Event()
    stub = runtime.env.PROBE.get_by_name("x")
    assert await stub.start_block("never") == "started"
    queued = stub.record("after")
    await wait_for(lambda: "block started" in log)
    clock.advance(BLOCK_CONCURRENCY_TIMEOUT)
    assert await asyncio.wait_for(queued, RECV) == "after"
    assert log == ["constructed", "block started", "constructed", "after"]

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        del runtime, clock, stub, queued
        await settle()
        gc.collect()
    assert "never retrieved" not in caplog.text


# -- wait_until ---------------------------------------------------------------------------------


async def test_wait_until_keeps_an_idle_object_until_its_work_is_done() -> None:
    clock = FakeClock()
    runtime, log, gates = make_runtime(clock)
    gates["work"] = asyncio.Event()
    stub = runtime.env.PROBE.get_by_name("x")
    assert await stub.later("work", False) == "scheduled"
    host = host_of(runtime, "x")

    clock.advance(10 * IDLE)
    runtime.evict_all()
    assert runtime.live_hosts() == [host] and host.state is Lifecycle.ACTIVE

    gates["work"].set()
    await wait_for(lambda: ("background done", "work") in log)
    await wait_for(host.is_idle)
    clock.advance(IDLE - 0.1)
    assert runtime.live_hosts() == [host]
    clock.advance(0.1)
    assert runtime.live_hosts() == [] and host.state is Lifecycle.EVICTED
    assert await stub.bump() == 1
    assert log.count("constructed") == 2


async def test_a_failure_in_wait_until_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    runtime, log, gates = make_runtime(clock)
    gates["work"] = asyncio.Event()
    stub = runtime.env.PROBE.get_by_name("x")
    with caplog.at_level(logging.ERROR, logger="opendo"):
        assert await stub.later("work", True) == "scheduled"
        gates["work"].set()
        await wait_for(lambda: "the background work failed" in caplog.text)
    assert "wait_until" in caplog.text
    assert await stub.bump() == 1  # the object goes on, not reset
    assert log.count("constructed") == 1
    host = host_of(runtime, "x")
    await wait_for(host.is_idle)
    clock.advance(IDLE)
    assert runtime.live_hosts() == []


# -- abort --------------------------------------------------------------------------------------


@pytest.fixture
def driver(gated_driver: GatedDriver) -> GatedDriver:
    return gated_driver


async def test_abort_drops_a_write_of_the_same_turn(driver: GatedDriver) -> None:
    runtime, log, _ = make_runtime(storage=driver)
    stub = runtime.env.PROBE.get_by_name("x")
    assert await stub.put("warm", 0) == 0
    driver.hold()
    started = driver.calls

    with pytest.raises(DurableObjectResetError, match="dropping k") as info:
        await asyncio.wait_for(stub.put_and_abort("k", 1), RECV)
    assert info.value.remote is True  # type: ignore[attr-defined]
    assert await asyncio.wait_for(stub.get("k"), RECV) is None
    assert driver.calls == started  # nothing of it was even committed
    assert log.count("constructed") == 2

    driver.release()
    assert await asyncio.wait_for(stub.get("k"), RECV) is None
    assert await asyncio.wait_for(stub.get("warm"), RECV) == 0
    assert await asyncio.wait_for(stub.put("k", 2), RECV) == 2


async def test_after_abort_no_answer_reveals_a_write_that_is_not_durable(
    driver: GatedDriver,
) -> None:
    runtime, log, _ = make_runtime(storage=driver)
    stub = runtime.env.PROBE.get_by_name("x")
    assert await stub.put("warm", 0) == 0
    driver.hold()
    started = driver.calls

    aborted = stub.put_wait_and_abort("k", 1)
    with pytest.raises(DurableObjectResetError, match="dropping k"):
        await asyncio.wait_for(aborted, RECV)
    await wait_for(lambda: driver.calls == started + 1)  # committed; its fsync is held
    assert log.count("constructed") == 1

    read = stub.get("k")
    done, _ = await asyncio.wait([read], timeout=QUIET)
    if done:
        assert read.result() is None, "the new instance revealed a write that is not durable"
    driver.release()
    await asyncio.wait_for(read, RECV)


# -- what keeps an object in memory ---------------------------------------------------------------


async def test_a_standard_websocket_defers_eviction_until_it_closes() -> None:
    clock = FakeClock()
    runtime, log, _ = make_runtime(clock)
    stub = runtime.env.PROBE.get_by_name("x")
    response = await stub.fetch("http://do/ws")
    client = response.web_socket
    assert isinstance(client, WebSocket)
    got: list[Any] = []
    client.add_event_listener("message", lambda event: got.append(event.data))
    client.accept()
    host = host_of(runtime, "x")
    instance = host.instance

    clock.advance(100 * IDLE)
    runtime.evict_all()
    assert host.state is Lifecycle.ACTIVE and host.instance is instance
    assert runtime.live_hosts() == [host]
    client.send("still there?")
    await wait_for(lambda: got == ["echo:still there?"])

    client.close(1000, "done")
    assert client.ready_state is ReadyState.CLOSED
    await wait_for(host.is_idle)
    clock.advance(IDLE - 0.1)
    assert runtime.live_hosts() == [host]
    clock.advance(0.1)
    assert runtime.live_hosts() == [] and host.state is Lifecycle.EVICTED
    assert await stub.bump() == 1  # re-activated: a new instance
    assert log.count("constructed") == 2
    assert host_of(runtime, "x") is not host


async def test_a_running_call_defers_eviction() -> None:
    clock = FakeClock()
    runtime, log, gates = make_runtime(clock)
    gates["g"] = asyncio.Event()
    stub = runtime.env.PROBE.get_by_name("x")
    blocked = stub.block("g", "ok")
    await wait_for(lambda: "block started" in log)
    host = host_of(runtime, "x")
    clock.advance(BLOCK_CONCURRENCY_TIMEOUT - 1)
    runtime.evict_all()
    assert host.state is Lifecycle.ACTIVE
    gates["g"].set()
    assert await asyncio.wait_for(blocked, RECV) == "ok"
    await wait_for(host.is_idle)
    clock.advance(IDLE)
    assert host.state is Lifecycle.EVICTED


async def test_an_object_whose_last_call_wrote_is_evicted_after_the_idle_timeout(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    runtime, log, _ = make_runtime(clock, SqliteDriver(tmp_path / "state"))
    stub = runtime.env.PROBE.get_by_name("x")
    assert await stub.put("k", 1) == 1
    host = host_of(runtime, "x")
    await wait_for(host.is_idle)
    clock.advance(IDLE)
    assert host.state is Lifecycle.EVICTED and runtime.live_hosts() == []
