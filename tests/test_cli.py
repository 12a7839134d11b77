"""The real ``opendo`` console script, run as a subprocess on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import START_DEADLINE, STOP_DEADLINE, OpendoProcess, run_opendo

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


def get(port: int, path: str = "/") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def run_to_exit(*args: str | Path, timeout: float = START_DEADLINE) -> tuple[int, str, str]:
    """Run ``opendo`` to its end; return (exit code, stdout, stderr)."""
    with run_opendo(*args) as process:
        code = process.proc.wait(timeout)
        stderr = process.drain_stderr()
        deadline = time.monotonic() + STOP_DEADLINE
        while process.next_line("stdout", deadline) is not None:
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
    with run_opendo(*command, project, "--port", "0", "--persist-to", state) as process:
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
        run_opendo("dev", project, "--port", "0", "--no-reload", "--persist-to", state) as plain,
        run_opendo(
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
        run_opendo(
            "dev", project, "--port", "0", "--no-reload", "--persist-to", tmp_path / "a"
        ) as a,
        run_opendo(
            "dev", project, "--port", "0", "--no-reload", "--persist-to", tmp_path / "b"
        ) as b,
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
    with run_opendo("dev", project, "--port", "0", "--no-reload", "--persist-to", state) as process:
        process.wait_ready()

        assert state.is_dir()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dev_port_from_the_config_is_used(tmp_path: Path) -> None:
    wanted = free_port()
    project = write_project(tmp_path / "project", extra=f"\n[dev]\nport = {wanted}\n")
    with run_opendo("dev", project, "--no-reload", "--persist-to", tmp_path / "state") as process:
        port = process.wait_ready()

        assert port == wanted
        assert get(port) == (200, "hello top")


def test_dev_port_0_from_the_config_picks_a_free_port(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", extra="\n[dev]\nport = 0\n")
    with run_opendo("dev", project, "--no-reload", "--persist-to", tmp_path / "state") as process:
        port = process.wait_ready()

        assert port != 8787


def test_serve_does_not_take_its_address_from_the_dev_section(tmp_path: Path) -> None:
    dev_port = free_port()
    project = write_project(tmp_path / "project", extra=f"\n[dev]\nport = {dev_port}\n")
    with run_opendo("serve", project, "--port", "0", "--persist-to", tmp_path / "s") as process:
        assert process.wait_ready() != dev_port


SECRET_WORKER = """
from opendo import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(str(getattr(self.env, "API_KEY", None)))
"""


def secret_project(root: Path, required: bool) -> Path:
    root.mkdir(parents=True)
    toml = 'name = "s"\nmain = "worker.py"\n'
    if required:
        toml += '[secrets]\nrequired = ["API_KEY"]\n'
    (root / "opendo.toml").write_text(toml)
    (root / "worker.py").write_text(SECRET_WORKER)
    (root / ".dev.vars").write_text("API_KEY=from-dev-vars\n")
    return root


def test_serve_takes_the_required_secrets_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = secret_project(tmp_path / "project", required=True)
    monkeypatch.delenv("API_KEY", raising=False)
    code, _, stderr = run_to_exit("serve", project, "--port", "0")
    assert code == 2
    assert "secrets.required: API_KEY is not set in the environment" in stderr, stderr
    assert "Traceback" not in stderr
    monkeypatch.setenv("API_KEY", "from-environment")
    with run_opendo("serve", project, "--port", "0", "--persist-to", tmp_path / "s") as process:
        assert get(process.wait_ready()) == (200, "from-environment")
    with run_opendo("dev", project, "--no-reload", "--port", "0") as process:
        assert get(process.wait_ready()) == (200, "from-dev-vars")  # dev: the file first


def test_serve_says_that_it_reads_no_dev_vars(tmp_path: Path) -> None:
    project = secret_project(tmp_path / "project", required=False)
    with run_opendo("serve", project, "--port", "0", "--persist-to", tmp_path / "s") as process:
        assert get(process.wait_ready()) == (200, "None")
        deadline = time.monotonic() + START_DEADLINE
        while "does not read .dev.vars" not in (
            line := process.next_line("stderr", deadline) or ""
        ):
            assert line, process.stderr_text()
        assert "[secrets] required" in line


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
    process: OpendoProcess, path: Path, text: str, timeout: float = START_DEADLINE
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
    with run_opendo("dev", project, "--port", "0", "--persist-to", tmp_path / "state") as process:
        port = process.wait_ready()
        assert get(port) == (200, "first top")

        new_port = edit_until_reloaded(
            process, project / "worker.py", WORKER.format(text="the second version")
        )

        assert new_port == port  # the restarted server, on the same socket
        wait_for_text(port, "the second version top")


def test_reload_follows_the_toml(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")
    with run_opendo("dev", project, "--port", "0", "--persist-to", tmp_path / "state") as process:
        port = process.wait_ready()
        assert get(port) == (200, "hello top")

        edited = TOML.format(extra="").replace('FOO = "top"', 'FOO = "edited"')
        assert edit_until_reloaded(process, project / "opendo.toml", edited) == port

        wait_for_text(port, "hello edited")


def test_reload_follows_dev_vars(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")
    with run_opendo("dev", project, "--port", "0", "--persist-to", tmp_path / "state") as process:
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
    with run_opendo("dev", project, "--port", "0", "--persist-to", tmp_path / "state") as process:
        deadline = time.monotonic() + START_DEADLINE
        while (line := process.next_line("stderr", deadline)) is not None:
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
        f"opendo: {tmp_path / 'opendo.toml'}: no such file (expected an opendo.toml project "
        "file, or Cloudflare's wrangler.json, wrangler.jsonc, wrangler.toml)"
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
