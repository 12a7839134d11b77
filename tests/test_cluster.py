"""Cluster mode end to end: ``opendo serve --cluster`` node processes on 127.0.0.1 in front of
a real PostgreSQL (tests/pg.py), and the failures a cluster is for.

Every test runs three nodes (each its own ``opendo serve`` process, with its own cache
directory) of tests/projects/ledger, whose answers name the process that ran the object:

- routing: objects spread over the nodes, any node answers for any object, one counter through
  every node in turn counts 1, 2, 3 …, a chat room with clients on every node;
- failover: ``kill -9`` of the owner under load: another node serves its objects within 2× the
  lease, and no acknowledged write is lost;
- a zombie owner (SIGSTOP past its lease, SIGCONT after another node took over and wrote) and a
  partition (a TCP proxy between one node and PostgreSQL black-holes its traffic): the stale
  node commits nothing, closes its objects' sockets with 1012, and no value is answered twice;
- a node with another secret is refused by the others, and logged;
- point-in-time recovery over HTTP: restore a bookmark, read the old state, undo it.

A counter's answers are checked as a whole: under load each client increments sequentially,
so the values it is answered must rise strictly, no value may be answered twice (by any node),
and the next increment after the failure must exceed every value answered before it (an
acknowledged write that were lost would be counted again). Every wait is for a condition,
bounded in time and in count.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CHAT, ROOT, OpendoProcess
from pg import PgDatabase, TcpProxy, run_async
from pg import connection as pg_connection
from test_workers import chat_round, close_all, join, recv_json
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytest_plugins = ["pg"]
pytestmark = pytest.mark.slow

LEDGER = ROOT / "tests" / "projects" / "ledger"
SECRET = "the secret of the cluster tests, 32 bytes"
WRONG = "a secret of some other cluster, 32 bytes"
LEASE = 2.0  # seconds: --lease-seconds of every node
RECV = 10.0  # bound of anything that must arrive (two shared cores, three nodes, PostgreSQL)
START = 30.0  # bound of a node's start
LOAD_REQUESTS = 4000  # per client, at most, of a load loop
LOAD_SECONDS = 60.0  # and for at most this long


def until(predicate: Callable[[], Any], within: float, what: str | Callable[[], str]) -> Any:
    """Wait until ``predicate()`` is true (checked every 10 ms); its value. ``what`` names the
    condition in the failure (a callable: called then, to say what the state was)."""
    deadline = time.monotonic() + within
    while True:
        if value := predicate():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what() if callable(what) else what}")
        threading.Event().wait(0.01)


@dataclass
class Node:
    name: str
    process: OpendoProcess
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = RECV) -> httpx.Response:
        return httpx.get(self.url(path), timeout=timeout)

    def inc(self, name: str) -> tuple[int, int]:
        """Increment ``name`` through this node: (value, pid of the owner)."""
        response = self.get(f"/inc/{name}")
        assert response.status_code == 200, (self.name, response.status_code, response.text)
        value, pid = response.text.split()
        return int(value), int(pid)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class Cluster:
    """The node processes of one test, on one fresh PostgreSQL database."""

    def __init__(self, database: PgDatabase, tmp: Path) -> None:
        self.database = database
        self.tmp = tmp
        self.nodes: list[Node] = []

    def node(
        self,
        *more: str,
        secret: str = SECRET,
        dsn: str | None = None,
        project: Path = LEDGER,
    ) -> Node:
        """A node started (and joined) with ``opendo serve ... MORE``."""
        name = f"node{len(self.nodes)}"
        log = self.tmp / f"{name}.log"
        env_secret = os.environ.get("OPENDO_CLUSTER_SECRET")
        os.environ["OPENDO_CLUSTER_SECRET"] = secret  # the child's copy of the environment
        try:
            process = OpendoProcess(
                "serve",
                project,
                "--port",
                "0",
                "--persist-to",
                self.tmp / name,
                "--cluster",
                dsn or self.database.dsn,
                "--advertise",
                "127.0.0.1:0",
                "--lease-seconds",
                str(LEASE),
                *more,
                stderr_log=log,
            )
        finally:
            if env_secret is None:
                del os.environ["OPENDO_CLUSTER_SECRET"]
            else:
                os.environ["OPENDO_CLUSTER_SECRET"] = env_secret
        node = Node(name, process, 0, log)
        self.nodes.append(node)  # closed by the fixture, also if it does not start
        node.port = process.wait_ready(START)
        until(lambda: "joined the cluster" in node.log_text(), START, f"{name} joins")
        return node

    def three(self, *more: str, **options: Any) -> list[Node]:
        return [self.node(*more, **options) for _ in range(3)]

    def close(self) -> None:
        for node in self.nodes:
            if node.process.proc.poll() is None:
                os.kill(node.pid, signal.SIGCONT)  # a test that failed while it was stopped
            node.process.close()


@pytest.fixture
def cluster(pg_database: PgDatabase, tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(pg_database, tmp_path)
    try:
        yield nodes
    finally:
        nodes.close()


def by_pid(nodes: list[Node]) -> dict[int, str]:
    return {node.pid: node.name for node in nodes}


# -- routing -------------------------------------------------------------------------------------


def test_objects_spread_over_the_nodes_and_any_node_answers_for_any(cluster: Cluster) -> None:
    nodes = cluster.three()
    names = [f"spread{i}" for i in range(9)]
    owners = {}
    for i, name in enumerate(names):  # first used at node i % 3: claimed there
        value, owners[name] = nodes[i % 3].inc(name)
        assert value == 1
    assert set(owners.values()) == {node.pid for node in nodes}, by_pid(nodes)
    for name in names:
        for k, node in enumerate(nodes):  # every node answers for every object, the owner runs it
            assert node.inc(name) == (2 + k, owners[name]), (name, node.name)


def test_one_counter_through_every_node_in_turn_counts_one_two_three(cluster: Cluster) -> None:
    nodes = cluster.three()
    values = [nodes[k % 3].inc("turns")[0] for k in range(12)]
    assert values == list(range(1, 13))


async def test_a_chat_room_with_clients_on_every_node(cluster: Cluster, tmp_path: Path) -> None:
    """The tutorial's chat: clients join the room through all three nodes; each sees the
    others join with the next id, and every message reaches every client once, in one order."""
    project = tmp_path / "chat"
    shutil.copytree(CHAT, project, ignore=shutil.ignore_patterns("__pycache__", ".opendo"))
    nodes = cluster.three("--env", "bench", project=project)  # bench: no rate limit
    sockets: list[ClientConnection] = []
    try:
        for n in range(6):
            ws, id, history, presence = await join(nodes[n % 3].port, "lobby")
            assert id == n + 1 and history == [] and presence["count"] == n + 1
            for earlier in sockets:
                assert await recv_json(earlier) == {
                    "type": "join",
                    "user": {"id": id, "name": None},
                }
            sockets.append(ws)
        await chat_round(sockets, list(range(1, 7)), "across nodes")
    finally:
        await close_all(sockets)


def test_each_worker_of_a_server_is_a_node_of_its_own(cluster: Cluster) -> None:
    """``--workers 2``: both processes join (each listening for the other nodes on a port of
    its own), and counters used through that server and another node count as one."""
    multi = cluster.node("--workers", "2")
    until(lambda: multi.log_text().count("joined the cluster") == 2, START, "both workers join")
    other = cluster.node()
    nodes = asyncpg_rows(cluster, "SELECT address FROM opendo_node")
    assert len({row["address"] for row in nodes}) == 3, nodes
    for k in range(12):  # fresh connections: either worker takes each
        response = httpx.get(multi.url(f"/inc/w{k % 4}"), headers={"Connection": "close"})
        assert response.status_code == 200, response.text
        assert int(response.text.split()[0]) == k // 4 + 1
    for k in range(4):
        assert other.inc(f"w{k}")[0] == 4


def asyncpg_rows(cluster: Cluster, query: str) -> list[Any]:
    async def fetch() -> list[Any]:
        async with pg_connection(cluster.database.dsn) as conn:
            return list(await conn.fetch(query))

    return run_async(fetch)


# -- failures ------------------------------------------------------------------------------------


@dataclass
class Answer:
    at: float  # time.monotonic() when it came
    value: int
    pid: int
    via: str


@dataclass
class Load:
    """Clients that increment counters through the given nodes, each sequentially, until
    stopped (bounded in count and time). Their answers, and their failures (any non-200 or
    transport error: a write that may or may not have happened)."""

    names: list[str]
    via: list[Node]
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for name in self.names:
            self.answers[name] = []
            thread = threading.Thread(target=self._client, args=(name,), daemon=True)
            self.threads.append(thread)
            thread.start()
        return self

    def _client(self, name: str) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        clients = [httpx.Client(timeout=RECV) for _ in self.via]
        try:
            for k in range(LOAD_REQUESTS):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                node = self.via[k % len(self.via)]
                try:
                    response = clients[k % len(self.via)].get(node.url(f"/inc/{name}"))
                except httpx.HTTPError as exc:
                    self._failed(f"{node.name}: {exc!r}")
                    continue
                if response.status_code != 200:
                    self._failed(f"{node.name}: {response.status_code} {response.text}")
                    continue
                value, pid = map(int, response.text.split())
                self.answers[name].append(Answer(time.monotonic(), value, pid, node.name))
        finally:
            for client in clients:
                client.close()

    def _failed(self, what: str) -> None:
        self.failures.append(what)
        self.stop.wait(0.02)  # as a client would, before it tries again

    def answered(self, name: str, after: float = 0.0, pid: int | None = None) -> int:
        return sum(1 for a in self.answers[name] if a.at > after and (pid is None or a.pid == pid))

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(RECV * 2)
        assert not any(thread.is_alive() for thread in self.threads), "a client is stuck"


def check_counter(name: str, answers: list[Answer], more: list[Answer], next_value: int) -> None:
    """Each client's answers rise strictly; no value was answered twice, by any node; the next
    increment counts past every answered value (none of them was lost)."""
    values = [a.value for a in answers]
    assert values == sorted(set(values)), f"{name}: answered out of order or twice: {values}"
    every = values + [a.value for a in more]
    twice = sorted({v for v in every if every.count(v) > 1})
    assert not twice, f"{name}: values answered twice: {twice}"
    assert next_value > max(every), f"{name}: {next_value} after answers up to {max(every)}"


def takeover_within(load: Load, since: float, dead: int, bound: float) -> dict[str, float]:
    """Wait until every counter was answered by a node other than ``dead`` after ``since``;
    how long each took. Fails past ``bound``."""
    until(
        lambda: all(
            any(a.at > since and a.pid != dead for a in load.answers[n]) for n in load.names
        ),
        bound + RECV,
        "every counter is served by another node",
    )
    took = {
        n: min(a.at for a in load.answers[n] if a.at > since and a.pid != dead) - since
        for n in load.names
    }
    assert max(took.values()) <= bound, f"taken over after {took} s (bound {bound} s)"
    return took


def owned_by(node: Node, names: list[str]) -> None:
    for name in names:
        assert node.inc(name) == (1, node.pid)


async def open_ws(node: Node, path: str) -> ClientConnection:
    return await asyncio.wait_for(
        connect(f"ws://127.0.0.1:{node.port}{path}", compression=None, open_timeout=RECV), RECV
    )


async def closed_with(ws: ClientConnection, within: float) -> tuple[int | None, str | None]:
    """Read until the socket closes (bounded); its close code and reason."""
    try:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    except ConnectionClosed:
        pass
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason


def test_kill_9_of_an_owner_under_load(cluster: Cluster) -> None:
    a, b, c = cluster.three()
    names = [f"failover{i}" for i in range(4)]
    owned_by(a, names)
    load = Load(names, [b, c]).start()  # forwarded to a, until a dies
    try:
        until(lambda: all(load.answered(n) >= 5 for n in names), RECV, "the load runs")
        killed = time.monotonic()
        os.kill(a.pid, signal.SIGKILL)
        a.process.proc.wait(RECV)
        took = takeover_within(load, killed, a.pid, 2 * LEASE)
        until(lambda: all(load.answered(n, killed) >= 5 for n in names), RECV, "the load goes on")
    finally:
        load.finish()
    for name in names:
        check_counter(name, load.answers[name], [], b.inc(name)[0])
    print(f"failover after kill -9: {sorted(round(t, 2) for t in took.values())} s")


async def test_a_zombie_owner_commits_nothing_and_tears_its_objects_down(
    cluster: Cluster,
) -> None:
    """SIGSTOP the owner past its lease; another node takes its objects over and writes;
    SIGCONT. The stale node finds its lease gone by its own clock before it touches
    storage: requests that waited for it are answered by the new owner (no value twice),
    and its objects' sockets close with 1012."""
    a, b, c = cluster.three()
    names = [f"zombie{i}" for i in range(3)]
    owned_by(a, names)
    ws = await open_ws(a, f"/ws/{names[0]}")
    assert await recv_json_raw(ws) == str(a.pid)
    load = Load(names, [b, c])
    waited = Load(names, [a])  # sent to the stopped node: they wait in its socket
    stopped = time.monotonic()
    os.kill(a.pid, signal.SIGSTOP)
    try:
        load.start()
        waited.start()
        took = await asyncio.to_thread(takeover_within, load, stopped, a.pid, 2 * LEASE + RECV)
        assert min(took.values()) >= LEASE * 0.9, f"taken over before the lease ran out: {took}"
        await asyncio.to_thread(
            until,
            lambda: all(load.answered(n, stopped) >= 3 for n in names),
            RECV,
            "the new owner writes",
        )
    finally:
        os.kill(a.pid, signal.SIGCONT)
    try:
        code, reason = await closed_with(ws, RECV)
        assert code == 1012, (code, reason)
        await asyncio.to_thread(
            until,
            lambda: all(waited.answered(n) >= 2 for n in names),
            RECV,
            "the woken node answers again, from the new owner",
        )
    finally:
        await asyncio.to_thread(load.finish)
        await asyncio.to_thread(waited.finish)
    log = a.log_text()
    assert "lost its lease" in log, log[-3000:]
    answered = sum(len(v) for v in load.answers.values())
    woken = sum(len(v) for v in waited.answers.values())
    took_s = sorted(round(t, 2) for t in took.values())
    print(f"zombie: taken over after {took_s} s; {answered} answers, {woken} after waking")
    for name in names:
        assert {x.pid for x in waited.answers[name]} <= {b.pid, c.pid}, "the zombie served"
        check_counter(name, load.answers[name], waited.answers[name], c.inc(name)[0])


