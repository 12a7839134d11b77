# shellcheck shell=bash
# bench/lib.sh: the machinery shared by bench/compare_chat.sh and bench/compare_counter.sh.
# Sourced, never run. The script sets BENCH_NAME (prefix of its log lines and of its temp folder),
# ONLY (both | workerd | opendo) and `set -euo pipefail` before it sources this file.
#
# Sourcing sets HERE (bench/), REPO and the defaults of the environment variables both scripts
# take: RUNS=3, OPENDO=REPO/.venv/bin/opendo, PY=/tmp/bench-venv/bin/python (else python3),
# BENCH_DIR=/work/shared/bench, PEER_SRC=/work/shared/peer/chat-workerd,
# PEER_DIR=/tmp/chat-workerd-peer, PEER_START_TIMEOUT=300, OPENDO_START_TIMEOUT=60 (seconds).
# READY_ON_OPEN_PORT=1 (set by the script, default 0) also counts a server as ready once its port
# accepts a TCP connection, not only once it printed its ready line.
#
# Functions, in the order a script uses them:
#   die MSG, log MSG                 message on stderr prefixed by BENCH_NAME (die exits 2)
#   want SERVER                      true if ONLY selects SERVER
#   check_positive NAME              the variable NAME holds a positive integer, or die
#   check_opendo [HINT]              resolve OPENDO to an absolute path; it must be executable
#   check_peer                       run-miniflare.sh in PEER_SRC, node and npm
#   check_client "FILES" "MODULES"   BENCH_DIR has FILES (and peer_pids.sh), PY imports MODULES,
#                                    timeout(1) exists
#   start_workdir                    WORK=$(mktemp -d); installs the EXIT trap (see below)
#   start_workerd_peer               copy of PEER_SRC in PEER_DIR, run-miniflare.sh on a free port;
#                                    sets WORKERD_PID WORKERD_PORT, waits until ready
#   start_opendo SUBCOMMAND APP [OPTION...]
#                                    `opendo SUBCOMMAND APP --port P OPTION... --persist-to DIR`
#                                    from REPO; sets OPENDO_PID OPENDO_PORT, waits until ready
#   each_run LABEL TOOL PATH [ARG...]
#                                    RUNS times, every wanted server (which goes first alternates):
#                                    run_one SERVER LABEL RUN TOOL PATH ARG...
#   run_one SERVER LABEL RUN TOOL PATH [ARG...]
#                                    one bounded run of BENCH_DIR/TOOL.py (chatload: ws://, httpload:
#                                    http://127.0.0.1:PORT/PATH) with --timeout 60 and the server's
#                                    current PIDs for CPU sampling; appends one JSON line to OUT
#
# Only servers started here are stopped: their root PIDs are kept in STARTED, and the EXIT trap
# stops each tree by PID (TERM, then leftover descendants, then KILL; every wait bounded) and
# removes the persisted state under WORK. Nothing is ever written into /work/shared: the peer runs
# from its copy in PEER_DIR. Every server listens on 127.0.0.1 only.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
RUNS="${RUNS:-3}"
OPENDO="${OPENDO:-$REPO/.venv/bin/opendo}"
BENCH_DIR="${BENCH_DIR:-/work/shared/bench}"
PEER_SRC="${PEER_SRC:-/work/shared/peer/chat-workerd}"
PEER_DIR="${PEER_DIR:-/tmp/chat-workerd-peer}"
PEER_START_TIMEOUT="${PEER_START_TIMEOUT:-300}"
OPENDO_START_TIMEOUT="${OPENDO_START_TIMEOUT:-60}"
READY_ON_OPEN_PORT="${READY_ON_OPEN_PORT:-0}"
if [ -z "${PY:-}" ]; then
  if [ -x /tmp/bench-venv/bin/python ]; then PY=/tmp/bench-venv/bin/python; else PY=python3; fi
fi
STARTED=()   # root PIDs of the servers this script started
WORK="" OUT=""
WORKERD_PID="" WORKERD_PORT="" OPENDO_PID="" OPENDO_PORT=""

die() { echo "$BENCH_NAME: $*" >&2; exit 2; }
log() { echo "$BENCH_NAME: $*" >&2; }
want() { [ "$ONLY" = both ] || [ "$ONLY" = "$1" ]; }

# --- preflight: fail before starting anything -------------------------------------------------
check_positive() { # NAME
  [[ "${!1}" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer (got '${!1}')"
}
check_opendo() { # [HINT]: appended to the "not found" message
  case "$OPENDO" in
    /*) ;;
    */*) OPENDO="$PWD/$OPENDO" ;;                       # relative path: opendo starts from $REPO
    *) OPENDO="$(command -v "$OPENDO" || echo "$OPENDO")" ;; # bare command name: look up in PATH
  esac
  [ -e "$OPENDO" ] || die "opendo not found: OPENDO=$OPENDO does not exist (install it or set OPENDO=...${1:+, or $1})"
  [ -x "$OPENDO" ] || die "opendo not executable: $OPENDO"
}
check_peer() {
  [ -x "$PEER_SRC/run-miniflare.sh" ] || die "missing $PEER_SRC/run-miniflare.sh"
  command -v node >/dev/null || die "node not found (needed for the workerd peer)"
  command -v npm >/dev/null || die "npm not found (needed for the workerd peer)"
}
check_client() { # "FILES" "MODULES" (space-separated)
  local f mods
  for f in $1 peer_pids.sh; do
    [ -e "$BENCH_DIR/$f" ] || die "missing $BENCH_DIR/$f"
  done
  mods="${2// /, }"
  "$PY" -c "import $mods" 2>/dev/null \
    || die "$PY lacks ${2// //}: python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install $2"
  command -v timeout >/dev/null || die "timeout(1) not found"
}

