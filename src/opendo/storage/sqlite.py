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

A database appears on disk with the first commit that leaves something in it: until then it
lives in memory, so an object that only read (or only answered a request) leaves no file. A
process holds each object it has open with a byte-range lock in one lock file per persist
directory (``hold()``), so a second server, or an admin command, cannot write it meanwhile.

``StorageDriver`` is the boundary tests may replace: a driver opens databases, and a
database's ``flush()`` is the one call that decides durability. ``SqliteDriver`` keeps files
under the persist directory; ``MemoryDriver`` keeps databases in memory (for tests of user
code, where durability is not the point).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

from ..core.errors import StorageError, StorageUnavailableError
from ..core.ids import DurableObjectId
from ..core.migrations import MigrationError, MigrationRecord

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

    A database whose file does not exist yet starts in memory (``file_pending``): reads see
    an empty database, and the file is made by ``create_file()`` with the first commit that
    leaves something stored (``holds_nothing()`` is false). So an object that never stored
    anything leaves nothing on disk.
    """

    def __init__(self, path: Path | None, name: str | None = None) -> None:
        self.path = path
        # Where the driver keeps the databases whose flush failed (see mark_failed).
        self.failures: dict[str, str] | None = None
        self.failure_key = str(path)
        self.user_sql = False
        self.refused: str | None = None
        self.wrote = False
        self._synced_once = path is None
        self._new_directory = False  # create_file() made the class directory
        self._wal_fd: int | None = None
        # Held while this process has the object open: a second server, or an admin command
        # that would write, finds it taken (see hold()).
        self._held = path is not None
        if path is not None:
            hold(path)
        try:
            self.file_pending = path is not None and not path.exists()
            conn = self.connection = _connect(None if self.file_pending else path)
            try:
                conn.executescript(_SCHEMA)
                if name is not None:
                    conn.execute(
                        f"INSERT OR IGNORE INTO {META_TABLE} (key, value) VALUES ('name', ?)",
                        (name,),
                    )
                conn.set_authorizer(self._authorize)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            if path is not None:
                release(path)
            raise

    def holds_nothing(self) -> bool:
        """No key, no alarm, no table of the user's: what a database that is not there holds."""
        row = self.connection.execute(
            f"SELECT EXISTS (SELECT 1 FROM {KV_TABLE}) OR EXISTS (SELECT 1 FROM {ALARM_TABLE})"
            " OR EXISTS (SELECT 1 FROM sqlite_master WHERE substr(name, 1, ?) != ?"
            " AND substr(name, 1, 7) != 'sqlite_')",
            (len(RESERVED_PREFIX), RESERVED_PREFIX),
        ).fetchone()
        return not row[0]

    def create_file(self) -> None:
        """The first commit that wrote: the database moves from memory into its file (and
        its class directory, if this is the class's first). On failure nothing is left."""
        path = self.path
        assert path is not None and self.file_pending
        directory = path.parent
        made_directory = not directory.is_dir()
        if made_directory:
            directory.mkdir()
        try:
            conn = _connect(path)
            try:
                self.connection.backup(conn)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                leftover.unlink(missing_ok=True)
            if made_directory:
                try:
                    directory.rmdir()
                except OSError:
                    pass
            raise
        conn.set_authorizer(self._authorize)
        self.connection.close()
        self.connection = conn
        self.file_pending = False
        self._new_directory = made_directory

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
        if self.path is None or self.file_pending:
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
            if self._new_directory:
                _fsync_dir(self.path.parent.parent)
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


def _connect(path: Path | None) -> sqlite3.Connection:
    """A connection to the database file at ``path`` (WAL mode), or to a new one in memory."""
    target = str(path) if path is not None else ":memory:"
    conn = sqlite3.connect(
        target, isolation_level=None, check_same_thread=False, cached_statements=256
    )
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        if path is not None:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        # Room for a record's header: the limit checked in Python is what callers meet.
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES + 1024)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_LENGTH)
        conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, MAX_COLUMNS)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, MAX_INTERNAL_VARIABLES)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    except BaseException:
        conn.close()
        raise
    return conn


# -- holding an object: one lock file per persist directory ------------------------------------


class ObjectInUseError(Exception):
    """Another process holds this object (a running server)."""


LOCK_FILE = "objects.lock"


class _LockFile:
    """This process's one open descriptor of a persist directory's lock file, and what it
    holds there: each object (by offset) with how many opens share it, each class (by
    offset) with how many of its objects are held, and the classes held exclusively."""

    __slots__ = ("fd", "objects", "classes", "exclusive")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.objects: dict[int, int] = {}
        self.classes: dict[int, int] = {}
        self.exclusive: set[int] = set()

    def empty(self) -> bool:
        return not self.objects and not self.exclusive


_lock_files: dict[str, _LockFile] = {}  # persist directory (real path) -> its lock file
_lock_mutex = threading.Lock()


def _offset(*parts: str) -> int:
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2  # 62 bits: a positive off_t, with room for 1


