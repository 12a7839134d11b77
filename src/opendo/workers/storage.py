"""``ctx.storage``, its transactions, ``storage.kv`` and ``storage.sql``, camelCase."""

from __future__ import annotations

import asyncio
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from datetime import datetime
from typing import Any, TypeVar

from ..api.http import Headers
from ..storage import api as _storage
from ..storage import sql as _sql
from .helpers import (
    _ALARM_WRITE_FLAGS,
    _FLAGS,
    _WRITE_FLAGS,
    JsDict,
    _key,
    _keys,
    _list_args,
    _options,
    _plain,
    _resolve,
)

_T = TypeVar("_T")
_R = TypeVar("_R")

HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


# -- storage ------------------------------------------------------------------------------------


class SqlCursor:
    """The cursor of ``sql.exec()``: iterate its rows, or ``toArray()``, ``one()``,
    ``raw()``, ``next()``; ``columnNames``, ``rowsRead``, ``rowsWritten``."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: _sql.SqlCursor) -> None:
        self._cursor = cursor

    def __iter__(self) -> Iterator[JsDict]:
        return self

    def __next__(self) -> JsDict:
        return JsDict(next(self._cursor))

    def next(self) -> JsDict:
        """The next row as ``{"done": False, "value": row}``, then ``{"done": True}``."""
        try:
            return JsDict(done=False, value=self.__next__())
        except StopIteration:
            return JsDict(done=True, value=None)

    def toArray(self) -> list[JsDict]:
        return [JsDict(row) for row in self._cursor.to_array()]

    def one(self) -> JsDict:
        return JsDict(self._cursor.one())

    def raw(self) -> Iterator[list[_sql.SqlValue]]:
        return (list(row) for row in self._cursor.raw())

    @property
    def columnNames(self) -> list[str]:
        return self._cursor.column_names

    @property
    def rowsRead(self) -> int:
        return self._cursor.rows_read

    @property
    def rowsWritten(self) -> int:
        return self._cursor.rows_written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class SqlStorage:
    """``ctx.storage.sql``: ``exec(query, *bindings)`` and ``databaseSize``."""

    __slots__ = ("_sql",)

    def __init__(self, sql: _sql.SqlStorage) -> None:
        self._sql = sql

    def exec(self, query: str, *bindings: Any) -> SqlCursor:
        return SqlCursor(self._sql.exec(query, *bindings))

    @property
    def databaseSize(self) -> int:
        return self._sql.database_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sql, name)


class SyncKV:
    """``ctx.storage.kv``: ``get``, ``put``, ``delete`` and ``list(options)`` without awaits."""

    __slots__ = ("_kv",)

    def __init__(self, kv: _storage.SyncKV) -> None:
        self._kv = kv

    def get(self, key: Any) -> Any:
        return self._kv.get(_key(key))

    def put(self, key: Any, value: Any) -> None:
        self._kv.put(_key(key), _plain(value))

    def delete(self, key: Any) -> bool:
        return self._kv.delete(_key(key))

    def list(self, options: Any = None, /, **keywords: Any) -> Iterator[tuple[str, Any]]:
        start, start_after, end, prefix, reverse, limit = _list_args(
            "storage.kv.list", options, keywords
        )
        return self._kv.list(
            start=start,
            start_after=start_after,
            end=end,
            prefix=prefix,
            reverse=reverse,
            limit=limit,
        )


_MISSING: Any = object()


def _put_args(
    method: str, key: Any, value: Any, options: Any, keywords: Mapping[str, Any]
) -> tuple[Any, Any]:
    """``put(key, value, options?)`` -> (key, value); ``put(entries, options?)`` ->
    (entries, None), as opendo's ``_put`` takes them."""
    if isinstance(key, Mapping):
        if value is not _MISSING:
            if options is not None:
                raise TypeError(f"{method}(entries, options) takes no third argument")
            options = value
        _options(method, options, keywords, _WRITE_FLAGS)
        return {_key(k): _plain(v) for k, v in key.items()}, None
    if value is _MISSING:
        raise TypeError(f"{method}() takes a key and a value, or a dict of entries")
    _options(method, options, keywords, _WRITE_FLAGS)
    return _key(key), _plain(value)


