"""The SQLite driver: one database file per object, and its durability barrier.

Every object gets its own SQLite database, ``<persist>/<Class>/<id>.sqlite`` (the operations
on it are ``database.SqliteDatabase``'s). The database runs in WAL mode with
``synchronous=NORMAL``: a ``COMMIT`` appends the transaction's pages to the ``-wal`` file (a
``write()`` into the OS page cache) without waiting for the disk, and SQLite itself syncs at
checkpoints. What is slow is making a commit durable, so that happens off the event loop:
``sync(commit, done)`` hands the database to the sync rounds of ``storage.rounds``, which
call its ``flush()`` on a thread (an fsync of its WAL file, and — for a new file — of the file
and its directories) or cover it by one barrier shared with the other databases of a round.

*Lazy files.* A database whose file does not exist yet starts in memory (``file_pending``):
reads see an empty database, and the first commit that leaves something stored moves it into
its file (and makes the class directory, if this is the class's first). So an object that
never stored anything leaves nothing on disk. The move writes the database's image, in WAL
mode already, under a temporary name and links it into place: SQLite has nothing to convert
and syncs nothing then; the first round syncs the file, its ``-wal`` and its directory. A
file a machine crash left before that round finished (no header, no WAL) held nothing that
was acknowledged: it is moved aside to ``<id>.sqlite.torn`` and the object starts empty.

*Closing.* The last connection to a database in WAL mode checkpoints it when it closes (it
writes the WAL back into the file and syncs that): a closed database is let go of on a thread
of its own, which also releases its hold afterwards; ``SqliteDriver.aclose`` (which the
runtime's ``aclose`` awaits) waits for the closes so far.

*Holding and fencing.* A handle holds its object (``locks.hold``) from open until it is
closed and its last sync has returned, so a second server, or an admin command that would
write, cannot write it meanwhile; before each commit it asks ``locks.lost`` whether it still
may. After a failed fsync, what was committed last may not be on disk and yet reads would see
it: the driver opens that object no more until the process restarts, as a database server
stops rather than serve what a failed fsync may have lost.

``flush()`` is the one blocking call that decides durability: tests that hold or fail
durability wrap it (tests/conftest.py's ``GatedDriver``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import StorageError
from ..core.ids import DurableObjectId
from ..core.migrations import MigrationError, MigrationRecord
from ..core.protocols import StoredAlarm
from ..core.storage import (
    DatabaseError,
    Done,
    FencedError,
    ObjectContents,
    QueryResult,
    StoredObject,
)
from ..core.storage import StorageDriver as StorageDriver
from . import locks, rounds
from .database import (
    QUERY_LIMIT,
    SqliteDatabase,
    backup_to,
    check_export,
    connect,
    contents,
    describe,
    fresh,
    prepare,
    read_query,
    set_name,
    unavailable,
    wal_image,
)
from .locks import ObjectInUseError as ObjectInUseError
from .memory import MemoryDriver as MemoryDriver
from .rounds import fsync_dir

# ``X as X`` above: names the runtime, the server and the CLI import from here, whose homes
# are core.storage, storage.memory and storage.locks.

__all__ = [
    "MIGRATIONS_FILE",
    "SqliteDriver",
    "check_persist_directory",
    "read_migrations",
]

log = logging.getLogger("opendo")

CLOSE_TIMEOUT = 30.0  # seconds SqliteDriver.aclose waits for databases still closing


class FileDatabase(SqliteDatabase):
    """One object's database file, held by this process while the handle is open."""

    def __init__(
        self,
        path: Path,
        label: str,
        name: str | None,
        epoch: int,
        failures: dict[str, str],
    ) -> None:
        if path in _closing:
            settle()  # its last handle is closing: this one opens it once that is done
        self._held = locks.hold(path, epoch)
        try:
            self.file_pending = not path.exists()
            if self.file_pending:
                conn = fresh(name)
            else:
                try:
                    conn = connect(str(path))
                    try:
                        prepare(conn, name)
                    except BaseException:
                        conn.close()
                        raise
                except sqlite3.DatabaseError:
                    if not set_aside_if_never_synced(path):
                        raise
                    self.file_pending = True
                    conn = fresh(name)
        except sqlite3.Error as exc:
            locks.release(path)
            raise DatabaseError(f"cannot open {path}: {exc}") from exc
        except BaseException:
            locks.release(path)
            raise
        super().__init__(conn, epoch, label)
        self.path = path
        self.failures = failures  # the driver's: databases whose sync failed, and why
        self.durable = 0  # every commit up to this one is durable
        self.waiting: list[tuple[int, Done]] = []
        self.in_round = False  # waiting for a round, or in one
        self._released = False
        self._synced_once = False
        self._new_directory = False  # the first commit made the class directory
        self._wal_fd: int | None = None
        self._device = 0  # the filesystem of the -wal file (st_dev), once it is open

    def check_epoch(self) -> None:
        why = locks.lost(self._held, self.epoch)
        if why is not None:
            raise FencedError(
                f"the storage of {self.label} refused a commit: {why}; nothing of it was stored"
            )

    def committed(self) -> None:
        if not self.file_pending:
            return
        try:
            if self.holds_nothing():
                self.durable = self.commits  # as stored as it gets: no file, nothing in it
                return
            self._create_file()
        except (sqlite3.Error, OSError, StorageError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.broken = DatabaseError(f"{reason} (creating {self.path})")
            raise self.broken from exc

    def _create_file(self) -> None:
        """The first commit that wrote: the database moves from memory into its file (and
        its class directory, if this is the class's first). On failure nothing is left.

        The file is the in-memory database's image with its header saying WAL mode, written
        under a temporary name and linked into place (so no one ever sees half a file; the
        link fails if another handle created the file meanwhile). SQLite has nothing to
        convert and syncs nothing here: the first ``flush()`` syncs the file, its ``-wal``
        and its directories, before anything of it is acknowledged."""
        path = self.path
        directory = path.parent
        made_directory = not directory.is_dir()
        if made_directory:
            directory.mkdir()
        image = wal_image(self.connection.serialize())
        temporary = directory / f".{path.name}.{os.getpid()}.new"
        linked = False
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(image)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise StorageError(
                    "another handle of the object created its file meanwhile"
                ) from None
            linked = True
            temporary.unlink()
            conn = connect(str(path))
        except BaseException:
            temporary.unlink(missing_ok=True)
            if linked:
                for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    leftover.unlink(missing_ok=True)
            if made_directory:
                try:
                    directory.rmdir()
                except OSError:
                    pass
            raise
        conn.set_authorizer(self.guard.authorize)
        self.connection.close()
        self.connection = conn
        self.file_pending = False
        self._new_directory = made_directory

    # -- the barrier ----------------------------------------------------------------------------

    def sync(self, commit: int, done: Done) -> None:
        if self._closed:
            raise StorageError(f"the database of {self.label} was synced after it was closed")
        if self.broken is not None:
            asyncio.get_running_loop().call_soon(done, self.broken)
        elif commit <= self.durable:
            asyncio.get_running_loop().call_soon(done, None)
        else:
            self.waiting.append((commit, done))
            if not self.in_round:
                rounds.of_loop().add(self)

    def flush(self) -> None:
        """Block until every commit made so far is on disk — or, in a round with a shared
        barrier, until the round's ``syncfs()`` has run. Runs in a round's thread. A new
        database's directories are synced too — by the round, which syncs each once however
        many new databases it has there (``rounds.current.directories``)."""
        if self.file_pending:
            return
        if self._wal_fd is None:
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
            self._device = os.fstat(self._wal_fd).st_dev
        barrier: dict[int, int] | None = getattr(rounds.current, "barrier", None)
        if barrier is not None:
            # The round ends with one syncfs() of this filesystem: it writes every file of
            # it, their directories too, and flushes the disk ("Shared barrier" above).
            barrier.setdefault(self._device, self._wal_fd)
            rounds.current.devices.add(self._device)
            self._synced_once = True
            return
        os.fsync(self._wal_fd)
        if not self._synced_once:
            # A new database: its file and its -wal file must also be found after a crash.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            parents = [self.path.parent]
            if self._new_directory:
                parents.append(self.path.parent.parent)
            directories: set[Path] | None = getattr(rounds.current, "directories", None)
            if directories is None:
                for directory in parents:
                    fsync_dir(directory)
            else:
                directories.update(parents)
            self._synced_once = True

    def round_done(self, target: int, error: BaseException | None) -> None:
        """A round that covered the commits up to ``target`` returned."""
        self.in_round = False
        if error is None:
            self.durable = max(self.durable, target)
            ready = [done for commit, done in self.waiting if commit <= target]
            self.waiting = [(c, d) for c, d in self.waiting if c > target]
        else:
            self.failures[str(self.path)] = repr(error)
            self.broken = unavailable(self.label, repr(error))
            ready = [done for _, done in self.waiting]
            self.waiting = []
        if self.waiting:
            rounds.of_loop().add(self)  # commits made after the round started
        elif self._closed:
            self._let_go()
        for done in ready:
            done(error)

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if not self.in_round:
            self._let_go()

    def _let_go(self) -> None:
        if self._released:
            return
        self._released = True
        wal_fd, self._wal_fd = self._wal_fd, None
        conn, path = self.connection, self.path
        if self.file_pending:  # in memory: nothing to write back
            conn.close()
            locks.release(path)
            return

        def close() -> None:
            try:
                if wal_fd is not None:
                    os.close(wal_fd)
                conn.close()  # the last connection checkpoints the WAL into the file
            finally:
                locks.release(path)
                with _closing_lock:
                    if _closing[path] == 1:
                        del _closing[path]
                    else:
                        _closing[path] -= 1

        # Off the event loop ("Closing" above); SqliteDriver.aclose waits for it.
        with _closing_lock:
            _closing[path] = _closing.get(path, 0) + 1
        _closer().submit(close)


_closers: list[concurrent.futures.ThreadPoolExecutor] = []
_closing: dict[Path, int] = {}  # databases being closed off the loop: how many handles
_closing_lock = threading.Lock()


def _closer() -> concurrent.futures.ThreadPoolExecutor:
    if not _closers:
        _closers.append(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="opendo-close"))
    return _closers[0]


