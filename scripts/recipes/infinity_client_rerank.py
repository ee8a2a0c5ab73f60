import os

from infinity_client import Client
from infinity_client.api.default import rerank
from infinity_client.models import RerankInput

BASE_URL = os.environ.get("ZERANK_URL", "http://localhost:8080")
MODEL = os.environ.get("ZERANK_MODEL", "zerank-1-small")

documents = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "The Eiffel Tower is in Paris.",
    "France is in Western Europe.",
]
client = Client(base_url=BASE_URL, raise_on_unexpected_status=True)
body = RerankInput(query="What is the capital of France?", documents=documents, top_n=2, model=MODEL)
result = rerank.sync(client=client, body=body)
for item in result.results:
    print(f"{item.relevance_score:.4f}  {documents[item.index]}")
