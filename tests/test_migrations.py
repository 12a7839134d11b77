"""Migrations from opendo.toml: checked when the config loads, applied once per persist
directory, in order, recorded there — tested by restarting projects with a changed config."""

from __future__ import annotations

import json
import signal
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import run_opendo

from opendo import ConfigError, MemoryDriver, MigrationError, SqliteDriver, load_config
from opendo.cli import main
from opendo.core.ids import NamespaceKey
from opendo.core.migrations import Migration, MigrationRecord, apply, pending, simulate
from opendo.storage.locks import hold, release

# -- a project whose one class keeps notes ------------------------------------------------------

WORKER = """\
import json
from urllib.parse import parse_qs, urlsplit

from opendo import DurableObject, Response, WorkerEntrypoint


class {cls}(DurableObject):
    async def fetch(self, request):
        added = parse_qs(urlsplit(request.url).query).get("add")
        notes = await self.ctx.storage.get("notes") or []
        if added:
            notes.append(added[0])
            await self.ctx.storage.put("notes", notes)
        body = {{"class": type(self).__name__, "id": str(self.ctx.id), "notes": notes}}
        return Response(json.dumps(body))


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlsplit(request.url).path.strip("/")
        if "NOTES" not in self.env:
            return Response("no notes here", status=404)
        ns = self.env.NOTES
        if path.startswith("id/"):
            return await ns.get(ns.id_from_string(path[3:])).fetch(request)
        return await ns.get_by_name(path).fetch(request)
"""


def project(root: Path, cls: str, migrations: str, bound: str | None = None) -> Path:
    """Write (or rewrite) the project: class ``cls`` in worker.py, bound as NOTES to
    ``bound`` (default: ``cls``; "" for no binding), and the migrations given as TOML."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "worker.py").write_text(WORKER.format(cls=cls))
    binding = cls if bound is None else bound
    toml = 'name = "notes"\nmain = "worker.py"\n'
    if binding:
        toml += f'\n[[durable_objects.bindings]]\nname = "NOTES"\nclass_name = "{binding}"\n'
    (root / "opendo.toml").write_text(toml + textwrap.dedent(migrations))
    return root


V1 = """
[[migrations]]
tag = "v1"
new_sqlite_classes = ["Note"]
"""
V2 = (
    V1
    + """
[[migrations]]
tag = "v2"
renamed_classes = [{ from = "Note", to = "Memo" }]
"""
)
V3 = (
    V2
    + """
