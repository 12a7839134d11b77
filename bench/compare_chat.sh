#!/usr/bin/env bash
# Same chatload workloads against the workerd peer and opendo, side by side.
#
# Usage: bench/compare_chat.sh OUT.jsonl
#   env RUNS=3           runs per (workload, server); peer/opendo alternate, first server swaps each run
#       ONLY=both        both | workerd | opendo
#       HTTP=0           1: also httpload GET /bench-http, concurrency 32, 4000 requests
#       PROJECT=examples/chat   the opendo app (examples/chat runs with --env bench: no rate
#                        limit); bench/tutorial is the tutorial's app exactly
#       WORKLOADS=       a regular expression: only the workloads whose label matches
#       OPENDO=REPO/.venv/bin/opendo
#       PY=/tmp/bench-venv/bin/python   (needs websockets + aiohttp)
#       BENCH_DIR=/work/shared/bench  PEER_SRC=/work/shared/peer/chat-workerd
#       PEER_DIR=/tmp/chat-workerd-peer   writable copy of the peer (npm install happens there once)
#       PEER_START_TIMEOUT=300  OPENDO_START_TIMEOUT=60   seconds
#
# Starts both servers itself on free 127.0.0.1 ports, appends one JSON line per run to OUT.jsonl
# (chatload/httpload output plus "server", "label", "run", "rc"), then prints the median table
# (bench/summarize_compare.py) over the whole of OUT.jsonl. Servers it started are stopped on exit.
# Every load is bounded: fixed counts, the tools' own --timeout, and `timeout 120` around each run.
# The machinery (preflight, starting and stopping servers, one run) is in bench/lib.sh.
set -euo pipefail

BENCH_NAME=compare_chat
ONLY="${ONLY:-both}"
HTTP="${HTTP:-0}"
PROJECT="${PROJECT:-examples/chat}"
WORKLOADS="${WORKLOADS:-}"
READY_ON_OPEN_PORT=1   # an open port counts as ready too, not only the ready line
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -eq 1 ] || die "usage: $0 OUT.jsonl   (env: RUNS ONLY=both|workerd|opendo HTTP=0|1 OPENDO PY)"
OUT="$1"
case "$ONLY" in both | workerd | opendo) ;; *) die "ONLY must be both, workerd or opendo (got '$ONLY')" ;; esac
check_positive RUNS

# --- preflight: fail before starting anything -------------------------------------------------
if want opendo; then
  check_opendo "or run with ONLY=workerd"
  [ -d "$REPO/$PROJECT" ] || die "missing $REPO/$PROJECT"
fi
if want workerd; then check_peer; fi
check_client "chatload.py httpload.py" "websockets aiohttp"
mkdir -p "$(dirname "$OUT")"
touch "$OUT"

start_workdir
if want workerd; then start_workerd_peer; fi
if want opendo; then
  if [ "$PROJECT" = examples/chat ]; then
    start_opendo dev "$PROJECT" --no-reload --env bench
  else
    start_opendo dev "$PROJECT" --no-reload
  fi
fi

# --- load -------------------------------------------------------------------------------------
chat() { # LABEL ROOMS CLIENTS SENDERS MESSAGES [CHATLOAD-ARG...]
  local label="$1" rooms="$2" clients="$3" senders="$4" messages="$5"
  shift 5
  if [ -n "$WORKLOADS" ] && ! [[ $label =~ $WORKLOADS ]]; then return 0; fi
  each_run "$label" chatload "" --rooms "$rooms" --clients "$clients" --senders "$senders" \
    --messages "$messages" "$@"
}
http() { # LABEL CONCURRENCY REQUESTS
  each_run "$1" httpload /bench-http --concurrency "$2" --requests "$3"
}

chat "ws 1x10 s10 m100" 1 10 10 100
chat "ws 1x200 s5 m20" 1 200 5 20
chat "ws 50x4 s2 m50" 50 4 2 50
chat "ws 50x4 s2 m50 r50" 50 4 2 50 --rate 50   # paced: each message its own write
chat "ws 1x10 s10 m1000" 1 10 10 1000
chat "ws 1x100 s10 m100" 1 100 10 100
if [ "$HTTP" = 1 ] && { [ -z "$WORKLOADS" ] || [[ "http c32 n4000" =~ $WORKLOADS ]]; }; then
  http "http c32 n4000" 32 4000
fi

echo
echo "results: $OUT (runs=$RUNS only=$ONLY; medians over every line in the file)"
echo
python3 "$HERE/summarize_compare.py" "$OUT"
