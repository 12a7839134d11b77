"""WebSocketPair in-process: the standard API, without any server."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from opendo import (
    CloseEvent,
    DurableObject,
    DurableObjectResetError,
    FakeClock,
    ReadyState,
    Request,
    Response,
    Runtime,
    WebSocket,
    WebSocketPair,
)


def collect(ws: WebSocket, kind: str) -> list[Any]:
    events: list[Any] = []
    ws.add_event_listener(kind, events.append)
    return events


def test_messages_flow_both_ways() -> None:
    client, server = WebSocketPair()
    got_client, got_server = collect(client, "message"), collect(server, "message")
    client.accept()
    server.accept()
    server.send("hello")
    server.send(b"\x00\x01")
    client.send("hi")
    assert [e.data for e in got_client] == ["hello", b"\x00\x01"]
    assert [e.data for e in got_server] == ["hi"]


def test_messages_sent_before_accept_wait_for_it() -> None:
    pair = WebSocketPair()
    pair.server.accept()
    pair.server.send("early")
    got = collect(pair.client, "message")
    assert got == []
    pair.client.accept()
    assert [e.data for e in got] == ["early"]


def test_send_before_accept_and_bad_types_are_errors() -> None:
    client, server = WebSocketPair()
    with pytest.raises(RuntimeError, match="accept"):
        server.send("x")
    server.accept()
    with pytest.raises(TypeError, match="str or bytes, got int"):
        server.send(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown WebSocket event type"):
        server.add_event_listener("mesage", print)
    with pytest.raises(RuntimeError, match="already accepted"):
        server.accept()


def test_close_completes_the_handshake_on_both_ends() -> None:
    client, server = WebSocketPair()
    closes_client, closes_server = collect(client, "close"), collect(server, "close")
    client.accept()
    server.accept()
    server.close(4000, "bye")
    assert server.ready_state is ReadyState.CLOSED
    assert client.ready_state is ReadyState.CLOSED
    assert [(e.code, e.reason, e.was_clean) for e in closes_client] == [(4000, "bye", True)]
    assert [(e.code, e.reason) for e in closes_server] == [(4000, "bye")]
    server.send("after close")  # dropped, like a browser does
    server.close()  # idempotent


@pytest.mark.parametrize("code", [999, 1001, 1006, 2999, 5000])
def test_close_codes_are_checked(code: int) -> None:
    _, server = WebSocketPair()
    server.accept()
    with pytest.raises(ValueError, match="close code"):
        server.close(code)


def test_a_raising_listener_is_logged_and_the_socket_stays_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, server = WebSocketPair()
    got = collect(client, "message")
    client.accept()

    def explode(event: Any) -> None:
        raise RuntimeError("listener bug")

    server.add_event_listener("message", explode)
    server.accept()
    with caplog.at_level(logging.ERROR, logger="opendo"):
        client.send("x")
    assert "listener bug" in caplog.text
    assert server.ready_state is ReadyState.OPEN
    server.send("still here")
    assert [e.data for e in got] == ["still here"]


async def test_async_iteration_yields_messages_until_close() -> None:
    client, server = WebSocketPair()
    client.accept()

    async def consume() -> list[Any]:
        return [message async for message in server]

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    client.send("a")
    client.send(b"b")
    client.close()
    assert await asyncio.wait_for(task, 2) == ["a", b"b"]


class Room(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.sockets: list[WebSocket] = []

    async def fetch(self, request: Request) -> Response:
        client, server = WebSocketPair()
        server.accept()
        server.add_event_listener("message", lambda e: server.send(f"echo:{e.data}"))
        self.sockets.append(server)
        return Response(status=101, web_socket=client)

    async def count(self) -> int:
        return len(self.sockets)

    async def crash(self) -> None:
        self.ctx.abort("test")


async def open_client(runtime: Runtime, name: str = "r") -> tuple[WebSocket, list[Any]]:
    response = await runtime.env.ROOM.get_by_name(name).fetch("http://do/")
    assert response.status == 101 and response.web_socket is not None
    client = response.web_socket
    got: list[Any] = []
    client.add_event_listener("message", got.append)
    client.add_event_listener("close", got.append)
    client.accept()
    return client, got


async def test_an_open_websocket_keeps_its_object_alive() -> None:
    clock = FakeClock()
    runtime = Runtime(bindings={"ROOM": Room}, clock=clock, idle_timeout=5)
    client, got = await open_client(runtime)
    client.send("ping")
    for _ in range(5):
        await asyncio.sleep(0)
    assert [e.data for e in got] == ["echo:ping"]
    clock.advance(1000)
    assert len(runtime.live_hosts()) == 1
    client.close()
    clock.advance(5)
    assert runtime.live_hosts() == []


async def test_object_sends_wait_at_the_output_gate() -> None:
    runtime = Runtime(bindings={"ROOM": Room})
    client, got = await open_client(runtime)
    host = runtime.live_hosts()[0]
    write = host.output_gate.lock()
    client.send("held")
    for _ in range(5):
        await asyncio.sleep(0)
    assert got == []
    write.release()
    assert [e.data for e in got] == ["echo:held"]


async def test_a_reset_closes_standard_websockets_with_1011() -> None:
    runtime = Runtime(bindings={"ROOM": Room})
    client, got = await open_client(runtime)
    with pytest.raises(DurableObjectResetError):
        await runtime.env.ROOM.get_by_name("r").crash()
    closes = [e for e in got if isinstance(e, CloseEvent)]
    assert [(c.code, c.was_clean) for c in closes] == [(1011, False)]
    assert await runtime.env.ROOM.get_by_name("r").count() == 0  # a new instance
