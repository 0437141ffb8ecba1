#!/usr/bin/env bash
# Installs the Debian 12 packages tlserve builds and runs with, when they are
# missing. Idempotent: with everything present it changes nothing and makes
# no network call. Runs as root or through sudo.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libtorch-dev prometheus-cpp-dev libsqlite3-dev
  libgtest-dev libgmock-dev libssl-dev zlib1g-dev
  libpng-dev libturbojpeg0-dev libarchive-dev
  python3-torch python3-torchvision python3-grpcio python3-protobuf
  # LibTorch's matrix products (linear heads) go through the system BLAS:
  # the reference one runs them at 3.6 GFLOP/s, OpenBLAS at about 90; the
  # OpenMP build shares LibTorch's OpenMP threads.
  libopenblas0-openmp
  dataset-fashion-mnist
  # tests/deploy: yamllint, promtool (from prometheus), PyYAML.
  yamllint prometheus python3-yaml
  # scripts/backup-data-dir.sh (and its test): SQLite's online backup.
  sqlite3
  # make sanitize: clang with its ASan, UBSan and libFuzzer runtimes.
  clang libclang-rt-14-dev
)
# tests/deploy renders deploy/'s overlays with kubectl; Debian's (1.20) only
# where there is none, so that a newer kubectl is never replaced.
command -v kubectl >/dev/null || PACKAGES+=(kubernetes-client)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo" >&2; exit 1; }
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
