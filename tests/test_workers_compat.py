"""Cloudflare Python Workers under opendo, through ``opendo.workers`` (``import workers``).

The examples in ``examples/cloudflare`` are Workers written as Cloudflare's Python Workers
are (``from workers import …``, ``from js import WebSocketPair``, camelCase names); they
run here as a user runs them: through the pytest plugin's in-process project (real SQLite
files in a temporary directory, a fake clock for alarms) and as ``opendo serve`` on
127.0.0.1. The unit tests below them pin the mapping itself, with small classes written the
same way.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from http import HTTPMethod, HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_opendo, wait_for
from websockets.asyncio.client import connect

import opendo
from opendo import DurableObjectResetError, ExecutionContext, SqlError, StorageError, workers
from opendo import fetch as opendo_fetch
from opendo.runtime.host import Lifecycle
from opendo.testing import Project
from opendo.workers import (
    DurableObject,
    NotSupportedError,
    Request,
    Response,
    WebSocket,
    WebSocketPair,
    WebSocketRequestResponsePair,
    WorkerEntrypoint,
)

EXAMPLES = ROOT / "examples" / "cloudflare"
COUNTER = EXAMPLES / "counter"
CHAT = EXAMPLES / "chat"
ALARM = EXAMPLES / "alarm"


async def text(project: Project, url: str, **options: Any) -> str:
    return await (await project.fetch(url, **options)).text()


async def body(project: Project, url: str, **options: Any) -> Any:
    return json.loads(await text(project, url, **options))


# -- the examples ------------------------------------------------------------------------------


async def test_the_counter_counts_per_name_and_keeps_counting_after_a_restart(opendo):
    project = opendo(COUNTER, persist_to="state")
    assert await text(project, "/increment?name=A") == "Durable Object 'A' count: 1"
    assert await text(project, "/increment?name=A") == "Durable Object 'A' count: 2"
    assert await text(project, "/decrement?name=A") == "Durable Object 'A' count: 1"
    assert await text(project, "/?name=B") == "Durable Object 'B' count: 0"
    assert await body(project, "/history?name=A") == [
        {"delta": -1, "value": 1},
        {"delta": 1, "value": 2},
        {"delta": 1, "value": 1},
    ]
    await project.aclose()

    again = opendo(COUNTER, persist_to="state")
    assert await text(again, "/increment?name=A") == "Durable Object 'A' count: 2"
    # One SQLite file per object, where opendo keeps it.
    a = again.env.COUNTERS.id_from_name("A")
    assert (again.storage.directory / "Counter" / f"{a}.sqlite").is_file()
    # B was only read, but its constructor created its table: it has storage too.
    assert [id.name for id in await again.list_durable_object_ids("COUNTERS")] == ["A", "B"]


async def test_the_counter_resets_with_delete_all_and_answers_bad_requests(opendo):
    project = opendo(COUNTER)
    for _ in range(3):
        await project.fetch("/increment?name=A")
    assert await text(project, "/reset?name=A", method="POST") == "Durable Object 'A' count: 0"
    assert await body(project, "/history?name=A") == []
    assert await text(project, "/increment?name=A") == "Durable Object 'A' count: 1"

    missing = await project.fetch("/increment")
    assert missing.status == 400 and "?name=A" in await missing.text()
    assert (await project.fetch("/nowhere?name=A")).status == 404


async def test_the_chat_greets_broadcasts_and_keeps_its_sockets_through_hibernation(opendo):
    project = opendo(CHAT)
    ada = await project.websocket("/lobby?name=ada")
    assert await ada.receive_json() == {
        "type": "welcome",
        "name": "ada",
        "online": ["ada"],
        "history": [],
    }
    bob = await project.websocket("/lobby?name=bob")
    assert await bob.receive_json() == {
        "type": "welcome",
        "name": "bob",
        "online": ["ada", "bob"],
        "history": [],
    }
    assert await ada.receive_json() == {"type": "join", "name": "bob"}

    ada.send_json({"text": "hi"})
    for ws in (ada, bob):
        assert await ws.receive_json() == {"type": "message", "name": "ada", "text": "hi"}

    # Out of memory, sockets still connected: the room hibernates.
    lobby = project.env.ROOMS.get_by_name("lobby")
    assert await project.evict(lobby)
    (host,) = [h for h in project.runtime.live_hosts() if h.id == lobby.id]
    assert host.state is Lifecycle.HIBERNATED
    bob.send("ping")
    assert await bob.receive() == "pong"  # answered without waking the room
    assert host.state is Lifecycle.HIBERNATED

    # The next message wakes it; who is who comes back from the attachments.
    bob.send_json({"text": "still here?"})
    for ws in (ada, bob):
        assert await ws.receive_json() == {
            "type": "message",
            "name": "bob",
            "text": "still here?",
        }
    assert host.state is Lifecycle.ACTIVE

    bob.close(1000, "bye")
    assert await bob.wait_closed() == (1000, "bye")
    assert await ada.receive_json() == {"type": "leave", "name": "bob"}

    cy = await project.websocket("/lobby?name=cy")
    welcome = await cy.receive_json()
    assert welcome["online"] == ["ada", "cy"]
    assert welcome["history"] == [
        {"name": "ada", "text": "hi"},
        {"name": "bob", "text": "still here?"},
    ]


async def test_the_chat_answers_bad_frames_and_announces_a_lost_connection(opendo):
    project = opendo(CHAT)
    ada = await project.websocket("/kitchen?name=ada")
    assert (await ada.receive_json())["type"] == "welcome"
    bob = await project.websocket("/kitchen?name=bob")
    assert (await bob.receive_json())["type"] == "welcome"
    assert await ada.receive_json() == {"type": "join", "name": "bob"}

    bob.send("not json")
    assert (await bob.receive_json())["type"] == "error"
    bob.disconnect()  # no close frame: webSocketError, then webSocketClose with 1006
    assert await ada.receive_json() == {"type": "leave", "name": "bob"}
    assert ada.drain() == []

    refused = await project.fetch("/kitchen")
    assert refused.status == 426
    assert (await project.fetch("/")).status == 400


async def test_the_batcher_delivers_when_its_alarm_fires(opendo):
    project = opendo(ALARM)
    start = int(project.clock.time() * 1000)
    for i, item in enumerate(["a", "b", "c"], 1):
        assert await body(project, "/batch", method="POST", body=item) == {"queued": i}
    assert await body(project, "/status") == {"queued": 3, "alarm": start + 10_000}

    await project.advance(9)
    assert await body(project, "/batches") == []
    await project.advance(1)
    assert await body(project, "/batches") == [
        {"id": 1, "items": ["a", "b", "c"], "deliveredAt": start + 10_000, "attempt": 1}
    ]
    assert await body(project, "/status") == {"queued": 0, "alarm": None}

    # The next request starts the next batch.
    assert await body(project, "/batch", method="POST", body="d") == {"queued": 1}
    assert await body(project, "/status") == {"queued": 1, "alarm": start + 20_000}
    assert await body(project, "/flush", method="POST") == {"delivered": 1}
    assert await body(project, "/status") == {"queued": 0, "alarm": None}
    assert [b["items"] for b in await body(project, "/batches")] == [["a", "b", "c"], ["d"]]


async def test_the_batchers_queue_and_alarm_survive_a_restart(opendo):
    project = opendo(ALARM, persist_to="state")
    start = int(project.clock.time() * 1000)
    for item in ("x", "y"):
        await project.fetch("/batch", method="POST", body=item)
    await project.aclose()

    again = opendo(ALARM, persist_to="state", clock=project.clock)
    # The constructor counts the queue again (list(prefix=…, reverse=True, limit=1)).
    assert await body(again, "/status") == {"queued": 2, "alarm": start + 10_000}
    await again.advance(10)
    assert [b["items"] for b in await body(again, "/batches")] == [["x", "y"]]


async def test_the_chat_example_served_on_127_0_0_1(tmp_path: Path):
    state = tmp_path / "state"
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", state) as process:
        port = await asyncio.to_thread(process.wait_ready)
        url = f"ws://127.0.0.1:{port}/lobby"
        async with connect(f"{url}?name=ada") as ada, connect(f"{url}?name=bob") as bob:
            assert json.loads(await ada.recv())["online"] == ["ada"]
            assert json.loads(await bob.recv())["online"] == ["ada", "bob"]
            assert json.loads(await ada.recv()) == {"type": "join", "name": "bob"}
            await bob.send("ping")
            assert await bob.recv() == "pong"
            await ada.send(json.dumps({"text": "over the wire"}))
            for ws in (ada, bob):
                frame = json.loads(await ws.recv())
                assert frame == {"type": "message", "name": "ada", "text": "over the wire"}
            await bob.close()
            assert json.loads(await ada.recv()) == {"type": "leave", "name": "bob"}


def test_the_counter_example_served_on_127_0_0_1(tmp_path: Path):
    state = tmp_path / "state"

    def get(port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return str(response.read().decode())

    with run_opendo("serve", COUNTER, "--port", "0", "--persist-to", state) as process:
        port = process.wait_ready()
        assert get(port, "/increment?name=web") == "Durable Object 'web' count: 1"
        assert get(port, "/increment?name=web") == "Durable Object 'web' count: 2"
        assert json.loads(get(port, "/history?name=web"))[0] == {"delta": 1, "value": 2}
    assert list((state / "Counter").glob("*.sqlite"))


def test_loading_a_project_provides_workers_and_js(opendo):
    opendo(CHAT)
    assert sys.modules["workers"] is workers
    assert sys.modules["js"] is workers.js
    from js import Date, WebSocketPair, fetch

    assert WebSocketPair is workers.WebSocketPair
    assert isinstance(Date.now(), int)
    assert fetch is opendo_fetch
    with pytest.raises(AttributeError, match="provides only Array, Date, JSON, Object"):
        _ = workers.js.Symbol


def test_request_method_is_an_http_method_as_in_cloudflares_sdk():
    request = workers.Request("http://localhost/a", method="post")
    assert request.method is HTTPMethod.POST
    assert request.method == "POST" and request.method.value == "POST"
    converted = workers.http._as_request(opendo.Request("http://localhost/a", method="PUT"))
    assert converted.method is HTTPMethod.PUT  # what handlers receive
    assert workers.Request(request).method is HTTPMethod.POST  # a copy keeps it
    odd = workers.Request("http://localhost/a", method="PROPFIND")
    assert odd.method == "PROPFIND" and type(odd.method) is str  # not one of HTTPMethod's


# -- the mapping, unit by unit ----------------------------------------------------------------


class Store(DurableObject):
    """An object the tests reach into with run_in_durable_object."""


def store(opendo: Any, **options: Any) -> tuple[Project, Any]:
    project = opendo(bindings={"STORE": Store}, **options)
    return project, project.env.STORE.get_by_name("s")


async def inside(project: Project, stub: Any, fn: Any) -> Any:
    """``fn(self.ctx)`` as an event of the object: the ctx its code sees."""

    async def call(instance: DurableObject, _ctx: Any) -> Any:
        return await fn(instance.ctx)

    return await project.run_in_durable_object(stub, call)


async def test_storage_camel_case_calls_round_trip(opendo):
    project, stub = store(opendo)

    async def kv(ctx):
        s = ctx.storage
        await s.put("a", 1)
        await s.put({"b": [2], "c": {"three": 3}}, {"allowUnconfirmed": True})
        await s.put(10, "ten")  # a number key becomes its string, as in JavaScript
        results = {
            "a": await s.get("a"),
            "missing": await s.get("zz"),
            "many": await s.get(["c", "a", "zz", 10], noCache=True),
            "ten": await s.get("10"),
        }
        results["deleted"] = await s.delete("a")
        results["deleted again"] = await s.delete("a")
        results["count"] = await s.delete(["b", "zz"])
        results["left"] = await s.list()
        await s.deleteAll()
        results["after deleteAll"] = await s.list()
        return results

    assert await inside(project, stub, kv) == {
        "a": 1,
        "missing": None,
        "many": {"10": "ten", "a": 1, "c": {"three": 3}},
        "ten": "ten",
        "deleted": True,
        "deleted again": False,
        "count": 1,
        "left": {"10": "ten", "c": {"three": 3}},
        "after deleteAll": {},
    }


async def test_list_takes_its_options_as_a_dict_or_as_keywords(opendo):
    project, stub = store(opendo)

    async def lists(ctx):
        s = ctx.storage
        await s.put({k: i for i, k in enumerate(["a:1", "a:2", "a:3", "b:1"])})
        return [
            list(await s.list({"prefix": "a:"})),
            list(await s.list(prefix="a:", reverse=True, limit=2)),
            list(await s.list({"startAfter": "a:1", "end": "b:1"})),
            list(await s.list({"start": "a:2"}, limit=1)),  # both: keywords add to the dict
            list(await s.list(start_after="a:2")),  # opendo's name works too
            list(ctx.storage.kv.list({"prefix": "b"})),
        ]

    assert await inside(project, stub, lists) == [
        ["a:1", "a:2", "a:3"],
        ["a:3", "a:2"],
        ["a:2", "a:3"],
        ["a:2"],
        ["a:3", "b:1"],
        [("b:1", 3)],
    ]

    async def bad(ctx):
        with pytest.raises(TypeError, match="unknown option.*'prefx'"):
            ctx.storage.list({"prefx": "a"})
        with pytest.raises(TypeError, match="unknown option.*'limit'"):
            ctx.storage.get("a", limit=1)
        with pytest.raises(TypeError, match="options must be a dict"):
            ctx.storage.list("a")
        with pytest.raises(TypeError, match="a key and a value"):
            ctx.storage.put("a")

    await inside(project, stub, bad)


async def test_storage_calls_run_when_made_awaited_or_not(opendo):
    project, stub = store(opendo, persist_to="state")
    due = int(project.clock.time() * 1000) + 60_000

    async def write_without_await(ctx):
        ctx.storage.put("a", 1)
        ctx.storage.setAlarm(due)
        ctx.storage.put("b", 2)
        ctx.storage.delete("b")
        return ctx.storage.kv.get("a"), ctx.storage.kv.get("b")

    # Read back in the same turn: each call has happened by the time it returns.
    assert await inside(project, stub, write_without_await) == (1, None)
    await project.aclose()

    again = opendo(bindings={"STORE": Store}, persist_to="state")
    stub = again.env.STORE.get_by_name("s")

    async def read(ctx):
        return await ctx.storage.get("a"), await ctx.storage.getAlarm()

    assert await inside(again, stub, read) == (1, due)


async def test_alarms_by_their_camel_case_names(opendo):
    project, stub = store(opendo)
    due = int(project.clock.time() * 1000) + 5_000

    async def alarms(ctx):
        s = ctx.storage
        before = await s.getAlarm()
        await s.setAlarm(due, {"allowUnconfirmed": True})
        set_to = await s.getAlarm(allowConcurrency=True)
        await s.deleteAlarm()
        return before, set_to, await s.getAlarm()

    assert await inside(project, stub, alarms) == (None, due, None)


async def test_sql_exec_and_its_cursor(opendo):
    project, stub = store(opendo)

    async def sql(ctx):
        s = ctx.storage.sql
        s.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        inserted = s.exec("INSERT INTO t (name) VALUES (?), (?), (?)", "ada", "bob", "cy")
        rows = s.exec("SELECT id, name FROM t ORDER BY id")
        out: dict[str, Any] = {
            "rowsWritten": inserted.rowsWritten,
            "columnNames": rows.columnNames,
            "rowsRead": rows.rowsRead,
            "first": rows.next(),
            "rest": rows.toArray(),
            "done": rows.next(),
        }
        row = s.exec("SELECT count(*) AS n FROM t").one()
        out["one"] = (row.n, row["n"])
        out["raw"] = list(s.exec("SELECT name FROM t ORDER BY id").raw())
        out["iterated"] = [r.name for r in s.exec("SELECT name FROM t ORDER BY id DESC")]
        out["snake"] = s.exec("SELECT 1 AS x").to_array()
        out["size"] = s.databaseSize > 0
        with pytest.raises(SqlError, match="exactly one row"):
            s.exec("SELECT * FROM t").one()
        with pytest.raises(AttributeError):
            _ = row.missing
        # A row is a dict: it can be stored and attached as it is.
        await ctx.storage.put("row", s.exec("SELECT id, name FROM t WHERE id = 1").one())
        await ctx.storage.put("rows", s.exec("SELECT name FROM t ORDER BY id").toArray())
        out["stored"] = await ctx.storage.get(["row", "rows"])
        return out

    assert await inside(project, stub, sql) == {
        "rowsWritten": 3,
        "columnNames": ["id", "name"],
        "rowsRead": 3,
        "first": {"done": False, "value": {"id": 1, "name": "ada"}},
        "rest": [{"id": 2, "name": "bob"}, {"id": 3, "name": "cy"}],
        "done": {"done": True, "value": None},
        "one": (3, 3),
        "raw": [["ada"], ["bob"], ["cy"]],
        "iterated": ["cy", "bob", "ada"],
        "snake": [{"x": 1}],
        "size": True,
        "stored": {
            "row": {"id": 1, "name": "ada"},
            "rows": [{"name": "ada"}, {"name": "bob"}, {"name": "cy"}],
        },
    }


class Rows(DurableObject):
    async def names(self):
        sql = self.ctx.storage.sql
        sql.exec("CREATE TABLE IF NOT EXISTS t (name TEXT)")
        sql.exec("INSERT INTO t VALUES ('ada'), ('bob')")
        return sql.exec("SELECT name FROM t").toArray()


class RowsWorker(WorkerEntrypoint):
    async def fetch(self, request):
        rows = await self.env.ROWS.getByName("r").names()  # RPC through the camelCase stub
        return Response.json(rows)


async def test_sql_rows_go_over_rpc_as_plain_dicts(opendo):
    project = opendo(bindings={"ROWS": Rows}, worker=RowsWorker)
    assert await body(project, "/") == [{"name": "ada"}, {"name": "bob"}]
    rows = await project.env.ROWS.get_by_name("r").names()
    assert rows == [{"name": "ada"}, {"name": "bob"}, {"name": "ada"}, {"name": "bob"}]
    assert all(type(row) is dict for row in rows)


async def test_transactions_by_their_camel_case_names(opendo):
    project, stub = store(opendo)

    async def transactions(ctx):
        s = ctx.storage

        async def kept(txn):
            await txn.put("a", 1)
            await txn.put({"b": 2, "c": 3})
            await txn.delete("c")
            await txn.setAlarm(10**13)
            return await txn.get("a"), await txn.list(), await txn.getAlarm()

        async def rolled_back(txn):
            await txn.put("a", 99)
            await txn.deleteAll()
            await txn.deleteAlarm()
            txn.rollback()

        first = await s.transaction(kept)
        await s.transaction(rolled_back)
        s.transactionSync(lambda: s.kv.put("d", 4))
        with pytest.raises(ZeroDivisionError):
            s.transactionSync(lambda: (s.kv.put("d", 5), 1 / 0))
        return first, await s.list(), await s.getAlarm()

    assert await inside(project, stub, transactions) == (
        (1, {"a": 1, "b": 2}, 10**13),
        {"a": 1, "b": 2, "d": 4},
        10**13,
    )


class Loader(DurableObject):
    loads = 0

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.ready = False

        @self.ctx.blockConcurrencyWhile
        async def initialize():
            Loader.loads += 1
            self.value = await self.ctx.storage.get("value") or 41
            await asyncio.sleep(0)  # a real suspension: events still wait for the gate
            self.ready = True

        self.initialize = initialize

    async def read(self):
        return self.ready, self.value

    async def sync_callback(self):
        return await self.ctx.blockConcurrencyWhile(lambda: self.value + 1)

    async def failing(self):
        async def fail():
            raise ValueError("no")

        await self.ctx.blockConcurrencyWhile(fail)


async def test_block_concurrency_while_works_as_a_decorator(opendo):
    Loader.loads = 0
    project = opendo(bindings={"LOADER": Loader})
    stub = project.env.LOADER.get_by_name("l")
    # The first call constructs the object; it is delivered only once initialize is done.
    assert await asyncio.gather(stub.read(), stub.read()) == [(True, 41), (True, 41)]
    assert await stub.sync_callback() == 42  # a plain callback works too

    async def decorated_name(instance, ctx):
        return isinstance(instance.initialize, asyncio.Future) and instance.initialize.done()

    assert await project.run_in_durable_object(stub, decorated_name)
    with pytest.raises(ValueError, match="no"):
        await stub.failing()  # ... and resets the object: it loads again
    assert await stub.read() == (True, 41)
    assert Loader.loads == 2


EVENTS: list[Any] = []


class Echo(DurableObject):
    constructions = 0

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        Echo.constructions += 1

    async def fetch(self, request):
        assert isinstance(request, Request)
        client, server = WebSocketPair.new().object_values()
        self.ctx.acceptWebSocket(server, ["echo", "room:1"])
        server.serializeAttachment({"who": request.headers.get("x-who")})
        return Response(None, status=101, web_socket=client)

    async def webSocketMessage(self, ws, message):
        assert isinstance(ws, WebSocket)
        tags = self.ctx.getTags(ws)
        peers = len(self.ctx.getWebSockets("room:1"))
        kind = type(message).__name__
        text = message if isinstance(message, str) else message.decode()
        ws.send(json.dumps([ws.deserializeAttachment()["who"], kind, text, tags, peers]))

    async def webSocketClose(self, ws, code, reason, wasClean):
        ws.close(code, reason)  # on a closed socket: does nothing, whatever the code
        EVENTS.append(("close", ws.deserializeAttachment()["who"], code, reason, wasClean))

    async def webSocketError(self, ws, error):
        EVENTS.append(("error", ws.deserializeAttachment()["who"], type(error).__name__))


class Forward(WorkerEntrypoint):
    async def fetch(self, request):
        assert isinstance(request, Request)
        return await self.env.ECHO.getByName("e").fetch(request)


async def test_hibernation_handlers_run_after_eviction(opendo):
    EVENTS.clear()
    Echo.constructions = 0
    project = opendo(bindings={"ECHO": Echo}, worker=Forward)
    ada = await project.websocket("/", headers={"x-who": "ada"})
    bob = await project.websocket("/", headers={"x-who": "bob"})
    ada.send("hi")
    assert await ada.receive_json() == ["ada", "str", "hi", ["echo", "room:1"], 2]
    assert Echo.constructions == 1

    assert await project.evict(project.env.ECHO.get_by_name("e"))
    bob.send(b"\x00bytes")
    assert await bob.receive_json() == ["bob", "bytes", "\x00bytes", ["echo", "room:1"], 2]
    assert Echo.constructions == 2  # woken by the message, from the attachments

    assert await project.evict(project.env.ECHO.get_by_name("e"))
    ada.close(4000, "done")
    await wait_for(lambda: len(EVENTS) == 1)
    assert EVENTS == [("close", "ada", 4000, "done", True)]
    bob.disconnect()
    await wait_for(lambda: len(EVENTS) == 3)
    assert EVENTS[1:] == [
        ("error", "bob", "ConnectionResetError"),
        ("close", "bob", 1006, "", False),
    ]
    assert Echo.constructions == 3


class Brief(DurableObject):
    """Handlers that take fewer arguments than they are given, as Cloudflare allows."""

    async def fetch(self, request):
        client, server = WebSocketPair()
        self.ctx.acceptWebSocket(server)
        return Response(None, HTTPStatus.SWITCHING_PROTOCOLS, web_socket=client)

    def webSocketMessage(self, ws):  # a plain function, and no message argument
        ws.send("got one")

    async def webSocketClose(self, ws):
        EVENTS.append("brief close")

    async def alarm(self):
        EVENTS.append("brief alarm")


class BriefWorker(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.BRIEF.getByName("b").fetch(request)


async def test_handlers_may_take_fewer_arguments(opendo):
    EVENTS.clear()
    project = opendo(bindings={"BRIEF": Brief}, worker=BriefWorker)
    ws = await project.websocket("/")
    ws.send("x")
    assert await ws.receive() == "got one"
    ws.close()
    await wait_for(lambda: EVENTS == ["brief close"])

    stub = project.env.BRIEF.get_by_name("b")

    async def arm(instance, ctx):
        await instance.ctx.storage.setAlarm(0)

    await project.run_in_durable_object(stub, arm)
    await project.advance(0)  # a time in the past: due at once
    assert EVENTS == ["brief close", "brief alarm"]


class MessagesOnly(DurableObject):
    async def webSocketMessage(self, ws, message):
        pass


class OwnHook(DurableObject):
    async def web_socket_message(self, ws, message):
        pass

    async def webSocketMessage(self, ws, message):
        pass


class MessagesOnlyChild(MessagesOnly):
    async def webSocketMessage(self, ws, message):
        pass


def test_only_the_camel_case_handlers_a_class_defines_reach_opendo():
    # A class without webSocketClose has no web_socket_close: opendo treats it as it treats
    # any class without the hook.
    assert MessagesOnly.web_socket_message.__name__ == "web_socket_message"
    assert not hasattr(MessagesOnly, "web_socket_close")
    assert not hasattr(MessagesOnly, "web_socket_error")
    assert not hasattr(Store, "web_socket_message")
    # A snake_case hook of the class's own is kept.
    assert OwnHook.web_socket_message.__qualname__ == "OwnHook.web_socket_message"
    # A subclass's handler is the one called.
    assert MessagesOnlyChild.web_socket_message is MessagesOnly.web_socket_message


class Retrying(DurableObject):
    async def arm(self, at):
        self.ctx.storage.setAlarm(at)

    async def alarm(self, alarm_info):
        EVENTS.append((alarm_info.retryCount, alarm_info.isRetry, alarm_info.retry_count))
        if alarm_info.retryCount == 0:
            raise RuntimeError("first attempt fails")


async def test_the_alarm_handler_gets_retry_count_and_is_retried(opendo):
    EVENTS.clear()
    project = opendo(bindings={"R": Retrying})
    stub = project.env.R.get_by_name("r")
    await stub.arm(int(project.clock.time() * 1000) + 1_000)
    await project.advance(1)
    assert EVENTS == [(0, False, 0)]
    await project.advance(3)  # the first retry comes 2 s (±25%) later
    assert EVENTS == [(0, False, 0), (1, True, 1)]
    assert await project.run_durable_object_alarm(stub) is False


class Ids(DurableObject):
    async def fetch(self, request):
        assert isinstance(request, Request) and request.cf is None
        if request.method == "POST":
            return Response.json({"got": await request.json()}, status=HTTPStatus.CREATED)
        return Response(f"{self.ctx.id.name} {self.ctx.id.toString()}", 200, "Fine")

    def whoami(self):  # a plain method, over RPC
        return self.ctx.id.name


async def test_namespaces_ids_and_stubs_by_their_camel_case_names(opendo):
    project = opendo(bindings={"IDS": Ids})

    async def use(instance, ctx):
        ns = instance.env.IDS
        a = ns.idFromName("a")
        assert a.toString() == str(a) and len(str(a)) == 64 and a.name == "a"
        assert a.equals(ns.idFromName("a")) and a == project.env.IDS.id_from_name("a")
        assert a.jurisdiction is None
        unique = ns.newUniqueId()
        assert unique.name is None and ns.idFromString(unique.toString()) == unique
        with pytest.raises(ValueError):
            ns.idFromString("f" * 64)

        stub = ns.get(a, {"locationHint": "weur"})
        assert stub.id == a and stub.name == "a" and stub.id.toString() == str(a)
        assert await stub.whoami() == "a"
        assert await ns.getByName("b").whoami() == "b"

        response = await stub.fetch("http://do/")
        assert isinstance(response, Response)
        assert (response.status, response.status_text) == (200, "Fine")
        assert await response.text() == f"a {a}"
        posted = await stub.fetch("http://do/", method="POST", body='{"x": 1}')
        assert (posted.status, await posted.json()) == (201, {"got": {"x": 1}})
        assert posted.headers.get("content-type") == "application/json"

        for reserved in ("alarm", "webSocketMessage", "webSocketClose", "_private"):
            with pytest.raises(AttributeError, match="cannot be called over RPC"):
                getattr(stub, reserved)
        with pytest.raises(TypeError, match="redirect"):
            stub.fetch("http://do/", redirect="manual")
        with pytest.raises(TypeError, match="unknown option"):
            ns.get(a, {"colo": "ams"})
        return True

    assert await project.run_in_durable_object(project.env.IDS.get_by_name("x"), use)


class Plain(DurableObject):
    """As Cloudflare's docs write one: no super().__init__, a plain fetch."""

    def __init__(self, ctx, env):
        self.ctx = ctx
        self.env = env

    def fetch(self, request):
        greeting = self.ctx.storage.sql.exec("SELECT 'Hello, World!' as greeting").one()
        return Response(greeting.greeting)


