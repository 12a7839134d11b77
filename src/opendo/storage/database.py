"""One object's database on SQLite: the ``ObjectDatabase`` the SQLite and memory drivers share.

The object's code talks to its database synchronously, on the event loop thread: a read or a
write is a call into SQLite on a file the OS has cached (or on memory), which takes
microseconds and never yields — so nothing else can run between two storage calls of one
event, and no lock is needed for that. KV entries live in ``_opendo_kv``, the alarm in
``_opendo_alarm``, the name the object's id was made from in ``_opendo_meta``; the user's SQL
tables sit beside them, so KV and SQL share one transaction space.

User SQL is kept in its lane by an authorizer (``Guard``): while a ``sql()`` call runs, it
refuses transaction control (the runtime owns transactions), ATTACH/DETACH, pragmas other
than introspection, and any access to the runtime's own ``_opendo_*`` tables, and it records
whether the statements may have changed the database. DDL changes no rows, so a ``CREATE
TABLE IF NOT EXISTS`` run by every constructor is a change only if the schema version moved.

``SqliteDatabase`` leaves to its driver where the connection comes from, the check before
every call (``check_live``: the cluster's lease), the epoch check before each commit
(``check_epoch``), what follows a commit (``committed``: the SQLite driver's lazy file, the
cluster's replication), and durability (``sync``, ``close``). Every SQLite error leaves it as a
``StorageError``: ``SqlError`` from user SQL, else a ``DatabaseError`` (or, for a value past
SQLite's limits, a plain one).
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..core.errors import StorageError, StorageUnavailableError
from ..core.storage import (
    DatabaseError,
    Done,
    ObjectContents,
    QueryResult,
    SqlError,
    SqlResult,
    StoredObject,
)

__all__ = [
    "ALARM_TABLE",
    "KV_TABLE",
    "META_TABLE",
    "RUNTIME_TABLES",
    "Guard",
    "SqliteDatabase",
    "backup_to",
    "check_export",
    "connect",
    "contents",
    "describe",
    "failure",
    "holds_something",
    "is_export",
    "prepare",
    "read_query",
    "set_name",
    "unavailable",
    "wal_image",
]

KV_TABLE = "_opendo_kv"
META_TABLE = "_opendo_meta"
ALARM_TABLE = "_opendo_alarm"
RUNTIME_TABLES = frozenset({KV_TABLE, META_TABLE, ALARM_TABLE})
RESERVED_PREFIX = "_opendo_"

MAX_VALUE_BYTES = 2 * 1024 * 1024  # a string, blob or row; as Cloudflare's SQLite limit
MAX_SQL_LENGTH = 100_000
MAX_COLUMNS = 100
MAX_INTERNAL_VARIABLES = 512  # our own multi-key statements; users get the API's MAX_BINDINGS

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {KV_TABLE} (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {ALARM_TABLE} (
    id INTEGER PRIMARY KEY CHECK (id = 1), time_ms INTEGER NOT NULL);
"""

