"""What an object's host needs of its surroundings: its namespace, and the runtime's services."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..core.clock import Clock
from ..core.protocols import Forwarder, Placement, StorageProvider

if TYPE_CHECKING:
    from ..api.objects import DurableObject

__all__ = ["HostServices", "Namespace"]


class Namespace(Protocol):
    """What a host needs of its namespace (``DurableObjectNamespace``)."""

    @property
    def object_class(self) -> type[DurableObject]: ...


class HostServices(Protocol):
    """What a host needs of the runtime that made it."""

    clock: Clock
    env: Any
    idle_timeout: float
    hibernation_timeout: float
    placement: Placement
    storage: StorageProvider
    forwarder: Forwarder | None

    def forget(self, host: Any) -> None:  # an ObjectHost
        ...

    def storage_opened(self, host: Any) -> None:
        """``host`` opened its storage (a database handle and its file descriptors)."""

    def storage_closed(self, host: Any) -> None: ...

    def idle_started(self, host: Any) -> None:
        """``host`` is idle: its countdown to eviction started."""

    def idle_ended(self, host: Any) -> None:
        """``host`` is busy again, or its countdown ended."""

    def alarm_changed(self, host: Any, time_ms: int | None) -> None:  # an ObjectHost
        ...
