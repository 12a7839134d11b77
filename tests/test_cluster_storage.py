"""Cluster mode, in one process: placement, replicated storage, fencing, alarms, bookmarks.

Each test runs one or more ``ClusterNode``s (each with its own ``Runtime``) on one event loop,
against a real PostgreSQL (tests/pg.py) — the claims, flushes, restores, leases and the alarm
poller are the real ones. Only the forwarding between the nodes is replaced (tests/clusters.py's
``LocalLinks``, at the ``Forwarder`` seam), so these tests need no sockets.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from clusters import LocalLinks, cluster_runtime
from pg import PgDatabase

from opendo import DurableObject, DurableObjectResetError, Request, Runtime, StorageError
from opendo.cluster.node import ClusterNode
from opendo.cluster.storage import SNAPSHOT_BYTES

pytest_plugins = ["pg"]

LEASE = 2.0


class Counter(DurableObject):
    async def increment(self, by: int = 1) -> int:
        value = (await self.ctx.storage.get("n") or 0) + by
        await self.ctx.storage.put("n", value)
        return value

    async def value(self) -> int:
        return await self.ctx.storage.get("n") or 0

    async def grow(self, rows: int, size: int) -> int:
        sql = self.ctx.storage.sql
        sql.exec("CREATE TABLE IF NOT EXISTS blobs (i INTEGER PRIMARY KEY, b BLOB)")
        start = sql.exec("SELECT count(*) AS n FROM blobs").one()["n"]
        for i in range(start, start + rows):
            sql.exec("INSERT INTO blobs VALUES (?, randomblob(?))", i, size)
        return int(sql.exec("SELECT count(*) AS n FROM blobs").one()["n"])

    async def dump(self) -> list[Any]:
        return [
            tuple(r.values()) for r in self.ctx.storage.sql.exec("SELECT i, length(b) FROM blobs")
        ]

    async def bookmark(self) -> str:
        return await self.ctx.storage.get_current_bookmark()

    async def bookmark_at(self, ms: int) -> str:
        return await self.ctx.storage.get_bookmark_for_time(ms)

    async def restore(self, bookmark: str) -> str:
        undo = await self.ctx.storage.on_next_session_restore_bookmark(bookmark)
        return undo

    async def restart(self) -> None:
        self.ctx.abort("restoring a bookmark")

    async def set_alarm_in(self, ms: int) -> None:
        await self.ctx.storage.set_alarm(int(time.time() * 1000) + ms)

    async def alarm(self, info: Any = None) -> None:
        await self.ctx.storage.put("alarmed", (await self.ctx.storage.get("alarmed") or 0) + 1)

    async def alarmed(self) -> int:
        return await self.ctx.storage.get("alarmed") or 0


class Cluster:
    """Nodes of one test on one PostgreSQL database."""

    def __init__(self, dsn: str, tmp: Path) -> None:
        self.dsn = dsn
        self.tmp = tmp
        self.links = LocalLinks()
        self.nodes: list[tuple[ClusterNode, Runtime]] = []

    async def node(self, *, lease: float = LEASE, **settings: Any) -> tuple[ClusterNode, Runtime]:
        node, runtime = cluster_runtime(
            self.dsn,
            self.tmp / f"cache{len(self.nodes)}",
            {"COUNTER": Counter},
            links=self.links,
            address=f"node{len(self.nodes)}:1",
            lease=lease,
            **settings,
        )
        await asyncio.wait_for(node.lease.registered.wait(), 10)
        self.nodes.append((node, runtime))
        return node, runtime

    async def close(self) -> None:
        for _, runtime in self.nodes:
            await asyncio.wait_for(runtime.aclose(), 10)


@pytest.fixture
async def cluster(pg_database: PgDatabase, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(pg_database.dsn, tmp_path)
    try:
        yield c
    finally:
        await c.close()


def counter(runtime: Runtime, name: str = "c") -> Any:
    return runtime.env.COUNTER.get(runtime.env.COUNTER.id_from_name(name))


async def fetch(dsn: str, query: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def until(check: Callable[[], Any], within: float = 10.0) -> Any:
    """Wait (bounded) until ``check()`` (maybe async) is truthy; its value."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.02)


async def evict(runtime: Runtime) -> None:
    await until(lambda: all(h.is_idle() for h in runtime.live_hosts()))
    runtime.evict_all()


