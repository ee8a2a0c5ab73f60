#!/usr/bin/env python3
"""Point the official ZeroEntropy and Cohere Python clients at a running zerank-server.

    python3 scripts/check_clients.py http://127.0.0.1:8080 MODEL_NAME

Exits non-zero if any client fails or gets results out of shape or order.
"""

import sys

import cohere
from zeroentropy import ZeroEntropy

BASE, MODEL = sys.argv[1].rstrip("/"), sys.argv[2]
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "The Eiffel Tower is in Paris.",
]


def check(name, results, top_n):
    scores = [r.relevance_score for r in results]
    assert len(results) == top_n, (name, results)
    assert scores == sorted(scores, reverse=True), (name, scores)
    assert all(0.0 < s < 1.0 for s in scores), (name, scores)
    assert sorted(r.index for r in results) == sorted(set(r.index for r in results)), name
    print(f"{name}: ok {[(r.index, round(r.relevance_score, 4)) for r in results]}")
    return {r.index: r.relevance_score for r in results}


ze = ZeroEntropy(api_key="unused", base_url=f"{BASE}/v1")
ze_scores = check("zeroentropy", ze.models.rerank(model=MODEL, query=QUERY, documents=DOCUMENTS).results, 3)

v1 = cohere.Client(api_key="unused", base_url=BASE)
v1_scores = check("cohere v1", v1.rerank(model=MODEL, query=QUERY, documents=DOCUMENTS, top_n=2).results, 2)

v2 = cohere.ClientV2(api_key="unused", base_url=BASE)
v2_response = v2.rerank(model=MODEL, query=QUERY, documents=DOCUMENTS, top_n=3)
v2_scores = check("cohere v2", v2_response.results, 3)

for index, score in v1_scores.items():
    assert abs(score - ze_scores[index]) < 1e-6 and abs(score - v2_scores[index]) < 1e-6, index
print("all clients agree")
