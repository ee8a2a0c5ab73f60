//! The service over real TCP, on the fixture checkpoint: batching across concurrent
//! requests, limits, auth, disconnects, the spec's routes, and draining on SIGTERM. The
//! response shapes are in `tests/shapes.rs`.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::{Reply, TestServer, sigterm, spawn_binary, wait_until};
use serde_json::{Value, json};

#[test]
fn concurrent_requests_score_as_sequential_ones_and_share_batches() {
    let server = Arc::new(TestServer::start(|_| {}));
    let request = |i: usize| {
        let documents: Vec<String> = (0..12)
            .map(|d| {
                format!(
                    "document {d} of request {i}: {}",
                    "words about things ".repeat(d + i % 4)
                )
            })
            .collect();
        json!({ "query": format!("query number {i}"), "documents": documents })
    };
    let sequential: Vec<Value> = (0..16)
        .map(|i| server.post("/rerank", &request(i)).json()["results"].clone())
        .collect();
    let batches_before = server.metric("zerank_multi_request_batches_total");
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let server = server.clone();
            let body = request(i);
            std::thread::spawn(move || server.post("/rerank", &body).json()["results"].clone())
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let concurrent = thread.join().unwrap();
        let (a, b) = (
            concurrent.as_array().unwrap(),
            sequential[i].as_array().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x["index"], y["index"], "request {i}");
            let (sx, sy) = (
                x["relevance_score"].as_f64().unwrap(),
                y["relevance_score"].as_f64().unwrap(),
            );
            assert!((sx - sy).abs() <= 1e-5, "request {i}: {sx} vs {sy}");
        }
    }
    assert!(
        server.metric("zerank_multi_request_batches_total") > batches_before,
        "no batch held pairs of more than one request"
    );
    assert_eq!(server.metric("zerank_queue_pairs"), 0.0);
    // The estimate admission plans with, as measured on these batches.
    let estimate = server.metric("zerank_estimated_tokens_per_second");
    let info = server.get("/info").json();
    assert!(estimate > 0.0, "{estimate}");
    // One value, printed and parsed two ways (serde_json's default parser may land one ulp
    // from the correctly rounded one).
    let reported = info["models"][0]["tokens_per_sec"].as_f64().unwrap();
    assert!(
        (reported - estimate).abs() <= 1e-12 * estimate,
        "{reported} vs {estimate}"
    );
}

#[test]
fn requests_over_a_limit_get_clear_errors_and_the_server_keeps_serving() {
    let server = TestServer::start(|s| {
        s.server.max_documents_per_request = 4;
        s.server.payload_limit_bytes = 4_096;
    });
    let ok = json!({ "query": "q", "documents": ["a", "b"] });
    let too_many = server
        .post(
            "/rerank",
            &json!({ "query": "q", "documents": vec!["a"; 5] }),
        )
        .assert_error(413, "too_many_documents");
    assert!(
        too_many["error"]
            .as_str()
            .unwrap()
            .contains("`max_documents_per_request`"),
        "{too_many}"
    );
    let both = server
        .post(
            "/rerank",
            &json!({ "query": "q", "documents": ["a"], "texts": ["b"] }),
        )
        .assert_error(422, "validation");
    let message = both["error"].as_str().unwrap();
    assert!(
        message.contains("`documents`") && message.contains("`texts`"),
        "{both}"
    );
    server
        .post(
            "/rerank",
            &json!({ "query": "q", "documents": ["x".repeat(5_000)] }),
        )
        .assert_error(413, "payload_too_large");
    server
        .post("/rerank", &json!({ "query": "q", "documents": [] }))
        .assert_error(422, "validation");
    server
        .post("/rerank", &json!({ "documents": ["a"] }))
        .assert_error(422, "validation");
    server
        .post("/rerank", &json!({ "query": "q" }))
        .assert_error(422, "validation");
    server
        .post(
            "/rerank",
            &json!({ "query": "q", "documents": ["a"], "top_n": -1 }),
        )
        .assert_error(422, "validation");
    server
        .post(
            "/rerank",
            &json!({ "query": "q", "documents": ["a"], "top_n": 1.5 }),
        )
        .assert_error(422, "validation");
    server
        .post("/rerank", &json!({ "query": "q", "documents": [1] }))
        .assert_error(422, "validation");
    server
        .post(
            "/rerank",
            &json!({ "query": "q", "documents": ["a"], "max_tokens_per_doc": 0 }),
        )
        .assert_error(422, "validation");
    let whole = server.post(
        "/rerank",
        &json!({ "query": "q", "documents": ["a", "b", "c"], "top_n": 2.0 }),
    );
    assert_eq!(whole.json()["results"].as_array().unwrap().len(), 2);
    server
        .post_raw("/rerank", "application/json", "{\"query\": ")
        .assert_error(400, "invalid_json");
    server
        .post_raw("/rerank", "text/plain", &ok.to_string())
        .assert_error(415, "unsupported_media_type");
    let deep = format!(
        "{{\"query\":\"q\",\"documents\":{}{}}}",
        "[".repeat(1_000),
        "]".repeat(1_000)
    );
    server
        .post_raw("/rerank", "application/json", &deep)
        .assert_error(400, "invalid_json");
    server
        .post_raw("/rerank", "application/json", "[1, 2]")
        .assert_error(422, "validation");
    assert_eq!(server.post("/rerank", &ok).status, 200);
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn past_the_concurrency_limit_clients_get_429_with_retry_after() {
    let server = Arc::new(TestServer::start(|s| s.server.max_concurrent_requests = 1));
    let documents: Vec<String> = (0..60)
        .map(|i| format!("document {i} {}", "text ".repeat(60)))
        .collect();
    let body = json!({ "query": "q", "documents": documents });
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (server, body) = (server.clone(), body.clone());
            std::thread::spawn(move || {
                let reply = server.post("/rerank", &body);
                (
                    reply.status,
                    reply.header("retry-after").map(str::to_owned),
                    reply.text,
                )
            })
        })
        .collect();
    let replies: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        replies.iter().all(|(s, _, _)| *s == 200 || *s == 429),
        "{replies:?}"
    );
    assert!(replies.iter().any(|(s, _, _)| *s == 200));
    let rejected: Vec<_> = replies.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(
        !rejected.is_empty(),
        "six concurrent requests against a limit of one"
    );
    for (_, retry_after, text) in rejected {
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert!(text.contains("overloaded"));
    }
    assert_eq!(
        server
            .post("/rerank", &json!({ "query": "q", "documents": ["a"] }))
            .status,
        200
    );
    assert_eq!(server.metric("zerank_requests_in_flight"), 0.0);
}

