#!/usr/bin/env python3
"""Drives the running zerank-server with the benchmark workload (one query, N documents per
request) at each concurrency; reports p50/p95 latency, pairs/s, tokens/s, and the server's
batch figures from /metrics (deltas over the run). Run under scripts/with_server.sh.

    scripts/with_server.sh python3 bench/loadgen.py --pairs pairs.jsonl [--documents 100] [--concurrency 1,4,16] [--requests 16]

Request i sends the query of the first pair, tagged `[i]` at its start, with the documents of
the first N pairs rotated by i: requests differ as different users' do, so the server can
share a query prefix within a request but not across requests.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from loadkit import drive, metrics, server_from_env  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", required=True, help="JSON lines of {query, document} (bench/workload.py)")
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level (at least the level)")
    args = parser.parse_args()
    base, _ = server_from_env()
    with open(args.pairs) as f:
        pairs = [json.loads(line) for line in f if line.strip()][:args.documents]
    documents = [p["document"] for p in pairs]

    def body(i):
        rotated = documents[i % len(documents):] + documents[:i % len(documents)]
        return json.dumps({"query": f"[{i}] {pairs[0]['query']}", "documents": rotated}).encode()

    drive(base, [body(0)], 1, timeout=3600)  # warm-up
    sent = 1
    for level in [int(c) for c in args.concurrency.split(",")]:
        count = max(args.requests, level)
        before = metrics(base)
        started = time.perf_counter()
        answers, _ = drive(base, [body(i) for i in range(sent, sent + count)], level, timeout=3600)
        sent += count
        seconds = time.perf_counter() - started
        failed = [status for status, _, _ in answers.values() if status != 200]
        if failed:
            raise SystemExit(f"concurrency {level}: failed requests {failed}")
        after = metrics(base)

        def delta(name):
            return sum(v - before.get(k, 0.0) for k, v in after.items() if k.split("{")[0] == name)

        latencies = sorted(seconds_taken for _, seconds_taken, _ in answers.values())
        tokens = sum(payload["usage"]["total_tokens"] for _, _, payload in answers.values())
        batches = delta("zerank_batch_pairs_count")
        computed = delta("zerank_batch_computed_tokens_sum")
        prompt_tokens = delta("zerank_batch_tokens_sum")
        print(json.dumps({
            "runner": "service", "concurrency": level, "requests": count, "pairs": count * len(documents),
            "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(latencies[max(0, int(0.95 * len(latencies)) - 1)], 3),
            "pairs_per_s": round(count * len(documents) / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "mean_batch_pairs": round(delta("zerank_batch_pairs_sum") / batches, 1) if batches else None,
            "multi_request_batches": int(delta("zerank_multi_request_batches_total")),
            "shared_prefix_ratio": round(1 - computed / prompt_tokens, 3) if prompt_tokens else None,
        }), flush=True)


if __name__ == "__main__":
    main()
