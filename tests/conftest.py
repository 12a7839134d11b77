"""Shared test helpers: a real uvicorn server on 127.0.0.1, in the test's own event loop, and
the real ``opendo`` console script as a child process (``run_opendo``)."""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import uvicorn

from opendo import App, MemoryDriver, SqliteDriver, StorageDriver
from opendo.server.http import HttpProtocol

ROOT = Path(__file__).resolve().parent.parent
CHAT = ROOT / "examples" / "chat"

OPENDO = str(Path(sys.executable).with_name("opendo"))
READY = re.compile(r"^Ready on http://127\.0\.0\.1:(\d+)$")
START_DEADLINE = 20.0
STOP_DEADLINE = 10.0


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
async def serve(app: App, ws: str = "native") -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1; yields ``"127.0.0.1:PORT"``.

    WebSockets go through opendo's own protocol (``ws="native"``, what the CLI runs) or
    through the ASGI app (``ws="asgi"``, what a mounted app gets).
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=HttpProtocol if ws == "native" else "httptools",
        ws="none" if ws == "native" else "websockets-sansio",
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


# -- the opendo console script as a child process ------------------------------------------------


class OpendoProcess:
    """One ``opendo ARGS...`` child process, in its own process group.

    Its stdout lines are read by a thread as they come (``next_line``, ``wait_ready``); so is
    its stderr, unless ``stderr_log`` is given: then stderr is appended to that file (which a
    test can keep across restarts) and never fills a pipe. ``close`` always ends the whole
    process group; use it through ``run_opendo`` or a ``try``/``finally``.
    """

    def __init__(self, *args: str | Path, stderr_log: Path | None = None) -> None:
        self.args = [OPENDO, *map(str, args)]
        self.stderr_log = stderr_log
        self.port: int | None = None  # from the last ``Ready on`` line read
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []  # stays empty with ``stderr_log``
        log = stderr_log.open("a") if stderr_log is not None else None
        try:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if log is None else log,
                text=True,
                encoding="utf-8",
                errors="replace",
                start_new_session=True,  # a reloader's child can be found (and killed) by group
            )
        finally:
            if log is not None:
                log.close()  # the child has its own copy
        assert self.proc.stdout is not None
        self._threads = [
            threading.Thread(target=_pump, args=(self.proc.stdout, self.stdout), daemon=True)
        ]
        if log is None:
            assert self.proc.stderr is not None
            self._threads.append(
                threading.Thread(target=_pump, args=(self.proc.stderr, self.stderr), daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stderr_text(self) -> str:
        """Stderr so far: the lines read, or the whole ``stderr_log``."""
        if self.stderr_log is not None:
            return self.stderr_log.read_text()
        return "".join(self.stderr_lines)

    def next_line(self, which: str, deadline: float) -> str | None:
        """The next line of stdout or stderr (None at its end); fails at the deadline."""
        assert which == "stdout" or self.stderr_log is None, "stderr goes to the log file"
        source = self.stdout if which == "stdout" else self.stderr
        kept = self.stdout_lines if which == "stdout" else self.stderr_lines
        remaining = deadline - time.monotonic()
        try:
            line = source.get(timeout=max(remaining, 0.001))
        except queue.Empty:
            raise AssertionError(
                f"no {which} line within the deadline; {which} so far: {kept!r}; "
                f"stderr so far: {self.stderr_text()!r}"
            ) from None
        if line is not None:
            kept.append(line)
        return line

    def wait_ready(self, timeout: float = START_DEADLINE) -> int:
        """Read stdout until ``Ready on http://127.0.0.1:PORT``; return PORT (also ``.port``)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line("stdout", deadline)
            if line is None:
                self.proc.wait(STOP_DEADLINE)
                if self.stderr_log is None:
                    self.drain_stderr()
                raise AssertionError(
                    f"opendo exited ({self.proc.returncode}) before it was ready; "
                    f"stderr: {self.stderr_text()}"
                )
            if match := READY.match(line.rstrip("\n")):
                self.port = int(match.group(1))
                return self.port

    def ready_within(self, timeout: float) -> int | None:
        """PORT of a ``Ready on`` line if one comes within ``timeout`` seconds, else None."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.stdout.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                return None
            if line is None:
                raise AssertionError(f"opendo exited; stderr: {self.stderr_text()}")
            self.stdout_lines.append(line)
            if match := READY.match(line.rstrip("\n")):
                self.port = int(match.group(1))
                return self.port

    def drain_stderr(self, timeout: float = STOP_DEADLINE) -> str:
        """All of stderr, once the process has closed it."""
        if self.stderr_log is not None:
            return self.stderr_text()
        deadline = time.monotonic() + timeout
        while self.next_line("stderr", deadline) is not None:
            pass
        self.stderr.put(None)  # drained: later calls end at once
        return "".join(self.stderr_lines)

    def stop(self, sig: int) -> int:
        """Send ``sig`` and return the exit code (fails if it takes longer than 10 s)."""
        self.proc.send_signal(sig)
        code = self.proc.wait(STOP_DEADLINE)
        for thread in self._threads:
            thread.join(STOP_DEADLINE)
        return code

    def kill_group(self) -> None:
        """SIGKILL to the whole process group (a supervisor and its workers, at once); returns
        once every process of it has exited (and so holds no lock)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(STOP_DEADLINE) == -signal.SIGKILL
        for thread in self._threads:
            thread.join(STOP_DEADLINE)
        deadline = time.monotonic() + STOP_DEADLINE
        while group_members(self.proc.pid):  # the workers die with it, reaped or not
            assert time.monotonic() < deadline, "a process of the group outlived SIGKILL"
            time.sleep(0.005)

    def close(self) -> None:
        """End the process and its whole group: SIGTERM, then SIGKILL to the group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this process leads
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(STOP_DEADLINE)
        for thread in self._threads:
            thread.join(STOP_DEADLINE)


def _pump(pipe: IO[str], into: queue.Queue[str | None]) -> None:
    with pipe:
        for line in pipe:
            into.put(line)
    into.put(None)


@contextmanager
def run_opendo(*args: str | Path, stderr_log: Path | None = None) -> Iterator[OpendoProcess]:
    """``opendo ARGS...`` for the ``with`` block; always ended (with its group) on the way out."""
    process = OpendoProcess(*args, stderr_log=stderr_log)
    try:
        yield process
    finally:
        process.close()


async def run_inside(instance: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn(instance)``, awaited if it returns an awaitable: what a test object's ``run``
    RPC method does. pytest's failures are BaseExceptions, which an object does not hand to
    its caller: they become an AssertionError that reaches the test."""
    try:
        result = fn(instance)
        if inspect.isawaitable(result):
            result = await result
    except pytest.fail.Exception as exc:
        raise AssertionError(str(exc)) from None
    return result


# -- storage drivers: every storage test runs over each of them -----------------------------

FLUSH_LIMIT = 30.0  # a held flush gives up after this (never reached by a passing test)


class GatedDriver(SqliteDriver):
    """Real SQLite files; ``flush()`` of every database it opens passes through a gate.

    ``hold()`` makes flushes wait (in their worker thread) until ``release()``; ``error``
    makes them raise instead of syncing. ``calls`` counts flushes started, ``in_flight``
    those not yet returned; ``wait_until`` waits for either without polling.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.calls = 0
        self.in_flight = 0
        self.error: OSError | None = None
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def open(self, class_name: str, id: Any, epoch: int = 0) -> Any:
        db = super().open(class_name, id, epoch)
        self._bind_loop()
        real_flush = db.flush

        def flush() -> None:
            with self._lock:
                self.calls += 1
                self.in_flight += 1
            self._notify()
            try:
                if not self._open.wait(FLUSH_LIMIT):
                    raise TimeoutError("the test never released this flush")
                if self.error is not None:
                    raise self.error
                real_flush()
            finally:
                with self._lock:
                    self.in_flight -= 1
                self._notify()

        db.flush = flush  # wraps the returned database's flush(); nothing else is touched
        return db

    def _bind_loop(self) -> asyncio.Event:
        if self._changed is None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        loop, changed = self._loop, self._changed
        if loop is None or changed is None:
            return
        try:
            loop.call_soon_threadsafe(changed.set)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    async def wait_until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; it is checked whenever a flush starts or ends."""
        changed = self._bind_loop()
        async with asyncio.timeout(within):
            while not predicate():
                changed.clear()
                if predicate():
                    break
                await changed.wait()

    async def flush_started(self, count: int) -> None:
        await self.wait_until(lambda: self.calls >= count)


@pytest.fixture
async def gated_driver(tmp_path: Path) -> AsyncIterator[GatedDriver]:
    """A ``GatedDriver`` under ``tmp_path``; released (and its flushes done) afterwards."""
    gated = GatedDriver(tmp_path / "state")
    try:
        yield gated
    finally:
        gated.error = None
        gated.release()
        await gated.wait_until(lambda: gated.in_flight == 0)


DRIVERS = ["sqlite", "memory"]


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    if request.param == "sqlite":
        return SqliteDriver(tmp_path / "data")
    return MemoryDriver()


def reopen(driver: StorageDriver) -> StorageDriver:
    """A driver over the same data, as a restarted process would build it."""
    if isinstance(driver, SqliteDriver):
        return SqliteDriver(driver.directory)
    return driver  # a MemoryDriver keeps its databases for as long as it lives


# -- the processes of ``opendo serve --workers N`` -------------------------------------------


def worker_pids(supervisor: int) -> list[int]:
    """The live worker processes of the supervisor ``supervisor`` (its children that run a
    spawned server, not its resource tracker; a dead, unreaped worker has no command line)."""
    pids = []
    for task in Path(f"/proc/{supervisor}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread (or the process) ended meanwhile
            continue
        for child in map(int, children):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in command:
                pids.append(child)
    return sorted(set(pids))


def _server_socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server's end of the TCP connection 127.0.0.1:client_port ->
    127.0.0.1:server_port (from /proc/net/tcp), or None."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[9])
    return None


def serving_pid(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server's end of the client's connection (accepted it)."""
    inode = _server_socket_inode(server_port, client_port)
    if not inode:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    return None


def group_members(pgid: int) -> list[int]:
    """The processes of the group ``pgid`` that have not exited (zombies, which hold nothing,
    are not counted: nobody may be reaping them here)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, pgrp = text[text.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members
