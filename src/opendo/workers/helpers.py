"""Small helpers of the compatibility layer: awaitables, arities, keys, options."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
)
from typing import Any, Generic, TypeVar

from ..api.http import Headers

_T = TypeVar("_T")
_R = TypeVar("_R")

HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


# -- small helpers -----------------------------------------------------------------------------


class _Then(Generic[_T, _R]):
    """``await`` an already delivered call, then convert its result."""

    __slots__ = ("_awaitable", "_convert")

    def __init__(self, awaitable: Awaitable[_T], convert: Callable[[_T], _R]) -> None:
        self._awaitable = awaitable
        self._convert = convert

    def __await__(self) -> Generator[Any, None, _R]:
        value = yield from self._awaitable.__await__()
        return self._convert(value)


_ARITY: weakref.WeakKeyDictionary[Callable[..., Any], int | None] = weakref.WeakKeyDictionary()


def _arity(fn: Callable[..., Any]) -> int | None:
    """How many positional arguments ``fn`` takes (None: any number)."""
    function = getattr(fn, "__func__", fn)  # a bound method: its function, less ``self``
    bound = function is not fn
    try:
        count = _ARITY[function]
    except (KeyError, TypeError):
        count = _positional(function)
        try:
            _ARITY[function] = count
        except TypeError:
            pass
    return None if count is None else max(count - bound, 0)


def _positional(fn: Callable[..., Any]) -> int | None:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            count += 1
    return count


def _relaxed_call(fn: Callable[..., _T], *args: Any) -> _T:
    """Call ``fn`` with as many of ``args`` as it takes, as Cloudflare calls Python handlers
    (so ``async def alarm(self)`` works as well as ``async def alarm(self, alarm_info)``)."""
    count = _arity(fn)
    return fn(*args) if count is None else fn(*args[:count])


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _key(key: Any) -> Any:
    """A number key becomes its string, as JavaScript's storage API does; anything else is
    for opendo's storage to accept or refuse."""
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    return key


def _keys(key: Any) -> Any:
    if isinstance(key, list | tuple):
        return [_key(k) for k in key]
    return _key(key)


def _plain(value: Any) -> Any:
    """``value`` with every ``JsDict`` (a SQL row, say) made a plain dict, so that storage
    and attachments take it as Cloudflare's do; ``value`` itself when it holds none."""
    kind = type(value)
    if kind is JsDict:
        return {k: _plain(v) for k, v in value.items()}
    if kind is dict:
        items = {k: _plain(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if kind is list or kind is tuple:
        members = [_plain(v) for v in value]
        if all(m is v for m, v in zip(members, value, strict=True)):
            return value
        return members if kind is list else tuple(members)
    return value


_FLAGS = frozenset({"allowConcurrency", "noCache"})
_WRITE_FLAGS = _FLAGS | {"allowUnconfirmed"}
_ALARM_WRITE_FLAGS = frozenset({"allowConcurrency", "allowUnconfirmed"})
_LIST_OPTIONS = _FLAGS | {"start", "startAfter", "start_after", "end", "prefix", "reverse", "limit"}


def _options(
    method: str, options: Any, keywords: Mapping[str, Any], allowed: frozenset[str]
) -> dict[str, Any]:
    """Options given as a dict (``list({"prefix": "a"})``) and/or as keywords."""
    if options is None:
        merged = dict(keywords)
    elif isinstance(options, Mapping):
        merged = {**options, **keywords}
    else:
        raise TypeError(
            f"{method}(): options must be a dict (or keywords), got {type(options).__name__}"
        )
    unknown = sorted(set(merged) - allowed)
    if unknown:
        raise TypeError(
            f"{method}(): unknown option(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(sorted(allowed)) or 'none'}"
        )
    return merged


def _list_args(
    method: str, options: Any, keywords: Mapping[str, Any]
) -> tuple[Any, Any, Any, Any, bool, Any]:
    opts = _options(method, options, keywords, _LIST_OPTIONS)
    if "startAfter" in opts and "start_after" in opts:
        raise TypeError(f"{method}(): give startAfter once")
    start_after = opts.get("startAfter", opts.get("start_after"))
    return (
        _key(opts.get("start")),
        _key(start_after),
        _key(opts.get("end")),
        _key(opts.get("prefix")),
        bool(opts.get("reverse", False)),
        opts.get("limit"),
    )


class JsDict(dict[str, Any]):
    """A dict whose keys are also attributes (``row.name`` and ``row["name"]``), as
    Cloudflare's SDK hands JavaScript objects (SQL rows among them) to Python. A key named
    like a dict method (``items``, ``keys``, ``get`` …) is reached as ``row["items"]`` only,
    there as here."""

    _rpc_as_dict = True  # over RPC: sent as a plain dict, as Cloudflare sends a JS object

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value
