"""Loading a Cloudflare Python Worker that uses what opendo does not provide: a module-level
``on_fetch`` handler, the ``pyodide`` module. The project is refused when it loads, with a
``NotSupportedError`` that says what to write instead, through the pytest plugin, through
``Runtime.from_config`` and as one line from ``opendo serve``/``dev``."""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import START_DEADLINE, STOP_DEADLINE, run_opendo

from opendo import ConfigError, Runtime, load_config
from opendo.testing import Project
from opendo.workers import NotSupportedError

TOML = 'name = "app"\nmain = "worker.py"\n'

ON_FETCH = """\
from workers import Response


async def on_fetch(request, env):
    return Response("hello")
"""

DEFAULT = """\
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response({body})
"""

# opendo provides pyodide, pyodide.ffi and pyodide.http (test_workers_compat.py); the rest is not.
PYODIDE_IMPORTS = [
    "import pyodide.code",
    "from pyodide.code import run_js",
    "from pyodide.webloop import WebLoop",
]

# Without a real pyodide package, importing it is what these tests are about.
REAL_PYODIDE = importlib.util.find_spec("pyodide") is not None
PROVIDED = ("pyodide.ffi", "pyodide.http")


def project(root: Path, worker: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "opendo.toml").write_text(TOML)
    (root / "worker.py").write_text(worker)
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root.resolve()


def with_import(statement: str) -> str:
    return f"{statement}\n" + DEFAULT.format(body='"hello"')


