#!/usr/bin/env python3
"""Replays, against a running zerank-server, the HTTP requests that Elasticsearch and
OpenSearch send for the recipes of docs/integrations.md, and parses the answers the way
their code does. Neither engine runs here, so this is the check that the recipes work.

    python3 scripts/check_search_engines.py URL MODEL [docs/integrations.md]

The inference-endpoint and connector definitions are read from docs/integrations.md (the
JSON of the heredoc after each `<!-- search-engine: NAME -->` marker), so the templates and
JSON paths checked are the ones the docs show; their URL's scheme and host are replaced by
URL, and the served name `zerank-1-small` by MODEL.

What each engine sends and how it parses the answer, from its source:

Elasticsearch, `hugging_face` service, rerank task (8.19, 9.1+), repo elastic/elasticsearch,
x-pack/plugin/inference/src/main/java/org/elasticsearch/xpack/inference/services/huggingface/:
  - request/rerank/HuggingFaceRerankRequestEntity.java: the body is compact JSON with fields
    in this order: `texts`, `query`, then `return_text` and `top_n` only when the call or
    the endpoint's task settings give them (its test, HuggingFaceRerankRequestEntityTests:
    `{"texts":["texts"],"query":"query"}`).
  - request/rerank/HuggingFaceRerankRequest.java: POST to the endpoint's `url`,
    `Content-Type: application/json`, `Authorization: Bearer <api_key>`.
  - response/HuggingFaceRerankResponseEntity.java: the answer must be a top-level array;
    each element an object whose only fields are `index` (int), `score` or
    `relevance_score` (number), `text` (string) or `document` (object with `text`); any
    other field is an error (throwUnknownField). Results are sorted by score, descending,
    and cut to `top_n` when the request had one.
Elasticsearch, `custom` service, rerank task (8.19, 9.1+), services/custom/:
  - request/CustomRequest.java, request/RerankParameters.java, request/RequestParameters.java:
    the `request` template is filled by plain text substitution: `${input}` is the
    documents as a JSON array, `${query}` the query as a JSON string (RerankParametersTests:
    `"query" -> "\"query_value\""`), `${top_n}` and `${return_documents}` only when the call
    gives them, `${name}` from `secret_parameters` and task settings. A placeholder left
    over is an error (common/ValidatingSubstitutor.java), and CustomService.java's
    validateConfiguration() fills the template at PUT time with `test query` and no
    top_n, so a template with `${top_n}` is refused when the endpoint is created.
  - response/RerankResponseParser.java, response/BaseCustomResponseParser.java: the answer
    is read as a JSON object (XContentParser.map()); `relevance_score` and
    `reranked_index` are JSON paths (`$.results[*].relevance_score`) that must give lists
    of numbers of the same length.
Elasticsearch, both services:
  - services/validation/SimpleServiceIntegrationValidator.java (used for the rerank task by
    ModelValidatorBuilder.java): PUT _inference first reranks query `test query` against
    the single input `how big`, and refuses the endpoint unless that works.
  - rank/textsimilarity/TextSimilarityRankFeaturePhaseRankCoordinatorContext.java: the
    `text_similarity_reranker` retriever calls the endpoint with the query and every hit's
    field, no top_n and no return_documents, then sets `scores[index] = relevance_score`
    and fails unless there are exactly as many scores as hits.
OpenSearch, ml-commons HTTP connector with the Cohere rerank functions (2.12+; 2.15+ for a
private address), repo opensearch-project/ml-commons:
  - common/.../connector/functions/preprocess/CohereRerankPreProcessFunction.java: the
    parameters are `query` (the text), `documents` (Gson's JSON array) and `top_n` (the
    number of documents, so that every document gets a score).
  - ml-algorithms/.../remote/ConnectorUtils.java (escapeRemoteInferenceInputData): a
    parameter that is not a JSON object or array is JSON-escaped (commons-text escapeJson).
  - common/.../connector/HttpConnector.java (createPayload): `${parameters.NAME}` of the
    action's `request_body` replaced by those parameters and the connector's `parameters`.
  - ConnectorUtils.processOutput + common/.../connector/MLPostProcessFunction.java: the
    answer is read with JsonPath `$.results` (json-smart: an integer literal is an
    Integer, a decimal of at most 18 characters a Double); CohereRerankPostProcessFunction.java
    requires `index` and `relevance_score` in each result, casts them to Integer and
    Double, and puts `scores[index]` into an array as long as the results list.
  - neural-search MLOpenSearchRerankProcessor.java / MLCommonsClientAccessor.inferenceSimilarity:
    one score per hit, in hit order (the `similarity` tensors).
"""

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

