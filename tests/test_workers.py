"""Many processes on one persist directory (DESIGN.md §5): ``opendo serve --workers N``, and
two servers on one directory, against the real console script on 127.0.0.1.

An object lives in the process that holds its lock; the others forward its events there.
These tests make clients land in every process and check that the objects behave as one:
ids and counters hand out every value once, a chat room's messages reach everyone once and in
one order, RPC between objects of two processes carries every kind of value and error, an
alarm fires where its object lives. Then failures: a worker killed with SIGKILL under load
(the supervisor restarts it; no acknowledged write is lost, no value handed out twice; a
WebSocket room whose owner died closes its relayed sockets and works again on reconnect), and
SIGTERM, which drains every worker.

Which process served a connection is read from /proc (the server's end of the TCP connection
is a socket one worker holds); which process owns an object, from its lock
(``SqliteDriver.holder``). Every wait is for a condition, bounded in time and in count.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    CHAT,
    ROOT,
    OpendoProcess,
    run_opendo,
    serving_pid,
    worker_pids,
)
from websockets.asyncio.client import ClientConnection, connect

from opendo import SqliteDriver
from opendo.core.ids import NamespaceKey

pytestmark = pytest.mark.slow

PROBE = ROOT / "tests" / "projects" / "probe"
COUNTER = ROOT / "examples" / "counter"
TRIES = 200  # fresh connections opened, at most, to reach a given worker
RECV = 5.0  # bound of anything that must arrive
START = 30.0  # bound of a (re)start of a worker: two cores, shared


def until(predicate: Callable[[], Any], within: float, what: str) -> Any:
    """Wait until ``predicate()`` is true (checked every 10 ms); its value."""
    deadline = time.monotonic() + within
    for _ in range(int(within * 1000)):
        if value := predicate():
            return value
        if time.monotonic() > deadline:
            break
        threading.Event().wait(0.01)
    raise AssertionError(f"not within {within} s: {what}")


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    """A copy of tests/projects/probe whose /hold requests mark themselves in tmp_path/marks."""
    project = tmp_path / "probe"
    shutil.copytree(PROBE, project, ignore=shutil.ignore_patterns("__pycache__", ".opendo"))
    (tmp_path / "marks").mkdir()
    (project / ".dev.vars").write_text(f"MARKS={tmp_path / 'marks'}\n")
    return project


def serve_args(project: Path, persist: Path, workers: int, *more: str) -> list[str | Path]:
    return [
        "serve",
        project,
        "--port",
        "0",
        "--persist-to",
        persist,
        "--workers",
        str(workers),
        *more,
    ]


def fresh_get(port: int, path: str, timeout: float = RECV) -> httpx.Response:
    """A GET on a connection of its own (so the kernel picks a worker for it)."""
    return httpx.get(
        f"http://127.0.0.1:{port}{path}", headers={"Connection": "close"}, timeout=timeout
    )


def pids_seen(port: int, workers: set[int]) -> dict[int, int]:
    """GET /pid over fresh connections until every worker answered (at most TRIES)."""
    seen: dict[int, int] = {}
    for _ in range(TRIES):
        pid = int(fresh_get(port, "/pid").text)
        seen[pid] = seen.get(pid, 0) + 1
        if set(seen) == workers:
            break
    return seen


def owner(persist: Path, class_name: str, name: str) -> int | None:
    """The pid of the process that holds the object ``class_name`` named ``name``."""
    id = NamespaceKey(class_name).from_name(name)
    return SqliteDriver(persist).holder(class_name, id)


# -- clients land in every worker ----------------------------------------------------------


def test_fresh_connections_land_in_both_workers(probe: Path, tmp_path: Path) -> None:
    with run_opendo(
        *serve_args(probe, tmp_path / "state", 2), stderr_log=tmp_path / "log"
    ) as server:
        port = server.wait_ready()
        workers = worker_pids(server.proc.pid)
        assert len(workers) == 2, workers
        seen = pids_seen(port, set(workers))
        assert set(seen) == set(workers), f"in {TRIES} connections only {seen} answered"
        assert server.proc.pid not in seen  # the supervisor serves nothing itself


# -- a chat room across two workers ----------------------------------------------------------

CHAT_CLIENTS = 24
CHAT_MESSAGES = 4  # each


async def open_ws(port: int, path: str) -> ClientConnection:
    return await asyncio.wait_for(
        connect(f"ws://127.0.0.1:{port}{path}", compression=None, open_timeout=RECV), RECV
    )


async def recv_json(ws: ClientConnection) -> Any:
    async with asyncio.timeout(RECV):
        return json.loads(await ws.recv())


async def join(port: int, room: str) -> tuple[ClientConnection, int, list[Any], Any]:
    """Connect to the room: the socket, its id, the history and the presence frame."""
    ws = await open_ws(port, f"/{room}")
    greeting, history, presence = [await recv_json(ws) for _ in range(3)]
    assert set(greeting) == {"id"}, greeting
    assert history["type"] == "history" and presence["type"] == "presence", (history, presence)
    return ws, greeting["id"], history["messages"], presence


async def close_all(sockets: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def join_in_both_workers(
    port: int, workers: list[int], room: str, at_least: int, first_id: int = 1
) -> tuple[list[ClientConnection], list[int], list[Any]]:
    """Clients join one at a time (fresh connections) until there are ``at_least`` and both
    workers serve some. Checks each join: the next id, presence, the others told. Returns
    the sockets, the worker that serves each, and the history the first one got."""
    sockets: list[ClientConnection] = []
    served: list[int] = []
    history: list[Any] = []
    while len(sockets) < at_least or len(set(served)) < 2:
        assert len(sockets) < TRIES, f"{TRIES} clients, all in worker {set(served)}"
        ws, id, got, presence = await join(port, room)
        sockets.append(ws)
        if len(sockets) == 1:
            history = got
        assert got == history, "two clients got different histories"
        n = len(sockets)
        assert id == first_id + n - 1, f"client {n} got id {id}"
        assert presence["count"] == n, presence
        assert [u["id"] for u in presence["users"]] == list(range(first_id, id + 1)), presence
        for earlier in sockets[:-1]:
            assert await recv_json(earlier) == {"type": "join", "user": {"id": id, "name": None}}
        pid = serving_pid(port, ws.local_address[1], workers)
        assert pid in workers, f"client {n}: no worker holds its connection ({pid})"
        served.append(pid)
    return sockets, served, history


async def chat_round(sockets: list[ClientConnection], ids: list[int], tag: str) -> list[Any]:
    """Every client sends CHAT_MESSAGES messages at once; every client must get every one
    exactly once, all in one order, each sender's in the order sent. Returns that order."""

    async def send(ws: ClientConnection, id: int) -> None:
        for k in range(CHAT_MESSAGES):
            await ws.send(json.dumps({"text": f"{tag} {id}.{k}"}))

    async def receive(ws: ClientConnection) -> list[tuple[int, str]]:
        got = []
        for _ in range(len(sockets) * CHAT_MESSAGES):
            frame = await recv_json(ws)
            assert set(frame) == {"from", "text", "name", "at"}, frame
            got.append((frame["from"], frame["text"]))
        return got

    receiving = [asyncio.ensure_future(receive(ws)) for ws in sockets]
    await asyncio.gather(*(send(ws, id) for ws, id in zip(sockets, ids, strict=True)))
    orders = await asyncio.gather(*receiving)
    expected = {(id, f"{tag} {id}.{k}") for id in ids for k in range(CHAT_MESSAGES)}
    for order in orders:
        assert order == orders[0], "two clients saw the messages in different orders"
    assert len(orders[0]) == len(expected) and set(orders[0]) == expected
    for id in ids:
        mine = [text for sender, text in orders[0] if sender == id]
        assert mine == [f"{tag} {id}.{k}" for k in range(CHAT_MESSAGES)]
    return orders[0]


