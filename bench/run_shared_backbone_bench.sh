#!/usr/bin/env bash
# Shared backbones, measured: N heads fine-tuned on one frozen backbone,
# served as one shared backbone against the same N models served
# separately, in one run, on loopback only:
#  1. starts tlserve (127.0.0.1, one local worker) on a fresh data dir;
#  2. trains N frozen-backbone fine-tunes (feature extraction) on one
#     backbone, each on its own Fashion-MNIST class subset and seed, and
#     checks that all N got the same backbone digest;
#  3. for each mode, shared (--share_backbones=true) and separate (=false),
#     restarts tlserve on the same data dir, calls each model once (so all
#     are loaded), then bench/load_gen calls the N models in turn at each
#     concurrency; records the worker's resident memory with the models
#     loaded and after each load;
#  4. prints a markdown table (also written to $OUT/table.md).
# Everything it starts is stopped on exit.
#
#   bench/run_shared_backbone_bench.sh [BUILD_DIR]          # default: build
#   BENCH_FULL=1 bench/run_shared_backbone_bench.sh build   # longer windows
#
# Environment:
#   BENCH_MODEL          resnet18 (torchvision, random weights, 224x224 RGB
#                        JPEG input) or compact (a compact ResNet pretrained
#                        briefly on Fashion-MNIST, 28x28 PNG) (resnet18)
#   BENCH_HEADS          models on the backbone (8)
#   BENCH_CONCURRENCY    closed-loop points ("8 64")
#   BENCH_MAX_BATCH      the server's --max_batch_size, both modes (8)
#   BENCH_SECONDS, BENCH_WARMUP  load_gen window and warmup (5, 2; full 20, 5)
#   BENCH_THREADS        LibTorch threads of the worker (2)
#   BENCH_MAX_SECONDS    the whole run is killed after this long (1800)
#   BENCH_OUT            folder for logs and results (a new temp dir)
#   BENCH_DATA_DIR       Fashion-MNIST IDX files (/usr/share/datasets/fashion-mnist)
set -euo pipefail
BUILD="${1:-build}"
cd "$(dirname "$0")/.."
BUILD="$(cd "$BUILD" && pwd)"
BENCH_TAG=shared_backbone_bench
source bench/bench_common.sh

if [ "${BENCH_FULL:-0}" = 1 ]; then
  SECONDS_W="${BENCH_SECONDS:-20}"; WARMUP="${BENCH_WARMUP:-5}"
else
  SECONDS_W="${BENCH_SECONDS:-5}"; WARMUP="${BENCH_WARMUP:-2}"
fi
MODEL="${BENCH_MODEL:-resnet18}"
HEADS="${BENCH_HEADS:-8}"
CONCURRENCY="${BENCH_CONCURRENCY:-8 64}"
MAX_BATCH="${BENCH_MAX_BATCH:-8}"
THREADS="${BENCH_THREADS:-2}"
MAX_SECONDS="${BENCH_MAX_SECONDS:-1800}"
FMNIST="${BENCH_DATA_DIR:-/usr/share/datasets/fashion-mnist}"
OUT="${BENCH_OUT:-$(mktemp -d /tmp/tlserve_shared_backbone_bench.XXXXXX)}"
mkdir -p "$OUT"
DATA_DIR="$(mktemp -d /tmp/tlserve_shared_backbone_bench_data.XXXXXX)"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

for bin in server/tlserve worker/tlworker client/tlctl bench/load_gen; do
  [ -x "$BUILD/$bin" ] || { echo "$BENCH_TAG: $BUILD/$bin is missing; build it" >&2; exit 1; }
done
case "$MODEL" in resnet18|compact) ;; *) echo "$BENCH_TAG: BENCH_MODEL=$MODEL: use resnet18 or compact" >&2; exit 1 ;; esac
[ "$HEADS" -ge 2 ] || { echo "$BENCH_TAG: BENCH_HEADS must be at least 2" >&2; exit 1; }
bench_guard "$MAX_SECONDS"

SERVER_PID=""
start_server() {  # start_server SHARE(true|false): tlserve on DATA_DIR -> SERVER
  rm -f "$DATA_DIR/tlserve.port"
  "$BUILD/server/tlserve" --listen=127.0.0.1:0 --port_file="$DATA_DIR/tlserve.port" \
    --data_dir="$DATA_DIR" --local_workers=1 --worker_binary="$BUILD/worker/tlworker" \
    --worker_threads="$THREADS" --max_batch_size="$MAX_BATCH" \
    --share_backbones="$1" 2>> "$OUT/tlserve.$1.log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER="127.0.0.1:$(wait_port_file "$DATA_DIR/tlserve.port" "$SERVER_PID" "$OUT/tlserve.$1.log")"
  tlctl health --wait 60 > /dev/null
  log "tlserve --share_backbones=$1 on $SERVER"
}
stop_server() {
  stop_pid "$SERVER_PID"
  PIDS=()
}
worker_rss_mib() {  # the local worker's resident memory now, MiB
  local pid
  pid="$(pgrep -P "$SERVER_PID" -f tlworker | head -1)"
  [ -n "$pid" ] || { echo "-"; return; }
  awk '/^VmRSS:/ { printf "%.0f\n", $2 / 1024 }' "/proc/$pid/status"
}

