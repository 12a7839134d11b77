#!/usr/bin/env python3
"""opendo on every core: requests/s of the counter over many counters at --workers 1 and 2,
the cost of a forwarded event against a local one, and the chat's fan-out at --workers 2.

Usage: /tmp/bench-venv/bin/python bench/workers.py [--runs 3] [--requests 6000]
           [--counters 1000] [--concurrency 32] [--chat] [--out OUT.jsonl]
       (a Python with aiohttp and websockets, see bench/README.md; OPENDO=REPO/.venv/bin/opendo)

Every server is started here (`opendo serve`, on a free port of 127.0.0.1, a fresh persist
directory) and stopped here, by PID, bounded in time. Server CPU is utime+stime from /proc of
the server's processes (the supervisor and its workers), read before and after each measured
phase; the load generator runs on the same 2 cores, so compare ratios in one run.

- `counters`: GET /counter/c<i> over `--counters` counters (each was touched once first, so
  every object exists), `--concurrency` keep-alive connections; at --workers 1 and 2, the
  order alternating between runs.
- `forwarded`: two servers A and B on one persist directory; the counters are touched through
  A (A owns them); then the same load through A (every event local) and through B (every
  event forwarded to A): the difference per request is the cost of forwarding.
- `chat` (with --chat): /work/shared/bench/chatload.py against examples/chat --env bench at
  --workers 1 and 2 (1 room x 20 clients x 5 senders x 200 messages; the clients land in both
  workers, so half the deliveries of a room cross processes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
OPENDO = Path(os.environ.get("OPENDO", REPO / ".venv" / "bin" / "opendo"))
CHATLOAD = Path(os.environ.get("BENCH_DIR", "/work/shared/bench")) / "chatload.py"
READY = re.compile(r"Ready on http://127\.0\.0\.1:(\d+)")


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


class Server:
    def __init__(self, project: str, persist: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                str(OPENDO),
                "serve",
                project,
                "--port",
                "0",
                "--no-access-log",
                "--persist-to",
                str(persist),
                *args,
            ],  # fmt: skip
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if match := READY.search(line):
                self.port = int(match.group(1))
                break
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"opendo serve {project} {args} did not start")

    @property
    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


async def load(port: int, names: list[str], requests: int, concurrency: int, within: float = 60):
    """``requests`` GETs spread over ``names``; latencies and status counts."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    next_request = iter(range(requests))
    deadline = time.monotonic() + within
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            for i in next_request:
                if time.monotonic() > deadline:
                    return
                url = f"http://127.0.0.1:{port}/counter/{names[i % len(names)]}"
                t0 = time.perf_counter()
                try:
                    async with session.get(url) as response:
                        await response.read()
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, statuses, errors, wall


