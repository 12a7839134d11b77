"""``ctx.storage``: the KV and SQL APIs over the object's own database.

Theory of operation
-------------------

*Batches.* The first write of a turn (any ``put``/``delete``/``delete_all``, or any
``sql.exec``) opens a SQLite transaction and schedules its commit for the end of the turn
(``loop.call_soon``). Every write until the event next really waits joins that transaction,
so writes made without an intervening await commit as one atomic batch. Reads run in the
same transaction, so they see the batch's writes at once.

*Output gate.* The first write that can change the database takes an ``OutputLock`` for the
batch. After ``COMMIT`` the lock goes to the flusher, which runs ``ObjectDatabase.flush()``
(an fsync) in a worker thread and releases every lock that flush covers. Responses and
WebSocket messages sent after the write wait for that release; a failed commit or flush
fails the locks (held messages are dropped, callers get errors) and resets the object.

*Group commit.* While a flush is in flight the object keeps running, and the batches that
complete meanwhile stay in the open SQLite transaction; when the flush returns they are
committed together and flushed together. Under load, one ``COMMIT`` and one ``fsync`` serve
many requests. (One transaction holding several batches is still atomic per batch, and
nothing of any of them is released before all are durable.)

*Flushing in rounds.* The flushes of all objects go to one flusher per event loop, which
fsyncs every database waiting in one job on a thread of its own, then answers them all; the
databases that ask meanwhile form the next round. Two rounds may run at once, so a quiet
object waits for no queue, and under load one thread handoff serves many objects (each
object's batches keep growing while its round runs).

*Input gate.* Storage calls never wait for I/O on the event loop, so the input gate does not
need to be locked for them; it is locked for the whole of an async ``transaction(fn)``, whose
function may await other things, so that no other event can see or join it.

*Calls.* Each KV and alarm call runs when it is made and returns an awaitable of its result
that is not a coroutine, so a call left unawaited has still happened, as on Cloudflare. Only
while another event's ``transaction()`` is open does a call wait: it is queued (a write with
an ``OutputLock`` taken at the call, so what its event sends afterwards still waits for it),
and when the transaction ends the queue runs in call order, up to the next queued
``transaction()``, which is handed the storage. No task is made for a call.

*Guards.* A ``Storage`` whose object was reset or evicted refuses every call, naming it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import re
import sqlite3
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ..core.codec import decode, encode
from ..core.context import current_event
from ..core.errors import StorageError
from ..core.gates import OutputLock
from .sqlite import (
    ALARM_TABLE,
    KV_TABLE,
    MAX_VALUE_BYTES,
    RUNTIME_TABLES,
    ObjectDatabase,
)

if TYPE_CHECKING:
    from ..core.protocols import StorageOwner

__all__ = [
    "MAX_BINDINGS",
    "MAX_KEY_BYTES",
    "MAX_KEYS",
    "SqlCursor",
    "SqlError",
    "SqlStorage",
    "Storage",
    "StorageError",
    "Transaction",
]

log = logging.getLogger("opendo")

MAX_KEYS = 128  # keys in one multi-key call
MAX_KEY_BYTES = 2048
MAX_BINDINGS = 100
_CACHE_ENTRIES = 4096

T = TypeVar("T")


class SqlError(StorageError):
    """An error from SQLite, or a statement ``sql.exec`` does not allow."""


def _check_key(key: Any, method: str) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"storage.{method}(): keys must be str, got {type(key).__name__}")
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_KEY_BYTES:
        raise StorageError(
            f"storage.{method}(): a key is {len(raw)} bytes of UTF-8; the limit is {MAX_KEY_BYTES}"
        )
    return raw


def _check_keys(keys: Any, method: str) -> list[bytes]:
    keys = list(keys)
    if len(keys) > MAX_KEYS:
        raise StorageError(
            f"storage.{method}(): {len(keys)} keys in one call; the limit is {MAX_KEYS}"
        )
    return [_check_key(k, method) for k in keys]


def _encode_value(key: bytes, value: Any, method: str) -> bytes:
    data = encode(value)
    if len(key) + len(data) > MAX_VALUE_BYTES:
        raise StorageError(
            f"storage.{method}(): the value for {key.decode('utf-8', 'replace')!r} is "
            f"{len(data)} bytes encoded; key and value together may take {MAX_VALUE_BYTES}"
        )
    return data


_LANES = 2  # flush rounds in flight at once


class _Flusher:
    """Flushes databases in rounds: see "Flushing in rounds" above."""

    __slots__ = ("loop", "waiting", "running")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: list[tuple[ObjectDatabase, Callable[[BaseException | None], None]]] = []
        self.running = 0

    def flush(self, db: ObjectDatabase, done: Callable[[BaseException | None], None]) -> None:
        """Make ``db`` durable; then ``done(None)``, or ``done(error)`` if it failed."""
        self.waiting.append((db, done))
        if self.running < _LANES:
            self._round()

    def _round(self) -> None:
        batch, self.waiting = self.waiting, []
        self.running += 1
        future = self.loop.run_in_executor(_flush_threads(), _flush_all, [db for db, _ in batch])
        future.add_done_callback(lambda f: self._finished(f, batch))

    def _finished(
        self,
        future: asyncio.Future[list[BaseException | None]],
        batch: list[tuple[ObjectDatabase, Callable[[BaseException | None], None]]],
    ) -> None:
        self.running -= 1
        if future.cancelled():
            errors: list[BaseException | None] = [asyncio.CancelledError()] * len(batch)
        elif (failure := future.exception()) is not None:
            errors = [failure] * len(batch)
        else:
            errors = future.result()
        for (_, done), error in zip(batch, errors, strict=True):
            done(error)
        if self.waiting and self.running < _LANES:
            self._round()


def _flush_all(databases: list[ObjectDatabase]) -> list[BaseException | None]:
    """One round, in a flusher thread: each database's fsync, and how it went."""
    errors: list[BaseException | None] = []
    for db in databases:
        try:
            db.flush()
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)
_threads: list[concurrent.futures.ThreadPoolExecutor] = []


