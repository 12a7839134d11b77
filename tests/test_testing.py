"""opendo.testing, the pytest plugin, used as a user would use it.

Each test writes a small user project into pytester's directory — an ``opendo.toml`` and a
``worker.py`` (a ``Counter`` object), a copy of ``examples/chat``, a ``pytest.ini`` in
pytest-asyncio's auto mode with warnings as errors, and test files that use the ``opendo``
fixture — and runs pytest on it in a child process of this venv's Python, where the plugin
comes from its ``pytest11`` entry point exactly as it does for users. The outcomes say
whether the fixture keeps its promises; a failing inner test shows its output here.
"""

from __future__ import annotations

import shutil
from importlib.metadata import entry_points
from textwrap import dedent

import pytest
from conftest import CHAT

import opendo.testing

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

TOML = """
name = "counter"
main = "worker.py"

[vars]
GREETING = "hello"

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Counter"]
"""

WORKER = """
from opendo import DurableObject, Response, WebSocketPair, WorkerEntrypoint

builds = []  # the name of every instance constructed, in order
alarm_runs = []  # the retry_count of every alarm run
failing = {"alarms": 0}  # how many alarm runs are still to fail


class Counter(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        builds.append(ctx.id.name)
        self.calls = 0  # in memory only: a new instance starts again

    async def increment(self, by=1):
        self.calls += 1
        value = (await self.ctx.storage.get("value") or 0) + by
        await self.ctx.storage.put("value", value)
        return value

    def constructed(self):
        return list(builds)

    async def set_alarm(self, epoch_ms):
        await self.ctx.storage.set_alarm(epoch_ms)

    def fail_alarms(self, times):
        failing["alarms"] = times

    def alarms_run(self):
        return list(alarm_runs)

    async def alarm(self, info):
        alarm_runs.append(info.retry_count)
        if failing["alarms"]:
            failing["alarms"] -= 1
            raise RuntimeError("this alarm fails")
        await self.ctx.storage.put("alarmed", True)

    async def fetch(self, request):
        if request.headers.get("upgrade") != "websocket":
            return Response(f"{self.ctx.id.name}: {await self.increment()}")
        client, server = WebSocketPair()
        if "standard" in request.query:
            server.accept()
            server.add_event_listener("message", lambda event: server.send("echo:" + event.data))
        else:
            self.ctx.accept_websocket(server)
            server.serialize_attachment({"joined_instance": len(builds)})
        return Response(status=101, web_socket=client)

    async def web_socket_message(self, ws, message):
        joined = ws.deserialize_attachment()["joined_instance"]
        ws.send(f"{message} (instance {len(builds)}, joined {joined})")

    async def web_socket_close(self, ws, code, reason, was_clean):
        ws.close(code, reason)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = request.path.strip("/")
        if not name:
            return Response(f"{self.env.GREETING} from the Worker")
        if name == "boom":
            raise ValueError("the Worker failed")
        return await self.env.COUNTER.get_by_name(name).fetch(request)
"""

PROJECT_FIXTURE = """
import pytest


@pytest.fixture
def project(opendo):
    return opendo()  # the rootdir's opendo.toml
"""