[[migrations]]
tag = "v3"
deleted_classes = ["Memo"]
"""
)


def get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def refused(*args: str | Path) -> str:
    """``opendo ARGS`` exits with 2 before it serves; its stderr (which has no traceback)."""
    with run_opendo(*args) as server:
        assert server.proc.wait(timeout=30) == 2
        stderr = server.drain_stderr()
    assert "Traceback" not in stderr
    return stderr


def record(state: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((state / "migrations.json").read_text())
    return result


# -- a real server, restarted with a changed config ------------------------------------------------


def test_rename_then_delete_across_server_restarts(tmp_path: Path) -> None:
    root, state = tmp_path / "notes", tmp_path / "state"
    serve = ("serve", root, "--port", "0", "--persist-to", state)

    project(root, "Note", V1)
    with run_opendo(*serve) as server:
        port = server.wait_ready()
        first = get(port, "ann?add=milk")
        get(port, "ann?add=eggs")
        server.stop(signal.SIGTERM)
    assert first["class"] == "Note"
    assert record(state)["applied"] == ["v1"]

    # v2: the class is renamed; its objects, their ids and their data move with it.
    project(root, "Memo", V2)
    with run_opendo(*serve) as server:
        port = server.wait_ready()
        by_name = get(port, "ann")
        by_id = get(port, f"id/{first['id']}?add=bread")
        server.stop(signal.SIGTERM)
    assert by_name == {"class": "Memo", "id": first["id"], "notes": ["milk", "eggs"]}
    assert by_id["notes"] == ["milk", "eggs", "bread"]
    assert not (state / "Note").exists()
    assert (state / "Memo" / f"{first['id']}.sqlite").is_file()
    assert record(state) == {"applied": ["v1", "v2"], "labels": {"Memo": "Note"}}

    # The same config again: nothing is applied twice, the data stays.
    with run_opendo(*serve) as server:
        port = server.wait_ready()
        assert get(port, "ann")["notes"] == ["milk", "eggs", "bread"]
        server.stop(signal.SIGTERM)
    assert record(state)["applied"] == ["v1", "v2"]

    # v3 deletes the class while a binding still names it: refused, nothing removed.
    project(root, "Memo", V3)
    assert (
        "durable_objects.bindings[0].class_name: class 'Memo' is deleted by migration 'v3', "
        "but the binding 'NOTES' still names it: remove the binding" in refused(*serve)
    )
    assert (state / "Memo" / f"{first['id']}.sqlite").is_file()

    # Without the binding, the migration removes the class's data, once.
    project(root, "Memo", V3, bound="")
    with run_opendo(*serve) as server:
        port = server.wait_ready()
        server.stop(signal.SIGTERM)
    assert not (state / "Memo").exists()
    assert record(state) == {"applied": ["v1", "v2", "v3"], "labels": {}}


def test_a_migration_removed_from_the_config_stops_the_server_clearly(tmp_path: Path) -> None:
    root, state = tmp_path / "notes", tmp_path / "state"
    project(root, "Note", V1)
    with run_opendo("serve", root, "--port", "0", "--persist-to", state) as server:
        server.wait_ready()
        server.stop(signal.SIGTERM)
    project(root, "Note", V1.replace('"v1"', '"first"'))
    assert (
        "opendo: the persist directory has applied migration 'v1', which opendo.toml no "
        "longer lists: a migration cannot be removed once applied"
        in refused("serve", root, "--port", "0", "--persist-to", state)
    )


# -- in process: the pytest plugin's projects on one storage directory --------------------------


async def test_the_plugin_restarts_a_project_with_a_changed_config(
    opendo: Any, tmp_path: Path
) -> None:
    root = project(tmp_path / "notes", "Note", V1)
    first = opendo(root, persist_to="state")
    note = first.env.NOTES.get_by_name("bob")
    await note.fetch("http://x/bob?add=tea")
    id = str(note.id)
    await first.aclose()

    project(root, "Memo", V2)
    second = opendo(root, persist_to="state")
    memo = second.env.NOTES.get_by_name("bob")
    assert str(memo.id) == id
    response = await memo.fetch("http://x/bob")
    assert json.loads(await response.text())["notes"] == ["tea"]
    assert [str(i) for i in await second.list_durable_object_ids("NOTES")] == [id]


async def test_a_rename_is_refused_while_this_process_has_the_object_open(
    opendo: Any, tmp_path: Path
) -> None:
    root = project(tmp_path / "notes", "Note", V1)
    first = opendo(root, persist_to="state")
    await first.env.NOTES.get_by_name("bob").fetch("http://x/bob?add=tea")
    project(root, "Memo", V2)
    with pytest.raises(MigrationError, match="cannot rename class 'Note' to 'Memo': .* is open"):
        opendo(root, persist_to="state")
    await first.aclose()
    assert record(tmp_path / "state")["applied"] == ["v1"]


# -- the driver steps ----------------------------------------------------------------------------


def test_a_rename_or_delete_waits_for_no_server_to_hold_the_class(tmp_path: Path) -> None:
    driver = SqliteDriver(tmp_path)
    db = tmp_path / "Note" / "a.sqlite"
    db.parent.mkdir()
    db.write_bytes(b"")
    # Another process holding it looks the same to the driver as this one holding it
    # through hold() outside _holding_all's own bookkeeping: a file lock is taken.
    hold(db)
    try:
        with pytest.raises(MigrationError, match="cannot delete class 'Note'"):
            driver.delete_class("Note")
    finally:
        release(db)
    assert db.exists()
    driver.delete_class("Note")
    assert not (tmp_path / "Note").exists()
    driver.delete_class("Note")  # done already: nothing to do


def test_a_rename_onto_a_class_with_objects_is_refused(tmp_path: Path) -> None:
    driver = SqliteDriver(tmp_path)
    for cls in ("Note", "Memo"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "a.sqlite").write_bytes(b"")
    with pytest.raises(MigrationError, match="already holds objects of a class named 'Memo'"):
        driver.rename_class("Note", "Memo")
    assert (tmp_path / "Note" / "a.sqlite").exists()


def test_apply_after_a_crash_between_the_step_and_the_record(tmp_path: Path) -> None:
    driver = SqliteDriver(tmp_path)
    (tmp_path / "Note").mkdir()
    (tmp_path / "Note" / "a.sqlite").write_bytes(b"x")
    migrations = [
        Migration("v1", new_sqlite_classes=("Note",)),
        Migration("v2", renamed_classes=(("Note", "Memo"),)),
    ]
    apply(driver, migrations[:1])
    driver.rename_class("Note", "Memo")  # the step ran; the process died before recording
    assert apply(driver, migrations) == {"Memo": "Note"}
    assert (tmp_path / "Memo" / "a.sqlite").read_bytes() == b"x"
    assert driver.read_migrations() == MigrationRecord(("v1", "v2"), {"Memo": "Note"})


def test_a_damaged_record_is_reported(tmp_path: Path) -> None:
    (tmp_path / "migrations.json").write_text('{"applied": "v1"}')
    with pytest.raises(MigrationError, match="migrations.json: not a migration record"):
        SqliteDriver(tmp_path).read_migrations()


async def test_the_memory_driver_moves_and_drops_databases() -> None:
    driver = MemoryDriver()
    key = NamespaceKey("Note")
    db = driver.open("Note", key.from_name("a"))
    db.begin()
    db.sql("CREATE TABLE t (x)", ())
    db.commit()
    db.close()
    apply(driver, [Migration("v1", new_classes=("Note",))])
    apply(
        driver,
        [Migration("v1", new_classes=("Note",)), Migration("v2", renamed_classes=(("Note", "M"),))],
    )
    moved = driver.inspect("M", key.from_name("a"))
    assert moved is not None and moved.tables == {"t": 0}
    assert driver.inspect("Note", key.from_name("a")) is None
    driver.delete_class("M")
    assert driver.inspect("M", key.from_name("a")) is None


# -- the list itself ----------------------------------------------------------------------------


def fail(key: str, message: str) -> Exception:
    return ValueError(f"{key}: {message}")


def test_labels_follow_renames_and_a_reused_name_gets_a_new_namespace() -> None:
    outcome = simulate(
        [
            Migration("v1", new_classes=("A",), new_sqlite_classes=("B",)),
            Migration("v2", renamed_classes=(("A", "C"),), deleted_classes=("B",)),
            Migration("v3", new_sqlite_classes=("A", "B")),
            Migration("v4", renamed_classes=(("C", "D"),)),
        ],
        fail,
    )
    assert outcome.labels == {"A": "A@v3", "B": "B@v3", "D": "A"}
    assert outcome.gone == {"C": "renamed to 'D' by migration 'v4'"}


@pytest.mark.parametrize(
    ("migrations", "message"),
    [
        (
            [Migration("v1", new_classes=("A",)), Migration("v2", new_sqlite_classes=("A",))],
            "migrations[1].new_sqlite_classes[0]: class 'A' already exists",
        ),
        (
            [Migration("v1", renamed_classes=(("A", "B"),))],
            "migrations[0].renamed_classes[0].from: class 'A' cannot be renamed: no earlier "
            "migration creates it",
        ),
        (
            [Migration("v1", new_classes=("A", "B"), renamed_classes=(("A", "B"),))],
            "migrations[0].renamed_classes[0].to: class 'B' already exists",
        ),
        (
            [
                Migration("v1", new_classes=("A",), deleted_classes=("A",)),
                Migration("v2", deleted_classes=("A",)),
            ],
            "migrations[1].deleted_classes[0]: class 'A' cannot be deleted: it was deleted by "
            "migration 'v1'",
        ),
    ],
)
def test_a_list_that_does_not_add_up_is_refused(migrations: list[Migration], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        simulate(migrations, fail)
    assert str(caught.value).startswith(message)


def test_pending_is_what_follows_the_applied_tags() -> None:
    migrations = [Migration("v1"), Migration("v2"), Migration("v3")]
    assert pending(migrations, MigrationRecord()) == migrations
    assert pending(migrations, MigrationRecord(("v1", "v2"))) == migrations[2:]
    assert pending(migrations, MigrationRecord(("v1", "v2", "v3"))) == []
    with pytest.raises(MigrationError, match="'v0' comes before 'v1' in opendo.toml"):
        pending([Migration("v0"), *migrations], MigrationRecord(("v1",)))


# -- bindings against the list, when the config loads ---------------------------------------


@pytest.mark.parametrize(
    ("cls", "migrations", "bound", "message"),
    [
        (
            "Memo",
            V2,
            "Note",
            "class 'Note' was renamed to 'Memo' by migration 'v2': bind the new name",
        ),
        (
            "Other",
            V1,
            None,
            "class 'Other' is not created by any migration: add it to new_sqlite_classes of "
            "a new [[migrations]] entry",
        ),
        (
            "Note",
            V1,
            "Nots",
            "class 'Nots' is not created by any migration; did you mean 'Note'? (a new class "
            "goes into new_sqlite_classes of a new [[migrations]] entry)",
        ),
    ],
)
def test_a_binding_must_name_a_class_the_migrations_leave(
    tmp_path: Path, cls: str, migrations: str, bound: str | None, message: str
) -> None:
    root = project(tmp_path, cls, migrations, bound)
    with pytest.raises(ConfigError) as caught:
        load_config(root)
    assert str(caught.value) == (
        f"{root / 'opendo.toml'}: durable_objects.bindings[0].class_name: {message}"
    )


def test_without_migrations_any_class_may_be_bound(tmp_path: Path) -> None:
    root = project(tmp_path, "Note", "")
    assert load_config(root).migrations == ()


def test_admin_commands_find_a_renamed_class_by_name(tmp_path: Path) -> None:
    state = tmp_path / "state"
    driver = SqliteDriver(state)
    apply(driver, [Migration("v1", new_classes=("Note",))])
    db = driver.open("Note", NamespaceKey("Note").from_name("ann"))
    db.begin()
    db.sql("CREATE TABLE t (x)", ())
    db.commit()  # the first commit that stores something makes the file, with the name in it
    db.close()
    apply(
        driver,
        [
            Migration("v1", new_classes=("Note",)),
            Migration("v2", renamed_classes=(("Note", "Memo"),)),
        ],
    )
    result = CliRunner().invoke(
        main, ["objects", "show", "ann", "--persist-to", str(state), "--namespace", "Memo"]
    )
    assert result.exit_code == 0, result.output
    assert f"Memo {NamespaceKey('Note').from_name('ann')}" in result.output


def test_writers_of_one_record_at_once_do_not_collide(tmp_path: Path) -> None:
    """Servers started at once on a new persist directory each apply (and record) the same
    migrations: each writes its record through a temporary file of its own."""
    import threading

    record = MigrationRecord(("v1",), {"Counter": "Counter"})
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def write() -> None:
        driver = SqliteDriver(tmp_path)  # one per writer, as each server has its own
        start.wait(10)
        for _ in range(25):
            try:
                driver.write_migrations(record)
            except BaseException as exc:
                errors.append(exc)

    writers = [threading.Thread(target=write) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(30)
    assert errors == []
    assert SqliteDriver(tmp_path).read_migrations() == record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["migrations.json"]
