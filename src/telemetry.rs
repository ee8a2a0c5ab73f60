//! Logs on stderr, and traces exported over OTLP when `otlp_endpoint` is set. The spans are
//! the same either way: `request` (one per HTTP request, carrying its `request_id`), and
//! inside it `tokenize`, `queue`, `forward` and `respond`. Logs show them as context;
//! exporting them is what the endpoint adds. Numbers on spans are `i64`: the exporter sends
//! unsigned ones as strings.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Whether spans are exported: only then is an incoming `traceparent` read.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Where traces go and under what name.
pub struct TraceExport<'a> {
    pub endpoint: &'a str,
    pub service_name: &'a str,
}

/// Keeps the exporter alive; dropping it sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::SeqCst);
            if let Err(err) = provider.shutdown() {
                eprintln!("warning: traces still buffered at exit were not exported: {err}");
            }
        }
    }
}

/// Installs the global subscriber: logs filtered by `RUST_LOG` (default `info`), and, with
/// `export`, this crate's spans sent to the collector whatever `RUST_LOG` says. Call outside
/// the async runtime: the exporter's HTTP client runs on a thread of its own.
pub fn init(format: LogFormat, export: Option<TraceExport>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    }
    .with_filter(filter);
    let provider = export.map(tracer_provider).transpose()?;
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("zerank-server"))
            .with_filter(Targets::new().with_target("zerank_server", Level::INFO))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("a global tracing subscriber is already installed")?;
    if provider.is_some() {
        EXPORTING.store(true, Ordering::SeqCst);
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(export: TraceExport) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(export.endpoint)?)
        .build()
        .context("cannot build the OTLP exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(export.service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The collector's traces URL: `endpoint` as given when it has a path, else with the OTLP
/// default path `/v1/traces`.
pub fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let uri: axum::http::Uri = endpoint
        .parse()
        .with_context(|| format!("otlp_endpoint `{endpoint}` is not a URL"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http") && uri.host().is_some(),
        "otlp_endpoint `{endpoint}` must be an http:// URL with a host (the exporter speaks plain \
         OTLP/HTTP; put a collector or agent beside the server for TLS)"
    );
    Ok(match uri.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        _ => endpoint.to_owned(),
    })
}

/// The span a request runs in; its parent is the caller's trace when traces are exported and
/// the request carries a W3C `traceparent`.
pub fn request_span(
    name: &str,
    method: &str,
    path: &str,
    request_id: &str,
    headers: &HeaderMap,
) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        url.path = path,
        request_id,
        http.response.status_code = tracing::field::Empty,
    );
    if EXPORTING.load(Ordering::Relaxed) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let parent =
            TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        // Fails only when the span is disabled, and then there is nothing to link.
        let _ = span.set_parent(parent);
    }
    span
}

/// Records the answer's status on the request span; a 5xx marks the span as failed.
pub fn record_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}
