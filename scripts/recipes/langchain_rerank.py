import os

from langchain_cohere import CohereRerank
from langchain_core.documents import Document

BASE_URL = os.environ.get("ZERANK_URL", "http://localhost:8080")
MODEL = os.environ.get("ZERANK_MODEL", "zerank-1-small")

documents = [
    Document(page_content="Paris is the capital of France."),
    Document(page_content="Berlin is the capital of Germany."),
    Document(page_content="The Eiffel Tower is in Paris."),
    Document(page_content="France is in Western Europe."),
]
reranker = CohereRerank(base_url=BASE_URL, cohere_api_key="unused", model=MODEL, top_n=2)
for doc in reranker.compress_documents(documents, query="What is the capital of France?"):
    print(f"{doc.metadata['relevance_score']:.4f}  {doc.page_content}")
