"""The WebSocket hibernation API over real sockets: ``ctx.accept_websocket`` and friends.

Each test serves a small project of its own (``Room``, written to ``tmp_path``) or the chat
example with ``create_app(..., clock=FakeClock())`` under uvicorn on 127.0.0.1, and talks to
it with the ``websockets`` asyncio client. Hibernation is forced deterministically: by moving
the fake clock past ``[runtime] hibernation_timeout`` once the host is idle, or by calling
``host.evict()`` on an idle host. Nothing sleeps to wait for something; a short receive
timeout is only used to conclude that nothing arrives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from conftest import CHAT, serve, wait_for
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

import opendo
from opendo import (
    CodecError,
    DurableObjectResetError,
    FakeClock,
    ReadyState,
    WebSocketRequestResponsePair,
    create_app,
)
from opendo.runtime.host import Lifecycle, ObjectHost

RECV = 5.0  # bound for a frame that must arrive
QUIET = 0.3  # how long we listen to conclude that nothing arrives
IDLE_TIMEOUT = 100.0
HIBERNATION_TIMEOUT = 5.0

WORKER = """
import json
from urllib.parse import parse_qs

from opendo import (
    DurableObject,
    Response,
    WebSocketPair,
    WebSocketRequestResponsePair,
    WorkerEntrypoint,
)

builds = []  # the name of every instance constructed, in order
events = []  # what the hibernation handlers and standard listeners saw
gates = {}  # asyncio.Events the test sets to let a pending call finish


def name_of(ws):
    attachment = ws.deserialize_attachment()
    return attachment["name"] if isinstance(attachment, dict) else None


class Room(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        builds.append(ctx.id.name)

    async def fetch(self, request):
        if request.headers.get("upgrade") != "websocket":
            return Response("expected a WebSocket", status=426)
        query = parse_qs(request.query)
        name = query["name"][0]
        tags = [tag for tag in query.get("tags", [""])[0].split(",") if tag]
        client, server = WebSocketPair()
        if "standard" in query:
            server.accept()
            server.add_event_listener("message", lambda e: server.send("standard:" + e.data))
            server.add_event_listener(
                "close", lambda e: events.append(("standard-close", name, e.code))
            )
        else:
            self.ctx.accept_websocket(server, tags)
            if "bare" not in query:
                server.serialize_attachment({"name": name})
        return Response(status=101, web_socket=client)

    async def web_socket_message(self, ws, message):
        events.append(("message", name_of(ws), message))
        if message == "who" or message == "who:a":
            ws.send(json.dumps(self.who("a" if message == "who:a" else None)))
        elif isinstance(message, bytes):
            ws.send(b"bytes:" + message)
        else:
            ws.send("text:" + message)

    async def web_socket_close(self, ws, code, reason, was_clean):
        events.append(("close", name_of(ws), code, reason, was_clean))

    async def web_socket_error(self, ws, error):
        events.append(("error", name_of(ws), type(error).__name__))

    # -- RPC, for the test ---------------------------------------------------------------

    def who(self, tag=None):
        return [
            {"attachment": ws.deserialize_attachment(), "tags": self.ctx.get_tags(ws)}
            for ws in self.ctx.get_websockets(tag)
        ]

    def accept_with_tags(self, tags):
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server, tags)
        return self.ctx.get_tags(server)

    def accept_many(self, n):
        for _ in range(n):
            client, server = WebSocketPair()
            self.ctx.accept_websocket(server)
        return len(self.ctx.get_websockets())

    def tags_of_a_socket_not_accepted(self, how):
        client, server = WebSocketPair()
        if how == "standard":
            server.accept()
        return self.ctx.get_tags(server)

    def listen_on(self, index):
        self.ctx.get_websockets()[index].add_event_listener("message", print)

    def attach(self, index, value):
        self.ctx.get_websockets()[index].serialize_attachment(value)

    def attach_unsupported(self, index):
        self.ctx.get_websockets()[index].serialize_attachment({"name": object()})

    def attachment(self, index):
        return self.ctx.get_websockets()[index].deserialize_attachment()

    def auto_response(self, request, response):
        pair = None if request is None else WebSocketRequestResponsePair(request, response)
        self.ctx.set_websocket_auto_response(pair)
        now = self.ctx.get_websocket_auto_response()
        return None if now is None else (now.request, now.response)

    def auto_response_times(self):
        return [
            self.ctx.get_websocket_auto_response_timestamp(ws)
            for ws in self.ctx.get_websockets()
        ]

    async def hang(self, key):
        await gates[key].wait()
        return "done"

    def abort(self):
        self.ctx.abort("asked to")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        room = request.path.strip("/")
        return await self.env.ROOM.get_by_name(room).fetch(request)
