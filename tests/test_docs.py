"""The guides in docs/ do what they say: their commands are run as written (with this
machine's paths and free ports put in), and the options they pass exist."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import shlex
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import OPENDO, START_DEADLINE, run_opendo

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = (ROOT / "docs" / "howto" / "production.md").read_text(encoding="utf-8")
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


# -- every page: links, code that parses, commands and options that exist ----------------------

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def fenced(page: Path) -> list[tuple[str, str]]:
    """The page's fenced blocks: (language, text)."""
    return FENCE.findall(page.read_text(encoding="utf-8"))


def prose(page: Path) -> str:
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def anchors(page: Path) -> set[str]:
    """The anchors of the page's headings, as GitHub makes them."""
    return {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in prose(page).splitlines()
        if re.match(r"^#{1,6} ", line)
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_reaches_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not followed (this machine reaches no such hosts)
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, broken


def test_the_index_links_every_page() -> None:
    index = ROOT / "docs" / "index.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in LINK.findall(prose(index))}
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md")} - {index.resolve()}
    assert not pages - linked, sorted(str(p.relative_to(ROOT)) for p in pages - linked)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_parses_and_every_toml_block_loads(page: Path) -> None:
    for language, text in fenced(page):
        if language == "python":
            try:  # a module; or a fragment of a method's body (a bare ``return``, ``await``)
                ast.parse(text)
            except SyntaxError:
                ast.parse("async def _():\n" + textwrap.indent(text, "    "))
        elif language == "toml":
            tomllib.loads(text)


def _help(command: tuple[str, ...]) -> str:
    return subprocess.run(
        [OPENDO, *command, "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_every_opendo_command_shown_exists_with_its_options() -> None:
    """Each ``opendo …`` line in a code block names a command that exists, and each of its
    ``--options`` is one that command takes."""
    helps: dict[tuple[str, ...], str] = {}
    wrong = []
    for page in PAGES:
        for _, text in fenced(page):
            lines = [line.strip() for line in text.replace("\\\n", " ").splitlines()]
            if any(line.startswith("$ ") for line in lines):  # a transcript: its commands
                lines = [line[2:] for line in lines if line.startswith("$ ")]
            for line in lines:
                line = line.split(" #")[0].rstrip(" &")
                if not line.startswith("opendo "):
                    continue
                words = line.split()
                command = (words[1],)
                if words[1] == "objects":  # ``objects list|show …``: its first subcommand
                    command += (words[2].split("|")[0],)
                if command not in helps:
                    helps[command] = _help(command)
                for option in {w.strip("[]").split("=")[0] for w in words if "--" in w}:
                    option = option[option.index("--") :]
                    if not re.search(rf"(^|[ /,]){re.escape(option)}\b", helps[command], re.M):
                        wrong.append(f"{page.relative_to(ROOT)}: {line}: {option}")
    assert len(helps) >= 8, helps.keys()  # dev, serve, tail, init, objects list/show/query/…
    assert not wrong, wrong


def test_the_api_reference_names_every_public_name() -> None:
    import opendo

    reference = (ROOT / "docs" / "reference" / "api.md").read_text(encoding="utf-8")
    table = reference.split("## Every public name", 1)[1]
    missing = [name for name in opendo.__all__ if f"`{name}`" not in table]
    assert not missing, missing


# -- the tutorial, step by step ----------------------------------------------------------------

TUTORIAL = ROOT / "docs" / "tutorial.md"


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    blocks = fenced(TUTORIAL)
    commands = [text.strip() for language, text in blocks if language == "sh"]
    python = [text for language, text in blocks if language == "python"]
    assert commands[0] == "opendo init chat-room --template chat"
    made = subprocess.run(
        [OPENDO, *words(commands[0])[1:]], cwd=tmp_path, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    project = tmp_path / "chat-room"
    # Steps 1, 2 and 4 show the files opendo init writes, as it writes them.
    toml = next(text for language, text in blocks if language == "toml")
    assert (project / "opendo.toml").read_text() == toml
    worker, client, test, chat, more_tests = python
    assert (project / "worker.py").read_text() == worker
    assert (project / "tests" / "test_worker.py").read_text() == test
    # Step 3: opendo dev, and the client, against it.
    assert commands[1] == "opendo dev chat-room"
    dev = [str(tmp_path / w) if w == "chat-room" else w for w in words(commands[1])[1:]]
    with run_opendo(*dev, "--port", "0") as process:
        port = process.wait_ready()
        code = client.replace("127.0.0.1:8787", f"127.0.0.1:{port}")
        ran = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, ran.stderr
        shown = [line.split("# ", 1)[1] for line in client.splitlines() if "print(" in line]
        assert ran.stdout.splitlines() == shown
        again = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert again.stdout.splitlines()[:2] == ['{"id": 3}', '{"id": 4}']  # "from 3"
    # Step 4, then step 5: the new Chat class in worker.py, the new test in the test file.
    assert commands[2] == "pytest chat-room"
    assert _pytest(tmp_path, commands[2], "2 passed")
    start, end = worker.index("class Chat("), worker.index("class Default(")
    (project / "worker.py").write_text(worker[:start] + chat + "\n\n" + worker[end:])
    (project / "tests" / "test_worker.py").write_text(test + "\n\n" + more_tests)
    assert _pytest(tmp_path, commands[2], "3 passed")


def _pytest(cwd: Path, command: str, expected: str) -> bool:
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *words(command)[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0 and expected in ran.stdout, ran.stdout + ran.stderr
    return True


async def test_the_gates_example_withdraws_without_a_lock(opendo: Any) -> None:
    """docs/topics/gates.md's Account: five withdrawals at once never overdraw it."""
    from opendo import DurableObject

    page = ROOT / "docs" / "topics" / "gates.md"
    (code,) = [text for language, text in fenced(page) if language == "python"]
    scope: dict[str, Any] = {"DurableObject": DurableObject}
    exec(code, scope)
    project = opendo(bindings={"ACCOUNT": scope["Account"]})
    account = project.env.ACCOUNT.get_by_name("a")

    async def deposit(instance: Any, ctx: Any) -> None:
        await ctx.storage.put("balance", 100)

    await project.run_in_durable_object(account, deposit)
    results = await asyncio.gather(
        *(account.withdraw(30) for _ in range(5)), return_exceptions=True
    )
    paid = [r for r in results if not isinstance(r, BaseException)]
    assert sorted(paid, reverse=True) == [70, 40, 10], results
    refused = [str(r) for r in results if isinstance(r, BaseException)]
    assert refused == ["balance 10 is less than 30"] * 2, refused
