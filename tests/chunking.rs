//! Long documents scored whole (`long_documents: "chunk"`): windows that fit the prompt, each
//! scored as its own pair, the best one taken, and the limits that bound the work.

mod common;

use common::fixture;
use common::server::TestServer;
use serde_json::{Value, json};
use zerank_server::model::{Chunking, Engine, LoadOptions, TokenLimits};

/// Prompts of at most this many tokens: the tiny fixture's room becomes a few dozen tokens.
const MAX_LENGTH: usize = 96;
const OVERLAP: usize = 16;
const QUERY: &str = "where does the river meet the sea";

fn long_document() -> String {
    (0..60)
        .map(|i| {
            format!(
                "Paragraph {i} tells of the valley, the mill and the old bridge over the river. "
            )
        })
        .collect()
}

fn server(configure: impl FnOnce(&mut zerank_server::settings::Settings)) -> TestServer {
    TestServer::start(|s| {
        s.max_length = Some(MAX_LENGTH);
        s.chunk_overlap_tokens = OVERLAP;
        s.max_chunks_per_document = 64;
        configure(s);
    })
}

/// The windows the engine makes of `document`, as the server configured above does.
fn windows(document: &str) -> Vec<std::ops::Range<usize>> {
    let engine = Engine::load(&LoadOptions {
        max_length: Some(MAX_LENGTH),
        ..common::options(&fixture("tiny"))
    })
    .unwrap();
    engine
        .encode_windows(
            QUERY,
            document,
            None,
            TokenLimits::default(),
            Chunking {
                overlap_tokens: OVERLAP,
                max_chunks: 64,
            },
        )
        .unwrap()
        .into_iter()
        .map(|w| {
            assert_eq!(w.encoded.truncated_tokens, 0, "a window fits its prompt");
            assert!(w.encoded.ids.len() <= MAX_LENGTH);
            w.chars
        })
        .collect()
}

fn chars(text: &str, span: &std::ops::Range<usize>) -> String {
    text.chars()
        .skip(span.start)
        .take(span.end - span.start)
        .collect()
}

fn score_alone(server: &TestServer, document: &str) -> f64 {
    let reply = server.post("/rerank", &json!({"query": QUERY, "documents": [document]}));
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["results"][0]["relevance_score"]
        .as_f64()
        .unwrap()
}

