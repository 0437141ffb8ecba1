# Shared by the bench/run_*_bench.sh scripts (sourced, not run): process
# bookkeeping with a bounded run time, and small helpers around tlctl.
#
# The sourcing script sets BENCH_TAG (log prefix), BUILD, OUT and
# DATA_DIR, then calls bench_guard MAX_SECONDS. Processes it starts go in
# PIDS; all are stopped on exit, and DATA_DIR is removed.

PY=/usr/bin/python3
PIDS=()
WATCHDOG_PID=""

# fd 3: the script's stderr, also from inside redirected commands (traps).
exec 3>&2
log() { echo "$BENCH_TAG: $*" >&3; }

stop_pid() {  # stop_pid PID: TERM, then KILL after 5 s
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e  # stop everything even if one step fails
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  kill "$WATCHDOG_PID" 2>/dev/null
  rm -rf "$DATA_DIR"
  log "logs and results in $OUT"
  exit $rc
}

bench_guard() {  # bench_guard MAX_SECONDS: cleanup on exit, bounded run
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'log "stopped (time limit of $1 s reached or TERM)"; exit 124' TERM
  # TERM to this shell runs the cleanup. Short sleeps, so killing the loop
  # leaves no long-lived child behind.
  ( for _ in $(seq 1 "$1"); do sleep 1; done; kill -TERM $$ 2>/dev/null ) &
  WATCHDOG_PID=$!
}

wait_port_file() {  # wait_port_file FILE PID LOG
  for _ in $(seq 1 300); do
    [ -s "$1" ] && { cat "$1"; return 0; }
    kill -0 "$2" 2>/dev/null || { log "process died; log:"; tail -20 "$3" >&2; return 1; }
    sleep 0.1
  done
  log "no port file $1 after 30 s"; return 1
}

json() {  # json FILE dotted.path -> the value (strings unquoted)
  "$PY" -c '
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v[int(k)] if isinstance(v, list) else v.get(k, "")
print(v)' "$1" "$2"
}

# Needs SERVER (host:port) set.
tlctl() { timeout 900 "$BUILD/client/tlctl" --server="$SERVER" "$@"; }

run_job() {  # run_job NAME tlctl-job-create-flags... -> job JSON in $OUT/NAME.job.json
  local name="$1"; shift
  tlctl --json job create --name "bench-$name" "$@" > "$OUT/$name.create.json"
  local id; id="$(json "$OUT/$name.create.json" id)"
  log "job $name: $id"
  # In the background so a TERM from the watchdog is handled at once (bash
  # runs traps during `wait`, not during a foreground command).
  # The binary, not the tlctl function, so $! is `timeout`, which passes
  # TERM on to tlctl.
  timeout 900 "$BUILD/client/tlctl" --server="$SERVER" job watch "$id" \
    > "$OUT/$name.watch.log" 2>&1 &
  local watch_pid=$!
  PIDS+=("$watch_pid")
  if ! wait "$watch_pid"; then
    log "job $name ($id) did not succeed:"; tail -5 "$OUT/$name.watch.log" >&2
    tlctl job get "$id" >&2 || true
    return 1
  fi
  tlctl --json job get "$id" > "$OUT/$name.job.json"
}

upload_fmnist() {  # upload_fmnist IDX_DIR -> dataset id on stdout
  tlctl --json dataset upload --name fmnist \
    --idx-train-images "$1/train-images-idx3-ubyte.gz" \
    --idx-train-labels "$1/train-labels-idx1-ubyte.gz" \
    --idx-test-images "$1/t10k-images-idx3-ubyte.gz" \
    --idx-test-labels "$1/t10k-labels-idx1-ubyte.gz" > "$OUT/dataset.json"
  json "$OUT/dataset.json" id
}

# A RESULT line of load_gen or model_latency -> one JSON line in
# $RESULTS, with the bench's own keys added.
record() {  # record LOGFILE key=value...
  local logf="$1"; shift
  local line
  line="$(grep '^RESULT ' "$logf" | tail -1 | cut -c8- || true)"
  [ -n "$line" ] || { log "no RESULT in $logf:"; tail -5 "$logf" >&2; line='{}'; }
  "$PY" -c '
import json, sys
d = json.loads(sys.argv[1])
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    d["bench_" + k] = int(v) if v.isdigit() else v
print(json.dumps(d))' "$line" "$@" >> "$RESULTS"
}
