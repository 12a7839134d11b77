"""The object host, driven directly: no sockets, a fake clock."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from opendo import (
    DurableObject,
    DurableObjectError,
    DurableObjectResetError,
    DurableObjectStartError,
    FakeClock,
    Request,
    Response,
    Runtime,
)
from opendo.runtime.host import ObjectHost

constructed: list[str] = []


class Counter(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        constructed.append(str(ctx.id))
        self.value = 0
        self.log: list[Any] = []

    async def increment(self) -> int:
        self.value += 1
        return self.value

    async def record(self, item: Any, pause: int = 0) -> None:
        self.log.append(item)
        for _ in range(pause):
            await asyncio.sleep(0)

    async def read_modify_write(self) -> int:
        # What a storage read does: hold the input gate while the "I/O" is in flight.
        lock = self.ctx._host.input_gate.lock()
        value = self.value
        for _ in range(3):
            await asyncio.sleep(0)
        lock.release()
        self.value = value + 1
        return self.value

    async def fail(self, message: str) -> None:
        raise ValueError(message)

    def sync_method(self, x: int) -> int:
        return x * 2

    async def fetch(self, request: Request) -> Response:
        return Response(f"{request.method} {request.path} #{self.value}")


@pytest.fixture(autouse=True)
def _reset_log() -> None:
    constructed.clear()


def make_runtime(clock: FakeClock | None = None, idle_timeout: float = 10.0) -> Runtime:
    return Runtime(bindings={"COUNTER": Counter}, clock=clock, idle_timeout=idle_timeout)


def host_of(runtime: Runtime, name: str) -> ObjectHost:
    ns = runtime.env.COUNTER
    return runtime.host(ns, ns.id_from_name(name))


async def test_200_concurrent_first_calls_construct_the_object_once() -> None:
    runtime = make_runtime()
    stubs = [runtime.env.COUNTER.get_by_name("new") for _ in range(200)]
    results = await asyncio.gather(*(s.increment() for s in stubs))
    assert sorted(results) == list(range(1, 201))
    assert len(constructed) == 1
    assert host_of(runtime, "new").constructions == 1


async def test_objects_are_independent() -> None:
    runtime = make_runtime()
    a, b = runtime.env.COUNTER.get_by_name("a"), runtime.env.COUNTER.get_by_name("b")
    assert [await a.increment(), await a.increment(), await b.increment()] == [1, 2, 1]
    assert len(constructed) == 2


async def test_the_object_knows_its_id_and_name() -> None:
    runtime = make_runtime()
    stub = runtime.env.COUNTER.get_by_name("lobby")
    await stub.increment()
    instance = host_of(runtime, "lobby").instance
    assert instance is not None
    assert instance.ctx.id == stub.id and instance.ctx.id.name == "lobby" == stub.name


async def test_calls_on_one_stub_are_delivered_in_order() -> None:
    runtime = make_runtime()
    stub = runtime.env.COUNTER.get_by_name("order")
    await asyncio.gather(*(stub.record(i, pause=(7 * i) % 5) for i in range(50)))
    instance = host_of(runtime, "order").instance
    assert instance is not None and instance.log == list(range(50))


async def test_a_locked_input_gate_holds_new_events_until_released() -> None:
    runtime = make_runtime()
    stub = runtime.env.COUNTER.get_by_name("gate")
    await stub.increment()
    host = host_of(runtime, "gate")
    lock = host.input_gate.lock()
    calls = [stub.record(i) for i in range(3)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert host.instance is not None and host.instance.log == []
    assert host.statistics()["queued"] == 3
    lock.release()
    await asyncio.gather(*calls)
    assert host.instance.log == [0, 1, 2]


async def test_read_modify_write_under_the_input_gate_loses_nothing() -> None:
    runtime = make_runtime()
    stub = runtime.env.COUNTER.get_by_name("rmw")
    results = await asyncio.gather(*(stub.read_modify_write() for _ in range(100)))
    assert sorted(results) == list(range(1, 101))
    assert await stub.increment() == 101


async def test_without_the_gate_interleaving_would_lose_updates() -> None:
    # The control for the test above: the same code without a lock loses increments, so
    # that test would fail if the gate did not hold events back.
    class Racy(DurableObject):
        value = 0

        async def rmw(self) -> None:
            value = self.value
            for _ in range(3):
                await asyncio.sleep(0)
            self.value = value + 1

        async def get(self) -> int:
            return self.value

    runtime = Runtime(bindings={"R": Racy})
    stub = runtime.env.R.get_by_name("x")
    await asyncio.gather(*(stub.rmw() for _ in range(50)))
    assert await stub.get() < 50


async def test_an_exception_reaches_only_its_caller_marked_remote() -> None:
    runtime = make_runtime()
    stub = runtime.env.COUNTER.get_by_name("err")
    ok1, failed, ok2 = await asyncio.gather(
        stub.increment(), stub.fail("boom"), stub.increment(), return_exceptions=True
    )
    assert (ok1, ok2) == (1, 2)
    assert isinstance(failed, ValueError) and str(failed) == "boom"
    assert failed.remote is True  # type: ignore[attr-defined]
    assert await stub.increment() == 3  # the object kept its state
    assert len(constructed) == 1


async def test_rpc_rejects_reserved_private_and_missing_methods() -> None:
    runtime = make_runtime()
    stub = runtime.env.COUNTER.get_by_name("rpc")
    for name in ("alarm", "web_socket_message", "web_socket_close", "_private"):
        with pytest.raises(AttributeError, match="cannot be called over RPC"):
            getattr(stub, name)
    with pytest.raises(TypeError, match="Counter has no public method 'nope'"):
        await stub.nope()
    assert await stub.sync_method(21) == 42


async def test_a_misspelt_rpc_method_names_the_closest_and_lists_the_methods() -> None:
    runtime = make_runtime()
    stub = runtime.env.COUNTER.get_by_name("rpc")
    with pytest.raises(TypeError) as caught:
        await stub.incremnt()
    message = str(caught.value)
    assert message.startswith("Counter has no public method 'incremnt' to call over RPC")
    assert "did you mean 'increment'?" in message
    assert "its methods: " in message and "sync_method" in message
    assert "_" + "private" not in message and "web_socket_message" not in message


async def test_stub_fetch_reaches_the_objects_fetch() -> None:
    runtime = make_runtime()
    stub = runtime.env.COUNTER.get_by_name("f")
    response = await stub.fetch("http://do/some/path", method="POST")
    assert response.status == 200 and await response.text() == "POST /some/path #0"
    with pytest.raises(TypeError, match="takes a Request or a url str"):
        stub.fetch(42)  # type: ignore[arg-type]


async def test_idle_objects_are_evicted_and_rebuilt_on_the_next_event() -> None:
    clock = FakeClock()
    runtime = make_runtime(clock, idle_timeout=10)
    stub = runtime.env.COUNTER.get_by_name("idle")
    assert await stub.increment() == 1
    clock.advance(9.9)
    assert len(runtime.live_hosts()) == 1
    assert await stub.increment() == 2  # activity restarts the idle timer
    clock.advance(9.9)
    assert len(runtime.live_hosts()) == 1
    clock.advance(0.2)
    assert runtime.live_hosts() == []
    assert await stub.increment() == 1  # a new instance: in-memory state is gone
    assert len(constructed) == 2


async def test_an_object_with_work_in_flight_is_not_evicted() -> None:
    clock = FakeClock()
    runtime = make_runtime(clock, idle_timeout=1)
    release = asyncio.Event()

    class Slow(DurableObject):
        async def wait(self) -> str:
            await release.wait()
            return "done"

    runtime = Runtime(bindings={"S": Slow}, clock=clock, idle_timeout=1)
    call = runtime.env.S.get_by_name("s").wait()
    await asyncio.sleep(0)
    clock.advance(100)
    assert len(runtime.live_hosts()) == 1
    release.set()
    assert await call == "done"
    clock.advance(1)
    assert runtime.live_hosts() == []


async def test_results_wait_at_the_output_gate() -> None:
    runtime = make_runtime()
    stub = runtime.env.COUNTER.get_by_name("out")
    await stub.increment()
    host = host_of(runtime, "out")
    write = host.output_gate.lock()
    call = stub.increment()
    for _ in range(10):
        await asyncio.sleep(0)
    assert host.instance is not None and host.instance.value == 2  # it ran...
    assert not call.done()  # ...but its result is held
    write.release()
    assert await call == 2


async def test_a_failed_write_turns_the_held_result_into_an_error() -> None:
    runtime = make_runtime()
    stub = runtime.env.COUNTER.get_by_name("broken")
    await stub.increment()
    host = host_of(runtime, "broken")
    write = host.output_gate.lock()
    call = stub.increment()
    await asyncio.sleep(0)
    write.fail(OSError("disk full"))
    with pytest.raises(DurableObjectResetError, match="disk full") as info:
        await call
    assert info.value.retryable is True


async def test_block_concurrency_while_in_the_constructor_holds_events() -> None:
    order: list[str] = []
    ready = asyncio.Event()

    class Loader(DurableObject):
        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            ctx.block_concurrency_while(self.load)

        async def load(self) -> None:
            await ready.wait()
            order.append("loaded")

        async def hello(self) -> str:
            order.append("hello")
            return "hi"

    runtime = Runtime(bindings={"L": Loader})
    call = runtime.env.L.get_by_name("x").hello()
    for _ in range(10):
        await asyncio.sleep(0)
    assert order == []
    ready.set()
    assert await call == "hi"
    assert order == ["loaded", "hello"]


async def test_a_failing_block_concurrency_while_of_the_constructor_fails_the_call() -> None:
    class Flaky(DurableObject):
        builds = 0

        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            type(self).builds += 1
            if type(self).builds == 1:
                ctx.block_concurrency_while(self.explode)

        async def explode(self) -> None:
            raise RuntimeError("init failed")

        async def hello(self) -> int:
            return type(self).builds

    runtime = Runtime(bindings={"F": Flaky})
    stub = runtime.env.F.get_by_name("x")
    with pytest.raises(DurableObjectStartError, match="init failed"):
        await stub.hello()
    assert await stub.hello() == 2


async def test_a_failing_constructor_fails_the_call_and_is_retried() -> None:
    class Fragile(DurableObject):
        attempts = 0

        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            type(self).attempts += 1
            if type(self).attempts == 1:
                raise RuntimeError("constructor failed")

        async def hello(self) -> str:
            return "hi"

    runtime = Runtime(bindings={"F": Fragile})
    stub = runtime.env.F.get_by_name("x")
    with pytest.raises(DurableObjectStartError, match="constructor failed"):
        await stub.hello()
    assert await stub.hello() == "hi"


async def test_abort_resets_the_object() -> None:
    class Abortable(DurableObject):
        def __init__(self, ctx: Any, env: Any) -> None:
            super().__init__(ctx, env)
            self.value = 0

        async def bump(self) -> int:
            self.value += 1
            return self.value

        async def stop(self) -> None:
            self.ctx.abort("enough")

    runtime = Runtime(bindings={"A": Abortable})
    stub = runtime.env.A.get_by_name("x")
    assert [await stub.bump(), await stub.bump()] == [1, 2]
    with pytest.raises(DurableObjectResetError, match="aborted: enough") as info:
        await stub.stop()
    assert info.value.remote is True  # type: ignore[attr-defined]
    assert await stub.bump() == 1


async def test_get_rejects_another_namespaces_id() -> None:
    class Other(DurableObject):
        pass

    runtime = Runtime(bindings={"COUNTER": Counter, "OTHER": Other})
    foreign = runtime.env.OTHER.id_from_name("x")
    with pytest.raises(ValueError, match="does not belong to namespace 'Counter'"):
        runtime.env.COUNTER.get(foreign)
    with pytest.raises(ValueError):
        runtime.env.COUNTER.id_from_string(str(foreign))
    same = runtime.env.COUNTER.id_from_string(str(runtime.env.COUNTER.id_from_name("x")))
    assert runtime.env.COUNTER.get(same).id == same


async def test_unique_ids_reach_distinct_objects() -> None:
    runtime = make_runtime()
    ns = runtime.env.COUNTER
    a, b = ns.get(ns.new_unique_id()), ns.get(ns.new_unique_id())
    assert await a.increment() == 1 and await b.increment() == 1
    again = ns.get(ns.id_from_string(str(a.id)))
    assert await again.increment() == 2


async def test_errors_are_durable_object_errors_with_flags() -> None:
    err = DurableObjectResetError("x")
    assert isinstance(err, DurableObjectError)
    assert (err.retryable, err.overloaded, err.remote) == (True, False, False)


# -- how an event starts: its first step at once, in a context of its own ----------------------

mark: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="caller")


class Stepper(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.log: list[str] = []

    async def quick(self, name: str) -> str:
        mark.set(name)  # in the event's own context: never the caller's
        self.log.append(f"{name} ran")
        return mark.get()

    async def slow(self, name: str) -> str:
        mark.set(name)
        self.log.append(f"{name} first step")
        await asyncio.sleep(0)
        self.log.append(f"{name} second step (mark={mark.get()})")
        return name

    async def calls_itself(self) -> list[str]:
        stub = self.env.STEP.get(self.ctx.id)
        later = stub.quick("inner")  # delivered while this event's first step runs
        self.log.append("outer first step done")
        await later
        return self.log


async def test_a_handler_that_does_not_suspend_answers_without_a_task() -> None:
    runtime = Runtime(bindings={"STEP": Stepper})
    stub = runtime.env.STEP.get_by_name("s")
    await stub.quick("warm")
    tasks_before = len(asyncio.all_tasks())
    future = stub.quick("q")
    # Its first (and only) step already ran, here, and made no task; the result waits only
    # for the output gate (clear: nothing was written).
    instance = runtime.host(runtime.env.STEP, stub.id).instance
    assert isinstance(instance, Stepper) and instance.log[-1] == "q ran"
    assert len(asyncio.all_tasks()) == tasks_before
    assert await future == "q"
    assert mark.get() == "caller"


async def test_a_handler_that_suspends_continues_in_its_own_context() -> None:
    runtime = Runtime(bindings={"STEP": Stepper})
    stub = runtime.env.STEP.get_by_name("s")
    first, second = stub.slow("a"), stub.slow("b")
    assert await asyncio.gather(first, second) == ["a", "b"]
    instance = runtime.host(runtime.env.STEP, stub.id).instance
    assert isinstance(instance, Stepper)
    assert instance.log == [
        "a first step",
        "b first step",
        "a second step (mark=a)",
        "b second step (mark=b)",
    ]
    assert mark.get() == "caller"


async def test_an_event_delivered_during_a_first_step_starts_after_it() -> None:
    runtime = Runtime(bindings={"STEP": Stepper})
    stub = runtime.env.STEP.get_by_name("s")
    log = await stub.calls_itself()
    assert log[:2] == ["outer first step done", "inner ran"]


# -- RPC values: copied both ways; functions and handles passed as they are ---------------------


class Keeper(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.kept: Any = None

    async def keep(self, value: Any) -> None:
        self.kept = value

    def get(self) -> Any:
        return self.kept

    async def call_back(self, fn: Any, x: int) -> Any:
        return fn(x)

    async def same_stub(self, stub: Any, id: Any) -> bool:
        return stub.id == id == self.ctx.id

    def hand_out_something(self) -> Any:
        return {"ok": [1, object()]}


async def test_rpc_arguments_and_results_are_copies() -> None:
    runtime = Runtime(bindings={"KEEP": Keeper})
    stub = runtime.env.KEEP.get_by_name("k")
    value = {"list": [1, 2], "set": {3}, "nested": ({"a": b"x"},)}
    call = stub.keep(value)
    value["list"].append("changed after the call")  # before the object even ran
    await call
    kept = await stub.get()
    assert kept == {"list": [1, 2], "set": {3}, "nested": ({"a": b"x"},)}
    kept["list"].append("changed by the caller")
    assert (await stub.get())["list"] == [1, 2]


async def test_functions_stubs_and_ids_are_passed_as_they_are() -> None:
    runtime = Runtime(bindings={"KEEP": Keeper})
    stub = runtime.env.KEEP.get_by_name("k")
    seen: list[int] = []

    def callback(x: int) -> int:
        seen.append(x)
        return x * 2

    assert await stub.call_back(callback, 21) == 42
    assert seen == [21]
    assert await stub.same_stub(stub, stub.id) is True


async def test_a_value_that_cannot_be_sent_fails_at_the_caller_naming_it() -> None:
    runtime = Runtime(bindings={"KEEP": Keeper})
    stub = runtime.env.KEEP.get_by_name("k")
    with pytest.raises(TypeError) as caught:
        stub.keep({"fine": 1, "bad": [object()]})
    assert str(caught.value).startswith(
        "keep(): argument 1 cannot be sent over RPC: cannot send a value of type 'object' "
        "(at value['bad'][0])"
    )
    assert await stub.get() is None  # nothing was delivered
    with pytest.raises(TypeError, match=r"the result of hand_out_something\(\) cannot be sent"):
        await stub.hand_out_something()


def test_a_wrong_name_on_env_says_what_env_has_and_the_closest() -> None:
    runtime = make_runtime()
    with pytest.raises(AttributeError) as caught:
        _ = runtime.env.COUNTR
    assert str(caught.value) == (
        "env has no binding or variable named 'COUNTR' (it has COUNTER); did you mean 'COUNTER'?"
    )
    with pytest.raises(KeyError, match="named 'QUEUE' \\(it has COUNTER\\)"):
        _ = runtime.env["QUEUE"]
    assert not hasattr(runtime.env, "QUEUE") and runtime.env.get("QUEUE", 1) == 1


async def test_response_json_builds_on_the_class_and_parses_on_a_response() -> None:
    built = Response.json({"a": [1]}, status=201, headers={"x-a": "1"})
    assert (built.status, built.headers.get("content-type"), built.headers.get("x-a")) == (
        201,
        "application/json",
        "1",
    )
    assert await built.json() == {"a": [1]}  # the fetch API's habit
    assert await Response('{"b": 2}').json() == {"b": 2}
