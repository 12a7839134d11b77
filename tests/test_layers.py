"""The layer rules of DESIGN.md §3, checked by reading opendo's imports.

``check(root)`` parses every module of a package directory with ``ast`` (it imports nothing)
and returns the violations of these rules:

1. A layer imports only the opendo layers and third-party packages that ``LAYERS`` allows it
   (the standard library, ``sys.stdlib_module_names``, is allowed everywhere), and every module
   lives in a layer: one that does not is reported as "not in a layer", so nothing can hide
   outside the rules.
2. Only ``project/`` (and ``__init__.py``) import ``multiprocess/`` or ``cluster/``.
3. No module reads a private name (``_x``) of another layer package: not by importing it (a
   name or a module), not through an imported module object (``websocket._thing``). Attributes
   of other objects (``ws._state``) cannot be resolved without running the code, so they are
   not checked.
4. No import cycles between opendo's modules; each cycle is reported once.
5. No module is longer than ``MAX_LINES`` lines, unless ``LONG_MODULES`` says why.

Every import counts: at module level, in functions and methods, under ``if TYPE_CHECKING:``,
``importlib.import_module("literal")`` and ``__import__("literal")``, relative ones resolved to
absolute names. ``from pkg import sub`` where ``sub`` is a module imports ``pkg.sub``. Importing
a module also runs its parent packages' ``__init__.py``; like other import linters, the checker
does not count that, or every module would be in a cycle with ``opendo/__init__.py``.

That ``__all__`` is sorted is checked by test_exports.py.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "opendo"


@dataclass(frozen=True)
class Layer:
    layers: str  # the opendo layers it may import besides itself, "*" for any
    third_party: str  # top-level names of the third-party packages it may import, "*" for any


# DESIGN.md §3. The standard library is allowed in every layer; core allows nothing else.
# fmt: off
LAYERS: dict[str, Layer] = {
    # layer          opendo layers it may import               third-party packages
    "__init__":     Layer("*",                                  ""),
    "core":         Layer("",                                   ""),
    "api":          Layer("core",                               ""),
    "storage":      Layer("core",                               "msgspec"),
    # not storage: runtime reaches storage only through the protocols in core/protocols.py
    "runtime":      Layer("core api",                           "httpx websockets"),
    "server":       Layer("core api runtime",
                          "httptools prometheus_client uvicorn websockets"),
    "project":      Layer("core api storage runtime server workers multiprocess cluster", "*"),
    "workers":      Layer("core api runtime storage",           ""),
    "testing":      Layer("core api storage runtime server project",
                          "pytest _pytest pytest_asyncio httpx websockets"),
    "multiprocess": Layer("core api runtime storage server",    ""),
    "cluster":      Layer("core api runtime storage server",    "asyncpg"),
    "cli":          Layer("project admin server core api storage", "click"),
    "admin":        Layer("core storage project",               ""),
}
# fmt: on
PACKAGES = set(LAYERS) - {"__init__", "cli", "admin"}  # the layers that are directories
CHOSEN_BY_PROJECT = ("multiprocess", "cluster")  # rule 2: only project (and __init__) import them

MAX_LINES = 800
# Modules allowed over MAX_LINES: path inside src/opendo -> its own ceiling, each with a comment
# saying why it cannot be split. Keep it empty if you can.
LONG_MODULES: dict[str, int] = {}

RULES = {
    1: "layers",
    2: "only project imports multiprocess and cluster",
    3: "no private names of other packages",
    4: "no import cycles",
    5: "module length",
}


@dataclass(frozen=True)
class Violation:
    rule: int
    path: str  # relative to the package's parent directory: "opendo/runtime/host.py"
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: rule {self.rule} ({RULES[self.rule]}): {self.message}"


@dataclass(frozen=True)
class Module:
    name: str  # "opendo.runtime.host"
    path: str  # "opendo/runtime/host.py"
    is_package: bool
    tree: ast.Module
    lines: int

    @property
    def package(self) -> str:
        """The package its relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Import:
    line: int
    text: str  # the statement, for messages
    target: str  # absolute module name: "opendo.storage.sqlite", "msgspec", "os.path"
    names: tuple[str, ...] = ()  # what `from target import ...` takes that is not a module


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1] if parts[1] in LAYERS and parts[1] != "__init__" else None


