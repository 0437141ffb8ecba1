#!/usr/bin/env bash
# The inference benchmark, in one command, on loopback only:
#  1. starts tlserve (127.0.0.1, one local worker) on a fresh data dir;
#  2. makes two models: a compact ResNet pretrained briefly on five
#     Fashion-MNIST classes and fine-tuned frozen on five others (28x28
#     gray), and a random-weight torchvision resnet18 at 224x224 fine-tuned
#     frozen (the head only);
#  3. exports both with `tlctl model export`;
#  4. per model: bench/model_latency in process, then bench/load_gen against
#     tlserve and against bench/inference_peer_server.py (plain grpcio +
#     PyTorch on the exported file) at each concurrency, one at a time, with
#     the same LibTorch thread count;
#  5. prints a markdown table (also written to $OUT/table.md).
# Everything it starts is stopped on exit.
#
#   bench/run_inference_bench.sh [BUILD_DIR]          # default: build
#   BENCH_FULL=1 bench/run_inference_bench.sh build   # longer windows
#
# Environment (quick-run defaults; BENCH_FULL=1 raises the windows):
#   BENCH_SECONDS        load_gen measurement window per point (5; full 30)
#   BENCH_WARMUP         load_gen warmup per point (2; full 5)
#   BENCH_LATENCY_SECONDS  model_latency timing (5; full 20)
#   BENCH_CONCURRENCY    closed-loop points ("1 8 64")
#   BENCH_THREADS        LibTorch threads, tlserve worker and peer alike (2)
#   BENCH_PEER_WORKERS   peer ThreadPoolExecutor max_workers ("": Python's
#                        default, min(32, cores + 4))
#   BENCH_INPUT          image (PNG 28x28 / JPEG 224x224) or tensor (FP32
#                        batch-1 tensor at the model's size) ("image")
#   BENCH_MODELS         which models ("compact resnet18")
#   BENCH_TIMEOUT_MS     load_gen per-call deadline (20000)
#   BENCH_MAX_SECONDS    the whole run is killed after this long (1800)
#   BENCH_MAX_BATCH_COMPACT, BENCH_MAX_BATCH_RESNET18
#                        per-model max batch size, set with `tlctl model
#                        deploy` ("" and 8: the server's default, 64, for
#                        compact; 8 for resnet18)
#   BENCH_SERVER_FLAGS   extra tlserve flags, e.g. the batcher's
#                        "--max_batch_size=16 --batches_per_worker=1" ("")
#   BENCH_RUNNER_OPTIMIZE  the worker-compute timing uses the optimised
#                        copy, as tlworker's --optimize_models (true)
#   BENCH_OUT            folder for logs, models, results (a new temp dir)
#   BENCH_DATA_DIR       Fashion-MNIST IDX files (/usr/share/datasets/fashion-mnist)
set -euo pipefail
BUILD="${1:-build}"
BENCH_MAX_BATCH_RESNET18="${BENCH_MAX_BATCH_RESNET18-8}"
cd "$(dirname "$0")/.."
BUILD="$(cd "$BUILD" && pwd)"
BENCH_TAG=inference_bench
source bench/bench_common.sh

if [ "${BENCH_FULL:-0}" = 1 ]; then
  SECONDS_W="${BENCH_SECONDS:-30}"; WARMUP="${BENCH_WARMUP:-5}"
  LAT_SECONDS="${BENCH_LATENCY_SECONDS:-20}"
else
  SECONDS_W="${BENCH_SECONDS:-5}"; WARMUP="${BENCH_WARMUP:-2}"
  LAT_SECONDS="${BENCH_LATENCY_SECONDS:-5}"
fi
CONCURRENCY="${BENCH_CONCURRENCY:-1 8 64}"
THREADS="${BENCH_THREADS:-2}"
PEER_WORKERS="${BENCH_PEER_WORKERS:-}"
INPUT="${BENCH_INPUT:-image}"
MODELS="${BENCH_MODELS:-compact resnet18}"
TIMEOUT_MS="${BENCH_TIMEOUT_MS:-20000}"
MAX_SECONDS="${BENCH_MAX_SECONDS:-1800}"
FMNIST="${BENCH_DATA_DIR:-/usr/share/datasets/fashion-mnist}"
OUT="${BENCH_OUT:-$(mktemp -d /tmp/tlserve_inference_bench.XXXXXX)}"
mkdir -p "$OUT"
DATA_DIR="$(mktemp -d /tmp/tlserve_inference_bench_data.XXXXXX)"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

