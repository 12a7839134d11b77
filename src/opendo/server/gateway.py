"""The gateway: the one way from an HTTP request to the Worker and back, under every server.

opendo is served two ways: by its own HTTP server (``_httpserver``, what ``opendo dev`` and
``opendo serve`` run) and as an ASGI application (``App``, under any ASGI server or mounted in
another app). Both read a request head their own way and hand it here; everything that
decides what happens to it is written once, in this module:

1. *The head.* The Host header (exactly one, RFC 9110/3986 authority syntax; absent only in
   HTTP/1.0) and the request target (origin form ``/path?query``, or absolute form) are
   checked, and the URL the Worker sees is built from the parsed parts — never by pasting raw
   header text, so a Host like ``x/counter/victim#`` cannot change which object is called.
   Limits on the head (URL length, header count and size) and on the declared body size are
   checked here too; the native server also enforces them while it reads, to bound memory.
2. *The upgrade decision*, made once, before the Worker runs: a request that asks for a
   WebSocket (``websocket`` among its ``Upgrade`` tokens) is a handshake, and it must be a
   valid one (GET, HTTP/1.1, ``Connection: upgrade``, a 16-byte ``Sec-WebSocket-Key``,
   version 13) or it is refused with 400 (426 for another version) without asking the
   Worker. Every other request is plain HTTP.
3. *Assets*, for GET and HEAD, before the Worker.
4. *The Worker call*: its exceptions become a 500 that carries no traceback (the traceback
   goes to the log).
5. *The answer's check*: a 101 with a WebSocket is kept only for a handshake; for any other
   request the socket it carries is closed at once (its object sees the close, so no ghost
   member stays in a room) and the answer becomes a 500.

``Limits`` holds every limit and timeout of the servers with its default; docs/reference/cli.md
lists them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import math
import re
import resource
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..api.http import Headers, Request, Response
from ..core.errors import DurableObjectError
from ..core.metrics import METRICS, RequestRecord, current_request
from .assets import Asset, Assets

if TYPE_CHECKING:
    from ..runtime.runtime import Runtime

__all__ = [
    "LINGER",
    "ClientGone",
    "Gateway",
    "Incoming",
    "Limits",
    "RequestTimeout",
    "RequestTooLarge",
    "accept_key",
    "etag_matches",
    "parse_authority",
]

log = logging.getLogger("opendo")
# A line per request answered: method, path, status, milliseconds, class and name of the
# first object the Worker called (its fields also as the record's attributes, for JSON).
access_log = logging.getLogger("opendo.access")
_STATUS = {status: str(status) for status in range(100, 600)}

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SMALL_FILE = 256 * 1024


def _default_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - 64) * 3 // 4)


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits and timeouts of opendo's servers (``opendo serve --help`` names the options)."""

    max_url_bytes: int = 8 * 1024  # the request target; 414 past it
    max_header_bytes: int = 64 * 1024  # all header lines together; 431 past it
    max_headers: int = 128  # header lines; 431 past it
    max_body_bytes: int = 100 * 1024 * 1024  # a request body; 413 past it
    header_timeout: float = 10.0  # seconds from a request's first byte to its last header
    body_timeout: float = 30.0  # seconds a request body may pause; 408 past it
    keep_alive_timeout: float = 5.0  # seconds an idle connection stays open
    # open connections (HTTP and WebSocket); past it the oldest idle one is closed, or the
    # new one gets 503. Default: three quarters of the open-file limit above 64.
    max_connections: int = field(default_factory=_default_connections)
    max_message_bytes: int = 32 * 1024 * 1024  # a received WebSocket message; 1009 past it
    max_buffered_bytes: int = 64 * 1024 * 1024  # unsent bytes to one WebSocket client
    close_timeout: float = 10.0  # seconds to wait for a WebSocket client's close frame
    shutdown_timeout: float = 10.0  # seconds SIGTERM waits for requests in flight

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"limit {name} must be a positive number, got {value!r}")


LIMIT_HELP = {
    "max_url_bytes": "Longest request target, in bytes (414 past it).",
    "max_header_bytes": "Most bytes of request headers (431 past it).",
    "max_headers": "Most request header lines (431 past it).",
    "max_body_bytes": "Largest request body, in bytes (413 past it).",
    "header_timeout": "Seconds a request head may take to arrive (408 past it).",
    "body_timeout": "Seconds a request body may pause (408 past it).",
    "keep_alive_timeout": "Seconds an idle connection stays open.",
    "max_connections": "Most open connections, WebSockets included "
    "(default: 3/4 of the open-file limit above 64).",
    "max_message_bytes": "Largest WebSocket message received, in bytes (close 1009 past it).",
    "max_buffered_bytes": "Most bytes waiting to be sent to one WebSocket client before it is "
    "dropped.",
    "close_timeout": "Seconds to wait for a WebSocket client's close frame.",
    "shutdown_timeout": "Seconds SIGTERM waits for requests in flight.",
}


