"""Durability promises (DESIGN.md §2.3-§2.5, §4): nothing leaves before its write is on disk.

Everything here is real — SQLite files under tmp_path, uvicorn on 127.0.0.1, the websockets and
httpx clients — except one seam, the documented boundary: ``GatedDriver`` is a
``SqliteDriver`` whose databases' ``flush()`` (the fsync that decides durability) can be held
on a ``threading.Event`` the test controls, or made to raise ``OSError``. A held flush is a
slow disk; the tests check what may and may not happen while it is slow.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, GatedDriver, serve, wait_for
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from opendo import (
    App,
    DurableObject,
    DurableObjectResetError,
    Request,
    Response,
    Runtime,
    SqliteDriver,
    StorageError,
    WebSocket,
    WebSocketPair,
    WorkerEntrypoint,
    create_app,
)

COUNTER_DIR = ROOT / "examples" / "counter"
RECV = 5.0  # bound for something that must happen
QUIET = 0.3  # how long we watch to conclude that something does not happen


# -- the one fake: a driver whose flush we hold or fail (conftest.GatedDriver) --------------


@pytest.fixture
def driver(gated_driver: GatedDriver) -> GatedDriver:
    return gated_driver


# -- a small object with storage, RPC and WebSockets ----------------------------------------


class Box(DurableObject):
    """Records what it runs in ``env.LOG`` (a list the test owns)."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.log: list[Any] = env.LOG
        self.log.append(("constructed", ctx.id.name))
        self.sockets: list[WebSocket] = []

    async def put(self, key: str, value: Any) -> Any:
        await self.ctx.storage.put(key, value)
        self.log.append(("put", key, value))
        return value

    async def get(self, key: str) -> Any:
        value = await self.ctx.storage.get(key)
        self.log.append(("get", key, value))
        return value

    async def put_then_get(self, key: str, value: Any) -> Any:
        await self.ctx.storage.put(key, value)
        return await self.get(key)

    async def items(self) -> dict[str, Any]:
        return await self.ctx.storage.list()

    async def increment(self) -> int:
        storage = self.ctx.storage
        value = (await storage.get("n") or 0) + 1
        await storage.put("n", value)
        return value

    async def put_then_sync(self, key: str, value: Any) -> None:
        await self.ctx.storage.put(key, value)
        self.log.append("written")
        await self.ctx.storage.sync()
        self.log.append("synced")

    async def sync(self) -> str:
        await self.ctx.storage.sync()
        return "synced"

    async def note(self, what: Any) -> Any:
        self.log.append(("note", what))
        return what

    async def put_then_call(self, key: str, value: Any, other: str) -> Any:
        await self.ctx.storage.put(key, value)
        return await self.env.BOX.get_by_name(other).note(("called by", self.ctx.id.name))

    async def abort(self) -> str:
        self.ctx.abort("asked to")
        return "aborted"

    async def fetch(self, request: Request) -> Response:
        client, server = WebSocketPair()
        server.accept()
        server.add_event_listener("message", lambda event: self.run_script(server, event.data))
        self.sockets.append(server)
        return Response(status=101, web_socket=client)

    async def run_script(self, ws: WebSocket, data: Any) -> None:
        """A message is a script: [["send", text] | ["put", key, value] | ["close", code]]."""
        for step in json.loads(data):
            if step[0] == "send":
                ws.send(step[1])
            elif step[0] == "put":
                await self.ctx.storage.put(step[1], step[2])
                self.log.append(("put", step[1], step[2]))
            elif step[0] == "close":
                ws.close(step[1], "bye")