# -- one node -----------------------------------------------------------------------------------


async def test_writes_survive_the_cache_and_every_write_is_in_postgres(cluster: Cluster) -> None:
    node, runtime = await cluster.node()
    stub = counter(runtime)
    assert [await stub.increment() for _ in range(5)] == [1, 2, 3, 4, 5]
    rows = await fetch(cluster.dsn, "SELECT ns, seq, stored, node_id FROM opendo_object")
    assert [(r["ns"], r["seq"], r["stored"]) for r in rows] == [("Counter", 5, True)]
    assert rows[0]["node_id"] == node.lease.node_id
    cache_files = list(node.settings.cache.rglob("*.sqlite"))
    assert len(cache_files) == 1

    await evict(runtime)  # the cache file goes; the object is released
    await until(lambda: not list(node.settings.cache.rglob("*.sqlite*")))
    await node.storages.shipper.drain(5)
    rows = await fetch(cluster.dsn, "SELECT node_id FROM opendo_object")
    assert rows[0]["node_id"] is None
    assert await counter(runtime).increment() == 6  # restored from PostgreSQL


async def test_a_second_node_restores_what_the_first_wrote(cluster: Cluster) -> None:
    _, a = await cluster.node()
    await counter(a).grow(40, 3000)  # pages enough for several log records
    assert await counter(a).increment(7) == 7
    expected = await counter(a).dump()
    await a.aclose()  # leaves the cluster: its objects are free at once
    _, b = await cluster.node()
    assert await counter(b).dump() == expected
    assert await counter(b).increment() == 8


async def test_a_node_forwards_to_the_owner_and_one_counter_counts_through_both(
    cluster: Cluster,
) -> None:
    _, a = await cluster.node()
    _, b = await cluster.node()
    seen = []
    for i in range(10):
        seen.append(await counter(a if i % 2 else b).increment())
    assert seen == list(range(1, 11))
    owners = {len(r.live_hosts()) for r in (a, b)}
    assert owners == {1}  # each node has a host: the owner's instance and the other's remote
    assert cluster.links.forwarded == 5


async def test_an_event_forwarded_to_a_former_owner_is_not_forwarded_on(
    cluster: Cluster,
) -> None:
    """B forwards to A, which owned the object when B last asked; A has since let it go and
    C took it. A does not pass the event on to C (with views as stale as B's, events could
    travel in circles): it tells B the object is not its own, and B claims it again and
    forwards to C itself."""
    _, a = await cluster.node()
    _, b = await cluster.node()
    _, c = await cluster.node()
    assert await counter(a).increment() == 1
    assert await counter(b).increment() == 2  # B forwards to A and keeps A as the owner
    await evict(a)
    await until(lambda: released(cluster.dsn))
    assert await counter(c).increment() == 3  # C owns it now
    cluster.links.sent.clear()
    assert await counter(b).increment() == 4
    assert cluster.links.sent == [("node1:1", "node0:1"), ("node1:1", "node2:1")]
    assert await counter(c).value() == 4


async def released(dsn: str) -> bool:
    """Whether no node holds an object."""
    return not await fetch(dsn, "SELECT 1 FROM opendo_object WHERE node_id IS NOT NULL")


# -- fencing --------------------------------------------------------------------------------------


async def test_a_zombie_owner_commits_nothing_after_a_takeover(cluster: Cluster) -> None:
    """A's lease expires in the database while A does not know it (as when A was stopped or
    cut off): B takes the object over and writes; A's next write is refused by the fence in
    PostgreSQL, its caller gets an error, and what B wrote stays."""
    node_a, a = await cluster.node(lease=30)
    _, b = await cluster.node()
    assert await counter(a).increment() == 1
    await fetch(
        cluster.dsn,
        "UPDATE opendo_node SET lease_until = now() - interval '1 second' WHERE node_id = $1",
        node_a.lease.node_id,
    )
    assert node_a.lease.alive()  # A's own clock says it still has its lease
    host_b = b.host(b.env.COUNTER, b.env.COUNTER.id_from_name("c"))
    assert await counter(b).increment() == 2  # B claimed it (epoch 2) and restored 1
    assert not host_b.owner  # B is the owner, not forwarding
    with pytest.raises((StorageError, DurableObjectResetError)) as caught:
        await counter(a).increment()  # A's cache still says 1: it would answer 2 again
    assert "another node owns" in str(caught.value)
    rows = await fetch(cluster.dsn, "SELECT seq, epoch FROM opendo_object")
    assert [(r["seq"], r["epoch"]) for r in rows] == [(2, 2)]
    assert await counter(b).increment() == 3


