#!/usr/bin/env bash
# GET /counter/<name> (read, +1, write, answer once durable) on opendo and on the workerd peer,
# with the same load, side by side.
#
# Usage: bench/compare_counter.sh [OUT.jsonl]
#   env RUNS=3            runs per server; they alternate, and which goes first swaps each run
#       CONCURRENCY=32 REQUESTS=4000
#       OPENDO=REPO/.venv/bin/opendo
#       PY=/tmp/bench-venv/bin/python   (needs aiohttp, for httpload.py)
#       BENCH_DIR=/work/shared/bench  PEER_SRC=/work/shared/peer/chat-workerd
#       PEER_DIR=/tmp/chat-workerd-peer   writable copy of the peer (npm install happens there once)
#       PEER_START_TIMEOUT=300  OPENDO_START_TIMEOUT=60   seconds
#
# Starts `opendo serve examples/counter --port P --persist-to $(mktemp -d)` and the peer
# (run-miniflare.sh: one workerd process) on free 127.0.0.1 ports, runs
#   httpload.py --url http://127.0.0.1:PORT/counter/bench --concurrency 32 --requests 4000
# against each, appends one JSON line per run to OUT.jsonl (default: in a fresh temp folder), and
# prints requests/s, p50/p99 latency and server CPU-seconds per 1,000 requests for both, and the
# ratio opendo/workerd of server CPU per request (bench/counter_summary.py). Each run is bounded
# (`timeout 120`, httpload --timeout 60). Only the servers this script started are stopped, by
# PID, on exit. The machinery (preflight, starting and stopping servers, one run) is in
# bench/lib.sh.
set -euo pipefail

BENCH_NAME=compare_counter
ONLY=both   # the table compares the two servers: both always run
CONCURRENCY="${CONCURRENCY:-32}"
REQUESTS="${REQUESTS:-4000}"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -le 1 ] || die "usage: $0 [OUT.jsonl]   (env: RUNS CONCURRENCY REQUESTS OPENDO PY)"
check_positive RUNS
check_positive CONCURRENCY
check_positive REQUESTS

# --- preflight: fail before starting anything -------------------------------------------------
check_opendo ""   # no hint: this script always needs opendo
[ -f "$REPO/examples/counter/opendo.toml" ] || die "missing $REPO/examples/counter"
check_peer
check_client "httpload.py" "aiohttp"

start_workdir
OUT="${1:-$WORK/results.jsonl}"
mkdir -p "$(dirname "$OUT")"
touch "$OUT"
start_workerd_peer
start_opendo serve examples/counter

# --- load -------------------------------------------------------------------------------------
each_run counter httpload /counter/bench --concurrency "$CONCURRENCY" --requests "$REQUESTS"

echo
echo "GET /counter/bench, concurrency $CONCURRENCY, $REQUESTS requests, $RUNS runs per server ($OUT)"
echo
"$PY" "$HERE/counter_summary.py" "$OUT"
