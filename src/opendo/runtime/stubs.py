"""Namespaces (``env.CHAT``) and stubs: how a Worker or an object reaches an object."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..api.http import Headers, Request, Response
from ..core.codec import CodecError, clone
from ..core.errors import DurableObjectResetError
from ..core.ids import DurableObjectId, NamespaceKey
from .host import current_host

if TYPE_CHECKING:
    from ..api.objects import DurableObject
    from .host import ObjectHost
    from .runtime import Runtime

__all__ = ["DurableObjectNamespace", "DurableObjectStub", "RESERVED_METHODS"]

# Handlers the runtime calls; not callable over RPC (as on Cloudflare).
RESERVED_METHODS = frozenset(
    {"fetch", "alarm", "connect", "web_socket_message", "web_socket_close", "web_socket_error"}
)


class DurableObjectNamespace:
    """A binding to one Durable Object class: ``env.CHAT``."""

    __slots__ = ("runtime", "binding", "object_class", "_key")
    _rpc_by_reference = True

    def __init__(
        self,
        runtime: Runtime,
        binding: str,
        object_class: type[DurableObject],
        label: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.binding = binding
        self.object_class = object_class
        # Ids derive from the label: the class's name when a migration created it, kept
        # through renames (see _migrations).
        self._key = NamespaceKey(label if label is not None else object_class.__name__)

    def id_from_name(self, name: str) -> DurableObjectId:
        return self._key.from_name(name)

    def new_unique_id(self) -> DurableObjectId:
        return self._key.new_unique()

    def id_from_string(self, text: str) -> DurableObjectId:
        return self._key.from_string(text)

    def get(self, id: DurableObjectId) -> DurableObjectStub:
        if not isinstance(id, DurableObjectId):
            raise TypeError(f"get() expects a DurableObjectId, got {type(id).__name__}")
        if id._namespace is not self._key:
            # Re-validate: an id of another namespace fails here with a clear message.
            id = self._key.from_string(str(id))
        return DurableObjectStub(self, id)

    def get_by_name(self, name: str) -> DurableObjectStub:
        return DurableObjectStub(self, self._key.from_name(name))

    def _host(self, id: DurableObjectId) -> ObjectHost:
        return self.runtime.host(self, id)

    def __repr__(self) -> str:
        return f"<DurableObjectNamespace {self.binding} -> {self.object_class.__name__}>"


class DurableObjectStub:
    """A client for one object. ``await stub.fetch(...)``, ``await stub.any_method(...)``.

    Calls on one stub are delivered to the object in the order they were made.
    """

    __slots__ = ("_namespace", "id")
    _rpc_by_reference = True

    def __init__(self, namespace: DurableObjectNamespace, id: DurableObjectId) -> None:
        self._namespace = namespace
        self.id = id

    @property
    def name(self) -> str | None:
        return self.id.name

    def fetch(
        self,
        request: Request | str,
        *,
        method: str = "GET",
        headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: str | bytes | None = None,
    ) -> asyncio.Future[Response]:
        """Send an HTTP request to the object's ``fetch`` handler."""
        if isinstance(request, str):
            request = Request(request, method=method, headers=headers, body=body)
        elif not isinstance(request, Request):
            raise TypeError(f"fetch() takes a Request or a url str, got {type(request).__name__}")
        req = request

        async def call(instance: DurableObject) -> Response:
            response = await instance.fetch(req)
            if not isinstance(response, Response):
                raise TypeError(
                    f"{type(instance).__name__}.fetch() must return a Response, "
                    f"got {type(response).__name__}"
                )
            return response

        return _send(self._namespace._host(self.id), call)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in RESERVED_METHODS:
            raise AttributeError(f"{name!r} cannot be called over RPC")
        return _RpcMethod(self, name)

    def __repr__(self) -> str:
        return f"<DurableObjectStub {self._namespace.object_class.__name__} {self.id}>"


class _RpcMethod:
    __slots__ = ("_stub", "_name")

    def __init__(self, stub: DurableObjectStub, name: str) -> None:
        self._stub = stub
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        name = self._name
        stub = self._stub

        # The object gets copies of the arguments, made now (a change the caller makes
        # later does not reach it); a value that cannot be sent fails here, at the caller.
        args, kwargs = _clone_arguments(name, args, kwargs)

        def call(instance: DurableObject) -> Any:
            method = getattr(type(instance), name, None)
            if method is None or not callable(method):
                raise TypeError(
                    f"{type(instance).__name__} has no public method {name!r} to call over RPC"
                )
            result = getattr(instance, name)(*args, **kwargs)
            if inspect.iscoroutine(result):
                return _cloned(result, name)
            return _clone_result(result, name)

        return _send(stub._namespace._host(stub.id), call)


def _by_reference(value: object) -> bool:
    """What RPC passes as it is: functions (called back directly), and opendo's handles."""
    return callable(value) or getattr(type(value), "_rpc_by_reference", False)


def _clone_arguments(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    try:
        copied: tuple[tuple[Any, ...], dict[str, Any]] = clone((args, kwargs), _by_reference)
        return copied
    except CodecError:
        pass
    for where, value in [
        *((f"argument {i + 1}", v) for i, v in enumerate(args)),
        *((f"argument {k}=", v) for k, v in kwargs.items()),
    ]:
        try:
            clone(value, _by_reference)
        except CodecError as exc:
            raise CodecError(f"{name}(): {where} cannot be sent over RPC: {exc}") from None
    raise AssertionError("unreachable: every argument could be sent")


def _clone_result(result: Any, name: str) -> Any:
    try:
        return clone(result, _by_reference)
    except CodecError as exc:
        raise CodecError(f"the result of {name}() cannot be sent over RPC: {exc}") from None


async def _cloned(coro: Awaitable[Any], name: str) -> Any:
    return _clone_result(await coro, name)


def _send(target: ObjectHost, call: Callable[[DurableObject], Any]) -> asyncio.Future[Any]:
    """Deliver a call; from inside an object, only once the caller's earlier writes are
    durable (an outbound call is an output, and waits at the caller's output gate)."""
    caller = current_host()
    if caller is None or caller.output_gate.is_clear:
        return target.call(call)
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def go(error: BaseException | None) -> None:
        if error is not None:
            if not future.done():
                future.set_exception(DurableObjectResetError(f"a write failed: {error}"))
            return
        _chain(target.call(call), future)

    caller.output_gate.when_clear(go)
    return future


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    def copy(done: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if done.cancelled():
            target.cancel()
        elif (exc := done.exception()) is not None:
            target.set_exception(exc)
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)
