#!/usr/bin/env python3
"""SIGKILL under load, many times: no acknowledged write may be lost.

Usage: /tmp/bench-venv/bin/python bench/crash.py [--trials 100] [--concurrency 16]
           [--workers 1] [--seed 20261202] [--out OUT.jsonl]
       (a Python with aiohttp; OPENDO=REPO/.venv/bin/opendo)

One persist directory, one `opendo serve examples/counter` after another on it (127.0.0.1, a
free port). Each trial puts load on the server — `--concurrency` keep-alive clients, each
GETting in turn one of four hot counters and a counter of a new name (so objects are created
all the time, the path whose files are new) — and kills it with SIGKILL after a random 50–400
ms. The next server starts on the same directory, and every counter a client had an answer
from is read again: its stored value (the next answer minus one) must be at least the highest
value any client received. Counters are acknowledged only once their write is durable, so a
lower value is an acknowledged write lost, and a value handed out twice is one too.

Bounded: `--trials` trials, each load at most 2 s after the kill moment, each start 60 s.
Reported: trials, acknowledged answers, lost writes and repeated values (both must be 0),
objects created, and the restart time (spawn to ready) median and max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workers import Server  # noqa: E402

HOT = [f"hot{i}" for i in range(4)]


async def trial_load(
    port: int, concurrency: int, trial: int, kill_after: float, kill: object
) -> tuple[dict[str, list[int]], int]:
    """Load until the server is killed ``kill_after`` s in; what each counter answered."""
    received: dict[str, list[int]] = {}
    errors = 0
    started = asyncio.Event()
    stop_at = time.monotonic() + kill_after + 2.0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(index: int) -> None:
            nonlocal errors
            n = 0
            while time.monotonic() < stop_at:
                name = HOT[(index + n) % len(HOT)] if n % 2 == 0 else f"t{trial}c{index}n{n}"
                n += 1
                try:
                    async with session.get(f"http://127.0.0.1:{port}/counter/{name}") as r:
                        body = await r.text()
                        if r.status != 200:
                            errors += 1
                            return
                except (TimeoutError, aiohttp.ClientError):
                    return  # killed: not acknowledged
                received.setdefault(name, []).append(int(body))
                started.set()

        async def killer() -> None:
            await asyncio.wait_for(started.wait(), 10)
            await asyncio.sleep(kill_after)  # the kill moment (a load parameter, not a wait)
            kill()  # type: ignore[operator]

        await asyncio.gather(killer(), *(client(i) for i in range(concurrency)))
    return received, errors


async def read_back(port: int, names: list[str]) -> dict[str, int]:
    values: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(name: str) -> None:
            async with session.get(f"http://127.0.0.1:{port}/counter/{name}") as r:
                assert r.status == 200, await r.text()
                values[name] = int(await r.text())

        await asyncio.gather(*(one(name) for name in names))
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=20261202)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="opendo-crash-"))
    persist = work / "state"
    extra = ("--workers", str(args.workers))
    acknowledged = lost = repeated = created = failed = 0
    handed_out: dict[str, set[int]] = {}
    restarts: list[float] = []
    t0 = time.monotonic()
    server = Server("examples/counter", persist, *extra)
    try:
        for trial in range(args.trials):
            kill_after = rng.uniform(0.05, 0.4)

            def kill(server: Server = server) -> None:
                import os
                import signal

                os.killpg(server.proc.pid, signal.SIGKILL)

            received, errors = asyncio.run(
                trial_load(server.port, args.concurrency, trial, kill_after, kill)
            )
            server.proc.wait(10)
            failed += errors
            spawned = time.monotonic()
            server = Server("examples/counter", persist, *extra)
            restarts.append(time.monotonic() - spawned)
            after = asyncio.run(read_back(server.port, sorted(received)))
            for name, got in received.items():
                acknowledged += len(got)
                created += not name.startswith("hot")
                seen = handed_out.setdefault(name, set())
                repeated += len(got) - len(set(got)) + len(seen & set(got))
                seen.update(got)
                seen.add(after[name])
                if after[name] - 1 < max(got):
                    lost += 1
                    print(
                        f"trial {trial}: /counter/{name} came back at {after[name] - 1}, "
                        f"but {max(got)} had been acknowledged",
                        file=sys.stderr,
                    )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "trials": args.trials,
        "workers": args.workers,
        "acknowledged": acknowledged,
        "lost": lost,
        "repeated": repeated,
        "non_200": failed,
        "objects_created": created,
        "restart_median_s": round(statistics.median(restarts), 3),
        "restart_max_s": round(max(restarts), 3),
        "seconds": round(time.monotonic() - t0, 1),
    }
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    print("| trials | acknowledged | lost | repeated | non-200 | new objects | restart p50 | max |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.trials} (--workers {args.workers}) | {acknowledged:,} | {lost} | {repeated} "
        f"| {failed} | {created:,} | {result['restart_median_s']} s "
        f"| {result['restart_max_s']} s |"
    )
    if lost or repeated or failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