LOAD_START="$(cut -d' ' -f1 /proc/loadavg)"
log "output in $OUT; $HEADS heads on $MODEL; windows: warmup ${WARMUP}s + ${SECONDS_W}s; threads $THREADS; max batch $MAX_BATCH"
start_server true

# --- 2. the backbone and the heads -------------------------------------------
DATASET="$(upload_fmnist "$FMNIST")"
log "dataset fmnist: $DATASET"
if [ "$MODEL" = resnet18 ]; then
  "$PY" tools/export_backbone.py --arch resnet18 --size 224 \
    --out "$OUT/resnet18_224.pt" > "$OUT/export_backbone.log" 2>&1
  tlctl --json backbone upload --name bench-resnet18-224 \
    --file "$OUT/resnet18_224.pt" --spec-json "$OUT/resnet18_224.pt.json" \
    > "$OUT/backbone.json"
  BACKBONE="$(json "$OUT/backbone.json" id)"
  head_flags=(--samples-per-class 8 --val-fraction 0.25 --max-test-samples 20
              --epochs 1 --batch-size 8)
else
  run_job pretrain --kind pretrain --dataset "$DATASET" \
    --classes 0,1,5,8,9 --samples-per-class 300 --val-fraction 0.1 \
    --max-test-samples 200 --epochs 1 --batch-size 64 --lr 0.002 \
    --backbone-name bench-compact-resnet --seed 1
  BACKBONE="$(json "$OUT/pretrain.job.json" result.backbone_id)"
  head_flags=(--samples-per-class 20 --val-fraction 0.2 --max-test-samples 200
              --epochs 3 --batch-size 16)
fi
# Each head its own task: 3 of the 10 classes, a different set per head.
IDS=()
for i in $(seq 1 "$HEADS"); do
  classes="$(( (i - 1) % 10 )),$(( (i + 2) % 10 )),$(( (i + 5) % 10 ))"
  run_job "head$i" --dataset "$DATASET" --backbone "$BACKBONE" \
    --classes "$classes" --freeze frozen --lr 0.01 --seed "$i" "${head_flags[@]}"
  IDS+=("$(json "$OUT/head$i.job.json" result.model_id)")
  tlctl --json model get "${IDS[-1]}" > "$OUT/head$i.model.json"
done
DIGESTS="$(for i in $(seq 1 "$HEADS"); do json "$OUT/head$i.model.json" backbone_digest; done | sort -u)"
if [ "$(echo "$DIGESTS" | wc -l)" != 1 ] || [ -z "$DIGESTS" ]; then
  log "the heads do not share one backbone digest: $DIGESTS"; exit 1
fi
log "$HEADS models on backbone $BACKBONE, digest ${DIGESTS:0:16}..."
MODELS_CSV="$(IFS=,; echo "${IDS[*]}")"

# One input at the model's size: a Fashion-MNIST test image (Pullover).
"$PY" - "$FMNIST/t10k-images-idx3-ubyte.gz" "$FMNIST/t10k-labels-idx1-ubyte.gz" "$OUT" <<'EOF'
import gzip, sys
import numpy as np
from PIL import Image
images = np.frombuffer(gzip.open(sys.argv[1]).read(), np.uint8, offset=16).reshape(-1, 28, 28)
labels = np.frombuffer(gzip.open(sys.argv[2]).read(), np.uint8, offset=8)
img = Image.fromarray(images[int(np.flatnonzero(labels == 2)[0])])
img.save(sys.argv[3] + "/input_28.png")
img.resize((224, 224), Image.BILINEAR).convert("RGB").save(sys.argv[3] + "/input_224.jpg", quality=90)
EOF
IMAGE="$OUT/input_224.jpg"; [ "$MODEL" = compact ] && IMAGE="$OUT/input_28.png"

