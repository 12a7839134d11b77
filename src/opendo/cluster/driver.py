"""The cluster's objects for the admin commands and for migrations: ``ClusterDriver``.

``opendo objects … --cluster URL`` and the migrations a node applies when it starts work on
what PostgreSQL keeps, through the ``StorageDriver`` protocol the embedded driver implements
too. These calls are synchronous (a command line; a server that has not started serving yet):
each runs its queries on a connection of its own, on an event loop in a thread of its own, so
it may be called from inside a running event loop as well. The first call creates or migrates
the cluster's schema.

Reading is safe while nodes run: an object's state is read as a new owner would restore it, in
one repeatable-read transaction. Writing (import, delete, renaming or deleting a class) is
refused while a live node owns an object it touches; otherwise it takes the object's row with
``FOR UPDATE``, bumps its epoch — so a node that held it before can commit nothing more — and
writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import tempfile
import zlib
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from ..core.errors import StorageError
from ..core.ids import DurableObjectId
from ..core.migrations import MigrationError, MigrationRecord
from ..core.protocols import StoredAlarm
from ..core.storage import DatabaseError, ObjectContents, QueryResult, StoredObject
from ..storage.database import (
    QUERY_LIMIT,
    backup_to,
    check_export,
    contents,
    read_query,
    set_name,
)
from . import schema
from .storage import read_image

__all__ = ["ClusterDriver"]

T = TypeVar("T")

TIMEOUT = 30.0  # seconds for one admin operation

_OBJECTS = """
SELECT o.ns, o.id, o.name, o.size, a.time_ms FROM opendo_object o
LEFT JOIN opendo_alarm a ON a.ns = o.ns AND a.id = o.id
WHERE o.stored AND ($1::text IS NULL OR o.ns = $1) AND ($2::text IS NULL OR o.id = $2)
ORDER BY o.ns, o.id
"""
_HOLDER = """
SELECT n.node_id, n.address FROM opendo_object o
JOIN opendo_node n ON n.node_id = o.node_id AND n.lease_until > now()
WHERE o.ns = $1 AND o.id = $2
"""
_HELD_IN_CLASS = """
SELECT o.id, n.address FROM opendo_object o
JOIN opendo_node n ON n.node_id = o.node_id AND n.lease_until > now()
WHERE o.ns = $1 LIMIT 1
"""
_LOCK = "SELECT seq, epoch FROM opendo_object WHERE ns = $1 AND id = $2 FOR UPDATE"
_MIGRATIONS_KEY = "migrations"
_TABLES = ("opendo_log", "opendo_snapshot", "opendo_alarm", "opendo_object")


class ClusterDriver:
    """``core.storage.StorageDriver`` over a cluster's PostgreSQL, for admin and migrations."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._migrated = False

    def _run(self, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        async def session() -> T:
            async with asyncio.timeout(TIMEOUT):
                conn = await asyncpg.connect(self.dsn, timeout=TIMEOUT)
                try:
                    if not self._migrated:
                        await schema.migrate(conn)
                        self._migrated = True
                    return await work(conn)
                finally:
                    await conn.close()

        with ThreadPoolExecutor(1, thread_name_prefix="opendo-admin") as pool:
            try:
                return pool.submit(asyncio.run, session()).result()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                raise DatabaseError(f"the cluster's PostgreSQL: {exc}") from exc

    # -- what is stored -------------------------------------------------------------------------

    def open(self, class_name: str, id: DurableObjectId, epoch: int = 0) -> Any:
        raise StorageError("a cluster's objects are opened by its nodes, not by the admin driver")

    def objects(self, class_name: str | None = None) -> Iterator[StoredObject]:
        rows = self._run(lambda conn: conn.fetch(_OBJECTS, class_name, None))
        return iter([_stored(row) for row in rows])

    def stored(self, class_name: str, id: DurableObjectId | str) -> StoredObject | None:
        rows = self._run(lambda conn: conn.fetch(_OBJECTS, class_name, str(id)))
        return _stored(rows[0]) if rows else None

    async def aclose(self) -> None:
        """Nothing to wait for: each call ends its own connection."""

    def scan_alarms(self) -> Iterator[StoredAlarm]:
        rows = self._run(lambda conn: conn.fetch("SELECT ns, id, name, time_ms FROM opendo_alarm"))
        return iter([StoredAlarm(r["ns"], r["id"], r["name"], int(r["time_ms"])) for r in rows])

    def holder(self, class_name: str, id: DurableObjectId | str) -> str | None:
        row = self._run(lambda conn: conn.fetchrow(_HOLDER, class_name, str(id)))
        return None if row is None else f"node {row['node_id']} at {row['address']}"

    def _image(self, class_name: str, id: str) -> bytearray:
        async def read(conn: Any) -> bytearray:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                seq = await conn.fetchval(
                    "SELECT seq FROM opendo_object WHERE ns = $1 AND id = $2", class_name, id
                )
                return await read_image(conn, class_name, id, int(seq or 0))

        return self._run(read)

    def inspect(self, class_name: str, id: DurableObjectId | str) -> ObjectContents | None:
        stored = self.stored(class_name, id)
        if stored is None:
            return None
        with _image_file(self._image(class_name, str(id))) as path:
            conn = sqlite3.connect(path)
            try:
                return contents(conn, stored)
            except sqlite3.Error as exc:
                raise DatabaseError(f"cannot read {class_name}({id}): {exc}") from exc
            finally:
                conn.close()

    def query(
        self, class_name: str, id: DurableObjectId | str, sql: str, limit: int = QUERY_LIMIT
    ) -> QueryResult | None:
        """On the object as a new owner would restore it."""
        if self.stored(class_name, id) is None:
            return None
        with _image_file(self._image(class_name, str(id))) as path:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                return read_query(conn, sql, limit)
            finally:
                conn.close()

    def export_to(
        self, class_name: str, id: DurableObjectId | str, path: str | os.PathLike[str]
    ) -> None:
        target = Path(path)
        if self.stored(class_name, id) is None:
            raise StorageError(f"{class_name}({id}) has nothing stored to export")
        if target.exists():
            raise StorageError(f"{target} exists; an export is written to a new file")
        with _image_file(self._image(class_name, str(id))) as source_path:
            source = sqlite3.connect(source_path)
            try:
                backup_to(source, target, f"{class_name}({id})")
            finally:
                source.close()

    # -- writing ----------------------------------------------------------------------------------

    def import_from(
        self,
        class_name: str,
        id: DurableObjectId | str,
        name: str | None,
        path: str | os.PathLike[str],
        *,
        replace: bool = False,
    ) -> str:
        source = Path(path)
        check_export(source)
        image, alarm = _prepared(source, name)
        key = str(id)

        async def write(conn: Any) -> None:
            async with conn.transaction():
                row = await self._take(conn, class_name, key, "replace")
                if row is not None and not replace and await _is_stored(conn, class_name, key):
                    raise StorageError(
                        f"{class_name}({key}) exists; it is replaced only when asked to"
                    )
                seq = (int(row["seq"]) if row is not None else 0) + 1
                await conn.execute(
                    """INSERT INTO opendo_object AS o
                       (ns, id, name, node_id, epoch, seq, snapshot_seq, size, stored)
                       VALUES ($1, $2, $3, NULL, 1, $4, $4, $5, true)
                       ON CONFLICT (ns, id) DO UPDATE SET name = excluded.name, node_id = NULL,
                       epoch = o.epoch + 1, seq = excluded.seq, snapshot_seq = excluded.seq,
                       log_bytes = 0, size = excluded.size, stored = true, restore_seq = NULL""",
                    class_name,
                    key,
                    name,
                    seq,
                    len(image),
                )
                await conn.execute(
                    "INSERT INTO opendo_snapshot (ns, id, seq, data) VALUES ($1, $2, $3, $4)",
                    class_name,
                    key,
                    seq,
                    zlib.compress(image, 1),
                )
                await conn.execute(
                    "DELETE FROM opendo_alarm WHERE ns = $1 AND id = $2", class_name, key
                )
                if alarm is not None:
                    await conn.execute(
                        "INSERT INTO opendo_alarm (ns, id, name, time_ms) VALUES ($1, $2, $3, $4)",
                        class_name,
                        key,
                        name,
                        alarm,
                    )

        self._run(write)
        return f"{self.dsn_shown()} {class_name}/{key}"

    def delete(self, class_name: str, id: DurableObjectId | str) -> bool:
        key = str(id)

        async def remove(conn: Any) -> bool:
            async with conn.transaction():
                row = await self._take(conn, class_name, key, "delete")
                if row is None or not await _is_stored(conn, class_name, key):
                    return False
                await _forget(conn, class_name, key)
                return True

        return self._run(remove)

    async def _take(self, conn: Any, class_name: str, id: str, doing: str) -> Any:
        """Lock the object's row, refusing while a live node owns it."""
        row = await conn.fetchrow(_LOCK, class_name, id)
        holder = await conn.fetchrow(_HOLDER, class_name, id)
        if holder is not None:
            raise StorageError(
                f"cannot {doing} {class_name}({id}): node {holder['node_id']} at "
                f"{holder['address']} has it open; try again once it has let it go"
            )
        return row

    def dsn_shown(self) -> str:
        """The DSN without its password."""
        head, at, tail = self.dsn.rpartition("@")
        if not at:
            return self.dsn
        scheme, _, user = head.partition("://")
        return f"{scheme}://{user.split(':')[0]}@{tail}"

    # -- migrations -------------------------------------------------------------------------------

    def read_migrations(self) -> MigrationRecord:
        text = self._run(
            lambda conn: conn.fetchval(
                "SELECT value FROM opendo_config WHERE key = $1", _MIGRATIONS_KEY
            )
        )
        if text is None:
            return MigrationRecord()
        try:
            return MigrationRecord.from_json(json.loads(text))
        except ValueError as exc:
            raise MigrationError(f"the cluster's migration record: {exc}") from None

    def write_migrations(self, record: MigrationRecord) -> None:
        text = json.dumps(record.to_json())
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO opendo_config (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                _MIGRATIONS_KEY,
                text,
            )
        )

    def rename_class(self, old: str, new: str) -> None:
        async def rename(conn: Any) -> None:
            async with conn.transaction():
                await _refuse_held(conn, old, f"rename class {old!r} to {new!r}")
                if not await conn.fetchval(
                    "SELECT 1 FROM opendo_object WHERE ns = $1 LIMIT 1", old
                ):
                    return  # nothing of it stored (or a node starting at once renamed it)
                if await conn.fetchval("SELECT 1 FROM opendo_object WHERE ns = $1 LIMIT 1", new):
                    raise MigrationError(
                        f"cannot rename class {old!r} to {new!r}: the cluster already holds "
                        f"objects of a class named {new!r}; move or delete them first"
                    )
                for table in _TABLES:
                    await conn.execute(f"UPDATE {table} SET ns = $2 WHERE ns = $1", old, new)

        self._run(rename)

    def delete_class(self, name: str) -> None:
        async def remove(conn: Any) -> None:
            async with conn.transaction():
                await _refuse_held(conn, name, f"delete class {name!r}")
                for table in _TABLES:
                    await conn.execute(f"DELETE FROM {table} WHERE ns = $1", name)

        self._run(remove)


