"""The storage driver: one SQLite database per object, and its durability barrier.

Every object gets its own SQLite database. The object's code talks to it synchronously, on
the event loop thread: a read or a write is a call into SQLite on a file the OS has cached,
which takes microseconds and never yields — so nothing else can run between two storage
calls of one event, and no lock is needed for that.

What is slow is making a commit durable. The database runs in WAL mode with
``synchronous=NORMAL``: a ``COMMIT`` appends the transaction's pages to the ``-wal`` file
(a ``write()`` into the OS page cache) without waiting for the disk, and SQLite itself syncs
at checkpoints. The runtime then calls ``ObjectDatabase.flush()`` from a worker thread, which
``fsync``s the WAL file: once it returns, every commit made before it started is on disk, and
only then does the output gate let the results of those writes leave the process. Many
commits made while one flush runs share the next flush (group commit).

``StorageDriver`` is the boundary tests may replace: a driver opens databases, and a
database's ``flush()`` is the one call that decides durability. ``SqliteDriver`` keeps files
under the persist directory; ``MemoryDriver`` keeps databases in memory (for tests of user
code, where durability is not the point).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

from ._errors import StorageError
from ._ids import DurableObjectId
from ._migrations import MigrationError, MigrationRecord

__all__ = [
    "ALARM_TABLE",
    "KV_TABLE",
    "MemoryDriver",
    "ObjectDatabase",
    "SqliteDriver",
    "StorageDriver",
    "StoredAlarm",
]

KV_TABLE = "_opendo_kv"
META_TABLE = "_opendo_meta"
ALARM_TABLE = "_opendo_alarm"
RUNTIME_TABLES = frozenset({KV_TABLE, META_TABLE, ALARM_TABLE})
RESERVED_PREFIX = "_opendo_"

MAX_VALUE_BYTES = 2 * 1024 * 1024  # a string, blob or row; as Cloudflare's SQLite limit
MAX_SQL_LENGTH = 100_000
MAX_COLUMNS = 100
MAX_INTERNAL_VARIABLES = 512  # our own multi-key statements; users get MAX_BINDINGS

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {KV_TABLE} (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {ALARM_TABLE} (
    id INTEGER PRIMARY KEY CHECK (id = 1), time_ms INTEGER NOT NULL);
"""

# Pragmas user SQL may run: the read-only, introspective ones.
_USER_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "quick_check",
        "integrity_check",
        "data_version",  # FTS5 reads it
    }
)
_READ_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,
    }
)


class ObjectDatabase:
    """One object's SQLite connection, with the guard that keeps user SQL in its lane.

    While ``user_sql`` is set, the authorizer refuses transaction control (the runtime owns
    transactions), ATTACH/DETACH, pragmas other than introspection, and any access to the
    runtime's own ``_opendo_*`` tables; ``refused`` then says why, and ``wrote`` records
    whether the statement may change the database.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        # Where the driver keeps the databases whose flush failed (see mark_failed).
        self.failures: dict[str, str] | None = None
        self.failure_key = str(path)
        self.user_sql = False
        self.refused: str | None = None
        self.wrote = False
        self._synced_once = path is None
        self._wal_fd: int | None = None
        # Held while this process has the object open: a second server, or an admin command
        # that would write, finds it taken (see hold()).
        self._held = path is not None
        if path is not None:
            hold(path)
        target = str(path) if path is not None else ":memory:"
        conn = sqlite3.connect(
            target, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        self.connection = conn
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if path is not None:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            # Room for a record's header: the limit checked in Python is what callers meet.
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES + 1024)
            conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_LENGTH)
            conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, MAX_COLUMNS)
            conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, MAX_INTERNAL_VARIABLES)
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.set_authorizer(self._authorize)
        except BaseException:
            conn.close()
            if path is not None:
                release(path)
            raise

    def _authorize(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None
    ) -> int:
        if not self.user_sql:
            return sqlite3.SQLITE_OK
        if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
            self.refused = (
                "BEGIN, COMMIT, ROLLBACK and SAVEPOINT are not allowed in sql.exec(): "
                "the runtime commits your writes; use storage.transaction_sync() to group them"
            )
            return sqlite3.SQLITE_DENY
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            self.refused = "ATTACH and DETACH are not allowed in sql.exec()"
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA:
            argument = (arg2 or "").strip("\"'`[] ").lower()
            if (arg1 or "").lower() in _USER_PRAGMAS and not argument.startswith(RESERVED_PREFIX):
                return sqlite3.SQLITE_OK
            self.refused = f"PRAGMA {arg1} is not allowed in sql.exec()"
            return sqlite3.SQLITE_DENY
        for name in (arg1, arg2):
            if name and name.lower().startswith(RESERVED_PREFIX):
                self.refused = f"{name} is reserved for the runtime and cannot be used in SQL"
                return sqlite3.SQLITE_DENY
        if action not in _READ_ACTIONS:
            self.wrote = True
        return sqlite3.SQLITE_OK

    def flush(self) -> None:
        """Block until every commit made so far is on disk. Runs in a worker thread."""
        if self.path is None:
            return
        if self._wal_fd is None:
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        os.fsync(self._wal_fd)
        if not self._synced_once:
            # A new database: its file and its -wal file must also be found after a crash.
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.path.parent)
            self._synced_once = True

    def mark_failed(self, error: BaseException) -> None:
        """Its flush failed: what it committed last may not be on disk, and yet reads would
        see it. The driver opens it no more (until the process restarts), as a database
        server stops rather than serve what a failed fsync may have lost."""
        if self.failures is not None:
            self.failures[self.failure_key] = repr(error)

    def close(self) -> None:
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        self.connection.close()
        if self._held and self.path is not None:
            self._held = False
            release(self.path)


class ObjectInUseError(Exception):
    """Another process holds this object's database (a running server)."""


