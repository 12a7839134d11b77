#!/usr/bin/env python3
"""The table of bench/compare_counter.sh: GET /counter/<name> on opendo and on workerd.

Usage: counter_summary.py FILE.jsonl

Each line is one httpload.py result plus "server" (opendo | workerd), "run" and "rc". Prints
one row per run and a median row per server: requests/s, latency p50/p99, server CPU-seconds
(total, and per 1,000 requests), server and load-generator CPU utilisation (cores; the
generator is one Python thread, so near 1.0 means the client limits req/s), and the ratio
opendo/workerd of the median server CPU per request (< 1: opendo needs less CPU for the same
storage round trip). Server CPU comes from /proc utime+stime in clock ticks (usually 10 ms).
Stdlib only; reading the file, medians and CPU per request come from summarize_compare.py
(a line that is not JSON is skipped with a warning).
"""

from __future__ import annotations

import sys
from typing import Any

from summarize_compare import median, per_unit, read_jsonl

SERVERS = ("opendo", "workerd")


def cpu_per_1k(d: dict[str, Any]) -> float | None:
    """Server CPU-seconds per 1,000 requests."""
    return per_unit(d.get("server_cpu_s"), d.get("completed"), scale=1000)


def bad(d: dict[str, Any]) -> str:
    if d.get("rc", 0) != 0 or "completed" not in d:
        return f"rc={d.get('rc')}"
    problems = [f"{k}:{v}" for k, v in (d.get("errors") or {}).items()]
    problems += [f"HTTP {k}:{v}" for k, v in (d.get("status") or {}).items() if k != "200"]
    if d.get("timed_out"):
        problems.append("timed out")
    return " ".join(problems)


def fmt(x: Any, digits: int) -> str:
    if not isinstance(x, int | float):
        return "-"
    return f"{x:,.{digits}f}"


WIDTHS = (8, 6, 9, 8, 8, 7, 12, 8, 8)


def row(cells: list[str]) -> str:
    """Columns of WIDTHS: the first left-aligned, the numbers right-aligned."""
    numbers = [c.rjust(w) for c, w in zip(cells[1:], WIDTHS[1:], strict=True)]
    return "  ".join([cells[0].ljust(WIDTHS[0]), *numbers])


def main(path: str) -> int:
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SERVERS}
    for d in read_jsonl([path]):
        runs.setdefault(d.get("server", "?"), []).append(d)

    header = ["server", "run", "req/s", "p50 ms", "p99 ms", "CPU s", "CPU s/1k req"]
    print(row([*header, "srv util", "gen util"]) + "  notes")
    medians: dict[str, float | None] = {}
    for server, ds in runs.items():
        if not ds:
            continue
        for d in sorted(ds, key=lambda d: d.get("run", 0)):
            cells = [
                server,
                str(d.get("run", "?")),
                fmt(d.get("rps"), 0),
                fmt(d.get("p50_ms"), 2),
                fmt(d.get("p99_ms"), 2),
                fmt(d.get("server_cpu_s"), 2),
                fmt(cpu_per_1k(d), 3),
                fmt(d.get("server_cpu_util"), 2),
                fmt(d.get("gen_cpu_util"), 2),
            ]
            print(f"{row(cells)}  {bad(d)}".rstrip())
        medians[server] = median([cpu_per_1k(d) for d in ds])
        cells = [
            server,
            "median",
            fmt(median([d.get("rps") for d in ds]), 0),
            fmt(median([d.get("p50_ms") for d in ds]), 2),
            fmt(median([d.get("p99_ms") for d in ds]), 2),
            fmt(median([d.get("server_cpu_s") for d in ds]), 2),
            fmt(medians[server], 3),
            fmt(median([d.get("server_cpu_util") for d in ds]), 2),
            fmt(median([d.get("gen_cpu_util") for d in ds]), 2),
        ]
        print(row(cells))
    a, b = medians.get("opendo"), medians.get("workerd")
    if a is not None and b:
        print(f"\nratio opendo/workerd, server CPU per request (median): {a / b:.2f}")
    else:
        print("\nratio opendo/workerd, server CPU per request: - (missing measurements)")
    failed = any(bad(d) for ds in runs.values() for d in ds)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