_GET = f"SELECT value FROM {KV_TABLE} WHERE key = ?"
_PUT = (
    f"INSERT INTO {KV_TABLE} (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_DELETE = f"DELETE FROM {KV_TABLE} WHERE key = ?"
_ALARM = f"SELECT time_ms FROM {ALARM_TABLE}"
_SET_ALARM = (
    f"INSERT INTO {ALARM_TABLE} (id, time_ms) VALUES (1, ?) "
    "ON CONFLICT (id) DO UPDATE SET time_ms = excluded.time_ms"
)
_HOLDS_SOMETHING = (
    f"SELECT EXISTS (SELECT 1 FROM {KV_TABLE}) OR EXISTS (SELECT 1 FROM {ALARM_TABLE})"
    " OR EXISTS (SELECT 1 FROM sqlite_master WHERE substr(name, 1, ?) != ?"
    " AND substr(name, 1, 7) != 'sqlite_')"
)
_USER_SCHEMA = (
    "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') "
    "AND substr(name, 1, 7) != 'sqlite_' ORDER BY name"
)

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


def connect(
    path: str | None, *, read_only: bool = False, cache: bool = False
) -> sqlite3.Connection:
    """A connection to the database file at ``path`` (WAL mode), or to a new one in memory;
    ``read_only``: to read a file another process may be writing; ``cache``: a file that is a
    cache of a database kept elsewhere (cluster mode) — never synced, checkpointed only when
    its owner says so, and locked for this connection alone."""
    if read_only:
        assert path is not None
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn = sqlite3.connect(
        path or ":memory:", isolation_level=None, check_same_thread=False, cached_statements=256
    )
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        if path is not None and cache:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA wal_autocheckpoint=0")
        elif path is not None:
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


def prepare(conn: sqlite3.Connection, name: str | None) -> None:
    """The runtime's tables, and the name the object's id was made from (if it was)."""
    conn.executescript(_SCHEMA)
    if name is not None:
        conn.execute(f"INSERT OR IGNORE INTO {META_TABLE} (key, value) VALUES ('name', ?)", (name,))


_fresh_image: list[bytes] = []  # a prepared, empty database, serialized (made once)


def fresh(name: str | None) -> sqlite3.Connection:
    """A new, empty object database in memory with the runtime's tables: a copy of one made
    once, which costs one call instead of running the schema for every new object."""
    if not _fresh_image:
        template = connect(None)
        try:
            prepare(template, None)
            _fresh_image.append(template.serialize())
        finally:
            template.close()
    conn = connect(None)
    try:
        conn.deserialize(_fresh_image[0])
        if name is not None:
            conn.execute(f"INSERT INTO {META_TABLE} (key, value) VALUES ('name', ?)", (name,))
    except BaseException:
        conn.close()
        raise
    return conn


def wal_image(image: bytes) -> bytearray:
    """A database's image (``serialize()``) with its header saying WAL mode: written to a
    file, it opens in WAL mode with nothing to convert (the file format's read and write
    versions, bytes 18 and 19, are 2 for WAL)."""
    result = bytearray(image)
    if result[:16] != b"SQLite format 3\x00":
        raise DatabaseError("not an SQLite database image")
    result[18] = result[19] = 2
    return result


def set_name(conn: sqlite3.Connection, name: str | None) -> None:
    """Record ``name`` (None: no name) as the one the object's id was made from."""
    with conn:
        conn.execute(f"DELETE FROM {META_TABLE} WHERE key = 'name'")
        if name is not None:
            conn.execute(f"INSERT INTO {META_TABLE} (key, value) VALUES ('name', ?)", (name,))


def holds_something(conn: sqlite3.Connection) -> bool:
    """A key, an alarm or a table of the user's: what a database that is not there lacks."""
    row = conn.execute(_HOLDS_SOMETHING, (len(RESERVED_PREFIX), RESERVED_PREFIX)).fetchone()
    return bool(row[0])


def describe(conn: sqlite3.Connection, class_name: str, id: str, size: int) -> StoredObject | None:
    """The object a database holds, or None if it holds nothing (or is not an object's)."""
    try:
        if not holds_something(conn):
            return None
        name = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'name'").fetchone()
        alarm = conn.execute(_ALARM).fetchone()
    except sqlite3.DatabaseError:
        return None  # empty, damaged, or not ours
    return StoredObject(
        class_name, id, name[0] if name else None, size, int(alarm[0]) if alarm else None
    )


def contents(conn: sqlite3.Connection, stored: StoredObject) -> ObjectContents:
    """Its KV entries and the user's tables with their row counts."""
    kv = conn.execute(f"SELECT key, value FROM {KV_TABLE} ORDER BY key").fetchall()
    tables = {}
    for kind, table in conn.execute(_USER_SCHEMA).fetchall():
        if kind == "table" and table not in RUNTIME_TABLES:
            tables[table] = int(conn.execute(f"SELECT count(*) FROM {_quote(table)}").fetchone()[0])
    return ObjectContents(stored, [(bytes(k), bytes(v)) for k, v in kv], tables)


QUERY_LIMIT = 1000  # rows ``opendo objects query`` shows unless told otherwise
QUERY_TIMEOUT = 10.0  # seconds a read-only query may run


def read_query(
    conn: sqlite3.Connection, sql: str, limit: int = QUERY_LIMIT, timeout: float = QUERY_TIMEOUT
) -> QueryResult:
    """One SQL statement that only reads (a ``SELECT``, or an introspective ``PRAGMA`` such as
    ``table_info``), on ``conn``; its first ``limit`` rows. The runtime's own tables can be
    read too. Anything that would write, or a second statement, is refused with an
    ``SqlError`` that says so; a query running past ``timeout`` seconds is stopped."""
    if limit < 1:
        raise SqlError(f"the row limit must be at least 1 (got {limit})")

    def authorize(action: int, arg1: str | None, *_: str | None) -> int:
        if action in _READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _USER_PRAGMAS:
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    deadline = time.monotonic() + timeout
    conn.set_authorizer(authorize)
    conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
    try:
        cursor = conn.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        rows = cursor.fetchmany(limit + 1)
    except sqlite3.ProgrammingError as exc:
        raise SqlError(f"{exc} (one statement per query)") from None
    except sqlite3.Error as exc:
        if time.monotonic() > deadline:
            raise SqlError(f"the query ran past {timeout:g} s and was stopped") from None
        if "not authorized" in str(exc):
            raise SqlError(
                "only queries that read are allowed (SELECT, or a PRAGMA such as table_info)"
            ) from None
        raise SqlError(str(exc)) from None
    finally:
        conn.set_authorizer(None)
        conn.set_progress_handler(None, 0)
    return QueryResult(columns, [tuple(row) for row in rows[:limit]], len(rows) > limit)


def is_export(conn: sqlite3.Connection) -> str | None:
    """Why the database is not an object's (None: it is one)."""
    try:
        found = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = ?", (KV_TABLE,)
        ).fetchone()[0]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if found else f"no {KV_TABLE} table"


