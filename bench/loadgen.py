#!/usr/bin/env python3
"""Drives a running zerank-server with the benchmark workload (one query, N documents per
request) at each concurrency; reports p50/p95 latency, pairs/s, tokens/s, and the server's
batch figures from /metrics (deltas over the run). Loopback only, bounded.

    python3 bench/loadgen.py http://127.0.0.1:8080 --pairs pairs.jsonl [--documents 100] [--concurrency 1,4,16] [--requests 16]

Request i sends the query of the first pair, tagged `[i]` at its start, with the documents of
the first N pairs rotated by i: requests differ as different users' do, so the server can
share a query prefix within a request but not across requests.
"""

import argparse
import concurrent.futures as futures
import json
import statistics
import time
import urllib.request



def metrics(base):
    values = {}
    for line in urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def post(base, body):
    started = time.perf_counter()
    request = urllib.request.Request(f"{base}/rerank", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=3600) as response:
        payload = json.loads(response.read())
    return time.perf_counter() - started, payload["usage"]["total_tokens"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--pairs", required=True, help="JSON lines of {query, document} (bench/workload.py)")
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level (at least the level)")
    args = parser.parse_args()
    with open(args.pairs) as f:
        pairs = [json.loads(line) for line in f if line.strip()][:args.documents]
    args.documents = len(pairs)
    documents = [p["document"] for p in pairs]

    def body(i):
        rotated = documents[i % len(documents):] + documents[:i % len(documents)]
        return json.dumps({"query": f"[{i}] {pairs[0]['query']}", "documents": rotated}).encode()

    post(args.base, body(0))  # warm-up
    sent = 1
    for level in [int(c) for c in args.concurrency.split(",")]:
        count = max(args.requests, level)
        before = metrics(args.base)
        started = time.perf_counter()
        with futures.ThreadPoolExecutor(max_workers=level) as pool:
            results = list(pool.map(lambda i: post(args.base, body(i)), range(sent, sent + count)))
        sent += count
        seconds = time.perf_counter() - started
        after = metrics(args.base)
        delta = lambda name: after.get(name, 0.0) - before.get(name, 0.0)
        latencies = sorted(r[0] for r in results)
        tokens = sum(r[1] for r in results)
        batches = delta("zerank_batch_pairs_count")
        computed = delta("zerank_batch_computed_tokens_sum")
        prompt_tokens = delta("zerank_batch_tokens_sum")
        print(json.dumps({
            "runner": "service", "concurrency": level, "requests": count, "pairs": count * args.documents,
            "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(latencies[max(0, int(0.95 * len(latencies)) - 1)], 3),
            "pairs_per_s": round(count * args.documents / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "mean_batch_pairs": round(delta("zerank_batch_pairs_sum") / batches, 1) if batches else None,
            "multi_request_batches": int(delta("zerank_multi_request_batches_total")),
            "shared_prefix_ratio": round(1 - computed / prompt_tokens, 3) if prompt_tokens else None,
        }), flush=True)


if __name__ == "__main__":
    main()
