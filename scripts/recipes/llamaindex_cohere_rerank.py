import os

from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.cohere_rerank import CohereRerank

BASE_URL = os.environ.get("ZERANK_URL", "http://localhost:8080")
MODEL = os.environ.get("ZERANK_MODEL", "zerank-1-small")

nodes = [
    NodeWithScore(node=TextNode(text="Paris is the capital of France.")),
    NodeWithScore(node=TextNode(text="Berlin is the capital of Germany.")),
    NodeWithScore(node=TextNode(text="The Eiffel Tower is in Paris.")),
    NodeWithScore(node=TextNode(text="France is in Western Europe.")),
]
reranker = CohereRerank(model=MODEL, top_n=2, api_key="unused", base_url=BASE_URL)
for node in reranker.postprocess_nodes(nodes, query_str="What is the capital of France?"):
    print(f"{node.score:.4f}  {node.node.get_content()}")
