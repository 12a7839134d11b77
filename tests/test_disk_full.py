"""A full or read-only persist directory is never silent.

The caller of a write that could not be stored gets an error it can show (the chat sends its
sender an error frame; a Worker's RPC or fetch gets an exception that says storage failed);
the log does not grow a line pair per failed write without bound; and ``opendo serve`` /
``opendo dev`` refuse to start on a persist directory they cannot write.

Real filesystems: a tiny tmpfs mounted by the test (and remounted read-only for the
read-only case), always unmounted in ``finally``. Where mounting is not allowed, the server
child runs with RLIMIT_FSIZE instead (Python ignores SIGXFSZ, so a write past the limit fails
with EFBIG), and a directory under a regular file stands in for a read-only one: the tests
run either way, they never skip.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import conftest
import httpx
import pytest
from conftest import CHAT, STOP_DEADLINE, run_opendo
from websockets.sync.client import ClientConnection, connect

RECV = 5.0
NO_RATE_LIMIT = ("--env", "bench")  # the chat's rate limit would answer before storage does
DISK = 4 * 1024 * 1024  # the tmpfs: room for the server's start, then filled by the test
FSIZE = 96 * 1024  # the RLIMIT_FSIZE stand-in: a few dozen commits fit in the WAL


@dataclass
class Disk:
    """Where the persist directory goes, and how it becomes full."""

    root: Path
    launcher: Path | None  # None: a tmpfs; else the server runs under RLIMIT_FSIZE
    filler: Path | None = None

    @property
    def mounted(self) -> bool:
        return self.launcher is None

    def fill(self) -> None:
        """Use up every free byte of the tmpfs. Under RLIMIT_FSIZE, a server started from now
        on can write nothing, and a running one fills its WAL up to the limit."""
        if self.launcher is not None:
            _write_launcher(self.launcher, 1)
            return
        self.filler = self.root / "filler"
        chunk = b"\0" * 65536
        with open(self.filler, "wb", buffering=0) as f:
            try:
                for _ in range(2 * DISK // len(chunk)):
                    f.write(chunk)
                for _ in range(16):
                    f.write(b"\0" * 512)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
            else:
                raise AssertionError("the tmpfs did not fill up")

    def free(self) -> None:
        if self.filler is not None:
            self.filler.unlink()
            self.filler = None


def _mount(*args: str) -> bool:
    try:
        subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _umount(path: Path) -> None:
    result = subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
    if result.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    root = tmp_path / "disk"
    root.mkdir()
    if not _mount("-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(root)):
        # Every ``opendo`` the test runs starts under RLIMIT_FSIZE, through a small launcher.
        launcher = tmp_path / "opendo-fsize"
        _write_launcher(launcher, FSIZE)
        monkeypatch.setattr(conftest, "OPENDO", str(launcher))
        yield Disk(root, launcher)
        return
    try:
        yield Disk(root, None)
    finally:
        _umount(root)


def _write_launcher(launcher: Path, limit: int) -> None:
    opendo = str(Path(sys.executable).with_name("opendo"))
    launcher.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""
            import os, resource, sys
            resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
            os.execv({opendo!r}, [{opendo!r}, *sys.argv[1:]])
            """
        )
    )
    launcher.chmod(0o755)


def recv(ws: ClientConnection) -> dict[str, object]:
    frame = json.loads(ws.recv(timeout=RECV))
    assert isinstance(frame, dict)
    return frame


def join(stack: ExitStack, port: int, room: str) -> ClientConnection:
    ws = stack.enter_context(connect(f"ws://127.0.0.1:{port}/{room}", open_timeout=RECV))
    for _ in range(3):  # id, history, presence
        recv(ws)
    return ws


# -- the chat ---------------------------------------------------------------------------------


def test_the_chat_tells_the_sender_when_its_message_could_not_be_stored(
    disk: Disk, tmp_path: Path
) -> None:
    state, log = disk.root / "state", tmp_path / "server.log"
    with (
        run_opendo(
            "serve", CHAT, *NO_RATE_LIMIT, "--port", "0", "--persist-to", state, stderr_log=log
        ) as server,
        ExitStack() as sockets,
    ):
        port = server.wait_ready()
        ada, bob = join(sockets, port, "lobby"), join(sockets, port, "lobby")
        recv(ada)  # bob's join
        disk.fill()
        stored, refused = [], []
        for i in range(150):
            text = f"message {i} " + "x" * 200
            ada.send(json.dumps({"text": text}))
            frame = recv(ada)
            if frame.get("type") == "error":
                assert frame["error"] == "storage_failed", frame
                assert set(frame) == {"type", "error", "message"}, frame
                assert isinstance(frame["message"], str) and "not stored" in frame["message"]
                refused.append(text)
            else:
                assert frame["text"] == text, frame
                stored.append(text)
                assert recv(bob)["text"] == text  # what is stored reaches everyone...
        # On a full tmpfs every one fails; under RLIMIT_FSIZE, the reset after a failure lets
        # SQLite checkpoint its WAL into a fresh start, so some get through again.
        assert len(refused) >= (100 if disk.mounted else 1), (len(stored), len(refused))
        # ...and nothing else did: bob's next frame is what ada sends once there is room.
        disk.free()
        if disk.mounted:
            ada.send(json.dumps({"text": "room again"}))
            assert recv(ada)["text"] == "room again"
            assert recv(bob)["text"] == "room again"
            stored.append("room again")
        else:
            ada.send(json.dumps({"type": "probe"}))
            assert recv(ada)["error"] == "unknown_type"
        bob.send(json.dumps({"type": "probe"}))
        assert recv(bob)["error"] == "unknown_type"
        sockets.close()

        # The log says so, but does not grow two lines per failed write.
        lines = log.read_text().splitlines()
        failed = [line for line in lines if "storage failed" in line]
        assert failed, lines[-20:]
        assert len(failed) <= 30, failed[:40]

    if disk.mounted:
        with run_opendo("serve", CHAT, "--port", "0", "--persist-to", state) as server:
            port = server.wait_ready()
            with connect(f"ws://127.0.0.1:{port}/lobby", open_timeout=RECV) as ws:
                recv(ws)
                history = recv(ws)["messages"]
                assert isinstance(history, list)
                assert [m["text"] for m in history][-len(stored) :] == stored


