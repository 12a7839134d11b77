"""opendo's own WebSocket protocol (``_wsnative``) over real sockets on 127.0.0.1.

Two levels: the ``websockets`` asyncio client (what real clients do), and a raw TCP client
that writes the handshake and masked frames by hand (what RFC 6455 sections 5 and 7 say a
server must do with frames a well-behaved client never sends).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from conftest import serve
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.utils import apply_mask

from opendo import App, WebSocketPair, create_app
from opendo.server.codec import text_frame
from opendo.server.gateway import Limits
from opendo.server.http import HttpProtocol
from opendo.server.websocket import FRAMES_PER_TURN, WebSocketConnection

WORKER = """
import asyncio

from opendo import DurableObject, Response, WebSocketPair, WorkerEntrypoint

events = []  # (tag, kind, ...) as the object sees them
watchers = []  # callables run after every recorded event (the tests wait on them)
gate = None  # (reached, release): a test holds the object's fetch after accept()


def record(*event):
    events.append(event)
    for watcher in list(watchers):
        watcher()


class Echo(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.sockets = []

    async def fetch(self, request):
        tag = request.path.strip("/").split("/")[-1]
        client, server = WebSocketPair()
        server.accept()
        self.sockets.append(server)

        def on_message(event):
            data = event.data
            if data == "!close":
                server.close(4000, "bye")
            elif isinstance(data, str) and data.startswith("!broadcast:"):
                text = data[len("!broadcast:"):]
                for ws in self.sockets:
                    ws.send(text)
            else:
                server.send(data)

        def on_close(event):
            if server in self.sockets:
                self.sockets.remove(server)
            record(tag, "close", event.code, event.reason, event.was_clean)

        server.add_event_listener("message", on_message)
        server.add_event_listener("error", lambda e: record(tag, "error", type(e.error).__name__))
        server.add_event_listener("close", on_close)
        record(tag, "open")
        headers = {"x-test": "yes"}
        offered = request.headers.get("sec-websocket-protocol")
        if tag.startswith("proto") and offered:
            headers["sec-websocket-protocol"] = offered.split(",")[0].strip()
        if tag.startswith("wrongproto"):
            headers["sec-websocket-protocol"] = "not-offered"
        if gate is not None:
            gate[0].set()
            await gate[1].wait()
        return Response(status=101, web_socket=client, headers=headers)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = request.path.strip("/").split("/")
        if parts[0] == "refuse":
            return Response("refused: " + parts[2], status=int(parts[1]))
        if parts[0] == "raise":
            raise RuntimeError("secret internal detail")
        return await self.env.ECHO.get_by_name(parts[1]).fetch(request)
"""

CONFIG = """
name = "wsnative"
main = "worker.py"

[[durable_objects.bindings]]
name = "ECHO"
class_name = "Echo"
"""

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
TIMEOUT = 5.0
MAX_MESSAGE = Limits().max_message_bytes


@pytest.fixture
def app(tmp_path: Path) -> App:
    (tmp_path / "worker.py").write_text(dedent(WORKER))
    (tmp_path / "opendo.toml").write_text(CONFIG)
    return create_app(tmp_path)


def _module(app: App) -> Any:
    return sys.modules[app.runtime.env.ECHO.object_class.__module__]


async def next_event(
    app: App, predicate: Callable[[tuple[Any, ...]], bool], within: float = TIMEOUT
) -> tuple[Any, ...]:
    """The first recorded event (past or future) that matches, within ``within`` seconds."""
    mod = _module(app)
    found: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    def check() -> None:
        for event in mod.events:
            if predicate(event) and not found.done():
                found.set_result(event)

    mod.watchers.append(check)
    try:
        check()
        return await asyncio.wait_for(found, within)
    finally:
        mod.watchers.remove(check)


def events_of(app: App, tag: str) -> list[tuple[Any, ...]]:
    return [event[1:] for event in _module(app).events if event[0] == tag]


async def closed_event(app: App, tag: str, within: float = TIMEOUT) -> tuple[Any, ...]:
    event = await next_event(app, lambda e: e[0] == tag and e[1] == "close", within)
    return event[2:]


# -- a raw client ----------------------------------------------------------------------------


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame; ``length`` overrides the announced payload length."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


class Raw:
    """A hand-driven WebSocket client over a plain TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def head(self) -> bytes:
        """The HTTP response head (status line and headers)."""
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)

    async def read_frame(self, within: float = TIMEOUT) -> tuple[bool, int, bytes]:
        async with asyncio.timeout(within):
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "a server must not mask its frames"
            assert not b0 & 0x70, "no extension was negotiated: reserved bits must be 0"
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            return bool(b0 & 0x80), b0 & 0x0F, await self.reader.readexactly(n)

    async def read_raw_frame(self) -> bytes:
        """The next frame's exact bytes (short frames only)."""
        async with asyncio.timeout(TIMEOUT):
            head = await self.reader.readexactly(2)
            assert head[1] < 126
            return head + await self.reader.readexactly(head[1])

    async def expect_message(self, opcode: int, payload: bytes, within: float = TIMEOUT) -> None:
        assert await self.read_frame(within) == (True, opcode, payload)

    async def expect_close(self, code: int | None) -> bytes:
        """A close frame with ``code`` (None: an empty one), then the server closes TCP."""
        fin, opcode, payload = await self.read_frame()
        assert (fin, opcode) == (True, OP_CLOSE), payload
        if code is None:
            assert payload == b""
        else:
            assert int.from_bytes(payload[:2], "big") == code, payload
        await self.expect_eof()
        return payload[2:]

    async def expect_eof(self) -> None:
        """The server closes the TCP connection (within 2 s) and sends nothing more."""
        assert await asyncio.wait_for(self.reader.read(), 2.0) == b""


