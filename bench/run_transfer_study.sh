#!/usr/bin/env bash
# Starts one tlserve with local CPU workers on a loopback port (data in
# $TLSERVE_DATA_DIR, default var/transfer_study_server), runs
# bench/transfer_study against it, then stops the server.
#
#   bench/run_transfer_study.sh [BUILD_DIR] [transfer_study flags...]
#   bench/run_transfer_study.sh build --shots=1,5,20 --quick
#
# TLSERVE_LOCAL_WORKERS (default 1): on a 2-core machine one worker is the
# fastest; more only helps with more cores.
set -euo pipefail
BUILD="${1:-build}"
cd "$(dirname "$0")/.."
DATA_DIR="${TLSERVE_DATA_DIR:-var/transfer_study_server}"
WORKERS="${TLSERVE_LOCAL_WORKERS:-1}"
mkdir -p "$DATA_DIR"
PORT_FILE="$DATA_DIR/study.port"
rm -f "$PORT_FILE"

"$BUILD/server/tlserve" --port=0 --port_file="$PORT_FILE" --data_dir="$DATA_DIR" \
  --local_workers="$WORKERS" --worker_binary="$BUILD/worker/tlworker" \
  2> "$DATA_DIR/tlserve.log" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  [ -s "$PORT_FILE" ] && break
  kill -0 $SERVER_PID 2>/dev/null || { cat "$DATA_DIR/tlserve.log"; exit 1; }
  sleep 0.1
done
[ -s "$PORT_FILE" ] || { echo "transfer_study: tlserve did not start" >&2; exit 1; }
PORT=$(cat "$PORT_FILE")
echo "transfer_study: tlserve on 127.0.0.1:$PORT, $WORKERS worker(s) (log: $DATA_DIR/tlserve.log)"

"$BUILD/bench/transfer_study" --server="127.0.0.1:$PORT" "${@:2}"
