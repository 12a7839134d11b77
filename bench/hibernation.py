#!/usr/bin/env python3
"""Hibernation: server memory per hibernated WebSocket, and a broadcast that wakes the object.

Starts ``opendo serve`` on a copy of ``examples/chat`` whose opendo.toml gets
``[runtime] hibernation_timeout = 2``, opens N WebSocket connections to ONE room (from a few
client processes), waits until the server logs ``hibernated Chat(<id>) with N WebSockets``, and
measures:

- memory: the server's RSS (``VmRSS`` of ``/proc/PID/status``) after start and one warm-up
  connection (to another room) that was closed (baseline); with all N connected and the object
  live; and once the object hibernated. Per connection: (hibernated - baseline) / N.
- the broadcast after eviction: one client sends ``{"from": id, "text": "<marker>|<t_send_ns>"}``;
  the object is constructed again and sends the frame to all N sockets. Reported: time from the
  send to the last client's receipt and the median (one system-wide monotonic clock), that every
  client got it exactly once, and the server CPU (utime + stime) over the broadcast.

Targets (the issue): <= 10 KiB per hibernated connection; the broadcast reaches all 10,000 in
under 1 s. They are reported, not asserted.

Usage (from the repository root; any Python with ``websockets`` >= 14)::

    .venv/bin/python bench/hibernation.py                          # 10,000 connections
    .venv/bin/python bench/hibernation.py --connections 1000       # a quick run
    .venv/bin/python bench/hibernation.py --workers 2 --concurrency 100 --opendo PATH

Prints one JSON line on stdout and a summary on stderr. Exit status: 0 when every client got a
distinct id in 1..N and the broadcast exactly once; 1 when not; 2 on a setup failure or a timeout.
Everything is on 127.0.0.1; every phase is bounded; the server is started here and always stopped
by its PID (SIGTERM, then SIGKILL), and its temp folder (project copy, storage, log) is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import multiprocessing as mp
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHAT = REPO / "examples" / "chat"
HIBERNATED = re.compile(r"hibernated Chat\((\w+)\) with (\d+) WebSockets")
READY = re.compile(r"Ready on http://127\.0\.0\.1:(\d+)")
NOFILE = 65536
GRACE_S = 0.5  # after the last client got the broadcast: time for duplicates to show


class BenchError(Exception):
    """A phase failed or timed out: reported, exit status 2."""


# -- the server -------------------------------------------------------------------------------


def raise_nofile(want: int = NOFILE) -> int:
    """Raise this process's soft RLIMIT_NOFILE as far as the hard limit allows (children inherit
    it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...), in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """``opendo serve`` on a temp copy of the chat, with its output read by two threads."""

    def __init__(self, opendo: str, hibernation_timeout: float) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="opendo-hibernation."))
        project = self.work / "chat"
        shutil.copytree(CHAT, project, ignore=shutil.ignore_patterns(".opendo", "__pycache__"))
        with open(project / "opendo.toml", "a") as f:
            f.write(f"\n[runtime]\nhibernation_timeout = {hibernation_timeout}\n")
        self.cmd = [
            opendo,
            "serve",
            str(project),
            "--port",
            "0",
            "--ip",
            "127.0.0.1",
            "--no-access-log",
            "--persist-to",
            str(self.work / "state"),
            "--log-level",
            "debug",
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.tail: deque[str] = deque(maxlen=40)  # last stderr lines, for error reports
        self.hibernations: list[tuple[float, str, int]] = []  # (monotonic, object id, sockets)
        self._ready = threading.Event()
        self._changed = threading.Condition()

    def start(self, timeout: float) -> None:
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=raise_nofile,  # runs before any thread of ours exists
        )
        atexit.register(self.stop)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"no 'Ready on' line within {timeout:g} s{self.last_lines()}")

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if not self._ready.is_set() and (m := READY.search(line)):
                self.port = int(m.group(1))
                self._ready.set()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.tail.append(line)
            if m := HIBERNATED.search(line):
                with self._changed:
                    self.hibernations.append((time.monotonic(), m.group(1), int(m.group(2))))
                    self._changed.notify_all()

    def wait_hibernated(self, sockets: int, since: float, timeout: float) -> float:
        """Wait for a ``hibernated ... with SOCKETS WebSockets`` line logged after ``since``
        (monotonic); returns when it was read."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for at, _id, n in self.hibernations:
                    if n == sockets and at >= since:
                        return at
                self.check_alive()
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [n for _, _, n in self.hibernations]
                    raise BenchError(
                        f"the server did not log 'hibernated Chat(...) with {sockets} WebSockets' "
                        f"within {timeout:g} s (hibernations seen: {seen}){self.last_lines()}"
                    )
                self._changed.wait(min(left, 0.5))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"the server exited (status {code}){self.last_lines()}")

    def last_lines(self) -> str:
        lines = list(self.tail)[-15:]
        return "; last server log lines:\n  " + "\n  ".join(lines) if lines else ""

    def rss(self) -> dict[str, int]:
        self.check_alive()
        return proc_status(self.pid)

    def cpu(self) -> float:
        self.check_alive()
        return proc_cpu_s(self.pid)

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, 10 s, SIGKILL) and remove the temp folder."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.work, ignore_errors=True)


# -- client processes -------------------------------------------------------------------------
# Each worker holds its share of the connections and answers commands over a pipe:
#   ("connect", count, concurrency, timeout) -> ("connected", ids, errors, seconds)
#   ("arm", marker, timeout)                 -> ("armed",), later ("result", {...})
#   ("send", marker)                         -> ("sent", t_send_ns)   (worker 0 only)
#   ("exit",)                                -> ("bye",)


def worker_main(conn: Connection, url: str) -> None:
    raise_nofile()
    try:
        asyncio.run(_worker(conn, url))
    except BaseException as exc:  # report, so the parent does not wait for its timeout
        try:
            conn.send(("error", repr(exc)))
        except OSError:
            pass
        raise


async def _worker(conn: Connection, url: str) -> None:
    from websockets.asyncio.client import ClientConnection, connect

    sockets: list[ClientConnection] = []
    ids: list[int] = []
    collector: asyncio.Task[None] | None = None

    async def open_one(sem: asyncio.Semaphore, limit_s: float) -> tuple[ClientConnection, int]:
        async with sem:
            ws = await connect(
                url,
                compression=None,
                ping_interval=None,
                max_queue=4,
                open_timeout=limit_s,
                close_timeout=1,
                user_agent_header=None,
            )
            try:
                async with asyncio.timeout(limit_s):
                    greeting = json.loads(await ws.recv())
                return ws, int(greeting["id"])
            except BaseException:
                ws.transport.abort()
                raise

    async def collect(marker: str, limit_s: float) -> None:
        prefix = marker + "|"
        first_ns: list[int | None] = [None] * len(sockets)
        counts = [0] * len(sockets)
        others = 0
        all_got = asyncio.Event()
        got = 0

        async def watch(i: int, ws: ClientConnection) -> None:
            nonlocal got, others
            async for message in ws:
                now = time.monotonic_ns()
                try:
                    text = json.loads(message)["text"]
                except (ValueError, TypeError, KeyError):
                    others += 1
                    continue
                if not (isinstance(text, str) and text.startswith(prefix)):
                    others += 1
                    continue
                counts[i] += 1
                if first_ns[i] is None:
                    first_ns[i] = now
                    got += 1
                    if got == len(sockets):
                        all_got.set()

        watchers = [asyncio.create_task(watch(i, ws)) for i, ws in enumerate(sockets)]
        conn.send(("armed",))
        try:
            async with asyncio.timeout(limit_s):
                await all_got.wait()
            await asyncio.sleep(GRACE_S)
        except TimeoutError:
            pass
        closed = sum(1 for w in watchers if w.done())
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        conn.send(
            (
                "result",
                {
                    "recv_ns": [t for t in first_ns if t is not None],
                    "once": sum(1 for c in counts if c == 1),
                    "missing": sum(1 for c in counts if c == 0),
                    "duplicated": sum(1 for c in counts if c > 1),
                    "other_frames": others,
                    "closed": closed,
                },
            )
        )

    while True:
        command = await asyncio.to_thread(conn.recv)
        kind = command[0]
        if kind == "connect":
            _, count, concurrency, timeout = command
            sem = asyncio.Semaphore(concurrency)
            t0 = time.monotonic()
            done = await asyncio.gather(
                *(open_one(sem, timeout) for _ in range(count)), return_exceptions=True
            )
            errors = []
            for item in done:
                if isinstance(item, BaseException):
                    errors.append(repr(item))
                else:
                    sockets.append(item[0])
                    ids.append(item[1])
            conn.send(("connected", ids, errors, time.monotonic() - t0))
        elif kind == "arm":
            _, marker, timeout = command
            collector = asyncio.create_task(collect(marker, timeout))
        elif kind == "send":
            marker = command[1]
            t_send = time.monotonic_ns()
            await sockets[0].send(json.dumps({"from": ids[0], "text": f"{marker}|{t_send}"}))
            conn.send(("sent", t_send))
        elif kind == "exit":
            if collector is not None:
                collector.cancel()
            for ws in sockets:
                ws.transport.abort()
            conn.send(("bye",))
            return


class Workers:
    """The client processes, each with a pipe; stopped by their PIDs on exit."""

    def __init__(self, count: int, url: str) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[mp.process.BaseProcess] = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, url), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)
        atexit.register(self.stop)

    def expect(self, pipe: Connection, kind: str, deadline: float) -> tuple[Any, ...]:
        """The next message of one worker, which must be ``kind``, before ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0 or not pipe.poll(left):
            raise BenchError(f"a client process sent no {kind!r} in time")
        try:
            message = pipe.recv()
        except EOFError:
            raise BenchError("a client process exited") from None
        if message[0] != kind:
            raise BenchError(f"a client process answered {message!r}, expected {kind!r}")
        return message

    def gather(self, kind: str, deadline: float) -> list[tuple[Any, ...]]:
        """One ``kind`` message from every worker, before ``deadline``."""
        out: dict[int, tuple[Any, ...]] = {}
        index = {id(p): i for i, p in enumerate(self.pipes)}
        while len(out) < len(self.pipes):
            left = deadline - time.monotonic()
            waiting = [p for i, p in enumerate(self.pipes) if i not in out]
            ready = wait(waiting, timeout=max(left, 0))
            if not ready:
                raise BenchError(f"{len(waiting)} client process(es) sent no {kind!r} in time")
            for p in ready:
                assert isinstance(p, Connection)
                out[index[id(p)]] = self.expect(p, kind, deadline + 1)
        return [out[i] for i in range(len(self.pipes))]

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit",))
            except OSError:
                pass
        deadline = time.monotonic() + 10
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.procs.clear()