class Front(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        return await self.env.BOX.get_by_name(request.path.strip("/") or "box").fetch(request)


def box_runtime(storage: SqliteDriver, log: list[Any]) -> Runtime:
    return Runtime(worker=Front, bindings={"BOX": Box}, vars={"LOG": log}, storage=storage)


# -- helpers ------------------------------------------------------------------------------


async def assert_pending(*futures: asyncio.Future[Any], within: float = QUIET) -> None:
    """None of ``futures`` completes while the loop runs for ``within`` seconds."""
    done, _ = await asyncio.wait(futures, timeout=within)
    assert not done, f"delivered while its write was not durable: {[f.result() for f in done]}"


def arrival_order(futures: dict[str, asyncio.Future[Any]]) -> list[str]:
    """A list that fills with the names of ``futures`` in the order they complete."""
    order: list[str] = []
    for name, future in futures.items():
        future.add_done_callback(lambda _f, name=name: order.append(name))
    return order


async def open_ws(addr: str, path: str) -> ClientConnection:
    return await asyncio.wait_for(
        connect(f"ws://{addr}{path}", compression=None, open_timeout=RECV, close_timeout=2),
        RECV,
    )


async def recv(ws: ClientConnection, within: float = RECV) -> Any:
    async with asyncio.timeout(within):
        return await ws.recv()


async def assert_silent(ws: ClientConnection, within: float = QUIET) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(within):
            frame = await ws.recv()
            raise AssertionError(f"a frame arrived while its write was not durable: {frame!r}")


async def warm_up(stub: Any) -> None:
    """One healthy write, so the database exists and its first (directory) sync is done."""
    assert await stub.put("warm", 0) == 0


async def warm_box(driver: GatedDriver) -> tuple[Runtime, Any, list[Any]]:
    """A runtime over ``driver``, the stub of its object "box", warmed up, and the log."""
    log: list[Any] = []
    runtime = box_runtime(driver, log)
    stub = runtime.env.BOX.get_by_name("box")
    await warm_up(stub)
    return runtime, stub, log


# -- no lost updates ------------------------------------------------------------------------


async def test_200_concurrent_read_modify_writes_lose_nothing(tmp_path: Path) -> None:
    log: list[Any] = []
    runtime = box_runtime(SqliteDriver(tmp_path), log)
    stubs = [runtime.env.BOX.get_by_name("n") for _ in range(200)]

    results = await asyncio.wait_for(asyncio.gather(*(s.increment() for s in stubs)), 30)

    assert sorted(results) == list(range(1, 201))
    await runtime.aclose()
    # A new runtime on the same files: what is stored, not what an instance remembers.
    fresh = box_runtime(SqliteDriver(tmp_path), log)
    assert await fresh.env.BOX.get_by_name("n").get("n") == 200
    await fresh.aclose()


async def test_200_concurrent_http_increments_of_the_counter_example(tmp_path: Path) -> None:
    limits = httpx.Limits(max_connections=50)
    async with (
        serve(create_app(COUNTER_DIR, persist_to=tmp_path)) as addr,
        httpx.AsyncClient(base_url=f"http://{addr}", timeout=30, limits=limits) as http,
    ):
        responses = await asyncio.gather(*(http.get("/counter/c") for _ in range(200)))
        assert {r.status_code for r in responses} == {200}
        assert sorted(int(r.text) for r in responses) == list(range(1, 201))

    async with (
        serve(create_app(COUNTER_DIR, persist_to=tmp_path)) as addr,
        httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as http,
    ):
        assert (await http.get("/counter/c")).text == "201"  # 200 were stored


# -- the output gate: nothing leaves before its fsync ------------------------------------------


async def test_an_rpc_result_waits_for_its_flush(driver: GatedDriver) -> None:
    runtime = box_runtime(driver, [])
    stub = runtime.env.BOX.get_by_name("box")
    await warm_up(stub)
    flushes = driver.calls
    driver.hold()

    first = stub.put("a", 1)
    await driver.flush_started(flushes + 1)
    second = stub.put("b", 2)  # commits while the first flush runs: the next flush's
    order = arrival_order({"first": first, "second": second})
    await assert_pending(first, second)

    driver.release()
    assert await asyncio.wait_for(asyncio.gather(first, second), RECV) == [1, 2]
    assert order == ["first", "second"]
    await runtime.aclose()


async def test_an_http_response_waits_for_its_flush(driver: GatedDriver, tmp_path: Path) -> None:
    app = create_app(COUNTER_DIR, persist_to=tmp_path / "unused", storage=driver)
    async with (
        serve(app) as addr,
        httpx.AsyncClient(base_url=f"http://{addr}", timeout=RECV) as http,
        httpx.AsyncClient(base_url=f"http://{addr}", timeout=QUIET) as impatient,
    ):
        assert (await http.get("/counter/x")).text == "1"
        flushes = driver.calls
        driver.hold()

        waiting = asyncio.ensure_future(http.get("/counter/x"))
        await driver.flush_started(flushes + 1)
        with pytest.raises(httpx.ReadTimeout):
            await impatient.get("/counter/x")  # commits behind the held flush: held as well
        await assert_pending(waiting)

        driver.release()
        response = await asyncio.wait_for(waiting, RECV)
        assert (response.status_code, response.text) == (200, "2")
        # The request that timed out did increment (its answer was lost, not its write).
        assert (await http.get("/counter/x")).text == "4"


async def test_a_websocket_message_sent_after_a_write_waits_for_its_flush(
    driver: GatedDriver,
) -> None:
    runtime = box_runtime(driver, [])
    async with serve(App(runtime)) as addr:
        await warm_up(runtime.env.BOX.get_by_name("box"))
        ws = await open_ws(addr, "/box")
        flushes = driver.calls
        driver.hold()

        script = [["put", "k", 1], ["send", "after 1"], ["send", "after 2"]]
        await ws.send(json.dumps(script))
        await driver.flush_started(flushes + 1)
        await assert_silent(ws)

        driver.release()
        assert [await recv(ws), await recv(ws)] == ["after 1", "after 2"]
        await ws.close()


async def test_a_message_sent_before_the_write_is_not_held(driver: GatedDriver) -> None:
    runtime = box_runtime(driver, [])
    async with serve(App(runtime)) as addr:
        await warm_up(runtime.env.BOX.get_by_name("box"))
        ws = await open_ws(addr, "/box")
        flushes = driver.calls
        driver.hold()

        await ws.send(json.dumps([["send", "before"], ["put", "k", 1], ["send", "after"]]))
        assert await recv(ws) == "before"  # arrives while the flush is still held
        await driver.flush_started(flushes + 1)
        assert driver.in_flight == 1
        await assert_silent(ws)

        driver.release()
        assert await recv(ws) == "after"
        await ws.close()


async def test_rpc_results_and_websocket_messages_leave_in_order(driver: GatedDriver) -> None:
    """One held flush; an RPC result, a WebSocket message and another result behind it."""
    runtime = box_runtime(driver, [])
    async with serve(App(runtime)) as addr:
        stub = runtime.env.BOX.get_by_name("box")
        await warm_up(stub)
        ws = await open_ws(addr, "/box")
        flushes = driver.calls
        driver.hold()

        first = stub.put("a", 1)
        await driver.flush_started(flushes + 1)
        await ws.send(json.dumps([["put", "b", 2], ["send", "b written"]]))
        await wait_for(lambda: ("put", "b", 2) in runtime.env.LOG)
        last = stub.put("c", 3)
        order = arrival_order({"first": first, "last": last})
        await assert_pending(first, last)
        await assert_silent(ws)

        driver.release()
        assert await recv(ws) == "b written"
        assert await asyncio.wait_for(asyncio.gather(first, last), RECV) == [1, 3]
        assert order == ["first", "last"]
        await ws.close()


# -- group commit ----------------------------------------------------------------------------


async def test_many_commits_share_one_flush(driver: GatedDriver) -> None:
    log: list[Any] = []
    runtime = box_runtime(driver, log)
    stub = runtime.env.BOX.get_by_name("box")
    driver.hold()

    first = stub.put("k00", 0)
    await driver.flush_started(1)
    rest = [stub.put(f"k{i:02}", i) for i in range(1, 51)]
    # All 50 run and commit while the first flush is held (storage never closes the input gate).
    await wait_for(lambda: sum(1 for e in log if e[0] == "put") == 51)
    await assert_pending(first, *rest)

    driver.release()
    results = await asyncio.wait_for(asyncio.gather(first, *rest), RECV)

    assert results == list(range(51))
    assert driver.calls <= 3, f"{driver.calls} flushes for 51 commits"
    await runtime.aclose()
    fresh = box_runtime(SqliteDriver(driver.directory), [])
    assert await fresh.env.BOX.get_by_name("box").items() == {f"k{i:02}": i for i in range(51)}
    await fresh.aclose()


# -- a failed flush resets the object -------------------------------------------------------


async def test_a_failed_flush_fails_held_results_closes_sockets_and_resets(
    driver: GatedDriver,
) -> None:
    log: list[Any] = []
    runtime = box_runtime(driver, log)
    async with serve(App(runtime)) as addr:
        stub = runtime.env.BOX.get_by_name("box")
        assert await stub.put("k", 1) == 1
        ws = await open_ws(addr, "/box")
        flushes = driver.calls
        driver.hold()
        driver.error = OSError("disk full")

        held_rpc = stub.put("k", 2)
        await driver.flush_started(flushes + 1)
        await ws.send(json.dumps([["put", "w", 1], ["send", "must not arrive"]]))
        await wait_for(lambda: ("put", "w", 1) in log)
        await assert_pending(held_rpc)

        driver.release()
        with pytest.raises(DurableObjectResetError) as failed:
            await asyncio.wait_for(held_rpc, RECV)
        assert failed.value.retryable
        with pytest.raises(ConnectionClosed) as closed:
            frame = await recv(ws)  # the held message is dropped: the close comes first
            raise AssertionError(f"a held message arrived after its write failed: {frame!r}")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011

        # What that flush was writing is in SQLite's WAL, readable, maybe not on disk: the
        # object is not served from it again. Others are unaffected.
        driver.error = None
        with pytest.raises(StorageError, match="unavailable until the server restarts"):
            await asyncio.wait_for(stub.get("k"), RECV)
        other = runtime.env.BOX.get_by_name("other")
        assert await asyncio.wait_for(other.put("k", 9), RECV) == 9

    # A restart (a new driver over the same files) serves it again; the failed write's outcome
    # is unknown to its caller, as after a timeout.
    restarted = box_runtime(GatedDriver(driver.directory), log)
    stub = restarted.env.BOX.get_by_name("box")
    assert await asyncio.wait_for(stub.get("k"), RECV) in (1, 2)
    assert await asyncio.wait_for(stub.put("k", 3), RECV) == 3
    assert await stub.get("k") == 3
    await restarted.aclose()


async def test_a_failed_flush_turns_held_http_responses_into_errors(
    driver: GatedDriver, tmp_path: Path
) -> None:
    app = create_app(COUNTER_DIR, persist_to=tmp_path / "unused", storage=driver)
    async with (
        serve(app) as addr,
        httpx.AsyncClient(base_url=f"http://{addr}", timeout=RECV) as http,
    ):
        assert (await http.get("/counter/x")).text == "1"
        flushes = driver.calls
        driver.hold()
        driver.error = OSError("disk full")
        waiting = asyncio.ensure_future(http.get("/counter/x"))
        await driver.flush_started(flushes + 1)
        await assert_pending(waiting)

        driver.release()
        response = await asyncio.wait_for(waiting, RECV)
        assert response.status_code == 503  # never "2": that write was not acknowledged
        assert "a write failed" in response.text
        driver.error = None
        # The failed commit reached SQLite's WAL before its fsync failed: this server does
        # not read it back (it may not be on disk), and says so without a traceback.
        after = await http.get("/counter/x")
        assert after.status_code == 503
        assert "unavailable until the server restarts" in after.text
        assert "Traceback" not in after.text

    # After a restart the count goes on; the failed write's outcome is unknown, like a timeout.
    app = create_app(
        COUNTER_DIR, persist_to=tmp_path / "unused", storage=GatedDriver(driver.directory)
    )
    async with (
        serve(app) as addr,
        httpx.AsyncClient(base_url=f"http://{addr}", timeout=RECV) as http,
    ):
        assert (await http.get("/counter/x")).text in ("2", "3")


# -- storage does not block the object ---------------------------------------------------------


async def test_reads_see_a_write_at_once_while_its_flush_is_held(driver: GatedDriver) -> None:
    runtime, stub, log = await warm_box(driver)
    flushes = driver.calls
    driver.hold()

    same_event = stub.put_then_get("k", 1)
    await driver.flush_started(flushes + 1)
    other_event = stub.get("k")
    await wait_for(lambda: log.count(("get", "k", 1)) == 2)
    assert driver.in_flight == 1  # both reads ran while the write's flush was held
    await assert_pending(same_event, other_event)

    driver.release()
    assert await asyncio.wait_for(asyncio.gather(same_event, other_event), RECV) == [1, 1]
    await runtime.aclose()


async def test_the_input_gate_stays_open_during_a_flush(driver: GatedDriver) -> None:
    runtime, stub, log = await warm_box(driver)
    flushes = driver.calls
    driver.hold()

    writer = stub.put("k", 1)
    await driver.flush_started(flushes + 1)
    reader = stub.get("warm")  # only reads
    await wait_for(lambda: ("get", "warm", 0) in log)  # it ran, with the flush still held
    assert driver.in_flight == 1
    # ... but its result waits behind the earlier write, which is not durable yet.
    await assert_pending(writer, reader)

    driver.release()
    assert await asyncio.wait_for(asyncio.gather(writer, reader), RECV) == [1, 0]
    await runtime.aclose()


async def test_sync_waits_for_the_flush(driver: GatedDriver) -> None:
    runtime, stub, log = await warm_box(driver)
    assert await asyncio.wait_for(stub.sync(), RECV) == "synced"  # nothing to wait for
    flushes = driver.calls
    driver.hold()

    call = stub.put_then_sync("k", 1)
    await driver.flush_started(flushes + 1)
    await wait_for(lambda: "written" in log)
    await assert_pending(call)
    assert "synced" not in log

    driver.release()
    await asyncio.wait_for(call, RECV)
    assert log[-2:] == ["written", "synced"]
    await runtime.aclose()


# -- found while testing ------------------------------------------------


async def test_an_outbound_call_waits_for_earlier_writes(driver: GatedDriver) -> None:
    log: list[Any] = []
    runtime = box_runtime(driver, log)
    sender = runtime.env.BOX.get_by_name("sender")
    await warm_up(sender)
    flushes = driver.calls
    driver.hold()

    call = sender.put_then_call("k", 1, "receiver")
    await driver.flush_started(flushes + 1)
    await assert_pending(call)
    assert ("note", ("called by", "sender")) not in log, "the call left before the write"

    driver.release()
    assert await asyncio.wait_for(call, RECV) == ("called by", "sender")


async def test_a_close_after_a_failed_write_becomes_1011(driver: GatedDriver) -> None:
    runtime = box_runtime(driver, [])
    async with serve(App(runtime)) as addr:
        await warm_up(runtime.env.BOX.get_by_name("box"))
        ws = await open_ws(addr, "/box")
        flushes = driver.calls
        driver.hold()
        driver.error = OSError("disk full")

        await ws.send(json.dumps([["put", "k", 1], ["close", 4000]]))
        await driver.flush_started(flushes + 1)
        await assert_silent(ws)

        driver.release()
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1011, f"closed with {closed.value.rcvd.code}"


async def test_a_reset_during_a_flush_settles_every_held_call(driver: GatedDriver) -> None:
    runtime, stub, log = await warm_box(driver)
    flushes = driver.calls
    driver.hold()

    first = stub.put("k", 1)
    await driver.flush_started(flushes + 1)
    queued = stub.put("k", 2)  # committed; waits for the next flush
    await wait_for(lambda: ("put", "k", 2) in log)
    with pytest.raises(DurableObjectResetError, match="aborted"):
        await asyncio.wait_for(stub.abort(), RECV)

    driver.release()
    # abort() breaks the output gate, as on Cloudflare: a held answer may become a reset
    # error even if its write made it. Either answer is acceptable; no answer is not.
    done, _ = await asyncio.wait([first, queued], timeout=RECV)
    assert done == {first, queued}, "a call held at the gate never got an answer"
    for call, value in ((first, 1), (queued, 2)):
        error = call.exception()
        assert isinstance(error, DurableObjectResetError) if error else call.result() == value
