"""Integration tests of the chat example (examples/chat), over real sockets on 127.0.0.1.

Each test serves ``opendo.create_app(CHAT, persist_to=tmp_path)`` with uvicorn (``serve`` from
conftest) and talks to it with the ``websockets`` asyncio client and httpx, as a browser would;
the restart tests run the real ``opendo serve`` (``run_opendo``). The protocol under test is
examples/chat/README.md: the tutorial's frames (``{"id"}``, ``{"from", "text"}``) and the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CHAT, OpendoProcess, run_opendo, serve, wait_for
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import opendo
from opendo import ReadyState

PUBLIC = CHAT / "public"
RECV_TIMEOUT = 5.0  # generous bound for a frame that must arrive

HISTORY = 100  # the README's numbers
TRIM_EVERY = 20  # examples/chat/worker.py deletes older messages every 20 messages
MAX_FRAME = 4096
BURST, PER_SECOND = 10, 2.0
ANNOUNCE_UP_TO = 256
ERROR_CODES = {
    "bad_json",
    "binary",
    "missing_text",
    "empty_text",
    "too_large",
    "rate_limited",
    "bad_name",
    "unknown_type",
    "storage_failed",
}
MESSAGE_KEYS = {"from", "text", "name", "at"}

Frame = dict[str, Any]


# -- helpers --------------------------------------------------------------------------------


async def open_ws(addr: str, path: str) -> ClientConnection:
    return await asyncio.wait_for(
        connect(f"ws://{addr}{path}", compression=None, open_timeout=5, close_timeout=2),
        RECV_TIMEOUT,
    )


async def recv_json(ws: ClientConnection, within: float = RECV_TIMEOUT) -> Any:
    async with asyncio.timeout(within):
        raw = await ws.recv()
    assert isinstance(raw, str), f"a binary frame: {raw!r}"
    return _strict_json(raw)


async def recv_many(ws: ClientConnection, n: int, within: float = RECV_TIMEOUT) -> list[Any]:
    return [await recv_json(ws, within) for _ in range(n)]


def _strict_json(raw: str | bytes) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(raw, parse_constant=reject)


def _id(user: Frame) -> int:
    return int(user["id"])


def user(id: int, name: str | None = None) -> Frame:
    return {"id": id, "name": name}


def said(sender: int, text: str, name: str | None = None) -> Frame:
    """A message frame without its ``at``: compare with ``content(frame)``."""
    return {"from": sender, "text": text, "name": name}


def content(frame: Frame) -> Frame:
    """``frame``, checked to be a message with a current ``at``, without ``at``."""
    assert set(frame) == MESSAGE_KEYS, frame
    at = frame["at"]
    assert type(at) is int and abs(at - time.time() * 1000) < 60_000, frame
    return {key: frame[key] for key in ("from", "text", "name")}


def error_code(frame: Frame) -> str:
    """The code of ``frame``, checked to be an error frame."""
    assert set(frame) == {"type", "error", "message"} and frame["type"] == "error", frame
    assert frame["error"] in ERROR_CODES, frame
    assert isinstance(frame["message"], str) and frame["message"], frame
    return str(frame["error"])


def message(sender: int, text: str) -> str:
    """What the tutorial's page sends."""
    return json.dumps({"from": sender, "text": text})


@dataclass(eq=False)
class Client:
    """One WebSocket in a room, with what it was told when it joined."""

    ws: ClientConnection
    id: int
    room: str
    history: list[Frame]
    presence: Frame
    name: str | None = None

    @property
    def user(self) -> Frame:
        return user(self.id, self.name)

    async def send(self, frame: Frame | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, within: float = RECV_TIMEOUT) -> Any:
        return await recv_json(self.ws, within)


PROBE = json.dumps({"type": "probe"})


async def assert_quiet(*clients: Client | ClientConnection) -> None:
    """No frame is waiting for any of ``clients``, nor on its way to it.

    Each sends a frame of an unknown type, which the room answers with an error to that client
    alone, after every frame it sent before (one object, one order); so that answer must be
    the client's next frame. Nothing sleeps: a frame the test did not expect comes first.
    """

    async def one(ws: ClientConnection) -> None:
        await ws.send(PROBE)
        frame = await recv_json(ws)
        assert frame.get("type") == "error" and frame["error"] == "unknown_type", frame

    await asyncio.gather(*(one(c.ws if isinstance(c, Client) else c) for c in clients))


def check_greeting(greeting: Any, history: Any, presence: Any) -> None:
    """The three frames that open every connection have the README's shapes."""
    assert set(greeting) == {"id"} and type(greeting["id"]) is int, greeting
    assert set(history) == {"type", "messages"} and history["type"] == "history", history
    for item in history["messages"]:
        content(item)
    assert set(presence) == {"type", "users", "count"}, presence
    assert presence["type"] == "presence", presence