from check_recipes import DOCUMENTS, QUERY  # the same pairs as the client recipes
DOCS_MODEL = "zerank-1-small"


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def docs_definitions(path):
    """NAME -> the JSON of the heredoc in the code block after `<!-- search-engine: NAME -->`."""
    text = open(path, encoding="utf-8").read()
    found = {}
    for match in re.finditer(r"<!-- search-engine: ([\w-]+) -->\s*```\w*\n(.*?)\n```", text, re.S):
        heredoc = re.search(r"<<'EOF'\n(.*?)\nEOF", match.group(2), re.S)
        check(heredoc, f"{match.group(1)}: no <<'EOF' heredoc in its code block")
        found[match.group(1)] = json.loads(heredoc.group(1))
    return found


def live_url(docs_url, base):
    """The docs' endpoint URL on the server under test: same path, URL's scheme and host."""
    return base.rstrip("/") + urllib.parse.urlsplit(docs_url).path


def post(url, body: bytes, headers):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# ---------------------------------------------------------------- Elasticsearch ----


def xcontent_json(value):
    """What Elasticsearch's XContentBuilder / JsonUtils.toJson write: compact JSON, UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def es_hugging_face_body(query, texts, return_text=None, top_n=None):
    body = {"texts": texts, "query": query}  # HuggingFaceRerankRequestEntity's field order
    if return_text is not None:
        body["return_text"] = return_text
    if top_n is not None:
        body["top_n"] = top_n
    return xcontent_json(body).encode()


def es_hugging_face_parse(raw: bytes, top_n=None):
    """HuggingFaceRerankResponseEntity.fromResponse: [(index, score, text)], best first."""
    answer = json.loads(raw)
    check(isinstance(answer, list), f"hugging_face: the answer must be a top-level array, got {raw[:200]!r}")
    ranked = []
    for element in answer:
        check(isinstance(element, dict), f"hugging_face: element {element!r} is not an object")
        index, score, text = -1, -1.0, None
        for field, value in element.items():
            if field == "index":
                check(isinstance(value, int) and not isinstance(value, bool), f"hugging_face: index {value!r}")
                index = value
            elif field in ("score", "relevance_score"):
                check(isinstance(value, (int, float)) and not isinstance(value, bool), f"hugging_face: {field} {value!r}")
                score = float(value)
            elif field == "text":
                check(isinstance(value, str), f"hugging_face: text {value!r}")
                text = value
            elif field == "document":
                check(isinstance(value, dict), f"hugging_face: document {value!r} is not an object")
                text = value.get("text", text)
            else:
                raise Failure(f"hugging_face: unknown field [{field}] (Elasticsearch throws on it): {element}")
        check(index != -1, f"hugging_face: no index in {element}")
        check(score != -1.0, f"hugging_face: no score in {element}")
        ranked.append((index, score, text))
    ranked.sort(key=lambda r: r[1], reverse=True)
    return ranked if top_n is None else ranked[:top_n]


def es_retriever_scores(ranked, hits):
    """TextSimilarityRankFeaturePhaseRankCoordinatorContext.extractScoresFromRankedDocs."""
    check(len(ranked) == hits, f"Reranker input document count and returned score count mismatch: [{hits}] vs [{len(ranked)}]")
    scores = [None] * hits
    for index, score, _ in ranked:
        check(0 <= index < hits, f"index {index} out of range for {hits} hits")
        scores[index] = score
    check(None not in scores, f"some hits got no score: {scores}")
    return scores


def check_es_hugging_face(definition, base, model):
    settings = definition["service_settings"]
    check(definition["service"] == "hugging_face", "es-hugging-face: service must be hugging_face")
    url = live_url(settings["url"], base)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {settings['api_key']}"}
    task = definition.get("task_settings", {})

    def call(query, texts, return_documents=None, top_n=None):
        # The call's own values win over the endpoint's task settings.
        return_text = return_documents if return_documents is not None else task.get("return_documents")
        top_n = top_n if top_n is not None else task.get("top_n")
        status, raw = post(url, es_hugging_face_body(query, texts, return_text, top_n), headers)
        check(status == 200, f"hugging_face: {status} {raw[:300]!r}")
        return es_hugging_face_parse(raw, top_n)

    ranked = call("test query", ["how big"])  # PUT _inference's validation call
    check(len(ranked) == 1, f"hugging_face validation call: {ranked}")
    # text_similarity_reranker: every hit, no top_n, no return_documents
    scores = es_retriever_scores(call(QUERY, DOCUMENTS), len(DOCUMENTS))
    # POST _inference/rerank with top_n and return_documents
    top = call(QUERY, DOCUMENTS, return_documents=True, top_n=2)
    check(len(top) == 2 and all(text == DOCUMENTS[i] for i, _, text in top), f"hugging_face top 2 with text: {top}")
    print(f"elasticsearch hugging_face ({url}): validation call, retriever scores {fmt(scores)}, top 2 with text ok")
    return scores


def json_path(value, path):
    """The JSON paths of Elasticsearch's MapPathExtractor that recipes use: `$.a.b[*].c`."""
    check(path.startswith("$."), f"JSON path {path} must start with $.")
    nodes, many = [value], False
    for part in path[2:].split("."):
        match = re.fullmatch(r"(\w+)(\[\*\])?", part)
        check(match, f"unsupported JSON path part {part} in {path}")
        name = match.group(1)
        for node in nodes:
            check(isinstance(node, dict) and name in node, f"{path}: no field {name} in {str(node)[:200]}")
        nodes = [node[name] for node in nodes]
        if match.group(2):
            check(all(isinstance(node, list) for node in nodes), f"{path}: {name} is not a list")
            nodes, many = [item for node in nodes for item in node], True
    return nodes if many else nodes[0]