"""

CONFIG = f"""
name = "hibernation"
main = "worker.py"

[[durable_objects.bindings]]
name = "ROOM"
class_name = "Room"

[runtime]
idle_timeout = {IDLE_TIMEOUT:g}
hibernation_timeout = {HIBERNATION_TIMEOUT:g}
"""


# -- helpers --------------------------------------------------------------------------------


async def open_ws(addr: str, path: str) -> ClientConnection:
    return await asyncio.wait_for(
        connect(f"ws://{addr}{path}", compression=None, open_timeout=RECV, close_timeout=2),
        RECV,
    )


async def recv(ws: ClientConnection, within: float = RECV) -> str | bytes:
    async with asyncio.timeout(within):
        return await ws.recv()


async def ask(ws: ClientConnection, message: str | bytes) -> str | bytes:
    await ws.send(message)
    return await recv(ws)


async def assert_silent(*clients: ClientConnection) -> None:
    async def one(ws: ClientConnection) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(QUIET):
                frame = await ws.recv()
                raise AssertionError(f"unexpected frame {frame!r}")

    await asyncio.gather(*(one(ws) for ws in clients))


def module_of(app: opendo.App) -> Any:
    return __import__(app.runtime.env.ROOM.object_class.__module__)


@dataclass
class Served:
    """A served project, its fake clock, and the clients a test opened (closed at teardown)."""

    app: opendo.App
    addr: str
    clock: FakeClock
    clients: list[ClientConnection] = field(default_factory=list)

    @property
    def module(self) -> Any:
        return module_of(self.app)

    @property
    def events(self) -> list[Any]:
        return self.module.events  # type: ignore[no-any-return]

    async def join(
        self, room: str, name: str, tags: tuple[str, ...] = (), **flags: bool
    ) -> ClientConnection:
        path = f"/{room}?name={name}&tags={','.join(tags)}"
        path += "".join(f"&{flag}=1" for flag, on in flags.items() if on)
        ws = await open_ws(self.addr, path)
        self.clients.append(ws)
        return ws

    def host(self, room: str) -> ObjectHost:
        hosts = [h for h in self.app.runtime.live_hosts() if h.id.name == room]
        assert len(hosts) == 1, hosts
        return hosts[0]

    def stub(self, room: str) -> Any:
        return self.app.runtime.env.ROOM.get_by_name(room)

    def builds(self, room: str) -> int:
        return sum(1 for name in self.module.builds if name == room)

    async def hibernate_by_clock(self, room: str) -> ObjectHost:
        """Wait until the room's object is idle, then move the clock past the timeout."""
        host = self.host(room)
        await wait_for(host.is_idle)
        assert host.state is Lifecycle.ACTIVE
        self.clock.advance(HIBERNATION_TIMEOUT + 0.1)
        assert host.state is Lifecycle.HIBERNATED
        assert host.instance is None and host.ctx is None
        return host


async def close_all(clients: list[ClientConnection]) -> None:
    async with asyncio.timeout(10):
        await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "worker.py").write_text(dedent(WORKER))
    (root / "opendo.toml").write_text(CONFIG)
    return root


