#!/usr/bin/env bash
# Same chatload workloads against the workerd peer and opendo, side by side.
#
# Usage: bench/compare_chat.sh OUT.jsonl
#   env RUNS=3           runs per (workload, server); peer/opendo alternate, first server swaps each run
#       ONLY=both        both | workerd | opendo
#       HTTP=0           1: also httpload GET /bench-http, concurrency 32, 4000 requests
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
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
RUNS="${RUNS:-3}"
ONLY="${ONLY:-both}"
HTTP="${HTTP:-0}"
OPENDO="${OPENDO:-$REPO/.venv/bin/opendo}"
BENCH_DIR="${BENCH_DIR:-/work/shared/bench}"
PEER_SRC="${PEER_SRC:-/work/shared/peer/chat-workerd}"
PEER_DIR="${PEER_DIR:-/tmp/chat-workerd-peer}"
PEER_START_TIMEOUT="${PEER_START_TIMEOUT:-300}"
OPENDO_START_TIMEOUT="${OPENDO_START_TIMEOUT:-60}"
if [ -z "${PY:-}" ]; then
  if [ -x /tmp/bench-venv/bin/python ]; then PY=/tmp/bench-venv/bin/python; else PY=python3; fi
fi

die() { echo "compare_chat: $*" >&2; exit 2; }
log() { echo "compare_chat: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 OUT.jsonl   (env: RUNS ONLY=both|workerd|opendo HTTP=0|1 OPENDO PY)"
OUT="$1"
case "$ONLY" in both | workerd | opendo) ;; *) die "ONLY must be both, workerd or opendo (got '$ONLY')" ;; esac
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
want() { [ "$ONLY" = both ] || [ "$ONLY" = "$1" ]; }

# --- preflight: fail before starting anything -------------------------------------------------
if want opendo; then
  case "$OPENDO" in
    /*) ;;
    */*) OPENDO="$PWD/$OPENDO" ;;                       # relative path: opendo starts from $REPO
    *) OPENDO="$(command -v "$OPENDO" || echo "$OPENDO")" ;; # bare command name: look up in PATH
  esac
  [ -e "$OPENDO" ] || die "opendo not found: OPENDO=$OPENDO does not exist (install it, set OPENDO=..., or run with ONLY=workerd)"
  [ -x "$OPENDO" ] || die "opendo not executable: $OPENDO"
  [ -d "$REPO/examples/chat" ] || die "missing $REPO/examples/chat"
fi
if want workerd; then
  [ -x "$PEER_SRC/run-miniflare.sh" ] || die "missing $PEER_SRC/run-miniflare.sh"
  command -v node >/dev/null || die "node not found (needed for the workerd peer)"
  command -v npm >/dev/null || die "npm not found (needed for the workerd peer)"
fi
for f in chatload.py httpload.py peer_pids.sh; do
  [ -e "$BENCH_DIR/$f" ] || die "missing $BENCH_DIR/$f"
done
"$PY" -c 'import websockets, aiohttp' 2>/dev/null \
  || die "$PY lacks websockets/aiohttp: python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install websockets aiohttp"
command -v timeout >/dev/null || die "timeout(1) not found"
mkdir -p "$(dirname "$OUT")"
touch "$OUT"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/compare_chat.XXXXXX")"
log "logs in $WORK"