@pytest.fixture(autouse=True)
def no_pyodide_left_behind() -> Iterator[None]:
    """A project's own ``pyodide`` package (and its folder on sys.path) stays in its test."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [n for n in sys.modules if n == "pyodide" or n.startswith("pyodide.")]:
        del sys.modules[name]


def load(how: str, root: Path, opendo: object) -> object:
    if how == "plugin":
        assert callable(opendo)
        return opendo(root)
    return Runtime.from_config(load_config(root))


LOADERS = ["plugin", "from_config"]


# -- module-level handlers ---------------------------------------------------------------------


@pytest.mark.parametrize("how", LOADERS)
def test_a_module_level_on_fetch_is_not_supported(tmp_path: Path, opendo: object, how: str):
    root = project(tmp_path / "app", ON_FETCH)

    with pytest.raises(NotSupportedError) as caught:
        load(how, root, opendo)

    message = str(caught.value)
    assert isinstance(caught.value, ConfigError)  # the CLI reports it in one line
    assert message.startswith(f"{root / 'opendo.toml'}: main: worker.py: ")
    assert "module-level handler (on_fetch) is not supported by opendo" in message
    assert "class Default(WorkerEntrypoint)" in message
    assert "async def fetch(self, request)" in message


def test_on_fetch_named_as_the_entrypoint_is_not_supported(tmp_path: Path):
    root = project(tmp_path / "app", ON_FETCH)
    (root / "opendo.toml").write_text('name = "app"\nmain = "worker.py:on_fetch"\n')

    with pytest.raises(NotSupportedError, match=r"module-level handler \(on_fetch\)"):
        Runtime.from_config(load_config(root))


async def test_a_worker_class_beside_an_on_fetch_is_the_worker(tmp_path: Path, opendo: object):
    root = project(tmp_path / "app", DEFAULT.format(body='"class"') + "\n\n" + ON_FETCH)

    assert callable(opendo)
    built: Project = opendo(root)

    assert await (await built.fetch("/")).text() == "class"


@pytest.mark.parametrize(
    ("code", "line", "expected"),
    [
        pytest.param(
            "import workers\n\n\n@workers.handler\nasync def on_fetch(request, env):\n    pass\n",
            "4: @workers.handler",
            "a module-level handler (@handler) is not supported",
            id="handler",
        ),
        pytest.param(
            "from workers import WorkflowEntrypoint\n\n\nclass Flow(WorkflowEntrypoint):\n"
            "    pass\n",
            "4: class Flow(WorkflowEntrypoint):",
            "WorkflowEntrypoint (Flow) is not supported",
            id="workflow",
        ),
    ],
)
def test_what_a_module_uses_as_it_loads_names_its_line(
    tmp_path: Path, opendo: object, code: str, line: str, expected: str
):
    root = project(tmp_path / "app", code + DEFAULT.format(body='"hello"'))

    assert callable(opendo)
    with pytest.raises(NotSupportedError) as caught:
        opendo(root)

    assert isinstance(caught.value, ConfigError)
    assert str(caught.value).startswith(f"{root / 'worker.py'}:{line}: {expected}")


# -- the pyodide module ------------------------------------------------------------------------


@pytest.mark.skipif(REAL_PYODIDE, reason="a pyodide package is installed")
@pytest.mark.parametrize("how", LOADERS)
@pytest.mark.parametrize("statement", PYODIDE_IMPORTS)
def test_importing_pyodide_is_not_supported(
    tmp_path: Path, opendo: object, how: str, statement: str
):
    root = project(tmp_path / "app", with_import(statement))

    with pytest.raises(NotSupportedError) as caught:
        load(how, root, opendo)

    message = str(caught.value)
    assert isinstance(caught.value, ConfigError)
    assert message.startswith(f"{root / 'worker.py'}:1: {statement}: "), message
    assert re.search(r"the pyodide\.\w+ module is not supported by opendo", message), message
    assert "opendo provides pyodide.ffi" in message
    assert not [n for n in sys.modules if n.startswith("pyodide.") and n not in PROVIDED]


@pytest.mark.skipif(REAL_PYODIDE, reason="a pyodide package is installed")
def test_pyodide_in_a_helper_module_names_the_helpers_line(tmp_path: Path, opendo: object):
    helper = "import json\n\nfrom pyodide.code import run_js\n"
    root = project(tmp_path / "app", with_import("import helper"), {"helper.py": helper})

    assert callable(opendo)
    with pytest.raises(NotSupportedError) as caught:
        opendo(root)

    expected = f"{root / 'helper.py'}:3: from pyodide.code import run_js: the pyodide.code module"
    assert str(caught.value).startswith(expected), str(caught.value)


@pytest.mark.skipif(REAL_PYODIDE, reason="a pyodide package is installed")
def test_code_that_tries_pyodide_and_falls_back_still_loads(tmp_path: Path, opendo: object):
    statement = "try:\n    import pyodide.code\nexcept ImportError:\n    pyodide = None\n"
    root = project(tmp_path / "app", statement + DEFAULT.format(body="repr(pyodide)"))

    assert callable(opendo)
    opendo(root)  # the import failed as an ImportError (also a NotSupportedError)
    with pytest.raises(NotSupportedError, match="pyodide.code module") as caught:
        import pyodide.code  # noqa: F401
    assert isinstance(caught.value, ModuleNotFoundError)


async def test_an_importable_pyodide_is_used_not_shadowed(tmp_path: Path, opendo: object):
    files = {
        "pyodide/__init__.py": "",
        "pyodide/ffi.py": "def to_js(value):\n    return ('js', value)\n",
    }
    worker = "from pyodide.ffi import to_js\n" + DEFAULT.format(body="repr(to_js(1))")
    root = project(tmp_path / "app", worker, files)

    assert callable(opendo)
    built: Project = opendo(root)

    assert await (await built.fetch("/")).text() == "('js', 1)"


# -- over the command line ---------------------------------------------------------------------


def refused(*args: str | Path) -> tuple[int, str]:
    """(exit code, stderr) of an ``opendo`` that exits before it is ready."""
    with run_opendo(*args) as process:
        deadline = time.monotonic() + START_DEADLINE
        while (line := process.next_line("stdout", deadline)) is not None:
            assert not line.startswith("Ready on"), "opendo started"
        return process.proc.wait(STOP_DEADLINE), process.drain_stderr()


@pytest.mark.parametrize("command", [["serve"], ["dev"]], ids=["serve", "dev"])
@pytest.mark.parametrize(
    ("worker", "expected"),
    [
        pytest.param(ON_FETCH, "module-level handler (on_fetch) is not supported", id="on_fetch"),
        pytest.param(
            with_import("from pyodide.code import run_js"),
            "from pyodide.code import run_js: the pyodide.code module is not supported",
            id="pyodide",
            marks=pytest.mark.skipif(REAL_PYODIDE, reason="a pyodide package is installed"),
        ),
    ],
)
def test_the_command_line_says_so_in_one_line(
    tmp_path: Path, command: list[str], worker: str, expected: str
):
    root = project(tmp_path / "app", worker)

    code, stderr = refused(*command, root, "--port", "0", "--persist-to", tmp_path / "state")

    assert code == 2
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [stderr.strip()]
    assert stderr.startswith("opendo: ")
    assert expected in stderr
    assert "not supported by opendo" in stderr
