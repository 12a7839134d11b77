#!/usr/bin/env python3
"""Durable writes spread over many objects against the same writes to one hot object.

Usage: /tmp/bench-venv/bin/python bench/spread.py [--runs 3] [--requests 4000]
           [--counters 1000] [--concurrency 32] [--out OUT.jsonl]
       (a Python with aiohttp; OPENDO=REPO/.venv/bin/opendo)

One `opendo serve examples/counter` (127.0.0.1, a free port, a fresh persist directory).
Every counter is touched once first, so all exist. Then, alternating which goes first from
run to run: `--requests` GETs of one counter (`/counter/hot`), and the same number spread
over `--counters` counters (each request reads, increments and durably writes its counter;
the answer waits for the write to be on disk). One hot object shares each commit and fsync
among the requests that arrive meanwhile; spread writes need a commit per object.

Reported: medians of req/s and server CPU per request for both, and spread/hot (target:
>= 0.9 of the hot object's requests/s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workers import Server, measure, touch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--counters", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    spread = [f"s{i}" for i in range(a.counters)]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server("examples/counter", Path(tmp))
        try:
            touch(server.port, [*spread, "hot"])
            for run in range(a.runs):
                order = (("hot", ["hot"]), ("spread", spread))
                for load, names in order if run % 2 == 0 else order[::-1]:
                    row = measure(server.pids, server.port, names, a)
                    row.update(bench="spread", load=load, run=run, counters=len(names))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            server.stop()
    if a.out:
        with a.out.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    def med(load: str, key: str) -> float:
        return round(statistics.median(r[key] for r in rows if r["load"] == load), 1)

    print("\n| load | req/s | p99 ms | server CPU µs/request | errors |")
    print("|---|---|---|---|---|")
    for load in ("hot", "spread"):
        errors = sum(r["errors"] + r["non_200"] for r in rows if r["load"] == load)
        print(
            f"| {'one counter' if load == 'hot' else f'{a.counters:,} counters'} "
            f"| {med(load, 'rps')} | {med(load, 'p99_ms')} | {med(load, 'cpu_us_per_request')} "
            f"| {errors} |"
        )
    print(f"\nspread/hot req/s: {med('spread', 'rps') / med('hot', 'rps'):.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
