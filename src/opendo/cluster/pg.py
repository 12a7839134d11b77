"""Connections to the cluster's PostgreSQL, bounded in time.

Every unit of work against PostgreSQL — a claim, a restore, a flush, a lease renewal — runs on
a connection of the node's pool under one deadline (``asyncio.timeout``). A connection whose
work failed or ran out of time is terminated, not given back: across a partition its socket
may be stuck with a statement half sent, and the next user of the pool must not inherit it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

__all__ = ["connection", "create_pool", "describe"]


async def create_pool(dsn: str, *, size: int, connect_within: float) -> Any:
    """A pool of up to ``size`` connections; each is made within ``connect_within`` seconds."""
    return await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        timeout=connect_within,
        command_timeout=None,  # the caller's deadline bounds each unit of work
        max_inactive_connection_lifetime=60.0,
        statement_cache_size=64,
    )


@asynccontextmanager
async def connection(pool: Any, within: float) -> AsyncIterator[Any]:
    """A connection of ``pool`` for work that must be done within ``within`` seconds."""
    async with asyncio.timeout(within):
        conn = await pool.acquire()
        try:
            yield conn
        except BaseException:
            conn.terminate()
            await pool.release(conn)
            raise
        await pool.release(conn)


def describe(exc: BaseException) -> str:
    """What went wrong talking to PostgreSQL, for an error message or the log."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "PostgreSQL did not answer in time"
    if isinstance(exc, OSError):
        return f"PostgreSQL is unreachable ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"
