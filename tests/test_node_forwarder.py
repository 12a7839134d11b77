"""Forwarding between cluster nodes over TCP (``opendo.cluster.forwarder``), on real sockets of
127.0.0.1 and real event loops.

The nodes are ``Runtime``s with a ``NodeForwarder`` each and a placement of the test's own
(``nodes.TablePlacement``: a table of which node owns which object), in this process or, when
a node must die, in a child process (on uvloop, as ``opendo serve`` runs) killed with SIGKILL.
What crosses: a fetch with its body and headers, an RPC with arguments and keyword arguments
(a stub among them), an RPC error with its type, an accepted WebSocket relayed both ways and
closed from either end; one connection per peer however many calls, without Nagle's delay and
with TCP keepalive. Failures: a node that is down (``OwnerGoneError``, and the object is
claimed here), a node killed while a call runs (``DurableObjectResetError``; the node
restarted on its port is reached again), a node that accepts but never answers (the handshake
times out: not a hang).

Authentication: a node with another secret is refused by the others both ways (the call fails
at once with ``NodeAuthenticationError``; the listener logs one warning with the peer's
address; the object never ran); raw sockets that send garbage, a huge frame, an opendo call
without a handshake, or nothing at all are closed (the last after the handshake timeout) while
good peers keep being served; a listener that cannot answer the challenge is refused by the
dialer; the secret appears in no log. Then the handshake alone (replay, another secret) and
the addresses (IPv6 in brackets, bad forms, a busy port, a short secret).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from nodes import SECRET, WRONG, Node, constructed, socket_closes

from opendo import DurableObjectResetError, Request
from opendo.cluster.forwarder import NodeForwarder, format_address, parse_address
from opendo.cluster.handshake import (
    DialerHandshake,
    HandshakeError,
    ListenerHandshake,
    NodeAuthenticationError,
)
from opendo.core.errors import OwnerGoneError
from opendo.core.events import Rpc
from opendo.runtime import wire

NODES = Path(__file__).resolve().parent / "nodes.py"
WITHIN = 10.0  # bound of anything that must happen (two cores, shared)
SHORT = 0.5  # the handshake timeout of the tests that wait for it
REFUSED = "refused an unauthenticated node connection from"


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    constructed.clear()
    socket_closes.clear()
    yield


class Cluster:
    """Nodes in this process, sharing one placement table; all closed at the end."""

    def __init__(self) -> None:
        self.owners: dict[str, Any] = {}
        self.nodes: list[Node] = []

    def node(self, name: str, **options: Any) -> Node:
        node = Node(name, self.owners, **options)
        self.nodes.append(node)
        return node.start()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    cluster = Cluster()
    try:
        yield cluster
    finally:
        for node in cluster.nodes:
            await node.runtime.aclose()


@pytest.fixture
def caplog_all(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="opendo")
    return caplog


def warnings(caplog: pytest.LogCaptureFixture, start: str = REFUSED) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith(start)
    ]


def assert_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert caplog.records, "nothing was logged: the check would be empty"
    for secret in (SECRET, WRONG):
        for form in (repr(secret), secret.decode(), secret.hex(), secret[:12].decode()):
            assert form not in text


# -- what crosses ---------------------------------------------------------------------------------


async def test_a_fetch_reaches_the_owner_with_its_body_and_headers(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    cluster.owners["room"] = b.address
    request = Request("http://x/path?q=1", method="POST", body="hello", headers={"x-test": "1"})
    response = await a.box("room").fetch(request)
    assert response.status == 201
    assert await response.text() == "b POST /path hello"
    assert response.headers.get("x-node") == "b" and response.headers.get("x-seen") == "1"
    assert constructed == [("b", "room")]
    assert b.placement.claims == ["room"]  # b claimed it when the forwarded call came


async def test_an_rpc_carries_its_arguments_and_a_stub(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    cluster.owners |= {"calc": b.address, "mirror": b.address, "local": a.address}
    assert await a.box("calc").add(2, 3, scale=10) == {"node": "b", "sum": 50, "calls": 1}
    assert await a.box("calc").add(1) == {"node": "b", "sum": 1, "calls": 2}
    value = {"bytes": b"\x00\xff", "tuple": (1, "two"), "set": {3}, "nested": [{"k": None}]}
    assert await a.box("mirror").echo(value) == ["b", value]
    # a stub to an object of a's crosses to b and comes back; calling it reaches a
    node, stub = await a.box("mirror").echo(a.box("local"))
    assert node == "b" and await stub.whoami() == "a"
    assert sorted(constructed) == [("a", "local"), ("b", "calc"), ("b", "mirror")]


async def test_an_rpc_error_keeps_its_type(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    cluster.owners["errors"] = b.address
    with pytest.raises(ValueError) as value_error:
        await a.box("errors").fail("wrong, on purpose")
    assert str(value_error.value) == "wrong, on purpose" and value_error.value.remote  # type: ignore[attr-defined]
    with pytest.raises(KeyError) as key_error:
        await a.box("errors").look_up("missing")
    assert key_error.value.args == ("missing",)
    assert constructed == [("b", "errors")]


async def test_a_websocket_is_relayed_both_ways(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    cluster.owners["chat"] = b.address
    upgrade = {"upgrade": "websocket"}
    sockets = []
    for _ in range(2):
        response = await a.box("chat").fetch(Request("http://x/ws", headers=upgrade))
        assert response.status == 101 and response.web_socket is not None
        ws, got, closes = response.web_socket, [], []
        ws.add_event_listener("message", lambda e, got=got: got.append(e.data))
        ws.add_event_listener("close", lambda e, closes=closes: closes.append((e.code, e.reason)))
        ws.accept()
        sockets.append((ws, got, closes))
    (one, got_one, closed_one), (two, got_two, closed_two) = sockets
    one.send("ping")
    one.send(b"\x00bin")
    two.send("pong")
    await wait_for(lambda: len(got_one) == 3 and len(got_two) == 2, WITHIN)
    assert got_one == ["hello from b", "b: ping", b"b: \x00bin"]
    assert got_two == ["hello from b", "b: pong"]
    one.send("close, please")  # the object closes it
    await wait_for(lambda: closed_one, WITHIN)
    assert closed_one == [(4000, "as asked")]
    two.close(1000, "bye")  # the client does
    await wait_for(lambda: socket_closes, WITHIN)
    assert socket_closes == [("b", 1000, "bye")] and closed_two == []
    assert constructed == [("b", "chat")]


async def test_one_connection_per_peer_for_every_call(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    names = [f"box-{i}" for i in range(20)]
    cluster.owners |= dict.fromkeys(names, b.address)
    results = await asyncio.gather(*(a.box(name).add(i) for i, name in enumerate(names * 3)))
    assert [r["sum"] for r in results] == list(range(60))
    assert sorted(r["calls"] for r in results) == [1] * 20 + [2] * 20 + [3] * 20
    assert len(b.forwarder.incoming) == 1 and len(a.forwarder.incoming) == 0
    [incoming], outgoing = b.forwarder.incoming, await a.forwarder.link(b.address)
    for link in (incoming, outgoing):  # no Nagle delay; a peer that vanishes is noticed
        assert link.transport is not None
        sock = link.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 25_000


# -- failures -------------------------------------------------------------------------------


@pytest.fixture
def down() -> Iterator[str]:
    """The address of a node that is down: a port bound (so nobody else takes it) where
    nothing listens, so connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield format_address(*sock.getsockname())
    finally:
        sock.close()