# --- process bookkeeping: only PIDs this script started ---------------------------------------
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
cleanup() { # the EXIT trap: stop what we started, drop persisted state, keep the exit status
  local rc=$? p
  trap - EXIT INT TERM
  for p in ${STARTED[@]+"${STARTED[@]}"}; do stop_tree "$p"; done
  rm -rf "$WORK/persist-"* 2>/dev/null || true
  exit "$rc"
}
start_workdir() { # WORK: logs of the servers and clients, and their persisted state
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/$BENCH_NAME.XXXXXX")"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  log "logs in $WORK"
}

# --- starting servers -------------------------------------------------------------------------
free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
port_open() { # PORT -> 0 if 127.0.0.1:PORT accepts a TCP connection (1 s bound)
  "$PY" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' \
    "$1" 2>/dev/null
}
wait_ready() { # NAME PID PORT TIMEOUT LOGFILE READY_LINE (or an open port if READY_ON_OPEN_PORT=1)
  local name="$1" pid="$2" port="$3" limit="$4" logf="$5" line="$6" t0=$SECONDS
  while :; do
    if ! alive "$pid"; then
      log "$name (pid $pid) exited before it was ready; last log lines:"
      tail -n 30 "$logf" >&2
      return 1
    fi
    if grep -qF "$line" "$logf" 2>/dev/null; then return 0; fi
    if [ "$READY_ON_OPEN_PORT" = 1 ] && port_open "$port"; then return 0; fi
    if [ $((SECONDS - t0)) -ge "$limit" ]; then
      if [ "$READY_ON_OPEN_PORT" = 1 ]; then
        log "$name not accepting on 127.0.0.1:$port after ${limit}s; last log lines:"
      else
        log "$name did not print '$line' within ${limit}s; last log lines:"
      fi
      tail -n 30 "$logf" >&2
      return 1
    fi
    sleep 0.25
  done
}
server_pids() { "$BENCH_DIR/peer_pids.sh" "$1" all; } # root PID + every descendant, comma-separated

start_workerd_peer() {
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
}
start_opendo() { # SUBCOMMAND APP [OPTION...]
  local sub="$1" app="$2" persist
  shift 2
  OPENDO_PORT="$(free_port)"
  while [ "$OPENDO_PORT" = "$WORKERD_PORT" ]; do OPENDO_PORT="$(free_port)"; done
  mkdir -p "$WORK/persist-opendo"
  persist="$(mktemp -d "$WORK/persist-opendo/XXXXXX")"
  # No access log: the peer writes none either.
  (cd "$REPO" && exec "$OPENDO" "$sub" "$app" --port "$OPENDO_PORT" --no-access-log "$@" \
    --persist-to "$persist") >"$WORK/opendo.log" 2>&1 &
  OPENDO_PID=$!
  STARTED+=("$OPENDO_PID")
  log "opendo: pid $OPENDO_PID port $OPENDO_PORT"
  wait_ready opendo "$OPENDO_PID" "$OPENDO_PORT" "$OPENDO_START_TIMEOUT" "$WORK/opendo.log" \
    "Ready on http://127.0.0.1:$OPENDO_PORT" || exit 1
  log "opendo ready: pids $(server_pids "$OPENDO_PID")"
}

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
run_one() { # SERVER LABEL RUN TOOL PATH [ARG...]
  local server="$1" label="$2" run="$3" tool="$4" path="$5" port pids url out rc=0
  shift 5
  port="$(port_of "$server")"
  case "$tool" in
    chatload) url="ws://127.0.0.1:$port$path" ;;
    httpload) url="http://127.0.0.1:$port$path" ;;
    *) die "unknown load tool '$tool'" ;;
  esac
  alive "$(pid_of "$server")" || { log "$server died; see $WORK/$server.log"; exit 1; }
  pids="$(server_pids "$(pid_of "$server")")"   # re-read: children may come and go
  out="$(timeout 120 "$PY" "$BENCH_DIR/$tool.py" --url "$url" \
    --timeout 60 --server-pids "$pids" "$@" 2>>"$WORK/client.log")" || rc=$?
  annotate "$tool" "$server" "$label" "$run" "$rc" "$port" <<<"$out" >>"$OUT"
  log "$(printf '%-28s %-7s run %s rc %s' "$label" "$server" "$run" "$rc")"
}
each_run() { # LABEL TOOL PATH [ARG...]
  local label="$1" tool="$2" path="$3" i s
  shift 3
  for i in $(seq 1 "$RUNS"); do
    for s in $(order "$i"); do
      run_one "$s" "$label" "$i" "$tool" "$path" "$@"
    done
  done
}
