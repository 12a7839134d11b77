"""The admin listener: ``/metrics``, ``/healthz`` and ``/readyz`` on a port of their own.

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
- ``/readyz``: 200 ``ready`` once the runtime serves, 503 while it starts or shuts down.

Under ``--workers N`` each worker serves its own, on the first free port of
``PORT``..``PORT+N-1`` (port 0: each a free one); each logs where.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socketserver
import threading
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

from ..core.metrics import METRICS, Counter, Histogram

if TYPE_CHECKING:
    from ..runtime.runtime import Runtime

__all__ = ["ANSWER_WITHIN", "AdminListener", "AdminOptions"]

log = logging.getLogger("opendo")

ANSWER_WITHIN = 5.0  # seconds the event loop has to answer a scrape or a health check


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
        log.info("Admin on http://%s:%d (/metrics, /healthz, /readyz)", shown, port)

    def close(self) -> None:
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
        except TimeoutError as exc:
            return _answer(start_response, "503 Service Unavailable", f"{exc}\n".encode())
        known = b"/metrics, /healthz and /readyz"
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
