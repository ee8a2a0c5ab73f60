//! Every route answers in the shape its clients expect, with the engine's own scores.

use crate::common;

use common::server::{DOCUMENTS, QUERY, Reply, TestServer, close, engine_scores};
use common::{fixture, load};
use serde_json::{Value, json};

/// (0-1 score, raw) of each document against QUERY, by the engine alone.
fn expected() -> Vec<(f32, f32)> {
    engine_scores(&load(&fixture("tiny")), QUERY, &DOCUMENTS)
}

fn index(result: &Value) -> usize {
    result["index"].as_u64().unwrap() as usize
}

/// The id and timing headers every scoring answer carries.
fn assert_headers(reply: &Reply) {
    let id = reply.header("x-request-id").expect("x-request-id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    for header in ["x-queue-time", "x-inference-time", "x-total-time"] {
        let ms = reply.header(header).unwrap_or_else(|| panic!("{header}"));
        assert!(ms.parse::<u64>().is_ok(), "{header}: {ms}");
    }
}

#[test]
fn jina_and_cohere_v1_shapes_rank_with_the_engines_scores() {
    let expected = expected();
    let server = TestServer::start(|_| {});
    let mixed: Vec<Value> = DOCUMENTS
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                json!(d)
            } else {
                json!({ "text": d, "id": i })
            }
        })
        .collect();
    for path in ["/rerank", "/v1/rerank"] {
        let reply = server.post(
            path,
            &json!({ "query": QUERY, "documents": mixed, "return_documents": true }),
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert!(reply.text.starts_with("{\"results\""), "{}", reply.text);
        assert_headers(&reply);
        let body = reply.json();
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), DOCUMENTS.len());
        let mut previous = f64::INFINITY;
        for r in results {
            let score = r["relevance_score"].as_f64().unwrap();
            assert!(close(score, expected[index(r)].0), "{path} {r}");
            assert!(score <= previous);
            previous = score;
            assert_eq!(r["document"]["text"], DOCUMENTS[index(r)]);
        }
        // A local checkpoint answers to its directory's name, never its path.
        assert_eq!(body["model"], "tiny");
        let tokens = body["usage"]["total_tokens"].as_u64().unwrap();
        assert!(tokens > 20 * DOCUMENTS.len() as u64, "{tokens}");
        assert_eq!(body["usage"]["prompt_tokens"], tokens);
        assert_eq!(body["meta"]["api_version"]["version"], "1");
        assert_eq!(body["meta"]["billed_units"]["search_units"], 1);
        assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());
    }
}

#[test]
fn top_n_cuts_and_documents_are_off_by_default() {
    let server = TestServer::start(|_| {});
    for (top_n, count) in [
        (json!(null), 5),
        (json!(0), 5),
        (json!(2), 2),
        (json!(2.0), 2),
        (json!(50), 5),
    ] {
        let body = server
            .post(
                "/rerank",
                &json!({ "query": QUERY, "documents": DOCUMENTS, "top_n": top_n }),
            )
            .json();
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), count, "top_n {top_n}");
        assert!(results.iter().all(|r| r.get("document").is_none()));
        assert!(results.iter().all(|r| r.get("raw_score").is_none()));
    }
}

/// `raw_scores` adds each result's raw score to the object shapes (TEI's replaces the score).
#[test]
fn raw_scores_add_the_raw_score_to_object_shapes() {
    let expected = expected();
    let server = TestServer::start(|_| {});
    for path in ["/rerank", "/v1/rerank", "/v2/rerank", "/v1/models/rerank"] {
        let body = server
            .post(
                path,
                &json!({ "query": QUERY, "documents": DOCUMENTS, "raw_scores": true }),
            )
            .json();
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), DOCUMENTS.len(), "{path}");
        for r in results {
            let (score, raw) = expected[index(r)];
            assert!(
                close(r["relevance_score"].as_f64().unwrap(), score),
                "{path} {r}"
            );
            assert!(close(r["raw_score"].as_f64().unwrap(), raw), "{path} {r}");
        }
    }
}