def wait_closed() -> concurrent.futures.Future[None]:
    """Done once every database closed so far is closed and let go of."""
    return _closer().submit(lambda: None)


def settle() -> None:
    """Wait for the databases closing now (before asking who holds what, or what a file
    holds)."""
    if _closing:
        wait_closed().result(CLOSE_TIMEOUT)


# -- the driver ------------------------------------------------------------------------------------


class SqliteDriver:
    """Databases as files: ``<persist>/<ClassName>/<id>.sqlite``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.failures: dict[str, str] = {}  # databases whose sync failed, and why

    async def aclose(self) -> None:
        """Wait until the databases closed so far are let go of (closed off the loop). It
        blocks rather than suspends: the runtime's ``aclose`` never suspends (opendo.testing
        runs it outside an event loop), and a close takes milliseconds."""
        wait_closed().result(CLOSE_TIMEOUT)

    def path_of(self, class_name: str, id: DurableObjectId | str) -> Path:
        return self.directory / class_name / f"{id}.sqlite"

    def open(self, class_name: str, id: DurableObjectId, epoch: int = 0) -> FileDatabase:
        path = self.path_of(class_name, id)
        label = f"{class_name}({id})"
        if (why := self.failures.get(str(path))) is not None:
            raise unavailable(label, why)
        return FileDatabase(path, label, id.name, epoch, self.failures)

    def hold_object(self, class_name: str, id: DurableObjectId | str, epoch: int) -> bool:
        """Hold the object for this process and ``epoch`` (True), unless another process holds
        it (False); what placement claims with. Each hold is released once."""
        try:
            locks.hold(self.path_of(class_name, id), epoch)
        except locks.ObjectInUseError:
            return False
        return True

    def release_object(self, class_name: str, id: DurableObjectId | str) -> None:
        locks.release(self.path_of(class_name, id))

    def holder(self, class_name: str, id: DurableObjectId | str) -> int | None:
        """The pid of the process that holds this object (has it open), or None."""
        settle()
        return locks.holder_of(self.path_of(class_name, id))

    # -- what is stored ---------------------------------------------------------------------------

    def _describe(self, class_name: str, path: Path) -> StoredObject | None:
        settle()  # (a database closing now still changes its files)
        try:
            size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
            conn = connect(str(path), read_only=True)
        except (OSError, sqlite3.Error):
            return None  # gone meanwhile, or not a database
        try:
            return describe(conn, class_name, path.stem, size)
        finally:
            conn.close()

    def objects(self, class_name: str | None = None) -> Iterator[StoredObject]:
        if not self.directory.is_dir():
            return
        for class_dir in sorted(self.directory.iterdir()):
            if not class_dir.is_dir() or (class_name is not None and class_dir.name != class_name):
                continue
            for file in sorted(class_dir.glob("*.sqlite")):
                stored = self._describe(class_dir.name, file)
                if stored is not None:
                    yield stored

    def stored(self, class_name: str, id: DurableObjectId | str) -> StoredObject | None:
        path = self.path_of(class_name, id)
        return self._describe(class_name, path) if path.exists() else None

    def scan_alarms(self) -> Iterator[StoredAlarm]:
        for stored in self.objects():
            if stored.alarm_ms is not None:
                yield StoredAlarm(stored.class_name, stored.id, stored.name, stored.alarm_ms)

    def inspect(self, class_name: str, id: DurableObjectId | str) -> ObjectContents | None:
        stored = self.stored(class_name, id)
        if stored is None:
            return None
        conn = connect(str(self.path_of(class_name, id)), read_only=True)
        try:
            return contents(conn, stored)
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot read {class_name}({id}): {exc}") from exc
        finally:
            conn.close()

    def query(
        self, class_name: str, id: DurableObjectId | str, sql: str, limit: int = QUERY_LIMIT
    ) -> QueryResult | None:
        """A read-only query on the file (safe while a server writes: a reader of WAL mode
        sees the last commit, and never blocks the writer)."""
        if self.stored(class_name, id) is None:
            return None
        conn = connect(str(self.path_of(class_name, id)), read_only=True)
        try:
            return read_query(conn, sql, limit)
        finally:
            conn.close()

    def export_to(
        self, class_name: str, id: DurableObjectId | str, path: str | os.PathLike[str]
    ) -> None:
        """A consistent snapshot through SQLite's backup API: safe while a server writes."""
        target = Path(path)
        if self.stored(class_name, id) is None:
            raise StorageError(f"{class_name}({id}) has nothing stored to export")
        if target.exists():
            raise StorageError(f"{target} exists; an export is written to a new file")
        source = connect(str(self.path_of(class_name, id)), read_only=True)
        try:
            backup_to(source, target, f"{class_name}({id})")
        finally:
            source.close()

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
        target = self.path_of(class_name, id)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not replace and self.stored(class_name, id) is not None:
            raise StorageError(f"{class_name}({id}) exists; it is replaced only when asked to")
        settle()
        locks.hold(target, alone=True)
        try:
            for extra in (Path(f"{target}-wal"), Path(f"{target}-shm")):
                extra.unlink(missing_ok=True)
            tmp = target.with_suffix(".importing")
            shutil.copyfile(source, tmp)
            conn = sqlite3.connect(tmp)
            try:
                set_name(conn, name)  # the name it had where it was exported is not its name here
            finally:
                conn.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            tmp.replace(target)
            fsync_dir(target.parent)
        finally:
            locks.release(target)
        return str(target)

    def delete(self, class_name: str, id: DurableObjectId | str) -> bool:
        path = self.path_of(class_name, id)
        if not path.exists():
            return False
        settle()
        locks.hold(path, alone=True)
        try:
            for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                file.unlink(missing_ok=True)
            fsync_dir(path.parent)
        finally:
            locks.release(path)
        return True

    # -- migrations ---------------------------------------------------------------------------

    @property
    def migrations_file(self) -> Path:
        return self.directory / MIGRATIONS_FILE

    def read_migrations(self) -> MigrationRecord:
        return read_migrations(self.directory)

    def write_migrations(self, record: MigrationRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # A temporary file of this writer's own: servers started at once on a new directory
        # each record the same migrations, and must not rename each other's file away.
        fd, name = tempfile.mkstemp(
            prefix=f".{MIGRATIONS_FILE}.", suffix=".tmp", dir=self.directory
        )
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
        fsync_dir(self.directory)

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
            fsync_dir(self.directory)

    def delete_class(self, name: str) -> None:
        directory = self.directory / name
        with _holding_all(self.directory, name, f"delete class {name!r}"):
            if not directory.is_dir():
                return
            shutil.rmtree(directory)
            fsync_dir(self.directory)


class _holding_all:
    """Hold every object of a class, stored or only open in memory, or fail saying what is
    in use (``locks.hold_class``)."""

    def __init__(self, persist: Path, class_name: str, doing: str) -> None:
        self.persist = persist
        self.class_name = class_name
        self.doing = doing

    def __enter__(self) -> None:
        settle()
        try:
            locks.hold_class(self.persist, self.class_name)
        except ObjectInUseError as exc:
            raise MigrationError(f"cannot {self.doing}: {exc}") from None

    def __exit__(self, *exc: object) -> None:
        locks.release_class(self.persist, self.class_name)


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


# -- the persist directory -----------------------------------------------------------------------

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
        fsync_dir(directory)
    except OSError as exc:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        raise StorageError(
            f"the persist directory {directory} is not writable: {exc.strerror or exc} "
            f"(checked by creating, writing and syncing a file there)"
        ) from None


def set_aside_if_never_synced(path: Path) -> bool:
    """If ``path`` is what a crash of the machine can leave of a new database whose first
    sync never finished (its header all zeros, no WAL content) — which held nothing anyone
    was told was stored — move it aside to ``<name>.torn`` (True), so the object starts
    empty; anything else is left as it is (False)."""
    try:
        with open(path, "rb") as file:
            header = file.read(100)
        wal = Path(f"{path}-wal")
        wal_size = wal.stat().st_size if wal.exists() else 0
    except OSError:
        return False
    if any(header) or wal_size:
        return False
    aside = path.with_name(f"{path.name}.torn")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.torn{n}")
    path.rename(aside)
    Path(f"{path}-shm").unlink(missing_ok=True)
    log.warning(
        "%s holds no database: its first sync never finished (the machine stopped before "
        "it); moved it aside to %s, and the object starts empty",
        path,
        aside.name,
    )
    return True