@dataclass
class Chat:
    """One served chat app, the clients a test opened on it (closed at teardown), and who the
    test knows to be in each room: ``join``, ``say``, ``rename`` and ``leave`` check that every
    member of the room gets the frame the README promises, and nothing else comes first."""

    app: opendo.App | None  # None: served by ``opendo serve``, in another process
    addr: str
    clients: list[ClientConnection] = field(default_factory=list)
    members: dict[str, list[Client]] = field(default_factory=dict)

    async def join(self, room: str, others: list[Frame] | None = None) -> Client:
        """Open a WebSocket to /<room>: checks its first three frames (id, history, presence)
        and the ``join`` announced to everyone already there. ``others``: the users present
        that the test reads for itself (not in ``members``)."""
        ws = await open_ws(self.addr, f"/{room}")
        self.track(ws)
        greeting, history, presence = await recv_many(ws, 3)
        check_greeting(greeting, history, presence)
        client = Client(ws, greeting["id"], room, history["messages"], presence)
        members = self.members.setdefault(room, [])
        everyone = sorted([*(c.user for c in members), client.user, *(others or [])], key=_id)
        assert presence == {
            "type": "presence",
            "users": everyone[:ANNOUNCE_UP_TO],
            "count": len(everyone),
        }
        for member in members:
            assert await member.recv() == {"type": "join", "user": user(client.id)}
        members.append(client)
        return client

    async def say(self, client: Client, text: str, **extra: Any) -> Frame:
        """``client`` sends ``{"text": text, **extra}``; everyone in the room (``client``
        included) gets the same message frame, which is returned."""
        await client.send({"text": text, **extra})
        frames = [await member.recv() for member in self.members[client.room]]
        assert content(frames[0]) == said(client.id, text, client.name)
        assert all(frame == frames[0] for frame in frames), frames
        return frames[0]

    async def rename(self, client: Client, name: str) -> None:
        await client.send({"type": "name", "name": name})
        client.name = name
        for member in self.members[client.room]:
            assert await member.recv() == {"type": "rename", "user": client.user}

    async def leave(self, client: Client, *, abort: bool = False) -> None:
        """``client`` closes its WebSocket (or loses its connection): everyone left is told."""
        members = self.members[client.room]
        members.remove(client)
        if abort:
            client.ws.transport.abort()
        else:
            async with asyncio.timeout(RECV_TIMEOUT):
                await client.ws.close()
        for member in members:
            assert await member.recv() == {"type": "leave", "user": client.user}

    def track(self, ws: ClientConnection) -> None:
        self.clients.append(ws)

    def host(self, room: str) -> Any:
        assert self.app is not None
        hosts = [h for h in self.app.runtime.live_hosts() if h.id.name == room]
        assert len(hosts) == 1, hosts
        return hosts[0]

    def sessions(self, room: str) -> dict[int, Any]:
        """The room's connected sockets, by the id in their attachment."""
        return {
            ws.deserialize_attachment()["id"]: ws
            for ws in self.host(room).hibernatable
            if ws.ready_state is not ReadyState.CLOSED
        }

    def stored_messages(self, room: str) -> list[Frame]:
        """The room's ``messages`` table, read from its SQL storage."""
        rows = self.host(room).storage.sql.exec(
            "SELECT sender, name, text, at FROM messages ORDER BY seq"
        )
        return [
            {"from": r["sender"], "name": r["name"], "text": r["text"], "at": r["at"]} for r in rows
        ]


async def _close_all(clients: list[ClientConnection]) -> None:
    async with asyncio.timeout(10):
        await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)


@pytest.fixture(params=["native", "asgi"])
async def chat(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Chat]:
    app = opendo.create_app(CHAT, persist_to=tmp_path)
    async with serve(app, ws=request.param) as addr:
        state = Chat(app, addr)
        try:
            yield state
        finally:
            await _close_all(state.clients)


# -- routing --------------------------------------------------------------------------------


async def test_websocket_to_root_is_refused_with_400(chat: Chat) -> None:
    with pytest.raises(InvalidStatus) as caught:
        ws = await open_ws(chat.addr, "/")
        chat.track(ws)
    response = caught.value.response
    assert response.status_code == 400
    assert response.body == b"Bad request"


async def test_plain_get_of_a_room_is_426(chat: Chat) -> None:
    async with httpx.AsyncClient(base_url=f"http://{chat.addr}", timeout=5) as http:
        for path in ("/lobby", "/a/b"):
            response = await http.get(path, headers={"Accept": "*/*"})
            assert response.status_code == 426, path
            assert response.text == "Expected upgrade: websocket", path
    # Both requests reached a Chat object: one per room, "lobby" and "a/b".
    names = sorted(h.id.name for h in chat.app.runtime.live_hosts())
    assert names == ["a/b", "lobby"]


# -- the page ---------------------------------------------------------------------------------


NAVIGATE = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}


async def test_a_browser_opening_a_room_gets_the_page(chat: Chat) -> None:
    index = (PUBLIC / "index.html").read_bytes()
    script = (PUBLIC / "chat.js").read_bytes()
    async with httpx.AsyncClient(base_url=f"http://{chat.addr}", timeout=5) as http:
        for path in ("/lobby", "/a/b", "/"):
            page = await http.get(path, headers=NAVIGATE)
            assert page.status_code == 200, path
            assert page.headers["content-type"].split(";")[0] == "text/html", path
            assert page.content == index, path
        js = await http.get("/chat.js", headers={"Accept": "*/*", "Sec-Fetch-Mode": "no-cors"})
        assert js.status_code == 200
        assert js.headers["content-type"].split(";")[0].strip() in (
            "text/javascript",
            "application/javascript",
        )
        assert js.content == script
    assert chat.app.runtime.live_hosts() == []  # the page never reached an object