async def test_a_node_whose_lease_lapsed_refuses_storage_and_drops_its_objects(
    cluster: Cluster,
) -> None:
    node_a, a = await cluster.node()
    assert await counter(a).increment() == 1
    host = a.live_hosts()[0]
    node_a.lease.deadline = 0.0  # as after SIGSTOP: the monotonic clock passed the deadline
    with pytest.raises((StorageError, DurableObjectResetError)):
        await counter(a).value()
    node_a.lease._check()  # what its watchdog does at the deadline
    assert a.live_hosts() == [] and host.open_storage is None
    await asyncio.wait_for(node_a.lease.registered.wait(), 10)  # joins again, as a new node
    assert await counter(a).increment() == 2


async def test_dropping_every_object_while_writes_wait_for_their_flush(cluster: Cluster) -> None:
    """The node drops every object (as when it loses its lease) while writes of several
    objects wait on a flush that PostgreSQL holds up: every caller gets an answer (before,
    they waited forever), none is told its write is durable unless it is in PostgreSQL, and
    the objects are served again afterwards."""
    node, runtime = await cluster.node()
    names = [f"c{i}" for i in range(3)]
    for name in names:
        assert await counter(runtime, name).increment() == 1
    blocker = await asyncpg.connect(cluster.dsn)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT * FROM opendo_object FOR UPDATE")  # the flush waits
        writes = [asyncio.ensure_future(counter(runtime, n).increment()) for n in names]
        await until(lambda: all(h.open_storage is not None for h in runtime.live_hosts()))
        await asyncio.sleep(0)
        runtime.drop_objects(1012, "the node lost its lease")
        assert runtime.live_hosts() == []
        await tx.rollback()
    finally:
        await blocker.close()
    results = await asyncio.gather(*writes, return_exceptions=True)
    stored = {
        r["name"]: r["seq"] for r in await fetch(cluster.dsn, "SELECT name, seq FROM opendo_object")
    }
    for name, result in zip(names, results, strict=True):
        if not isinstance(result, BaseException):  # acknowledged: so it is in PostgreSQL
            assert result == 2 and stored[name] == 2, (name, result, stored)
    for name in names:
        assert await counter(runtime, name).value() == stored[name]


async def test_dropping_every_object_while_a_flush_runs_and_more_writes_wait(
    cluster: Cluster,
) -> None:
    """As above, with a second write of each object committed behind the flush in flight: the
    drop fails that write's lock (which breaks the object's gate) while the flush still runs.
    Every object is dropped (before, the first one's close raised on its broken gate and the
    others stayed, half closed, so the node answered 500 after it joined again)."""
    node, runtime = await cluster.node()
    names = [f"c{i}" for i in range(3)]
    for name in names:
        assert await counter(runtime, name).increment() == 1
    blocker = await asyncpg.connect(cluster.dsn)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT * FROM opendo_object FOR UPDATE")  # the flush waits
        writes: list[asyncio.Future[int]] = []
        for waiting in ("syncing", "pending"):  # a flush runs, then a write waits behind it
            writes += [asyncio.ensure_future(counter(runtime, n).increment()) for n in names]
            await until(
                lambda waiting=waiting: (
                    all(  # type: ignore[misc]
                        getattr(h.open_storage._batches, waiting)
                        for h in runtime.live_hosts()
                        if h.open_storage is not None
                    )
                    and len(runtime.live_hosts()) == len(names)
                )
            )
        runtime.drop_objects(1012, "the node lost its lease")
        assert runtime.live_hosts() == []
        await tx.rollback()
    finally:
        await blocker.close()
    results = await asyncio.gather(*writes, return_exceptions=True)
    stored = {
        r["name"]: r["seq"] for r in await fetch(cluster.dsn, "SELECT name, seq FROM opendo_object")
    }
    acknowledged: dict[str, list[int]] = {name: [] for name in names}
    for k, result in enumerate(results):
        if not isinstance(result, BaseException):  # acknowledged: so it is in PostgreSQL
            assert result <= stored[names[k % len(names)]], (k, result, stored)
            acknowledged[names[k % len(names)]].append(result)
    # Served again, past every acknowledged value. (A flush that was in flight when the
    # objects were dropped may land after the read above: the next value may be one more.)
    after = {name: await counter(runtime, name).increment() for name in names}
    stored = {
        r["name"]: r["seq"] for r in await fetch(cluster.dsn, "SELECT name, seq FROM opendo_object")
    }
    for name in names:
        assert after[name] > max([1, *acknowledged[name]]), (name, after, acknowledged)
        assert after[name] == stored[name], (name, after, stored)