async def test_a_constructor_without_super_and_a_plain_fetch(opendo):
    project = opendo(bindings={"PLAIN": Plain})
    response = await project.env.PLAIN.get_by_name("p").fetch("http://do/")
    assert await response.text() == "Hello, World!"


class Native(opendo.DurableObject):
    """An object written against opendo's own API, reached from a Cloudflare-style Worker."""

    async def fetch(self, request):
        return opendo.Response.json({"native": True})


class ToNative(WorkerEntrypoint):
    async def fetch(self, request):
        response = await self.env.NATIVE.getByName("n").fetch(request)
        assert isinstance(response, Response)  # workers.Response, whoever made it
        data = await response.json()
        return Response.json({**data, "greeting": self.env.GREETING, "has": "NATIVE" in self.env})


async def test_env_gives_vars_and_camel_case_namespaces(opendo):
    project = opendo(bindings={"NATIVE": Native}, worker=ToNative, vars={"GREETING": "hi"})
    assert await body(project, "/") == {"native": True, "greeting": "hi", "has": True}

    async def env(instance, ctx):
        return instance.env

    # A Cloudflare-style object sees the same env, with camelCase namespaces.
    project = opendo(bindings={"STORE": Store}, vars={"GREETING": "hi"})
    env = await project.run_in_durable_object(project.env.STORE.get_by_name("s"), env)
    assert isinstance(env.STORE, workers.DurableObjectNamespace)
    assert (env.GREETING, env["GREETING"], env.get("NOPE", 1)) == ("hi", "hi", 1)
    with pytest.raises(AttributeError, match="no binding or variable named 'NOPE'"):
        _ = env.NOPE


