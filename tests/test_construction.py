"""An object that fails to start: its constructor raises, or a ``block_concurrency_while``
started in it fails or times out.

In-process tests run the runtime in the test's event loop with a ``FakeClock`` (the back-off
and the alarm retries pass only when a test moves the clock); the object's constructor does
what ``env.PLAN["how"]`` says. The last tests serve a small project with the real
``opendo serve`` on 127.0.0.1 and talk HTTP to it.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import STOP_DEADLINE, OpendoProcess, run_opendo, wait_for

import opendo.core.lifecycle
from opendo import (
    CloseEvent,
    DurableObject,
    DurableObjectError,
    DurableObjectStartError,
    FakeClock,
    Request,
    Response,
    Runtime,
    SqliteDriver,
    WebSocket,
    WebSocketPair,
)
from opendo.core.lifecycle import MAX_START_BACKOFF, TRANSITIONS, Lifecycle, start_backoff
from opendo.runtime.host import ObjectHost
from opendo.runtime.state import BLOCK_CONCURRENCY_TIMEOUT

RECV = 5.0  # bound for something that must happen
IDLE = 10.0

# What each way of failing says about itself in the error a caller gets.
WHY = {
    "raise": "ValueError('no configuration')",
    "block": "ValueError('setup failed')",
    "hang": f"did not finish within {BLOCK_CONCURRENCY_TIMEOUT:g} s",
}


class Fragile(DurableObject):
    """Starts as ``env.PLAN["how"]`` says: "ok"; "raise" in ``__init__``; "block": a
    ``block_concurrency_while`` that raises; "hang": one that never finishes; "gate": one
    that raises once ``env.GATE`` is set."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        env.LOG.append(env.CLOCK.monotonic())
        how = env.PLAN["how"]
        if how == "raise":
            raise ValueError("no configuration")
        if how == "block":

            async def setup() -> None:
                raise ValueError("setup failed")

            ctx.block_concurrency_while(setup)
        elif how == "hang":
            ctx.block_concurrency_while(asyncio.Event().wait)
        elif how == "gate":

            async def gated() -> None:
                await env.GATE.wait()
                raise ValueError("setup failed")

            ctx.block_concurrency_while(gated)

    async def ping(self) -> str:
        return "pong"

    async def set_alarm_in(self, seconds: float) -> None:
        await self.ctx.storage.set_alarm(self.env.CLOCK.time() * 1000 + seconds * 1000)

    async def alarm(self, info: Any) -> None:
        self.env.PLAN["alarms"] = self.env.PLAN.get("alarms", 0) + 1

    async def fetch(self, request: Request) -> Response:
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server)
        return Response(status=101, web_socket=client)


@dataclass
class Rig:
    runtime: Runtime
    clock: FakeClock
    plan: dict[str, Any]
    log: list[float]  # the clock's time at every construction (attempted)
    gate: asyncio.Event

    @property
    def constructions(self) -> int:
        return len(self.log)

    def stub(self, name: str = "x") -> Any:
        return self.runtime.env.FRAGILE.get_by_name(name)

    def host(self, name: str = "x") -> ObjectHost:
        ns = self.runtime.env.FRAGILE
        return self.runtime.host(ns, ns.id_from_name(name))

    async def attempt(self, call: Awaitable[Any]) -> DurableObjectStartError:
        """The error ``call`` fails with (for "hang": once the 30 s have passed)."""
        if self.plan["how"] == "hang":
            await settle()  # the constructor ran as the call was delivered; its block waits
            self.clock.advance(BLOCK_CONCURRENCY_TIMEOUT)
        with pytest.raises(DurableObjectStartError) as info:
            await asyncio.wait_for(call, RECV)
        return info.value


def make(how: str, storage: SqliteDriver | None = None) -> Rig:
    clock = FakeClock()
    plan: dict[str, Any] = {"how": how}
    log: list[float] = []
    gate = asyncio.Event()
    runtime = Runtime(
        bindings={"FRAGILE": Fragile},
        vars={"PLAN": plan, "LOG": log, "CLOCK": clock, "GATE": gate},
        clock=clock,
        idle_timeout=IDLE,
        storage=storage,
        rng=random.Random(7),
    )
    return Rig(runtime, clock, plan, log, gate)


