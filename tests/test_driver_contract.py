"""The storage driver contract: ``StorageDriver`` and ``ObjectDatabase`` (``core.storage``),
tested directly, on every driver.

Every test runs over each of conftest's ``DRIVERS`` (the ``driver`` fixture): ``SqliteDriver``
over real files in a temporary directory, and ``MemoryDriver``. A new driver (PostgreSQL)
joins by being added there. The storage API's own contract — ``ctx.storage`` driven the way
users drive it — is tests/test_storage.py; this suite is what that API may count on.

Durability is failed at its documented boundary: a database's ``flush()``, the one blocking
call that decides durability in both drivers (tests/conftest.py's ``GatedDriver`` wraps it
the same way). Holding an object is checked across real processes: small Python children
that open the same persist directory.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import reopen

from opendo import SqliteDriver, StorageDriver, StorageError
from opendo.core.codec import decode, encode
from opendo.core.errors import StorageUnavailableError
from opendo.core.gates import InputGate, OutputGate
from opendo.core.ids import DurableObjectId, NamespaceKey
from opendo.core.migrations import Migration, MigrationError, MigrationRecord, apply
from opendo.core.storage import FencedError, ObjectDatabase, QueryResult, SqlError
from opendo.storage import Storages
from opendo.storage.locks import LOCK_FILE, ObjectInUseError

KEY = NamespaceKey("Box")
A, B = KEY.from_name("a"), KEY.from_name("b")
SYNC_WITHIN = 10.0
CHILD_WITHIN = 30.0


# -- helpers ----------------------------------------------------------------------------------


def write(db: ObjectDatabase, *items: tuple[bytes, bytes]) -> int:
    """One transaction that puts ``items``; the commit's number."""
    db.begin()
    db.kv_put(list(items))
    return db.commit()


def store(driver: StorageDriver, id: DurableObjectId, *items: tuple[bytes, bytes]) -> None:
    db = driver.open("Box", id)
    try:
        write(db, *items)
    finally:
        db.close()


def read(driver: StorageDriver, id: DurableObjectId, key: bytes) -> bytes | None:
    db = driver.open("Box", id)
    try:
        return db.kv_get(key)
    finally:
        db.close()


class Synced:
    """``db.sync(commit, done)``, with ``done``'s calls recorded; ``await`` it for the
    error ``done`` was given (None: durable)."""

    def __init__(self, db: ObjectDatabase, commit: int) -> None:
        self.calls: list[BaseException | None] = []
        self.future: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        db.sync(commit, self._done)
        assert self.calls == [], "done was called from inside sync()"

    def _done(self, error: BaseException | None) -> None:
        self.calls.append(error)
        if not self.future.done():
            self.future.set_result(error)

    async def result(self) -> BaseException | None:
        error = await asyncio.wait_for(self.future, SYNC_WITHIN)
        assert len(self.calls) == 1, self.calls
        return error


def failing_flush(db: Any) -> None:
    """Make durability fail for ``db``, at the boundary both drivers share."""

    def flush() -> None:
        raise OSError(errno.EIO, "Input/output error")

    db.flush = flush


def files(driver: StorageDriver) -> set[str]:
    if not isinstance(driver, SqliteDriver) or not driver.directory.exists():
        return set()
    return {str(p.relative_to(driver.directory)) for p in driver.directory.rglob("*")}


