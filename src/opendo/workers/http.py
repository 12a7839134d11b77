"""``Request`` and ``Response`` as Cloudflare's Python Workers use them."""

from __future__ import annotations

import json as _json
from collections.abc import (
    Iterable,
    Mapping,
)
from http import HTTPMethod
from typing import Any, TypeVar

from ..api import http as _http
from ..api import websocket as _ws
from ..api.http import Headers

_T = TypeVar("_T")
_R = TypeVar("_R")

HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


# -- HTTP ----------------------------------------------------------------------------------------

_METHOD: Any = _http.Request.__dict__["method"]  # the slot that keeps a request's method


class Request(_http.Request):
    """An HTTP request: ``opendo.Request`` (``url``, ``method``, ``headers``, ``await
    text()/json()/bytes()``), as Cloudflare's ``workers.Request`` is used.

    ``Request(url, method=…, headers=…, body=…)``, or ``Request(request, …)`` for a copy
    with some fields replaced. Handlers always receive a ``workers.Request``.
    """

    __slots__ = ()

    def __init__(
        self,
        input: _http.Request | str,
        *,
        method: str | None = None,
        headers: HeadersInit = None,
        body: str | bytes | None = None,
    ) -> None:
        if isinstance(input, _http.Request):
            super().__init__(
                input.url,
                method=method or input.method,
                headers=input.headers if headers is None else headers,
                body=body,
            )
            if body is None:
                self._body = input._body  # the same body, read once
        else:
            super().__init__(input, method=method or "GET", headers=headers, body=body)

    @property
    def method(self) -> str:
        """The method as ``http.HTTPMethod`` (a ``str``: ``request.method == "GET"`` and
        ``request.method.value`` both work, as with Cloudflare's SDK); a method that is not
        one of HTTPMethod's stays a plain ``str``."""
        value: str = _METHOD.__get__(self)
        try:
            return HTTPMethod(value)
        except ValueError:
            return value

    @method.setter
    def method(self, value: str) -> None:
        _METHOD.__set__(self, value)

    @property
    def cf(self) -> None:
        """Cloudflare's request properties (``request.cf.colo`` …): None here, as Cloudflare
        gives for requests that did not come through its network."""
        return None

    def clone(self) -> Request:
        return Request(self)

    @property
    def body(self) -> BodyStream:
        """The body as the stream Cloudflare gives (a ``ReadableStream``): ``async for chunk
        in request.body``, or ``reader = request.body.getReader()`` and ``await
        reader.read()`` (``{"done": …, "value": …}``). The body is read whole before its
        first chunk is given, as one chunk (opendo bounds it by ``max_body_bytes``)."""
        return BodyStream(self)

    async def json(self) -> Any:
        """The body parsed: objects and arrays as pyodide hands them over (a ``dict`` or a
        ``list`` that also has ``to_py()``, so ``(await request.json()).to_py()`` works)."""
        from .pyodide import as_js

        return as_js(await super().json())

    def __repr__(self) -> str:
        return f"Request(method={self.method!r}, url={self.url!r})"


def _as_request(request: Any) -> Any:
    """An ``opendo.Request`` as a ``workers.Request`` (the same fields, the same body)."""
    if isinstance(request, Request) or not isinstance(request, _http.Request):
        return request
    converted = Request.__new__(Request)
    for name in _http.Request.__slots__:
        setattr(converted, name, getattr(request, name))
    return converted


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Response(_http.Response):
    """An HTTP response, as Cloudflare's Python ``Response``.

    ::

        Response("hello", status=201, headers={"x-a": "1"})
        Response(None, status=101, web_socket=client)
        Response.json({"ok": True})              # builds a JSON response
        data = await response.json()             # parses one (text(), bytes() as usual)
    """

    __slots__ = ()

    def __init__(
        self,
        body: str | bytes | None = None,
        status: int | None = None,
        status_text: str | None = "",
        headers: HeadersInit = None,
        web_socket: _ws.WebSocket | None = None,
    ) -> None:
        super().__init__(
            body,
            status=200 if status is None else int(status),
            status_text=status_text or None,
            headers=headers,
            web_socket=web_socket,
        )

    @classmethod
    def from_json(
        cls,
        data: Any,
        status: int = 200,
        status_text: str | None = "",
        headers: HeadersInit = None,
    ) -> Response:
        """A response whose body is ``data`` as JSON (``application/json`` unless
        ``headers`` name another content type)."""
        fields = Headers(headers)
        if "content-type" not in fields:
            fields.set("content-type", "application/json")
        return cls(_json.dumps(data), status, status_text, fields)

    def json(self, *args: Any, **kwargs: Any) -> Any:
        """``await response.json()`` parses the body; ``Response.json(data, status=…)``
        (called on the class) builds a JSON response, as Cloudflare's SDK allows both."""
        if isinstance(self, _http.Response):
            if args or kwargs:
                raise TypeError("response.json() takes no arguments; Response.json(data) builds")
            return self._parsed_json()
        return Response.from_json(self, *args, **kwargs)

    async def _parsed_json(self) -> Any:
        return _json.loads(self.body)

    @staticmethod
    def redirect(url: str, status: int = 302) -> Response:
        if int(status) not in _REDIRECTS:
            raise ValueError(f"a redirect status must be 301, 302, 303, 307 or 308, got {status}")
        return Response(None, status, headers={"location": url})

    def __repr__(self) -> str:
        return f"Response(status={self.status})"


FetchResponse = Response


def _as_response(response: Any) -> Any:
    """An ``opendo.Response`` as a ``workers.Response`` (the same fields)."""
    if isinstance(response, Response) or not isinstance(response, _http.Response):
        return response
    converted = Response.__new__(Response)
    for name in _http.Response.__slots__:
        setattr(converted, name, getattr(response, name))
    return converted


class BodyStream:
    """``request.body``: the body as an async iterable of ``bytes`` chunks, with the stream
    reader's ``getReader().read()``."""

    __slots__ = ("_request", "_given")

    def __init__(self, request: _http.Request) -> None:
        self._request = request
        self._given = False

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        if self._given:
            raise StopAsyncIteration
        self._given = True
        data = await self._request.bytes()
        if not data:
            raise StopAsyncIteration
        return data

    def getReader(self) -> BodyStream:  # noqa: N802  (the stream's name)
        return self

    async def read(self) -> dict[str, Any]:
        try:
            return {"done": False, "value": await self.__anext__()}
        except StopAsyncIteration:
            return {"done": True, "value": None}
