import os

from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

BASE_URL = os.environ.get("ZERANK_URL", "http://localhost:8080")

nodes = [
    NodeWithScore(node=TextNode(text="Paris is the capital of France.")),
    NodeWithScore(node=TextNode(text="Berlin is the capital of Germany.")),
    NodeWithScore(node=TextNode(text="The Eiffel Tower is in Paris.")),
    NodeWithScore(node=TextNode(text="France is in Western Europe.")),
]
# TEI's API has no model field: the server's first model answers
reranker = TextEmbeddingInference(base_url=BASE_URL, top_n=2)
for node in reranker.postprocess_nodes(nodes, query_str="What is the capital of France?"):
    print(f"{node.score:.4f}  {node.node.get_content()}")