def test_responses_as_cloudflare_builds_them():
    assert Response().status == 200
    teapot = Response("short", 418, "I'm a teapot", {"x-a": "1"})
    assert (teapot.status, teapot.status_text, teapot.headers.get("x-a")) == (
        418,
        "I'm a teapot",
        "1",
    )
    built = Response.json({"a": [1]}, status=HTTPStatus.ACCEPTED)
    assert isinstance(built, Response)
    assert (built.status, built.body, built.headers.get("content-type")) == (
        202,
        b'{"a": [1]}',
        "application/json",
    )
    typed = Response.json([], headers={"Content-Type": "application/vnd.x+json"})
    assert typed.headers.get_all("content-type") == ["application/vnd.x+json"]
    assert asyncio.run(built.json()) == {"a": [1]}
    with pytest.raises(TypeError, match="takes no arguments"):
        built.json({"b": 2})

    moved = Response.redirect("https://example.com/", 301)
    assert (moved.status, moved.headers.get("location")) == (301, "https://example.com/")
    with pytest.raises(ValueError, match="301, 302"):
        Response.redirect("/", 200)

    original = Request("http://x/a", method="POST", headers={"a": "1"}, body="hello")
    copy = Request(original, method="PUT")
    assert (copy.url, copy.method, copy.headers.get("a")) == ("http://x/a", "PUT", "1")
    assert asyncio.run(copy.text()) == "hello"


