"""The admin listener: ``/metrics``, ``/healthz``, ``/readyz``, ``/logs`` and ``/explorer``,
on a port of their own.

Operations never share the project's port, so no path of the user's app is taken
(``opendo serve --admin-port PORT``; off unless asked for; 127.0.0.1 unless ``--admin-ip``).
It is a small threaded WSGI server (the standard library's, as ``prometheus_client`` serves
its own) on a thread of its own, so a scrape never waits behind the event loop's work — and
everything it reports is read on the event loop, with a time limit (``ANSWER_WITHIN``), so
that what it says is consistent and a stuck loop shows:

- ``/metrics``: Prometheus' text format (``prometheus_client``): the counters and histograms
  of ``core.metrics``, what is live now (objects by class and lifecycle state, WebSockets,
  open storage), and the process's CPU, memory and file descriptors.
- ``/healthz``: 200 ``ok`` when the event loop answers within ``ANSWER_WITHIN``, else 503.
- ``/readyz``: 200 ``ready`` once the runtime serves, 503 while it starts, and from the
  moment the server is asked to stop (SIGTERM) while it drains and shuts down.
- ``/explorer``: the data explorer's pages (``server.explorer``): the stored objects, their
  KV entries, SQL tables and alarm, and read-only queries.
- ``/logs``: the server's log from now on, one JSON object per line (``core.logs``'
  ``JsonFormatter``), as long as the client reads (``opendo tail``). ``?class=``,
  ``?object=``, ``?status=`` (``404``, or ``5xx``) keep only the access log lines that match;
  an empty line every ``HEARTBEAT`` seconds shows the stream is alive. A client that reads
  too slowly loses lines (``TAIL_BUFFER`` wait for each), told so in the stream; the log
  handler is attached only while someone tails.

Under ``--workers N`` each worker serves its own, on the first free port of
``PORT``..``PORT+N-1`` (port 0: each a free one); each logs where.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import queue
import re
import socketserver
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from ..core.logs import JsonFormatter
from ..core.metrics import METRICS, Counter, Histogram
from . import explorer

if TYPE_CHECKING:
    from ..runtime.runtime import Runtime

__all__ = ["ANSWER_WITHIN", "AdminListener", "AdminOptions"]

log = logging.getLogger("opendo")

ANSWER_WITHIN = 5.0  # seconds the event loop has to answer a scrape or a health check
HEARTBEAT = 5.0  # seconds between the empty lines of a quiet /logs stream
TAIL_BUFFER = 10_000  # log lines kept for a /logs client that has not read them yet


@dataclass(frozen=True)
class AdminOptions:
    """Where the admin listener listens: ``host``, the first of ``ports`` ports from
    ``port`` that is free (port 0: any free one)."""

    host: str = "127.0.0.1"
    port: int = 0
    ports: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "ports": self.ports}


class _Threaded(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not news


class AdminListener:
    """The admin listener of one runtime, on a thread of its own."""

    def __init__(self, runtime: Runtime, options: AdminOptions) -> None:
        self.runtime = runtime
        self.options = options
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.tail = _Tail()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Listen (called on the event loop, whose thread the reports are read on)."""
        self._loop = asyncio.get_running_loop()
        host, first = self.options.host, self.options.port
        ports = [0] if first == 0 else range(first, first + self.options.ports)
        error: OSError | None = None
        for port in ports:
            try:
                self._server = make_server(host, port, self._app, _Threaded, _Quiet)
                break
            except OSError as exc:
                error = exc
        if self._server is None:
            last = f"{first}..{first + self.options.ports - 1}" if self.options.ports > 1 else first
            raise OSError(f"the admin listener cannot listen on {host}:{last}: {error}")
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="opendo-admin", daemon=True
        )
        self._thread.start()
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "Admin on http://%s:%d (/metrics, /healthz, /readyz, /logs, /explorer)", shown, port
        )

    def close(self) -> None:
        self.tail.close()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # waits for serve_forever to return (at most its 0.5 s poll)
            server.server_close()

    # -- on the admin thread ----------------------------------------------------------------

    def on_loop(self, read: Callable[[], Any]) -> Any:
        """``read()`` run on the event loop; raises TimeoutError if it does not answer."""
        loop = self._loop
        assert loop is not None
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(read())
                except BaseException as exc:
                    future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        try:
            return future.result(ANSWER_WITHIN)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"the event loop did not answer within {ANSWER_WITHIN:g} s"
            ) from None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", b"GET only\n")
        try:
            if path == "/metrics":
                body = generate_latest(self.registry)
                return _answer(start_response, "200 OK", body, CONTENT_TYPE_LATEST)
            if path == "/healthz":
                self.on_loop(lambda: None)
                return _answer(start_response, "200 OK", b"ok\n")
            if path == "/readyz":
                if self.on_loop(lambda: self.runtime.ready):
                    return _answer(start_response, "200 OK", b"ready\n")
                return _answer(start_response, "503 Service Unavailable", b"not ready\n")
            if path == "/":
                start_response("302 Found", [("Location", "/explorer"), ("Content-Length", "0")])
                return [b""]
            if path == "/explorer" or path.startswith("/explorer/"):
                # The driver under the runtime's storage (project.loader keeps it).
                driver = getattr(self.runtime, "storage_driver", None)
                if driver is None:
                    driver = getattr(self.runtime.storage, "driver", None)
                status, page = explorer.page(driver, path, environ.get("QUERY_STRING", ""))
                return _answer(start_response, status, page.encode(), "text/html; charset=utf-8")
            if path == "/logs":
                try:
                    wanted = _Filter.parse(environ.get("QUERY_STRING", ""))
                except ValueError as exc:
                    return _answer(start_response, "400 Bad Request", f"{exc}\n".encode())
                start_response(
                    "200 OK",
                    [("Content-Type", "application/x-ndjson"), ("Cache-Control", "no-cache")],
                )
                return self.tail.stream(wanted)
        except TimeoutError as exc:
            return _answer(start_response, "503 Service Unavailable", f"{exc}\n".encode())
        known = b"/metrics, /healthz, /readyz, /logs and /explorer"
        return _answer(start_response, "404 Not Found", b"not found: this listener has " + known)


