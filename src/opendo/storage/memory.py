"""The memory driver: objects' databases in memory, kept while the driver lives.

For tests of user code, where durability is not the point: each object's database is an
SQLite database in memory (so KV and SQL behave exactly as on files), kept across
activations — an evicted object finds its data again — and gone with the process. An object
that stored nothing is forgotten when its last handle closes, as the SQLite driver leaves no
file for it.

Handles of one object share its connection; only one of them may have a transaction open
(the runtime's one instance), and a handle whose epoch is older than the newest one opened
is refused at commit, as on files. ``sync`` has nothing to make durable: it answers on the
next turn of the event loop, after ``flush()`` — a no-op here, the same hook as the SQLite
driver's, where tests make durability fail.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import StorageError
from ..core.ids import DurableObjectId
from ..core.migrations import MigrationError, MigrationRecord
from ..core.protocols import StoredAlarm
from ..core.storage import Done, FencedError, ObjectContents, QueryResult, StoredObject
from .database import (
    QUERY_LIMIT,
    Guard,
    SqliteDatabase,
    connect,
    contents,
    describe,
    holds_something,
    is_export,
    prepare,
    read_query,
    set_name,
    unavailable,
)
from .locks import ObjectInUseError

__all__ = ["MemoryDriver"]


class _Kept:
    """One object's database, and its handles."""

    __slots__ = ("connection", "guard", "epoch", "handles", "writer")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.guard = Guard()
        self.epoch = 0  # the newest epoch among the open handles
        self.handles = 0
        self.writer: MemoryDatabase | None = None  # the handle whose transaction is open

    def size(self) -> int:
        pages = self.connection.execute("PRAGMA page_count").fetchone()[0]
        return int(pages) * int(self.connection.execute("PRAGMA page_size").fetchone()[0])


class MemoryDatabase(SqliteDatabase):
    def __init__(
        self, driver: MemoryDriver, key: tuple[str, str], kept: _Kept, epoch: int, label: str
    ) -> None:
        super().__init__(kept.connection, epoch, label, kept.guard)
        self._driver = driver
        self._key = key
        self._kept = kept
        kept.handles += 1

    @property
    def in_transaction(self) -> bool:
        return super().in_transaction and self._kept.writer is self

    def begin(self) -> None:
        kept = self._kept
        if kept.writer is not self and self._usable().in_transaction:
            raise StorageError(f"another handle of {self.label} has a transaction open")
        super().begin()
        kept.writer = self

    def check_epoch(self) -> None:
        if self._kept.epoch > self.epoch:
            raise FencedError(
                f"the storage of {self.label} refused a commit: the newer epoch "
                f"{self._kept.epoch} has it open (this handle's is {self.epoch}); nothing of "
                "it was stored"
            )

    def sync(self, commit: int, done: Done) -> None:
        if self._closed:
            raise StorageError(f"the database of {self.label} was synced after it was closed")
        asyncio.get_running_loop().call_soon(self._synced, done)

    def _synced(self, done: Done) -> None:
        if self.broken is not None:
            done(self.broken)
            return
        try:
            self.flush()
        except Exception as exc:
            self._driver.failures[self._driver.failure_key(self._key)] = repr(exc)
            self.broken = unavailable(self.label, repr(exc))
            done(exc)
            return
        done(None)

    def flush(self) -> None:
        """Nothing to make durable in memory."""

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        kept = self._kept
        if kept.writer is self:
            kept.writer = None
        kept.handles -= 1
        if not kept.handles and not holds_something(kept.connection):
            self._driver.forget(self._key)


