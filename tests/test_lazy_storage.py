"""An object that never wrote anything leaves nothing on disk.

Its database file (with its ``-wal`` and ``-shm``) and its class directory appear with the
first write that commits; until then reads answer from an empty database in memory. What
holds an object for its process is a byte-range lock in one file per persist directory
(``objects.lock``), not the database file, so holding creates nothing per object either.

Real parts throughout: ``opendo serve`` of examples/chat on 127.0.0.1 for stray requests,
real SQLite files under ``tmp_path`` for the in-process cases.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CHAT, ROOT, run_inside, run_opendo
from websockets.sync.client import connect

from opendo import DurableObject, Runtime, SqliteDriver

LOCK_FILE = "objects.lock"


def files(directory: Path) -> set[str]:
    """Every file and directory under ``directory``, relative to it."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


class Box(DurableObject):
    async def run(self, fn: Callable[[Any], Any]) -> Any:
        return await run_inside(self, fn)


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    runtime = Runtime(bindings={"BOX": Box}, storage=SqliteDriver(tmp_path / "state"))
    yield runtime
    await runtime.aclose()


# -- a real server and stray names -----------------------------------------------------------


def test_stray_requests_to_new_names_leave_no_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", state) as server:
        port = server.wait_ready()
        with connect(f"ws://127.0.0.1:{port}/lobby", open_timeout=5) as ws:
            for _ in range(3):  # id, history, presence: the room is stored
                ws.recv(timeout=5)
        before = files(state)
        assert f"Chat/{_chat_id('lobby')}.sqlite" in before
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for i in range(300):
                response = http.get(f"/stray-{i}")
                assert response.status_code == 426, response.text
        assert files(state) == before
        with connect(f"ws://127.0.0.1:{port}/lobby", open_timeout=5) as ws:
            assert ws.recv(timeout=5) == '{"id": 2}'  # the room that wrote is as it was


def _chat_id(name: str) -> str:
    from opendo.core.ids import NamespaceKey

    return str(NamespaceKey("Chat").from_name(name))


# -- in-process: reads, rollbacks and the first commit ------------------------------------------


async def test_an_object_that_only_reads_leaves_no_files(runtime: Runtime, tmp_path: Path) -> None:
    async def read(o: Any) -> Any:
        st = o.ctx.storage
        return (
            await st.get("k"),
            await st.get(["a", "b"]),
            await st.list(prefix="a"),
            await st.get_alarm(),
            st.kv.get("k"),
            st.sql.exec(
                "SELECT count(*) AS n FROM sqlite_master WHERE substr(name, 1, 8) != '_opendo_'"
            ).one()["n"],
            st.sql.exec("CREATE TABLE IF NOT EXISTS t (x)").rows_written,
            st.sql.exec("DROP TABLE t").rows_written,
            st.transaction_sync(lambda: st.kv.get("k")),
            await st.sync(),
        )

    stub = runtime.env.BOX.get_by_name("reader")
    assert await stub.run(read) == (None, {}, {}, None, None, 0, 0, 0, None, None)
    runtime.evict_all()
    assert files(tmp_path / "state") <= {LOCK_FILE}


async def test_a_first_write_that_is_rolled_back_leaves_no_files(
    runtime: Runtime, tmp_path: Path
) -> None:
    def roll_back(o: Any) -> Any:
        st = o.ctx.storage

        def fails() -> None:
            st.kv.put("k", 1)
            st.sql.exec("CREATE TABLE t (x)")
            raise LookupError("no")

        with pytest.raises(LookupError):
            st.transaction_sync(fails)
        return st.kv.get("k")

    assert await runtime.env.BOX.get_by_name("rolled back").run(roll_back) is None
    runtime.evict_all()
    assert files(tmp_path / "state") <= {LOCK_FILE}


async def test_the_first_write_creates_the_database_with_the_objects_name(
    runtime: Runtime, tmp_path: Path
) -> None:
    stub = runtime.env.BOX.get_by_name("writer")
    await stub.run(lambda o: o.ctx.storage.put("k", {"v": 1}))
    id = runtime.env.BOX.id_from_name("writer")
    assert f"Box/{id}.sqlite" in files(tmp_path / "state")
    runtime.evict_all()

    def read(o: Any) -> Any:
        name = o.ctx.storage._db.connection.execute(
            "SELECT value FROM _opendo_meta WHERE key = 'name'"
        ).fetchone()
        return o.ctx.storage.kv.get("k"), name[0]

    assert await runtime.env.BOX.get_by_name("writer").run(read) == ({"v": 1}, "writer")


