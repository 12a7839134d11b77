"""opendo: Durable Objects for Python.

Named, single-instance, stateful objects, served over HTTP and WebSockets — the programming
model of Cloudflare Durable Objects, self-hosted. Everything users need is importable from
here::

    from opendo import DurableObject, WorkerEntrypoint, Request, Response, WebSocketPair
"""

from ._alarms import AlarmInfo
from ._api import DurableObject, Env, ExecutionContext, WorkerEntrypoint
from ._app import Runtime
from ._asgi import App
from ._clock import Clock, FakeClock, LoopClock
from ._codec import CodecError, DecodeError
from ._config import Config, ConfigError, load_config
from ._errors import (
    DurableObjectError,
    DurableObjectResetError,
    DurableObjectStartError,
    StorageUnavailableError,
)
from ._gates import GateBrokenError, InputGate, OutputGate
from ._http import Headers, Request, Response
from ._ids import DurableObjectId
from ._migrations import MigrationError
from ._namespace import DurableObjectNamespace, DurableObjectStub
from ._runtime import DurableObjectState
from ._server import create_app
from ._sqlite import MemoryDriver, SqliteDriver, StorageDriver
from ._storage import SqlCursor, SqlError, SqlStorage, Storage, StorageError, Transaction
from ._websocket import (
    CloseEvent,
    ErrorEvent,
    MessageEvent,
    ReadyState,
    WebSocket,
    WebSocketPair,
    WebSocketRequestResponsePair,
)

__all__ = [
    "AlarmInfo",
    "App",
    "Clock",
    "CloseEvent",
    "CodecError",
    "Config",
    "ConfigError",
    "DecodeError",
    "DurableObject",
    "DurableObjectError",
    "DurableObjectId",
    "DurableObjectNamespace",
    "DurableObjectResetError",
    "DurableObjectStartError",
    "DurableObjectState",
    "DurableObjectStub",
    "Env",
    "ErrorEvent",
    "ExecutionContext",
    "FakeClock",
    "GateBrokenError",
    "Headers",
    "InputGate",
    "LoopClock",
    "MemoryDriver",
    "MessageEvent",
    "MigrationError",
    "OutputGate",
    "ReadyState",
    "Request",
    "Response",
    "Runtime",
    "SqlCursor",
    "SqlError",
    "SqlStorage",
    "SqliteDriver",
    "Storage",
    "StorageDriver",
    "StorageError",
    "StorageUnavailableError",
    "Transaction",
    "WebSocket",
    "WebSocketPair",
    "WebSocketRequestResponsePair",
    "WorkerEntrypoint",
    "create_app",
    "load_config",
]

__version__ = "0.1.0"