#[test]
fn the_tei_shape_is_a_bare_array_with_raw_scores_and_texts_on_request() {
    let expected = expected();
    let server = TestServer::start(|_| {});
    let body = server
        .post("/rerank", &json!({ "query": QUERY, "texts": DOCUMENTS, "raw_scores": true, "return_text": true, "truncate": true, "truncation_direction": "Right", "top_n": 3 }))
        .json();
    let ranks = body.as_array().expect("TEI answers a bare array");
    assert_eq!(ranks.len(), 3);
    for r in ranks {
        assert!(close(r["score"].as_f64().unwrap(), expected[index(r)].1));
        assert_eq!(r["text"], DOCUMENTS[index(r)]);
    }
    let body = server
        .post("/rerank", &json!({ "query": QUERY, "texts": DOCUMENTS }))
        .json();
    let ranks = body.as_array().unwrap();
    assert_eq!(ranks.len(), DOCUMENTS.len());
    for r in ranks {
        assert!(close(r["score"].as_f64().unwrap(), expected[index(r)].0));
        assert!(r.get("text").is_none());
    }
}

#[test]
fn cohere_v2_and_zeroentropy_shapes() {
    let expected = expected();
    let server = TestServer::start(|_| {});
    let body = server
        .post(
            "/v2/rerank",
            &json!({ "model": "tiny", "query": QUERY, "documents": DOCUMENTS, "top_n": 2 }),
        )
        .json();
    assert_eq!(body["meta"]["api_version"]["version"], "2");
    assert_eq!(body["meta"]["billed_units"]["search_units"], 1);
    assert!(body.get("model").is_none() && body.get("usage").is_none());
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(close(
            r["relevance_score"].as_f64().unwrap(),
            expected[index(r)].0
        ));
    }
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());

    let body = server
        .post(
            "/v1/models/rerank",
            &json!({ "model": "tiny", "query": QUERY, "documents": DOCUMENTS, "latency": null }),
        )
        .json();
    assert_eq!(body["actual_latency_mode"], "fast");
    let (e2e, inference) = (
        body["e2e_latency"].as_f64().unwrap(),
        body["inference_latency"].as_f64().unwrap(),
    );
    assert!(inference > 0.0 && e2e >= inference, "{e2e} {inference}");
    let bytes: usize = DOCUMENTS.iter().map(|d| QUERY.len() + d.len()).sum();
    assert_eq!(body["total_bytes"], bytes);
    assert!(body["total_tokens"].as_u64().unwrap() > 20 * DOCUMENTS.len() as u64);
    for r in body["results"].as_array().unwrap() {
        assert!(close(
            r["relevance_score"].as_f64().unwrap(),
            expected[index(r)].0
        ));
    }
}

#[test]
fn the_vllm_score_shape_keeps_input_order() {
    let expected = expected();
    let engine = load(&fixture("tiny"));
    let server = TestServer::start(|_| {});
    let body = server
        .post("/score", &json!({ "text_1": QUERY, "text_2": DOCUMENTS }))
        .json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "tiny");
    assert!(body["id"].as_str().unwrap().starts_with("score-"));
    for (i, item) in body["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["object"], "score");
        assert!(close(item["score"].as_f64().unwrap(), expected[i].0));
    }
    assert_eq!(
        body["usage"]["prompt_tokens"],
        body["usage"]["total_tokens"]
    );
    let pairwise = server
        .post(
            "/v1/score",
            &json!({ "text_1": ["a query", QUERY], "text_2": ["a document", DOCUMENTS[0]] }),
        )
        .json();
    let alone = engine_scores(&engine, "a query", &["a document"]);
    assert!(close(
        pairwise["data"][0]["score"].as_f64().unwrap(),
        alone[0].0
    ));
    assert!(close(
        pairwise["data"][1]["score"].as_f64().unwrap(),
        expected[0].0
    ));
    server
        .post(
            "/score",
            &json!({ "text_1": ["a", "b"], "text_2": ["c", "d", "e"] }),
        )
        .assert_error(422, "validation");
}