def measure(server_pids: list[int], port: int, names: list[str], a: argparse.Namespace) -> dict:
    before = cpu(server_pids)
    latencies, statuses, errors, wall = asyncio.run(load(port, names, a.requests, a.concurrency))
    used = cpu(server_pids) - before
    done = len(latencies)
    latencies.sort()
    return {
        "requests": done,
        "errors": errors,
        "non_200": sum(v for k, v in statuses.items() if k != 200),
        "rps": round(done / wall, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
        "server_cpu_s": round(used, 2),
        "cpu_us_per_request": round(used / done * 1e6, 1) if done else None,
    }


def touch(port: int, names: list[str]) -> None:
    asyncio.run(load(port, names, len(names), 16))


def bench_counters(a: argparse.Namespace, out: list[dict]) -> None:
    names = [f"c{i}" for i in range(a.counters)]
    for run in range(a.runs):
        for workers in (1, 2) if run % 2 == 0 else (2, 1):
            with tempfile.TemporaryDirectory() as tmp:
                server = Server("examples/counter", Path(tmp), "--workers", str(workers))
                try:
                    touch(server.port, names)
                    row = measure(server.pids, server.port, names, a)
                finally:
                    server.stop()
            row.update(bench="counters", workers=workers, run=run, counters=a.counters)
            out.append(row)
            print(json.dumps(row), flush=True)


def bench_forwarded(a: argparse.Namespace, out: list[dict]) -> None:
    names = [f"c{i}" for i in range(a.counters)]
    for run in range(a.runs):
        with tempfile.TemporaryDirectory() as tmp:
            owner = Server("examples/counter", Path(tmp))
            other = Server("examples/counter", Path(tmp))
            try:
                touch(owner.port, names)  # the owner holds every counter
                both = owner.pids + other.pids
                for path, port in (("local", owner.port), ("forwarded", other.port)):
                    row = measure(both, port, names, a)
                    row.update(bench="forwarded", path=path, run=run, counters=a.counters)
                    out.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                other.stop()
                owner.stop()


def bench_chat(a: argparse.Namespace, out: list[dict]) -> None:
    for run in range(a.runs):
        for workers in (1, 2) if run % 2 == 0 else (2, 1):
            with tempfile.TemporaryDirectory() as tmp:
                server = Server(
                    "examples/chat", Path(tmp), "--env", "bench", "--workers", str(workers)
                )
                try:
                    pids = ",".join(map(str, server.pids))
                    result = subprocess.run(
                        [
                            sys.executable,
                            str(CHATLOAD),
                            "--url",
                            f"ws://127.0.0.1:{server.port}",
                            "--rooms",
                            "1",
                            "--clients",
                            "20",
                            "--senders",
                            "5",
                            "--messages",
                            "200",
                            "--timeout",
                            "60",
                            "--server-pids",
                            pids,
                        ],  # fmt: skip
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                finally:
                    server.stop()
            lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"no_output": result.stderr[-500:]}
            row.update(bench="chat", workers=workers, run=run)
            out.append(row)
            print(json.dumps(row), flush=True)


def summary(rows: list[dict]) -> None:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 1)

    print("\nmedians over the runs")
    for workers in (1, 2):
        got = [r for r in rows if r["bench"] == "counters" and r["workers"] == workers]
        if got:
            print(
                f"counters --workers {workers}: {med([r['rps'] for r in got])} req/s, "
                f"p99 {med([r['p99_ms'] for r in got])} ms, "
                f"{med([r['cpu_us_per_request'] for r in got])} µs server CPU/request, "
                f"errors {sum(r['errors'] + r['non_200'] for r in got)}"
            )
    one = [r["rps"] for r in rows if r["bench"] == "counters" and r["workers"] == 1]
    two = [r["rps"] for r in rows if r["bench"] == "counters" and r["workers"] == 2]
    if one and two:
        print(
            f"  --workers 2 / --workers 1: {statistics.median(two) / statistics.median(one):.2f}x"
        )
    for path in ("local", "forwarded"):
        got = [r for r in rows if r["bench"] == "forwarded" and r["path"] == path]
        if got:
            print(
                f"{path}: {med([r['rps'] for r in got])} req/s, "
                f"p50 {med([r['p50_ms'] for r in got])} ms, "
                f"{med([r['cpu_us_per_request'] for r in got])} µs server CPU/request"
            )
    for workers in (1, 2):
        got = [r for r in rows if r["bench"] == "chat" and r["workers"] == workers]
        if got and all("deliveries_per_s" in r for r in got):
            print(
                f"chat --workers {workers}: {med([r['deliveries_per_s'] for r in got])} "
                f"deliveries/s, lost {sum(r.get('lost', 0) for r in got)}, "
                f"duplicated {sum(r.get('duplicated', 0) for r in got)}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=6000)
    p.add_argument("--counters", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--chat", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    rows: list[dict] = []
    bench_counters(a, rows)
    bench_forwarded(a, rows)
    if a.chat:
        bench_chat(a, rows)
    if a.out is not None:
        with a.out.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    summary(rows)


if __name__ == "__main__":
    main()
