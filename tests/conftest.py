"""Shared test helpers: a real uvicorn server on 127.0.0.1, in the test's own event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from opendo import App

ROOT = Path(__file__).resolve().parent.parent
CHAT = ROOT / "examples" / "chat"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    def install_signal_handlers(self) -> None:  # the test runner keeps its own
        pass


@asynccontextmanager
async def serve(app: App) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1; yields ``"127.0.0.1:PORT"``."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait([task, ready], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if not server.ready.is_set():
        ready.cancel()
        server.should_exit = True
        await task
        raise RuntimeError("the test server did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def wait_for(predicate: Callable[[], Any], within: float = 5.0) -> None:
    """Wait until ``predicate()`` is true, checking at every turn of the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met within the timeout")
        await asyncio.sleep(0.005)


@pytest.fixture
def chat_dir() -> Path:
    return CHAT
