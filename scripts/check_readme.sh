#!/usr/bin/env bash
# Runs every `curl ... localhost:8080 ...` line of README.md against the server on the
# fixture checkpoint; each must answer 2xx. Usage: scripts/check_readme.sh [path/to/zerank-server]
set -euo pipefail
cd "$(dirname "$0")/.."
export ZERANK_BINARY=${1:-${CARGO_TARGET_DIR:-target}/debug/zerank-server}
scripts/with_server.sh bash -c '
  set -euo pipefail
  count=0
  while IFS= read -r line; do
    command=${line%%#*}
    command=${command//localhost:8080/${ZERANK_URL#http://}}
    command=${command/curl -s /curl -sf -o /dev/null }
    eval "$command" || { echo "README example failed: $line"; exit 1; }
    count=$((count + 1))
  done < <(grep -E "^curl -s localhost:8080" README.md)
  echo "$count README curl examples answered 2xx"
  [ "$count" -ge 10 ]
'
