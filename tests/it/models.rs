//! Several models in one process, routed by name, each scoring as it does alone; and
//! instructions over HTTP.

use crate::common;

use common::server::{DOCUMENTS, QUERY, TestServer, close, engine_scores, fixture_path};
use common::{fixture, load};
use serde_json::json;
use zerank_server::model::TokenLimits;
use zerank_server::settings::NameList;

const MODELS: [&str; 3] = ["tiny", "native-yes", "native-yes-no"];

fn three_models() -> TestServer {
    TestServer::start(|settings| {
        settings.scoring.model = MODELS.iter().map(|m| fixture_path(m)).collect();
        settings.server.served_model_names = vec![
            NameList(vec!["tiny".into(), "zerank-tiny".into()]),
            NameList(vec!["native-yes".into()]),
        ];
    })
}

#[test]
fn one_process_serves_three_models_each_as_alone() {
    let server = three_models();
    let listed: Vec<String> = server.get("/v1/models").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed,
        ["tiny", "zerank-tiny", "native-yes", "native-yes-no"]
    );
    let info = server.get("/info").json();
    assert_eq!(info["models"].as_array().unwrap().len(), 3);
    assert_eq!(
        info["models"][2]["model"]["recipe"],
        "sentence-transformers"
    );
    for (name, dir) in [
        ("tiny", "tiny"),
        ("zerank-tiny", "tiny"),
        ("native-yes", "native-yes"),
        // A model without its own names answers to its directory's name.
        ("native-yes-no", "native-yes-no"),
    ] {
        let expected = engine_scores(&load(&fixture(dir)), QUERY, &DOCUMENTS);
        let body = server
            .post(
                "/v1/rerank",
                &json!({ "model": name, "query": QUERY, "documents": DOCUMENTS }),
            )
            .json();
        assert_eq!(body["model"], name);
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), DOCUMENTS.len());
        for result in results {
            let index = result["index"].as_u64().unwrap() as usize;
            let score = result["relevance_score"].as_f64().unwrap();
            assert!(
                close(score, expected[index].0),
                "{name} doc {index}: {score} vs {:?}",
                expected[index]
            );
        }
    }
    // No model: the first.
    let body = server
        .post(
            "/rerank",
            &json!({ "query": QUERY, "texts": DOCUMENTS, "raw_scores": true }),
        )
        .json();
    let expected = engine_scores(&load(&fixture("tiny")), QUERY, &DOCUMENTS);
    for result in body.as_array().unwrap() {
        let index = result["index"].as_u64().unwrap() as usize;
        assert!(close(result["score"].as_f64().unwrap(), expected[index].1));
    }
    let unknown = server.post(
        "/v1/rerank",
        &json!({ "model": "nope", "query": QUERY, "documents": DOCUMENTS }),
    );
    let body = unknown.assert_error(404, "unknown_model");
    let message = body["message"].as_str().unwrap();
    for name in ["tiny", "zerank-tiny", "native-yes", "native-yes-no"] {
        assert!(message.contains(name), "{message}");
    }
    // Each model's batcher is labelled in /metrics.
    let metrics = server.get("/metrics").text;
    for name in ["tiny", "native-yes", "native-yes-no"] {
        assert!(
            metrics.contains(&format!("zerank_batch_pairs_count{{model=\"{name}\"}}")),
            "{name}"
        );
    }
}

#[test]
fn instructions_reach_models_that_take_them_and_are_refused_elsewhere() {
    let server = three_models();
    let instruction = "Given a question about geography, find passages that answer it";
    let engine = load(&fixture("native-yes-no"));
    let ids = engine
        .encoder()
        .encode(
            QUERY,
            DOCUMENTS[0],
            Some(instruction),
            TokenLimits::default(),
        )
        .unwrap()
        .ids;
    let expected = engine.score_batch(&[&ids]).unwrap().scores[0];
    for (path, body) in [
        (
            "/v2/rerank",
            json!({ "model": "native-yes-no", "query": QUERY, "documents": [DOCUMENTS[0]], "instruction": instruction }),
        ),
        (
            "/score",
            json!({ "model": "native-yes-no", "text_1": QUERY, "text_2": [DOCUMENTS[0]], "instruction": instruction }),
        ),
    ] {
        let reply = server.post(path, &body).json();
        let score = reply["results"][0]["relevance_score"]
            .as_f64()
            .or(reply["data"][0]["score"].as_f64())
            .unwrap();
        assert!(
            close(score, expected.score),
            "{path}: {score} vs {expected:?}"
        );
    }
    // Without the instruction the score differs: it did reach the prompt.
    let plain = server
        .post(
            "/v2/rerank",
            &json!({ "model": "native-yes-no", "query": QUERY, "documents": [DOCUMENTS[0]] }),
        )
        .json();
    assert!(!close(
        plain["results"][0]["relevance_score"].as_f64().unwrap(),
        expected.score
    ));
    for name in ["tiny", "zerank-tiny"] {
        let refused = server.post(
            "/v1/rerank",
            &json!({ "model": name, "query": QUERY, "documents": DOCUMENTS, "instruction": "be brief" }),
        );
        let body = refused.assert_error(400, "instruction_not_accepted");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{name}`")),
            "{body}"
        );
    }
}

#[test]
fn one_process_serves_a_qwen3_a_qwen2_and_a_gemma_routed_by_model() {
    let architectures = [
        ("tiny", "Qwen3ForCausalLM"),
        ("native-qwen2", "Qwen2ForCausalLM"),
        ("gemma", "GemmaForCausalLM"),
    ];
    let server = TestServer::start(|settings| {
        settings.scoring.model = architectures.iter().map(|(m, _)| fixture_path(m)).collect();
    });
    let info = server.get("/info").json();
    for (i, (_, class)) in architectures.iter().enumerate() {
        assert_eq!(info["models"][i]["model"]["architecture"], *class);
    }
    let mut seen = Vec::new();
    for (name, _) in architectures {
        let expected = engine_scores(&load(&fixture(name)), QUERY, &DOCUMENTS);
        let body = server
            .post(
                "/v1/rerank",
                &json!({ "model": name, "query": QUERY, "documents": DOCUMENTS }),
            )
            .json();
        assert_eq!(body["model"], name);
        let mut scores = vec![0.0; DOCUMENTS.len()];
        for result in body["results"].as_array().unwrap() {
            let index = result["index"].as_u64().unwrap() as usize;
            scores[index] = result["relevance_score"].as_f64().unwrap();
            assert!(
                close(scores[index], expected[index].0),
                "{name} doc {index}: {} vs {:?}",
                scores[index],
                expected[index]
            );
        }
        seen.push(scores);
    }
    // Three models, three sets of scores: each request reached its own.
    assert!(seen[0] != seen[1] && seen[1] != seen[2] && seen[0] != seen[2]);
}