def test_a_room_whose_storage_fails_answers_the_handshake_with_503(
    disk: Disk, tmp_path: Path
) -> None:
    state = disk.root / "state"
    with (
        run_opendo(
            "serve",
            CHAT,
            *NO_RATE_LIMIT,
            "--port",
            "0",
            "--persist-to",
            state,
            stderr_log=tmp_path / "log",
        ) as server,
        ExitStack() as sockets,
    ):
        port = server.wait_ready()
        ws = join(sockets, port, "warm")
        disk.fill()
        for i in range(1000):  # until the room cannot store a message
            ws.send(json.dumps({"text": f"{i} " + "x" * 1000}))
            if recv(ws).get("type") == "error":
                break
        sockets.close()
        rooms = ["warm", "new-room"] if disk.mounted else ["warm"]
        for room in rooms:  # its counter cannot be stored: no id, no connection
            for _ in range(200):  # (under RLIMIT_FSIZE, until the WAL is full again)
                response = httpx.get(
                    f"http://127.0.0.1:{port}/{room}",
                    headers={
                        "Connection": "Upgrade",
                        "Upgrade": "websocket",
                        "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    },
                    timeout=RECV,
                )
                if response.status_code != 101 or disk.mounted:
                    break
            assert response.status_code == 503, response.text
            assert "storage failed" in response.text, response.text


RPC_PROJECT = {
    "opendo.toml": """
        name = "notes"
        main = "worker.py"

        [[durable_objects.bindings]]
        name = "NOTES"
        class_name = "Notes"
    """,
    "worker.py": """
        from opendo import DurableObject, DurableObjectError, Response, WorkerEntrypoint


        class Notes(DurableObject):
            async def add(self, text):
                await self.ctx.storage.put(str(len(await self.ctx.storage.list())), text)
                return "stored"


        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                stub = self.env.NOTES.get_by_name("notes")
                try:
                    return Response(await stub.add("x" * 4000))
                except DurableObjectError as exc:  # what an RPC caller gets, and can show
                    return Response(f"{type(exc).__name__}: {exc}", status=503)
    """,
}


def test_an_rpc_caller_gets_an_error_that_says_storage_failed(disk: Disk, tmp_path: Path) -> None:
    project = tmp_path / "notes"
    project.mkdir()
    for name, text in RPC_PROJECT.items():
        (project / name).write_text(textwrap.dedent(text).lstrip())
    state = disk.root / "state"
    with run_opendo(
        "serve", project, "--port", "0", "--persist-to", state, stderr_log=tmp_path / "log"
    ) as server:
        port = server.wait_ready()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=RECV) as http:
            assert http.get("/").text == "stored"
            disk.fill()
            for _ in range(200):
                response = http.get("/")
                if response.status_code != 200:
                    break
            assert response.status_code == 503, response.text
            assert response.text.startswith("DurableObjectResetError: "), response.text
            assert "storage failed" in response.text, response.text
            if disk.mounted:
                assert "database or disk is full" in response.text, response.text
                disk.free()
                assert http.get("/").text == "stored"


# -- refusing to start --------------------------------------------------------------------------


@contextmanager
def read_only_directory(tmp_path: Path) -> Iterator[Path]:
    """A directory that cannot be written: a tmpfs remounted read-only, or (where mounting
    is not allowed) a path under a regular file."""
    root = tmp_path / "ro"
    root.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)):
        (tmp_path / "file").write_text("")
        yield tmp_path / "file" / "state"
        return
    try:
        (root / "state").mkdir()
        assert _mount("-o", "remount,ro", str(root))
        yield root / "state"
    finally:
        _umount(root)


@pytest.mark.parametrize("command", [["serve"], ["dev", "--no-reload"]])
@pytest.mark.parametrize("under", ["existing", "missing"])
def test_serve_and_dev_refuse_an_unwritable_persist_directory(
    tmp_path: Path, command: list[str], under: str
) -> None:
    with read_only_directory(tmp_path) as state:
        target = state if under == "existing" else state / "deeper"
        with run_opendo(*command, CHAT, "--port", "0", "--persist-to", target) as server:
            code = server.proc.wait(STOP_DEADLINE * 2)
            stderr = server.drain_stderr()
            assert code == 2, stderr
            assert not any(line.startswith("Ready") for line in server.stdout_lines)
            assert f"persist directory {target}" in stderr, stderr
            assert "not writable" in stderr, stderr
            assert "Traceback" not in stderr, stderr


def test_serve_refuses_a_full_persist_directory(disk: Disk) -> None:
    state = disk.root / "state"
    disk.fill()
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", state) as server:
        code = server.proc.wait(STOP_DEADLINE * 2)
        stderr = server.drain_stderr()
        assert code == 2, stderr
        assert f"persist directory {state}" in stderr, stderr
        assert "not writable" in stderr, stderr


def test_the_startup_check_leaves_nothing_behind(tmp_path: Path) -> None:
    from opendo.storage.sqlite import check_persist_directory

    state = tmp_path / "a" / "state"
    check_persist_directory(state)
    assert state.is_dir() and sorted(os.listdir(state)) == []
