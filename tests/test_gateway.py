"""The gateway and opendo's HTTP server, used as users and attackers would: a real
``opendo serve`` on 127.0.0.1, raw sockets, and requests that must be refused or bounded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from textwrap import dedent

import httpx
import pytest
from conftest import OpendoProcess, run_opendo

WORKER = """
from opendo import DurableObject, Response, WebSocketPair, WorkerEntrypoint


class Counter(DurableObject):
    async def fetch(self, request):
        value = (await self.ctx.storage.get("value") or 0) + 1
        await self.ctx.storage.put("value", value)
        return Response(str(value))

    async def peek(self):
        return await self.ctx.storage.get("value") or 0


class Room(DurableObject):
    async def fetch(self, request):
        # Accepts a socket for any request: only the gateway keeps a plain GET from
        # leaving one behind.
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server)
        return Response(status=101, web_socket=client)

    async def web_socket_message(self, ws, message):
        ws.send("echo:" + message)

    async def members(self):
        return len(self.ctx.get_websockets())


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = request.path.strip("/").split("/")
        if parts[0] == "counter":
            return await self.env.COUNTER.get_by_name(parts[1]).fetch(request)
        if parts[0] == "peek":
            return Response(str(await self.env.COUNTER.get_by_name(parts[1]).peek()))
        if parts[0] == "room":
            return await self.env.ROOM.get_by_name(parts[1]).fetch(request)
        if parts[0] == "members":
            return Response(str(await self.env.ROOM.get_by_name(parts[1]).members()))
        if parts[0] == "url":
            return Response(request.url)
        if parts[0] == "body":
            return Response(str(len(await request.bytes())))
        if parts[0] == "slow":
            import asyncio
            await asyncio.sleep(float(parts[1]))
            return Response("slept")
        return Response("not found", status=404)
"""

CONFIG = """
name = "gateway"
main = "worker.py"

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"