for bin in server/tlserve worker/tlworker client/tlctl bench/load_gen bench/model_latency; do
  [ -x "$BUILD/$bin" ] || { echo "inference_bench: $BUILD/$bin is missing; build it" >&2; exit 1; }
done
case "$INPUT" in image|tensor) ;; *) echo "inference_bench: BENCH_INPUT=$INPUT: use image or tensor" >&2; exit 1 ;; esac

SERVER_PID=""
PEER_PID=""
bench_guard "$MAX_SECONDS"

# --- 1. tlserve ----------------------------------------------------------
# Other work on the machine skews every number: the table reports the load.
LOAD_START="$(cut -d' ' -f1 /proc/loadavg)"
log "output in $OUT; windows: warmup ${WARMUP}s + ${SECONDS_W}s, in-process ${LAT_SECONDS}s; threads $THREADS; input $INPUT"
"$BUILD/server/tlserve" --listen=127.0.0.1:0 --port_file="$DATA_DIR/tlserve.port" \
  --data_dir="$DATA_DIR" --local_workers=1 --worker_binary="$BUILD/worker/tlworker" \
  --worker_threads="$THREADS" --metrics_listen=127.0.0.1:0 \
  --metrics_port_file="$DATA_DIR/metrics.port" ${BENCH_SERVER_FLAGS:-} 2> "$OUT/tlserve.log" &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
PORT="$(wait_port_file "$DATA_DIR/tlserve.port" "$SERVER_PID" "$OUT/tlserve.log")"
SERVER="127.0.0.1:$PORT"
METRICS_PORT="$(wait_port_file "$DATA_DIR/metrics.port" "$SERVER_PID" "$OUT/tlserve.log")"
tlctl health --wait 60 > /dev/null
log "tlserve on $SERVER (log: $OUT/tlserve.log)"

# --- 2. models -------------------------------------------------------------
# Both models fine-tune on Fashion-MNIST (resnet18 sees it resized to 224).
DATASET="$(upload_fmnist "$FMNIST")"
log "dataset fmnist: $DATASET"

declare -A MODEL_ID
for model in $MODELS; do
  case "$model" in
    compact)
      # Source classes T-shirt, Trouser, Sandal, Bag, Ankle boot; target
      # classes Pullover, Dress, Coat, Shirt, Sneaker (as in `tlctl demo`).
      run_job compact-pretrain --kind pretrain --dataset "$DATASET" \
        --classes 0,1,5,8,9 --samples-per-class 300 --val-fraction 0.1 \
        --max-test-samples 200 --epochs 1 --batch-size 64 --lr 0.002 \
        --backbone-name bench-compact-resnet --seed 1
      backbone="$(json "$OUT/compact-pretrain.job.json" result.backbone_id)"
      run_job compact --dataset "$DATASET" --backbone "$backbone" \
        --classes 2,3,4,6,7 --samples-per-class 20 --val-fraction 0.2 \
        --max-test-samples 200 --freeze frozen --epochs 3 --batch-size 16 \
        --lr 0.01 --seed 1
      ;;
    resnet18)
      "$PY" tools/export_backbone.py --arch resnet18 --size 224 \
        --out "$OUT/resnet18_224.pt" > "$OUT/export_backbone.log" 2>&1
      tlctl --json backbone upload --name bench-resnet18-224 \
        --file "$OUT/resnet18_224.pt" --spec-json "$OUT/resnet18_224.pt.json" \
        > "$OUT/resnet18.backbone.json"
      backbone="$(json "$OUT/resnet18.backbone.json" id)"
      run_job resnet18 --dataset "$DATASET" --backbone "$backbone" \
        --classes 2,3,4,6,7 --samples-per-class 8 --val-fraction 0.25 \
        --max-test-samples 20 --freeze frozen --epochs 1 --batch-size 8 \
        --lr 0.01 --seed 1
      ;;
    *) log "unknown model '$model' in BENCH_MODELS (compact, resnet18)"; exit 1 ;;
  esac
  MODEL_ID[$model]="$(json "$OUT/$model.job.json" result.model_id)"
  # --- 3. export -------------------------------------------------------------
  tlctl --json model get "${MODEL_ID[$model]}" > "$OUT/$model.model.json"
  tlctl model export "${MODEL_ID[$model]}" --out "$OUT/$model.pt" > /dev/null
  log "model $model: ${MODEL_ID[$model]} exported to $OUT/$model.pt"
  # Per-model batcher settings (tlctl model deploy): on 2 CPU cores
  # resnet18 at 224 runs fewer images per second in big batches.
  batch_var="BENCH_MAX_BATCH_${model^^}"
  if [ -n "${!batch_var:-}" ]; then
    tlctl model deploy "${MODEL_ID[$model]}" --max-batch-size "${!batch_var}" > /dev/null
    log "model $model: deployed with --max-batch-size ${!batch_var}"
  fi
