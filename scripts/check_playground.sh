#!/usr/bin/env bash
# Drives the /docs playground in headless Chromium (Debian's, through Playwright for Python)
# against the server on the fixtures: the order, scores and tokens the page shows must be the
# API's. Runs twice: on an open server, and on one with an API key typed into the page.
# Usage: scripts/check_playground.sh [path/to/zerank-server]
# Screenshots: $PLAYGROUND_SCREENSHOT (default target/playground.png), and the keyed run's
# beside it (playground-key.png).
set -euo pipefail
cd "$(dirname "$0")/.."
export ZERANK_BINARY=${1:-${CARGO_TARGET_DIR:-target}/debug/zerank-server}
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# Only the Python package: it drives /usr/bin/chromium (`playwright install` would download
# a browser of its own).
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore playwright==1.65.2
screenshot=${PLAYGROUND_SCREENSHOT:-target/playground.png}
mkdir -p "$(dirname "$screenshot")"
scripts/with_server.sh python3 scripts/check_playground.py "$screenshot"
key=playground-$RANDOM$RANDOM
PLAYGROUND_API_KEY=$key ZERANK_SERVER_ARGS="--model tests/fixtures/tiny --served-model-names tiny --api-key $key" \
  scripts/with_server.sh python3 scripts/check_playground.py "${screenshot%.png}-key.png"
