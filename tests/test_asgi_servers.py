"""The ASGI app under other servers (uvicorn's own protocols, hypercorn, granian) and mounted in
FastAPI and Starlette: each a real server process on 127.0.0.1, used over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import httpx
import pytest
from conftest import run_opendo
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

WORKER = """
import time

from opendo import DurableObject, Response, WebSocketPair, WorkerEntrypoint


class Counter(DurableObject):
    async def fetch(self, request):
        value = (await self.ctx.storage.get("value") or 0) + 1
        await self.ctx.storage.put("value", value)
        return Response(str(value))


class Room(DurableObject):
    async def fetch(self, request):
        client, server = WebSocketPair()
        self.ctx.accept_websocket(server)
        return Response(status=101, web_socket=client)

    async def web_socket_message(self, ws, message):
        ws.send("echo:" + message)


class Alarmed(DurableObject):
    async def arm(self, seconds):
        await self.ctx.storage.set_alarm(time.time() * 1000 + seconds * 1000)

    async def alarm(self, info):
        await self.ctx.storage.put("fired", True)

    async def fired(self):
        return bool(await self.ctx.storage.get("fired"))


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = request.path.strip("/").split("/")
        if parts[0] == "counter":
            return await self.env.COUNTER.get_by_name(parts[1]).fetch(request)
        if parts[0] == "room" and request.headers.get("upgrade", "").lower() == "websocket":
            return await self.env.ROOM.get_by_name(parts[1]).fetch(request)
        if parts[0] == "arm":
            await self.env.ALARMED.get_by_name(parts[1]).arm(float(parts[2]))
            return Response("armed")
        if parts[0] == "fired":
            return Response(str(await self.env.ALARMED.get_by_name(parts[1]).fired()))
        if parts[0] == "url":
            return Response(request.url)
        if parts[0] == "pid":
            import os
            return Response(str(os.getpid()))
        if parts[0] == "body":
            return Response(str(len(await request.bytes())))
        return Response("not found", status=404)
"""

CONFIG = """
name = "servers"
main = "worker.py"

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"

[[durable_objects.bindings]]
name = "ROOM"
class_name = "Room"

[[durable_objects.bindings]]
name = "ALARMED"
class_name = "Alarmed"

[assets]
directory = "public"
"""

APP = """
from opendo import create_app

app = create_app(PROJECT, persist_to=PERSIST)
"""

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "howto" / "serving.md"


def guide_app(marker: str) -> str:
    """The serving guide's Python example that contains ``marker``, with the project and
    persist directory of the test in place of its example's."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    (block,) = [b for b in blocks if marker in b]
    code = re.sub(r'create_app\("examples/\w+"\)', "create_app(PROJECT, persist_to=PERSIST)", block)
    assert "PROJECT" in code
    return code


FASTAPI_APP = (
    guide_app("app.mount(")
    + """

@app.get("/api/hello")
def hello():
    return {"hello": "fastapi"}
"""
)
STARLETTE_APP = guide_app("Mount(")

TIMEOUT = 10.0
START = 30.0


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "public").mkdir(parents=True)
    (root / "worker.py").write_text(dedent(WORKER))
    (root / "opendo.toml").write_text(CONFIG)
    (root / "public" / "index.html").write_text("<h1>assets</h1>")
    (root / "public" / "app.js").write_text("console.log('asset')")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}): {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)  # polling the condition: the port accepts connections
    raise AssertionError(f"the server did not listen within {START} s: {log.read_text()}")


@contextlib.contextmanager
def asgi_server(kind: str, module_dir: Path, log: Path) -> Iterator[int]:
    port = free_port()
    python = sys.executable
    commands = {
        "uvicorn": [python, "-m", "uvicorn", "app:app", "--port", str(port)],
        "uvicorn-h11": [
            python,
            "-m",
            "uvicorn",
            "app:app",
            "--port",
            str(port),
            "--http",
            "h11",
            "--ws",
            "wsproto",
        ],  # fmt: skip
        "hypercorn": [python, "-m", "hypercorn", "app:app", "--bind", f"127.0.0.1:{port}"],
        "granian": [
            python,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "app:app",
        ],  # fmt: skip
    }
    command = commands[kind]
    if kind.startswith("uvicorn"):
        command += ["--host", "127.0.0.1"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            command,
            cwd=module_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    [str(module_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
                ),
            },
            start_new_session=True,
        )
    try:
        wait_listening(port, proc, log)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(TIMEOUT)


def write_app(tmp_path: Path, template: str, project: Path) -> Path:
    module_dir = tmp_path / "app"
    module_dir.mkdir(exist_ok=True)
    persist = str(tmp_path / "state")
    setup = f"PROJECT, PERSIST = {str(project)!r}, {persist!r}\n"
    (module_dir / "app.py").write_text(setup + dedent(template))
    return module_dir


