"""Which process holds an object: a byte-range lock in ``<persist>/objects.lock``.

A process that has an object open holds an exclusive POSIX record lock on one byte of the
persist directory's lock file; a second process opening the object gets ObjectInUseError,
``SqliteDriver.holder`` names the holding pid, and the lock goes when the process dies.
Checked across real processes: ``opendo serve`` of examples/chat, and small Python children
that look at the lock from outside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import CHAT, run_opendo

from opendo import SqliteDriver
from opendo.core.ids import NamespaceKey
from opendo.core.migrations import MigrationError
from opendo.storage.locks import LOCK_FILE, ObjectInUseError

CHAT_KEY = NamespaceKey("Chat")


def holders_seen_from_another_process(state: Path, *names: str) -> list[int | None]:
    """``holder()`` of each Chat object named, asked by a new Python process."""
    code = (
        "import json, sys\n"
        "from opendo import SqliteDriver\n"
        "from opendo.core.ids import NamespaceKey\n"
        "driver = SqliteDriver(sys.argv[1])\n"
        "key = NamespaceKey('Chat')\n"
        "print(json.dumps([driver.holder('Chat', key.from_name(n)) for n in sys.argv[2:]]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(state), *names],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return list(json.loads(result.stdout))


def test_a_server_holds_what_it_has_open_and_holder_names_its_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    driver = SqliteDriver(state)
    lobby, kitchen = CHAT_KEY.from_name("lobby"), CHAT_KEY.from_name("kitchen")
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", state) as server:
        port = server.wait_ready()
        # A plain GET builds the lobby's object (answered 426): the server holds it now,
        # although it has stored nothing.
        assert httpx.get(f"http://127.0.0.1:{port}/lobby", timeout=5).status_code == 426
        assert driver.holder("Chat", lobby) == server.proc.pid
        assert driver.holder("Chat", str(lobby)) == server.proc.pid
        assert driver.holder("Chat", kitchen) is None
        with pytest.raises(
            ObjectInUseError, match=rf"held by another process \(pid {server.proc.pid}"
        ):
            driver.open("Chat", lobby)

        db = driver.open("Chat", kitchen)  # this process holds the kitchen now
        try:
            assert driver.holder("Chat", kitchen) == os.getpid()
            assert holders_seen_from_another_process(state, "kitchen", "lobby") == [
                os.getpid(),
                server.proc.pid,
            ]
        finally:
            db.close()
        assert driver.holder("Chat", kitchen) is None

        # One lock file, at the top of the persist directory, which is not a class.
        assert sorted(p.name for p in state.iterdir()) == sorted([LOCK_FILE, "migrations.json"])
        listed = subprocess.run(
            [str(Path(sys.executable).with_name("opendo")), "objects", "list"]
            + ["--persist-to", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listed.returncode == 0 and listed.stdout.startswith("no objects"), listed

        server.stop(signal.SIGKILL)  # the kernel drops the dead process's locks
    assert driver.holder("Chat", lobby) is None
    driver.open("Chat", lobby).close()


def test_releasing_one_object_keeps_the_others_of_the_process_held(tmp_path: Path) -> None:
    # Record locks are per process, and closing any descriptor of the lock file would drop
    # them all: the process keeps one descriptor and unlocks one byte at a time.
    state = tmp_path / "state"
    driver = SqliteDriver(state)
    names = ["a", "b", "c"]
    dbs = {name: driver.open("Chat", CHAT_KEY.from_name(name)) for name in names}
    again = driver.open("Chat", CHAT_KEY.from_name("b"))  # a second open of b, by count
    try:
        me = os.getpid()
        assert holders_seen_from_another_process(state, *names) == [me, me, me]
        dbs.pop("a").close()
        dbs.pop("b").close()
        assert holders_seen_from_another_process(state, *names) == [None, me, me]
        again.close()
        assert holders_seen_from_another_process(state, *names) == [None, None, me]
    finally:
        for db in dbs.values():
            db.close()
    assert holders_seen_from_another_process(state, *names) == [None, None, None]


def test_no_migration_renames_or_deletes_a_class_a_server_has_an_object_of(
    tmp_path: Path,
) -> None:
    # The object is open in the server but has stored nothing: it has no file for a
    # migration to find, and yet the class is held.
    state = tmp_path / "state"
    driver = SqliteDriver(state)
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", state) as server:
        port = server.wait_ready()
        assert httpx.get(f"http://127.0.0.1:{port}/lobby", timeout=5).status_code == 426
        assert not (state / "Chat").exists()
        held = rf"an object of class 'Chat' is held by another process \(pid {server.proc.pid}"
        with pytest.raises(MigrationError, match=rf"cannot delete class 'Chat': {held}"):
            driver.delete_class("Chat")
        with pytest.raises(MigrationError, match=rf"cannot rename class 'Chat' to 'Room': {held}"):
            driver.rename_class("Chat", "Room")
        server.stop(signal.SIGKILL)
    driver.rename_class("Chat", "Room")  # nothing to move, and nothing in the way
