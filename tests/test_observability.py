"""Operating a server: the admin listener (/metrics, /healthz, /readyz), the access log and
JSON logs — over real ``opendo serve`` processes on 127.0.0.1, scraped with httpx and parsed
with ``prometheus_client``'s own parser.

The stuck-loop test runs the listener in this process: an event loop on a thread of the
test, blocked by a callback that waits on an event the test sets (the fault), so that
``/healthz`` has a loop that does not answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import START_DEADLINE, STOP_DEADLINE, OpendoProcess, run_opendo
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from opendo import create_app
from opendo.server import admin
from opendo.server.admin import AdminListener, AdminOptions
from opendo.storage.memory import MemoryDriver

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"
PROBE = Path(__file__).resolve().parent / "projects" / "probe"
ADMIN = re.compile(r"Admin on http://127\.0\.0\.1:(\d+)")
WITHIN = 10.0


def admin_ports(process: OpendoProcess, count: int = 1) -> list[int]:
    """The ports of the first ``count`` "Admin on" lines of its stderr."""
    deadline = time.monotonic() + START_DEADLINE
    ports: list[int] = []
    while len(ports) < count:
        line = process.next_line("stderr", deadline)
        assert line is not None, f"opendo exited; stderr: {process.stderr_text()}"
        if match := ADMIN.search(line):
            ports.append(int(match.group(1)))
    return ports


def access_lines(process: OpendoProcess, count: int) -> list[dict[str, Any]]:
    """The next ``count`` access log lines of a ``--log-format json`` server's stderr."""
    deadline = time.monotonic() + WITHIN
    found: list[dict[str, Any]] = []
    while len(found) < count:
        line = process.next_line("stderr", deadline)
        assert line is not None, f"opendo exited; stderr: {process.stderr_text()}"
        entry = json.loads(line)  # every line is JSON, uvicorn's and opendo's alike
        if entry["logger"] == "opendo.access":
            found.append(entry)
    return found


