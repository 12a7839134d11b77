"""opendo: Durable Objects for Python.

Named, single-instance, stateful objects, served over HTTP and WebSockets — the programming
model of Cloudflare Durable Objects, self-hosted. Everything users need is importable from
here::

    from opendo import DurableObject, WorkerEntrypoint, Request, Response, WebSocketPair
"""

from ._api import DurableObject, Env, ExecutionContext, WorkerEntrypoint
from ._app import Runtime
from ._asgi import App
from ._clock import Clock, FakeClock, LoopClock
from ._config import Config, ConfigError, load_config
from ._errors import DurableObjectError, DurableObjectResetError
from ._gates import GateBrokenError, InputGate, OutputGate
from ._http import Headers, Request, Response
from ._ids import DurableObjectId
from ._namespace import DurableObjectNamespace, DurableObjectStub
from ._runtime import DurableObjectState
from ._server import create_app
from ._websocket import CloseEvent, ErrorEvent, MessageEvent, ReadyState, WebSocket, WebSocketPair

__all__ = [
    "App",
    "Clock",
    "CloseEvent",
    "Config",
    "ConfigError",
    "DurableObject",
    "DurableObjectError",
    "DurableObjectId",
    "DurableObjectNamespace",
    "DurableObjectResetError",
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
    "MessageEvent",
    "OutputGate",
    "ReadyState",
    "Request",
    "Response",
    "Runtime",
    "WebSocket",
    "WebSocketPair",
    "WorkerEntrypoint",
    "create_app",
    "load_config",
]

__version__ = "0.1.0"