done

# One input per model at its size: a test image of class Pullover (label 2).
# Gray 28x28 PNG for the compact model (its own size); for resnet18 an RGB
# 224x224 JPEG, what a client would send it.
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

# --- 4. per model: in process, tlserve, peer --------------------------------
scrape() {  # scrape FILE: tlserve's /metrics now
  "$PY" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "http://127.0.0.1:$METRICS_PORT/metrics" > "$1" || log "cannot scrape tlserve's /metrics"
}

load() {  # load KIND TARGET MODEL_ID CONCURRENCY
  local logf="$OUT/$model.$1.c$4.log"
  # tlserve at c=1: its histograms over the window (warm-up included) say
  # where a call's time goes: queue, worker compute, the rest.
  [ "$1" = tlserve ] && [ "$4" = 1 ] && scrape "$OUT/$model.metrics.before"
  timeout $((WARMUP + SECONDS_W + TIMEOUT_MS / 1000 + 60)) "$BUILD/bench/load_gen" \
    --target="$2" --model="$3" "${input[@]}" --concurrency="$4" \
    --warmup_seconds="$WARMUP" --seconds="$SECONDS_W" --timeout_ms="$TIMEOUT_MS" \
    --top_k=3 --allow_errors > "$logf" 2>&1 || log "load_gen $1 c=$4 exited $?"
  grep -E '^  (throughput|latency|error)' "$logf" | sed "s/^/  [$model $1 c=$4]/" >&2 || true
  record "$logf" model="$model" server="$1" concurrency="$4"
  [ "$1" = tlserve ] && [ "$4" = 1 ] && scrape "$OUT/$model.metrics.after"
  return 0
}

