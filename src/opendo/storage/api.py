"""``ctx.storage``: the KV API over the object's own database, with its transactions and alarm.

Theory of operation
-------------------

*One synchronous core.* Every call is a method of ``Storage`` that runs at once against the
object's ``ObjectDatabase`` (``core.storage``) — which never waits for I/O — inside the
turn's batch (``batches``): ``storage.kv`` is that core without awaits, ``storage.get/put/…``
and a transaction's ``txn`` return an awaitable of its result (``calls``), and
``storage.sql`` joins the same batch. Recently used values are cached, encoded, in memory.

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

*Adapters.* An API with names of its own (``opendo.workers``' camelCase) makes the calls
whose names differ through ``delete_all_as`` and its siblings, so errors name its methods.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ..core.codec import decode
from ..core.context import current_event
from ..core.errors import StorageError
from ..core.metrics import METRICS
from ..core.storage import ObjectDatabase, PointInTime
from .batches import Batches
from .calls import DONE, Queued, Settled, gone, settled
from .keys import Keys, Range, alarm_ms, get_keys, list_range, put_items
from .sql import SqlStorage

if TYPE_CHECKING:
    from ..core.protocols import StorageOwner

__all__ = [
    "Storage",
    "StorageError",
    "SyncKV",
    "Transaction",
    "bookmark_for_time_as",
    "current_bookmark_as",
    "delete_alarm_as",
    "delete_all_as",
    "get_alarm_as",
    "restore_bookmark_as",
    "set_alarm_as",
]

_CACHE_ENTRIES = 4096

T = TypeVar("T")

_Items = list[tuple[bytes, bytes]]  # encoded keys and values
_Rows = list[tuple[str, Any]]


class Storage:
    """``ctx.storage``: durable KV and SQL storage, private to this object."""

    __slots__ = (
        "_db",
        "_batches",
        "_host",
        "_class",
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
        self._class = host.class_name
        self._db: ObjectDatabase | None = db
        self._txn_owner: object | None = None  # the event inside transaction()
        self._queued: deque[Queued] = deque()  # calls waiting for that transaction to end
        # Encoded values of recently used keys (None: known absent). Cleared whenever a
        # rollback might make it disagree with the database.
        self._cache: dict[bytes, bytes | None] = {}
        self._in_alarm = False  # an alarm handler is running: get_alarm() says None...
        self._alarm_set_in_handler = False  # ...unless it set a new one
        self._batches = Batches(db, host)
        self.sql = SqlStorage(self._database, self._batches)
        self.kv = SyncKV(self)

    def _database(self, method: str) -> ObjectDatabase:
        METRICS.storage_operations.inc(self._class, method)
        db = self._db
        if db is None:
            raise gone(method)
        db.check_live()
        owner = self._txn_owner
        if owner is not None and current_event() is not owner:
            raise StorageError(
                f"storage.{method}() was called while another event's storage.transaction() "
                "is open; use storage.get/put/... (not storage.kv or storage.sql), which run "
                "once it ends"
            )
        return db

    def _write(self, method: str) -> ObjectDatabase:
        db = self._database(method)
        self._batches.begin()
        self._batches.wrote()
        return db

    def _write_failed(self, db: ObjectDatabase, error: StorageError, method: str) -> StorageError:
        """A write raised: forget cached values, and if the database lost the transaction
        (a full disk), the batch is lost too. What the caller gets."""
        self._cache.clear()
        if not db.in_transaction:
            self._batches.fail(error)
        return StorageError(f"storage.{method}(): {error}")

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
            return settled(op(*args))
        if self._db is None:
            raise gone(method)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # A write holds back what this event sends after it, as if it had run now.
        lock = self._host.output_gate.lock() if write else None
        self._queued.append(Queued(partial(op, *args), future, lock))
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
        keys = get_keys(key, "get")
        if self._txn_owner is None:
            return settled(self._read(keys, "get"))
        return self._in_turn("get", False, self._read, keys, "get")

    @overload
    def put(self, key: str, value: Any) -> Awaitable[None]: ...
    @overload
    def put(self, key: Mapping[str, Any]) -> Awaitable[None]: ...
    def put(self, key: str | Mapping[str, Any], value: Any = None) -> Awaitable[None]:
        """Store ``value`` under ``key``, or every item of a dict (at most 128)."""
        return self._put_call(key, value, "put")

    def _put_call(self, key: Any, value: Any, method: str) -> Awaitable[None]:
        items = put_items(key, value, method)  # encoded now: later changes to it don't count
        if self._txn_owner is None:
            self._write_items(items, method)
            return DONE
        return self._in_turn(method, True, self._write_items, items, method)

    @overload
    def delete(self, key: str) -> Awaitable[bool]: ...
    @overload
    def delete(self, key: list[str] | tuple[str, ...]) -> Awaitable[int]: ...
    def delete(self, key: str | list[str] | tuple[str, ...]) -> Awaitable[bool | int]:
        """Delete ``key`` (True if it existed), or several keys (how many existed)."""
        return self._delete_call(key, "delete")

    def _delete_call(self, key: Any, method: str) -> Awaitable[bool | int]:
        keys = get_keys(key, method)
        if self._txn_owner is None:
            return Settled(self._delete_raw(keys, method))
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
        bounds = list_range(start, start_after, end, prefix, reverse, limit, method)
        return self._in_turn(method, False, self._list_dict, bounds, method)

    def delete_all(self) -> Awaitable[None]:
        """Delete every key and every SQL table, atomically. The alarm stays."""
        return self._in_turn("delete_all", True, self._delete_all, "delete_all")

    def _delete_all(self, method: str) -> None:
        db = self._write(method)
        self._cache.clear()
        try:
            db.delete_all()
        except StorageError as exc:
            raise self._write_failed(db, exc, method) from exc

    def sync(self) -> asyncio.Future[None]:
        """Every write made so far, durable: a future that is done once they are, or fails
        with a StorageError if one of them could not be stored. ``await storage.sync()``
        waits for it; ``storage.sync().add_done_callback(fn)`` learns it without waiting."""
        if self._db is None:
            raise gone("sync")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done() -> None:
            self._host.output_gate.resolve_when_clear(
                future, wrap=lambda error: StorageError(f"a write failed: {error}")
            )

        if self._txn_owner is None or current_event() is self._txn_owner:
            done()
        else:  # behind another event's transaction: the writes queued before it count too
            turn = self._in_turn("sync", False, done)
            assert isinstance(turn, asyncio.Future)
            turn.add_done_callback(lambda t: _pass_failure(t, future))
        return future

    # -- point-in-time recovery (cluster mode) ------------------------------------------------

    def get_current_bookmark(self) -> asyncio.Future[str]:
        """A bookmark of the storage's state now, once every write made so far is durable."""
        return self._current_bookmark("get_current_bookmark")

    def get_bookmark_for_time(self, timestamp: datetime | int | float) -> asyncio.Future[str]:
        """A bookmark of the state the storage was in at ``timestamp`` (a datetime, or epoch
        milliseconds), within the history kept."""
        return self._bookmark_for_time(timestamp, "get_bookmark_for_time")

    def on_next_session_restore_bookmark(self, bookmark: str) -> asyncio.Future[str]:
        """The next time the object starts (``ctx.abort()`` restarts it), its storage is what
        it was at ``bookmark``. Returns a bookmark of the state now, to undo it."""
        return self._restore_bookmark(bookmark, "on_next_session_restore_bookmark")

    def _current_bookmark(self, method: str) -> asyncio.Future[str]:
        db = self._point_in_time(method)

        async def after_sync() -> str:
            await self.sync()
            return db.current_bookmark()

        return asyncio.ensure_future(after_sync())

    def _bookmark_for_time(
        self, timestamp: datetime | int | float, method: str
    ) -> asyncio.Future[str]:
        db = self._point_in_time(method)
        return asyncio.ensure_future(db.bookmark_for_time(alarm_ms(timestamp, method)))

    def _restore_bookmark(self, bookmark: str, method: str) -> asyncio.Future[str]:
        db = self._point_in_time(method)

        async def after_sync() -> str:
            await self.sync()
            return await db.restore_on_next_session(bookmark)

        return asyncio.ensure_future(after_sync())

    def _point_in_time(self, method: str) -> PointInTime:
        db = self._database(method)
        if not isinstance(db, PointInTime):
            raise StorageError(
                f"storage.{method}(): point-in-time recovery needs a cluster (opendo serve "
                "--cluster postgresql://...), whose log of every commit it reads; this "
                "object's storage keeps no history"
            )
        return db

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
        return self._in_turn(method, True, self._write_alarm, alarm_ms(when, method), method)

    def delete_alarm(self) -> Awaitable[None]:
        """Remove the alarm (a handler already running is not stopped)."""
        return self._in_turn("delete_alarm", True, self._delete_alarm, "delete_alarm")

    def _get_alarm(self, method: str) -> int | None:
        db = self._database(method)
        if self._in_alarm and not self._alarm_set_in_handler:
            return None
        return db.alarm()

    def _set_alarm(self, when: datetime | int | float, method: str) -> None:
        self._write_alarm(alarm_ms(when, method), method)

    def _write_alarm(self, time_ms: int, method: str) -> None:
        db = self._write(method)
        try:
            db.set_alarm(time_ms)
        except StorageError as exc:
            raise self._write_failed(db, exc, method) from exc
        if self._in_alarm:
            self._alarm_set_in_handler = True
        self._host.alarm_changed(time_ms)

    def _delete_alarm(self, method: str) -> None:
        db = self._write(method)
        try:
            db.delete_alarm()
        except StorageError as exc:
            raise self._write_failed(db, exc, method) from exc
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
        return self._database("get_alarm").alarm()

    @property
    def alarm_running(self) -> bool:
        return self._in_alarm

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
            self._host.alarm_changed(db.alarm())

    # -- transactions ------------------------------------------------------------------------

    def transaction_sync(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` as one transaction: if it raises, its writes are rolled back."""
        db = self._write("transaction_sync")
        batches = self._batches
        name = f"t{batches.depth}"
        db.savepoint(name)
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
            db.rollback_to(name)
            self._rolled_back()
            db.release(name)
            raise
        else:
            db.release(name)
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
            db = self._write("transaction")
        except BaseException:
            self._txn_owner = outer_owner
            if outer_owner is None:
                self._drain()
            raise
        batches = self._batches
        name = f"t{batches.depth}"
        gate_lock = self._host.input_gate.lock()
        db.savepoint(name)
        batches.depth += 1
        self._txn_owner = event
        txn = Transaction(self)
        try:
            result = await fn(txn)
        except BaseException:
            if self._db is not None:
                db.rollback_to(name)
                self._rolled_back()
                db.release(name)
            raise
        else:
            if self._db is not None:
                if txn._rolled_back:
                    db.rollback_to(name)
                    self._rolled_back()
                db.release(name)
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
            raise gone("transaction")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append(Queued(None, turn, turn=event))
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
        return self._read(get_keys(key, method), method)

    def _read(self, keys: Keys, method: str) -> Any:
        db = self._database(method)
        if isinstance(keys, bytes):
            cache = self._cache
            if keys in cache:
                data = cache[keys]
            else:
                data = db.kv_get(keys)
                self._remember(keys, data)
            return None if data is None else decode(data)
        return {k.decode("utf-8", "surrogatepass"): decode(v) for k, v in db.kv_get_many(keys)}

    def _put(self, key: str | Mapping[str, Any], value: Any, method: str) -> None:
        self._write_items(put_items(key, value, method), method)

    def _write_items(self, items: _Items, method: str) -> None:
        db = self._write(method)
        try:
            db.kv_put(items)
        except StorageError as exc:
            raise self._write_failed(db, exc, method) from exc
        written = 0
        for raw, data in items:
            self._remember(raw, data)
            written += len(data)
        METRICS.storage_written_bytes.inc(self._class, amount=written)

    def _remember(self, raw: bytes, data: bytes | None) -> None:
        cache = self._cache
        if len(cache) >= _CACHE_ENTRIES:
            cache.clear()
        cache[raw] = data

    def _delete(self, key: str | Iterable[str], method: str) -> bool | int:
        return self._delete_raw(get_keys(key, method), method)

    def _delete_raw(self, keys: Keys, method: str) -> bool | int:
        db = self._write(method)
        many = not isinstance(keys, bytes)
        raw = keys if isinstance(keys, list) else [keys]
        try:
            count = db.kv_delete(raw)
        except StorageError as exc:
            raise self._write_failed(db, exc, method) from exc
        for key in raw:
            self._remember(key, None)
        return count if many else count > 0

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
        bounds = list_range(start, start_after, end, prefix, reverse, limit, method)
        return self._list_rows(bounds, method)

    def _list_rows(self, bounds: Range, method: str) -> _Rows:
        rows = self._database(method).kv_list(*bounds)
        return [(k.decode("utf-8", "surrogatepass"), decode(v)) for k, v in rows]

    def _list_dict(self, bounds: Range, method: str) -> dict[str, Any]:
        return dict(self._list_rows(bounds, method))


def _pass_failure(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    error = source.exception()
    if error is not None and not target.done():
        target.set_exception(error)


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
        return settled(self._check("get")._get(key, "get"))

    def put(self, key: Any, value: Any = None) -> Awaitable[None]:
        self._check("put")._put(key, value, "put")
        return DONE

    def delete(self, key: Any) -> Awaitable[bool | int]:
        return Settled(self._check("delete")._delete(key, "delete"))

    def delete_all(self) -> Awaitable[None]:
        self._check("delete_all")._delete_all("delete_all")
        return DONE

    def get_alarm(self) -> Awaitable[int | None]:
        return settled(self._check("get_alarm")._get_alarm("get_alarm"))

    def set_alarm(self, scheduled_time: datetime | int | float) -> Awaitable[None]:
        self._check("set_alarm")._set_alarm(scheduled_time, "set_alarm")
        return DONE

    def delete_alarm(self) -> Awaitable[None]:
        self._check("delete_alarm")._delete_alarm("delete_alarm")
        return DONE

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
        return Settled(dict(rows))


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


# -- calls under another name (for adapters: opendo.workers) ----------------------------------


def delete_all_as(target: Storage | Transaction, method: str) -> Awaitable[None]:
    """``target.delete_all()``, whose errors name it ``method``."""
    if isinstance(target, Transaction):
        target._check(method)._delete_all(method)
        return DONE
    return target._in_turn(method, True, target._delete_all, method)


def get_alarm_as(target: Storage | Transaction, method: str) -> Awaitable[int | None]:
    """``target.get_alarm()``, whose errors name it ``method``."""
    if isinstance(target, Transaction):
        return settled(target._check(method)._get_alarm(method))
    return target._in_turn(method, False, target._get_alarm, method)


def set_alarm_as(
    target: Storage | Transaction, scheduled_time: datetime | int | float, method: str
) -> Awaitable[None]:
    """``target.set_alarm(scheduled_time)``, whose errors name it ``method``."""
    if isinstance(target, Transaction):
        target._check(method)._set_alarm(scheduled_time, method)
        return DONE
    return target._set_alarm_call(scheduled_time, method)


def delete_alarm_as(target: Storage | Transaction, method: str) -> Awaitable[None]:
    """``target.delete_alarm()``, whose errors name it ``method``."""
    if isinstance(target, Transaction):
        target._check(method)._delete_alarm(method)
        return DONE
    return target._in_turn(method, True, target._delete_alarm, method)


def current_bookmark_as(target: Storage, method: str) -> asyncio.Future[str]:
    """``target.get_current_bookmark()``, whose errors name it ``method``."""
    return target._current_bookmark(method)


def bookmark_for_time_as(
    target: Storage, timestamp: datetime | int | float, method: str
) -> asyncio.Future[str]:
    """``target.get_bookmark_for_time(timestamp)``, whose errors name it ``method``."""
    return target._bookmark_for_time(timestamp, method)


def restore_bookmark_as(target: Storage, bookmark: str, method: str) -> asyncio.Future[str]:
    """``target.on_next_session_restore_bookmark(bookmark)``, whose errors name it ``method``."""
    return target._restore_bookmark(bookmark, method)