def unavailable(label: str, why: str) -> StorageUnavailableError:
    """What opening an object whose sync failed raises (until the process restarts)."""
    return StorageUnavailableError(
        f"the storage of {label} failed to sync to disk ({why}); what it wrote "
        "last may not be on disk, so it is not read again: the object is unavailable until "
        "the server restarts"
    )


def check_export(source: Path) -> None:
    """Refuse a file that is not an opendo object export (``StorageError``, saying why)."""
    try:
        conn = connect(str(source), read_only=True)
    except sqlite3.Error as exc:
        raise StorageError(f"{source} is not an opendo object export: {exc}") from None
    try:
        why = is_export(conn)
    finally:
        conn.close()
    if why is not None:
        raise StorageError(f"{source} is not an opendo object export ({why})")


def backup_to(source: sqlite3.Connection, target: Path, label: str) -> None:
    """A consistent copy of ``source`` as the new SQLite file ``target`` (SQLite's backup
    API, in rollback-journal mode: one plain file); nothing is left of a failed one."""
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise DatabaseError(f"cannot export {label} to {target}: {exc}") from exc


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def failure(exc: sqlite3.Error) -> StorageError:
    """What SQLite's error is to the storage API: a limit (too big), or the database
    failing."""
    if isinstance(exc, sqlite3.DataError):
        return StorageError(str(exc))
    return DatabaseError(str(exc))