# --- process bookkeeping: only PIDs this script started ---------------------------------------
STARTED=()   # root PIDs of servers we started
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
stop_tree() { # PID: TERM the root, then leftover descendants, then KILL; all bounded
  local root="$1" p
  local tree=("$root") left=()
  for p in $(descendants "$root"); do tree+=("$p"); done
  if alive "$root"; then kill -TERM "$root" 2>/dev/null || true; fi
  read -ra left <<<"$(wait_gone 5 "${tree[@]}" | paste -sd' ' -)"
  if [ "${#left[@]}" -gt 0 ]; then
    log "stopping leftovers of $root with SIGTERM: ${left[*]}"
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
port_open() { # PORT -> 0 if 127.0.0.1:PORT accepts a TCP connection (1 s bound)
  "$PY" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' \
    "$1" 2>/dev/null
}
wait_ready() { # NAME PID PORT TIMEOUT LOGFILE [READY_LINE]
  local name="$1" pid="$2" port="$3" limit="$4" logf="$5" line="${6:-}" t0=$SECONDS
  while :; do
    if ! alive "$pid"; then
      log "$name (pid $pid) exited before it was ready; last log lines:"
      tail -n 30 "$logf" >&2
      return 1
    fi
    if [ -n "$line" ] && grep -qF "$line" "$logf" 2>/dev/null; then return 0; fi
    if port_open "$port"; then return 0; fi
    if [ $((SECONDS - t0)) -ge "$limit" ]; then
      log "$name not accepting on 127.0.0.1:$port after ${limit}s; last log lines:"
      tail -n 30 "$logf" >&2
      return 1
    fi
    sleep 0.25
  done
}
server_pids() { "$BENCH_DIR/peer_pids.sh" "$1" all; } # root PID + every descendant, comma-separated

# --- start servers ----------------------------------------------------------------------------
WORKERD_PID="" WORKERD_PORT="" OPENDO_PID="" OPENDO_PORT=""
if want workerd; then
  # Run a writable copy: workdir.sh only copies when [ -w SRC ] is false, which is never the case
  # for root, so running the shared script directly would npm-install into the shared folder.
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
  log "workerd peer: pid $WORKERD_PID port $WORKERD_PORT (first start runs npm install in $PEER_DIR)"
  wait_ready workerd "$WORKERD_PID" "$WORKERD_PORT" "$PEER_START_TIMEOUT" "$WORK/workerd.log" \
    "ready http://127.0.0.1:$WORKERD_PORT" || exit 1
  log "workerd ready after ${SECONDS}s: pids $(server_pids "$WORKERD_PID")"
fi
if want opendo; then
  OPENDO_PORT="$(free_port)"
  while [ "$OPENDO_PORT" = "$WORKERD_PORT" ]; do OPENDO_PORT="$(free_port)"; done
  mkdir -p "$WORK/persist-opendo"
  OPENDO_PERSIST="$(mktemp -d "$WORK/persist-opendo/XXXXXX")"
  (cd "$REPO" && exec "$OPENDO" dev examples/chat --port "$OPENDO_PORT" --no-reload \
    --persist-to "$OPENDO_PERSIST") >"$WORK/opendo.log" 2>&1 &
  OPENDO_PID=$!
  STARTED+=("$OPENDO_PID")
  log "opendo: pid $OPENDO_PID port $OPENDO_PORT"
  wait_ready opendo "$OPENDO_PID" "$OPENDO_PORT" "$OPENDO_START_TIMEOUT" "$WORK/opendo.log" \
    "Ready on http://127.0.0.1:$OPENDO_PORT" || exit 1
  log "opendo ready: pids $(server_pids "$OPENDO_PID")"
fi

# --- load -------------------------------------------------------------------------------------
port_of() { if [ "$1" = workerd ]; then echo "$WORKERD_PORT"; else echo "$OPENDO_PORT"; fi; }
pid_of() { if [ "$1" = workerd ]; then echo "$WORKERD_PID"; else echo "$OPENDO_PID"; fi; }
order() { # RUN -> server order for this run (alternating which goes first)
  if [ "$ONLY" != both ]; then echo "$ONLY"
  elif [ $(($1 % 2)) -eq 1 ]; then echo "workerd opendo"
  else echo "opendo workerd"; fi
}
annotate() { # TOOL SERVER LABEL RUN RC PORT <<< tool output -> one JSON line on stdout
  "$PY" -c '
import json, sys
tool, server, label, run, rc, port = sys.argv[1:7]
lines = [ln for ln in sys.stdin.read().splitlines() if ln.startswith("{")]
try:
    d = json.loads(lines[-1])
except (IndexError, ValueError):
    d = {"tool": tool, "no_output": True}
d.update(server=server, label=label, run=int(run), rc=int(rc), port=int(port))
print(json.dumps(d))
' "$@"
}
run_one() { # SERVER LABEL RUN TOOL ARGS...
  local server="$1" label="$2" run="$3" tool="$4" port pids out rc=0
  shift 4
  port="$(port_of "$server")"
  alive "$(pid_of "$server")" || { log "$server died; see $WORK/$server.log"; exit 1; }
  pids="$(server_pids "$(pid_of "$server")")"   # re-read: children may come and go
  if [ "$tool" = chatload ]; then
    out="$(timeout 120 "$PY" "$BENCH_DIR/chatload.py" --url "ws://127.0.0.1:$port" \
      --timeout 60 --server-pids "$pids" "$@" 2>>"$WORK/client.log")" || rc=$?
  else
    out="$(timeout 120 "$PY" "$BENCH_DIR/httpload.py" --url "http://127.0.0.1:$port/bench-http" \
      --timeout 60 --server-pids "$pids" "$@" 2>>"$WORK/client.log")" || rc=$?
  fi
  annotate "$tool" "$server" "$label" "$run" "$rc" "$port" <<<"$out" >>"$OUT"
  log "$(printf '%-28s %-7s run %s rc %s' "$label" "$server" "$run" "$rc")"
}
chat() { # LABEL ROOMS CLIENTS SENDERS MESSAGES
  local label="$1" i s
  for i in $(seq 1 "$RUNS"); do
    for s in $(order "$i"); do
      run_one "$s" "$label" "$i" chatload --rooms "$2" --clients "$3" --senders "$4" --messages "$5"
    done
  done
}
http() { # LABEL CONCURRENCY REQUESTS
  local label="$1" i s
  for i in $(seq 1 "$RUNS"); do
    for s in $(order "$i"); do
      run_one "$s" "$label" "$i" httpload --concurrency "$2" --requests "$3"
    done
  done
}

chat "ws 1x10 s10 m100" 1 10 10 100
chat "ws 1x200 s5 m20" 1 200 5 20
chat "ws 50x4 s2 m50" 50 4 2 50
chat "ws 1x10 s10 m1000" 1 10 10 1000
chat "ws 1x100 s10 m100" 1 100 10 100
if [ "$HTTP" = 1 ]; then
  http "http c32 n4000" 32 4000
fi

echo
echo "results: $OUT (runs=$RUNS only=$ONLY; medians over every line in the file)"
echo
python3 "$HERE/summarize_compare.py" "$OUT"