async def test_a_first_write_that_cannot_be_stored_fails_and_leaves_no_files(
    runtime: Runtime, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "Box").write_text("not a directory")  # where the class directory must go
    stub = runtime.env.BOX.get_by_name("blocked")
    with pytest.raises(Exception, match="a write failed"):
        await stub.run(lambda o: o.ctx.storage.put("k", 1))
    (state / "Box").unlink()
    assert files(state) <= {LOCK_FILE}
    assert await stub.run(lambda o: o.ctx.storage.get("k")) is None  # the write was not kept
    await stub.run(lambda o: o.ctx.storage.put("k", 2))
    runtime.evict_all()
    assert await stub.run(lambda o: o.ctx.storage.get("k")) == 2


async def test_the_first_write_makes_a_wal_mode_file_and_leaves_nothing_else(
    runtime: Runtime, tmp_path: Path
) -> None:
    stub = runtime.env.BOX.get_by_name("new")
    await stub.run(lambda o: o.ctx.storage.put("k", 1))
    id = runtime.env.BOX.id_from_name("new")
    state = tmp_path / "state"
    assert files(state) == {
        LOCK_FILE,
        "Box",
        f"Box/{id}.sqlite",
        f"Box/{id}.sqlite-wal",
        f"Box/{id}.sqlite-shm",
    }
    journal_mode = await stub.run(
        lambda o: o.ctx.storage._db.connection.execute("PRAGMA journal_mode").fetchone()[0]
    )
    assert journal_mode == "wal"
    await stub.run(lambda o: o.ctx.storage.put("k", 2))  # into its -wal
    runtime.evict_all()
    await runtime.aclose()
    conn = sqlite3.connect(state / "Box" / f"{id}.sqlite")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
    assert await stub.run(lambda o: o.ctx.storage.get("k")) == 2


@pytest.mark.parametrize("size", [0, 16384], ids=["empty", "zeros"])
async def test_a_new_file_whose_first_sync_never_finished_is_set_aside(
    runtime: Runtime, tmp_path: Path, size: int, caplog: pytest.LogCaptureFixture
) -> None:
    # What a machine that stopped before a new database's first fsync can leave: its name,
    # with no data (or blocks of zeros). Nothing in it was ever acknowledged.
    id = runtime.env.BOX.id_from_name("torn")
    path = tmp_path / "state" / "Box" / f"{id}.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(size))
    stub = runtime.env.BOX.get_by_name("torn")
    assert await stub.run(lambda o: o.ctx.storage.get("k")) is None
    await stub.run(lambda o: o.ctx.storage.put("k", 1))
    runtime.evict_all()
    assert await stub.run(lambda o: o.ctx.storage.get("k")) == 1
    if size:
        assert (path.parent / f"{path.name}.torn").read_bytes() == bytes(size)
        assert "its first sync never finished" in caplog.text


async def test_a_damaged_database_is_not_set_aside(runtime: Runtime, tmp_path: Path) -> None:
    id = runtime.env.BOX.id_from_name("damaged")
    path = tmp_path / "state" / "Box" / f"{id}.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database, and not zeros" * 100)
    stub = runtime.env.BOX.get_by_name("damaged")
    with pytest.raises(Exception, match="cannot open"):
        await stub.run(lambda o: o.ctx.storage.get("k"))
    assert path.read_bytes().startswith(b"not a database")
    assert not (path.parent / f"{path.name}.torn").exists()


# -- the Upgrade header -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("project", "path"), [(CHAT, "/lobby"), (ROOT / "examples" / "cloudflare" / "chat", "/lobby")]
)
@pytest.mark.parametrize("upgrade", ["websocket", "WebSocket", "WEBSOCKET"])
async def test_the_chats_take_the_upgrade_header_in_any_case(
    opendo: Any, project: Path, path: str, upgrade: str
) -> None:
    chat = opendo(project)
    response = await chat.fetch(path, headers={"Upgrade": upgrade, "Connection": "Upgrade"})
    assert response.status == 101
    assert (await chat.fetch(path)).status == 426
