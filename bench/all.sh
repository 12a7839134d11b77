#!/usr/bin/env bash
# `make bench`: every row of the README's performance table, opendo and the workerd peer in the
# same run where the row has both, then the table (bench/summary.py).
#
# Usage: bench/all.sh [OUT_DIR]      (default: a fresh /tmp/opendo-bench-XXXXXX)
#   env RUNS=3   runs per server of the chat and counter rows
#       PY=/tmp/bench-venv/bin/python   (aiohttp and websockets; see bench/README.md)
#       and what the scripts below take (OPENDO, BENCH_DIR, PEER_SRC, PEER_DIR, ...)
#
# Each script starts its own servers on free 127.0.0.1 ports, bounds its load in count and
# time, and stops only what it started. Results: OUT_DIR/*.jsonl, each script's own table in
# OUT_DIR/*.txt, the summary on stdout and in OUT_DIR/summary.md. About 20 minutes here (the
# first start of the peer also runs `npm install` in PEER_DIR).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:-$(mktemp -d /tmp/opendo-bench-XXXXXX)}"
mkdir -p "$OUT"
export PY="${PY:-/tmp/bench-venv/bin/python}"
export RUNS="${RUNS:-3}"
cd "$HERE/.."
if ! "$PY" -c 'import aiohttp, websockets' 2>/dev/null; then
  echo "== making the load tools' venv: ${PY%/bin/python}" >&2
  python3 -m venv "${PY%/bin/python}"
  "$PY" -m pip install --quiet aiohttp websockets
fi

step() { # NAME COMMAND...: run it, its output to OUT/NAME.txt (and on stderr as it goes)
  local name="$1"
  shift
  echo "== $name: $*" >&2
  if ! "$@" 2>&1 | tee "$OUT/$name.txt" >&2; then
    echo "== $name failed (see $OUT/$name.txt)" >&2
    failed+=("$name")
  fi
}
failed=()

step chat_tutorial env PROJECT=bench/tutorial WORKLOADS='^ws 1x10 s10 m1000$' \
  bash bench/compare_chat.sh "$OUT/chat_tutorial.jsonl"
step chat env PROJECT=examples/chat WORKLOADS='^ws 1x10 s10 m1000$|r50$' \
  bash bench/compare_chat.sh "$OUT/chat.jsonl"
step counter bash bench/compare_counter.sh "$OUT/counter.jsonl"
step hibernation sh -c "'$PY' bench/hibernation.py --connections 10000 >'$OUT/hibernation.jsonl'"
step objects "$PY" bench/objects.py --objects 20000 --out "$OUT/objects.jsonl"
step objects100k "$PY" bench/objects.py --objects 100000 --servers opendo \
  --out "$OUT/objects100k.jsonl"
step spread "$PY" bench/spread.py --runs "$RUNS" --out "$OUT/spread.jsonl"
step crash "$PY" bench/crash.py --trials 100 --out "$OUT/crash.jsonl"

"$PY" bench/summary.py "$OUT" | tee "$OUT/summary.md"
echo "results in $OUT" >&2
if ((${#failed[@]})); then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