def handshake_request(path: str, key: str | None, extra: str = "") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


@contextlib.asynccontextmanager
async def raw_connection(base: str) -> AsyncIterator[Raw]:
    host, port = base.split(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), TIMEOUT)
    try:
        yield Raw(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.wait_closed(), TIMEOUT)


@contextlib.asynccontextmanager
async def raw_socket(base: str, path: str = "/ws/room/raw") -> AsyncIterator[Raw]:
    """A raw connection past a checked handshake."""
    async with raw_connection(base) as raw:
        key = base64.b64encode(os.urandom(16)).decode()
        raw.send(handshake_request(path, key))
        check_accept(await raw.head(), key)
        yield raw


def check_accept(head: bytes, key: str) -> None:
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101 "), head
    headers = {
        k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
    }
    expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert headers["sec-websocket-accept"] == expected
    assert headers["upgrade"].lower() == "websocket"
    assert "sec-websocket-extensions" not in headers


# -- level 1: the websockets client ----------------------------------------------------------


def ws_connect(base: str, path: str = "/ws/room/client", **kwargs: Any) -> Any:
    return connect(
        f"ws://{base}{path}", compression=None, max_size=None, open_timeout=TIMEOUT, **kwargs
    )


async def recv(ws: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


SIZES = [0, 1, 125, 126, 65535, 65536, 1024 * 1024]  # each length encoding, on both sides


async def test_text_and_binary_echo_at_every_length_encoding(app: App) -> None:
    async with serve(app) as base, ws_connect(base) as ws:
        for size in SIZES:
            text = "x" * size
            data = bytes(i % 251 for i in range(size))
            await ws.send(text)
            await ws.send(data)
            got_text, got_data = await recv(ws), await recv(ws)
            assert isinstance(got_text, str) and got_text == text, size
            assert isinstance(got_data, bytes) and got_data == data, size


async def test_non_ascii_text_and_many_messages_in_order(app: App) -> None:
    text = "héllo wörld — 日本語 🎉 \u0000 end"
    long = "€" * 50_000  # 150,000 bytes of UTF-8: a 64-bit length
    async with serve(app) as base, ws_connect(base) as ws:
        await ws.send(text)
        assert await recv(ws) == text
        await ws.send(long)
        assert await recv(ws) == long
        expected = [f"m{i}" if i % 2 else f"m{i}".encode() for i in range(500)]
        for message in expected:
            await ws.send(message)
        assert [await recv(ws) for _ in expected] == expected


async def test_client_close_is_echoed_and_the_object_sees_a_clean_close(app: App) -> None:
    async with serve(app) as base:
        ws = await ws_connect(base, "/ws/room/cc")
        await ws.send("hi")
        assert await recv(ws) == "hi"
        await asyncio.wait_for(ws.close(4001, "done here"), TIMEOUT)
        received = ws.protocol.close_rcvd  # the server's answer
        assert received is not None and (received.code, received.reason) == (4001, "done here")
        assert await closed_event(app, "cc") == (4001, "done here", True)
    assert events_of(app, "cc") == [("open",), ("close", 4001, "done here", True)]


async def test_server_initiated_close(app: App) -> None:
    async with serve(app) as base:
        ws = await ws_connect(base, "/ws/room/sc")
        await ws.send("!close")
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        assert (ws.close_code, ws.close_reason) == (4000, "bye")
        sent = ws.protocol.close_sent  # the client answered the server's close
        assert sent is not None and sent.code == 4000
        assert await closed_event(app, "sc") == (4000, "bye", True)
    assert events_of(app, "sc") == [("open",), ("close", 4000, "bye", True)]


async def test_ping_gets_a_pong(app: App) -> None:
    async with serve(app) as base, ws_connect(base) as ws:
        for payload in (b"", b"abc", bytes(125)):
            pong = await ws.ping(payload)
            await asyncio.wait_for(pong, TIMEOUT)
        await ws.send("still open")
        assert await recv(ws) == "still open"


async def test_the_workers_101_headers_and_subprotocol(app: App) -> None:
    async with serve(app) as base:
        async with ws_connect(base) as ws:
            assert ws.response.headers["x-test"] == "yes"
            assert ws.subprotocol is None
        # The Worker answers with one of the client's offers: the client takes it.
        offers: Any = ["chat.v2", "chat.v1"]
        async with ws_connect(base, "/ws/room/proto", subprotocols=offers) as ws:
            assert ws.subprotocol == "chat.v2"
            assert ws.response.headers["x-test"] == "yes"
            await ws.send("x")
            assert await recv(ws) == "x"
        # Offered but not chosen by the Worker: the server does not pick one on its own (on
        # Cloudflare too, choosing is the Worker's job); the connection goes on without one.
        async with ws_connect(base, "/ws/room/plain", subprotocols=offers) as ws:
            assert ws.subprotocol is None
            assert "sec-websocket-protocol" not in ws.response.headers
        # A subprotocol the client did not offer is passed through, and the client refuses it.
        with pytest.raises(Exception, match="(?i)protocol"):
            async with ws_connect(base, "/ws/room/wrongproto", subprotocols=offers):
                pass


async def test_a_refusal_is_the_workers_status_and_body(app: App) -> None:
    async with serve(app) as base:
        for status in (400, 403):
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(base, f"/refuse/{status}/nope"):
                    pass
            response = info.value.response
            assert response.status_code == status
            assert response.body == b"refused: nope"
            assert response.headers["content-length"] == str(len(b"refused: nope"))


async def test_a_worker_that_raises_is_a_500_without_traceback(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(app) as base:
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(base, "/raise/x"):
                pass
        async with ws_connect(base) as ws:  # the server still serves
            await ws.send("ok")
            assert await recv(ws) == "ok"
    response = info.value.response
    assert response.status_code == 500
    body = response.body or b""
    assert b"Traceback" not in body and b"secret" not in body
    assert "secret internal detail" in caplog.text  # it is in the server's log


async def test_two_connections_do_not_see_each_others_frames(app: App) -> None:
    async with (
        serve(app) as base,
        ws_connect(base, "/ws/room/a") as a,
        ws_connect(base, "/ws/room/b") as b,
    ):
        for i in range(50):
            await a.send(f"a{i}")
            await b.send(f"b{i}".encode())
        got_a = [await recv(a) for _ in range(50)]
        got_b = [await recv(b) for _ in range(50)]
        assert got_a == [f"a{i}" for i in range(50)]
        assert got_b == [f"b{i}".encode() for i in range(50)]


async def test_a_server_shutdown_closes_with_1012(app: App) -> None:
    async with contextlib.AsyncExitStack() as stack:
        async with serve(app) as base:
            raw = await stack.enter_async_context(raw_socket(base, "/ws/room/down"))
            raw.send(frame(OP_TEXT, b"hi"))
            await raw.expect_message(OP_TEXT, b"hi")
        assert await raw.expect_close(1012) == b"server restarting"
    assert events_of(app, "down") == [
        ("open",),
        ("error", "ConnectionResetError"),  # not clean: the client did not answer the close
        ("close", 1012, "server restarting", False),
    ]


# -- level 2: a raw client -------------------------------------------------------------------


async def test_raw_handshake_and_echo(app: App) -> None:
    async with serve(app) as base, raw_socket(base) as raw:
        raw.send(frame(OP_TEXT, b"hello"))
        await raw.expect_message(OP_TEXT, b"hello")
        raw.send(frame(OP_BINARY, b"\x00\xff"))
        await raw.expect_message(OP_BINARY, b"\x00\xff")
        raw.send(frame(OP_TEXT))
        await raw.expect_message(OP_TEXT, b"")


async def test_a_fragmented_message_is_one_message(app: App) -> None:
    async with serve(app) as base, raw_socket(base) as raw:
        raw.send(frame(OP_TEXT, b"hel", fin=False))
        raw.send(frame(OP_CONT, "lo wö".encode(), fin=False))
        raw.send(frame(OP_CONT, b"rld", fin=True))
        await raw.expect_message(OP_TEXT, "hello wörld".encode())
        raw.send(frame(OP_BINARY, b"\x01", fin=False))
        raw.send(frame(OP_CONT, b"", fin=False))
        raw.send(frame(OP_CONT, b"\x02", fin=True))
        await raw.expect_message(OP_BINARY, b"\x01\x02")
        euro = "€".encode()  # a character split between two fragments
        raw.send(frame(OP_TEXT, euro[:1], fin=False) + frame(OP_CONT, euro[1:]))
        await raw.expect_message(OP_TEXT, euro)


async def test_a_ping_between_fragments_is_answered(app: App) -> None:
    async with serve(app) as base, raw_socket(base) as raw:
        raw.send(frame(OP_TEXT, b"frag", fin=False))
        raw.send(frame(OP_PING, b"are you there"))
        assert await raw.read_frame() == (True, OP_PONG, b"are you there")
        raw.send(frame(OP_PONG, b"unsolicited"))  # ignored
        raw.send(frame(OP_CONT, b"ment", fin=True))
        await raw.expect_message(OP_TEXT, b"fragment")


VIOLATIONS = [
    ("unmasked", frame(OP_TEXT, b"hi", masked=False), 1002),
    ("rsv1", frame(OP_TEXT, b"hi", rsv=0x40), 1002),
    ("rsv2", frame(OP_TEXT, b"hi", rsv=0x20), 1002),
    ("rsv3", frame(OP_TEXT, b"hi", rsv=0x10), 1002),
    ("opcode 3", frame(0x3, b"hi"), 1002),
    ("opcode 7", frame(0x7), 1002),
    ("opcode 0xB", frame(0xB, b"hi"), 1002),
    ("opcode 0xF", frame(0xF), 1002),
    ("continuation first", frame(OP_CONT, b"hi"), 1002),
    ("text inside a message", frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"), 1002),
    ("binary inside a message", frame(OP_TEXT, b"a", fin=False) + frame(OP_BINARY, b"b"), 1002),
    ("invalid utf-8", frame(OP_TEXT, b"\xff\xfe"), 1007),
    ("overlong utf-8", frame(OP_TEXT, b"\xc0\xaf"), 1007),
    ("surrogate in utf-8", frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
    ("fragmented bad utf-8", frame(OP_TEXT, b"ok", fin=False) + frame(OP_CONT, b"\xff"), 1007),
    ("close 1 byte", frame(OP_CLOSE, b"\x03"), 1002),
    ("close 999", frame(OP_CLOSE, close_payload(999)), 1002),
    ("close 1004", frame(OP_CLOSE, close_payload(1004)), 1002),
    ("close 1005", frame(OP_CLOSE, close_payload(1005)), 1002),
    ("close 1006", frame(OP_CLOSE, close_payload(1006)), 1002),
    ("close 1015", frame(OP_CLOSE, close_payload(1015)), 1002),
    ("close 5000", frame(OP_CLOSE, close_payload(5000)), 1002),
    ("close reason not utf-8", frame(OP_CLOSE, close_payload(1000) + b"\xff"), 1007),
    ("ping of 126 bytes", frame(OP_PING, bytes(126)), 1002),
    ("fragmented ping", frame(OP_PING, b"x", fin=False), 1002),
]


async def test_a_protocol_violation_fails_the_connection(app: App) -> None:
    """Each case on its own connection: a close frame with the code, then TCP is closed."""
    async with serve(app) as base:
        for i, (what, data, code) in enumerate(VIOLATIONS):
            tag = f"bad{i}"
            async with raw_socket(base, f"/ws/room/{tag}") as raw:
                raw.send(data)
                try:
                    await raw.expect_close(code)
                    closed_code, _, was_clean = await closed_event(app, tag)
                except (AssertionError, TimeoutError) as exc:
                    raise AssertionError(f"{what}: {exc!r}") from exc
                assert (closed_code, was_clean) == (code, False), what
                assert [event[0] for event in events_of(app, tag)] == ["open", "error", "close"]


async def test_a_close_with_a_reserved_code_fails_the_connection(app: App) -> None:
    async with serve(app) as base:
        for code in (1016, 1100, 2000, 2999):
            async with raw_socket(base) as raw:
                raw.send(frame(OP_CLOSE, close_payload(code)))
                await raw.expect_close(1002)


async def test_a_fragmented_control_frame_fails_the_connection(app: App) -> None:
    async with serve(app) as base:
        for opcode in (OP_CLOSE, OP_PONG):
            async with raw_socket(base) as raw:
                raw.send(frame(opcode, close_payload(1000), fin=False) + frame(OP_PING, b"?"))
                await raw.expect_close(1002)  # not the echo of the close, nor the pong


async def test_a_valid_close_code_is_echoed_and_tcp_is_closed(app: App) -> None:
    async with serve(app) as base:
        for code in (1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999):
            async with raw_socket(base, f"/ws/room/ok{code}") as raw:
                raw.send(frame(OP_CLOSE, close_payload(code, "why")))
                assert await raw.expect_close(code) == b"why"  # then EOF within 2 s
                assert await closed_event(app, f"ok{code}") == (code, "why", True)


async def test_a_close_without_payload_is_answered_with_an_empty_close(app: App) -> None:
    async with serve(app) as base, raw_socket(base, "/ws/room/empty") as raw:
        raw.send(frame(OP_CLOSE))
        await raw.expect_close(None)
        assert await closed_event(app, "empty") == (1005, "", True)


async def test_frames_after_the_close_are_ignored(app: App) -> None:
    async with serve(app) as base, raw_socket(base, "/ws/room/after") as raw:
        raw.send(frame(OP_CLOSE, close_payload(1000)) + frame(OP_TEXT, b"late"))
        await raw.expect_close(1000)
        await closed_event(app, "after")
    assert events_of(app, "after") == [("open",), ("close", 1000, "", True)]


async def test_a_frame_over_the_limit_is_1009_without_reading_it(app: App) -> None:
    async with serve(app) as base:
        for length in (MAX_MESSAGE + 1, 2**40, 2**63 - 1):
            async with raw_socket(base, f"/ws/room/big{length}") as raw:
                # Only the header and the mask key: the server decides on the announced length.
                raw.send(frame(OP_BINARY, length=length)[:14])
                await raw.expect_close(1009)
                closed = await closed_event(app, f"big{length}")
                assert closed == (1009, "message too big", False)


async def test_a_fragmented_message_over_the_limit_is_1009(app: App) -> None:
    async with serve(app) as base, raw_socket(base) as raw:
        raw.send(frame(OP_BINARY, b"x", fin=False))
        raw.send(frame(OP_CONT, length=MAX_MESSAGE, fin=False)[:14])
        raw.send(bytes(MAX_MESSAGE))  # now all of it: one byte over the limit in total
        await raw.expect_close(1009)


async def test_a_frame_written_one_byte_at_a_time(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks: list[int] = []
    arrived = asyncio.Event()
    original = WebSocketConnection.data_received

    def data_received(self: WebSocketConnection, data: bytes) -> None:
        chunks.append(len(data))
        arrived.set()
        original(self, data)

    monkeypatch.setattr(WebSocketConnection, "data_received", data_received)
    async with serve(app) as base, raw_socket(base) as raw:
        payload = ("x" * 200 + "é").encode()  # a 16-bit length, a multi-byte character
        data = frame(OP_TEXT, payload)
        chunks.clear()
        for i in range(len(data)):
            arrived.clear()
            raw.send(data[i : i + 1])
            await asyncio.wait_for(arrived.wait(), TIMEOUT)  # the server has read this byte
        assert chunks == [1] * len(data)
        await raw.expect_message(OP_TEXT, payload)


async def test_two_frames_in_one_write(app: App) -> None:
    async with serve(app) as base, raw_socket(base) as raw:
        raw.send(frame(OP_TEXT, b"one") + frame(OP_BINARY, b"two") + frame(OP_PING, b"3"))
        await raw.expect_message(OP_TEXT, b"one")
        await raw.expect_message(OP_BINARY, b"two")
        assert await raw.read_frame() == (True, OP_PONG, b"3")


async def test_a_long_burst_in_one_write_is_read_a_few_frames_a_turn_and_all_arrive(
    app: App,
) -> None:
    # More frames than one turn reads (FRAMES_PER_TURN): the rest are read in later turns,
    # in order; then the connection reads again what comes next.
    count = 10 * FRAMES_PER_TURN + 3
    async with serve(app) as base, raw_socket(base) as raw:
        raw.send(b"".join(frame(OP_TEXT, f"m{i}".encode()) for i in range(count)))
        for i in range(count):
            await raw.expect_message(OP_TEXT, f"m{i}".encode())
        raw.send(frame(OP_TEXT, b"after"))
        await raw.expect_message(OP_TEXT, b"after")
        raw.send(frame(OP_TEXT, b"last") + frame(OP_CLOSE, close_payload(1000, "done")))
        await raw.expect_message(OP_TEXT, b"last")
        await raw.expect_close(1000)


async def test_frames_sent_while_the_worker_decides_come_after_the_handshake(app: App) -> None:
    mod = _module(app)
    reached, release = asyncio.Event(), asyncio.Event()
    mod.gate = (reached, release)
    async with serve(app) as base, raw_connection(base) as raw:
        key = base64.b64encode(os.urandom(16)).decode()
        raw.send(handshake_request("/ws/room/early", key))
        await asyncio.wait_for(reached.wait(), TIMEOUT)  # the object holds its answer
        raw.send(frame(OP_TEXT, b"early 1") + frame(OP_TEXT, b"ear", fin=False))
        await asyncio.wait_for(raw.writer.drain(), TIMEOUT)
        raw.send(frame(OP_CONT, b"ly 2"))
        mod.gate = None
        release.set()
        check_accept(await raw.head(), key)
        await raw.expect_message(OP_TEXT, b"early 1")
        await raw.expect_message(OP_TEXT, b"early 2")


async def test_frames_in_the_same_write_as_the_handshake(app: App) -> None:
    async with serve(app) as base, raw_connection(base) as raw:
        key = base64.b64encode(os.urandom(16)).decode()
        raw.send(handshake_request("/ws/room/pipelined", key) + frame(OP_TEXT, b"pipelined"))
        check_accept(await raw.head(), key)
        await raw.expect_message(OP_TEXT, b"pipelined", within=1.0)


async def test_a_handshake_without_a_key_is_a_400(app: App) -> None:
    async with serve(app) as base, raw_connection(base) as raw:
        raw.send(handshake_request("/ws/room/nokey", None))
        head = await raw.head()
        assert head.startswith(b"HTTP/1.1 400 "), head
        await asyncio.wait_for(raw.reader.read(), 2.0)  # the body, then EOF
        assert raw.reader.at_eof()


async def test_a_bad_handshake_leaves_no_socket_open_in_the_object(app: App) -> None:
    async with serve(app) as base, raw_connection(base) as raw:
        raw.send(handshake_request("/ws/room/badkey", "too-short"))
        assert (await raw.head()).startswith(b"HTTP/1.1 400 ")
        await asyncio.wait_for(raw.reader.read(), 2.0)  # the body, then EOF
        assert raw.reader.at_eof()
        if events_of(app, "badkey"):  # the Worker was asked: its socket must be closed
            assert (await closed_event(app, "badkey", within=1.0))[2] is False
        assert all(host.is_idle() for host in app.runtime.live_hosts())


async def test_the_server_closes_tcp_after_its_own_close_is_answered(app: App) -> None:
    async with serve(app) as base, raw_socket(base, "/ws/room/srv") as raw:
        raw.send(frame(OP_TEXT, b"!close"))
        assert await raw.read_frame() == (True, OP_CLOSE, close_payload(4000, "bye"))
        raw.send(frame(OP_TEXT, b"dropped after the server's close"))
        raw.send(frame(OP_PING, b"p"))
        assert await raw.read_frame() == (True, OP_PONG, b"p")  # control frames still work
        raw.send(frame(OP_CLOSE, close_payload(4000, "bye")))
        await raw.expect_eof()
        assert await closed_event(app, "srv") == (4000, "bye", True)
    assert events_of(app, "srv") == [("open",), ("close", 4000, "bye", True)]


async def test_an_abrupt_disconnect_is_an_error_then_1006(app: App) -> None:
    async with serve(app) as base, raw_socket(base, "/ws/room/abrupt") as raw:
        raw.send(frame(OP_TEXT, b"hi"))
        await raw.expect_message(OP_TEXT, b"hi")
        raw.writer.transport.abort()
        assert await closed_event(app, "abrupt") == (1006, "", False)
    assert events_of(app, "abrupt") == [
        ("open",),
        ("error", "ConnectionResetError"),
        ("close", 1006, "", False),
    ]


async def test_a_disconnect_during_the_handshake_closes_the_objects_socket(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost = asyncio.Event()
    original = HttpProtocol.connection_lost

    def connection_lost(self: HttpProtocol, exc: Exception | None) -> None:
        original(self, exc)
        lost.set()

    monkeypatch.setattr(HttpProtocol, "connection_lost", connection_lost)
    mod = _module(app)
    reached, release = asyncio.Event(), asyncio.Event()
    mod.gate = (reached, release)
    async with serve(app) as base:
        async with raw_connection(base) as raw:
            key = base64.b64encode(os.urandom(16)).decode()
            raw.send(handshake_request("/ws/room/gone", key))
            await asyncio.wait_for(reached.wait(), TIMEOUT)  # accepted, not yet answered
            raw.writer.transport.abort()
            await asyncio.wait_for(lost.wait(), TIMEOUT)
        mod.gate = None
        release.set()
        assert await closed_event(app, "gone", within=1.0) == (1006, "", False)


# -- frame once, send to many -----------------------------------------------------------------


def test_text_frame_is_built_once_for_the_same_string() -> None:
    text = "".join(["broadcast ", "é" * 100])
    first = text_frame(text)
    assert text_frame(text) is first
    assert first == bytes((0x81, 126)) + (10 + 200).to_bytes(2, "big") + text.encode()
    equal = "".join(["broadcast ", "é" * 100])
    assert equal is not text
    assert text_frame(equal) == first
    assert text_frame("other") == b"\x81\x05other"
    assert text_frame(text) == first  # not the frame of the last string sent


async def test_a_broadcast_is_the_same_bytes_on_every_socket(app: App) -> None:
    async with (
        serve(app) as base,
        raw_socket(base, "/ws/hall/r1") as r1,
        raw_socket(base, "/ws/hall/r2") as r2,
        raw_socket(base, "/ws/hall/r3") as r3,
    ):
        r2.send(frame(OP_TEXT, "!broadcast:héllo all".encode()))
        frames = [await raw.read_raw_frame() for raw in (r1, r2, r3)]
        assert frames == [b"\x81\x0a" + "héllo all".encode()] * 3


# -- invalid UTF-8 fails at the first bad byte -------------------------------------------------


async def test_invalid_utf8_in_a_first_fragment_fails_before_the_message_ends(app: App) -> None:
    async with serve(app) as base, raw_socket(base, "/ws/room/utf8a") as raw:
        raw.send(frame(OP_TEXT, "κόσμε".encode() + b"\xce\xba\xe1\x80", fin=False))
        raw.send(frame(OP_CONT, b"\xed\xa0\x80", fin=False))  # a surrogate: never valid
        await raw.expect_close(1007)


async def test_invalid_utf8_fails_while_its_frame_is_still_arriving(app: App) -> None:
    async with serve(app) as base, raw_socket(base, "/ws/room/utf8b") as raw:
        payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80" + b"x" * 1000
        data = frame(OP_TEXT, payload)
        raw.send(data[:30])  # the header and the first bytes, the bad ones among them
        await raw.expect_close(1007)


async def test_a_valid_text_split_across_fragments_inside_a_character(app: App) -> None:
    async with serve(app) as base, raw_socket(base, "/ws/room/utf8c") as raw:
        text = "aé€𝄞z".encode()
        raw.send(frame(OP_TEXT, text[:2], fin=False))
        raw.send(frame(OP_CONT, text[2:5], fin=False))
        data = frame(OP_CONT, text[5:])
        for i in range(len(data)):  # the last fragment a byte at a time
            raw.send(data[i : i + 1])
            await asyncio.sleep(0)
        await raw.expect_message(OP_TEXT, text)


class RecordingTransport(asyncio.Transport):
    """The transport boundary: what a connection writes, one entry per ``write`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


async def test_the_frames_of_one_turn_go_out_in_one_write_in_order() -> None:
    client, server = WebSocketPair()
    server.accept()
    connection = WebSocketConnection(Limits(), set(), client)
    transport = RecordingTransport()
    connection.connection_made(transport)
    for text in ("one", "two", "three"):
        server.send(text)  # a broadcast loop: many sends in one turn of the event loop
    assert transport.writes == []
    await asyncio.sleep(0)  # the turn ends
    assert transport.writes == [text_frame("one") + text_frame("two") + text_frame("three")]
    server.send("four")
    server.close(1000, "bye")  # the close frame follows what was sent before it
    connection.shutdown()  # and ending the connection writes what is pending first
    assert transport.closed
    assert len(transport.writes) == 2
    assert transport.writes[1].startswith(text_frame("four"))
    assert transport.writes[1][len(text_frame("four")) :][:2] == b"\x88\x05"  # close, 5 bytes