def _list_options(method: str, options: Any, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """``list(options?)`` -> the keywords of opendo's ``list``."""
    names = ("start", "start_after", "end", "prefix", "reverse", "limit")
    return dict(zip(names, _list_args(method, options, keywords), strict=True))


class Storage:
    """``ctx.storage`` with Cloudflare's names. Each call runs when it is made — awaited or
    not, as on Cloudflare — and returns an awaitable of its result (not a coroutine); writes
    made without an intervening await still commit as one batch, and nothing the object
    sends leaves before they are durable. Other names (snake_case too) are opendo's
    ``Storage``'s, whose calls behave the same: while another event's ``transaction()`` is
    open, a call is queued and runs, in call order, when it ends.
    """

    __slots__ = ("_storage", "sql", "kv")

    def __init__(self, storage: _storage.Storage) -> None:
        self._storage = storage
        self.sql = SqlStorage(storage.sql)
        self.kv = SyncKV(storage.kv)

    def get(self, key: Any, options: Any = None, /, **keywords: Any) -> Awaitable[Any]:
        """A value (None if absent), or a dict of the keys found, in key order."""
        _options("storage.get", options, keywords, _FLAGS)
        return self._storage.get(_keys(key))

    def put(
        self, key: Any, value: Any = _MISSING, options: Any = None, /, **keywords: Any
    ) -> Awaitable[None]:
        """``put(key, value, options?)`` or ``put({key: value, …}, options?)``."""
        k, v = _put_args("storage.put", key, value, options, keywords)
        return self._storage.put(k, v)

    def delete(self, key: Any, options: Any = None, /, **keywords: Any) -> Awaitable[bool | int]:
        """True if ``key`` existed; for a list of keys, how many existed."""
        _options("storage.delete", options, keywords, _WRITE_FLAGS)
        return self._storage.delete(_keys(key))

    def deleteAll(self, options: Any = None, /, **keywords: Any) -> Awaitable[None]:
        """Delete every key and every SQL table, atomically (the alarm stays)."""
        _options("storage.deleteAll", options, keywords, _WRITE_FLAGS)
        return _storage.delete_all_as(self._storage, "deleteAll")

    def list(self, options: Any = None, /, **keywords: Any) -> Awaitable[StorageMap]:
        """Keys and values in key order: ``start``, ``startAfter``, ``end``, ``prefix``,
        ``reverse``, ``limit`` — as a dict (``list({"prefix": "a"})``) or as keywords. The
        answer is a ``StorageMap``: a dict with the Map's ``size``, ``has``, ``entries``."""
        return _as_map(self._storage.list(**_list_options("storage.list", options, keywords)))

    def getAlarm(self, options: Any = None, /, **keywords: Any) -> Awaitable[int | None]:
        """When the alarm is due, in epoch milliseconds, or None."""
        _options("storage.getAlarm", options, keywords, frozenset({"allowConcurrency"}))
        return _storage.get_alarm_as(self._storage, "getAlarm")

    def setAlarm(
        self, scheduled_time: datetime | int | float, options: Any = None, /, **keywords: Any
    ) -> Awaitable[None]:
        """Set the object's one alarm: epoch milliseconds or a datetime."""
        _options("storage.setAlarm", options, keywords, _ALARM_WRITE_FLAGS)
        return _storage.set_alarm_as(self._storage, scheduled_time, "setAlarm")

    def deleteAlarm(self, options: Any = None, /, **keywords: Any) -> Awaitable[None]:
        _options("storage.deleteAlarm", options, keywords, _ALARM_WRITE_FLAGS)
        return _storage.delete_alarm_as(self._storage, "deleteAlarm")

    def sync(self) -> asyncio.Future[None]:
        """Every write made so far, durable: ``await storage.sync()``."""
        return self._storage.sync()

    def transaction(self, closure: Callable[[Transaction], Any]) -> Coroutine[Any, Any, Any]:
        """``await storage.transaction(fn)``: ``fn(txn)`` as one transaction (``txn``
        camelCase too); no other event runs until it ends."""

        async def run(txn: _storage.Transaction) -> Any:
            return await _resolve(closure(Transaction(txn)))

        return self._storage.transaction(run)

    def transactionSync(self, fn: Callable[[], _T]) -> _T:
        return self._storage.transaction_sync(fn)

    def getCurrentBookmark(self) -> Awaitable[str]:
        return _storage.current_bookmark_as(self._storage, "getCurrentBookmark")

    def getBookmarkForTime(self, timestamp: Any) -> Awaitable[str]:
        return _storage.bookmark_for_time_as(self._storage, timestamp, "getBookmarkForTime")

    def onNextSessionRestoreBookmark(self, bookmark: str) -> Awaitable[str]:
        return _storage.restore_bookmark_as(self._storage, bookmark, "onNextSessionRestoreBookmark")

    def __getattr__(self, name: str) -> Any:
        # snake_case names, and the runtime's own calls on ``instance.ctx.storage``
        return getattr(self._storage, name)


class Transaction:
    """The ``txn`` of ``storage.transaction(fn)``, camelCase: ``get``, ``put``, ``delete``,
    ``deleteAll``, ``list``, ``getAlarm``, ``setAlarm``, ``deleteAlarm``, ``rollback()``.
    Each call runs when it is made, awaited or not."""

    __slots__ = ("_txn",)

    def __init__(self, txn: _storage.Transaction) -> None:
        self._txn = txn

    def rollback(self) -> None:
        self._txn.rollback()

    def get(self, key: Any, options: Any = None, /, **keywords: Any) -> Awaitable[Any]:
        _options("txn.get", options, keywords, _FLAGS)
        return self._txn.get(_keys(key))

    def put(
        self, key: Any, value: Any = _MISSING, options: Any = None, /, **keywords: Any
    ) -> Awaitable[None]:
        k, v = _put_args("txn.put", key, value, options, keywords)
        return self._txn.put(k, v)

    def delete(self, key: Any, options: Any = None, /, **keywords: Any) -> Awaitable[bool | int]:
        _options("txn.delete", options, keywords, _WRITE_FLAGS)
        return self._txn.delete(_keys(key))

    def deleteAll(self, options: Any = None, /, **keywords: Any) -> Awaitable[None]:
        _options("txn.deleteAll", options, keywords, _WRITE_FLAGS)
        return _storage.delete_all_as(self._txn, "deleteAll")

    def list(self, options: Any = None, /, **keywords: Any) -> Awaitable[StorageMap]:
        return _as_map(self._txn.list(**_list_options("txn.list", options, keywords)))

    def getAlarm(self, options: Any = None, /, **keywords: Any) -> Awaitable[int | None]:
        _options("txn.getAlarm", options, keywords, frozenset({"allowConcurrency"}))
        return _storage.get_alarm_as(self._txn, "getAlarm")

    def setAlarm(
        self, scheduled_time: datetime | int | float, options: Any = None, /, **keywords: Any
    ) -> Awaitable[None]:
        _options("txn.setAlarm", options, keywords, _ALARM_WRITE_FLAGS)
        return _storage.set_alarm_as(self._txn, scheduled_time, "setAlarm")

    def deleteAlarm(self, options: Any = None, /, **keywords: Any) -> Awaitable[None]:
        _options("txn.deleteAlarm", options, keywords, _ALARM_WRITE_FLAGS)
        return _storage.delete_alarm_as(self._txn, "deleteAlarm")


class StorageMap(dict[str, Any]):
    """``storage.list()``'s answer: a ``dict`` in key order that also answers as the
    JavaScript ``Map`` Cloudflare returns does: ``size``, ``has(key)``, ``get(key)``,
    ``entries()`` (``[key, value]`` pairs), ``forEach(fn)`` (``fn(value, key)``)."""

    @property
    def size(self) -> int:
        return len(self)

    def has(self, key: str) -> bool:
        return key in self

    def entries(self) -> Iterator[list[Any]]:
        return ([key, value] for key, value in self.items())

    def forEach(self, fn: Callable[..., Any]) -> None:  # noqa: N802  (the Map's name)
        for key, value in list(self.items()):
            fn(value, key)


async def _as_map(listed: Awaitable[dict[str, Any]]) -> StorageMap:
    return StorageMap(await listed)
