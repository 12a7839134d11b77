"""``opendo init``: each template makes a project that serves (``opendo serve``, over a real
socket) and whose generated tests pass (``pytest`` in the new directory, as a user runs it,
with and without pytest-asyncio); nothing is ever overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import OPENDO, run_opendo
from websockets.sync.client import connect

WITHIN = 10.0


def init(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENDO, "init", str(directory), *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("template", ["counter", "chat", "cloudflare"])
def test_a_new_projects_tests_pass(tmp_path: Path, template: str) -> None:
    project = tmp_path / "my-app"
    made = init(project, "--template", template)
    assert made.returncode == 0, made.stderr
    assert f"Made a {template} project. Next: opendo dev {project}" in made.stdout
    assert (project / ".gitignore").read_text().startswith(".opendo/\n")
    for plugins in ([], ["-p", "no:asyncio"]):  # with pytest-asyncio (strict) and without
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 passed" in result.stdout, result.stdout


def test_the_counter_serves(tmp_path: Path) -> None:
    project = tmp_path / "counter"
    assert init(project).returncode == 0
    assert 'name = "counter"' in (project / "opendo.toml").read_text()
    with run_opendo("serve", project, "--port", "0", "--no-access-log") as process:
        port = process.wait_ready()
        answers = [
            httpx.get(f"http://127.0.0.1:{port}/counter/x", timeout=WITHIN).text for _ in "ab"
        ]
        assert answers == ["1", "2"]


def test_the_chat_serves(tmp_path: Path) -> None:
    project = tmp_path / "Team Chat"
    assert init(project, "--template", "chat").returncode == 0
    assert 'name = "team-chat"' in (project / "opendo.toml").read_text()
    with run_opendo("serve", project, "--port", "0", "--no-access-log") as process:
        port = process.wait_ready()
        with connect(f"ws://127.0.0.1:{port}/room/lobby") as ada:
            assert json.loads(ada.recv(WITHIN)) == {"id": 1}
            ada.send("hi")
            assert json.loads(ada.recv(WITHIN)) == {"from": 1, "text": "hi"}


def test_the_cloudflare_project_serves_from_its_wrangler_file(tmp_path: Path) -> None:
    project = tmp_path / "cf"
    assert init(project, "--template", "cloudflare").returncode == 0
    assert not (project / "opendo.toml").exists()
    with run_opendo("serve", project, "--port", "0", "--no-access-log") as process:
        port = process.wait_ready()
        answer = httpx.get(f"http://127.0.0.1:{port}/increment?name=A", timeout=WITHIN)
        assert answer.text == "Durable Object 'A' count: 1"


def test_init_overwrites_nothing(tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_text("# mine\n")
    refused = init(tmp_path)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"opendo init: {tmp_path} already has worker.py: opendo init writes a new project and "
        "overwrites nothing (choose an empty or new directory)\n"
    )
    assert (tmp_path / "worker.py").read_text() == "# mine\n"
    assert not (tmp_path / "opendo.toml").exists()
    unknown = init(tmp_path / "x", "--template", "blog")
    assert unknown.returncode == 2 and "'blog' is not one of" in unknown.stderr