def _lock_place(path: Path) -> tuple[Path, int, int]:
    """For an object's database path ``<persist>/<Class>/<id>.sqlite``: the persist
    directory, and the bytes of the object and of its class in the lock file."""
    class_name = path.parent.name
    return path.parent.parent, _offset(class_name, path.stem), _offset("class", class_name)


def _lock_file(persist: Path) -> tuple[str, _LockFile]:
    """This process's lock file of ``persist`` (opened, and the directory made, if needed)."""
    key = os.path.realpath(persist)
    lock_file = _lock_files.get(key)
    if lock_file is None:
        try:
            persist.mkdir(parents=True, exist_ok=True)
            fd = os.open(persist / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot open {persist / LOCK_FILE} to hold objects there: "
                f"{exc.strerror or exc}; the persist directory must be writable"
            ) from None
        lock_file = _lock_files[key] = _LockFile(fd)
    return key, lock_file


def _done_with(key: str, lock_file: _LockFile) -> None:
    if lock_file.empty():
        os.close(lock_file.fd)  # it holds nothing more: closing drops nothing still wanted
        del _lock_files[key]


def _try_lock(lock_file: _LockFile, offset: int, exclusive: bool) -> int | None:
    """Lock one byte without waiting: None if it is ours now, else the pid in the way (0 if
    unknown)."""
    kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.lockf(lock_file.fd, kind | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        return _lock_holder(lock_file.fd, offset) or 0
    return None


def _unlock(lock_file: _LockFile, offset: int) -> None:
    fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)


def _by(pid: int) -> str:
    return f"pid {pid}: a running opendo server?" if pid else "a running opendo server?"


def hold(path: Path) -> None:
    """Hold an object for this process, or raise ObjectInUseError.

    An exclusive POSIX record lock (``fcntl`` F_SETLK) on one byte of ``<persist>/
    objects.lock``, at an offset derived from the object's class and id, so holding needs no
    file of the object's own; and a shared lock on its class's byte, which a migration
    renaming or deleting the class takes exclusively (``_holding_all``). Record locks belong
    to the process, and closing *any* descriptor of the file drops all of them: so the
    process opens the lock file once and keeps that descriptor while it holds anything there
    (it is closed when the last hold ends), and opens of one object in this process (an
    instance reset while its last flush runs and the next one overlap) share the lock by
    count. The operating system drops the locks when the process dies, so a crashed server
    never leaves an object held.
    """
    persist, offset, class_offset = _lock_place(path)
    with _lock_mutex:
        key, lock_file = _lock_file(persist)
        count = lock_file.objects.get(offset, 0)
        if count == 0:
            if class_offset in lock_file.exclusive:
                raise ObjectInUseError(f"{path}: its class is being migrated in this process")
            classes = lock_file.classes.get(class_offset, 0)
            if classes == 0 and (pid := _try_lock(lock_file, class_offset, False)) is not None:
                _done_with(key, lock_file)
                raise ObjectInUseError(
                    f"{path}: its class is being renamed or deleted by another process ({_by(pid)})"
                )
            if (pid := _try_lock(lock_file, offset, True)) is not None:
                if classes == 0:
                    _unlock(lock_file, class_offset)
                _done_with(key, lock_file)
                raise ObjectInUseError(f"{path} is held by another process ({_by(pid)})")
            lock_file.classes[class_offset] = classes + 1
        lock_file.objects[offset] = count + 1


def release(path: Path) -> None:
    persist, offset, class_offset = _lock_place(path)
    with _lock_mutex:
        key = os.path.realpath(persist)
        lock_file = _lock_files[key]
        count = lock_file.objects.pop(offset)
        if count > 1:
            lock_file.objects[offset] = count - 1
            return
        classes = lock_file.classes.pop(class_offset) - 1
        if classes:
            lock_file.classes[class_offset] = classes
        if lock_file.empty():
            _done_with(key, lock_file)  # drops both locks
            return
        _unlock(lock_file, offset)
        if not classes:
            _unlock(lock_file, class_offset)


def hold_class(persist: Path, class_name: str) -> None:
    """Hold every object of a class, stored or not (to rename or delete the class), or raise
    ObjectInUseError: an exclusive lock on the class's byte, which every ``hold`` of one of
    its objects shares."""
    class_offset = _offset("class", class_name)
    with _lock_mutex:
        key, lock_file = _lock_file(persist)
        if lock_file.classes.get(class_offset) or class_offset in lock_file.exclusive:
            raise ObjectInUseError(f"an object of class {class_name!r} is open in this process")
        if (pid := _try_lock(lock_file, class_offset, True)) is not None:
            _done_with(key, lock_file)
            raise ObjectInUseError(
                f"an object of class {class_name!r} is held by another process ({_by(pid)})"
            )
        lock_file.exclusive.add(class_offset)


def release_class(persist: Path, class_name: str) -> None:
    class_offset = _offset("class", class_name)
    with _lock_mutex:
        key = os.path.realpath(persist)
        lock_file = _lock_files[key]
        lock_file.exclusive.remove(class_offset)
        if lock_file.empty():
            _done_with(key, lock_file)
        else:
            _unlock(lock_file, class_offset)