_holds: dict[str, tuple[int, int]] = {}  # path -> (fd, how many opens in this process)


def hold(path: Path) -> None:
    """Hold an object's database file for this process, or raise ObjectInUseError.

    An advisory ``flock`` on the database file itself (SQLite's own locks are POSIX record
    locks, which ``flock`` does not touch), shared by every open of the file in this process
    (an instance reset while its last flush runs and the next one overlap). The operating
    system drops it when the process dies, so a crashed server never leaves an object held.
    """
    key = str(path)
    if key in _holds:
        fd, count = _holds[key]
        _holds[key] = (fd, count + 1)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ObjectInUseError(
            f"{path} is held by another process (a running opendo server?)"
        ) from None
    _holds[key] = (fd, 1)


def release(path: Path) -> None:
    key = str(path)
    fd, count = _holds[key]
    if count > 1:
        _holds[key] = (fd, count - 1)
    else:
        del _holds[key]
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StoredAlarm(NamedTuple):
    class_name: str
    id: str  # 64 hex digits
    name: str | None
    time_ms: int


class StorageDriver(Protocol):
    """Opens the database of one object. Implementations: SqliteDriver, MemoryDriver."""

    def open(self, class_name: str, id: DurableObjectId) -> ObjectDatabase: ...

    def scan_alarms(self) -> Iterator[StoredAlarm]:
        """Every stored alarm, of every object (read when the runtime starts)."""
        ...

    # Migrations (see _migrations.apply): what was applied, and the two steps that move data.

    def read_migrations(self) -> MigrationRecord: ...

    def write_migrations(self, record: MigrationRecord) -> None: ...

    def rename_class(self, old: str, new: str) -> None:
        """Every object of class ``old`` becomes one of ``new``, with its data."""
        ...

    def delete_class(self, name: str) -> None:
        """Remove every object of class ``name`` and its data."""
        ...


def _read_alarm(conn: sqlite3.Connection) -> tuple[int | None, str | None]:
    try:
        alarm = conn.execute(f"SELECT time_ms FROM {ALARM_TABLE}").fetchone()
        name = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'name'").fetchone()
    except sqlite3.OperationalError:
        return None, None  # a database from before alarms existed, or not ours
    return (alarm[0] if alarm else None), (name[0] if name else None)


def _unavailable(class_name: str, id: DurableObjectId, why: str) -> StorageError:
    return StorageError(
        f"the storage of {class_name}({id}) failed to sync to disk ({why}); what it wrote "
        "last may not be on disk, so it is not read again: the object is unavailable until "
        "the server restarts"
    )


