"""The PostgreSQL harness of tests/pg.py works: a real server per test process, a fresh database
per test, restarts that keep the data, and a proxy that forwards, partitions and resets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pg
import pytest
from pg import (
    PgDatabase,
    PostgresServer,
    TcpProxy,
    connection,
    fresh_database,
    postgres_bindir,
)

pytest_plugins = ["pg"]

PARTITION_PROBE = 0.5  # how long a blackholed query is given to (not) complete


async def until_equal(fn: Callable[[], Awaitable[Any]], expected: Any, within: float = 5.0) -> None:
    """Wait until ``await fn() == expected``, asking again every 10 ms."""
    value = None
    async with asyncio.timeout(within):
        for _ in range(int(within / 0.01)):
            if (value := await fn()) == expected:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"still {value!r}, not {expected!r}, after {within} s")


async def test_server_is_local_and_durable(postgres: PostgresServer) -> None:
    assert postgres.dsn() == f"postgresql://opendo@127.0.0.1:{postgres.port}/opendo"
    async with connection(postgres.dsn()) as conn:
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "listen_addresses")
        }
        assert settings == {
            "fsync": "on",
            "synchronous_commit": "on",
            "listen_addresses": "127.0.0.1",
        }
        assert await conn.fetchval("SHOW unix_socket_directories") == str(postgres.dir)
        assert await conn.fetchval("SHOW max_connections") == "200"
        assert Path(await conn.fetchval("SHOW data_directory")) == postgres.data
    assert postgres.log_path.parent == postgres.dir and postgres.log_path.stat().st_size > 0


async def test_commits_are_written_and_synced(pg_database: PgDatabase) -> None:
    async with connection(pg_database.dsn) as conn:
        await conn.execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
        syncs = await conn.fetchval("SELECT wal_sync FROM pg_stat_wal")
        for k in range(3):
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES ($1, $2)", k, f"v{k}")
        await conn.execute("SELECT pg_stat_force_next_flush()")  # this backend's counters
        synced = "SELECT wal_sync >= $1 FROM pg_stat_wal"  # or the WAL writer's, if it was first
        await until_equal(lambda: conn.fetchval(synced, syncs + 3), True)
        assert await conn.fetch("SELECT k, v FROM t ORDER BY k") == [
            (0, "v0"),
            (1, "v1"),
            (2, "v2"),
        ]


async def test_each_test_gets_its_own_empty_database(
    postgres: PostgresServer, pg_database: PgDatabase
) -> None:
    async with connection(pg_database.dsn) as conn:
        assert await conn.fetchval("SELECT current_database()") == pg_database.name
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        )
        await conn.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('mine')")
    with fresh_database(postgres) as other:
        assert other.name != pg_database.name
        async with connection(other.dsn) as conn:
            assert await conn.fetchval("SELECT to_regclass('t')") is None
            await conn.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('theirs')")
        async with connection(pg_database.dsn) as conn:
            assert await conn.fetch("SELECT v FROM t") == [("mine",)]
    async with connection(postgres.dsn()) as conn:  # dropped on the way out
        names = await conn.fetch("SELECT datname FROM pg_database")
        assert (other.name,) not in names and (pg_database.name,) in names


async def test_a_database_is_dropped_under_open_connections(postgres: PostgresServer) -> None:
    with fresh_database(postgres) as left_behind:
        conn = await asyncpg.connect(left_behind.dsn)  # as a node process that is still running
    try:
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()
    async with connection(postgres.dsn()) as admin:
        query = "SELECT count(*) FROM pg_database WHERE datname = $1"
        assert await admin.fetchval(query, left_behind.name) == 0


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_restart_keeps_the_data(
    postgres: PostgresServer, pg_database: PgDatabase, mode: str
) -> None:
    recoveries = postgres.log_path.read_text().count("automatic recovery in progress")
    async with connection(pg_database.dsn) as conn:
        await conn.execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)")
        port = postgres.port
        postgres.restart(mode)
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")  # the server ended this connection
    assert postgres.port == port
    async with connection(pg_database.dsn) as conn:
        assert await conn.fetch("SELECT v FROM t ORDER BY v") == [(1,), (2,)]
    crashed = postgres.log_path.read_text().count("automatic recovery in progress") - recoveries
    assert crashed == (1 if mode == "immediate" else 0)


def test_missing_postgres_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "find_bindir", lambda: None)
    monkeypatch.delenv("OPENDO_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL is not installed"):
        postgres_bindir()
    monkeypatch.setenv("OPENDO_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="required .OPENDO_REQUIRE_POSTGRES=1"):
        postgres_bindir()


async def test_proxy_forwards_queries(pg_database: PgDatabase) -> None:
    with TcpProxy("127.0.0.1", pg_database.server.port) as proxy:
        assert proxy.port != pg_database.server.port
        async with connection(pg_database.dsn_via(proxy)) as conn:
            assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
            assert await conn.fetchval("SELECT current_database()") == pg_database.name
        assert proxy.bytes_to_target > 0 and proxy.bytes_to_client > 0


async def test_blackhole_holds_queries_until_heal(pg_database: PgDatabase) -> None:
    with TcpProxy("127.0.0.1", pg_database.server.port) as proxy:
        async with connection(pg_database.dsn_via(proxy)) as conn:
            assert await conn.fetchval("SELECT 1") == 1
            proxy.blackhole()
            sent, received = proxy.bytes_to_target, proxy.bytes_to_client
            with pytest.raises(TimeoutError):
                await conn.fetchval("SELECT 2", timeout=PARTITION_PROBE)
            with pytest.raises(TimeoutError):  # nor can a new connection get through
                await asyncpg.connect(pg_database.dsn_via(proxy), timeout=PARTITION_PROBE)
            assert (proxy.bytes_to_target, proxy.bytes_to_client) == (sent, received)
            proxy.heal()
            async with connection(pg_database.dsn_via(proxy)) as again:
                assert await again.fetchval("SELECT 3") == 3
            assert proxy.bytes_to_target > sent and proxy.bytes_to_client > received
            assert await conn.fetchval("SELECT 4") == 4  # the partition cost no connection


async def test_blackhole_holds_replies_until_heal(pg_database: PgDatabase) -> None:
    """The server's answer, sent during the partition, reaches the client only after heal."""
    async with (
        connection(pg_database.dsn) as direct,
        connection(pg_database.dsn) as probe,
    ):
        await direct.execute("CREATE TABLE t (v int)")
        with TcpProxy("127.0.0.1", pg_database.server.port) as proxy:
            async with connection(pg_database.dsn_via(proxy)) as conn:
                pid = await conn.fetchval("SELECT pg_backend_pid()")

                async def waiting_for() -> Any:
                    query = "SELECT wait_event FROM pg_stat_activity WHERE pid = $1"
                    return await probe.fetchval(query, pid)

                lock = direct.transaction()
                await lock.start()
                await direct.execute("LOCK TABLE t")
                reply = asyncio.create_task(conn.fetchval("SELECT count(*) FROM t"))
                await until_equal(waiting_for, "relation")  # the query reached the server
                proxy.blackhole()
                received = proxy.bytes_to_client
                await lock.commit()
                await until_equal(waiting_for, "ClientRead")  # and it has answered
                done, _ = await asyncio.wait([reply], timeout=PARTITION_PROBE)
                assert not done and proxy.bytes_to_client == received
                proxy.heal()
                assert await asyncio.wait_for(reply, 5) == 0
                assert proxy.bytes_to_client > received


async def test_reset_breaks_connections(pg_database: PgDatabase) -> None:
    async with connection(pg_database.dsn) as probe:
        with TcpProxy("127.0.0.1", pg_database.server.port) as proxy:
            async with connection(pg_database.dsn_via(proxy)) as conn:
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                proxy.reset()
                with pytest.raises((asyncpg.ConnectionDoesNotExistError, ConnectionError)):
                    await conn.fetchval("SELECT 1")
            query = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
            await until_equal(lambda: probe.fetchval(query, pid), 0)  # the server's end too
            async with connection(pg_database.dsn_via(proxy)) as conn:  # new ones work
                assert await conn.fetchval("SELECT 1") == 1


async def test_close_ends_connections_and_listening(pg_database: PgDatabase) -> None:
    with TcpProxy("127.0.0.1", pg_database.server.port) as proxy:
        async with connection(pg_database.dsn_via(proxy)) as conn:
            proxy.blackhole()  # even a held connection ends
            proxy.close()
            with pytest.raises((asyncpg.ConnectionDoesNotExistError, ConnectionError)):
                await conn.fetchval("SELECT 1")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
        assert not proxy._thread.is_alive()
