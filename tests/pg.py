"""A throw-away PostgreSQL server for the tests, and a TCP proxy that cuts a node off from it.

``PostgresServer`` runs the PostgreSQL binaries (Debian's newest ``/usr/lib/postgresql/*/bin``,
else ``initdb`` on PATH) in a temporary directory: ``initdb``, then ``pg_ctl start``, listening
only on 127.0.0.1 on a free port, with its Unix socket and its log file in that directory and
fsync on. As root (CI) the binaries run as the ``postgres`` user, which owns the directory.
The user ``opendo`` is trusted on 127.0.0.1 and owns the database ``opendo``.

The ``postgres`` fixture starts one server per pytest(-xdist) worker process; ``pg_database``
gives each test a fresh, empty database on it, dropped afterwards. Without PostgreSQL those
tests are skipped, unless OPENDO_REQUIRE_POSTGRES=1 (CI sets it): then they fail. A test module
gets the fixtures with ``pytest_plugins = ["pg"]`` (one plugin, so one server per process; and
PYTEST_DONT_REWRITE, so the module may import this one first).

``TcpProxy`` stands between node processes and the server, in a thread with its own event loop:
``blackhole()`` is a partition (connections stay open, nothing is forwarded either way until
``heal()``), ``reset()`` ends every connection abruptly; byte counts show when traffic stopped.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

USER = "opendo"
DATABASE = "opendo"
START_TIMEOUT = 30  # seconds for pg_ctl start/stop, and for the first connection after it
QUERY_TIMEOUT = 10.0  # an administrative statement (CREATE/DROP DATABASE)
PORT_ATTEMPTS = 3  # another process may take the free port before the server binds it
T = TypeVar("T")


def find_bindir() -> Path | None:
    """The directory of the newest PostgreSQL server binaries, or None."""
    versions = [
        (int(initdb.parent.parent.name), initdb.parent)
        for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if initdb.parent.parent.name.isdigit()
    ]
    if versions:
        return max(versions)[1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_async(fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = QUERY_TIMEOUT) -> T:
    """``await fn()`` in a fresh event loop on a thread of its own: callable from sync code and
    from a running event loop alike (which it blocks)."""

    async def bounded() -> T:
        return await asyncio.wait_for(fn(), timeout)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, bounded()).result()


async def execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=QUERY_TIMEOUT)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


class PostgresServer:
    """One PostgreSQL server in a temporary directory; ``start()``, ``restart()``, ``stop()``.

    ``stop()`` ends the server and removes its directory, also after a failed ``start()``; use
    the server as a context manager (or the ``postgres`` fixture) so that it always runs.
    """

    def __init__(self, bindir: Path, max_connections: int = 200) -> None:
        self.bindir = bindir
        self.max_connections = max_connections
        self.port = 0
        self._as_owner: list[str] = []
        owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None  # root: no initdb
        self.dir = Path(tempfile.mkdtemp(prefix="opendo-pg-"))
        if owner is not None:
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dsn(self, database: str = DATABASE, port: int | None = None) -> str:
        """``postgresql://opendo@127.0.0.1:PORT/DATABASE``; ``port`` for a proxy in front."""
        return f"postgresql://{USER}@127.0.0.1:{port or self.port}/{database}"

    def start(self) -> None:
        """initdb, then start the server and wait until a connection succeeds."""
        self._run(
            "initdb", "-D", self.data, "-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"
        )  # --no-sync: the initial catalog need not survive a crash of the machine
        (self.data / "pg_hba.conf").write_text(
            f"local all {USER} trust\nhost all {USER} 127.0.0.1/32 trust\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'opendo.conf'\n")
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self._configure()
            try:
                self._pg_ctl_start()
                break
            except RuntimeError:
                if attempt + 1 == PORT_ATTEMPTS or "already in use" not in self.log_tail():
                    raise
        run_async(lambda: execute(self.dsn("postgres"), f'CREATE DATABASE "{DATABASE}"'))

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast``: a clean shutdown; ``immediate``: like a crash, so the next start
        recovers from the WAL) and start again on the same port, with the same data."""
        self._pg_ctl_stop(mode)
        self._pg_ctl_start()

    def stop(self) -> None:
        """Fast shutdown (immediate if that fails), then remove the directory. Idempotent."""
        try:
            if (self.data / "postmaster.pid").exists():  # also a start that timed out
                try:
                    self._pg_ctl_stop("fast")
                except (RuntimeError, subprocess.TimeoutExpired):
                    self._pg_ctl_stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its DSN."""
        run_async(lambda: execute(self.dsn(), f'CREATE DATABASE "{name}"'))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop it, ending any connection still open to it (a node process left behind)."""
        run_async(lambda: execute(self.dsn(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def _configure(self) -> None:
        (self.data / "opendo.conf").write_text(
            f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
            f"unix_socket_directories = '{self.dir}'\nmax_connections = {self.max_connections}\n"
            "fsync = on\nsynchronous_commit = on\nshared_buffers = 32MB\n"
        )

    def _pg_ctl_start(self) -> None:
        # -l: the server's output goes to the log, never to a pipe of ours
        self._run(
            "pg_ctl", "start", "-w", "-t", START_TIMEOUT, "-D", self.data, "-l", self.log_path
        )
        run_async(lambda: execute(self.dsn("postgres"), "SELECT 1"), timeout=START_TIMEOUT)

    def _pg_ctl_stop(self, mode: str) -> None:
        self._run("pg_ctl", "stop", "-w", "-t", START_TIMEOUT, "-D", self.data, "-m", mode)

    def _run(self, program: str, *args: str | int | Path) -> None:
        command = [*self._as_owner, str(self.bindir / program), *map(str, args)]
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        result = subprocess.run(
            command,
            cwd=self.dir,  # the postgres user may not be allowed into ours
            env={**env, "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 10,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stdout}{result.stderr}\n"
                f"server log ({self.log_path}):\n{self.log_tail()}"
            )


@dataclass(frozen=True)
class PgDatabase:
    server: PostgresServer
    name: str
    dsn: str

    def dsn_via(self, proxy: TcpProxy) -> str:
        """This database's DSN through ``proxy``."""
        return self.server.dsn(self.name, port=proxy.port)