async def settle() -> None:
    """Let every task that can run, run (a bounded number of loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- the caller is told, and the next event tries again -------------------------------------------


@pytest.mark.parametrize("how", ["raise", "block", "hang"])
async def test_the_caller_gets_an_error_that_says_the_object_failed_to_start_and_why(
    how: str,
) -> None:
    rig = make(how)
    error = await rig.attempt(rig.stub().ping())
    assert isinstance(error, DurableObjectError)
    text = str(error)
    assert "Fragile(" in text and "failed to start" in text and WHY[how] in text
    assert WHY[how] in error.reason
    assert error.retryable is True and error.remote is False and error.retry_after == 0
    await settle()
    assert rig.constructions == 1  # and no more: nothing tries again until the next event
    assert rig.host().state is Lifecycle.BROKEN


@pytest.mark.parametrize("how", ["raise", "block", "hang"])
async def test_the_next_event_constructs_the_object_again(how: str) -> None:
    rig = make(how)
    await rig.attempt(rig.stub().ping())
    rig.plan["how"] = "ok"
    assert await asyncio.wait_for(rig.stub().ping(), RECV) == "pong"
    assert rig.constructions == 2
    assert rig.host().state is Lifecycle.ACTIVE


@pytest.mark.parametrize("how", ["raise", "block"])
async def test_repeated_failures_back_off_and_a_success_clears_the_back_off(how: str) -> None:
    rig = make(how)
    stub = rig.stub()
    # After the n-th failure in a row, events fail fast for this long (then one constructs).
    windows = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert [start_backoff(n) for n in range(1, 9)] == windows
    assert MAX_START_BACKOFF == 30.0
    for n, window in enumerate(windows, 1):
        error = await rig.attempt(stub.ping())
        assert rig.constructions == n
        assert error.retry_after == window
        if window:
            assert f"the next attempt is in {window:g} s" in str(error)
            rig.clock.advance(window - 0.25)
            fast = await rig.attempt(stub.ping())
            assert rig.constructions == n, "an event inside the back-off window constructed"
            assert fast.retry_after == pytest.approx(0.25)
            assert f"failed to start {n} times in a row" in str(fast)
            assert WHY[how] in str(fast) and "the next attempt is in 0.25 s" in str(fast)
            rig.clock.advance(0.25)

    rig.plan["how"] = "ok"
    assert await asyncio.wait_for(stub.ping(), RECV) == "pong"
    rig.host().reset("a test resets the object")
    rig.plan["how"] = how
    # A success forgot the earlier failures: the schedule starts over.
    assert (await rig.attempt(stub.ping())).retry_after == 0
    assert (await rig.attempt(stub.ping())).retry_after == 1.0
    assert rig.constructions == len(windows) + 3


async def test_every_event_waiting_for_the_start_fails_with_it_and_nothing_loops() -> None:
    rig = make("gate")
    calls = [rig.stub().ping() for _ in range(5)]
    calls.append(rig.stub().fetch("http://do/"))
    await wait_for(lambda: rig.constructions == 1)
    await settle()
    assert not any(call.done() for call in calls)
    assert rig.host().statistics()["queued"] == 6

    rig.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), RECV)
    assert [type(result) for result in results] == [DurableObjectStartError] * 6
    await settle()
    assert rig.constructions == 1
    assert rig.host().statistics()["queued"] == 0


@pytest.mark.parametrize("how", ["raise", "block"])
async def test_the_hibernatable_websockets_of_an_object_that_fails_to_start_close_with_1011(
    how: str,
) -> None:
    rig = make("ok")
    closes: dict[str, list[tuple[int, str]]] = {"a": [], "b": []}
    clients: dict[str, WebSocket] = {}
    for name in closes:
        response = await rig.stub().fetch("http://do/ws")
        client = response.web_socket
        assert isinstance(client, WebSocket)

        def closed(event: Any, name: str = name) -> None:
            assert isinstance(event, CloseEvent)
            closes[name].append((event.code, event.reason))

        client.add_event_listener("close", closed)
        client.accept()
        clients[name] = client
    host = rig.host()
    await wait_for(host.is_idle)
    host.evict()
    assert host.state is Lifecycle.HIBERNATED

    rig.plan["how"] = how
    clients["a"].send("wake up")
    await wait_for(lambda: closes["a"] and closes["b"])
    expected = [(1011, "Durable Object failed to start")]
    assert closes == {"a": expected, "b": expected}
    assert host.state is Lifecycle.BROKEN and host.statistics()["hibernatable_sockets"] == 0
    await settle()
    assert rig.constructions == 2


@pytest.mark.parametrize("how", ["raise", "block", "hang"])
async def test_the_alarm_of_an_object_that_fails_to_start_follows_the_retry_schedule(
    how: str, tmp_path: Path
) -> None:
    rig = make("ok", SqliteDriver(tmp_path / "state"))
    await asyncio.wait_for(rig.stub().set_alarm_in(1.0), RECV)
    host = rig.host()
    await wait_for(host.is_idle)
    host.evict()
    rig.plan["how"] = how

    rig.clock.advance(1.0)
    await wait_for(lambda: rig.constructions >= 2)
    for _ in range(200):  # the clock jumps timer by timer: retries, timeouts, evictions
        await settle()
        if not rig.runtime.alarms.runs:
            break
        assert rig.constructions <= 8, "the alarm runs more often than its retries allow"
        assert rig.clock.jump(), "the alarm waits, but not for the clock"
    assert not rig.runtime.alarms.runs

    # The first attempt and 6 retries, 2 s apart, doubling (±25%), then it is given up.
    starts = rig.log[1:]
    assert len(starts) == 7
    hang = BLOCK_CONCURRENCY_TIMEOUT if how == "hang" else 0.0
    for retry, (before, after) in enumerate(zip(starts, starts[1:], strict=False), 1):
        assert 0.75 * 2**retry <= after - before - hang <= 1.25 * 2**retry
    assert list(rig.runtime.storage_driver.scan_alarms()) == []
    assert "alarms" not in rig.plan
    rig.clock.advance(3600)
    await settle()
    assert rig.constructions == 8


# -- the lifecycle essay and the table ------------------------------------------------------------


def test_the_lifecycle_diagram_in_the_essay_is_the_transition_table() -> None:
    essay = opendo.core.lifecycle.__doc__
    assert essay is not None
    drawn: dict[tuple[Lifecycle, str], Lifecycle] = {}
    edge = re.compile(r"^ {4}([A-Z|]+) +--([a-z]+)--> +([A-Z]+|\(same\))(?: |$)")
    for line in essay.splitlines():
        if match := edge.match(line):
            sources, action, target = match.groups()
            for source in sources.split("|"):
                state = Lifecycle[source]
                assert (state, action) not in drawn, f"drawn twice: {source} --{action}-->"
                drawn[(state, action)] = state if target == "(same)" else Lifecycle[target]
    assert drawn == TRANSITIONS
    for state in Lifecycle:
        assert state.name in essay


# -- over HTTP, with the real server --------------------------------------------------------------

PROJECT_TOML = """\
name = "fragile"
main = "worker.py"

