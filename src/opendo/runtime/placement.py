"""Placement in one process: every object is ours, with an epoch that grows with every claim."""

from __future__ import annotations

from ..core.ids import DurableObjectId
from ..core.protocols import Claim

__all__ = ["LocalPlacement"]


class LocalPlacement:
    """Every object lives in this process (``core.protocols.Placement``). Its claims never
    conflict: one runtime holds one host per object."""

    __slots__ = ("_epoch",)

    def __init__(self) -> None:
        self._epoch = 0

    def claim(self, class_name: str, id: DurableObjectId) -> Claim:
        self._epoch += 1
        return Claim(self._epoch)

    def release(self, class_name: str, id: DurableObjectId, epoch: int) -> None:
        pass