async def test_a_lease_watchdog_run_before_the_deadline_still_catches_the_lapse(
    cluster: Cluster,
) -> None:
    """The event loop may run a timer before its time (by up to its clock's resolution): a
    watchdog that finds the node still alive must watch on, or a node whose renewals stop
    would never drop its objects by itself."""
    node, runtime = await cluster.node(lease=1.0)
    assert await counter(runtime).increment() == 1
    assert node.lease._task is not None
    node.lease._task.cancel()  # no more renewals from here on
    node.lease.deadline += 0.5  # so the armed watchdog runs while the node is still alive
    await until(lambda: node.lease.losses == 1, within=5)
    assert runtime.live_hosts() == []


async def test_the_flush_of_a_replaced_activation_cannot_land_on_the_new_one(
    cluster: Cluster,
) -> None:
    """A flush whose outcome was unknown (PostgreSQL stopped answering) must not be followed
    by writes based on a state without it: the fence includes the record number the cache
    was built from."""
    _, a = await cluster.node()
    assert await counter(a).increment() == 1
    rows = await fetch(cluster.dsn, "SELECT seq FROM opendo_object")
    assert rows[0]["seq"] == 1
    # Another writer of the same epoch advanced the row (as a late COMMIT would).
    await fetch(cluster.dsn, "UPDATE opendo_object SET seq = seq + 1")
    with pytest.raises((StorageError, DurableObjectResetError)):
        await counter(a).increment()
    rows = await fetch(cluster.dsn, "SELECT count(*) AS n FROM opendo_log")
    assert rows[0]["n"] == 1  # nothing of the refused flush


# -- snapshots and history -------------------------------------------------------------------


async def test_snapshots_bound_the_log_a_new_owner_reads(cluster: Cluster) -> None:
    node_a, a = await cluster.node()
    stub = counter(a)
    for _ in range(40):
        await stub.grow(5, 4000)
    rows = await fetch(cluster.dsn, "SELECT seq FROM opendo_snapshot ORDER BY seq")
    assert rows, "no snapshot was written"
    expected = await stub.dump()
    await a.aclose()
    node_b, b = await cluster.node()
    assert await counter(b).dump() == expected
    last = rows[-1]["seq"]
    after = await fetch(
        cluster.dsn, "SELECT sum(length(data)) AS n FROM opendo_log WHERE seq > $1", last
    )
    assert (after[0]["n"] or 0) <= 2 * SNAPSHOT_BYTES + 200_000


async def test_a_restored_image_is_byte_identical(cluster: Cluster, tmp_path: Path) -> None:
    node_a, a = await cluster.node()
    stub = counter(a)
    for _ in range(10):
        await stub.grow(3, 5000)
        await stub.increment()
    host = a.live_hosts()[0]
    db = host.storage._db  # the cache
    image = db.connection.serialize()
    from opendo.cluster.driver import ClusterDriver

    driver = ClusterDriver(cluster.dsn)
    restored = await asyncio.to_thread(driver._image, "Counter", str(host.id))
    assert bytes(restored) == image


async def test_bookmarks_restore_an_old_state_and_undo_it(cluster: Cluster) -> None:
    _, a = await cluster.node()
    stub = counter(a)
    await stub.increment()
    await stub.increment()
    two = await stub.bookmark()
    await asyncio.sleep(0.01)
    after_two = int(time.time() * 1000)
    await asyncio.sleep(0.01)
    for _ in range(3):
        await stub.increment()
    assert await stub.value() == 5
    assert await stub.bookmark_at(after_two) == two
    assert await stub.bookmark_at(0) == "0" * 16  # the empty database, before anything
    undo = await stub.restore(two)
    with pytest.raises(DurableObjectResetError, match="aborted"):
        await stub.restart()
    assert await counter(a).value() == 2  # the next session starts from the bookmark
    assert await counter(a).increment() == 3
    await counter(a).restore(undo)
    with pytest.raises(DurableObjectResetError, match="aborted"):
        await counter(a).restart()
    assert await counter(a).value() == 5


