"""The ASGI server over real sockets: routing into the Worker, RPC, errors, eviction."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from textwrap import dedent
from typing import Any

import httpx
import pytest
from conftest import serve, wait_for
from websockets.asyncio.client import connect

from opendo import App, FakeClock, create_app

WORKER = """
from opendo import DurableObject, Response, WebSocketPair, WorkerEntrypoint

builds = []
events = []


class Counter(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        builds.append(ctx.id.name)
        self.value = 0

    async def increment(self, by=1):
        self.value += by
        return self.value

    async def explode(self):
        raise ValueError("secret internal detail")

    async def fetch(self, request):
        if request.headers.get("upgrade") == "websocket":
            client, server = WebSocketPair()
            server.accept()
            server.add_event_listener("message", lambda e: server.send("echo:" + e.data))
            server.add_event_listener("error", lambda e: events.append(("error", None, None)))
            server.add_event_listener(
                "close", lambda e: events.append(("close", e.code, e.was_clean))
            )
            return Response(status=101, web_socket=client)
        body = await request.text()
        return Response.json({"method": request.method, "body": body, "value": self.value})


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = request.path.strip("/").split("/")
        stub = self.env.COUNTER.get_by_name(parts[-1])
        if parts[0] == "rpc":
            return Response(str(await stub.increment(2)))
        if parts[0] == "boom":
            await stub.explode()
        if parts[0] == "env":
            return Response(self.env.GREETING)
        if parts[0] == "bad":
            return "not a response"
        return await stub.fetch(request)
"""

CONFIG = """
name = "test"
main = "worker.py"

[vars]
GREETING = "hello from vars"

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"

[runtime]
idle_timeout = 10
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "worker.py").write_text(dedent(WORKER))
    (tmp_path / "opendo.toml").write_text(CONFIG)
    return tmp_path


async def test_rpc_from_the_worker_to_an_object(project: Path) -> None:
    app = create_app(project)
    async with serve(app) as base, httpx.AsyncClient(base_url=f"http://{base}") as http:
        assert (await http.get("/rpc/a")).text == "2"
        assert (await http.get("/rpc/a")).text == "4"
        assert (await http.get("/rpc/b")).text == "2"
        assert (await http.get("/env/x")).text == "hello from vars"


async def test_fetch_forwards_method_and_body(project: Path) -> None:
    app = create_app(project)
    async with serve(app) as base, httpx.AsyncClient(base_url=f"http://{base}") as http:
        response = await http.post("/x/room", content=b"payload")
        assert response.status_code == 200
        assert response.json() == {"method": "POST", "body": "payload", "value": 0}
        assert response.headers["content-type"] == "application/json"


async def test_an_error_is_a_500_without_traceback_and_others_are_unaffected(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(project)
    async with serve(app) as base, httpx.AsyncClient(base_url=f"http://{base}") as http:
        with caplog.at_level(logging.ERROR, logger="opendo"):
            boom, ok = await asyncio.gather(http.get("/boom/a"), http.get("/rpc/a"))
        assert boom.status_code == 500
        assert boom.text == "Internal Server Error"
        assert "secret" not in boom.text and "Traceback" not in boom.text
        assert ok.text == "2"
        assert (await http.get("/rpc/a")).text == "4"  # same instance, state kept
        bad = await http.get("/bad/a")
        assert bad.status_code == 500 and bad.text == "Internal Server Error"
    assert "secret internal detail" in caplog.text  # the traceback is in the server log
    assert "Traceback" in caplog.text
    assert "must return a Response" in caplog.text


async def test_idle_objects_are_evicted_and_reactivated(project: Path) -> None:
    clock = FakeClock()
    app = create_app(project, clock=clock)
    module_builds = _builds(app)
    async with serve(app) as base, httpx.AsyncClient(base_url=f"http://{base}") as http:
        assert (await http.get("/rpc/idle")).text == "2"
        assert len(app.runtime.live_hosts()) == 1
        clock.advance(9)
        assert (await http.get("/rpc/idle")).text == "4"
        clock.advance(10.5)
        assert app.runtime.live_hosts() == []
        assert (await http.get("/rpc/idle")).text == "2"  # rebuilt: memory was dropped
    assert module_builds == ["idle", "idle"]


async def test_websocket_through_the_worker(project: Path) -> None:
    clock = FakeClock()
    app = create_app(project, clock=clock)
    async with serve(app) as base:
        async with connect(f"ws://{base}/ws/echo", compression=None) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 5) == "echo:hi"
            clock.advance(100)  # an open standard WebSocket keeps its object
            assert len(app.runtime.live_hosts()) == 1
            await ws.send("again")
            assert await asyncio.wait_for(ws.recv(), 5) == "echo:again"
        await wait_for(lambda: app.runtime.live_hosts()[0].is_idle())
        clock.advance(10)
        assert app.runtime.live_hosts() == []


async def test_a_refused_websocket_gets_the_workers_http_response(project: Path) -> None:
    app = create_app(project)
    async with serve(app) as base:
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://{base}/rpc/x", compression=None):
                pass
        assert info.value.response.status_code == 200
        assert info.value.response.body == b"2"


async def test_json_helper_and_headers(project: Path) -> None:
    app = create_app(project)
    async with serve(app) as base, httpx.AsyncClient(base_url=f"http://{base}") as http:
        response = await http.get("/x/y", headers={"X-Test": "1"})
        assert json.loads(response.text)["method"] == "GET"


def _builds(app: App) -> list[str]:
    return _module(app).builds  # type: ignore[no-any-return]


async def test_a_lost_connection_is_an_error_then_an_unclean_1006_close(project: Path) -> None:
    app = create_app(project)
    events = _module(app).events
    async with serve(app) as base:
        ws = await connect(f"ws://{base}/ws/lost", compression=None)
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), 5) == "echo:hi"
        ws.transport.abort()
        await wait_for(lambda: any(kind == "close" for kind, _, _ in events))
    assert events == [("error", None, None), ("close", 1006, False)]


def _module(app: App) -> Any:
    return __import__(app.runtime.env.COUNTER.object_class.__module__)
