"""Placement across the processes of one machine: the persist directory is the membership.

A process owns an object while it holds the object's lock — the byte-range lock the SQLite
driver takes in ``<persist>/objects.lock`` — and the lock says who holds it (the holder's pid),
so the owner of any object is found where the object's data is. ``claim`` takes the lock, or
answers with the address of the process that has it (``ProcessForwarder.address_of``). The
operating system drops a dead process's locks, so its objects can be claimed at once by the
next event for them: no acknowledged write is lost (it was on disk before it was
acknowledged), and nothing waits for a timeout.
"""

from __future__ import annotations

import os
from typing import Protocol

from ..core.ids import DurableObjectId
from ..core.protocols import Claim

__all__ = ["LockPlacement"]

_ATTEMPTS = 5


class ObjectLocks(Protocol):
    """What placement needs of the storage driver (``SqliteDriver``)."""

    def hold_object(self, class_name: str, id: DurableObjectId | str, epoch: int) -> bool: ...

    def release_object(self, class_name: str, id: DurableObjectId | str) -> None: ...

    def holder(self, class_name: str, id: DurableObjectId | str) -> int | None: ...


class Addresses(Protocol):
    def address_of(self, pid: int) -> str: ...

    def start(self) -> None: ...


class LockPlacement:
    """``core.protocols.Placement`` by the objects' locks in the persist directory."""

    __slots__ = ("_locks", "_addresses", "_epoch", "_pid")

    def __init__(self, locks: ObjectLocks, addresses: Addresses) -> None:
        self._locks = locks
        self._addresses = addresses
        self._epoch = 0
        self._pid = os.getpid()

    def claim(self, class_name: str, id: DurableObjectId) -> Claim:
        self._addresses.start()  # reachable before we own anything
        for _ in range(_ATTEMPTS):
            epoch = self._epoch + 1
            if self._locks.hold_object(class_name, id, epoch):
                self._epoch = epoch
                return Claim(epoch)
            pid = self._locks.holder(class_name, id)
            if pid is not None and pid != self._pid:
                return Claim(owner=self._addresses.address_of(pid))
            # released between our attempt and the look: try again
        raise RuntimeError(
            f"{class_name}({id}): its lock kept changing hands in {_ATTEMPTS} attempts"
        )

    def release(self, class_name: str, id: DurableObjectId, epoch: int) -> None:
        self._locks.release_object(class_name, id)