@pytest.fixture(params=["native", "asgi"])
async def served(
    project: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Served]:
    clock = FakeClock()
    app = create_app(project, persist_to=tmp_path / "state", clock=clock)
    async with serve(app, ws=request.param) as addr:
        state = Served(app, addr, clock)
        try:
            yield state
        finally:
            await close_all(state.clients)


# -- surviving hibernation --------------------------------------------------------------------


async def test_sockets_tags_and_attachments_survive_hibernation_in_accept_order(
    served: Served,
) -> None:
    a = await served.join("r", "A", ("a", "x"))
    b = await served.join("r", "B", ("b",))
    c = await served.join("r", "C", ("a",))
    host = served.host("r")
    assert host.instance is not None
    before = host.instance.ctx.get_websockets()
    assert len(before) == 3
    assert served.builds("r") == 1

    await served.hibernate_by_clock("r")
    assert served.builds("r") == 1
    for ws in (a, b, c):
        assert ws.state is State.OPEN  # still connected, nothing was sent to them
    await assert_silent(a, b, c)

    # The next message constructs the object again; it finds the same sockets.
    everyone = [
        {"attachment": {"name": "A"}, "tags": ["a", "x"]},
        {"attachment": {"name": "B"}, "tags": ["b"]},
        {"attachment": {"name": "C"}, "tags": ["a"]},
    ]
    assert json.loads(await ask(c, "who")) == everyone
    assert served.builds("r") == 2
    assert host.state is Lifecycle.ACTIVE and host.instance is not None
    after = host.instance.ctx.get_websockets()
    assert len(after) == 3 and all(x is y for x, y in zip(after, before, strict=True))
    assert json.loads(await ask(b, "who:a")) == [everyone[0], everyone[2]]
    assert await served.stub("r").who("b") == [everyone[1]]
    assert await served.stub("r").who("nobody") == []


async def test_text_and_bytes_reach_web_socket_message_after_hibernation(served: Served) -> None:
    ws = await served.join("r", "A")
    await served.hibernate_by_clock("r")
    assert await ask(ws, b"\x00\x01\xff") == b"bytes:\x00\x01\xff"
    assert served.builds("r") == 2
    assert await ask(ws, "héllo") == "text:héllo"
    await served.hibernate_by_clock("r")
    assert await ask(ws, "again") == "text:again"
    assert served.builds("r") == 3
    messages = [e for e in served.events if e[0] == "message"]
    assert messages == [
        ("message", "A", b"\x00\x01\xff"),
        ("message", "A", "héllo"),
        ("message", "A", "again"),
    ]
    assert type(messages[0][2]) is bytes and type(messages[1][2]) is str


async def test_evict_on_an_idle_host_hibernates_it(served: Served) -> None:
    ws = await served.join("r", "A")
    host = served.host("r")
    await wait_for(host.is_idle)
    host.evict()
    assert host.state is Lifecycle.HIBERNATED and host.instance is None
    assert served.host("r") is host  # the runtime keeps a hibernated host
    assert await ask(ws, "hi") == "text:hi"
    assert served.builds("r") == 2


# -- tags ---------------------------------------------------------------------------------------


async def test_tags_are_limited_in_number_length_and_type(served: Served) -> None:
    stub = served.stub("tags")
    ten = [f"t{i}" for i in range(10)]
    assert await stub.accept_with_tags(ten) == ten
    assert await stub.accept_with_tags(["x" * 256]) == ["x" * 256]
    assert await stub.accept_with_tags([]) == []
    bad: list[list[Any]] = [
        [f"t{i}" for i in range(11)],
        ["x" * 257],
        [""],
        ["ok", 5],
        [b"bytes"],
        [None],
    ]
    for tags in bad:
        with pytest.raises(ValueError):
            await stub.accept_with_tags(tags)
    assert len(await stub.who()) == 3  # the refused sockets were not accepted


async def test_an_object_holds_at_most_32768_hibernatable_sockets(served: Served) -> None:
    stub = served.stub("many")
    assert await stub.accept_many(32_768) == 32_768
    with pytest.raises(RuntimeError, match="32768"):
        await stub.accept_many(1)
    assert len(await stub.who()) == 32_768