async def test_a_chat_room_across_two_workers(tmp_path: Path) -> None:
    args = serve_args(CHAT, tmp_path / "state", 2, "--env", "bench")
    with run_opendo(*args, stderr_log=tmp_path / "log") as server:
        port = server.wait_ready()
        workers = worker_pids(server.proc.pid)
        sockets, served, _ = await join_in_both_workers(port, workers, "room", CHAT_CLIENTS)
        staying: list[ClientConnection] = []
        try:
            ids = list(range(1, len(sockets) + 1))
            await chat_round(sockets, ids, "hello")

            # The clients of one worker leave: the others are told, each leave once.
            leaving = [ws for ws, pid in zip(sockets, served, strict=True) if pid == workers[0]]
            staying = [ws for ws, pid in zip(sockets, served, strict=True) if pid != workers[0]]
            left = {id for id, pid in zip(ids, served, strict=True) if pid == workers[0]}
            stay_ids = [id for id, pid in zip(ids, served, strict=True) if pid != workers[0]]
            await close_all(leaving)
            for ws in staying:
                told = [await recv_json(ws) for _ in left]
                assert all(frame["type"] == "leave" for frame in told), told
                assert {frame["user"]["id"] for frame in told} == left
            # A newcomer sees who is left (and is told to the others).
            ws, id, history, presence = await join(port, "room")
            staying.append(ws)
            assert id == len(ids) + 1
            assert presence["count"] == len(stay_ids) + 1
            assert [u["id"] for u in presence["users"]] == [*stay_ids, id]
            assert len(history) == len(ids) * CHAT_MESSAGES
            for other in staying[:-1]:
                assert (await recv_json(other))["type"] == "join"
            await chat_round(staying, [*stay_ids, id], "again")
        finally:
            await close_all([*sockets, *staying])