class MemoryDriver:
    """Databases in memory: kept while the driver lives, gone with the process."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], _Kept] = {}
        self._migrations = MigrationRecord()
        self.failures: dict[str, str] = {}  # databases whose sync failed, and why

    @staticmethod
    def failure_key(key: tuple[str, str]) -> str:
        return "/".join(key)

    def open(self, class_name: str, id: DurableObjectId, epoch: int = 0) -> MemoryDatabase:
        key, label = (class_name, str(id)), f"{class_name}({id})"
        if (why := self.failures.get(self.failure_key(key))) is not None:
            raise unavailable(label, why)
        kept = self._kept.get(key)
        if kept is None:
            conn = connect(None)
            prepare(conn, id.name)
            kept = self._kept[key] = _Kept(conn)
        elif kept.handles and epoch < kept.epoch:
            raise FencedError(
                f"{label}: opened for epoch {epoch}, but it is open for the newer epoch "
                f"{kept.epoch}"
            )
        kept.epoch = epoch
        return MemoryDatabase(self, key, kept, epoch, label)

    def forget(self, key: tuple[str, str]) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            kept.connection.close()

    def holder(self, class_name: str, id: DurableObjectId | str) -> int | None:
        kept = self._kept.get((class_name, str(id)))
        return os.getpid() if kept is not None and kept.handles else None

    # -- what is stored ---------------------------------------------------------------------------

    def stored(self, class_name: str, id: DurableObjectId | str) -> StoredObject | None:
        kept = self._kept.get((class_name, str(id)))
        if kept is None:
            return None
        return describe(kept.connection, class_name, str(id), kept.size())

    def objects(self, class_name: str | None = None) -> Iterator[StoredObject]:
        for cls, id in sorted(self._kept):
            if class_name is None or cls == class_name:
                stored = self.stored(cls, id)
                if stored is not None:
                    yield stored

    async def aclose(self) -> None:
        """Nothing to wait for: memory is let go of at once."""

    def scan_alarms(self) -> Iterator[StoredAlarm]:
        for stored in list(self.objects()):
            if stored.alarm_ms is not None:
                yield StoredAlarm(stored.class_name, stored.id, stored.name, stored.alarm_ms)

    def inspect(self, class_name: str, id: DurableObjectId | str) -> ObjectContents | None:
        stored = self.stored(class_name, id)
        if stored is None:
            return None
        return contents(self._kept[(class_name, str(id))].connection, stored)

    def query(
        self, class_name: str, id: DurableObjectId | str, sql: str, limit: int = QUERY_LIMIT
    ) -> QueryResult | None:
        if self.stored(class_name, id) is None:
            return None
        return read_query(self._kept[(class_name, str(id))].connection, sql, limit)

    def export_to(
        self, class_name: str, id: DurableObjectId | str, path: str | os.PathLike[str]
    ) -> None:
        target = Path(path)
        if self.stored(class_name, id) is None:
            raise StorageError(f"{class_name}({id}) has nothing stored to export")
        if target.exists():
            raise StorageError(f"{target} exists; an export is written to a new file")
        copy = sqlite3.connect(target)
        try:
            self._kept[(class_name, str(id))].connection.backup(copy)
        finally:
            copy.close()

    def import_from(
        self,
        class_name: str,
        id: DurableObjectId | str,
        name: str | None,
        path: str | os.PathLike[str],
        *,
        replace: bool = False,
    ) -> str:
        key = (class_name, str(id))
        try:
            source = connect(str(path), read_only=True)
        except sqlite3.Error as exc:
            raise StorageError(f"{path} is not an opendo object export: {exc}") from None
        try:
            if (why := is_export(source)) is not None:
                raise StorageError(f"{path} is not an opendo object export ({why})")
            kept = self._kept.get(key)
            if kept is not None and kept.handles:
                raise ObjectInUseError(f"{class_name}({id}) is open in this process")
            if self.stored(class_name, id) is not None and not replace:
                raise StorageError(f"{class_name}({id}) exists; it is replaced only when asked to")
            conn = connect(None)
            source.backup(conn)
        finally:
            source.close()
        set_name(conn, name)
        self.forget(key)
        self._kept[key] = _Kept(conn)
        return f"memory:{class_name}/{id}"

    def delete(self, class_name: str, id: DurableObjectId | str) -> bool:
        key = (class_name, str(id))
        kept = self._kept.get(key)
        if kept is None:
            return False
        if kept.handles:
            raise ObjectInUseError(f"{class_name}({id}) is open in this process")
        stored = holds_something(kept.connection)
        self.forget(key)
        return stored

    # -- migrations ---------------------------------------------------------------------------

    def read_migrations(self) -> MigrationRecord:
        return self._migrations

    def write_migrations(self, record: MigrationRecord) -> None:
        self._migrations = record

    def _class_closed(self, name: str, doing: str) -> list[tuple[str, str]]:
        keys = [key for key in self._kept if key[0] == name]
        if any(self._kept[key].handles for key in keys):
            raise MigrationError(
                f"cannot {doing}: an object of class {name!r} is open in this process"
            )
        return keys

    def rename_class(self, old: str, new: str) -> None:
        keys = self._class_closed(old, f"rename class {old!r} to {new!r}")
        if keys and any(self.stored(*key) for key in self._kept if key[0] == new):
            raise MigrationError(
                f"cannot rename class {old!r} to {new!r}: objects of a class named {new!r} "
                "are stored; delete them first"
            )
        for _, id in keys:
            self.forget((new, id))
            self._kept[(new, id)] = self._kept.pop((old, id))

    def delete_class(self, name: str) -> None:
        for key in self._class_closed(name, f"delete class {name!r}"):
            self.forget(key)
