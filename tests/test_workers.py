"""Many processes on one persist directory (DESIGN.md §5): ``opendo serve --workers N``, and
two servers on one directory, against the real console script on 127.0.0.1.

An object lives in the process that holds its lock; the others forward its events there.
These tests make clients land in every process and check that the objects behave as one:
ids and counters hand out every value once, a chat room's messages reach everyone once and in
one order, RPC between objects of two processes carries every kind of value and error (a
start error with its Retry-After), an alarm fires where its object lives, a room everyone
left moves to whichever worker its next client reached. Then failures: a worker killed with
SIGKILL under load
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
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    CHAT,
    ROOT,
    STOP_DEADLINE,
    OpendoProcess,
    group_members,
    run_opendo,
    serving_pid,
    worker_pids,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

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
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of tests/projects/probe whose /hold requests mark themselves in tmp_path/marks
    (the secret MARKS, from the environment: opendo serve's)."""
    project = tmp_path / "probe"
    shutil.copytree(PROBE, project, ignore=shutil.ignore_patterns("__pycache__", ".opendo"))
    (tmp_path / "marks").mkdir()
    with (project / "opendo.toml").open("a") as f:
        f.write('\n[secrets]\nrequired = ["MARKS"]\n')
    monkeypatch.setenv("MARKS", str(tmp_path / "marks"))
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


