"""An object's storage in a cluster: a SQLite cache on its owner, replicated to PostgreSQL.

Theory of operation
-------------------

*The cache.* The owner of an object keeps its database as a SQLite file in the node's cache
directory (``ReplicatedDatabase``, the same ``SqliteDatabase`` the embedded driver uses, so
KV, SQL, transactions and the alarm behave exactly as they do there). The file is never
synced: it is rebuilt from PostgreSQL whenever it could disagree with it.

*Flushes.* After each commit the database reads the pages that commit appended to its
write-ahead log (``cluster.wal``) and keeps them, with the alarm and whether anything is
stored, as of that commit. ``sync`` hands the database to the node's ``Shipper``, which writes
the pages of every database waiting, in rounds, each one PostgreSQL statement (so one
transaction, and one round trip):

1. an ``UPDATE`` of the objects' rows that advances each one's ``seq`` only where this node
   owns it with the flush's epoch *and* the row is at the ``seq`` the cache was built from —
   the row locks it takes serialise the flush with any takeover (which updates the same
   row), and PostgreSQL re-checks the condition after waiting for one;
2. for exactly the rows it advanced: the log records (and snapshots), and the alarm rows;
3. its commit. Only then are the waiting writes durable, and the output gate opens.

An object whose row did not advance was taken over (or its claim lapsed): its flush fails with
``FencedError``, nothing of it was stored, and the object is reset; its next event claims it
again (and is forwarded to the new owner). A round that fails or runs out of time fails all
its flushes: their writes may or may not be in PostgreSQL, and were not acknowledged; the
objects reset and restore from what PostgreSQL has. Two rounds may run at once; a database
is in at most one.

*Snapshots.* When an object's log since its last snapshot has grown past the size of its
database (and at least ``SNAPSHOT_BYTES``), the next flush carries a snapshot: the whole
image, written with the same record number. A new owner restores the newest snapshot and the
log after it, so what it reads is bounded by about twice the database's size. The log and
older snapshots are kept for point-in-time recovery for ``retention`` seconds.

*Restoring.* ``ClusterStorages.open`` reads, in one repeatable-read transaction, the object's
row (checking that this node holds it with the activation's epoch), the newest snapshot at or
before the wanted record and the log after it, and writes the image into the cache. If the
object was asked to restore a bookmark (``on_next_session_restore_bookmark``), the wanted
record is the bookmark's, and the restored image is written back at once as a snapshot with
the next record number, so the log goes on from the restored state (and the old state stays
reachable by its bookmark).

*Bookmarks* name a record of the object's log: ``"%016x" % seq``, so they sort as the states
they name. The state at bookmark 0 is the empty database.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import StorageError
from ..core.ids import DurableObjectId
from ..core.metrics import METRICS
from ..core.protocols import StorageOwner, StoredAlarm
from ..core.storage import DatabaseError, Done, FencedError
from ..storage import Storage
from ..storage.database import SqliteDatabase, connect, holds_something, prepare
from . import pg
from .wal import Changes, WalReader, apply, decode, encode

if TYPE_CHECKING:
    from .lease import Lease

__all__ = [
    "SNAPSHOT_BYTES",
    "ClusterStorages",
    "ReplicatedDatabase",
    "Shipper",
    "bookmark",
    "parse_bookmark",
    "read_image",
]

log = logging.getLogger("opendo")

SNAPSHOT_BYTES = 256 * 1024  # log since the last snapshot before the next one, at least
CHECKPOINT_FRAMES = 1000  # the cache's write-ahead log is checkpointed past this many frames
_LANES = 2  # rounds in flight at once
_BIG = 64 * 1024  # changes past this size are compressed on a thread

Key = tuple[str, str]  # class name, id (64 hex digits)


def bookmark(seq: int) -> str:
    return f"{seq:016x}"


def parse_bookmark(value: object, method: str) -> int:
    if isinstance(value, str) and len(value) == 16:
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise StorageError(
        f"storage.{method}(): {value!r} is not a bookmark (bookmarks are 16 hexadecimal "
        "digits, as get_current_bookmark() and get_bookmark_for_time() return them)"
    )


# -- reading an image from PostgreSQL ---------------------------------------------------------

_SNAPSHOT_AT = """
SELECT seq, data FROM opendo_snapshot WHERE ns = $1 AND id = $2 AND seq <= $3
ORDER BY seq DESC LIMIT 1
"""
_LOG_AFTER = """
SELECT seq, data FROM opendo_log WHERE ns = $1 AND id = $2 AND seq > $3 AND seq <= $4
ORDER BY seq
"""


async def read_image(conn: Any, class_name: str, id: str, seq: int) -> bytearray:
    """The object's database as it was after log record ``seq`` (empty for 0)."""
    image = bytearray()
    base = 0
    if seq > 0:
        snapshot = await conn.fetchrow(_SNAPSHOT_AT, class_name, id, seq)
        if snapshot is not None:
            base = int(snapshot["seq"])
            image = bytearray(zlib.decompress(snapshot["data"]))
        expected = base + 1
        for row in await conn.fetch(_LOG_AFTER, class_name, id, base, seq):
            if int(row["seq"]) != expected:
                break
            apply(image, decode(row["data"]))
            expected += 1
        if expected != seq + 1:
            raise StorageError(
                f"{class_name}({id}) cannot be restored to record {seq}: the log from record "
                f"{expected} on is no longer kept (older than the retention period?)"
            )
    return image