async def test_get_tags_refuses_a_socket_not_accepted_with_accept_websocket(
    served: Served,
) -> None:
    stub = served.stub("tags")
    for how in ("new", "standard"):
        with pytest.raises(ValueError, match="accept_websocket"):
            await stub.tags_of_a_socket_not_accepted(how)


async def test_listeners_on_a_hibernatable_socket_are_refused(served: Served) -> None:
    ws = await served.join("r", "A")
    with pytest.raises(RuntimeError, match="web_socket_message"):
        await served.stub("r").listen_on(0)
    assert await ask(ws, "still") == "text:still"


# -- attachments ----------------------------------------------------------------------------


async def test_an_attachment_round_trips_through_hibernation(served: Served) -> None:
    ws = await served.join("r", "A")
    value = {
        "name": "A",
        "nested": {"list": [1, 2.5, None, True], "bytes": b"\x00\xff"},
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "text": "ünïcode",
    }
    await served.stub("r").attach(0, value)
    assert await served.stub("r").attachment(0) == value
    await served.hibernate_by_clock("r")
    assert await served.stub("r").attachment(0) == value
    assert served.builds("r") == 2
    assert await ask(ws, "still connected") == "text:still connected"


async def test_attachment_limits_keep_the_previous_value(served: Served) -> None:
    await served.join("r", "A")
    stub = served.stub("r")
    await stub.attach(0, {"name": "A", "pad": "x" * (15 * 1024)})  # under 16 KiB encoded
    with pytest.raises(ValueError, match="16384|limit"):
        await stub.attach(0, {"name": "A", "pad": "x" * (16 * 1024)})
    with pytest.raises(CodecError):
        await stub.attach_unsupported(0)
    assert await stub.attachment(0) == {"name": "A", "pad": "x" * (15 * 1024)}


async def test_no_attachment_is_none_also_after_hibernation(served: Served) -> None:
    ws = await served.join("r", "bare", bare=True)
    assert await served.stub("r").attachment(0) is None
    await served.hibernate_by_clock("r")
    assert await served.stub("r").attachment(0) is None
    assert await ask(ws, "x") == "text:x"


# -- auto-response --------------------------------------------------------------------------


async def test_the_auto_response_answers_without_waking_the_object(served: Served) -> None:
    a = await served.join("r", "A")
    b = await served.join("r", "B")
    stub = served.stub("r")
    assert await stub.auto_response("ping", "pong") == ("ping", "pong")
    assert await stub.auto_response_times() == [None, None]

    host = await served.hibernate_by_clock("r")
    assert served.builds("r") == 1
    served.clock.advance(1.5)
    pinged_at = datetime.fromtimestamp(served.clock.time(), tz=UTC)
    for _ in range(3):
        assert await ask(a, "ping") == "pong"
    assert host.state is Lifecycle.HIBERNATED and host.instance is None
    assert served.builds("r") == 1  # not reconstructed
    assert [e for e in served.events if e[0] == "message"] == []

    # Anything else wakes it, as usual.
    assert await ask(b, "pingx") == "text:pingx"
    assert served.builds("r") == 2
    assert await stub.auto_response_times() == [pinged_at, None]
    assert await stub.auto_response("ping", "pong") == ("ping", "pong")  # kept over hibernation

    # While the object is active the reply is the same, and the handler still sees nothing.
    assert await ask(b, "ping") == "pong"
    assert [e[2] for e in served.events if e[0] == "message"] == ["pingx"]

    # Removed: "ping" is an ordinary message again.
    assert await stub.auto_response(None, None) is None
    assert await ask(a, "ping") == "text:ping"


async def test_auto_response_texts_are_limited_to_2048_characters() -> None:
    pair = WebSocketRequestResponsePair("q" * 2048, "a" * 2048)
    assert (len(pair.request), len(pair.response)) == (2048, 2048)
    with pytest.raises(ValueError, match="2048|limit"):
        WebSocketRequestResponsePair("q" * 2049, "a")
    with pytest.raises(ValueError, match="2048|limit"):
        WebSocketRequestResponsePair("q", "a" * 2049)