async def test_bookmarks_need_a_cluster(tmp_path: Path) -> None:
    runtime = Runtime(bindings={"COUNTER": Counter})
    with pytest.raises(StorageError, match="point-in-time recovery needs a cluster"):
        await counter(runtime).bookmark()
    await runtime.aclose()


# -- alarms ---------------------------------------------------------------------------------------


async def test_an_alarm_of_an_object_nobody_owns_is_picked_and_run(cluster: Cluster) -> None:
    node_a, a = await cluster.node()
    await counter(a).set_alarm_in(300)
    rows = await fetch(cluster.dsn, "SELECT ns, time_ms FROM opendo_alarm")
    assert len(rows) == 1
    await a.aclose()  # nobody owns it now, and nobody has a timer for it
    node_b, b = await cluster.node()
    await until(lambda: node_b.poller is not None and node_b.poller.picked >= 1)
    assert await until(lambda: counter(b).alarmed()) == 1
    # the run deleted it, and the flush mirrored that
    await until(lambda: _no_alarms(cluster.dsn))


async def _no_alarms(dsn: str) -> bool:
    return await fetch(dsn, "SELECT * FROM opendo_alarm") == []


async def test_the_schema_is_versioned_and_migrated_once(pg_database: PgDatabase) -> None:
    from opendo.cluster import schema

    conns = [await asyncpg.connect(pg_database.dsn) for _ in range(3)]
    try:
        found = await asyncio.gather(*(schema.migrate(c) for c in conns))
        assert sorted(found) == [0, schema.VERSION, schema.VERSION] or sorted(found).count(0) == 1
        version = await conns[0].fetchval("SELECT version FROM opendo_schema")
        assert version == schema.VERSION
    finally:
        for c in conns:
            await c.close()


