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
# PID, on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
RUNS="${RUNS:-3}"
CONCURRENCY="${CONCURRENCY:-32}"
REQUESTS="${REQUESTS:-4000}"
OPENDO="${OPENDO:-$REPO/.venv/bin/opendo}"
BENCH_DIR="${BENCH_DIR:-/work/shared/bench}"
PEER_SRC="${PEER_SRC:-/work/shared/peer/chat-workerd}"
PEER_DIR="${PEER_DIR:-/tmp/chat-workerd-peer}"
PEER_START_TIMEOUT="${PEER_START_TIMEOUT:-300}"
OPENDO_START_TIMEOUT="${OPENDO_START_TIMEOUT:-60}"
if [ -z "${PY:-}" ]; then
  if [ -x /tmp/bench-venv/bin/python ]; then PY=/tmp/bench-venv/bin/python; else PY=python3; fi
fi

die() { echo "compare_counter: $*" >&2; exit 2; }
log() { echo "compare_counter: $*" >&2; }

[ $# -le 1 ] || die "usage: $0 [OUT.jsonl]   (env: RUNS CONCURRENCY REQUESTS OPENDO PY)"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
[[ "$CONCURRENCY" =~ ^[1-9][0-9]*$ ]] || die "CONCURRENCY must be a positive integer"
[[ "$REQUESTS" =~ ^[1-9][0-9]*$ ]] || die "REQUESTS must be a positive integer"

# --- preflight: fail before starting anything -------------------------------------------------
case "$OPENDO" in
  /*) ;;
  */*) OPENDO="$PWD/$OPENDO" ;;
  *) OPENDO="$(command -v "$OPENDO" || echo "$OPENDO")" ;;
esac
[ -x "$OPENDO" ] || die "opendo not found or not executable: OPENDO=$OPENDO"
[ -f "$REPO/examples/counter/opendo.toml" ] || die "missing $REPO/examples/counter"
[ -x "$PEER_SRC/run-miniflare.sh" ] || die "missing $PEER_SRC/run-miniflare.sh"
command -v node >/dev/null || die "node not found (needed for the workerd peer)"
command -v npm >/dev/null || die "npm not found (needed for the workerd peer)"
for f in httpload.py peer_pids.sh; do [ -e "$BENCH_DIR/$f" ] || die "missing $BENCH_DIR/$f"; done
"$PY" -c 'import aiohttp' 2>/dev/null \
  || die "$PY lacks aiohttp: python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install aiohttp"
command -v timeout >/dev/null || die "timeout(1) not found"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/compare_counter.XXXXXX")"
OUT="${1:-$WORK/results.jsonl}"
mkdir -p "$(dirname "$OUT")"
touch "$OUT"
log "logs in $WORK"