# -- closing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("hibernated", [False, True], ids=["active", "hibernated"])
async def test_a_client_close_reaches_web_socket_close(served: Served, hibernated: bool) -> None:
    a = await served.join("r", "A")
    b = await served.join("r", "B")
    if hibernated:
        await served.hibernate_by_clock("r")

    async with asyncio.timeout(2):
        await a.close(4001, "bye")
    assert a.protocol.close_rcvd is not None, "no close frame from the server"
    assert (a.protocol.close_rcvd.code, a.protocol.close_rcvd.reason) == (4001, "bye")

    await wait_for(lambda: any(e[0] == "close" for e in served.events))
    assert [e for e in served.events if e[0] in ("close", "error")] == [
        ("close", "A", 4001, "bye", True)
    ]
    assert served.builds("r") == (2 if hibernated else 1)  # woken to run the handler
    assert await served.stub("r").who() == [{"attachment": {"name": "B"}, "tags": []}]
    assert await ask(b, "left?") == "text:left?"


@pytest.mark.parametrize("hibernated", [False, True], ids=["active", "hibernated"])
async def test_an_abrupt_disconnect_is_an_error_then_an_unclean_1006_close(
    served: Served, hibernated: bool
) -> None:
    a = await served.join("r", "A")
    b = await served.join("r", "B")
    if hibernated:
        await served.hibernate_by_clock("r")

    a.transport.abort()
    await wait_for(lambda: any(e[0] == "close" for e in served.events))
    assert [e for e in served.events if e[0] in ("close", "error")] == [
        ("error", "A", "ConnectionResetError"),
        ("close", "A", 1006, "", False),
    ]
    assert served.builds("r") == (2 if hibernated else 1)
    assert await served.stub("r").who() == [{"attachment": {"name": "B"}, "tags": []}]
    assert await ask(b, "left?") == "text:left?"


async def test_when_the_last_socket_closes_the_object_is_evicted_after_idle_timeout(
    served: Served,
) -> None:
    a = await served.join("r", "A")
    host = await served.hibernate_by_clock("r")
    await a.close()
    await wait_for(lambda: any(e[0] == "close" for e in served.events))
    await wait_for(host.is_idle)
    served.clock.advance(HIBERNATION_TIMEOUT + 0.1)
    assert served.host("r") is host  # no socket left: the idle timeout applies now
    served.clock.advance(IDLE_TIMEOUT)
    assert host.state is Lifecycle.EVICTED
    assert served.app.runtime.live_hosts() == []


# -- what keeps an object from hibernating ------------------------------------------------------


async def test_a_standard_websocket_keeps_its_object_in_memory(served: Served) -> None:
    plain = await served.join("std", "S", standard=True)
    await served.join("mixed", "H")
    mixed_standard = await served.join("mixed", "S", standard=True)
    std, mixed = served.host("std"), served.host("mixed")
    std_instance, mixed_instance = std.instance, mixed.instance

    served.clock.advance(10 * IDLE_TIMEOUT)
    served.app.runtime.evict_all()
    for host, instance in ((std, std_instance), (mixed, mixed_instance)):
        assert host.state is Lifecycle.ACTIVE and host.instance is instance
    assert await ask(plain, "x") == "standard:x"
    assert await ask(mixed_standard, "y") == "standard:y"
    assert (served.builds("std"), served.builds("mixed")) == (1, 1)

    # Once the standard socket is gone, the mixed room hibernates on the short timeout.
    await mixed_standard.close()
    await wait_for(lambda: ("standard-close", "S", 1000) in served.events)
    await served.hibernate_by_clock("mixed")