class SqliteDriver:
    """Databases as files: ``<persist>/<ClassName>/<id>.sqlite``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.failures: dict[str, str] = {}  # databases whose flush failed, and why

    def path_of(self, class_name: str, id: DurableObjectId) -> Path:
        return self.directory / class_name / f"{id}.sqlite"

    def scan_alarms(self) -> Iterator[StoredAlarm]:
        if not self.directory.is_dir():
            return
        for class_dir in sorted(self.directory.iterdir()):
            if not class_dir.is_dir():
                continue
            for file in sorted(class_dir.glob("*.sqlite")):
                conn = sqlite3.connect(str(file))
                try:
                    time_ms, name = _read_alarm(conn)
                finally:
                    conn.close()
                if time_ms is not None:
                    yield StoredAlarm(class_dir.name, file.stem, name, time_ms)

    def open(self, class_name: str, id: DurableObjectId) -> ObjectDatabase:
        path = self.path_of(class_name, id)
        if (why := self.failures.get(str(path))) is not None:
            raise _unavailable(class_name, id, why)
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(path.parent.parent)
        db = ObjectDatabase(path)
        db.failures = self.failures
        return db

    # -- migrations -------------------------------------------------------------------------

    @property
    def migrations_file(self) -> Path:
        return self.directory / MIGRATIONS_FILE

    def read_migrations(self) -> MigrationRecord:
        return read_migrations(self.directory)

    def write_migrations(self, record: MigrationRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.migrations_file.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record.to_json(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.migrations_file)
        _fsync_dir(self.directory)

    def rename_class(self, old: str, new: str) -> None:
        source, target = self.directory / old, self.directory / new
        if not source.is_dir():
            return  # no object of it was stored (or a run before a crash moved them)
        if target.is_dir():
            if any(target.iterdir()):
                raise MigrationError(
                    f"cannot rename class {old!r} to {new!r}: {target} already holds objects "
                    f"of a class named {new!r}; move or delete them first"
                )
            target.rmdir()
        with _holding_all(source, f"rename class {old!r} to {new!r}"):
            source.rename(target)
            _fsync_dir(self.directory)

    def delete_class(self, name: str) -> None:
        directory = self.directory / name
        if not directory.is_dir():
            return
        with _holding_all(directory, f"delete class {name!r}"):
            shutil.rmtree(directory)
            _fsync_dir(self.directory)


MIGRATIONS_FILE = "migrations.json"


def read_migrations(directory: Path) -> MigrationRecord:
    """What the persist directory records of applied migrations (nothing, if it is new)."""
    file = directory / MIGRATIONS_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return MigrationRecord()
    try:
        return MigrationRecord.from_json(json.loads(text))
    except ValueError as exc:
        raise MigrationError(f"{file}: not a migration record ({exc})") from None


class _holding_all:
    """Hold every object database in a class directory, or fail with what is in use."""

    def __init__(self, directory: Path, doing: str) -> None:
        self.files = sorted(directory.glob("*.sqlite"))
        self.doing = doing

    def __enter__(self) -> None:
        held: list[Path] = []
        try:
            for file in self.files:
                if str(file) in _holds:
                    raise ObjectInUseError(f"{file} is open in this process")
                hold(file)
                held.append(file)
        except ObjectInUseError as exc:
            for file in held:
                release(file)
            raise MigrationError(f"cannot {self.doing}: {exc}") from None

    def __exit__(self, *exc: object) -> None:
        for file in self.files:
            release(file)


class MemoryDriver:
    """Databases in memory: kept while the driver lives, gone with the process."""

    def __init__(self) -> None:
        self._databases: dict[tuple[str, DurableObjectId], ObjectDatabase] = {}
        self._migrations = MigrationRecord()
        self.failures: dict[str, str] = {}

    def read_migrations(self) -> MigrationRecord:
        return self._migrations

    def write_migrations(self, record: MigrationRecord) -> None:
        self._migrations = record

    def rename_class(self, old: str, new: str) -> None:
        for class_name, id in list(self._databases):
            if class_name == old:
                self._databases[(new, id)] = self._databases.pop((old, id))

    def delete_class(self, name: str) -> None:
        for class_name, id in list(self._databases):
            if class_name == name:
                self._databases.pop((class_name, id)).connection.close()

    def open(self, class_name: str, id: DurableObjectId) -> ObjectDatabase:
        key = (class_name, id)
        db = self._databases.get(key)
        if db is None:
            db = self._databases[key] = _KeptOpen(None)
            db.failures, db.failure_key = self.failures, f"{class_name}/{id}"
        elif (why := self.failures.get(db.failure_key)) is not None:
            raise _unavailable(class_name, id, why)
        return db

    def scan_alarms(self) -> Iterator[StoredAlarm]:
        for (class_name, id), db in list(self._databases.items()):
            time_ms, name = _read_alarm(db.connection)
            if time_ms is not None:
                yield StoredAlarm(class_name, str(id), name, time_ms)


class _KeptOpen(ObjectDatabase):
    """An in-memory database survives its object's eviction: closing it keeps it."""

    def close(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")
