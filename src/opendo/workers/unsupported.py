"""Errors for what opendo does not provide, and the import hooks that say so."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import (
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, NoReturn, TypeVar

from ..api.http import Headers
from ..core.errors import ConfigError

_T = TypeVar("_T")
_R = TypeVar("_R")

HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


class NotSupportedError(NotImplementedError):
    """A Cloudflare API that opendo does not provide."""


class NotSupportedInProjectError(NotSupportedError, ConfigError):
    """A project's Worker code uses what opendo does not provide, found when it loads: a
    ``ConfigError`` too, so ``opendo dev``/``serve`` report it as one line."""


class NotSupportedModuleError(NotSupportedError, ModuleNotFoundError):
    """``import`` of a module of Cloudflare's Python runtime that opendo does not provide;
    a ``ModuleNotFoundError`` too, so ``try: import pyodide / except ImportError`` works."""


def _unsupported(what: str, why: str) -> NoReturn:
    raise NotSupportedError(f"{what} is not supported by opendo: {why}")


# Cloudflare's Python runtime has a pyodide package; where no real one is importable, opendo's
# stand-in (opendo.workers.pyodide) provides these modules, and the others fail to import.
_PROVIDED = ("pyodide", "pyodide.ffi", "pyodide.http")
_UNSUPPORTED_WHY = (
    "opendo provides pyodide.ffi (to_js, to_py, create_proxy: values are plain Python "
    "already) and pyodide.http (pyfetch, on opendo.fetch), not the rest of pyodide"
)


class _UnsupportedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: finds ``pyodide`` and its submodules when no finder before
    it did, and loads opendo's stand-in for the ones it has (``_PROVIDED``), or fails."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "pyodide" and not fullname.startswith("pyodide."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname == "pyodide")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        if spec.name in _PROVIDED:
            from . import pyodide

            return pyodide.modules()[spec.name]
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        if name in _PROVIDED:
            return
        error = NotSupportedModuleError(
            f"the {name} module is not supported by opendo: {_UNSUPPORTED_WHY}"
        )
        error.name = name
        raise error


def install_import_hooks() -> None:
    """Make ``import pyodide`` (when no real one is importable) raise
    ``NotSupportedModuleError``; done by opendo when it loads a project."""
    if not any(isinstance(finder, _UnsupportedModules) for finder in sys.meta_path):
        sys.meta_path.append(_UnsupportedModules())


# -- module-level functions --------------------------------------------------------------------


def handler(func: Any) -> NoReturn:
    """Module-level handlers (``@handler async def on_fetch(request, env)``): not
    supported."""
    _unsupported(
        "a module-level handler (@handler)",
        "define class Default(WorkerEntrypoint) with async def fetch(self, request)",
    )


def import_from_javascript(module_name: str) -> NoReturn:
    _unsupported(f"import_from_javascript({module_name!r})", "no JavaScript runs under opendo")


def patch_env(*args: Any, **kwargs: Any) -> NoReturn:
    _unsupported("patch_env()", "pass vars to the project instead (opendo(..., vars={...}))")


def python_from_rpc(value: _T) -> _T:
    """The value itself: RPC values are Python values already."""
    return value


def python_to_rpc(value: _T) -> _T:
    """The value itself: RPC values are Python values already."""
    return value
