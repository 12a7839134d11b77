"""``opendo.fetch`` (also ``workers.fetch`` and ``js.fetch``) and ``opendo.connect_websocket``:
outbound HTTP and WebSockets from objects, against real servers on 127.0.0.1 (the standard
library's HTTP server on a thread of the test; a websockets server on the test's loop).

The durability test holds the object's flush at the documented boundary (conftest's
``GatedDriver``): while the write before it is not durable, the request must not reach the
server; once it is, it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import GatedDriver, wait_for
from websockets.asyncio.server import serve as serve_ws
from websockets.exceptions import ConnectionClosed

from opendo import DurableObject, Runtime, connect_websocket, fetch, workers
from opendo.workers import js

WITHIN = 10.0


class Upstream:
    """An HTTP server that records each request and answers with JSON about it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                seen = {
                    "method": self.command,
                    "path": self.path,
                    "body": self.rfile.read(length).decode(),
                    "x-test": self.headers.get("x-test"),
                }
                upstream.requests.append(seen)
                upstream.arrived.set()
                status = 418 if self.path == "/teapot" else 200
                body = json.dumps(seen).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("x-upstream", "yes")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    try:
        yield server
    finally:
        server.close()


class Reporter(DurableObject):
    async def report(self, url: str, text: str) -> dict[str, Any]:
        await self.ctx.storage.put("last", text)  # durable before the report leaves
        response = await fetch(url, method="POST", headers={"x-test": "from an object"}, body=text)
        return {
            "status": response.status,
            "ok": response.ok,
            "upstream": response.headers.get("x-upstream"),
            "seen": await response.json(),
        }

    async def get(self, url: str) -> int:
        return (await workers.fetch(url)).status


def runtime(storage: Any) -> Runtime:
    return Runtime(bindings={"REPORTER": Reporter}, storage=storage)


async def test_an_object_posts_and_reads_the_answer(
    gated_driver: GatedDriver, upstream: Upstream
) -> None:
    rt = runtime(gated_driver)
    try:
        reporter = rt.env.REPORTER.get_by_name("r")
        answer = await asyncio.wait_for(reporter.report(f"{upstream.url}/hook", "done"), WITHIN)
        assert answer == {
            "status": 200,
            "ok": True,
            "upstream": "yes",
            "seen": {"method": "POST", "path": "/hook", "body": "done", "x-test": "from an object"},
        }
        assert await reporter.get(f"{upstream.url}/teapot") == 418  # a status, not an error
    finally:
        await rt.aclose()


async def test_the_request_leaves_only_once_the_write_before_it_is_durable(
    gated_driver: GatedDriver, upstream: Upstream
) -> None:
    rt = runtime(gated_driver)
    try:
        gated_driver.hold()  # the disk is slow: the put's flush waits
        reporter = rt.env.REPORTER.get_by_name("r")
        call = asyncio.ensure_future(reporter.report(f"{upstream.url}/hook", "v1"))
        await gated_driver.flush_started(1)
        # The flush is in flight, held: the request waits for it (checked for a while).
        assert not await asyncio.to_thread(upstream.arrived.wait, 0.3)
        assert upstream.requests == [] and not call.done()
        gated_driver.release()
        answer = await asyncio.wait_for(call, WITHIN)
        assert answer["seen"]["body"] == "v1"
    finally:
        gated_driver.release()
        await rt.aclose()


async def test_a_failed_write_means_the_request_is_never_sent(
    gated_driver: GatedDriver, upstream: Upstream
) -> None:
    rt = runtime(gated_driver)
    try:
        gated_driver.error = OSError(5, "Input/output error")
        reporter = rt.env.REPORTER.get_by_name("r")
        with pytest.raises(Exception) as caught:
            await asyncio.wait_for(reporter.report(f"{upstream.url}/hook", "lost"), WITHIN)
        assert "Input/output error" in str(caught.value) or "sync" in str(caught.value)
        await wait_for(lambda: gated_driver.in_flight == 0)
        assert upstream.requests == []
    finally:
        await rt.aclose()