class Guard:
    """The authorizer of a connection: user SQL runs while ``user_sql`` is set; ``refused``
    then says why a statement was denied, and ``wrote`` whether one may write."""

    __slots__ = ("user_sql", "refused", "wrote")

    def __init__(self) -> None:
        self.user_sql = False
        self.refused: str | None = None
        self.wrote = False

    def authorize(
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


class SqliteDatabase:
    """An ``ObjectDatabase`` over one SQLite connection (``connection``), prepared by
    ``prepare``. ``label`` names the object in errors: ``Class(id)``."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        epoch: int,
        label: str,
        guard: Guard | None = None,
    ) -> None:
        self.connection = connection
        self.epoch = epoch
        self.label = label
        self.commits = 0  # the number of the last commit
        self.guard = guard = guard or Guard()  # handles of one connection share its guard
        self._closed = False
        self.broken: StorageError | None = None  # set: the handle refuses every call
        connection.set_authorizer(guard.authorize)

    # -- what the driver decides ----------------------------------------------------------------

    def check_live(self) -> None:
        """Raise (a ``StorageError``) if this handle may not be used now (the storage API asks
        before every call)."""

    def check_epoch(self) -> None:
        """Raise FencedError if this handle may no longer commit."""

    def committed(self) -> None:
        """A commit just succeeded (``commits`` is its number)."""

    def sync(self, commit: int, done: Done) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._closed:
            return
        self._rollback_quietly()
        self._closed = True

    # -- guards -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _usable(self) -> sqlite3.Connection:
        if self.broken is not None:
            raise self.broken
        if self._closed:
            raise StorageError(f"the database of {self.label} was used after it was closed")
        return self.connection

    def _writable(self) -> sqlite3.Connection:
        conn = self._usable()
        if not self.in_transaction:
            raise StorageError(f"a write to {self.label} outside a transaction")
        return conn

    # -- transactions ---------------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return not self._closed and self.connection.in_transaction

    def begin(self) -> None:
        conn = self._usable()
        if not conn.in_transaction:
            try:
                conn.execute("BEGIN")
            except sqlite3.Error as exc:
                raise failure(exc) from exc

    def commit(self) -> int:
        conn = self._usable()
        if self.in_transaction:
            try:
                self.check_epoch()
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback_quietly()
                raise DatabaseError(str(exc)) from exc
            except BaseException:
                self._rollback_quietly()
                raise
            self.commits += 1
            self.committed()
        return self.commits

    def rollback(self) -> None:
        if self._closed:
            self._usable()  # raises, naming the database
        if self.in_transaction:  # also on a broken handle: discarding reads nothing
            try:
                self.connection.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise failure(exc) from exc

    def _rollback_quietly(self) -> None:
        try:
            if self.in_transaction:
                self.connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite rolled back already, or will when the connection closes

    def savepoint(self, name: str) -> None:
        try:
            self._writable().execute(f"SAVEPOINT {RESERVED_PREFIX}{name}")
        except sqlite3.Error as exc:
            raise failure(exc) from exc

    def release(self, name: str) -> None:
        self._to_savepoint("RELEASE", name)

    def rollback_to(self, name: str) -> None:
        self._to_savepoint("ROLLBACK TO", name)

    def _to_savepoint(self, verb: str, name: str) -> None:
        conn = self._usable()
        if not self.in_transaction:
            return  # the transaction was lost: there is nothing to keep or undo
        try:
            conn.execute(f"{verb} {RESERVED_PREFIX}{name}")
        except sqlite3.Error as exc:
            raise failure(exc) from exc

    # -- KV ----------------------------------------------------------------------------------------

    def kv_get(self, key: bytes) -> bytes | None:
        try:
            row = self._usable().execute(_GET, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise failure(exc) from exc
        return None if row is None else row[0]

    def kv_get_many(self, keys: list[bytes]) -> list[tuple[bytes, bytes]]:
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        try:
            rows = (
                self._usable()
                .execute(
                    f"SELECT key, value FROM {KV_TABLE} WHERE key IN ({marks}) ORDER BY key", keys
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise failure(exc) from exc
        return rows

    def kv_put(self, items: list[tuple[bytes, bytes]]) -> None:
        conn = self._writable()
        try:
            if len(items) == 1:
                conn.execute(_PUT, items[0])
                return
            conn.execute(f"SAVEPOINT {RESERVED_PREFIX}put")
            try:
                conn.executemany(_PUT, items)
            except BaseException:
                conn.execute(f"ROLLBACK TO {RESERVED_PREFIX}put")
                raise
            finally:
                conn.execute(f"RELEASE {RESERVED_PREFIX}put")
        except sqlite3.Error as exc:
            raise failure(exc) from exc

    def kv_delete(self, keys: list[bytes]) -> int:
        conn = self._writable()
        try:
            if len(keys) == 1:
                return int(conn.execute(_DELETE, keys).rowcount)
            if not keys:
                return 0
            marks = ",".join("?" * len(keys))
            return int(
                conn.execute(f"DELETE FROM {KV_TABLE} WHERE key IN ({marks})", keys).rowcount
            )
        except sqlite3.Error as exc:
            raise failure(exc) from exc

    def kv_list(
        self, start: bytes | None, end: bytes | None, reverse: bool, limit: int | None
    ) -> list[tuple[bytes, bytes]]:
        where: list[str] = []
        args: list[bytes | int] = []
        if start is not None:
            where.append("key >= ?")
            args.append(start)
        if end is not None:
            where.append("key < ?")
            args.append(end)
        sql = f"SELECT key, value FROM {KV_TABLE}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY key DESC" if reverse else " ORDER BY key"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        try:
            rows = self._usable().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise failure(exc) from exc
        return rows

    def delete_all(self) -> None:
        conn = self._writable()
        try:
            conn.execute(f"DELETE FROM {KV_TABLE}")
            for kind, name in conn.execute(_USER_SCHEMA).fetchall():
                if name not in RUNTIME_TABLES:
                    conn.execute(
                        f"DROP {'VIEW' if kind == 'view' else 'TABLE'} IF EXISTS {_quote(name)}"
                    )
        except sqlite3.Error as exc:
            raise failure(exc) from exc

    def holds_nothing(self) -> bool:
        return not holds_something(self._usable())

    # -- SQL ---------------------------------------------------------------------------------------

    def sql(self, query: str, bindings: tuple[Any, ...]) -> SqlResult:
        statements, ddl, stats = _plan(query)
        conn = self._usable()
        guard = self.guard
        before = conn.total_changes
        schema = _schema_version(conn) if ddl else 0
        guard.user_sql, guard.refused, guard.wrote = True, None, False
        try:
            cursor: sqlite3.Cursor | None = None
            for i, statement in enumerate(statements):
                last = i == len(statements) - 1
                cursor = conn.execute(statement, bindings if last else ())
            assert cursor is not None
            rows = cursor.fetchall()
            columns = [d[0] for d in cursor.description or ()]
        except sqlite3.Error as exc:
            changed = guard.wrote or conn.total_changes != before
            raise SqlError(guard.refused or str(exc), changed=changed) from exc
        finally:
            guard.user_sql = False
        written = conn.total_changes - before
        changed = bool(written) or (
            ddl and guard.wrote and (stats or _schema_version(conn) != schema)
        )
        return SqlResult(columns, rows, written, changed)

    def size(self) -> int:
        conn = self._usable()
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error as exc:
            raise failure(exc) from exc
        return int(pages) * int(size)

    # -- the alarm ---------------------------------------------------------------------------------

    def alarm(self) -> int | None:
        try:
            row = self._usable().execute(_ALARM).fetchone()
        except sqlite3.Error as exc:
            raise failure(exc) from exc
        return None if row is None else int(row[0])

    def set_alarm(self, time_ms: int) -> None:
        try:
            self._writable().execute(_SET_ALARM, (time_ms,))
        except sqlite3.Error as exc:
            raise failure(exc) from exc

    def delete_alarm(self) -> None:
        try:
            self._writable().execute(f"DELETE FROM {ALARM_TABLE}")
        except sqlite3.Error as exc:
            raise failure(exc) from exc


# -- planning user SQL ----------------------------------------------------------------------------

_DDL = re.compile(r"\b(CREATE|DROP|ALTER|ANALYZE|REINDEX)\b", re.I)
_STATS = re.compile(r"\b(ANALYZE|REINDEX)\b", re.I)
_RENAME_RESERVED = re.compile(r"\bRENAME\b.*\bTO\b\s*[\"'`\[]?_opendo_", re.I | re.S)

_PLANS: dict[str, tuple[tuple[str, ...], bool, bool]] = {}
_PLAN_CACHE = 1024


def _schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA schema_version").fetchone()[0])


def _plan(query: str) -> tuple[tuple[str, ...], bool, bool]:
    """The statements of ``query``, whether it may be DDL, and whether it may be ANALYZE or
    REINDEX — worked out once per query text (objects run the same few queries again and
    again), and checked: no renaming to a reserved name, at least one statement."""
    plan = _PLANS.get(query)
    if plan is not None:
        return plan
    statements = tuple(_split(query))
    for statement in statements:
        if _RENAME_RESERVED.search(statement):
            raise SqlError("sql.exec(): names starting with _opendo_ are reserved")
    if not statements:
        raise SqlError("sql.exec(): the query holds no statement")
    plan = (statements, _DDL.search(query) is not None, _STATS.search(query) is not None)
    if len(_PLANS) >= _PLAN_CACHE:
        _PLANS.clear()
    _PLANS[query] = plan
    return plan


def _split(query: str) -> list[str]:
    """Split a query into its statements (semicolons in literals and comments are kept;
    pieces holding only comments are dropped)."""
    statements: list[str] = []
    current = ""
    for piece in query.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if _has_code(current):
                statements.append(current)
            current = ""
    if _has_code(current):
        statements.append(current[:-1])  # a last statement without its semicolon
    return statements


def _has_code(text: str) -> bool:
    """True unless ``text`` is only whitespace, semicolons and comments."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n\f;":
            i += 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            return True
    return False
