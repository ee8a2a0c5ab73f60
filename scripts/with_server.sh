#!/usr/bin/env bash
# Starts zerank-server on the fixture checkpoints on a free loopback port (tiny, the default
# model, and the native Qwen3-Reranker-like one as `qwen3-reranker`), waits until it is
# healthy, runs the given command with ZERANK_URL set, and stops the server.
#   ZERANK_BINARY=target/debug/zerank-server scripts/with_server.sh COMMAND [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${ZERANK_BINARY:-${CARGO_TARGET_DIR:-target}/debug/zerank-server}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
"$binary" --model tests/fixtures/tiny --model tests/fixtures/native-yes-no \
  --served-model-names tiny --served-model-names qwen3-reranker \
  --host 127.0.0.1 --port "$port" --device cpu >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
ZERANK_URL="http://127.0.0.1:$port" "$@"