async def _refuse_held(conn: Any, class_name: str, doing: str) -> None:
    held = await conn.fetchrow(_HELD_IN_CLASS, class_name)
    if held is not None:
        raise MigrationError(
            f"cannot {doing}: its object {held['id']} is open on the node at {held['address']}"
        )


async def _is_stored(conn: Any, class_name: str, id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT stored FROM opendo_object WHERE ns = $1 AND id = $2", class_name, id
        )
    )


async def _forget(conn: Any, class_name: str, id: str) -> None:
    """Its history and alarm go; its row stays, with a new epoch and nothing stored (so a
    node that held it before can commit nothing, and the next claim starts empty, at record
    0)."""
    await conn.execute("DELETE FROM opendo_log WHERE ns = $1 AND id = $2", class_name, id)
    await conn.execute("DELETE FROM opendo_snapshot WHERE ns = $1 AND id = $2", class_name, id)
    await conn.execute("DELETE FROM opendo_alarm WHERE ns = $1 AND id = $2", class_name, id)
    await conn.execute(
        """UPDATE opendo_object SET node_id = NULL, epoch = epoch + 1, stored = false, size = 0,
           seq = 0, log_bytes = 0, snapshot_seq = 0, history_from = 0, restore_seq = NULL
           WHERE ns = $1 AND id = $2""",
        class_name,
        id,
    )