async def test_a_pending_request_keeps_its_object_in_memory(served: Served) -> None:
    module = served.module
    module.gates["busy"] = asyncio.Event()
    ws = await served.join("busy", "A")
    host = served.host("busy")
    call = served.stub("busy").hang("busy")
    await wait_for(lambda: host.statistics()["running"] == 1)

    served.clock.advance(10 * IDLE_TIMEOUT)
    served.app.runtime.evict_all()
    assert host.state is Lifecycle.ACTIVE and host.instance is not None
    assert not call.done()

    module.gates["busy"].set()
    assert await asyncio.wait_for(call, RECV) == "done"
    await served.hibernate_by_clock("busy")
    assert await ask(ws, "x") == "text:x"


async def test_hibernatable_sockets_use_hibernation_timeout_not_idle_timeout(
    served: Served,
) -> None:
    await served.join("h", "A")
    await served.stub("plain").who()  # an object with no socket: the idle timeout
    hibernating, plain = served.host("h"), served.host("plain")
    await wait_for(lambda: hibernating.is_idle() and plain.is_idle())

    served.clock.advance(HIBERNATION_TIMEOUT - 0.1)
    assert hibernating.state is Lifecycle.ACTIVE
    served.clock.advance(0.2)
    assert hibernating.state is Lifecycle.HIBERNATED and hibernating.instance is None
    assert plain.state is Lifecycle.ACTIVE and plain.instance is not None

    served.clock.advance(IDLE_TIMEOUT - HIBERNATION_TIMEOUT - 0.2)
    assert plain.state is Lifecycle.ACTIVE
    served.clock.advance(0.2)
    assert plain.state is Lifecycle.EVICTED
    assert served.app.runtime.live_hosts() == [hibernating]  # the hibernated host stays


async def test_the_default_hibernation_timeout_is_10_seconds(project: Path, tmp_path: Path) -> None:
    config = (project / "opendo.toml").read_text()
    (project / "opendo.toml").write_text(config.split("[runtime]")[0])
    clock = FakeClock()
    app = create_app(project, persist_to=tmp_path / "state", clock=clock)
    async with serve(app) as addr:
        ws = await open_ws(addr, "/d?name=A")
        try:
            host = app.runtime.live_hosts()[0]
            await wait_for(host.is_idle)
            clock.advance(9.9)
            assert host.state is Lifecycle.ACTIVE
            clock.advance(0.2)
            assert host.state is Lifecycle.HIBERNATED
        finally:
            await ws.close()


# -- resets -----------------------------------------------------------------------------------


async def test_a_reset_keeps_hibernatable_sockets_and_closes_standard_ones_with_1011(
    served: Served,
) -> None:
    hibernatable = await served.join("reset", "H")
    standard = await served.join("reset", "S", standard=True)
    assert await ask(standard, "x") == "standard:x"

    with pytest.raises(DurableObjectResetError, match="asked to"):
        await served.stub("reset").abort()

    with pytest.raises(ConnectionClosed) as closed:
        await recv(standard)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011

    assert hibernatable.state is State.OPEN
    assert await ask(hibernatable, "still here") == "text:still here"
    assert served.builds("reset") == 2
    assert await served.stub("reset").who() == [{"attachment": {"name": "H"}, "tags": []}]


# -- the chat example ---------------------------------------------------------------------------


def chat_user(id: int, name: str | None = None) -> dict[str, Any]:
    return {"id": id, "name": name}


def chat_said(frame: dict[str, Any]) -> tuple[int, str, str | None]:
    """A chat message frame (checked to be one) as (from, text, name)."""
    assert set(frame) == {"from", "text", "name", "at"} and type(frame["at"]) is int, frame
    return frame["from"], frame["text"], frame["name"]


