#!/usr/bin/env python3
"""opendo in a cluster against opendo embedded, in one run on one machine.

Usage: /tmp/bench-venv/bin/python bench/cluster.py [--runs 3] [--requests 4000]
           [--counters 100] [--many 1000] [--concurrency 32] [--kills 20] [--lease 2]
           [--out OUT.jsonl]
       (a Python with aiohttp and asyncpg; OPENDO=REPO/.venv/bin/opendo)

A PostgreSQL server is started here in a temporary directory (tests/pg.py's
``PostgresServer``: initdb and pg_ctl, on 127.0.0.1, fsync on), and every opendo server too
(`opendo serve examples/counter`, on free ports), stopped here by PID, every phase bounded in
count and time. CPU is utime+stime from /proc: of opendo's processes, and of PostgreSQL's
(its postmaster and backends) for the cluster; the load generator shares the machine's
cores, so compare ratios within one run.

- `counter`: GET /counter/c<i> over `--counters` counters, `--concurrency` keep-alive
  connections, against one embedded server, one cluster node, and three cluster nodes (the
  load spread over the three; an object lives on one of them, so most requests are
  forwarded once). Order alternates between runs.
- `latency`: one counter, one connection: the latency of a durable write (embedded: an
  fsync; cluster: a PostgreSQL commit), and the bytes each commit ships to PostgreSQL.
- `many`: durable writes spread over `--many` counters (each written once first): one fsync
  per object embedded, against PostgreSQL commits that carry the flushes of many objects.
- `failover`: two nodes; an object is claimed on node A, A is killed (SIGKILL), and the time
  until node B answers for the object is measured; `--kills` times, A restarted each time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pg import PostgresServer, find_bindir  # noqa: E402
from workers import OPENDO, REPO, cpu, load, touch, tree  # noqa: E402

SECRET = "bench-" + "0123456789abcdef" * 2
READY = "Ready on http://127.0.0.1:"


class Node:
    """`opendo serve examples/counter`, embedded or as a node of a cluster."""

    def __init__(self, persist: Path, *args: str) -> None:
        env = dict(os.environ, OPENDO_CLUSTER_SECRET=SECRET)
        self.proc = subprocess.Popen(
            [str(OPENDO), "serve", "examples/counter", "--port", "0", "--no-access-log",
             "--persist-to", str(persist), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if READY in line:
                self.port = int(line.rsplit(":", 1)[1])
                break
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"opendo serve {args} did not start")

    @property
    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def postgres_pids(server: PostgresServer) -> list[int]:
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    return tree(pid)


class Cluster:
    def __init__(self, server: PostgresServer, lease: float) -> None:
        self.server = server
        self.lease = lease
        self.database = f"bench_{time.monotonic_ns()}"
        self.dsn = server.create_database(self.database)
        self.tmp = tempfile.TemporaryDirectory(prefix="opendo-bench-")
        self.count = 0

    def node(self, advertise_port: int | None = None) -> Node:
        self.count += 1
        port = advertise_port or free_port()
        return Node(
            Path(self.tmp.name) / f"n{self.count}",
            "--cluster", self.dsn,
            "--advertise", f"127.0.0.1:{port}",
            "--lease-seconds", str(self.lease),
        )  # fmt: skip

    def close(self) -> None:
        self.server.drop_database(self.database)
        self.tmp.cleanup()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def spread_load(
    ports: list[int], names: list[str], requests: int, concurrency: int
) -> tuple[list[float], dict[int, int], int, float]:
    """Like ``workers.load``, the connections spread over ``ports``."""
    results = await asyncio.gather(
        *(
            load(port, names, requests // len(ports), max(1, concurrency // len(ports)))
            for port in ports
        )
    )
    latencies = [x for r in results for x in r[0]]
    statuses: dict[int, int] = {}
    for r in results:
        for k, v in r[1].items():
            statuses[k] = statuses.get(k, 0) + v
    return latencies, statuses, sum(r[2] for r in results), max(r[3] for r in results)


def measure(
    ports: list[int], opendo: list[int], postgres: list[int], names: list[str],
    requests: int, concurrency: int,
) -> dict[str, Any]:  # fmt: skip
    before, pg_before = cpu(opendo), cpu(postgres)
    latencies, statuses, errors, wall = asyncio.run(
        spread_load(ports, names, requests, concurrency)
    )
    used, pg_used = cpu(opendo) - before, cpu(postgres) - pg_before
    done = len(latencies)
    latencies.sort()
    return {
        "requests": done,
        "errors": errors,
        "non_200": sum(v for k, v in statuses.items() if k != 200),
        "rps": round(done / wall, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
        "opendo_cpu_us_per_request": round(used / done * 1e6, 1) if done else None,
        "postgres_cpu_us_per_request": round(pg_used / done * 1e6, 1) if done else None,
    }


async def log_stats(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS records, coalesce(sum(length(data)), 0) AS bytes FROM opendo_log"
        )
        return {"log_records": row["records"], "log_bytes": row["bytes"]}
    finally:
        await conn.close()


# -- the benchmarks -------------------------------------------------------------------------------


def bench_counter(a: argparse.Namespace, server: PostgresServer, out: list[dict]) -> None:
    names = [f"c{i}" for i in range(a.counters)]
    modes = ["embedded", "cluster-1", "cluster-3"]
    for run in range(a.runs):
        for mode in modes if run % 2 == 0 else modes[::-1]:
            row = run_mode(mode, names, a.requests, a.concurrency, server, a.lease)
            row.update(bench="counter", mode=mode, run=run, counters=len(names))
            out.append(row)
            print(json.dumps(row), flush=True)


def run_mode(
    mode: str, names: list[str], requests: int, concurrency: int,
    server: PostgresServer, lease: float,
) -> dict[str, Any]:  # fmt: skip
    if mode == "embedded":
        with tempfile.TemporaryDirectory() as tmp:
            node = Node(Path(tmp))
            try:
                touch(node.port, names)
                return measure([node.port], node.pids, [], names, requests, concurrency)
            finally:
                node.stop()
    cluster = Cluster(server, lease)
    nodes = [cluster.node() for _ in range(int(mode.split("-")[1]))]
    try:
        ports = [n.port for n in nodes]
        for port in ports:  # objects claimed where first used: spread over the nodes
            touch(port, names[ports.index(port) :: len(ports)])
        pids = [p for n in nodes for p in n.pids]
        row = measure(ports, pids, postgres_pids(server), names, requests, concurrency)
        row.update(asyncio.run(log_stats(cluster.dsn)))
        return row
    finally:
        for n in nodes:
            n.stop()
        cluster.close()


def bench_latency(a: argparse.Namespace, server: PostgresServer, out: list[dict]) -> None:
    for run in range(a.runs):
        for mode in ("embedded", "cluster-1"):
            row = run_mode(mode, ["hot"], a.requests // 4, 1, server, a.lease)
            if "log_records" in row:
                row["bytes_per_commit"] = round(row["log_bytes"] / max(1, row["log_records"]))
            row.update(bench="latency", mode=mode, run=run)
            out.append(row)
            print(json.dumps(row), flush=True)


def bench_many(a: argparse.Namespace, server: PostgresServer, out: list[dict]) -> None:
    names = [f"m{i}" for i in range(a.many)]
    for run in range(a.runs):
        for mode in ("embedded", "cluster-1") if run % 2 == 0 else ("cluster-1", "embedded"):
            row = run_mode(mode, names, a.requests, a.concurrency * 2, server, a.lease)
            row.update(bench="many", mode=mode, run=run, counters=len(names))
            out.append(row)
            print(json.dumps(row), flush=True)


def bench_failover(a: argparse.Namespace, server: PostgresServer, out: list[dict]) -> None:
    cluster = Cluster(server, a.lease)
    survivor = cluster.node()
    times = []
    try:
        for kill in range(a.kills):
            victim = cluster.node()
            name = f"f{kill}"
            touch(victim.port, [name])  # claimed on the victim
            victim.kill()
            killed = time.monotonic()
            deadline = killed + 10 * a.lease
            while time.monotonic() < deadline:
                status = asyncio.run(get(survivor.port, name))
                if status == 200:
                    break
            took = time.monotonic() - killed
            times.append(took)
            row = {"bench": "failover", "kill": kill, "seconds": round(took, 3), "lease": a.lease}
            out.append(row)
            print(json.dumps(row), flush=True)
    finally:
        survivor.stop()
        cluster.close()


async def get(port: int, name: str) -> int:
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"http://127.0.0.1:{port}/counter/{name}", timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                await response.read()
                return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


def summary(rows: list[dict]) -> None:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 1)

    print("\nmedians over the runs")
    for bench in ("counter", "latency", "many"):
        base = None
        for mode in ("embedded", "cluster-1", "cluster-3"):
            got = [r for r in rows if r["bench"] == bench and r["mode"] == mode]
            if not got:
                continue
            rps = med([r["rps"] for r in got])
            base = base or rps
            extra = ""
            if "bytes_per_commit" in got[0]:
                extra = f", {med([r['bytes_per_commit'] for r in got])} bytes/commit"
            print(
                f"{bench} {mode}: {rps} req/s ({rps / base:.2f}x embedded), "
                f"p50 {med([r['p50_ms'] for r in got])} ms, p99 {med([r['p99_ms'] for r in got])}"
                f" ms, opendo CPU {med([r['opendo_cpu_us_per_request'] for r in got])} µs/req, "
                f"PostgreSQL CPU {med([r['postgres_cpu_us_per_request'] or 0 for r in got])} "
                f"µs/req, errors {sum(r['errors'] + r['non_200'] for r in got)}{extra}"
            )
    kills = [r["seconds"] for r in rows if r["bench"] == "failover"]
    if kills:
        lease = rows[-1].get("lease")
        print(
            f"failover over {len(kills)} kills (lease {lease} s): median {med(kills)} s, "
            f"max {max(kills):.2f} s, min {min(kills):.2f} s"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--counters", type=int, default=100)
    p.add_argument("--many", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--only", choices=["counter", "latency", "many", "failover"], default=None)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    # SIGTERM ends the run through the finally blocks: every server started here stops.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows: list[dict] = []
    bindir = find_bindir()
    if bindir is None:
        sys.exit("no PostgreSQL server binaries (apt-get install postgresql)")
    with PostgresServer(bindir) as server:
        for name, bench in (
            ("counter", bench_counter),
            ("latency", bench_latency),
            ("many", bench_many),
            ("failover", bench_failover),
        ):
            if a.only in (None, name):
                bench(a, server, rows)
    if a.out is not None:
        with a.out.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    summary(rows)


if __name__ == "__main__":
    main()
