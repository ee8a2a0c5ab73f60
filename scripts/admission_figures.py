#!/usr/bin/env python3
"""Admission's estimate against the rate the model really ran at, over a mixed workload.

Starts zerank-server (the binary given, default the debug build) on a checkpoint, sends
phases of requests (short documents, documents under a shared long query, a flood of
one-document requests, one request of long documents), and after each phase prints the
estimate (`zerank_estimated_tokens_per_second`) beside the phase's actual rate: the
tokens the forward computed per second of inference, from the metrics' sums. Usage:
    scripts/admission_figures.py [BINARY] [MODEL_DIR]
"""

import json
import subprocess
import sys
import time
import urllib.request

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/debug/zerank-server"
MODEL = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/tiny"
PORT = 18931
URL = f"http://127.0.0.1:{PORT}"


def get(path):
    with urllib.request.urlopen(URL + path, timeout=60) as reply:
        return reply.read().decode()


def rerank(query, documents):
    body = json.dumps({"query": query, "documents": documents}).encode()
    request = urllib.request.Request(
        URL + "/rerank", body, {"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def metric_sums():
    sums = {}
    for line in get("/metrics").splitlines():
        for name in (
            "zerank_batch_computed_tokens_sum",
            "zerank_inference_duration_seconds_sum",
            "zerank_estimated_tokens_per_second",
        ):
            if line.split("{")[0].split(" ")[0] == name:
                sums[name] = float(line.rsplit(" ", 1)[1])
    return sums


def words(n, seed):
    return " ".join(f"w{(seed * 31 + i * 7) % 97}" for i in range(n))


PHASES = [
    ("16 short documents x 8", lambda: [rerank("what is it?", [words(40, d) for d in range(16)]) for _ in range(8)]),
    ("16 documents under a long shared query x 8", lambda: [rerank(words(300, 1), [words(40, d) for d in range(16)]) for _ in range(8)]),
    ("200 one-document requests", lambda: [rerank("q", ["a short one"]) for _ in range(200)]),
    ("1 request of 64 long documents", lambda: [rerank("q", [words(400, d) for d in range(64)])]),
    ("16 short documents x 8, again", lambda: [rerank("what is it?", [words(40, d) for d in range(16)]) for _ in range(8)]),
]


def main():
    server = subprocess.Popen(
        [BINARY, "--model", MODEL, "--device", "cpu", "--dtype", "f32", "--port", str(PORT),
         "--score-cache-bytes", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                get("/health")
                break
            except OSError:
                time.sleep(0.2)
        before = metric_sums()
        print(f"warm-up estimate: {before['zerank_estimated_tokens_per_second']:.0f} units/s")
        print("| phase | statuses | actual computed tokens/s | estimate after |")
        print("|---|---|---|---|")
        for name, phase in PHASES:
            statuses = phase()
            after = metric_sums()
            tokens = after["zerank_batch_computed_tokens_sum"] - before["zerank_batch_computed_tokens_sum"]
            seconds = after["zerank_inference_duration_seconds_sum"] - before["zerank_inference_duration_seconds_sum"]
            counts = {s: statuses.count(s) for s in sorted(set(statuses))}
            actual = f"{tokens / seconds:.0f}" if seconds > 0 else "(nothing ran)"
            estimate = after["zerank_estimated_tokens_per_second"]
            print(f"| {name} | {counts} | {actual} | {estimate:.0f} |")
            before = after
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