# After refusing a request whose client may still be sending (a body past the limit, a head
# too large), the server stops writing, reads and drops what still comes for up to this many
# seconds, then closes: closing at once would reset the connection, and the client would
# never read the refusal.
LINGER = 2.0


class RequestTooLarge(Exception):
    """A request body went past ``Limits.max_body_bytes`` (raised by a body reader)."""


class RequestTimeout(Exception):
    """A request body paused past ``Limits.body_timeout`` (raised by a body reader)."""


class ClientGone(Exception):
    """The client closed its connection before its request body arrived."""


# -- the head ----------------------------------------------------------------------------------

_AUTHORITY = re.compile(
    r"""(?:\[[0-9A-Fa-f:.]+\]                           # IPv6 literal
        |(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+  # reg-name or IPv4
       )(?::([0-9]{0,5}))?""",
    re.X,
)
MAX_AUTHORITY = 255 + 6


def parse_authority(value: str) -> str | None:
    """``value`` if it is a valid ``host[:port]`` (RFC 3986 authority, without userinfo)."""
    if len(value) > MAX_AUTHORITY:
        return None
    match = _AUTHORITY.fullmatch(value)
    if match is None:
        return None
    port = match.group(1)
    if port and int(port) > 65535:
        return None
    return value


def _tokens(value: str | None) -> list[str]:
    if not value:
        return []
    return [token.strip().lower() for token in value.split(",")]


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    digest = hashlib.sha1((key + WS_GUID).encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def _refuse(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = Response(message + "\n", status=status, headers=headers)
    response.headers.set("connection", "close")
    return response


def _unavailable(request: Request, exc: DurableObjectError) -> Response:
    """The answer to an infrastructure error that reached the Worker uncaught (an object that
    could not start, or whose write could not be stored): 503, saying what happened."""
    log.warning("%s %s: %s", request.method, request.url, exc)
    response = Response(f"Service Unavailable: {exc}\n", status=503)
    retry_after = getattr(exc, "retry_after", 0)
    if retry_after:
        response.headers.set("retry-after", str(max(1, math.ceil(retry_after))))
    return response


def _too_large(limits: Limits) -> Response:
    return _refuse(413, f"the request body is larger than {limits.max_body_bytes} bytes")


@dataclass(slots=True)
class Incoming:
    """A request head that passed the checks: the URL for the Worker, the path for assets,
    and, for a WebSocket handshake, the client's key (None through ASGI, whose server did the
    handshake)."""

    url: str
    path: str
    websocket: bool
    key: str | None = None


def etag_matches(header: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: ``*`` or a list of (possibly weak) entity tags."""
    if header is None:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


class Gateway:
    """Requests from a server to the Worker (and assets), checked the same way for all."""

    __slots__ = ("runtime", "assets", "limits", "_started")

    def __init__(
        self, runtime: Runtime, assets: Assets | None = None, limits: Limits | None = None
    ) -> None:
        self.runtime = runtime
        self.assets = assets
        self.limits = limits if limits is not None else Limits()
        self._started = False

    def start(self) -> None:
        """Start the runtime (its stored alarms), once: at the server's start, or at the first
        request when no ASGI lifespan came (an app mounted in another one gets none)."""
        if not self._started:
            self._started = True
            self.runtime.start()

    def read_head(
        self,
        method: str,
        target: str,
        query: str,
        http_version: str,
        headers: Headers,
        *,
        scheme: str = "http",
        server: str | None = None,
        websocket: bool | None = None,
    ) -> Incoming | Response:
        """Check a request head. ``target`` is the raw path (percent-encoding kept) or an
        absolute URL; ``websocket`` is None when the server leaves the upgrade decision
        here, True when it already made the handshake (ASGI). A refusal is a Response."""
        limits = self.limits
        if len(target) + len(query) > limits.max_url_bytes:
            return _refuse(414, f"the request target is longer than {limits.max_url_bytes} bytes")
        count = len(headers)
        if count > limits.max_headers:
            return _refuse(
                431, f"the request has {count} headers; the limit is {limits.max_headers}"
            )
        size = sum(len(k) + len(v) + 4 for k, v in headers.items())
        if size > limits.max_header_bytes:
            return _refuse(
                431,
                f"the request headers take {size} bytes; the limit is {limits.max_header_bytes}",
            )
        hosts = headers.get_all("host")
        authority: str | None
        if target.startswith(("http://", "https://")):
            scheme, _, rest = target.partition("://")
            authority, slash, path = rest.partition("/")
            target = slash + path or "/"
            if parse_authority(authority) is None:
                return _refuse(400, "the request target's authority is not a valid host[:port]")
        elif not target.startswith("/"):
            return _refuse(400, "the request target must be a path starting with / or a URL")
        elif len(hosts) == 1:
            authority = parse_authority(hosts[0].strip())
            if authority is None:
                return _refuse(
                    400, "the Host header is not a valid host[:port] (RFC 9110 section 7.2)"
                )
        elif hosts:
            return _refuse(400, "the request has more than one Host header")
        elif http_version == "1.0" and server is not None:
            authority = server
        else:
            return _refuse(400, "an HTTP/1.1 request needs a Host header")
        if (length := headers.get("content-length")) is not None:
            if not length.isdigit():
                return _refuse(400, "Content-Length is not a number")
            if int(length) > limits.max_body_bytes:
                return _refuse(
                    413, f"the request body is larger than {limits.max_body_bytes} bytes"
                )
        url = f"{'https' if scheme in ('https', 'wss') else 'http'}://{authority}{target}"
        if query:
            url += "?" + query
        if websocket is None:
            if "websocket" not in _tokens(headers.get("upgrade")):
                return Incoming(url, target, False)
            return self._handshake(method, http_version, headers, url, target)
        return Incoming(url, target, websocket)

    def _handshake(
        self, method: str, http_version: str, headers: Headers, url: str, path: str
    ) -> Incoming | Response:
        """RFC 6455 4.2.1: what makes a request a valid opening handshake."""
        if method != "GET":
            return _refuse(400, "a WebSocket handshake must be a GET request")
        if http_version != "1.1":
            return _refuse(400, "a WebSocket handshake needs HTTP/1.1")
        if "upgrade" not in _tokens(headers.get("connection")):
            return _refuse(400, "a WebSocket handshake needs Connection: upgrade")
        key = headers.get("sec-websocket-key")
        try:
            if key is None or len(base64.b64decode(key.strip(), validate=True)) != 16:
                raise ValueError
        except (ValueError, binascii.Error):
            return _refuse(400, "a WebSocket handshake needs a Sec-WebSocket-Key of 16 bytes")
        if headers.get("sec-websocket-version") != "13":
            return _refuse(
                426,
                "this server speaks WebSocket version 13",
                {"sec-websocket-version": "13"},
            )
        return Incoming(url, path, True, key.strip())

    async def respond(self, incoming: Incoming, request: Request) -> Response:
        """The answer to a checked request: an asset, or the Worker's (checked); counted in
        ``core.metrics`` and written to the access log."""
        started = time.monotonic()
        record = RequestRecord()
        token = current_request.set(record)
        try:
            response = await self._respond(incoming, request)
        finally:
            current_request.reset(token)
        seconds = time.monotonic() - started
        status = response.status
        METRICS.requests.inc(record.class_name, _STATUS.get(status) or str(status))
        METRICS.request_seconds.observe(seconds, record.class_name)
        if access_log.isEnabledFor(logging.INFO):
            ms = round(seconds * 1000, 1)
            access_log.info(
                "%s %s %d %.1f ms %s %s",
                request.method,
                incoming.path,
                status,
                ms,
                record.class_name or "-",
                record.object or "-",
                extra={
                    "method": str(request.method),
                    "path": incoming.path,
                    "status": status,
                    "ms": ms,
                    "class": record.class_name or None,
                    "object": record.object or None,
                },
            )
        return response

    async def _respond(self, incoming: Incoming, request: Request) -> Response:
        if self.assets is not None and not incoming.websocket and request.method in ("GET", "HEAD"):
            asset = self.assets.match(incoming.path, request.headers)
            if asset is not None:
                return await asset_response(asset, request)
        if not self._started:
            self.start()
        try:
            response = await self.runtime.fetch(request)
        except RequestTooLarge:
            return _too_large(self.limits)
        except RequestTimeout:
            return _refuse(
                408, f"the request body paused for more than {self.limits.body_timeout:g} s"
            )
        except ClientGone:
            return Response(status=400)  # nobody reads it
        except DurableObjectError as exc:
            if type(exc) is DurableObjectError:  # user code's error, as its caller saw it
                log.exception("%s %s failed", request.method, request.url)
                return Response("Internal Server Error", status=500)
            return _unavailable(request, exc)
        except Exception:
            log.exception("%s %s failed", request.method, request.url)
            return Response("Internal Server Error", status=500)
        if response.web_socket is not None and not incoming.websocket:
            discard_websocket(response)
            log.error(
                "the Worker answered %s with a WebSocket, but the request is not a WebSocket "
                "handshake; the socket was closed",
                request.url,
            )
            return Response("Internal Server Error", status=500)
        return response


def discard_websocket(response: Response) -> None:
    """Close the socket a response carries that no connection will take (its object sees an
    abnormal close, as if the client had left)."""
    client = response.web_socket
    if client is not None and not client.bound:
        client.transport_closed(1006, "", False)


async def asset_response(asset: Asset, request: Request) -> Response:
    headers = {
        "content-type": asset.content_type,
        "etag": asset.etag,
        "cache-control": "public, max-age=0, must-revalidate",
    }
    if etag_matches(request.headers.get("if-none-match"), asset.etag):
        return Response(status=304, headers=headers)
    if request.method == "HEAD":
        response = Response(headers=headers)
        response.headers.set("content-length", str(asset.size))
        return response
    if asset.size <= _SMALL_FILE:
        body = asset.path.read_bytes()
    else:
        body = await asyncio.to_thread(asset.path.read_bytes)
    return Response(body, headers=headers)