[[durable_objects.bindings]]
name = "FRAGILE"
class_name = "Fragile"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Fragile"]
"""

PROJECT_WORKER = '''\
"""GET /<name>/arm stores a mark (and an alarm 2 s away) that makes the object fail to start
from then on; the object named "broken" always fails to start."""

import time

from opendo import DurableObject, Response, WorkerEntrypoint


class Fragile(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        ctx.block_concurrency_while(self.setup)

    async def setup(self):
        if self.ctx.id.name == "broken" or await self.ctx.storage.get("broken"):
            raise RuntimeError("setup found the object marked broken")

    async def fetch(self, request):
        if request.path.endswith("/arm"):
            due = int(request.query.split("=")[1])
            await self.ctx.storage.put("broken", True)
            await self.ctx.storage.set_alarm(due)
        return Response("ok")

    async def alarm(self, info):
        pass


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = request.path.split("/")[1]
        return await self.env.FRAGILE.get_by_name(name).fetch(request)
'''

FAILED = re.compile(r" opendo: Fragile\([0-9a-f]+\) failed to start")  # the log line
MAX_LINES = 200  # what a few failures may log, tracebacks included; a loop logs far more


def failures(lines: list[str]) -> int:
    return sum(bool(FAILED.search(line)) for line in lines)


def write_project(root: Path) -> Path:
    root.mkdir()
    (root / "opendo.toml").write_text(PROJECT_TOML)
    (root / "worker.py").write_text(PROJECT_WORKER)
    return root


def get(port: int, path: str) -> tuple[int, str, float]:
    """(status, body, seconds it took); the client gives up after 5 s."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode(), time.monotonic() - started