# -- the cache database -----------------------------------------------------------------------


class ReplicatedDatabase(SqliteDatabase):
    """One object's cache file, for one activation with ``epoch`` (see the module's essay)."""

    def __init__(
        self,
        storages: ClusterStorages,
        path: Path,
        class_name: str,
        id: str,
        name: str | None,
        epoch: int,
        seq: int,
    ) -> None:
        conn = connect(str(path), cache=True)
        try:
            prepare(conn, name)
        except BaseException:
            conn.close()
            raise
        super().__init__(conn, epoch, f"{class_name}({id})")
        self.storages = storages
        self.lease = storages.lease
        self.key: Key = (class_name, id)
        self.name = name
        self.path = path
        self.seq = seq  # the last log record in PostgreSQL this cache holds
        self.reader = WalReader(path)
        self.unshipped = Changes()  # committed here, not yet in PostgreSQL
        self.stored_alarm = self.alarm()  # as of the last commit
        self.shipped_alarm = self.stored_alarm  # as opendo_alarm has it
        self.stored = holds_something(conn)
        self.want_snapshot = False
        self.durable = 0
        self.waiting: list[tuple[int, Done]] = []
        self.in_round = False
        self.release_epoch: int | None = None  # released while a flush was still to come
        self.gone = asyncio.Event()  # let go of: the next activation may open the object

    # -- the fence, locally ---------------------------------------------------------------------

    def check_live(self) -> None:
        if not self.lease.alive():
            raise FencedError(
                f"the storage of {self.label} refused a call: this node's lease may have "
                "lapsed, so another node may own the object now"
            )

    def check_epoch(self) -> None:
        self.check_live()

    def committed(self) -> None:
        changes = self.reader.read()
        if changes:
            self.unshipped.add(changes)
        conn = self.connection
        self.stored_alarm = self.alarm()
        self.stored = holds_something(conn)
        if self.reader.frames >= CHECKPOINT_FRAMES:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- the barrier ----------------------------------------------------------------------------

    def sync(self, commit: int, done: Done) -> None:
        loop = asyncio.get_running_loop()
        if self.broken is not None:
            loop.call_soon(done, self.broken)
        elif commit <= self.durable:
            loop.call_soon(done, None)
        else:
            self.waiting.append((commit, done))
            if not self.in_round:
                self.storages.shipper.add(self)

    def take(self) -> Flush:
        """What the round starting now ships of this database."""
        changes, self.unshipped = self.unshipped, Changes()
        snapshot = None
        if changes and self.want_snapshot and not self.in_transaction:
            snapshot = self.connection.serialize()
        return Flush(self, self.commits, changes, snapshot)

    def round_done(self, flush: Flush, error: BaseException | None) -> None:
        self.in_round = False
        if error is None:
            self.durable = max(self.durable, flush.target)
            ready = [done for commit, done in self.waiting if commit <= flush.target]
            self.waiting = [(c, d) for c, d in self.waiting if c > flush.target]
        else:
            if self.broken is None:
                self.broken = (
                    error if isinstance(error, StorageError) else DatabaseError(str(error))
                )
            ready = [done for _, done in self.waiting]
            self.waiting = []
        if self.waiting:
            self.storages.shipper.add(self)
        elif self._closed:
            self._let_go()
        for done in ready:
            done(error)

    # -- point-in-time recovery -----------------------------------------------------------------

    def current_bookmark(self) -> str:
        return bookmark(self.seq)

    async def bookmark_for_time(self, time_ms: int) -> str:
        return await self.storages.bookmark_for_time(self, time_ms)

    async def restore_on_next_session(self, bookmark: str) -> str:
        return await self.storages.restore_on_next_session(self, bookmark)

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self.unshipped and self.broken is None and not self.in_round:
            # Committed but asked for by nobody: it goes to PostgreSQL all the same.
            self.sync(self.commits, lambda error: None)
        if not self.in_round:
            self._let_go()

    def _let_go(self) -> None:
        if self.gone.is_set():
            return
        self.reader.close()
        self.connection.close()
        for file in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            file.unlink(missing_ok=True)
        self.gone.set()
        self.storages.let_go(self)


