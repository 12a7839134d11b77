"""Batches: commits at the end of a turn, and the output gate held until they are durable.

*Batches.* The first write of a turn (any ``put``/``delete``/``delete_all``, or any
``sql.exec``) opens a transaction in the object's database and schedules its commit for the
end of the turn (``loop.call_soon``). Every write until the event next really waits joins
that transaction, so writes made without an intervening await commit as one atomic batch.
Reads run in the same transaction, so they see the batch's writes at once.

*Output gate.* The first write that can change the database takes an ``OutputLock`` for the
batch. After the commit, the locks go to the database's durability barrier —
``sync(commit, done)`` — and are released when it answers that every commit up to this one
is durable. Responses and WebSocket messages sent after the write wait for that release; a
failed commit or sync fails the locks (held messages are dropped, callers get errors) and
resets the object.

*Group commit.* While a sync is in flight the object keeps running, and the batches that
complete meanwhile stay in the open transaction; when the sync returns they are committed
together and synced together. Under load, one commit and one sync serve many requests. (One
transaction holding several batches is still atomic per batch, and nothing of any of them is
released before all are durable.) How the syncs of many objects share the disk is the
driver's business (the SQLite driver's rounds).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..core.errors import StorageError, StorageUnavailableError
from ..core.gates import OutputLock
from ..core.storage import DatabaseError, ObjectDatabase, SqlError

if TYPE_CHECKING:
    from ..core.protocols import StorageOwner

__all__ = ["Batches", "storage_failed"]

log = logging.getLogger("opendo")


def storage_failed(host: StorageOwner, error: BaseException, could_not: str) -> StorageError:
    """What callers of a failed write are told (and the log says): that storage failed, why,
    and for which object. An error that already says so (fenced, unavailable) stays as it is."""
    if isinstance(error, StorageError) and not isinstance(error, DatabaseError | SqlError):
        return error
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
    else:
        reason = str(error) or type(error).__name__
    name = host.class_name
    return StorageError(
        f"storage failed: {reason} (a write of {name}({host.id}) could not be {could_not})"
    )


class Batches:
    """Commits batches at the end of a turn and makes them durable through the database's
    barrier."""

    __slots__ = (
        "db",
        "host",
        "batch_lock",
        "commit_scheduled",
        "depth",
        "pending",
        "syncing",
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
        self.syncing = False
        self.closed = False
        self.carry: OutputLock | None = None  # held on the next instance's gate, see close()

    def begin(self) -> None:
        self.db.begin()
        if not self.commit_scheduled:
            self.commit_scheduled = True
            asyncio.get_running_loop().call_soon(self.commit)

    def wrote(self) -> None:
        if self.batch_lock is None:
            self.batch_lock = self.host.output_gate.lock()

    def commit(self) -> None:
        """The end of a turn: the batch is complete. Commit it now, or — while a sync is
        running — with everything else that completes before that sync returns."""
        self.commit_scheduled = False
        if self.closed:
            return
        lock, self.batch_lock = self.batch_lock, None
        if lock is not None:
            self.pending.append(lock)
        if not self.depth and not self.syncing:
            self._commit_and_sync()

    def _commit_and_sync(self) -> None:
        try:
            commit = self.db.commit()
        except Exception as exc:
            self.fail(exc, "committed")
            return
        if not self.pending:
            return
        self.syncing = True
        locks, self.pending = self.pending, []
        self.db.sync(commit, lambda error: self._synced(error, locks))

    def _synced(self, error: BaseException | None, locks: list[OutputLock]) -> None:
        self.syncing = False
        if self.closed:
            # Closed while this sync ran: its writers still learn how it went, and so does
            # the next instance, which may have read what it made durable (or not).
            carry, self.carry = self.carry, None
            if error is None:
                for lock in (*locks, *([carry] if carry is not None else [])):
                    lock.release()
                return
            failure = storage_failed(self.host, error, "synced to disk")
            for lock in locks:
                lock.fail(failure)
            if carry is not None:
                carry.fail(failure)
                self.host.reset(f"an earlier write failed: {failure}", failure)
            return
        if error is not None:
            failure = storage_failed(self.host, error, "synced to disk")
            for lock in locks:
                lock.fail(failure)
            self.fail(failure)
            return
        for lock in locks:
            lock.release()
        if not self.depth and not self.commit_scheduled:
            self._commit_and_sync()  # the batches that completed meanwhile, in one commit

    def adopt(self, lock: OutputLock) -> None:
        """``lock`` stands for a write just made (queued earlier): release it with the batch."""
        if self.closed:
            lock.fail(StorageError("the object was reset before its write was durable"))
        else:
            self.pending.append(lock)

    def fail(self, error: BaseException, could_not: str = "committed") -> None:
        """A write did not make it: drop what waits on it (its callers get a StorageError
        that says so) and reset the object."""
        failure = storage_failed(self.host, error, could_not)
        log.error("%s", failure)
        for lock in (self.batch_lock, *self.pending):
            if lock is not None:
                lock.fail(failure)
        self.batch_lock = None
        self.pending = []
        if not self.closed:
            self.host.reset(str(failure), failure)

    def close(self) -> None:
        """Roll back what was not committed and close the database (which lets go of the
        object once a sync in flight returns)."""
        if self.closed:
            return
        self.closed = True
        db = self.db
        try:
            if db.in_transaction:
                db.rollback()
                self.host.alarm_changed(db.alarm())
        except StorageUnavailableError:
            pass  # its sync failed, which was said then; it is not read again
        except StorageError as exc:
            log.error("%s", storage_failed(self.host, exc, "rolled back"))
        reset = StorageError("the object was reset before its write was durable")
        for lock in (self.batch_lock, *self.pending):
            if lock is not None:
                lock.fail(reset)
        self.batch_lock = None
        self.pending = []
        if self.syncing and self.host.output_gate.broken is None:
            # The next instance's gate (a reset made it before closing): nothing it sends
            # leaves before the sync in flight returns. A broken gate (the object goes away,
            # and its waiting writes just failed on it) lets nothing leave anyway.
            self.carry = self.host.output_gate.lock()
        db.close()
