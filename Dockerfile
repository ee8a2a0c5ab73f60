# zerank-server image. Targets:
#   docker build -t zerank-server .                       # CPU (default, target `cpu`)
#   docker build -t zerank-server:cuda --target cuda .    # NVIDIA GPUs (Hopper by default)
# Run: docker run -p 8080:8080 -v zerank-cache:/data zerank-server --model zeroentropy/zerank-1-small

ARG RUST_VERSION=1.95
ARG CUDA_VERSION=12.8.1

# ---- CPU build: dependencies first, in their own cached layer ------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build-cpu
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src src
COPY openapi.yaml ./
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# ---- CUDA build ---------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS build-cuda
ARG RUST_VERSION
ARG CUDA_COMPUTE_CAP=90
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} PATH=/root/.cargo/bin:${PATH}
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --features cuda && rm -rf src
COPY src src
COPY openapi.yaml ./
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --features cuda

# ---- Runtime images: small, non-root, model cache on a volume ------------------------------
FROM debian:bookworm-slim AS cpu
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --uid 10001 --create-home zerank \
    && mkdir -p /data && chown zerank /data
COPY --from=build-cpu /src/target/release/zerank-server /usr/local/bin/zerank-server
COPY config /etc/zerank
ENV HF_HOME=/data ZERANK_CONFIG=/etc/zerank/default.toml ZERANK_HOST=0.0.0.0 ZERANK_PORT=8080
USER zerank
VOLUME /data
EXPOSE 8080
# Generous start period: the first start downloads the model.
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["zerank-server"]

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04 AS cuda
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --uid 10001 --create-home zerank \
    && mkdir -p /data && chown zerank /data
COPY --from=build-cuda /src/target/release/zerank-server /usr/local/bin/zerank-server
COPY config /etc/zerank
ENV HF_HOME=/data ZERANK_CONFIG=/etc/zerank/default.toml ZERANK_HOST=0.0.0.0 ZERANK_PORT=8080
USER zerank
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["zerank-server"]

# The default target is the CPU image.
FROM cpu