class Flush:
    """One database's part of a round."""

    __slots__ = (
        "db",
        "target",
        "changes",
        "snapshot",
        "alarm",
        "stored",
        "size",
        "data",
        "compressed_snapshot",
    )

    def __init__(
        self, db: ReplicatedDatabase, target: int, changes: Changes, snapshot: bytes | None
    ) -> None:
        self.db = db
        self.target = target  # the commit it makes durable
        self.changes = changes
        self.snapshot = snapshot
        self.alarm = db.stored_alarm
        self.stored = db.stored
        self.size = changes.size * changes.page_size
        self.data = b""
        self.compressed_snapshot: bytes | None = None

    def encode(self) -> None:
        """Compress what this flush ships (on a thread, when it is big)."""
        self.data = encode(self.changes)
        if self.snapshot is not None:
            self.compressed_snapshot = zlib.compress(self.snapshot, 1)


# -- rounds ---------------------------------------------------------------------------------------

# One statement — one implicit transaction, one round trip — for a whole round: the fence (the
# UPDATE, which locks each row it advances), and for exactly the rows it advanced, the log
# records, the snapshots and the alarm rows.
_FLUSH = """
WITH i AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::boolean[], $7::bytea[], $8::bytea[], $9::smallint[],
                         $10::bigint[], $11::text[])
        AS t(ns, id, epoch, seq, size, stored, data, snapshot, alarm, alarm_ms, name)
), fenced AS (
    UPDATE opendo_object AS o SET
        seq = o.seq + 1,
        size = i.size,
        stored = i.stored,
        log_bytes = CASE WHEN i.snapshot IS NULL THEN o.log_bytes + length(i.data) ELSE 0 END,
        snapshot_seq = CASE WHEN i.snapshot IS NULL THEN o.snapshot_seq ELSE o.seq + 1 END
    FROM i
    WHERE o.ns = i.ns AND o.id = i.id AND o.node_id = $12 AND o.epoch = i.epoch
      AND o.seq = i.seq
    RETURNING o.ns, o.id, o.seq, o.log_bytes
), logged AS (
    INSERT INTO opendo_log (ns, id, seq, data)
    SELECT f.ns, f.id, f.seq, i.data FROM fenced f JOIN i ON i.ns = f.ns AND i.id = f.id
), snapshots AS (
    INSERT INTO opendo_snapshot (ns, id, seq, data)
    SELECT f.ns, f.id, f.seq, i.snapshot FROM fenced f JOIN i ON i.ns = f.ns AND i.id = f.id
    WHERE i.snapshot IS NOT NULL
), alarms_set AS (
    INSERT INTO opendo_alarm AS a (ns, id, name, time_ms)
    SELECT f.ns, f.id, i.name, i.alarm_ms FROM fenced f JOIN i ON i.ns = f.ns AND i.id = f.id
    WHERE i.alarm = 1
    ON CONFLICT (ns, id) DO UPDATE SET time_ms = excluded.time_ms, picked_until = NULL
), alarms_cleared AS (
    DELETE FROM opendo_alarm AS a USING fenced f JOIN i ON i.ns = f.ns AND i.id = f.id
    WHERE i.alarm = 2 AND a.ns = f.ns AND a.id = f.id
)
SELECT ns, id, seq, log_bytes FROM fenced
"""
_ALARM_KEPT, _ALARM_SET, _ALARM_CLEARED = 0, 1, 2
_SNAPSHOT = """
INSERT INTO opendo_snapshot (ns, id, seq, data)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[])
"""
_SET_ALARMS = """
INSERT INTO opendo_alarm AS a (ns, id, name, time_ms)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
ON CONFLICT (ns, id) DO UPDATE SET time_ms = excluded.time_ms, picked_until = NULL
"""
_DELETE_ALARMS = """
DELETE FROM opendo_alarm AS a USING unnest($1::text[], $2::text[]) AS d(ns, id)
WHERE a.ns = d.ns AND a.id = d.id
"""
_RELEASE = """
UPDATE opendo_object AS o SET node_id = NULL
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(ns, id, epoch)
WHERE o.ns = r.ns AND o.id = r.id AND o.epoch = r.epoch AND o.node_id = $4
"""


