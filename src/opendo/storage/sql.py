"""``storage.sql``: SQL over the object's own database, and the cursor of its results.

The API checks the bindings (Cloudflare's limits: at most 100, each None, int, float, str or
bytes) and joins the statements to the turn's batch; the database runs them and says whether
they may have changed it, which is when the batch must be made durable before what the
object sends next leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..core.storage import ObjectDatabase, SqlError
from .batches import Batches

__all__ = ["MAX_BINDINGS", "SqlCursor", "SqlError", "SqlStorage", "SqlValue"]

MAX_BINDINGS = 100

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
    """``storage.sql``: SQLite for this object; KV data lives in the same database.

    ``database(method)`` is the storage's database, or raises naming the method (the object
    was reset, or another event's transaction is open)."""

    __slots__ = ("_database", "_batches")

    def __init__(self, database: Callable[[str], ObjectDatabase], batches: Batches) -> None:
        self._database = database
        self._batches = batches

    def exec(self, query: str, *bindings: SqlValue) -> SqlCursor:
        """Run ``query`` (one or more statements; bindings apply to the last)."""
        if not isinstance(query, str):
            raise TypeError(f"sql.exec() takes a query str, got {type(query).__name__}")
        _check_bindings(bindings)
        db = self._database("sql.exec")
        batches = self._batches
        batches.begin()
        try:
            result = db.sql(query, bindings)
        except SqlError as exc:
            if exc.changed:
                batches.wrote()
            if not db.in_transaction:
                # The database rolled the whole batch back (disk full, I/O error): writes
                # already accepted are gone, so this instance's memory no longer matches.
                batches.fail(exc)
            raise
        if result.changed:
            batches.wrote()
        return SqlCursor(result.columns, result.rows, result.rows_written)

    @property
    def database_size(self) -> int:
        """The database's size in bytes."""
        return self._database("sql.database_size").size()


def _check_bindings(bindings: tuple[SqlValue, ...]) -> None:
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