#[cfg(unix)]
#[test]
fn sigterm_during_load_answers_every_accepted_request_then_exits_zero() {
    // Time for all six to finish on a loaded machine.
    let (mut child, port) = spawn_binary(&[
        "--drain-deadline-secs",
        "600",
        "--request-timeout-secs",
        "600",
    ]);
    let base = format!("http://127.0.0.1:{port}");
    let documents: Vec<String> = (0..100)
        .map(|i| format!("document {i} {}", "some text ".repeat(40)))
        .collect();
    let body = json!({ "query": "q", "documents": documents }).to_string();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (url, body) = (format!("{base}/rerank"), body.clone());
            std::thread::spawn(move || {
                ureq::post(&url)
                    .set("content-type", "application/json")
                    .send_string(&body)
                    .map(|r| {
                        (
                            r.status(),
                            r.into_json::<Value>().unwrap()["results"]
                                .as_array()
                                .unwrap()
                                .len(),
                        )
                    })
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    // Wait until every client is admitted, then ask the server to stop.
    let metrics_url = format!("{base}/metrics");
    wait_until(
        "clients were never all admitted",
        Duration::from_secs(30),
        || {
            let text = ureq::get(&metrics_url)
                .call()
                .unwrap()
                .into_string()
                .unwrap();
            let in_flight = text
                .lines()
                .find(|l| l.starts_with("zerank_requests_in_flight "))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            in_flight >= 6.0
        },
    );
    sigterm(&child);
    for client in clients {
        assert_eq!(client.join().unwrap(), Ok((200, 100)));
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        ureq::get(&format!("{base}/health")).call().is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn the_api_key_guards_scoring_routes_and_optionally_probes() {
    let server = TestServer::start(|s| s.server.api_key = Some("s3cret".into()));
    let body = json!({ "query": "q", "documents": ["a"] }).to_string();
    let with = |auth: Option<&str>| {
        let mut request =
            ureq::post(&server.url("/rerank")).set("content-type", "application/json");
        if let Some(value) = auth {
            request = request.set("authorization", value);
        }
        Reply::from(request.send_string(&body))
    };
    with(None).assert_error(401, "unauthorized");
    with(Some("Bearer wrong")).assert_error(401, "unauthorized");
    with(Some("Bearer s3cre")).assert_error(401, "unauthorized");
    assert_eq!(with(Some("Bearer s3cret")).status, 200);
    assert_eq!(with(Some("s3cret")).status, 200);
    server.get("/info").assert_error(401, "unauthorized");
    server
        .get("/openapi.json")
        .assert_error(401, "unauthorized");
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.get("/metrics").status, 200);
    drop(server);

    let strict = TestServer::start(|s| {
        s.server.api_key = Some("s3cret".into());
        s.server.protect_health_and_metrics = true;
    });
    strict.get("/metrics").assert_error(401, "unauthorized");
    let health = ureq::get(&strict.url("/health"))
        .set("authorization", "Bearer s3cret")
        .call();
    assert_eq!(Reply::from(health).status, 200);
    // The docs page holds no data: open even here; its calls carry the key.
    assert_eq!(strict.get("/docs").status, 200);
}

/// `/docs`: one page that loads nothing from elsewhere, served unless `docs_page` is off.
#[test]
fn the_docs_page_is_self_contained_and_can_be_turned_off() {
    let server = TestServer::start(|_| {});
    let page = server.get("/docs");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text.to_ascii_lowercase();
    assert!(html.starts_with("<!doctype html>") && html.contains("id=\"rank\""));
    for external in ["http://", "https://", "@import", "<iframe", "<object"] {
        assert!(!html.contains(external), "the page refers to {external}");
    }
    let style = html
        .split("<style>")
        .nth(1)
        .unwrap()
        .split("</style>")
        .next();
    assert!(!style.unwrap().contains("url("), "a stylesheet resource");
    // Links and sources stay on the page: anchors and data URLs only.
    for attribute in ["href=\"", "src=\""] {
        for value in html.split(attribute).skip(1) {
            assert!(
                value.starts_with('#') || value.starts_with("data:"),
                "{attribute}{}",
                &value[..value.len().min(40)]
            );
        }
    }
    let policy = page.header("content-security-policy").unwrap();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    // What the page reads: the reference, and raw scores with usage from /v1/rerank.
    let spec = server.get("/openapi.json");
    assert_eq!(spec.header("content-type"), Some("application/json"));
    assert!(spec.json()["paths"]["/docs"]["get"].is_object());
    drop(server);

    let off = TestServer::start(|s| s.server.docs_page = false);
    off.get("/docs").assert_error(404, "not_found");
    assert_eq!(off.get("/openapi.json").status, 200);
}

#[test]
fn a_client_that_disconnects_leaves_the_queue() {
    use std::io::Write;
    // A long timeout: admission must let the second request queue behind the first.
    let server = Arc::new(TestServer::start(|s| {
        s.scoring.max_batch_pairs = 1;
        s.server.request_timeout_secs = 600.0;
    }));
    let documents: Vec<String> = (0..100)
        .map(|i| format!("document {i} {}", "some text ".repeat(30)))
        .collect();
    let body = json!({ "query": "q", "documents": documents }).to_string();
    let busy = std::thread::spawn({
        let (server, body) = (server.clone(), body.clone());
        move || server.post_raw("/rerank", "application/json", &body).status
    });
    let wait_for = |what: &str, done: &dyn Fn(f64) -> bool| {
        wait_until(what, Duration::from_secs(30), || {
            done(server.metric("zerank_queue_pairs"))
        });
    };
    wait_for("the first request queued", &|q| q > 0.0);
    let mut gone = std::net::TcpStream::connect(server.address).unwrap();
    write!(
        gone,
        "POST /rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    wait_for("the second request queued", &|q| q > 100.0);
    drop(gone);
    wait_for("the disconnected request left the queue", &|q| q <= 100.0);
    assert_eq!(server.metric("zerank_client_disconnects_total"), 1.0);
    // Counted as an abort during upload is: a 499 of its route, a client_disconnect error.
    wait_until(
        "the disconnect during scoring was not counted as a 499",
        Duration::from_secs(10),
        || {
            let metrics = server.get("/metrics").text;
            metrics.contains("zerank_requests_total{route=\"/rerank\",status=\"499\"} 1\n")
                && metrics.contains("zerank_errors_total{kind=\"client_disconnect\"} 1\n")
        },
    );
    assert_eq!(busy.join().unwrap(), 200);
    assert_eq!(server.metric("zerank_queue_pairs"), 0.0);
    // The first request's 100 pairs ran one per batch; few, if any, of the second's did.
    assert!(server.metric("zerank_batch_pairs_count") < 150.0);
}

/// `openapi.yaml` lists exactly the routes the server serves, and its examples are accepted.
/// (That it is the document the code generates is a unit test of `http::openapi`.)
#[test]
fn the_openapi_spec_matches_the_served_routes() {
    let spec: Value = serde_norway::from_str(include_str!("../../openapi.yaml")).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();

    // The router's own table.
    let mut served: Vec<(String, String)> = zerank_server::http::served_routes()
        .into_iter()
        .map(|(method, path, _)| (method.to_string(), path.to_owned()))
        .collect();
    served.sort();
    assert_eq!(documented, served);

    let server = TestServer::start(|_| {});
    for (method, path) in &served {
        let reply = if method == "GET" {
            server.get(path)
        } else {
            server.post(
                path,
                &json!({ "query": "q", "documents": ["d"], "text_1": "q", "text_2": ["d"] }),
            )
        };
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.text);
    }
    // The request examples of the spec are answered.
    let schemas = &spec["components"]["schemas"];
    for (schema, paths) in [
        (
            "RerankRequest",
            &["/rerank", "/v1/rerank", "/v2/rerank", "/v1/models/rerank"][..],
        ),
        ("ScoreRequest", &["/score", "/v1/score"][..]),
    ] {
        let example = &schemas[schema]["example"];
        assert!(example.is_object(), "{schema} has an example");
        for path in paths {
            let reply = server.post(path, example);
            assert_eq!(reply.status, 200, "example for {path}: {}", reply.text);
        }
    }
}

#[test]
fn a_request_past_its_timeout_gets_504_and_leaves_nothing_queued() {
    // One pair a batch: each short document's forward is mostly the forward's fixed cost,
    // which admission's estimate (units of work of representative batches) leaves out, so
    // it lets in a request that takes longer than its timeout. When the timeout strikes, one
    // document is in the model and the others still queued.
    let documents: Vec<String> = (0..300).map(|i| format!("a short document {i}")).collect();
    let request = json!({ "query": "q", "documents": documents });
    let one_pair_a_batch = |s: &mut zerank_server::settings::Settings| {
        s.scoring.max_batch_pairs = 1;
        s.server.score_cache_bytes = 0;
    };
    // How long a first server on this machine takes it; then a timeout under that which
    // admission still lets in (it plans without the forward's fixed cost): the first of a
    // few fractions that answers 504. Other tests share the cores, so one fraction may be
    // refused (413) or finish in time (200) on a given run.
    let takes = {
        let probe = TestServer::start(one_pair_a_batch);
        let started = Instant::now();
        assert_eq!(probe.post("/rerank", &request).status, 200);
        started.elapsed().as_secs_f64()
    };
    let mut statuses = Vec::new();
    let server = [0.5, 0.7, 0.35, 0.85]
        .into_iter()
        .find_map(|fraction| {
            let server = TestServer::start(|s| {
                one_pair_a_batch(s);
                s.server.request_timeout_secs = (takes * fraction).max(0.1);
            });
            let reply = server.post("/rerank", &request);
            statuses.push((fraction, reply.status));
            (reply.status == 504).then_some(server)
        })
        .unwrap_or_else(|| panic!("no timeout under {takes:.2} s gave a 504: {statuses:?}"));
    // Its documents leave the queue with it.
    wait_until(
        "the timed-out request stayed in flight",
        Duration::from_secs(30),
        || server.metric("zerank_requests_in_flight") == 0.0,
    );
    let queued = server.metric("zerank_queue_pairs");
    assert_eq!(
        queued, 0.0,
        "{queued} pairs of the timed-out request still queued"
    );
    // A new request: had the timed-out request's documents stayed queued, they would run
    // before it or still wait when it is answered.
    let run_before = server.metric("zerank_batch_pairs_sum");
    let reply = server.post("/rerank", &json!({ "query": "q", "documents": ["later"] }));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(server.metric("zerank_requests_in_flight"), 0.0);
    assert_eq!(server.metric("zerank_queue_pairs"), 0.0);
    // At most the pair that was in the model at the timeout, and the later request's.
    let run_after = server.metric("zerank_batch_pairs_sum");
    assert!(
        run_after <= run_before + 2.0,
        "{run_before} then {run_after}"
    );
}

#[test]
fn a_document_of_megabytes_is_cut_like_the_reference() {
    let server = TestServer::start(|_| {});
    let huge = "lorem ipsum dolor sit amet ".repeat(260_000); // ~7 MB, under the 8 MiB limit
    let reply = server.post(
        "/rerank",
        &json!({ "query": "q", "documents": [huge, "short"] }),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    // 10,000 characters of this text are ~2,000 tokens, nowhere near 7 MB of them.
    assert!(reply.json()["usage"]["total_tokens"].as_u64().unwrap() < 5_000);
}
