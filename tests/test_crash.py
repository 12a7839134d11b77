"""Crash tests: the real ``opendo serve`` in a child process, killed with SIGKILL under load.

DESIGN.md §4: "``kill -9`` at any moment loses no acknowledged write". A client may only see
a counter value once the write that produced it is on disk, so after a kill and a restart the
stored value is at least every value any client received, and no value is ever handed out
twice. Everything is real: the console script, SQLite files under tmp_path, TCP on 127.0.0.1.
"""

from __future__ import annotations

import json
import random
import signal
import threading
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, STOP_DEADLINE, OpendoProcess, run_opendo
from websockets.sync.client import ClientConnection, connect

COUNTER_DIR = ROOT / "examples" / "counter"
CHAT_DIR = ROOT / "examples" / "chat"

CRASH_TRIALS = 30  # kill -> restart -> check -> load -> kill ...
CRASH_TRIALS_WORKERS = 8  # the same with --workers 2 (each start spawns two processes)
CRASH_SEED = 20261127
CLIENTS = 16  # concurrent keep-alive HTTP clients during each trial
COUNTERS = ("a", "b")
RECV = 5.0


def serve(project: Path, persist: Path, log: Path, workers: int = 1) -> OpendoProcess:
    """``opendo serve PROJECT --port 0 --persist-to DIR --workers N``; the caller closes it.

    Stderr is appended to ``log``, a file: a full pipe must never stall the server.
    """
    return OpendoProcess(
        "serve",
        project,
        "--port",
        "0",
        "--persist-to",
        persist,
        "--workers",
        str(workers),
        stderr_log=log,
    )


def kill(server: OpendoProcess, workers: int) -> None:
    """SIGKILL the server: the process, or with workers the whole group at once."""
    if workers == 1:
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    else:
        server.kill_group()


class Load:
    """CLIENTS threads, each with one keep-alive connection, GETting /counter/a and /b in
    turn until the server goes away; every value received with a 200 is recorded."""

    def __init__(self, port: int, workers: int = 1) -> None:
        self.base = f"http://127.0.0.1:{port}"
        # Killed at once, one worker may still answer that the other (the owner) is gone.
        self.killed_5xx = workers > 1
        self.received: dict[str, list[int]] = {name: [] for name in COUNTERS}
        self.errors: list[str] = []
        self.first = threading.Event()  # a first value came back: load is flowing
        self.all_stopped = threading.Event()
        self._lock = threading.Lock()
        self._running = CLIENTS
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(STOP_DEADLINE)
            assert not thread.is_alive(), "a load client did not stop after the kill"

    def _client(self, index: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        try:
            with httpx.Client(base_url=self.base, timeout=RECV, limits=limits) as http:
                for n in range(index, 10**9):
                    name = COUNTERS[n % len(COUNTERS)]
                    try:
                        response = http.get(f"/counter/{name}")
                    except httpx.TransportError:
                        return  # the server was killed
                    if response.status_code >= 500 and self.killed_5xx:
                        return  # not acknowledged: as a dropped connection
                    if response.status_code != 200:
                        with self._lock:
                            self.errors.append(f"{response.status_code} {response.text!r}")
                        return
                    with self._lock:
                        self.received[name].append(int(response.text))
                    self.first.set()
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self.all_stopped.set()


def next_value(port: int, name: str) -> int:
    response = httpx.get(f"http://127.0.0.1:{port}/counter/{name}", timeout=RECV)
    assert response.status_code == 200, response.text
    return int(response.text)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [1, 2], ids=["workers-1", "workers-2"])
def test_sigkill_under_load_loses_no_acknowledged_increment(tmp_path: Path, workers: int) -> None:
    rng = random.Random(CRASH_SEED)
    persist = tmp_path / "state"
    log = tmp_path / "server.log"
    handed_out: dict[str, list[int]] = {name: [] for name in COUNTERS}
    trials = CRASH_TRIALS if workers == 1 else CRASH_TRIALS_WORKERS
    server = serve(COUNTER_DIR, persist, log, workers)
    try:
        port = server.wait_ready()
        for trial in range(trials):
            load = Load(port, workers)
            load.start()
            assert load.first.wait(RECV), f"trial {trial}: no response under load"
            delay = rng.uniform(0.05, 0.4)
            # The kill moment: waits `delay`, or less if every client stopped (a failure).
            assert not load.all_stopped.wait(delay), f"trial {trial}: load stopped: {load.errors}"
            kill(server, workers)
            load.join()
            assert load.errors == [], f"trial {trial}: {load.errors}"

            server = serve(COUNTER_DIR, persist, log, workers)  # the next trial's server too
            port = server.wait_ready()
            for name in COUNTERS:
                got = load.received[name]
                assert len(set(got)) == len(got), f"trial {trial}: /counter/{name} repeated a value"
                value = next_value(port, name)
                stored = value - 1
                assert stored >= max(got, default=0), (
                    f"trial {trial} (kill after {delay:.3f} s): /counter/{name} restarted at "
                    f"{stored}, but a client had received {max(got)} before the kill"
                )
                handed_out[name] += [*got, value]
    finally:
        server.close()

    for name, values in handed_out.items():
        assert len(set(values)) == len(values), f"/counter/{name} handed out a value twice"
        assert len(values) > 2 * trials, f"/counter/{name} saw almost no load"