def test_the_cache_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    from opendo.storage.database import connect

    conn = connect(str(tmp_path / "x.sqlite"), cache=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 0
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    conn.close()
    assert isinstance(conn, sqlite3.Connection)


# -- the admin commands and migrations on a cluster ---------------------------------------------


def objects_cli(*args: str | Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from opendo.cli import main

    result = CliRunner().invoke(main, ["objects", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.output


async def test_the_admin_commands_work_on_a_cluster(cluster: Cluster, tmp_path: Path) -> None:
    import json

    node, runtime = await cluster.node()
    await counter(runtime, "alpha").increment(41)
    await counter(runtime, "beta").set_alarm_in(3_600_000)
    dsn = cluster.dsn

    async def cli(*args: str | Path) -> tuple[int, str]:
        return await asyncio.to_thread(objects_cli, *args, "--cluster", dsn)

    code, out = await cli("list", "--json")
    assert code == 0, out
    listed = {o["name"]: o for o in map(json.loads, out.splitlines())}
    assert set(listed) == {"alpha", "beta"}
    assert listed["alpha"]["class"] == "Counter" and listed["alpha"]["size"] > 0
    assert listed["beta"]["alarm"] is not None and listed["alpha"]["alarm"] is None

    code, out = await cli("show", "alpha", "--namespace", "Counter")
    assert code == 0 and "'n': 41" in out, out

    code, out = await cli(
        "query", "alpha", "SELECT count(*) AS n FROM _opendo_kv", "--namespace", "Counter", "--json"
    )
    assert code == 0 and json.loads(out.splitlines()[0]) == {"n": 1}, out
    code, out = await cli("query", "alpha", "DELETE FROM _opendo_kv", "--namespace", "Counter")
    assert code == 1 and "only queries that read are allowed" in out, out

    dump = tmp_path / "alpha.sqlite"
    code, out = await cli("export", "alpha", "--namespace", "Counter", "-o", dump)
    assert code == 0, out
    with sqlite3.connect(dump) as exported:
        assert exported.execute("SELECT count(*) FROM _opendo_kv").fetchone()[0] == 1

    code, out = await cli("delete", "alpha", "--namespace", "Counter", "--yes")
    assert code == 1 and "has it open" in out, out  # the node owns it

    code, out = await cli(
        "import", dump, "--namespace", "Counter", "--name", "gamma"
    )  # a new object: nobody holds it
    assert code == 0, out
    assert await counter(runtime, "gamma").increment() == 42  # the node restores the import

    await evict(runtime)
    await node.storages.shipper.drain(5)
    code, out = await cli("delete", "alpha", "--namespace", "Counter", "--yes")
    assert code == 0, out
    assert await counter(runtime, "alpha").value() == 0  # gone, and claimable again
    code, out = await cli("show", "alpha", "--namespace", "Counter")
    assert code == 1 and "no object named 'alpha'" in out, out


async def test_migrations_rename_and_delete_classes_in_a_cluster(cluster: Cluster) -> None:
    from opendo.cluster.driver import ClusterDriver
    from opendo.core.migrations import MigrationError

    node, runtime = await cluster.node()
    await counter(runtime, "kept").increment(5)
    driver = ClusterDriver(cluster.dsn)
    with pytest.raises(MigrationError, match="is open on the node"):
        await asyncio.to_thread(driver.rename_class, "Counter", "Tally")
    await evict(runtime)
    await node.storages.shipper.drain(5)
    await asyncio.to_thread(driver.rename_class, "Counter", "Tally")
    names = [o.name for o in await asyncio.to_thread(lambda: list(driver.objects("Tally")))]
    assert names == ["kept"]
    assert await asyncio.to_thread(lambda: list(driver.objects("Counter"))) == []
    await asyncio.to_thread(driver.delete_class, "Tally")
    assert await asyncio.to_thread(lambda: list(driver.objects())) == []


async def test_after_its_owner_died_an_object_is_served_once_the_lease_expires(
    cluster: Cluster,
) -> None:
    """A's process is gone (its link refuses, its lease is no longer renewed). B's events for
    A's object find it gone while A's lease runs, and claim it again after a pause each time;
    once the lease has expired, the claim succeeds on B — however many events failed before
    (a host must not stay stuck on the dead owner)."""
    node_a, a = await cluster.node()
    _, b = await cluster.node()
    assert await counter(a).increment() == 1
    # A dies: nothing reaches it, and it renews nothing more.
    cluster.links.down.add(node_a.lease.address)
    assert node_a.lease._task is not None
    node_a.lease._task.cancel()
    if node_a.lease._watchdog is not None:
        node_a.lease._watchdog.cancel()
    died = time.monotonic()
    failures = 0

    async def served() -> bool:
        nonlocal failures
        try:
            return await counter(b).increment() == 2
        except Exception:
            failures += 1
            return False

    assert await until(served, within=4 * LEASE)
    took = time.monotonic() - died
    # not before A's lease could have expired (its last renewal was at most S/3 before), and
    # within twice the lease
    assert LEASE - LEASE / 3 - 0.2 < took < 2 * LEASE, (took, failures)


async def test_create_app_makes_a_node_of_each_process_with_a_port_of_its_own(
    pg_database: PgDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under another server's ``--workers N`` every process reads the same ``[cluster]``;
    with an advertised port of 0 each binds a free port and advertises that one."""
    from opendo import create_app

    project = Path(__file__).parent.parent / "examples" / "counter"
    (tmp_path / "p").mkdir()
    for name in ("worker.py",):
        (tmp_path / "p" / name).write_text((project / name).read_text())
    toml = (project / "opendo.toml").read_text()
    toml += f'\n[cluster]\nurl = "{pg_database.dsn}"\nadvertise = "127.0.0.1:0"\n'
    (tmp_path / "p" / "opendo.toml").write_text(toml)
    monkeypatch.setenv("OPENDO_CLUSTER_SECRET", "s" * 32)
    apps = [create_app(tmp_path / "p", persist_to=tmp_path / f"state{i}") for i in range(2)]
    try:
        addresses = [app.runtime.forwarder.address for app in apps]  # type: ignore[attr-defined]
        ports = {int(a.rsplit(":", 1)[1]) for a in addresses}
        assert len(ports) == 2 and 0 not in ports, addresses
        for app in apps:
            app.runtime.start()
        first = await apps[0].runtime.fetch(Request("http://x/counter/shared"))
        second = await apps[1].runtime.fetch(Request("http://x/counter/shared"))
        assert [await first.text(), await second.text()] == ["1", "2"]  # over the node link
    finally:
        for app in apps:
            await app.runtime.aclose()
