#!/usr/bin/env python3
"""The performance table of `make bench` (bench/all.sh), from the results in one folder.

Usage: summary.py OUT_DIR

Reads the JSON lines bench/all.sh leaves in OUT_DIR (chat_tutorial, chat, counter,
hibernation, objects, objects100k, spread, crash) and prints one markdown row per workload:
opendo, workerd (where the row has the peer), the ratio in the direction where more is
better for opendo, the target and whether it is met. Medians over the runs; a missing file
leaves its row with "-". Stdlib only (helpers of summarize_compare.py).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from summarize_compare import chat_bad, median, per_cpu_second, read_jsonl


def lines(folder: Path, name: str) -> list[dict[str, Any]]:
    path = folder / f"{name}.jsonl"
    return list(read_jsonl([str(path)])) if path.exists() else []


def chat(folder: Path, name: str, label: str) -> dict[str, float | None]:
    """Deliveries per server CPU-second, median per server."""
    got: dict[str, list[object]] = {}
    for d in lines(folder, name):
        if d.get("label") == label and not chat_bad(d):
            value = per_cpu_second(d.get("delivered_unique"), d.get("server_cpu_send_phase_s"))
            got.setdefault(d["server"], []).append(value)
    return {server: median(values) for server, values in got.items()}


def counter(folder: Path) -> dict[str, float | None]:
    """Requests per server CPU-second, median per server."""
    got: dict[str, list[object]] = {}
    for d in lines(folder, "counter"):
        if d.get("rc", 0) == 0 and not d.get("errors"):
            got.setdefault(d["server"], []).append(
                per_cpu_second(d.get("completed"), d.get("server_cpu_s"))
            )
    return {server: median(values) for server, values in got.items()}


def n(x: float | None, digits: int = 1, unit: str = "") -> str:
    if x is None:
        return "-"
    text = f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}f}"
    return text + unit


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ok_text(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "no")


def main(folder: Path) -> int:
    rows: list[tuple[str, str, str, str, str, str]] = []

    def add(workload: str, opendo: str, workerd: str, r: float | None, target: float) -> None:
        ok = None if r is None else r >= target
        rows.append((workload, opendo, workerd, n(r, 2), f"≥ {target:g}", ok_text(ok)))

    c = chat(folder, "chat_tutorial", "ws 1x10 s10 m1000")
    add(
        "the tutorial's chat, nothing stored (1 room × 10 clients × 10 senders × 1,000 "
        "msgs), deliveries/cpu-s",
        n(c.get("opendo")), n(c.get("workerd")), ratio(c.get("opendo"), c.get("workerd")), 2,
    )  # fmt: skip
    c = chat(folder, "chat", "ws 1x10 s10 m1000")
    add(
        "examples/chat (history row + fsync per message), same load, deliveries/cpu-s",
        n(c.get("opendo")), n(c.get("workerd")), ratio(c.get("opendo"), c.get("workerd")), 1,
    )  # fmt: skip
    c = chat(folder, "chat", "ws 50x4 s2 m50 r50")
    us = {s: (1e6 / v if v else None) for s, v in c.items()}
    add(
        "examples/chat, 50 rooms × 4 clients, paced 50 msg/s, µs CPU/delivery",
        n(us.get("opendo"), 1, " µs"), n(us.get("workerd"), 1, " µs"),
        ratio(us.get("workerd"), us.get("opendo")), 1,
    )  # fmt: skip
    k = counter(folder)
    add(
        "durable counter, one hot object, c=32, req/cpu-s",
        n(k.get("opendo")), n(k.get("workerd")), ratio(k.get("opendo"), k.get("workerd")), 6,
    )  # fmt: skip
    for h in lines(folder, "hibernation")[-1:]:
        per = h.get("server_cpu_broadcast_s", 0) / max(h.get("delivered", 0), 1) * 1e6
        ok = (
            h.get("ok")
            and h.get("broadcast_last_ms", 1e9) < 100
            and per <= 5
            and h.get("kib_per_connection_hibernated", 1e9) <= 3
        )
        rows.append((
            f"broadcast to {h.get('connections', 0):,} hibernated sockets of one room",
            f"{n(h.get('broadcast_last_ms'))} ms, {per:.1f} µs/recipient, "
            f"{n(h.get('kib_per_connection_hibernated'), 2)} KiB/socket",
            "(opendo only)", "-", "< 100 ms, ≤ 5 µs, ≤ 3 KiB", ok_text(bool(ok)),
        ))  # fmt: skip
        live = h.get("kib_per_connection_connected")
        rows.append((
            "memory per open socket (the object live)", f"{n(live, 2)} KiB", "(opendo only)",
            "-", "≤ 3 KiB", ok_text(None if live is None else live <= 3),
        ))  # fmt: skip
    for o in lines(folder, "objects100k")[-1:]:
        ok = o["failed"] == 0 and o["answered"] == 100_000 and o["rss_kib_per_object"] <= 30
        rows.append((
            "100,000 distinct counters, one request each",
            f"{o['answered']:,} answered, {o['failed']} failed, {o['rss_kib_per_object']} KiB "
            f"RSS/object, {o['open_fds_after']} fds after",
            "(opendo only)", "-", "100,000, 0 errors, ≤ 30 KiB each", ok_text(ok),
        ))  # fmt: skip
    made = {d["server"]: d for d in lines(folder, "objects")}
    if made:
        o, w = made.get("opendo", {}), made.get("workerd", {})
        rows.append((
            f"new objects per second ({o.get('objects', 0):,} new counters, c=32)",
            f"{n(o.get('objects_per_s'))}/s ({n(o.get('cpu_us_per_object'), 0)} µs CPU)",
            f"{n(w.get('objects_per_s'))}/s ({n(w.get('cpu_us_per_object'), 0)} µs CPU)"
            + (f", {w['failed']:,} failed" if w.get("failed") else ""),
            n(ratio(o.get("objects_per_s"), w.get("objects_per_s")), 2), "≥ 2,000/s",
            ok_text(None if not o else o.get("objects_per_s", 0) >= 2000),
        ))  # fmt: skip
    spread = lines(folder, "spread")
    if spread:
        hot = statistics.median(d["rps"] for d in spread if d["load"] == "hot")
        wide = statistics.median(d["rps"] for d in spread if d["load"] == "spread")
        rows.append((
            "durable writes over 1,000 counters vs one hot counter (same server), req/s",
            f"{n(wide)} vs {n(hot)}", "-", n(wide / hot, 2), "≥ 0.9", ok_text(wide / hot >= 0.9),
        ))  # fmt: skip
    for x in lines(folder, "crash")[-1:]:
        rows.append((
            f"SIGKILL under load, {x['trials']} trials (new objects all the time)",
            f"{x['acknowledged']:,} acknowledged, {x['lost']} lost, {x['repeated']} repeated",
            "-", "-", "0 lost", ok_text(x["lost"] == 0 and x["repeated"] == 0),
        ))  # fmt: skip

    print("| workload | opendo | workerd | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