async def recv_json_raw(ws: ClientConnection) -> Any:
    async with asyncio.timeout(RECV):
        return await ws.recv()


async def test_a_node_cut_off_from_postgres_drops_its_objects_and_commits_nothing(
    cluster: Cluster,
) -> None:
    """A TCP proxy between one node and PostgreSQL black-holes its traffic (connections stay
    open, nothing arrives): the node stops serving by itself once its lease may have run out
    (sockets closed with 1012), another node takes over within 2× the lease, and when the
    partition heals the cut-off node commits nothing of what it held, and joins again."""
    with TcpProxy("127.0.0.1", cluster.database.server.port) as proxy:
        a = cluster.node(dsn=cluster.database.dsn_via(proxy))
        b, c = cluster.node(), cluster.node()
        names = [f"cut{i}" for i in range(3)]
        owned_by(a, names)
        ws = await open_ws(a, f"/ws/{names[0]}")
        assert await recv_json_raw(ws) == str(a.pid)
        load = Load(names, [b, c]).start()
        direct = Load(names, [a]).start()  # served by a until the cut, then by whoever owns
        try:
            await asyncio.to_thread(
                until, lambda: all(load.answered(n) >= 5 for n in names), RECV, "load runs"
            )
            cut = time.monotonic()
            proxy.blackhole()
            code, reason = await closed_with(ws, 2 * LEASE + RECV)
            dropped = time.monotonic() - cut
            assert code == 1012, (code, reason)
            assert dropped <= LEASE + 1, f"the cut-off node served on for {dropped:.2f} s"
            took = await asyncio.to_thread(takeover_within, load, cut, a.pid, 2 * LEASE)
            print(
                f"partition: sockets closed after {dropped:.2f} s, taken over after "
                f"{sorted(round(t, 2) for t in took.values())} s"
            )
            proxy.heal()
            await asyncio.to_thread(
                until,
                lambda: "joined the cluster" in a.log_text().split("lost its lease", 1)[-1],
                RECV * 2,
                "the cut-off node joins again",
            )
            await asyncio.to_thread(
                until,
                lambda: all(direct.answered(n, cut) >= 2 for n in names),
                RECV * 2,
                lambda: (
                    f"the cut-off node answers again: answered since the cut "
                    f"{[direct.answered(n, cut) for n in names]}, clients running "
                    f"{sum(t.is_alive() for t in direct.threads)}, last failures "
                    f"{direct.failures[-3:]}; {a.name}'s log ends: {a.log_text()[-1500:]}"
                ),
            )
        finally:
            await asyncio.to_thread(load.finish)
            await asyncio.to_thread(direct.finish)
        for name in names:
            # What the cut-off node answered after the cut, it committed before the takeover
            # (it was on its way back): below every value a new owner answered.
            every = load.answers[name] + direct.answers[name]
            late = [x.value for x in every if x.at > cut and x.pid == a.pid]
            new = [x.value for x in every if x.at > cut and x.pid != a.pid]
            assert not late or max(late) < min(new), f"{name}: {late} from the cut-off node"
            check_counter(name, load.answers[name], direct.answers[name], c.inc(name)[0])


