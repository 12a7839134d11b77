"""The guides in docs/ do what they say: their commands are run as written (with this
machine's paths and free ports put in), and the options they pass exist."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import httpx
from conftest import OPENDO, START_DEADLINE, run_opendo

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = (ROOT / "docs" / "production.md").read_text(encoding="utf-8")
ADMIN = re.compile(r"Admin on http://127\.0\.0\.1:(\d+)")


def block(text: str, language: str, index: int = 0) -> str:
    return text.split(f"```{language}\n")[index + 1].split("```", 1)[0]


def words(command: str) -> list[str]:
    return shlex.split(command.replace("\\\n", " "))


def test_the_production_command_serves_with_its_admin_listener(tmp_path: Path) -> None:
    command = words(block(PRODUCTION, "sh"))
    assert command[:2] == ["opendo", "serve"]
    here = {
        "/srv/chat": str(ROOT / "examples" / "chat"),
        "/var/lib/chat": str(tmp_path / "state"),
        "8787": "0",
        "9100": "0",
    }
    with run_opendo(*[here.get(word, word) for word in command[1:]]) as process:
        deadline = time.monotonic() + START_DEADLINE
        admin_ports: list[int] = []
        while len(admin_ports) < 1:
            line = process.next_line("stderr", deadline)
            assert line is not None, process.stderr_text()
            entry = json.loads(line)  # --log-format json: every line
            if match := ADMIN.search(entry["message"]):
                admin_ports.append(int(match.group(1)))
        port = process.wait_ready()
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        health = httpx.get(f"http://127.0.0.1:{admin_ports[0]}/healthz", timeout=10)
        assert health.text == "ok\n"


def test_the_unit_and_the_container_run_the_same_command_with_options_that_exist() -> None:
    command = words(block(PRODUCTION, "sh"))
    unit = block(PRODUCTION, "ini")
    exec_start = words(unit.split("ExecStart=", 1)[1].split("\nKillSignal", 1)[0])
    assert exec_start[0].endswith("/opendo") and exec_start[1:] == command[1:]
    dockerfile = block(PRODUCTION, "dockerfile")
    cmd = json.loads(dockerfile.split("CMD ", 1)[1].replace("\\\n", " "))
    assert cmd[:2] == ["opendo", "serve"]
    help_text = subprocess.run(
        [OPENDO, "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in {w for w in [*command, *cmd] if w.startswith("--")}:
        assert re.search(rf"(^|[ /,]){re.escape(option)}\b", help_text, re.M), option
