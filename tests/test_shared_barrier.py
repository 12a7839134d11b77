"""The SQLite driver's shared barrier (``OPENDO_SHARED_BARRIER``): a round of many databases
is made durable by one ``syncfs()`` of their filesystem instead of an fsync each
(storage/rounds.py, "Shared barrier"); off by default, the last test shows.

Real files in a temporary directory. The barrier is held or failed at its boundary, the
module's ``syncfs`` function, which the tests wrap; which files were fsynced one by one is read
from the descriptors ``os.fsync`` was given (``/proc/self/fd``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from opendo import SqliteDriver
from opendo.core.errors import StorageUnavailableError
from opendo.core.ids import NamespaceKey
from opendo.storage import rounds

pytestmark = pytest.mark.skipif(rounds.syncfs is None, reason="syncfs() is Linux's")

KEY = NamespaceKey("Box")
WITHIN = 10.0
BARRIER_FROM = 4  # OPENDO_SHARED_BARRIER=4, set for every test here
MANY = BARRIER_FROM + 2  # the rounds: 1 database, 1 database, then the others


@pytest.fixture(autouse=True)
def shared_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rounds, "SHARED_BARRIER_FROM", BARRIER_FROM)


class Recorder:
    """Wraps ``syncfs`` and ``os.fsync``: what each was called for; ``hold()`` makes the
    barrier wait, ``error`` makes it fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.barriers: list[str] = []  # the file each syncfs() was given a descriptor of
        self.fsynced: list[str] = []
        self.error: OSError | None = None
        self.started = threading.Event()
        self._open = threading.Event()
        self._open.set()
        real_syncfs, real_fsync = rounds.syncfs, os.fsync
        assert real_syncfs is not None

        def syncfs(fd: int) -> None:
            self.barriers.append(os.readlink(f"/proc/self/fd/{fd}"))
            self.started.set()
            if not self._open.wait(WITHIN):
                raise TimeoutError("the test never released the barrier")
            if self.error is not None:
                raise self.error
            real_syncfs(fd)

        def fsync(fd: int) -> None:
            self.fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        monkeypatch.setattr(rounds, "syncfs", syncfs)
        monkeypatch.setattr(os, "fsync", fsync)

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()


def commit(db: Any, value: bytes) -> asyncio.Future[BaseException | None]:
    """Put ``k = value`` in one transaction and ask for it to be durable: the answer."""
    db.begin()
    db.kv_put([(b"k", value)])
    number = db.commit()
    answer: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    db.sync(number, lambda error: answer.done() or answer.set_result(error))
    return answer


async def test_a_round_of_many_databases_is_made_durable_by_one_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch)
    recorder.hold()
    driver = SqliteDriver(tmp_path)
    ids = [KEY.from_name(f"box-{i}") for i in range(MANY)]
    databases = [driver.open("Box", id) for id in ids]
    answers = [commit(db, f"v{i}".encode()) for i, db in enumerate(databases)]
    # The first two rounds start at once, a database each (an fsync each: under the
    # threshold); the others wait for one of them and form the third.
    assert await asyncio.to_thread(recorder.started.wait, WITHIN), "no syncfs() began"
    assert await asyncio.wait_for(asyncio.gather(*answers[:2]), WITHIN) == [None, None]
    assert not any(answer.done() for answer in answers[2:]), "answered before the barrier"
    recorder.release()
    assert await asyncio.wait_for(asyncio.gather(*answers[2:]), WITHIN) == [None] * (MANY - 2)

    assert len(recorder.barriers) == 1, recorder.barriers  # one filesystem: one syncfs()
    by_hand = {Path(path).name for path in recorder.fsynced}
    for i, id in enumerate(ids):
        wal = f"{driver.path_of('Box', id).name}-wal"
        assert (wal in by_hand) == (i < 2), (i, sorted(by_hand))
    for db in databases:
        db.close()
    await driver.aclose()
    again = SqliteDriver(tmp_path)
    for i, id in enumerate(ids):
        db = again.open("Box", id)
        assert db.kv_get(b"k") == f"v{i}".encode()
        db.close()
    await again.aclose()


async def test_a_failed_barrier_fails_every_database_of_its_round_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch)
    recorder.error = OSError(errno.EIO, "Input/output error")
    driver = SqliteDriver(tmp_path)
    ids = [KEY.from_name(f"box-{i}") for i in range(MANY)]
    databases = [driver.open("Box", id) for id in ids]
    answers = [commit(db, b"v") for db in databases]
    results = await asyncio.wait_for(asyncio.gather(*answers), WITHIN)
    assert results[:2] == [None, None]
    for error in results[2:]:
        assert isinstance(error, OSError) and error.errno == errno.EIO
    with pytest.raises(StorageUnavailableError, match="failed to sync to disk"):
        databases[-1].kv_get(b"k")  # what it committed may be lost: not read again
    assert databases[0].kv_get(b"k") == b"v"
    for db in databases:
        db.close()
    with pytest.raises(StorageUnavailableError, match=r"Box\(.*\) failed to sync to disk"):
        driver.open("Box", ids[-1])
    recorder.error = None
    other = driver.open("Box", KEY.from_name("other"))  # other objects carry on
    assert await asyncio.wait_for(commit(other, b"o"), WITHIN) is None
    other.close()
    await driver.aclose()


async def test_without_opendo_shared_barrier_every_database_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rounds, "SHARED_BARRIER_FROM", 0)  # the default
    recorder = Recorder(monkeypatch)
    driver = SqliteDriver(tmp_path)
    databases = [driver.open("Box", KEY.from_name(f"box-{i}")) for i in range(MANY)]
    answers = [commit(db, b"v") for db in databases]
    assert await asyncio.wait_for(asyncio.gather(*answers), WITHIN) == [None] * MANY
    assert recorder.barriers == []
    for db in databases:
        db.close()
    await driver.aclose()