def test_a_node_without_the_secret_is_refused_and_logged(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    owned_by(a, ["guarded"])
    stranger = cluster.node(secret=WRONG)
    response = stranger.get("/inc/guarded")
    assert response.status_code == 503, response.text
    assert "secrets differ" in response.text and "Traceback" not in response.text
    assert "refused an unauthenticated node connection" in a.log_text()
    assert b.inc("guarded") == (2, a.pid)  # nothing of the stranger's call happened


def test_point_in_time_recovery_over_http(cluster: Cluster) -> None:
    a, b, _ = cluster.three()
    for k in range(3):
        assert a.inc("history")[0] == k + 1
    bookmark = a.get("/bookmark/history").text
    for k in range(2):
        assert b.inc("history")[0] == 4 + k
    undo = b.get(f"/restore/history?b={bookmark}")
    assert undo.status_code == 200, undo.text
    assert b.get("/restart/history").status_code >= 500  # ctx.abort() ends the session
    assert a.get("/get/history").text.split()[0] == "3"
    assert a.inc("history")[0] == 4  # it goes on from the restored state
    assert b.get(f"/restore/history?b={undo.text}").status_code == 200
    b.get("/restart/history")
    assert b.get("/get/history").text.split()[0] == "5"  # undone: back to before the restore
