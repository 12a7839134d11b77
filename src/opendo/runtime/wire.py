"""Events, results and errors as bytes, between opendo processes and nodes.

What a link (``runtime.links``) carries, whichever transport is under it. A frame is a 4-byte
big-endian length and a message in opendo's value format (``core.codec``): a dict of plain
values. What is not plain is written as a reference, a tuple ``(REF, kind, ...)``: a stub, an
id or a namespace (by class name and id, rebuilt on the other side from its runtime's
bindings), a ``Request`` or a ``Response`` (method, URL, headers and the whole body). A function
cannot cross: an RPC argument or result that holds one fails at the sender, naming where it
was.

Messages (``k``): ``call`` (an event for an object: ``n`` its number, ``c`` the class name, ``i``
the id, ``m`` the name the id was made from, ``e`` the event), ``done`` (the answer to call
``n``: ``v`` a value, or ``err`` an error), and WebSocket relays for a socket accepted by an
object in one process and connected to a client in another: ``ws`` (the object sent a
message), ``wsin`` (the client did), ``wsclose`` (either closed; ``code``, ``reason``,
``clean``). A frame is at most ``MAX_FRAME`` bytes (256 MiB); a larger one closes the
connection.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any, Protocol

from ..api.http import Headers, Request, Response
from ..core import errors as opendo_errors
from ..core.codec import CodecError, DecodeError, decode, encode
from ..core.errors import DurableObjectError
from ..core.events import Alarm, Fetch, Rpc
from ..core.gates import GateBrokenError
from ..core.ids import DurableObjectId
from ..core.storage import SqlError

__all__ = [
    "REF",
    "Bindings",
    "WireError",
    "decode_error",
    "decode_event",
    "decode_value",
    "encode_error",
    "encode_event",
    "encode_value",
    "frame",
    "parse",
    "response_fields",
    "response_from",
]

REF = "\x00opendo-ref"
_HEADER = 4
MAX_FRAME = 256 * 1024 * 1024


class WireError(Exception):
    """A message from another process or node that cannot be read (a bug, or not an opendo
    peer)."""


class Bindings(Protocol):
    """What rebuilding references needs of the receiving runtime."""

    def namespace_of(self, class_name: str) -> Any: ...


def frame(message: dict[str, Any]) -> bytes:
    data = encode(message)
    return len(data).to_bytes(_HEADER, "big") + data


def parse(buffer: bytearray) -> list[dict[str, Any]]:
    """Take the whole frames off the front of ``buffer``."""
    messages = []
    pos = 0
    end = len(buffer)
    while end - pos >= _HEADER:
        size = int.from_bytes(buffer[pos : pos + _HEADER], "big")
        if size > MAX_FRAME:
            raise WireError(f"a frame of {size} bytes is larger than {MAX_FRAME}")
        if end - pos - _HEADER < size:
            break
        message = decode(bytes(buffer[pos + _HEADER : pos + _HEADER + size]))
        if not isinstance(message, dict) or "k" not in message:
            raise WireError("a frame that is not an opendo message")
        messages.append(message)
        pos += _HEADER + size
    del buffer[:pos]
    return messages


# -- values, with references ------------------------------------------------------------------


def encode_value(value: Any, where: str = "value") -> Any:
    """``value`` with its references written as tuples; its request bodies must have been
    read (``read_bodies``)."""
    kind = type(value)
    if kind in (str, int, float, bool, bytes) or value is None:
        return value
    if kind is list:
        return [encode_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is tuple:
        return tuple(encode_value(v, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is dict:
        return {
            encode_value(k, where): encode_value(v, f"{where}[{k!r}]") for k, v in value.items()
        }
    if isinstance(value, Request):
        return (REF, "req", _request_fields(value))
    if isinstance(value, Response):
        return (REF, "resp", response_fields(value))
    if isinstance(value, DurableObjectId):
        return (REF, "id", value.namespace_key.label, str(value), value.name)
    stub_namespace = getattr(value, "namespace", None)
    object_class = getattr(stub_namespace, "object_class", None)
    if object_class is not None and isinstance(getattr(value, "id", None), DurableObjectId):
        return (REF, "stub", object_class.__name__, str(value.id), value.id.name)
    if isinstance(getattr(value, "object_class", None), type) and hasattr(value, "binding"):
        return (REF, "ns", value.object_class.__name__)
    if callable(value):
        raise CodecError(
            f"{where} is a function, which cannot be sent to another process or node (the "
            "object it calls lives in another process or node of this server)"
        )
    return value  # sets, dates and the rest: the codec writes them, or says why not


def decode_value(value: Any, bindings: Bindings) -> Any:
    kind = type(value)
    if kind is list:
        return [decode_value(v, bindings) for v in value]
    if kind is tuple:
        if len(value) >= 2 and value[0] == REF:
            return _reference(value, bindings)
        return tuple(decode_value(v, bindings) for v in value)
    if kind is dict:
        return {decode_value(k, bindings): decode_value(v, bindings) for k, v in value.items()}
    return value


def _reference(ref: tuple[Any, ...], bindings: Bindings) -> Any:
    kind = ref[1]
    if kind == "req":
        return request_from(ref[2])
    if kind == "resp":
        return response_from(ref[2])
    if kind in ("stub", "id", "ns"):
        namespace = bindings.namespace_of(ref[2])
        if namespace is None:
            raise WireError(f"no binding of class {ref[2]!r} here")
        if kind == "ns":
            return namespace
        id = namespace.id_from_string(ref[3])
        id.name = ref[4]
        return namespace.get(id) if kind == "stub" else id
    raise WireError(f"an unknown reference {kind!r}")


async def read_bodies(value: Any) -> None:
    """Read the body of every request in ``value`` (a request crosses with its body)."""
    if isinstance(value, Request):
        await value.bytes()
    elif isinstance(value, list | tuple):
        for v in value:
            await read_bodies(v)
    elif isinstance(value, dict):
        for v in value.values():
            await read_bodies(v)


def _request_fields(request: Request) -> dict[str, Any]:
    return {
        "method": request.method,
        "url": request.url,
        "headers": request.headers.items(),
        "body": request.read_body_now(),
    }


def request_from(fields: dict[str, Any]) -> Request:
    return Request(
        fields["url"],
        method=fields["method"],
        headers=Headers._trusted([(str(k), str(v)) for k, v in fields["headers"]]),
        body=fields["body"],
    )


def response_fields(response: Response) -> dict[str, Any]:
    return {
        "status": response.status,
        "status_text": response.status_text,
        "headers": response.headers.items(),
        "body": response.body,
    }


def response_from(fields: dict[str, Any], web_socket: Any = None) -> Response:
    return Response(
        fields["body"],
        status=fields["status"],
        status_text=fields["status_text"],
        headers=Headers._trusted([(str(k), str(v)) for k, v in fields["headers"]]),
        web_socket=web_socket,
    )


# -- events -------------------------------------------------------------------------------------


def encode_event(event: object) -> dict[str, Any]:
    if isinstance(event, Fetch):
        return {"t": "fetch", "r": _request_fields(event.request)}
    if isinstance(event, Rpc):
        return {
            "t": "rpc",
            "m": event.method,
            "a": encode_value(event.args, f"{event.method}() argument"),
            "kw": encode_value(event.kwargs, f"{event.method}() argument"),
        }
    if isinstance(event, Alarm):
        return {"t": "alarm", "now": event.now, "retry": event.retry_count}
    raise TypeError(f"{type(event).__name__} events stay in the process that made them")


def decode_event(message: dict[str, Any], bindings: Bindings) -> object:
    kind = message.get("t")
    if kind == "fetch":
        return Fetch(request_from(message["r"]))
    if kind == "rpc":
        args = decode_value(message["a"], bindings)
        kwargs = decode_value(message["kw"], bindings)
        return Rpc(str(message["m"]), tuple(args), dict(kwargs))
    if kind == "alarm":
        return Alarm(int(message["now"]), int(message["retry"]))
    raise WireError(f"an unknown event {kind!r}")


# -- errors -------------------------------------------------------------------------------------

# opendo's public errors, by name (``module`` "opendo" on the wire): those of core.errors, and
# the others user code meets in an object.
_OPENDO_ERRORS: dict[str, type[Exception]] = {
    name: cls
    for name, cls in vars(opendo_errors).items()
    if isinstance(cls, type) and issubclass(cls, Exception)
} | {cls.__name__: cls for cls in (CodecError, DecodeError, GateBrokenError, SqlError)}

_PLAIN = (str, int, float, bool, type(None))


def encode_error(error: BaseException) -> dict[str, Any]:
    kind = type(error)
    origin = "opendo" if kind.__module__.startswith("opendo.") else kind.__module__
    fields = {
        "type": kind.__name__,
        "module": origin,
        "message": str(error),
        "remote": bool(getattr(error, "remote", False)),
    }
    if all(type(arg) in _PLAIN for arg in error.args):
        fields["args"] = list(error.args)  # rebuilt from its arguments: KeyError('k') stays
    # and with what it says beyond them (a DurableObjectStartError's retry_after)
    attrs = getattr(error, "__dict__", {})
    fields["attrs"] = {k: v for k, v in attrs.items() if type(v) in _PLAIN and k != "remote"}
    return fields


def decode_error(fields: dict[str, Any]) -> Exception:
    """The error as its caller would have seen it here: the same type for opendo's errors and
    Python's built-in ones (made from the same arguments, with the same plain attributes),
    else a ``DurableObjectError`` that names the type."""
    name, message = str(fields.get("type")), str(fields.get("message", ""))
    cls: Callable[..., Exception] | None = None
    if fields.get("module") == "opendo":
        cls = _OPENDO_ERRORS.get(name)
    elif fields.get("module") == "builtins":
        found = getattr(builtins, name, None)
        if isinstance(found, type) and issubclass(found, Exception):
            cls = found
    error: Exception
    args = fields.get("args")
    try:
        if cls is None:
            error = DurableObjectError(f"{name}: {message}")
        else:
            error = cls(*args) if isinstance(args, list) else cls(message)
    except Exception:
        error = DurableObjectError(f"{name}: {message}")
    if type(error) is cls:
        for attr, value in (fields.get("attrs") or {}).items():
            try:
                setattr(error, str(attr), value)
            except (AttributeError, TypeError):
                pass
    if fields.get("remote"):
        try:
            error.remote = True  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return error