def fresh_get(
    port: int, path: str, timeout: float = RECV, headers: dict[str, str] | None = None
) -> httpx.Response:
    """A GET on a connection of its own (so the kernel picks a worker for it)."""
    return httpx.get(
        f"http://127.0.0.1:{port}{path}",
        headers={"Connection": "close", **(headers or {})},
        timeout=timeout,
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
CHAT_HISTORY = 100  # examples/chat's HISTORY: the messages a client that joins is sent


async def open_ws(
    port: int, path: str, via: tuple[int, list[int]] | None = None
) -> ClientConnection:
    """A WebSocket to ``path``; with ``via=(pid, workers)``, over a connection worker ``pid``
    accepted (fresh TCP connections are opened until one lands there, at most TRIES)."""
    sock = None
    if via is not None:
        pid, workers = via
        for _ in range(TRIES):
            sock = socket.create_connection(("127.0.0.1", port), timeout=RECV)
            client_port = sock.getsockname()[1]
            got = until(lambda c=client_port: serving_pid(port, c, workers), RECV, "the accept")
            if got == pid:
                break
            sock.close()
            sock = None
        assert sock is not None, f"{TRIES} connections, none accepted by worker {pid}"
        sock.setblocking(False)
    return await asyncio.wait_for(
        connect(f"ws://127.0.0.1:{port}{path}", compression=None, open_timeout=RECV, sock=sock),
        RECV,
    )


async def recv_json(ws: ClientConnection) -> Any:
    async with asyncio.timeout(RECV):
        return json.loads(await ws.recv())


async def join(
    port: int, room: str, via: tuple[int, list[int]] | None = None
) -> tuple[ClientConnection, int, list[Any], Any]:
    """Connect to the room (through worker ``via`` if given, see open_ws): the socket, its id,
    the history and the presence frame."""
    ws = await open_ws(port, f"/{room}", via)
    greeting, history, presence = [await recv_json(ws) for _ in range(3)]
    assert set(greeting) == {"id"}, greeting
    assert history["type"] == "history" and presence["type"] == "presence", (history, presence)
    return ws, greeting["id"], history["messages"], presence


async def close_all(sockets: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def join_in_both_workers(
    port: int,
    workers: list[int],
    room: str,
    at_least: int,
    first_id: int = 1,
    first_via: int | None = None,
) -> tuple[list[ClientConnection], list[int], list[Any]]:
    """Clients join one at a time (fresh connections) until there are ``at_least`` and both
    workers serve some; the first through worker ``first_via`` if given. Checks each join: the
    next id, presence, the others told. Returns the sockets, the worker that serves each, and
    the history the first one got."""
    sockets: list[ClientConnection] = []
    served: list[int] = []
    history: list[Any] = []
    while len(sockets) < at_least or len(set(served)) < 2:
        assert len(sockets) < TRIES, f"{TRIES} clients, all in worker {set(served)}"
        via = (first_via, workers) if first_via is not None and not sockets else None
        ws, id, got, presence = await join(port, room, via)
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
            order = await chat_round(sockets, ids, "hello")

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
            # The room's last HISTORY messages (there are more when more than 25 clients had
            # to join before both workers served some).
            assert [(m["from"], m["text"]) for m in history] == order[-CHAT_HISTORY:]
            for other in staying[:-1]:
                assert (await recv_json(other))["type"] == "join"
            await chat_round(staying, [*stay_ids, id], "again")
        finally:
            await close_all([*sockets, *staying])


# -- a counter under concurrent load through both workers -------------------------------------

LOAD_CLIENTS = 16
LOAD_REQUESTS = 25  # each


async def test_a_counter_under_load_through_two_workers(tmp_path: Path) -> None:
    with run_opendo(
        *serve_args(COUNTER, tmp_path / "state", 2), stderr_log=tmp_path / "log"
    ) as server:
        port = server.wait_ready()
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Connection": "close"},
            limits=fresh,
            timeout=RECV,
        ) as http:

            async def client() -> list[int]:
                values = []
                for _ in range(LOAD_REQUESTS):
                    response = await http.get("/counter/shared")
                    assert response.status_code == 200, response.text
                    values.append(int(response.text))
                return values

            handed = await asyncio.gather(*(client() for _ in range(LOAD_CLIENTS)))
    values = sorted(value for values in handed for value in values)
    assert values == list(range(1, LOAD_CLIENTS * LOAD_REQUESTS + 1)), "a duplicate or a gap"
    for values in handed:  # each client's values go up: its requests came one after another
        assert values == sorted(values)


# -- RPC and alarms between objects of two processes ------------------------------------------


def two_servers(
    stack: ExitStack, probe: Path, tmp_path: Path
) -> tuple[OpendoProcess, OpendoProcess]:
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


def test_an_object_that_cannot_start_in_the_other_process(probe: Path, tmp_path: Path) -> None:
    """Its start error reaches a client of either server alike: a 503 that says why, and when
    the next attempt is (Retry-After)."""
    with ExitStack() as stack:
        a_server, b_server = two_servers(stack, probe, tmp_path)
        assert a_server.port is not None and b_server.port is not None
        first = fresh_get(a_server.port, "/own/broken")  # claimed in A, where it fails
        assert first.status_code == 503 and "retry-after" not in first.headers
        again = fresh_get(a_server.port, "/own/broken")  # the second failure: 1 s back-off
        through_b = fresh_get(b_server.port, "/own/broken")
        for response in (again, through_b):
            assert response.status_code == 503, response.text
            assert "this box cannot start, on purpose" in response.text
            assert response.headers.get("retry-after") in ("1", "2"), (
                response is again,
                response.headers,
            )
        assert owner(tmp_path / "state", "Box", "broken") == a_server.proc.pid


def test_an_alarm_fires_in_the_process_that_owns_its_object(probe: Path, tmp_path: Path) -> None:
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


# -- kill -9 of a worker -------------------------------------------------------------------------

KILL_COUNTERS = ("a", "b", "c", "d")
RETRIES = 500  # attempts of one request, at most, while a worker is down and restarted
AFTER_RESTART = 200  # increments acknowledged after the restart before the load stops


def wait_restarted(server: OpendoProcess, port: int, victim: int, survivor: int) -> int:
    """Wait until the supervisor replaced ``victim`` and the new worker accepts connections;
    its pid."""
    workers = until(
        lambda: (w := worker_pids(server.proc.pid)) and len(w) == 2 and victim not in w and w,
        START,
        f"the supervisor restarted worker {victim}",
    )
    new = [pid for pid in workers if pid != survivor]
    assert len(new) == 1, (workers, survivor)
    for _ in range(TRIES):  # until the kernel hands the new worker a connection: it serves
        with socket.create_connection(("127.0.0.1", port), timeout=RECV) as sock:
            client_port = sock.getsockname()[1]
            accepted = lambda at=client_port: serving_pid(port, at, workers)  # noqa: E731
            pid = until(accepted, START, "an accept")
        if pid == new[0]:
            return pid
    raise AssertionError(f"the new worker {new[0]} accepted none of {TRIES} connections")


class RetryingLoad:
    """LOAD_CLIENTS threads GET /counter/<name> in turn over fresh connections, each request
    retried until it is acknowledged (a 200: a 5xx or a dropped connection is not); every
    value acknowledged is recorded, and so is every failure retried."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.received: dict[str, list[int]] = {name: [] for name in KILL_COUNTERS}
        self.acknowledged = 0
        self.retried: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,)) for i in range(LOAD_CLIENTS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(STOP_DEADLINE + RECV)
            assert not thread.is_alive(), "a load client did not stop"

    def _client(self, index: int) -> None:
        fresh = httpx.Limits(max_keepalive_connections=0)
        headers = {"Connection": "close"}
        with httpx.Client(base_url=self.base, timeout=RECV, limits=fresh, headers=headers) as http:
            for n in range(index, index + 10**6):
                name = KILL_COUNTERS[n % len(KILL_COUNTERS)]
                for _ in range(RETRIES):
                    if self.stop.is_set():
                        return
                    try:
                        response = http.get(f"/counter/{name}")
                    except httpx.TransportError as exc:
                        failure = f"{type(exc).__name__}: {exc}"
                    else:
                        if response.status_code == 200:
                            with self._lock:
                                self.received[name].append(int(response.text))
                                self.acknowledged += 1
                            break
                        failure = f"{response.status_code} {response.text!r}"
                        if response.status_code < 500:
                            with self._lock:
                                self.errors.append(failure)
                            return
                    with self._lock:
                        self.retried.append(failure)
                    self.stop.wait(0.01)  # the retry's back-off (ends at once when stopped)
                else:
                    with self._lock:
                        self.errors.append(f"/counter/{name}: not acknowledged in {RETRIES} tries")
                    return


def test_kill_9_of_a_worker_under_load_loses_no_acknowledged_increment(tmp_path: Path) -> None:
    persist = tmp_path / "state"
    log = tmp_path / "log"
    with run_opendo(*serve_args(COUNTER, persist, 2), stderr_log=log) as server:
        port = server.wait_ready()
        workers = worker_pids(server.proc.pid)
        load = RetryingLoad(port)
        load.start()
        try:
            until(lambda: load.acknowledged >= 100 or load.errors, RECV, "load flows")
            assert load.errors == []
            owners = {name: owner(persist, "Counter", name) for name in KILL_COUNTERS}
            assert set(owners.values()) <= set(workers), owners
            victim = owners["a"]
            assert victim is not None
            survivor = next(pid for pid in workers if pid != victim)
            at_kill = load.acknowledged
            os.kill(victim, signal.SIGKILL)
            wait_restarted(server, port, victim, survivor)
            until(
                lambda: load.acknowledged >= at_kill + AFTER_RESTART or load.errors,
                START,
                "load flows again after the restart",
            )
        finally:
            load.finish()
        assert load.errors == [], load.errors

        for name, got in load.received.items():
            assert len(set(got)) == len(got), f"/counter/{name} answered a value twice"
            for _ in range(RETRIES):  # the stored value, read through the server
                response = fresh_get(port, f"/counter/{name}")
                if response.status_code == 200:
                    break
            assert response.status_code == 200, response.text
            stored = int(response.text) - 1
            assert stored >= max(got), (
                f"/counter/{name} stores {stored}, but a client was answered {max(got)}"
            )
            assert stored + 1 not in got
        # The restarted worker stops as the others do.
        pgid = server.proc.pid
        assert server.stop(signal.SIGTERM) == 0, log.read_text()[-2000:]
        assert group_members(pgid) == [], "a process of the server is left"


async def closed_with(ws: ClientConnection) -> int | None:
    """The close code a client got (1006: none was received, the connection dropped)."""
    async with asyncio.timeout(RECV):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    return ws.close_code


async def rejoin(port: int, room: str) -> tuple[ClientConnection, int, list[Any], Any]:
    """``join``, retried while the room is being claimed again (a connection the dead
    worker had accepted but not served fails; so may a forward to it, once)."""
    failures: list[BaseException] = []
    for _ in range(TRIES):
        try:
            return await join(port, room)
        except (OSError, ConnectionClosed, InvalidStatus, TimeoutError) as exc:
            failures.append(exc)
    raise AssertionError(f"could not rejoin the room in {TRIES} tries: {failures[-3:]!r}")


async def test_kill_9_of_a_chat_rooms_owner(tmp_path: Path) -> None:
    persist = tmp_path / "state"
    args = serve_args(CHAT, persist, 2, "--env", "bench")
    with run_opendo(*args, stderr_log=tmp_path / "log") as server:
        port = server.wait_ready()
        workers = worker_pids(server.proc.pid)
        sockets, served, _ = await join_in_both_workers(port, workers, "room", 6)
        reconnected: list[ClientConnection] = []
        try:
            ids = list(range(1, len(sockets) + 1))
            said = await chat_round(sockets, ids, "before")
            victim = owner(persist, "Chat", "room")
            assert victim in workers
            survivor = next(pid for pid in workers if pid != victim)
            relayed = [ws for ws, pid in zip(sockets, served, strict=True) if pid == survivor]
            direct = [ws for ws, pid in zip(sockets, served, strict=True) if pid == victim]
            assert relayed and direct

            os.kill(victim, signal.SIGKILL)
            for ws in relayed:  # the surviving worker closes what it relayed to the dead one
                code = await closed_with(ws)
                assert code in (1012, 1006), f"a relayed client got close code {code}"
            for ws in direct:  # their TCP connection died with the worker
                assert await closed_with(ws) in (1012, 1006)

            # Reconnecting works (the room is claimed again), with its stored history.
            new_ids = []
            for n in range(1, 4):
                ws, id, history, presence = await rejoin(port, "room")
                reconnected.append(ws)
                new_ids.append(id)
                assert [(m["from"], m["text"]) for m in history] == said
                assert presence["count"] == n, presence  # the sockets of before are gone
                for earlier in reconnected[:-1]:
                    assert (await recv_json(earlier))["type"] == "join"
            assert new_ids == sorted(new_ids) and new_ids[0] > ids[-1], new_ids
            await chat_round(reconnected, new_ids, "after")
        finally:
            await close_all([*sockets, *reconnected])


# -- SIGTERM -----------------------------------------------------------------------------------

SHUTDOWN_TIMEOUT = 5.0  # --shutdown-timeout of the drain test: a /hold takes 1 s of it


def test_sigterm_drains_every_worker_and_exits_0(probe: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    args = serve_args(probe, tmp_path / "state", 2, "--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    with run_opendo(*args, stderr_log=tmp_path / "log") as server:
        port = server.wait_ready()
        workers = worker_pids(server.proc.pid)
        answers: dict[int, httpx.Response | BaseException] = {}

        def hold(n: int) -> None:
            try:
                answers[n] = fresh_get(
                    port, "/hold", timeout=SHUTDOWN_TIMEOUT + RECV, headers={"x-n": str(n)}
                )
            except BaseException as exc:
                answers[n] = exc

        def holding() -> set[int]:
            return {int(mark.name.split("-")[0]) for mark in marks.iterdir()}

        # Requests in flight in both workers: each marks itself once it runs.
        threads: list[threading.Thread] = []
        for n in range(TRIES):
            thread = threading.Thread(target=hold, args=(n,))
            threads.append(thread)
            thread.start()
            until(lambda: len(list(marks.iterdir())) == len(threads), RECV, "the request runs")
            if holding() == set(workers):
                break
        assert holding() == set(workers), f"{len(threads)} requests, all in {holding()}"
        pgid = server.proc.pid  # the supervisor leads the group of every process it started

        started = time.monotonic()
        code = server.stop(signal.SIGTERM)
        took = time.monotonic() - started
        for thread in threads:
            thread.join(RECV)
        assert code == 0, server.stderr_text()[-2000:]
        assert took < SHUTDOWN_TIMEOUT + 2, f"the shutdown took {took:.1f} s"
        assert group_members(pgid) == [], "a process of the server is left"
        for n, answer in answers.items():  # every request in flight was answered
            assert isinstance(answer, httpx.Response), f"request {n}: {answer!r}"
            assert answer.status_code == 200 and int(answer.text) in workers, answer.text
        assert len(answers) == len(threads)


# -- an idle room moves between workers ----------------------------------------------------------


async def test_an_evicted_room_is_claimed_again_by_either_worker(tmp_path: Path) -> None:
    """A room everyone left is evicted and gives up its lock; the next client's worker
    claims it, with its ids and history. Each round's first client comes through the worker
    the room did not live in last, until the room has lived in both."""
    project = tmp_path / "chat"
    shutil.copytree(CHAT, project, ignore=shutil.ignore_patterns("__pycache__", ".opendo"))
    with (project / "opendo.toml").open("a") as config:
        config.write("\n[runtime]\nidle_timeout = 0.05\nhibernation_timeout = 0.05\n")
    persist = tmp_path / "state"
    args = serve_args(project, persist, 2, "--env", "bench")
    with run_opendo(*args, stderr_log=tmp_path / "log") as server:
        port = server.wait_ready()
        workers = worker_pids(server.proc.pid)
        owners: list[int] = []
        said: list[Any] = []
        first_id = 1
        for _ in range(2):
            other = next((pid for pid in workers if owners and pid != owners[-1]), None)
            sockets, _, history = await join_in_both_workers(
                port, workers, "room", 2, first_id, first_via=other
            )
            try:
                assert [(m["from"], m["text"]) for m in history] == said[-100:]
                ids = list(range(first_id, first_id + len(sockets)))
                room_owner = owner(persist, "Chat", "room")
                assert room_owner in workers
                owners.append(room_owner)
                said += await chat_round(sockets, ids, f"round {len(owners)}")
                first_id = ids[-1] + 1
            finally:
                await close_all(sockets)
            until(lambda: owner(persist, "Chat", "room") is None, RECV, "the room is evicted")
            if set(owners) == set(workers):
                break
        assert set(owners) == set(workers), f"the room lived only in {set(owners)}"
