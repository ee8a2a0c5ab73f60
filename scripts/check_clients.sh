#!/usr/bin/env bash
# Runs the official ZeroEntropy and Cohere Python clients against the server on the
# fixture checkpoint. Usage: scripts/check_clients.sh [path/to/zerank-server]
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-${CARGO_TARGET_DIR:-target}/debug/zerank-server}
python3 -m pip install --quiet --disable-pip-version-check zeroentropy cohere
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$binary" --model tests/fixtures/tiny --host 127.0.0.1 --port "$port" --device cpu >/tmp/zerank-clients.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $server 2>/dev/null || { cat /tmp/zerank-clients.log; exit 1; }
  sleep 0.1
done
python3 scripts/check_clients.py "http://127.0.0.1:$port" tiny
