import os

from haystack import Document
from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker

BASE_URL = os.environ.get("ZERANK_URL", "http://localhost:8080")

documents = [
    Document(content="Paris is the capital of France."),
    Document(content="Berlin is the capital of Germany."),
    Document(content="The Eiffel Tower is in Paris."),
    Document(content="France is in Western Europe."),
]
# TEI's API has no model field: the server's first model answers
ranker = HuggingFaceTEIRanker(url=BASE_URL, top_k=2)
for doc in ranker.run(query="What is the capital of France?", documents=documents)["documents"]:
    print(f"{doc.score:.4f}  {doc.content}")
