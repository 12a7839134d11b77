"""The ``pyodide`` module a Cloudflare Python Worker imports, where no real one is installed:
``pyodide.ffi`` and ``pyodide.http``, as far as plain Python makes them honest.

Under opendo no JavaScript runs and every value is a Python value already, so converting is
the identity: ``to_js(value)`` is ``value`` (or ``dict_converter(value.items())`` for a
dict, when one is given, as Cloudflare's examples pass ``Object.fromEntries``), ``to_py``
gives back what it is given (``.to_py()`` of a ``JsProxy`` value: its plain copy), and
``create_proxy(f)`` is ``f`` with a ``destroy()`` that does nothing. ``pyodide.http.pyfetch``
is ``opendo.fetch``. Any other part of pyodide raises ``NotSupportedModuleError`` on import.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from ..api.http import Response
from ..runtime.outbound import fetch

__all__ = ["JsProxy", "modules"]


class JsProxy:
    """What pyodide calls a JavaScript value: here, a Python value that also has
    ``to_py()`` (``await request.json()`` of a ``workers.Request`` gives one)."""

    def to_py(self, **options: Any) -> Any:
        return self


class JsObject(dict[str, Any], JsProxy):
    """A parsed JSON object: a ``dict``, with ``to_py()`` (a plain ``dict``)."""

    def to_py(self, **options: Any) -> dict[str, Any]:
        return {k: to_py(v) for k, v in self.items()}


class JsArray(list[Any], JsProxy):
    """A parsed JSON array: a ``list``, with ``to_py()`` (a plain ``list``)."""

    def to_py(self, **options: Any) -> list[Any]:
        return [to_py(v) for v in self]


class JsException(Exception):  # noqa: N818  (pyodide's name)
    """``pyodide.ffi.JsException``: no JavaScript runs here, so none is raised."""


def as_js(value: Any) -> Any:
    """Parsed JSON as pyodide hands it over: objects and arrays with ``to_py()``."""
    if isinstance(value, dict):
        return JsObject({k: as_js(v) for k, v in value.items()})
    if isinstance(value, list):
        return JsArray(as_js(v) for v in value)
    return value


def to_js(value: Any, *, dict_converter: Callable[[Any], Any] | None = None, **options: Any) -> Any:
    if dict_converter is not None and isinstance(value, dict):
        return dict_converter(list(value.items()))
    return value


def to_py(value: Any, **options: Any) -> Any:
    return value.to_py() if isinstance(value, JsProxy) else value


class _Proxy:
    __slots__ = ("_target",)

    def __init__(self, target: Callable[..., Any]) -> None:
        self._target = target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target(*args, **kwargs)

    def destroy(self) -> None:
        pass


def create_proxy(obj: Any, **options: Any) -> Any:
    return _Proxy(obj) if callable(obj) else obj


def create_once_callable(obj: Callable[..., Any], **options: Any) -> Any:
    return _Proxy(obj)


class FetchResponse:
    """``pyodide.http.pyfetch``'s answer: ``status``, ``ok``, ``status_text``, ``headers``,
    ``url``, and ``await`` ``json()``, ``text()``/``string()``, ``bytes()``."""

    def __init__(self, url: str, response: Response) -> None:
        self.url = url
        self.response = response
        self.status = response.status
        self.status_text = response.status_text
        self.ok = response.ok
        self.headers = dict(response.headers.items())

    async def json(self) -> Any:
        return as_js(await self.response._parsed_json())

    async def text(self) -> str:
        return await self.response.text()

    string = text

    async def bytes(self) -> bytes:
        return await self.response.bytes()


async def pyfetch(url: str, **options: Any) -> FetchResponse:
    body = options.get("body")
    response = await fetch(
        url,
        method=options.get("method", "GET"),
        headers=options.get("headers"),
        body=body,
    )
    return FetchResponse(url, response)


def modules() -> dict[str, types.ModuleType]:
    """``pyodide``, ``pyodide.ffi`` and ``pyodide.http``, as new module objects."""
    package = types.ModuleType("pyodide", __doc__)
    package.__path__ = []  # a package: its submodules are found by opendo's import hook
    ffi = types.ModuleType("pyodide.ffi", "pyodide.ffi under opendo: see opendo.workers.pyodide")
    for name, value in {
        "JsProxy": JsProxy,
        "JsException": JsException,
        "to_js": to_js,
        "to_py": to_py,
        "create_proxy": create_proxy,
        "create_once_callable": create_once_callable,
    }.items():
        setattr(ffi, name, value)
    http = types.ModuleType("pyodide.http", "pyodide.http under opendo: pyfetch is opendo.fetch")
    http.pyfetch = pyfetch  # type: ignore[attr-defined]
    http.FetchResponse = FetchResponse  # type: ignore[attr-defined]
    package.ffi = ffi  # type: ignore[attr-defined]
    package.http = http  # type: ignore[attr-defined]
    return {"pyodide": package, "pyodide.ffi": ffi, "pyodide.http": http}
