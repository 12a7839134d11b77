"""opendo: Durable Objects for Python.

Named, single-instance, stateful objects, served over HTTP and WebSockets — the programming
model of Cloudflare Durable Objects, self-hosted. Everything users need is importable from
here::

    from opendo import DurableObject, WorkerEntrypoint, Request, Response, WebSocketPair
"""

from .api.http import Headers, Request, Response
from .api.objects import DurableObject, Env, ExecutionContext, WorkerEntrypoint
from .api.websocket import (
    CloseEvent,
    ErrorEvent,
    MessageEvent,
    ReadyState,
    WebSocket,
    WebSocketPair,
    WebSocketRequestResponsePair,
)
from .core.alarms import AlarmInfo
from .core.clock import Clock, FakeClock, LoopClock
from .core.codec import CodecError, DecodeError
from .core.errors import (
    DurableObjectError,
    DurableObjectResetError,
    DurableObjectStartError,
    StorageUnavailableError,
)
from .core.gates import GateBrokenError, InputGate, OutputGate
from .core.ids import DurableObjectId
from .core.migrations import MigrationError
from .core.storage import SqlError, StorageDriver
from .project.config import Config, ConfigError, load_config
from .project.loader import Runtime
from .project.serve import create_app
from .runtime.outbound import OutboundWebSocket, connect_websocket, fetch
from .runtime.state import DurableObjectState
from .runtime.stubs import DurableObjectNamespace, DurableObjectStub
from .server.asgi import App
from .storage.api import Storage, StorageError, Transaction
from .storage.memory import MemoryDriver
from .storage.sql import SqlCursor, SqlStorage
from .storage.sqlite import SqliteDriver

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
    "OutboundWebSocket",
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
    "connect_websocket",
    "create_app",
    "fetch",
    "load_config",
]

__version__ = "0.1.0"