@dataclass
class ChatRoom:
    """The chat example served with a FakeClock; ``join`` checks the three frames that open a
    connection and the ``join`` announced to everyone the test knows to be in the room."""

    app: opendo.App
    addr: str
    clock: FakeClock
    clients: list[ClientConnection] = field(default_factory=list)
    members: dict[int, ClientConnection] = field(default_factory=dict)  # of the one room
    names: dict[int, str | None] = field(default_factory=dict)
    greetings: dict[int, tuple[list[Any], dict[str, Any]]] = field(default_factory=dict)

    async def join(self, room: str) -> tuple[ClientConnection, int]:
        ws = await open_ws(self.addr, f"/{room}")
        self.clients.append(ws)
        first, history, presence = [json.loads(await recv(ws)) for _ in range(3)]
        assert set(first) == {"id"}, first
        id = first["id"]
        assert set(history) == {"type", "messages"} and history["type"] == "history", history
        self.names[id] = None
        everyone = sorted([*self.members, id])
        assert presence == {
            "type": "presence",
            "users": [chat_user(i, self.names[i]) for i in everyone],
            "count": len(everyone),
        }
        for other in self.members.values():
            assert json.loads(await recv(other)) == {"type": "join", "user": chat_user(id)}
        self.members[id] = ws
        self.greetings[id] = (history["messages"], presence)
        return ws, id

    async def say(self, id: int, text: str) -> dict[str, Any]:
        """Member ``id`` sends ``text``: everyone gets the same message frame (returned)."""
        await self.members[id].send(json.dumps({"text": text}))
        frames = [json.loads(await recv(ws)) for ws in self.members.values()]
        assert chat_said(frames[0]) == (id, text, self.names[id])
        assert all(frame == frames[0] for frame in frames), frames
        return frames[0]

    def host(self, room: str) -> ObjectHost:
        hosts = [h for h in self.app.runtime.live_hosts() if h.id.name == room]
        assert len(hosts) == 1, hosts
        return hosts[0]

    def attached_ids(self, room: str) -> list[int]:
        return [
            ws.deserialize_attachment()["id"]
            for ws in self.host(room).hibernatable
            if ws.ready_state is not ReadyState.CLOSED
        ]

    async def hibernate(self, room: str) -> ObjectHost:
        """Let the room's object hibernate: idle, then past the 10 s hibernation timeout."""
        host = self.host(room)
        await wait_for(host.is_idle)
        self.clock.advance(10.1)
        assert host.state is Lifecycle.HIBERNATED and host.instance is None
        return host


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[ChatRoom]:
    clock = FakeClock()
    app = create_app(CHAT, persist_to=tmp_path, clock=clock)
    async with serve(app) as addr:
        state = ChatRoom(app, addr, clock)
        try:
            yield state
        finally:
            await close_all(state.clients)


async def test_the_chat_keeps_talking_across_hibernation(chat: ChatRoom) -> None:
    joined = [await chat.join("lobby") for _ in range(3)]
    assert [i for _, i in joined] == [1, 2, 3]
    assert chat.attached_ids("lobby") == [1, 2, 3]
    host = chat.host("lobby")
    await wait_for(host.is_idle)
    host.evict()
    assert host.state is Lifecycle.HIBERNATED and host.instance is None
    assert host.constructions == 1

    (speaker, speaker_id), *_ = joined
    await speaker.send(json.dumps({"from": speaker_id, "text": "after the nap"}))
    frames = [json.loads(await recv(ws)) for ws, _ in joined]
    assert chat_said(frames[0]) == (speaker_id, "after the nap", None)
    assert all(frame == frames[0] for frame in frames)
    assert host.constructions == 2

    newcomer, new_id = await chat.join("lobby")  # the others are told (checked by join)
    assert new_id == 4  # the counter lives in storage: ids continue
    assert chat.attached_ids("lobby") == [1, 2, 3, 4]
    assert chat.greetings[new_id][0] == frames[:1]  # so does the history

    # The newcomer hears the others, and they hear it.
    await chat.say(new_id, "hello")
    await chat.say(2, "welcome")
    await assert_silent(*(w for w, _ in joined), newcomer)


async def test_a_join_wakes_a_hibernated_chat(chat: ChatRoom) -> None:
    first, _ = await chat.join("lobby")
    host = chat.host("lobby")
    await wait_for(host.is_idle)
    host.evict()
    assert host.state is Lifecycle.HIBERNATED
    second, second_id = await chat.join("lobby")  # first is told, by the woken object
    assert second_id == 2 and host.constructions == 2
    await second.send(json.dumps({"from": 2, "text": "hi"}))
    for ws in (first, second):
        assert chat_said(json.loads(await recv(ws))) == (2, "hi", None)