for model in $MODELS; do
  id="${MODEL_ID[$model]}"
  c="$(json "$OUT/$model.model.json" input_spec.channels)"
  h="$(json "$OUT/$model.model.json" input_spec.height)"
  w="$(json "$OUT/$model.model.json" input_spec.width)"
  if [ "$INPUT" = tensor ]; then
    input=(--tensor_shape="1,$c,$h,$w" --dtype=FP32)
  elif [ "$h" -le 28 ]; then
    input=(--image="$OUT/input_28.png")
  else
    input=(--image="$OUT/input_224.jpg")
  fi

  log "$model: in-process forward, [1,$c,$h,$w], $THREADS threads"
  timeout $((LAT_SECONDS + 120)) "$BUILD/bench/model_latency" --model="$OUT/$model.pt" \
    --shape="1,$c,$h,$w" --threads="$THREADS" --warmup_seconds=1 \
    --seconds="$LAT_SECONDS" > "$OUT/$model.inproc.log" 2>&1 || true
  record "$OUT/$model.inproc.log" model="$model" server=inproc concurrency=1
  if [ "$INPUT" = image ]; then
    # The worker's whole compute for one request, in process: what tlserve
    # adds beyond it at c=1 is gRPC, the batcher and the worker stream.
    log "$model: in-process worker compute (decode, fit, forward, top-k)"
    timeout $((LAT_SECONDS + 120)) "$BUILD/bench/model_latency" --model="$OUT/$model.pt" \
      --image="${input[0]#--image=}" --model_json="$OUT/$model.model.json" \
      --optimize="${BENCH_RUNNER_OPTIMIZE:-true}" --threads="$THREADS" \
      --warmup_seconds=1 --seconds="$LAT_SECONDS" > "$OUT/$model.runner.log" 2>&1 || true
    record "$OUT/$model.runner.log" model="$model" server=runner concurrency=1
  fi

  for conc in $CONCURRENCY; do load tlserve "$SERVER" "$id" "$conc"; done
  # The floor under any server at c=1: one gRPC hop between two processes
  # on this machine, same request, answered at once (tlserve makes two:
  # client to server, server to worker).
  log "$model: one gRPC hop, echo server in a child process, c=1"
  timeout $((WARMUP + SECONDS_W + 60)) "$BUILD/bench/load_gen" --echo --model="$id" \
    "${input[@]}" --concurrency=1 --warmup_seconds="$WARMUP" --seconds="$SECONDS_W" \
    > "$OUT/$model.echo.c1.log" 2>&1 || log "load_gen --echo exited $?"
  record "$OUT/$model.echo.c1.log" model="$model" server=echo concurrency=1

  peer_args=(--model="$OUT/$model.pt" --model_json="$OUT/$model.model.json"
             --port=0 --port_file="$OUT/peer.$model.port" --threads="$THREADS")
  [ -n "$PEER_WORKERS" ] && peer_args+=(--workers="$PEER_WORKERS")
  rm -f "$OUT/peer.$model.port"
  "$PY" bench/inference_peer_server.py "${peer_args[@]}" 2> "$OUT/peer.$model.log" &
  PEER_PID=$!
  PIDS+=("$PEER_PID")
  peer_port="$(wait_port_file "$OUT/peer.$model.port" "$PEER_PID" "$OUT/peer.$model.log")"
  # Same image, both servers: the peer must preprocess like tlserve, or the
  # comparison is of different work.
  img="$OUT/input_28.png"; [ "$h" -le 28 ] || img="$OUT/input_224.jpg"
  tlctl --json predict --model "$id" --image "$img" > "$OUT/$model.predict.tlserve.json"
  timeout 60 "$BUILD/client/tlctl" --server="127.0.0.1:$peer_port" --json predict \
    --model "$id" --image "$img" > "$OUT/$model.predict.peer.json"
  "$PY" - "$OUT/$model.predict.tlserve.json" "$OUT/$model.predict.peer.json" "$model" <<'EOF' >&2
import json, sys
a, b = (json.load(open(f))["predictions"][0] for f in sys.argv[1:3])
diff = max(abs(x - y) for x, y in zip(a["probabilities"], b["probabilities"]))
same = a["top"][0]["index"] == b["top"][0]["index"]
print(f"inference_bench: {sys.argv[3]}: tlserve and peer agree on top-1: {same}; "
      f"max |probability difference| {diff:.2e}" + ("" if same and diff < 1e-3 else "  <-- CHECK"))
EOF
  for conc in $CONCURRENCY; do load peer "127.0.0.1:$peer_port" "$id" "$conc"; done
  stop_pid "$PEER_PID"
  PIDS=("$SERVER_PID")
done

# --- 5. the table -------------------------------------------------------------
LOAD_END="$(cut -d' ' -f1 /proc/loadavg)"
ids=(); for model in $MODELS; do ids+=("$model=${MODEL_ID[$model]}"); done
"$PY" - "$RESULTS" "$THREADS" "$INPUT" "$WARMUP" "$SECONDS_W" "$LOAD_START" "$LOAD_END" "$OUT" "${ids[@]}" <<'EOF' | tee "$OUT/table.md"
import json, os, re, sys
ids = dict(a.split("=", 1) for a in sys.argv[9:])

