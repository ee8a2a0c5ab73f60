#!/usr/bin/env bash
# Runs every `curl ... localhost:8080 ...` line of README.md against the server on the
# fixtures: each must answer 2xx, with the keys and token counts README shows. Then runs
# README's marked blocks (the Quick start's fixture server and offline run, the offline
# scoring sequence) as written, with this binary on PATH as `zerank-server`.
# Usage: scripts/check_readme.sh [path/to/zerank-server]
set -euo pipefail
cd "$(dirname "$0")/.."
export ZERANK_BINARY=${1:-${CARGO_TARGET_DIR:-target}/debug/zerank-server}
scripts/with_server.sh python3 scripts/check_readme.py
