"""Durable storage: the storage API (``ctx.storage``: KV, SQL, transactions, alarms) over one
database per object, and the drivers that keep the databases (SQLite files; memory)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import fastcodec
from .api import Storage

if TYPE_CHECKING:
    from ..core.ids import DurableObjectId
    from ..core.protocols import StorageOwner, StoredAlarm
    from .sqlite import StorageDriver

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
        return Storage(owner, self.driver.open(class_name, id))

    def scan_alarms(self) -> Iterator[StoredAlarm]:
        return self.driver.scan_alarms()  # type: ignore[return-value]