def _stored(row: Any) -> StoredObject:
    alarm = row["time_ms"]
    return StoredObject(
        row["ns"], row["id"], row["name"], int(row["size"]), None if alarm is None else int(alarm)
    )


def _prepared(source: Path, name: str | None) -> tuple[bytes, int | None]:
    """The export's bytes with ``name`` recorded in it (in WAL mode, as a cache wants it),
    and its alarm."""
    with tempfile.TemporaryDirectory(prefix="opendo-import-") as tmp:
        path = Path(tmp) / "object.sqlite"
        src = sqlite3.connect(source)
        try:
            dst = sqlite3.connect(path)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            set_name(conn, name)
            conn.execute("PRAGMA journal_mode=WAL")
            alarm_row = conn.execute("SELECT time_ms FROM _opendo_alarm").fetchone()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            image = conn.serialize()
        finally:
            conn.close()
    return image, None if alarm_row is None else int(alarm_row[0])


class _image_file:
    """An image written to a temporary file, for SQLite to read."""

    def __init__(self, image: bytearray) -> None:
        self.image = image
        self.dir: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        self.dir = tempfile.TemporaryDirectory(prefix="opendo-admin-")
        path = Path(self.dir.name) / "object.sqlite"
        path.write_bytes(self.image)
        return path

    def __exit__(self, *exc: object) -> None:
        if self.dir is not None:
            self.dir.cleanup()
