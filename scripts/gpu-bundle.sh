#!/usr/bin/env bash
# Packs what a CUDA build of tlserve needs on a GPU machine that has CUDA,
# a compiler, CMake and a python3 with PyTorch, but neither network nor
# gRPC, Protobuf, Abseil, prometheus-cpp, SQLite, libjpeg-turbo or
# libarchive: their Debian 12 packages (apt-get download, no install) and
# the Fashion-MNIST files, into .gpu/ (ignored by git). Run it here, once;
# then carry .gpu to the GPU machine and run bench/run_gpu_bench.sh there.
#
#   scripts/gpu-bundle.sh            # writes .gpu/debs and .gpu/data
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.gpu
# The build's packages (scripts/install-deps.sh), less LibTorch (PyTorch's
# comes with CUDA) and the tools CI needs only here.
BUILD_PACKAGES=(
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libsqlite3-dev libgtest-dev libgmock-dev
  libssl-dev zlib1g-dev libpng-dev libturbojpeg0-dev libarchive-dev
)
# What any Linux with a C++ compiler already has, or that only libraries
# tlserve never loads (curl's protocols) would need: unpacking a second
# libc or libstdc++ beside the system's breaks every program.
SKIP='^(libc6|libc6-dev|libc-dev-bin|libcrypt1|libcrypt-dev|gcc-[0-9]+-base|libgcc-s1|libstdc\+\+6|linux-libc-dev|libnsl2|libnsl-dev|libtirpc.*|rpcsvc-proto|pkgconf.*|libpkgconf3|libicu[0-9]+|libxml2|libssl3|zlib1g|libzstd1|liblzma5|libbz2-1.0|liblz4-1|libacl1|libffi8|libgmp10|libgnutls30|libp11-kit0|libtasn1-6|libidn2-0|libunistring2|libhogweed6|libnettle8|libkrb5-3|libkrb5support0|libk5crypto3|libgssapi-krb5-2|libkeyutils1|libcom-err2|libldap-2.5-0|libsasl2-2|libsasl2-modules-db|libdb5.3|librtmp1|libssh2-1|libpsl5|libnghttp2-14|libbrotli1)$'

closure=$(apt-cache depends --recurse --no-recommends --no-suggests \
            --no-conflicts --no-breaks --no-replaces --no-enhances \
            "${BUILD_PACKAGES[@]}" | grep -v '^[ <]' | sort -u | grep -Ev "$SKIP")
mkdir -p "$DEST/debs" "$DEST/data"
(cd "$DEST/debs" && rm -f ./*.deb && apt-get download $closure)
echo "gpu-bundle: $(ls "$DEST/debs" | wc -l) packages, $(du -sh "$DEST/debs" | cut -f1) in $DEST/debs"

# The benchmark's images: Fashion-MNIST (Debian's dataset-fashion-mnist).
data=/usr/share/datasets/fashion-mnist
[ -f "$data/t10k-images-idx3-ubyte.gz" ] || {
  echo "gpu-bundle: $data is missing: apt-get install dataset-fashion-mnist" >&2
  exit 1
}
cp "$data"/*-ubyte.gz "$DEST/data/"
echo "gpu-bundle: $(du -sh "$DEST" | cut -f1) in $DEST; carry it: run(carry=[\".gpu\"], ...)"