class Shipper:
    """Writes the flushes of a node's databases to PostgreSQL in rounds (see the essay)."""

    def __init__(self, lease: Lease, timeout: float) -> None:
        self.lease = lease
        self.timeout = timeout
        self.waiting: list[ReplicatedDatabase] = []
        self.releases: list[tuple[str, str, int]] = []
        self.running = 0
        self.rounds = 0
        self.bytes = 0  # log bytes written
        self.open: dict[Key, ReplicatedDatabase] = {}  # not let go of yet
        self._tasks: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def add(self, db: ReplicatedDatabase) -> None:
        db.in_round = True
        self.waiting.append(db)
        self._next()

    def release(self, class_name: str, id: str, epoch: int) -> None:
        db = self.open.get((class_name, id))
        if db is not None and db.epoch == epoch:
            db.release_epoch = epoch  # once its last flush is in
            return
        self.releases.append((class_name, id, epoch))
        self._next()

    def _next(self) -> None:
        if self.running < _LANES and (self.waiting or self.releases):
            self.running += 1
            self.idle.clear()
            task = asyncio.get_running_loop().create_task(self._round())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _round(self) -> None:
        batch, self.waiting = self.waiting, []
        releases, self.releases = self.releases, []
        flushes = [db.take() for db in batch]
        shipping = [f for f in flushes if f.changes]
        written: dict[Key, int] = {}
        error: BaseException | None = None
        started = time.monotonic()
        try:
            for f in shipping:
                if f.changes.nbytes > _BIG or f.snapshot is not None:
                    await asyncio.to_thread(f.encode)
                else:
                    f.encode()
            if shipping or releases:
                written = await self._write(shipping, releases)
        except Exception as exc:
            error = DatabaseError(
                f"could not be written to PostgreSQL ({pg.describe(exc)}); it may or may not "
                "have been stored"
            )
            log.error("a flush of %d objects failed: %s", len(shipping), error)
        finally:
            self.running -= 1
            self.rounds += 1
            if shipping:
                METRICS.flush_seconds.observe(time.monotonic() - started, "postgresql")
                METRICS.flushed_objects.inc("postgresql", amount=len(shipping))
        for f in flushes:
            db = f.db
            if error is not None and f.changes:
                db.round_done(f, error)
            elif not f.changes:
                db.round_done(f, None)
            elif (seq := written.get(db.key)) is None:
                db.round_done(
                    f,
                    FencedError(
                        f"the storage of {db.label} refused a commit: another node owns the "
                        "object now (or this node's claim on it lapsed); nothing of it was "
                        "stored"
                    ),
                )
            else:
                db.seq = seq
                db.shipped_alarm = f.alarm
                if f.snapshot is not None:
                    db.want_snapshot = False
                db.round_done(f, None)
        self._next()
        if not self.running and not self.waiting and not self.releases:
            self.idle.set()

    async def _write(
        self, flushes: list[Flush], releases: list[tuple[str, str, int]]
    ) -> dict[Key, int]:
        me = self.lease.node_id
        written: dict[Key, int] = {}
        async with pg.connection(self.lease.pool, self.timeout) as conn:
            if flushes:
                rows = await conn.fetch(
                    _FLUSH,
                    [f.db.key[0] for f in flushes],
                    [f.db.key[1] for f in flushes],
                    [f.db.epoch for f in flushes],
                    [f.db.seq for f in flushes],
                    [f.size for f in flushes],
                    [f.stored for f in flushes],
                    [f.data for f in flushes],
                    [f.compressed_snapshot for f in flushes],
                    [_alarm_change(f.alarm, f.db.shipped_alarm) for f in flushes],
                    [f.alarm for f in flushes],
                    [f.db.name for f in flushes],
                    me,
                )
                sizes = {f.db.key: f.size for f in flushes}
                for row in rows:
                    key = (row["ns"], row["id"])
                    written[key] = int(row["seq"])
                    db = self.open.get(key)
                    if db is not None:
                        db.want_snapshot = int(row["log_bytes"]) > max(SNAPSHOT_BYTES, sizes[key])
            if releases:  # after the flushes: what they wrote is in before the object is free
                await conn.execute(
                    _RELEASE,
                    [r[0] for r in releases],
                    [r[1] for r in releases],
                    [r[2] for r in releases],
                    me,
                )
        self.bytes += sum(len(f.data) for f in flushes)
        return written

    async def drain(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until no flush or release is left to write."""
        try:
            async with asyncio.timeout(seconds):
                while not self.idle.is_set():
                    await self.idle.wait()
        except TimeoutError:
            log.warning("flushes still running after %g s at shutdown", seconds)


def _alarm_change(now: int | None, shipped: int | None) -> int:
    if now == shipped:
        return _ALARM_KEPT
    return _ALARM_CLEARED if now is None else _ALARM_SET


async def write_alarms(
    conn: Any, alarms: list[tuple[Key, str | None, int | None, int | None]]
) -> None:
    """Mirror the alarms that changed (key, name, now, as opendo_alarm has it)."""
    setting = [
        (k, name, now) for k, name, now, before in alarms if now is not None and now != before
    ]
    clearing = [k for k, _, now, before in alarms if now is None and before is not None]
    if setting:
        await conn.execute(
            _SET_ALARMS,
            [k[0] for k, _, _ in setting],
            [k[1] for k, _, _ in setting],
            [name for _, name, _ in setting],
            [now for _, _, now in setting],
        )
    if clearing:
        await conn.execute(_DELETE_ALARMS, [k[0] for k in clearing], [k[1] for k in clearing])


# -- the provider ---------------------------------------------------------------------------------

_ROW = """
SELECT node_id, epoch, seq, restore_seq FROM opendo_object WHERE ns = $1 AND id = $2
"""
_RESTORED = """
UPDATE opendo_object SET seq = seq + 1, snapshot_seq = seq + 1, log_bytes = 0,
    restore_seq = NULL, size = $5, stored = $6
WHERE ns = $1 AND id = $2 AND node_id = $3 AND epoch = $4 RETURNING seq
"""
_ASK_RESTORE = """
UPDATE opendo_object SET restore_seq = $5
WHERE ns = $1 AND id = $2 AND node_id = $3 AND epoch = $4 AND seq = $6 RETURNING seq
"""
_SEQ_AT = """
SELECT max(seq) FROM opendo_log WHERE ns = $1 AND id = $2
AND at <= to_timestamp($3::double precision / 1000)
"""
_HISTORY = "SELECT history_from FROM opendo_object WHERE ns = $1 AND id = $2"


class ClusterStorages:
    """Objects' storage on a cluster node (``core.protocols.StorageProvider``)."""

    def __init__(self, lease: Lease, cache: Path, timeout: float) -> None:
        self.lease = lease
        self.cache = cache
        self.timeout = timeout
        self.shipper = Shipper(lease, timeout)
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        self.opened = 0
        self.restored_bytes = 0

    async def open(
        self, owner: StorageOwner, class_name: str, id: DurableObjectId, epoch: int
    ) -> Storage:
        key = (class_name, str(id))
        earlier = self.shipper.open.get(key)
        if earlier is not None:  # its last flush is still going: it decides what we read
            async with asyncio.timeout(self.timeout):
                await earlier.gone.wait()
        me = self.lease.node_id
        try:
            async with pg.connection(self.lease.pool, self.timeout) as conn:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    row = await conn.fetchrow(_ROW, class_name, str(id))
                    if row is None or row["node_id"] != me or row["epoch"] != epoch:
                        raise FencedError(
                            f"the storage of {class_name}({id}) cannot be opened: this node "
                            "no longer holds the object"
                        )
                    wanted = row["restore_seq"]
                    seq = int(row["seq"])
                    image = await read_image(
                        conn, class_name, str(id), seq if wanted is None else int(wanted)
                    )
        except StorageError:
            raise
        except Exception as exc:
            raise DatabaseError(
                f"the storage of {class_name}({id}) cannot be read from PostgreSQL: "
                f"{pg.describe(exc)}"
            ) from exc
        path = self.cache / class_name / f"{id}.sqlite"
        path.parent.mkdir(exist_ok=True)
        for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            file.unlink(missing_ok=True)
        if image:
            await asyncio.to_thread(_write_file, path, image)
        self.restored_bytes += len(image)
        db = ReplicatedDatabase(self, path, class_name, str(id), id.name, epoch, seq)
        self.shipper.open[key] = db
        try:
            if wanted is not None:
                await self._restored(db)
        except BaseException:
            db.close()
            raise
        self.opened += 1
        storage = Storage(owner, db)
        if db.stored_alarm is not None:
            owner.alarm_changed(db.stored_alarm)
        return storage

    async def _restored(self, db: ReplicatedDatabase) -> None:
        """The image restored from a bookmark becomes the object's state: a snapshot with the
        next record number, fenced like any flush."""
        db.reader.read()  # what prepare() wrote is in the image below
        image = db.connection.serialize()
        size = len(image)
        alarm = db.alarm()
        class_name, id = db.key
        async with pg.connection(self.lease.pool, self.timeout) as conn:
            async with conn.transaction():
                seq = await conn.fetchval(
                    _RESTORED, class_name, id, self.lease.node_id, db.epoch, size, db.stored
                )
                if seq is None:
                    raise FencedError(
                        f"the storage of {db.label} cannot be restored: this node no longer "
                        "holds the object"
                    )
                await conn.execute(
                    _SNAPSHOT, [class_name], [id], [int(seq)], [zlib.compress(image, 1)]
                )
                before = await conn.fetchval(
                    "SELECT time_ms FROM opendo_alarm WHERE ns = $1 AND id = $2", class_name, id
                )
                await write_alarms(conn, [(db.key, db.name, alarm, before)])
        db.seq = int(seq)
        db.shipped_alarm = alarm
        log.info("%s restored from a bookmark, now at record %d", db.label, seq)

    def let_go(self, db: ReplicatedDatabase) -> None:
        if self.shipper.open.get(db.key) is db:
            del self.shipper.open[db.key]
        if db.release_epoch is not None:
            self.shipper.release(db.key[0], db.key[1], db.release_epoch)

    async def aclose(self) -> None:
        """Nothing here: the node's ``aclose`` drains the shipper, before the runtime's ends."""

    def scan_alarms(self) -> Iterator[StoredAlarm]:
        return iter(())  # the alarm poller picks alarms from PostgreSQL

    # -- point-in-time recovery ------------------------------------------------------------------

    async def bookmark_for_time(self, db: ReplicatedDatabase, time_ms: int) -> str:
        class_name, id = db.key
        async with pg.connection(self.lease.pool, self.timeout) as conn:
            seq = await conn.fetchval(_SEQ_AT, class_name, id, time_ms)
            kept = await conn.fetchval(_HISTORY, class_name, id)
        seq = min(int(seq or 0), db.seq)
        if kept is not None and seq < kept:
            raise StorageError(
                f"storage.get_bookmark_for_time(): {_when(time_ms)} is older than the history "
                f"kept of {db.label} (the retention period)"
            )
        return bookmark(seq)

    async def restore_on_next_session(self, db: ReplicatedDatabase, value: str) -> str:
        seq = parse_bookmark(value, "on_next_session_restore_bookmark")
        if seq > db.seq:
            raise StorageError(
                f"storage.on_next_session_restore_bookmark(): {value!r} is later than the "
                f"current state of {db.label} ({bookmark(db.seq)})"
            )
        class_name, id = db.key
        async with pg.connection(self.lease.pool, self.timeout) as conn:
            async with conn.transaction(isolation="repeatable_read"):
                await read_image(conn, class_name, id, seq)  # it can be restored
                done = await conn.fetchval(
                    _ASK_RESTORE, class_name, id, self.lease.node_id, db.epoch, seq, db.seq
                )
        if done is None:
            raise FencedError(
                f"the storage of {db.label} refused the restore: this node no longer holds "
                "the object"
            )
        return bookmark(db.seq)

    def statistics(self) -> dict[str, Any]:
        shipper = self.shipper
        return {
            "open": len(shipper.open),
            "rounds": shipper.rounds,
            "log_bytes": shipper.bytes,
            "opened": self.opened,
            "restored_bytes": self.restored_bytes,
        }


def _write_file(path: Path, image: bytearray) -> None:
    with open(path, "wb") as f:
        f.write(image)


def _when(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000).isoformat(timespec="milliseconds")
