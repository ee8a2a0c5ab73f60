# zerank-server image. Targets:
#   docker build -t zerank-server .                       # CPU (default, target `cpu`)
#   docker build -t zerank-server:cuda --target cuda .    # NVIDIA GPUs (Hopper by default)
# Run: docker run -p 8080:8080 -v zerank-cache:/data zerank-server --model zeroentropy/zerank-1-small

ARG RUST_VERSION=1.95
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# ---- CPU build: dependencies first, in their own cached layer ------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build-cpu
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/engine.rs \
    && cargo build --release --locked --features otlp && rm -rf src benches
COPY src src
COPY benches benches
COPY openapi.yaml ./
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --features otlp

# ---- CUDA build: scripts/build_cuda.sh, as outside Docker (toolkit from PyPI's wheels) ------
FROM rust:${RUST_VERSION}-bookworm AS build-cuda
ARG CUDA_COMPUTE_CAP=90
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} CARGO_TARGET_DIR=/src/target
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY scripts/build_cuda.sh scripts/
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/engine.rs \
    && PIP_BREAK_SYSTEM_PACKAGES=1 CUDA_TOOLKIT_DIR=/opt/cuda-toolkit scripts/build_cuda.sh --locked --features otlp \
    && rm -rf src benches
COPY src src
COPY benches benches
COPY openapi.yaml ./
RUN touch src/main.rs src/lib.rs \
    && PIP_BREAK_SYSTEM_PACKAGES=1 CUDA_TOOLKIT_DIR=/opt/cuda-toolkit scripts/build_cuda.sh --locked --features otlp

# ---- MKL from PyPI: the bf16 GEMM the CPU image runs (AMX and AVX512-BF16 kernels; the
# sequential layer, since the server splits each product across its own threads). Only the
# libraries that path loads: the runtime, core, LP64 interface, sequential layer, and the
# per-CPU kernels (about 450 MB). ---------------------------------------------------------
FROM python:3.12-slim-bookworm AS mkl
ARG MKL_VERSION=2026.2.1
RUN pip install --no-cache-dir --no-deps --prefix /opt/mkl "mkl==${MKL_VERSION}" \
    && mkdir /opt/mkl-runtime && cd /opt/mkl/lib \
    && cp -L libmkl_rt.so.3 libmkl_core.so.3 libmkl_intel_lp64.so.3 libmkl_sequential.so.3 \
       libmkl_def.so.3 libmkl_mc3.so.3 libmkl_avx2.so.3 libmkl_avx512.so.3 libmkl_avx10.so.3 \
       libmkl_vml_*.so.3 /opt/mkl-runtime/

# ---- Runtime images: small, non-root, model cache on a volume ------------------------------
FROM debian:bookworm-slim AS cpu
# OpenBLAS, MKL and oneDNN: the server loads them at run time, OpenBLAS for its f32 CPU
# matmuls (cpu_blas = "auto"), MKL for bf16 ones on CPUs with AVX512-BF16 or AMX, where
# dtype = "auto" runs bf16 (cpu_bf16_gemm = "auto"; oneDNN if MKL were missing: measured
# slower, BENCHMARKS.md).
COPY --from=mkl /opt/mkl-runtime/ /usr/local/lib/
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libopenblas0-pthread libdnnl2 \
    && rm -rf /var/lib/apt/lists/* && ldconfig && useradd --uid 10001 --create-home zerank \
    && mkdir -p /data && chown zerank /data
COPY --from=build-cpu /src/target/release/zerank-server /usr/local/bin/zerank-server
COPY config /etc/zerank
ENV HF_HOME=/data ZERANK_CONFIG=/etc/zerank/default.toml ZERANK_HOST=0.0.0.0 ZERANK_PORT=8080 \
    ZERANK_ADMIN_PORT=9090 ZERANK_ADMIN_HOST=0.0.0.0
USER zerank
VOLUME /data
# 9090: /health and /metrics only, outside max_connections (--admin-port), on every address of
# the container (--admin-host) for probes and scrapers from outside it; do not publish it.
EXPOSE 8080 9090
# Generous start period: the first start downloads the model.
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9090/health || exit 1
ENTRYPOINT ["zerank-server"]

# The CUDA 13 runtime libraries the binary needs: libcudart.so.13, libcublas(Lt).so.13,
# libcurand.so.10; libcuda.so.1 comes from the host's driver.
FROM ${CUDA_RUNTIME_IMAGE} AS cuda
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --uid 10001 --create-home zerank \
    && mkdir -p /data && chown zerank /data
COPY --from=build-cuda /src/target/release/zerank-server /usr/local/bin/zerank-server
COPY config /etc/zerank
ENV HF_HOME=/data ZERANK_CONFIG=/etc/zerank/default.toml ZERANK_HOST=0.0.0.0 ZERANK_PORT=8080 \
    ZERANK_ADMIN_PORT=9090 ZERANK_ADMIN_HOST=0.0.0.0
USER zerank
VOLUME /data
# 9090: /health and /metrics only, outside max_connections (--admin-port), on every address of
# the container (--admin-host) for probes and scrapers from outside it; do not publish it.
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9090/health || exit 1
ENTRYPOINT ["zerank-server"]

# The default target is the CPU image.
FROM cpu
