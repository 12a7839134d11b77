"""Namespaces (``env.CHAT``) and stubs: how a Worker or an object reaches an object.

A stub turns each call into an event (``core.events``: ``Fetch``, ``Rpc`` with its method name
and copies of its arguments) and hands it to the runtime, which delivers it to the object's
host here or forwards it to the object's owner elsewhere. From inside an object, a call is an
output: it leaves only once the caller's earlier writes are durable (its output gate).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..api.http import Headers, Request, Response
from ..core import context
from ..core.errors import DurableObjectResetError
from ..core.events import Fetch, Rpc
from ..core.ids import DurableObjectId, NamespaceKey
from .invoke import RESERVED_METHODS, clone_arguments

if TYPE_CHECKING:
    from ..api.objects import DurableObject

__all__ = ["DurableObjectNamespace", "DurableObjectStub", "ObjectDirectory", "RESERVED_METHODS"]


class ObjectDirectory(Protocol):
    """Where a namespace's events go (the runtime)."""

    def send(
        self, namespace: DurableObjectNamespace, id: DurableObjectId, event: object
    ) -> asyncio.Future[Any]: ...


class DurableObjectNamespace:
    """A binding to one Durable Object class: ``env.CHAT``."""

    __slots__ = ("directory", "binding", "object_class", "_key")
    _rpc_by_reference = True

    def __init__(
        self,
        directory: ObjectDirectory,
        binding: str,
        object_class: type[DurableObject],
        label: str | None = None,
    ) -> None:
        self.directory = directory
        self.binding = binding
        self.object_class = object_class
        # Ids derive from the label: the class's name when a migration created it, kept
        # through renames (see core.migrations).
        self._key = NamespaceKey(label if label is not None else object_class.__name__)

    @property
    def key(self) -> NamespaceKey:
        return self._key

    def id_from_name(self, name: str) -> DurableObjectId:
        return self._key.from_name(name)

    def new_unique_id(self) -> DurableObjectId:
        return self._key.new_unique()

    def id_from_string(self, text: str) -> DurableObjectId:
        return self._key.from_string(text)

    def get(self, id: DurableObjectId) -> DurableObjectStub:
        if not isinstance(id, DurableObjectId):
            raise TypeError(f"get() expects a DurableObjectId, got {type(id).__name__}")
        if id.namespace_key is not self._key:
            # Re-validate: an id of another namespace fails here with a clear message.
            id = self._key.from_string(str(id))
        return DurableObjectStub(self, id)

    def get_by_name(self, name: str) -> DurableObjectStub:
        return DurableObjectStub(self, self._key.from_name(name))

    def send(self, id: DurableObjectId, event: object) -> asyncio.Future[Any]:
        """Deliver ``event`` to the object ``id``; from inside an object, only once the
        caller's earlier writes are durable (an outbound call waits at its output gate)."""
        caller = context.current_host()
        directory = self.directory
        if caller is None or caller.output_gate.is_clear:
            return directory.send(self, id, event)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def go(error: BaseException | None) -> None:
            if error is not None:
                if not future.done():
                    future.set_exception(DurableObjectResetError(f"a write failed: {error}"))
                return
            _chain(directory.send(self, id, event), future)

        caller.output_gate.when_clear(go)
        return future

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
    def namespace(self) -> DurableObjectNamespace:
        return self._namespace

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
        return self._namespace.send(self.id, Fetch(request))

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
        # The object gets copies of the arguments, made now (a change the caller makes
        # later does not reach it); a value that cannot be sent fails here, at the caller.
        args, kwargs = clone_arguments(self._name, args, kwargs)
        stub = self._stub
        return stub._namespace.send(stub.id, Rpc(self._name, args, kwargs))


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
