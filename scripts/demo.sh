#!/usr/bin/env bash
# The main job: one tlserve with one local CPU worker on embedded defaults
# (data in ./var), then `tlctl demo`: upload Fashion-MNIST, pretrain a
# source backbone, fine-tune it on 5 new classes with few labels against a
# from-scratch baseline, print the table, write var/demo_summary.json.
set -euo pipefail
BUILD="${1:-build}"
cd "$(dirname "$0")/.."
DATA_DIR="${TLSERVE_DATA_DIR:-var}"
mkdir -p "$DATA_DIR"
PORT_FILE="$DATA_DIR/demo.port"
rm -f "$PORT_FILE"

"$BUILD/server/tlserve" --port=0 --port_file="$PORT_FILE" --data_dir="$DATA_DIR" \
  --local_workers=1 --worker_binary="$BUILD/worker/tlworker" \
  2> "$DATA_DIR/tlserve.log" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  [ -s "$PORT_FILE" ] && break
  kill -0 $SERVER_PID 2>/dev/null || { cat "$DATA_DIR/tlserve.log"; exit 1; }
  sleep 0.1
done
[ -s "$PORT_FILE" ] || { echo "demo: tlserve did not start" >&2; exit 1; }
PORT=$(cat "$PORT_FILE")
echo "demo: tlserve on 127.0.0.1:$PORT (log: $DATA_DIR/tlserve.log)"

"$BUILD/client/tlctl" --server="127.0.0.1:$PORT" demo \
  --summary="$DATA_DIR/demo_summary.json" "${@:2}"