def read_stderr_until(server: OpendoProcess, count: int, within: float) -> list[str]:
    """Stderr lines until ``count`` lines say the object failed to start (or the bound on
    lines is passed, or the deadline)."""
    deadline = time.monotonic() + within
    lines = list(server.stderr_lines)
    while failures(lines) < count and len(lines) <= MAX_LINES:
        line = server.next_line("stderr", deadline)
        if line is None:
            break
        lines.append(line)
    return lines


def test_over_http_a_failing_start_answers_503_at_once_logs_little_and_sigterm_stops_it(
    tmp_path: Path,
) -> None:
    project = write_project(tmp_path / "project")
    args = ("serve", project, "--port", "0", "--persist-to", tmp_path / "state")
    with run_opendo(*args) as server:
        port = server.wait_ready()
        answers = [get(port, "/broken/") for _ in range(3)]
        assert [status for status, _, _ in answers] == [503, 503, 503]
        assert all("failed to start" in body for _, body, _ in answers), answers
        assert all(seconds < 2.0 for _, _, seconds in answers), answers
        assert all("Traceback" not in body for _, body, _ in answers)
        assert get(port, "/fine/")[:2] == (200, "ok")  # other objects carry on

        # Two constructions (the second event tries again at once), the third fails fast.
        lines = read_stderr_until(server, 2, RECV)
        assert len(lines) <= MAX_LINES, f"{len(lines)} lines on stderr: {lines[-5:]}"
        assert failures(lines) == 2, "".join(lines)
        assert "setup found the object marked broken" in "".join(lines)
        assert server.stop(signal.SIGTERM) == 0
        rest = server.drain_stderr()
    assert failures(rest.splitlines()) == 2
    assert len(rest.splitlines()) <= MAX_LINES


def test_a_stored_alarm_of_an_object_that_fails_to_start_retries_slowly_and_sigterm_stops_it(
    tmp_path: Path,
) -> None:
    project = write_project(tmp_path / "project")
    # The alarm must come due after the first server is gone (killed right after the answer).
    for margin in (2.0, 5.0, 10.0):
        persist = tmp_path / f"state-{margin}"
        args = ("serve", project, "--port", "0", "--persist-to", persist)
        with run_opendo(*args) as first:
            port = first.wait_ready()
            due = round((time.time() + margin) * 1000)
            assert get(port, f"/a/arm?due={due}")[:2] == (200, "ok")
            first.stop(signal.SIGKILL)
        if time.time() * 1000 < due:
            break
    assert time.time() * 1000 < due, "the first server could not be stopped before the alarm"

    with run_opendo(*args) as second:
        second.wait_ready()
        # The alarm's first attempt, then its first retry 2 s (±25%) later; no loop between.
        lines = read_stderr_until(second, 2, margin + 2.5 + RECV)
        assert len(lines) <= MAX_LINES, f"{len(lines)} lines on stderr: {lines[-5:]}"
        assert failures(lines) == 2, "".join(lines)
        started = time.monotonic()
        assert second.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < STOP_DEADLINE
        rest = second.drain_stderr()
    assert len(rest.splitlines()) <= MAX_LINES
