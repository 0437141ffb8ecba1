#!/usr/bin/env bash
# On a GPU machine (CUDA toolkit, a C++ compiler, CMake, and a python3 with
# a CUDA PyTorch; no network): unpacks the Debian packages that
# scripts/gpu-bundle.sh put in .gpu/debs into a prefix of their own
# (dpkg -x, nothing installed), then builds tlserve from these sources with
# TLSERVE_WITH_CUDA against PyTorch's LibTorch.
#
#   scripts/gpu-build.sh [BUILD_DIR]     # default build-gpu
#
# Then, in the same shell: `source build-gpu/env.sh` sets LD_LIBRARY_PATH
# for the unpacked libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build-gpu}
DEBS=${TLSERVE_GPU_DEBS:-.gpu/debs}
PREFIX=${TLSERVE_GPU_PREFIX:-/tmp/tlserve-gpu-deps}
PYTHON=${PYTHON:-$(command -v python3)}
ARCH_LIB=x86_64-linux-gnu

ls "$DEBS"/*.deb >/dev/null 2>&1 || {
  echo "gpu-build: no packages in $DEBS: run scripts/gpu-bundle.sh on a Debian 12 machine and carry .gpu" >&2
  exit 1
}
mkdir -p "$PREFIX"
for deb in "$DEBS"/*.deb; do dpkg -x "$deb" "$PREFIX"; done
LIB=$PREFIX/usr/lib/$ARCH_LIB
# Development links whose library the bundle leaves to the system (libssl,
# zlib): point them at the system's copy.
for link in "$LIB"/*.so; do
  [ -e "$link" ] && continue
  target=$(basename "$(readlink "$link")")
  for dir in /usr/lib/$ARCH_LIB /lib/$ARCH_LIB /usr/lib64 /lib64; do
    if [ -e "$dir/$target" ]; then ln -sf "$dir/$target" "$link"; break; fi
  done
done

TORCH_PREFIX=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
echo "gpu-build: torch $("$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda)'), nvcc $("$CUDA_HOME/bin/nvcc" --version | tail -1)"

mkdir -p "$BUILD"
cat > "$BUILD/env.sh" <<ENV
export LD_LIBRARY_PATH=$LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export PATH=$PREFIX/usr/bin:\$PATH
ENV
# shellcheck disable=SC1091
source "$BUILD/env.sh"
# Debian 12's libraries need its glibc (2.36) or newer: say so at once
# rather than as a link error half an hour into the build.
if ! "$PREFIX/usr/bin/protoc" --version >/dev/null 2>&1; then
  echo "gpu-build: the unpacked Debian 12 protoc does not run here ($(ldd --version | head -1)): this machine's C library is older than Debian 12's" >&2
  "$PREFIX/usr/bin/protoc" --version >&2 || true
  exit 1
fi

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
export CUDACXX=$CUDA_HOME/bin/nvcc
cmake -S . -B "$BUILD" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX/usr;$TORCH_PREFIX" \
  -DCMAKE_LIBRARY_PATH="$LIB" \
  -DProtobuf_PROTOC_EXECUTABLE="$PREFIX/usr/bin/protoc" \
  -DPython3_EXECUTABLE="$PYTHON" \
  -DCUDAToolkit_ROOT="$CUDA_HOME" \
  -DTLSERVE_WITH_CUDA=ON
cmake --build "$BUILD" -j"$(nproc)" --target \
  tlserve tlworker tlctl fine_tune_speed data_pipeline load_gen worker_test \
  gpu_preprocess_test
echo "gpu-build: built in $BUILD; source $BUILD/env.sh before running it"
