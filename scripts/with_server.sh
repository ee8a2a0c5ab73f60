#!/usr/bin/env bash
# Starts zerank-server on a free loopback port, waits until it is healthy, runs the given
# command with ZERANK_URL and ZERANK_PID set, and stops the server. The one place scripts
# start a server.
#   ZERANK_BINARY=target/debug/zerank-server [ZERANK_SERVER_ARGS="--model DIR ..."] \
#     scripts/with_server.sh COMMAND [ARGS...]
# Without ZERANK_SERVER_ARGS it serves the fixture checkpoints: tiny, the default model, and
# the native Qwen3-Reranker-like one as `qwen3-reranker`.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${ZERANK_BINARY:-${CARGO_TARGET_DIR:-target}/debug/zerank-server}
default_args="--model tests/fixtures/tiny --model tests/fixtures/native-yes-no \
  --served-model-names tiny --served-model-names qwen3-reranker"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
# f32: the outputs the checks compare with (docs/integrations.md) are f32's, and `--dtype auto`
# takes bf16 on CPUs with AVX512-BF16 or AMX.
# shellcheck disable=SC2086 # the arguments are words
"$binary" ${ZERANK_SERVER_ARGS:-$default_args} --host 127.0.0.1 --port "$port" --device cpu --dtype f32 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 6000); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "the server never became healthy"; cat "$log"; exit 1; }
ZERANK_URL="http://127.0.0.1:$port" ZERANK_PID=$server "$@"