#[test]
fn unknown_model_names_follow_the_policy() {
    // `any`: the first model serves, and the answer names it.
    let server = TestServer::start(|settings| {
        settings.server.model_name_policy = zerank_server::settings::ModelNamePolicy::Any;
    });
    for name in ["rerank-english-v3.0", "jina-reranker-v1-base-en"] {
        let body = server
            .post(
                "/v1/rerank",
                &json!({ "model": name, "query": QUERY, "documents": DOCUMENTS }),
            )
            .json();
        assert_eq!(body["model"], "tiny", "{body}");
        assert_eq!(body["results"].as_array().unwrap().len(), DOCUMENTS.len());
    }
    assert_eq!(server.metric("zerank_unknown_model_names_total"), 2.0);
    // Every shape names the model that served in `x-model`; those that can, in the body.
    let asked = "rerank-english-v3.0";
    let rerank = json!({ "model": asked, "query": QUERY, "documents": DOCUMENTS });
    let tei = json!({ "model": asked, "query": QUERY, "texts": DOCUMENTS });
    let score = json!({ "model": asked, "text_1": QUERY, "text_2": DOCUMENTS });
    for (path, body, model_in_body) in [
        ("/rerank", &rerank, true),
        ("/rerank", &tei, false),
        ("/v1/rerank", &rerank, true),
        ("/v2/rerank", &rerank, false),
        ("/v1/models/rerank", &rerank, true),
        ("/score", &score, true),
    ] {
        let reply = server.post(path, body);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        assert_eq!(reply.header("x-model"), Some("tiny"), "{path}");
        let answer = reply.json();
        if model_in_body {
            assert_eq!(answer["model"], "tiny", "{path}: {answer}");
        } else if let Some(object) = answer.as_object() {
            // Cohere v2's shape has no `model`; the TEI shape is a bare array.
            assert!(!object.contains_key("model"), "{path}: {answer}");
        } else {
            assert!(answer.is_array(), "{path}: {answer}");
        }
    }
    // `strict`, the default: 404 naming the served models and the setting.
    let strict = TestServer::start(|_| {});
    let body = strict
        .post(
            "/rerank",
            &json!({ "model": "other", "query": QUERY, "documents": DOCUMENTS }),
        )
        .assert_error(404, "unknown_model");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("\"tiny\"") && message.contains("--model-name-policy"),
        "{message}"
    );
}

#[test]
fn read_only_routes_and_unknown_ones() {
    let server = TestServer::start(|_| {});

    assert_eq!(server.get("/health").json(), json!({ "status": "ok" }));
    let info = server.get("/info").json();
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["model"]["dtype"], "f32");
    assert_eq!(info["model"]["dtype_choice"], "f32, as set");
    assert_eq!(info["model"]["device"], "cpu");
    assert!(info["model"]["cpu"]["avx512_bf16"].is_boolean(), "{info}");
    assert!(info["model"]["cpu"]["amx_bf16"].is_boolean(), "{info}");
    assert_eq!(info["model"]["recipe"], "zerank");
    assert_eq!(info["model"]["true_token_id"], 9454);
    assert_eq!(info["limits"]["max_batch_tokens"], 16_384);
    assert_eq!(info["served_model_names"], json!(["tiny"]));
    assert!(info["models"][0]["tokens_per_sec"].as_f64().unwrap() > 0.0);
    let models = server.get("/v1/models").json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["object"], "model");
    let spec = server.get("/openapi.yaml");
    assert_eq!(spec.status, 200);
    assert_eq!(spec.header("content-type"), Some("application/yaml"));
    assert_eq!(spec.text, include_str!("../../openapi.yaml"));
    let metrics = server.get("/metrics").text;
    for name in [
        "zerank_requests_total",
        "zerank_request_duration_seconds",
        "zerank_queue_duration_seconds",
        "zerank_tokenization_duration_seconds",
        "zerank_inference_duration_seconds",
        "zerank_batch_pairs",
        "zerank_batch_tokens",
        "zerank_batch_computed_tokens",
        "zerank_batch_shared_ratio",
        "zerank_queue_pairs",
        "zerank_requests_in_flight",
        "zerank_input_tokens",
        "zerank_errors_total",
        "zerank_model_load_seconds",
        "zerank_connections_open",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    server.get("/nope").assert_error(404, "not_found");
    server
        .get("/rerank")
        .assert_error(405, "method_not_allowed");
}
