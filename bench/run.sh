#!/usr/bin/env bash
# The whole CPU benchmark of BENCHMARKS.md, in one run on one machine: engine (prefix sharing
# off/on, short and long queries, sgemm roofline, RSS; bf16 and its fidelity), the HF reference on the same pairs,
# and the service under the load generator at several concurrencies.
#
#   bash bench/run.sh [results.jsonl]
#
# Knobs (environment): SHAPE (qwen3-0.6b), CHECKPOINT (/tmp/zerank-<shape>), DOCS (100: pairs
# per request and per engine/reference run), LONG_DOCS (24: pairs of the long-query run),
# CONCURRENCY (1,4,16), REQUESTS (16: requests per concurrency level, at least the level),
# REFERENCE_BATCHES (1,4,10). Needs python3 with torch, transformers and matplotlib (pip install
# torch transformers matplotlib) and, for the BLAS path, an installed OpenBLAS (apt install libopenblas0-pthread).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results.jsonl}"
shape="${SHAPE:-qwen3-0.6b}"
checkpoint="${CHECKPOINT:-/tmp/zerank-$shape}"
docs="${DOCS:-100}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The reference and the charts need these; find out now, not after the engine runs.
python3 -c "import torch, transformers, matplotlib" 2>/dev/null || {
  echo "bench/run.sh: python3 ($(command -v python3)) lacks torch, transformers or matplotlib: pip install torch transformers matplotlib, or put a virtualenv that has them first on PATH" >&2
  exit 1
}
cargo build --release --bin zerank-server
cargo bench --bench engine --no-run
[ -f "$checkpoint/config.json" ] || python3 bench/make_checkpoint.py "$shape" "$checkpoint"
python3 bench/workload.py --documents "$docs" > "$work/short.jsonl"
python3 bench/workload.py --documents "${LONG_DOCS:-24}" --query-words 220 --document-words 70,80 > "$work/long.jsonl"

log() { tee -a "$out"; }
echo "{\"run\": \"$(date -u +%FT%TZ)\", \"shape\": \"$shape\", \"docs\": $docs, \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"cores\": $(nproc)}" | log

echo "== engine: short query, prefix sharing off/on" >&2
cargo bench --bench engine -- --model "$checkpoint" --pairs "$work/short.jsonl" --sharing off,on --workload short-query \
  --scores "$work/f32-scores.txt" | log
echo "== engine: bf16 (oneDNN where the CPU has AVX512-BF16 or AMX, else widened), fidelity against f32" >&2
cargo bench --bench engine -- --model "$checkpoint" --pairs "$work/short.jsonl" --sharing on --gemm-rows 0 \
  --workload short-query --dtype bf16 --scores "$work/bf16-scores.txt" | log
python3 bench/fidelity.py "$work/f32-scores.txt" "$work/bf16-scores.txt" --label bf16-vs-f32 | log
echo "== engine: long query (~300 tokens), ~100-token documents, sharing off/on" >&2
cargo bench --bench engine -- --model "$checkpoint" --pairs "$work/long.jsonl" --sharing off,on --gemm-rows 0 --workload long-query | log

echo "== reference: transformers float32" >&2
python3 bench/reference.py "$checkpoint" --pairs "$work/short.jsonl" \
  --batch-sizes "${REFERENCE_BATCHES:-1,4,10}" --predict 2>/dev/null | log

echo "== service: load generator" >&2
export ZERANK_BINARY=target/release/zerank-server
export ZERANK_SERVER_ARGS="--model $checkpoint --max-documents-per-request 10000 --request-timeout-secs 3600"
scripts/with_server.sh sh -c "python3 bench/loadgen.py --pairs $work/short.jsonl --documents $docs \
  --concurrency ${CONCURRENCY:-1,4,16} --requests ${REQUESTS:-16} && python3 scripts/loadkit.py rss" | log

echo "== charts (bench/plot.py)" >&2
python3 bench/plot.py "$out" bench/figures
