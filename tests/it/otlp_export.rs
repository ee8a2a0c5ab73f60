//! Traces over OTLP (a build with the `otlp` feature): the server binary exports to a
//! receiver in this process, which decodes what arrives as the OTLP protobuf messages a
//! collector would.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::{spawn_binary, terminate};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// An OTLP/HTTP receiver on a free loopback port; holds every span posted to `/v1/traces`.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service_names = Arc::new(Mutex::new(Vec::new()));
        let (kept_spans, kept_names) = (spans.clone(), service_names.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |body: axum::body::Bytes| async move {
                        let request = ExportTraceServiceRequest::decode(body).unwrap();
                        for resource_spans in request.resource_spans {
                            let resource = resource_spans.resource.unwrap_or_default();
                            kept_names.lock().unwrap().extend(
                                resource
                                    .attributes
                                    .iter()
                                    .filter(|kv| kv.key == "service.name")
                                    .filter_map(|kv| string_value(kv.value.as_ref())),
                            );
                            for scope in resource_spans.scope_spans {
                                kept_spans.lock().unwrap().extend(scope.spans);
                            }
                        }
                        "" // An empty body is a full success in OTLP/HTTP.
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Receiver {
            port,
            spans,
            service_names,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn string_value(
    value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>,
) -> Option<String> {
    match value?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attributes(span: &Span) -> HashMap<String, AnyValue> {
    span.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.as_ref()?.value.clone()?)))
        .collect()
}

fn int_attribute(span: &Span, key: &str) -> i64 {
    match attributes(span).get(key) {
        Some(AnyValue::IntValue(n)) => *n,
        other => panic!("span {}: {key} is {other:?}", span.name),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

#[test]
fn request_spans_nest_under_the_callers_trace_and_carry_the_request_id() {
    let receiver = Receiver::start();
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let (child, port) = spawn_binary(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-service-name",
        "reranker-under-test",
    ]);
    let base = format!("http://127.0.0.1:{port}");
    let traced = ureq::post(&format!("{base}/rerank"))
        .set("x-request-id", "trace-me-1")
        .set("traceparent", &format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
        .send_json(serde_json::json!({
            "query": "capital of France",
            "documents": ["Paris is in France.", "Berlin is in Germany.", "Rome is in Italy."]
        }))
        .unwrap();
    assert_eq!(traced.status(), 200);
    let untraced = ureq::post(&format!("{base}/score"))
        .set("x-request-id", "no-parent-2")
        .send_json(serde_json::json!({"text_1": "a", "text_2": ["b", "c"]}))
        .unwrap();
    assert_eq!(untraced.status(), 200);
    // SIGTERM, as an orchestrator stops it: the spans it still buffers are sent on the way out.
    terminate(child, Duration::from_secs(30));

    let spans = receiver.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let request = |request_id: &str| {
        spans
            .iter()
            .find(|s| {
                matches!(attributes(s).get("request_id"),
                    Some(AnyValue::StringValue(id)) if id == request_id)
            })
            .unwrap_or_else(|| panic!("no span carries request_id {request_id}: {names:?}"))
    };

    let rerank = request("trace-me-1");
    assert_eq!(rerank.name, "POST /rerank");
    assert_eq!(
        hex(&rerank.trace_id),
        TRACE_ID,
        "the caller's trace id is kept"
    );
    assert_eq!(
        hex(&rerank.parent_span_id),
        CALLER_SPAN_ID,
        "the caller's span is the parent"
    );
    assert_eq!(rerank.kind, 2, "a server span (SPAN_KIND_SERVER)");
    assert_eq!(int_attribute(rerank, "http.response.status_code"), 200);
    let children = |parent: &Span| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id)
            .collect()
    };
    let inside = children(rerank);
    for name in ["tokenize", "queue", "forward", "respond"] {
        let child = inside
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span inside the request: {names:?}"));
        assert_eq!(child.trace_id, rerank.trace_id, "{name}");
        assert!(
            child.start_time_unix_nano >= rerank.start_time_unix_nano
                && child.end_time_unix_nano <= rerank.end_time_unix_nano,
            "{name} lies within the request"
        );
    }
    let forward = inside.iter().find(|s| s.name == "forward").unwrap();
    assert_eq!(int_attribute(forward, "batch.pairs"), 3);
    assert_eq!(int_attribute(forward, "pairs"), 3);
    let tokenize = inside.iter().find(|s| s.name == "tokenize").unwrap();
    assert_eq!(
        int_attribute(forward, "batch.tokens"),
        int_attribute(tokenize, "tokens"),
        "the batch holds this request's pairs alone"
    );
    let queue = inside.iter().find(|s| s.name == "queue").unwrap();
    assert!(queue.end_time_unix_nano <= forward.start_time_unix_nano + 1_000_000);

    let score = request("no-parent-2");
    assert_eq!(score.name, "POST /score");
    assert!(
        score.parent_span_id.is_empty(),
        "without traceparent, a new trace"
    );
    assert_ne!(hex(&score.trace_id), TRACE_ID);
    assert!(children(score).iter().any(|s| s.name == "forward"));

    assert!(
        receiver
            .service_names
            .lock()
            .unwrap()
            .iter()
            .all(|n| n == "reranker-under-test")
    );
}