class Sockets(DurableObject):
    async def fetch(self, request):
        client, server = WebSocketPair.new()
        self.ctx.acceptWebSocket(server, [request.headers.get("x-tag")])
        self.ctx.setWebSocketAutoResponse(WebSocketRequestResponsePair.new("ping", "pong"))
        return Response(None, status=101, web_socket=client)

    async def webSocketMessage(self, ws, message):
        pair = self.ctx.getWebSocketAutoResponse()
        when = self.ctx.getWebSocketAutoResponseTimestamp(ws)
        counts = [len(self.ctx.getWebSockets(tag)) for tag in ("red", "blue", None)]
        ws.send(json.dumps([pair.request, pair.response, when is not None, counts, ws.readyState]))


class SocketsWorker(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.SOCKETS.getByName("s").fetch(request)


async def test_websocket_context_calls_by_their_camel_case_names(opendo):
    project = opendo(bindings={"SOCKETS": Sockets}, worker=SocketsWorker)
    red = await project.websocket("/", headers={"x-tag": "red"})
    await project.websocket("/", headers={"x-tag": "blue"})
    await project.websocket("/", headers={"x-tag": "blue"})
    red.send("ping")
    assert await red.receive() == "pong"
    red.send("status")
    assert await red.receive_json() == ["ping", "pong", True, [1, 2, 3], 1]


class Waiter(WorkerEntrypoint):
    async def fetch(self, request):
        stub = self.env.STORE.getByName("w")
        self.ctx.waitUntil(stub.fetch(request))  # keeps going after the response
        return Response("accepted", 202)


class Remember(DurableObject):
    async def fetch(self, request):
        await self.ctx.storage.put("seen", request.url)
        EVENTS.append(("seen", request.url))
        return Response("stored")


async def test_a_workers_wait_until(opendo):
    EVENTS.clear()
    project = opendo(bindings={"STORE": Remember}, worker=Waiter)
    response = await project.fetch("/later")
    assert (response.status, await response.text()) == (202, "accepted")
    await wait_for(lambda: EVENTS == [("seen", "http://localhost/later")])


async def test_js_date_now_follows_the_runtime_clock_inside_an_object(opendo):
    project, stub = store(opendo)

    async def now(instance, ctx):
        return workers.js.Date.now()

    first = await project.run_in_durable_object(stub, now)
    assert first == int(project.clock.time() * 1000)
    await project.advance(5)
    assert await project.run_in_durable_object(stub, now) == first + 5_000


class Aborting(DurableObject):
    constructions = 0

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        Aborting.constructions += 1

    async def stop(self):
        self.ctx.abort("enough")

    def count(self):
        return Aborting.constructions


async def test_abort_resets_the_object(opendo):
    Aborting.constructions = 0
    project = opendo(bindings={"A": Aborting})
    stub = project.env.A.get_by_name("a")
    with pytest.raises(DurableObjectResetError, match="enough"):
        await stub.stop()
    assert await stub.count() == 2


async def test_unsupported_calls_say_so(opendo):
    project, stub = store(opendo)

    async def calls(instance, _ctx):
        ctx, ns = instance.ctx, instance.env.STORE
        for call, method in [
            (lambda: ctx.storage.getBookmarkForTime(0), "getBookmarkForTime"),
            (lambda: ctx.storage.getCurrentBookmark(), "getCurrentBookmark"),
            (lambda: ctx.storage.onNextSessionRestoreBookmark("x"), "onNextSessionRestoreBookmark"),
        ]:  # point-in-time recovery: in cluster mode (test_cluster_storage.py), not here
            with pytest.raises(StorageError, match=rf"storage\.{method}\(\): point-in-time"):
                call()
        attempts = {
            "event timeout": lambda: ctx.setHibernatableWebSocketEventTimeout(1000),
            "props": lambda: ctx.props,
            "exports": lambda: ctx.exports,
            "jurisdiction": lambda: ns.jurisdiction("eu"),
            "unique in a jurisdiction": lambda: ns.newUniqueId({"jurisdiction": "eu"}),
            "get existing": lambda: ns.getExisting(ns.idFromName("x")),
        }
        messages = {}
        for what, attempt in attempts.items():
            with pytest.raises(NotSupportedError) as caught:
                attempt()
            messages[what] = str(caught.value)
        return messages

    messages = await project.run_in_durable_object(stub, calls)
    assert all("not supported by opendo" in m for m in messages.values()), messages

    assert workers.fetch is opendo_fetch  # outbound HTTP: tests/test_outbound.py
    with pytest.raises(NotSupportedError, match="class Default"):

        @workers.handler
        async def on_fetch(request):
            return Response("hi")

    with pytest.raises(NotSupportedError, match="Workflows"):

        class Flow(workers.WorkflowEntrypoint):
            pass

    with pytest.raises(NotSupportedError):
        workers.import_from_javascript("cloudflare:sockets")
    with pytest.raises(AttributeError, match="self.env"):
        _ = workers.env
    with pytest.raises(NotSupportedError, match="origin"):
        workers.Context(ExecutionContext()).passThroughOnException()
    assert workers.python_to_rpc(x := {"a": 1}) is x and workers.python_from_rpc(x) is x


PYODIDE_STYLE = """
from pyodide.ffi import create_proxy, to_js
from js import JSON, Object, console, crypto
from workers import DurableObject, Response, WorkerEntrypoint


class Notes(DurableObject):
    async def fetch(self, request):
        note = (await request.json()).to_py()  # a JsProxy on Cloudflare: here a dict
        assert type(note) is dict
        await self.ctx.storage.put(note["key"], note["text"])
        listed = await self.ctx.storage.list()
        seen = []
        listed.forEach(create_proxy(lambda value, key: seen.append(key)))
        console.log("stored", note["key"])
        body = to_js(
            {"size": listed.size, "has": listed.has(note["key"]), "keys": seen,
             "entries": list(listed.entries()), "id": len(crypto.randomUUID())},
            dict_converter=Object.fromEntries,
        )
        return Response(JSON.stringify(body), headers={"content-type": "application/json"})


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.NOTES.getByName("n").fetch(request)
"""


async def test_a_worker_written_with_pyodide_and_js_globals_runs(
    opendo: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "worker.py").write_text(PYODIDE_STYLE)
    (tmp_path / "wrangler.jsonc").write_text(
        '{"name": "notes", "main": "worker.py", "compatibility_flags": ["python_workers"],'
        ' "durable_objects": {"bindings": [{"name": "NOTES", "class_name": "Notes"}]},'
        ' "migrations": [{"tag": "v1", "new_sqlite_classes": ["Notes"]}]}'
    )
    project = opendo(tmp_path)
    caplog.set_level("INFO", logger="opendo.console")
    await project.fetch("/", method="POST", body='{"key": "a", "text": "first"}')
    answer = await body(project, "/", method="POST", body='{"key": "b", "text": "second"}')
    assert answer == {
        "size": 2,
        "has": True,
        "keys": ["a", "b"],
        "entries": [["a", "first"], ["b", "second"]],
        "id": 36,
    }
    assert [r.getMessage() for r in caplog.records if r.name == "opendo.console"] == [
        "stored a",
        "stored b",
    ]


def test_pyodide_is_provided_where_none_is_installed(opendo: Any) -> None:
    opendo(CHAT)  # loading a project installs the import hook
    import pyodide.ffi
    import pyodide.http

    assert pyodide.ffi.to_js([1]) == [1] and pyodide.ffi.to_py({"a": 1}) == {"a": 1}
    assert callable(pyodide.http.pyfetch)
    with pytest.raises(NotSupportedError, match="the pyodide.code module is not supported"):
        import pyodide.code  # noqa: F401


async def test_the_request_body_is_a_stream_as_on_cloudflare() -> None:
    posted = Request("http://localhost/", method="POST", body="a body")
    chunks = [chunk async for chunk in posted.body]
    assert chunks == [b"a body"]
    reader = Request("http://localhost/", method="POST", body=b"xy").body.getReader()
    assert await reader.read() == {"done": False, "value": b"xy"}
    assert await reader.read() == {"done": True, "value": None}
    assert [c async for c in Request("http://localhost/").body] == []  # no body: no chunk