# -- the chat's counter survives a restart ---------------------------------------------------


def join_room(stack: ExitStack, port: int, room: str) -> int:
    """Open a WebSocket to /<room> (closed with ``stack``); return the id it was given."""
    url = f"ws://127.0.0.1:{port}/{room}"
    ws: ClientConnection = stack.enter_context(connect(url, open_timeout=RECV, close_timeout=1))
    greeting = json.loads(ws.recv(timeout=RECV))
    assert set(greeting) == {"id"}, greeting
    return int(greeting["id"])


@pytest.mark.parametrize("workers", [1, 2], ids=["workers-1", "workers-2"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_chat_ids_keep_counting_across_a_restart(
    tmp_path: Path, sig: signal.Signals, workers: int
) -> None:
    persist = tmp_path / "state"
    log = tmp_path / "server.log"
    args = ("serve", CHAT_DIR, "--port", "0", "--persist-to", persist, "--workers", str(workers))
    with (
        run_opendo(*args, stderr_log=log) as server,
        ExitStack() as clients,
    ):
        port = server.wait_ready()
        assert [join_room(clients, port, "room") for _ in range(3)] == [1, 2, 3]
        # with the three clients still connected
        if sig == signal.SIGKILL:
            kill(server, workers)
        else:
            assert server.stop(sig) == 0, log.read_text()

    with (
        run_opendo(*args, stderr_log=log) as server,
        ExitStack() as clients,
    ):
        port = server.wait_ready()
        assert join_room(clients, port, "room") == 4
        clients.close()
        assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in log.read_text()


def create_objects(
    port: int,
    prefix: str,
    out: list[str],
    errors: list[str],
    started: threading.Event,
    stop: threading.Event,
) -> None:
    """GET /counter/<prefix>n<i> for i = 0, 1, …: each a new object, which must answer 1;
    the names that did go to ``out``, anything else to ``errors``. Until ``stop`` or the
    server goes away."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=RECV) as http:
        for n in range(10**6):
            if stop.is_set():
                return
            name = f"{prefix}n{n}"
            try:
                response = http.get(f"/counter/{name}")
            except httpx.TransportError:
                return  # killed
            if response.status_code != 200 or response.text != "1":
                errors.append(f"/counter/{name}: {response.status_code} {response.text!r}")
                return
            out.append(name)
            started.set()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_while_objects_are_created_loses_none_that_answered(tmp_path: Path) -> None:
    # Every request makes a new object (its database file is created then): each one that
    # answered 1 must be there after the kill, and answer 2.
    rng = random.Random(CRASH_SEED + 1)
    persist = tmp_path / "state"
    log = tmp_path / "server.log"
    server = serve(COUNTER_DIR, persist, log)
    try:
        port = server.wait_ready()
        for trial in range(8):
            answered: list[str] = []
            errors: list[str] = []
            started, stop = threading.Event(), threading.Event()
            threads = [
                threading.Thread(
                    target=create_objects,
                    args=(port, f"t{trial}c{i}", answered, errors, started, stop),
                )
                for i in range(8)
            ]
            for thread in threads:
                thread.start()
            assert started.wait(RECV), f"trial {trial}: no answer: {errors}"
            stop.wait(rng.uniform(0.05, 0.3))  # the kill moment
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
            stop.set()
            for thread in threads:
                thread.join(STOP_DEADLINE)
                assert not thread.is_alive()
            assert errors == [], f"trial {trial}: {errors}"
            server = serve(COUNTER_DIR, persist, log)
            port = server.wait_ready()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=RECV) as http:
                for name in answered:
                    response = http.get(f"/counter/{name}")
                    assert response.text == "2", f"trial {trial}: /counter/{name} was lost"
    finally:
        server.close()
