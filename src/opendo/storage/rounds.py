"""Sync rounds: how the SQLite driver makes commits durable, off the event loop.

*Sync rounds.* ``sync(commit, done)`` of every database of an event loop goes to one
``Rounds``: it fsyncs every database waiting, in one job on a thread of its own (each
database's ``flush()``: an fsync of its WAL file, and — for a new file — of the file and its
directories), then answers them all; the databases that ask meanwhile form the next round.
A round covers the commits each of its databases had made when it started; a database whose
waiters asked for later commits goes into the next round. Two rounds may run at once, so a
quiet object waits for no queue, and under load one thread handoff serves many objects.

*Shared barrier* (off unless ``OPENDO_SHARED_BARRIER=N`` is in the environment). An fsync
per database makes writes spread over many objects cost more than writes to one. With it, a
round of ``N`` databases or more (on Linux) fsyncs none of them: it ends with one ``syncfs()``
of each filesystem they are on, which writes every file of that filesystem with what it holds
(their directories included) and flushes the disk's cache (and, since Linux 5.8, reports a
write that failed since the last one). An error fails every database of the round on that
filesystem. It also writes what every other program left unwritten on that filesystem, and
makes them wait for it, so it is for a persist directory on a filesystem of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..core.metrics import METRICS

LANES = 2  # sync rounds in flight at once
# Databases in a round from which one syncfs() replaces their fsyncs: off (0) unless the
# environment's OPENDO_SHARED_BARRIER says (see "Shared barrier" above).
SHARED_BARRIER_FROM = int(os.environ.get("OPENDO_SHARED_BARRIER") or 0)


class Syncable(Protocol):
    """What a round needs of a database (storage.sqlite's ``FileDatabase``)."""

    in_round: bool
    commits: int

    def flush(self) -> None: ...

    def round_done(self, target: int, error: BaseException | None) -> None: ...


class Rounds:
    """Syncs the databases of one event loop in rounds: see "Sync rounds" above."""

    __slots__ = ("loop", "waiting", "running")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: list[Syncable] = []
        self.running = 0

    def add(self, db: Syncable) -> None:
        db.in_round = True
        self.waiting.append(db)
        if self.running < LANES:
            self._round()

    def _round(self) -> None:
        batch, self.waiting = self.waiting, []
        targets = [db.commits for db in batch]
        self.running += 1
        started = time.monotonic()
        future = self.loop.run_in_executor(sync_threads(), flush_all, batch)
        future.add_done_callback(lambda f: self._finished(f, batch, targets, started))

    def _finished(
        self,
        future: asyncio.Future[list[BaseException | None]],
        batch: list[Syncable],
        targets: list[int],
        started: float,
    ) -> None:
        self.running -= 1
        METRICS.flush_seconds.observe(time.monotonic() - started, "sqlite")
        METRICS.flushed_objects.inc("sqlite", amount=len(batch))
        if future.cancelled():
            errors: list[BaseException | None] = [asyncio.CancelledError()] * len(batch)
        elif (failure := future.exception()) is not None:
            errors = [failure] * len(batch)
        else:
            errors = future.result()
        for db, target, error in zip(batch, targets, errors, strict=True):
            db.round_done(target, error)
        if self.waiting and self.running < LANES:
            self._round()


def flush_all(databases: list[Syncable]) -> list[BaseException | None]:
    """One round, in a sync thread: each database's ``flush()``, then each directory of a new
    one once — or, for a round of ``SHARED_BARRIER_FROM`` databases or more, one ``syncfs()``
    per filesystem they are on; how it went for each database."""
    errors: list[BaseException | None] = []
    needs: list[tuple[set[Path], set[int]]] = []  # the directories, filesystems each waits for
    barrier: dict[int, int] | None = None  # filesystem: a descriptor of a file on it
    if syncfs is not None and SHARED_BARRIER_FROM and len(databases) >= SHARED_BARRIER_FROM:
        barrier = {}
    for db in databases:
        directories: set[Path] = set()
        devices: set[int] = set()
        current.directories, current.devices, current.barrier = directories, devices, barrier
        try:
            db.flush()
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
        finally:
            current.directories = current.devices = current.barrier = None
        needs.append((directories, devices))
    failed: dict[Path | int, BaseException] = {}
    for device, fd in (barrier or {}).items():
        try:
            syncfs(fd)  # type: ignore[misc]  # not None when there is a barrier
        except Exception as exc:
            failed[device] = exc
    everything: set[Path] = set().union(*(directories for directories, _ in needs))
    for directory in sorted(everything, key=lambda d: len(d.parts), reverse=True):
        try:
            fsync_dir(directory)  # a class directory before the persist directory holding it
        except Exception as exc:
            failed[directory] = exc
    if failed:
        for i, (directories, devices) in enumerate(needs):
            for what in (*devices, *directories):
                if errors[i] is None and what in failed:
                    errors[i] = failed[what]
    return errors


def _find_syncfs() -> Callable[[int], None] | None:
    """Linux's ``syncfs(fd)`` (through the C library; the GIL is released while it runs), or
    None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def call(fd: int) -> None:
        if function(fd) != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"syncfs: {os.strerror(number)}")

    return call


# The shared barrier ("Shared barrier" above); tests replace ``syncfs`` to hold or fail it.
syncfs = _find_syncfs() if sys.platform == "linux" else None


_all_rounds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Rounds] = (
    weakref.WeakKeyDictionary()
)
_threads: list[concurrent.futures.ThreadPoolExecutor] = []
current = threading.local()  # of the database a round's thread syncs now: .directories and
# .devices it waits for; .barrier: the round's filesystems to syncfs(), or None


def of_loop() -> Rounds:
    """The running event loop's rounds."""
    loop = asyncio.get_running_loop()
    found = _all_rounds.get(loop)
    if found is None:
        found = _all_rounds[loop] = Rounds(loop)
    return found


def sync_threads() -> concurrent.futures.ThreadPoolExecutor:
    if not _threads:
        _threads.append(
            concurrent.futures.ThreadPoolExecutor(LANES, thread_name_prefix="opendo-sync")
        )
    return _threads[0]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
