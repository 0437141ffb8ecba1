#!/usr/bin/env bash
# Issue 8's GPU benchmark, in one call on a GPU machine: builds tlserve for
# CUDA (scripts/gpu-build.sh, from the packages scripts/gpu-bundle.sh put
# in .gpu), runs the GPU tests, then measures, in the same run on the same
# GPU, torchvision resnet50 at 224x224, batch 256, bf16 autocast:
#   - the GPU's bf16 matrix rate (8192^3 products), for the roofline;
#   - the PyTorch peer (bench/gpu_peer.py): full fine-tune steps eager and
#     under torch.compile, and a frozen backbone fed JPEGs by a DataLoader;
#   - tlserve's trainer (bench/fine_tune_speed): a full fine-tune and a
#     frozen-backbone job on Fashion-MNIST at the same size, batch,
#     precision and optimizer (SGD, momentum 0.9), and the frozen job again
#     on a tar of JPEGs that it decodes inside the timed span.
# Every figure is also a `RESULT {json}` line; the whole log is written to
# $OUT/gpu_bench.log (or /tmp/gpu_bench.log).
#
# From a development machine with the device tool:
#   scripts/gpu-bundle.sh
#   run(carry=[".gpu"], timeout_s=600, command="bench/run_gpu_bench.sh")
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${OUT:-/tmp}
exec > >(tee "$LOG_DIR/gpu_bench.log") 2>&1
PY=${PYTHON:-$(command -v python3)}
DATA=${TLSERVE_GPU_DATA:-.gpu/data}
BUILD=${TLSERVE_GPU_BUILD:-build-gpu}
EPOCHS=${GPU_BENCH_EPOCHS:-3}
PER_CLASS=${GPU_BENCH_PER_CLASS:-1000}
THREADS=$(nproc)

step() { echo; echo "== $* ($(date +%T))"; }

step "GPU"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv

step "matrix rate"
"$PY" - <<'PY'
import json, time, torch
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(10):
    a @ b
torch.cuda.synchronize()
seconds = (time.perf_counter() - start) / 10
print("RESULT " + json.dumps({"what": "matmul_bf16", "n": n,
                              "tflops": round(2 * n**3 / seconds / 1e12, 1),
                              "gpu": torch.cuda.get_device_name()}))
PY

step "build"
scripts/gpu-build.sh "$BUILD" || { echo "gpu-bench: the build failed"; exit 1; }
# shellcheck disable=SC1091
source "$BUILD/env.sh"

step "GPU tests"
"$BUILD/tests/worker/gpu_preprocess_test"
"$BUILD/tests/worker/worker_test" \
  --gtest_filter='ComputeDevice*:AutocastScope*:MicroBatch*:Precision*:TrainerDevice*'

step "peer: PyTorch eager and torch.compile, frozen backbone on a DataLoader"
"$PY" bench/gpu_peer.py --mode both --compile --data-dir "$DATA" \
  --workers "$((THREADS > 2 ? THREADS - 2 : 1))"

step "tlserve trainer: full fine-tune and frozen backbone"
"$BUILD/bench/fine_tune_speed" --device=cuda:0 --precision=bf16 \
  --arch=resnet50 --size=224 --batch_size=256 --per_class="$PER_CLASS" \
  --epochs="$EPOCHS" --modes=full,frozen --optimizer=sgd \
  --threads="$THREADS" --loader_threads="$((THREADS > 4 ? THREADS - 4 : 1))" \
  --peer=false --python="$PY" --data_dir="$DATA" --source_dir="$PWD" \
  --work_dir=/tmp/tlserve_gpu_bench --verbose

# The frozen figure from JPEG bytes, like the peer's DataLoader: Fashion-MNIST
# upsampled to 224 and JPEG-encoded at quality 90, decoded inside the timed
# span, one epoch (every image decoded and through the backbone once, as in
# the peer's steps); E2E_IMG_S is the figure.
step "tlserve trainer: frozen backbone from JPEG bytes"
"$BUILD/bench/data_pipeline" --format=jpeg --modes= --count=$((PER_CLASS * 12)) \
  --size=224 --quality=90 --peer=false --data_dir="$DATA" \
  --work_dir=/tmp/tlserve_gpu_bench
"$BUILD/bench/fine_tune_speed" --device=cuda:0 --precision=bf16 \
  --arch=resnet50 --size=224 --batch_size=256 --per_class="$PER_CLASS" \
  --epochs=1 --modes=frozen --optimizer=sgd --threads="$THREADS" \
  --train_archive="/tmp/tlserve_gpu_bench/fmnist_$((PER_CLASS * 12))_224_jpeg_q90.tar" \
  --decode_threads="$THREADS" --peer=false --python="$PY" \
  --source_dir="$PWD" --work_dir=/tmp/tlserve_gpu_bench --verbose

step "not measured here"
echo "inference through the service at concurrency 64: the inference runner has no GPU path yet"
echo "gpu-bench: done; log in $LOG_DIR/gpu_bench.log"
