"""Cluster nodes for tests/test_node_forwarder.py: a ``Runtime`` with a ``NodeForwarder`` on
127.0.0.1 and a placement of the tests' own, in the test's process (``make_node``) or in a
child process of its own on uvloop, as ``opendo serve`` runs (``python tests/nodes.py NAME
PORT``, which prints ``listening ADDRESS`` once it serves, and ``holding NAME`` when
``Box.hold`` starts there).

``TablePlacement`` is the ``core.protocols.Placement`` seam filled in by a table: which node's
address owns which object (by name). An object the table does not name belongs to whichever
node claims it. A name may map to a list of answers, one per claim, the last one repeated:
``[dead_node, None]`` is an owner whose lease the next claim takes over.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from opendo import DurableObject, Request, Response, Runtime, WebSocketPair
from opendo.cluster.forwarder import NodeForwarder
from opendo.core.ids import DurableObjectId
from opendo.core.protocols import Claim

SECRET = b"the cluster's secret, 32 bytes.."
WRONG = b"another cluster's secret, 32 b.."

constructed: list[tuple[str, str | None]] = []  # (node, object name) of every construction here
socket_closes: list[tuple[str, int, str]] = []  # (node, code, reason) seen by objects here


class Box(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.node = str(env.NODE)
        self.name = ctx.id.name
        self.calls = 0
        constructed.append((self.node, self.name))

    async def fetch(self, request: Request) -> Response:
        if request.headers.get("upgrade") == "websocket":
            client, server = WebSocketPair()
            server.accept()
            server.add_event_listener("message", lambda event: self._message(server, event.data))
            server.add_event_listener(
                "close",
                lambda event: socket_closes.append((self.node, event.code, event.reason)),
            )
            server.send(f"hello from {self.node}")
            return Response(None, status=101, web_socket=client)
        body = await request.text()
        return Response(
            f"{self.node} {request.method} {request.path} {body}",
            status=201,
            headers={"x-node": self.node, "x-seen": request.headers.get("x-test") or ""},
        )

    def _message(self, server: Any, data: str | bytes) -> None:
        if data == "close, please":
            server.close(4000, "as asked")
        elif isinstance(data, bytes):
            server.send(self.node.encode() + b": " + data)
        else:
            server.send(f"{self.node}: {data}")

    async def whoami(self) -> str:
        return self.node

    async def add(self, a: int, b: int = 0, *, scale: int = 1) -> dict[str, Any]:
        self.calls += 1
        return {"node": self.node, "sum": (a + b) * scale, "calls": self.calls}

    async def echo(self, value: Any) -> list[Any]:
        return [self.node, value]

    async def fail(self, message: str) -> None:
        raise ValueError(message)

    async def look_up(self, key: str) -> Any:
        return {}[key]

    async def hold(self) -> None:
        print(f"holding {self.name}", flush=True)
        await asyncio.Event().wait()  # until the node is killed


class TablePlacement:
    """``core.protocols.Placement`` by a table shared by the nodes: object name -> owner."""

    def __init__(self, here: str, owners: dict[str, Any]) -> None:
        self.here = here
        self.owners = owners
        self.claims: list[str | None] = []
        self.epoch = 0

    def claim(self, class_name: str, id: DurableObjectId) -> Claim:
        self.claims.append(id.name)
        owner = self.owners.get(id.name or "")
        if isinstance(owner, list):
            owner = owner.pop(0) if len(owner) > 1 else owner[0]
        if owner is None or owner == self.here:
            self.epoch += 1
            return Claim(self.epoch)
        return Claim(owner=owner)

    def release(self, class_name: str, id: DurableObjectId, epoch: int) -> None:
        pass


class Node:
    def __init__(
        self,
        name: str,
        owners: dict[str, Any],
        secret: bytes = SECRET,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        **timeouts: float,
    ) -> None:
        self.name = name
        self.forwarder = NodeForwarder(listen, None, secret, **timeouts)
        self.address = self.forwarder.address
        self.placement = TablePlacement(self.address, owners)
        self.runtime = Runtime(
            bindings={"BOX": Box},
            vars={"NODE": name},
            placement=self.placement,
            forwarder=self.forwarder,
        )
        self.forwarder.attach(self.runtime)

    def start(self) -> Node:
        self.runtime.start()
        return self

    def box(self, name: str) -> Any:
        return self.runtime.env.BOX.get_by_name(name)


async def serve(name: str, port: int) -> None:
    node = Node(name, {}, listen=("127.0.0.1", port)).start()
    print(f"listening {node.address}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import uvloop  # the loop opendo serve runs on

    uvloop.run(serve(sys.argv[1], int(sys.argv[2])))