def test_the_page_refers_to_its_script_absolutely() -> None:
    html = (PUBLIC / "index.html").read_text()
    assert re.search(r"""<script[^>]*\ssrc=["']/chat\.js["']""", html)


def _strip_js_comments(js: str) -> str:
    js = re.sub(r"/\*.*?\*/", "", js, flags=re.S)
    return re.sub(r"(?m)(^|\s)//.*$", r"\1", js)  # not the "//" of "${scheme}://"


def test_the_script_connects_to_its_own_origin_and_never_parses_html() -> None:
    js = _strip_js_comments((PUBLIC / "chat.js").read_text())
    assert "location.host" in js
    assert "new WebSocket(" in js
    assert not re.search(r"wss?://(?!\$\{)", js), "a hard-coded WebSocket host"
    assert "localhost" not in js
    assert "127.0.0.1" not in js
    assert not re.search(r":\d{2,5}\b", js), "a hard-coded port"
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in js, sink
    assert "textContent" in js


# -- ids and identity -------------------------------------------------------------------------


async def test_ids_count_up_per_room_in_connect_order(chat: Chat) -> None:
    assert [(await chat.join("a")).id for _ in range(5)] == [1, 2, 3, 4, 5]
    assert [(await chat.join("b")).id for _ in range(3)] == [1, 2, 3]
    assert (await chat.join("a")).id == 6
    assert (await chat.join("b")).id == 4
    # Each join was announced in its own room only (``join`` checked it): nothing else came.
    await assert_quiet(*chat.members["a"], *chat.members["b"])


async def _connect_raw(chat: Chat, room: str) -> tuple[ClientConnection, list[Any]]:
    """Open a WebSocket to /<room> (tracked) and read its first three frames."""
    ws = await open_ws(chat.addr, f"/{room}")
    chat.track(ws)
    frames = await recv_many(ws, 3, within=15)
    check_greeting(*frames)
    return ws, frames


async def test_200_concurrent_connects_to_a_new_room(chat: Chat) -> None:
    room = "crowd"
    start = time.perf_counter()
    async with asyncio.timeout(30):
        results = await asyncio.gather(
            *(_connect_raw(chat, room) for _ in range(200)), return_exceptions=True
        )
    elapsed = time.perf_counter() - start
    # On the development machine the 200 handshakes and first three frames took about 0.3 s.
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    joined = [r for r in results if not isinstance(r, BaseException)]
    by_id = {frames[0]["id"]: (ws, frames) for ws, frames in joined}
    assert sorted(by_id) == list(range(1, 201))  # 200 distinct ids, 1..200
    assert elapsed < 30

    host = chat.host(room)
    assert host.constructions == 1
    assert host.storage.kv.get("counter") == 200
    assert len(chat.sessions(room)) == 200

    # The joins ran one at a time, in id order: client k saw 1..k present, then was told of
    # k+1..200 joining, in that order.
    for k, (_, (_, history, presence)) in by_id.items():
        assert history == {"type": "history", "messages": []}
        assert presence == {
            "type": "presence",
            "users": [user(i) for i in range(1, k + 1)],
            "count": k,
        }

    # One message from one of them reaches all 200, after the joins they were told of.
    sender, (greeting, _, _) = joined[0]
    await sender.send(message(greeting["id"], "hello, crowd"))

    async def rest(k: int, ws: ClientConnection) -> list[Any]:
        return await recv_many(ws, 200 - k + 1, within=15)

    received = await asyncio.gather(*(rest(k, ws) for k, (ws, _) in by_id.items()))
    for k, frames in zip(by_id, received, strict=True):
        assert frames[:-1] == [{"type": "join", "user": user(i)} for i in range(k + 1, 201)]
        assert content(frames[-1]) == said(greeting["id"], "hello, crowd")
        assert frames[-1] == received[0][-1]  # the same frame, ``at`` included
    await assert_quiet(*(ws for ws, _ in joined))


