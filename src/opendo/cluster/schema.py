"""The cluster's tables in PostgreSQL, created and migrated by opendo itself.

The schema is versioned: ``opendo_schema`` holds the version applied, and ``migrate`` applies
the steps after it, each in one transaction, holding the version row (``FOR UPDATE``) so that
nodes starting at once apply each step once. Only portable SQL is used — ``ON CONFLICT``,
``RETURNING``, ``FOR UPDATE``, ``SKIP LOCKED``, ``unnest`` — and no advisory locks or
LISTEN/NOTIFY, so engines that speak PostgreSQL's protocol stay possible.

The tables (``ns`` is an object's class name, ``id`` its 64 hex digits):

- ``opendo_node``: one row per node (a serving process), its address for the others, and its
  lease, renewed with the database's clock.
- ``opendo_object``: one row per object ever claimed — its owner (``node_id``, NULL when
  nobody has it) and ``epoch``, which grows with every claim; ``seq``, the number of its last
  log record; ``history_from``, the first record it can still be restored to (older ones
  were pruned); a bookmark to restore next (``restore_seq``); and what ``opendo objects``
  lists (``stored``, ``size``, ``name``).
- ``opendo_log``: an object's commits, as the pages they changed (``cluster.wal``), one
  record per flush, numbered by ``seq``, with the database time it was written at.
- ``opendo_snapshot``: whole images of an object's database at a ``seq``; with the log after
  it, the state at any later record (a new owner restores from the newest).
- ``opendo_alarm``: the object's alarm, as its database says, and which node picked it to run
  (``picked_until``) when nobody owned the object.
- ``opendo_config``: the record of applied Durable Object migrations (``core.migrations``).
"""

from __future__ import annotations

from typing import Any

import asyncpg

__all__ = ["VERSION", "migrate"]

_BASE = """
CREATE TABLE IF NOT EXISTS opendo_schema (
    id integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
)
"""

_STEPS: list[list[str]] = [
    [  # 1
        """CREATE TABLE opendo_node (
            node_id text PRIMARY KEY,
            address text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            lease_until timestamptz NOT NULL
        )""",
        """CREATE TABLE opendo_object (
            ns text NOT NULL,
            id text NOT NULL,
            name text,
            node_id text,
            epoch bigint NOT NULL,
            seq bigint NOT NULL DEFAULT 0,
            snapshot_seq bigint NOT NULL DEFAULT 0,
            log_bytes bigint NOT NULL DEFAULT 0,
            size bigint NOT NULL DEFAULT 0,
            stored boolean NOT NULL DEFAULT false,
            restore_seq bigint,
            history_from bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (ns, id)
        )""",
        "CREATE INDEX opendo_object_node ON opendo_object (node_id)",
        """CREATE TABLE opendo_log (
            ns text NOT NULL,
            id text NOT NULL,
            seq bigint NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            data bytea NOT NULL,
            PRIMARY KEY (ns, id, seq)
        )""",
        """CREATE TABLE opendo_snapshot (
            ns text NOT NULL,
            id text NOT NULL,
            seq bigint NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            data bytea NOT NULL,
            PRIMARY KEY (ns, id, seq)
        )""",
        """CREATE TABLE opendo_alarm (
            ns text NOT NULL,
            id text NOT NULL,
            name text,
            time_ms bigint NOT NULL,
            picked_until timestamptz,
            PRIMARY KEY (ns, id)
        )""",
        "CREATE INDEX opendo_alarm_due ON opendo_alarm (time_ms)",
        """CREATE TABLE opendo_config (
            key text PRIMARY KEY,
            value text NOT NULL
        )""",
    ],
]

VERSION = len(_STEPS)


async def migrate(conn: Any) -> int:
    """Bring the schema to ``VERSION``; returns the version it was at. Refuses a database
    whose schema is newer than this opendo knows."""
    for _ in range(3):
        try:
            await conn.execute(_BASE)
            break
        except (
            asyncpg.UniqueViolationError,
            asyncpg.DuplicateTableError,
            asyncpg.DuplicateObjectError,  # the table's row type, made by the other node
        ):
            continue  # another node created it at the same moment
    await conn.execute(
        "INSERT INTO opendo_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
    )
    async with conn.transaction():
        found = int(
            await conn.fetchval("SELECT version FROM opendo_schema WHERE id = 1 FOR UPDATE")
        )
        if found > VERSION:
            raise RuntimeError(
                f"the cluster's database has opendo schema version {found}, newer than this "
                f"opendo knows ({VERSION}): upgrade opendo on this node"
            )
        for version in range(found + 1, VERSION + 1):
            for statement in _STEPS[version - 1]:
                await conn.execute(statement)
        if found < VERSION:
            await conn.execute("UPDATE opendo_schema SET version = $1 WHERE id = 1", VERSION)
    return found