def _flusher() -> _Flusher:
    loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


def _flush_threads() -> concurrent.futures.ThreadPoolExecutor:
    if not _threads:
        _threads.append(
            concurrent.futures.ThreadPoolExecutor(_LANES, thread_name_prefix="opendo-flush")
        )
    return _threads[0]


def _storage_failed(host: StorageOwner, error: BaseException, could_not: str) -> StorageError:
    """What callers of a failed write are told (and the log says): that storage failed, why,
    and for which object."""
    if isinstance(error, StorageError):
        return error
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
    else:
        reason = str(error) or type(error).__name__
    name = host.class_name
    return StorageError(
        f"storage failed: {reason} (a write of {name}({host.id}) could not be {could_not})"
    )


class _Batches:
    """Commits batches at the end of a turn and makes them durable through the flusher."""

    __slots__ = (
        "db",
        "host",
        "batch_lock",
        "commit_scheduled",
        "depth",
        "pending",
        "flushing",
        "closed",
        "carry",
    )

    def __init__(self, db: ObjectDatabase, host: StorageOwner) -> None:
        self.db = db
        self.host = host
        self.batch_lock: OutputLock | None = None
        self.commit_scheduled = False
        self.depth = 0  # open transaction()/transaction_sync() scopes
        self.pending: list[OutputLock] = []
        self.flushing = False
        self.closed = False
        self.carry: OutputLock | None = None  # held on the next instance's gate, see close()

    def begin(self) -> None:
        conn = self.db.connection
        if not conn.in_transaction:
            conn.execute("BEGIN")
        if not self.commit_scheduled:
            self.commit_scheduled = True
            asyncio.get_running_loop().call_soon(self.commit)

    def wrote(self) -> None:
        if self.batch_lock is None:
            self.batch_lock = self.host.output_gate.lock()

    def commit(self) -> None:
        """The end of a turn: the batch is complete. Commit it now, or — while a flush is
        running — with everything else that completes before that flush returns."""
        self.commit_scheduled = False
        if self.closed:
            return
        lock, self.batch_lock = self.batch_lock, None
        if lock is not None:
            self.pending.append(lock)
        if not self.depth and not self.flushing:
            self._commit_and_flush()

    def _commit_and_flush(self) -> None:
        conn = self.db.connection
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.fail(exc, "committed")
                return
        if not self.pending:
            return
        if self.db.file_pending:
            # The first commit of a database that is not on disk yet (see ObjectDatabase).
            try:
                if self.db.holds_nothing():
                    locks, self.pending = self.pending, []
                    for lock in locks:
                        lock.release()  # as stored as it gets: no file, nothing in it
                    return
                self.db.create_file()
            except (sqlite3.Error, OSError) as exc:
                self.fail(exc, "stored in a new database file")
                return
        self.flushing = True
        locks, self.pending = self.pending, []
        _flusher().flush(self.db, lambda error: self._flushed(error, locks))

    def _flushed(self, error: BaseException | None, locks: list[OutputLock]) -> None:
        self.flushing = False
        if self.closed:
            self.db.close()  # its close waited for this flush
            if error is not None:
                self.db.mark_failed(error)
            carry, self.carry = self.carry, None
            if carry is not None:
                if error is None:
                    carry.release()
                else:
                    # What the next instance may have read did not reach the disk.
                    failure = _storage_failed(self.host, error, "synced to disk")
                    carry.fail(failure)
                    self.host.reset(f"an earlier write failed: {failure}")
            return
        if error is not None:
            self.db.mark_failed(error)
            failure = _storage_failed(self.host, error, "synced to disk")
            for lock in locks:
                lock.fail(failure)
            self.fail(failure)
            return
        for lock in locks:
            lock.release()
        if not self.closed and not self.depth and not self.commit_scheduled:
            self._commit_and_flush()  # the batches that completed meanwhile, in one commit

    def adopt(self, lock: OutputLock) -> None:
        """``lock`` stands for a write just made (queued earlier): release it with the batch."""
        if self.closed:
            lock.fail(StorageError("the object was reset before its write was durable"))
        else:
            self.pending.append(lock)

    def fail(self, error: BaseException, could_not: str = "committed") -> None:
        """A write did not make it: drop what waits on it (its callers get a StorageError
        that says so) and reset the object."""
        failure = _storage_failed(self.host, error, could_not)
        log.error("%s", failure)
        for lock in (self.batch_lock, *self.pending):
            if lock is not None:
                lock.fail(failure)
        self.batch_lock = None
        self.pending = []
        if not self.closed:
            self.host.reset(str(failure))

    def close(self) -> None:
        """Roll back what was not committed and close the database (after a running flush)."""
        if self.closed:
            return
        self.closed = True
        conn = self.db.connection
        if conn.in_transaction:
            conn.execute("ROLLBACK")
            row = conn.execute(f"SELECT time_ms FROM {ALARM_TABLE}").fetchone()
            self.host.alarm_changed(None if row is None else int(row[0]))
        reset = StorageError("the object was reset before its write was durable")
        for lock in (self.batch_lock, *self.pending):
            if lock is not None:
                lock.fail(reset)
        self.batch_lock = None
        self.pending = []
        if self.flushing:
            self.carry = self.host.output_gate.lock()
        else:
            self.db.close()


