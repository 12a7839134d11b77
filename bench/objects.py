#!/usr/bin/env python3
"""Many objects: N distinct counters, one request each, on opendo and on the workerd peer.

Usage: /tmp/bench-venv/bin/python bench/objects.py [--objects 100000] [--concurrency 32]
           [--servers opendo,workerd] [--within 900] [--out OUT.jsonl]
       (a Python with aiohttp; OPENDO=REPO/.venv/bin/opendo; the peer as in lib.sh:
       PEER_SRC=/work/shared/peer/chat-workerd, copied to PEER_DIR=/tmp/chat-workerd-peer)

Each server is started here on a free port of 127.0.0.1 with a fresh persist directory
(`opendo serve examples/counter`; the peer's run-miniflare.sh, one workerd process), gets
`GET /counter/o<i>` for i < N over `--concurrency` keep-alive connections (every request makes
a new object, which reads, increments and durably writes its value), and is stopped by PID.
The load is bounded by the count and by `--within` seconds.

Reported per server: answered and failed requests (and the first failure's text), new objects
per second (wall clock), server CPU per new object (utime+stime from /proc, of the server's
process tree), the server's memory (RSS) and open file descriptors after the run, and the
growth of RSS per object. The load generator shares the machine's cores: compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workers import OPENDO, READY, REPO, cpu, tree  # noqa: E402

PEER_SRC = Path(os.environ.get("PEER_SRC", "/work/shared/peer/chat-workerd"))
PEER_DIR = Path(os.environ.get("PEER_DIR", "/tmp/chat-workerd-peer"))
PEER_FILES = ["package.json", "package-lock.json", ".npmrc", "wrangler.toml",
              "run-miniflare.mjs", "run-miniflare.sh", "workdir.sh", "src"]  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


class Server:
    def __init__(self, kind: str, persist: Path) -> None:
        self.kind = kind
        if kind == "opendo":
            command = [str(OPENDO), "serve", "examples/counter", "--port", "0",
                       "--no-access-log", "--persist-to", str(persist)]  # fmt: skip
            cwd, env = REPO, dict(os.environ)
            self.port = 0
        else:
            PEER_DIR.mkdir(parents=True, exist_ok=True)
            for name in PEER_FILES:
                source = PEER_SRC / name
                if source.is_dir():
                    shutil.copytree(source, PEER_DIR / name, dirs_exist_ok=True)
                elif source.exists():
                    shutil.copy(source, PEER_DIR / name)
            self.port = free_port()
            command = ["bash", str(PEER_DIR / "run-miniflare.sh"), str(self.port)]
            cwd, env = PEER_DIR, dict(os.environ, PERSIST_DIR=str(persist))
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        if kind == "opendo":
            assert self.proc.stdout is not None
            while not self.port:
                line = self.proc.stdout.readline()
                if match := READY.search(line):
                    self.port = int(match.group(1))
                elif not line or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("opendo did not start")
        else:
            asyncio.run(self._wait_http(deadline))

    async def _wait_http(self, deadline: float) -> None:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/counter/ping") as r:
                        await r.read()
                        return
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
        self.stop()
        raise RuntimeError("the workerd peer did not start")

    @property
    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


async def new_objects(port: int, count: int, concurrency: int, within: float) -> dict[str, Any]:
    answered = failed = 0
    first_failure = ""
    numbers = iter(range(count))
    deadline = time.monotonic() + within
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal answered, failed, first_failure
            for i in numbers:
                if time.monotonic() > deadline:
                    return
                try:
                    async with session.get(f"http://127.0.0.1:{port}/counter/o{i}") as r:
                        text = await r.text()
                        ok = r.status == 200 and text.strip() == "1"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, text = False, repr(exc)
                if ok:
                    answered += 1
                else:
                    failed += 1
                    first_failure = first_failure or text[:200]

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"answered": answered, "failed": failed, "first_failure": first_failure, "wall": wall}


def run(kind: str, a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"opendo-objects-{kind}-") as tmp:
        server = Server(kind, Path(tmp) / "state")
        try:
            pids = server.pids
            rss_before, cpu_before = rss_kib(pids), cpu(pids)
            result = asyncio.run(new_objects(server.port, a.objects, a.concurrency, a.within))
            pids = server.pids
            used = cpu(pids) - cpu_before
            rss_after, open_fds = rss_kib(pids), fds(pids)
        finally:
            server.stop()
    answered = result["answered"]
    return {
        "server": kind,
        "objects": a.objects,
        "concurrency": a.concurrency,
        "answered": answered,
        "failed": result["failed"],
        "first_failure": result["first_failure"],
        "objects_per_s": round(answered / result["wall"], 1),
        "cpu_us_per_object": round(used / max(answered, 1) * 1e6, 1),
        "rss_mib_after": round(rss_after / 1024, 1),
        "rss_kib_per_object": round((rss_after - rss_before) / max(answered, 1), 2),
        "open_fds_after": open_fds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--objects", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--servers", default="opendo,workerd")
    p.add_argument("--within", type=float, default=900.0, help="bound of each load (s)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    rows = []
    for kind in a.servers.split(","):
        row = run(kind, a)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            with a.out.open("a") as out:
                out.write(json.dumps(row) + "\n")
    print("\n| server | answered | failed | new objects/s | CPU µs/object | RSS after | "
          "RSS/object | fds after |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['answered']:,} | {r['failed']:,} | {r['objects_per_s']:,} | "
              f"{r['cpu_us_per_object']} | {r['rss_mib_after']} MiB | "
              f"{r['rss_kib_per_object']} KiB | {r['open_fds_after']} |")  # fmt: skip


if __name__ == "__main__":
    main()