#[test]
fn a_long_document_gets_its_best_windows_score() {
    let document = long_document();
    let spans = windows(&document);
    assert!(spans.len() >= 5, "{} windows", spans.len());
    let length = document.chars().count();
    assert_eq!(spans[0].start, 0);
    assert_eq!(spans.last().unwrap().end, length, "the end is scored");
    for pair in spans.windows(2) {
        assert!(pair[1].start < pair[0].end, "windows overlap: {pair:?}");
        assert!(pair[1].start > pair[0].start);
    }
    let text: Vec<char> = document.chars().collect();
    for span in &spans[..spans.len() - 1] {
        assert!(
            text[span.end].is_whitespace(),
            "a window ends before whitespace: {span:?}"
        );
    }

    let server = server(|_| {});
    let reply = server.post(
        "/rerank",
        &json!({"query": QUERY, "documents": [document], "long_documents": "chunk"}),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    let result = &reply.json()["results"][0];
    let chunked = result["relevance_score"].as_f64().unwrap();
    let alone: Vec<f64> = spans
        .iter()
        .map(|span| score_alone(&server, &chars(&document, span)))
        .collect();
    let (best, best_score) = alone
        .iter()
        .copied()
        .enumerate()
        .fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
    assert!(
        (chunked - best_score).abs() <= 1e-5,
        "chunked {chunked} against the best window alone {best_score}"
    );
    let chunk = &result["chunk"];
    assert_eq!(chunk["index"], best);
    assert_eq!(chunk["count"], spans.len());
    assert_eq!(chunk["start"], spans[best].start);
    assert_eq!(chunk["end"], spans[best].end);
}

#[test]
fn usage_counts_every_window_and_the_windows_share_batches() {
    let document = long_document();
    let spans = windows(&document);
    let server = server(|_| {});
    let reply = server.post(
        "/v1/models/rerank",
        &json!({"query": QUERY, "documents": [document, "a short one"], "long_documents": "chunk"}),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    let short = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["index"] == 1)
        .unwrap();
    assert_eq!(
        short["chunk"],
        json!({"index": 0, "count": 1, "start": 0, "end": 11})
    );
    assert_eq!(
        server.metric("zerank_batch_pairs_sum"),
        (spans.len() + 1) as f64
    );
    assert!(body["total_tokens"].as_u64().unwrap() > (MAX_LENGTH * (spans.len() - 1)) as u64 / 2);
}

#[test]
fn the_window_is_reported_only_where_the_shape_has_room_for_it() {
    let server = server(|_| {});
    let document = long_document();
    let with = |path: &str, body: Value| -> Value {
        let reply = server.post(path, &body);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        reply.json()
    };
    let documents = json!({"query": QUERY, "documents": [document], "long_documents": "chunk"});
    assert!(with("/rerank", documents.clone())["results"][0]["chunk"].is_object());
    assert!(with("/v1/models/rerank", documents.clone())["results"][0]["chunk"].is_object());
    for cohere in ["/v1/rerank", "/v2/rerank"] {
        let body = with(cohere, documents.clone());
        assert!(body["results"][0].get("chunk").is_none(), "{cohere}");
    }
    let tei = with(
        "/rerank",
        json!({"query": QUERY, "texts": [document], "long_documents": "chunk"}),
    );
    assert!(tei[0].get("chunk").is_none());
    let score = with(
        "/score",
        json!({"text_1": QUERY, "text_2": [document], "long_documents": "chunk"}),
    );
    assert!(score["data"][0]["chunk"].is_object());
    // Without chunking, no window.
    let plain = with("/rerank", json!({"query": QUERY, "documents": [document]}));
    assert!(plain["results"][0].get("chunk").is_none());
}

#[test]
fn the_server_default_applies_and_a_request_may_override_it() {
    let server = server(|s| s.long_documents = zerank_server::settings::LongDocuments::Chunk);
    let document = long_document();
    let by_default = server.post("/rerank", &json!({"query": QUERY, "documents": [document]}));
    assert!(by_default.json()["results"][0]["chunk"].is_object());
    let truncated = server.post(
        "/rerank",
        &json!({"query": QUERY, "documents": [document], "long_documents": "truncate"}),
    );
    assert!(truncated.json()["results"][0].get("chunk").is_none());
    let bad = server.post(
        "/rerank",
        &json!({"query": QUERY, "documents": ["x"], "long_documents": "split"}),
    );
    let error = bad.assert_error(422, "validation");
    assert!(
        error["message"].as_str().unwrap().contains("chunk"),
        "{error}"
    );
}

#[test]
fn the_chunk_cap_and_the_queue_budget_give_413() {
    let document = long_document();
    let capped = server(|s| s.max_chunks_per_document = 2);
    let reply = capped.post(
        "/rerank",
        &json!({"query": QUERY, "documents": ["short", document], "long_documents": "chunk"}),
    );
    let error = reply.assert_error(413, "input_too_long");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("max_chunks_per_document"), "{message}");
    assert!(message.contains("more than 2 windows"), "{message}");

    // Each window fits, but all of them together are over the queue's budget.
    let budget = server(|s| s.max_queued_tokens = 4 * MAX_LENGTH);
    let reply = budget.post(
        "/rerank",
        &json!({"query": QUERY, "documents": [document], "long_documents": "chunk"}),
    );
    let error = reply.assert_error(413, "request_too_large");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("max_queued_tokens")
    );
    // Cut instead, it is served.
    let reply = budget.post("/rerank", &json!({"query": QUERY, "documents": [document]}));
    assert_eq!(reply.status, 200);
}

#[test]
fn windows_of_text_without_spaces_keep_whole_characters() {
    // Chinese and emoji: no whitespace to end on, and byte-level tokens that split characters.
    let document: String = "河流在三角洲汇入大海，磨坊和古桥见证了山谷的历史。🌊🏞️".repeat(30);
    let spans = windows(&document);
    assert!(spans.len() > 2, "{} windows", spans.len());
    assert_eq!(spans.last().unwrap().end, document.chars().count());
    let server = server(|_| {});
    let reply = server.post(
        "/rerank",
        &json!({"query": QUERY, "documents": [document], "long_documents": "chunk"}),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    let chunk = &reply.json()["results"][0]["chunk"];
    assert_eq!(chunk["count"], spans.len());
}
