"""Request, Response and Headers: the Fetch API's shapes, in Python."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["Headers", "Request", "Response"]

_PHRASES = {s.value: s.phrase for s in HTTPStatus}

BodyReader = Callable[[], Awaitable[bytes]]
_Bytes = bytes  # (inside Request, "bytes" is its method)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00\r\n]")


class Headers:
    """Case-insensitive HTTP headers that keep repeated fields."""

    __slots__ = ("_items",)

    def __init__(
        self, init: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None
    ) -> None:
        self._items: list[tuple[str, str]] = []
        if init is None:
            return
        pairs = init.items() if isinstance(init, Headers | Mapping) else init
        for name, value in pairs:
            self.append(name, value)

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        values = [v for k, v in self._items if k == key]
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self._items if k == key]

    def set(self, name: str, value: str) -> None:
        self.delete(name)
        self.append(name, value)

    @classmethod
    def _trusted(cls, pairs: list[tuple[str, str]]) -> Headers:
        """Headers a server already parsed and checked (names in lower case)."""
        headers = cls.__new__(cls)
        headers._items = pairs
        return headers

    def append(self, name: str, value: str) -> None:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("header names and values must be str")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r:.80}: expected an HTTP token")
        if _BAD_VALUE.search(value):
            raise ValueError(f"invalid value for header {name!r}: it may not contain CR, LF or NUL")
        self._items.append((name.lower(), value.strip(" \t")))

    def delete(self, name: str) -> None:
        key = name.lower()
        self._items = [(k, v) for k, v in self._items if k != key]

    def has(self, name: str) -> bool:
        return name in self

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(k == key for k, _ in self._items)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class _Body:
    """A body read at most once from its source, then kept."""

    __slots__ = ("_data", "_reader")

    def __init__(self, data: bytes | None, reader: BodyReader | None) -> None:
        self._data = data
        self._reader = reader

    def known(self) -> bytes | None:
        if self._data is None and self._reader is None:
            self._data = b""
        return self._data

    async def read(self) -> bytes:
        if self._data is None:
            reader, self._reader = self._reader, None
            self._data = await reader() if reader is not None else b""
        return self._data


def _encode_body(body: str | bytes | bytearray | memoryview | None) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    raise TypeError(f"a body must be str, bytes or None, got {type(body).__name__}")


class Request:
    """An HTTP request, as a Worker or a Durable Object's ``fetch`` sees it."""

    __slots__ = ("url", "method", "headers", "_body", "_parts")
    _rpc_by_reference = True  # passed as it is over RPC

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: str | bytes | None = None,
        body_reader: BodyReader | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"a request url must be a str, got {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"a request needs an absolute http(s) url, got {url!r}")
        self.url = url
        self._parts = parts
        self.method = method.upper()
        self.headers = Headers(headers)
        self._body = _Body(_encode_body(body), body_reader)

    @property
    def path(self) -> str:
        """The url's path, e.g. ``/room``."""
        return self._parts.path or "/"

    @property
    def query(self) -> str:
        return self._parts.query

    async def bytes(self) -> bytes:
        return await self._body.read()

    async def text(self) -> str:
        return (await self._body.read()).decode()

    async def json(self) -> Any:
        return json.loads(await self._body.read())

    def read_body_now(self) -> _Bytes:
        """The body, when it is known without waiting (given, or read already); else a
        RuntimeError (``await request.bytes()`` reads it)."""
        data = self._body.known()
        if data is None:
            raise RuntimeError("the request body has not been read yet: await request.bytes()")
        return data

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


class _JsonMethod:
    """``json`` of a response: on the class, ``from_json``; on a response, its parsed body."""

    def __get__(self, response: Response | None, cls: type[Response]) -> Any:
        if response is None:
            return cls.from_json
        return response._parsed_json


class Response:
    """An HTTP response; ``Response(status=101, web_socket=client)`` accepts a WebSocket."""

    __slots__ = ("status", "status_text", "headers", "body", "web_socket")
    _rpc_by_reference = True  # passed as it is over RPC

    def __init__(
        self,
        body: str | bytes | None = None,
        *,
        status: int = 200,
        status_text: str | None = None,
        headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        web_socket: WebSocket | None = None,
    ) -> None:
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"a response status must be an int in 100..599, got {status!r}")
        if web_socket is not None and status != 101:
            raise ValueError("a response with web_socket must have status 101")
        if status == 101 and web_socket is None:
            raise ValueError("status 101 needs web_socket= (the client end of a WebSocketPair)")
        if status_text is not None and (
            not isinstance(status_text, str) or _BAD_VALUE.search(status_text)
        ):
            raise ValueError(
                f"invalid status_text {status_text!r:.80}: a str without CR, LF or NUL"
            )
        self.status = status
        self.status_text = status_text if status_text is not None else _PHRASES.get(status, "")
        self.headers = Headers(headers)
        self.body = _encode_body(body) or b""
        self.web_socket = web_socket
        if isinstance(body, str) and "content-type" not in self.headers:
            self.headers.set("content-type", "text/plain;charset=UTF-8")

    @classmethod
    def from_json(
        cls,
        data: Any,
        *,
        status: int = 200,
        headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Response:
        """A response whose body is ``data`` as JSON (``application/json``)."""
        response = cls(json.dumps(data), status=status, headers=headers)
        response.headers.set("content-type", "application/json")
        return response

    # ``Response.json(data, status=…)`` builds a JSON response; ``await response.json()``
    # parses one's body, as the fetch API's habit has it (see _JsonMethod).
    json: Any

    async def _parsed_json(self) -> Any:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299

    async def text(self) -> str:
        return self.body.decode()

    async def bytes(self) -> bytes:
        return self.body

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


Response.json = _JsonMethod()