def postgres_bindir() -> Path:
    """The server binaries; skips the test without them, fails it if they are required."""
    bindir = find_bindir()
    if bindir is None:
        missing = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        if os.environ.get("OPENDO_REQUIRE_POSTGRES", "") not in ("", "0"):
            required = "PostgreSQL tests required (OPENDO_REQUIRE_POSTGRES=1)"
            pytest.fail(f"{required}, but {missing}", pytrace=False)
        pytest.skip(missing)
    return bindir


@contextmanager
def fresh_database(server: PostgresServer) -> Iterator[PgDatabase]:
    """A new, empty database with a unique name, dropped on the way out."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = server.create_database(name)
    try:
        yield PgDatabase(server, name, dsn)
    finally:
        server.drop_database(name)


@asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[Any]:
    """An asyncpg connection for the block, closed on the way out; dropped at once if the block
    failed (it may be cut off by a proxy: waiting on it would hide the failure)."""
    conn = await asyncpg.connect(dsn, timeout=QUERY_TIMEOUT)
    try:
        yield conn
    except BaseException:
        conn.terminate()
        raise
    await conn.close(timeout=QUERY_TIMEOUT)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for this test process, stopped at its end."""
    with PostgresServer(postgres_bindir()) as server:
        yield server


@pytest.fixture
def pg_database(postgres: PostgresServer) -> Iterator[PgDatabase]:
    """A fresh, empty database of its own for this test, dropped afterwards."""
    with fresh_database(postgres) as database:
        yield database


class TcpProxy:
    """A TCP proxy from ``127.0.0.1:self.port`` to ``host:port``, run by a thread of its own.

    ``bytes_to_target`` and ``bytes_to_client`` count what it forwarded each way.
    """

    BUFFER = 65536
    CALL_TIMEOUT = 10.0  # for a call into the proxy's thread, and to flush a closing connection

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.bytes_to_target = 0
        self.bytes_to_client = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: dict[asyncio.Task[Any], list[asyncio.StreamWriter]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        self.port: int = self._server.sockets[0].getsockname()[1]

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def blackhole(self) -> None:
        """From now on forward nothing, either way, and connect nowhere; connections stay open."""
        self._call(self._run(self._flowing.clear))

    def heal(self) -> None:
        """Forward again, starting with what was held back."""
        self._call(self._run(self._flowing.set))

    def reset(self) -> None:
        """End every connection now, with a TCP reset on both sides."""
        self._call(self._run(self._reset))

    def close(self) -> None:
        """Stop listening, end every connection and the thread. Idempotent."""
        if self._loop.is_closed():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.CALL_TIMEOUT)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.CALL_TIMEOUT)

    async def _run(self, fn: Callable[[], object]) -> None:
        fn()

    def _reset(self) -> None:
        for writers in self._links.values():
            for writer in writers:
                with suppress(OSError):  # linger 0: closing sends RST instead of FIN
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                writer.transport.abort()

    async def _shutdown(self) -> None:
        self._server.close()
        self._reset()
        for task in self._links:
            task.cancel()
        if self._links:
            await asyncio.wait(list(self._links), timeout=self.CALL_TIMEOUT)

    async def _until_flowing(self) -> None:
        while not self._flowing.is_set():  # set, then cleared again before this task ran
            await self._flowing.wait()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        writers = self._links[task] = [client_w]
        try:
            await self._until_flowing()
            target_r, target_w = await asyncio.open_connection(*self.target)
            writers.append(target_w)
            pumps = [
                asyncio.create_task(self._pump(client_r, target_w, to_target=True)),
                asyncio.create_task(self._pump(target_r, client_w, to_target=False)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            for writer in writers:  # flush what is left (unless reset() aborted it already)
                writer.close()
            await asyncio.wait_for(
                asyncio.gather(*(writer.wait_closed() for writer in writers)), self.CALL_TIMEOUT
            )
        except (OSError, TimeoutError, asyncio.CancelledError):  # cancelled: by close()
            pass
        finally:
            for writer in writers:
                writer.transport.abort()  # nothing left to do if it is closed already
            del self._links[task]

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_target: bool
    ) -> None:
        while True:
            await self._until_flowing()
            try:
                data = await reader.read(self.BUFFER)
            except OSError:
                data = b""
            await self._until_flowing()  # what was read as the partition began waits for heal
            if not data:
                return
            writer.write(data)
            if to_target:
                self.bytes_to_target += len(data)
            else:
                self.bytes_to_client += len(data)
            await writer.drain()