async def test_the_server_decides_who_a_message_is_from(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    claims: list[Any] = [999, b.id, 0, -1, str(a.id), None, 1.5, {"id": b.id}]
    for claim in claims:
        await a.send({"from": claim, "text": f"claimed {claim!r}"})
        for client in (a, b):
            assert content(await client.recv()) == said(a.id, f"claimed {claim!r}")
    await a.send({"text": "no from at all"})
    for client in (a, b):
        assert content(await client.recv()) == said(a.id, "no from at all")
    await assert_quiet(a, b)


async def test_a_message_frame_is_from_text_name_and_at(chat: Chat) -> None:
    a = await chat.join("room")
    before = int(time.time() * 1000)
    await a.send({"text": "when?"})
    frame = await a.recv()
    after = int(time.time() * 1000) + 1
    assert set(frame) == {"from", "text", "name", "at"}
    assert frame["from"] == a.id and frame["text"] == "when?" and frame["name"] is None
    assert type(frame["at"]) is int and before <= frame["at"] <= after  # epoch milliseconds


# -- names --------------------------------------------------------------------------------------


async def test_a_name_is_announced_to_everyone_and_carried_by_later_messages(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    other = await chat.join("elsewhere")
    await chat.rename(a, "Ada")  # a rename frame to a and b: {"id": 1, "name": "Ada"}
    assert (await chat.say(a, "hi"))["name"] == "Ada"
    assert (await chat.say(b, "hello"))["name"] is None  # b has not set one
    await chat.rename(a, "Ada Lovelace")  # again
    await chat.rename(b, "Z")  # the shortest name
    await chat.rename(b, "x" * 32)  # the longest
    await chat.rename(b, "Łukasz ✓ 😀")
    assert (await chat.say(a, "renamed"))["name"] == "Ada Lovelace"
    assert (await chat.say(b, "me too"))["name"] == "Łukasz ✓ 😀"
    # A newcomer's presence frame has the names (``join`` checks it against the renames).
    c = await chat.join("room")
    assert c.presence["users"] == [user(a.id, "Ada Lovelace"), user(b.id, "Łukasz ✓ 😀"), user(3)]
    await assert_quiet(a, b, c, other)


BAD_NAMES: list[Any] = [
    "",
    " ",
    " \t\n ",
    "x" * 33,
    " " + "y" * 33 + " ",
    "A\nB",
    "A\x00B",
    "\x1b[31mred",
    "A\tB",
    "A\x7fB",
    5,
    None,
    True,
    ["Ada"],
    {"name": "Ada"},
]


async def test_bad_names_are_refused_to_the_sender_only(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    await chat.rename(a, "Ada")
    for name in BAD_NAMES:
        await a.send({"type": "name", "name": name})
        assert error_code(await a.recv()) == "bad_name", name
    await a.send({"type": "name"})  # no name at all
    assert error_code(await a.recv()) == "bad_name"
    await assert_quiet(a, b)  # one error each, to a only
    assert (await chat.say(a, "still Ada"))["name"] == "Ada"  # and the name is unchanged


async def test_a_name_with_a_c1_control_character_is_refused(chat: Chat) -> None:
    a = await chat.join("room")
    for name in ("A\x85B", "\x9b31mred"):
        await a.send({"type": "name", "name": name})
        assert error_code(await a.recv()) == "bad_name", name


async def test_a_text_with_a_lone_surrogate_gets_an_error_not_silence(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    await a.send('{"text": "\\ud800 alone"}')
    await b.send({"text": "from b"})
    assert error_code(await a.recv()) != "rate_limited"  # today: b's message comes first
    for client in (a, b):
        assert content(await client.recv()) == said(b.id, "from b")
    await chat.say(a, "and a still talks")


async def test_a_name_with_a_lone_surrogate_does_not_silence_its_owner(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    await a.send('{"type": "name", "name": "A\\ud800"}')
    answer = await a.recv()
    if answer.get("type") == "rename":  # accepted: then a's messages must still go out
        assert await b.recv() == answer
        a.name = answer["user"]["name"]
    else:
        assert error_code(answer) == "bad_name"
    await a.send({"text": "can I talk?"})
    await b.send({"text": "from b"})
    for client in (a, b):
        assert content(await client.recv()) == said(a.id, "can I talk?", a.name)
        assert content(await client.recv()) == said(b.id, "from b")


# -- presence -----------------------------------------------------------------------------------


async def test_joins_and_leaves_are_announced_and_presence_lists_everyone(chat: Chat) -> None:
    a = await chat.join("room")
    assert a.presence == {"type": "presence", "users": [user(1)], "count": 1}
    await chat.rename(a, "Ada")
    b = await chat.join("room")  # a is told: {"type": "join", "user": {"id": 2, "name": None}}
    assert b.presence == {"type": "presence", "users": [user(1, "Ada"), user(2)], "count": 2}
    c = await chat.join("room")  # a and b are told
    assert c.presence == {
        "type": "presence",
        "users": [user(1, "Ada"), user(2), user(3)],
        "count": 3,
    }
    await chat.rename(b, "Bo")
    await chat.leave(b)  # a closing: a and c get {"type": "leave", "user": {"id": 2, "Bo"}}
    await chat.leave(c, abort=True)  # a lost connection: a gets the leave of 3
    d = await chat.join("room")
    assert d.presence == {"type": "presence", "users": [user(1, "Ada"), user(4)], "count": 2}
    await assert_quiet(a, d)


async def test_a_room_of_more_than_256_lists_the_first_256_and_announces_nothing(
    chat: Chat,
) -> None:
    room = "stadium"
    async with asyncio.timeout(30):
        joined = await asyncio.gather(*(_connect_raw(chat, room) for _ in range(ANNOUNCE_UP_TO)))
    by_id = {frames[0]["id"]: ws for ws, frames in joined}
    assert sorted(by_id) == list(range(1, ANNOUNCE_UP_TO + 1))

    async def joins_after(k: int, ws: ClientConnection) -> None:
        frames = await recv_many(ws, ANNOUNCE_UP_TO - k, within=15)
        assert frames == [{"type": "join", "user": user(i)} for i in range(k + 1, 257)]

    await asyncio.gather(*(joins_after(k, ws) for k, ws in by_id.items()))

    # The 257th: everyone is counted, the first 256 (by id) listed, and nobody is told.
    last, (greeting, _, presence) = await _connect_raw(chat, room)
    assert greeting == {"id": 257}
    assert presence == {"type": "presence", "users": [user(i) for i in range(1, 257)], "count": 257}
    await assert_quiet(last, *by_id.values())
    await last.close()  # nor when it leaves a room of 257
    await wait_for(lambda: len(chat.sessions(room)) == ANNOUNCE_UP_TO)
    await assert_quiet(*by_id.values())

    # Back to 256: someone leaving is announced again.
    await by_id.pop(256).close()
    for ws in by_id.values():
        assert await recv_json(ws) == {"type": "leave", "user": user(256)}
    await assert_quiet(*by_id.values())


# -- history ------------------------------------------------------------------------------------


async def test_a_joiner_gets_the_history_oldest_first(chat: Chat) -> None:
    a = await chat.join("room")
    assert a.history == []
    b = await chat.join("room")
    sent = [await chat.say(a, "first")]
    await chat.rename(b, "Bea")
    sent.append(await chat.say(b, "second, <i>verbatim</i> ✓\n"))
    sent.append(await chat.say(a, "third"))
    c = await chat.join("room")
    assert c.history == sent  # from, name, text and at, as they were broadcast
    assert chat.stored_messages("room") == sent  # kept in the room's SQL storage
    assert (await chat.join("elsewhere")).history == []  # per room


async def test_the_history_keeps_the_last_100_messages(chat: Chat) -> None:
    listener = await chat.join("busy")
    sent: list[Frame] = []
    for batch in range(HISTORY // BURST):  # senders take turns: one may send 10 at once
        sender = await chat.join("busy")
        if batch % 2:
            await chat.rename(sender, f"sender {batch}")
        for _ in range(BURST):
            sent.append(await chat.say(sender, f"message {len(sent) + 1}"))
        await chat.leave(sender)
    assert len(sent) == HISTORY
    full = await chat.join("busy")
    assert full.history == sent
    assert chat.stored_messages("busy") == sent

    sent.append(await chat.say(listener, f"message {HISTORY + 1}"))
    newest = await chat.join("busy")
    assert newest.history == sent[1:]  # message 101 pushed message 1 out
    assert newest.history[0]["text"] == "message 2"
    # Storage is trimmed every TRIM_EVERY messages: at message 120 it holds 21..120.
    assert chat.stored_messages("busy") == sent
    while len(sent) < HISTORY + TRIM_EVERY:
        sender = await chat.join("busy")  # a fresh rate-limit bucket for each few
        for _ in range(min(BURST, HISTORY + TRIM_EVERY - len(sent))):
            sent.append(await chat.say(sender, f"message {len(sent) + 1}"))
        await chat.leave(sender)
    assert chat.stored_messages("busy") == sent[-HISTORY:]
    assert (await chat.join("busy")).history == sent[-HISTORY:]


async def _until_closed(client: Client) -> list[Frame]:
    """The frames ``client`` gets until its connection ends."""
    frames = []
    with pytest.raises(ConnectionClosed):
        while True:
            frames.append(await client.recv())
    return frames


async def _served_by(process: OpendoProcess) -> Chat:
    port = await asyncio.to_thread(process.wait_ready)
    return Chat(None, f"127.0.0.1:{port}")


async def test_history_and_ids_survive_a_restart_of_the_server(tmp_path: Path) -> None:
    """The real CLI, restarted on the same --persist-to: after SIGTERM, and after SIGKILL for
    the messages whose broadcast was received."""
    args = ("serve", CHAT, "--port", "0", "--persist-to", tmp_path / "state")
    log = tmp_path / "server.log"

    with run_opendo(*args, stderr_log=log) as first:
        room = await _served_by(first)
        try:
            a = await room.join("lobby")
            b = await room.join("lobby")
            await room.rename(a, "Ada")
            sent = [
                await room.say(a, "before the restart"),
                await room.say(b, "me too ✓"),
                await room.say(a, "<b>bye</b>"),
            ]
            assert await asyncio.to_thread(first.stop, signal.SIGTERM) == 0, log.read_text()
            for client in (a, b):  # told at most of the others leaving, then closed
                for frame in await _until_closed(client):
                    assert frame["type"] == "leave", frame
        finally:
            await _close_all(room.clients)

    with run_opendo(*args, stderr_log=log) as second:
        room = await _served_by(second)
        try:
            c = await room.join("lobby")
            assert c.id == 3  # the counter went on
            assert c.history == sent
            assert (await room.join("elsewhere")).id == 1
            sent.append(await room.say(c, "after the restart"))  # c received the broadcast
            sent.append(await room.say(c, "then killed"))
            code = await asyncio.to_thread(second.stop, signal.SIGKILL)
            assert code == -signal.SIGKILL
        finally:
            await _close_all(room.clients)

    with run_opendo(*args, stderr_log=log) as third:
        room = await _served_by(third)
        try:
            d = await room.join("lobby")
            assert d.id == 4
            assert d.history == sent
            sent.append(await room.say(d, "and on"))
            assert (await room.join("lobby")).history == sent
        finally:
            await _close_all(room.clients)
        assert await asyncio.to_thread(third.stop, signal.SIGTERM) == 0


# -- broadcast --------------------------------------------------------------------------------


async def test_broadcast_reaches_everyone_in_the_room_exactly_once_in_order(chat: Chat) -> None:
    room = [await chat.join("room") for _ in range(3)]
    other = await chat.join("elsewhere")
    per_sender = BURST  # as many as a client may send at once
    texts = {
        client.id: [f"message {i} from {client.id} ✓\nline 2" for i in range(per_sender)]
        for client in room
    }

    async def talk(client: Client) -> None:
        for text in texts[client.id]:
            await client.ws.send(message(client.id, text))

    await asyncio.gather(*(talk(client) for client in room))
    received = await asyncio.gather(*(recv_many(c.ws, per_sender * len(room)) for c in room))

    for frames in received:
        assert all(content(f)["name"] is None for f in frames), frames
        for client in room:
            from_sender = [f["text"] for f in frames if f["from"] == client.id]
            assert from_sender == texts[client.id]  # all of them, once each, in order
        assert frames == received[0]  # one room, one order: everyone saw the same frames
    await assert_quiet(other, *room)


async def test_extra_fields_are_dropped_and_the_text_is_kept(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    await a.send(
        {"from": a.id, "text": "hi", "admin": True, "id": 99, "name": "Root", "at": 1, "to": 2}
    )
    for client in (a, b):
        assert content(await client.recv()) == said(a.id, "hi")


async def test_html_in_a_message_is_broadcast_verbatim(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    payload = "<img src=x onerror=alert(1)> & <script>alert('x')</script> &lt;"
    name = "<b>Ada</b> &amp;"
    await chat.rename(a, name)
    await a.send(message(a.id, payload))
    for client in (a, b):
        async with asyncio.timeout(RECV_TIMEOUT):
            raw = await client.ws.recv()
        assert isinstance(raw, str)  # a text frame
        assert content(json.loads(raw)) == said(a.id, payload, name)
    c = await chat.join("room")
    assert [content(m) for m in c.history] == [said(a.id, payload, name)]


# -- disconnects ------------------------------------------------------------------------------


async def test_an_aborted_client_leaves_the_room_working(chat: Chat) -> None:
    clients = [await chat.join("room") for _ in range(4)]
    assert [c.id for c in clients] == [1, 2, 3, 4]
    gone, *rest = clients
    chat.members["room"].remove(gone)
    gone.ws.transport.abort()

    # A message sent right away (the server may not have noticed yet) still reaches the rest;
    # the leave comes before or after it, once.
    speaker = rest[0]
    await speaker.send(message(speaker.id, "is anyone there?"))
    for client in rest:
        frames = await recv_many(client.ws, 2)
        leave = {"type": "leave", "user": user(gone.id)}
        assert leave in frames, frames
        frames.remove(leave)
        assert content(frames[0]) == said(speaker.id, "is anyone there?")

    await wait_for(lambda: len(chat.sessions("room")) == 3)
    assert gone.id not in chat.sessions("room")
    assert chat.host("room").statistics()["hibernatable_sockets"] == 3

    await chat.say(speaker, "still here")
    await assert_quiet(*rest)

    assert (await chat.join("room")).id == 5  # ids are never reused


async def test_a_graceful_close_completes_quickly(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    chat.members["room"].remove(a)
    start = time.perf_counter()
    async with asyncio.timeout(2):
        await a.ws.close()
    assert time.perf_counter() - start < 2
    assert a.ws.protocol.close_rcvd is not None, "no close frame from the server"
    assert a.ws.protocol.close_rcvd.code == 1000
    assert a.ws.close_code == 1000

    assert await b.recv() == {"type": "leave", "user": user(a.id)}
    await wait_for(lambda: list(chat.sessions("room")) == [b.id])
    await chat.say(b, "alone")
    assert (await chat.join("room")).id == 3


# -- bad frames -------------------------------------------------------------------------------


def text_frame(size: int, unit: str = "x") -> str:
    """A ``{"text": ...}`` frame of exactly ``size`` bytes of UTF-8, mostly ``unit``s."""
    room = size - len(json.dumps({"text": ""}))
    width = len(unit.encode())
    frame = json.dumps({"text": unit * (room // width) + "x" * (room % width)}, ensure_ascii=False)
    assert len(frame.encode()) == size
    return frame


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("not json", "bad_json"),
    ("{'text': 'single quotes'}", "bad_json"),
    ("", "bad_json"),
    ("null", "bad_json"),
    ("[1, 2]", "bad_json"),
    ('"a string"', "bad_json"),
    ("42", "bad_json"),
    ("[" * 1000, "bad_json"),  # too deep (RecursionError) or unterminated
    (b"\x00\x01\xff binary", "binary"),
    (b'{"text": "JSON, but in a binary frame"}', "binary"),
    ('{"from": 1}', "missing_text"),
    ('{"text": 5}', "missing_text"),
    ('{"text": null}', "missing_text"),
    ('{"text": ["hi"]}', "missing_text"),
    ('{"text": ""}', "empty_text"),
    ('{"text": " \\n\\t "}', "empty_text"),
    ("[" * 100_000, "too_large"),
    (text_frame(MAX_FRAME + 1), "too_large"),
    (text_frame(MAX_FRAME + 1, "é"), "too_large"),  # 2,049 characters, but 4,097 bytes
    ('{"type": "shout", "text": "hi"}', "unknown_type"),
    ('{"type": 5}', "unknown_type"),
    ('{"type": ["message"], "text": "hi"}', "unknown_type"),
]


async def test_each_bad_frame_gets_one_error_frame_to_its_sender_only(chat: Chat) -> None:
    watcher = await chat.join("room")
    senders = [await chat.join("room") for _ in range(3)]  # at most 10 messages each
    for i, (frame, code) in enumerate(BAD_FRAMES):
        sender = senders[i % len(senders)]
        await sender.send(frame)
        assert error_code(await sender.recv()) == code, frame[:60]
        # The connection stays open, and everyone's next frame is this message: the error
        # went to the sender alone, once.
        await chat.say(sender, f"after bad frame {i}")
    await assert_quiet(watcher, *senders)


async def test_bad_frames_do_not_break_the_room(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    for frame, _ in BAD_FRAMES:  # all at once
        await a.send(frame)
    await a.send(message(a.id, "after the junk"))
    assert [error_code(await a.recv()) for _ in BAD_FRAMES] == [code for _, code in BAD_FRAMES]
    for client in (a, b):
        assert content(await client.recv()) == said(a.id, "after the junk")
    await assert_quiet(a, b)

    await chat.say(b, "me too")
    assert sorted(chat.sessions("room")) == [a.id, b.id]
    assert (await chat.join("room")).id == 3


async def test_a_frame_of_4096_bytes_is_accepted_and_one_more_byte_is_not(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    for unit in ("x", "é", "✓", "😀"):
        frame = text_frame(MAX_FRAME, unit)
        await a.send(frame)
        for client in (a, b):
            assert content(await client.recv()) == said(a.id, json.loads(frame)["text"])
        await a.send(text_frame(MAX_FRAME + 1, unit))
        assert error_code(await a.recv()) == "too_large"
    await assert_quiet(a, b)


async def test_a_deeply_nested_frame_is_refused_quietly(
    chat: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    a = await chat.join("room")
    await a.send("[" * 4000)  # small enough to be parsed: json.loads raises RecursionError
    await a.send('{"a": ' * 600)
    assert error_code(await a.recv()) == "bad_json"
    assert error_code(await a.recv()) == "bad_json"
    await chat.say(a, "after")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_every_frame_is_strict_json(chat: Chat) -> None:
    raw: list[str | bytes] = []
    a = await chat.join("room")
    b = await chat.join("room")
    sent = [
        f'{{"from": {a.id}, "text": NaN}}',
        '{"text": "x", "from": NaN}',
        '{"text": "y", "at": -Infinity, "name": Infinity}',
        '{"type": "name", "name": NaN}',
        '{"type": NaN}',
        '{"type": Infinity, "text": "z"}',
        '{"type": "name", "name": "N\\u0000"}',
    ]
    for frame in sent:
        await a.send(frame)
    await a.send(message(a.id, "after"))
    for client in (a, b):
        frames: list[str | bytes] = []
        async with asyncio.timeout(RECV_TIMEOUT):
            while not frames or json.loads(frames[-1]).get("text") != "after":
                frames.append(await client.ws.recv())
        raw += frames
    for frame in raw:
        assert isinstance(frame, str)
        _strict_json(frame)  # no NaN, Infinity or -Infinity
    assert sum(json.loads(f).get("type") == "error" for f in raw) == 5  # to a only


# -- rate limiting ------------------------------------------------------------------------------


async def test_a_burst_over_10_messages_is_refused_with_rate_limited(chat: Chat) -> None:
    a = await chat.join("room")
    b = await chat.join("room")
    start = time.monotonic()
    for i in range(30):  # back to back
        await a.send({"text": f"burst {i}"})
    frames = await recv_many(a.ws, 30)
    elapsed = time.monotonic() - start

    broadcasts = [f for f in frames if "type" not in f]
    errors = [f for f in frames if "type" in f]
    assert [content(f) for f in frames[:BURST]] == [said(a.id, f"burst {i}") for i in range(BURST)]
    assert all(error_code(f) == "rate_limited" for f in errors)
    assert len(broadcasts) + len(errors) == 30  # every message answered: none dropped silently
    # Beyond the burst, only what the bucket refilled meanwhile (2 a second) goes through.
    assert BURST <= len(broadcasts) <= BURST + int(elapsed * PER_SECOND)
    texts = [f["text"] for f in broadcasts]
    assert texts == sorted(set(texts), key=lambda t: int(t.split()[1]))  # in order, once each

    # b got the broadcasts and none of a's errors, and is not limited itself.
    assert await recv_many(b.ws, len(broadcasts)) == broadcasts
    await chat.say(b, "I may talk")

    # The bucket refills at 2 a second: after half a second (the one real-time wait of these
    # tests: the limiter uses time.monotonic()), a may send again.
    await asyncio.sleep(1 / PER_SECOND + 0.05)
    await chat.say(a, "after a pause")
    await assert_quiet(a, b)


# -- the tutorial's page ------------------------------------------------------------------------


def _js_truthy(value: Any) -> bool:
    if value is None or value is False or value == "":
        return False
    if isinstance(value, int | float) and (value == 0 or value != value):
        return False
    return True


class SeedPage:
    """What the tutorial's page does with its socket, and only that:

    websocket.addEventListener('message', (event) => {
      const message = JSON.parse(event.data)
      if (message.text) { messages.push(message) }
      else if (message.id) { id = message.id }
    })
    send: websocket.send(JSON.stringify({ from: id, text: textarea.value }))
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.id: Any = None
        self.messages: list[Frame] = []
        self.raw: list[str] = []  # every frame, to check what the page could misread

    async def send(self, text: str) -> None:
        await self.ws.send(json.dumps({"from": self.id, "text": text}))

    async def read_until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(RECV_TIMEOUT):
            while not done():
                data = await self.ws.recv()
                assert isinstance(data, str)
                self.raw.append(data)
                message = json.loads(data)
                if _js_truthy(message.get("text")):
                    self.messages.append(message)
                elif _js_truthy(message.get("id")):
                    self.id = message["id"]

    async def read_until_text(self, text: str) -> None:
        await self.read_until(lambda: any(m["text"] == text for m in self.messages))


async def test_the_tutorial_page_works_against_the_new_server(chat: Chat) -> None:
    room = "123"
    pages = [SeedPage(await open_ws(chat.addr, f"/{room}")) for _ in range(2)]
    for page in pages:
        chat.track(page.ws)
        await page.read_until(lambda page=page: page.id is not None)
    one, two = pages
    assert (one.id, two.id) == (1, 2)

    # Everything the new protocol adds happens around them: a client with a name joins,
    # renames, sends bad frames and leaves; the page itself sends an empty message.
    pages_users = [user(1), user(2)]
    modern = await chat.join(room, others=pages_users)
    await chat.rename(modern, "Ada")
    await modern.send("not json")
    assert error_code(await modern.recv()) == "bad_json"
    await one.send("")  # the page sends its textarea, empty or not
    await one.send("hello from the tutorial")
    await one.read_until_text("hello from the tutorial")
    assert content(await modern.recv()) == said(1, "hello from the tutorial")
    await two.send("hi <b>one</b>")
    await two.read_until_text("hi <b>one</b>")
    assert content(await modern.recv()) == said(2, "hi <b>one</b>")
    await chat.say(modern, "hi both")
    await chat.leave(modern)
    late = await chat.join(
        room, others=pages_users
    )  # history and presence: all of it is ignored by the page
    assert len(late.history) == 3
    await chat.leave(late)
    await one.send("the end")
    for page in pages:
        await page.read_until_text("the end")

    expected = [
        (1, "hello from the tutorial"),
        (2, "hi <b>one</b>"),
        (modern.id, "hi both"),
        (1, "the end"),
    ]
    for page in pages:
        assert [(m["from"], m["text"]) for m in page.messages] == expected
        assert page.id in (1, 2)  # set once, by the greeting, never by a later frame
        frames = [json.loads(raw) for raw in page.raw]
        assert frames[0] == {"id": page.id}
        for frame in frames[1:]:
            assert "id" not in frame, frame  # the page would take it for its own id
            if "type" in frame:  # not a message: the page must skip it
                assert "text" not in frame and "from" not in frame, frame
            else:
                assert set(frame) == MESSAGE_KEYS, frame
    # The page got every frame the new protocol sends, and the empty message's error.
    kinds = {json.loads(raw).get("type") for raw in one.raw[1:]}
    assert kinds == {"history", "presence", "join", "rename", "leave", "error", None}
    await assert_quiet(one.ws, two.ws)


# -- isolation --------------------------------------------------------------------------------


async def test_two_apps_do_not_share_rooms(tmp_path: Path) -> None:
    one = opendo.create_app(CHAT, persist_to=tmp_path / "one")
    two = opendo.create_app(CHAT, persist_to=tmp_path / "two")
    async with serve(one) as addr_one, serve(two) as addr_two:
        first, second = Chat(one, addr_one), Chat(two, addr_two)
        try:
            a = await first.join("lobby")
            b = await first.join("lobby")
            c = await second.join("lobby")
            assert [a.id, b.id, c.id] == [1, 2, 1]
            assert c.presence["count"] == 1
            await first.say(a, "only in one")
            await assert_quiet(c)
            assert (await second.join("lobby")).history == []
        finally:
            await _close_all(first.clients + second.clients)
