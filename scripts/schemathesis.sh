#!/usr/bin/env bash
# Fuzzes the live server against openapi.yaml with schemathesis: no 5xx, every status code,
# content type and response body as the spec says. Usage:
#   scripts/schemathesis.sh [path/to/zerank-server] [max examples per operation, default 30]
# Positive/negative conformance (a schema-valid request rejected) is left out: the one
# rule JSON Schema cannot state is that text_1 and text_2 of /score have matching lengths.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-${CARGO_TARGET_DIR:-target}/debug/zerank-server}
examples=${2:-30}
python3 -m pip install --quiet --disable-pip-version-check schemathesis
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$binary" --model tests/fixtures/tiny --host 127.0.0.1 --port "$port" --device cpu >/tmp/zerank-schemathesis.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $server 2>/dev/null || { cat /tmp/zerank-schemathesis.log; exit 1; }
  sleep 0.1
done
schemathesis run openapi.yaml --url "http://127.0.0.1:$port" --max-examples "$examples" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --seed 1