async def test_an_unreachable_host_is_a_connection_error_that_names_the_request() -> None:
    with pytest.raises(ConnectionError, match=r"fetch GET http://127\.0\.0\.1:9/x: "):
        await fetch("http://127.0.0.1:9/x")  # the discard port: nothing listens
    with pytest.raises(ValueError, match="absolute http"):
        await fetch("/relative")


class Subscriber(DurableObject):
    async def relay(self, url: str, text: str) -> list[str]:
        async with await connect_websocket(url, headers={"x-test": "ws"}) as feed:
            await self.ctx.storage.put("sent", text)  # durable before the message leaves
            await feed.send(text)
            return [str(await feed.recv()), str(await feed.recv())]


async def test_an_object_talks_to_a_websocket_server_and_sends_after_its_writes(
    gated_driver: GatedDriver,
) -> None:
    received: list[str] = []
    arrived = asyncio.Event()

    async def echo(ws: Any) -> None:
        assert ws.request.headers["x-test"] == "ws"
        async for message in ws:
            received.append(message)
            arrived.set()
            await ws.send(f"echo {message}")
            await ws.send("bye")

    async with serve_ws(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        rt = Runtime(bindings={"SUB": Subscriber}, storage=gated_driver)
        try:
            gated_driver.hold()
            call = asyncio.ensure_future(
                rt.env.SUB.get_by_name("s").relay(f"ws://127.0.0.1:{port}", "hi")
            )
            await gated_driver.flush_started(1)
            with pytest.raises(TimeoutError):  # held: the message has not left
                await asyncio.wait_for(asyncio.shield(arrived.wait()), 0.3)
            assert received == []
            gated_driver.release()
            assert await asyncio.wait_for(call, WITHIN) == ["echo hi", "bye"]
            assert received == ["hi"]
        finally:
            gated_driver.release()
            await rt.aclose()


async def test_an_unreachable_websocket_server_is_a_connection_error() -> None:
    with pytest.raises(ConnectionError, match=r"connect_websocket ws://127\.0\.0\.1:9/: "):
        await connect_websocket("ws://127.0.0.1:9/")


# -- js.WebSocket: the browser's interface -----------------------------------------------------


async def eventually(get: Callable[[], Awaitable[Any]], check: Callable[[Any], Any]) -> Any:
    """``await get()`` until ``check`` holds for its value (bounded by WITHIN); that value."""
    deadline = asyncio.get_running_loop().time() + WITHIN
    while not check(value := await get()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {WITHIN} s: the last value was {value!r}")
        await asyncio.sleep(0.01)
    return value


class Listener(DurableObject):
    """Opens a ``js.WebSocket`` the way a Cloudflare Worker's JavaScript habit writes it; its
    listeners store what they see (so they run as the object's events, with its storage)."""

    async def open(self, url: str) -> None:
        self.ws = ws = js.WebSocket.new(url, "chat")
        await self.ctx.storage.put("log", [])

        async def record(event: Any) -> None:
            log = await self.ctx.storage.get("log")
            await self.ctx.storage.put("log", [*log, event])

        def on_open(event: Any) -> None:
            self.ctx.storage.put("before", "sent")  # durable before the message leaves
            ws.send("hi")

        ws.addEventListener("open", on_open)
        ws.onmessage = lambda event: record(f"message {event.data}")
        ws.addEventListener("close", lambda e: record(f"close {e.code} {e.reason} {e.wasClean}"))
        ws.onerror = lambda event: record(f"error {event.error}")

    async def log(self) -> list[str]:
        return await self.ctx.storage.get("log") or []

    async def state(self) -> tuple[int, str]:
        return self.ws.readyState, self.ws.protocol

    async def close(self) -> None:
        self.ws.send("last")
        self.ws.close(4000, "done")

    async def reset(self) -> None:
        self.ctx.abort("reset by the test")


async def test_js_websocket_opens_sends_after_the_write_and_delivers_events_to_the_object(
    gated_driver: GatedDriver,
) -> None:
    received: list[str] = []
    arrived = asyncio.Event()

    async def echo(ws: Any) -> None:
        async for message in ws:
            received.append(message)
            arrived.set()
            if message != "last":
                await ws.send(f"echo {message}")

    async with serve_ws(echo, "127.0.0.1", 0, subprotocols=["chat"]) as server:  # type: ignore[list-item]
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        rt = Runtime(bindings={"LISTENER": Listener}, storage=gated_driver)
        try:
            stub = rt.env.LISTENER.get_by_name("l")
            await asyncio.wait_for(stub.open(url), WITHIN)
            gated_driver.hold()
            await gated_driver.flush_started(1)  # the open listener's write
            with pytest.raises(TimeoutError):  # held: "hi" has not left
                await asyncio.wait_for(asyncio.shield(arrived.wait()), 0.3)
            gated_driver.release()
            await wait_for(lambda: received == ["hi"], WITHIN)
            assert await eventually(stub.log, lambda log: log) == ["message echo hi"]
            assert await stub.state() == (js.WebSocket.OPEN, "chat")
            await stub.close()
            log = await eventually(stub.log, lambda log: len(log) == 2)
            assert log[1] == "close 4000 done True"  # the server closed back: clean
            assert received == ["hi", "last"]
            assert (await stub.state())[0] == js.WebSocket.CLOSED
        finally:
            gated_driver.release()
            await rt.aclose()


async def test_js_websocket_to_nowhere_is_an_error_then_an_unclean_close(
    gated_driver: GatedDriver,
) -> None:
    rt = Runtime(bindings={"LISTENER": Listener}, storage=gated_driver)
    try:
        stub = rt.env.LISTENER.get_by_name("nowhere")
        await stub.open("ws://127.0.0.1:9/")
        log = await eventually(stub.log, lambda log: len(log) == 2)
        assert log[0].startswith("error connect_websocket ws://127.0.0.1:9/: ")
        assert log[1] == "close 1006  False"
    finally:
        await rt.aclose()


async def test_a_reset_closes_the_objects_js_websocket(gated_driver: GatedDriver) -> None:
    closed: asyncio.Future[tuple[int | None, str | None]] = asyncio.Future()

    async def server(ws: Any) -> None:
        with contextlib.suppress(ConnectionClosed):  # closed with 1011: an error, to websockets
            async for _ in ws:
                pass
        closed.set_result((ws.close_code, ws.close_reason))

    async with serve_ws(server, "127.0.0.1", 0) as listening:
        url = f"ws://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        rt = Runtime(bindings={"LISTENER": Listener}, storage=gated_driver)
        try:
            stub = rt.env.LISTENER.get_by_name("reset")
            await stub.open(url)
            await eventually(stub.state, lambda state: state[0] == js.WebSocket.OPEN)
            with pytest.raises(Exception, match="reset by the test"):
                await stub.reset()
            assert await asyncio.wait_for(closed, WITHIN) == (1011, "Durable Object reset")
            assert await stub.log() == []  # the new instance heard nothing of the old socket
        finally:
            await rt.aclose()


async def test_js_websocket_refuses_what_a_browser_refuses() -> None:
    with pytest.raises(ValueError, match="not a ws:// or wss:// URL"):
        js.WebSocket.new("http://127.0.0.1:9/")
    ws = js.WebSocket.new("ws://127.0.0.1:9/")
    with pytest.raises(RuntimeError, match="still connecting"):
        ws.send("too soon")
    with pytest.raises(ValueError, match="3000..4999"):
        ws.close(1006)
    await wait_for(lambda: ws.readyState == ws.CLOSED, WITHIN)