# -- RPC and alarms between objects of two processes ------------------------------------------


def two_servers(stack: Any, probe: Path, tmp_path: Path) -> tuple[OpendoProcess, OpendoProcess]:
    """Two ``opendo serve`` on one persist directory: each may own objects, and forwards to
    the other the events of the objects the other owns."""
    persist = tmp_path / "state"
    servers = [
        stack.enter_context(run_opendo(*serve_args(probe, persist, 1), stderr_log=tmp_path / "log"))
        for _ in range(2)
    ]
    for server in servers:
        server.wait_ready()
    return servers[0], servers[1]


def place(server: OpendoProcess, name: str) -> int:
    """Claim the Box ``name`` in ``server``'s process (its first event comes from there)."""
    assert server.port is not None
    answer = fresh_get(server.port, f"/own/{name}").json()
    assert answer == {"worker": server.proc.pid, "object": server.proc.pid}, answer
    return server.proc.pid


def test_rpc_between_objects_of_two_processes(probe: Path, tmp_path: Path) -> None:
    from contextlib import ExitStack

    with ExitStack() as stack:
        a_server, b_server = two_servers(stack, probe, tmp_path)
        a, b = place(a_server, "a"), place(b_server, "b")
        place(a_server, "b-third")
        place(a_server, "local-a")
        place(a_server, "local-b")
        assert a_server.port is not None and b_server.port is not None
        # Through B's Worker: B forwards to a (in A), which calls b (in B).
        report = fresh_get(b_server.port, "/exercise/a/b").json()
        # The same calls within one process, for reference.
        local = fresh_get(a_server.port, "/exercise/local-a/local-b").json()

    assert report["caller"] == a and local["caller"] == a
    for value in report["values"]:
        assert value["callee"] == b
        assert value["seen"] == value["sent"], "the callee got another value"
        assert value["back"] == value["sent"], "the caller got another value back"
    assert [v["sent"] for v in report["values"]] == [v["back"] for v in local["values"]]

    # A stub passed as an argument, used on the other side (the call comes back to A).
    assert report["third"] == a
    assert report["stub"] == [b, "b-third", a]
    assert report["self_stub"] == [b, "a", a]  # (a waits for b, which calls a: no deadlock)
    assert report["id"] == [b, *report["id_expected"], True]

    errors, reference = report["errors"], local["errors"]
    for kind in ("value", "key", "codec"):  # as within one process: type, message, args
        assert errors[kind] == reference[kind], kind
    assert errors["value"]["type"] == "ValueError" and errors["value"]["remote"]
    assert errors["value"]["message"] == "the value was wrong, on purpose"
    assert errors["key"]["type"] == "KeyError" and errors["key"]["args"] == ["'missing-key'"]
    assert errors["codec"]["type"] == "CodecError" and errors["codec"]["remote"]
    assert "cannot store a value of type 'object'" in errors["codec"]["message"]
    # A user's own error type cannot be rebuilt in another process: its name is kept.
    assert errors["own"]["type"] == "DurableObjectError" and errors["own"]["remote"]
    assert errors["own"]["message"] == "ProbeError: a user's own error type"
    # A function cannot cross: the caller is told, and it is not the callee's error.
    for kind, where in (("function_argument", "echo() argument"), ("function_result", "result")):
        error = errors[kind]
        assert error["type"] == "CodecError" and not error["remote"], error
        assert where in error["message"] and "is a function" in error["message"], error
        assert "another process" in error["message"], error


def test_an_alarm_fires_in_the_process_that_owns_its_object(probe: Path, tmp_path: Path) -> None:
    from contextlib import ExitStack

    with ExitStack() as stack:
        a_server, b_server = two_servers(stack, probe, tmp_path)
        assert a_server.port is not None and b_server.port is not None
        b = place(b_server, "alarmed")
        # Set through A: the call runs in B, where the object lives, and B runs the alarm.
        assert fresh_get(a_server.port, "/alarm/alarmed?ms=200").json() == b

        def fired() -> Any:
            answer = fresh_get(a_server.port, "/fired/alarmed").json()
            return answer if answer["fired"] else None

        answer = until(fired, RECV, "the alarm fired")
        assert answer["object"] == b and set(answer["fired"]) == {b}, answer
        assert answer["pending"] is None  # it ran, and was deleted
        assert fresh_get(b_server.port, "/fired/alarmed").json() == answer


def test_servers_started_at_once_on_a_new_directory_all_start(probe: Path, tmp_path: Path) -> None:
    from contextlib import ExitStack

    persist = tmp_path / "state"
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                run_opendo(*serve_args(probe, persist, 1), stderr_log=tmp_path / "log")
            )
            for _ in range(3)
        ]
        ports = [server.wait_ready() for server in servers]
        assert [int(fresh_get(port, "/pid").text) for port in ports] == [
            s.proc.pid for s in servers
        ]
