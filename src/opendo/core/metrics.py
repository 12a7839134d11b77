"""What a server process counts, as plain data: counters and histograms with labels.

Whatever happens once per event (a request answered, a storage call, an object moving from
one lifecycle state to another, an alarm run, a sync round) adds to ``METRICS`` with one
dictionary update where it happens; what is a state (objects live, sockets open) is read
from the runtime when the numbers are asked for, so it costs nothing meanwhile. The admin
listener (``server.admin``) renders both in Prometheus' text format; a test reads them here.

The counts are the process's: under ``--workers N`` each worker has its own, as each has its
own admin listener.
"""

from __future__ import annotations

import contextvars
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DURATION_BUCKETS",
    "METRICS",
    "Counter",
    "Histogram",
    "Metrics",
    "RequestRecord",
    "called",
    "current_request",
]

# Seconds: from a cached read to a slow disk's flush.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

Labels = tuple[str, ...]


@dataclass(eq=False)
class Counter:
    """A monotonic count per label values (Prometheus' counter; ``name`` without
    ``_total``)."""

    name: str
    help: str
    labels: tuple[str, ...]
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        values = self.values
        values[label_values] = values.get(label_values, 0.0) + amount

    def get(self, *label_values: str) -> float:
        return self.values.get(label_values, 0.0)


@dataclass(eq=False)
class Histogram:
    """Observations per label values, counted in ``buckets`` (upper bounds, the last one
    +Inf) with their sum."""

    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = DURATION_BUCKETS
    # label values -> [a count per bucket and one for +Inf (not cumulative), sum]
    values: dict[Labels, list[float]] = field(default_factory=dict)

    def observe(self, value: float, *label_values: str) -> None:
        series = self.values.get(label_values)
        if series is None:
            series = self.values[label_values] = [0.0] * (len(self.buckets) + 2)
        series[bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def count(self, *label_values: str) -> float:
        series = self.values.get(label_values)
        return 0.0 if series is None else sum(series[:-1])

    def cumulative(self, label_values: Labels) -> Iterator[tuple[str, float]]:
        """(upper bound as Prometheus writes it, observations up to it), +Inf last."""
        total = 0.0
        series = self.values[label_values]
        for bound, count in zip((*self.buckets, float("inf")), series[:-1], strict=True):
            total += count
            yield ("+Inf" if bound == float("inf") else repr(bound)), total


class Metrics:
    """Every counter and histogram of a process. The labels ``class`` is an object's class
    name ("" where no object answered)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "opendo_requests",
            "HTTP requests and WebSocket handshakes answered, by the class of the first "
            "object the Worker called and status",
            ("class", "status"),
        )
        self.request_seconds = Histogram(
            "opendo_request_duration_seconds",
            "Time from a request's head to its answer (a handshake: to its 101)",
            ("class",),
        )
        self.storage_operations = Counter(
            "opendo_storage_operations",
            "Storage API calls of objects, by class and method",
            ("class", "method"),
        )
        self.storage_written_bytes = Counter(
            "opendo_storage_written_bytes",
            "Bytes of encoded values written with storage.put, by class",
            ("class",),
        )
        self.flush_seconds = Histogram(
            "opendo_storage_flush_duration_seconds",
            "Time of a durability round (the fsyncs or the database commit that make the "
            "commits of its objects durable), by driver",
            ("driver",),
        )
        self.flushed_objects = Counter(
            "opendo_storage_flushed_objects",
            "Objects' databases made durable by durability rounds, by driver",
            ("driver",),
        )
        self.lifecycle = Counter(
            "opendo_object_transitions",
            "Times objects entered a lifecycle state (activating, active, hibernated, "
            "evicted, broken, ...), by class and state",
            ("class", "state"),
        )
        self.alarms = Counter(
            "opendo_alarms",
            "Alarm handler runs by outcome: ran (returned), failed (raised; retried later), "
            "given_up (failed past the retries: deleted)",
            ("class", "outcome"),
        )

    def all(self) -> list[Counter | Histogram]:
        return [value for value in vars(self).values() if isinstance(value, Counter | Histogram)]

    def reset(self) -> None:
        """Forget every count (for tests of one process)."""
        for metric in self.all():
            metric.values.clear()


METRICS = Metrics()


@dataclass(slots=True)
class RequestRecord:
    """The request being answered: the first object its Worker called (for its access log
    line and its metrics' ``class``)."""

    class_name: str = ""
    object: str = ""


current_request: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "opendo_current_request", default=None
)


def called(class_name: str, id: Any) -> None:
    """An object is called: the request being answered (if any, and if it has none yet)
    records it, by the name its id was made from, else the id (made a string only then)."""
    record = current_request.get()
    if record is not None and not record.class_name:
        record.class_name = class_name
        record.object = getattr(id, "name", None) or str(id)
