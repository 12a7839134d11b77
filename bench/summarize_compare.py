#!/usr/bin/env python3
"""Median table (markdown) for the JSONL written by bench/compare_chat.sh.

Usage: summarize_compare.py FILE.jsonl [FILE.jsonl ...]

Each line is one chatload.py or httpload.py result with the fields "server"
(opendo | workerd) and "label" added (and "run", "rc"). Lines are grouped by
(label, server); every number is the median over the runs of that group.

chatload columns: deliveries/s, server CPU over the send phase (s), server CPU
per unique delivery (us), latency p50/p99 (ms), lost, duplicated, generator
CPU utilisation (near 1.0 = the Python client, not the server, is the limit),
bad runs (non-zero exit, no output, lost/duplicated/failed connects or timed
out) and the ratio opendo/workerd of deliveries per server CPU-second (> 1:
opendo needs less CPU per delivery). httpload columns: requests/s, server CPU
(s), server CPU per request (us), latency p50/p99 (ms), and the same ratio for
requests per server CPU-second.

Server CPU comes from /proc utime+stime in clock ticks (usually 10 ms), so a
run that costs the server only a few ticks has a coarse per-delivery figure.
Stdlib only; bench/counter_summary.py reuses read_jsonl, median and per_unit.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterator

SERVERS = ("workerd", "opendo")


def read_jsonl(paths: list[str]) -> Iterator[dict]:
    """Every JSON object of the files, in order; a line that is not JSON is skipped (warning)."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    d = json.loads(line)
                except ValueError:
                    print(f"warning: {path}:{n}: not JSON, skipped", file=sys.stderr)
                    continue
                yield d


def load(paths: list[str]) -> dict[tuple[str, str, str], list[dict]]:
    """Group result lines by (tool, label, server), keeping first-seen order."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for d in read_jsonl(paths):
        key = (d.get("tool", "?"), d.get("label", "?"), d.get("server", "?"))
        groups[key].append(d)
    return groups


def per_unit(cpu_s: object, count: object, scale: float = 1e6) -> float | None:
    """Server CPU per unit of work (microseconds by default), None if not measurable."""
    if not isinstance(cpu_s, (int, float)) or not isinstance(count, (int, float)) or count <= 0:
        return None
    return cpu_s / count * scale


def per_cpu_second(count: object, cpu_s: object) -> float | None:
    """Units of work per server CPU-second, None if the CPU delta is zero/missing."""
    if not isinstance(cpu_s, (int, float)) or not isinstance(count, (int, float)) or cpu_s <= 0:
        return None
    return count / cpu_s


def median(values: list[object]) -> float | None:
    """Median of the numbers among ``values`` (None and missing fields are ignored)."""
    vals = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def chat_bad(d: dict) -> bool:
    if d.get("rc", 0) != 0 or "delivered_unique" not in d:
        return True
    keys = ("lost", "duplicated", "failed_connects", "duplicate_ids")
    return any(d.get(k) for k in keys) or bool(d.get("timed_out"))


def http_bad(d: dict) -> bool:
    return d.get("rc", 0) != 0 or "completed" not in d or bool(d.get("errors"))


def ordered_labels(groups: dict, tool: str) -> list[str]:
    labels: list[str] = []
    for t, label, _server in groups:
        if t == tool and label not in labels:
            labels.append(label)
    return labels


def servers_of(groups: dict, tool: str, label: str) -> list[str]:
    present = [s for (t, lb, s) in groups if t == tool and lb == label]
    return [s for s in SERVERS if s in present] + [s for s in present if s not in SERVERS]


def ratio(eff: dict[str, float | None], server: str) -> str:
    if server != "opendo":
        return ""
    a, b = eff.get("opendo"), eff.get("workerd")
    return f"{a / b:.2f}" if a is not None and b else "-"


def chat_table(groups: dict) -> list[str]:
    out = [
        "| workload | server | runs | bad | deliveries/s | srv CPU send s | srv CPU us/deliv"
        " | p50 ms | p99 ms | lost | dup | gen CPU util | opendo/workerd deliv per CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label in ordered_labels(groups, "chatload"):
        servers = servers_of(groups, "chatload", label)
        eff = {
            s: median(
                [
                    per_cpu_second(d.get("delivered_unique"), d.get("server_cpu_send_phase_s"))
                    for d in groups[("chatload", label, s)]
                ]
            )
            for s in servers
        }
        for s in servers:
            ds = groups[("chatload", label, s)]

            def m(key: str, ds: list[dict] = ds) -> float | None:
                return median([d.get(key) for d in ds])

            us = median(
                [per_unit(d.get("server_cpu_send_phase_s"), d.get("delivered_unique")) for d in ds]
            )
            cells = [
                label,
                s,
                str(len(ds)),
                str(sum(chat_bad(d) for d in ds)),
                fmt(m("deliveries_per_s"), 0),
                fmt(m("server_cpu_send_phase_s"), 3),
                fmt(us, 2),
                fmt(m("latency_p50_ms"), 2),
                fmt(m("latency_p99_ms"), 2),
                fmt(m("lost"), 0),
                fmt(m("duplicated"), 0),
                fmt(m("gen_cpu_util_send_phase"), 2),
                ratio(eff, s),
            ]
            out.append("| " + " | ".join(cells) + " |")
    return out


def http_table(groups: dict) -> list[str]:
    out = [
        "| http workload | server | runs | bad | req/s | srv CPU s | srv CPU us/req"
        " | p50 ms | p99 ms | status | gen CPU util | opendo/workerd req per CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label in ordered_labels(groups, "httpload"):
        servers = servers_of(groups, "httpload", label)
        eff = {
            s: median(
                [
                    per_cpu_second(d.get("completed"), d.get("server_cpu_s"))
                    for d in groups[("httpload", label, s)]
                ]
            )
            for s in servers
        }
        for s in servers:
            ds = groups[("httpload", label, s)]

            def m(key: str, ds: list[dict] = ds) -> float | None:
                return median([d.get(key) for d in ds])

            us = median([per_unit(d.get("server_cpu_s"), d.get("completed")) for d in ds])
            status: dict[str, int] = defaultdict(int)
            for d in ds:
                for code, n in (d.get("status") or {}).items():
                    status[code] += n
            cells = [
                label,
                s,
                str(len(ds)),
                str(sum(http_bad(d) for d in ds)),
                fmt(m("rps"), 0),
                fmt(m("server_cpu_s"), 3),
                fmt(us, 1),
                fmt(m("p50_ms"), 2),
                fmt(m("p99_ms"), 2),
                " ".join(f"{k}:{v}" for k, v in sorted(status.items())) or "-",
                fmt(m("gen_cpu_util"), 2),
                ratio(eff, s),
            ]
            out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    groups = load(argv)
    if not groups:
        print("no results", file=sys.stderr)
        return 1
    lines: list[str] = []
    if any(t == "chatload" for t, _, _ in groups):
        lines += chat_table(groups)
    if any(t == "httpload" for t, _, _ in groups):
        lines += [""] + http_table(groups)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
