# syntax=docker/dockerfile:1
# tlserve images, built from Debian 12 packages (docs/deploy.md):
#
#   docker build --target server -t tlserve/server:0.1.0 .
#   docker build --target worker -t tlserve/worker:0.1.0 .
#   docker build --target worker-cuda -t tlserve/worker-cuda:0.1.0 \
#       --build-context libtorch=/path/to/libtorch \
#       --build-context cuda=/usr/local/cuda .
#
# server and worker are separate images with one entrypoint each, so a
# server image carries no LibTorch. worker-cuda is the GPU worker: the same
# sources built against a CUDA LibTorch given as a build context (nothing is
# downloaded during the build). scripts/check-dockerfile.py checks this file
# (tests/deploy runs it).

# Pinned: a moving tag would change the libraries under a rebuilt image.
ARG DEBIAN_IMAGE=debian:12.11-slim

# --- build: the same package list and CMake build as `make` --------------
FROM ${DEBIAN_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The dependency layer is cached until the package list changes.
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
RUN /src/scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release \
        -DTLSERVE_BUILD_TESTS=OFF -DTLSERVE_BUILD_BENCH=OFF \
    && cmake --build /build -j"$(nproc)" --target tlserve tlworker tlctl \
    && install -D -m 0755 -t /out/server /build/server/tlserve /build/client/tlctl \
    && install -D -m 0755 -t /out/worker /build/worker/tlworker /build/client/tlctl \
    && scripts/runtime-packages.sh /out/server/* > /out/server-packages.txt \
    && scripts/runtime-packages.sh /out/worker/* > /out/worker-packages.txt

# --- runtime base: a user and nothing else -------------------------------
FROM ${DEBIAN_IMAGE} AS runtime
RUN groupadd --system --gid 10001 tlserve \
    && useradd --system --uid 10001 --gid tlserve --home-dir /var/lib/tlserve \
        --no-create-home --shell /usr/sbin/nologin tlserve \
    && install -d -o tlserve -g tlserve /var/lib/tlserve /var/cache/tlworker

# --- worker-cuda: tlworker against a CUDA LibTorch (GPU machines) --------
# Not built by CI (no GPU, no CUDA there). Needs two build contexts:
#   libtorch: an unpacked LibTorch built for CUDA, cxx11 ABI, with its CUDA
#             libraries in lib/ (PyTorch's "libtorch-cxx11-abi-shared-with-
#             deps" archive for the toolkit's CUDA version).
#   cuda:     that CUDA toolkit (/usr/local/cuda), for Torch's CMake files.
# The CUDA user-space libraries come from LibTorch's lib/ and the driver
# from the host (NVIDIA container toolkit), so the image stays on Debian 12
# like the others.
FROM build AS build-cuda
COPY --from=cuda / /usr/local/cuda
COPY --from=libtorch / /opt/libtorch
ENV PATH=/usr/local/cuda/bin:${PATH}
RUN cmake -S . -B /build-cuda -DCMAKE_BUILD_TYPE=Release \
        -DTLSERVE_BUILD_TESTS=OFF -DTLSERVE_BUILD_BENCH=OFF -DTLSERVE_WITH_CUDA=ON \
        -DCMAKE_PREFIX_PATH=/opt/libtorch \
    && cmake --build /build-cuda -j"$(nproc)" --target tlworker \
    && install -D -m 0755 -t /out/worker-cuda /build-cuda/worker/tlworker /build/client/tlctl \
    && LD_LIBRARY_PATH=/opt/libtorch/lib \
        scripts/runtime-packages.sh /out/worker-cuda/* > /out/worker-cuda-packages.txt

FROM runtime AS worker-cuda
COPY --from=build-cuda /out/worker-cuda-packages.txt /tmp/packages.txt
RUN apt-get update \
    && xargs -a /tmp/packages.txt apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /tmp/packages.txt
COPY --from=build-cuda /opt/libtorch/lib/ /opt/libtorch/lib/
COPY --from=build-cuda /out/worker-cuda/ /usr/local/bin/
ENV LD_LIBRARY_PATH=/opt/libtorch/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /var/cache/tlworker
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/tlworker"]
CMD ["--cache_dir=/var/cache/tlworker", "--device=cuda:0"]

# --- worker: tlworker on the CPU ------------------------------------------
FROM runtime AS worker
COPY --from=build /out/worker-packages.txt /tmp/packages.txt
RUN apt-get update \
    && xargs -a /tmp/packages.txt apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /tmp/packages.txt
COPY --from=build /out/worker/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/cache/tlworker
# The worker dials the server ($TLSERVE_SERVER or --server) and listens on
# nothing, so it has no port and no health check.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/tlworker"]
CMD ["--cache_dir=/var/cache/tlworker", "--device=cpu"]

# --- server: tlserve (and tlctl for `kubectl exec ... tlctl`) ------------
# Last, so that a plain `docker build .` makes the server image.
FROM runtime AS server
COPY --from=build /out/server-packages.txt /tmp/packages.txt
# sqlite3: for backup-data-dir.sh (docs/operations.md), run by kubectl exec.
RUN apt-get update \
    && xargs -a /tmp/packages.txt apt-get install -y --no-install-recommends sqlite3 \
    && rm -rf /var/lib/apt/lists/* /tmp/packages.txt
COPY --from=build /out/server/ /usr/local/bin/
COPY --from=build /src/scripts/backup-data-dir.sh /usr/local/bin/backup-data-dir.sh
USER 10001:10001
WORKDIR /var/lib/tlserve
# gRPC (with grpc.health.v1) and Prometheus /metrics.
EXPOSE 50051 9464
VOLUME ["/var/lib/tlserve"]
# For `docker run`; Kubernetes uses its own gRPC probes (deploy/base).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s \
    CMD ["/usr/local/bin/tlctl", "--server=127.0.0.1:50051", "health"]
ENTRYPOINT ["/usr/local/bin/tlserve"]
CMD ["--listen=0.0.0.0:50051", "--data_dir=/var/lib/tlserve", "--metrics_listen=0.0.0.0:9464"]
