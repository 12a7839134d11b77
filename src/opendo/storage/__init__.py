"""Durable storage: the storage API (``ctx.storage``: KV, SQL, transactions, alarms) over one
database per object, and the drivers that keep the databases (SQLite files; memory).

The modules, each of one job: ``api`` (``Storage``, ``Transaction``, ``SyncKV``: the calls and
their queue), ``keys`` (their arguments), ``calls`` (what they return), ``sql`` (``SqlStorage``,
``SqlCursor``), ``batches`` (commits and the output gate) — written against the protocols of
``core.storage`` — and the drivers: ``database`` (an object's database on SQLite, KV and SQL),
``sqlite`` (``SqliteDriver``: files, sync rounds), ``locks`` (holding objects), ``memory``
(``MemoryDriver``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import fastcodec
from .api import Storage

if TYPE_CHECKING:
    from ..core.ids import DurableObjectId
    from ..core.protocols import StorageOwner, StoredAlarm
    from ..core.storage import StorageDriver

__all__ = ["Storage", "Storages"]

fastcodec.install()  # values are encoded by msgspec's C code, to core.codec's format


class Storages:
    """Objects' storage as the runtime asks for it (``core.protocols.StorageProvider``):
    ``ctx.storage`` over the databases of ``driver``."""

    __slots__ = ("driver",)

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    def open(
        self, owner: StorageOwner, class_name: str, id: DurableObjectId, epoch: int
    ) -> Storage:
        return Storage(owner, self.driver.open(class_name, id, epoch))

    def scan_alarms(self) -> Iterator[StoredAlarm]:
        return self.driver.scan_alarms()

    async def aclose(self) -> None:
        await self.driver.aclose()