def child(state: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new Python process, with ``state`` as argv[1]."""
    prelude = (
        "import sys\n"
        "from opendo import SqliteDriver\n"
        "from opendo.core.ids import NamespaceKey\n"
        "driver = SqliteDriver(sys.argv[1])\n"
        "A = NamespaceKey('Box').from_name('a')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), str(state), *args],
        capture_output=True,
        text=True,
        timeout=CHILD_WITHIN,
    )


@pytest.fixture
def sqlite_driver(tmp_path: Path) -> SqliteDriver:
    return SqliteDriver(tmp_path / "state")


# -- transactions -----------------------------------------------------------------------------


def test_a_commit_is_there_after_reopening(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    assert not db.in_transaction
    db.begin()
    assert db.in_transaction
    db.kv_put([(b"k", b"v")])
    assert db.kv_get(b"k") == b"v"  # seen at once, inside the transaction
    assert db.commit() == 1
    assert not db.in_transaction
    db.close()
    assert db.closed
    assert read(reopen(driver), A, b"k") == b"v"


def test_rollback_and_close_discard_what_is_not_committed(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    write(db, (b"kept", b"1"))
    db.begin()
    db.kv_put([(b"dropped", b"2")])
    db.rollback()
    assert not db.in_transaction and db.kv_get(b"dropped") is None
    assert db.commit() == 1  # nothing open: the number of the last commit
    db.begin()
    db.kv_put([(b"dropped", b"3")])
    db.close()
    db.close()  # idempotent
    again = reopen(driver)
    assert read(again, A, b"dropped") is None and read(again, A, b"kept") == b"1"


def test_savepoints_undo_and_keep_parts_of_a_transaction(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    db.begin()
    db.kv_put([(b"a", b"1")])
    db.savepoint("outer")
    db.kv_put([(b"b", b"2")])
    db.savepoint("inner")
    db.kv_put([(b"c", b"3")])
    db.rollback_to("inner")
    db.release("inner")
    assert db.kv_get(b"c") is None and db.kv_get(b"b") == b"2"
    db.release("outer")
    db.savepoint("again")
    db.kv_put([(b"d", b"4")])
    db.rollback_to("again")
    db.rollback_to("again")  # the savepoint stays after a rollback to it
    db.release("again")
    db.commit()
    db.close()
    db = reopen(driver).open("Box", A)
    assert db.kv_list(None, None, False, None) == [(b"a", b"1"), (b"b", b"2")]
    db.close()


def test_a_write_outside_a_transaction_is_refused(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    for attempt in (
        lambda: db.kv_put([(b"k", b"v")]),
        lambda: db.kv_delete([b"k"]),
        lambda: db.delete_all(),
        lambda: db.set_alarm(1),
        lambda: db.delete_alarm(),
    ):
        with pytest.raises(StorageError, match="outside a transaction"):
            attempt()
    assert db.kv_get(b"k") is None
    db.close()


def test_a_closed_handle_refuses_every_call(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    db.close()
    with pytest.raises(StorageError, match=r"Box\(.*\) was used after it was closed"):
        db.kv_get(b"k")
    with pytest.raises(StorageError, match="after it was closed"):
        db.begin()


# -- KV -----------------------------------------------------------------------------------------


def test_keys_come_back_in_byte_order(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    keys = [b"b", b"", b"a\x00", b"\xc3\xa9", b"a", b"\xff\xff", b"B"]
    write(db, *((k, b"v" + k) for k in keys))
    assert [k for k, _ in db.kv_list(None, None, False, None)] == sorted(keys)
    found = db.kv_get_many([b"\xc3\xa9", b"missing", b"a", b""])
    assert found == [(b"", b"v"), (b"a", b"va"), (b"\xc3\xa9", b"v\xc3\xa9")]
    assert db.kv_get_many([]) == []
    db.close()


def test_put_overwrites_and_delete_counts_what_existed(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    write(db, (b"a", b"1"), (b"b", b"2"))
    db.begin()
    db.kv_put([(b"a", b"one")])
    assert db.kv_delete([b"b", b"nope"]) == 1
    assert db.kv_delete([b"b"]) == 0
    assert db.kv_delete([]) == 0
    db.commit()
    assert db.kv_list(None, None, False, None) == [(b"a", b"one")]
    db.close()


def test_a_put_of_many_stores_all_or_none(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    db.begin()
    too_big = b"x" * (3 * 1024 * 1024)  # past SQLite's limit on a value here
    with pytest.raises(StorageError, match="too big"):
        db.kv_put([(b"small", b"1"), (b"big", too_big)])
    assert db.in_transaction  # the transaction survives a refused put
    assert db.kv_get(b"small") is None
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("start", "end", "reverse", "limit", "expected"),
    [
        (None, None, False, None, [b"a", b"b", b"c", b"d"]),
        (b"b", None, False, None, [b"b", b"c", b"d"]),  # start inclusive
        (None, b"c", False, None, [b"a", b"b"]),  # end exclusive
        (b"b", b"d", False, None, [b"b", b"c"]),
        (b"bb", b"cc", False, None, [b"c"]),
        (b"c", b"b", False, None, []),
        (None, None, True, None, [b"d", b"c", b"b", b"a"]),
        (None, None, False, 2, [b"a", b"b"]),
        (None, None, True, 2, [b"d", b"c"]),  # the last ones
        (b"b", b"d", True, 1, [b"c"]),
    ],
)
def test_list_takes_bounds_reverse_and_limit(
    driver: StorageDriver,
    start: bytes | None,
    end: bytes | None,
    reverse: bool,
    limit: int | None,
    expected: list[bytes],
) -> None:
    db = driver.open("Box", A)
    write(db, *((k, k.upper()) for k in (b"c", b"a", b"d", b"b")))
    rows = db.kv_list(start, end, reverse, limit)
    assert rows == [(k, k.upper()) for k in expected]
    db.close()


def test_delete_all_removes_keys_tables_and_views_but_keeps_the_alarm(
    driver: StorageDriver,
) -> None:
    db = driver.open("Box", A)
    db.begin()
    db.kv_put([(b"k", b"v")])
    db.sql("CREATE TABLE t (x); CREATE INDEX t_x ON t (x); CREATE VIEW v AS SELECT x FROM t", ())
    db.set_alarm(1234)
    db.commit()
    db.begin()
    db.delete_all()
    db.commit()
    assert db.kv_list(None, None, False, None) == []
    schema = db.sql("SELECT name FROM sqlite_master WHERE name NOT LIKE '_opendo_%'", ())
    assert schema.rows == []
    assert db.alarm() == 1234
    db.close()
    stored = reopen(driver).stored("Box", A)
    assert stored is not None and stored.alarm_ms == 1234


# -- SQL ------------------------------------------------------------------------------------------


def test_sql_results_and_whether_they_changed_anything(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    db.begin()
    created = db.sql("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, x)", ())
    assert created.changed and created.rows == [] and created.rows_written == 0
    again = db.sql("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, x)", ())
    assert not again.changed  # DDL that changes nothing is no change
    inserted = db.sql("INSERT INTO t (x) VALUES (?), (?)", ("a", 2))
    assert inserted.changed and inserted.rows_written == 2
    selected = db.sql("SELECT id, x FROM t ORDER BY id", ())
    assert not selected.changed and selected.rows_written == 0
    assert selected.columns == ["id", "x"] and selected.rows == [(1, "a"), (2, 2)]
    # Several statements: the bindings apply to the last, whose rows come back.
    last = db.sql("UPDATE t SET x = 'b' WHERE id = 1; SELECT x FROM t WHERE id = ?", (1,))
    assert last.rows == [("b",)] and last.rows_written == 1 and last.changed
    db.commit()
    assert db.size() > 0
    db.close()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("BEGIN", "not allowed in sql.exec"),
        ("SAVEPOINT s", "not allowed in sql.exec"),
        ("ATTACH 'x.db' AS x", "ATTACH and DETACH are not allowed"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode is not allowed"),
        ("SELECT * FROM _opendo_kv", "_opendo_kv is reserved"),
        ("ALTER TABLE t RENAME TO _opendo_mine", "names starting with _opendo_ are reserved"),
        ("-- only a comment", "holds no statement"),
        ("SELECT * FROM nowhere", "no such table"),
    ],
)
def test_sql_that_may_not_run_is_refused(driver: StorageDriver, query: str, message: str) -> None:
    db = driver.open("Box", A)
    db.begin()
    db.sql("CREATE TABLE t (x)", ())
    with pytest.raises(SqlError, match=message) as refused:
        db.sql(query, ())
    assert not refused.value.changed
    assert db.in_transaction  # a refused statement leaves the transaction as it was
    db.commit()
    assert db.sql("PRAGMA table_info(t)", ()).rows  # introspection is allowed
    db.close()


def test_a_failing_statement_says_whether_the_ones_before_it_changed_anything(
    driver: StorageDriver,
) -> None:
    db = driver.open("Box", A)
    db.begin()
    db.sql("CREATE TABLE t (x UNIQUE)", ())
    with pytest.raises(SqlError, match="UNIQUE") as failed:
        db.sql("INSERT INTO t VALUES (1); INSERT INTO t VALUES (1)", ())
    assert failed.value.changed
    assert db.sql("SELECT x FROM t", ()).rows == [(1,)]
    db.commit()
    db.close()


# -- the alarm -----------------------------------------------------------------------------------


def test_the_alarm_row(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    assert db.alarm() is None
    db.begin()
    db.set_alarm(1_000)
    db.set_alarm(2_000)  # one alarm: the last one set
    db.commit()
    db.close()
    again = reopen(driver)
    assert [(a.class_name, a.id, a.name, a.time_ms) for a in again.scan_alarms()] == [
        ("Box", str(A), "a", 2_000)
    ]
    db = again.open("Box", A)
    assert db.alarm() == 2_000
    db.begin()
    db.delete_alarm()
    db.commit()
    db.close()
    assert list(reopen(driver).scan_alarms()) == []


# -- commits and the barrier ------------------------------------------------------------------


async def test_commit_numbers_grow_and_sync_answers_later(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    assert db.commit() == 0
    numbers = [write(db, (b"k", str(i).encode())) for i in range(3)]
    assert numbers == [1, 2, 3]
    first, last = Synced(db, 1), Synced(db, 3)  # neither answers from inside sync()
    assert await last.result() is None
    assert await first.result() is None
    assert await Synced(db, 3).result() is None  # durable already: still answered later
    db.close()
    assert read(reopen(driver), A, b"k") == b"2"


async def test_a_commit_made_during_a_sync_waits_for_a_later_one(driver: StorageDriver) -> None:
    db: Any = driver.open("Box", A)
    real, flushes, started = db.flush, [], threading.Event()
    release = threading.Event()
    gated = isinstance(driver, SqliteDriver)  # its flush runs on a thread: hold it there

    def flush() -> None:
        flushes.append(len(flushes))
        started.set()
        if gated and not release.wait(SYNC_WITHIN):
            raise TimeoutError("the test never released this flush")
        real()

    db.flush = flush
    first = Synced(db, write(db, (b"k", b"1")))
    if gated:
        await asyncio.wait_for(asyncio.to_thread(started.wait, SYNC_WITHIN), SYNC_WITHIN)
    second = Synced(db, write(db, (b"k", b"2")))  # committed while the first flush runs
    release.set()
    assert await first.result() is None
    assert await second.result() is None
    assert len(flushes) == 2, "a flush that began before a commit was taken to cover it"
    db.close()


async def test_a_failed_sync_fails_its_waiters_and_the_object_is_not_opened_again(
    driver: StorageDriver,
) -> None:
    db = driver.open("Box", A)
    assert await Synced(db, write(db, (b"k", b"1"))).result() is None
    failing_flush(db)
    commit = write(db, (b"k", b"2"))
    error = await Synced(db, commit).result()
    assert isinstance(error, OSError) and error.errno == errno.EIO
    with pytest.raises(StorageUnavailableError, match="failed to sync to disk"):
        db.kv_get(b"k")  # what it committed may be lost: not read again
    assert isinstance(await Synced(db, commit).result(), StorageError)
    db.close()
    with pytest.raises(StorageUnavailableError, match=r"Box\(.*\) failed to sync to disk"):
        driver.open("Box", A)
    store(driver, B, (b"k", b"b"))  # other objects carry on
    assert read(driver, B, b"k") == b"b"
    if isinstance(driver, SqliteDriver):  # a restarted process opens it again
        assert read(SqliteDriver(driver.directory), A, b"k") in (b"1", b"2")


async def test_close_while_a_sync_is_in_flight_still_answers_it(driver: StorageDriver) -> None:
    db: Any = driver.open("Box", A)
    release = threading.Event()
    if isinstance(driver, SqliteDriver):  # the flush runs on a thread: hold it there
        real = db.flush

        def flush() -> None:
            if not release.wait(SYNC_WITHIN):
                raise TimeoutError("the test never released this flush")
            real()

        db.flush = flush
    synced = Synced(db, write(db, (b"k", b"v")))
    db.close()
    assert db.closed
    if isinstance(driver, SqliteDriver):
        assert driver.holder("Box", A) == os.getpid()  # held until its last sync returns
        release.set()
    assert await synced.result() is None
    assert driver.holder("Box", A) is None
    assert read(reopen(driver), A, b"k") == b"v"


# -- epochs ---------------------------------------------------------------------------------------


def test_a_newer_epoch_fences_the_older_handle(driver: StorageDriver) -> None:
    old = driver.open("Box", A, 1)
    write(old, (b"k", b"old"))
    new = driver.open("Box", A, 2)
    assert (old.epoch, new.epoch) == (1, 2)
    old.begin()
    old.kv_put([(b"k", b"stale")])
    with pytest.raises(FencedError, match=r"Box\(.*\) refused a commit: the newer epoch 2"):
        old.commit()
    assert not old.in_transaction  # rolled back: nothing of it is stored
    assert new.kv_get(b"k") == b"old"
    write(new, (b"k", b"new"))
    old.close()
    with pytest.raises(FencedError, match="newer epoch 2"):
        driver.open("Box", A, 1)  # an older activation cannot open it while the newer has it
    new.close()
    assert read(reopen(driver), A, b"k") == b"new"
    later = driver.open("Box", A, 3)
    write(later, (b"k", b"later"))
    later.close()


class Owner:
    """A ``StorageOwner`` of its own: the gates of one activation, and what storage told it."""

    def __init__(self, id: DurableObjectId) -> None:
        self.class_name = "Box"
        self.id = id
        self.output_gate = OutputGate()
        self.input_gate = InputGate()
        self.resets: list[str] = []
        self.alarms: list[int | None] = []

    def reset(self, reason: str, error: BaseException | None = None) -> None:
        self.resets.append(reason)

    def alarm_changed(self, time_ms: int | None) -> None:
        self.alarms.append(time_ms)


async def test_a_write_of_a_fenced_activation_is_never_acknowledged(driver: StorageDriver) -> None:
    storages = Storages(driver)
    old_owner, new_owner = Owner(A), Owner(A)
    old = storages.open(old_owner, "Box", A, 1)
    await old.put("k", "old")
    await asyncio.wait_for(old.sync(), SYNC_WITHIN)
    new = storages.open(new_owner, "Box", A, 2)  # the object was claimed again meanwhile
    old.put("k", "stale")  # runs now; commits at the end of the turn
    with pytest.raises(StorageError, match=r"a write failed: .* refused a commit: the newer"):
        await asyncio.wait_for(old.sync(), SYNC_WITHIN)  # what it sends next never leaves
    assert len(old_owner.resets) == 1 and "refused a commit" in old_owner.resets[0]
    assert await new.get("k") == "old"
    old.close()
    await new.put("k", "new")
    await asyncio.wait_for(new.sync(), SYNC_WITHIN)
    assert new_owner.resets == []
    new.close()
    assert read(reopen(driver), A, b"k") == encode("new")


def test_overlapping_handles_of_one_epoch_share_the_object(driver: StorageDriver) -> None:
    first = driver.open("Box", A)
    write(first, (b"k", b"1"))
    second = driver.open("Box", A)  # a new instance while the last one's sync finishes
    first.close()
    write(second, (b"k", b"2"))
    assert driver.holder("Box", A) == os.getpid()
    second.close()
    assert driver.holder("Box", A) is None
    assert read(reopen(driver), A, b"k") == b"2"


def test_a_handle_whose_lock_file_was_replaced_cannot_commit(sqlite_driver: SqliteDriver) -> None:
    db = sqlite_driver.open("Box", A)
    write(db, (b"k", b"mine"))
    (sqlite_driver.directory / LOCK_FILE).unlink()
    # Another process makes a new lock file, takes the object there, and writes it.
    taken = child(
        sqlite_driver.directory,
        """
        db = driver.open("Box", A)
        db.begin()
        db.kv_put([(b"k", b"theirs")])
        db.commit()
        db.close()
        print("stored")
        """,
    )
    assert taken.stdout.strip() == "stored", taken.stderr
    db.begin()
    db.kv_put([(b"k", b"stale")])
    with pytest.raises(FencedError, match=r"objects.lock was removed or replaced"):
        db.commit()
    with pytest.raises(StorageError, match="restart this one"):
        sqlite_driver.open("Box", B)  # nothing more is opened on a lock file that is gone
    db.close()
    assert read(SqliteDriver(sqlite_driver.directory), A, b"k") == b"theirs"


# -- holding an object, across processes -----------------------------------------------------------


def test_a_second_process_is_refused_while_the_object_is_open(
    sqlite_driver: SqliteDriver,
) -> None:
    db = sqlite_driver.open("Box", A)
    write(db, (b"k", b"v"))
    code = """
    from opendo.storage.locks import ObjectInUseError
    print(driver.holder("Box", A))
    try:
        driver.open("Box", A)
    except ObjectInUseError as exc:
        print("refused:", exc)
    contents = driver.inspect("Box", A)  # reading is fine
    print(contents.kv)
    try:
        driver.delete("Box", A)
    except ObjectInUseError as exc:
        print("refused:", exc)
    """
    seen = child(sqlite_driver.directory, code)
    lines = seen.stdout.splitlines()
    assert len(lines) == 4, seen.stderr
    assert lines[0] == str(os.getpid())
    assert lines[1].startswith("refused:") and f"pid {os.getpid()}" in lines[1]
    assert lines[2] == "[(b'k', b'v')]"
    assert lines[3].startswith("refused:")
    db.close()
    opened = child(sqlite_driver.directory, 'driver.open("Box", A).close(); print("opened")')
    assert opened.stdout.strip() == "opened", opened.stderr


# -- lazy creation, and what is stored -------------------------------------------------------------


def test_an_object_that_stores_nothing_leaves_nothing(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    assert db.kv_get(b"k") is None
    db.begin()
    db.kv_put([(b"k", b"v")])
    db.kv_delete([b"k"])
    db.commit()  # committed, and holds nothing
    assert files(driver) <= {LOCK_FILE}
    db.close()
    assert list(driver.objects()) == [] and driver.stored("Box", A) is None
    assert files(driver) <= {LOCK_FILE}
    db = driver.open("Box", A)
    db.begin()
    db.sql("CREATE TABLE t (x)", ())  # a table of the user's is something
    db.commit()
    if isinstance(driver, SqliteDriver):
        assert f"Box/{A}.sqlite" in files(driver)  # made by the commit
    assert [o.id for o in driver.objects()] == [str(A)]
    db.begin()
    db.delete_all()
    db.commit()
    db.close()
    assert list(driver.objects()) == []  # an object that holds nothing again is not listed


async def test_a_new_file_is_durable_with_its_first_sync(sqlite_driver: SqliteDriver) -> None:
    db = sqlite_driver.open("Box", A)
    commit = write(db, (b"k", b"v"))
    assert sqlite_driver.path_of("Box", A).exists()
    assert await Synced(db, commit).result() is None
    db.close()


def test_objects_lists_what_is_stored_by_class_then_id(driver: StorageDriver) -> None:
    unnamed = NamespaceKey("Other").new_unique()
    ids = sorted([A, B], key=str)
    for id in ids:
        store(driver, id, (b"k", b"v"))
    db = driver.open("Other", unnamed)
    db.begin()
    db.set_alarm(5)
    db.commit()
    db.close()
    listed = list(driver.objects())
    assert [(o.class_name, o.id, o.name) for o in listed] == [
        ("Box", str(ids[0]), ids[0].name),
        ("Box", str(ids[1]), ids[1].name),
        ("Other", str(unnamed), None),
    ]
    assert all(o.size > 0 for o in listed)
    assert [o.alarm_ms for o in listed] == [None, None, 5]
    assert [o.id for o in driver.objects("Other")] == [str(unnamed)]
    assert list(driver.objects("Nobody")) == []
    assert driver.stored("Box", str(A)) == listed[ids.index(A)]
    assert driver.stored("Box", KEY.from_name("c")) is None


# -- migrations ------------------------------------------------------------------------------------


def test_migrations_rename_and_delete_classes(driver: StorageDriver) -> None:
    assert driver.read_migrations() == MigrationRecord()
    store(driver, A, (b"k", b"v"))
    applied = [Migration("v1", new_classes=("Box",))]
    apply(driver, applied)
    applied.append(Migration("v2", renamed_classes=(("Box", "Crate"),)))
    assert apply(driver, applied) == {"Crate": "Box"}
    assert driver.read_migrations() == MigrationRecord(("v1", "v2"), {"Crate": "Box"})
    assert [(o.class_name, o.id, o.name) for o in driver.objects()] == [("Crate", str(A), "a")]
    db = driver.open("Crate", A)  # the same id: the class keeps its namespace
    assert db.kv_get(b"k") == b"v"
    with pytest.raises(MigrationError, match="cannot delete class 'Crate': .* open"):
        driver.delete_class("Crate")
    with pytest.raises(MigrationError, match="cannot rename class 'Crate' to 'Box': .* open"):
        driver.rename_class("Crate", "Box")
    db.close()
    driver.delete_class("Crate")
    assert list(driver.objects()) == []
    driver.delete_class("Crate")  # done already: nothing to do
    driver.rename_class("Gone", "Elsewhere")


def test_a_rename_onto_a_class_with_objects_is_refused(driver: StorageDriver) -> None:
    store(driver, A, (b"k", b"box"))
    db = driver.open("Crate", B)
    write(db, (b"k", b"crate"))
    db.close()
    with pytest.raises(MigrationError, match="cannot rename class 'Box' to 'Crate'"):
        driver.rename_class("Box", "Crate")
    assert read(driver, A, b"k") == b"box"


# -- the admin operations --------------------------------------------------------------------------


def test_inspect_reads_keys_and_tables_with_row_counts(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    db.begin()
    db.kv_put([(b"b", encode(2)), (b"a", encode({"x": 1}))])
    db.sql("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2); CREATE TABLE empty (y)", ())
    db.sql("CREATE VIEW v AS SELECT x FROM t", ())
    db.commit()
    db.close()
    contents = driver.inspect("Box", A)
    assert contents is not None
    assert contents.object == driver.stored("Box", A)
    assert [(k, decode(v)) for k, v in contents.kv] == [(b"a", {"x": 1}), (b"b", 2)]
    assert contents.tables == {"empty": 0, "t": 2}
    assert driver.inspect("Box", B) is None


def test_query_reads_and_refuses_to_write(driver: StorageDriver) -> None:
    db = driver.open("Box", A)
    db.begin()
    db.kv_put([(b"k", encode(1))])
    db.sql("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3)", ())
    db.commit()
    db.close()
    result = driver.query("Box", A, "SELECT x FROM t ORDER BY x DESC", 2)
    assert result == QueryResult(["x"], [(3,), (2,)], True)
    assert driver.query("Box", A, "SELECT count(*) FROM _opendo_kv", 10) == QueryResult(
        ["count(*)"], [(1,)], False
    )
    with pytest.raises(SqlError, match="only queries that read are allowed"):
        driver.query("Box", A, "DELETE FROM t", 10)
    assert driver.query("Box", A, "SELECT count(*) AS n FROM t", 10) == QueryResult(
        ["n"], [(3,)], False
    )
    assert driver.query("Box", B, "SELECT 1", 10) is None


def test_export_then_import_as_another_object(driver: StorageDriver, tmp_path: Path) -> None:
    db = driver.open("Box", A)
    db.begin()
    db.kv_put([(b"k", b"v")])
    db.sql("CREATE TABLE t (x); INSERT INTO t VALUES ('row')", ())
    db.set_alarm(77)
    db.commit()
    db.close()
    dump = tmp_path / "a.sqlite"
    driver.export_to("Box", A, dump)
    with sqlite3.connect(dump) as plain:  # a plain SQLite file
        assert plain.execute("SELECT x FROM t").fetchall() == [("row",)]
    with pytest.raises(StorageError, match="exists"):
        driver.export_to("Box", A, dump)
    with pytest.raises(StorageError, match="nothing stored"):
        driver.export_to("Box", B, tmp_path / "b.sqlite")

    where = driver.import_from("Box", B, "b", dump)
    assert where
    copy = driver.stored("Box", B)
    assert copy is not None and (copy.name, copy.alarm_ms) == ("b", 77)
    contents = driver.inspect("Box", B)
    assert contents is not None and contents.kv == [(b"k", b"v")] and contents.tables == {"t": 1}
    with pytest.raises(StorageError, match="replaced only when asked"):
        driver.import_from("Box", B, "b", dump)
    driver.import_from("Box", B, None, dump, replace=True)
    replaced = driver.stored("Box", B)
    assert replaced is not None and replaced.name is None
    assert read(driver, B, b"k") == b"v"  # it serves its data

    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as plain:
        plain.execute("CREATE TABLE t (x)")
    with pytest.raises(StorageError, match="not an opendo object export"):
        driver.import_from("Box", KEY.from_name("c"), "c", foreign)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StorageError, match="not an opendo object export"):
        driver.import_from("Box", KEY.from_name("c"), "c", garbage)
    assert driver.stored("Box", KEY.from_name("c")) is None


def test_import_and_delete_are_refused_while_the_object_is_open(
    driver: StorageDriver, tmp_path: Path
) -> None:
    store(driver, A, (b"k", b"v"))
    dump = tmp_path / "a.sqlite"
    driver.export_to("Box", A, dump)
    db = driver.open("Box", A)
    assert driver.holder("Box", A) == os.getpid()
    with pytest.raises(ObjectInUseError):
        driver.delete("Box", A)
    with pytest.raises(ObjectInUseError):
        driver.import_from("Box", A, "a", dump, replace=True)
    db.close()
    assert driver.holder("Box", A) is None
    assert driver.delete("Box", A) is True
    assert driver.stored("Box", A) is None and list(driver.objects()) == []
    assert driver.delete("Box", A) is False
    assert read(driver, A, b"k") is None  # deleted: a new object starts empty
