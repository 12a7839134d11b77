"""Ids, namespaces, stubs and ``env``, with Cloudflare's camelCase names."""

from __future__ import annotations

import weakref
from collections.abc import (
    Awaitable,
    Iterable,
    Mapping,
)
from typing import Any, NoReturn, TypeVar

from ..api import http as _http
from ..api import objects as _api
from ..api.http import Headers
from ..core import ids as _ids
from ..runtime import stubs as _namespace
from .helpers import _options, _Then
from .http import Response, _as_response
from .unsupported import _unsupported

_T = TypeVar("_T")
_R = TypeVar("_R")

HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


# -- ids, namespaces, stubs, env -----------------------------------------------------------


class DurableObjectId(_ids.DurableObjectId):
    """An ``opendo.DurableObjectId`` with ``toString()`` (``str(id)`` works too)."""

    __slots__ = ()

    def toString(self) -> str:
        return str(self)

    @property
    def jurisdiction(self) -> None:
        return None


def _as_id(id: _ids.DurableObjectId) -> DurableObjectId:
    if isinstance(id, DurableObjectId):
        return id
    return DurableObjectId(id._raw, name=id.name, namespace=id._namespace)


_RPC_RESERVED = frozenset(
    {"fetch", "alarm", "connect", "webSocketMessage", "webSocketClose", "webSocketError"}
)
_GET_OPTIONS = frozenset({"locationHint", "routingMode"})
_FETCH_OPTIONS = frozenset({"method", "headers", "body"})


class DurableObjectStub:
    """A stub, as Cloudflare's: ``await stub.fetch(url_or_request, method=, headers=,
    body=)``, ``await stub.anyMethod(…)``, ``stub.id``, ``stub.name``. Calls on one stub are
    delivered in the order they are made."""

    __slots__ = ("_stub",)
    _rpc_by_reference = True  # passed as it is over RPC

    def __init__(self, stub: _namespace.DurableObjectStub) -> None:
        self._stub = stub

    @property
    def id(self) -> DurableObjectId:
        return _as_id(self._stub.id)

    @property
    def name(self) -> str | None:
        return self._stub.name

    def fetch(self, input: _http.Request | str, /, **options: Any) -> Awaitable[Response]:
        unknown = sorted(set(options) - _FETCH_OPTIONS)
        if unknown:
            raise TypeError(
                f"stub.fetch(): unsupported option(s) {', '.join(map(repr, unknown))}; "
                "it takes method, headers and body"
            )
        if "method" in options:
            options["method"] = str(options["method"])
        delivered = self._stub.fetch(input, **options)  # delivered now, in call order
        return _Then(delivered, _as_response)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in _RPC_RESERVED:
            raise AttributeError(f"{name!r} cannot be called over RPC")
        return getattr(self._stub, name)

    def __repr__(self) -> str:
        return repr(self._stub)


class DurableObjectNamespace:
    """``env.NS``: ``idFromName``, ``newUniqueId``, ``idFromString``, ``get(id)``,
    ``getByName(name)``."""

    __slots__ = ("_namespace",)
    _rpc_by_reference = True  # passed as it is over RPC

    def __init__(self, namespace: _namespace.DurableObjectNamespace) -> None:
        self._namespace = namespace

    def idFromName(self, name: str) -> DurableObjectId:
        return _as_id(self._namespace.id_from_name(name))

    def newUniqueId(self, options: Mapping[str, Any] | None = None) -> DurableObjectId:
        opts = _options("newUniqueId", options, {}, frozenset({"jurisdiction"}))
        if opts.get("jurisdiction") is not None:
            _unsupported("newUniqueId({'jurisdiction': …})", "there are no jurisdictions")
        return _as_id(self._namespace.new_unique_id())

    def idFromString(self, id: str) -> DurableObjectId:
        return _as_id(self._namespace.id_from_string(id))

    def get(
        self, id: _ids.DurableObjectId, options: Mapping[str, Any] | None = None
    ) -> DurableObjectStub:
        _options("get", options, {}, _GET_OPTIONS)  # hints only: one place to run here
        return DurableObjectStub(self._namespace.get(id))

    def getByName(self, name: str, options: Mapping[str, Any] | None = None) -> DurableObjectStub:
        _options("getByName", options, {}, _GET_OPTIONS)
        return DurableObjectStub(self._namespace.get_by_name(name))

    def jurisdiction(self, name: str) -> NoReturn:
        _unsupported(f"env.NS.jurisdiction({name!r})", "there are no jurisdictions")

    def getExisting(self, *args: Any) -> NoReturn:
        _unsupported("env.NS.getExisting()", "use get(id)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._namespace, name)

    def __repr__(self) -> str:
        return repr(self._namespace)


class Env:
    """``self.env``: vars and secrets as they are; Durable Object bindings as
    ``workers.DurableObjectNamespace``."""

    __slots__ = ("_env", "_bindings", "__weakref__")

    def __init__(self, env: _api.Env) -> None:
        self._env = env
        self._bindings: dict[str, DurableObjectNamespace] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._bindings[name]
        except KeyError:
            pass
        try:
            value = self._env[name]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None
        if isinstance(value, _namespace.DurableObjectNamespace):
            value = self._bindings[name] = DurableObjectNamespace(value)
        return value

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError as exc:
            raise KeyError(exc.args[0]) from None

    def __contains__(self, name: object) -> bool:
        return name in self._env

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def __repr__(self) -> str:
        return repr(self._env)


_ENVS: weakref.WeakKeyDictionary[_api.Env, Env] = weakref.WeakKeyDictionary()


def _as_env(env: Any) -> Any:
    if not isinstance(env, _api.Env):
        return env
    wrapped = _ENVS.get(env)
    if wrapped is None:
        wrapped = _ENVS[env] = Env(env)
    return wrapped