[[durable_objects.bindings]]
name = "ROOM"
class_name = "Room"
"""

TIMEOUT = 10.0
KEY = base64.b64encode(b"0123456789abcdef").decode()


def _project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "worker.py").write_text(dedent(WORKER))
    (root / "opendo.toml").write_text(CONFIG)
    return root


@contextlib.contextmanager
def _server(root: Path, *options: str) -> Iterator[OpendoProcess]:
    project = _project(root / "project")
    with run_opendo(
        "serve", project, "--port", "0", "--persist-to", root / "state", *options
    ) as server:
        server.wait_ready()
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpendoProcess]:
    with _server(tmp_path_factory.mktemp("gateway")) as process:
        yield process


# -- a raw client ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), TIMEOUT)


async def exchange(port: int, data: bytes, *, within: float = TIMEOUT) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    async with connection(port) as (reader, writer):
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await asyncio.wait_for(reader.read(), within)


async def response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {
        k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
    }
    return status, headers


def status_of(data: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    assert match, data[:200]
    return int(match.group(1))


def get(path: str, *headers: str, version: str = "1.1", host: str | None = "127.0.0.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [*headers, "Connection: close"] if version == "1.1" else list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upgrade(path: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [
        f"GET {path} HTTP/{version}",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def text(port: int, path: str) -> str:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"http://127.0.0.1:{port}{path}")
        return response.text


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- the Host header and the URL ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["x/counter/victim#", "x/counter/victim?", "a@b", "x y", "x:99999"]
)
async def test_a_host_that_is_not_an_authority_is_refused_and_calls_nothing(
    server: OpendoProcess, host: str
) -> None:
    port = server.port
    assert port is not None
    before = await text(port, "/peek/victim")
    data = await exchange(port, get("/counter/mine", host=host))
    assert status_of(data) == 400, data
    assert b"Host" in data
    assert await text(port, "/peek/victim") == before
    assert await text(port, "/peek/mine") == "0"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("example.com", "http://example.com/url"),
        ("localhost:8787", "http://localhost:8787/url"),
        ("[::1]:80", "http://[::1]:80/url"),
        ("127.0.0.1", "http://127.0.0.1/url"),
    ],
)
async def test_the_url_is_built_from_a_valid_host(
    server: OpendoProcess, host: str, url: str
) -> None:
    assert server.port is not None
    data = await exchange(server.port, get("/url", host=host))
    assert status_of(data) == 200
    assert data.endswith(url.encode())


async def test_http11_without_host_and_with_two_hosts_is_400(server: OpendoProcess) -> None:
    assert server.port is not None
    assert status_of(await exchange(server.port, get("/url", host=None))) == 400
    two = get("/url", "Host: other")
    assert status_of(await exchange(server.port, two)) == 400
    http10 = await exchange(server.port, get("/url", host=None, version="1.0"))
    assert status_of(http10) == 200  # HTTP/1.0 needs no Host: the server's address is used
    assert re.search(rb"http://127\.0\.0\.1:\d+/url$", http10)


# -- the upgrade decision ------------------------------------------------------------------------


async def test_upgrade_header_without_connection_upgrade_is_400_and_leaves_no_socket(
    server: OpendoProcess,
) -> None:
    assert server.port is not None
    for _ in range(3):
        data = await exchange(
            server.port,
            get(
                "/room/ghosts",
                "Upgrade: websocket",
                f"Sec-WebSocket-Key: {KEY}",
                "Sec-WebSocket-Version: 13",
            ).replace(b"Connection: close", b"Connection: keep-alive"),
        )
        assert status_of(data) == 400, data
    assert await text(server.port, "/members/ghosts") == "0"


async def test_a_101_to_a_plain_get_is_500_and_its_socket_is_closed(server: OpendoProcess) -> None:
    assert server.port is not None
    for _ in range(3):
        assert status_of(await exchange(server.port, get("/room/plain"))) == 500
    assert await text(server.port, "/members/plain") == "0"


async def test_a_websocket_upgrade_over_http10_is_400(server: OpendoProcess) -> None:
    assert server.port is not None
    data = await exchange(server.port, upgrade("/room/old", version="1.0"))
    assert status_of(data) == 400
    assert await text(server.port, "/members/old") == "0"


async def test_a_valid_upgrade_is_accepted_and_echoes(server: OpendoProcess) -> None:
    assert server.port is not None
    async with connection(server.port) as (reader, writer):
        writer.write(upgrade("/room/ok").replace(b"Upgrade: websocket", b"Upgrade: WebSocket"))
        status, headers = await response_head(reader)
        assert status == 101
        digest = hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        assert headers["sec-websocket-accept"] == base64.b64encode(digest).decode()
        writer.write(bytes([0x81, 0x82]) + b"\0\0\0\0" + b"hi")  # masked with zeros
        assert await asyncio.wait_for(reader.readexactly(9), TIMEOUT) == b"\x81\x07echo:hi"


async def test_a_wrong_websocket_version_is_426_with_the_version(server: OpendoProcess) -> None:
    assert server.port is not None
    data = await exchange(server.port, upgrade("/room/v8").replace(b"Version: 13", b"Version: 8"))
    assert status_of(data) == 426
    assert b"sec-websocket-version: 13" in data.lower()


# -- oversized heads, and shutdown afterwards ------------------------------------------------


async def test_oversized_handshakes_are_refused_and_sigterm_still_stops_the_server(
    tmp_path: Path,
) -> None:
    with _server(tmp_path) as server:
        port = server.port
        assert port is not None
        long_path = await exchange(port, upgrade("/room/" + "a" * 9_000))
        assert status_of(long_path) == 414
        big_header = await exchange(port, upgrade("/room/big", "X-Big: " + "b" * 100_000))
        assert status_of(big_header) == 431
        many = await exchange(port, upgrade("/room/many", *(f"X-{i}: v" for i in range(200))))
        assert status_of(many) == 431
        assert await text(port, "/counter/after") == "1"  # the server still serves
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 8
        assert "Traceback" not in server.drain_stderr()


async def test_huge_headers_are_refused_without_holding_their_memory(
    server: OpendoProcess,
) -> None:
    port = server.port
    assert port is not None
    before = rss_kib(server.proc.pid)
    async with connection(port) as (reader, writer):
        writer.write(b"GET /counter/a HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        chunk = b"h" * (1024 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(100):  # up to 100 MB, but the server answers long before
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), TIMEOUT)
        status, _ = await response_head(reader)
        assert status == 431
    many = b"GET /counter/a HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 100_000 + b"\r\n"
    assert status_of(await exchange(port, many)) == 431
    assert rss_kib(server.proc.pid) - before < 20 * 1024


async def test_a_body_over_the_limit_is_413(tmp_path: Path) -> None:
    with _server(tmp_path, "--max-body-bytes", "1000") as server:
        port = server.port
        assert port is not None
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            ok = await client.post(f"http://127.0.0.1:{port}/body", content=b"x" * 1000)
            assert ok.text == "1000"
            refused = await client.post(f"http://127.0.0.1:{port}/body", content=b"x" * 1001)
            assert refused.status_code == 413

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b"y" * 500

            streamed = await client.post(f"http://127.0.0.1:{port}/body", content=chunks())
            assert streamed.status_code == 413, (streamed.text, streamed.headers)
        # A chunked body over the limit that arrives with its head, in one write: it is known
        # to be too large before the Worker is asked.
        chunked = b"".join(b"1f4\r\n" + b"z" * 500 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
        head = b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        assert status_of(await exchange(port, head + chunked)) == 413


# -- timeouts and the connection cap -----------------------------------------------------------


async def _trickle(port: int, request: bytes) -> tuple[bytes | None, float]:
    """Send ``request`` a byte every 0.2 s until the server answers; the answer and how long
    it took. None: the connection was reset as a byte crossed the server's close (the answer
    is then lost in transit), so the caller tries again. (It waits on ``read(n)``, which a
    timeout can cancel without losing what arrived; ``read()`` cancelled past its first
    chunk drops it.)"""
    async with connection(port) as (reader, writer):
        started = time.monotonic()
        try:
            for byte in request[:-4]:
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    first = await asyncio.wait_for(reader.read(65536), 0.2)
                except TimeoutError:
                    continue
                took = time.monotonic() - started
                rest = await asyncio.wait_for(reader.read(), TIMEOUT) if first else b""
                return first + rest, took
        except ConnectionError:
            return None, time.monotonic() - started
    return b"", time.monotonic() - started


async def test_idle_and_slow_connections_are_closed(tmp_path: Path) -> None:
    with _server(
        tmp_path, "--keep-alive-timeout", "0.5", "--header-timeout", "1", "--body-timeout", "1"
    ) as server:
        port = server.port
        assert port is not None
        async with connection(port) as (reader, _):  # says nothing at all
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            assert time.monotonic() - started < 5
        for _ in range(3):  # a byte at a time (slowloris)
            data, took = await _trickle(port, get("/counter/slow"))
            if data is not None:
                break
        assert data is not None and status_of(data) == 408
        assert took < 5
        async with connection(port) as (reader, writer):  # a body that stops
            writer.write(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            status, _ = await response_head(reader)
            assert status == 408
        assert await text(port, "/counter/still") == "1"


async def test_past_max_connections_the_oldest_idle_one_is_closed_or_503(tmp_path: Path) -> None:
    with _server(tmp_path, "--max-connections", "4", "--keep-alive-timeout", "30") as server:
        port = server.port
        assert port is not None
        async with contextlib.AsyncExitStack() as stack:
            idle = [await stack.enter_async_context(connection(port)) for _ in range(4)]
            reader, writer = await stack.enter_async_context(connection(port))
            writer.write(get("/counter/capped"))
            status, _ = await response_head(reader)
            assert status == 200
            oldest_reader = idle[0][0]
            assert await asyncio.wait_for(oldest_reader.read(), TIMEOUT) == b""
        async with contextlib.AsyncExitStack() as stack:
            busy = [await stack.enter_async_context(connection(port)) for _ in range(4)]
            for _, w in busy:
                w.write(b"GET /slow/3 HTTP/1.1\r\nHost: x\r\n\r\n")
                await w.drain()
            await asyncio.sleep(0)
            for _ in range(50):  # until the server has read the four heads
                data = await exchange(port, get("/counter/late"))
                if status_of(data) == 503:
                    break
            assert status_of(data) == 503
            assert b"too many open connections" in data


async def test_pipelined_requests_are_answered_in_order(server: OpendoProcess) -> None:
    assert server.port is not None
    async with connection(server.port) as (reader, writer):
        writer.write(b"".join(b"GET /counter/pipe HTTP/1.1\r\nHost: x\r\n\r\n" for _ in range(5)))
        bodies = []
        for _ in range(5):
            status, headers = await response_head(reader)
            assert status == 200
            bodies.append(await reader.readexactly(int(headers["content-length"])))
        assert bodies == [b"1", b"2", b"3", b"4", b"5"]


async def test_pipelined_requests_from_a_client_that_left_log_no_traceback(
    tmp_path: Path,
) -> None:
    with _server(tmp_path) as server:
        port = server.port
        assert port is not None
        for path, count in [("/counter/p", 10), ("/counter/p", 100), ("/url", 100)] * 3:
            async with connection(port) as (reader, writer):
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * count)
                await writer.drain()
                await asyncio.wait_for(reader.read(10), TIMEOUT)  # the first answer comes
                writer.transport.abort()  # and the client is gone, with the rest unanswered
        assert await text(port, "/slow/0.5") == "slept"
        assert server.stop(signal.SIGTERM) == 0
        assert "Traceback" not in server.drain_stderr()


def test_limits_are_checked_on_the_command_line(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    with run_opendo("serve", project, "--port", "0", "--max-connections", "0") as process:
        assert process.proc.wait(TIMEOUT) == 2
        assert "--max-connections" in process.drain_stderr()
