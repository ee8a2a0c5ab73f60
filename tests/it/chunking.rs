//! Long documents scored whole (`long_documents: "chunk"`): windows that fit the prompt, each
//! scored as its own pair, the best one taken, and the limits that bound the work.

use crate::common;

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
        s.scoring.max_length = Some(MAX_LENGTH);
        s.server.chunk_overlap_tokens = OVERLAP;
        s.server.max_chunks_per_document = 64;
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
        .encoder()
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
    let server =
        server(|s| s.server.long_documents = zerank_server::settings::LongDocuments::Chunk);
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
    let capped = server(|s| s.server.max_chunks_per_document = 2);
    let reply = capped.post(
        "/rerank",
        &json!({"query": QUERY, "documents": ["short", document], "long_documents": "chunk"}),
    );
    let error = reply.assert_error(413, "input_too_long");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("max_chunks_per_document"), "{message}");
    assert!(message.contains("more than 2 windows"), "{message}");

    // Each window fits, but all of them together are over the queue's budget.
    let budget = server(|s| s.server.max_queued_tokens = 4 * MAX_LENGTH);
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

/// Windows of the fixture at its full length (40,960 positions), where zerank's
/// 10,000-character cut, not the prompt's room, ends each window.
fn windows_under_the_character_cut(document: &str, overlap_tokens: usize) -> usize {
    let engine = common::load(&fixture("tiny"));
    engine
        .encoder()
        .encode_windows(
            QUERY,
            document,
            None,
            TokenLimits::default(),
            Chunking {
                overlap_tokens,
                max_chunks: 4_096,
            },
        )
        .unwrap()
        .len()
}

#[test]
fn windows_advance_by_half_the_window_the_character_cut_leaves() {
    // 13,600 characters: two windows of at most 10,000 characters, about 2,500 tokens each,
    // against a room of some 40,000 tokens. An overlap of 4,096 tokens is under half the
    // room but more than the window: it steps back half the window instead.
    let document: String = long_document().chars().cycle().take(13_600).collect();
    let count = windows_under_the_character_cut(&document, 4_096);
    assert!((2..=3).contains(&count), "{count} windows");
    assert_eq!(windows_under_the_character_cut(&document, 0), 2);
}

#[test]
fn the_window_count_refusal_names_the_character_cut_that_binds() {
    let server = TestServer::start(|s| {
        s.server.long_documents = zerank_server::settings::LongDocuments::Chunk;
    });
    let document: String = long_document().chars().cycle().take(226_000).collect();
    let reply = server.post("/rerank", &json!({"query": QUERY, "documents": [document]}));
    let error = reply.assert_error(413, "input_too_long");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("226000 characters")
            && message.contains("more than 16 windows (max_chunks_per_document)")
            && message.contains("at most 10000 characters each"),
        "{message}"
    );
    assert!(!message.contains("tokens each"), "{message}");
    // Under a short prompt, the room in tokens binds, and the message says so in tokens.
    let short = server_with_short_prompts(2);
    let reply = short.post(
        "/rerank",
        &json!({"query": QUERY, "documents": [long_document()], "long_documents": "chunk"}),
    );
    let message = reply.assert_error(413, "input_too_long")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("tokens each") && !message.contains("characters each"),
        "{message}"
    );
}

fn server_with_short_prompts(max_chunks: usize) -> TestServer {
    server(|s| s.server.max_chunks_per_document = max_chunks)
}

#[test]
fn a_document_of_whitespace_scores_the_same_in_both_modes() {
    let server = server(|s| s.server.max_chunks_per_document = 2);
    for blank in ["\t", "\u{a0}", "\u{3000}", " \t\u{a0}\u{3000}\n"] {
        let document = blank.repeat(40_000 / blank.chars().count());
        let scores: Vec<f64> = ["truncate", "chunk"]
            .iter()
            .map(|mode| {
                let reply = server.post(
                    "/rerank",
                    &json!({"query": QUERY, "documents": [document], "long_documents": mode}),
                );
                assert_eq!(reply.status, 200, "{blank:?} {mode}: {}", reply.text);
                reply.json()["results"][0]["relevance_score"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        assert_eq!(scores[0], scores[1], "{blank:?}");
    }
}

#[test]
fn chunk_overlaps_past_half_a_window_are_refused_at_start() {
    let metrics = zerank_server::metrics::Metrics::new();
    let settings = |overlap: usize| zerank_server::settings::Settings {
        scoring: zerank_server::settings::ScoringSettings {
            model: vec![fixture("tiny").to_string_lossy().into_owned()],
            max_length: Some(MAX_LENGTH),
            ..Default::default()
        },
        server: zerank_server::settings::ServerSettings {
            chunk_overlap_tokens: overlap,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = zerank_server::service::Service::load_models(&settings(MAX_LENGTH / 2), &metrics)
        .err()
        .expect("an overlap of half the window is refused");
    let message = err.to_string();
    assert!(
        message.contains("chunk_overlap_tokens = 48")
            && message.contains("half")
            && message.contains("96 tokens"),
        "{message}"
    );
    assert!(
        zerank_server::service::Service::load_models(&settings(MAX_LENGTH / 2 - 1), &metrics)
            .is_ok()
    );
}
