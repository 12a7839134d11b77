"""The seam between the storage API and what keeps the data (``opendo.storage``).

A ``StorageDriver`` opens one ``ObjectDatabase`` per object. The database hides SQLite (or
PostgreSQL behind it) from the storage API (``ctx.storage``): KV and SQL operations inside the
transactions the API opens, the alarm row, and ``sync(commit, done)``, the durability barrier —
``done`` is called once every commit up to ``commit`` is durable (an fsync; a committed
PostgreSQL transaction). One contract test suite runs on every driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .protocols import AlarmStore

if TYPE_CHECKING:
    from .ids import DurableObjectId
    from .migrations import MigrationRecord

__all__ = ["ObjectDatabase", "SqlResult", "StorageDriver", "StoredObject"]


class SqlResult(NamedTuple):
    columns: list[str]
    rows: list[tuple[Any, ...]]
    rows_written: int
    changed: bool  # the statements may have changed the database: its batch must be made durable


class ObjectDatabase(Protocol):
    """One object's database, inside the transaction the storage API opened."""

    @property
    def in_transaction(self) -> bool: ...

    def begin(self) -> None:
        """Open a write transaction, if none is open."""
        ...

    def commit(self) -> int:
        """Commit the open transaction; returns a number that grows with every commit."""
        ...

    def rollback(self) -> None: ...

    def savepoint(self, name: str) -> None: ...

    def release(self, name: str) -> None: ...

    def rollback_to(self, name: str) -> None: ...

    # KV (keys and values as bytes; the storage API encodes them)

    def kv_get(self, key: bytes) -> bytes | None: ...

    def kv_get_many(self, keys: list[bytes]) -> list[tuple[bytes, bytes]]:
        """The found keys and their values, in key order."""
        ...

    def kv_put(self, items: list[tuple[bytes, bytes]]) -> None:
        """All or none."""
        ...

    def kv_delete(self, keys: list[bytes]) -> int:
        """How many of the keys existed."""
        ...

    def kv_list(
        self, start: bytes | None, end: bytes | None, reverse: bool, limit: int | None
    ) -> list[tuple[bytes, bytes]]:
        """Keys ``start <= key < end`` (either may be None), in key order or reversed."""
        ...

    def delete_all(self) -> None:
        """Every key and every table of user SQL; the alarm stays."""
        ...

    # SQL

    def sql(self, query: str, bindings: tuple[Any, ...]) -> SqlResult:
        """Run user SQL (one or more statements; the bindings apply to the last)."""
        ...

    def size(self) -> int: ...

    # the alarm

    def alarm(self) -> int | None: ...

    def set_alarm(self, time_ms: int) -> None: ...

    def delete_alarm(self) -> None: ...

    # durability and lifetime

    def sync(self, commit: int, done: Callable[[BaseException | None], None]) -> None:
        """The durability barrier: ``done(None)`` once every commit up to ``commit`` is
        durable, ``done(error)`` if that failed (then what was committed may be lost, and
        the database must not be read again)."""
        ...

    def close(self) -> None: ...


class StoredObject(NamedTuple):
    class_name: str
    id: str
    name: str | None
    size: int
    alarm_ms: int | None


class StorageDriver(AlarmStore, Protocol):
    """Opens objects' databases; also what migrations and admin commands need."""

    def open(self, class_name: str, id: DurableObjectId, epoch: int = 0) -> ObjectDatabase: ...

    def objects(self, class_name: str | None = None) -> Iterator[StoredObject]:
        """Every object with something stored (of one class, if given)."""
        ...

    def read_migrations(self) -> MigrationRecord: ...

    def write_migrations(self, record: MigrationRecord) -> None: ...

    def rename_class(self, old: str, new: str) -> None:
        """Every object of class ``old`` becomes one of ``new``, with its data."""
        ...

    def delete_class(self, name: str) -> None:
        """Remove every object of class ``name`` and its data."""
        ...
