#!/usr/bin/env python3
"""Overload and soak test of a zerank-server on loopback.

Run under scripts/with_server.sh, which starts the server (here with deliberately small
limits, see below); each round drives it past them with many concurrent clients, then within
them with a few (every phase bounded in request count and time), and reports: requests
sent, answered 2xx, rejected 429, errors (5xx and anything else), whether every request was
answered exactly once, the queue afterwards, health, and the server's RSS before, during and
after. Exits non-zero on any 5xx, transport error, unanswered request, non-empty queue or
unhealthy server.

    ZERANK_BINARY=target/release/zerank-server \\
    ZERANK_SERVER_ARGS="--model tests/fixtures/tiny --max-concurrent-requests 16 --max-queued-tokens 200000 --max-batch-pairs 32" \\
    scripts/with_server.sh python3 scripts/loadtest.py [--requests 2000] [--clients 64] \\
        [--steady-clients 8] [--seconds 120] [--soak-rounds 3]
"""

import argparse
import json
import sys
import time
import urllib.request

from loadkit import drive, metric, rss_kib, server_from_env


def body(i):
    docs = [f"document {d} of request {i}: " + "words of text " * (5 + (i * 7 + d) % 40) for d in range(2 + i % 30)]
    return json.dumps({"query": f"query {i}", "documents": docs, "top_n": 3}).encode(), min(3, len(docs))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64, help="clients in the overload phase of each round")
    parser.add_argument("--steady-clients", type=int, default=8, help="clients in the within-limits phase")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--soak-rounds", type=int, default=3)
    args = parser.parse_args()
    base, pid = server_from_env()

    rss_start = rss_kib(pid)
    totals = {"sent": 0, "ok": 0, "rejected_429": 0, "errors": 0, "skipped": 0}
    failures = []
    requests = [body(i) for i in range(args.requests)]
    for round_number in range(1, args.soak_rounds + 1):
        for phase, clients in (("overload", args.clients), ("steady", args.steady_clients)):
            started = time.time()
            answers, peak = drive(base, [b for b, _ in requests], clients,
                                  deadline=started + args.seconds, pid=pid)
            statuses = []
            for i, (status, _, payload) in answers.items():
                if status == 200 and len(payload["results"]) != requests[i][1]:
                    status = "bad-body"
                statuses.append(status)
            counts = {
                "ok": statuses.count(200),
                "rejected_429": statuses.count(429),
                "skipped": statuses.count("skipped"),
            }
            counts["errors"] = len(statuses) - sum(counts.values())
            failures += [s for s in statuses if s not in (200, 429, "skipped")]
            sent = len(statuses) - counts["skipped"]
            totals["sent"] += sent
            for k, v in counts.items():
                totals[k] += v
            if phase == "steady" and counts["rejected_429"]:
                failures.append(f"round {round_number}: 429 within the limits")
            if len(answers) != args.requests:
                failures.append(f"round {round_number}: {len(answers)} of {args.requests} answered")
            print(json.dumps({"round": round_number, "phase": phase, "clients": clients, "sent": sent, **counts,
                              "seconds": round(time.time() - started, 1),
                              "rss_peak_mib": round(peak / 1024, 1),
                              "rss_after_mib": round(rss_kib(pid) / 1024, 1)}), flush=True)
    time.sleep(0.5)
    queue_pairs = metric(base, "zerank_queue_pairs")
    in_flight = metric(base, "zerank_requests_in_flight")
    healthy = urllib.request.urlopen(f"{base}/health", timeout=5).status == 200
    report = {**totals, "rss_start_mib": round(rss_start / 1024, 1),
              "rss_end_mib": round(rss_kib(pid) / 1024, 1),
              "queue_pairs_after": queue_pairs, "in_flight_after": in_flight, "healthy_after": healthy,
              "distinct_failures": sorted({str(f) for f in failures})}
    print(json.dumps(report, indent=2))
    if failures or queue_pairs != 0 or in_flight != 0 or not healthy:
        sys.exit(1)


if __name__ == "__main__":
    main()