def top_package(module: str) -> str:
    """The layer package (or, outside the layers, the top-level module) it belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def describe(layer: str) -> str:
    rules = LAYERS[layer]
    allowed = [*rules.layers.split(), "the standard library", *rules.third_party.split()]
    if rules.layers == "*":
        allowed[0] = "any layer"
    if rules.third_party == "*":
        allowed[-1] = "any third-party package"
    return f"{layer} may import only {', '.join(allowed)}"


def read_package(root: Path) -> list[Module]:
    modules = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        source = path.read_text(encoding="utf-8")
        modules.append(
            Module(
                name=".".join((root.name, *parts)),
                path=f"{root.name}/{path.relative_to(root).as_posix()}",
                is_package=is_package,
                tree=ast.parse(source, filename=str(path)),
                lines=len(source.splitlines()),
            )
        )
    return modules


def absolute(package: str, level: int, name: str | None) -> str | None:
    """The absolute name of ``from <level dots><name> import`` in ``package``; None if it
    goes above the top package."""
    if level == 0:
        return name
    base = package.split(".")
    if level - 1 >= len(base):
        return None
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def literal_import(node: ast.Call) -> tuple[str, str | None] | None:
    """``(name, package)`` of ``importlib.import_module("name"[, package])`` or
    ``__import__("name")``; None for any other call or a name that is not a literal (a
    package that is not a literal, such as ``__package__``, is None: the module's own)."""
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        is_import = func.value.id == "importlib" and func.attr == "import_module"
    elif isinstance(func, ast.Name):
        is_import = func.id in ("import_module", "__import__")
    else:
        return None
    if not is_import or not node.args:
        return None
    name = node.args[0]
    if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
        return None
    package = node.args[1] if len(node.args) > 1 else None
    if isinstance(package, ast.Constant) and isinstance(package.value, str):
        return name.value, package.value
    return name.value, None


def scan(module: Module, known: set[str]) -> tuple[list[Import], dict[str, str], list[Violation]]:
    """Every import of ``module``; the names it binds to opendo modules (anywhere in the file:
    scopes are not followed); imports that go above the top package."""
    package = module.name.split(".")[0]
    imports: list[Import] = []
    bindings: dict[str, str] = {}
    bad: list[Violation] = []

    def above(node: ast.stmt | ast.expr) -> None:
        message = f"`{ast.unparse(node)}` goes above the top-level package {package}"
        bad.append(Violation(1, module.path, node.lineno, message))

    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports.append(Import(node.lineno, ast.unparse(node), alias.name))
                if alias.asname:
                    bindings[alias.asname] = alias.name
                else:
                    bindings[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            target = absolute(module.package, node.level, node.module)
            if target is None:
                above(node)
                continue
            names = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    imports.append(Import(node.lineno, ast.unparse(node), sub))
                    bindings[alias.asname or alias.name] = sub
                else:
                    names.append(alias.name)
            if names:
                imports.append(Import(node.lineno, ast.unparse(node), target, tuple(names)))
        elif isinstance(node, ast.Call) and (call := literal_import(node)) is not None:
            name, base = call
            level = len(name) - len(name.lstrip("."))
            target = absolute(base or module.package, level, name[level:] or None)
            if target is None:
                above(node)
            else:
                imports.append(Import(node.lineno, ast.unparse(node), target))
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and (call := literal_import(node.value)) is not None
            and call[0] in known
        ):
            bindings[node.targets[0].id] = call[0]
    to_modules = {name: target for name, target in bindings.items() if target in known}
    return imports, to_modules, bad


def check_layers(module: Module, imports: list[Import]) -> Iterator[Violation]:
    """Rules 1 and 2."""
    package = module.name.split(".")[0]
    layer = layer_of(module.name)
    if layer is None:
        places = ", ".join(f"{name}/" if name in PACKAGES else f"{name}.py" for name in LAYERS)
        message = f"{module.name} is not in a layer: every module lives in one of {places}"
        yield Violation(1, module.path, 1, message)
    for imp in imports:
        top = imp.target.split(".")[0]
        if top == package:
            theirs = layer_of(imp.target)
            if theirs in CHOSEN_BY_PROJECT and layer not in ("project", "__init__", theirs):
                message = (
                    f"`{imp.text}` imports {imp.target}: only project/ chooses {theirs}, "
                    f"so only project/ (and __init__.py) import it"
                )
                yield Violation(2, module.path, imp.line, message)
            elif layer is None or theirs == layer:
                continue
            elif theirs is None:
                message = f"`{imp.text}` imports {imp.target}, which is not in a layer"
                yield Violation(1, module.path, imp.line, message)
            elif LAYERS[layer].layers != "*" and theirs not in LAYERS[layer].layers.split():
                message = f"`{imp.text}` imports {imp.target} (layer {theirs}); {describe(layer)}"
                yield Violation(1, module.path, imp.line, message)
        elif layer is not None and top not in sys.stdlib_module_names:
            allowed = LAYERS[layer].third_party
            if allowed != "*" and top not in allowed.split():
                message = f"`{imp.text}` imports the third-party package {top}; {describe(layer)}"
                yield Violation(1, module.path, imp.line, message)


def check_private(
    module: Module, imports: list[Import], bindings: dict[str, str], known: set[str]
) -> Iterator[Violation]:
    """Rule 3."""
    package = module.name.split(".")[0]
    mine = top_package(module.name)
    for imp in imports:
        if imp.target.split(".")[0] != package or top_package(imp.target) == mine:
            continue
        parts = imp.target.split(".")
        for i in range(2, len(parts)):
            if is_private(parts[i]):
                message = f"`{imp.text}` reads the private module {'.'.join(parts[: i + 1])}"
                yield Violation(3, module.path, imp.line, message)
                break
        for name in filter(is_private, imp.names):
            message = f"`{imp.text}` reads the private name {name} of {imp.target}"
            yield Violation(3, module.path, imp.line, message)

    def resolve(node: ast.expr) -> str | None:
        """The opendo module an expression is, when it is a module imported by name."""
        if isinstance(node, ast.Name):
            return bindings.get(node.id)
        if isinstance(node, ast.Attribute) and (base := resolve(node.value)) is not None:
            sub = f"{base}.{node.attr}"
            return sub if sub in known else None
        return None

    for node in ast.walk(module.tree):
        if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
            continue
        owner = resolve(node.value)
        if owner is not None and top_package(f"{owner}.{node.attr}") != mine:
            message = f"`{ast.unparse(node)}` reads the private name {node.attr} of {owner}"
            yield Violation(3, module.path, node.lineno, message)


def check_cycles(
    modules: dict[str, Module], graph: dict[str, dict[str, Import]]
) -> list[Violation]:
    """Rule 4: for every import that is on a cycle, the shortest cycle through it; each
    cycle once, however many of its imports find it."""
    cycles: set[tuple[str, ...]] = set()
    for component in strongly_connected(graph):
        for start in sorted(component):
            for nxt in sorted(graph[start]):
                if nxt in component:
                    path = [start, *shortest_path(graph, component, nxt, start)[:-1]]
                    first = path.index(min(path))
                    cycles.add(tuple(path[first:] + path[:first]))
    violations = []
    for cycle in sorted(cycles):
        edges = [graph[a][b] for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)]
        where = "; ".join(
            f"{modules[a].path}:{imp.line} `{imp.text}`"
            for a, imp in zip(cycle, edges, strict=True)
        )
        message = f"import cycle {' -> '.join([*cycle, cycle[0]])} ({where})"
        violations.append(Violation(4, modules[cycle[0]].path, edges[0].line, message))
    return violations


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's algorithm: the groups of modules that all reach each other (size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            member = ""
            while member != node:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
            if len(group) > 1:
                found.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def shortest_path(
    graph: dict[str, dict[str, Import]], within: set[str], start: str, end: str
) -> list[str]:
    came_from: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        if node == end:
            path = [end]
            while path[-1] != start:
                path.append(came_from[path[-1]])
            return path[::-1]
        for nxt in sorted(graph[node]):
            if nxt in within and nxt not in seen:
                seen.add(nxt)
                came_from[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{end} is not reachable from {start} in its own component")


def check_length(module: Module, root: Path, long_modules: Mapping[str, int]) -> list[Violation]:
    """Rule 5."""
    inside = module.path.removeprefix(f"{root.name}/")
    limit = long_modules.get(inside, MAX_LINES)
    if module.lines <= limit:
        return []
    message = (
        f"{module.lines} lines, over the {limit}-line limit: split it, or add it to "
        f"LONG_MODULES in tests/test_layers.py with the reason it cannot be"
    )
    return [Violation(5, module.path, 1, message)]


def check(root: Path, long_modules: Mapping[str, int] = LONG_MODULES) -> list[Violation]:
    """The violations of the layer rules in the package directory ``root``."""
    modules = {module.name: module for module in read_package(root)}
    known = set(modules)
    for name in modules:  # packages without __init__.py are modules too
        parts = name.split(".")
        known.update(".".join(parts[:i]) for i in range(1, len(parts)))
    violations: list[Violation] = []
    graph: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for module in modules.values():
        imports, bindings, bad = scan(module, known)
        violations += bad
        violations += check_layers(module, imports)
        violations += check_private(module, imports, bindings, known)
        violations += check_length(module, root, long_modules)
        for imp in sorted(imports, key=lambda imp: imp.line):
            if imp.target in modules and imp.target != module.name:
                graph[module.name].setdefault(imp.target, imp)
    violations += check_cycles(modules, graph)
    return sorted(violations, key=lambda v: (v.rule, v.path, v.line, v.message))


# The checker on small packages written for each rule.

CLEAN = {
    "__init__.py": """\
        from .api.objects import DurableObject
        from .cluster.leases import Lease
        from .server.app import create_app
        """,
    "core/ids.py": """\
        from __future__ import annotations

        import hashlib
        """,
    "core/protocols.py": """\
        from typing import Protocol

        from .ids import make_id
        """,
    "api/__init__.py": "from .objects import DurableObject\n",
    "api/objects.py": "from ..core.ids import make_id\n",
    "api/websocket.py": "_thing = 1\nthing = 2\n",
    "storage/sqlite.py": """\
        import sqlite3

        import msgspec

        from ..core import protocols
        """,
    "runtime/host.py": """\
        from typing import TYPE_CHECKING

        from .. import api
        from ..api import websocket
        from ..core.protocols import StorageDriver

        if TYPE_CHECKING:
            from ..api.objects import DurableObject


        def close(ws):
            return ws._state, websocket.thing, websocket.__name__, api.objects
        """,
    "server/app.py": """\
        import uvicorn
        import websockets.frames

        from ..runtime.host import close
        """,
    "project/loader.py": """\
        import importlib

        import watchfiles

        from ..cluster import leases
        from ..multiprocess.placement import Placement
        from ..storage.sqlite import SqliteDriver


        def load(name):
            return importlib.import_module(name)
        """,
    "workers/compat.py": "from ..api.objects import DurableObject\n",
    "testing/plugin.py": """\
        import pytest

        from ..project.loader import load
        """,
    "multiprocess/placement.py": "from ..runtime.host import close\n",
    "cluster/leases.py": """\
        import asyncpg

        from ..storage import sqlite
        """,
    "cli.py": """\
        import click

        from .project.loader import load
        """,
    "admin.py": "from .storage.sqlite import SqliteDriver\n",
}


def package(tmp_path: Path, changes: Mapping[str, str] | None = None) -> Path:
    """CLEAN, with ``changes`` (path -> source), written under ``tmp_path/opendo``; every
    directory gets an ``__init__.py``."""
    files = {**CLEAN, **(changes or {})}
    root = tmp_path / "opendo"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        for parent in path.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
    return root


def test_a_clean_package_has_no_violations(tmp_path: Path) -> None:
    assert check(package(tmp_path)) == []


def only(violations: list[Violation], rule: int) -> Violation:
    assert len(violations) == 1, "\n".join(map(str, violations))
    assert violations[0].rule == rule, violations[0]
    return violations[0]


# Every way of writing an import in runtime/host.py: {pkg}.{mod} is storage.sqlite (which
# runtime must not import) or core.protocols (which it may).
IMPORT_FORMS = {
    "relative": "from ..{pkg}.{mod} import SqliteDriver",
    "relative submodule": "from ..{pkg} import {mod}",
    "relative subpackage": "from .. import {pkg}",
    "absolute": "import opendo.{pkg}.{mod}",
    "absolute from": "from opendo.{pkg}.{mod} import SqliteDriver",
    "in a function": "def f():\n    from ..{pkg} import {mod}",
    "in a method": "class C:\n    async def m(self):\n        import opendo.{pkg}.{mod} as driver",
    "type only": "if TYPE_CHECKING:\n    from ..{pkg}.{mod} import SqliteDriver",
    "import_module": "def f():\n    return importlib.import_module('opendo.{pkg}.{mod}')",
    "relative import_module": "importlib.import_module('..{pkg}.{mod}', __package__)",
    "__import__": "__import__('opendo.{pkg}.{mod}')",
}


@pytest.mark.parametrize("form", IMPORT_FORMS.values(), ids=IMPORT_FORMS.keys())
def test_rule_1_counts_every_import(tmp_path: Path, form: str) -> None:
    header = "import importlib\nfrom typing import TYPE_CHECKING\n\n"
    host = header + form.format(pkg="storage", mod="sqlite") + "\n"
    violation = only(check(package(tmp_path / "bad", {"runtime/host.py": host})), 1)
    assert violation.path == "opendo/runtime/host.py"
    assert violation.line == next(
        n for n, line in enumerate(host.splitlines(), 1) if "storage" in line
    )
    target = "opendo.storage" if form == IMPORT_FORMS["relative subpackage"] else "opendo.storage."
    assert target in violation.message
    assert "runtime may import only core, api, the standard library" in violation.message

    host = header + form.format(pkg="core", mod="protocols") + "\n"
    assert check(package(tmp_path / "good", {"runtime/host.py": host})) == []


def test_rule_1_third_party_packages_per_layer(tmp_path: Path) -> None:
    bad = {
        "core/ids.py": "import json\nimport msgspec\n",
        "server/app.py": "import uvicorn\n\n\ndef f():\n    import click\n",
    }
    violations = check(package(tmp_path / "bad", bad))
    assert [(v.rule, v.path, v.line) for v in violations] == [
        (1, "opendo/core/ids.py", 2),
        (1, "opendo/server/app.py", 5),
    ]
    assert "the third-party package msgspec; core may import only the standard library" in str(
        violations[0]
    )
    assert "`import click` imports the third-party package click" in str(violations[1])

    good = {
        "core/ids.py": "import json\nimport os.path\nfrom collections import abc\n",
        "storage/sqlite.py": "import msgspec.msgpack\nfrom msgspec import Raw\n",
        "project/loader.py": "import anything.at.all\n",
    }
    assert check(package(tmp_path / "good", good)) == []


def test_rule_1_every_module_is_in_a_layer(tmp_path: Path) -> None:
    bad = {
        "_helpers.py": "import os\n",
        "runtime/host.py": "from .._helpers import retry\n",
        "workers/compat.py": "from .. import DurableObject\n",
    }
    violations = check(package(tmp_path / "bad", bad))
    assert [str(v) for v in violations] == [
        "opendo/_helpers.py:1: rule 1 (layers): opendo._helpers is not in a layer: every module "
        "lives in one of __init__.py, core/, api/, storage/, runtime/, server/, project/, "
        "workers/, testing/, multiprocess/, cluster/, cli.py, admin.py",
        "opendo/runtime/host.py:1: rule 1 (layers): `from .._helpers import retry` imports "
        "opendo._helpers, which is not in a layer",
        "opendo/workers/compat.py:1: rule 1 (layers): `from .. import DurableObject` imports "
        "opendo (layer __init__); workers may import only core, api, runtime, storage, the "
        "standard library",
    ]
    good = {"runtime/helpers.py": "import os\n", "runtime/host.py": "from .helpers import retry\n"}
    assert check(package(tmp_path / "good", good)) == []


def test_rule_1_a_relative_import_above_the_package(tmp_path: Path) -> None:
    violation = only(check(package(tmp_path, {"core/ids.py": "from ... import x\n"})), 1)
    assert str(violation) == (
        "opendo/core/ids.py:1: rule 1 (layers): `from ... import x` goes above the top-level "
        "package opendo"
    )


def test_rule_2_only_project_imports_multiprocess_and_cluster(tmp_path: Path) -> None:
    bad = {
        "server/app.py": "def serve():\n    from ..multiprocess import placement\n",
        "cluster/leases.py": "from ..multiprocess.placement import Placement\n",
        "cli.py": "import opendo.cluster.leases\n",
    }
    violations = check(package(tmp_path / "bad", bad))
    assert [(v.rule, v.path, v.line) for v in violations] == [
        (2, "opendo/cli.py", 1),
        (2, "opendo/cluster/leases.py", 1),
        (2, "opendo/server/app.py", 2),
    ]
    assert str(violations[2]) == (
        "opendo/server/app.py:2: rule 2 (only project imports multiprocess and cluster): "
        "`from ..multiprocess import placement` imports opendo.multiprocess.placement: only "
        "project/ chooses multiprocess, so only project/ (and __init__.py) import it"
    )
    # CLEAN's project/loader.py and __init__.py import both, and multiprocess imports itself.
    good = {"multiprocess/forwarder.py": "from .placement import Placement\n"}
    assert check(package(tmp_path / "good", good)) == []


def test_rule_3_no_private_names_of_another_package(tmp_path: Path) -> None:
    bad = {
        "runtime/host.py": """\
            import opendo.api.websocket
            from ..api import websocket as ws
            from ..api._internal import helper
            from ..api.websocket import _thing, thing


            def close(socket):
                return ws._thing, opendo.api.websocket._thing, socket._state, ws.__name__
            """,
        "api/_internal.py": "helper = 1\n",
    }
    violations = check(package(tmp_path / "bad", bad))
    assert [(v.rule, v.line, v.message) for v in violations] == [
        (
            3,
            3,
            "`from ..api._internal import helper` reads the private module opendo.api._internal",
        ),
        (
            3,
            4,
            "`from ..api.websocket import _thing, thing` reads the private name _thing of "
            "opendo.api.websocket",
        ),
        (
            3,
            8,
            "`opendo.api.websocket._thing` reads the private name _thing of opendo.api.websocket",
        ),
        (3, 8, "`ws._thing` reads the private name _thing of opendo.api.websocket"),
    ]
    good = {  # the same reads, from inside api/
        "api/objects.py": """\
            import opendo.api.websocket
            from . import websocket as ws
            from ._internal import helper
            from .websocket import _thing, thing


            def close(socket):
                return ws._thing, opendo.api.websocket._thing, socket._state, ws.__name__
            """,
        "api/_internal.py": "helper = 1\n",
    }
    assert check(package(tmp_path / "good", good)) == []


def test_rule_4_an_import_cycle_is_reported_once(tmp_path: Path) -> None:
    bad = {
        "core/a.py": "from . import b\n",
        "core/b.py": "def f():\n    from .c import g\n",
        "core/c.py": "import typing\n\nif typing.TYPE_CHECKING:\n    from .a import A\n",
    }
    violation = only(check(package(tmp_path / "bad", bad)), 4)
    assert str(violation) == (
        "opendo/core/a.py:1: rule 4 (no import cycles): import cycle opendo.core.a -> "
        "opendo.core.b -> opendo.core.c -> opendo.core.a (opendo/core/a.py:1 `from . import b`; "
        "opendo/core/b.py:2 `from .c import g`; opendo/core/c.py:4 `from .a import A`)"
    )
    good = {**bad, "core/c.py": "import typing\n"}
    assert check(package(tmp_path / "good", good)) == []


def test_rule_4_two_cycles_through_one_module_are_both_reported(tmp_path: Path) -> None:
    cycles = {
        "core/a.py": "from . import b, c\n",
        "core/b.py": "from .a import x\n",
        "core/c.py": "from .a import y\n",
    }
    violations = check(package(tmp_path, cycles))
    assert [v.message.split(" (")[0] for v in violations] == [
        "import cycle opendo.core.a -> opendo.core.b -> opendo.core.a",
        "import cycle opendo.core.a -> opendo.core.c -> opendo.core.a",
    ]


def test_rule_5_modules_stay_under_the_line_limit(tmp_path: Path) -> None:
    long = {"storage/kv.py": "x = 1\n" * (MAX_LINES + 1)}
    violation = only(check(package(tmp_path / "bad", long)), 5)
    assert str(violation) == (
        "opendo/storage/kv.py:1: rule 5 (module length): 801 lines, over the 800-line limit: "
        "split it, or add it to LONG_MODULES in tests/test_layers.py with the reason it cannot be"
    )
    assert check(package(tmp_path / "bad", long), long_modules={"storage/kv.py": 900}) == []
    at_the_limit = {"storage/kv.py": "x = 1\n" * MAX_LINES}
    assert check(package(tmp_path / "good", at_the_limit)) == []


def test_opendo_follows_the_layer_rules() -> None:
    violations = check(SRC)
    assert not violations, f"{len(violations)} violations of the layer rules (DESIGN.md §3):\n" + (
        "\n".join(map(str, violations))
    )
