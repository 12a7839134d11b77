"""Cluster nodes in the test process: a ``Runtime`` wired to a ``ClusterNode`` on a real
PostgreSQL (tests/pg.py), with the forwarding between nodes done in-process.

``LocalLinks`` is the one fake: a ``Forwarder`` (core.protocols, a documented seam) that hands an
event to the owning node's host directly, with the checks the TCP forwarder's receiving end
makes, so tests of placement, storage, fencing and alarms need no sockets. The TCP forwarder
has tests of its own (test_node_forwarder.py), and test_cluster.py runs real node processes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from opendo import DurableObject, Runtime
from opendo.cluster.node import ClusterNode, ClusterSettings
from opendo.core.errors import OwnerGoneError
from opendo.core.ids import DurableObjectId

SECRET = b"a secret of the tests' nodes"


class LocalLinks:
    """The nodes of a test, by address."""

    def __init__(self) -> None:
        self.nodes: dict[str, Runtime] = {}
        self.down: set[str] = set()
        self.forwarded = 0
        self.sent: list[tuple[str, str]] = []  # (from, to) of every event forwarded
        self.serving: dict[str, Callable[[], bool]] = {}  # address -> its lease holds

    def forwarder(self, address: str) -> Link:
        return Link(self, address)


class Link:
    def __init__(self, links: LocalLinks, address: str) -> None:
        self.links = links
        self.address = address

    def start(self) -> None:
        pass

    def close(self) -> None:
        self.links.down.add(self.address)

    async def forward(self, owner: str, class_name: str, id: DurableObjectId, event: object) -> Any:
        runtime = self.links.nodes.get(owner)
        if runtime is None or owner in self.links.down:
            raise OwnerGoneError(f"the node {owner} is gone")
        self.links.forwarded += 1
        namespace = runtime.namespace_of(class_name)
        assert namespace is not None
        there = namespace.id_from_string(str(id))
        there.name = id.name
        if not self.links.serving[owner]():
            raise OwnerGoneError(f"the node {owner} serves no objects now")
        self.links.sent.append((self.address, owner))
        return await runtime.host(namespace, there).call_relayed(event)


def cluster_runtime(
    dsn: str,
    cache: Path,
    bindings: Mapping[str, type[DurableObject]],
    *,
    links: LocalLinks | None = None,
    address: str = "node:1",
    lease: float = 2.0,
    **settings: Any,
) -> tuple[ClusterNode, Runtime]:
    """A started node (call from inside the event loop; claims wait until it has joined)."""
    links = links if links is not None else LocalLinks()
    node = ClusterNode(
        ClusterSettings(
            dsn=dsn,
            advertise=address,
            secret=SECRET,
            cache=cache,
            lease_seconds=lease,
            alarm_interval=0.1,
            **settings,
        ),
        links.forwarder(address),
    )
    runtime = Runtime(
        bindings=bindings,
        placement=node.placement,
        forwarder=node.forwarder,
        provider=node.storages,
        services=[node],
    )
    node.attach(runtime)
    runtime.start()
    links.nodes[address] = runtime
    links.serving[address] = node.lease.alive
    return node, runtime
