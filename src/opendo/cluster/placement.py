"""Placement in a cluster: an object is claimed where it is first used, fenced by its epoch.

``claim`` is one statement: insert the object's row with this node as its owner, or — if the
row exists — take it over when nobody owns it, this node does (under an older claim), or its
owner's lease has expired by the database's clock; either way the epoch grows, and the new
epoch comes back. No row back means a live node owns it: the claim answers with that node's
address, and events go there (``NodeForwarder``). The claiming node must itself be alive in the
database at that moment (the ``EXISTS`` on its own lease), so a node whose lease lapsed claims
nothing, whatever its clock says.

The epoch is the fence: every flush of the object's storage checks it in the same transaction
that writes (``cluster.storage``), so an owner that was taken over — stopped, partitioned, or
just slow — commits nothing after the takeover. Routing is only a hint.

``release`` (the object was evicted, or the node stops) gives the object up once its last
flush is in: the row's owner becomes NULL, so the next event anywhere claims it at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..core.errors import StorageUnavailableError
from ..core.ids import DurableObjectId
from ..core.protocols import Claim
from . import pg

if TYPE_CHECKING:
    from .lease import Lease
    from .storage import Shipper

__all__ = ["ClusterPlacement"]

log = logging.getLogger("opendo")

_CLAIM = """
INSERT INTO opendo_object AS o (ns, id, name, node_id, epoch)
SELECT $1, $2, $3, $4, 1
WHERE EXISTS (SELECT 1 FROM opendo_node WHERE node_id = $4 AND lease_until > now())
ON CONFLICT (ns, id) DO UPDATE
SET node_id = excluded.node_id, epoch = o.epoch + 1, name = coalesce(o.name, excluded.name)
WHERE o.node_id IS NULL OR o.node_id = excluded.node_id OR NOT EXISTS (
    SELECT 1 FROM opendo_node n WHERE n.node_id = o.node_id AND n.lease_until > now())
RETURNING o.epoch
"""
_OWNER = """
SELECT o.node_id, n.address, n.lease_until > now() AS live
FROM opendo_object o LEFT JOIN opendo_node n ON n.node_id = o.node_id
WHERE o.ns = $1 AND o.id = $2
"""
_ATTEMPTS = 5


class ClusterPlacement:
    """``core.protocols.Placement`` over ``opendo_object`` (see the module's essay)."""

    def __init__(self, lease: Lease, shipper: Shipper, timeout: float) -> None:
        self._lease = lease
        self._shipper = shipper
        self._timeout = timeout

    async def claim(self, class_name: str, id: DurableObjectId) -> Claim:
        lease = self._lease
        if not lease.registered.is_set():
            try:
                await _wait(lease, self._timeout)
            except TimeoutError:
                raise StorageUnavailableError(
                    f"{class_name}({id}) cannot be claimed: this node has not joined the "
                    f"cluster (PostgreSQL unreachable?) within {self._timeout:g} s"
                ) from None
        me = lease.node_id
        try:
            async with pg.connection(lease.pool, self._timeout) as conn:
                for _ in range(_ATTEMPTS):
                    epoch = await conn.fetchval(_CLAIM, class_name, str(id), id.name, me)
                    if epoch is not None:
                        return Claim(int(epoch))
                    row = await conn.fetchrow(_OWNER, class_name, str(id))
                    if row is not None and row["live"] and row["node_id"] != me:
                        return Claim(owner=str(row["address"]))
                    # the owner's lease ran out between the two statements: claim again
        except Exception as exc:
            raise StorageUnavailableError(
                f"{class_name}({id}) cannot be claimed: {pg.describe(exc)}"
            ) from exc
        raise StorageUnavailableError(
            f"{class_name}({id}) cannot be claimed: its owner kept changing in {_ATTEMPTS} attempts"
        )

    def release(self, class_name: str, id: DurableObjectId, epoch: int) -> None:
        self._shipper.release(class_name, str(id), epoch)


async def _wait(lease: Lease, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        await lease.registered.wait()