async def test_the_chat_hibernates_on_its_own_after_hibernation_timeout(chat: ChatRoom) -> None:
    joined = [await chat.join("lobby") for _ in range(2)]
    await chat.hibernate("lobby")
    (speaker, speaker_id), _ = joined
    await speaker.send(json.dumps({"from": speaker_id, "text": "x"}))
    for ws, _ in joined:
        assert chat_said(json.loads(await recv(ws))) == (speaker_id, "x", None)


async def test_a_chat_name_and_history_survive_hibernation(chat: ChatRoom) -> None:
    """Names live in the sockets' attachments, the history in SQL: neither is lost when the
    room's object leaves memory (moved past the hibernation timeout by the fake clock)."""
    a, a_id = await chat.join("lobby")
    b, b_id = await chat.join("lobby")
    await a.send(json.dumps({"type": "name", "name": "Ada"}))
    chat.names[a_id] = "Ada"
    for ws in (a, b):
        assert json.loads(await recv(ws)) == {"type": "rename", "user": chat_user(a_id, "Ada")}
    sent = [await chat.say(a_id, "before the nap")]

    host = await chat.hibernate("lobby")
    assert host.constructions == 1
    sent.append(await chat.say(a_id, "after the nap"))  # still "Ada"
    assert sent[-1]["name"] == "Ada"
    assert host.constructions == 2

    await a.send(json.dumps({"type": "name", "name": "Ada L."}))  # renamed while awake...
    chat.names[a_id] = "Ada L."
    for ws in (a, b):
        assert json.loads(await recv(ws)) == {"type": "rename", "user": chat_user(a_id, "Ada L.")}
    await chat.hibernate("lobby")
    c, c_id = await chat.join("lobby")  # ...the newcomer's presence has it; history too
    history, presence = chat.greetings[c_id]
    assert presence["users"] == [chat_user(a_id, "Ada L."), chat_user(b_id), chat_user(c_id)]
    assert history == sent
    assert host.constructions == 3

    await b.send(json.dumps({"type": "name", "name": "Bo"}))
    for ws in (a, b, c):
        assert json.loads(await recv(ws)) == {"type": "rename", "user": chat_user(b_id, "Bo")}
    await chat.hibernate("lobby")
    await b.close()  # the close wakes the object, which announces the leave with the name
    for ws in (a, c):
        assert json.loads(await recv(ws)) == {"type": "leave", "user": chat_user(b_id, "Bo")}
    assert host.constructions == 4
    await assert_silent(a, c)


class Quiet(opendo.DurableObject):
    """Accepts hibernatable sockets and defines no hibernation handler at all."""

    async def fetch(self, request: opendo.Request) -> opendo.Response:
        pair = opendo.WebSocketPair()
        self.ctx.accept_websocket(pair.server)
        return opendo.Response(None, status=101, web_socket=pair.client)


class QuietWorker(opendo.WorkerEntrypoint):
    async def fetch(self, request: opendo.Request) -> opendo.Response:
        response: opendo.Response = await self.env.QUIET.get_by_name("q").fetch(request)
        return response


async def test_without_handlers_a_close_is_answered_and_only_a_lost_message_is_an_error(
    opendo: Any, caplog: pytest.LogCaptureFixture
) -> None:
    project = opendo(bindings={"QUIET": Quiet}, worker=QuietWorker)
    closing = await project.websocket("/q")
    closing.close(1000, "bye")
    assert await closing.wait_closed() == (1000, "bye")  # the close was answered
    async with project.websocket("/q") as talking:
        talking.send("anyone?")
        await wait_for(lambda: any(r.levelname == "ERROR" for r in caplog.records))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["Quiet received a WebSocket event but defines no web_socket_message()"]