def scrape(port: int) -> dict[str, list[Any]]:
    """/metrics, parsed: samples by metric family name."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=WITHIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(samples: dict[str, list[Any]], family: str, sample: str, **labels: str) -> float:
    """The value of the one sample named ``sample`` of ``family`` with ``labels``."""
    matching = [
        s.value
        for s in samples.get(family, [])
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, (family, sample, labels, samples.get(family))
    return float(matching[0])


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[tuple[OpendoProcess, int, int]]:
    """``opendo serve examples/counter --admin-port 0 --log-format json``: the process,
    its port, its admin port."""
    with run_opendo(
        "serve",
        COUNTER,
        "--port",
        "0",
        "--admin-port",
        "0",
        "--log-format",
        "json",
        "--persist-to",
        tmp_path / "state",
    ) as process:
        [admin_port] = admin_ports(process)
        yield process, process.wait_ready(), admin_port


def test_metrics_count_real_traffic_and_the_access_log_has_a_line_per_request(
    counter: tuple[OpendoProcess, int, int],
) -> None:
    process, port, admin_port = counter
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WITHIN) as client:
        answers = [client.get("/counter/apples").text for _ in range(5)]
        assert answers == ["1", "2", "3", "4", "5"]
        missing = client.get("/nowhere")
        # The public port serves only the project: its /metrics is the Worker's.
        public = client.get("/metrics")
    assert missing.status_code == 404 and public.status_code == 404
    assert "opendo_requests" not in public.text

    samples = scrape(admin_port)
    requests = "opendo_requests"
    assert (
        value(samples, requests, "opendo_requests_total", **{"class": "Counter", "status": "200"})
        == 5
    )
    assert value(samples, requests, "opendo_requests_total", **{"class": "", "status": "404"}) == 2
    duration = "opendo_request_duration_seconds"
    assert value(samples, duration, f"{duration}_count", **{"class": "Counter"}) == 5
    assert value(samples, duration, f"{duration}_bucket", **{"class": "Counter", "le": "+Inf"}) == 5
    assert value(samples, duration, f"{duration}_sum", **{"class": "Counter"}) > 0
    ops = "opendo_storage_operations"
    assert value(samples, ops, f"{ops}_total", **{"class": "Counter", "method": "put"}) == 5
    assert value(samples, ops, f"{ops}_total", **{"class": "Counter", "method": "get"}) == 5
    written = "opendo_storage_written_bytes"
    assert value(samples, written, f"{written}_total", **{"class": "Counter"}) > 0
    flushes = "opendo_storage_flush_duration_seconds"
    assert value(samples, flushes, f"{flushes}_count", driver="sqlite") >= 1
    assert (
        value(
            samples,
            "opendo_storage_flushed_objects",
            "opendo_storage_flushed_objects_total",
            driver="sqlite",
        )
        >= 1
    )
    moves = "opendo_object_transitions"
    assert value(samples, moves, f"{moves}_total", **{"class": "Counter", "state": "active"}) == 1
    assert (
        value(
            samples, "opendo_objects", "opendo_objects", **{"class": "Counter", "state": "active"}
        )
        == 1
    )
    assert value(samples, "opendo_open_storage", "opendo_open_storage") == 1
    assert value(samples, "process_cpu_seconds", "process_cpu_seconds_total") > 0

    lines = access_lines(process, 7)
    assert [(e["method"], e["path"], e["status"]) for e in lines] == [
        *[("GET", "/counter/apples", 200)] * 5,
        ("GET", "/nowhere", 404),
        ("GET", "/metrics", 404),
    ]
    for entry in lines[:5]:
        assert entry["class"] == "Counter" and entry["object"] == "apples"
        assert entry["level"] == "info" and entry["ms"] >= 0
        assert entry["message"].startswith("GET /counter/apples 200 ")
    assert lines[5]["class"] is None and lines[5]["object"] is None


def test_health_readiness_and_what_else_the_admin_listener_answers(
    counter: tuple[OpendoProcess, int, int],
) -> None:
    _, _, admin_port = counter
    with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=WITHIN) as client:
        health, ready = client.get("/healthz"), client.get("/readyz")
        assert (health.status_code, health.text) == (200, "ok\n")
        assert (ready.status_code, ready.text) == (200, "ready\n")
        other = client.get("/counter/apples")
        assert other.status_code == 404
        assert "/metrics, /healthz, /readyz, /logs and /explorer" in other.text
        assert client.post("/metrics").status_code == 405


def test_the_guides_metrics_example(counter: tuple[OpendoProcess, int, int]) -> None:
    _, port, admin_port = counter
    assert httpx.get(f"http://127.0.0.1:{port}/counter/a", timeout=WITHIN).text == "1"
    text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=WITHIN).text
    shown = [line for line in text.splitlines() if line.startswith("opendo_requests_total")]
    guide = Path(__file__).resolve().parent.parent / "docs" / "howto" / "observability.md"
    example = "$ curl -s localhost:9100/metrics | grep '^opendo_requests_total'\n"
    assert example + "\n".join(shown) + "\n```" in guide.read_text(), shown


def test_websockets_are_counted_by_class_and_kind(tmp_path: Path, chat_dir: Path) -> None:
    with run_opendo(
        "serve", chat_dir, "--port", "0", "--admin-port", "0", "--persist-to", tmp_path
    ) as process:
        [admin_port] = admin_ports(process)
        port = process.wait_ready()
        with (
            connect(f"ws://127.0.0.1:{port}/lobby") as a,
            connect(f"ws://127.0.0.1:{port}/lobby") as b,
        ):
            for ws in (a, b):
                assert "id" in json.loads(ws.recv(WITHIN))  # each has joined
            samples = scrape(admin_port)
            sockets = "opendo_websockets"
            assert (
                value(samples, sockets, sockets, **{"class": "Chat", "kind": "hibernatable"}) == 2
            )
            handshakes = value(
                samples,
                "opendo_requests",
                "opendo_requests_total",
                **{"class": "Chat", "status": "101"},
            )
            assert handshakes == 2


def test_without_the_access_log_requests_write_no_line(tmp_path: Path) -> None:
    with run_opendo(
        "serve", COUNTER, "--port", "0", "--no-access-log", "--persist-to", tmp_path
    ) as process:
        port = process.wait_ready()
        assert httpx.get(f"http://127.0.0.1:{port}/counter/pears", timeout=WITHIN).text == "1"
        assert process.stop(15) == 0
        log = process.drain_stderr()
    assert "opendo.access" not in log, log


def test_each_worker_has_an_admin_listener_of_its_own(tmp_path: Path) -> None:
    with run_opendo(
        "serve",
        COUNTER,
        "--port",
        "0",
        "--workers",
        "2",
        "--admin-port",
        "0",
        "--no-access-log",
        "--persist-to",
        tmp_path,
    ) as process:
        ports = admin_ports(process, 2)
        port = process.wait_ready()
        assert len(set(ports)) == 2
        with httpx.Client(timeout=WITHIN) as client:
            for name in ("a", "b", "c", "d"):
                assert client.get(f"http://127.0.0.1:{port}/counter/{name}").text == "1"
            served = 0.0
            for admin_port in ports:
                assert client.get(f"http://127.0.0.1:{admin_port}/healthz").text == "ok\n"
                samples = scrape(admin_port)
                served += sum(
                    s.value
                    for s in samples.get("opendo_requests", [])
                    if s.name == "opendo_requests_total" and s.labels["status"] == "200"
                )
        # Each request was answered by one worker (the one that took the connection).
        assert served == 4


def test_healthz_says_when_the_event_loop_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "ANSWER_WITHIN", 0.5)
    app = create_app(COUNTER, storage=MemoryDriver())
    listener = AdminListener(app.runtime, AdminOptions())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stuck, blocking = threading.Event(), threading.Event()

    async def start() -> None:
        listener.start()

    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(WITHIN)
        url = f"http://127.0.0.1:{listener.address[1]}/healthz"
        assert httpx.get(url, timeout=WITHIN).status_code == 200

        def block() -> None:
            blocking.set()
            stuck.wait(WITHIN)  # the fault: a callback that holds the loop

        loop.call_soon_threadsafe(block)
        assert blocking.wait(WITHIN)
        answer = httpx.get(url, timeout=WITHIN)
        assert answer.status_code == 503
        assert answer.text == "the event loop did not answer within 0.5 s\n"
        stuck.set()
        assert httpx.get(url, timeout=WITHIN).status_code == 200
    finally:
        stuck.set()
        listener.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_DEADLINE)
        loop.close()


def tail_lines(process: OpendoProcess, count: int) -> list[str]:
    """The next ``count`` lines ``opendo tail`` prints."""
    deadline = time.monotonic() + WITHIN
    lines: list[str] = []
    while len(lines) < count:
        line = process.next_line("stdout", deadline)
        assert line is not None, f"opendo tail ended; stderr: {process.stderr_text()}"
        lines.append(line.rstrip("\n"))
    return lines


def wait_tailing(process: OpendoProcess) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while True:
        line = process.next_line("stderr", deadline)
        assert line is not None, f"opendo tail ended; stderr: {process.stderr_text()}"
        if line.startswith("opendo tail: reading http://"):
            return


def test_tail_follows_the_log_with_the_servers_filters(
    counter: tuple[OpendoProcess, int, int],
) -> None:
    _, port, admin_port = counter
    with (
        run_opendo("tail", str(admin_port), "--status", "4xx") as errors,
        run_opendo("tail", f"127.0.0.1:{admin_port}", "--class", "Counter", "--json") as counters,
    ):
        wait_tailing(errors)
        wait_tailing(counters)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WITHIN) as client:
            assert client.get("/counter/kiwi").text == "1"
            assert client.get("/nowhere").status_code == 404
            assert client.get("/counter/kiwi").text == "2"
        [missing] = tail_lines(errors, 1)
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00 INFO opendo\.access: GET /nowhere 404 [\d.]+ ms - -",
            missing,
        ), missing
        entries = [json.loads(line) for line in tail_lines(counters, 2)]
        assert [(e["path"], e["status"], e["object"]) for e in entries] == [
            ("/counter/kiwi", 200, "kiwi")
        ] * 2


def test_tail_says_what_is_wrong(tmp_path: Path) -> None:
    with run_opendo("tail", "not-an-address") as process:
        assert process.proc.wait(STOP_DEADLINE) == 2
        assert "is not an admin listener's address" in process.drain_stderr()
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with run_opendo("tail", str(port)) as process:
            assert process.proc.wait(START_DEADLINE) == 1
            assert "is the server running with --admin-port?" in process.drain_stderr()


def test_logs_refuses_a_filter_it_does_not_know(counter: tuple[OpendoProcess, int, int]) -> None:
    _, _, admin_port = counter
    answer = httpx.get(f"http://127.0.0.1:{admin_port}/logs?colour=red", timeout=WITHIN)
    assert (answer.status_code, answer.text) == (
        400,
        "/logs takes class, object and status, not colour\n",
    )
    answer = httpx.get(f"http://127.0.0.1:{admin_port}/logs?status=6xx", timeout=WITHIN)
    assert answer.status_code == 400 and "a class of them (5xx)" in answer.text


def test_the_explorer_reads_only_objects_of_the_persist_directory(
    counter: tuple[OpendoProcess, int, int],
) -> None:
    _, port, admin_port = counter
    assert httpx.get(f"http://127.0.0.1:{port}/counter/a", timeout=WITHIN).text == "1"
    base = f"http://127.0.0.1:{admin_port}/explorer"
    listing = httpx.get(base, timeout=WITHIN)
    assert listing.status_code == 200 and "Counter" in listing.text
    for path in ("/..%2F..%2Fetc/" + "0" * 64, "/Counter/..%2F..%2Fpasswd", "/Counter/xyz"):
        answer = httpx.get(base + path, timeout=WITHIN)
        assert answer.status_code == 404, path  # no file outside the objects is read
    assert "64 hex digits" in httpx.get(base + "/Counter/xyz", timeout=WITHIN).text


def test_readyz_says_not_ready_from_sigterm_while_requests_drain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "probe"
    shutil.copytree(PROBE, project, ignore=shutil.ignore_patterns("__pycache__", ".opendo"))
    with (project / "opendo.toml").open("a") as f:
        f.write('\n[secrets]\nrequired = ["MARKS"]\n')
    (tmp_path / "marks").mkdir()
    monkeypatch.setenv("MARKS", str(tmp_path / "marks"))
    args = ["serve", project, "--port", "0", "--admin-port", "0", "--persist-to", tmp_path / "s"]
    with run_opendo(*args) as process:
        [admin_port] = admin_ports(process)
        port = process.wait_ready()
        ready = f"http://127.0.0.1:{admin_port}/readyz"
        assert httpx.get(ready, timeout=WITHIN).status_code == 200
        held: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: held.append(
                httpx.get(f"http://127.0.0.1:{port}/hold", headers={"x-n": "1"}, timeout=WITHIN)
            )
        )
        thread.start()
        deadline = time.monotonic() + WITHIN
        while not list((tmp_path / "marks").iterdir()):  # the request runs (HOLD_SECONDS: 1)
            assert time.monotonic() < deadline, "the held request never ran"
            threading.Event().wait(0.01)
        process.proc.send_signal(signal.SIGTERM)
        answer = httpx.get(ready, timeout=WITHIN)
        while answer.status_code == 200:  # the signal is handled between two turns of the loop
            assert time.monotonic() < deadline, "still ready after SIGTERM"
            answer = httpx.get(ready, timeout=WITHIN)
        assert (answer.status_code, answer.text) == (503, "not ready\n")
        assert not held, "ready until the request in flight was answered"
        thread.join(WITHIN)
        assert held and held[0].status_code == 200  # the request in flight was answered
        assert process.proc.wait(WITHIN) == 0