def _answer(
    start_response: Callable[..., Any], status: str, body: bytes, kind: str = "text/plain"
) -> list[bytes]:
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


class _Collector:
    """``core.metrics`` and the runtime's census as Prometheus metric families, read on the
    event loop."""

    def __init__(self, listener: AdminListener) -> None:
        self.listener = listener

    def collect(self) -> Iterator[Metric]:
        return iter(self.listener.on_loop(self._read))

    def _read(self) -> list[Metric]:
        families: list[Metric] = [_family(metric) for metric in METRICS.all()]
        census = self.listener.runtime.census()
        for name, help, labels, values in (
            (
                "opendo_objects",
                "Objects this process has now, by class and lifecycle state",
                ["class", "state"],
                census["objects"],
            ),
            (
                "opendo_websockets",
                "WebSockets open now, by class and kind (standard, hibernatable)",
                ["class", "kind"],
                census["sockets"],
            ),
            (
                "opendo_open_storage",
                "Objects whose storage (database handle) is open now",
                [],
                census["open_storage"],
            ),
        ):
            gauge = GaugeMetricFamily(name, help, labels=labels)
            for label_values, value in values.items():
                gauge.add_metric(list(label_values), value)
            families.append(gauge)
        return families


def _family(metric: Counter | Histogram) -> Metric:
    if isinstance(metric, Counter):
        counter = CounterMetricFamily(metric.name, metric.help, labels=list(metric.labels))
        for label_values, value in metric.values.items():
            counter.add_metric(list(label_values), value)
        return counter
    histogram = HistogramMetricFamily(metric.name, metric.help, labels=list(metric.labels))
    for label_values, series in metric.values.items():
        histogram.add_metric(
            list(label_values), list(metric.cumulative(label_values)), sum_value=series[-1]
        )
    return histogram


@dataclass(frozen=True)
class _Filter:
    """Which lines a /logs client wants: all, or the access lines of a class, an object, a
    status (``404``) or a class of statuses (``5xx``)."""

    class_name: str | None = None
    object_name: str | None = None
    status: str | None = None

    @classmethod
    def parse(cls, query: str) -> _Filter:
        fields = urllib.parse.parse_qs(query)
        unknown = set(fields) - {"class", "object", "status"}
        if unknown:
            raise ValueError(
                f"/logs takes class, object and status, not {', '.join(sorted(unknown))}"
            )
        status = fields.get("status", [None])[-1]
        if status is not None and not re.fullmatch(r"[1-5]([0-9][0-9]|xx)", status):
            raise ValueError(f"status is a status (404) or a class of them (5xx), not {status!r}")
        return cls(fields.get("class", [None])[-1], fields.get("object", [None])[-1], status)

    @property
    def everything(self) -> bool:
        return self.class_name is None and self.object_name is None and self.status is None

    def wants(self, entry: dict[str, object]) -> bool:
        if self.everything:
            return True
        if entry.get("logger") != "opendo.access":
            return False
        if self.class_name is not None and entry.get("class") != self.class_name:
            return False
        if self.object_name is not None and entry.get("object") != self.object_name:
            return False
        if self.status is not None:
            status = str(entry.get("status"))
            if self.status.endswith("xx") and status[:1] != self.status[0]:
                return False
            if not self.status.endswith("xx") and status != self.status:
                return False
        return True


class _Tail(logging.Handler):
    """The log, handed to every /logs client (attached to the root logger while one is)."""

    def __init__(self) -> None:
        super().__init__()
        self._json = JsonFormatter()
        self.clients: dict[queue.Queue[bytes], _Filter] = {}
        self.closed = threading.Event()
        self._clients_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = self._json.entry(record)
            line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode()
        except Exception:
            self.handleError(record)
            return
        with self._clients_lock:
            clients = list(self.clients.items())
        for lines, wanted in clients:
            if wanted.wants(entry):
                try:
                    lines.put_nowait(line)
                except queue.Full:
                    pass  # a client that does not read: it is told what it missed

    def stream(self, wanted: _Filter) -> Iterator[bytes]:
        lines: queue.Queue[bytes] = queue.Queue(TAIL_BUFFER)
        with self._clients_lock:
            if not self.clients:
                logging.getLogger().addHandler(self)
            self.clients[lines] = wanted
        return self._lines(lines)

    def _lines(self, lines: queue.Queue[bytes]) -> Iterator[bytes]:
        try:
            yield b"\n"  # the headers and this go out now: the client knows it is tailing
            while not self.closed.is_set():
                full = lines.full()
                try:
                    line = lines.get(timeout=HEARTBEAT)
                except queue.Empty:
                    yield b"\n"
                    continue
                yield line
                if full:
                    note = {
                        "level": "warning",
                        "logger": "opendo.admin",
                        "message": (
                            "this client read too slowly: lines were dropped "
                            f"({TAIL_BUFFER} wait at most)"
                        ),
                    }
                    yield (json.dumps(note) + "\n").encode()
        finally:
            with self._clients_lock:
                self.clients.pop(lines, None)
                if not self.clients:
                    logging.getLogger().removeHandler(self)

    def close(self) -> None:
        self.closed.set()
        super().close()
