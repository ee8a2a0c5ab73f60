#!/bin/sh
# The compose stack's one-shot setup: creates the `zerank` rerank inference endpoint
# (hugging_face service, pointing at the reranker's TEI-shaped /rerank), indexes three
# articles, and runs a semantic rerank query, so that `docker compose up` ends with a
# working one in this container's log.
set -eu
es=${ES_URL:-http://elasticsearch:9200}
reranker=${RERANKER_URL:-http://zerank:8080/rerank}
json='content-type: application/json'

curl -fsS -X PUT "$es/_inference/rerank/zerank" -H "$json" -d "{
  \"service\": \"hugging_face\",
  \"service_settings\": {\"url\": \"$reranker\", \"api_key\": \"${ZERANK_API_KEY:-unused}\"}}"
echo
curl -fsS -X PUT "$es/articles" -H "$json" -d '{"mappings": {"properties": {"body": {"type": "text"}}}}' \
  || echo "(index articles exists)"
echo
for doc in \
  '{"body": "Paris is the capital and largest city of France."}' \
  '{"body": "France borders Belgium, Germany, Switzerland, Italy and Spain."}' \
  '{"body": "Berlin is the capital of Germany and its largest city."}'; do
  curl -fsS -X POST "$es/articles/_doc?refresh=true" -H "$json" -d "$doc" >/dev/null
done
echo "rerank: the match query's hits, reordered by the reranker:"
curl -fsS -X POST "$es/articles/_search?filter_path=hits.hits._score,hits.hits._source" -H "$json" -d '{
  "retriever": {"text_similarity_reranker": {
    "retriever": {"standard": {"query": {"match": {"body": "capital France"}}}},
    "field": "body", "inference_id": "zerank", "inference_text": "What is the capital of France?",
    "rank_window_size": 10}}}'
echo
