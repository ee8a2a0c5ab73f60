#!/usr/bin/env python3
"""Overload and soak test of a zerank-server on loopback.

Starts the server on the fixture checkpoint with deliberately small limits; each round drives
it past them with many concurrent clients, then within them with a few (every phase bounded
in request count and time), and reports:
requests sent, answered 2xx, rejected 429, errors (5xx and anything else), whether every
request was answered exactly once, the queue afterwards, health, and the server's RSS
before, during and after. Exits non-zero on any 5xx, transport error, unanswered request,
non-empty queue or unhealthy server.

    python3 scripts/loadtest.py [--binary target/release/zerank-server] [--requests 2000]
        [--clients 64] [--seconds 120] [--soak-rounds 3]
"""

import argparse
import concurrent.futures as futures
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(base, name):
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.split(" ")[0].split("{")[0] == name and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def one_request(base, i, deadline):
    if time.time() > deadline:
        return i, "skipped"
    docs = [f"document {d} of request {i}: " + "words of text " * (5 + (i * 7 + d) % 40) for d in range(2 + i % 30)]
    body = json.dumps({"query": f"query {i}", "documents": docs, "top_n": 3}).encode()
    req = urllib.request.Request(f"{base}/rerank", data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            payload = json.loads(r.read())
            ok = len(payload["results"]) == min(3, len(docs))
            return i, 200 if ok else "bad-body"
    except urllib.error.HTTPError as e:
        e.read()
        return i, e.code
    except Exception as e:  # transport errors count as failures
        return i, f"transport: {e.__class__.__name__}"


def drive(base, pid, count, clients, seconds):
    deadline = time.time() + seconds
    answers = {}
    peak = 0
    with futures.ThreadPoolExecutor(max_workers=clients) as pool:
        pending = [pool.submit(one_request, base, i, deadline) for i in range(count)]
        for done in futures.as_completed(pending):
            i, status = done.result()
            if i in answers:
                raise SystemExit(f"request {i} answered twice")
            answers[i] = status
            peak = max(peak, rss_kib(pid))
    return answers, peak


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "zerank-server"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64, help="clients in the overload phase of each round")
    parser.add_argument("--steady-clients", type=int, default=8, help="clients in the within-limits phase")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--soak-rounds", type=int, default=3)
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [args.binary, "--model", os.path.join(ROOT, "tests", "fixtures", "tiny"), "--device", "cpu",
         "--host", "127.0.0.1", "--port", str(port),
         "--max-concurrent-requests", "16", "--max-queued-tokens", "200000", "--max-batch-pairs", "32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        rss_start = rss_kib(server.pid)
        totals = {"sent": 0, "ok": 0, "rejected_429": 0, "errors": 0, "skipped": 0}
        rounds = []
        failures = []
        phases = [(r, phase, clients) for r in range(1, args.soak_rounds + 1)
                  for phase, clients in (("overload", args.clients), ("steady", args.steady_clients))]
        for round_number, phase, clients in phases:
            started = time.time()
            answers, peak = drive(base, server.pid, args.requests, clients, args.seconds)
            statuses = list(answers.values())
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
            rounds.append({"round": round_number, "phase": phase, "clients": clients, "sent": sent, **counts,
                           "seconds": round(time.time() - started, 1),
                           "rss_peak_mib": round(peak / 1024, 1),
                           "rss_after_mib": round(rss_kib(server.pid) / 1024, 1)})
            print(json.dumps(rounds[-1]), flush=True)
            if len(answers) != args.requests:
                failures.append(f"round {round_number}: {len(answers)} of {args.requests} answered")
        time.sleep(0.5)
        queue_pairs = metric(base, "zerank_queue_pairs")
        in_flight = metric(base, "zerank_requests_in_flight")
        healthy = urllib.request.urlopen(f"{base}/health", timeout=5).status == 200
        report = {**totals, "rss_start_mib": round(rss_start / 1024, 1),
                  "rss_end_mib": round(rss_kib(server.pid) / 1024, 1),
                  "queue_pairs_after": queue_pairs, "in_flight_after": in_flight, "healthy_after": healthy,
                  "distinct_failures": sorted({str(f) for f in failures})}
        print(json.dumps(report, indent=2))
        if failures or queue_pairs != 0 or in_flight != 0 or not healthy:
            sys.exit(1)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
