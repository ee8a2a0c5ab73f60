#!/usr/bin/env bash
# Checks docs/integrations.md against a live server on the fixture checkpoints:
#  - its Python and TypeScript recipes are the files of scripts/recipes/, verbatim;
#  - each runs with the pinned clients (Python ones in scripts/recipes/.venv, from
#    requirements.txt: their pins, cohere<6 and httpx<0.28, conflict with the newest
#    cohere that check_clients.sh puts in the system Python; npm ones from
#    package-lock.json) and prints the two best documents, best first;
#  - the requests Elasticsearch and OpenSearch send for its endpoint and connector
#    definitions are answered and parse as their code parses them.
# Usage: scripts/check_recipes.sh [path/to/zerank-server]
set -euo pipefail
cd "$(dirname "$0")/.."
export ZERANK_BINARY=${1:-${ZERANK_BINARY:-${CARGO_TARGET_DIR:-target}/debug/zerank-server}}
recipes=scripts/recipes

python3 scripts/check_recipes.py sync

[ -x "$recipes/.venv/bin/python" ] || python3 -m venv "$recipes/.venv"
"$recipes/.venv/bin/python" -m pip install -qq --disable-pip-version-check -r "$recipes/requirements.txt"
(cd "$recipes" && npm ci --no-audit --no-fund --loglevel=error && node_modules/.bin/tsc -p .)
echo "clients installed; TypeScript recipes type-check"

scripts/with_server.sh sh -c '
  python3 scripts/check_recipes.py run "$ZERANK_URL" tiny --python scripts/recipes/.venv/bin/python --tsx scripts/recipes/node_modules/.bin/tsx &&
  python3 scripts/check_search_engines.py "$ZERANK_URL" tiny docs/integrations.md'