def fill_template(template, params, what):
    """Elasticsearch's ValidatingSubstitutor: `${name}` replaced, none may be left."""
    filled = re.sub(r"\$\{([^}]*)\}", lambda m: params.get(m.group(1), m.group(0)), template)
    left = re.search(r"\$\{.*?\}", filled)
    check(not left, f"Found placeholder [{left and left.group()}] in field [{what}] after replacement call")
    return filled


def check_es_custom(definition, base, model):
    settings = definition["service_settings"]
    check(definition["service"] == "custom", "es-custom: service must be custom")
    template = settings["request"].replace(json.dumps(DOCS_MODEL), json.dumps(model))
    parser = settings["response"]["json_parser"]
    string_params = dict(settings.get("secret_parameters", {}))
    string_params.update({k: v for k, v in definition.get("task_settings", {}).get("parameters", {}).items() if isinstance(v, str)})
    json_params = {k: xcontent_json(v) for k, v in settings.get("secret_parameters", {}).items()}
    json_params.update({k: xcontent_json(v) for k, v in definition.get("task_settings", {}).get("parameters", {}).items()})
    url = fill_template(live_url(settings["url"], base), string_params, "url")
    headers = {"Content-Type": "application/json; charset=UTF-8"}  # XContentType.JSON.mediaType(), unless overridden
    for name, value in settings.get("headers", {}).items():
        headers[name] = fill_template(value, string_params, f"header.{name}")

    def body(query, texts, top_n=None, return_documents=None):
        params = dict(json_params, input=xcontent_json(texts), query=xcontent_json(query))
        if top_n is not None:
            params["top_n"] = xcontent_json(top_n)
        if return_documents is not None:
            params["return_documents"] = xcontent_json(return_documents)
        return fill_template(template, params, "request")

    body("test query", ["test input"])  # CustomService.validateConfiguration at PUT time

    def call(query, texts):
        status, raw = post(url, body(query, texts).encode(), headers)
        check(status == 200, f"custom: {status} {raw[:300]!r}")
        answer = json.loads(raw)
        check(isinstance(answer, dict), "custom: the answer must be a JSON object (XContentParser.map)")
        scores = json_path(answer, parser["relevance_score"])
        check(isinstance(scores, list) and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores),
              f"custom: relevance_score path gave {scores}")
        if "reranked_index" in parser:
            indices = json_path(answer, parser["reranked_index"])
            check(isinstance(indices, list) and all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in indices),
                  f"custom: reranked_index path gave {indices}")
            check(len(indices) == len(scores), f"The number of index fields [{len(indices)}] was not the same as the number of scores [{len(scores)}]")
        else:
            indices = list(range(len(scores)))
        return [(int(i), float(s), None) for i, s in zip(indices, scores)]

    check(len(call("test query", ["how big"])) == 1, "custom: validation call")
    scores = es_retriever_scores(call(QUERY, DOCUMENTS), len(DOCUMENTS))
    print(f"elasticsearch custom ({url}): template filled, validation call, retriever scores {fmt(scores)}")
    return scores


# ------------------------------------------------------------------- OpenSearch ----


def commons_text_escape_json(text):
    """org.apache.commons.text.StringEscapeUtils.escapeJson."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\/':
            out.append("\\" + ch)
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif code < 32 or code > 0x7F:  # JavaUnicodeEscaper.outsideOf(32, 0x7f), UTF-16 units
            units = ch.encode("utf-16-be")
            out.extend("\\u" + units[i:i + 2].hex().upper() for i in range(0, len(units), 2))
        else:
            out.append(ch)
    return "".join(out)


def is_json_object_or_array(text):
    """ml-commons StringUtils.isJson: a JSON object or array."""
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def gson_json(value):
    """ml-commons' Gson (disableHtmlEscaping): compact JSON, non-ASCII as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_smart_load(raw: bytes):
    """JsonPath's json-smart: integers stay Integer/Long, decimals of at most 18 characters
    become Double (longer ones BigDecimal), which this records by type."""

    class Double(float):
        pass

    class Big(float):
        pass

    def parse_float(literal):
        return Double(literal) if len(literal) <= 18 else Big(literal)

    return json.loads(raw, parse_float=parse_float), Double