# --- process bookkeeping: only PIDs this script started ---------------------------------------
STARTED=()
descendants() { local p; for p in $(pgrep -P "$1" 2>/dev/null); do echo "$p"; descendants "$p"; done; }
alive() { # PID is running and not a zombie
  local st
  st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
left_of() { local p; for p in "$@"; do if alive "$p"; then echo "$p"; fi; done; }
wait_gone() { # SECONDS PID... -> waits (bounded) until none is alive; prints those still alive
  local n=$(($1 * 5)) i left
  shift
  for i in $(seq 1 "$n"); do
    left="$(left_of "$@")"
    [ -z "$left" ] && return 0
    sleep 0.2
  done
  left_of "$@"
}
stop_tree() { # PID: TERM the root (and then its leftover descendants), KILL what remains
  local root="$1" p
  local tree=("$root") left=()
  for p in $(descendants "$root"); do tree+=("$p"); done
  if alive "$root"; then kill -TERM "$root" 2>/dev/null || true; fi
  read -ra left <<<"$(wait_gone 5 "${tree[@]}" | paste -sd' ' -)"
  if [ "${#left[@]}" -gt 0 ]; then
    for p in "${left[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    read -ra left <<<"$(wait_gone 5 "${left[@]}" | paste -sd' ' -)"
  fi
  if [ "${#left[@]}" -gt 0 ]; then
    log "still running, SIGKILL: ${left[*]}"
    for p in "${left[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  wait "$root" 2>/dev/null || true
}
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in ${STARTED[@]+"${STARTED[@]}"}; do stop_tree "$p"; done
  rm -rf "$WORK/persist-"* 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
wait_ready() { # NAME PID TIMEOUT LOGFILE READY_LINE
  local name="$1" pid="$2" limit="$3" logf="$4" line="$5" t0=$SECONDS
  while :; do
    if ! alive "$pid"; then
      log "$name (pid $pid) exited before it was ready; last log lines:"
      tail -n 30 "$logf" >&2
      return 1
    fi
    if grep -qF "$line" "$logf" 2>/dev/null; then return 0; fi
    if [ $((SECONDS - t0)) -ge "$limit" ]; then
      log "$name did not print '$line' within ${limit}s; last log lines:"
      tail -n 30 "$logf" >&2
      return 1
    fi
    sleep 0.25
  done
}
server_pids() { "$BENCH_DIR/peer_pids.sh" "$1" all; } # root PID + every descendant, comma-separated

# --- start servers ----------------------------------------------------------------------------
# The peer runs from a writable copy: its workdir.sh only copies when [ -w SRC ] is false, which
# is never the case for root, so the shared script would npm-install into the shared folder.
mkdir -p "$PEER_DIR"
cp -rf "$PEER_SRC/package.json" "$PEER_SRC/package-lock.json" "$PEER_SRC/.npmrc" \
  "$PEER_SRC/wrangler.toml" "$PEER_SRC/run-miniflare.mjs" "$PEER_SRC/run-miniflare.sh" \
  "$PEER_SRC/workdir.sh" "$PEER_SRC/src" "$PEER_DIR/"
chmod -R u+w "$PEER_DIR"
WORKERD_PORT="$(free_port)"
mkdir -p "$WORK/persist-workerd"
PERSIST_DIR="$WORK/persist-workerd" "$PEER_DIR/run-miniflare.sh" "$WORKERD_PORT" \
  >"$WORK/workerd.log" 2>&1 &
WORKERD_PID=$!
STARTED+=("$WORKERD_PID")
log "workerd peer: pid $WORKERD_PID port $WORKERD_PORT"
wait_ready workerd "$WORKERD_PID" "$PEER_START_TIMEOUT" "$WORK/workerd.log" \
  "ready http://127.0.0.1:$WORKERD_PORT" || exit 1

OPENDO_PORT="$(free_port)"
while [ "$OPENDO_PORT" = "$WORKERD_PORT" ]; do OPENDO_PORT="$(free_port)"; done
mkdir -p "$WORK/persist-opendo"
OPENDO_PERSIST="$(mktemp -d "$WORK/persist-opendo/XXXXXX")"
(cd "$REPO" && exec "$OPENDO" serve examples/counter --port "$OPENDO_PORT" \
  --persist-to "$OPENDO_PERSIST") >"$WORK/opendo.log" 2>&1 &
OPENDO_PID=$!
STARTED+=("$OPENDO_PID")
log "opendo: pid $OPENDO_PID port $OPENDO_PORT"
wait_ready opendo "$OPENDO_PID" "$OPENDO_START_TIMEOUT" "$WORK/opendo.log" \
  "Ready on http://127.0.0.1:$OPENDO_PORT" || exit 1

# --- load -------------------------------------------------------------------------------------
port_of() { if [ "$1" = workerd ]; then echo "$WORKERD_PORT"; else echo "$OPENDO_PORT"; fi; }
pid_of() { if [ "$1" = workerd ]; then echo "$WORKERD_PID"; else echo "$OPENDO_PID"; fi; }
annotate() { # SERVER RUN RC PORT <<< httpload output -> one JSON line on stdout
  "$PY" -c '
import json, sys
server, run, rc, port = sys.argv[1:5]
lines = [ln for ln in sys.stdin.read().splitlines() if ln.startswith("{")]
try:
    d = json.loads(lines[-1])
except (IndexError, ValueError):
    d = {"tool": "httpload", "no_output": True}
d.update(server=server, label="counter", run=int(run), rc=int(rc), port=int(port))
print(json.dumps(d))
' "$@"
}
run_one() { # SERVER RUN
  local server="$1" run="$2" port pids out rc=0
  port="$(port_of "$server")"
  alive "$(pid_of "$server")" || { log "$server died; see $WORK/$server.log"; exit 1; }
  pids="$(server_pids "$(pid_of "$server")")"
  out="$(timeout 120 "$PY" "$BENCH_DIR/httpload.py" --url "http://127.0.0.1:$port/counter/bench" \
    --concurrency "$CONCURRENCY" --requests "$REQUESTS" --timeout 60 --server-pids "$pids" \
    2>>"$WORK/client.log")" || rc=$?
  annotate "$server" "$run" "$rc" "$port" <<<"$out" >>"$OUT"
  log "$(printf '%-7s run %s rc %s' "$server" "$run" "$rc")"
}
for i in $(seq 1 "$RUNS"); do
  if [ $((i % 2)) -eq 1 ]; then order="workerd opendo"; else order="opendo workerd"; fi
  for s in $order; do run_one "$s" "$i"; done
done

echo
echo "GET /counter/bench, concurrency $CONCURRENCY, $REQUESTS requests, $RUNS runs per server ($OUT)"
echo
"$PY" "$HERE/counter_summary.py" "$OUT"