@pytest.fixture
def user(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user's project: the Counter project at the root, the chat in examples/chat."""
    pytester.makeini(INI)
    (pytester.path / "opendo.toml").write_text(TOML)
    (pytester.path / "worker.py").write_text(WORKER)
    shutil.copytree(
        CHAT,
        pytester.path / "examples" / "chat",
        ignore=shutil.ignore_patterns(".opendo", "__pycache__"),
    )
    pytester.makeconftest(PROJECT_FIXTURE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a child process of this venv's Python (pytester uses sys.executable)."""
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args, timeout=60)


def examples_of_the_docs() -> list[str]:
    """The literal blocks (``::``) of opendo.testing's docstring: its worked examples."""
    doc = opendo.testing.__doc__
    assert doc is not None
    blocks: list[str] = []
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if not line.endswith("::"):
            continue
        block = []
        for text in lines[i + 1 :]:
            if text and not text.startswith("    "):
                break
            block.append(text)
        blocks.append(dedent("\n".join(block)).strip() + "\n")
    return blocks


def test_async_tests_run_without_an_asyncio_plugin(pytester: pytest.Pytester) -> None:
    """No pytest-asyncio (``-p no:asyncio``), no configuration: the testing guide's kind of async
    test that uses the fixture still runs, and can fail."""
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    (pytester.path / "opendo.toml").write_text(TOML)
    (pytester.path / "worker.py").write_text(WORKER)
    pytester.makepyfile(
        test_plain="""
        async def test_counts(opendo):
            project = opendo()
            response = await project.fetch("/a")
            assert response.status == 200

        async def test_fails(opendo):
            project = opendo()
            assert (await project.fetch("/")).status == 418
        """
    )
    result = run(pytester, "-p", "no:asyncio")
    result.assert_outcomes(passed=1, failed=1)


# -- the plugin ------------------------------------------------------------------------------


def test_the_plugin_is_registered_with_pytest() -> None:
    [plugin] = [ep for ep in entry_points(group="pytest11") if ep.name == "opendo"]
    assert plugin.value == "opendo.testing"


def test_it_defines_a_fixture_and_leaves_other_tests_alone(
    pytester: pytest.Pytester,
) -> None:
    # pytest-asyncio's strict mode: async tests are marked, fixtures are plain.
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    pytester.makepyfile(
        test_plain="""
        import pytest

        def test_unrelated():
            assert True

        @pytest.mark.asyncio
        async def test_async_in_strict_mode(opendo):
            project = opendo(bindings={})
            assert (await project.fetch("/")).status == 404  # no Worker
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    fixtures = run(pytester, "--fixtures")
    fixtures.stdout.fnmatch_lines(
        ["opendo -- *opendo/testing/__init__.py*", "*Build in-process opendo*"]
    )
    hooks = [name for name in vars(opendo.testing) if name.startswith("pytest_")]
    assert hooks == ["pytest_pyfunc_call"]  # only for async tests of the fixture, see below


# -- requests --------------------------------------------------------------------------------


def test_fetch_through_the_worker_rpc_and_projects_from_classes(user: pytest.Pytester) -> None:
    user.makepyfile(
        test_requests="""
        import pytest

        from opendo import DurableObject, Request, Response, WorkerEntrypoint


        async def test_fetch_goes_through_the_worker(project):
            response = await project.fetch("/")
            assert (response.status, await response.text()) == (200, "hello from the Worker")
            assert await (await project.fetch("/a")).text() == "a: 1"
            assert await (await project.fetch("http://example.com/a?x=1")).text() == "a: 2"
            request = Request("https://example.com/b", method="POST", body="x")
            assert await (await project.fetch(request)).text() == "b: 1"


        async def test_errors_of_the_worker_reach_the_test(project):
            with pytest.raises(ValueError, match="the Worker failed"):
                await project.fetch("/boom")


        async def test_rpc(project):
            stub = project.env.COUNTER.get_by_name("rpc")
            assert [await stub.increment(), await stub.increment(5)] == [1, 6]
            assert await stub.constructed() == ["rpc"]


        async def test_vars_can_be_overridden(opendo):
            project = opendo(vars={"GREETING": "hi"})
            assert await (await project.fetch("/")).text() == "hi from the Worker"


        class Greeter(DurableObject):
            async def greet(self, who):
                return f"{self.env.PREFIX}, {who}"


        class Front(WorkerEntrypoint):
            async def fetch(self, request):
                greeter = self.env.GREETER.get_by_name("g")
                return Response(await greeter.greet(request.path[1:]))


        async def test_a_project_from_classes(opendo):
            project = opendo(bindings={"GREETER": Greeter}, worker=Front, vars={"PREFIX": "Hi"})
            assert await (await project.fetch("/ada")).text() == "Hi, ada"
            assert await project.env.GREETER.get_by_name("x").greet("bob") == "Hi, bob"


        def test_path_and_classes_do_not_mix(opendo):
            with pytest.raises(TypeError):
                opendo("opendo.toml", bindings={"GREETER": Greeter})
        """
    )
    run(user).assert_outcomes(passed=6)


# -- storage and alarms ------------------------------------------------------------------------


def test_storage_and_alarms_are_isolated_between_tests(user: pytest.Pytester) -> None:
    user.makepyfile(
        test_isolation="""
        import pytest


        async def test_1_writes_a_value_and_sets_an_alarm(project):
            stub = project.env.COUNTER.get_by_name("shared")
            assert await stub.increment() == 1
            assert await stub.increment() == 1 + 1
            await stub.set_alarm(project.clock.time() * 1000 + 60_000)


        async def test_2_sees_neither(project):
            assert await project.list_durable_object_ids("COUNTER") == []
            stub = project.env.COUNTER.get_by_name("shared")
            assert await project.run_durable_object_alarm(stub) is False
            assert await stub.increment() == 1
            assert await stub.constructed() == ["shared"]  # the module is imported afresh
            await project.advance(3600)
            assert await stub.alarms_run() == []


        @pytest.mark.xfail(strict=True, reason="proves that a leak would be seen")
        async def test_3_would_see_a_leak(project):
            assert await project.env.COUNTER.get_by_name("shared").increment() == 3


        async def test_two_projects_on_one_storage_are_a_restart(opendo, tmp_path):
            first = opendo(persist_to=tmp_path / "state")
            stub = first.env.COUNTER.get_by_name("kept")
            assert await stub.increment() == 1
            await stub.set_alarm(first.clock.time() * 1000 + 60_000)
            await first.aclose()

            second = opendo(persist_to=tmp_path / "state")
            stub = second.env.COUNTER.get_by_name("kept")
            await second.advance(61)  # the stored alarm was scheduled when it started
            assert await stub.alarms_run() == [0]
            assert await stub.increment() == 2
        """
    )
    run(user).assert_outcomes(passed=3, xfailed=1)


def test_alarms_with_the_fake_clock(user: pytest.Pytester) -> None:
    user.makepyfile(
        test_alarms="""
        async def test_an_alarm_runs_when_the_clock_reaches_it(project):
            stub = project.env.COUNTER.get_by_name("a")
            await stub.set_alarm(project.clock.time() * 1000 + 60_000)
            await project.advance(59.999)
            assert await stub.alarms_run() == []
            await project.advance(0.001)  # returns once the handler is done
            assert await stub.alarms_run() == [0]
            alarmed = await project.run_in_durable_object(
                stub, lambda counter, ctx: ctx.storage.kv.get("alarmed")
            )
            assert alarmed is True
            get_alarm = lambda counter, ctx: ctx.storage.get_alarm()  # an awaitable
            assert await project.run_in_durable_object(stub, get_alarm) is None


        async def test_run_durable_object_alarm(project):
            stub = project.env.COUNTER.get_by_name("b")
            assert await project.run_durable_object_alarm(stub) is False
            await stub.set_alarm(project.clock.time() * 1000 + 3_600_000)
            assert await project.run_durable_object_alarm(stub) is True  # not due: run anyway
            assert await stub.alarms_run() == [0]
            assert await project.run_durable_object_alarm(stub) is False
            await project.advance(7200)
            assert await stub.alarms_run() == [0]


        async def test_a_failed_alarm_is_retried_on_the_fake_clock(project):
            stub = project.env.COUNTER.get_by_name("c")
            await stub.fail_alarms(1)
            await stub.set_alarm(project.clock.time() * 1000)
            await project.advance(0)  # it runs and fails; the retry waits 2 s +- 25%
            assert await stub.alarms_run() == [0]
            await project.advance(1.4)
            assert await stub.alarms_run() == [0]
            await project.advance(1.2)
            assert await stub.alarms_run() == [0, 1]
        """
    )
    run(user).assert_outcomes(passed=3)


# -- inside objects ----------------------------------------------------------------------------


def test_run_in_durable_object_and_list_durable_object_ids(user: pytest.Pytester) -> None:
    user.makepyfile(
        test_inside="""
        import pytest


        async def test_run_in_durable_object_sees_the_instance_and_its_ctx(project):
            stub = project.env.COUNTER.get_by_name("inside")
            await stub.increment()
            await stub.increment()
            assert await project.run_in_durable_object(stub, lambda c, ctx: c.calls) == 2

            async def peek(counter, ctx):
                return ctx.id.name, await ctx.storage.get("value")

            assert await project.run_in_durable_object(stub, peek) == ("inside", 2)
            await project.run_in_durable_object(stub, lambda c, ctx: ctx.storage.kv.put("value", 9))
            assert await stub.increment() == 10

            def fail(counter, ctx):
                raise KeyError("nope")

            with pytest.raises(KeyError, match="nope"):
                await project.run_in_durable_object(stub, fail)


        async def test_list_durable_object_ids_with_names(project):
            ns = project.env.COUNTER
            assert await project.list_durable_object_ids("COUNTER") == []
            await ns.get_by_name("b").increment()
            await ns.get_by_name("a").increment()
            unique = ns.new_unique_id()
            await ns.get(unique).increment()
            ids = await project.list_durable_object_ids(ns)
            assert [id.name for id in ids] == ["a", "b", None]
            assert ids == [ns.id_from_name("a"), ns.id_from_name("b"), unique]

            assert await project.evict_all() == 3
            stored = await project.list_durable_object_ids("COUNTER")
            assert stored == ids and [id.name for id in stored] == ["a", "b", None]

            # An object that stored nothing is there while it is live, and only then.
            await project.run_in_durable_object(ns.get_by_name("c"), lambda c, ctx: None)
            names = [id.name for id in await project.list_durable_object_ids(ns)]
            assert names == ["a", "b", "c", None]
            await project.evict_all()
            names = [id.name for id in await project.list_durable_object_ids(ns)]
            assert names == ["a", "b", None]

            with pytest.raises(KeyError, match="NOPE"):
                await project.list_durable_object_ids("NOPE")
        """
    )
    run(user).assert_outcomes(passed=2)


# -- eviction --------------------------------------------------------------------------------


def test_evict_and_reconstruct(user: pytest.Pytester) -> None:
    user.makepyfile(
        test_evict="""
        import pytest


        async def test_evict_drops_the_instance_and_keeps_its_storage(project):
            stub = project.env.COUNTER.get_by_name("e")
            assert await stub.increment() == 1
            assert await project.evict(stub) is True
            assert await project.evict(stub) is False  # nothing live to evict
            assert await stub.increment() == 2  # from storage, in a new instance
            assert await project.run_in_durable_object(stub, lambda c, ctx: c.calls) == 1
            assert await stub.constructed() == ["e", "e"]


        async def test_evict_all_and_the_idle_timeout(opendo):
            project = opendo(idle_timeout=30)
            a, b = project.env.COUNTER.get_by_name("a"), project.env.COUNTER.get_by_name("b")
            await a.increment()
            await b.increment()
            assert await project.evict_all() == 2
            assert await project.evict_all() == 0
            await a.increment()
            await project.advance(29)
            assert await project.run_in_durable_object(a, lambda c, ctx: c.calls) == 1
            await project.advance(31)  # idle for 30 s since the last event
            assert await project.run_in_durable_object(a, lambda c, ctx: c.calls) == 0
            assert await a.constructed() == ["a", "b", "a", "a"]


        async def test_an_object_with_a_standard_websocket_stays(project):
            async with project.websocket("/std?standard") as ws:
                ws.send("hi")
                assert await ws.receive() == "echo:hi"
                with pytest.raises(RuntimeError, match="standard WebSocket"):
                    await project.evict(project.env.COUNTER.get_by_name("std"))
                assert await project.evict_all() == 0
                ws.send("again")
                assert await ws.receive() == "echo:again"
            assert ws.closed
        """
    )
    run(user).assert_outcomes(passed=3)


def test_evict_with_a_hibernatable_websocket_connected(user: pytest.Pytester) -> None:
    user.makepyfile(
        test_hibernation="""
        import pytest

        from opendo.testing import WebSocketClosed, WebSocketRejected


        async def test_the_socket_stays_open_and_reaches_the_new_instance(project):
            stub = project.env.COUNTER.get_by_name("room")
            ws = await project.websocket("/room")
            ws.send("one")
            assert await ws.receive() == "one (instance 1, joined 1)"

            assert await project.evict(stub) is True
            assert not ws.closed
            ws.send("two")
            assert await ws.receive() == "two (instance 2, joined 1)"

            assert await project.evict_all() == 1
            ws.send("three")
            assert await ws.receive() == "three (instance 3, joined 1)"

            await project.advance(10)  # [runtime] hibernation_timeout: it hibernates
            ws.send("four")
            assert await ws.receive() == "four (instance 4, joined 1)"
            assert await project.list_durable_object_ids("COUNTER") == [stub.id]

            ws.close(3000, "bye")  # web_socket_close answers
            assert await ws.wait_closed() == (3000, "bye")
            with pytest.raises(WebSocketClosed):
                await ws.receive()
            with pytest.raises(WebSocketClosed):
                ws.send("gone")


        async def test_receive_times_out_and_handshakes_can_be_refused(project):
            ws = await project.websocket("ws://localhost/quiet")
            with pytest.raises(TimeoutError):
                await ws.receive(within=0.05)
            with pytest.raises(WebSocketRejected) as refused:
                await project.websocket("/")
            assert refused.value.status == 200
        """
    )
    run(user).assert_outcomes(passed=2)


# -- the chat example, and the docs ----------------------------------------------------------


def test_the_worked_examples_of_the_docs_pass(user: pytest.Pytester) -> None:
    chat, reminder = examples_of_the_docs()
    assert chat.startswith("# tests/test_chat.py") and 'opendo("examples/chat")' in chat
    assert reminder.startswith("# tests/test_reminder.py")
    user.makepyfile(test_chat=chat, test_reminder=reminder)
    run(user).assert_outcomes(passed=3)


def test_the_chat_over_the_in_process_client(user: pytest.Pytester) -> None:
    user.makepyfile(
        test_chat_more="""
        import pytest


        @pytest.fixture
        def chat(opendo):
            return opendo("examples/chat", vars={"MESSAGES_PER_SECOND": 0})


        async def join(chat, room="lobby"):
            ws = await chat.websocket(f"/{room}")
            greeting, history, presence = [await ws.receive_json() for _ in range(3)]
            return ws, greeting["id"], history, presence


        async def test_greeting_history_presence_and_broadcast(chat):
            ada, ada_id, history, presence = await join(chat)
            assert (ada_id, history) == (1, {"type": "history", "messages": []})
            ada.send_json({"type": "name", "name": "Ada"})
            assert await ada.receive_json() == {
                "type": "rename", "user": {"id": 1, "name": "Ada"}
            }
            ada.send_json({"text": "first"})
            assert (await ada.receive_json())["text"] == "first"

            bob, bob_id, history, presence = await join(chat)
            assert bob_id == 2
            [message] = history["messages"]
            assert (message["from"], message["name"], message["text"]) == (1, "Ada", "first")
            assert presence == {
                "type": "presence",
                "users": [{"id": 1, "name": "Ada"}, {"id": 2, "name": None}],
                "count": 2,
            }
            assert await ada.receive_json() == {"type": "join", "user": {"id": 2, "name": None}}

            bob.send_json({"from": 99, "text": "hi all"})  # "from" is the server's to say
            for ws in (ada, bob):
                frame = await ws.receive_json()
                assert (frame["from"], frame["text"], frame["name"]) == (2, "hi all", None)

            bob.send_json({"type": "dance"})
            assert (await bob.receive_json())["error"] == "unknown_type"
            assert ada.drain() == []  # only the sender hears of it

            bob.disconnect()  # a lost connection: the room announces the leave
            assert await ada.receive_json() == {"type": "leave", "user": {"id": 2, "name": None}}

            carol, carol_id, _, presence = await join(chat, "elsewhere")
            assert carol_id == 1 and presence["count"] == 1  # another room, its own object
            ids = await chat.list_durable_object_ids("CHAT")
            assert [id.name for id in ids] == ["elsewhere", "lobby"]


        async def test_assets_come_first_as_on_the_server(chat):
            script = await chat.fetch("/chat.js")
            assert script.status == 200
            assert "javascript" in script.headers["content-type"]
            page = await chat.fetch("/lobby", headers={"sec-fetch-mode": "navigate"})
            assert page.status == 200 and b"<html" in page.body.lower()
            plain = await chat.fetch("/lobby")  # not a navigation: the Worker, then the room
            assert (plain.status, await plain.text()) == (426, "Expected upgrade: websocket")
        """
    )
    run(user).assert_outcomes(passed=2)
