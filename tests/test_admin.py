"""`opendo objects …` on a persist directory filled by a real server run."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CHAT, run_opendo
from websockets.sync.client import connect

from opendo.cli import main
from opendo.core.ids import NamespaceKey


def chat(port: int, room: str, *texts: str, name: str | None = None) -> None:
    with connect(f"ws://127.0.0.1:{port}/{room}", open_timeout=5) as ws:
        for _ in range(3):  # id, history, presence
            ws.recv(timeout=5)
        if name is not None:
            ws.send(json.dumps({"type": "name", "name": name}))
            ws.recv(timeout=5)
        for text in texts:
            ws.send(json.dumps({"text": text}))
            assert json.loads(ws.recv(timeout=5))["text"] == text


def objects(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["objects", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """Two chat rooms written by a real server, which is then stopped."""
    state = tmp_path / "state"
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", state) as server:
        port = server.wait_ready()
        chat(port, "lobby", "one", "two", name="Ada")
        chat(port, "kitchen", "soup")
        server.stop(signal.SIGTERM)
    return state


def test_list_names_every_object_with_its_size(filled: Path) -> None:
    code, out = objects("list", "--project", CHAT, "--persist-to", filled, "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    key = NamespaceKey("Chat")
    assert {(r["class"], r["id"], r["name"]) for r in rows} == {
        ("Chat", str(key.from_name("lobby")), "lobby"),
        ("Chat", str(key.from_name("kitchen")), "kitchen"),
    }
    assert all(r["size"] > 0 and r["alarm"] is None for r in rows)
    code, out = objects("list", "--project", CHAT, "--persist-to", filled, "--namespace", "CHAT")
    assert code == 0 and "lobby" in out and "kitchen" in out
    code, out = objects("list", "--persist-to", filled, "--namespace", "Other")
    assert code == 0 and out.startswith("no objects")


def test_show_by_name_or_id(filled: Path) -> None:
    code, out = objects("show", "lobby", "--project", CHAT, "--persist-to", filled)
    assert code == 0, out
    assert "name:  lobby" in out
    assert "'counter': 1" in out
    assert "messages: 2 rows" in out
    lobby = str(NamespaceKey("Chat").from_name("lobby"))
    code, by_id = objects("show", lobby, "--persist-to", filled)
    assert code == 0 and by_id == out
    code, out = objects("show", "nowhere", "--persist-to", filled)
    assert code == 1 and "no object named 'nowhere'" in out
    code, by_prefix = objects("show", lobby[:8], "--persist-to", filled)  # a unique prefix
    assert code == 0 and by_prefix == out_lobby(filled)
    code, out = objects("show", "ffffff", "--persist-to", filled)
    assert code == 1 and "nor an id that starts so" in out


def out_lobby(filled: Path) -> str:
    return objects("show", "lobby", "--persist-to", filled)[1]


def test_export_then_import_under_another_name(filled: Path, tmp_path: Path) -> None:
    dump = tmp_path / "lobby.sqlite"
    code, out = objects("export", "lobby", "--persist-to", filled, "-o", dump)
    assert code == 0, out
    rows = sqlite3.connect(dump).execute("SELECT text FROM messages ORDER BY seq").fetchall()
    assert rows == [("one",), ("two",)]
    code, out = objects("export", "lobby", "--persist-to", filled, "-o", dump)
    assert code == 1 and "exists" in out

    code, out = objects(
        "import", dump, "--persist-to", filled, "--namespace", "Chat", "--name", "copy"
    )
    assert code == 0, out
    code, out = objects("show", "copy", "--persist-to", filled, "--namespace", "Chat")
    assert code == 0 and "name:  copy" in out and "messages: 2 rows" in out
    code, out = objects(
        "import", dump, "--persist-to", filled, "--namespace", "Chat", "--name", "copy"
    )
    assert code == 1 and "--replace" in out
    code, out = objects("import", dump, "--persist-to", filled, "--name", "x")
    assert code == 1 and "--namespace" in out


def test_a_namespace_the_project_does_not_have_is_refused(filled: Path, tmp_path: Path) -> None:
    dump = tmp_path / "lobby.sqlite"
    assert objects("export", "lobby", "--persist-to", filled, "-o", dump)[0] == 0
    for command in (["import", dump, "--name", "x"], ["list"], ["show", "lobby"]):
        code, out = objects(
            *command, "--project", CHAT, "--persist-to", filled, "--namespace", "CAHT"
        )
        assert code == 1, out
        assert out.strip() == (
            "opendo: --namespace 'CAHT': opendo.toml has no binding or class of that name "
            "(its bindings: CHAT (Chat))"
        )
    assert not (filled / "CAHT").exists()  # nothing made for it
    code, out = objects("list", "--project", CHAT, "--persist-to", filled, "--namespace", "Chat")
    assert code == 0 and "lobby" in out  # a class name is as good as its binding's


def test_the_imported_object_serves_its_data(filled: Path, tmp_path: Path) -> None:
    dump = tmp_path / "kitchen.sqlite"
    assert objects("export", "kitchen", "--persist-to", filled, "-o", dump)[0] == 0
    assert (
        objects("import", dump, "--persist-to", filled, "--namespace", "Chat", "--name", "annex")[0]
        == 0
    )
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", filled) as server:
        port = server.wait_ready()
        with connect(f"ws://127.0.0.1:{port}/annex", open_timeout=5) as ws:
            assert json.loads(ws.recv(timeout=5)) == {"id": 2}  # kitchen's counter was 1
            history = json.loads(ws.recv(timeout=5))
            assert [m["text"] for m in history["messages"]] == ["soup"]


def test_delete_is_refused_while_a_server_holds_the_object(filled: Path) -> None:
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", filled) as server:
        port = server.wait_ready()
        chat(port, "lobby", "three")  # the server now holds lobby
        code, out = objects("delete", "lobby", "--persist-to", filled, "--yes")
        assert code == 1 and "held by another process" in out
        code, out = objects("show", "lobby", "--persist-to", filled)  # reading is fine
        assert code == 0 and "messages: 3 rows" in out
        code, out = objects("delete", "kitchen", "--persist-to", filled, "--yes")
        assert code == 0 and "deleted" in out  # not opened by this server run
    code, out = objects("delete", "lobby", "--persist-to", filled, "--yes")
    assert code == 0 and "deleted Chat" in out and "(lobby)" in out
    code, out = objects("list", "--persist-to", filled)
    assert out.startswith("no objects")


def test_delete_asks_first(filled: Path) -> None:
    result = CliRunner().invoke(
        main, ["objects", "delete", "lobby", "--persist-to", str(filled)], input="n\n"
    )
    assert result.exit_code == 0 and "nothing deleted" in result.output
    assert objects("show", "lobby", "--persist-to", filled)[0] == 0


# -- query: read-only SQL on one object -----------------------------------------------------


def test_query_reads_an_objects_tables(filled: Path) -> None:
    code, out = objects(
        "query", "lobby", "SELECT text FROM messages ORDER BY seq", "--persist-to", filled, "--json"
    )
    assert code == 0, out
    assert [json.loads(line) for line in out.splitlines()] == [{"text": "one"}, {"text": "two"}]
    code, out = objects(
        "query", "lobby", "SELECT count(*) AS n FROM messages", "--persist-to", filled
    )
    assert code == 0, out
    assert out.splitlines()[:2] == ["n", "2"]
    assert "(1 row)" in out
    shown = "SELECT name, text FROM messages ORDER BY seq DESC LIMIT 3"  # the guide's example
    code, out = objects("query", "lobby", shown, "--project", CHAT, "--persist-to", filled)
    assert code == 0, out
    assert out.splitlines() == ["name  text", "Ada   two", "Ada   one", "(2 rows)"]
    guide = (Path(__file__).resolve().parent.parent / "docs/howto/operating.md").read_text()
    assert f'query lobby "{shown}"\n' + "\n".join(out.splitlines()) in guide
    # the runtime's own tables are readable too: the KV entries, keys as blobs
    code, out = objects(
        "query",
        "kitchen",
        "SELECT key FROM _opendo_kv ORDER BY key",
        "--persist-to",
        filled,
        "--json",
    )
    assert code == 0, out
    assert {"key": "x'" + b"counter".hex() + "'"} in [json.loads(line) for line in out.splitlines()]


def test_query_shows_at_most_the_limit(filled: Path) -> None:
    code, out = objects(
        "query",
        "lobby",
        "SELECT seq FROM messages",
        "--persist-to",
        filled,
        "--json",
        "--limit",
        "1",
    )
    assert code == 0, out
    assert len([line for line in out.splitlines() if line.startswith("{")]) == 1
    assert "more rows than --limit 1" in out


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("DELETE FROM messages", "only queries that read are allowed"),
        ("UPDATE _opendo_kv SET value = x'00'", "only queries that read are allowed"),
        ("CREATE TABLE t (x)", "only queries that read are allowed"),
        ("PRAGMA journal_mode = DELETE", "only queries that read are allowed"),
        ("SELECT 1; DELETE FROM messages", "one statement per query"),
        ("SELECT * FROM nowhere", "no such table: nowhere"),
        ("SELEKT 1", "syntax error"),
    ],
)
def test_query_refuses_anything_but_one_read(filled: Path, sql: str, says: str) -> None:
    code, out = objects("query", "lobby", sql, "--persist-to", filled)
    assert code == 1
    assert says in out
    assert "Traceback" not in out
    code, out = objects(
        "query", "lobby", "SELECT count(*) AS n FROM messages", "--persist-to", filled, "--json"
    )
    assert json.loads(out.splitlines()[0]) == {"n": 2}  # nothing was changed


def test_query_while_a_server_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", state) as server:
        port = server.wait_ready()
        chat(port, "live", "hello")
        code, out = objects(
            "query", "live", "SELECT text FROM messages", "--persist-to", state, "--json"
        )
        assert code == 0, out
        assert json.loads(out.splitlines()[0]) == {"text": "hello"}


def test_a_query_that_runs_too_long_is_stopped() -> None:
    from opendo.core.storage import SqlError
    from opendo.storage.database import read_query

    conn = sqlite3.connect(":memory:")
    forever = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"
    with pytest.raises(SqlError, match=r"ran past 0.2 s and was stopped"):
        read_query(conn, forever, timeout=0.2)
    assert read_query(conn, "SELECT 1 AS one").rows == [(1,)]  # the connection still works
