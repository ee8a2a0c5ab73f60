//! The score cache over HTTP: repeats skip the model, concurrent repeats compute once, and
//! the cache keeps to its byte budget.

use crate::common;

use common::server::TestServer;
use serde_json::{Value, json};

const DOCUMENTS: [&str; 3] = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "The Eiffel Tower is in Paris.",
];

fn rerank_raw(server: &TestServer, query: &str, documents: &[&str]) -> Vec<Value> {
    let reply = server.post(
        "/rerank",
        &json!({"query": query, "texts": documents, "raw_scores": true}),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json().as_array().unwrap().clone()
}

/// Pairs the model has scored, over every batch.
fn pairs_computed(server: &TestServer) -> f64 {
    server.metric("zerank_batch_pairs_sum")
}

/// A server with the default cache budget.
fn cached_server() -> TestServer {
    let budget = zerank_server::settings::Settings::default()
        .server
        .score_cache_bytes;
    assert!(budget > 0, "the cache is on by default");
    TestServer::start(|s| s.server.score_cache_bytes = budget)
}

#[test]
fn a_repeated_request_is_answered_from_the_cache_with_identical_scores() {
    let server = cached_server();
    let fresh = rerank_raw(&server, "capital of France", &DOCUMENTS);
    assert_eq!(pairs_computed(&server), 3.0);
    assert_eq!(server.metric("zerank_score_cache_misses_total"), 3.0);
    let cached = rerank_raw(&server, "capital of France", &DOCUMENTS);
    assert_eq!(pairs_computed(&server), 3.0, "no forward pass for a repeat");
    assert_eq!(server.metric("zerank_score_cache_hits_total"), 3.0);
    // The JSON numbers are f32's shortest round trip: equal text is equal bits.
    assert_eq!(fresh, cached);

    // A different instruction-free query is a different prompt.
    rerank_raw(&server, "capital of Germany", &DOCUMENTS[..1]);
    assert_eq!(pairs_computed(&server), 4.0);
    // Repeats inside one request are computed once.
    rerank_raw(
        &server,
        "rivers",
        &[DOCUMENTS[0], DOCUMENTS[0], DOCUMENTS[0]],
    );
    assert_eq!(pairs_computed(&server), 5.0);
}

#[test]
fn cached_scores_equal_those_of_a_server_without_a_cache() {
    let cached = cached_server();
    rerank_raw(&cached, "capital of France", &DOCUMENTS);
    let from_cache = rerank_raw(&cached, "capital of France", &DOCUMENTS);
    let uncached = TestServer::start(|s| s.server.score_cache_bytes = 0);
    let fresh = rerank_raw(&uncached, "capital of France", &DOCUMENTS);
    assert_eq!(from_cache, fresh);
    rerank_raw(&uncached, "capital of France", &DOCUMENTS);
    assert_eq!(
        pairs_computed(&uncached),
        6.0,
        "without a cache every request computes"
    );
    assert_eq!(uncached.metric("zerank_score_cache_hits_total"), 0.0);
}

#[test]
fn sixteen_concurrent_identical_requests_compute_once() {
    let server = cached_server();
    let answers: Vec<Vec<Value>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|_| scope.spawn(|| rerank_raw(&server, "tallest mountain", &DOCUMENTS)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(pairs_computed(&server), 3.0);
    assert_eq!(server.metric("zerank_score_cache_misses_total"), 3.0);
    assert_eq!(server.metric("zerank_score_cache_hits_total"), 45.0);
}

#[test]
fn the_cache_keeps_to_its_byte_budget() {
    // Room for 8 scores of about 92 bytes.
    let server = TestServer::start(|s| s.server.score_cache_bytes = 8 * 92 + 50);
    let documents: Vec<String> = (0..40).map(|i| format!("document number {i}")).collect();
    for chunk in documents.chunks(10) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        rerank_raw(&server, "which number", &texts);
        assert!(server.metric("zerank_score_cache_bytes") <= (8 * 92 + 50) as f64);
    }
    assert_eq!(server.metric("zerank_score_cache_evictions_total"), 32.0);
    // The most recent scores are kept; the first ones were evicted.
    rerank_raw(&server, "which number", &[&documents[39]]);
    assert_eq!(pairs_computed(&server), 40.0);
    rerank_raw(&server, "which number", &[&documents[0]]);
    assert_eq!(pairs_computed(&server), 41.0);
}
