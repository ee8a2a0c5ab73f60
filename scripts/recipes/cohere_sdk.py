import os

import cohere

BASE_URL = os.environ.get("ZERANK_URL", "http://localhost:8080")
MODEL = os.environ.get("ZERANK_MODEL", "zerank-1-small")

documents = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "The Eiffel Tower is in Paris.",
    "France is in Western Europe.",
]
# api_key: the server's --api-key, if it has one
co = cohere.ClientV2(api_key="unused", base_url=BASE_URL)
response = co.rerank(model=MODEL, query="What is the capital of France?", documents=documents, top_n=2)
for result in response.results:
    print(f"{result.relevance_score:.4f}  {documents[result.index]}")