def check_opensearch(definition, base, model):
    check(definition.get("protocol") == "http", "opensearch-connector: protocol must be http")
    action = next(a for a in definition["actions"] if a["action_type"] == "predict")
    check(action["pre_process_function"] == "connector.pre_process.cohere.rerank", "pre_process_function")
    check(action["post_process_function"] == "connector.post_process.cohere.rerank", "post_process_function")
    url = live_url(action["url"], base)
    connector_params = dict(definition.get("parameters", {}))
    if connector_params.get("model") == DOCS_MODEL:
        connector_params["model"] = model
    credential = definition.get("credential", {})
    headers = {"Content-Type": "application/json"}
    for name, value in action.get("headers", {}).items():
        headers[name] = re.sub(r"\$\{credential\.(\w+)\}", lambda m: credential[m.group(1)], value)

    def predict(query, documents):
        # CohereRerankPreProcessFunction, then escapeRemoteInferenceInputData
        params = {"query": query, "documents": gson_json(documents), "top_n": gson_json(len(documents))}
        params = {k: v if is_json_object_or_array(v) else commons_text_escape_json(v) for k, v in params.items()}
        merged = dict(connector_params, **params)
        payload = re.sub(r"\$\{parameters\.([\w.]+)\}", lambda m: merged.get(m.group(1), m.group(0)), action["request_body"])
        check("${parameters." not in payload, f"opensearch: placeholder left in payload {payload}")
        check(is_json_object_or_array(payload), f"opensearch: Invalid payload: {payload}")
        status, raw = post(url, payload.encode(), headers)
        check(status == 200, f"opensearch: {status} {raw[:300]!r}")
        answer, Double = json_smart_load(raw)
        results = json_path(answer, "$.results")  # MLPostProcessFunction's filter for cohere.rerank
        check(isinstance(results, list) and results and isinstance(results[0], dict), "Post process function input is not a List of Map.")
        check("index" in results[0] and "relevance_score" in results[0], "The rerank result should contain index and relevance_score.")
        scores = [None] * len(results)
        for result in results:
            index, score = result.get("index"), result.get("relevance_score")
            check(type(index) is int and -2**31 <= index < 2**31, f"opensearch: (Integer) cast of index {index!r} fails")
            check(type(score) is Double, f"opensearch: (Double) cast of relevance_score {score!r} fails (json-smart reads it as {type(score).__name__})")
            check(0 <= index < len(scores), f"opensearch: ArrayIndexOutOfBounds: index {index} of {len(scores)} results")
            scores[index] = float(score)
        check(len(scores) == len(documents) and None not in scores, f"opensearch: not one score per document: {scores}")
        return scores

    # The rerank processor's call; the docs' _predict example sends the same parameters.
    scores = predict(QUERY, DOCUMENTS)
    print(f"opensearch ml-commons connector ({url}): pre/post-processed, similarity scores in hit order {fmt(scores)}")
    return scores


def fmt(scores):
    return "[" + ", ".join(f"{s:.4f}" for s in scores) + "]"


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.split("\n\n")[1])
    base, model = sys.argv[1].rstrip("/"), sys.argv[2]
    definitions = docs_definitions(sys.argv[3] if len(sys.argv) == 4 else "docs/integrations.md")
    expected = {"es-hugging-face", "es-custom", "opensearch-connector"}
    check(expected <= set(definitions), f"docs/integrations.md lacks the search-engine blocks {sorted(expected - set(definitions))}")

    # The reference: the Cohere-shaped answer for the same query, documents and model.
    status, raw = post(f"{base}/v1/rerank", json.dumps({"model": model, "query": QUERY, "documents": DOCUMENTS}).encode(),
                       {"Content-Type": "application/json"})
    check(status == 200, f"/v1/rerank: {status} {raw[:300]!r}")
    reference = [None] * len(DOCUMENTS)
    for result in json.loads(raw)["results"]:
        reference[result["index"]] = result["relevance_score"]

    hf = check_es_hugging_face(definitions["es-hugging-face"], base, model)
    custom = check_es_custom(definitions["es-custom"], base, model)
    opensearch = check_opensearch(definitions["opensearch-connector"], base, model)
    for name, scores in (("hugging_face", hf), ("custom", custom), ("opensearch", opensearch)):
        check(all(abs(a - b) < 1e-6 for a, b in zip(scores, reference)), f"{name} scores {scores} differ from /v1/rerank's {reference}")
    print("search engines: every request answered and parsed as Elasticsearch and OpenSearch parse it; scores agree")


if __name__ == "__main__":
    try:
        main()
    except Failure as failure:
        sys.exit(f"FAILED: {failure}")