_Items = list[tuple[bytes, bytes]]  # encoded keys and values
_Keys = bytes | list[bytes]  # one encoded key, or several
_Query = tuple[str, list[bytes | int]]
_Rows = list[tuple[str, Any]]


class _Settled(Generic[T]):
    """The awaitable a storage call returns when it has already run: awaiting it gives the
    result without suspending. Not a coroutine, so one left unawaited loses nothing and
    warns of nothing."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def __await__(self) -> Generator[Any, None, T]:
        yield from ()
        return self._value

    def __repr__(self) -> str:
        return f"<storage call done: {self._value!r}>"


_DONE: _Settled[Any] = _Settled(None)


def _settled(value: T) -> Awaitable[T]:
    return _DONE if value is None else _Settled(value)


class _Queued:
    """A call made while another event's ``transaction()`` was open: it runs when that
    transaction ends. ``turn`` is the event of a queued ``transaction()`` itself; ``lock``
    holds the output gate from the call of a write until that write is durable."""

    __slots__ = ("op", "future", "lock", "turn")

    def __init__(
        self,
        op: Callable[[], Any] | None,
        future: asyncio.Future[Any],
        lock: OutputLock | None = None,
        turn: object | None = None,
    ) -> None:
        self.op = op
        self.future = future
        self.lock = lock
        self.turn = turn


class Storage:
    """``ctx.storage``: durable KV and SQL storage, private to this object."""

    __slots__ = (
        "_db",
        "_batches",
        "_host",
        "_txn_owner",
        "_queued",
        "_cache",
        "_in_alarm",
        "_alarm_set_in_handler",
        "sql",
        "kv",
    )

    def __init__(self, host: StorageOwner, db: ObjectDatabase) -> None:
        self._host = host
        self._db: ObjectDatabase | None = db
        self._txn_owner: object | None = None  # the event inside transaction()
        self._queued: deque[_Queued] = deque()  # calls waiting for that transaction to end
        # Encoded values of recently used keys (None: known absent). Cleared whenever a
        # rollback might make it disagree with the database.
        self._cache: dict[bytes, bytes | None] = {}
        self._in_alarm = False  # an alarm handler is running: get_alarm() says None...
        self._alarm_set_in_handler = False  # ...unless it set a new one
        self._batches = _Batches(db, host)
        self.sql = SqlStorage(self)
        self.kv = SyncKV(self)

    def _conn(self, method: str) -> sqlite3.Connection:
        db = self._db
        if db is None:
            raise _gone(method)
        owner = self._txn_owner
        if owner is not None and current_event() is not owner:
            raise StorageError(
                f"storage.{method}() was called while another event's storage.transaction() "
                "is open; use storage.get/put/... (not storage.kv or storage.sql), which run "
                "once it ends"
            )
        return db.connection

    def _write(self, method: str) -> sqlite3.Connection:
        conn = self._conn(method)
        self._batches.begin()
        self._batches.wrote()
        return conn

    def _close(self) -> None:
        if self._db is None:
            return
        self._db = None
        self._batches.close()
        queued, self._queued = self._queued, deque()
        error = StorageError(
            "the object was reset or evicted before this storage call could run (it was "
            "waiting for another event's storage.transaction() to end)"
        )
        for call in queued:
            if call.lock is not None:
                call.lock.fail(error)
            if not call.future.done():
                call.future.set_exception(error)

    # -- when a call runs ----------------------------------------------------------------------
    #
    # A call runs when it is made, awaited or not (as on Cloudflare), and returns an awaitable
    # of its result. Only while another event's transaction() is open does it wait: it is
    # queued, and the queue runs in call order when the transaction ends.

    def _in_turn(self, method: str, write: bool, op: Callable[..., T], *args: Any) -> Awaitable[T]:
        """``op(*args)`` now if no other event's transaction is open, else queued."""
        if self._txn_owner is None or current_event() is self._txn_owner:
            return _settled(op(*args))
        if self._db is None:
            raise _gone(method)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # A write holds back what this event sends after it, as if it had run now.
        lock = self._host.output_gate.lock() if write else None
        self._queued.append(_Queued(partial(op, *args), future, lock))
        return future

    def _drain(self) -> None:
        """The transaction ended: run the queued calls, in order, up to a queued
        ``transaction()``, which is handed the storage next."""
        queue = self._queued
        while queue and self._txn_owner is None:
            call = queue.popleft()
            future = call.future
            if future.done():  # a waiting transaction() that was cancelled
                continue
            if call.op is None:
                self._txn_owner = call.turn
                future.set_result(None)
                return
            try:
                result = call.op()
            except Exception as exc:
                if call.lock is not None:
                    call.lock.release()  # nothing of this call was written
                future.set_exception(exc)
            else:
                if call.lock is not None:
                    self._batches.adopt(call.lock)
                future.set_result(result)

    # -- KV (as on Cloudflare: each call runs when made, and returns an awaitable) ----------

    @overload
    def get(self, key: str) -> Awaitable[Any]: ...
    @overload
    def get(self, key: list[str] | tuple[str, ...]) -> Awaitable[dict[str, Any]]: ...
    def get(self, key: str | list[str] | tuple[str, ...]) -> Awaitable[Any]:
        """The value of ``key`` (None if absent), or a dict of the found keys, in key order."""
        keys = _get_keys(key, "get")
        if self._txn_owner is None:
            return _settled(self._read(keys, "get"))
        return self._in_turn("get", False, self._read, keys, "get")

    @overload
    def put(self, key: str, value: Any) -> Awaitable[None]: ...
    @overload
    def put(self, key: Mapping[str, Any]) -> Awaitable[None]: ...
    def put(self, key: str | Mapping[str, Any], value: Any = None) -> Awaitable[None]:
        """Store ``value`` under ``key``, or every item of a dict (at most 128)."""
        return self._put_call(key, value, "put")

    def _put_call(self, key: Any, value: Any, method: str) -> Awaitable[None]:
        items = _put_items(key, value, method)  # encoded now: later changes to it don't count
        if self._txn_owner is None:
            self._write_items(items, method)
            return _DONE
        return self._in_turn(method, True, self._write_items, items, method)

    @overload
    def delete(self, key: str) -> Awaitable[bool]: ...
    @overload
    def delete(self, key: list[str] | tuple[str, ...]) -> Awaitable[int]: ...
    def delete(self, key: str | list[str] | tuple[str, ...]) -> Awaitable[bool | int]:
        """Delete ``key`` (True if it existed), or several keys (how many existed)."""
        return self._delete_call(key, "delete")

    def _delete_call(self, key: Any, method: str) -> Awaitable[bool | int]:
        keys = _delete_keys(key, method)
        if self._txn_owner is None:
            return _Settled(self._delete_raw(keys, method))
        return self._in_turn(method, True, self._delete_raw, keys, method)

    def list(
        self,
        *,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        prefix: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Awaitable[dict[str, Any]]:
        """Keys and values in key order (UTF-8 byte order): ``start`` inclusive, ``end``
        exclusive, ``start_after`` exclusive (not with ``start``)."""
        return self._list_call(start, start_after, end, prefix, reverse, limit, "list")

    def _list_call(
        self,
        start: str | None,
        start_after: str | None,
        end: str | None,
        prefix: str | None,
        reverse: bool,
        limit: int | None,
        method: str,
    ) -> Awaitable[dict[str, Any]]:
        query = _list_query(start, start_after, end, prefix, reverse, limit, method)
        return self._in_turn(method, False, self._list_dict, query, method)

    def delete_all(self) -> Awaitable[None]:
        """Delete every key and every SQL table, atomically. The alarm stays."""
        return self._in_turn("delete_all", True, self._delete_all, "delete_all")

    def _delete_all(self, method: str) -> None:
        conn = self._write(method)
        self._cache.clear()
        conn.execute(f"DELETE FROM {KV_TABLE}")
        rows = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND substr(name, 1, 7) != 'sqlite_'"
        ).fetchall()
        for kind, name in rows:
            if name in RUNTIME_TABLES:
                continue
            quoted = '"' + name.replace('"', '""') + '"'
            conn.execute(f"DROP {'VIEW' if kind == 'view' else 'TABLE'} IF EXISTS {quoted}")

    def sync(self) -> asyncio.Future[None]:
        """Every write made so far, durable: a future that is done once they are, or fails
        with a StorageError if one of them could not be stored. ``await storage.sync()``
        waits for it; ``storage.sync().add_done_callback(fn)`` learns it without waiting."""
        if self._db is None:
            raise _gone("sync")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(StorageError(f"a write failed: {error}"))

        if self._txn_owner is None or current_event() is self._txn_owner:
            self._host.output_gate.when_clear(done)
        else:  # behind another event's transaction: the writes queued before it count too
            turn = self._in_turn("sync", False, lambda: self._host.output_gate.when_clear(done))
            assert isinstance(turn, asyncio.Future)
            turn.add_done_callback(lambda t: _pass_failure(t, future))
        return future

    # -- the alarm ---------------------------------------------------------------------------

    def get_alarm(self) -> Awaitable[int | None]:
        """When the alarm is due, in epoch milliseconds; None if none is set (and, inside
        ``alarm()``, unless the handler set a new one)."""
        return self._in_turn("get_alarm", False, self._get_alarm, "get_alarm")

    def set_alarm(self, scheduled_time: datetime | int | float) -> Awaitable[None]:
        """Set the object's one alarm: a datetime, or epoch milliseconds. A time in the past
        fires at once. Replaces any alarm already set."""
        return self._set_alarm_call(scheduled_time, "set_alarm")

    def _set_alarm_call(self, when: datetime | int | float, method: str) -> Awaitable[None]:
        return self._in_turn(method, True, self._write_alarm, _alarm_ms(when, method), method)

    def delete_alarm(self) -> Awaitable[None]:
        """Remove the alarm (a handler already running is not stopped)."""
        return self._in_turn("delete_alarm", True, self._delete_alarm, "delete_alarm")

    def _get_alarm(self, method: str) -> int | None:
        conn = self._conn(method)
        if self._in_alarm and not self._alarm_set_in_handler:
            return None
        return self._alarm_row(conn)

    @staticmethod
    def _alarm_row(conn: sqlite3.Connection) -> int | None:
        row = conn.execute(f"SELECT time_ms FROM {ALARM_TABLE}").fetchone()
        return None if row is None else int(row[0])

    def _set_alarm(self, when: datetime | int | float, method: str) -> None:
        self._write_alarm(_alarm_ms(when, method), method)

    def _write_alarm(self, time_ms: int, method: str) -> None:
        conn = self._write(method)
        conn.execute(
            f"INSERT INTO {ALARM_TABLE} (id, time_ms) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET time_ms = excluded.time_ms",
            (time_ms,),
        )
        if self._in_alarm:
            self._alarm_set_in_handler = True
        self._host.alarm_changed(time_ms)

    def _delete_alarm(self, method: str) -> None:
        conn = self._write(method)
        conn.execute(f"DELETE FROM {ALARM_TABLE}")
        if self._in_alarm:
            self._alarm_set_in_handler = False
        self._host.alarm_changed(None)

    # -- what the runtime drives (core.protocols.ObjectStorage) ------------------------------

    @property
    def closed(self) -> bool:
        return self._db is None

    def close(self) -> None:
        self._close()

    def alarm_now(self) -> int | None:
        """The stored alarm, whatever a running handler should be told."""
        return self._alarm_row(self._conn("get_alarm"))

    def alarm_started(self) -> None:
        self._in_alarm, self._alarm_set_in_handler = True, False

    def alarm_finished(self, due: int, *, ran: bool) -> None:
        try:
            if ran and not self._alarm_set_in_handler and self.alarm_now() == due:
                self._delete_alarm("delete_alarm")
        finally:
            self._in_alarm = False

    def alarm_run_now(self, now_ms: int) -> None:
        self._set_alarm(now_ms, "set_alarm")

    def _rolled_back(self) -> None:
        """After a rollback: forget cached values, and follow the alarm as it is now."""
        self._cache.clear()
        db = self._db
        if db is not None:
            self._host.alarm_changed(self._alarm_row(db.connection))

    # -- transactions ------------------------------------------------------------------------

    def transaction_sync(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` as one transaction: if it raises, its writes are rolled back."""
        conn = self._write("transaction_sync")
        batches = self._batches
        name = f"_opendo_t{batches.depth}"
        conn.execute(f"SAVEPOINT {name}")
        batches.depth += 1
        try:
            result = fn()
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError(
                    "transaction_sync() takes a plain function; use await transaction(fn) "
                    "for an async one"
                )
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            self._rolled_back()
            conn.execute(f"RELEASE {name}")
            raise
        else:
            conn.execute(f"RELEASE {name}")
            return result
        finally:
            batches.depth -= 1
            if batches.depth == 0:
                batches.begin()  # make sure the batch's commit is scheduled

    async def transaction(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``await fn(txn)`` as one transaction; no other event runs until it ends.

        It commits when ``fn`` returns and rolls back if it raises or calls
        ``txn.rollback()``. While another event's transaction is open, it waits its turn
        behind the calls made before it.
        """
        event = current_event()
        outer_owner = self._txn_owner  # None, or this event (a transaction inside one)
        if outer_owner is not None and outer_owner is not event:
            await self._wait_for_turn(event)
            outer_owner = None
        try:
            conn = self._write("transaction")
        except BaseException:
            self._txn_owner = outer_owner
            if outer_owner is None:
                self._drain()
            raise
        batches = self._batches
        name = f"_opendo_t{batches.depth}"
        gate_lock = self._host.input_gate.lock()
        conn.execute(f"SAVEPOINT {name}")
        batches.depth += 1
        self._txn_owner = event
        txn = Transaction(self)
        try:
            result = await fn(txn)
        except BaseException:
            if self._db is not None:
                conn.execute(f"ROLLBACK TO {name}")
                self._rolled_back()
                conn.execute(f"RELEASE {name}")
            raise
        else:
            if self._db is not None:
                if txn._rolled_back:
                    conn.execute(f"ROLLBACK TO {name}")
                    self._rolled_back()
                conn.execute(f"RELEASE {name}")
            return result
        finally:
            txn._done = True
            batches.depth -= 1
            self._txn_owner = outer_owner
            gate_lock.release()
            if outer_owner is None:
                self._drain()
            if batches.depth == 0 and self._db is not None:
                batches.begin()

    async def _wait_for_turn(self, event: object) -> None:
        """Queue behind the open transaction; return once the storage is handed to us."""
        if self._db is None:
            raise _gone("transaction")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append(_Queued(None, turn, turn=event))
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                # Handed the storage, but cancelled before it could begin: pass it on.
                self._txn_owner = None
                self._drain()
            raise

    # -- the synchronous core ----------------------------------------------------------------

    def _get(self, key: str | Iterable[str], method: str) -> Any:
        return self._read(_get_keys(key, method), method)

    def _read(self, keys: _Keys, method: str) -> Any:
        conn = self._conn(method)
        if isinstance(keys, bytes):
            cache = self._cache
            if keys in cache:
                data = cache[keys]
            else:
                row = conn.execute(
                    f"SELECT value FROM {KV_TABLE} WHERE key = ?", (keys,)
                ).fetchone()
                data = None if row is None else row[0]
                self._remember(keys, data)
            return None if data is None else decode(data)
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = conn.execute(
            f"SELECT key, value FROM {KV_TABLE} WHERE key IN ({marks}) ORDER BY key", keys
        ).fetchall()
        return {k.decode("utf-8", "surrogatepass"): decode(v) for k, v in rows}

    def _put(self, key: str | Mapping[str, Any], value: Any, method: str) -> None:
        self._write_items(_put_items(key, value, method), method)

    def _write_items(self, items: _Items, method: str) -> None:
        conn = self._write(method)
        sql = (
            f"INSERT INTO {KV_TABLE} (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        try:
            if len(items) == 1:
                conn.execute(sql, items[0])
            else:
                conn.execute("SAVEPOINT _opendo_put")
                try:
                    conn.executemany(sql, items)
                except BaseException:
                    conn.execute("ROLLBACK TO _opendo_put")
                    raise
                finally:
                    conn.execute("RELEASE _opendo_put")
        except sqlite3.DataError as exc:
            self._rolled_back()
            raise StorageError(f"storage.{method}(): {exc}") from exc
        for raw, data in items:
            self._remember(raw, data)

    def _remember(self, raw: bytes, data: bytes | None) -> None:
        cache = self._cache
        if len(cache) >= _CACHE_ENTRIES:
            cache.clear()
        cache[raw] = data

    def _delete(self, key: str | Iterable[str], method: str) -> bool | int:
        return self._delete_raw(_delete_keys(key, method), method)

    def _delete_raw(self, keys: _Keys, method: str) -> bool | int:
        conn = self._write(method)
        if isinstance(keys, bytes):
            existed = conn.execute(f"DELETE FROM {KV_TABLE} WHERE key = ?", (keys,)).rowcount > 0
            self._remember(keys, None)
            return existed
        if not keys:
            return 0
        marks = ",".join("?" * len(keys))
        count = conn.execute(f"DELETE FROM {KV_TABLE} WHERE key IN ({marks})", keys).rowcount
        for raw in keys:
            self._remember(raw, None)
        return int(count)

    def _list(
        self,
        start: str | None,
        start_after: str | None,
        end: str | None,
        prefix: str | None,
        reverse: bool,
        limit: int | None,
        method: str,
    ) -> _Rows:
        query = _list_query(start, start_after, end, prefix, reverse, limit, method)
        return self._list_rows(query, method)

    def _list_rows(self, query: _Query, method: str) -> _Rows:
        sql, args = query
        rows = self._conn(method).execute(sql, args).fetchall()
        return [(k.decode("utf-8", "surrogatepass"), decode(v)) for k, v in rows]

    def _list_dict(self, query: _Query, method: str) -> dict[str, Any]:
        return dict(self._list_rows(query, method))


def _pass_failure(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    error = source.exception()
    if error is not None and not target.done():
        target.set_exception(error)


def _gone(method: str) -> StorageError:
    return StorageError(
        f"storage.{method}() was called on the storage of an object that was reset or "
        "evicted; use the storage of the current instance (self.ctx.storage)"
    )


def _get_keys(key: Any, method: str) -> bytes | list[bytes]:
    if isinstance(key, str):
        return _check_key(key, method)
    if not isinstance(key, list | tuple):
        raise TypeError(
            f"storage.{method}() takes a str or a list of str, got {type(key).__name__}"
        )
    return _check_keys(key, method)


_delete_keys = _get_keys


def _put_items(key: Any, value: Any, method: str) -> list[tuple[bytes, bytes]]:
    if isinstance(key, str):
        raw = _check_key(key, method)
        return [(raw, _encode_value(raw, value, method))]
    if isinstance(key, Mapping):
        if len(key) > MAX_KEYS:
            raise StorageError(
                f"storage.{method}(): {len(key)} entries in one call; the limit is {MAX_KEYS}"
            )
        items = []
        for k, v in key.items():
            raw = _check_key(k, method)
            items.append((raw, _encode_value(raw, v, method)))
        return items
    raise TypeError(
        f"storage.{method}() takes a str key and a value, or a dict, got {type(key).__name__}"
    )


def _list_query(
    start: str | None,
    start_after: str | None,
    end: str | None,
    prefix: str | None,
    reverse: bool,
    limit: int | None,
    method: str,
) -> tuple[str, list[bytes | int]]:
    if start is not None and start_after is not None:
        raise StorageError(f"storage.{method}(): start and start_after cannot be combined")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise StorageError(f"storage.{method}(): limit must be a positive int, got {limit!r}")
    where: list[str] = []
    args: list[bytes | int] = []
    if start is not None:
        where.append("key >= ?")
        args.append(_check_key(start, method))
    if start_after is not None:
        where.append("key > ?")
        args.append(_check_key(start_after, method))
    if end is not None:
        where.append("key < ?")
        args.append(_check_key(end, method))
    if prefix is not None:
        raw = _check_key(prefix, method)
        if raw:
            where.append("key >= ?")
            args.append(raw)
            upper = _successor(raw)
            if upper is not None:
                where.append("key < ?")
                args.append(upper)
    sql = f"SELECT key, value FROM {KV_TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY key DESC" if reverse else " ORDER BY key"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return sql, args


def _alarm_ms(when: datetime | int | float, method: str) -> int:
    if isinstance(when, datetime):
        return round(when.timestamp() * 1000)
    if isinstance(when, int | float) and not isinstance(when, bool):
        if when != when or not -(2**63) <= when < 2**63:
            raise StorageError(f"storage.{method}(): {when!r} is not a time")
        return round(when)
    raise TypeError(
        f"storage.{method}() takes a datetime or epoch milliseconds, got {type(when).__name__}"
    )


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Transaction:
    """The ``txn`` of ``storage.transaction(fn)``: the KV API, plus ``rollback()``. Each
    call runs when it is made, awaited or not, and returns an awaitable of its result."""

    __slots__ = ("_storage", "_rolled_back", "_done")

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._rolled_back = False
        self._done = False

    def _check(self, method: str) -> Storage:
        if self._done:
            raise StorageError(f"txn.{method}() was called after its transaction ended")
        if self._rolled_back:
            raise StorageError(f"txn.{method}() was called after txn.rollback()")
        return self._storage

    def rollback(self) -> None:
        """Discard the transaction's writes when it ends."""
        self._check("rollback")
        self._rolled_back = True

    def get(self, key: Any) -> Awaitable[Any]:
        return _settled(self._check("get")._get(key, "get"))

    def put(self, key: Any, value: Any = None) -> Awaitable[None]:
        self._check("put")._put(key, value, "put")
        return _DONE

    def delete(self, key: Any) -> Awaitable[bool | int]:
        return _Settled(self._check("delete")._delete(key, "delete"))

    def delete_all(self) -> Awaitable[None]:
        self._check("delete_all")._delete_all("delete_all")
        return _DONE

    def get_alarm(self) -> Awaitable[int | None]:
        return _settled(self._check("get_alarm")._get_alarm("get_alarm"))

    def set_alarm(self, scheduled_time: datetime | int | float) -> Awaitable[None]:
        self._check("set_alarm")._set_alarm(scheduled_time, "set_alarm")
        return _DONE

    def delete_alarm(self) -> Awaitable[None]:
        self._check("delete_alarm")._delete_alarm("delete_alarm")
        return _DONE

    def list(self, **options: Any) -> Awaitable[dict[str, Any]]:
        storage = self._check("list")
        rows = storage._list(
            options.get("start"),
            options.get("start_after"),
            options.get("end"),
            options.get("prefix"),
            options.get("reverse", False),
            options.get("limit"),
            "list",
        )
        return _Settled(dict(rows))


class SyncKV:
    """``storage.kv``: the KV API without awaits (Cloudflare's ``ctx.storage.kv``)."""

    __slots__ = ("_storage",)

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def get(self, key: str) -> Any:
        return self._storage._get(key, "kv.get")

    def put(self, key: str, value: Any) -> None:
        self._storage._put(key, value, "kv.put")

    def delete(self, key: str) -> bool:
        return bool(self._storage._delete(key, "kv.delete"))

    def list(
        self,
        *,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        prefix: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[str, Any]]:
        return iter(self._storage._list(start, start_after, end, prefix, reverse, limit, "kv.list"))


SqlValue = int | float | str | bytes | None


class SqlCursor:
    """The result of ``sql.exec()``: iterate rows as dicts, or use ``one()`` / ``raw()``."""

    __slots__ = ("column_names", "rows_read", "rows_written", "_rows", "_next")

    def __init__(self, columns: list[str], rows: list[tuple[SqlValue, ...]], written: int) -> None:
        self.column_names = columns
        self._rows = rows
        self._next = 0
        self.rows_read = len(rows)
        self.rows_written = written

    def __iter__(self) -> Iterator[dict[str, SqlValue]]:
        return self

    def __next__(self) -> dict[str, SqlValue]:
        if self._next >= len(self._rows):
            raise StopIteration
        row = self._rows[self._next]
        self._next += 1
        return dict(zip(self.column_names, row, strict=True))

    def to_array(self) -> list[dict[str, SqlValue]]:
        """Every remaining row, as dicts."""
        return list(self)

    def one(self) -> dict[str, SqlValue]:
        """The only row; an error unless there is exactly one."""
        rows = self.to_array()
        if len(rows) != 1:
            raise SqlError(f"one() expected exactly one row, got {len(rows)}")
        return rows[0]

    def raw(self) -> Iterator[tuple[SqlValue, ...]]:
        """The remaining rows, as tuples in column order."""
        rows, self._next = self._rows[self._next :], len(self._rows)
        return iter(rows)

    def __repr__(self) -> str:
        return f"<SqlCursor columns={self.column_names} rows={len(self._rows)}>"


class SqlStorage:
    """``storage.sql``: SQLite for this object; KV data lives in the same database."""

    __slots__ = ("_storage",)

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def exec(self, query: str, *bindings: SqlValue) -> SqlCursor:
        """Run ``query`` (one or more statements; bindings apply to the last)."""
        storage = self._storage
        if not isinstance(query, str):
            raise TypeError(f"sql.exec() takes a query str, got {type(query).__name__}")
        if len(bindings) > MAX_BINDINGS:
            raise SqlError(f"sql.exec(): {len(bindings)} bindings; the limit is {MAX_BINDINGS}")
        for value in bindings:
            if value is not None and not isinstance(value, int | float | str | bytes):
                raise SqlError(
                    f"sql.exec(): cannot bind a {type(value).__name__}; bindings must be None, "
                    "int, float, str or bytes"
                )
            if isinstance(value, int) and not -(2**63) <= value < 2**63:
                raise SqlError(f"sql.exec(): {value} does not fit SQLite's 64-bit integers")
            if isinstance(value, str):
                try:
                    value.encode()
                except UnicodeEncodeError:
                    raise SqlError(
                        "sql.exec(): a str binding is not valid Unicode (it holds a lone surrogate)"
                    ) from None
        statements, ddl, stats = _plan(query)
        conn = storage._conn("sql.exec")
        batches = storage._batches
        batches.begin()
        db = storage._db
        assert db is not None
        before = conn.total_changes
        # DDL changes no rows; it changes the schema. Only then is it worth a flush (so a
        # CREATE TABLE IF NOT EXISTS run by every constructor costs no fsync).
        schema = _schema_version(conn) if ddl else 0
        db.user_sql, db.refused, db.wrote = True, None, False
        try:
            cursor: sqlite3.Cursor | None = None
            for i, statement in enumerate(statements):
                last = i == len(statements) - 1
                cursor = conn.execute(statement, bindings if last else ())
            assert cursor is not None
            rows = cursor.fetchall()
            columns = [d[0] for d in cursor.description or ()]
        except sqlite3.Error as exc:
            reason = db.refused or str(exc)
            if db.wrote or conn.total_changes != before:
                batches.wrote()
            if not conn.in_transaction:
                # SQLite rolled the whole batch back (disk full, I/O error): writes already
                # accepted are gone, so this instance's memory no longer matches its storage.
                batches.fail(exc)
            raise SqlError(reason) from exc
        finally:
            db.user_sql = False
        written = conn.total_changes - before
        if written or (ddl and db.wrote and (stats or _schema_version(conn) != schema)):
            batches.wrote()
        return SqlCursor(columns, rows, written)

    @property
    def database_size(self) -> int:
        """The database's size in bytes."""
        conn = self._storage._conn("sql.database_size")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(pages) * int(size)


_DDL = re.compile(r"\b(CREATE|DROP|ALTER|ANALYZE|REINDEX)\b", re.I)
_STATS = re.compile(r"\b(ANALYZE|REINDEX)\b", re.I)


def _schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA schema_version").fetchone()[0])


_RENAME_RESERVED = re.compile(r"\bRENAME\b.*\bTO\b\s*[\"'`\[]?_opendo_", re.I | re.S)

_PLANS: dict[str, tuple[tuple[str, ...], bool, bool]] = {}
_PLAN_CACHE = 1024


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