# -- the benchmark ----------------------------------------------------------------------------


async def warm_up(url: str, limit_s: float) -> None:
    """One connection (to another room) that gets its id and closes."""
    from websockets.asyncio.client import connect

    async with asyncio.timeout(limit_s):
        async with connect(url, compression=None, ping_interval=None) as ws:
            json.loads(await ws.recv())["id"]


def nudge(url: str) -> int:
    """One event for the room's object that writes nothing: a GET without an upgrade, which
    the chat answers with 426. Returns the status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        raise BenchError(f"GET {url} failed: {exc!r}") from exc


def shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The benchmark; fills ``result`` as it goes (so a failure still reports its phase)."""
    n = args.connections
    limit = raise_nofile()
    if limit < n + 64:
        print(
            f"hibernation: warning: RLIMIT_NOFILE is {limit}, the server needs about {n + 64}",
            file=sys.stderr,
        )
    server = Server(args.opendo, args.hibernation_timeout)
    try:
        server.start(args.start_timeout)
        base = f"ws://127.0.0.1:{server.port}"
        room = "bench-" + secrets.token_hex(4)
        asyncio.run(warm_up(f"{base}/warmup-{secrets.token_hex(4)}", 30))
        time.sleep(args.settle)
        baseline = server.rss()

        workers = Workers(min(args.workers, n), f"{base}/{room}")
        per_worker = shares(n, len(workers.pipes))
        per_conc = [max(1, c) for c in shares(args.concurrency, len(workers.pipes))]
        t0 = time.monotonic()
        for pipe, count, conc in zip(workers.pipes, per_worker, per_conc, strict=True):
            pipe.send(("connect", count, conc, args.handshake_timeout))
        replies = workers.gather("connected", t0 + args.connect_timeout)
        connect_s = time.monotonic() - t0
        connected_at = time.monotonic()
        ids = [i for r in replies for i in r[1]]
        errors = [e for r in replies for e in r[2]]
        result.update(connect_phase_s=round(connect_s, 3), connected=len(ids))
        if errors:
            result.update(connect_errors=len(errors), first_connect_error=errors[0])
            raise BenchError(f"{len(errors)} of {n} connections failed, first: {errors[0]}")
        ids_ok = sorted(ids) == list(range(1, n + 1))
        result["ids_ok"] = ids_ok
        connected = server.rss()

        # The object should hibernate hibernation_timeout seconds after its last event. If it
        # does not, one event that writes nothing (a plain GET of the room: 426) is sent, and
        # the benchmark goes on; the JSON says which happened.
        natural = args.hibernation_timeout + args.natural_wait
        try:
            t_hib = server.wait_hibernated(n, t0, natural)
            result["nudged"] = False
        except BenchError:
            server.check_alive()
            result["nudged"] = True
            t_nudge = time.monotonic()
            result["nudge_status"] = nudge(f"http://127.0.0.1:{server.port}/{room}")
            t_hib = server.wait_hibernated(n, t_nudge, args.hibernate_wait)
            result["hibernated_after_nudge_s"] = round(t_hib - t_nudge, 3)
        result["hibernated_after_last_connect_s"] = round(max(0.0, t_hib - connected_at), 3)
        time.sleep(args.settle)
        hibernated = server.rss()

        marker = "bcast-" + secrets.token_hex(4)
        deadline = time.monotonic() + 10
        for pipe in workers.pipes:
            pipe.send(("arm", marker, args.broadcast_timeout))
        workers.gather("armed", deadline)
        cpu0 = server.cpu()
        workers.pipes[0].send(("send", marker))
        deadline = time.monotonic() + args.broadcast_timeout + GRACE_S + 10
        t_send = workers.expect(workers.pipes[0], "sent", deadline)[1]
        results = [r[1] for r in workers.gather("result", deadline)]
        cpu1 = server.cpu()
        after = server.rss()
    finally:
        if "workers" in locals():
            workers.stop()
        server.stop()

    latencies = [(t - t_send) / 1e6 for r in results for t in r["recv_ns"]]
    once = sum(r["once"] for r in results)
    missing = sum(r["missing"] for r in results)
    duplicated = sum(r["duplicated"] for r in results)
    result.update(
        rss_baseline_kib=baseline["VmRSS"],
        rss_connected_kib=connected["VmRSS"],
        rss_hibernated_kib=hibernated["VmRSS"],
        rss_after_broadcast_kib=after["VmRSS"],
        rss_peak_kib=after["VmHWM"],
        kib_per_connection_connected=round((connected["VmRSS"] - baseline["VmRSS"]) / n, 2),
        kib_per_connection_hibernated=round((hibernated["VmRSS"] - baseline["VmRSS"]) / n, 2),
        broadcast_last_ms=round(max(latencies), 3) if latencies else None,
        broadcast_p50_ms=round(statistics.median(latencies), 3) if latencies else None,
        broadcast_p99_ms=round(pct(latencies, 99), 3) if latencies else None,
        delivered=len(latencies),
        delivered_once=once,
        missing=missing,
        duplicated=duplicated,
        other_frames=sum(r["other_frames"] for r in results),
        closed_during_broadcast=sum(r["closed"] for r in results),
        server_cpu_broadcast_s=round(cpu1 - cpu0, 3),
        ok=ids_ok and once == n,
    )