async def test_a_node_that_is_down_then_the_object_is_claimed_here(
    cluster: Cluster, down: str, caplog_all: pytest.LogCaptureFixture
) -> None:
    a = cluster.node("a")
    id = a.runtime.env.BOX.id_from_name("orphan")
    with pytest.raises(OwnerGoneError, match=rf"^the node {down} cannot be reached \("):
        await a.forwarder.forward(down, "Box", id, Rpc("whoami", (), {}))
    cluster.owners["orphan"] = [down, None]  # its lease says down; the next claim takes it over
    assert await a.box("orphan").whoami() == "a"
    assert a.placement.claims == ["orphan", "orphan"]
    assert constructed == [("a", "orphan")]
    assert f"Box({id}): its owner {down} is gone; claiming it again" in caplog_all.messages


class NodeProcess:
    """``python tests/nodes.py NAME PORT`` in a child process; stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, address: str) -> None:
        self.proc = proc
        self.address = address

    @classmethod
    async def start(cls, name: str, port: int = 0) -> NodeProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(NODES), name, str(port), stdout=asyncio.subprocess.PIPE
        )
        node = cls(proc, "")
        line = await node.expect("listening ")
        node.address = line.removeprefix("listening ")
        return node

    async def expect(self, start: str) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(WITHIN):
            while line := (await self.proc.stdout.readline()).decode():
                if line.startswith(start):
                    return line.strip()
        raise AssertionError(f"the node ended before it printed {start!r}")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


@pytest.fixture
async def processes() -> AsyncIterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    try:
        yield started
    finally:
        for node in started:
            await node.kill()


async def test_a_node_killed_while_a_call_runs_resets_it(
    cluster: Cluster, processes: list[NodeProcess]
) -> None:
    a = cluster.node("a")
    b = await NodeProcess.start("b")
    processes.append(b)
    cluster.owners |= {"held": b.address, "after": b.address}
    call = asyncio.ensure_future(a.box("held").hold())
    await b.expect("holding held")  # it runs in b
    await b.kill()
    with pytest.raises(DurableObjectResetError, match="lost while this call ran: it may or may"):
        await asyncio.wait_for(call, WITHIN)
    # b is restarted on its port: the next call makes a new connection to it
    port = parse_address(b.address)[1]
    b2 = await NodeProcess.start("b2", port)
    processes.append(b2)
    assert b2.address == b.address
    assert await asyncio.wait_for(a.box("after").whoami(), WITHIN) == "b2"
    assert constructed == []  # nothing ran in a


async def test_a_node_that_never_answers_fails_the_call_in_the_handshake_timeout(
    cluster: Cluster,
) -> None:
    silent = socket.socket()  # accepted by the kernel (the backlog), answered by nobody
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        a = cluster.node("a", handshake_timeout=SHORT)
        address = format_address(*silent.getsockname())
        id = a.runtime.env.BOX.id_from_name("x")
        started = asyncio.get_running_loop().time()
        with pytest.raises(OwnerGoneError, match=f"did not finish the handshake within {SHORT} s"):
            await asyncio.wait_for(a.forwarder.forward(address, "Box", id, Rpc("whoami")), WITHIN)
        assert asyncio.get_running_loop().time() - started >= SHORT
    finally:
        silent.close()


# -- authentication -------------------------------------------------------------------------------


async def test_a_node_with_another_secret_is_refused_both_ways(
    cluster: Cluster, caplog_all: pytest.LogCaptureFixture
) -> None:
    a, b, c = cluster.node("a"), cluster.node("b"), cluster.node("c", secret=WRONG)
    cluster.owners |= {"at-a": a.address, "at-c": c.address}
    # c calls a: a refuses c's proof, and says so
    with pytest.raises(NodeAuthenticationError, match="it refused this node's proof"):
        await asyncio.wait_for(c.box("at-a").whoami(), WITHIN)
    assert len(warnings(caplog_all)) == 1
    assert warnings(caplog_all)[0].endswith(
        ": its proof is wrong: it does not know this cluster's secret"
    )
    assert warnings(caplog_all)[0].startswith(f"{REFUSED} 127.0.0.1:")
    # a calls c: c refuses a the same way
    caplog_all.clear()
    with pytest.raises(NodeAuthenticationError, match=f"cannot forward to the node {c.address}"):
        await asyncio.wait_for(a.box("at-c").whoami(), WITHIN)
    assert len(warnings(caplog_all)) == 1
    # nothing either sent reached a host; the good nodes still work together
    assert constructed == []
    assert a.placement.claims == ["at-c"] and c.placement.claims == ["at-a"]  # the callers'
    assert await b.box("at-a").whoami() == "a"
    assert constructed == [("a", "at-a")]
    assert_no_secret(caplog_all)


async def raw(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """A plain TCP connection to a node, and its own address (as the node logs it)."""
    host, port = parse_address(address)
    reader, writer = await asyncio.open_connection(host, port)
    return reader, writer, format_address(*writer.get_extra_info("sockname")[:2])


async def closed_by_peer(reader: asyncio.StreamReader) -> bytes:
    """Everything the node sent, until it closed the connection."""
    got = b""
    async with asyncio.timeout(WITHIN):
        try:
            while chunk := await reader.read(65536):
                got += chunk
        except ConnectionResetError:
            pass
    return got


CALL = wire.frame({"k": "call", "n": 1, "c": "Box", "i": "0" * 64, "m": "x", "e": {"t": "alarm"}})


@pytest.mark.parametrize(
    ("sent", "why"),
    [
        (b"\x00\x00\x00\x05hello", "it sent b'hello' where an opendo node sends its proof"),
        (b"\xff\xff\xff\xff" + b"x" * 1000, "it sent a frame of 4294967295 bytes before it was"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "it sent a frame of 1195725856 bytes before it"),
        (CALL, "where an opendo node sends its proof"),  # an opendo call, without a handshake
    ],
    ids=["garbage", "huge frame", "http", "call without handshake"],
)
async def test_a_stranger_is_closed_and_good_peers_are_still_served(
    cluster: Cluster, caplog_all: pytest.LogCaptureFixture, sent: bytes, why: str
) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    cluster.owners["x"] = a.address
    reader, writer, mine = await raw(a.address)
    writer.write(sent)
    got = await closed_by_peer(reader)
    writer.close()
    challenge = b"opendo-node/1 challenge "
    assert got[:4] == (len(challenge) + 32).to_bytes(4, "big")  # all it ever said: its challenge
    assert got[4:].startswith(challenge) and len(got) == 4 + len(challenge) + 32
    [warning] = warnings(caplog_all)
    assert warning.startswith(f"{REFUSED} {mine}: ") and why in warning
    assert constructed == [] and a.placement.claims == []
    assert await b.box("x").whoami() == "a"
    assert_no_secret(caplog_all)


async def test_a_connection_without_a_handshake_is_closed_in_the_timeout(
    cluster: Cluster, caplog_all: pytest.LogCaptureFixture
) -> None:
    a = cluster.node("a", handshake_timeout=SHORT)
    b = cluster.node("b")
    cluster.owners["x"] = a.address
    loop = asyncio.get_running_loop()
    started = loop.time()
    (reader, writer, mine), (reader2, writer2, mine2) = await raw(a.address), await raw(a.address)
    writer2.write(b"\x00\x00\x00\x50")  # half a frame, and nothing more
    await closed_by_peer(reader)
    await closed_by_peer(reader2)
    assert loop.time() - started >= SHORT
    writer.close()
    writer2.close()
    assert sorted(warnings(caplog_all)) == sorted(
        f"{REFUSED} {who}: it did not prove that it knows the secret within {SHORT} s"
        for who in (mine, mine2)
    )
    assert await b.box("x").whoami() == "a"  # meanwhile, and after, good peers are served
    assert constructed == [("a", "x")]


async def test_a_listener_that_cannot_answer_is_refused_by_the_dialer(
    cluster: Cluster, caplog_all: pytest.LogCaptureFixture
) -> None:
    """A node that does not know the secret but answers anyway (with made-up bytes)."""
    proofs: list[bytes] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ListenerHandshake(WRONG).start())
        size = int.from_bytes(await reader.readexactly(4), "big")
        proofs.append(await reader.readexactly(size))
        answer = b"opendo-node/1 answer " + os.urandom(32)
        writer.write(len(answer).to_bytes(4, "big") + answer)
        await reader.read()  # until the dialer closes
        writer.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    try:
        address = format_address(*server.sockets[0].getsockname()[:2])
        a = cluster.node("a")
        cluster.owners["fake"] = address
        with pytest.raises(NodeAuthenticationError, match="its answer is wrong"):
            await asyncio.wait_for(a.box("fake").whoami(), WITHIN)
        assert len(proofs) == 1  # one attempt: an impostor is not retried
        assert warnings(caplog_all, "could not authenticate the node") == [
            f"could not authenticate the node {address}: its answer is wrong: it does not know "
            "this cluster's secret (it is not a node of this cluster, or its secret differs)"
        ]
        assert_no_secret(caplog_all)
    finally:
        server.close()
        await server.wait_closed()


# -- the handshake alone, and addresses ---------------------------------------------------------


def exchange(
    listener: ListenerHandshake, dialer: DialerHandshake, tamper: Callable[[bytes], bytes]
) -> bytes:
    """Run the handshake to its end; ``tamper`` may change the proof on its way. The answer."""
    to_dialer, to_listener = bytearray(listener.start()), bytearray()
    to_listener += tamper(dialer.receive(to_dialer))
    answer = listener.receive(to_listener)
    to_dialer += answer
    assert dialer.receive(to_dialer) == b"" and not to_dialer
    return answer


def test_the_handshake_completes_on_one_secret_and_only_on_it() -> None:
    listener, dialer = ListenerHandshake(SECRET), DialerHandshake(SECRET)
    exchange(listener, dialer, lambda proof: proof)
    assert listener.done and dialer.done
    recorded: list[bytes] = []
    exchange(ListenerHandshake(SECRET), DialerHandshake(SECRET), lambda p: recorded.append(p) or p)
    # a recorded proof does not open another connection: its listener's nonce is another
    with pytest.raises(HandshakeError, match="its proof is wrong") as replayed:
        exchange(ListenerHandshake(SECRET), DialerHandshake(SECRET), lambda _: recorded[0])
    assert replayed.value.reply.endswith(b"opendo-node/1 refused")
    with pytest.raises(HandshakeError, match="its proof is wrong"):
        exchange(ListenerHandshake(SECRET), DialerHandshake(WRONG), lambda proof: proof)


def test_addresses() -> None:
    assert parse_address("10.0.0.2:7000") == ("10.0.0.2", 7000)
    assert parse_address("node-a.internal:1") == ("node-a.internal", 1)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert format_address("::1", 7000) == "[::1]:7000"
    for bad in ("::1:7000", "node-a", "node-a:", ":7000", "node-a:0", "node-a:70000", "a:b"):
        with pytest.raises(ValueError, match=r"host:port, with an IPv6 host in brackets"):
            parse_address(bad)


async def test_a_node_on_ipv6(cluster: Cluster) -> None:
    a, b = cluster.node("a", listen=("::1", 0)), cluster.node("b", listen=("::1", 0))
    assert b.address.startswith("[::1]:")
    cluster.owners["v6"] = b.address
    assert await a.box("v6").whoami() == "b"


def test_what_a_node_forwarder_refuses_to_start_with() -> None:
    with pytest.raises(ValueError, match=r"at least 16 of them \(32 random bytes are advised\); "):
        NodeForwarder(("127.0.0.1", 0), None, b"short")
    with pytest.raises(ValueError, match=r"listens on every interface \(0\.0\.0\.0:0\): say"):
        NodeForwarder(("0.0.0.0", 0), None, SECRET)
    with pytest.raises(ValueError, match="handshake_timeout must be a number of seconds above 0"):
        NodeForwarder(("127.0.0.1", 0), None, SECRET, handshake_timeout=0)
    busy = NodeForwarder(("127.0.0.1", 0), None, SECRET)
    try:
        with pytest.raises(OSError, match=f"cannot listen for other nodes on {busy.address}: "):
            NodeForwarder(parse_address(busy.address), None, SECRET)
        with pytest.raises(ValueError, match="got 'nowhere'"):
            NodeForwarder(("127.0.0.1", 0), "nowhere", SECRET)
    finally:
        busy.close()
