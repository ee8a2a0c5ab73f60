import os

from haystack import Document
from haystack.utils import Secret
from haystack_integrations.components.rankers.cohere import CohereRanker

BASE_URL = os.environ.get("ZERANK_URL", "http://localhost:8080")
MODEL = os.environ.get("ZERANK_MODEL", "zerank-1-small")

documents = [
    Document(content="Paris is the capital of France."),
    Document(content="Berlin is the capital of Germany."),
    Document(content="The Eiffel Tower is in Paris."),
    Document(content="France is in Western Europe."),
]
ranker = CohereRanker(model=MODEL, top_k=2, api_key=Secret.from_token("unused"), api_base_url=BASE_URL)
for doc in ranker.run(query="What is the capital of France?", documents=documents)["documents"]:
    print(f"{doc.score:.4f}  {doc.content}")