def summary(r: dict[str, Any]) -> str:
    n = r["connections"]
    kib = r["kib_per_connection_hibernated"]
    last = r["broadcast_last_ms"]
    return "\n".join(
        [
            f"hibernation: {n:,} WebSockets to one room, {r['workers']} client processes",
            f"  connect phase        {r['connect_phase_s']:.1f} s;"
            f" ids 1..N distinct: {r['ids_ok']}",
            f"  server RSS baseline  {r['rss_baseline_kib'] / 1024:8.1f} MiB",
            f"  all connected, live  {r['rss_connected_kib'] / 1024:8.1f} MiB"
            f"  ({r['kib_per_connection_connected']:.2f} KiB/connection)",
            f"  hibernated           {r['rss_hibernated_kib'] / 1024:8.1f} MiB"
            f"  ({kib:.2f} KiB/connection; target <= 10: {'met' if kib <= 10 else 'MISSED'})"
            f"; logged {r['hibernated_after_last_connect_s']:.1f} s after the last connect"
            + (" (only after a nudge: a GET of the room)" if r["nudged"] else ""),
            f"  after broadcast      {r['rss_after_broadcast_kib'] / 1024:8.1f} MiB"
            f"  (peak {r['rss_peak_kib'] / 1024:.1f} MiB)",
            f"  broadcast after eviction: last {last:.1f} ms"
            f" (target < 1000: {'met' if last is not None and last < 1000 else 'MISSED'}),"
            f" p50 {r['broadcast_p50_ms']:.1f} ms, p99 {r['broadcast_p99_ms']:.1f} ms;"
            f" server CPU {r['server_cpu_broadcast_s']:.2f} s",
            f"  delivered {r['delivered']:,}/{n:,} (exactly once: {r['delivered_once']:,},"
            f" missing {r['missing']}, duplicated {r['duplicated']})",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10_000, help="N (default 10000)")
    p.add_argument("--workers", type=int, default=4, help="client processes (default 4)")
    p.add_argument(
        "--concurrency", type=int, default=200, help="handshakes in flight (default 200)"
    )
    p.add_argument("--opendo", default=str(REPO / ".venv" / "bin" / "opendo"))
    p.add_argument("--hibernation-timeout", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--settle", type=float, default=1.0, help="pause before RSS reads (1 s)")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--handshake-timeout", type=float, default=30.0, help="per connection")
    p.add_argument("--connect-timeout", type=float, default=300.0, help="the whole phase")
    p.add_argument(
        "--natural-wait",
        type=float,
        default=5.0,
        help="seconds past the hibernation timeout to wait before the nudge (default 5)",
    )
    p.add_argument("--hibernate-wait", type=float, default=60.0, help="after the nudge")
    p.add_argument("--broadcast-timeout", type=float, default=30.0)
    args = p.parse_args()
    if args.connections < 1 or args.workers < 1 or args.concurrency < 1:
        p.error("--connections, --workers and --concurrency must be positive")
    if not os.access(args.opendo, os.X_OK):
        p.error(f"opendo not found or not executable: {args.opendo}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result: dict[str, Any] = {
        "tool": "hibernation",
        "connections": args.connections,
        "workers": args.workers,
    }
    try:
        run(args, result)
    except BenchError as exc:
        result.update(ok=False, error=str(exc).partition("; last server log")[0])
        print(json.dumps(result), flush=True)
        print(f"hibernation: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    print(summary(result), file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