def holder_of(path: Path) -> int | None:
    """The pid of the process that holds the object of ``path``, or None."""
    persist, offset, _ = _lock_place(path)
    with _lock_mutex:
        lock_file = _lock_files.get(os.path.realpath(persist))
        if lock_file is not None:
            if offset in lock_file.objects:
                return os.getpid()  # F_GETLK does not report this process's own locks
            return _lock_holder(lock_file.fd, offset)
        try:
            fd = os.open(persist / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            return _lock_holder(fd, offset)
        finally:
            os.close(fd)  # this process holds nothing there: closing drops nothing


# struct flock, as F_GETLK reads and writes it
_FLOCK = "qqihh" if sys.platform == "darwin" else "hhqqi4x"


def _lock_holder(fd: int, offset: int) -> int | None:
    if sys.platform == "darwin":
        probe = struct.pack(_FLOCK, offset, 1, 0, fcntl.F_WRLCK, os.SEEK_SET)
    else:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
    if sys.platform == "darwin":
        _, _, pid, kind, _ = struct.unpack(_FLOCK, answer)
    else:
        kind, _, _, _, pid = struct.unpack(_FLOCK, answer)
    return None if kind == fcntl.F_UNLCK else int(pid)


PROBE_BYTES = 4096


def check_persist_directory(directory: Path) -> None:
    """Refuse a persist directory that cannot be written (read-only, full, not a directory):
    make it if it is missing, then create a probe file in it, write and fsync it, fsync the
    directory, and remove the probe. Raises StorageError saying which directory and why."""
    probe = directory / f".opendo-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            data = memoryview(b"\0" * PROBE_BYTES)
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
        _fsync_dir(directory)
    except OSError as exc:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        raise StorageError(
            f"the persist directory {directory} is not writable: {exc.strerror or exc} "
            f"(checked by creating, writing and syncing a file there)"
        ) from None


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


def _unavailable(class_name: str, id: DurableObjectId, why: str) -> StorageUnavailableError:
    return StorageUnavailableError(
        f"the storage of {class_name}({id}) failed to sync to disk ({why}); what it wrote "
        "last may not be on disk, so it is not read again: the object is unavailable until "
        "the server restarts"
    )


class SqliteDriver:
    """Databases as files: ``<persist>/<ClassName>/<id>.sqlite``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.failures: dict[str, str] = {}  # databases whose flush failed, and why

    def path_of(self, class_name: str, id: DurableObjectId | str) -> Path:
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
        db = ObjectDatabase(path, id.name)
        db.failures = self.failures
        return db

    def hold_object(self, class_name: str, id: DurableObjectId | str) -> bool:
        """Hold the object for this process (True), unless another process holds it (False).
        Every hold is released once (``release_object``)."""
        try:
            hold(self.path_of(class_name, id))
        except ObjectInUseError:
            return False
        return True

    def release_object(self, class_name: str, id: DurableObjectId | str) -> None:
        release(self.path_of(class_name, id))

    def holder(self, class_name: str, id: DurableObjectId | str) -> int | None:
        """The pid of the process that holds this object (has it open), or None."""
        return holder_of(self.path_of(class_name, id))

    # -- migrations -------------------------------------------------------------------------

    @property
    def migrations_file(self) -> Path:
        return self.directory / MIGRATIONS_FILE

    def read_migrations(self) -> MigrationRecord:
        return read_migrations(self.directory)

    def write_migrations(self, record: MigrationRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # A temporary file of this writer's own: servers started at once on a new directory
        # each record the same migrations, and must not rename each other's file away.
        fd, name = tempfile.mkstemp(prefix=f"{MIGRATIONS_FILE}.", suffix=".tmp", dir=self.directory)
        tmp = Path(name)
        try:
            with open(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o644)
                json.dump(record.to_json(), f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.migrations_file)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)

    def rename_class(self, old: str, new: str) -> None:
        source, target = self.directory / old, self.directory / new
        with _holding_all(self.directory, old, f"rename class {old!r} to {new!r}"):
            if not source.is_dir():
                return  # no object of it was stored (or a run before a crash moved them)
            if target.is_dir():
                if any(target.iterdir()):
                    raise MigrationError(
                        f"cannot rename class {old!r} to {new!r}: {target} already holds "
                        f"objects of a class named {new!r}; move or delete them first"
                    )
                target.rmdir()
            source.rename(target)
            _fsync_dir(self.directory)

    def delete_class(self, name: str) -> None:
        directory = self.directory / name
        with _holding_all(self.directory, name, f"delete class {name!r}"):
            if not directory.is_dir():
                return
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
    """Hold every object of a class, stored or only open in memory, or fail saying what is
    in use (``hold_class``)."""

    def __init__(self, persist: Path, class_name: str, doing: str) -> None:
        self.persist = persist
        self.class_name = class_name
        self.doing = doing

    def __enter__(self) -> None:
        try:
            hold_class(self.persist, self.class_name)
        except ObjectInUseError as exc:
            raise MigrationError(f"cannot {self.doing}: {exc}") from None

    def __exit__(self, *exc: object) -> None:
        release_class(self.persist, self.class_name)


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
            db = self._databases[key] = _KeptOpen(None, id.name)
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
