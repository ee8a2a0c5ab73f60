#!/usr/bin/env bash
# Runs the official ZeroEntropy and Cohere Python clients against the server on the
# fixture checkpoint. Usage: scripts/check_clients.sh [path/to/zerank-server]
set -euo pipefail
cd "$(dirname "$0")/.."
export ZERANK_BINARY=${1:-${CARGO_TARGET_DIR:-target}/debug/zerank-server}
python3 -m pip install --quiet --disable-pip-version-check zeroentropy cohere
scripts/with_server.sh sh -c 'python3 scripts/check_clients.py "$ZERANK_URL" tiny'
