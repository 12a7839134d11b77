"""The real ``opendo`` console script, run as a subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

OPENDO = str(Path(sys.executable).with_name("opendo"))
READY = re.compile(r"^Ready on http://127\.0\.0\.1:(\d+)$")
START_DEADLINE = 20.0
STOP_DEADLINE = 10.0

WORKER = """\
from opendo import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response({text!r} + " " + str(self.env.get("FOO")))
"""

TOML = """\
name = "cli"
main = "worker.py"

[vars]
FOO = "top"

[env.staging]
vars = {{ FOO = "staging" }}
{extra}"""


def write_project(root: Path, *, text: str = "hello", extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "opendo.toml").write_text(TOML.format(extra=extra))
    (root / "worker.py").write_text(WORKER.format(text=text))
    return root


class Opendo:
    """One ``opendo`` process; its output lines are read by threads, as they come."""

    def __init__(self, *args: str | Path) -> None:
        self.args = [OPENDO, *map(str, args)]
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,  # a reloader's child can be found (and killed) by group
        )
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=_pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=_pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _next(self, which: str, deadline: float) -> str | None:
        """The next line of stdout or stderr (None at its end); fails at the deadline."""
        source = self.stdout if which == "stdout" else self.stderr
        kept = self.stdout_lines if which == "stdout" else self.stderr_lines
        remaining = deadline - time.monotonic()
        try:
            line = source.get(timeout=max(remaining, 0.001))
        except queue.Empty:
            raise AssertionError(
                f"no {which} line within the deadline; {which} so far: {kept!r}; "
                f"stderr so far: {self.stderr_lines!r}"
            ) from None
        if line is not None:
            kept.append(line)
        return line

    def wait_ready(self, timeout: float = START_DEADLINE) -> int:
        """Read stdout until ``Ready on http://127.0.0.1:PORT``; return PORT."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next("stdout", deadline)
            if line is None:
                self.proc.wait(STOP_DEADLINE)
                self.drain_stderr()
                raise AssertionError(
                    f"opendo exited ({self.proc.returncode}) before it was ready; "
                    f"stderr: {''.join(self.stderr_lines)}"
                )
            if match := READY.match(line.rstrip("\n")):
                return int(match.group(1))

    def ready_within(self, timeout: float) -> int | None:
        """PORT of a ``Ready on`` line if one comes within ``timeout`` seconds, else None."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.stdout.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                return None
            if line is None:
                raise AssertionError(f"opendo exited; stderr: {''.join(self.stderr_lines)}")
            self.stdout_lines.append(line)
            if match := READY.match(line.rstrip("\n")):
                return int(match.group(1))

    def drain_stderr(self, timeout: float = STOP_DEADLINE) -> str:
        """All of stderr, once the process has closed it."""
        deadline = time.monotonic() + timeout
        while self._next("stderr", deadline) is not None:
            pass
        self.stderr.put(None)  # drained: later calls end at once
        return "".join(self.stderr_lines)

    def stop(self, sig: int) -> int:
        """Send ``sig`` and return the exit code (fails if it takes longer than 10 s)."""
        self.proc.send_signal(sig)
        return self.proc.wait(STOP_DEADLINE)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this process leads
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(STOP_DEADLINE)
        for thread in self._threads:
            thread.join(STOP_DEADLINE)


def _pump(pipe: IO[str], into: queue.Queue[str | None]) -> None:
    with pipe:
        for line in pipe:
            into.put(line)
    into.put(None)


@contextmanager
def opendo(*args: str | Path) -> Iterator[Opendo]:
    process = Opendo(*args)
    try:
        yield process
    finally:
        process.close()


def get(port: int, path: str = "/") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def run_to_exit(*args: str | Path, timeout: float = START_DEADLINE) -> tuple[int, str, str]:
    """Run ``opendo`` to its end; return (exit code, stdout, stderr)."""
    with opendo(*args) as process:
        code = process.proc.wait(timeout)
        stderr = process.drain_stderr()
        deadline = time.monotonic() + STOP_DEADLINE
        while process._next("stdout", deadline) is not None:
            pass
        return code, "".join(process.stdout_lines), stderr


# -- serving and stopping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "sig"),
    [
        pytest.param(
            ["dev", "--no-reload"],
            signal.SIGTERM,
            id="dev-no-reload-SIGTERM",
        ),
        pytest.param(
            ["dev", "--no-reload"],
            signal.SIGINT,
            id="dev-no-reload-SIGINT",
        ),
        pytest.param(
            ["serve"],
            signal.SIGTERM,
            id="serve-SIGTERM",
        ),
        pytest.param(["dev"], signal.SIGTERM, id="dev-reload-SIGTERM"),
        pytest.param(["dev"], signal.SIGINT, id="dev-reload-SIGINT"),
    ],
)
def test_serves_then_exits_0_on_signal(
    tmp_path: Path, command: list[str], sig: signal.Signals
) -> None:
    project = write_project(tmp_path / "project")
    state = tmp_path / "state"
    with opendo(*command, project, "--port", "0", "--persist-to", state) as process:
        port = process.wait_ready()

        assert get(port, "/") == (200, "hello top")

        code = process.stop(sig)
        stderr = process.drain_stderr()

    assert code == 0, f"exit code {code}; stderr: {stderr}"
    assert "Traceback" not in stderr
    assert "Aborted" not in stderr


def test_env_selects_the_environments_vars(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")
    state = tmp_path / "state"
    with (
        opendo("dev", project, "--port", "0", "--no-reload", "--persist-to", state) as plain,
        opendo(
            "dev", project, "--port", "0", "--no-reload", "--persist-to", state, "--env", "staging"
        ) as staging,
    ):
        plain_port = plain.wait_ready()
        staging_port = staging.wait_ready()

        assert get(plain_port) == (200, "hello top")
        assert get(staging_port) == (200, "hello staging")


def test_port_0_twice_gives_two_ports(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")
    with (
        opendo("dev", project, "--port", "0", "--no-reload", "--persist-to", tmp_path / "a") as a,
        opendo("dev", project, "--port", "0", "--no-reload", "--persist-to", tmp_path / "b") as b,
    ):
        port_a = a.wait_ready()
        port_b = b.wait_ready()

        assert port_a != port_b
        assert get(port_a) == (200, "hello top")
        assert get(port_b) == (200, "hello top")


def test_persist_to_is_created(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")
    state = tmp_path / "deep" / "state" / "dir"
    assert not state.exists()
    with opendo("dev", project, "--port", "0", "--no-reload", "--persist-to", state) as process:
        process.wait_ready()

        assert state.is_dir()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dev_port_from_the_config_is_used(tmp_path: Path) -> None:
    wanted = free_port()
    project = write_project(tmp_path / "project", extra=f"\n[dev]\nport = {wanted}\n")
    with opendo("dev", project, "--no-reload", "--persist-to", tmp_path / "state") as process:
        port = process.wait_ready()

        assert port == wanted
        assert get(port) == (200, "hello top")


def test_dev_port_0_from_the_config_picks_a_free_port(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", extra="\n[dev]\nport = 0\n")
    with opendo("dev", project, "--no-reload", "--persist-to", tmp_path / "state") as process:
        port = process.wait_ready()

        assert port != 8787


# -- reloading ---------------------------------------------------------------------------------


def wait_for_text(port: int, expected: str, timeout: float = START_DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = get(port)
        if seen == (200, expected):
            return
    raise AssertionError(f"still {seen!r}, not {expected!r}, after {timeout} s")


def edit_until_reloaded(
    process: Opendo, path: Path, text: str, timeout: float = START_DEADLINE
) -> int:
    """Write ``text`` to ``path`` once and wait for the server to say Ready again.

    One write must be enough: the reloader watches before the server says Ready.
    """
    path.write_text(text)
    port = process.ready_within(timeout)
    if port is None:
        raise AssertionError(
            f"no restart within {timeout} s of writing {path.name}; "
            f"stderr: {''.join(process.stderr_lines)}"
        )
    return port


def test_reload_serves_the_changed_worker(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", text="first")
    with opendo("dev", project, "--port", "0", "--persist-to", tmp_path / "state") as process:
        port = process.wait_ready()
        assert get(port) == (200, "first top")

        new_port = edit_until_reloaded(
            process, project / "worker.py", WORKER.format(text="the second version")
        )

        assert new_port == port  # the restarted server, on the same socket
        wait_for_text(port, "the second version top")


def test_reload_follows_the_toml(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")
    with opendo("dev", project, "--port", "0", "--persist-to", tmp_path / "state") as process:
        port = process.wait_ready()
        assert get(port) == (200, "hello top")

        edited = TOML.format(extra="").replace('FOO = "top"', 'FOO = "edited"')
        assert edit_until_reloaded(process, project / "opendo.toml", edited) == port

        wait_for_text(port, "hello edited")


def test_reload_follows_dev_vars(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")
    with opendo("dev", project, "--port", "0", "--persist-to", tmp_path / "state") as process:
        port = process.wait_ready()
        assert get(port) == (200, "hello top")

        # a restart takes well under a second once seen: 5 s is plenty, and keeps this short
        edit_until_reloaded(process, project / ".dev.vars", "FOO=from-dev-vars\n", timeout=5)

        wait_for_text(port, "hello from-dev-vars")


# -- mistakes ----------------------------------------------------------------------------------

BAD_BINDING = '\n[[durable_objects.bindings]]\nname = "CHAT"\nclass_name = 5\n'


@pytest.mark.parametrize(
    "command", [["dev"], ["dev", "--no-reload"], ["serve"]], ids=["dev", "no-reload", "serve"]
)
def test_bad_config_is_one_paragraph_and_no_traceback(tmp_path: Path, command: list[str]) -> None:
    project = write_project(tmp_path / "project", extra=BAD_BINDING)

    code, stdout, stderr = run_to_exit(*command, project, "--port", "0")

    assert code == 2
    assert "Ready on" not in stdout
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [stderr.strip()]  # one paragraph: one line here
    assert stderr.startswith(f"opendo: {(project / 'opendo.toml').resolve()}: ")
    assert "durable_objects.bindings[0].class_name: expected a class name (string)" in stderr


def test_missing_class_without_reload(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "project",
        extra='\n[[durable_objects.bindings]]\nname = "CHAT"\nclass_name = "Missing"\n',
    )

    code, stdout, stderr = run_to_exit("dev", project, "--port", "0", "--no-reload")

    assert code == 2
    assert "Ready on" not in stdout
    assert "Traceback" not in stderr
    assert f"opendo: {(project / 'opendo.toml').resolve()}: " in stderr
    assert "durable_objects.bindings[0].class_name: worker.py defines no class 'Missing'" in stderr


def test_missing_class_with_reload(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "project",
        extra='\n[[durable_objects.bindings]]\nname = "CHAT"\nclass_name = "Missing"\n',
    )
    with opendo("dev", project, "--port", "0", "--persist-to", tmp_path / "state") as process:
        deadline = time.monotonic() + START_DEADLINE
        while (line := process._next("stderr", deadline)) is not None:
            assert "Traceback" not in line, "".join(process.stderr_lines)
        code = process.proc.wait(STOP_DEADLINE)

    assert code != 0
    assert "durable_objects.bindings[0].class_name" in "".join(process.stderr_lines)


def test_unknown_env(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")

    code, stdout, stderr = run_to_exit("dev", project, "--port", "0", "--env", "nope")

    assert code == 2
    assert "Traceback" not in stderr
    assert stderr.strip() == (
        f"opendo: {(project / 'opendo.toml').resolve()}: env.nope: no such environment (staging)"
    )


def test_no_project_file(tmp_path: Path) -> None:
    code, stdout, stderr = run_to_exit("dev", tmp_path, "--port", "0")

    assert code == 2
    assert "Traceback" not in stderr
    assert stderr.strip() == (
        f"opendo: {tmp_path / 'opendo.toml'}: no such file (expected an opendo.toml project file)"
    )


def test_bad_port_option(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")

    code, stdout, stderr = run_to_exit("dev", project, "--port", "70000")

    assert code == 2
    assert "Traceback" not in stderr
    assert "--port" in stderr
    assert "70000" in stderr


def test_version() -> None:
    code, stdout, stderr = run_to_exit("--version")

    assert code == 0
    assert "0.1.0" in stdout