async def get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def echo_five(url: str) -> list[str]:
    async with connect(url, open_timeout=TIMEOUT, compression=None) as ws:
        for i in range(5):
            await ws.send(f"m{i}")
        return [str(await asyncio.wait_for(ws.recv(), TIMEOUT)) for _ in range(5)]


SERVERS = ["uvicorn", "uvicorn-h11", "hypercorn", "granian"]


@pytest.mark.parametrize("kind", SERVERS)
async def test_the_asgi_app_under_another_server(kind: str, project: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with asgi_server(kind, write_app(tmp_path, APP, project), log) as port:
        assert (await get(port, "/counter/a")).text == "1"
        assert (await get(port, "/counter/a")).text == "2"
        assert (await get(port, "/app.js")).text == "console.log('asset')"
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            posted = await client.post(f"http://127.0.0.1:{port}/body", content=b"x" * 5000)
        assert posted.text == "5000"
        # Every frame is delivered, not only the first (granian's send is not a coroutine).
        assert await echo_five(f"ws://127.0.0.1:{port}/room/r") == [f"echo:m{i}" for i in range(5)]
        with pytest.raises(InvalidStatus):
            await echo_five(f"ws://127.0.0.1:{port}/nowhere")  # refused by the Worker
        assert (await get(port, "/counter/a")).text == "3"
    text = log.read_text()
    assert "without completing handshake" not in text
    assert "Traceback" not in text, text


async def test_mounted_in_fastapi_the_worker_sees_the_path_below_the_mount(
    project: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with asgi_server("uvicorn", write_app(tmp_path, FASTAPI_APP, project), log) as port:
        assert (await get(port, "/api/hello")).json() == {"hello": "fastapi"}
        assert (await get(port, "/do/counter/a")).text == "1"
        assert (await get(port, "/do/url")).text == f"http://127.0.0.1:{port}/url"
        assert (await get(port, "/do/app.js")).text == "console.log('asset')"
        assert await echo_five(f"ws://127.0.0.1:{port}/do/room/r") == [
            f"echo:m{i}" for i in range(5)
        ]
    assert "Traceback" not in log.read_text()


async def test_mounted_in_starlette_assets_come_before_the_worker(
    project: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with asgi_server("uvicorn", write_app(tmp_path, STARLETTE_APP, project), log) as port:
        assert (await get(port, "/chat/")).text == "<h1>assets</h1>"
        assert (await get(port, "/chat/app.js")).text == "console.log('asset')"
        assert (await get(port, "/chat/counter/b")).text == "1"


async def test_a_mounted_app_without_lifespan_runs_the_alarms_stored_before(
    project: Path, tmp_path: Path
) -> None:
    persist = tmp_path / "state"
    with run_opendo("serve", project, "--port", "0", "--persist-to", persist) as server:
        port = server.wait_ready()
        assert (await get(port, "/arm/late/1")).text == "armed"  # due in 1 s
        assert server.stop(signal.SIGTERM) == 0  # gone before it is due
    log = tmp_path / "server.log"
    with asgi_server("uvicorn", write_app(tmp_path, FASTAPI_APP, project), log) as port:
        # Starlette passes no lifespan to a mounted app: the first request starts it.
        assert (await get(port, "/do/counter/x")).text == "1"
        deadline = time.monotonic() + TIMEOUT
        while (await get(port, "/do/fired/late")).text != "True":
            assert time.monotonic() < deadline, "the stored alarm never fired"
            await asyncio.sleep(0.1)


async def test_uvicorn_workers_forward_to_the_owner_instead_of_failing(
    project: Path, tmp_path: Path
) -> None:
    """``uvicorn app:app --workers 2``: each process may receive a request for an object the
    other one owns; it forwards it there, so a counter counts 1, 2, 3 … with no 500."""
    module_dir = write_app(tmp_path, APP, project)
    port = free_port()
    log = tmp_path / "server.log"
    command = [
        sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "2",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started before anything awaits
            command,
            cwd=module_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    [str(module_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
                ),
            },
            start_new_session=True,
        )
    try:
        wait_listening(port, proc, log)
        pids: set[str] = set()
        for _ in range(200):  # fresh connections, until both workers took some
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                pids.add((await client.get(f"http://127.0.0.1:{port}/pid")).text)
            if len(pids) == 2:
                break
        assert len(pids) == 2, "every connection went to one worker"

        async def count(n: int) -> list[tuple[int, str]]:
            answers = []
            for _ in range(n):  # a new connection each time
                async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                    response = await client.get(f"http://127.0.0.1:{port}/counter/shared")
                    answers.append((response.status_code, response.text))
            return answers

        async def everyone() -> list[tuple[int, str]]:
            results = await asyncio.gather(*(count(10) for _ in range(8)))
            return [answer for answers in results for answer in answers]

        answers = await everyone()
        assert sorted(answers, key=lambda a: int(a[1]) if a[1].isdigit() else -1) == [
            (200, str(i)) for i in range(1, 81)
        ], answers
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(TIMEOUT)
    assert "Traceback" not in log.read_text()
