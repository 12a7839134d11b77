"""The seam between the storage API and what keeps the data (``opendo.storage``).

A ``StorageDriver`` opens one ``ObjectDatabase`` per activation of an object. The database
hides SQLite (or PostgreSQL behind it) from the storage API (``ctx.storage``), as workerd's
``ActorCacheInterface`` hides its engines from the JavaScript API: KV and SQL operations
inside the transactions the API opens, the alarm row, and the durability barrier. One
contract test suite (tests/test_driver_contract.py) runs on every driver.

Theory of operation
-------------------

*Transactions.* The API opens a write transaction with ``begin()`` for the first write of a
turn, runs every call of the turn in it (``savepoint`` / ``rollback_to`` / ``release`` for
``transaction_sync`` and ``transaction``), and ends it with ``commit()``. Writes are only
made inside a transaction. A database that fails while one is open (a full disk) may roll it
back itself: ``in_transaction`` is then False, and the API knows the batch is lost.

*The barrier.* ``commit()`` returns a number that grows with every commit of the handle.
``sync(commit, done)`` asks for every commit up to ``commit`` to be made durable, and calls
``done(None)`` once they are (an fsync; a committed PostgreSQL transaction), or
``done(error)`` if that failed. ``done`` is called once, later, on the event loop that called
``sync`` — never from inside ``sync``. The driver decides how syncs are grouped (the SQLite
driver fsyncs the databases of all objects in rounds on a thread of its own); the API only
waits, and opens the output gate when ``done(None)`` comes. After a failed sync, what was
committed may be lost while still readable: the handle refuses further use, and the driver
does not open the object again until the process restarts (``StorageUnavailableError``).

*Epochs.* Every handle is opened with the epoch of its activation (``Placement.claim``), and
every commit is checked against it: a handle whose object a newer epoch has opened, or that
its process no longer holds (for SQLite on one machine: the byte-range lock of the object in
``objects.lock``), is refused with ``FencedError``, and nothing of the refused commit is stored
or acknowledged. A driver whose fence lives in the durable store (PostgreSQL: the transaction
that writes the commits first locks the object's owner row and compares its epoch) may refuse
in ``sync`` instead, with ``done(FencedError(...))``: either way, nothing fenced is ever
acknowledged.

*Lifetime.* ``close()`` rolls back what is not committed; a sync in flight still completes and
calls its ``done``, and the handle lets go of the object (files, locks) after it. An object
whose database holds nothing (no key, no table of the user's, no alarm) does not exist for
``objects()``: the SQLite driver makes its file with the first commit that leaves something
stored.

Errors: every failure is a ``StorageError`` — ``DatabaseError`` when the database itself
failed (I/O, a full disk, a damaged file), ``SqlError`` for user SQL, ``FencedError``,
``StorageUnavailableError``; a plain ``StorageError`` for a refused argument or a limit.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from .errors import StorageError
from .protocols import AlarmStore

if TYPE_CHECKING:
    from .ids import DurableObjectId
    from .migrations import MigrationRecord

__all__ = [
    "DatabaseError",
    "Done",
    "FencedError",
    "ObjectContents",
    "ObjectDatabase",
    "PointInTime",
    "QueryResult",
    "SqlError",
    "SqlResult",
    "StorageDriver",
    "StoredObject",
]


class DatabaseError(StorageError):
    """The database failed (an I/O error, a full disk, a damaged file); the message is why."""


class FencedError(StorageError):
    """A commit was refused: the handle's epoch is no longer the object's (a newer activation
    opened it, or this process no longer holds it). Nothing of the commit was stored."""


class SqlError(StorageError):
    """An error from SQL, or a statement ``sql.exec`` does not allow. ``changed``: the
    statements before the failing one may have changed the database."""

    def __init__(self, message: str, *, changed: bool = False) -> None:
        super().__init__(message)
        self.changed = changed


class SqlResult(NamedTuple):
    columns: list[str]
    rows: list[tuple[Any, ...]]
    rows_written: int
    changed: bool  # the statements may have changed the database: its batch must be made durable


Done = Callable[[BaseException | None], None]  # what sync() calls: None, or why it failed


class ObjectDatabase(Protocol):
    """One object's database, for one activation (see the module's essay)."""

    @property
    def epoch(self) -> int: ...

    @property
    def in_transaction(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    def check_live(self) -> None:
        """Raise a ``StorageError`` (``FencedError``) if the handle may not be used now: the
        storage API asks before every call, cached reads included. (A cluster node whose
        lease may have lapsed refuses here.)"""
        ...

    # transactions

    def begin(self) -> None:
        """Open a write transaction, if none is open."""
        ...

    def commit(self) -> int:
        """Commit the open transaction (checking the epoch), and return the number of the
        last commit (with none open: the last one's, 0 if none). If it raises, the
        transaction was rolled back and nothing of it is stored."""
        ...

    def rollback(self) -> None:
        """Roll back the open transaction, if one is open."""
        ...

    def savepoint(self, name: str) -> None:
        """A savepoint inside the open transaction (``name``: letters, digits, ``_``)."""
        ...

    def release(self, name: str) -> None:
        """Keep what was done since the savepoint. Nothing, if the transaction was lost."""
        ...

    def rollback_to(self, name: str) -> None:
        """Undo what was done since the savepoint (which stays). Nothing, if the transaction
        was lost."""
        ...

    # KV: keys and values as bytes (the storage API encodes them), in byte order

    def kv_get(self, key: bytes) -> bytes | None: ...

    def kv_get_many(self, keys: list[bytes]) -> list[tuple[bytes, bytes]]:
        """The keys found and their values, in key order."""
        ...

    def kv_put(self, items: list[tuple[bytes, bytes]]) -> None:
        """Store every item, or (if it raises) none."""
        ...

    def kv_delete(self, keys: list[bytes]) -> int:
        """Delete the keys; how many of them existed."""
        ...

    def kv_list(
        self, start: bytes | None, end: bytes | None, reverse: bool, limit: int | None
    ) -> list[tuple[bytes, bytes]]:
        """Keys ``start <= key < end`` (None: unbounded) with their values, in key order or
        reversed, at most ``limit`` of them."""
        ...

    def delete_all(self) -> None:
        """Every key and every table and view of the user's; the alarm stays."""
        ...

    # SQL

    def sql(self, query: str, bindings: tuple[Any, ...]) -> SqlResult:
        """Run user SQL: one or more statements, the bindings applying to the last. Raises
        ``SqlError`` (with ``changed``) for an error or a statement user SQL may not run:
        transaction control, ATTACH, pragmas that are not introspection, the runtime's own
        tables."""
        ...

    def size(self) -> int:
        """The database's size in bytes."""
        ...

    # the alarm

    def alarm(self) -> int | None: ...

    def set_alarm(self, time_ms: int) -> None: ...

    def delete_alarm(self) -> None: ...

    # durability and lifetime

    def sync(self, commit: int, done: Done) -> None:
        """The durability barrier: ``done(None)`` once every commit up to ``commit`` is
        durable, ``done(error)`` if that failed; called once, later, on this event loop."""
        ...

    def close(self) -> None:
        """Roll back what is not committed and let go of the object (once a sync in flight
        has called its ``done``). Idempotent."""
        ...


@runtime_checkable
class PointInTime(Protocol):
    """What a database whose driver keeps its history adds (cluster mode): Cloudflare's
    point-in-time recovery. A bookmark names a state of the database; bookmarks sort in the
    order of the states they name."""

    def current_bookmark(self) -> str:
        """The bookmark of the state the last durable commit left."""
        ...

    def bookmark_for_time(self, time_ms: int) -> Awaitable[str]:
        """The bookmark of the state at ``time_ms`` (epoch milliseconds)."""
        ...

    def restore_on_next_session(self, bookmark: str) -> Awaitable[str]:
        """Restore ``bookmark`` when the object next opens its storage; the bookmark of the
        state now (to undo it)."""
        ...


class StoredObject(NamedTuple):
    """An object that has something stored."""

    class_name: str
    id: str  # 64 hex digits
    name: str | None  # the name its id was made from, if it was
    size: int  # bytes
    alarm_ms: int | None


class ObjectContents(NamedTuple):
    """What ``inspect`` reads of one object."""

    object: StoredObject
    kv: list[tuple[bytes, bytes]]  # keys and encoded values, in key order
    tables: dict[str, int]  # the user's SQL tables, by name, with their row counts


class QueryResult(NamedTuple):
    """What ``query`` reads: the columns, and the rows up to the limit."""

    columns: list[str]
    rows: list[tuple[object, ...]]
    truncated: bool  # there were more rows than the limit


class StorageDriver(AlarmStore, Protocol):
    """Opens objects' databases; and what migrations and the admin commands need.

    Objects are named by class and id (a ``DurableObjectId``, or its 64 hex digits for the
    admin operations, which do not know the namespace)."""

    def open(self, class_name: str, id: DurableObjectId, epoch: int = 0) -> ObjectDatabase:
        """The object's database for an activation with ``epoch``. Raises ``FencedError`` if
        a newer epoch has it open, ``StorageUnavailableError`` after a failed sync, and the
        driver's own error if another process holds it."""
        ...

    # what is stored (the admin commands, the pytest plugin)

    def objects(self, class_name: str | None = None) -> Iterator[StoredObject]:
        """Every object with something stored (of one class, if given), by class then id."""
        ...

    def stored(self, class_name: str, id: DurableObjectId | str) -> StoredObject | None:
        """The object, if it has something stored."""
        ...

    def inspect(self, class_name: str, id: DurableObjectId | str) -> ObjectContents | None:
        """Its KV entries and SQL tables with row counts (None if nothing is stored)."""
        ...

    def query(
        self, class_name: str, id: DurableObjectId | str, sql: str, limit: int
    ) -> QueryResult | None:
        """One read-only SQL statement on the object's database (``database.read_query``);
        None if nothing is stored."""
        ...

    def export_to(
        self, class_name: str, id: DurableObjectId | str, path: str | os.PathLike[str]
    ) -> None:
        """A consistent copy of the object's database, as one new SQLite file at ``path``."""
        ...

    def import_from(
        self,
        class_name: str,
        id: DurableObjectId | str,
        name: str | None,
        path: str | os.PathLike[str],
        *,
        replace: bool = False,
    ) -> str:
        """Make an exported file (``export_to``) the object's database, recording ``name``
        as the name its id was made from; refused while the object is held. Returns where it
        was put."""
        ...

    def delete(self, class_name: str, id: DurableObjectId | str) -> bool:
        """Remove the object and its data (refused while it is held); False if it had none."""
        ...

    def holder(self, class_name: str, id: DurableObjectId | str) -> int | str | None:
        """Who has the object open: a process id on one machine, a node in a cluster."""
        ...

    # migrations (see core.migrations.apply)

    def read_migrations(self) -> MigrationRecord: ...

    def write_migrations(self, record: MigrationRecord) -> None: ...

    def rename_class(self, old: str, new: str) -> None:
        """Every object of class ``old`` becomes one of ``new``, with its data (refused while
        one of them is open)."""
        ...

    def delete_class(self, name: str) -> None:
        """Remove every object of class ``name`` and its data (refused while one is open)."""
        ...