# --- 3. shared, then separate, on the same models -----------------------------
for share in true false; do
  mode=shared; [ "$share" = true ] || mode=separate
  stop_server
  start_server "$share"
  # The local worker connects a moment after the server is up.
  for _ in $(seq 1 120); do
    tlctl --json predict --model "${IDS[0]}" --image "$IMAGE" > /dev/null 2>&1 && break
    sleep 0.5
  done
  for id in "${IDS[@]}"; do
    tlctl --json predict --model "$id" --image "$IMAGE" > "$OUT/$mode.$id.predict.json"
  done
  loaded_rss="$(worker_rss_mib)"
  log "$mode: worker RSS with the $HEADS models loaded: $loaded_rss MiB"
  for conc in $CONCURRENCY; do
    if [ "$mode" = shared ]; then
      # The reference: the same load on one of the models alone.
      logf="$OUT/one.c$conc.log"
      timeout $((WARMUP + SECONDS_W + 80)) "$BUILD/bench/load_gen" \
        --target="$SERVER" --model="${IDS[0]}" --image="$IMAGE" \
        --concurrency="$conc" --warmup_seconds="$WARMUP" --seconds="$SECONDS_W" \
        --timeout_ms=20000 --top_k=3 --allow_errors > "$logf" 2>&1 \
        || log "load_gen one model c=$conc exited $?"
      grep -E '^  (throughput|latency|error)' "$logf" | sed "s/^/  [one model c=$conc]/" >&2 || true
      record "$logf" mode=one concurrency="$conc"
    fi
    logf="$OUT/$mode.c$conc.log"
    timeout $((WARMUP + SECONDS_W + 80)) "$BUILD/bench/load_gen" \
      --target="$SERVER" --model="$MODELS_CSV" --image="$IMAGE" \
      --concurrency="$conc" --warmup_seconds="$WARMUP" --seconds="$SECONDS_W" \
      --timeout_ms=20000 --top_k=3 --allow_errors > "$logf" 2>&1 \
      || log "load_gen $mode c=$conc exited $?"
    grep -E '^  (throughput|latency|error)' "$logf" | sed "s/^/  [$mode c=$conc]/" >&2 || true
    record "$logf" mode="$mode" concurrency="$conc" rss_loaded_mib="$loaded_rss" \
      rss_mib="$(worker_rss_mib)"
  done
done
stop_server

# Same answers either way: sharing must not change a prediction.
"$PY" - "$OUT" "${IDS[@]}" <<'EOF' >&2
import json, sys
out, ids = sys.argv[1], sys.argv[2:]
worst = 0.0
for i in ids:
    a, b = (json.load(open(f"{out}/{m}.{i}.predict.json"))["predictions"][0]["probabilities"]
            for m in ("shared", "separate"))
    worst = max(worst, max(abs(x - y) for x, y in zip(a, b)))
print(f"shared_backbone_bench: shared vs separate, max |probability difference| "
      f"over {len(ids)} models: {worst:.2e}" + ("" if worst < 1e-4 else "  <-- CHECK"))
EOF

# --- 4. the table ---------------------------------------------------------------
LOAD_END="$(cut -d' ' -f1 /proc/loadavg)"
"$PY" - "$RESULTS" "$MODEL" "$HEADS" "$THREADS" "$MAX_BATCH" "$WARMUP" "$SECONDS_W" "$LOAD_START" "$LOAD_END" <<'EOF' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["bench_mode"], r["bench_concurrency"]): r for r in rows}
concs = sorted({r["bench_concurrency"] for r in rows})
model, heads, threads, batch, warm, win, l0, l1 = sys.argv[2:]
print(f"\n{heads} heads on one frozen {model} backbone, called in turn; "
      f"{threads} LibTorch threads, --max_batch_size={batch}, closed loop, "
      f"{warm} s warmup + {win} s per point; 1-min load average {l0} at start, {l1} at end\n")
print("| conc | shared req/s | p50 ms | p99 ms | worker RSS MiB | separate req/s | p50 ms "
      "| p99 ms | worker RSS MiB | req/s shared/separate | errors shared/separate |")
# RSS: with the models loaded, before any load / after this point's load.
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
fmt = lambda v, f="%.1f": (f % v) if isinstance(v, (int, float)) else "-"
for c in concs:
    s = by.get(("shared", c), {}); p = by.get(("separate", c), {})
    ratio = (s["throughput_rps"] / p["throughput_rps"]
             if s.get("throughput_rps") and p.get("throughput_rps") else None)
    print(f"| {c} | {fmt(s.get('throughput_rps'))} | {fmt(s.get('p50_ms'), '%.2f')} "
          f"| {fmt(s.get('p99_ms'), '%.2f')} | {s.get('bench_rss_loaded_mib', '-')} / {s.get('bench_rss_mib', '-')} "
          f"| {fmt(p.get('throughput_rps'))} | {fmt(p.get('p50_ms'), '%.2f')} "
          f"| {fmt(p.get('p99_ms'), '%.2f')} | {p.get('bench_rss_loaded_mib', '-')} / {p.get('bench_rss_mib', '-')} "
          f"| {fmt(ratio, '%.2fx')} | {s.get('errors', '-')}/{p.get('errors', '-')} |")
EOF
