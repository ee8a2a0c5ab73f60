#!/usr/bin/env bash
# The whole CPU benchmark of BENCHMARKS.md, in one run on one machine: engine (prefix sharing
# off/on, short and long queries, the GEMM peak and the fraction of it reached, time inside and
# outside the matmul libraries, RSS; f32 and bf16, and bf16's fidelity), the HF reference on
# the same pairs in float32 and bfloat16, and the service under the load generator at several
# concurrencies (at SERVICE_DTYPE).
#
#   bash bench/run.sh [results.jsonl]        # default bench/results.jsonl (ignored by git)
#
# Knobs (environment): SHAPE (qwen3-0.6b), CHECKPOINT (/tmp/zerank-<shape>), DOCS (100: pairs
# per request and per engine/reference run), LONG_DOCS (24: pairs of the long-query run),
# CONCURRENCY (1,4,16), REQUESTS (16: requests per concurrency level, at least the level),
# REFERENCE_BATCHES (1,4,10), REFERENCE_DTYPES (float32,bfloat16), SERVICE_DTYPE (auto: bf16
# where the CPU has AVX512-BF16 or AMX and a bf16 GEMM library loads, else f32),
# CARGO_TARGET_DIR (where cargo builds; target). Needs python3 with torch, transformers and
# matplotlib (pip install torch transformers matplotlib; BENCHMARKS.md, "How to rerun") and, for
# the BLAS path, an installed OpenBLAS (apt install libopenblas0-pthread). MKL for the bf16 GEMM
# (pip install mkl) is found in python3's prefix, or set MKL_LIB to its lib directory.
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
# The bf16 GEMM library: PyPI's MKL puts libmkl_rt.so.3 in python3's prefix, off the loader's path.
mkl_lib="${MKL_LIB:-$(python3 -c 'import sys; print(sys.prefix)')/lib}"
with_mkl() { LD_LIBRARY_PATH="$mkl_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }
[ -f "$checkpoint/config.json" ] || python3 bench/make_checkpoint.py "$shape" "$checkpoint"
python3 bench/workload.py --documents "$docs" > "$work/short.jsonl"
python3 bench/workload.py --documents "${LONG_DOCS:-24}" --query-words 220 --document-words 70,80 > "$work/long.jsonl"

log() { tee -a "$out"; }
bf16_flags="$(grep -o -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | paste -sd, -)"
echo "{\"run\": \"$(date -u +%FT%TZ)\", \"shape\": \"$shape\", \"docs\": $docs, \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"cores\": $(nproc), \"bf16_instructions\": \"${bf16_flags:-none}\", \"load_average\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" | log

echo "== engine: short query, prefix sharing off/on" >&2
cargo bench --bench engine -- --model "$checkpoint" --pairs "$work/short.jsonl" --sharing off,on --workload short-query \
  --scores "$work/f32-scores.txt" | log
echo "== engine: bf16 (MKL or oneDNN where the CPU has AVX512-BF16 or AMX, else widened), fidelity against f32" >&2
with_mkl cargo bench --bench engine -- --model "$checkpoint" --pairs "$work/short.jsonl" --sharing off,on \
  --workload short-query --dtype bf16 --scores "$work/bf16-scores.txt" | log
python3 bench/fidelity.py "$work/f32-scores.txt" "$work/bf16-scores.txt" --label bf16-vs-f32 | log
echo "== engine: long query (~300 tokens), ~100-token documents, sharing off/on" >&2
cargo bench --bench engine -- --model "$checkpoint" --pairs "$work/long.jsonl" --sharing off,on --gemm-rows 0 --workload long-query | log

for dtype in $(echo "${REFERENCE_DTYPES:-float32,bfloat16}" | tr , ' '); do
  echo "== reference: transformers $dtype" >&2
  python3 bench/reference.py "$checkpoint" --pairs "$work/short.jsonl" --dtype "$dtype" \
    --batch-sizes "${REFERENCE_BATCHES:-1,4,10}" --predict 2>/dev/null | log
done

echo "== service: load generator" >&2
export ZERANK_BINARY="${CARGO_TARGET_DIR:-target}/release/zerank-server"
export ZERANK_SERVER_ARGS="--model $checkpoint --dtype ${SERVICE_DTYPE:-auto} --max-documents-per-request 10000 --request-timeout-secs 3600"
# The served dtype and matmul first, then the load generator's rows.
with_mkl scripts/with_server.sh sh -c "curl -fsS \$ZERANK_URL/info | python3 -c 'import json, sys; m = json.load(sys.stdin)[\"model\"]; print(json.dumps({\"runner\": \"service-model\", \"dtype\": m[\"dtype\"], \"dtype_choice\": m[\"dtype_choice\"], \"matmul\": m[\"matmul\"]}))' && python3 bench/loadgen.py --pairs $work/short.jsonl --documents $docs \
  --concurrency ${CONCURRENCY:-1,4,16} --requests ${REQUESTS:-16} && python3 scripts/loadkit.py rss" | log

echo "== charts (bench/plot.py)" >&2
python3 bench/plot.py "$out" bench/figures