def means(model):
    """Mean ms per call (per batch for compute) over tlserve's c=1 window."""
    files = [os.path.join(sys.argv[8], f"{model}.metrics.{w}") for w in ("before", "after")]
    if not all(os.path.exists(f) for f in files):
        return None
    def read(f):
        d = {}
        for line in open(f):
            m = re.match(r'(tlserve_inference_\w+_duration_seconds)_(sum|count)\{(.*)\} (\S+)$', line)
            if m and f'model="{ids.get(model)}"' in m.group(3):
                d[(m.group(1), m.group(2))] = float(m.group(4))
        return d
    a, b = (read(f) for f in files)
    out = {}
    for name in ("request", "queue", "compute"):
        key = f"tlserve_inference_{name}_duration_seconds"
        n = b.get((key, "count"), 0) - a.get((key, "count"), 0)
        if n > 0:
            out[name] = 1000 * (b[(key, "sum")] - a.get((key, "sum"), 0)) / n
    return out
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["bench_model"], r["bench_server"], r["bench_concurrency"]): r for r in rows}
models = list(dict.fromkeys(r["bench_model"] for r in rows))
concs = sorted({r["bench_concurrency"] for r in rows
                if r["bench_server"] not in ("inproc", "runner", "echo")})
print(f"\nInference, {sys.argv[2]} LibTorch threads each, input {sys.argv[3]}, "
      f"closed loop, {sys.argv[4]} s warmup + {sys.argv[5]} s per point; "
      f"1-min load average {sys.argv[6]} at start, {sys.argv[7]} at end\n")
print("| model | conc | tlserve req/s | p50 ms | p99 ms | peer req/s | p50 ms | p99 ms "
      "| req/s tlserve/peer | c=1 p50 tlserve/in-proc | c=1 p50 peer/in-proc | errors tlserve/peer |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
fmt = lambda v, f="%.1f": (f % v) if isinstance(v, (int, float)) else "-"
for m in models:
    inproc = by.get((m, "inproc", 1), {})
    for c in concs:
        t = by.get((m, "tlserve", c), {}); p = by.get((m, "peer", c), {})
        ratio = (t["throughput_rps"] / p["throughput_rps"]
                 if t.get("throughput_rps") and p.get("throughput_rps") else None)
        ip50 = inproc.get("p50_ms")
        rt = t["p50_ms"] / ip50 if c == 1 and ip50 and t.get("p50_ms") else None
        rp = p["p50_ms"] / ip50 if c == 1 and ip50 and p.get("p50_ms") else None
        print(f"| {m} | {c} | {fmt(t.get('throughput_rps'))} | {fmt(t.get('p50_ms'), '%.2f')} "
              f"| {fmt(t.get('p99_ms'), '%.2f')} | {fmt(p.get('throughput_rps'))} "
              f"| {fmt(p.get('p50_ms'), '%.2f')} | {fmt(p.get('p99_ms'), '%.2f')} "
              f"| {fmt(ratio, '%.2fx')} | {fmt(rt, '%.2fx')} | {fmt(rp, '%.2fx')} "
              f"| {t.get('errors', '-')}/{p.get('errors', '-')} |")
for m in models:
    i = by.get((m, "inproc", 1), {})
    print(f"\n{m}: in-process forward p50 {fmt(i.get('p50_ms'), '%.2f')} ms, "
          f"p99 {fmt(i.get('p99_ms'), '%.2f')} ms ({fmt(i.get('throughput_rps'))} forwards/s)", end="")
    w = by.get((m, "runner", 1))
    if w:
        print(f"; the worker's compute for one request in process (decode, fit, "
              f"forward, top-k) p50 {fmt(w.get('p50_ms'), '%.2f')} ms", end="")
    e = by.get((m, "echo", 1))
    if e:
        print(f"; one gRPC hop between two processes (an echo server, same "
              f"request) p50 {fmt(e.get('p50_ms'), '%.3f')} ms", end="")
    s = means(m)
    if s:
        print(f"; tlserve at c=1, mean per call in the server "
              f"{fmt(s.get('request'), '%.2f')} ms, of which queued "
              f"{fmt(s.get('queue'), '%.2f')} ms and the worker's compute "
              f"{fmt(s.get('compute'), '%.2f')} ms", end="")
print()
EOF
